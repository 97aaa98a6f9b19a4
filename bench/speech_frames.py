# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""Why the interface reads only the speech frames (`speech_threshold_db`), measured on RAVDESS's training actors.

The probe interface's own read-out, a logistic regression on the mean and std of every encoder layer (the frozen
Whisper encoder of train.py's default recipe, 3,840 statistics, StandardScaler with the probe's spread floor), pooled
either over every valid frame of a clip or over its speech frames only: the frames within T dB of the clip's loudest
(the processor's `speech_mask`, for each T of `--thresholds`). Scored by 4-fold cross-validation over the training
actors (scikit-learn's GroupKFold: every actor is held out once, its original clips scored), fitted on the other
actors' clips alone or with a 0.9x speed-perturbed copy of each (train.py's `--speed_perturbation 0.9`), for each C.
The test actors (17-20) are not read.

    python bench/speech_frames.py --data_dir ../shared/data/ravdess --train_speakers 1-16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data_emosllm import load_corpus, resolve_speakers, speaker_ids  # noqa: E402
from train import ModelArguments, augmented_copies, build_model, decoded_clips  # noqa: E402


def pooled(states: torch.Tensor, keep: torch.Tensor) -> np.ndarray:
    """Mean and std of each layer over the kept frames: `(layers, frames, hidden)` -> `(layers * 2 * hidden,)`."""
    kept = states[:, keep].double()
    return torch.cat([kept.mean(dim=1), kept.std(dim=1, unbiased=False)], dim=-1).flatten().numpy()


def cross_validated_ua(x: np.ndarray, y: np.ndarray, speakers: np.ndarray, original: np.ndarray, c: float,
                       with_copies: bool, folds: int = 4) -> tuple[float, list[float]]:
    """Mean UA over `folds` speaker folds (original clips scored; fitted on originals, and copies if asked)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import StandardScaler

    from modeling_emosllm import EmoSLLMStatisticsProbe

    scores = []
    for fit, held in GroupKFold(n_splits=folds).split(x[original], y[original], speakers[original]):
        fit_speakers = set(speakers[original][fit])
        fit_rows = np.isin(speakers, list(fit_speakers)) & (original | with_copies)
        held_rows = np.where(original)[0][held]
        scaler = StandardScaler().fit(x[fit_rows])
        scaler.scale_ = np.maximum(scaler.scale_, EmoSLLMStatisticsProbe.MIN_RELATIVE_STD * np.median(scaler.scale_))
        probe = LogisticRegression(C=c, max_iter=3000).fit(scaler.transform(x[fit_rows]), y[fit_rows])
        scores.append(balanced_accuracy_score(y[held_rows], probe.predict(scaler.transform(x[held_rows]))))
    return float(np.mean(scores)), [round(float(s), 3) for s in scores]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="../shared/data/ravdess")
    parser.add_argument("--train_speakers", default="1-16", help="the training actors (never the test ones)")
    parser.add_argument("--thresholds", default="20,30,40", help="comma-separated speech thresholds in dB")
    parser.add_argument("--cs", default="0.003,0.01,0.03")
    parser.add_argument("--out", default="/tmp/speech_frames.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    corpus = load_corpus(args.data_dir)
    chosen = resolve_speakers(args.train_speakers, speaker_ids(corpus))
    corpus = corpus.filter(lambda row: row["speaker"] in chosen)
    clips = decoded_clips(corpus)
    labels = sorted(set(corpus["label"]))
    thresholds = [float(t) for t in args.thresholds.split(",")]
    model, processor = build_model(ModelArguments(use_transcript="none"), labels)  # the default encoder
    model.eval()
    encoder, config = model.audio_encoder, processor.config

    started = time.perf_counter()
    versions = [(clip, True) for clip in clips]
    versions += [(copy, False) for clip in clips for copy in augmented_copies(clip, [0.9], [], 10 ** 9)]
    rows = {"every frame": [], **{f"speech, {t:g} dB": [] for t in thresholds}}
    for start in range(0, len(versions), 16):
        audios = [clip["audio"] for clip, _ in versions[start:start + 16]]
        features = processor.audio_features(audios)
        with torch.no_grad():
            states = encoder.layer_states(features["input_features"], features["audio_lengths"])
        for row, audio in enumerate(audios):
            frames = config.num_encoder_frames(len(audio))
            clip_states = states[row, :, :frames].half().float()  # as train.py's cache keeps them
            rows["every frame"].append(pooled(clip_states, torch.ones(frames, dtype=torch.bool)))
            for t in thresholds:
                config.speech_threshold_db = t
                rows[f"speech, {t:g} dB"].append(pooled(clip_states, processor.speech_mask([audio])[0]))
        config.speech_threshold_db = None
    encode_seconds = time.perf_counter() - started

    y = np.array([labels.index(clip["label"]) for clip, _ in versions])
    speakers = np.array([clip["speaker"] for clip, _ in versions])
    original = np.array([is_original for _, is_original in versions])
    results = []
    for name, x in rows.items():
        x = np.stack(x)
        for with_copies in (False, True):
            for c in (float(c) for c in args.cs.split(",")):
                ua, per_fold = cross_validated_ua(x, y, speakers, original, c, with_copies)
                results.append({"frames": name, "fitted on": "originals + 0.9x copies" if with_copies else "originals",
                                "C": c, "cv_ua": round(ua, 4), "per_fold": per_fold})
                print(json.dumps(results[-1]), flush=True)
    Path(args.out).write_text(json.dumps({"encode_seconds": encode_seconds, "results": results}, indent=2))
    print("| frames pooled | fitted on | " + " | ".join(f"C={c}" for c in args.cs.split(",")) + " |")
    print("|---|---|" + "---:|" * len(args.cs.split(",")))
    for i in range(0, len(results), len(args.cs.split(","))):
        group = results[i:i + len(args.cs.split(","))]
        print(f"| {group[0]['frames']} | {group[0]['fitted on']} | " + " | ".join(f"{r['cv_ua']:.3f}" for r in group)
              + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
