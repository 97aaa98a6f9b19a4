# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""One speech-emotion benchmark: baselines, EmoSLLM variants and ablations on the same speaker-independent split.

    python bench/ser_benchmark.py --mode quick --out /tmp/serbench     # every row, reduced; sized for < 20 min
    python bench/ser_benchmark.py --mode full --out /tmp/serbench-full  # all clips, 5 epochs, seeds 0,1,2; hours
    python bench/ser_benchmark.py --mode quick --systems mfcc_lr,emosllm_qpmapper --out /tmp/serbench

Data: ``--data_dir`` (default ``../shared/data/ravdess``) through ``data_emosllm.load_corpus``; validation speakers
``--eval_speakers`` (13-16), test speakers ``--test_speakers`` (17-20), every other speaker (RAVDESS: 01-12) trains.
Every system selects on validation only (its C, its epoch) and is scored once on test. ``--eval_speakers none`` is
the frozen-feature bar's protocol: every speaker but the test ones trains (RAVDESS: 01-16), C is chosen by 4-fold
cross-validation over the training speakers (scikit-learn's GroupKFold) and the trained systems keep their last
epoch.

Systems (``--systems``, default all):

* ``mfcc_lr``: MFCC statistics (``encoder_padding.mfcc_statistics``, librosa's default MFCC recipe with 40
  coefficients, computed with ``transformers.audio_utils`` as librosa is not a dependency), mean+std, ``StandardScaler`` + ``LogisticRegression``. C by validation UA after
  fitting on train; then, as ``bench/encoder_padding.py`` does, refit on train + validation and scored on test.
  Deterministic, so it runs once (first seed).
* ``whisper_layers_lr``: the frozen Whisper encoder's every layer, each clip's mean+std over its frames side by side
  (the features EmoSLLM's default probe reads), ``StandardScaler`` + ``LogisticRegression``, C chosen as for
  ``mfcc_lr``: the linear read-out that EmoSLLM's answer has to beat.
* ``whisper_linear_frozen`` / ``whisper_linear_finetuned``: transformers' ``WhisperForAudioClassification`` (the
  model ``run_audio_classification.py`` trains: ``projector`` Linear, mean pooling, ``classifier``) on the same
  Whisper encoder, frozen or fine-tuned. The encoder runs on each clip's own length with
  ``EmoSLLMAudioEncoder.layer_states`` (HF's ``WhisperEncoder.forward`` insists on 30 s inputs, ~12x slower here)
  and the mean is taken over valid frames only. AdamW, lr 1e-3 for the head and 3e-5 for the encoder, linear decay
  with 10% warm-up, batch 8; the epoch with the best validation UA is kept.
* ``emosllm_default``: ``train.train_one_split`` with train.py's own defaults and no other flag (the probe
  interface on every encoder layer). Besides the scores, its row measures the LLM's free answer
  (``generate(constrain_to_labels=False)``) against the class its scores rank first, the test UA with no transcript
  in the prompt, and the saved folder's test UA through the pipeline (train.py's own check).
* ``emosllm_qpmapper`` / ``emosllm_qformer`` / ``emosllm_mlp``: train.py's defaults with ``--adapter_type`` and the
  learned layer average (the paper's design); ``emosllm_statistics``: the statistics-pooling interface with its own
  recipe (``--num_queries 4 --adapter_learning_rate 1e-2 --head_learning_rate 1e-3``).
* ``emosllm_transcript_only``: ablation without audio (the prompt keeps transcript and task, no audio
  placeholders); ``emosllm_no_lora``: ``--lora_rank 0`` (interface and head only); ``emosllm_full_finetune``:
  ``--lora_rank 0 --freeze_language_model False --learning_rate 2e-5``.

Reported per system: test UA, WA, macro F1 (``compute_ser_metrics``); trainable and total parameters; training
wall time (the fitting loop with its validation passes; precomputed features such as MFCCs or frozen-encoder states
are not included, their time is in the JSON); inference real-time factor on the test clips (processing seconds /
audio seconds, batches of 8, from decoded 16 kHz arrays: features, prompt and model, one untimed warm-up batch);
peak memory (``ru_maxrss`` of the process that ran that system and seed, everything included). Each (system, seed)
runs in a fresh process of this script (``--run_one SYSTEM --seed S --result FILE``), with ``--threads`` torch and
BLAS threads. Rows with several seeds show mean ± sample std; results.json holds every seed's values.

Modes: ``quick`` keeps a fixed stratified 10% of the clips of every (speaker, emotion) group, at least one, in
train, validation and test (RAVDESS: 96 / 32 / 32 clips), trains 1 epoch and runs seed 0; the table header and the
JSON say so. ``full`` uses every clip, train.py's default epochs (5) and seeds 0, 1, 2. ``--epochs``,
``--subset_fraction`` and ``--seeds`` override the mode. Epochs apply to every trained system (EmoSLLM and the
Whisper heads).

Writes ``--out/results.json`` and ``--out/results.md`` and prints the table. ``--out/runs/SYSTEM/seedS/`` keeps each
run's ``result.json``, log and test report (the EmoSLLM weights and checkpoints are deleted after measuring, as 18
full-mode models would take ~11 GB). A finished (system, seed) whose result was made with the same settings is
reused when the command is run again (so a killed full run continues); delete ``--out/runs`` to start over.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import datasets  # noqa: E402

from data_emosllm import (  # noqa: E402
    SAMPLING_RATE, check_speaker_disjoint, compute_ser_metrics, load_corpus, speaker_ids, split_by_speakers,
    write_report,
)

