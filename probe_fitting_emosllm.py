# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
How the probe mapper is fitted (scikit-learn): the standardization and L2 logistic regression of the pooled
statistics, and the choice of its inverse strength C by validation or by cross-validation over speakers.
`EmoSLLMForSpeechEmotionRecognition.fit_probe` is the public entry point.

scikit-learn is imported inside the functions, in try blocks: transformers' check of a remote-code folder's imports
leaves those out, so loading and inference do not need scikit-learn, only fitting does.
"""

from collections.abc import Iterable

try:  # a saved folder is loaded as a package (relative import); scripts import top-level modules
    from .dependencies_emosllm import missing_dependency
except ImportError:
    if __package__:  # loaded as a package: the sibling failed on its own
        raise
    from dependencies_emosllm import missing_dependency
try:  # a missing package is named with its pip command (dependencies_emosllm.py)
    import numpy as np
    import torch
    from transformers.utils import logging
except ModuleNotFoundError as error:
    raise missing_dependency(error, __name__) from error


logger = logging.get_logger(__name__)

# The inverse L2 strengths (scikit-learn's C) tried by default; train.py's --probe_c defaults to them.
PROBE_C_GRID = (0.001, 0.003, 0.01, 0.03)
# How many times `fit_probe` extends the C grid past an edge that cross-validation or validation chose.
MAX_C_GRID_EXTENSIONS = 3
# Floor on the spread that standardizes a pooled statistic, relative to the median spread: a statistic that barely
# varies across the training clips (clips of one fixed length, zero-padded) must not turn rounding noise into the
# answer.
MIN_RELATIVE_STD = 1e-2


def fit_standardization(x: np.ndarray, min_relative_std: float = MIN_RELATIVE_STD):
    """
    scikit-learn's StandardScaler fitted on pooled statistics `x` `(clips, features)`, each feature's scale floored
    at `min_relative_std` times the median scale: the probe's standardization (`fit_linear_probe`).

    Args:
        x: Pooled statistics `(clips, features)`.
        min_relative_std: The floor on each feature's scale, relative to the median scale (`MIN_RELATIVE_STD`).

    Returns:
        The fitted `StandardScaler` (`mean_`, and `scale_` floored).
    """
    try:
        from sklearn.preprocessing import StandardScaler
    except ModuleNotFoundError as error:
        raise missing_dependency(error, __name__) from error

    scaler = StandardScaler().fit(x)
    scaler.scale_ = np.maximum(scaler.scale_, min_relative_std * np.median(scaler.scale_))
    return scaler


@torch.no_grad()
def fit_linear_probe(probe, statistics: torch.Tensor, labels: torch.Tensor, c: float) -> None:
    """
    Fits `probe` (an `EmoSLLMStatisticsProbe`): scikit-learn's StandardScaler and L2 LogisticRegression (inverse
    strength `c`) on pooled statistics `(clips, 2 * encoder_hidden)` (from `pooled_statistics` of the standardized
    frames) and class ids `labels` `(clips,)`. In float64: scikit-learn's lbfgs stops early on float32.

    Args:
        probe: The `EmoSLLMStatisticsProbe` to fit; its buffers are set (`set_probe`).
        statistics: Pooled statistics `(clips, 2 * encoder_hidden)`.
        labels: Class ids `(clips,)`; every class needs at least one clip (else a `ValueError`).
        c: The inverse L2 strength (scikit-learn's C).
    """
    # In a try block, so that transformers' check of the remote code's imports (which imports each one, 1.1 s
    # for scikit-learn) leaves it out: only fitting needs scikit-learn, loading and inference do not.
    try:
        from sklearn.linear_model import LogisticRegression
    except ModuleNotFoundError as error:
        raise missing_dependency(error, __name__) from error

    x, y = statistics.double().cpu().numpy(), labels.cpu().numpy()
    missing = [probe.label_names[i] for i in sorted(set(range(probe.probe_bias.shape[0])) - set(y.tolist()))]
    if missing:
        raise ValueError(f"The probe needs labelled clips of every class; it got none of {missing}.")
    scaler = fit_standardization(x)
    regression = LogisticRegression(C=c, max_iter=3000).fit(scaler.transform(x), y)
    probe.set_probe(*(torch.from_numpy(np.asarray(v)) for v in
                      (scaler.mean_, scaler.scale_, regression.coef_, regression.intercept_)))


@torch.no_grad()
def fit_probe(
    model,
    batches: Iterable[dict],
    cs: float | Iterable[float] = PROBE_C_GRID,
    validation_batches: Iterable[dict] | None = None,
    groups: Iterable | None = None,
) -> dict:
    """
    Fits the probe mapper (`mapper_config={"mapper_type": "probe"}`) on labelled clips. Each C in `cs` is scored by
    validation UA on `validation_batches`, or else, with `groups`, by cross-validation over speakers (scikit-learn's
    GroupKFold, up to 4 folds). Where the best C is the grid's smallest or largest and scores above its neighbour,
    the grid is extended past that edge (by its own step, at most 10x, up to `MAX_C_GRID_EXTENSIONS` times, logged)
    until a C inside it wins. The best C is then fitted on every clip of `batches`.

    Call `audio_encoder.set_feature_statistics` first (the probe reads the standardized frames).

    Args:
        model: The `EmoSLLMForSpeechEmotionRecognition` with the probe mapper (this is its `fit_probe` method).
        batches: Model inputs with `labels` (e.g. `processor(clips, labels=...)`, or train.py's batches of cached
            encoder states).
        cs: The C (inverse L2 strength) or the Cs to choose from.
        validation_batches: Labelled model inputs that score each C by UA, or None.
        groups: One speaker id per training clip of `batches`, in order, or None.

    Returns:
        `{"probe_c": C, "probe_selection_ua": UA or None, "probe_selection": how, "probe_cs": the Cs tried}`, and
        with `groups` of at least 2 speakers also `"out_of_fold_scores"` `(clips, num_labels)`: each clip's scores
        from the probe fitted at that C on the other folds' speakers, i.e. what the probe says of voices it did not
        fit (train.py trains the LLM on them, so that it learns how far the probe can be trusted), and
        `"out_of_fold_folds"` `(clips,)`: the fold each clip was held out in.
    """
    if model.config.mapper_type != "probe":
        raise ValueError(
            f"fit_probe is for the probe mapper (mapper_config['mapper_type']='probe'); this model's is {model.config.mapper_type!r}."
        )
    try:  # (see fit_linear_probe)
        from sklearn.metrics import balanced_accuracy_score
        from sklearn.model_selection import GroupKFold
    except ModuleNotFoundError as error:
        raise missing_dependency(error, __name__) from error

    cs = sorted([float(cs)] if isinstance(cs, (int, float)) else [float(c) for c in cs])
    if not cs or any(c <= 0 for c in cs):
        raise ValueError(f"The probe's C values must be positive numbers; got {cs}.")

    def gather(parts):  # one batch at a time: a list of all batches' encoder states would not fit in memory
        statistics, labels = [], []
        for batch in parts:
            if "labels" not in batch:
                raise ValueError("fit_probe needs batches of model inputs with `labels` (processor(..., "
                                 "labels=...)).")
            statistics.append(model.pooled_audio_statistics(batch))
            labels.append(torch.as_tensor(batch["labels"]))
        if not statistics:
            raise ValueError("fit_probe got no batches of labelled clips.")
        return torch.cat(statistics), torch.cat(labels)

    def ua(labels: torch.Tensor, scores: torch.Tensor) -> float:
        return float(balanced_accuracy_score(labels.numpy(), scores.argmax(-1).numpy()))

    x, y = gather(batches)
    splits = []
    if groups is not None:
        groups = np.asarray(list(groups))
        if len(groups) != len(y):
            raise ValueError(f"fit_probe got {len(groups)} groups for {len(y)} clips; give one per clip.")
        folds = min(4, len(set(groups.tolist())))
        if folds >= 2:
            splits = list(GroupKFold(n_splits=folds).split(x.numpy(), y.numpy(), groups))

    def cross_fitted(c) -> tuple[float, torch.Tensor]:  # mean UA over the folds, and every clip's held-out scores
        scores, fold_uas = torch.zeros(len(y), model.config.num_labels), []
        for fit, held in splits:
            absent = sorted(set(y.tolist()) - set(y[fit].tolist()))
            if absent:
                names = [model.config.labels[i] for i in absent]
                raise ValueError(
                    f"The probe's cross-validation over the training speakers: every clip of {names} is in one "
                    "fold's speakers, so the other folds have none to fit on. Give those labels clips of more "
                    "speakers, leave them out (train.py --labels), or name validation speakers (--eval_speakers)."
                )
            fit_linear_probe(model.mapper, x[fit], y[fit], c)
            scores[held] = model.mapper.scores_of_statistics(x[held]).float()
            fold_uas.append(ua(y[held], scores[held]))
        return float(np.mean(fold_uas)), scores

    selection, out_of_fold, how = {}, {}, "given"
    if len(cs) > 1 and validation_batches is not None:
        x_val, y_val = gather(validation_batches)

        def select(c) -> None:
            fit_linear_probe(model.mapper, x, y, c)
            selection[c] = ua(y_val, model.mapper.scores_of_statistics(x_val))

        how = "validation UA"
    elif len(cs) > 1 and splits:
        def select(c) -> None:
            selection[c], out_of_fold[c] = cross_fitted(c)

        how = f"{len(splits)}-fold cross-validation over the training speakers"
    elif len(cs) > 1:
        raise ValueError("Several C values need validation_batches or groups of at least 2 speakers to choose "
                         "between them.")
    def winning_edge() -> float | None:
        """The best C tried when it is the smallest or largest and beats its neighbour (not on a plateau)."""
        tried = sorted(selection)
        best = max(tried, key=lambda c: (selection[c], -c))
        inward = tried[1] if best == tried[0] else tried[-2] if best == tried[-1] else None
        return best if inward is not None and selection[best] > selection[inward] else None

    if len(cs) > 1:
        for c in cs:
            select(c)
        step = min(min(b / a for a, b in zip(cs, cs[1:])), 10.0)
        for _ in range(MAX_C_GRID_EXTENSIONS):
            edge = winning_edge()
            if edge is None:
                break
            beyond = edge / step if edge == min(selection) else edge * step
            logger.warning("The probe's best C (%g) is at the edge of the grid tried (%s); trying C=%g as well.",
                           edge, ", ".join(f"{c:g}" for c in sorted(selection)), beyond)
            select(beyond)
        if winning_edge() is not None:
            logger.warning("The probe's C is still at the edge of the grid tried (C=%g of %s).", winning_edge(),
                           ", ".join(f"{c:g}" for c in sorted(selection)))
    best = max(selection or cs, key=lambda c: (selection.get(c, 0.0), -c))  # ties: the stronger regularization
    if splits and best not in out_of_fold:
        out_of_fold[best] = cross_fitted(best)[1]
    fit_linear_probe(model.mapper, x, y, best)
    chosen = {"probe_c": best, "probe_selection_ua": selection.get(best), "probe_selection": how,
              "probe_cs": sorted(selection or cs)}
    if splits:
        chosen["out_of_fold_scores"] = out_of_fold[best]
        folds = torch.zeros(len(y), dtype=torch.long)
        for fold, (_, held) in enumerate(splits):
            folds[held] = fold
        chosen["out_of_fold_folds"] = folds
    return chosen


__all__ = [
    "MAX_C_GRID_EXTENSIONS",
    "PROBE_C_GRID",
    "fit_linear_probe",
    "fit_probe",
    "fit_standardization",
]
