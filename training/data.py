# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
The training data's sources: corpus folders (``load_corpus``: a ``manifest.csv`` or corpus-style file names, see
``training.corpora``) and any ``datasets`` source (``load_source``: a Hub id, an audiofolder, a CSV/JSON table of
audio paths, a ``save_to_disk`` folder), with their columns standardized (the offline smoke corpus:
``training.smoke_corpus``).

Every loader returns a ``datasets.Dataset`` with the same columns:

* ``audio``: ``datasets.Audio(sampling_rate=16000, num_channels=1)``; an item decodes to a torchcodec
  ``AudioDecoder`` (``.get_all_samples()`` gives ``.data`` of shape ``[1, samples]`` and ``.sample_rate``;
  ``item["array"]`` / ``item["sampling_rate"]`` also work),
* ``label`` (str), ``speaker`` (str or None), ``transcript`` (str or None),
* any extra columns (``path`` for folder corpora, ``gender``, ``intensity`` ... where known).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import datasets
import pandas as pd

from training.arguments import DataArguments, parse_labels
from training.corpora import (
    CORPUS_PARSERS, MANIFEST_NAME, MAX_REPORTED_PROBLEMS, PathLike, audio_feature, audio_files, check_label_typos,
    clips_to_dataset, closest_label, corpus_of_names, label_subfolders, normalize_label, normalize_labels,
    parse_corpus_folder, read_manifest, report_name_disagreement, validate_clips,
)
from training.smoke_corpus import make_smoke_corpus
from training.splits import has_speaker_ids

logger = logging.getLogger("emosllm.data")

__all__ = ["AUDIO_PATH_COLUMNS", "DATASET_DESCRIPTION_NAMES", "FOLDER_ADVICE", "FOLDER_METADATA_NAMES", "SMOKE_DIR",
           "SPEAKER_COLUMNS", "TABLE_BUILDERS", "check_dataset_labels", "check_no_column_flags", "has_dataset_card",
           "is_saved_dataset", "load_corpus", "load_data", "load_hub_dataset", "load_source", "read_file_names",
           "source_kind", "standardize_columns", "table_files"]


