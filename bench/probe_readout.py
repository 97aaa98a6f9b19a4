# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""Which linear read-out, of which encoder's statistics, the probe should be: a screen by cross-validation.

The default recipe's probe is an L2 logistic regression (C chosen by cross-validation) on every layer's mean and std
of Whisper tiny.en, fitted on the training clips and a 0.9x speed-perturbed copy of each. This script screens, in
the same 4 folds of the training speakers only (scikit-learn's GroupKFold; each fold fits on the other speakers'
originals and copies and scores the held-out speakers' original clips):

- the regression at several C, and with class-balanced weights (UA weighs every class alike; RAVDESS has half as
  many neutral clips as of any other emotion);
- shrinkage LDA (scikit-learn's LinearDiscriminantAnalysis, lsqr), another linear read-out, on the first encoder;
- each encoder's statistics alone and, with two or more encoders, all of them side by side (the regression only).

    python bench/probe_readout.py --data_dir ../shared/data/ravdess --train_speakers 1-16 \
        --encoders openai/whisper-tiny.en,openai/whisper-base --out /tmp/probe_readout.json

The features are the probe's own (`model.pooled_audio_statistics` through bench/probe_augmentation.py's
`clip_statistics`; train.py's `augmented_copies`), standardized as the probe's fit does
(`EmoSLLMStatisticsProbe.fit_standardization`). Only the speakers of --train_speakers are read.
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
sys.path.insert(0, str(ROOT / "bench"))

from modeling_emosllm import EmoSLLMStatisticsProbe  # noqa: E402
from probe_augmentation import clip_statistics, speed_copies, training_clips  # noqa: E402
from train import ModelArguments, build_model  # noqa: E402

CS = (0.003, 0.01, 0.03)
SHRINKAGES = ("auto", 0.5, 0.8, 0.95)


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
        scaler = EmoSLLMStatisticsProbe.fit_standardization(x)
        classifier = make().fit(scaler.transform(x), np.concatenate([y[fit], y[fit]]))
        uas.append(float(balanced_accuracy_score(y[held], classifier.predict(scaler.transform(originals[held])))))
    return uas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--train_speakers", default="1-16", help="only these speakers are read (the training ones)")
    parser.add_argument("--encoders", default="openai/whisper-tiny.en,openai/whisper-base",
                        help="comma-separated audio encoders (Hub ids or folders); the first one is train.py's")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="/tmp/probe_readout.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    labels, audios, y, groups = training_clips(args.data_dir, args.train_speakers)
    copies = speed_copies(audios, 0.9)

    encoders = [name for name in args.encoders.split(",") if name]
    features = {}
    for name in encoders:
        model, processor = build_model(ModelArguments(use_transcript="none", audio_encoder=name), labels)
        model.eval()
        features[name] = tuple(clip_statistics(model, processor, a).double().numpy() for a in (audios, copies))
        del model
    if len(encoders) > 1:
        features[" + ".join(encoders)] = tuple(np.hstack([features[n][i] for n in encoders]) for i in (0, 1))

    rows = []
    for index, (name, (originals, copied)) in enumerate(features.items()):
        side_by_side = index == len(encoders)  # the widest features: the plain regression only
        # LDA's covariance grows with the square of the width: the first encoder only.
        for read_out, make in read_outs(balanced=not side_by_side, lda=index == 0).items():
            uas = cross_validated_ua(originals, copied, y, groups, make)
            rows.append({"features": name, "width": int(originals.shape[1]), "read_out": read_out,
                         "ua": float(np.mean(uas)), "fold_ua": uas})
            print(f"{name} ({originals.shape[1]}) | {read_out} | CV UA {np.mean(uas):.3f}", flush=True)
    Path(args.out).write_text(json.dumps({"clips": len(audios), "speakers": sorted(set(groups)), "rows": rows},
                                         indent=2))
    print("\n| features | width | read-out | CV UA (4 folds) |\n|---|---:|---|---:|")
    for r in rows:
        print(f"| {r['features']} | {r['width']:,d} | {r['read_out']} | {r['ua']:.3f} |")


if __name__ == "__main__":
    main()
