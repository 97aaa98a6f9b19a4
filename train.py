# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
Fine-tune and evaluate EmoSLLM on emotional speech with transformers' Trainer (and so Accelerate).

    python train.py                                    # offline smoke run: generated corpus, default backbones
    python train.py --data_dir ../shared/data/ravdess --test_speakers 17-20 --eval_speakers 13-16
    python train.py --data_dir my_audiofolder          # also a CSV/JSON table, a save_to_disk folder; a Hub id:
    python train.py --dataset_name user/dataset        #   --dataset_name (data_emosllm.load_source)
    torchrun --nproc_per_node 2 train.py ...           # several processes (CPU: gloo; GPUs: NCCL)

Stages (as in the paper): an optional ASR stage (`--asr_epochs`) where the LLM writes the transcript, then the SER
stage where it names the emotion. The frozen audio encoder's outputs are computed once and cached on disk.
"""

import dataclasses
import gc
import hashlib
import json
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import datasets
import numpy as np
import torch
from scipy.signal import resample_poly
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.utils import logging as hf_logging

import transcription_emosllm
from audio_emosllm import decode_audio, prepare_clip, read_audio_file
from backbones_emosllm import default_cache_dir, resolve_pretrained
from processing_emosllm import DEFAULT_PROMPT
from data_emosllm import (
    SAMPLING_RATE,
    clip_folds,
    compute_ser_metrics,
    has_speaker_ids,
    load_corpus,
    load_source,
    normalize_labels,
    save_confusion_matrix,
    speaker_folds,
    speaker_ids,
    speaker_sort_key,
    split_by_clips,
    split_by_speakers,
    write_report,
)
from encoder_cache_emosllm import EncoderStateCache, cached_states, padded_states
from hub_emosllm import push_to_hub, write_model_card
from integrity_emosllm import write_json_atomically
from modeling_emosllm import (
    EmoSLLMForSpeechEmotionRecognition, backbones_left_out, bf16_is_native, saved_language_model_dtype,
)
from processing_emosllm import EmoSLLMProcessor
from resume_emosllm import (
    check_resume_matches,
    check_run_record,
    checkpoint_problem,
    last_complete_checkpoint,
    run_record,
)
from smoke_corpus_emosllm import make_smoke_corpus
from transcription_emosllm import resolve_transcripts

logger = logging.getLogger("emosllm.train")

SMOKE_DIR = Path(__file__).resolve().parent / "data" / "smoke"
# Debug output, off by default: with EMOSLLM_RECORD_TRAINING_CLIPS=1 every process appends one JSON line per training
# clip its dataloader reads to <stage folder>/training_clips/rank<N>.jsonl ({"world_size", "rank", "epoch", "index",
# "clip"}), to check that several processes (torchrun) read disjoint shares of the data.
RECORD_CLIPS_ENV = "EMOSLLM_RECORD_TRAINING_CLIPS"


@dataclass
class ModelArguments:
    audio_encoder: str = field(default="openai/whisper-tiny.en", metadata={"help": "Hub id or folder of the encoder."})
    llm: str = field(default="HuggingFaceTB/SmolLM2-135M-Instruct", metadata={"help": "Hub id or folder of the LLM."})
    adapter_type: str = field(
        default="probe",
        metadata={"help": "probe (default: the best measured on RAVDESS-sized data, BENCHMARKS.md) | qpmapper (the "
                  "paper's) | qformer | mlp | statistics."},
    )
    encoder_layer_combination: str = field(
        default="concatenate",
        metadata={"help": "concatenate (every encoder layer side by side; default) | weighted_average (learned)."},
    )
    probe_c: str = field(
        default="0.001,0.003,0.01,0.03",
        metadata={"help": "The probe interface: inverse L2 strengths (scikit-learn's C) to try; the one with the best "
                  "validation UA is kept (without validation speakers: by cross-validation over the training "
                  "speakers). A best C at the grid's edge extends the grid past it (logged)."},
    )
    num_queries: int = field(
        default=32,
        metadata={"help": "qpmapper: learned queries (the paper: 32); statistics: audio embeddings (its recipe: 4)."},
    )
    adapter_hidden_size: int = field(
        default=256,
        metadata={"help": "Width of the qpmapper/Q-Former transformer and of the MLP. The paper's 768 scored the "
                  "same on RAVDESS with 4x the trainable parameters (BENCHMARKS.md)."},
    )
    lora_rank: int = field(default=8, metadata={"help": "0 trains the interface only."})
    lora_alpha: int = field(default=16)
    lora_dropout: float = field(
        default=0.0,
        metadata={"help": "Dropout on LoRA's input (default 0: the LLM only learns to read one soft word here, and "
                  "drawing the masks added 12%% to a CPU training step, BENCHMARKS.md)."},
    )
    freeze_language_model: bool = field(
        default=True, metadata={"help": "False (with --lora_rank 0): fine-tune all LLM weights instead of LoRA."}
    )
    adapter_learning_rate: float = field(
        default=1e-3, metadata={"help": "Learning rate of the interface; --learning_rate is the LLM's (LoRA)."}
    )
    head_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the encoder's layer weights and the class heads (default: "
                  "--adapter_learning_rate). The statistics interface: --adapter_learning_rate 1e-2 with 1e-3 here."},
    )
    audio_loss_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of the auxiliary emotion loss on the mean audio embedding (0: off; BENCHMARKS.md)."},
    )
    use_transcript: str = field(
        default="auto",
        metadata={"help": "auto (default: given transcripts; training clips without one are transcribed by Whisper, "
                  "a sample first, which stops there when the words do not tell the emotions apart (see "
                  "--force_transcripts), cached in --transcript_cache_dir; the saved model transcribes clips that "
                  "come without one) | given (only given ones) | none (never)."},
    )
    transcript_dropout: float = field(
        default=0.5,
        metadata={"help": "Share of training prompts shown without their transcript (drawn per clip and epoch), so a "
                  "missing transcript costs little at inference."},
    )
    prompt: str = field(default=DEFAULT_PROMPT)
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
        default="train", metadata={"help": "The split to read (several: 'train+test'); a single split is read "
                                   "whatever its name."}
    )
    audio_column: str = field(
        default="audio", metadata={"help": "Audio, or audio file paths (default: 'audio', else a 'path' or "
                                   "'file_name' column)."}
    )
    label_column: str = field(default="label")
    transcript_column: str | None = field(default=None)
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
        default=None, metadata={"help": "e.g. '13-16'; default: the 10%% before, or chosen with the test speakers."}
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
    asr_epochs: float = field(default=0.0, metadata={"help": "Epochs of the ASR stage before SER (0: none)."})
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


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """The command line (or `argv`) with this script's defaults."""
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
    try:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as error:  # TrainingArguments' own check, e.g. --load_best_model_at_end true --save_strategy no
        if "load_best_model_at_end" not in str(error):
            raise
        raise ValueError(f"{error}\n{BEST_MODEL_ADVICE}") from None
    resume_from_checkpoint(data_args, training_args)
    if data_args.force_transcripts and model_args.use_transcript != "auto":
        raise ValueError(f"--force_transcripts true has Whisper transcribe clips for --use_transcript auto; with "
                         f"--use_transcript {model_args.use_transcript} nothing is transcribed. Leave it out, or pass "
                         "--use_transcript auto.")
    return model_args, data_args, training_args


