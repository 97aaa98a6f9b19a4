# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
LoRA on the LLM: its default settings (`DEFAULT_LORA`; a model's own are peft's `LoraConfig`, `model.lora_config`,
saved as `lora/adapter_config.json`), a fresh LoRA as peft makes it, and merging it into the LLM's weights for
inference (`EmoSLLMLoraMixin`).
"""

import copy

try:  # a saved folder is loaded as a package (relative import); scripts import top-level modules
    from .dependencies_emosllm import missing_dependency
    from .precision_emosllm import TRAINED_DTYPE
except ImportError:
    if __package__:  # loaded as a package: the sibling failed on its own
        raise
    from dependencies_emosllm import missing_dependency
    from precision_emosllm import TRAINED_DTYPE
try:  # a missing package is named with its pip command (dependencies_emosllm.py)
    import torch
    from peft import inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer
except ModuleNotFoundError as error:
    raise missing_dependency(error, __name__) from error

# LoRA's settings where nothing else gives them (peft's `LoraConfig` keyword arguments). Dropout 0: the LLM only learns
# to read one soft word here, and drawing the masks costs training time (BENCHMARKS.md, "One training step").
DEFAULT_LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"}


class EmoSLLMLoraMixin:
    """The LoRA methods of `EmoSLLMModel` (which holds `language_model`, `lora_config` and `prompt_head`)."""

    def _add_fresh_lora(self) -> None:
        """
        Injects a new LoRA (`self.lora_config`) into the LLM, in float32 whatever the LLM's dtype (peft would give it
        the adapted layer's), initialised as peft initialises it (A random, B zero), so that the new model's LLM is
        the pretrained one until training moves it. (A model made from a config, as the tests make them, draws B at
        random in `post_init`.)
        """
        if self.lora_config is None:
            return
        inject_adapter_in_model(copy.deepcopy(self.lora_config), self.language_model)
        for layer in self._lora_layers():
            for adapters in (layer.lora_A, layer.lora_B):
                for adapter in adapters.values():
                    adapter.to(TRAINED_DTYPE)
            layer.reset_lora_parameters("default", True)  # peft's own: A random, B zero (the LLM as it was)

    def _lora_layers(self) -> list[BaseTunerLayer]:
        return [module for module in self.language_model.modules() if isinstance(module, BaseTunerLayer)]

    @property
    def lora_merged(self) -> bool:
        """Whether LoRA's update is merged into the LLM's weights (`merge_lora`)."""
        return any(layer.merged for layer in self._lora_layers())

    @torch.no_grad()
    def merge_lora(self) -> None:
        """
        Adds LoRA's update into the LLM's weights (peft's `merge`), for inference: the adapted layers then run one
        matrix product instead of three, with the same outputs (to float rounding, tested). `unmerge_lora` (or
        `train()`) undoes it. The pipeline merges on load.
        """
        for layer in self._lora_layers():
            if not layer.merged:
                layer.merge()
        self.prompt_head.clear()

    @torch.no_grad()
    def unmerge_lora(self) -> None:
        """Takes LoRA's update back out of the LLM's weights (after `merge_lora`)."""
        for layer in self._lora_layers():
            if layer.merged:
                layer.unmerge()
        self.prompt_head.clear()

    def trainable_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters())

    def print_trainable_parameters(self) -> None:
        """Prints the trainable parameter count, as peft's `PeftModel.print_trainable_parameters` does."""
        trainable, total = self.trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")


__all__ = ["DEFAULT_LORA", "EmoSLLMLoraMixin"]