SYSTEMS = {
    "mfcc_lr": "MFCC (librosa recipe, transformers.audio_utils), mean+std, StandardScaler + LogisticRegression "
               "(C by validation UA, refit on train+validation)",
    "whisper_layers_lr": "Whisper encoder frozen, every layer's mean+std side by side, StandardScaler + "
                         "LogisticRegression (C as for mfcc_lr)",
    "whisper_linear_frozen": "Whisper encoder frozen + WhisperForAudioClassification head (projector, masked mean, "
                             "classifier)",
    "whisper_linear_finetuned": "Whisper encoder fine-tuned + WhisperForAudioClassification head (projector, "
                                "masked mean, classifier)",
    "emosllm_default": "EmoSLLM, train.py's default recipe (probe interface on every encoder layer, LoRA)",
    "emosllm_qpmapper": "EmoSLLM, Query Pooling Mapper (the paper's interface), LoRA",
    "emosllm_qformer": "EmoSLLM, window Q-Former, LoRA",
    "emosllm_mlp": "EmoSLLM, frame-stacking MLP, LoRA",
    "emosllm_statistics": "EmoSLLM, statistics pooling (mean+std to 4 embeddings, interface at lr 1e-2), LoRA",
    "emosllm_transcript_only": "EmoSLLM ablation: no audio (prompt with transcript and task only), LoRA",
    "emosllm_no_lora": "EmoSLLM ablation: Query Pooling Mapper, no LoRA (interface and head only)",
    "emosllm_full_finetune": "EmoSLLM, Query Pooling Mapper, every LLM weight fine-tuned instead of LoRA (lr 2e-5)",
}
# train.py flags of each EmoSLLM row, on top of train.py's defaults.
PAPER = ["--adapter_type", "qpmapper", "--encoder_layer_combination", "weighted_average"]
EMOSLLM_FLAGS = {
    "emosllm_default": [],
    "emosllm_qpmapper": PAPER,
    "emosllm_qformer": ["--adapter_type", "qformer", "--encoder_layer_combination", "weighted_average"],
    "emosllm_mlp": ["--adapter_type", "mlp", "--encoder_layer_combination", "weighted_average"],
    "emosllm_statistics": ["--adapter_type", "statistics", "--encoder_layer_combination", "weighted_average",
                           "--num_queries", "4", "--adapter_learning_rate", "1e-2", "--head_learning_rate", "1e-3"],
    "emosllm_transcript_only": [*PAPER, "--audio_loss_weight", "0"],  # no audio, no audio loss
    "emosllm_no_lora": [*PAPER, "--lora_rank", "0"],
    "emosllm_full_finetune": [*PAPER, "--lora_rank", "0", "--freeze_language_model", "False",
                              "--learning_rate", "2e-5"],
}
DETERMINISTIC_SYSTEMS = ("mfcc_lr", "whisper_layers_lr")  # the same result for every seed: run once
CROSS_VALIDATION_FOLDS = 4  # over the training speakers, where no validation speakers are given
MODES = {
    "quick": {"subset_fraction": 0.1, "epochs": 1, "seeds": "0"},
    "full": {"subset_fraction": 1.0, "epochs": None, "seeds": "0,1,2"},  # epochs None: train.py's default
}
MFCC_RECIPE = "mfcc_librosa"  # the stronger of the two MFCC recipes in BENCHMARKS.md (UA 0.465 vs 0.309)
BATCH_SIZE = 8  # training batch of the Whisper heads (train.py's default for EmoSLLM) and the RTF batch
HEAD_LEARNING_RATE = 1e-3
ENCODER_LEARNING_RATE = 3e-5
WARMUP_FRACTION = 0.1
SUMMARY_KEYS = ("ua", "wa", "macro_f1", "weighted_f1", "train_seconds", "real_time_factor", "peak_rss_mib",
                "wall_seconds")
# Measured on the emosllm_default row only (`answer_checks`, and train.py's re-scoring of the saved folder).
ANSWER_KEYS = ("generate_agreement", "ua_with_transcript", "ua_no_transcript", "delivered_ua")
# How far the same row's class probabilities can be trusted, from the same test pass (bench/calibration.py's figures).
CALIBRATION_KEYS = ("mean_top_probability", "share_above_0.99", "accuracy_above_0.99", "nll", "ece")


