# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
The LLM's pass over a batch of prompts, with the head they all share (the system turn with the task text) run once
and, at inference, kept between calls as a key/value cache: `SharedPromptHead`. Exact: every later token attends to
the same keys at the same positions as in one full pass (tested).
"""

import functools
import inspect

try:  # a saved folder is loaded as a package (relative import); scripts import top-level modules
    from .audio_embeddings_emosllm import lengths_to_mask
    from .dependencies_emosllm import missing_dependency
except ImportError:
    if __package__:  # loaded as a package: the sibling failed on its own
        raise
    from audio_embeddings_emosllm import lengths_to_mask
    from dependencies_emosllm import missing_dependency
try:  # a missing package is named with its pip command (dependencies_emosllm.py)
    import torch
    from torch import nn
    from transformers import DynamicCache
except ModuleNotFoundError as error:
    raise missing_dependency(error, __name__) from error
try:  # FSDP2's sharded modules (`fully_shard`), to recognise them (`sharded_by_fsdp`)
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # a torch without torch.distributed (or before FSDP2): nothing is sharded
    FSDPModule = ()


@functools.cache
def cache_keyword(forward) -> str:
    """
    The name under which the LLM's `forward` takes a key/value cache: `cache` from transformers 5.24 on, where
    `past_key_values` warns that it goes in 5.40, else `past_key_values`.

    Args:
        forward: The LLM's `forward` function (of its class, so that the answer is worked out once per class).
    """
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def llm_pass_with_cache(model: nn.Module, cache: DynamicCache, **inputs):
    """The LLM's pass (`model.language_model.model`) over `inputs`, reading and extending `cache`, passed under the
    name its `forward` takes (`cache_keyword`). Returns its output (`last_hidden_state` `(batch, seq, llm_hidden)`)."""
    llm = model.language_model.model
    return llm(use_cache=True, **{cache_keyword(type(llm).forward): cache}, **inputs)


class SharedPromptHead:
    """
    Runs `model.language_model` over left-padded prompts (`hidden`), the shared head once. `enabled`: keep the head's
    cache between calls at inference (in eval mode, without gradients); `clear()` forgets it (needed after changing
    the LLM's weights by hand in eval mode; the model clears it whenever its weights may change).
    """

    def __init__(self, min_shared_prefix: int = 8):
        """
        Enabled, with no head kept yet.

        Args:
            min_shared_prefix: A shared head shorter than this many tokens is not worth a separate pass.
        """
        self.min_shared_prefix = min_shared_prefix
        self.enabled = True
        self.kept: tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    def clear(self) -> None:
        """Forgets the kept prompt head."""
        self.kept = None

    def caching(self, model: nn.Module) -> bool:
        """
        The kept head is used at inference only: in eval mode, without gradients, and while enabled.

        Args:
            model: The `EmoSLLMModel` whose LLM (`language_model`) runs the prompts.

        Returns:
            Whether to use and keep the head's cache now.
        """
        return self.enabled and not model.training and not torch.is_grad_enabled()

    def shared_prefix_length(
        self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, lm_labels: torch.Tensor | None = None
    ) -> int:
        """
        How many leading real tokens every left-padded prompt of the batch shares (the system turn with the task
        text), stopping before any audio placeholder and any answer token (`lm_labels`), and leaving each prompt at
        least one token of its own; 0 if the batch is not left-padded or the shared head is too short to be worth
        sharing. A batch of one prompt shares its head only at inference (with the prompt cache of earlier calls);
        nothing is shared while the LLM checkpoints its activations (`gradient_checkpointing_enable`, training mode).

        Args:
            model: The `EmoSLLMModel` whose LLM (`language_model`) runs the prompts.
            input_ids: The prompts' token ids `(batch, seq)`, with audio placeholders (`config.audio_token_id`).
            attention_mask: `(batch, seq)`, 1 on real tokens and 0 on padding.
            lm_labels: The answer's token ids `(batch, seq)` (-100 elsewhere), or None.

        Returns:
            The shared head's length in tokens, or 0.
        """
        batch = input_ids.shape[0]
        pad = (attention_mask == 0).sum(dim=1)
        real = lengths_to_mask(input_ids.shape[1] - pad, input_ids.shape[1]).flip(1)  # left-padded layout
        left_padded = torch.equal(attention_mask.bool(), real)
        if (batch < 2 and not self.caching(model)) or not left_padded:
            return 0
        # transformers' decoder layers drop a key/value cache while they checkpoint (in training mode, with gradients
        # or without: "Caching is incompatible with gradient checkpointing"), so the rest of the prompt would not see
        # the shared head; under FSDP2 backward would not reach the head's LoRA weights (`sharded_by_fsdp`). One full
        # pass per prompt instead, the same loss and gradients as without checkpointing or FSDP (tested). Both checks
        # walk the LLM's modules (6 ms a call at SmolLM2's size), so an inference call skips them.
        if model.training or torch.is_grad_enabled():
            checkpointing = any(
                getattr(m, "gradient_checkpointing", False) and m.training for m in model.language_model.modules()
            )
            if checkpointing or (torch.is_grad_enabled() and self.sharded_by_fsdp(model)):
                return 0
        shortest = int((input_ids.shape[1] - pad).min()) - 1
        if shortest < self.min_shared_prefix:
            return 0
        columns = pad[:, None] + torch.arange(shortest, device=input_ids.device)[None]
        heads = input_ids.gather(1, columns)  # (batch, shortest): each prompt's first real tokens
        same = (heads == heads[:1]).all(dim=0) & (heads[0] != model.config.audio_token_id)
        if lm_labels is not None:
            same &= (lm_labels.gather(1, columns) == -100).all(dim=0)
        length = int(same.int().cumprod(dim=0).sum())
        return length if length >= self.min_shared_prefix else 0

    @staticmethod
    def sharded_by_fsdp(model: nn.Module) -> bool:
        """
        Whether FSDP2 (`torch.distributed.fsdp.fully_shard`, as accelerate's `fsdp_version: 2` applies it) shards this
        model or its LLM. The shared prompt head is then off where gradients flow: its LoRA key/value weights would
        reach backward only through the head's key/value cache, which FSDP does not follow, so it would not gather them
        again (`setStorage: ... out of bounds for storage of size 0`); the plain pass gives the same result (tested).
        Without gradients the head is shared as on one process: a forward pass, nothing for FSDP to gather again.

        Args:
            model: The `EmoSLLMModel` whose LLM (`language_model`) runs the prompts.
        """
        return any(isinstance(module, FSDPModule) for module in (model, *model.language_model.modules()))

    def head_cache(
        self, model: nn.Module, head_ids: torch.Tensor, head_embeds: torch.Tensor, head_positions: torch.Tensor
    ) -> tuple[DynamicCache, int]:
        """
        The LLM's key/value cache of a prompt head `head_ids` `(length,)` (embedded: `(1, length, llm_hidden)`) and
        how many of its tokens it covers. At inference the head (the system turn with the task text, the same in
        every call) is computed once and kept: a later call reuses the part it shares with the kept head
        (`(layers)` key/value tensors, a few MB), so one clip at a time costs only its own tokens. In training the
        head is computed for this batch only, with gradients.

        Args:
            model: The `EmoSLLMModel` whose LLM (`language_model`) runs the prompts.
            head_ids: The head's token ids `(length,)`.
            head_embeds: The head's input embeddings `(1, length, llm_hidden)`.
            head_positions: The head's position ids `(1, length)`.

        Returns:
            The cache (batch of one) and the number of the head's leading tokens it covers.
        """
        if self.caching(model) and self.kept is not None:
            kept_ids, kept = self.kept
            common = min(len(kept_ids), len(head_ids))
            differs = (kept_ids[:common] != head_ids[:common].cpu()).nonzero()
            common = int(differs[0]) if len(differs) else common
            if common >= self.min_shared_prefix:
                layers = [(k[:, :, :common], v[:, :, :common]) for k, v in kept]
                return DynamicCache(ddp_cache_data=layers, config=model.language_model.config), common
        cache = DynamicCache(config=model.language_model.config)
        llm_pass_with_cache(model, cache, inputs_embeds=head_embeds, position_ids=head_positions)
        if self.caching(model):  # kept; this call extends a cache of its own, never the kept one
            layers = [(k, v) for k, v, *_ in cache]
            self.kept = (head_ids.cpu(), layers)
            cache = DynamicCache(ddp_cache_data=layers, config=model.language_model.config)
        return cache, len(head_ids)

    def hidden(
        self, model: nn.Module, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
        position_ids: torch.Tensor, lm_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, int]:
        """
        The LLM's last hidden states of the prompt columns `start:` `(batch, seq - start, llm_hidden)`, and `start`.

        The head that every prompt of the batch shares (`shared_prefix_length`: the system turn) runs once and
        reaches the rest of each prompt as a key/value cache (`DynamicCache`), with gradients through it in
        training; at inference it is also kept for later calls (`head_cache`). Every later token attends to
        the same keys at the same positions as in one full pass, so the result is the same (tested); a clip at
        inference then costs only its own tokens' pass (BENCHMARKS.md, "One training step").

        Args:
            model: The `EmoSLLMModel` whose LLM (`language_model`) runs the prompts.
            input_ids: The prompts' token ids `(batch, seq)`, left-padded, with audio placeholders.
            inputs_embeds: Their input embeddings `(batch, seq, llm_hidden)`, audio embeddings in the placeholders.
            attention_mask: `(batch, seq)`, 1 on real tokens and 0 on padding.
            position_ids: `(batch, seq)` position ids.
            lm_labels: The answer's token ids `(batch, seq)` (-100 elsewhere), or None.

        Returns:
            The hidden states `(batch, seq - start, llm_hidden)` and `start` (0 when no head is shared).
        """
        prefix = self.shared_prefix_length(model, input_ids, attention_mask, lm_labels)
        if prefix == 0:
            hidden = model.language_model.model(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids
            ).last_hidden_state
            return hidden, 0
        batch, length = input_ids.shape
        pad = (attention_mask == 0).sum(dim=1)
        first = int(pad[0])
        head = slice(first, first + prefix)
        cache, prefix = self.head_cache(model, input_ids[0, head], inputs_embeds[:1, head], position_ids[:1, head])
        if batch > 1:
            cache.batch_repeat_interleave(batch)
        start = int(pad.min()) + prefix  # the first column that holds a token past the shared head in some prompt
        columns = torch.arange(start, length, device=input_ids.device)
        own = columns[None] >= (pad + prefix)[:, None]  # this prompt's own tokens (its head is in the cache)
        mask = torch.cat([attention_mask.new_ones(batch, prefix), own.to(attention_mask.dtype)], dim=1)
        hidden = llm_pass_with_cache(model, cache, inputs_embeds=inputs_embeds[:, start:], attention_mask=mask,
                                     position_ids=position_ids[:, start:]).last_hidden_state
        return hidden, start


def prompts_only(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, lm_labels: torch.Tensor | None, filler: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The left-padded prompts of a batch whose prompts may be followed by answers.

    Args:
        input_ids: `(batch, seq)` left-padded prompts, each possibly followed by its answer.
        attention_mask: `(batch, seq)`, 0 on the left padding.
        lm_labels: `(batch, seq)` the answers' token ids (-100 elsewhere), or None (prompts only already).
        filler: The padding token (any token of the vocabulary but the audio placeholder; masked out).

    Returns:
        The prompts `(batch, seq')` and their attention mask `(batch, seq')`, left-padded.
    """
    if lm_labels is None:
        return input_ids, attention_mask
    keep = attention_mask.bool() & (lm_labels == -100)
    rows = [ids[row_keep] for ids, row_keep in zip(input_ids, keep)]
    width = max(len(row) for row in rows)
    ids = torch.stack([torch.cat([row.new_full((width - len(row),), filler), row]) for row in rows])
    mask = torch.stack([lengths_to_mask(torch.tensor([len(row)]), width)[0].flip(0) for row in rows])
    return ids, mask.to(attention_mask.dtype).to(attention_mask.device)


__all__ = ["SharedPromptHead", "cache_keyword", "llm_pass_with_cache", "prompts_only"]