def load_corpus(data_dir: PathLike, labels: Optional[list[str]] = None, check_audio: bool = True) -> datasets.Dataset:
    """Load an emotional-speech corpus folder as a validated ``datasets.Dataset``.

    If ``data_dir/manifest.csv`` exists it is read (columns ``path,label`` required, ``speaker``,
    ``transcript`` and any others optional and kept; paths relative to ``data_dir`` or absolute).
    Otherwise the corpus is recognised from its file names (RAVDESS, CREMA-D, TESS or EmoDB, any
    folder depth; only ``.wav``/``.flac`` files are considered). Any other folder (an ``audiofolder``
    with label subfolders, a CSV/JSON table of audio paths, a ``save_to_disk`` folder) is read by
    :func:`load_source` through ``datasets``; label subfolders (:func:`label_subfolders`) win over corpus-style
    file names, and a label column over the names' labels (a disagreement is logged with a count).

    Args:
        data_dir: the corpus folder.
        labels: if given, every row's label must be one of these.
        check_audio: check each file's audio header (`validate_clips`); False: the decoding checks it later.

    Returns:
        Columns ``audio``, ``label``, ``speaker``, ``transcript``, ``path`` and extras; rows in manifest
        order (by path for recognised corpora).

    Raises:
        ValueError: listing every bad row (line number and path) with what to do: missing column,
            missing file, unknown label, empty or unreadable audio, unrecognised file names.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"corpus folder {str(root)!r} does not exist; pass the folder that holds the audio")
    manifest = root / MANIFEST_NAME
    if not manifest.is_file() and source_kind(root, labels) != "corpus":
        return load_source(root, labels=labels, hub=False)
    clips = read_manifest(manifest) if manifest.is_file() else parse_corpus_folder(root, labels)
    labels = normalize_labels(labels)
    validate_clips(clips, labels, check_audio)
    if manifest.is_file():
        report_name_disagreement([clip.path for clip in clips], [clip.label for clip in clips],
                                 f"{manifest}", "manifest's label column")
    check_label_typos([clip.label for clip in clips], labels)
    return clips_to_dataset(clips)


def check_dataset_labels(dataset: datasets.Dataset, labels: Optional[Sequence[str]] = None) -> datasets.Dataset:
    """
    The `label` column normalized (`normalize_label`) and checked as `load_corpus` checks a folder's rows: every
    label in `labels` when given (an unknown one raises `ValueError` naming the closest known label), and no two
    labels alike (`check_label_typos`) without it. Reads one column; no audio is decoded.

    Args:
        dataset: A dataset with a `label` column of strings (e.g. from `standardize_columns`).
        labels: The label set; None: any labels, checked for typos only.

    Returns:
        The dataset with its labels normalized, columns `audio` and `label` first where a label changed (else the
        same dataset).
    """
    labels = normalize_labels(labels)
    values = [normalize_label(value) for value in dataset["label"]]
    empty = [i for i, value in enumerate(values) if value is None]
    if empty:
        raise ValueError(f"{len(empty)} row(s) have no label (first: row {empty[0]}); fill them in or remove them")
    if labels is not None:
        unknown = sorted(set(values) - set(labels))
        if unknown:
            hints = [f"{u!r} (did you mean {c!r}?)" if (c := closest_label(u, labels)) else repr(u) for u in unknown]
            raise ValueError(f"label(s) {', '.join(hints)} are not in the label set {labels}; fix those rows, or "
                             "extend labels")
    check_label_typos(values, labels)
    if values != list(dataset["label"]):
        dataset = dataset.remove_columns("label").add_column("label", values, feature=datasets.Value("string"))
        front = ["audio", "label"]
        dataset = dataset.select_columns(front + [c for c in dataset.column_names if c not in front])
    return dataset


def load_hub_dataset(
    name: str,
    split: str,
    audio_column: str,
    label_column: str,
    transcript_column: Optional[str] = None,
    speaker_column: Optional[str] = None,
) -> datasets.Dataset:
    """
    A Hub dataset or any local ``datasets`` folder or file, as :func:`load_source` reads it.

    Args:
        name: A Hub dataset id, or a local folder or file.
        split: The split to read (several joined with ``+``).
        audio_column: The column of audio, or of audio file paths.
        label_column: The column of labels (strings or a ``ClassLabel``).
        transcript_column: The column of transcripts, if any.
        speaker_column: The column of speaker ids; None: as :func:`standardize_columns` finds one.

    Returns:
        The dataset with :func:`load_corpus`'s columns.
    """
    return load_source(name, split, audio_column, label_column, transcript_column, speaker_column)


TABLE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}
# The metadata files `audiofolder` itself reads (a `file_name` column next to the audio): such a folder is a folder.
FOLDER_METADATA_NAMES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")
# Taken for the audio column when `audio_column` is the default "audio" and the data has none, if only one is there.
AUDIO_PATH_COLUMNS = ("path", "file_name", "filename", "file", "audio_path", "audio_file", "wav")
# Taken for the speaker column when none is named and the data has no `speaker` column, if only one is there.
SPEAKER_COLUMNS = ("speaker_id", "spk_id", "actor", "actor_id", "client_id")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
FOLDER_ADVICE = ("An audio folder takes its labels from subfolder names (happy/a.wav, sad/b.wav) or from a "
                 "metadata.csv with columns file_name,label[,speaker,transcript]; a table (CSV/JSON) needs a column of "
                 "audio paths (relative to the table's folder, or absolute) and a label column; name other columns "
                 "with --audio_column/--label_column/--speaker_column/--transcript_column")


def is_saved_dataset(folder: Path) -> bool:
    """
    A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (what ``load_from_disk`` reads).

    Args:
        folder: The local folder to look into.
    """
    return (folder / datasets.config.DATASETDICT_JSON_FILENAME).is_file() or (
        (folder / datasets.config.DATASET_STATE_JSON_FILENAME).is_file()
        and (folder / datasets.config.DATASET_INFO_FILENAME).is_file()
    )


# JSON files at the top of a dataset folder that describe it rather than hold its rows.
DATASET_DESCRIPTION_NAMES = ("dataset_infos.json", "dataset_info.json", "dataset_dict.json", "state.json")


def table_files(folder: Path) -> list[Path]:
    """
    The CSV/TSV/JSON(L) files at the top of a folder, leaving out audiofolder's and `datasets`' own files.

    Args:
        folder: The local folder whose top level is listed.

    Returns:
        The files' paths, sorted.
    """
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TABLE_BUILDERS
                  and p.name not in FOLDER_METADATA_NAMES + DATASET_DESCRIPTION_NAMES)


def has_dataset_card(folder: Path) -> bool:
    """
    A Hub dataset's README.md whose YAML header configures it (`configs:` / `dataset_info:`), as in a clone.

    Args:
        folder: The local folder whose README.md is read (none, or an unreadable one: False).
    """
    try:
        text = (folder / "README.md").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    header = text.split("\n---", 1)[0] if text.startswith("---") else ""
    return any(line.startswith(("configs:", "dataset_info:")) for line in header.splitlines())


def source_kind(path: Path, labels: Optional[Sequence[str]] = None) -> str:
    """
    How :func:`load_source` reads a local path, checked in this order: ``saved`` (a ``save_to_disk`` folder),
    ``corpus`` (a ``manifest.csv``), ``folder`` (audiofolder's ``metadata.*``, or a Hub dataset's clone with its
    README.md configs), ``table`` (a CSV/JSON file, or a folder with such files at its top), ``folder`` (audio in
    label subfolders, :func:`label_subfolders`, whose names are emotion words or `labels`: the layout wins over the
    file names), ``corpus`` (RAVDESS/CREMA-D/TESS/EmoDB file names), else ``folder`` (anything
    ``datasets.load_dataset`` reads from a folder: parquet files, ...).

    Args:
        path: An existing local file or folder.
        labels: The label set, if given: subfolders named after these labels are label subfolders too.

    Returns:
        ``"saved"``, ``"corpus"``, ``"folder"`` or ``"table"``.
    """
    if path.is_file():
        return "table"
    if is_saved_dataset(path):
        return "saved"
    if (path / MANIFEST_NAME).is_file():
        return "corpus"
    if any((path / name).is_file() for name in FOLDER_METADATA_NAMES) or has_dataset_card(path):
        return "folder"
    if table_files(path):
        return "table"
    files = audio_files(path)
    if label_subfolders(path, files, labels):
        return "folder"
    if any(parse(file.stem) for file in files for parse in CORPUS_PARSERS.values()):
        return "corpus"
    return "folder"


def load_source(
    source: PathLike,
    split: str = "train",
    audio_column: str = "audio",
    label_column: str = "label",
    transcript_column: Optional[str] = None,
    speaker_column: Optional[str] = None,
    labels: Optional[Sequence[str]] = None,
    hub: bool = True,
    check_audio: bool = True,
) -> datasets.Dataset:
    """Load any dataset a user has with ``datasets``' own readers, with the columns of :func:`load_corpus`.

    ``source`` is one of (see :func:`source_kind`):

    * a ``save_to_disk`` folder of a ``Dataset`` or a ``DatasetDict`` (``datasets.load_from_disk``; of a
      ``DatasetDict`` the ``split``, several joined with ``+`` as in ``train+test``; a single split is used
      whatever its name);
    * a corpus folder with a ``manifest.csv`` or RAVDESS/CREMA-D/TESS/EmoDB file names (:func:`load_corpus`);
    * a CSV/TSV/JSON(L) file, or a folder with such files (one per split, named after it): ``load_dataset("csv"
      | "json")``; its audio column holds paths, relative to the table's folder or absolute;
    * any other folder: ``datasets.load_dataset(folder)`` (an ``audiofolder`` with label subfolders or a
      ``metadata.csv``/``jsonl`` with ``file_name``, parquet files, ...);
    * else (``hub`` True) a Hub dataset id: ``datasets.load_dataset(source, split=split)``.

    The result: ``audio`` (16 kHz mono), ``label`` (str, normalized and checked by :func:`check_dataset_labels`),
    ``speaker`` and ``transcript`` (str or None), then the other columns. Without ``speaker_column`` a ``speaker``
    column is kept, or else one of :data:`SPEAKER_COLUMNS` is taken when only one is there (logged); without
    any, ``speaker`` is None on every row (train.py then splits by clip or ``--group_column``).

    Args:
        source: A local folder or file, or (``hub`` True) a Hub dataset id.
        split: The split to read, several joined with ``+``.
        audio_column: The column of audio or audio file paths (the default ``audio``, where absent: the one column of
            :data:`AUDIO_PATH_COLUMNS` there).
        label_column: The column of labels (strings or a ``ClassLabel``).
        transcript_column: The column of transcripts; None: a ``transcript`` column if any, else None on every row.
        speaker_column: The column of speaker ids; None: as above.
        labels: The label set every label must be in; None: the data's labels, checked for typos.
        hub: Whether a ``source`` that does not exist here is read as a Hub dataset id.
        check_audio: A corpus folder's audio headers are checked on loading (:func:`load_corpus`); False: by the
            decoding only, as for every other source.

    Raises:
        ValueError: naming the problem and what to do (no such folder, a missing column, a missing audio file, an
            unknown split, a Hub dataset that cannot be reached).
    """
    name = str(source)
    path = Path(source).expanduser()
    if path.exists():
        kind = source_kind(path, labels)
    elif hub and _HUB_ID.fullmatch(name):
        kind = "hub"
    else:
        raise ValueError(f"{name!r} does not exist: pass a folder or file that holds the data"
                         + (", or a Hub dataset id (user/name)" if hub else ""))
    if kind == "corpus":
        check_no_column_flags(path, audio_column, label_column, transcript_column, speaker_column)
        if split != "train":  # the default's name reads it all; another name would be dropped without a word
            raise ValueError(f"{name}: a corpus folder is one dataset without splits, so it has no split {split!r}; "
                             "leave --dataset_split out (--test_speakers and --eval_speakers split it)")
        return load_corpus(path, normalize_labels(labels), check_audio)
    base_dir = None if kind == "hub" else path.parent if path.is_file() else path
    try:
        if kind == "saved":
            dataset = _load_saved(path, split)
        elif kind == "table":
            dataset = _load_table(path, split)
        else:
            dataset = datasets.load_dataset(name if kind == "hub" else str(path), split=split)
    except (datasets.exceptions.DataFilesNotFoundError, datasets.data_files.EmptyDatasetError) as error:
        raise ValueError(f"{name}: no audio or data files found ({error}). {FOLDER_ADVICE}.") from None
    except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as error:
        if kind != "hub":
            raise
        raise ValueError(
            f"could not load the Hub dataset {name!r} ({type(error).__name__}: {str(error)[:300]}). Without the "
            "network it loads only from the HF datasets cache (set HF_DATASETS_OFFLINE=1); for data on this machine "
            "pass its folder or file."
        ) from error
    if isinstance(dataset, datasets.DatasetDict):  # load_dataset(split=...) returns one split; kept for safety
        dataset = _pick_splits(dataset, split, name)
    where = f"{name} ({split})" if kind != "table" else name
    dataset = standardize_columns(dataset, where, audio_column, label_column, transcript_column, speaker_column,
                                  base_dir)
    if kind == "table":
        dataset = read_file_names(dataset, where, f"label column {label_column!r}")
    elif kind == "folder" and not has_dataset_card(path):
        metadata = [n for n in FOLDER_METADATA_NAMES if (path / n).is_file()]
        dataset = read_file_names(dataset, where, f"{metadata[0]}'s label column" if metadata else "label subfolders")
    return check_dataset_labels(dataset, labels)


def check_no_column_flags(path: Path, audio_column: str, label_column: str, transcript_column: Optional[str],
                          speaker_column: Optional[str]) -> None:
    """
    Refuses column names given for a corpus folder, which is read by fixed columns (its ``manifest.csv``: path, label,
    speaker, transcript) or by its file names: the names would be ignored and other columns read without a word.

    Args:
        path: The corpus folder.
        audio_column, label_column, transcript_column, speaker_column: The column names asked for (defaults "audio",
            "label", None, None).

    Raises:
        ValueError: naming the flags and the two ways to have them read: the manifest file as a table, or its header.
    """
    given = [flag for flag, named in (("--audio_column", audio_column != "audio"),
                                      ("--label_column", label_column != "label"),
                                      ("--transcript_column", transcript_column is not None),
                                      ("--speaker_column", speaker_column is not None)) if named]
    if not given:
        return
    manifest = path / MANIFEST_NAME
    if manifest.is_file():
        raise ValueError(
            f"{path} is a corpus folder: its {MANIFEST_NAME} is read by the columns path, label, speaker and "
            f"transcript, so {', '.join(given)} would be ignored. To read other columns, pass the table itself "
            f"(--data_dir {manifest}), where the column flags apply; or rename its header's columns."
        )
    raise ValueError(f"{path} is a corpus folder read by its file names (RAVDESS/CREMA-D/TESS/EmoDB): it has no "
                     f"columns, so {', '.join(given)} would be ignored. Drop them, or describe the clips in a table "
                     f"(CSV with a path and a label column) and pass that.")


def read_file_names(dataset: datasets.Dataset, name: str, layout: str) -> datasets.Dataset:
    """
    A local dataset whose labels came from the user's `layout` (label subfolders, a label column), beside file names
    that follow a known corpus's naming: the layout's labels are kept and every file whose name says another label
    is counted (:func:`report_name_disagreement`). Where the data has no speaker ids and every file name follows the
    corpus's naming, speakers (and, where no clip has a transcript, the corpus's sentences and its other columns)
    come from the names, logged. Reads the audio column's paths; no audio is decoded.

    Args:
        dataset: A local dataset with :func:`load_corpus`'s columns, its ``audio`` column holding files.
        name: The source's name in the log's messages.
        layout: Where the labels came from, as the messages name it (e.g. ``"label subfolders"``).

    Returns:
        The dataset, with ``speaker`` (and ``transcript`` and the corpus's other columns, as above) from the file
        names where they apply, else unchanged.
    """
    sources = dataset.cast_column("audio", datasets.Audio(decode=False))["audio"]
    paths = [(source or {}).get("path") for source in sources]
    report_name_disagreement(paths, dataset["label"], name, layout)
    corpus, parsed = corpus_of_names([Path(str(path)).stem if path else "" for path in paths])
    if corpus is None or has_speaker_ids(dataset) is not False:
        return dataset
    fits = sum(p is not None for p in parsed)
    if fits < len(parsed):
        logger.info("%s: no speaker ids, and only %d of %d file names follow %s's naming, so speakers are not read "
                    "from them; give a speaker column for a speaker-independent split.", name, fits, len(parsed),
                    corpus)
        return dataset
    columns = {"speaker": [p[1] for p in parsed]}
    if all(t is None for t in dataset["transcript"]):
        columns["transcript"] = [p[2] for p in parsed]
    for extra in parsed[0][3]:
        if extra not in dataset.column_names:
            columns[extra] = [p[3].get(extra) for p in parsed]
    logger.info("%s: labels from the %s; speakers%s from the %s file names, which every file follows.", name, layout,
                f" and {', '.join(c for c in columns if c != 'speaker')}" if len(columns) > 1 else "", corpus)
    for column, values in columns.items():
        if column in dataset.column_names:
            dataset = dataset.remove_columns(column)
        feature = datasets.Value("string") if column in ("speaker", "transcript") else None
        dataset = dataset.add_column(column, values, feature=feature)
    front = ["audio", "label", "speaker", "transcript"]
    return dataset.select_columns(front + [c for c in dataset.column_names if c not in front])


def _pick_splits(splits: datasets.DatasetDict, split: str, name: str) -> datasets.Dataset:
    """`split` of a DatasetDict (several joined with '+'); a DatasetDict of one split gives it for the default."""
    wanted = [part.strip() for part in split.split("+") if part.strip()]
    if wanted == ["train"] and "train" not in splits and len(splits) == 1:
        (only,) = splits
        logger.info("%s: no 'train' split; using its only split %r.", name, only)
        return splits[only]
    absent = [part for part in wanted if part not in splits]
    if absent or not wanted:
        raise ValueError(f"{name}: no split(s) {absent or [split]}; it has {list(splits)}: pass --dataset_split "
                         f"with one of them (several joined with '+', e.g. {'+'.join(list(splits)[:2])!r})")
    parts = [splits[part] for part in wanted]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _load_saved(folder: Path, split: str) -> datasets.Dataset:
    """A ``save_to_disk`` folder through ``datasets.load_from_disk``: the Dataset, or the DatasetDict's split."""
    loaded = datasets.load_from_disk(str(folder))
    if isinstance(loaded, datasets.DatasetDict):
        return _pick_splits(loaded, split, str(folder))
    if split not in ("train", loaded.split and str(loaded.split)):  # one dataset: a split named (not the default)
        saved = f"saved from its split {str(loaded.split)!r}" if loaded.split else "saved without splits"
        raise ValueError(f"{folder}: one dataset ({saved}), so it has no split {split!r}; leave --dataset_split out "
                         f"to read its {len(loaded)} rows")
    return loaded


def _load_table(path: Path, split: str) -> datasets.Dataset:
    """
    A CSV/TSV/JSON(L) file, or a folder of them (one per split, the file named after the split), through
    ``load_dataset("csv" | "json", data_files=...)``. CSV cells are read as text (speaker ``01`` stays ``01``;
    an empty cell is None), as :func:`read_manifest` reads them.
    """
    files = [path] if path.is_file() else table_files(path)
    builders = {TABLE_BUILDERS.get(file.suffix.lower()) for file in files}
    if None in builders:
        raise ValueError(f"{path}: not a table datasets reads here; use a .csv, .tsv, .json or .jsonl file")
    if len(builders) > 1:
        raise ValueError(f"{path}: holds tables of several formats ({[f.name for f in files]}); keep one format, "
                         "or pass the file to use")
    builder = builders.pop()
    if len(files) == 1:
        if split not in ("train", files[0].stem):  # a split named (not the default) that the one table is not
            raise ValueError(f"{path}: one table ({files[0].name}) is the whole data, so it has no split {split!r}; "
                             "leave --dataset_split out, or keep one table per split, each named after it")
        data_files, split = {"train": str(files[0])}, "train"  # one table is the whole data, whatever its name
    else:
        data_files = {file.stem: str(file) for file in files}
        absent = [part for part in split.split("+") if part.strip() not in data_files]
        if absent:
            raise ValueError(f"{path}: no table for split(s) {absent} (tables: {[f.name for f in files]}); pass "
                             "--dataset_split with one of their names, or pass the one file to use")
    kwargs: dict[str, Any] = {}
    if builder == "csv":
        sep = "\t" if files[0].suffix.lower() == ".tsv" else ","
        header = pd.read_csv(files[0], sep=sep, nrows=0).columns
        kwargs = {"sep": sep, "keep_default_na": False, "na_values": [""],
                  "features": datasets.Features({str(column): datasets.Value("string") for column in header})}
    return datasets.load_dataset(builder, data_files=data_files, split=split, **kwargs)


def _resolve_audio_paths(dataset: datasets.Dataset, column: str, base_dir: Optional[Path], name: str) -> list[str]:
    """The audio column's paths made absolute (relative ones against `base_dir`); every file must exist."""
    resolved, missing = [], []
    for index, value in enumerate(dataset[column]):  # one text column: no audio is read
        text = "" if value is None else str(value).strip()
        if "://" in text:  # a URL: datasets' Audio feature reads it
            resolved.append(text)
            continue
        file = Path(text).expanduser()
        if text and not file.is_absolute() and base_dir is not None:
            file = base_dir / file
        if not text or not file.is_file():
            missing.append(f"row {index}: {'empty path' if not text else f'{text!r} (looked for {str(file)!r})'}")
        resolved.append(str(file.resolve()))
    if missing:
        shown = "\n  ".join(missing[:MAX_REPORTED_PROBLEMS])
        extra = len(missing) - MAX_REPORTED_PROBLEMS
        more = f"\n  ... and {extra} more" if extra > 0 else ""
        raise ValueError(f"{name}: {len(missing)} audio file(s) of column {column!r} not found:\n  {shown}{more}\n"
                         "Paths are relative to the table's folder, or absolute: fix them or remove those rows.")
    return resolved


def standardize_columns(
    dataset: datasets.Dataset,
    name: str,
    audio_column: str = "audio",
    label_column: str = "label",
    transcript_column: Optional[str] = None,
    speaker_column: Optional[str] = None,
    base_dir: Optional[Path] = None,
) -> datasets.Dataset:
    """
    A loaded dataset with :func:`load_corpus`'s columns: the named columns renamed to ``audio``, ``label``,
    ``speaker``, ``transcript``; an audio column of paths resolved (against `base_dir`) and checked; a ``ClassLabel``
    turned into its names; ``speaker``/``transcript`` added as None where absent; audio cast to 16 kHz mono.

    Args:
        dataset: The loaded dataset, its columns as the source names them.
        name: The source's name in messages and errors.
        audio_column: The column of audio or audio file paths (the default ``audio``, where absent: the one column of
            :data:`AUDIO_PATH_COLUMNS` there).
        label_column: The column of labels (strings or a ``ClassLabel``).
        transcript_column: The column renamed to ``transcript``; None: a ``transcript`` column is kept as it is.
        speaker_column: The column renamed to ``speaker``; None: a ``speaker`` column, else the one column of
            :data:`SPEAKER_COLUMNS` there (logged), else None on every row.
        base_dir: The folder relative audio paths are resolved against (a table's folder); None: the working folder.

    Returns:
        Columns ``audio``, ``label``, ``speaker``, ``transcript`` first, then the others.
    """
    columns = dataset.column_names
    if audio_column not in columns and audio_column == "audio":
        found = [column for column in AUDIO_PATH_COLUMNS if column in columns]
        if len(found) == 1:
            logger.info("%s: no 'audio' column; reading the audio files named in %r.", name, found[0])
            audio_column = found[0]
    if speaker_column is None and "speaker" not in columns:
        found = [column for column in SPEAKER_COLUMNS if column in columns]
        if len(found) == 1:
            logger.info("%s: taking column %r for the speaker ids.", name, found[0])
            speaker_column = found[0]
    renames = {audio_column: "audio", label_column: "label"}
    if transcript_column is not None:
        renames[transcript_column] = "transcript"
    if speaker_column is not None:
        renames[speaker_column] = "speaker"
    absent = [column for column in renames if column not in columns]
    if absent:
        raise ValueError(f"{name}: no column(s) {absent}; available: {columns}. {FOLDER_ADVICE}.")
    clashes = [target for source, target in renames.items() if target in columns and target != source]
    if clashes:
        raise ValueError(f"{name}: column(s) {clashes} already exist but are not the ones named; "
                         f"pass them as the matching *_column argument or remove them first")
    audio = dataset.features[audio_column]
    if isinstance(audio, datasets.Value) and audio.dtype in ("string", "large_string"):
        paths = _resolve_audio_paths(dataset, audio_column, base_dir, name)
        dataset = dataset.remove_columns(audio_column).add_column(audio_column, paths)
    elif not isinstance(audio, datasets.Audio):
        raise ValueError(f"{name}: column {audio_column!r} is {audio}, neither audio nor file paths; name the audio "
                         "column with --audio_column")
    label_feature = dataset.features[label_column]
    if isinstance(label_feature, datasets.ClassLabel):
        # Reading one column never decodes audio (unlike Dataset.map over whole rows).
        names = [label_feature.int2str(int(i)) for i in dataset[label_column]]
        dataset = dataset.remove_columns(label_column).add_column(label_column, names)
    dataset = dataset.rename_columns(renames)
    for column in ("speaker", "transcript"):
        if column not in dataset.column_names:
            dataset = dataset.add_column(column, [None] * len(dataset), feature=datasets.Value("string"))
    text = datasets.Value("string")
    dataset = dataset.cast(datasets.Features({**dataset.features, "audio": audio_feature(), "label": text,
                                              "speaker": text, "transcript": text}))
    front = ["audio", "label", "speaker", "transcript"]
    return dataset.select_columns(front + [c for c in dataset.column_names if c not in front])


SMOKE_DIR = Path(__file__).resolve().parent.parent / "data" / "smoke"


def load_data(args: DataArguments):
    """
    The corpus (`load_source`: a corpus folder, audiofolder, CSV/JSON table, save_to_disk folder or,
    for --dataset_name, a Hub id), its labels normalized (strip, lower case) and checked against `--labels` (or for
    typos).

    Args:
        args: The data flags: `data_dir` or `dataset_name` (not both; neither: the smoke corpus, made in
            :data:`SMOKE_DIR` on first use), `dataset_split`, the `*_column` names and `labels`.

    Returns:
        The whole corpus, not split yet, as a ``datasets.Dataset`` with :func:`load_corpus`'s columns.
    """
    labels = parse_labels(args.labels)
    if args.dataset_name and args.data_dir:
        raise ValueError("Give the data once: --data_dir (a local folder or file) or --dataset_name (a Hub id or "
                         "local source), not both.")
    if not args.dataset_name and not args.data_dir:
        if args.dataset_split != "train":
            raise ValueError(f"--dataset_split {args.dataset_split!r} names a split of --data_dir or --dataset_name; "
                             "without either, train.py reads its smoke corpus, which has none: give the data")
        return load_corpus(make_smoke_corpus(SMOKE_DIR), labels)
    return load_source(
        args.dataset_name or args.data_dir, args.dataset_split, args.audio_column, args.label_column,
        args.transcript_column, args.speaker_column, labels, hub=bool(args.dataset_name),
        check_audio=not args.skip_bad_clips,  # --skip_bad_clips: the decoding lists and leaves out bad audio
    )
