# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
Resuming a killed training run (`train.py --resume`): which `checkpoint-N` the Trainer resumes from (the newest one
that was written to the end and loads) and whether it fits the model that the flags build now.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from configuration_emosllm import PROCESSOR_SETTINGS
from integrity_emosllm import MANIFEST, check_saved_weights

logger = logging.getLogger("emosllm.train")  # its messages belong to train.py's run log

__all__ = ["CHECKPOINT_STATE_FILES", "CHECKPOINT_WEIGHTS", "RUN_RECORD", "TRAINING_FLAGS", "UNRECORDED_DATA_FLAGS",
           "check_checkpoint_matches", "check_resume_matches", "check_run_record", "checkpoint_problem",
           "checkpoint_weight_files", "last_complete_checkpoint", "run_record"]


CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_STATE_FILES = ("optimizer.pt", "scheduler.pt")  # torch.save zip archives; a cut one has no central directory


def checkpoint_weight_files(checkpoint: Path) -> list[Path]:
    """
    The checkpoint's safetensors files: `model.safetensors`, or the shards its index lists.

    Args:
        checkpoint: A `checkpoint-N` folder.

    Returns:
        The files' paths (not checked to exist); a cut or missing index raises (`OSError`, `ValueError`, `KeyError`).
    """
    index = checkpoint / f"{CHECKPOINT_WEIGHTS}.index.json"
    if index.is_file():
        return [checkpoint / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return [checkpoint / CHECKPOINT_WEIGHTS]


def checkpoint_problem(checkpoint: Path) -> str | None:
    """
    Why `checkpoint` cannot be resumed from (cut, damaged or missing files), or None when it can.

    Args:
        checkpoint: A `checkpoint-N` folder; its weights are loaded to check them.
    """
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
        weight_files = checkpoint_weight_files(checkpoint)
    except (OSError, ValueError, KeyError) as error:
        return f"trainer_state.json or the weights index is missing or cut ({type(error).__name__})"
    if (checkpoint / MANIFEST).is_file():  # its weights as recorded when they were saved (older checkpoints: none)
        try:
            check_saved_weights(str(checkpoint), lambda f: str(checkpoint / f) if (checkpoint / f).is_file() else None,
                                str(checkpoint))
        except (OSError, ValueError) as error:
            return str(error)[:300]
    for weights in weight_files:
        try:
            load_file(str(weights))
        except Exception as error:  # safetensors raises its own SafetensorError, OSError for a missing file
            return f"{weights.name} does not load ({str(error)[:200]})"
    for name in CHECKPOINT_STATE_FILES:
        if not zipfile.is_zipfile(checkpoint / name):
            return f"{name} is missing or cut"
    return None


def last_complete_checkpoint(folder: Path) -> str | None:
    """
    The newest `checkpoint-N` that was written to the end and loads: its `trainer_state.json` (written last, so a run
    killed while saving leaves a folder without it, or with a cut one) parses, its weights load with safetensors,
    and its optimizer and scheduler files are whole. Newer ones that fail are skipped, saying why; the one used is
    logged.

    Args:
        folder: A training stage's output folder, which holds its `checkpoint-N` folders.

    Returns:
        The checkpoint's path as a string, or None when no checkpoint there is complete (or there is none).
    """
    numbered = []
    for checkpoint in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = checkpoint.name.rsplit("-", 1)[1]
        if checkpoint.is_dir() and step.isdigit():
            numbered.append((int(step), checkpoint))
    for _, checkpoint in sorted(numbered, reverse=True):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            logger.info("Resuming from %s", checkpoint)
            return str(checkpoint)
        logger.warning("Skipping checkpoint %s: %s; trying the one before.", checkpoint, problem)
    return None


# Config entries that say nothing about the model's shape or behaviour.
_VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "architectures", "auto_map", "custom_pipelines",
                         "torch_dtype", "dtype", "_commit_hash", "_attn_implementation_autoset"}


