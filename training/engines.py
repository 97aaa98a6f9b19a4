# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
FSDP and DeepSpeed: which one a run asks for (`requested_engine`), a stop where Accelerate would not run it
(`check_engine`, `check_engine_runs`), and the shards of DeepSpeed ZeRO-3 and FSDP: models built whole
(`models_built_whole`), the trained model gathered whole for the final save (`model_to_save`).
"""

import contextlib
import os
from collections.abc import Iterator

from transformers import Trainer, TrainingArguments
from transformers.integrations import is_deepspeed_zero3_enabled, set_hf_deepspeed_config, unset_hf_deepspeed_config

from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition

__all__ = ["check_engine", "check_engine_runs", "model_in_shards", "model_to_save", "models_built_whole",
           "requested_engine", "zero3_enabled"]


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
    Stops (`ValueError`) where FSDP is asked for on the CPU, before any data is read: Accelerate shards a model with
    FSDP only across GPUs (or XPU, NPU, HPU, ... devices), and on the CPU each process would train a whole copy of its
    own without a word. DeepSpeed runs on the CPU (its CPU accelerator); `check_engine_runs` confirms, once the
    Trainer exists, that the engine asked for is the one that runs.

    Args:
        training_args: The run's `TrainingArguments`: the engine asked for (`requested_engine`) and `device.type`.
    """
    if requested_engine(training_args) == "fsdp" and training_args.device.type == "cpu":
        raise ValueError(
            "FSDP (--fsdp, or accelerate launch --use_fsdp) was asked for, but this run is on the CPU, where Accelerate "
            "does not run it: each process would silently train a whole copy of the model instead of the asked-for "
            "shards. FSDP needs GPUs (or other accelerator devices): launch there, e.g. `accelerate launch "
            "--config_file configs/accelerate/fsdp2.yaml train.py ...`. On the CPU, shard with DeepSpeed "
            "(`accelerate launch --config_file configs/accelerate/deepspeed_zero3_bf16.yaml train.py ...`), or train "
            "with several processes by DDP: `torchrun --nproc_per_node N train.py ...`."
        )


def check_engine_runs(trainer: Trainer) -> None:
    """
    Stops (`ValueError`) where the Trainer's Accelerator does not run the engine the run asked for (`requested_engine`),
    which it would otherwise replace by plain data parallelism without a word.

    Args:
        trainer: The run's Trainer, created (its Accelerator decided the engine) but not yet trained.
    """
    asked = requested_engine(trainer.args)
    runs = {"fsdp": trainer.is_fsdp_enabled, "deepspeed": trainer.is_deepspeed_enabled}.get(asked, True)
    if not runs:
        raise ValueError(
            f"{asked} was asked for, but Accelerate runs this training without it "
            f"({trainer.accelerator.distributed_type}). Launch with its config file, e.g. `accelerate launch "
            "--config_file configs/accelerate/" + ("fsdp2.yaml" if asked == "fsdp" else "deepspeed_zero2_bf16.yaml")
            + " train.py ...`, or leave it out to train with DDP."
        )


@contextlib.contextmanager
def models_built_whole(training_args: TrainingArguments) -> Iterator[None]:
    """
    Models built or loaded inside the context are whole under DeepSpeed ZeRO-3, whose `zero3_init_flag` (or
    `--deepspeed` with stage 3) makes transformers build every pretrained model inside `deepspeed.zero.Init`,
    partitioned as it is made. EmoSLLM runs its audio encoder and reads the LLM's embeddings before the engine starts
    (the encoder cache, the layer statistics, the probe's fit and soft-word start), so it builds its backbones whole,
    as under DDP (about 1.1x the weights in host memory per process), and `deepspeed.initialize` partitions them when
    the Trainer prepares the model; the saved folder is scored loaded whole too. transformers decides this from one
    global setting (its `HfDeepSpeedConfig`), which this context holds off and then gives back to the run's own
    (`TrainingArguments.hf_deepspeed_config`, or the Accelerate plugin's).

    Args:
        training_args: The run's `TrainingArguments`.
    """
    owner = getattr(training_args, "hf_deepspeed_config", None) or getattr(
        getattr(training_args, "deepspeed_plugin", None), "dschf", None)
    if not is_deepspeed_zero3_enabled() or owner is None:
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(owner)


def zero3_enabled(trainer: Trainer) -> bool:
    """Whether the Trainer runs DeepSpeed ZeRO-3, which holds every parameter in shards across the processes."""
    return trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3


def model_in_shards(trainer: Trainer) -> bool:
    """Whether the trained model is held in shards across the processes (DeepSpeed ZeRO-3, FSDP): every forward then
    gathers them, all processes together."""
    return zero3_enabled(trainer) or trainer.is_fsdp_enabled


@contextlib.contextmanager
def model_to_save(trainer: Trainer) -> Iterator:
    """
    The trained model whole, for the first process to save the folder as one process would (the same files, lean or
    with every weight). Every process enters the context (gathering the shards is a collective):

    - DDP, one process, ZeRO-1/2: the model itself.
    - DeepSpeed ZeRO-3: the model, its parameters gathered whole inside the context (DeepSpeed's `GatheredParameters`,
      read-only).
    - FSDP: torch's full state dict (`get_model_state_dict`, gathered to the first process's CPU) put into a copy of
      the model built on the meta device there; None on the other processes. (FSDP2's own `state_dict` holds shards
      even while the parameters are gathered.)

    Args:
        trainer: The run's Trainer, after training.

    Yields:
        The model to save on the first process (elsewhere the model, or None under FSDP).
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    if zero3_enabled(trainer):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield model
    elif trainer.is_fsdp_enabled:
        import torch
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(trainer.model_wrapped, options=StateDictOptions(full_state_dict=True,
                                                                                     cpu_offload=True))
        if trainer.args.process_index != 0:
            yield None
            return
        with torch.device("meta"):
            whole = EmoSLLMForSpeechEmotionRecognition(model.config, lora_config=model.lora_config)
        whole.load_state_dict(state, strict=True, assign=True)
        whole.tie_weights()
        yield whole
    else:
        yield model