def resume_from_checkpoint(data_args: DataArguments, training_args: TrainingArguments) -> None:
    """
    The Trainer's own `--resume_from_checkpoint` works as `--resume`: `true` resumes from the newest complete
    checkpoint in the output folder, a path from that checkpoint (checked to be complete). Raises `ValueError`
    naming a path that is not a complete checkpoint.
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


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------
def parse_labels(text: str | None) -> list[str] | None:
    """`--labels 'happy, Sad'` -> ['happy', 'sad'] (normalized like the data's labels), or None when not given."""
    return normalize_labels(text.split(",")) if text else None


def load_data(args: DataArguments):
    """
    The corpus (`data_emosllm.load_source`: a corpus folder, audiofolder, CSV/JSON table, save_to_disk folder or,
    for --dataset_name, a Hub id), its labels normalized (strip, lower case) and checked against `--labels` (or for
    typos).
    """
    labels = parse_labels(args.labels)
    if args.dataset_name and args.data_dir:
        raise ValueError("Give the data once: --data_dir (a local folder or file) or --dataset_name (a Hub id or "
                         "local source), not both.")
    if not args.dataset_name and not args.data_dir:
        return load_corpus(make_smoke_corpus(SMOKE_DIR), labels)
    return load_source(
        args.dataset_name or args.data_dir, args.dataset_split, args.audio_column, args.label_column,
        args.transcript_column, args.speaker_column, labels, hub=bool(args.dataset_name),
    )


NO_SPEAKERS_WARNING = (
    "The data has no speaker ids, so the split CANNOT be speaker-independent: a voice can be in training and in "
    "test, which scores higher than new speakers will. Splitting by clip (stratified by label, seed %d). To split "
    "properly, name the speaker column (--speaker_column), or a session/recording column (--group_column)."
)


def split_unit(dataset, args: DataArguments, seed: int) -> str | None:
    """
    The column no two splits share: `--group_column`, else `speaker`; None (split by clip, with a warning) when no
    row has a speaker id. Some rows with and some without one is an error.
    """
    if args.group_column:
        if args.group_column not in dataset.column_names:
            raise ValueError(f"--group_column {args.group_column!r} is not a column of the data (columns: "
                             f"{dataset.column_names}).")
        speaker_ids(dataset, args.group_column)  # a value on every row
        logger.info("Splitting by %r: no value of it is in two splits.", args.group_column)
        return args.group_column
    present = has_speaker_ids(dataset)
    if present:
        return "speaker"
    if present is None:
        missing = [i for i, s in enumerate(dataset["speaker"]) if s is None or str(s) == ""]
        raise ValueError(f"{len(missing)} of {len(dataset)} rows have no speaker id (first: row {missing[0]}): give "
                         "every row one, or split by another column that every row has with --group_column.")
    if args.test_speakers or args.eval_speakers:
        raise ValueError("--test_speakers/--eval_speakers: the data has no speaker ids. Name its speaker column with "
                         "--speaker_column, or a column to split by with --group_column (its values are then named), "
                         "or leave both out to split by clip.")
    logger.warning(NO_SPEAKERS_WARNING, seed)
    return None


def make_splits(dataset, args: DataArguments, seed: int) -> list:
    """
    The splits to train on: one `DatasetDict` (train, validation, test), or `--folds` of them (train, test). By
    speaker (or `--group_column`): `--test_speakers`/`--eval_speakers`, else `default_speaker_split`; without
    speaker ids, by clip (`split_by_clips`, `clip_folds`).
    """
    unit = split_unit(dataset, args, seed)
    if args.folds > 1:
        return speaker_folds(dataset, args.folds, unit) if unit else clip_folds(dataset, args.folds, seed)
    if unit is None:
        return [split_by_clips(dataset, seed=seed)]
    test, validation = args.test_speakers, args.eval_speakers
    if test is None:
        test, default_validation = default_speaker_split(dataset, unit, seed)
        validation = validation or default_validation
    return [split_by_speakers(dataset, test, validation, unit)]


# The default split's shares of speakers: the last 20% for test, the 10% before for validation.
TEST_SHARE, VALIDATION_SHARE = 0.2, 0.1
# Shuffles of scikit-learn's StratifiedGroupKFold tried when that split leaves a label out of test or validation.
SPLIT_SEARCH_SHUFFLES = 10


def default_speaker_split(dataset, column: str = "speaker", seed: int = 0) -> tuple[list[str], list[str]]:
    """
    Test and validation speakers (or values of `column`) when none are named: the last 20% of speakers in natural
    order (at least one) for test and the 10% before (at least one) for validation, as long as both hold every
    label of the data. Where they do not (speakers who each show mostly one emotion), `speakers_covering_labels`
    chooses them instead, stratified by label and grouped by speaker (logged); where no choice puts every label in
    test and validation while training keeps every label, a warning names the missing labels.
    """
    speakers = speaker_ids(dataset, column)
    unique = sorted(set(speakers), key=speaker_sort_key)
    if len(unique) < 3:
        what = "Speaker-independent splits need at least 3 speakers" if column == "speaker" else \
            f"Splits by {column!r} need at least 3 values of it"
        raise ValueError(f"{what}; the data has {unique}.")
    num_test = max(1, round(TEST_SHARE * len(unique)))
    num_eval = max(1, round(VALIDATION_SHARE * len(unique)))
    test, validation = unique[-num_test:], unique[-num_test - num_eval:-num_test]
    labels = [str(label) for label in dataset["label"]]
    every = set(labels)
    labels_of: dict[str, set[str]] = {}
    for speaker, label in zip(speakers, labels):
        labels_of.setdefault(speaker, set()).add(label)

    def missing(group: Sequence[str]) -> list[str]:
        return sorted(every - set().union(*(labels_of[s] for s in group)))

    left_out = {name: missing(group) for name, group in (("test", test), ("validation", validation)) if missing(group)}
    if not left_out:
        return test, validation
    what = "speakers" if column == "speaker" else f"{column!r} values"
    test, validation = speakers_covering_labels(labels, speakers, seed)
    logger.info("The default split (the last %d%% of %s for test, the %d%% before for validation) leaves %s; chosen "
                "by label instead (scikit-learn's StratifiedGroupKFold, seed %d): test %s, validation %s.",
                round(100 * TEST_SHARE), what, round(100 * VALIDATION_SHARE),
                "; ".join(f"{absent} out of {name}" for name, absent in left_out.items()), seed, test, validation)
    train = sorted(set(unique) - set(test) - set(validation))
    still = {name: m for name, group in (("test", test), ("validation", validation)) if (m := missing(group))}
    if still or missing(train):
        few = {label: n for label in sorted(every) if (n := sum(label in labels_of[s] for s in unique)) < 3}
        why = ("; held by fewer than 3 " + what + ": " + ", ".join(f"{label!r} ({n})" for label, n in few.items())
               if few else "")
        logger.warning("No split of these %s puts every label in test and validation while training keeps every "
                       "label: %s%s. Scores leave those labels out; name the %s with --test_speakers/--eval_speakers "
                       "to choose otherwise.", what, "; ".join(f"{m} missing from {name}" for name, m in
                                                             {**still, "train": missing(train)}.items() if m),
                       why, what)
    return test, validation


def speakers_covering_labels(labels: Sequence[str], speakers: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
    """
    Test (~20% of the clips) and validation (~10%) speakers chosen by label: the folds of scikit-learn's
    `StratifiedGroupKFold` (up to 10, grouped by speaker, stratified by label; `SPLIT_SEARCH_SHUFFLES` shuffles from
    `seed`), combined into test and validation; the best combination keeps every label in training first, then puts
    every label in test and validation, then has label shares and sizes closest to the whole data's. Deterministic.
    """
    import itertools
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    unique = sorted(set(speakers), key=speaker_sort_key)
    num_folds = min(10, len(unique))
    num_test, num_eval = max(1, round(TEST_SHARE * num_folds)), max(1, round(VALIDATION_SHARE * num_folds))
    every = sorted(set(labels))
    overall = np.array([Counter(labels)[label] for label in every]) / len(labels)
    label_ids = np.array([every.index(label) for label in labels])

    def score(counts: np.ndarray, share: float) -> float:  # label shares' total variation, plus the size's miss
        size = counts.sum()
        return float(np.abs(counts / max(size, 1) - overall).sum() / 2 + abs(size / len(labels) - share))

    best, best_score = None, None
    for shuffle in range(seed, seed + SPLIT_SEARCH_SHUFFLES):
        splitter = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=shuffle)
        with warnings.catch_warnings():  # "the least populated class has fewer members than n_splits": expected
            warnings.simplefilter("ignore", UserWarning)
            folds = [rows for _, rows in splitter.split(np.zeros(len(labels)), labels, speakers)]
        fold_counts = np.stack([np.bincount(label_ids[rows], minlength=len(every)) for rows in folds])
        for test in itertools.combinations(range(num_folds), num_test):
            for evaluation in itertools.combinations(sorted(set(range(num_folds)) - set(test)), num_eval):
                test_counts, eval_counts = fold_counts[list(test)].sum(0), fold_counts[list(evaluation)].sum(0)
                train_counts = fold_counts.sum(0) - test_counts - eval_counts
                candidate = (int((train_counts == 0).sum()), int((test_counts == 0).sum() + (eval_counts == 0).sum()),
                             round(score(test_counts, TEST_SHARE) + score(eval_counts, VALIDATION_SHARE), 9))
                if best_score is None or candidate < best_score:
                    best = [{speakers[i] for f in group for i in folds[f]} for group in (test, evaluation)]
                    best_score = candidate
    test, validation = (sorted(group, key=speaker_sort_key) for group in best)
    return test, validation


BAD_CLIP_ADVICE = ("fix or re-export the file, or remove its row from the data; or pass --skip_bad_clips true to "
                   "leave out every such clip (they are listed)")


def decoded_clips(
    dataset, processor: EmoSLLMProcessor | None = None, split: str = "data", skip_bad_clips: bool = False,
    skipped: list[str] | None = None, group_column: str | None = "speaker",
) -> list[dict]:
    """
    Rows as dicts with a float32 16 kHz mono `audio` array, decoded and checked exactly as the pipeline decodes and
    checks an input file (`read_audio_file`/`decode_audio`, then `prepare_audio`): training never learns from audio
    that inference would refuse (damaged, truncated, NaN, silent, too short; too long for `processor`'s model), and
    both compute the same samples from a file. The first bad clip raises `ValueError` naming the split, the row and
    the file, before anything trains; with `skip_bad_clips` it is left out and its message added to `skipped`.
    `group`: the clip's value of `group_column` (what the probe's cross-validation keeps together), or, where it
    has none, the clip's own id.
    """
    max_seconds = processor.max_audio_seconds if processor is not None else None
    clips = []
    for index, row in enumerate(dataset.cast_column("audio", datasets.Audio(decode=False))):
        source = row["audio"] or {}
        file = source.get("path")
        name = f"{split} row {index} (file {file!r}, speaker {row.get('speaker')!r})"
        try:
            if source.get("bytes"):
                samples, rate = decode_audio(source["bytes"], name)
            elif file:
                samples, rate = read_audio_file(file, name)
            else:
                raise ValueError(f"{name}: the row has no audio (neither a file nor its bytes)")
            audio = prepare_clip(samples, rate, name, max_seconds)
        except (ValueError, FileNotFoundError) as error:
            if not skip_bad_clips:
                raise ValueError(f"{error}\nNothing was trained. To go on: {BAD_CLIP_ADVICE}.") from None
            if skipped is not None:
                skipped.append(str(error))
            continue
        group = row.get(group_column) if group_column else None
        clips.append({
            "audio": audio,
            "label": row["label"],
            "speaker": row["speaker"],
            "group": f"{split} row {index}" if group is None or group == "" else str(group),
            "transcript": row.get("transcript"),
            "text_features": {},  # other columns (gender, intensity, ...) are not given to the model by default
            "file": name,
        })
    return clips


def check_split_labels(labels_by_split: dict[str, Sequence[str]], labels: Sequence[str], min_clips: int = 5) -> None:
    """
    Every label of the label set, and of every split, has training clips: a label without any cannot be learned
    (the model would still be scored on it), so that is a `ValueError` naming the label and where its clips are.
    Fewer than `min_clips` training clips, or a validation or test split without clips of a label that training
    has (named, with the split), is only a warning: a small pilot corpus or a rare class can be meant, and the run
    still says so.
    """
    counts = {split: Counter(split_labels) for split, split_labels in labels_by_split.items()}
    train = counts.get("train", Counter())
    every = sorted(set(labels).union(*counts.values()))
    if len(every) < 2:
        raise ValueError(f"The data has one label ({every[0] if every else 'none'}): emotion recognition needs at least "
                         "two to tell apart. Check --label_column, or add clips of the other emotions.")
    for label in every:
        elsewhere = ", ".join(f"{n} in {split}" for split, c in counts.items() if (n := c[label]) and split != "train")
        if train[label] == 0:
            raise ValueError(
                f"label {label!r} has no training clips ({elsewhere or 'no clips at all'}): the model cannot learn "
                "it. Move speakers who have it into training (--test_speakers/--eval_speakers), or remove its rows "
                "(and leave it out of --labels)."
            )
        if train[label] < min_clips:
            logger.warning("Label %r has only %d training clip(s) (fewer than --min_clips_per_label %d); its scores "
                           "will be noisy.", label, train[label], min_clips)
    for split, split_counts in counts.items():  # a score over fewer labels than the model learns
        absent = [label for label in every if not split_counts[label]]
        if split != "train" and absent:
            logger.warning("The %s split has no clip of label(s) %s, which training has: its scores (UA) cover %d of "
                           "%d labels. Where other speakers have them, name speakers for it with --test_speakers/"
                           "--eval_speakers.", split, absent, len(every) - len(absent),
                           len(every))


def check_duplicate_audio(clips_by_split: dict[str, list[dict]]) -> None:
    """
    One recording (the same decoded samples, whatever the file names) on two rows: under two speakers, or with two
    labels, it is an error (its audio would be in two splits, training audio leaking into the test set, or it
    teaches two answers); under one speaker with one label, a warning (it only counts twice; RAVDESS as distributed
    holds one such pair).
    """
    seen: dict[str, tuple[str, dict]] = {}
    for split, clips in clips_by_split.items():
        for clip in clips:
            key = hashlib.sha1(clip["audio"].tobytes()).hexdigest()
            if key not in seen:
                seen[key] = (split, clip)
                continue
            first_split, first = seen[key]
            if first_split != split:
                raise ValueError(
                    f"{clip['file']} holds the same audio as {first['file']} (splits {split} and {first_split}): "
                    "the same recording in two splits puts training audio into the test set. Remove one of the rows."
                )
            if first["speaker"] != clip["speaker"] or first["label"] != clip["label"]:
                raise ValueError(
                    f"{clip['file']} holds the same audio as {first['file']} (labels {clip['label']!r} and "
                    f"{first['label']!r}, splits {split} and {first_split}): one recording under two speakers puts "
                    "training audio into the test set, under two labels it teaches both. Remove one of the rows."
                )
            logger.warning("%s holds the same audio as %s; it counts twice.", clip["file"], first["file"])


def load_checked_clips(splits, processor: EmoSLLMProcessor, data_args: DataArguments, labels: list[str]) -> dict:
    """
    Every split decoded and checked before anything trains (`decoded_clips`, then labels per split, duplicate
    audio and the transcripts' fit in the prompt). With `--skip_bad_clips`, the clips left out are listed.
    """
    skipped: list[str] = []
    clips = {name: decoded_clips(split, processor, name, data_args.skip_bad_clips, skipped,
                                 data_args.group_column or "speaker")
             for name, split in splits.items()}
    empty = [name for name, split_clips in clips.items() if not split_clips]
    if empty:
        raise ValueError(f"No clip of the {', '.join(empty)} split(s) passed the audio checks; fix the data.")
    if skipped:
        logger.warning("--skip_bad_clips: left out %d clip(s) that fail the audio checks:\n  %s", len(skipped),
                       "\n  ".join(skipped))
        check_split_labels({name: [c["label"] for c in split] for name, split in clips.items()}, labels,
                           data_args.min_clips_per_label)
    check_duplicate_audio(clips)
    if processor.use_transcript != "none":
        for split_clips in clips.values():
            for clip in split_clips:
                processor.check_text_inputs(clip["transcript"], clip["text_features"], clip["file"],
                                            num_samples=len(clip["audio"]))
    return clips


def parse_floats(text: str, name: str) -> list[float]:
    try:
        return [float(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise ValueError(f"--{name} takes comma-separated numbers, e.g. '0.9,1.1'; got {text!r}.") from None


def augmented_copies(clip: dict, speeds: list[float], snrs_db: list[float], max_samples: int) -> list[dict]:
    """
    Copies of a training clip: speed perturbation (the audio resampled by each factor, so tempo and pitch change
    together, as Kaldi's recipes do; a slowed copy is cut at `max_samples`) and white noise at each SNR. The noise is
    seeded by the clip's own samples, so a copy is the same in every run and the encoder cache finds it. Written by
    hand: these are two lines on scipy's polyphase resampler, where torchaudio would be one more pinned dependency.
    """
    audio = clip["audio"]
    copies = []
    for speed in speeds:
        if speed <= 0:
            raise ValueError(f"--speed_perturbation factors must be positive; got {speed}.")
        ratio = Fraction(1 / speed).limit_denominator(100)
        resampled = resample_poly(audio, ratio.numerator, ratio.denominator)[:max_samples]
        copies.append(dict(clip, audio=resampled.astype(np.float32)))
    rng = np.random.default_rng(int.from_bytes(hashlib.sha1(audio.tobytes()).digest()[:8], "little"))
    power = float(np.mean(audio.astype(np.float64) ** 2))
    for snr in snrs_db:
        noise = rng.standard_normal(len(audio)) * np.sqrt(power / 10 ** (snr / 10))
        copies.append(dict(clip, audio=(audio + noise).astype(np.float32)))
    for copy in copies:
        copy.pop("states", None)
    return copies


class AugmentedClips(torch.utils.data.Dataset):
    """
    The training clips, each read as one of its versions (the original or an augmented copy), drawn anew every epoch,
    and shown without its transcript with probability `transcript_dropout`. The draws depend only on the seed, the
    epoch and the clip, so a resumed run reads the same versions as an uninterrupted one; `EpochCallback` tells the
    dataset the epoch. With `record_to` set (`RECORD_CLIPS_ENV`), every read is appended to that file as a JSON line.
    """

    def __init__(self, versions: list[list[dict]], seed: int, transcript_dropout: float = 0.0):
        if not 0 <= transcript_dropout <= 1:
            raise ValueError(f"--transcript_dropout is a share between 0 and 1; got {transcript_dropout}.")
        self.versions, self.seed, self.epoch, self.transcript_dropout = versions, seed, 0, transcript_dropout
        self.record_to: Path | None = None
        self.world_size, self.rank = 1, 0

    def __len__(self) -> int:
        return len(self.versions)

    def __getitem__(self, index: int) -> dict:
        versions = self.versions[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        clip = versions[rng.integers(len(versions))] if len(versions) > 1 else versions[0]
        if clip.get("transcript") and rng.random() < self.transcript_dropout:
            clip = dict(clip, transcript=None)  # this epoch's prompt for this clip comes without its transcript
        if self.record_to is not None:
            self.record_to.parent.mkdir(parents=True, exist_ok=True)
            with open(self.record_to, "a", encoding="utf-8") as record:
                record.write(json.dumps({"world_size": self.world_size, "rank": self.rank, "epoch": self.epoch,
                                         "index": index, "clip": clip.get("file")}) + "\n")
        return clip


class EpochCallback(TrainerCallback):
    """
    Sets `AugmentedClips.epoch` at every epoch's start (also when a run resumes in the middle of one). A callback and
    not `Dataset.set_epoch`: Accelerate forwards `set_epoch` to the dataset only when the sampler has none, which
    does not hold under `accelerate launch`.
    """

    def __init__(self, dataset: AugmentedClips):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.epoch = int(state.epoch or 0)


@dataclass
class EmoSLLMCollator:
    """
    Clips -> model inputs: the processor's prompt followed by the answer (the label word; the transcript in the ASR
    stage) with its `lm_labels`, cached encoder states padded to the longest clip, and class ids.
    """

    processor: EmoSLLMProcessor
    task: str = "ser"

    def __call__(self, clips: list[dict]) -> dict[str, torch.Tensor]:
        lengths = [c["num_samples"] if "num_samples" in c else len(c["audio"]) for c in clips]
        answers = [c["label"] for c in clips] if self.task == "ser" else None
        batch = self.processor.text_inputs(
            lengths, [c["transcript"] for c in clips], [c["text_features"] for c in clips], task=self.task,
            answers=answers,
        )
        batch["audio_lengths"] = torch.tensor(lengths)
        if "states" in clips[0]:
            batch["encoder_layer_states"] = padded_states(clips)
        else:
            batch.update(self.processor.audio_features([c["audio"] for c in clips]))
        if self.task == "ser":
            batch["labels"] = self.processor.label_ids([c["label"] for c in clips])
        if "probe_scores" in clips[0]:  # (train.py's fit_probe: read by EmoSLLMTrainer, not by the model)
            batch["probe_scores"] = torch.stack([c["probe_scores"] for c in clips])
        return batch


# --------------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------------
class EmoSLLMTrainer(Trainer):
    """
    Three learning rates: the interface (new, randomly initialized) learns at `adapter_learning_rate`, the
    encoder's layer weights and the class heads at `head_learning_rate`, the LLM (LoRA, or all its weights with
    `--freeze_language_model False`) at the usual `learning_rate`. Checkpoints hold only the trainable weights: the
    frozen backbones never change.
    """

    def __init__(self, *args, adapter_learning_rate: float, head_learning_rate: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.adapter_learning_rate, self.head_learning_rate = adapter_learning_rate, head_learning_rate

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = self.model if model is None else model
            groups = {"adapter": [], "head": [], "llm": []}
            for name, param in model.named_parameters():
                if param.requires_grad:
                    module = name.split(".", 1)[0]
                    groups[{"adapter": "adapter", "language_model": "llm"}.get(module, "head")].append(param)
            optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
            rates = {"adapter": self.adapter_learning_rate, "head": self.head_learning_rate,
                     "llm": self.args.learning_rate}
            self.optimizer = optimizer_cls(
                [{"params": params, "lr": rates[group]} for group, params in groups.items() if params],
                **optimizer_kwargs,
            )
        return self.optimizer

    def compute_loss(self, model, inputs: dict, *args, **kwargs):
        """
        With the probe interface, each training clip's soft emotion word comes from its out-of-fold probe scores
        (`inputs["probe_scores"]`, train.py's `fit_probe`), not from the probe fitted on that very clip: so the LLM
        learns to read the probe as it reads new voices, right about as often as in cross-validation, and its
        answers are no surer than that evidence (in-sample, the probe is nearly always right, and the LLM learned
        to repeat it with a probability near 1; BENCHMARKS.md, Calibration). The probe's own API puts them in place
        of its scores for this one call (`given_scores`), so that the model's `forward` takes no training-only
        argument and the saved model answers from its one fitted probe. Evaluation on held-out training speakers
        (`hold_out_probe_fold`) reads their out-of-fold scores the same way.
        """
        scores = inputs.pop("probe_scores", None)
        if scores is None:
            return super().compute_loss(model, inputs, *args, **kwargs)
        with self.accelerator.unwrap_model(model).mapper.given_scores(scores):
            return super().compute_loss(model, inputs, *args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # A checkpoint is a lean folder with LoRA inline: everything but the frozen backbones (trained weights and
        # fitted statistics), so it also loads with from_pretrained; the model's `_keys_to_ignore_on_save` (the
        # backbones) tells the Trainer not to warn about them when it loads a checkpoint back.
        model = self.accelerator.unwrap_model(self.model)
        backbone = set(model.backbone_keys())
        state_dict = {n: t for n, t in (state_dict or model.state_dict()).items() if n not in backbone}
        super()._save(output_dir, state_dict=state_dict)


def build_model(model_args: ModelArguments, labels: list[str], device_type: str | None = None):
    """
    The processor and a new model from the backbones, built memory-lean (`from_backbones`): the frozen backbones in
    the precision policy's dtype for `device_type` (None: the GPU if there is one, else the CPU; bf16 on a bf16 GPU,
    float32 on the CPU), the parts that train in float32 (`modeling_emosllm.PRECISION_POLICY`).
    """
    cache = model_args.backbone_cache_dir
    audio_encoder = resolve_pretrained(model_args.audio_encoder, cache_dir=cache)
    llm = resolve_pretrained(model_args.llm, cache_dir=cache)
    processor = EmoSLLMProcessor.from_backbones(
        audio_encoder, llm, labels=labels, adapter_type=model_args.adapter_type, num_queries=model_args.num_queries,
        encoder_layer_combination=model_args.encoder_layer_combination,
        adapter_hidden_size=model_args.adapter_hidden_size,
        lora_rank=model_args.lora_rank, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
        freeze_language_model=model_args.freeze_language_model,
        audio_loss_weight=model_args.audio_loss_weight,
        use_transcript=model_args.use_transcript, prompt=model_args.prompt,
    )
    model = EmoSLLMForSpeechEmotionRecognition.from_backbones(processor.config, audio_encoder, llm,
                                                              device_type=device_type)
    trainable, total = model.trainable_parameters()
    logger.info("Trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / total)
    return model, processor


def fit_probe(model, processor, train_clips: list[dict], eval_clips: list[dict] | None, cs: list[float]) -> dict:
    """
    The probe interface's fit (`model.fit_probe`, scikit-learn) on the training clips' cached encoder states (and
    those of their augmented copies); C by validation UA, or, without validation speakers, by cross-validation over
    the training speakers (a clip and its copies are always in the same fold). Each training clip also gets
    `clip["probe_scores"]`, its scores from the probe fitted without its fold's speakers, which the LLM trains on
    (`EmoSLLMTrainer.compute_loss`); with fewer than 2 speakers there are no folds, and it trains on the probe's
    in-sample scores, with a warning.
    """
    collate = EmoSLLMCollator(processor)

    def batches(clips):
        return (collate(clips[i:i + 32]) for i in range(0, len(clips), 32))

    if not cs:
        raise ValueError("--probe_c needs at least one value of C, e.g. '0.001,0.003,0.01,0.03'.")
    chosen = model.fit_probe(
        batches(train_clips), cs, validation_batches=batches(eval_clips) if eval_clips else None,
        groups=[c.get("group", c["speaker"]) for c in train_clips],
    )
    selection_ua = chosen["probe_selection_ua"]
    logger.info("Probe: C=%g (%s%s)", chosen["probe_c"], chosen["probe_selection"],
                "" if selection_ua is None else f", UA {selection_ua:.4f}")
    out_of_fold, folds = chosen.pop("out_of_fold_scores", None), chosen.pop("out_of_fold_folds", None)
    if out_of_fold is None:
        logger.warning("The training clips come from fewer than 2 speakers (groups): the LLM learns to read the "
                       "probe's scores on the clips it was fitted on, surer than on new voices, so the model's class "
                       "probabilities will be overconfident.")
    else:
        for clip, scores, fold in zip(train_clips, out_of_fold, folds.tolist()):
            clip["probe_scores"], clip["probe_fold"] = scores, fold
    return chosen


def hold_out_probe_fold(versions: list[list[dict]]) -> tuple[list[list[dict]], list[dict]]:
    """
    Without validation speakers: the training speakers of the probe's first cross-validation fold are held out of
    the LLM's training, as its validation speakers: `(the versions the LLM trains on, the held-out original clips)`.
    Their out-of-fold probe scores come from a probe fitted without them, and the LLM never reads them, so they
    score the LLM's answer and the probe's alike, as on new voices: the best epoch and `probe_mix_weight` are chosen
    on them (`choose_probe_mix_weight`). Empty when the probe had no folds (fewer than 2 speakers).
    """
    if "probe_fold" not in versions[0][0]:
        return versions, []
    kept = [clip_versions for clip_versions in versions if clip_versions[0]["probe_fold"] != 0]
    held_out = [clip_versions[0] for clip_versions in versions if clip_versions[0]["probe_fold"] == 0]
    return kept, held_out


# The weights of the probe's class log-probabilities in the answer that `choose_probe_mix_weight` tries: from the LLM's
# answer alone (0) to the probe's alone (1), so the chosen answer scores at least the probe on the held-out speakers.
PROBE_MIX_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def choose_probe_mix_weight(trainer, held_out: list[dict], where: str) -> dict:
    """
    How far the answer may depart from the probe's evidence, decided on held-out speakers (never on test): the
    trained model's class log-probabilities on `held_out` clips, the LLM's and the probe's (out-of-fold scores where
    the clips carry them), are mixed with each weight of `PROBE_MIX_WEIGHTS`, and the weight with the best UA
    (ties: the smaller, the LLM's answer) becomes `config.mapper_config["mix_weight"]`. Logs the LLM's and the probe's UA there,
    and warns when the LLM alone scores below its probe. Returns the figures for the report and the model card.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.config.mapper_config["mix_weight"] = 0.0
    prediction = trainer.predict(held_out, ignore_keys=["audio_logits"], metric_key_prefix="held_out")
    llm, probe = (torch.from_numpy(p) for p in prediction.predictions[1:3])
    names = model.config.labels

    def ua(scores: torch.Tensor) -> float:
        return float(compute_ser_metrics(scores.argmax(-1).numpy(), prediction.label_ids, names)["ua"])

    mixes = {weight: ua((1 - weight) * llm + weight * probe) for weight in PROBE_MIX_WEIGHTS}
    weight = max(mixes, key=lambda w: (mixes[w], -w))
    model.config.mapper_config["mix_weight"] = weight
    report = {"held_out": where, "held_out_clips": len(held_out), "held_out_llm_ua": round(mixes[0.0], 4),
              "held_out_probe_ua": round(mixes[1.0], 4), "held_out_answer_ua": round(mixes[weight], 4),
              "probe_mix_weight": weight}
    logger.info("On %s (%d clips): the LLM's answer alone UA %.4f, its probe alone %.4f; the answer mixes in the "
                "probe's scores with weight %g (UA %.4f).", where, len(held_out), mixes[0.0], mixes[1.0], weight,
                mixes[weight])
    if mixes[0.0] < mixes[1.0]:
        logger.warning("The LLM's answer alone scores below the probe it reads on %s (UA %.4f < %.4f); the saved "
                       "model mixes the probe's scores into its answer (probe_mix_weight=%g, UA %.4f there).",
                       where, mixes[0.0], mixes[1.0], weight, mixes[weight])
    return report


# Transcripts inform the labels when, left out one clip at a time, knowing a clip's words raises the probability of
# its label by at least this much on average (in nats: log-likelihood per clip over the label's overall share).
TRANSCRIPT_INFORMATION_NATS = 0.05


def transcripts_inform_labels(clips: list[dict], labels: list[str]) -> tuple[bool, str]:
    """
    Whether the training transcripts can tell the emotions apart, and why. Unscripted speech (most transcripts
    distinct) counts as informative. A scripted corpus (a few sentences, each read in every emotion: RAVDESS,
    CREMA-D, EmoDB) is informative only if a clip's sentence predicts its label: leaving each clip out, the label
    shares among the other clips with the same (normalized) words, smoothed towards the overall shares, must give
    its label `TRANSCRIPT_INFORMATION_NATS` more log-probability per clip than the overall shares do. Where the words
    carry no emotion, a transcript in the prompt only costs an ASR pass per clip at inference (RAVDESS: the same UA
    with and without, BENCHMARKS.md).
    """
    def words(text) -> str:
        return " ".join("".join(ch for ch in (text or "").lower() if ch.isalnum() or ch.isspace()).split())

    texts = [words(c.get("transcript")) for c in clips]
    if not any(texts):
        return False, "no clip has a transcript"
    distinct = len(set(texts))
    if distinct > len(texts) / 2:
        return True, f"{distinct} different transcripts in {len(texts)} clips: unscripted speech"
    groups: dict[str, Counter] = {}
    for text, clip in zip(texts, clips):
        groups.setdefault(text, Counter())[clip["label"]] += 1
    totals, others = Counter(c["label"] for c in clips), len(clips) - 1
    gains = []
    for text, clip in zip(texts, clips):  # leave-one-out: this clip's own label is not counted
        label = clip["label"]
        overall = (totals[label] - 1 + 1) / (others + len(labels))  # add-one smoothed share
        group = sum(groups[text].values()) - 1
        given_words = (groups[text][label] - 1 + overall) / (group + 1)  # smoothed towards the overall share
        gains.append(np.log(given_words / overall))
    gain = float(np.mean(gains))
    detail = (f"{distinct} different sentences; knowing a clip's sentence adds {gain:+.3f} nats per clip about its "
              f"emotion, leave-one-out (informative from {TRANSCRIPT_INFORMATION_NATS})")
    return gain >= TRANSCRIPT_INFORMATION_NATS, detail


def attach_transcripts(clips: list[dict], processor: EmoSLLMProcessor) -> None:
    """
    The processor's transcript rule, applied once before training: given transcripts win, `auto` transcribes the
    missing ones, `none` drops them all (the collator builds prompts from `clip["transcript"]`).
    """
    given = [c["transcript"] or None for c in clips]
    audios, settings = [c["audio"] for c in clips], (processor.use_transcript, processor.asr_model)
    for clip, text in zip(clips, resolve_transcripts(audios, given, *settings)):
        clip["transcript"] = text


class TranscriptCache:
    """
    Transcripts that `--use_transcript auto` had Whisper write, keyed by the audio's content (SHA-256 of the decoded
    16 kHz float32 samples, whatever the file is called) and the ASR model: one JSON file per model id under `root`
    (`--transcript_cache_dir`; default `transcripts/` under the backbone cache), replaced whole on every write (a
    temporary file beside it, then a rename), so a killed run leaves the old file or the new one.
    """

    def __init__(self, asr_model: str, root: str | os.PathLike | None = None):
        self.asr_model = asr_model
        folder = Path(root).expanduser() if root else Path(default_cache_dir()) / "transcripts"
        readable = re.sub(r"[^\w.-]+", "--", asr_model).strip("-.")[-80:]
        self.path = folder / f"{readable}-{hashlib.sha256(asr_model.encode()).hexdigest()[:8]}.json"
        self.transcripts: dict[str, str] = {}
        if self.path.is_file():
            try:
                stored = json.loads(self.path.read_text(encoding="utf-8"))
                if stored.get("asr_model") == asr_model and isinstance(stored.get("transcripts"), dict):
                    self.transcripts = stored["transcripts"]
            except (OSError, ValueError, AttributeError) as error:
                logger.warning("The transcript cache %s cannot be read (%s); it is rewritten.", self.path, error)

    @staticmethod
    def key(audio: np.ndarray) -> str:
        """The audio's content hash."""
        return hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()

    def fill(self, clips: list[dict]) -> list[dict]:
        """Gives the clips without a transcript their cached one; returns those still without one."""
        left = []
        for clip in clips:
            if not clip["transcript"]:
                clip["transcript"] = self.transcripts.get(self.key(clip["audio"]))
                if clip["transcript"] is None:
                    left.append(clip)
        return left

    def add(self, clips: list[dict]) -> None:
        """Stores the clips' transcripts and rewrites the file whole."""
        self.transcripts.update({self.key(clip["audio"]): clip["transcript"] for clip in clips})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(self.path, {"asr_model": self.asr_model, "transcripts": self.transcripts})


# Clips per Whisper call while transcribing training data (the progress bar and the cache advance by these).
TRANSCRIBE_CHUNK = 16
# The sample `--use_transcript auto` transcribes first: this share of the clips without a transcript, at least
# TRANSCRIPT_SAMPLE_CLIPS of them.
TRANSCRIPT_SAMPLE_SHARE, TRANSCRIPT_SAMPLE_CLIPS = 0.1, 48


def transcribe_clips(clips: list[dict], asr_model: str, cache: TranscriptCache, what: str) -> list[tuple[int, float]]:
    """
    Whisper (`transcription_emosllm.transcribe`) writes the transcript of each clip, `TRANSCRIBE_CHUNK` at a time, with a
    progress bar (transformers' tqdm) named `what`; each chunk is cached as soon as it is done. Returns each chunk's
    samples and seconds.
    """
    timings = []
    with hf_logging.tqdm(total=len(clips), desc=f"Transcribing {what}", unit="clip") as progress:
        for start in range(0, len(clips), TRANSCRIBE_CHUNK):
            chunk = clips[start:start + TRANSCRIBE_CHUNK]
            started = time.time()
            for clip, text in zip(chunk, transcription_emosllm.transcribe([c["audio"] for c in chunk], asr_model)):
                clip["transcript"] = text
            timings.append((sum(len(c["audio"]) for c in chunk), time.time() - started))
            cache.add(chunk)
            progress.update(len(chunk))
    return timings


def stratified_sample(clips: list[dict], size: int, seed: int) -> list[int]:
    """
    `size` of the clips' indices, drawn with `seed`, each label's share as in `clips` (each label's clips shuffled and
    spread evenly over [0, 1), the first `size` positions taken; a label of one clip is drawn like any other, where
    scikit-learn's `train_test_split(stratify=...)` refuses it). Sorted.
    """
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for index, clip in enumerate(clips):
        by_label.setdefault(str(clip["label"]), []).append(index)
    positions = []
    for _, indices in sorted(by_label.items()):
        offset = rng.random()
        order = rng.permutation(len(indices))
        positions += [((rank + offset) / len(indices), indices[i]) for rank, i in enumerate(order)]
    return sorted(index for _, index in sorted(positions)[:size])


def duration(seconds: float) -> str:
    """'about 40 s', 'about 7 min', 'about 2.5 h'."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    return f"about {round(seconds / 60)} min" if seconds < 5400 else f"about {seconds / 3600:.1f} h"


def transcribe_training_clips(clips: list[dict], processor: EmoSLLMProcessor, labels: list[str],
                              cache: TranscriptCache, seed: int, force: bool = False) -> bool:
    """
    `--use_transcript auto` on the training clips: gives the clips without a transcript one (from `cache`, else from
    Whisper, with a progress bar, cached) and says whether the model should read transcripts
    (`transcripts_inform_labels` over all of them). Where many clips need Whisper, a sample is transcribed first (a
    `TRANSCRIPT_SAMPLE_SHARE` share, at least `TRANSCRIPT_SAMPLE_CLIPS`; seeded, stratified by label): if the words
    known then do not tell the emotions apart, the rest are not transcribed (logged, with how to force it);
    otherwise the time the rest will take is logged first. `force`: every clip is transcribed and the answer is
    True.
    """
    asr_model = processor.asr_model
    todo = cache.fill(clips)
    target = max(TRANSCRIPT_SAMPLE_CLIPS, math.ceil(TRANSCRIPT_SAMPLE_SHARE * len(clips)))
    need = target - (len(clips) - len(todo))  # given and cached transcripts count towards the sample
    if todo and not force and need < len(todo):
        sample: list[dict] = []
        timings: list[tuple[int, float]] = []
        if need > 0:
            chosen = set(stratified_sample(todo, need, seed))
            sample = [clip for i, clip in enumerate(todo) if i in chosen]
            todo = [clip for i, clip in enumerate(todo) if i not in chosen]
            timings = transcribe_clips(sample, asr_model, cache, f"a sample of {len(sample)} training clips")
        spent = sum(seconds for _, seconds in timings)
        known = [c for c in clips if c["transcript"]]
        informative, reason = transcripts_inform_labels(known, labels)
        source = (f"{len(sample)} of them transcribed by {asr_model} now (seeded, stratified by label) in {spent:.0f} s"
                  if sample else "given or cached")
        if not informative:
            logger.info("--use_transcript auto: the transcripts of a sample of %d training clips (%s) show that the "
                        "words do not tell the emotions apart (%s). The other %d clips are not transcribed, and the "
                        "model is trained and saved without transcripts (use_transcript='none'). To transcribe them "
                        "all and train with the words anyway, pass --force_transcripts true.", len(known), source,
                        reason, len(todo))
            return False
        timed = timings[1:] or timings  # the first call also loads Whisper
        rate = sum(seconds for _, seconds in timed) / max(sum(samples for samples, _ in timed), 1)
        logger.info("--use_transcript auto: the transcripts of a sample of %d training clips (%s) show that the words "
                    "can help (%s). Transcribing the other %d with %s: %s here (cached in %s for later runs). To train "
                    "without transcripts instead, pass --use_transcript none.", len(known), source, reason, len(todo),
                    asr_model, duration(rate * sum(len(c["audio"]) for c in todo)) if sample else "time unknown",
                    cache.path)
    if todo:
        transcribe_clips(todo, asr_model, cache, f"{len(todo)} training clips")
    informative, reason = transcripts_inform_labels(clips, labels)
    if force:
        logger.info("--force_transcripts: the model reads transcripts (%s).", reason)
        return True
    if not informative:  # the model reads no transcript, and the saved one never runs ASR
        logger.info("--use_transcript auto: the training transcripts do not tell the emotions apart (%s); the model "
                    "is trained and saved without transcripts (use_transcript='none'). Pass --use_transcript given to "
                    "use given ones anyway, or --force_transcripts true to use Whisper's too.", reason)
    return informative


def stage_arguments(training_args: TrainingArguments, output_dir, epochs: float, task: str,
                    evaluate: bool) -> TrainingArguments:
    """
    One stage's `TrainingArguments`: the user's, with the stage's output folder and epochs, evaluation only where
    there are validation clips to score (the SER stage), and never a push to the Hub (`push_to_hub` off: the Trainer
    would create a repo at start, offline a crash, and push every checkpoint; train.py pushes the final folder once,
    see `push_to_hub`). `--load_best_model_at_end`: as asked; not given (None), the SER stage keeps its best
    checkpoint by validation UA wherever the eval and save strategies allow it, and says that it keeps the last model
    where they do not (`--save_strategy no`, `--eval_strategy no`, strategies that differ).
    """
    eval_strategy = training_args.eval_strategy if evaluate else "no"
    stage = dict(output_dir=str(output_dir), num_train_epochs=epochs, eval_strategy=eval_strategy, push_to_hub=False,
                 hub_always_push=False)
    asked = training_args.load_best_model_at_end
    if asked is False:
        return dataclasses.replace(training_args, load_best_model_at_end=False, **stage)
    if not evaluate or eval_strategy == "no":
        if task == "ser" and asked:
            if evaluate:
                raise ValueError(f"--load_best_model_at_end true, but --eval_strategy no. {BEST_MODEL_ADVICE}")
            logger.warning("--load_best_model_at_end: there are no validation clips to choose a checkpoint by; "
                           "the last model is kept.")
        elif task == "ser":
            logger.info("No evaluation during training%s: the last model is kept.",
                        " (--eval_strategy no)" if evaluate else " (no validation clips)")
        return dataclasses.replace(training_args, load_best_model_at_end=False, **stage)
    try:
        return dataclasses.replace(training_args, load_best_model_at_end=True, **stage)
    except ValueError as error:  # TrainingArguments: the save and eval strategies do not allow it
        if asked:
            raise ValueError(f"{error}\n{BEST_MODEL_ADVICE}") from None
        if training_args.save_strategy == "no":
            logger.info("--save_strategy no: no checkpoints to choose from; the last model is kept.")
        else:
            logger.info("Checkpoints (--save_strategy %s) are not saved at every evaluation (--eval_strategy %s): the "
                        "last model is kept, not the best one.", training_args.save_strategy.value,
                        eval_strategy.value)
        return dataclasses.replace(training_args, load_best_model_at_end=False, **stage)


def run_stage(
    model, processor, training_args, model_args, train_clips, eval_clips, task, output_dir, epochs, resume
):
    args = stage_arguments(training_args, output_dir, epochs, task, evaluate=task == "ser" and bool(eval_clips))
    train_clips.record_to = None
    if os.environ.get(RECORD_CLIPS_ENV, "") not in ("", "0"):
        train_clips.record_to = Path(output_dir) / "training_clips" / f"rank{args.process_index}.jsonl"
        train_clips.world_size, train_clips.rank = args.world_size, args.process_index
    labels = processor.config.labels

    def compute_metrics(prediction):
        logits = prediction.predictions  # the answer's class scores (first, when more outputs were asked for)
        logits = logits[0] if isinstance(logits, tuple) else logits
        scores = compute_ser_metrics(logits.argmax(-1), prediction.label_ids, labels)
        return {k: scores[k] for k in ("ua", "wa", "macro_f1", "weighted_f1")}

    head_learning_rate = model_args.head_learning_rate
    trainer = EmoSLLMTrainer(
        model=model, args=args, adapter_learning_rate=model_args.adapter_learning_rate,
        head_learning_rate=model_args.adapter_learning_rate if head_learning_rate is None else head_learning_rate,
        train_dataset=train_clips,
        eval_dataset=eval_clips or None, data_collator=EmoSLLMCollator(processor, task),
        compute_metrics=compute_metrics if task == "ser" else None,
        callbacks=[EpochCallback(train_clips)],
    )
    asked = training_args.resume_from_checkpoint if task == "ser" else None  # a path (`resume_from_checkpoint`)
    checkpoint = (asked or last_complete_checkpoint(Path(output_dir))) if resume else None
    if resume and checkpoint is None:
        logger.info("No checkpoint in %s: starting this stage from scratch.%s", output_dir,
                    " (--save_strategy no writes none, so there is nothing to resume from.)"
                    if args.save_strategy == "no" else "")
    trainer.train(resume_from_checkpoint=checkpoint)
    return trainer


def evaluate_and_report(trainer, processor, test_clips, output_dir: Path, name: str = "test") -> dict:
    """
    Scores `test_clips` with the trained model in the form the saved folder in `output_dir` answers through the
    pipeline: the LLM's pretrained weights in the dtype that loading the folder gives them
    (`saved_language_model_dtype`: bf16 where the LLM is stored in bf16 and bf16 is native, else float32), LoRA merged,
    no autocast, and the clips in the pipeline's batches (`predict_as_delivered`). With `--bf16` (the default where
    bf16 is native) accelerate wraps the model's forward in bf16 autocast for training; a test score taken through
    that wrapper differed from the saved model's by up to 0.012 UA on RAVDESS, so the wrapper is taken off. Call
    after the folder is saved; under several processes every process calls it and gets the same metrics.
    """
    trainer.model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    trainer.model.cast_language_model(saved_language_model_dtype(str(output_dir)))
    trainer.model.merge_lora()
    scores = predict_as_delivered(trainer.model, processor, test_clips, trainer.accelerator)
    labels = processor.config.labels
    label_ids = processor.label_ids([c["label"] for c in test_clips]).numpy()
    predicted = scores["logits"].argmax(-1)
    metrics = compute_ser_metrics(predicted, label_ids, labels)
    # Beside the answer: what the LLM alone and the probe alone score on the same clips.
    for key, output in (("llm_ua", "llm_logits"), ("probe_ua", "probe_logits")):
        if output in scores:
            metrics[key] = compute_ser_metrics(scores[output].argmax(-1), label_ids, labels)["ua"]
    if trainer.is_world_process_zero():  # every process has all predictions (gathered); one writes the files
        write_report(metrics, output_dir / f"{name}_report.json")
        save_confusion_matrix(predicted, label_ids, labels, output_dir / f"{name}_confusion_matrix.png")
    return metrics


# The batch size of the pipeline call that checks the saved folder (`check_delivered_score`), and so of the batches
# the test report is scored in (`predict_as_delivered`).
DELIVERED_BATCH_SIZE = 8


@torch.no_grad()
def predict_as_delivered(model, processor, clips: list[dict], accelerator=None,
                         batch_size: int = DELIVERED_BATCH_SIZE) -> dict[str, np.ndarray]:
    """
    The model's class scores of `clips` as the pipeline computes them (`pipeline(..., batch_size=batch_size)`):
    `{"logits", "llm_logits", "probe_logits"}` (the last for the probe interface only), each `(clips, labels)` in the
    clips' order. A clip's scores depend on the clips batched with it (the padding changes the shapes of bf16 matrix
    products: up to 0.024 in a class probability with a bf16 LLM, BENCHMARKS.md "Several processes"), so the clips are
    read in the pipeline's batches, `clips[i:i + batch_size]`, with the pipeline's inputs (the processor's prompt
    without the answer). Under several processes (`accelerator`), process r scores batches r, r + N, ... and the scores
    are gathered: no batch is cut, padded or completed with repeated clips (as the Trainer's distributed evaluation
    does), so every process gets the scores that one process, and the saved folder through the pipeline, give.
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    model.eval()
    scored = []
    for start in list(range(0, len(clips), batch_size))[rank::world]:
        chunk = clips[start:start + batch_size]
        batch = dict(processor([c["audio"] for c in chunk], sampling_rate=SAMPLING_RATE,
                               transcript=[c.get("transcript") for c in chunk],
                               text_features=[c.get("text_features") or None for c in chunk]))
        batch["input_features"] = batch["input_features"].to(model.dtype)
        output = model(**{k: v.to(model.device) for k, v in batch.items()})
        scored.append((start, {key: getattr(output, key).float().cpu().numpy()
                               for key in ("logits", "llm_logits", "probe_logits")
                               if getattr(output, key) is not None}))
    if world > 1:
        from accelerate.utils import gather_object

        scored = gather_object(scored)  # every process's (start, scores), in rank order
    scored.sort(key=lambda item: item[0])
    return {key: np.concatenate([part[key] for _, part in scored]) for key in scored[0][1]}


def train_one_split(model_args, data_args, training_args, splits, output_dir: Path) -> dict:
    speeds = parse_floats(data_args.speed_perturbation, "speed_perturbation")
    snrs_db = parse_floats(data_args.noise_snr_db, "noise_snr_db")
    labels = sorted(set(splits["train"]["label"]) | set(splits["test"]["label"])) if not data_args.labels \
        else parse_labels(data_args.labels)
    check_split_labels({name: split["label"] for name, split in splits.items()}, labels, data_args.min_clips_per_label)
    set_seed(training_args.seed)
    model, processor = build_model(model_args, labels, "cpu" if training_args.use_cpu else None)
    if data_args.resume:
        check_resume_matches(model, output_dir)
    clips = load_checked_clips(splits, processor, data_args, labels)  # stops at a bad clip, before anything trains
    check_run_record(output_dir / "checkpoints", run_record(model_args, data_args, training_args, splits),
                     data_args.resume, write=training_args.process_index == 0)
    cache = EncoderStateCache(model, processor, data_args.encoder_cache_dir)
    with training_args.main_process_first(desc="encoder cache"):
        if processor.use_transcript == "auto":
            transcripts = TranscriptCache(processor.asr_model, data_args.transcript_cache_dir)
            if transcribe_training_clips(clips["train"], processor, labels, transcripts, training_args.seed,
                                         data_args.force_transcripts):
                for name, split_clips in clips.items():  # scored as the saved model answers: with transcripts
                    if name != "train" and (todo := transcripts.fill(split_clips)):
                        transcribe_clips(todo, processor.asr_model, transcripts, f"{len(todo)} {name} clips")
            else:  # the model reads no transcript, and the saved one never runs ASR
                processor.use_transcript = "none"
        for name, split_clips in clips.items():
            attach_transcripts(split_clips, processor)  # 'none' drops every transcript
        # Only the training clips, read every epoch, are cached; validation and test clips are encoded live, as the
        # pipeline encodes them, so the scores a run reports come from the same path as the saved model's answers.
        cache.fill(clips["train"])
    # The interface reads each encoder dimension standardized over the training clips (never validation or test).
    model.audio_encoder.set_feature_statistics(cached_states(clip) for clip in clips["train"])
    versions = [[clip] for clip in clips["train"]]  # each training clip, then its augmented copies
    if speeds or snrs_db:
        max_samples = int(processor.max_audio_seconds * SAMPLING_RATE)
        with training_args.main_process_first(desc="encoder cache (augmented copies)"):
            for clip_versions in versions:
                clip_versions += augmented_copies(clip_versions[0], speeds, snrs_db, max_samples)
            cache.fill([copy for clip_versions in versions for copy in clip_versions[1:]])
    # Training reads the cached states: the decoded samples of the training clips and their copies can go.
    for clip in (copy for clip_versions in versions for copy in clip_versions):
        clip["num_samples"] = len(clip.pop("audio"))
    unit = data_args.group_column or ("speaker" if has_speaker_ids(splits["train"]) else None)
    probe, held_out, where = {}, clips.get("validation"), f"the validation {unit or 'clip'}s"
    if model.config.mapper_type == "probe":  # fitted on the training clips and their augmented copies
        probe = fit_probe(model, processor, [clip for clip_versions in versions for clip in clip_versions],
                          clips.get("validation"), parse_floats(model_args.probe_c, "probe_c"))
        if not held_out:
            versions, held_out = hold_out_probe_fold(versions)
            held_speakers = sorted({str(c.get("group", c["speaker"])) for c in held_out}, key=speaker_sort_key)
            where = f"training {unit or 'clip'}s held out of the LLM's training ({', '.join(held_speakers)})"
            if held_out:
                logger.info("No validation speakers: the LLM trains without %s, which choose its epoch and how far "
                            "its answer may depart from the probe.", where)
    train_clips = AugmentedClips(versions, training_args.seed, model_args.transcript_dropout)
    started = time.time()
    if data_args.asr_epochs > 0:
        run_stage(model, processor, training_args, model_args, train_clips, None, "asr", output_dir / "stage1_asr",
                  data_args.asr_epochs, data_args.resume)
    trainer = run_stage(model, processor, training_args, model_args, train_clips, held_out, "ser",
                        output_dir / "checkpoints", training_args.num_train_epochs, data_args.resume)
    train_seconds = time.time() - started
    if model.config.mapper_type == "probe" and held_out:
        probe.update(choose_probe_mix_weight(trainer, held_out, where))
    if unit:  # what no two splits share: speakers, or the --group_column's values
        split_speakers = {name: sorted({str(v) for v in split[unit]}, key=speaker_sort_key)
                          for name, split in splits.items()}
    else:
        split_speakers = {name: [f"{len(split)} clips drawn at random (no speaker ids; not speaker-independent)"]
                          for name, split in splits.items()}
    split_speakers.setdefault("validation", [])
    split_speakers["unit"] = unit or "clip"
    if training_args.process_index == 0:
        # Lean unless asked (or unless a backbone has no Hub id: then every weight, with a warning); code included.
        model.save_pretrained(output_dir, full_weights=True if model_args.save_full_weights else None)
        processor.save_pretrained(output_dir)
        size = sum(f.stat().st_size for f in output_dir.rglob("*") if f.is_file() and "checkpoints" not in f.parts
                   and "stage1_asr" not in f.parts) / 1e6
        whole = not backbones_left_out(output_dir / "model.safetensors")  # also when a backbone has no Hub id
        if whole:
            logger.info("Saved %s with every weight: %.0f MB.", output_dir, size)
        else:
            logger.info(
                "Saved %s as a lean folder (%.1f MB: the interface, statistics, probe and LoRA, in peft's layout "
                "under lora/); it loads its backbones %s and %s by Hub id. For a folder with every weight pass "
                "--save_full_weights true, or call model.save_pretrained(folder, full_weights=True).",
                output_dir, size, model.config.audio_model_id, model.config.text_model_id,
            )
    trainer.accelerator.wait_for_everyone()  # the folder is saved: every process reads its LLM dtype from it
    metrics = evaluate_and_report(trainer, processor, clips["test"], output_dir)
    metrics["train_seconds"] = round(train_seconds, 1)
    metrics.update(probe)
    if training_args.process_index == 0:
        # The trained model and the encoder cache (which holds the model) are not needed any more: freed before the
        # saved folder is loaded beside them.
        del trainer, model, cache
        gc.collect()
        metrics["delivered_ua"] = check_delivered_score(output_dir, clips["test"], metrics["ua"], labels)
        metrics["test_clips_without_speech"] = clips_without_speech(clips["test"])
        write_model_card(output_dir, model_args, data_args, split_speakers, metrics, processor,
                         hub_model_id=training_args.hub_model_id, full_weights=whole)
    return metrics


# The most the saved folder's test UA through the pipeline may differ from the score the run reports.
DELIVERED_UA_TOLERANCE = 0.01


def check_delivered_score(output_dir: Path, test_clips: list[dict], reported_ua: float, labels: list[str]) -> float:
    """
    Re-scores the saved folder as a user gets it, `pipeline("audio-classification", model=output_dir)` on the test
    clips (decoded audio, their transcripts, whole clips), and raises `RuntimeError` if its UA differs from the
    reported one by more than `DELIVERED_UA_TOLERANCE`: the reported score must be the delivered score.
    """
    from transformers import pipeline

    classifier = pipeline("audio-classification", model=str(output_dir), trust_remote_code=True, device="cpu")
    inputs = [{"array": c["audio"], "sampling_rate": SAMPLING_RATE, "transcript": c["transcript"]} for c in test_clips]
    # Every clip's answer, as the run scored it (the speech detector's verdict on each is counted apart).
    outputs = classifier(inputs, top_k=1, segment_seconds=None, batch_size=DELIVERED_BATCH_SIZE,
                         detect_speech=False)
    delivered = compute_ser_metrics([o[0]["label"] for o in outputs], [c["label"] for c in test_clips], labels)["ua"]
    logger.info("The saved folder through the pipeline: test UA %.4f (reported %.4f)", delivered, reported_ua)
    if abs(delivered - reported_ua) > DELIVERED_UA_TOLERANCE:
        raise RuntimeError(
            f"The saved model in {output_dir} scores test UA {delivered:.4f} through the pipeline, but training "
            f"reported {reported_ua:.4f} (tolerance {DELIVERED_UA_TOLERANCE}): its inputs are not computed the same "
            "way in training and inference. Do not publish this folder; please report this as a bug."
        )
    return round(float(delivered), 4)


def clips_without_speech(test_clips: list[dict]) -> int:
    """How many test clips the pipeline's speech detector finds no speech in (it gives them no emotion); logged."""
    from vad_emosllm import MIN_SPEECH_SECONDS, speech_mask, speech_seconds

    without = [c for c in test_clips if speech_seconds(speech_mask(c["audio"])) < MIN_SPEECH_SECONDS]
    if without:
        logger.warning("%d of %d test clips hold no speech that the pipeline's speech detector finds (first: %s): "
                       "the pipeline gives them no emotion (pass detect_speech=False to classify them); the scores "
                       "above count the model's answer for them.", len(without), len(test_clips),
                       without[0]["file"])
    return len(without)


def requested_engine(training_args: TrainingArguments) -> str | None:
    """"fsdp" or "deepspeed" where the Trainer's flags or `accelerate launch` (its environment) ask for one, else None."""
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


def main() -> None:
    model_args, data_args, training_args = parse_args()
    check_engine(training_args)  # before any data is read: FSDP/DeepSpeed asked for where they would not run
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    output_dir = Path(training_args.output_dir)
    if training_args.world_size > 1:
        logger.info("Process %d of %d.", training_args.process_index, training_args.world_size)
    with training_args.main_process_first(desc="data"):  # the first process makes the smoke corpus, fills caches
        dataset = load_data(data_args)
    split_list = make_splits(dataset, data_args, training_args.seed)
    if data_args.folds > 1:
        results = []
        for fold, splits in enumerate(split_list):
            results.append(train_one_split(model_args, data_args, training_args, splits, output_dir / f"fold{fold}"))
        metrics = {key: float(np.mean([r[key] for r in results])) for key in ("ua", "wa", "macro_f1", "weighted_f1")}
        metrics["folds"] = results
    else:
        metrics = train_one_split(model_args, data_args, training_args, split_list[0], output_dir)
    if training_args.process_index == 0:
        write_report(metrics, output_dir / "all_results.json")
        print(json.dumps({k: v for k, v in metrics.items() if k in ("ua", "wa", "macro_f1", "weighted_f1",
                                                                     "train_seconds")}, indent=2))
        if training_args.push_to_hub:
            push_to_hub(output_dir, training_args.hub_model_id or output_dir.name, token=training_args.hub_token,
                        private=training_args.hub_private_repo, revision=training_args.hub_revision)


if __name__ == "__main__":
    main()
