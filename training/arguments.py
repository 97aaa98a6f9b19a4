# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
train.py's command line: the model and data flags (`ModelArguments`, `DataArguments`) beside the Trainer's
own `TrainingArguments`, with this script's defaults (`parse_args`), and `--resume_from_checkpoint` read as `--resume`.
"""

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import HfArgumentParser, TrainingArguments

from configuration_emosllm import (
    DEFAULT_AUDIO_MODEL_ID, DEFAULT_MAPPER_TYPE, DEFAULT_TEXT_MODEL_ID, MAPPER_SETTINGS, EmoSLLMConfig,
)
from lora_emosllm import DEFAULT_LORA
from precision_emosllm import bf16_is_native
from probe_fitting_emosllm import PROBE_C_GRID
from processing_emosllm import USE_TRANSCRIPT
from training.corpora import normalize_labels
from training.resume import checkpoint_problem

logger = logging.getLogger("emosllm.train")

__all__ = ["BEST_MODEL_ADVICE", "RENAMED_FLAGS", "DataArguments", "ModelArguments", "parse_args", "parse_labels",
           "resume_from_checkpoint"]


# Flags renamed when the part between encoder and LLM took the paper's name (the mapper): still read, with a warning.
RENAMED_FLAGS = {"--adapter_type": "--mapper_type", "--adapter_hidden_size": "--mapper_hidden_size",
                 "--adapter_learning_rate": "--mapper_learning_rate"}


@dataclass
class ModelArguments:
    """
    The model's options. Each left unset takes the config's (`EmoSLLMConfig`), the processor's (`EmoSLLMProcessor`)
    or LoRA's (`lora_emosllm.DEFAULT_LORA`) own default, which is the measured recipe: each default is stated once.
    """

    audio_encoder: str = field(default=DEFAULT_AUDIO_MODEL_ID, metadata={"help": "Hub id or folder of the encoder."})
    llm: str = field(default=DEFAULT_TEXT_MODEL_ID, metadata={"help": "Hub id or folder of the LLM."})
    # The choices (Literal) are the config's and processor's own, so a misspelt value stops the run before any data.
    mapper_type: Literal[tuple(MAPPER_SETTINGS)] | None = field(
        default=None,
        metadata={"help": f"The mapper between encoder and LLM: {' | '.join(MAPPER_SETTINGS)} (default: the config's, "
                  f"{DEFAULT_MAPPER_TYPE}; qpmapper is the paper's Query Pooling Mapper)."},
    )
    num_queries: int | None = field(
        default=None, metadata={"help": "qpmapper: learned queries; statistics: audio embeddings (default: "
                                "the mapper's, MAPPER_SETTINGS)."},
    )
    mapper_hidden_size: int | None = field(
        default=None, metadata={"help": "Width of the qpmapper/Q-Former transformer and of the MLP (default: the "
                                "mapper's, MAPPER_SETTINGS)."},
    )
    encoder_layer_combination: EmoSLLMConfig.__annotations__["encoder_layer_combination"] | None = field(
        default=None, metadata={"help": "concatenate | weighted_average (default: the config's, "
                                f"{EmoSLLMConfig.encoder_layer_combination})."},
    )
    language_model_training: EmoSLLMConfig.__annotations__["language_model_training"] | None = field(
        default=None, metadata={"help": "lora | frozen | full (default: the config's, "
                                f"{EmoSLLMConfig.language_model_training})."},
    )
    lora_rank: int | None = field(default=None, metadata={"help": f"LoRA's rank (default {DEFAULT_LORA['r']})."})
    lora_alpha: int | None = field(default=None, metadata={"help": f"Default {DEFAULT_LORA['lora_alpha']}."})
    lora_dropout: float | None = field(default=None, metadata={"help": f"Default {DEFAULT_LORA['lora_dropout']}."})
    audio_loss_weight: float | None = field(
        default=None, metadata={"help": "Weight of the auxiliary emotion loss on the mean audio embedding (0: off; "
                                f"default: the config's, {EmoSLLMConfig.audio_loss_weight:g})."},
    )
    probe_c: str | None = field(
        default=None,
        metadata={"help": "The probe mapper: inverse L2 strengths (scikit-learn's C) to try, comma-separated (default: "
                  f"{','.join(f'{c:g}' for c in PROBE_C_GRID)}); the one with the best validation UA is kept (without "
                  "validation speakers: by cross-validation over the training speakers). A best C at the grid's edge "
                  "extends the grid past it (logged)."},
    )
    departure_folds: int | None = field(
        default=None,
        metadata={"help": "The probe mapper without validation speakers: how many of the probe's cross-validation "
                  "folds decide how far the LLM's answer may depart from its probe. The LLM is trained without each "
                  "fold's speakers in turn and scored on them (all their clips together); the first fold's model is "
                  "the one saved, each further fold trains it once more. Default: every fold (up to 4; under FSDP or "
                  "DeepSpeed the first only); 1: the first fold only, the fastest, but one fold's speakers are a "
                  "noisy judge."},
    )
    mapper_learning_rate: float = field(
        default=1e-3, metadata={"help": "Learning rate of the mapper; --learning_rate is the LLM's (LoRA)."}
    )
    head_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the encoder's layer weights and the class heads (default: "
                  "--mapper_learning_rate). The statistics mapper: --mapper_learning_rate 1e-2 with 1e-3 here."},
    )
    use_transcript: Literal[USE_TRANSCRIPT] | None = field(
        default=None,
        metadata={"help": "auto (the processor's default: given transcripts; training clips without one are "
                  "transcribed by Whisper, a sample first, which stops there when the words do not tell the emotions "
                  "apart (see --force_transcripts), cached in --transcript_cache_dir; the saved model transcribes "
                  "clips that come without one) | given (only given ones) | none (never)."},
    )
    prompt: str | None = field(default=None, metadata={"help": "The task text (default: the processor's)."})
    transcript_dropout: float = field(
        default=0.5,
        metadata={"help": "Share of training prompts shown without their transcript (drawn per clip and epoch), so a "
                  "missing transcript costs little at inference."},
    )
    backbone_cache_dir: str | None = field(default=None, metadata={"help": "Where converted backbones live."})
    save_full_weights: bool = field(
        default=False,
        metadata={"help": "Also write the frozen backbones' weights (bf16) into the output folder. Default: a lean "
                  "folder with only what EmoSLLM trained and fitted, which loads its backbones by Hub id."},
    )


@dataclass
class DataArguments:
    data_dir: str | None = field(
        default=None,
        metadata={"help": "A local corpus: a folder with a manifest.csv or RAVDESS/CREMA-D/TESS/EmoDB names, an "
                  "audiofolder (label subfolders, or a metadata.csv with file_name), a CSV/JSON table of audio paths "
                  "(or a folder holding one), or a save_to_disk folder (Dataset or DatasetDict). Default: the "
                  "generated smoke corpus."},
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "A `datasets` dataset: a Hub id, or any local source --data_dir takes."}
    )
    dataset_split: str = field(
        default="train", metadata={"help": "The split to read (several: 'train+test'); a dataset of one split is "
                                   "read whatever its name; another name for data without splits is refused."}
    )
    audio_column: str = field(
        default="audio", metadata={"help": "Audio, or audio file paths (default: 'audio', else a 'path' or "
                                   "'file_name' column)."}
    )
    label_column: str = field(default="label")
    transcript_column: str | None = field(default=None)
    text_feature_columns: str | None = field(
        default=None,
        metadata={"help": "Comma-separated columns of the data that the LLM reads as text, e.g. 'gender' (the paper "
                  "gives the speaker's gender): each clip's value becomes a line of its prompt ('Gender: female.'); "
                  "an empty value is left out. The model then expects them at inference (text_features={...}; the "
                  "command line reads them from a table's columns). Default: none."},
    )
    speaker_column: str | None = field(default=None, metadata={"help": "Default: a 'speaker' column, if any."})
    group_column: str | None = field(
        default=None,
        metadata={"help": "Split by this column (e.g. a session or recording id) instead of by speaker; "
                  "--test_speakers/--eval_speakers then name its values. Without it and without speaker ids the "
                  "clips are split at random (seeded, stratified by label): not speaker-independent."},
    )
    labels: str | None = field(default=None, metadata={"help": "Comma-separated label set (default: the data's)."})
    license: str | None = field(
        default=None,
        metadata={"help": "The training data's licence as a Hub licence id (e.g. cc-by-nc-sa-4.0), for the model "
                  "card; RAVDESS, CREMA-D and TESS are recognised. Non-commercial, no-derivatives or share-alike "
                  "terms become the model's licence too."},
    )
    test_speakers: str | None = field(
        default=None,
        metadata={"help": "e.g. '17-20'; default: the last 20%% of speakers, or, where those lack a label, speakers "
                  "chosen to hold every label (stratified by label, grouped by speaker; logged)."},
    )
    eval_speakers: str | None = field(
        default=None, metadata={"help": "e.g. '13-16'; default: the 10%% before, or chosen with the test speakers; "
                                "'none': no validation split (the probe's folds of the training speakers choose)."}
    )
    folds: int = field(default=0, metadata={"help": "K>1: leave-speakers-out cross-validation instead."})
    speed_perturbation: str = field(
        default="0.9",
        metadata={"help": "Comma-separated speed factors: each training clip also gets a copy resampled by each "
                  "(tempo and pitch change together); the probe is fitted on them too. Default 0.9 (the probe's "
                  "cross-validated UA on RAVDESS rose by 0.014, BENCHMARKS.md); empty: none."},
    )
    noise_snr_db: str = field(
        default="",
        metadata={"help": "Comma-separated SNRs in dB, e.g. '20,10': each training clip also gets a copy with white "
                  "noise at each. Empty (default): none."},
    )
    asr_epochs: float = field(default=0.0, metadata={"help": "Epochs of the ASR stage before SER (0: none); every "
                                                           "training clip needs a transcript."})
    encoder_cache_dir: str | None = field(default=None, metadata={"help": "Cache of frozen-encoder outputs."})
    transcript_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where --use_transcript auto keeps the transcripts Whisper writes for clips without one, by "
                  "audio content and ASR model (default: transcripts/ under the backbone cache, $HF_HOME/emosllm)."},
    )
    force_transcripts: bool = field(
        default=False,
        metadata={"help": "--use_transcript auto: transcribe every training clip without a transcript and train with "
                  "the words, even where a transcribed sample shows that they do not tell the emotions apart."},
    )
    resume: bool = field(default=False, metadata={"help": "Resume from the last checkpoint in output_dir."})
    skip_bad_clips: bool = field(
        default=False,
        metadata={"help": "Leave out clips that fail the audio checks (damaged, truncated, NaN, silent, too short, "
                  "too long) and list them; default: stop at the first one, before training."},
    )
    min_clips_per_label: int = field(
        default=5, metadata={"help": "Warn when a label has fewer training clips than this (none at all: an error)."}
    )

    @property
    def no_validation(self) -> bool:
        """`--eval_speakers none`: no validation split."""
        return self.eval_speakers is not None and self.eval_speakers.strip().lower() == "none"


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """
    The command line (or `argv`) with this script's defaults.

    Args:
        argv: The arguments, without the program's name; None: `sys.argv[1:]`. Renamed flags (`RENAMED_FLAGS`) are
            read under their new names, with a warning.

    Returns:
        `(model_args, data_args, training_args)`, `--resume_from_checkpoint` read as `--resume`
        (`resume_from_checkpoint`).
    """
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    # Defaults that fit this model on a CPU; every TrainingArguments flag still works.
    parser.set_defaults(
        output_dir="outputs/emosllm", per_device_train_batch_size=8, per_device_eval_batch_size=16,
        learning_rate=5e-4, num_train_epochs=2, lr_scheduler_type="cosine", warmup_steps=0.1, weight_decay=0.01,
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=2, logging_steps=10, report_to="none",
        remove_unused_columns=False, label_names=["labels"], seed=42, dataloader_num_workers=0,
        bf16=bf16_is_native(), use_cpu=not torch.cuda.is_available(), metric_for_best_model="ua", greater_is_better=True,
        # None: not given. The SER stage then keeps its best checkpoint by validation UA wherever the save and eval
        # strategies allow it, and the last model elsewhere (`stage_arguments`); True/False: as asked.
        load_best_model_at_end=None,
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    for index, flag in enumerate(argv):
        name, _, value = flag.partition("=")
        if name in RENAMED_FLAGS:
            logger.warning("%s is now %s; please use the new name.", name, RENAMED_FLAGS[name])
            argv[index] = RENAMED_FLAGS[name] + ("=" + value if value else "")
    try:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as error:  # TrainingArguments' own check, e.g. --load_best_model_at_end true --save_strategy no
        if "load_best_model_at_end" not in str(error):
            raise
        raise ValueError(f"{error}\n{BEST_MODEL_ADVICE}") from None
    resume_from_checkpoint(data_args, training_args)
    if data_args.force_transcripts and model_args.use_transcript not in (None, "auto"):
        raise ValueError(f"--force_transcripts true has Whisper transcribe clips for --use_transcript auto; with "
                         f"--use_transcript {model_args.use_transcript} nothing is transcribed. Leave it out, or pass "
                         "--use_transcript auto.")
    for flag, value, unread in (("--transcript_column", data_args.transcript_column, ("none",)),
                                ("--transcript_cache_dir", data_args.transcript_cache_dir, ("none", "given"))):
        if value is not None and model_args.use_transcript in unread:
            raise ValueError(f"{flag} {value} is for transcripts {'Whisper writes, ' if 'given' in unread else ''}and "
                             f"--use_transcript {model_args.use_transcript} reads none: leave one of the two out.")
    given = [f"--{name} {value}" for name, value in (("test_speakers", data_args.test_speakers),
                                                     ("eval_speakers", data_args.eval_speakers))
             if value is not None and not (name == "eval_speakers" and data_args.no_validation)]
    if data_args.folds > 1 and given:
        raise ValueError(f"--folds {data_args.folds} tests every speaker in turn, so {' and '.join(given)} would be "
                         "ignored: drop them for cross-validation, or drop --folds for that one split.")
    if model_args.departure_folds is not None and model_args.departure_folds < 1:
        raise ValueError(f"--departure_folds {model_args.departure_folds}: give at least 1 (the first fold only), or "
                         "leave it out for every fold.")
    return model_args, data_args, training_args


def resume_from_checkpoint(data_args: DataArguments, training_args: TrainingArguments) -> None:
    """
    The Trainer's own `--resume_from_checkpoint` works as `--resume`: `true` resumes from the newest complete
    checkpoint in the output folder, a path from that checkpoint (checked to be complete). Raises `ValueError`
    naming a path that is not a complete checkpoint.

    Args:
        data_args: The data flags; `resume` is set where a checkpoint is asked for.
        training_args: The Trainer's flags; its `resume_from_checkpoint` is read (and set to None for `true`).
    """
    asked = training_args.resume_from_checkpoint
    if not asked:
        return
    data_args.resume = True
    if str(asked).lower() in ("true", "1", "yes"):
        training_args.resume_from_checkpoint = None
        return
    problem = "it is not a folder" if not Path(asked).is_dir() else checkpoint_problem(Path(asked))
    if problem:
        raise ValueError(f"--resume_from_checkpoint {asked!r} cannot be resumed from: {problem}. Pass a complete "
                         "checkpoint-N folder of this run (under <output_dir>/checkpoints), or --resume true for the "
                         "newest complete one.")


BEST_MODEL_ADVICE = (
    "With --load_best_model_at_end true, evaluate during training (--eval_strategy epoch or steps) and save at the "
    "same moments (--save_strategy the same, or 'best'; --save_steps a multiple of --eval_steps). Or leave "
    "--load_best_model_at_end out: train.py then keeps the best checkpoint where the strategies allow it, and the "
    "last model where they do not."
)


def parse_labels(text: str | None) -> list[str] | None:
    """
    `--labels 'happy, Sad'` -> ['happy', 'sad'] (normalized like the data's labels), or None when not given.

    Args:
        text: The flag's comma-separated labels, or None.
    """
    return normalize_labels(text.split(",")) if text else None