# ----------------------------------------------------------------------------------------------------------------------
# Data: the one split every system uses
# ----------------------------------------------------------------------------------------------------------------------
def stratified_subset(dataset: datasets.Dataset, fraction: float, seed: int = 0) -> datasets.Dataset:
    """
    `fraction` of the clips of every (speaker, label) group, at least one per group, drawn with a fixed seed; rows
    keep their order. Written by hand because scikit-learn's stratified splits need two clips per group and round
    the total rather than each group, so a speaker's rarer emotion could vanish from a small subset.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"subset fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return dataset
    groups: dict[tuple[str, str], list[int]] = {}
    for row, key in enumerate(zip(speaker_ids(dataset), dataset["label"])):
        groups.setdefault(key, []).append(row)
    rng = np.random.default_rng(seed)
    chosen = []
    for key in sorted(groups):
        rows = groups[key]
        chosen += rng.permutation(rows)[: max(1, round(fraction * len(rows)))].tolist()
    return dataset.select(sorted(chosen))


def load_splits(data_dir: str, eval_speakers: str, test_speakers: str, fraction: float = 1.0) -> datasets.DatasetDict:
    """
    `train` / `validation` / `test` of the corpus in `data_dir`: validation and test hold the named speakers, train
    every other one, each cut to `stratified_subset(fraction)`; no speaker is in two splits (checked).
    """
    eval_speakers = None if eval_speakers in (None, "", "none") else eval_speakers
    splits = split_by_speakers(load_corpus(data_dir), test_speakers=test_speakers, eval_speakers=eval_speakers)
    if "test" not in splits or (eval_speakers is not None and "validation" not in splits):
        raise ValueError("the benchmark needs test speakers (--test_speakers) and the named validation speakers")
    splits = datasets.DatasetDict({name: stratified_subset(split, fraction) for name, split in splits.items()})
    check_speaker_disjoint(splits)
    return splits


def describe_splits(splits: datasets.DatasetDict) -> dict:
    """Clip count, speakers and clips per label of every split."""
    return {
        name: {"clips": len(split), "speakers": sorted(set(speaker_ids(split))),
               "labels": {label: split["label"].count(label) for label in sorted(set(split["label"]))}}
        for name, split in splits.items()
    }


# ----------------------------------------------------------------------------------------------------------------------
# Measurements shared by all systems
# ----------------------------------------------------------------------------------------------------------------------
def real_time_factor(predict: Callable[[list[dict]], object], clips: list[dict]) -> dict:
    """
    Inference speed of `predict(batch_of_clips)` over `clips` in batches of `BATCH_SIZE`: processing seconds
    (everything `predict` does: features, prompt, model; decoding is done beforehand) / seconds of audio. The first
    batch is run once untimed as a warm-up.
    """
    batches = [clips[start:start + BATCH_SIZE] for start in range(0, len(clips), BATCH_SIZE)]
    predict(batches[0])
    started = time.perf_counter()
    for batch in batches:
        predict(batch)
    seconds = time.perf_counter() - started
    audio_seconds = sum(len(c["audio"]) for c in clips) / SAMPLING_RATE
    return {"real_time_factor": seconds / audio_seconds, "processing_seconds": seconds, "audio_seconds": audio_seconds,
            "clips": len(clips), "batch_size": BATCH_SIZE}


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (`ru_maxrss`, KiB on Linux) in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def score_test(predicted: Sequence, references: Sequence, labels: list[str], run_dir: Path) -> dict:
    """`compute_ser_metrics` on the test clips, also written to `run_dir/test_report.json`."""
    metrics = compute_ser_metrics(predicted, references, labels)
    write_report(metrics, run_dir / "test_report.json")
    return metrics


# ----------------------------------------------------------------------------------------------------------------------
# mfcc_lr
# ----------------------------------------------------------------------------------------------------------------------
def run_mfcc_lr(clips: dict[str, list[dict]], labels: list[str], run_dir: Path) -> dict:
    """MFCC statistics + logistic regression: C by validation UA (fit on train), refit on train + validation."""
    from encoder_padding import DEFAULT_CS, mfcc_statistics

    def features(batch: list[dict]) -> np.ndarray:
        return np.stack([mfcc_statistics(c["audio"], MFCC_RECIPE) for c in batch])

    started = time.perf_counter()
    x = {name: features(split) for name, split in clips.items()}
    feature_seconds = time.perf_counter() - started
    return fit_and_score_lr(x, clips, labels, DEFAULT_CS, run_dir, features, feature_seconds)


def fit_and_score_lr(x: dict, clips: dict, labels: list[str], cs, run_dir: Path, features, feature_seconds) -> dict:
    """
    StandardScaler + LogisticRegression on the features `x[split]`: C by validation UA (fit on train; then refit on
    train + validation), or without validation speakers by GroupKFold cross-validation over the training speakers
    (then fit on train). Scored once on test; `features(batch)` times the inference.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(x_fit: np.ndarray, y_fit: np.ndarray, c: float):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000)).fit(x_fit, y_fit)

    def ua(model, x_score, y_score) -> float:
        return compute_ser_metrics(model.predict(x_score), y_score, labels)["ua"]

    y = {name: np.array([c["label"] for c in split]) for name, split in clips.items()}
    started = time.perf_counter()
    if "validation" in clips:
        selection_ua = {c: ua(fit(x["train"], y["train"], c), x["validation"], y["validation"]) for c in cs}
        x_final, y_final = np.concatenate([x["train"], x["validation"]]), np.concatenate([y["train"], y["validation"]])
        how = "validation UA; final fit on train + validation"
    else:
        groups = np.array([c["speaker"] for c in clips["train"]])
        folds = list(GroupKFold(n_splits=CROSS_VALIDATION_FOLDS).split(x["train"], y["train"], groups))
        selection_ua = {c: float(np.mean([ua(fit(x["train"][a], y["train"][a], c), x["train"][b], y["train"][b])
                                          for a, b in folds])) for c in cs}
        x_final, y_final = x["train"], y["train"]
        how = f"{CROSS_VALIDATION_FOLDS}-fold cross-validation over the training speakers; final fit on train"
    best_c = max(cs, key=lambda c: (selection_ua[c], -c))  # ties: the stronger regularization
    final = fit(x_final, y_final, best_c)
    train_seconds = time.perf_counter() - started

    metrics = score_test(final.predict(x["test"]), y["test"], labels, run_dir)
    classifier = final[-1]
    parameters = int(classifier.coef_.size + classifier.intercept_.size)  # the scaler's statistics are not counted
    return {
        **metrics, "trainable_parameters": parameters, "total_parameters": parameters,
        "train_seconds": train_seconds, "feature_seconds": feature_seconds,
        "speed": real_time_factor(lambda batch: final.predict(features(batch)), clips["test"]),
        "selection": {"C": best_c, "selection_ua_by_C": {str(c): u for c, u in selection_ua.items()}, "how": how},
    }


# The C values the every-layer regression tries: train.py's default --probe_c and a decade on each side.
LAYERS_LR_CS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1)


def run_whisper_layers_lr(clips: dict[str, list[dict]], labels: list[str], audio_encoder: str, run_dir: Path) -> dict:
    """The frozen encoder's every layer, mean+std over each clip's valid frames side by side; logistic regression."""
    import torch

    _, runner, feature_extractor = build_whisper_classifier(audio_encoder, labels, freeze_encoder=True)
    runner.eval()

    @torch.no_grad()
    def features(batch: list[dict]) -> np.ndarray:
        from processing_emosllm import EmoSLLMProcessor

        owner = types.SimpleNamespace(config=runner.config, feature_extractor=feature_extractor)
        rows = []
        for start in range(0, len(batch), 16):
            audios = [c["audio"] for c in batch[start:start + 16]]
            inputs = EmoSLLMProcessor.audio_features(owner, audios)
            states = runner.layer_states(inputs["input_features"], inputs["audio_lengths"])  # (b, layers, t, d)
            mask = runner.frame_mask(inputs["audio_lengths"], states.shape[2])[:, None, :, None].float()
            mean = (states * mask).sum(2) / mask.sum(2)
            std = (((states - mean[:, :, None]) ** 2 * mask).sum(2) / mask.sum(2)).sqrt()
            rows.append(torch.cat([mean, std], dim=-1).flatten(1).numpy())
        return np.concatenate(rows)

    started = time.perf_counter()
    x = {name: features(split) for name, split in clips.items()}
    feature_seconds = time.perf_counter() - started
    return fit_and_score_lr(x, clips, labels, LAYERS_LR_CS, run_dir, features, feature_seconds)


