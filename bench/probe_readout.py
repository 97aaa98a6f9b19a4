# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""Which linear read-out, of which encoder's statistics, the probe should be: a screen by cross-validation.

The default recipe's probe is an L2 logistic regression (C chosen by cross-validation) on every layer's mean and std
of Whisper tiny.en, fitted on the training clips and a 0.9x speed-perturbed copy of each. This script screens, in
the same 4 folds of the training speakers only (scikit-learn's GroupKFold; each fold fits on the other speakers'
originals and copies and scores the held-out speakers' original clips):

- the regression at several C, and with class-balanced weights (UA weighs every class alike; RAVDESS has half as
  many neutral clips as of any other emotion);
- shrinkage LDA (scikit-learn's LinearDiscriminantAnalysis, lsqr), another linear read-out, on the first encoder;
- each encoder's statistics alone and, with two or more encoders, all of them side by side (the regression only)
  (these three: `--screens linear`, the default);
- with `--screens extra_statistics`, the first encoder's mean and std with more statistics of its frames beside them
  (`EXTRA_STATISTICS`: percentiles, the means of each third of the clip, the spread of frame-to-frame changes, the
  maximum, or Whisper's log-mel input's mean, std and delta spread), read by the regression;
- with `--screens nonlinear`, nonlinear read-outs of the first encoder's mean and std: an RBF support-vector
  machine and a one-hidden-layer perceptron (scikit-learn's SVC and MLPClassifier).

A read-out whose fit fails numerically (LDA's least squares once did not converge at one shrinkage) is reported as
failed, and the others still run.

    python bench/probe_readout.py --data_dir ../shared/data/ravdess --train_speakers 1-16 \
        --encoders openai/whisper-tiny.en,openai/whisper-base --screens linear,extra_statistics,nonlinear \
        --out /tmp/probe_readout.json

The features are the probe's own (`model.pooled_audio_statistics` through `clip_statistics`;
`training.augmentation.augmented_copies`), standardized as the probe's fit does
(`probe_fitting_emosllm.fit_standardization`). Only the speakers of --train_speakers are read.
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

from probe_fitting_emosllm import fit_standardization  # noqa: E402
from training.arguments import ModelArguments  # noqa: E402
from training.augmentation import augmented_copies  # noqa: E402
from training.clips import decoded_clips  # noqa: E402
from training.data import load_corpus  # noqa: E402
from training.recipe import build_model  # noqa: E402
from training.splits import resolve_speakers, speaker_ids  # noqa: E402

__all__ = ["CS", "EXTRA_STATISTICS", "SCREENS", "SHRINKAGES", "clip_statistics", "cross_validated_ua",
           "extra_statistics", "main", "nonlinear_read_outs", "read_outs", "speed_copies", "split_extra_statistics",
           "training_clips"]

CS = (0.003, 0.01, 0.03)
SCREENS = {"linear", "extra_statistics", "nonlinear"}
SHRINKAGES = ("auto", 0.5, 0.8, 0.95)


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
    """Each clip speed-perturbed by `speed` (`training.augmentation.augmented_copies`, as train.py's probe is fitted)."""
    return [augmented_copies({"audio": a}, [speed], [], len(a) * 2)[0]["audio"] for a in audios]


def _valid(frames: torch.Tensor, frame_mask: torch.Tensor) -> list[torch.Tensor]:
    return [clip[valid] for clip, valid in zip(frames.float(), frame_mask)]


def _log_mel_statistics(batch: dict, frame_mask: torch.Tensor) -> torch.Tensor:
    """Whisper's log-mel input over each clip's valid mel frames (two per encoder frame): mean, std, delta std."""
    rows = []
    for mel, valid in zip(batch["input_features"].float(), frame_mask.sum(dim=1)):
        mel = mel[:, : 2 * int(valid)].T  # (mel_frames, num_mel_bins)
        rows.append(torch.cat([mel.mean(0), mel.std(0), mel.diff(dim=0).std(0)]))
    return torch.stack(rows)


# name -> pool(frames, frame_mask, batch) -> (batch, width): statistics of the standardized encoder frames (or of the
# log-mel input) to set beside the probe's mean and std.
EXTRA_STATISTICS = {
    "10th and 90th percentiles": lambda f, m, b: torch.stack(
        [torch.quantile(c, torch.tensor([0.1, 0.9]), dim=0).flatten() for c in _valid(f, m)]),
    "mean of each third": lambda f, m, b: torch.stack(
        [torch.cat([part.mean(0) for part in c.tensor_split(3)]) for c in _valid(f, m)]),
    "std of frame-to-frame changes": lambda f, m, b: torch.stack([c.diff(dim=0).std(0) for c in _valid(f, m)]),
    "maximum": lambda f, m, b: torch.stack([c.amax(0) for c in _valid(f, m)]),
    "log-mel mean, std, delta std": lambda f, m, b: _log_mel_statistics(b, m),
}


def extra_statistics(frames: torch.Tensor, frame_mask: torch.Tensor, batch: dict) -> torch.Tensor:
    """Every one of EXTRA_STATISTICS side by side, in their order: `(batch, sum of their widths)`."""
    return torch.cat([pool(frames, frame_mask, batch) for pool in EXTRA_STATISTICS.values()], dim=1)


@torch.no_grad()
def split_extra_statistics(model, processor, audio: np.ndarray, side_by_side: np.ndarray) -> list[np.ndarray]:
    """`extra_statistics` `(clips, width)` cut back into one array per statistic (widths read off `audio`)."""
    batch = processor.audio_features([audio])
    frames, frame_mask = model.audio_encoder(batch["audio_lengths"], batch["input_features"])
    widths = [pool(frames, frame_mask, batch).shape[1] for pool in EXTRA_STATISTICS.values()]
    return np.split(side_by_side, np.cumsum(widths)[:-1], axis=1)


def nonlinear_read_outs(width: int) -> dict:
    """name -> a function returning a fresh nonlinear scikit-learn classifier of standardized features `width` wide."""
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC

    outs = {}
    for gamma in (0.3, 1.0):  # 1.0 / width is scikit-learn's "scale" for standardized features
        for c in (1, 10):
            outs[f"RBF SVM, C={c}, gamma={gamma:g}/width"] = lambda c=c, g=gamma: SVC(C=c, gamma=g / width)
    outs["perceptron, 256 hidden, alpha=1"] = lambda: MLPClassifier((256,), alpha=1.0, max_iter=500, random_state=0)
    return outs


def read_outs(balanced: bool, lda: bool) -> dict:
    """name -> a function returning a fresh scikit-learn classifier: the regression at each C, and with `balanced`
    its class-balanced form, with `lda` shrinkage LDA."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression

    outs = {}
    for c in CS:
        outs[f"logistic regression, C={c:g}"] = lambda c=c: LogisticRegression(C=c, max_iter=3000)
    for c in CS if balanced else ():
        outs[f"logistic regression, class-balanced, C={c:g}"] = (
            lambda c=c: LogisticRegression(C=c, max_iter=3000, class_weight="balanced"))
    if lda:
        for shrinkage in SHRINKAGES:
            outs[f"shrinkage LDA, shrinkage={shrinkage}"] = (
                lambda s=shrinkage: LinearDiscriminantAnalysis(solver="lsqr", shrinkage=s))
    return outs


def cross_validated_ua(originals: np.ndarray, copies: np.ndarray, y: np.ndarray, groups: np.ndarray,
                       make) -> list[float]:
    """Per fold, the UA on the held-out speakers' originals of a read-out fitted on the others' originals + copies."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold

    uas = []
    for fit, held in GroupKFold(n_splits=4).split(y, y, groups):
        x = np.concatenate([originals[fit], copies[fit]])
        scaler = fit_standardization(x)
        classifier = make().fit(scaler.transform(x), np.concatenate([y[fit], y[fit]]))
        uas.append(float(balanced_accuracy_score(y[held], classifier.predict(scaler.transform(originals[held])))))
    return uas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--train_speakers", default="1-16", help="only these speakers are read (the training ones)")
    parser.add_argument("--encoders", default="openai/whisper-tiny.en,openai/whisper-base",
                        help="comma-separated audio encoders (Hub ids or folders); the first one is train.py's")
    parser.add_argument("--screens", default="linear",
                        help="comma-separated, of: linear (the linear read-outs of each encoder and of all side by "
                             "side), extra_statistics (the first encoder's mean and std with each of "
                             "EXTRA_STATISTICS beside them), nonlinear (RBF SVM and perceptron of the first "
                             "encoder's mean and std); the probe's own regression of the first encoder always runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="/tmp/probe_readout.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    screens = {name for name in args.screens.split(",") if name}
    if screens - SCREENS:
        raise SystemExit(f"--screens: unknown {sorted(screens - SCREENS)}; choose from {sorted(SCREENS)}.")

    labels, audios, y, groups = training_clips(args.data_dir, args.train_speakers)
    copies = speed_copies(audios, 0.9)

    encoders = [name for name in args.encoders.split(",") if name]
    encoders = encoders if "linear" in screens else encoders[:1]
    features, extras = {}, {}
    for index, name in enumerate(encoders):
        model, processor = build_model(ModelArguments(use_transcript="none", audio_encoder=name), labels)
        model.eval()
        features[name] = tuple(clip_statistics(model, processor, a).double().numpy() for a in (audios, copies))
        if "extra_statistics" in screens and index == 0:  # every extra statistic in one more pass of the encoder
            more = [split_extra_statistics(model, processor, audios[0],
                                           clip_statistics(model, processor, a, pool=extra_statistics).double().numpy())
                    for a in (audios, copies)]
            for extra, parts in zip(EXTRA_STATISTICS, zip(*more)):
                extras[f"{name} mean, std + {extra}"] = tuple(np.hstack(pair) for pair in zip(features[name], parts))
        del model
    if len(encoders) > 1:
        features[" + ".join(encoders)] = tuple(np.hstack([features[n][i] for n in encoders]) for i in (0, 1))

    plans = []  # (features name, (originals, copies), read-outs)
    linear = "linear" in screens
    for index, (name, pair) in enumerate(features.items()):
        side_by_side = index == len(encoders)  # the widest features: the plain regression only
        # LDA's covariance grows with the square of the width: the first encoder only.
        plans.append((name, pair, read_outs(balanced=linear and not side_by_side, lda=linear and index == 0)))
        if index == 0 and "nonlinear" in screens:
            plans.append((name, pair, nonlinear_read_outs(pair[0].shape[1])))
    plans += [(name, pair, read_outs(balanced=False, lda=False)) for name, pair in extras.items()]

    rows = []
    for name, (originals, copied), outs in plans:
        for read_out, make in outs.items():
            try:
                uas = cross_validated_ua(originals, copied, y, groups, make)
            except np.linalg.LinAlgError as error:  # e.g. LDA's least squares on a near-singular covariance
                uas, failure = [], f"failed: {error}"
            else:
                failure = None
            ua = float(np.mean(uas)) if uas else None
            rows.append({"features": name, "width": int(originals.shape[1]), "read_out": read_out, "ua": ua,
                         "fold_ua": uas, "failure": failure})
            print(f"{name} ({originals.shape[1]}) | {read_out} | CV UA {failure or f'{ua:.3f}'}", flush=True)
    Path(args.out).write_text(json.dumps({"clips": len(audios), "speakers": sorted(set(groups)), "rows": rows},
                                         indent=2))
    print("\n| features | width | read-out | CV UA (4 folds) |\n|---|---:|---|---:|")
    for r in rows:
        score = r["failure"] or f"{r['ua']:.3f}"
        print(f"| {r['features']} | {r['width']:,d} | {r['read_out']} | {score} |")


if __name__ == "__main__":
    main()
