# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
Speech emotion recognition scores as an `evaluate` metric module: UA, WA, macro and weighted F1, per-class recall and
the confusion matrix, over label names or class ids.

Loaded from this local folder, offline (no Hub script is fetched or run):

    import evaluate
    metric = evaluate.load("metrics/ser_accuracy")  # a path: the folder holding ser_accuracy.py
    metric.compute(predictions=[0, 2, 1], references=[0, 1, 1], labels=["neutral", "happy", "sad"])
"""

import numbers

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

_DESCRIPTION = """
Speech emotion recognition scores. UA (unweighted accuracy) is the mean recall over the classes present in the
references, the field's headline score, insensitive to class imbalance; WA (weighted accuracy) is plain accuracy.
Macro and weighted F1 are taken over the classes present in the references or the predictions (a class predicted but
never true counts with F1 0 in the macro mean, weight 0 in the weighted one).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int` or `str`): predicted class ids (indices into `labels`) or label names.
    references (`list` of `int` or `str`): true class ids or label names (the same kind as `predictions`).
    labels (`list` of `str`): every class name, in class-id order; sets the confusion matrix's order.
Returns:
    ua (`float`), wa (`float`), macro_f1 (`float`), weighted_f1 (`float`),
    per_class_recall (`dict`: label -> recall, for the classes present in `references`),
    confusion_matrix (`list` of `list` of `int`: rows = reference, columns = prediction, in `labels` order),
    labels (`list` of `str`), num_samples (`int`).
Examples:
    >>> metric = evaluate.load("metrics/ser_accuracy")
    >>> metric.compute(predictions=[0, 1], references=[0, 0], labels=["sad", "happy"])["ua"]
    0.5
"""

_CITATION = """
@article{emosllm2025,
  title={EmoSLLM: Parameter-Efficient Adaptation of LLMs for Speech Emotion Recognition},
  journal={arXiv preprint arXiv:2508.14130},
  year={2025}
}
"""


def as_label_names(values, labels: list[str], what: str) -> list[str]:
    """Label names or integer class ids (indices into `labels`) -> label names; `ValueError` for anything else."""
    names = []
    for value in values:
        if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool):
            if not 0 <= int(value) < len(labels):
                raise ValueError(f"{what}: class id {value} is outside 0..{len(labels) - 1}")
            names.append(labels[int(value)])
        elif value in labels:
            names.append(str(value))
        else:
            raise ValueError(f"{what}: {value!r} is not one of the labels {list(labels)}")
    return names


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SerAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            reference_urls=["https://arxiv.org/abs/2508.14130"],
        )

    def _compute(self, predictions, references, labels=None):
        if labels is None:
            raise ValueError("ser_accuracy needs labels=[...]: every class name, in class-id order.")
        labels = [str(label) for label in labels]
        predicted = as_label_names(predictions, labels, "predictions")
        true = as_label_names(references, labels, "references")
        if len(predicted) != len(true) or not true:
            raise ValueError(
                f"need as many predictions as references, at least one ({len(predicted)} vs {len(true)})"
            )
        present = [label for label in labels if label in set(true)]
        seen = [label for label in labels if label in set(true) | set(predicted)]
        recalls = recall_score(true, predicted, labels=present, average=None, zero_division=0)
        return {
            "ua": float(np.mean(recalls)),
            "wa": float(accuracy_score(true, predicted)),
            "macro_f1": float(f1_score(true, predicted, labels=seen, average="macro", zero_division=0)),
            "weighted_f1": float(f1_score(true, predicted, labels=seen, average="weighted", zero_division=0)),
            "per_class_recall": {label: float(r) for label, r in zip(present, recalls)},
            "confusion_matrix": confusion_matrix(true, predicted, labels=labels).tolist(),
            "labels": labels,
            "num_samples": len(true),
        }