# ----------------------------------------------------------------------------------------------------------------------
# whisper_linear_frozen / whisper_linear_finetuned
# ----------------------------------------------------------------------------------------------------------------------
def build_whisper_classifier(audio_encoder: str, labels: list[str], freeze_encoder: bool):
    """
    transformers' `WhisperForAudioClassification` (new `projector` and `classifier`) holding the pretrained encoder
    of `audio_encoder`, an `EmoSLLMAudioEncoder` that runs that same encoder module on each clip's own length, and
    the encoder's feature extractor.
    """
    import torch
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, WhisperForAudioClassification

    from backbones_emosllm import resolve_pretrained
    from configuration_emosllm import EmoSLLMConfig
    from modeling_emosllm import EmoSLLMAudioEncoder

    path = resolve_pretrained(audio_encoder)
    config = AutoConfig.from_pretrained(path, num_labels=len(labels), id2label=dict(enumerate(labels)),
                                        label2id={label: i for i, label in enumerate(labels)})
    if config.model_type != "whisper":
        raise ValueError(f"the whisper_linear systems need a Whisper encoder, {audio_encoder} is {config.model_type}")
    model = WhisperForAudioClassification(config)
    model.encoder.load_state_dict(AutoModel.from_pretrained(path, dtype=torch.float32).get_encoder().state_dict())
    if freeze_encoder:
        model.freeze_encoder()
    # A copy of the config for EmoSLLMConfig: wrapping the model's own config object would reset its attention
    # implementation (see bench/encoder_padding.py). The runner then uses the model's encoder module itself, so
    # there is one set of encoder weights, counted and trained as part of the HF model.
    runner = EmoSLLMAudioEncoder(EmoSLLMConfig(audio_config=copy.deepcopy(config)))
    runner.encoder = model.encoder
    return model, runner, AutoFeatureExtractor.from_pretrained(path)


def pooled_encoder_output(runner, feature_extractor, audios: list[np.ndarray]):
    """
    `(batch, 1, d_model)`: the encoder's last layer on the clips' own length, averaged over each clip's valid frames.
    Passed to `WhisperForAudioClassification.forward` as `encoder_outputs`, its projector, mean over this one frame
    and classifier give exactly HF's projector-then-mean over the valid frames (the projector is affine, so it
    commutes with the mean), without padding frames in the mean.
    """
    from processing_emosllm import EmoSLLMProcessor

    # The processor's own feature step; it reads only `config` and `feature_extractor` (no tokenizer needed).
    owner = types.SimpleNamespace(config=runner.config, feature_extractor=feature_extractor)
    features = EmoSLLMProcessor.audio_features(owner, audios)
    last = runner.layer_states(features["input_features"], features["audio_lengths"])[:, -1]
    mask = runner.frame_mask(features["audio_lengths"], last.shape[1]).to(last.dtype)[..., None]
    return ((last * mask).sum(dim=1) / mask.sum(dim=1))[:, None]


def run_whisper_linear(
    clips: dict[str, list[dict]], labels: list[str], audio_encoder: str, epochs: int, seed: int, finetune: bool,
    run_dir: Path,
) -> dict:
    """
    HF's audio-classification recipe on the Whisper encoder, trained with a plain torch loop (a Trainer would have to
    save a model whose encoder module is shared with the runner). Frozen: the pooled encoder outputs are computed
    once. Model selection: the epoch with the best validation UA.
    """
    import torch
    from transformers import get_scheduler, set_seed

    set_seed(seed)
    model, runner, feature_extractor = build_whisper_classifier(audio_encoder, labels, freeze_encoder=not finetune)
    label_ids = {label: i for i, label in enumerate(labels)}
    targets = {name: torch.tensor([label_ids[c["label"]] for c in split]) for name, split in clips.items()}

    cached, feature_seconds = {}, None
    if not finetune:
        started = time.perf_counter()
        with torch.no_grad():
            cached = {name: torch.cat([pooled_encoder_output(runner, feature_extractor, [c["audio"] for c in chunk])
                                       for chunk in (split[i:i + 16] for i in range(0, len(split), 16))])
                      for name, split in clips.items()}
        feature_seconds = time.perf_counter() - started

    def encoder_output(split: str, rows: torch.Tensor):
        if cached:
            return cached[split][rows]
        return pooled_encoder_output(runner, feature_extractor, [clips[split][i]["audio"] for i in rows.tolist()])

    @torch.inference_mode()
    def predict(split: str) -> np.ndarray:
        model.eval()
        rows = torch.arange(len(clips[split]))
        return torch.cat([model(encoder_outputs=(encoder_output(split, chunk),)).logits.argmax(-1)
                          for chunk in rows.split(16)]).numpy()

    groups = [{"params": [*model.projector.parameters(), *model.classifier.parameters()], "lr": HEAD_LEARNING_RATE}]
    if finetune:
        groups.append({"params": list(model.encoder.parameters()), "lr": ENCODER_LEARNING_RATE})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)  # TrainingArguments' default weight decay
    total_steps = epochs * math.ceil(len(clips["train"]) / BATCH_SIZE)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=round(WARMUP_FRACTION * total_steps),
                              num_training_steps=total_steps)
    generator = torch.Generator().manual_seed(seed)
    history, best_ua, best_epoch, best_state = [], -1.0, 0, None
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        losses = []
        for rows in torch.randperm(len(clips["train"]), generator=generator).split(BATCH_SIZE):
            loss = model(encoder_outputs=(encoder_output("train", rows),), labels=targets["train"][rows]).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        ua = None  # without validation speakers, the last epoch is kept
        if "validation" in clips:
            ua = compute_ser_metrics(predict("validation"), targets["validation"].numpy(), labels)["ua"]
        history.append({"epoch": epoch, "validation_ua": ua, "train_loss": statistics.fmean(losses)})
        if ua is None or ua > best_ua:
            best_ua, best_epoch = ua, epoch
            best_state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    train_seconds = time.perf_counter() - started
    model.load_state_dict(best_state)

    metrics = score_test(predict("test"), targets["test"].numpy(), labels, run_dir)

    @torch.inference_mode()
    def classify(batch: list[dict]) -> torch.Tensor:
        output = pooled_encoder_output(runner, feature_extractor, [c["audio"] for c in batch])
        return model(encoder_outputs=(output,)).logits.argmax(-1)

    model.eval()
    return {
        **metrics,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": train_seconds, "feature_seconds": feature_seconds,
        "speed": real_time_factor(classify, clips["test"]),
        "selection": {"best_epoch": best_epoch, "validation_ua": best_ua, "epochs": history,
                      "learning_rates": {"head": HEAD_LEARNING_RATE,
                                         "encoder": ENCODER_LEARNING_RATE if finetune else None}},
    }


