# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""How far a trained model's class probabilities can be trusted: their calibration on clips of speakers it did not
train on, as the pipeline delivers them.

    # /tmp/ravdess01-16: links to RAVDESS's Actor_01..16 and their rows of manifest.csv, so that neither training
    # (every speaker but --test_speakers trains) nor this check reads the test actors 17-20
    python train.py --data_dir /tmp/ravdess01-16 --test_speakers 13-16 --output_dir /tmp/dev  # trained on 01-12
    python bench/calibration.py --model /tmp/dev --data_dir /tmp/ravdess01-16 --speakers 13-16

For each clip of `--speakers`, `pipeline("audio-classification")` gives every class's probability (whole clips,
`top_k=None`). The script prints accuracy (WA) and UA beside the mean top probability, the share of answers given
with a top probability above 0.99 and how often those are right, the negative log-likelihood of the true class
(NLL), the expected calibration error (ECE, 10 equal-width bins of the top probability) and the multi-class Brier
score. A calibrated model's mean top probability is close to its accuracy and its ECE near 0. For scale, the NLL
after dividing the log-probabilities by a temperature T is listed for a few T: T is not fitted (these clips are the
only held-out ones), so that column shows the size of the miscalibration, not a recipe. For a model with the probe
mapper (train.py's default), a second row gives the same figures for the fitted probe's own probabilities on the
same clips (`model.mapper.scores_of_statistics` of `model.pooled_audio_statistics`): the class evidence the LLM
reads, before the LLM answers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["TEMPERATURES", "calibration", "main", "parse_args"]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TEMPERATURES = (1.0, 2.0, 4.0, 8.0)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a saved EmoSLLM folder (train.py's output)")
    parser.add_argument("--data_dir", required=True, help="the corpus folder")
    parser.add_argument("--speakers", required=True, help="held-out speakers the model did not train on, e.g. '13-16'")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=8, help="pipeline batch size (default: %(default)s)")
    parser.add_argument("--out", default=None, help="write the results here as JSON")
    return parser.parse_args(argv)


def calibration(probabilities: np.ndarray, targets: np.ndarray) -> dict:
    """Calibration figures of `probabilities` `(clips, classes)` (rows sum to 1) against class ids `targets`, with
    UA and WA as the project computes them everywhere (`compute_ser_metrics`)."""
    from training.metrics import compute_ser_metrics

    confidence, predictions = probabilities.max(axis=1), probabilities.argmax(axis=1)
    correct = predictions == targets
    metrics = compute_ser_metrics(predictions.tolist(), targets.tolist(), list(range(probabilities.shape[1])))
    edges = np.linspace(0.0, 1.0, 11)
    ece = sum(
        in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
        for low, high in zip(edges[:-1], edges[1:])
        if (in_bin := (confidence > low) & (confidence <= high)).any()
    )
    sure = confidence > 0.99
    log_p = np.log(np.clip(probabilities, 1e-30, 1.0))

    def nll(temperature: float) -> float:
        scaled = log_p / temperature
        scaled -= np.logaddexp.reduce(scaled, axis=1, keepdims=True)
        return float(-scaled[np.arange(len(targets)), targets].mean())

    one_hot = np.eye(probabilities.shape[1])[targets]
    return {
        "wa": float(metrics["wa"]),
        "ua": float(metrics["ua"]),
        "mean_top_probability": float(confidence.mean()),
        "share_above_0.99": float(sure.mean()),
        "accuracy_above_0.99": float(correct[sure].mean()) if sure.any() else None,
        "nll": nll(1.0),
        "ece": float(ece),
        "brier": float(((probabilities - one_hot) ** 2).sum(axis=1).mean()),
        "nll_at_temperature": {str(t): nll(t) for t in TEMPERATURES},
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch
    from transformers import pipeline

    from training.clips import decoded_clips
    from training.corpora import SAMPLING_RATE
    from training.data import load_corpus
    from training.splits import split_by_speakers

    torch.set_num_threads(args.threads)
    clips = decoded_clips(split_by_speakers(load_corpus(args.data_dir), test_speakers=args.speakers)["test"])
    classifier = pipeline("audio-classification", model=args.model, trust_remote_code=True, device="cpu")
    labels = classifier.model.config.labels
    inputs = [{"array": c["audio"], "sampling_rate": SAMPLING_RATE} for c in clips]
    outputs = classifier(inputs, top_k=None, segment_seconds=None, batch_size=args.batch_size)
    probabilities = np.array([[{o["label"]: o["score"] for o in output}[label] for label in labels]
                              for output in outputs])
    targets = np.array([labels.index(c["label"]) for c in clips])
    rows = {"the LLM's answer (the pipeline)": calibration(probabilities, targets)}
    model = classifier.model
    if model.config.mapper_type == "probe":
        with torch.no_grad():
            probe = torch.cat([
                model.mapper.scores_of_statistics(model.pooled_audio_statistics(
                    classifier.processor.audio_features([c["audio"] for c in clips[i:i + args.batch_size]])
                )).softmax(-1)
                for i in range(0, len(clips), args.batch_size)
            ])
        rows["the fitted probe alone (what the LLM reads)"] = calibration(probe.double().numpy(), targets)
    result = {"model": args.model, "data_dir": args.data_dir, "speakers": args.speakers, "clips": len(clips),
              "threads": args.threads, "rows": rows}

    print(f"{args.model} on {len(clips)} clips of speakers {args.speakers}, {args.threads} thread(s)")
    print("| probabilities | WA | UA | mean top probability | answers with top probability > 0.99 (right) | NLL | "
          "ECE | Brier | " + " | ".join(f"NLL at T={t:g}" for t in TEMPERATURES) + " |")
    print("|---|---:|---:|---:|---|---:|---:|---:|" + "---:|" * len(TEMPERATURES))
    for name, row in rows.items():
        right = row["accuracy_above_0.99"]
        print(f"| {name} | {row['wa']:.3f} | {row['ua']:.3f} | {row['mean_top_probability']:.3f} | "
              f"{row['share_above_0.99']:.3f} ({'-' if right is None else f'{right:.3f}'}) | {row['nll']:.2f} | "
              f"{row['ece']:.3f} | {row['brier']:.3f} | "
              + " | ".join(f"{v:.2f}" for v in row["nll_at_temperature"].values()) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
