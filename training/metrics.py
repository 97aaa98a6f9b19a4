# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
The SER scores (unweighted and weighted accuracy, F1, per-class recall, confusion matrix) by the metric module
metrics/ser_accuracy, the confusion-matrix plot and the JSON report.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.corpora import PathLike

__all__ = ["SER_METRIC_PATH", "check_finite_scores", "compute_ser_metrics", "save_confusion_matrix", "write_report"]


# The SER scores as an `evaluate` metric module, loaded from its folder in this repository (metrics/ser_accuracy):
# offline, nothing fetched from the Hub or run from it. (evaluate.load("accuracy"/"f1"/"recall") would download
# metric scripts and execute them.) Loaded once per process.
SER_METRIC_PATH = Path(__file__).resolve().parent.parent / "metrics" / "ser_accuracy"
_ser_metric = None


def check_finite_scores(logits: Any, where: str) -> None:
    """
    Stops a run whose model gives NaN or infinite class scores: training diverged. The Trainer ends such a run as any
    other, and every clip would then be read as one arbitrary class and reported as a low score.

    Args:
        logits: The class scores `(clips, num_labels)`, a numpy array or a CPU tensor.
        where: What was scored, for the message ("the validation clips").

    Raises:
        ValueError: saying what to do.
    """
    if not np.isfinite(np.asarray(logits, dtype=np.float32)).all():
        raise ValueError(f"Training diverged: the model's class scores on {where} are NaN or infinite. Train again "
                         "with a lower --learning_rate (or --mapper_learning_rate), or resume from a checkpoint saved "
                         "before it diverged (--resume_from_checkpoint).")


def compute_ser_metrics(predictions: Sequence[Any], references: Sequence[Any], labels: Sequence[str]) -> dict[str, Any]:
    """SER metrics over label names or class ids (indices into ``labels``), by the metric module metrics/ser_accuracy.

    Args:
        predictions: The predicted label names or class ids, one per clip.
        references: The true label names or class ids, as many as ``predictions`` (at least one).
        labels: The label set, in class-id order (the confusion matrix's order).

    Returns:
        ``ua``: unweighted accuracy, the mean recall over the classes present in ``references``;
        ``wa``: weighted accuracy (plain accuracy);
        ``macro_f1`` / ``weighted_f1``: F1 over the classes present in references or predictions
        (a class predicted but never true counts with F1 0 in the macro mean, weight 0 in the weighted one);
        ``per_class_recall``: {label: recall} for the classes present in references;
        ``confusion_matrix``: counts, rows = reference, columns = prediction, in ``labels`` order;
        ``labels`` and ``num_samples``.

    Raises:
        ValueError: a value that is neither a label nor a class id, or unequal lengths.
    """
    global _ser_metric
    if _ser_metric is None:
        import evaluate

        _ser_metric = evaluate.load(str(SER_METRIC_PATH), keep_in_memory=True)
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references) or not references:
        raise ValueError(f"need as many predictions as references, at least one ({len(predictions)} vs "
                         f"{len(references)})")
    return _ser_metric.compute(predictions=predictions, references=references, labels=[str(x) for x in labels])


def save_confusion_matrix(predictions: Sequence[Any], references: Sequence[Any], labels: Sequence[str],
                          path_png: PathLike) -> Path:
    """
    Draw the confusion matrix (counts; colour = share of the reference class) to a PNG.

    Args:
        predictions: The predicted label names or class ids, one per clip (as `compute_ser_metrics` takes them).
        references: The true label names or class ids, as many as `predictions`.
        labels: The label set, in class-id order (the order of both axes).
        path_png: The PNG file to write; its parent folders are created.

    Returns:
        The PNG file's path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = [str(label) for label in labels]
    counts = np.array(compute_ser_metrics(predictions, references, labels)["confusion_matrix"])
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.6 * len(labels)
    figure = Figure(figsize=(size + 1.5, size), layout="constrained")
    FigureCanvasAgg(figure)  # Agg canvas without touching the global pyplot backend
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="share of reference class")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("reference")
    for row in range(len(labels)):
        for column in range(len(labels)):
            axes.text(column, row, str(counts[row, column]), ha="center", va="center",
                      color="white" if shares[row, column] > 0.5 else "black", fontsize=8)
    path = Path(path_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def write_report(metrics: Mapping[str, Any], path_json: PathLike) -> Path:
    """
    Write metrics as indented JSON (numpy values made plain), creating parent folders.

    Args:
        metrics: The scores to write (e.g. `compute_ser_metrics`'s); numpy scalars and arrays are allowed.
        path_json: The JSON file to write.

    Returns:
        The JSON file's path.
    """
    path = Path(path_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, default=_json_default) + "\n", encoding="utf-8")
    return path


def _json_default(value: Any) -> Any:
    """JSON for numpy scalars/arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