# ----------------------------------------------------------------------------------------------------------------------
# EmoSLLM rows, through train.py
# ----------------------------------------------------------------------------------------------------------------------
def transcript_only_classes():
    """
    The `emosllm_transcript_only` ablation: a processor whose prompt has no audio line and a model whose audio
    embeddings are empty, so the LLM sees the transcript and the task only. It lives in the bench, not in the model
    code, because it is an experiment, not a configuration anyone would ship. The audio path's weights stay in the
    model (counted in its total) but are frozen, as they get no input.
    """
    import torch

    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
    from processing_emosllm import EmoSLLMProcessor

    # `_auto_class = None`: these classes are for this benchmark only, so `save_pretrained` copies no code for them
    # (transformers could not: it skips classes defined in `__main__`, then fails cleaning up after the tokenizer).
    class TranscriptOnlyProcessor(EmoSLLMProcessor):
        _auto_class = None

        def build_prompt(self, num_samples, transcript=None, text_features=None, task="ser") -> str:
            prompt = super().build_prompt(num_samples, transcript, text_features, task)
            # Drop the run of placeholders (they open the answer) and the user turn's "Speech:" line.
            prompt = re.sub(rf"(?:{re.escape(self.audio_token)})+", "", prompt, count=1)
            return prompt.replace("\nSpeech:", "", 1)

    class TranscriptOnlyEmoSLLM(EmoSLLMForSpeechEmotionRecognition):
        _auto_class = None

        def freeze_backbones(self) -> None:
            super().freeze_backbones()
            for param in [*self.audio_encoder.parameters(), *self.adapter.parameters()]:
                param.requires_grad_(False)

        def get_audio_embeddings(self, audio_lengths, input_features=None, encoder_layer_states=None,
                                 return_probe_scores=False):
            batch = audio_lengths.shape[0]
            embeddings = torch.zeros(batch, 0, self.config.text_config.hidden_size, device=audio_lengths.device)
            mask = torch.zeros(batch, 0, dtype=torch.bool, device=audio_lengths.device)
            return (embeddings, mask, None) if return_probe_scores else (embeddings, mask)

    return TranscriptOnlyProcessor, TranscriptOnlyEmoSLLM