def _config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """`field (saved -> current)` for every entry that differs, nested configs as `text_config.hidden_size`."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        if key in _VOLATILE_CONFIG_KEYS:
            continue
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += _config_differences(old, new, f"{prefix}{key}.")
        elif json.dumps(old, sort_keys=True, default=str) != json.dumps(new, sort_keys=True, default=str):
            differences.append(f"{prefix}{key} ({json.dumps(old, default=str)[:60]} -> "
                               f"{json.dumps(new, default=str)[:60]})")
    return differences


def check_checkpoint_matches(checkpoint: str | Path, model: torch.nn.Module, processor=None) -> None:
    """
    `--resume` with flags that change the model's shape would fail deep in `load_state_dict` (or, for a checkpoint
    of a different label set, load into the wrong classes): compare the checkpoint's weight shapes and config with
    the model built now, and raise `ValueError` naming the differing config fields and weights. Config differences
    that leave every shape alike, and the processor's settings (e.g. the prompt; `processor_config.json`, which the
    checkpoint holds when the Trainer was given the processor), are a warning.

    Args:
        checkpoint: The `checkpoint-N` folder that `--resume` would load.
        model: The model that the flags build now.
        processor: The processor built now, compared with the checkpoint's `processor_config.json`; None: not compared.
    """
    checkpoint = Path(checkpoint)
    current = model.state_dict()
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    shapes = {}
    for weights in checkpoint_weight_files(checkpoint):
        with safe_open(str(weights), framework="pt") as handle:
            shapes.update({name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()})
    mismatched = [f"{name} {shapes[name]} -> {tuple(current[name].shape)}" for name in sorted(shapes)
                  if name in current and tuple(current[name].shape) != shapes[name]]
    mismatched += [f"{name} (only in the checkpoint)" for name in sorted(set(shapes) - set(current))]
    mismatched += [f"{name} (not in the checkpoint)" for name in sorted(trainable - set(shapes))]
    try:  # both through the config class and JSON, as save_pretrained writes them (defaults filled in, str keys)
        saved_config = type(model.config).from_pretrained(checkpoint).to_json_string(use_diff=False)
        fields = _config_differences(json.loads(saved_config), json.loads(model.config.to_json_string(use_diff=False)))
    except (OSError, ValueError):
        fields = []
    saved_processor = checkpoint / "processor_config.json"
    if processor is not None and saved_processor.is_file():
        saved = json.loads(saved_processor.read_text())
        fields += [f"{key} ({json.dumps(saved[key])[:60]} -> {json.dumps(getattr(processor, key))[:60]})"
                   for key in PROCESSOR_SETTINGS if key in saved and saved[key] != getattr(processor, key)]
    if mismatched:
        raise ValueError(
            f"--resume: {checkpoint} was saved by a model of another shape than these flags build. Config fields that "
            f"differ (checkpoint -> now): {', '.join(fields) or 'none recorded'}; weights: {', '.join(mismatched[:8])}"
            f"{' ...' if len(mismatched) > 8 else ''}. Resume with the flags of that run, or train into a new "
            "--output_dir."
        )
    if fields:
        logger.warning("--resume: %s was saved with other settings (checkpoint -> now): %s", checkpoint,
                       ", ".join(fields))


# What a run was started with, kept beside its checkpoints: `--resume` with other data, another split or other flags
# would go on training a model fitted to what it no longer trains on (the probe fitted on a speaker now held out).
RUN_RECORD = "run.json"
# The TrainingArguments that shape what trains (the rest, such as logging or the output folder, do not).
TRAINING_FLAGS = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                  "gradient_accumulation_steps", "seed", "lr_scheduler_type", "warmup_steps", "weight_decay", "bf16",
                  "world_size")
# DataArguments that do not change what trains.
UNRECORDED_DATA_FLAGS = ("resume", "encoder_cache_dir", "transcript_cache_dir", "skip_bad_clips", "min_clips_per_label",
                         "license")


def run_record(model_args, data_args, training_args, splits: dict) -> dict:
    """
    `{"data": {split: SHA-256 of its (file, label, speaker) rows}, "split": {split: its speakers (or groups)},
    "flags": {flag: value}}` of a run about to train: what `check_run_record` compares on `--resume`.

    Args:
        model_args: The run's `ModelArguments` (all recorded).
        data_args: The run's `DataArguments` (all but `UNRECORDED_DATA_FLAGS`); `group_column` names the split's unit.
        training_args: The run's `TrainingArguments` (only `TRAINING_FLAGS`, as strings).
        splits: The split datasets by name (`train`, `validation`, `test`), with `audio`, `label` and speaker columns;
            no audio is decoded.
    """
    import dataclasses
    import hashlib

    import datasets

    unit = data_args.group_column or "speaker"
    record = {"data": {}, "split": {}, "flags": {}}
    for name, split in splits.items():
        audio = split.cast_column("audio", datasets.Audio(decode=False))["audio"]
        rows = [[a.get("path") or hashlib.sha256(a.get("bytes") or b"").hexdigest(), str(label), str(speaker)]
                for a, label, speaker in zip(audio, split["label"], split[unit] if unit in split.column_names
                                             else [""] * len(split))]
        record["data"][name] = hashlib.sha256(json.dumps(sorted(rows)).encode()).hexdigest()
        record["split"][name] = sorted({row[2] for row in rows})
    flags = {**dataclasses.asdict(model_args),
             **{k: v for k, v in dataclasses.asdict(data_args).items() if k not in UNRECORDED_DATA_FLAGS}}
    flags.update({k: str(getattr(training_args, k)) for k in TRAINING_FLAGS})
    record["flags"] = {k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v) for k, v in flags.items()}
    return record


def check_run_record(folder: Path, record: dict, resume: bool, write: bool) -> None:
    """
    On `--resume`, the run in `folder` must have been started with `record`'s data, split and flags (a `ValueError`
    names each difference); a new run (or one without a record) writes it there (`write`: the first process only).

    Args:
        folder: The SER stage's folder (`<output_dir>/checkpoints`), where the record is kept as `run.json`.
        record: This run's record (`run_record`).
        resume: Whether the run resumes (`--resume`): a saved record is then compared, not written anew.
        write: Whether this process writes the record (True on the first process only).
    """
    path = folder / RUN_RECORD
    if resume and path.is_file():
        saved = json.loads(path.read_text())
        differences = [f"{section} {key}: {saved.get(section, {}).get(key)!r} -> {record[section].get(key)!r}"
                       for section in record for key in sorted(set(saved.get(section, {})) | set(record[section]))
                       if saved.get(section, {}).get(key) != record[section].get(key)]
        if differences:
            raise ValueError(
                f"--resume: the run in {folder} was started with other data, another split or other flags "
                f"({'; '.join(differences[:6])}). Resume with the data and flags it was started with, or train "
                "anew into another --output_dir."
            )
        return
    if write:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1))


def check_resume_matches(model: torch.nn.Module, output_dir: Path, processor=None) -> None:
    """
    Before anything runs, the checkpoints `--resume` would pick (ASR and SER stages) fit the model (and processor)
    built now.

    Args:
        model: The model that the flags build now.
        output_dir: The run's output folder, which holds the stages' folders `stage1_asr/` and `checkpoints/`.
        processor: The processor built now; None: its settings are not compared.
    """
    for folder in (output_dir / "stage1_asr", output_dir / "checkpoints"):
        checkpoint = last_complete_checkpoint(folder)
        if checkpoint is not None:
            check_checkpoint_matches(checkpoint, model, processor)
