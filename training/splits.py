# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
Speaker-independent splits: speaker ids, the train/validation/test split by speaker (or by another grouping
column), speaker folds, and, for data without speaker ids, splits and folds by clip (not speaker-independent);
also train.py's choice of split (``make_splits``: the default test and validation speakers, chosen to cover every
label) and its check that each split holds the labels.
"""

from __future__ import annotations

import logging
import numbers
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Optional, Union

import datasets
import numpy as np

from training.arguments import DataArguments

logger = logging.getLogger("emosllm.train")  # its messages belong to train.py's run log

__all__ = ["NO_SPEAKERS_WARNING", "SPLIT_SEARCH_SHUFFLES", "TEST_SHARE", "VALIDATION_SHARE", "SpeakerSpec",
           "check_speaker_disjoint", "check_split_labels", "clip_folds", "default_speaker_split", "has_speaker_ids",
           "make_splits", "resolve_speakers", "speaker_folds", "speaker_ids", "speaker_sort_key",
           "speakers_covering_labels", "split_by_clips", "split_by_speakers", "split_unit"]


SpeakerSpec = Union[str, int, Sequence[Union[str, int]], None]


_TRAILING_NUMBER = re.compile(r"(\d+)\D*$")
_NUMBER_OR_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def speaker_ids(dataset: datasets.Dataset, column: str = "speaker") -> list[str]:
    """
    The speaker column (or another grouping `column`, e.g. a session id) as strings; raises if any row has none
    (splits would be unverifiable).

    Args:
        dataset: The data; only `column` is read (no audio is decoded), and a dataset without it raises.
        column: The grouping column.

    Returns:
        One id per row, in row order.
    """
    if column not in dataset.column_names:
        raise ValueError(f"the dataset has no {column!r} column; add one (e.g. to manifest.csv)")
    speakers = list(dataset[column])  # reads one column; audio is not decoded
    missing = [i for i, s in enumerate(speakers) if s is None or str(s) == ""]
    if missing:
        if column == "speaker":
            raise ValueError(f"{len(missing)} row(s) have no speaker (first: row {missing[0]}); speaker-independent "
                             f"splits need a speaker id on every row: add them to the manifest")
        raise ValueError(f"{len(missing)} row(s) have no {column!r} (first: row {missing[0]}); splits by "
                         f"{column!r} need a value on every row: fill them in")
    return [str(s) for s in speakers]


def has_speaker_ids(dataset: datasets.Dataset) -> Optional[bool]:
    """
    True when every row has a speaker id, False when none has, None when only some have (reads one column).

    Args:
        dataset: The data; without a ``speaker`` column no row has a speaker id.
    """
    if "speaker" not in dataset.column_names:
        return False
    present = [s is not None and str(s) != "" for s in dataset["speaker"]]
    return True if all(present) else False if not any(present) else None


def speaker_sort_key(speaker: str) -> tuple[str, int, str]:
    """
    Natural order: prefix, then trailing number, so ``ravdess_2`` comes before ``ravdess_10``.

    Args:
        speaker: A speaker id.

    Returns:
        `(prefix, number, speaker)` with the id's last run of digits as the number; `(speaker, -1, speaker)` for an
        id without digits.
    """
    match = _TRAILING_NUMBER.search(speaker)
    if match is None:
        return speaker, -1, speaker
    return speaker[: match.start()], int(match.group(1)), speaker


def resolve_speakers(spec: SpeakerSpec, known: Sequence[str]) -> set[str]:
    """
    Turn a speaker specification into speaker ids present in the data.

    Rule: ``spec`` is a comma-separated string, an int, or a sequence of these. Each item that equals a
    known id selects that id. Otherwise an item ``N`` or a range ``N-M`` (decimal numbers) selects every
    known id whose *last run of digits* has an integer value in ``[N, M]``: ``17`` or ``"17-20"`` match
    ``ravdess_17`` and ``Actor_17``; ``3`` matches ``emodb_03``. Any item that selects nothing is an error.

    Args:
        spec: The speakers to select, as above; None selects none.
        known: The speaker ids of the data (repeats allowed).

    Returns:
        The selected speaker ids.
    """
    known_set = set(known)
    numbers_of = {s: int(m.group(1)) for s in known_set if (m := _TRAILING_NUMBER.search(s))}
    selected: set[str] = set()
    for item in _spec_items(spec):
        if item in known_set:
            selected.add(item)
            continue
        match = _NUMBER_OR_RANGE.fullmatch(item)
        found = set()
        if match is not None:
            low = int(match.group(1))
            high = int(match.group(2)) if match.group(2) else low
            found = {s for s, n in numbers_of.items() if low <= n <= high}
        if not found:
            shown = sorted(known_set, key=speaker_sort_key)
            raise ValueError(f"speaker {item!r} matches no speaker in the data (known: {shown}); "
                             f"use one of these ids or a number / range like 17 or 17-20")
        selected |= found
    return selected


def _spec_items(spec: SpeakerSpec) -> list[str]:
    """Flatten a speaker specification into stripped string items."""
    if spec is None:
        return []
    if isinstance(spec, (str, numbers.Integral)):
        spec = [spec]
    items: list[str] = []
    for entry in spec:
        items += [part.strip() for part in str(entry).split(",") if part.strip()]
    return items


def check_speaker_disjoint(splits: Mapping[str, datasets.Dataset], column: str = "speaker") -> None:
    """
    Raise ValueError if a speaker (a value of `column`) appears in two splits (or a row has none).

    Args:
        splits: The splits by name (e.g. ``train``, ``validation``, ``test``).
        column: The grouping column.
    """
    owner: dict[str, str] = {}
    what = "speaker" if column == "speaker" else f"{column} value"
    for split_name, dataset in splits.items():
        for speaker in sorted(set(speaker_ids(dataset, column)), key=speaker_sort_key):
            if speaker in owner and owner[speaker] != split_name:
                raise ValueError(f"{what} {speaker!r} is in both {owner[speaker]!r} and {split_name!r}; "
                                 f"each {what} must be in exactly one split")
            owner[speaker] = split_name


def _select_speakers(dataset: datasets.Dataset, speakers: list[str], chosen: set[str]) -> datasets.Dataset:
    """Rows whose speaker is in ``chosen`` (by index, so no audio is decoded)."""
    return dataset.select([i for i, s in enumerate(speakers) if s in chosen])


def split_by_speakers(
    dataset: datasets.Dataset, test_speakers: SpeakerSpec, eval_speakers: SpeakerSpec = None, column: str = "speaker"
) -> datasets.DatasetDict:
    """
    Split by speaker: ``test`` and ``validation`` hold the named speakers, ``train`` all others.

    Speakers follow :func:`resolve_speakers`. A split whose spec is empty is left out. The result is
    checked with :func:`check_speaker_disjoint` (naming a speaker in both test and eval is an error, and so is
    leaving no speaker for training).

    Args:
        dataset: The data, with a value of `column` on every row.
        test_speakers: The speakers of ``test``, as :func:`resolve_speakers` reads them (None or empty: no ``test``).
        eval_speakers: The speakers of ``validation``, likewise (None or empty: no ``validation``).
        column: The grouping column; another one than ``speaker`` splits by it instead (e.g. a session or
            recording id).

    Returns:
        A `DatasetDict` with ``train`` and, where named, ``validation`` and ``test``; rows keep their order.
    """
    speakers = speaker_ids(dataset, column)
    test = resolve_speakers(test_speakers, speakers)
    evaluation = resolve_speakers(eval_speakers, speakers)
    both = sorted(test & evaluation, key=speaker_sort_key)
    if both:
        raise ValueError(f"speaker {both[0]!r} is named for both test and validation; name it for one only")
    train = set(speakers) - test - evaluation
    if not train:
        raise ValueError("no speakers left for training; name fewer test/validation speakers")
    splits = {"train": _select_speakers(dataset, speakers, train)}
    if evaluation:
        splits["validation"] = _select_speakers(dataset, speakers, evaluation)
    if test:
        splits["test"] = _select_speakers(dataset, speakers, test)
    check_speaker_disjoint(splits, column)
    return datasets.DatasetDict(splits)


def speaker_folds(dataset: datasets.Dataset, k: int, column: str = "speaker") -> list[datasets.DatasetDict]:
    """
    Leave-speakers-out cross-validation: ``k`` folds of ``DatasetDict(train, test)``.

    Speakers are sorted naturally (see :func:`speaker_sort_key`) and cut into ``k`` contiguous groups of
    near-equal size (the first groups get one more when it does not divide); fold ``i`` tests on group ``i``.
    Deterministic; every speaker is a test speaker in exactly one fold.

    Args:
        dataset: The data, with a value of `column` on every row.
        k: The number of folds, from 2 to the number of speakers.
        column: The grouping column (``speaker``, or another grouping column).
    """
    speakers = speaker_ids(dataset, column)
    unique = sorted(set(speakers), key=speaker_sort_key)
    if not 2 <= k <= len(unique):
        raise ValueError(f"k={k} folds need 2 <= k <= number of speakers ({len(unique)})")
    groups = [list(group) for group in np.array_split(np.array(unique, dtype=object), k)]
    folds = []
    for group in groups:
        test = set(group)
        splits = {"train": _select_speakers(dataset, speakers, set(unique) - test),
                  "test": _select_speakers(dataset, speakers, test)}
        check_speaker_disjoint(splits, column)
        folds.append(datasets.DatasetDict(splits))
    return folds


# Splits by clip, for data without speaker ids: not speaker-independent (a voice can be in training and test).
def _shuffled_by_label(dataset: datasets.Dataset, seed: int) -> dict[str, list[int]]:
    """Row indices per label (labels sorted), each list shuffled by `seed`."""
    rows: dict[str, list[int]] = {}
    for index, label in enumerate(dataset["label"]):  # one column: no audio is decoded
        rows.setdefault(str(label), []).append(index)
    rng = np.random.default_rng(seed)
    return {label: [indices[i] for i in rng.permutation(len(indices))] for label, indices in sorted(rows.items())}


def split_by_clips(
    dataset: datasets.Dataset, test_fraction: float = 0.2, eval_fraction: float = 0.1, seed: int = 0
) -> datasets.DatasetDict:
    """
    Split by clip, stratified by label: `test_fraction` of each label's clips (rounded) for ``test``,
    `eval_fraction` for ``validation`` (left out when it rounds to none for every label), the rest (at least one
    per label) for ``train``; drawn with `seed`, the same for the same data and seed. Rows keep their order.
    Data too small to give ``test`` a clip raises `ValueError`.

    Args:
        dataset: The data, with a ``label`` column (the only one read).
        test_fraction: The share of each label's clips for ``test``, from 0 to 1.
        eval_fraction: The share of each label's clips for ``validation``, from 0 to 1.
        seed: The seed of the draw.

    Returns:
        A `DatasetDict` with ``train``, ``validation`` (where it has clips) and ``test``.
    """
    chosen: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for indices in _shuffled_by_label(dataset, seed).values():
        num_test = min(round(test_fraction * len(indices)), len(indices) - 1)
        num_eval = min(round(eval_fraction * len(indices)), len(indices) - 1 - num_test)
        chosen["test"] += indices[:num_test]
        chosen["validation"] += indices[num_test:num_test + num_eval]
        chosen["train"] += indices[num_test + num_eval:]
    if not chosen["test"]:
        raise ValueError(f"{len(dataset)} clips are too few to hold out {test_fraction:.0%} of a label's clips for "
                         "testing; add clips")
    return datasets.DatasetDict({name: dataset.select(sorted(indices)) for name, indices in chosen.items() if indices})


def clip_folds(dataset: datasets.Dataset, k: int, seed: int = 0) -> list[datasets.DatasetDict]:
    """
    ``k``-fold cross-validation by clip, stratified by label (each label's clips, shuffled by `seed`, dealt to
    the folds in turn): ``k`` ``DatasetDict(train, test)``; every clip is a test clip in exactly one fold.

    Args:
        dataset: The data, with a ``label`` column (the only one read).
        k: The number of folds, from 2 to the number of clips.
        seed: The seed of the shuffles.
    """
    if not 2 <= k <= len(dataset):
        raise ValueError(f"k={k} folds need 2 <= k <= number of clips ({len(dataset)})")
    fold_of: dict[int, int] = {}
    dealt = 0
    for indices in _shuffled_by_label(dataset, seed).values():
        for index in indices:
            fold_of[index] = dealt % k
            dealt += 1
    folds = []
    for fold in range(k):
        test = sorted(i for i, f in fold_of.items() if f == fold)
        train = sorted(i for i, f in fold_of.items() if f != fold)
        folds.append(datasets.DatasetDict({"train": dataset.select(train), "test": dataset.select(test)}))
    return folds


NO_SPEAKERS_WARNING = (
    "The data has no speaker ids, so the split CANNOT be speaker-independent: a voice can be in training and in "
    "test, which scores higher than new speakers will. Splitting by clip (stratified by label, seed %d). To split "
    "properly, name the speaker column (--speaker_column), or a session/recording column (--group_column)."
)


def split_unit(dataset, args: DataArguments, seed: int) -> str | None:
    """
    The column no two splits share: `--group_column`, else `speaker`; None (split by clip, with a warning) when no
    row has a speaker id. Some rows with and some without one is an error.

    Args:
        dataset: The data (a `datasets.Dataset`); only the ``speaker`` or `--group_column` column is read.
        args: The data arguments: `group_column`, and `test_speakers`/`eval_speakers` (an error without speaker ids).
        seed: The seed the warning names for the split by clip.

    Returns:
        The name of the column to split by, or None to split by clip.
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
    speaker (or `--group_column`): `--test_speakers`/`--eval_speakers` (`none`: no validation split), else
    `default_speaker_split`; without speaker ids, by clip (`split_by_clips`, `clip_folds`).

    Args:
        dataset: The whole data (a `datasets.Dataset` with a ``label`` column).
        args: The data arguments: `folds`, `group_column`, `test_speakers` and `eval_speakers`.
        seed: The seed of a split by clip and of `default_speaker_split`'s search (the training seed).

    Returns:
        A list of one `DatasetDict`, or of `--folds` of them.
    """
    unit = split_unit(dataset, args, seed)
    if args.folds > 1:
        return speaker_folds(dataset, args.folds, unit) if unit else clip_folds(dataset, args.folds, seed)
    if unit is None:
        return [split_by_clips(dataset, seed=seed)]
    test, validation = args.test_speakers, None if args.no_validation else args.eval_speakers
    if test is None:
        test, default_validation = default_speaker_split(dataset, unit, seed)
        validation = None if args.no_validation else validation or default_validation
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

    Args:
        dataset: The data (a `datasets.Dataset`), with a ``label`` column and at least 3 distinct values of `column`.
        column: The grouping column.
        seed: The first seed of `speakers_covering_labels`'s shuffles.

    Returns:
        `(test, validation)`: the speaker ids (values of `column`) of each, in natural order.
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

    Args:
        labels: Each clip's label.
        speakers: Each clip's speaker id, in the order of `labels`.
        seed: The first of the `SPLIT_SEARCH_SHUFFLES` shuffle seeds.

    Returns:
        `(test, validation)`: the speaker ids of each, in natural order.
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


def check_split_labels(labels_by_split: dict[str, Sequence[str]], labels: Sequence[str], min_clips: int = 5) -> None:
    """
    Every label of the label set, and of every split, has training clips: a label without any cannot be learned
    (the model would still be scored on it), so that is a `ValueError` naming the label and where its clips are.
    Fewer than `min_clips` training clips, or a validation or test split without clips of a label that training
    has (named, with the split), is only a warning: a small pilot corpus or a rare class can be meant, and the run
    still says so. Data with fewer than two labels is a `ValueError` too.

    Args:
        labels_by_split: Each split's clip labels, by split name (``train``, ``validation``, ``test``).
        labels: The label set (`--labels`, else the labels of the data).
        min_clips: The fewest training clips a label has without a warning (`--min_clips_per_label`).
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