def validation_history(checkpoints: Path) -> dict:
    """Validation UA after each epoch and the best one, from the Trainer state of the newest checkpoint."""
    states = sorted(checkpoints.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not states:
        return {}
    state = json.loads(states[-1].read_text())
    epochs = [{"epoch": entry["epoch"], "validation_ua": entry["eval_ua"]}
              for entry in state["log_history"] if "eval_ua" in entry]
    return {"validation_ua": state.get("best_metric"), "epochs": epochs}


def run_emosllm(
    system: str, clips_test: list[dict], splits: datasets.DatasetDict, labels: list[str], settings: dict, seed: int,
    run_dir: Path,
) -> dict:
    """
    One EmoSLLM row: `train.train_one_split` with train.py's defaults plus the row's flags; then the saved folder
    is loaded back for the parameter counts and the speed on the test clips.
    """
    import torch

    import train
    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
    from processing_emosllm import EmoSLLMProcessor

    argv = [
        "--output_dir", str(run_dir), "--data_dir", settings["data_dir"], "--labels", ",".join(labels),
        "--audio_encoder", settings["audio_encoder"], "--llm", settings["llm"], "--seed", str(seed),
        "--num_train_epochs", str(settings["epochs"]), "--disable_tqdm", "true",
        "--encoder_cache_dir", str(Path(settings["out"]) / "encoder_cache"), *EMOSLLM_FLAGS[system],
    ]
    model_args, data_args, training_args = train.parse_args(argv)
    processor_class, model_class = EmoSLLMProcessor, EmoSLLMForSpeechEmotionRecognition
    with contextlib.ExitStack() as patches:
        if system == "emosllm_transcript_only":
            processor_class, model_class = transcript_only_classes()
            # train.py builds its model from these module-level names; this child process runs only this row.
            patches.enter_context(mock.patch.object(train, "EmoSLLMProcessor", processor_class))
            patches.enter_context(mock.patch.object(train, "EmoSLLMForSpeechEmotionRecognition", model_class))
            # Its saved folder has no code of its own (the classes live here), so no pipeline can load it to re-score.
            patches.enter_context(mock.patch.object(train, "check_delivered_score", lambda *args: None))
        metrics = train.train_one_split(model_args, data_args, training_args, splits, run_dir)
    gc.collect()  # the trained model and its Trainer are gone; free them before loading the saved copy
    selection = validation_history(run_dir / "checkpoints")

    processor = processor_class.from_pretrained(run_dir, trust_remote_code=True)  # the folder this run just wrote
    model = model_class.from_pretrained(run_dir).eval()
    trainable, total = model.trainable_parameters()

    @torch.inference_mode()
    def classify(batch: list[dict]) -> torch.Tensor:
        inputs = processor([c["audio"] for c in batch], transcript=[c["transcript"] for c in batch])
        return model(**inputs).logits.argmax(-1)

    speed = real_time_factor(classify, clips_test)
    answers = answer_checks(model, processor, clips_test, labels) if system == "emosllm_default" else {}
    # The weights (and the checkpoints, with optimizer state) are large and not needed for the report.
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    for weights in run_dir.glob("*.safetensors"):
        weights.unlink()
    return {
        **metrics, **answers, "trainable_parameters": trainable, "total_parameters": total, "speed": speed,
        "selection": selection, "train_py_arguments": argv,
    }


def answer_checks(model, processor, clips: list[dict], labels: list[str]) -> dict:
    """
    On the test clips: how often the LLM's free answer (`generate(constrain_to_labels=False)`, greedy) is the class
    its scores rank first (`generate_agreement`), the test UA with the true transcripts against none in the
    prompt (`ua_no_transcript`; `use_transcript="none"` for this pass), and the calibration of its class
    probabilities (`CALIBRATION_KEYS`, bench/calibration.py's `calibration`).
    """
    import torch
    from calibration import calibration

    ranked, free, ranked_without, probabilities = [], [], [], []
    use_transcript = processor.use_transcript
    with torch.inference_mode():
        for start in range(0, len(clips), BATCH_SIZE):
            batch = clips[start:start + BATCH_SIZE]
            inputs = processor([c["audio"] for c in batch], transcript=[c["transcript"] for c in batch])
            logits = model(**inputs).logits.float()
            ranked += logits.argmax(-1).tolist()
            probabilities.append(logits.softmax(-1).double().numpy())
            tokens = model.generate(**inputs, constrain_to_labels=False, max_new_tokens=8, do_sample=False)
            free += [text.strip().lower() for text in processor.batch_decode(tokens, skip_special_tokens=True)]
            processor.use_transcript = "none"
            try:
                ranked_without += model(**processor([c["audio"] for c in batch])).logits.argmax(-1).tolist()
            finally:
                processor.use_transcript = use_transcript
    names = model.config.labels
    agreement = float(np.mean([answer == names[i] for answer, i in zip(free, ranked)]))
    references = [c["label"] for c in clips]
    calibrated = calibration(np.concatenate(probabilities), np.array([names.index(r) for r in references]))
    return {
        **{key: calibrated[key] for key in CALIBRATION_KEYS},
        "generate_agreement": agreement,
        "free_answers": {str(k): int(v) for k, v in zip(*np.unique(free, return_counts=True))} if free else {},
        "ua_with_transcript": compute_ser_metrics([names[i] for i in ranked], references, labels)["ua"],
        "ua_no_transcript": compute_ser_metrics([names[i] for i in ranked_without], references, labels)["ua"],
    }


# ----------------------------------------------------------------------------------------------------------------------
# One (system, seed) in this process
# ----------------------------------------------------------------------------------------------------------------------
def run_one(system: str, seed: int, settings: dict, run_dir: Path) -> dict:
    """Train and score `system` with `seed`; returns its result (metrics, sizes, times, speed, peak memory)."""
    import logging

    import torch
    from threadpoolctl import threadpool_limits

    import train

    started = time.perf_counter()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    torch.set_num_threads(settings["threads"])
    run_dir.mkdir(parents=True, exist_ok=True)
    with threadpool_limits(settings["threads"]):
        splits = load_splits(settings["data_dir"], settings["eval_speakers"], settings["test_speakers"],
                             settings["subset_fraction"])
        labels = sorted({label for split in splits.values() for label in split["label"]})
        if system in EMOSLLM_FLAGS:
            result = run_emosllm(system, train.decoded_clips(splits["test"]), splits, labels, settings, seed, run_dir)
        else:
            clips = {name: train.decoded_clips(split) for name, split in splits.items()}
            if system == "mfcc_lr":
                result = run_mfcc_lr(clips, labels, run_dir)
            elif system == "whisper_layers_lr":
                result = run_whisper_layers_lr(clips, labels, settings["audio_encoder"], run_dir)
            else:
                result = run_whisper_linear(clips, labels, settings["audio_encoder"], settings["epochs"], seed,
                                            finetune=system == "whisper_linear_finetuned", run_dir=run_dir)
    result.update({
        "system": system, "seed": seed, "settings": settings, "labels": labels,
        "real_time_factor": result["speed"]["real_time_factor"], "peak_rss_mib": peak_rss_mib(),
        "wall_seconds": time.perf_counter() - started, "torch_threads": torch.get_num_threads(),
    })
    return result


# ----------------------------------------------------------------------------------------------------------------------
# The parent: runs, aggregation, report
# ----------------------------------------------------------------------------------------------------------------------
def summarize(runs: list[dict]) -> dict:
    """
    One system's row: for each of `SUMMARY_KEYS` the mean, the sample standard deviation (None for one run) and the
    per-seed values over the runs that finished; parameter counts of the first run; failed seeds and seeds not run
    yet (`--report_only`) listed apart.
    """
    done = [run for run in runs if "error" not in run and not run.get("missing")]
    row = {"seeds": [run["seed"] for run in done], "failed_seeds": [run["seed"] for run in runs if "error" in run],
           "missing_seeds": [run["seed"] for run in runs if run.get("missing")]}
    for key in SUMMARY_KEYS:
        values = [float(run[key]) for run in done]
        row[key] = {
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None,
            "values": values,
        }
    for key in ANSWER_KEYS + CALIBRATION_KEYS:
        values = [float(run[key]) for run in done if run.get(key) is not None]
        if values:
            row[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
                        "values": values}
    for key in ("trainable_parameters", "total_parameters"):
        row[key] = done[0][key] if done else None
    return row


def format_mean_std(stat: dict, digits: int) -> str:
    """`mean ± std` (just the mean for one run, `-` for none) with `digits` decimals."""
    if stat["mean"] is None:
        return "-"
    if stat["std"] is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def format_count(count: int | None) -> str:
    """Parameter count with an SI suffix: 1234 -> `1.2k`, 17_400_000 -> `17.4M`."""
    if count is None:
        return "-"
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= size:
            return f"{count / size:.1f}{suffix}"
    return str(count)


def markdown_table(rows: dict[str, dict], reductions: list[str]) -> str:
    """The results table; its header line states the mode's reductions."""
    title = "Full benchmark" if not reductions else "REDUCED benchmark (" + "; ".join(reductions) + ")"
    lines = [
        f"**{title}**",
        "",
        "| system | seeds | UA | WA | macro F1 | trainable / total params | training time (s) | RTF (batch 8) "
        "| peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for system, row in rows.items():
        seeds = ",".join(map(str, row["seeds"])) or "-"
        if row["failed_seeds"]:
            seeds += " (failed: " + ",".join(map(str, row["failed_seeds"])) + ")"
        if row["missing_seeds"]:
            seeds += " (not run yet: " + ",".join(map(str, row["missing_seeds"])) + ")"
        lines.append(
            f"| {system} | {seeds} | {format_mean_std(row['ua'], 3)} | {format_mean_std(row['wa'], 3)} | "
            f"{format_mean_std(row['macro_f1'], 3)} | {format_count(row['trainable_parameters'])} / "
            f"{format_count(row['total_parameters'])} | {format_mean_std(row['train_seconds'], 0)} | "
            f"{format_mean_std(row['real_time_factor'], 3)} | {format_mean_std(row['peak_rss_mib'], 0)} |"
        )
    answered = {system: row for system, row in rows.items() if "generate_agreement" in row}
    if answered:
        lines += ["", "| system | free answer = top class | test UA, true transcripts | test UA, no transcript "
                  "| saved folder via pipeline, UA |", "|---|---|---|---|---|"]
        for system, row in answered.items():
            lines.append(f"| {system} | " + " | ".join(
                format_mean_std(row[key], 3) if key in row else "-" for key in ANSWER_KEYS) + " |")
    calibrated = {system: row for system, row in rows.items() if "nll" in row}
    if calibrated:
        lines += ["", "| system | mean top probability | answers above 0.99 | right among those | NLL | ECE |",
                  "|---|---|---|---|---|---|"]
        for system, row in calibrated.items():
            lines.append(f"| {system} | " + " | ".join(
                format_mean_std(row[key], 3) if key in row else "-" for key in CALIBRATION_KEYS) + " |")
    return "\n".join(lines)


def machine_info() -> dict:
    """CPU model and count, platform, Python and library versions."""
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
    versions = {}
    for package in ("torch", "transformers", "peft", "datasets", "scikit-learn", "numpy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions}


# TrainingArguments that shape an EmoSLLM run and that train.py gives its own defaults.
RECIPE_TRAINING_ARGUMENTS = (
    "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "num_train_epochs",
    "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "bf16", "metric_for_best_model",
)


def recipe() -> dict:
    """
    What a run's result depends on besides this invocation's flags: train.py's defaults (all of its model and data
    arguments, the training arguments above) and this script's own constants. It is part of the settings, so a
    finished run is reused only while none of these changed; train.py's default interface width once went from 768
    to 256, and a resumed table must not mix the two.
    """
    import train

    model_args, data_args, training_args = train.parse_args(["--output_dir", "unused"])
    raw = {
        "train_py": {**dataclasses.asdict(model_args), **dataclasses.asdict(data_args),
                     **{name: getattr(training_args, name) for name in RECIPE_TRAINING_ARGUMENTS}},
        "emosllm_flags": EMOSLLM_FLAGS, "mfcc_recipe": MFCC_RECIPE, "batch_size": BATCH_SIZE,
        "head_learning_rate": HEAD_LEARNING_RATE, "encoder_learning_rate": ENCODER_LEARNING_RATE,
    }
    return json.loads(json.dumps(raw, default=str))  # as a result.json stores it (enums as text), for comparison


def resolve_settings(args: argparse.Namespace) -> dict:
    """The settings every run of this invocation shares, with the mode's defaults filled in."""
    mode, run_recipe = MODES[args.mode], recipe()
    epochs = args.epochs if args.epochs is not None else mode["epochs"]
    if epochs is None:
        epochs = int(run_recipe["train_py"]["num_train_epochs"])
    return {
        "mode": args.mode, "data_dir": str(Path(args.data_dir).resolve()), "out": str(Path(args.out).resolve()),
        "eval_speakers": args.eval_speakers, "test_speakers": args.test_speakers,
        "audio_encoder": args.audio_encoder, "llm": args.llm, "epochs": epochs,
        "subset_fraction": args.subset_fraction if args.subset_fraction is not None else mode["subset_fraction"],
        "threads": args.threads, "recipe": run_recipe,
    }


def reductions_of(settings: dict, seeds: list[int]) -> list[str]:
    """What this invocation leaves out compared with the full benchmark, in words (empty for a full run)."""
    full_epochs = int(settings["recipe"]["train_py"]["num_train_epochs"])  # train.py's default
    reductions = []
    if settings["subset_fraction"] < 1:
        reductions.append(f"{settings['subset_fraction']:.0%} of the clips of every speaker-emotion group (at least "
                          "one) in train, validation and test")
    if settings["epochs"] < full_epochs:
        reductions.append(f"{settings['epochs']} epoch(s) instead of {full_epochs}")
    if len(seeds) < len(MODES["full"]["seeds"].split(",")):
        reductions.append(f"seed(s) {','.join(map(str, seeds))} only")
    return reductions


def child_command(system: str, seed: int, settings: dict, result: Path) -> list[str]:
    """This script in a fresh process for one (system, seed), with the shared settings spelled out."""
    command = [sys.executable, str(Path(__file__).resolve()), "--run_one", system, "--seed", str(seed),
               "--result", str(result)]
    for key in ("mode", "data_dir", "out", "eval_speakers", "test_speakers", "audio_encoder", "llm", "epochs",
                "subset_fraction", "threads"):
        command += [f"--{key}", str(settings[key])]
    return command


def run_all(systems: list[str], seeds: list[int], settings: dict, report_only: bool = False) -> dict[str, list[dict]]:
    """
    Every (system, seed) in its own process, one after the other; a finished one with the same settings is reused.
    With `report_only`, nothing runs: a (system, seed) not finished yet is marked `missing`.
    """
    out = Path(settings["out"])
    env = {**os.environ, "OMP_NUM_THREADS": str(settings["threads"])}
    runs: dict[str, list[dict]] = {}
    for system in systems:
        runs[system] = []
        for seed in seeds[:1] if system in DETERMINISTIC_SYSTEMS else seeds:
            run_dir = out / "runs" / system / f"seed{seed}"
            result_file = run_dir / "result.json"
            if result_file.is_file() and json.loads(result_file.read_text()).get("settings") == settings:
                print(f"{system} seed {seed}: reusing {result_file}", flush=True)
                runs[system].append(json.loads(result_file.read_text()))
                continue
            if report_only:
                runs[system].append({"system": system, "seed": seed, "missing": True})
                continue
            result_file.unlink(missing_ok=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            print(f"{system} seed {seed}: running (log: {run_dir / 'log.txt'})", flush=True)
            with open(run_dir / "log.txt", "w") as log:
                process = subprocess.run(child_command(system, seed, settings, result_file), stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
                                         check=False)
            if process.returncode != 0 or not result_file.is_file():
                tail = (run_dir / "log.txt").read_text()[-3000:]
                print(f"  FAILED (exit status {process.returncode}); end of the log:\n{tail}", flush=True)
                runs[system].append({"system": system, "seed": seed, "error": tail})
                continue
            result = json.loads(result_file.read_text())
            runs[system].append(result)
            print(f"  UA {result['ua']:.3f}, WA {result['wa']:.3f}, macro F1 {result['macro_f1']:.3f}, training "
                  f"{result['train_seconds']:.0f} s, RTF {result['real_time_factor']:.3f}, peak RSS "
                  f"{result['peak_rss_mib']:.0f} MiB, wall {result['wall_seconds']:.0f} s", flush=True)
    return runs


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="quick",
                        help="quick: 10%% of the clips, 1 epoch, seed 0; full: all clips, train.py's epochs, seeds "
                             "0,1,2 (default: %(default)s)")
    parser.add_argument("--out", required=True, help="folder for results.json, results.md and the runs")
    parser.add_argument("--data_dir", default="../shared/data/ravdess", help="corpus folder (default: %(default)s)")
    parser.add_argument("--eval_speakers", default="13-16", help="validation speakers (default: %(default)s)")
    parser.add_argument("--test_speakers", default="17-20", help="test speakers (default: %(default)s)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of: " + ", ".join(SYSTEMS))
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: the mode's)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every trained system (default: the mode's)")
    parser.add_argument("--subset_fraction", type=float, default=None,
                        help="share of every speaker-emotion group's clips kept in each split (default: the mode's)")
    parser.add_argument("--report_only", action="store_true",
                        help="train nothing: build the table from the runs already finished in --out (with the same "
                             "settings), listing the (system, seed) pairs not run yet")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads of each run (default: 1)")
    parser.add_argument("--audio_encoder", default="openai/whisper-tiny.en",
                        help="Hub id or folder of every Whisper and EmoSLLM row's encoder (default: %(default)s)")
    parser.add_argument("--llm", default="HuggingFaceTB/SmolLM2-135M-Instruct",
                        help="Hub id or folder of the EmoSLLM rows' LLM (default: %(default)s)")
    parser.add_argument("--run_one", choices=list(SYSTEMS), default=None,
                        help="run one system in this process and write its result to --result (used by the parent)")
    parser.add_argument("--seed", type=int, default=0, help="with --run_one: the seed")
    parser.add_argument("--result", default=None, help="with --run_one: where to write the result JSON")
    args = parser.parse_args(argv)
    if args.run_one and not args.result:
        parser.error("--run_one needs --result")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = resolve_settings(args)
    if args.run_one:
        result_file = Path(args.result)
        result = run_one(args.run_one, args.seed, settings, result_file.parent)
        result_file.write_text(json.dumps(result, indent=2, default=str) + "\n")
        return 0

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown system(s) {unknown}; choose from {list(SYSTEMS)}")
    seeds = [int(s) for s in (args.seeds or MODES[args.mode]["seeds"]).split(",")]
    out = Path(settings["out"])
    out.mkdir(parents=True, exist_ok=True)
    started, load_before = datetime.now(timezone.utc), os.getloadavg()
    splits = load_splits(settings["data_dir"], settings["eval_speakers"], settings["test_speakers"],
                         settings["subset_fraction"])  # fails fast on a bad corpus or split, before any run
    reductions = reductions_of(settings, seeds)
    print(f"SER benchmark, mode {args.mode}: " + ("; ".join(reductions) or "no reductions") + "; splits "
          + ", ".join(f"{name} {len(split)} clips" for name, split in splits.items()), flush=True)

    runs = run_all(systems, seeds, settings, report_only=args.report_only)
    rows = {system: summarize(system_runs) for system, system_runs in runs.items()}
    missing = [f"{system} (seed {','.join(map(str, row['missing_seeds']))})" for system, row in rows.items()
               if row["missing_seeds"]]
    if missing:
        reductions.append("not run yet: " + ", ".join(missing))
    table = markdown_table(rows, reductions)
    command = shlex.join(["python", os.path.relpath(__file__), *(argv if argv is not None else sys.argv[1:])])
    report = {
        "command": command, "cwd": os.getcwd(), "date_utc": started.isoformat(timespec="seconds"),
        "wall_seconds": round((datetime.now(timezone.utc) - started).total_seconds(), 1),
        "machine": {**machine_info(), "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "settings": settings, "seeds": seeds, "reductions": reductions, "splits": describe_splits(splits),
        "systems": {system: SYSTEMS[system] for system in systems},
        "protocol": {
            "selection": ("validation speakers only (C for the regressions, the best epoch for the trained systems)"
                          if settings["eval_speakers"] not in (None, "", "none") else
                          f"no validation speakers: C by {CROSS_VALIDATION_FOLDS}-fold cross-validation over the "
                          "training speakers, the last epoch of the trained systems")
                         + "; test speakers scored once per run",
            "regressions": "mfcc_lr and whisper_layers_lr: fit on train to choose C, final fit on train + validation "
                           "(as bench/encoder_padding.py), or on train when C came from cross-validation",
            "train_seconds": "wall time of the fit with its validation passes; precomputed features excluded "
                             "(their time is feature_seconds in each run)",
            "real_time_factor": f"processing s / audio s on the test clips, batches of {BATCH_SIZE}, from decoded "
                                "16 kHz arrays, one untimed warm-up batch",
            "peak_rss_mib": "ru_maxrss of the fresh process that ran the (system, seed), everything included",
            "aggregation": "mean ± sample standard deviation over seeds",
        },
        "rows": rows,
        "runs": runs,
        "table": table,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    machine = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    split_text = "; ".join(f"{name}: {info['clips']} clips, speakers {', '.join(info['speakers'])}"
                           for name, info in report["splits"].items())
    markdown = "\n".join([
        f"# SER benchmark ({args.mode})", "",
        f"- Command: `{command}` (in `{report['cwd']}`)",
        f"- Date: {report['date_utc']}; wall time {report['wall_seconds']:.0f} s",
        f"- Machine: {machine['cpu']}, {machine['cpu_count']} CPUs, {settings['threads']} torch thread(s) per run; "
        f"load average {tuple(round(x, 2) for x in load_before)} before, "
        f"{tuple(round(x, 2) for x in machine['load_average_after'])} after; {versions}",
        f"- Data: `{settings['data_dir']}`; {split_text}",
        f"- Backbones: `{settings['audio_encoder']}`, `{settings['llm']}`; epochs {settings['epochs']}; "
        f"seeds {','.join(map(str, seeds))}",
        "", table, "",
        *[f"- `{system}`: {description}" for system, description in report["systems"].items()],
        "", *[f"- {key}: {text}" for key, text in report["protocol"].items()], "",
    ])
    (out / "results.md").write_text(markdown)
    print()
    print(table)
    print(f"\nwrote {out / 'results.json'} and {out / 'results.md'}")
    return 1 if any(row["failed_seeds"] for row in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
