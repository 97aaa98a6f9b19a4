# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
FSDP and DeepSpeed: which one a run asks for (`requested_engine`), and a stop where Accelerate would not run it
(`check_engine`).
"""

import os

from transformers import TrainingArguments

__all__ = ["check_engine", "requested_engine"]


def requested_engine(training_args: TrainingArguments) -> str | None:
    """
    "fsdp" or "deepspeed" where the Trainer's flags or `accelerate launch` (its environment) ask for one, else None.

    Args:
        training_args: The run's `TrainingArguments` (`fsdp`, `fsdp_config`, `deepspeed`); besides them, the
            environment's `ACCELERATE_USE_FSDP` / `ACCELERATE_USE_DEEPSPEED` are read.
    """
    def launched(name: str) -> bool:
        return os.environ.get(name, "false").lower() in ("true", "1", "yes")

    if training_args.fsdp or training_args.fsdp_config and training_args.fsdp_config.get("fsdp_version") \
            or launched("ACCELERATE_USE_FSDP"):
        return "fsdp"
    if training_args.deepspeed or launched("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    return None


def check_engine(training_args: TrainingArguments) -> None:
    """
    Stops (`ValueError`) where FSDP or DeepSpeed is asked for but would not run: Accelerate shards a model with FSDP
    only across GPUs (or XPU, NPU, HPU, ... devices) and runs DeepSpeed only off the CPU (`use_cpu`); on the CPU both
    fall back to DDP without a word, which trains a whole copy per process instead of the asked-for shards.

    Args:
        training_args: The run's `TrainingArguments`: the engine asked for (`requested_engine`) and `device.type`.
    """
    engine = requested_engine(training_args)
    if engine is None or training_args.device.type != "cpu":
        return
    name = {"fsdp": "FSDP (--fsdp, or accelerate launch --use_fsdp)",
            "deepspeed": "DeepSpeed (--deepspeed, or accelerate launch --use_deepspeed)"}[engine]
    raise ValueError(
        f"{name} was asked for, but this run is on the CPU, where Accelerate does not run it: it would silently train "
        "with DDP instead (a whole copy of the model per process). FSDP and DeepSpeed need GPUs (or other accelerator "
        "devices): launch there, e.g. `accelerate launch --config_file configs/accelerate/"
        f"{'fsdp2.yaml' if engine == 'fsdp' else 'deepspeed_zero2_bf16.yaml'} train.py ...`. On the CPU, train with "
        "several processes by DDP: `torchrun --nproc_per_node N train.py ...` or `accelerate launch --config_file "
        "configs/accelerate/ddp.yaml train.py ...`."
    )
