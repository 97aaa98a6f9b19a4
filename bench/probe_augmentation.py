# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""Which speed-perturbed copies the probe should be fitted on, and whether scoring copies at test time helps.

The default recipe fits its probe (a logistic regression on every encoder layer's mean and std) on the training
clips and a 0.9x speed-perturbed copy of each (`--speed_perturbation 0.9`). This script screens other sets of
copies, and test-time augmentation (the probe's log-probabilities averaged over a clip and its copies), by 4-fold
cross-validation over the training speakers only (scikit-learn's GroupKFold; the protocol's way to choose): each
fold fits on the other speakers' originals and copies and scores the held-out speakers' original clips.

    python bench/probe_augmentation.py --data_dir ../shared/data/ravdess --train_speakers 1-16 --out /tmp/probe_aug.json

The features and the fit are the probe's own: train.py's `augmented_copies`, `model.pooled_audio_statistics` (the
encoder in bf16 where native, as train.py's cache; states rounded to float16; every layer's mean and std over the
valid frames) and `EmoSLLMStatisticsProbe.fit` (StandardScaler with its floor, logistic regression).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data_emosllm import load_corpus, resolve_speakers, speaker_ids  # noqa: E402
from train import ModelArguments, augmented_copies, build_model, decoded_clips  # noqa: E402

FIT_SETS = ["", "0.9", "0.9,1.1", "0.8,0.9", "0.85,0.9,0.95", "0.9,0.95,1.05,1.1", "0.8,0.9,1.1,1.2",
            "0.8,0.85,0.9,0.95,1.05,1.1,1.15,1.2"]
TEST_TIME_SETS = ["", "0.9", "0.9,1.1", "0.95,1.05", "0.9,0.95,1.05,1.1"]
CS = (0.003, 0.01, 0.03)


@torch.no_grad()
def clip_statistics(model, processor, audios: list[np.ndarray], batch_size: int = 16, pool=None) -> torch.Tensor:
    """
    `(clips, 2 * (layers + 1) * hidden)`: the probe's input, `model.pooled_audio_statistics` of each clip; with
    `pool`, `pool(frames, frame_mask, batch)` `(batch, width)` of the encoder's standardized frames instead.
    """
    order = np.argsort([-len(a) for a in audios])  # longest first, as train.py's cache
    out = [None] * len(audios)
    for start in range(0, len(audios), batch_size):
        chunk = order[start:start + batch_size]
        batch = processor.audio_features([audios[i] for i in chunk])
        if pool is None:
            statistics = model.pooled_audio_statistics(batch)
        else:
            statistics = pool(*model.audio_encoder(batch["audio_lengths"], batch["input_features"]), batch)
        for row, i in enumerate(chunk):
            out[i] = statistics[row]
    return torch.stack(out)


def training_clips(data_dir: str, train_speakers: str) -> tuple[list[str], list[np.ndarray], np.ndarray, np.ndarray]:
    """The clips of `train_speakers` only: (labels, decoded audio, class ids `(clips,)`, speaker of each `(clips,)`)."""
    corpus = load_corpus(data_dir)
    chosen = resolve_speakers(train_speakers, speaker_ids(corpus))
    corpus = corpus.filter(lambda row: row["speaker"] in chosen)
    labels = sorted(set(corpus["label"]))
    clips = decoded_clips(corpus)
    y = np.array([labels.index(c["label"]) for c in clips])
    return labels, [c["audio"] for c in clips], y, np.array([c["speaker"] for c in clips])


def speed_copies(audios: list[np.ndarray], speed: float) -> list[np.ndarray]:
    """Each clip speed-perturbed by `speed` (train.py's `augmented_copies`, as its probe is fitted)."""
    return [augmented_copies({"audio": a}, [speed], [], len(a) * 2)[0]["audio"] for a in audios]


def cross_validated_ua(model, features: dict[str, torch.Tensor], y: np.ndarray, groups, fit_set, test_set,
                       c: float) -> list[float]:
    """Per fold: the probe fitted (`EmoSLLMStatisticsProbe.fit`) on `fit_set`'s versions of the other speakers'
    clips, its log-probabilities averaged over `test_set`'s versions of the held-out clips; their UA."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold

    probe, labels = model.mapper, torch.from_numpy(y)
    uas = []
    for fit, held in GroupKFold(n_splits=4).split(y, y, groups):
        probe.fit(torch.cat([features[k][fit] for k in fit_set]), labels[fit].repeat(len(fit_set)), c)
        log_p = torch.stack([probe.scores_of_statistics(features[k][held]).log_softmax(-1) for k in test_set])
        uas.append(float(balanced_accuracy_score(y[held], log_p.mean(0).argmax(-1).numpy())))
    return uas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--train_speakers", default="1-16", help="only these speakers are read (the training ones)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="/tmp/probe_augmentation.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    labels, audios, y, groups = training_clips(args.data_dir, args.train_speakers)
    model, processor = build_model(ModelArguments(use_transcript="none"), labels)
    model.eval()
    speeds = sorted({float(s) for group in FIT_SETS + TEST_TIME_SETS for s in group.split(",") if s})
    features = {"1.0": clip_statistics(model, processor, audios)}
    for speed in speeds:
        features[str(speed)] = clip_statistics(model, processor, speed_copies(audios, speed))

    def versions(group: str) -> list[str]:
        return ["1.0"] + [str(float(s)) for s in group.split(",") if s]

    rows = []
    for fit_group in FIT_SETS:
        for c in CS:
            uas = cross_validated_ua(model, features, y, groups, versions(fit_group), ["1.0"], c)
            rows.append({"fitted_on": versions(fit_group), "scored_on": ["1.0"], "C": c, "ua": float(np.mean(uas)),
                         "fold_ua": uas})
    for test_group in TEST_TIME_SETS[1:]:
        for c in CS:
            uas = cross_validated_ua(model, features, y, groups, versions("0.9"), versions(test_group), c)
            rows.append({"fitted_on": versions("0.9"), "scored_on": versions(test_group), "C": c,
                         "ua": float(np.mean(uas)), "fold_ua": uas})
    Path(args.out).write_text(json.dumps({"clips": len(audios), "rows": rows}, indent=2))
    print("| fitted on | scored on | " + " | ".join(f"C={c:g}" for c in CS) + " |")
    print("|---|---|" + "---:|" * len(CS))
    for i in range(0, len(rows), len(CS)):
        group = rows[i:i + len(CS)]
        print(f"| {' + '.join(group[0]['fitted_on'])} | {' + '.join(group[0]['scored_on'])} | "
              + " | ".join(f"{r['ua']:.3f}" for r in group) + " |")


if __name__ == "__main__":
    main()
