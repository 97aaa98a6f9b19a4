"""Data utilities for EmoSLLM: corpora, speaker-independent splits, SER metrics and an offline smoke corpus.

Every loader returns a ``datasets.Dataset`` with the same columns:

* ``audio``: ``datasets.Audio(sampling_rate=16000, num_channels=1)``; an item decodes to a torchcodec
  ``AudioDecoder`` (``.get_all_samples()`` gives ``.data`` of shape ``[1, samples]`` and ``.sample_rate``;
  ``item["array"]`` / ``item["sampling_rate"]`` also work),
* ``label`` (str), ``speaker`` (str or None), ``transcript`` (str or None),
* any extra columns (``path`` for folder corpora, ``gender``, ``intensity`` ... where known).

Speaker ids read from file names carry the corpus name (``ravdess_01``, ``cremad_1001``, ``tess_OAF``,
``emodb_03``) so that two corpora never share a speaker id; a manifest's speaker ids are kept as written.
"""

from __future__ import annotations

import csv
import ctypes
import difflib
import json
import math
import numbers
import os
import re
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import datasets
import numpy as np
import pandas as pd
import soundfile as sf

SAMPLING_RATE = 16_000
MANIFEST_NAME = "manifest.csv"
REQUIRED_MANIFEST_COLUMNS = ("path", "label")
AUDIO_EXTENSIONS = (".wav", ".flac")
MAX_REPORTED_PROBLEMS = 20
# Two labels of one corpus this alike (difflib's ratio: 'hapy'/'happy' 0.89, 'bored'/'board' 0.8; real pairs such as
# 'sad'/'mad' 0.67 or 'fear'/'fearful' 0.73 stay below) are taken for a typo.
LABEL_TYPO_SIMILARITY = 0.8

PathLike = Union[str, os.PathLike]
SpeakerSpec = Union[str, int, Sequence[Union[str, int]], None]


def audio_feature() -> datasets.Audio:
    """The audio feature every loader casts to: 16 kHz, down-mixed to mono by the decoder."""
    return datasets.Audio(sampling_rate=SAMPLING_RATE, num_channels=1)


# --------------------------------------------------------------------------------------------------
# Corpus loading
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipInfo:
    """One audio file read from a corpus folder, before validation."""

    where: str  # how a problem report names the row, e.g. "line 7 (path 'a/b.wav')"
    path: str  # as written in the manifest / relative to the corpus folder
    file: Path  # location on disk
    label: Optional[str]
    speaker: Optional[str]
    transcript: Optional[str]
    extras: dict[str, Any]


def load_corpus(data_dir: PathLike, labels: Optional[list[str]] = None) -> datasets.Dataset:
    """Load an emotional-speech corpus folder as a validated ``datasets.Dataset``.

    If ``data_dir/manifest.csv`` exists it is read (columns ``path,label`` required, ``speaker``,
    ``transcript`` and any others optional and kept; paths relative to ``data_dir`` or absolute).
    Otherwise the corpus is recognised from its file names (RAVDESS, CREMA-D, TESS or EmoDB, any
    folder depth; only ``.wav``/``.flac`` files are considered).

    Args:
        data_dir: the corpus folder.
        labels: if given, every row's label must be one of these.

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
    clips = read_manifest(manifest) if manifest.is_file() else parse_corpus_folder(root)
    labels = normalize_labels(labels)
    validate_clips(clips, labels)
    check_label_typos([clip.label for clip in clips], labels)
    return clips_to_dataset(clips)


def normalize_label(label: Optional[str]) -> Optional[str]:
    """A label as every loader keeps it: stripped and lower-cased (`' Happy'` and `'happy'` are one class)."""
    return None if label is None else str(label).strip().lower() or None


def normalize_labels(labels: Optional[Sequence[str]]) -> Optional[list[str]]:
    """A label set (e.g. `--labels`) normalized like the data's labels, order kept; duplicates or empty names raise."""
    if labels is None:
        return None
    normalized = [normalize_label(label) for label in labels]
    if None in normalized:
        raise ValueError(f"the label set {list(labels)} has an empty name; write labels as 'happy,sad,...'")
    repeated = sorted({label for label in normalized if normalized.count(label) > 1})
    if repeated:
        raise ValueError(f"the label set {list(labels)} names {repeated} more than once; name each label once")
    return normalized


def closest_label(label: str, known: Sequence[str]) -> Optional[str]:
    """The known label most like `label` (difflib), or None when none is alike."""
    matches = difflib.get_close_matches(label, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def check_label_typos(labels: Sequence[Optional[str]], allowed: Optional[Sequence[str]] = None) -> None:
    """
    Without a label set (`allowed`), two labels of the data that look alike (`LABEL_TYPO_SIMILARITY`) are taken for
    a typo and raise `ValueError` naming both and how often each occurs: a misspelt label would otherwise become a
    class of its own. A label set that lists both accepts them (and `load_corpus` checks every row against it).
    """
    counts: dict[str, int] = {}
    for label in labels:
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    if allowed is not None:
        return
    names = sorted(counts, key=lambda label: (-counts[label], label))
    for i, common in enumerate(names):
        for rare in names[i + 1:]:
            if difflib.SequenceMatcher(None, rare, common).ratio() >= LABEL_TYPO_SIMILARITY:
                raise ValueError(
                    f"labels {rare!r} ({counts[rare]} clip(s)) and {common!r} ({counts[common]} clip(s)) look like one "
                    f"label misspelt: did you mean {common!r}? Fix the rows, or if both are real classes list them "
                    f"with --labels (labels=[...])"
                )


def read_manifest(manifest: Path) -> list[ClipInfo]:
    """Read ``manifest.csv`` into clips; line numbers count the header as line 1."""
    text_columns = {"path": str, "label": str, "speaker": str, "transcript": str}
    try:
        # Blank lines are kept (and skipped below) so that row index + 2 is the line number.
        frame = pd.read_csv(manifest, dtype=text_columns, keep_default_na=False, na_values=[""],
                            skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"{manifest}: cannot parse as CSV ({error}); write a comma-separated file with a "
                         f"header line 'path,label[,speaker,transcript,...]'") from error
    missing = [column for column in REQUIRED_MANIFEST_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{manifest}: missing required column(s) {missing} (found {list(frame.columns)}); "
                         f"add them to the header line")
    extra_columns = [c for c in frame.columns if c not in ("path", "label", "speaker", "transcript")]
    root = manifest.parent
    clips = []
    for index, row in enumerate(frame.to_dict("records")):
        if all(_plain(value) is None for value in row.values()):
            continue
        path = _cell(row.get("path"))
        clips.append(ClipInfo(
            where=f"{manifest.name} line {index + 2} (path {path!r})",
            path=path or "",
            file=(root / path) if path else root,
            label=normalize_label(_cell(row.get("label"))),
            speaker=_cell(row.get("speaker")),
            transcript=_cell(row.get("transcript")),
            extras={column: _plain(row[column]) for column in extra_columns},
        ))
    return clips


def _cell(value: Any) -> Optional[str]:
    """A text cell as a stripped string, or None when empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _plain(value: Any) -> Any:
    """Turn pandas/numpy scalars (and NaN) into plain Python values for ``datasets``."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# Corpus file-name parsers. Each returns (label, speaker, transcript, extras) or None if the name does not fit.

RAVDESS_EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad",
                    "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised"}
RAVDESS_STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
RAVDESS_INTENSITIES = {"01": "normal", "02": "strong"}
# Modality 03 (audio-only), vocal channel 01 (speech): the song files (03-02-...) are not speech-emotion data.
RAVDESS_PATTERN = re.compile(r"03-01-(0[1-8])-(0[12])-(0[12])-(0[12])-(\d{2})")

CREMAD_EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
CREMAD_SENTENCES = {
    "IEO": "It's eleven o'clock", "TIE": "That is exactly what happened", "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about", "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold", "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment", "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before", "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}
CREMAD_INTENSITIES = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
CREMAD_PATTERN = re.compile(r"(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})")

TESS_EMOTIONS = {"angry": "angry", "disgust": "disgust", "fear": "fearful", "happy": "happy",
                 "neutral": "neutral", "ps": "surprised", "sad": "sad"}
TESS_PATTERN = re.compile(r"(OAF|YAF)_([A-Za-z]+)_([A-Za-z]+)")

EMODB_EMOTIONS = {"W": "angry", "L": "bored", "E": "disgust", "A": "fearful", "F": "happy", "T": "sad", "N": "neutral"}
# Burkhardt et al. (2005), Interspeech; spelling as in the corpus documentation (audformat emodb).
EMODB_SENTENCES = {
    "a01": "Der Lappen liegt auf dem Eisschrank.",
    "a02": "Das will sie am Mittwoch abgeben.",
    "a04": "Heute Abend könnte ich es ihm sagen.",
    "a05": "Das schwarze Stück Papier befindet sich da oben neben dem Holzstück.",
    "a07": "In sieben Stunden wird es soweit sein.",
    "b01": "Was sind denn das für Tüten, die da unter dem Tisch stehen?",
    "b02": "Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.",
    "b03": "An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.",
    "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
    "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
}
EMODB_GENDERS = {"03": "male", "08": "female", "09": "female", "10": "male", "11": "male",
                 "12": "male", "13": "female", "14": "female", "15": "male", "16": "female"}
EMODB_PATTERN = re.compile(r"(\d{2})([ab]\d{2})([A-Z])([a-z])")

ParsedName = tuple[str, str, Optional[str], dict[str, Any]]


def parse_ravdess_name(stem: str) -> Optional[ParsedName]:
    """``03-01-EE-II-SS-RR-AA``: emotion, intensity, statement, repetition, actor (odd male, even female)."""
    match = RAVDESS_PATTERN.fullmatch(stem)
    if match is None:
        return None
    emotion, intensity, statement, repetition, actor = match.groups()
    extras = {"gender": "male" if int(actor) % 2 else "female",
              "intensity": RAVDESS_INTENSITIES[intensity], "repetition": int(repetition)}
    return RAVDESS_EMOTIONS[emotion], f"ravdess_{actor}", RAVDESS_STATEMENTS[statement], extras


def parse_cremad_name(stem: str) -> Optional[ParsedName]:
    """``1001_DFA_ANG_XX``: actor, sentence code, emotion code, intensity code."""
    match = CREMAD_PATTERN.fullmatch(stem)
    if match is None:
        return None
    actor, sentence, emotion, intensity = match.groups()
    if sentence not in CREMAD_SENTENCES or emotion not in CREMAD_EMOTIONS or intensity not in CREMAD_INTENSITIES:
        return None
    return (CREMAD_EMOTIONS[emotion], f"cremad_{actor}", CREMAD_SENTENCES[sentence],
            {"intensity": CREMAD_INTENSITIES[intensity]})


def parse_tess_name(stem: str) -> Optional[ParsedName]:
    """``OAF_back_angry``: speaker (OAF older / YAF younger female), target word, emotion."""
    match = TESS_PATTERN.fullmatch(stem)
    if match is None or match.group(3).lower() not in TESS_EMOTIONS:
        return None
    speaker, word, emotion = match.groups()
    return TESS_EMOTIONS[emotion.lower()], f"tess_{speaker}", f"Say the word {word.lower()}", {"gender": "female"}


def parse_emodb_name(stem: str) -> Optional[ParsedName]:
    """``03a01Fa``: speaker, text code, emotion letter (German initial), version letter."""
    match = EMODB_PATTERN.fullmatch(stem)
    if match is None:
        return None
    speaker, text, emotion, _version = match.groups()
    if text not in EMODB_SENTENCES or emotion not in EMODB_EMOTIONS or speaker not in EMODB_GENDERS:
        return None
    return EMODB_EMOTIONS[emotion], f"emodb_{speaker}", EMODB_SENTENCES[text], {"gender": EMODB_GENDERS[speaker]}


CORPUS_PARSERS: dict[str, Callable[[str], Optional[ParsedName]]] = {
    "RAVDESS": parse_ravdess_name,
    "CREMA-D": parse_cremad_name,
    "TESS": parse_tess_name,
    "EmoDB": parse_emodb_name,
}


def parse_corpus_folder(root: Path) -> list[ClipInfo]:
    """Recognise the corpus of a folder without manifest by its file names; every audio file must fit."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise ValueError(f"{root}: no {MANIFEST_NAME} and no {'/'.join(AUDIO_EXTENSIONS)} files; "
                         f"write a {MANIFEST_NAME} with columns path,label[,speaker,transcript]")
    matches = {name: sum(parser(f.stem) is not None for f in files) for name, parser in CORPUS_PARSERS.items()}
    corpus = max(matches, key=matches.get)
    parser = CORPUS_PARSERS[corpus]
    misfits = [f for f in files if parser(f.stem) is None]
    if matches[corpus] == 0:
        raise ValueError(f"{root}: no {MANIFEST_NAME}, and the file names (e.g. {files[0].name!r}) follow none of "
                         f"the known corpora {list(CORPUS_PARSERS)}; write a {MANIFEST_NAME} with columns "
                         f"path,label[,speaker,transcript]")
    if misfits:
        shown = ", ".join(repr(str(f.relative_to(root))) for f in misfits[:MAX_REPORTED_PROBLEMS])
        raise ValueError(f"{root}: looks like {corpus} ({matches[corpus]} of {len(files)} files fit its naming), but "
                         f"{len(misfits)} file(s) do not: {shown}; remove them or write a {MANIFEST_NAME}")
    clips = []
    for file in files:
        label, speaker, transcript, extras = parser(file.stem)
        relative = file.relative_to(root).as_posix()
        clips.append(ClipInfo(where=f"file {relative!r}", path=relative, file=file, label=label,
                              speaker=speaker, transcript=transcript, extras=extras))
    return clips


def validate_clips(clips: list[ClipInfo], labels: Optional[list[str]]) -> None:
    """Check every row; raise one ValueError listing all problems (at most ``MAX_REPORTED_PROBLEMS``)."""
    if not clips:
        raise ValueError("the corpus has no rows; add clips to the manifest")
    problems = [problem for clip in clips if (problem := clip_problem(clip, labels)) is not None]
    problems += duplicate_rows(clips)
    if problems:
        shown = "\n  ".join(problems[:MAX_REPORTED_PROBLEMS])
        more = len(problems) - MAX_REPORTED_PROBLEMS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise ValueError(f"{len(problems)} bad row(s) in the corpus:\n  {shown}{tail}")


def duplicate_rows(clips: list[ClipInfo]) -> list[str]:
    """
    Rows that name a file an earlier row names too: a duplicate row counts its clip twice, and one file under two
    speakers puts the same recording into two splits (training audio leaking into the test set).
    """
    first: dict[str, ClipInfo] = {}
    problems = []
    for clip in clips:
        if not clip.path:
            continue
        key = os.path.normcase(os.path.abspath(clip.file))
        if key not in first:
            first[key] = clip
            continue
        earlier = first[key]
        if earlier.speaker != clip.speaker:
            problems.append(f"{clip.where}: the same file as {earlier.where}, which gives speaker {earlier.speaker!r} "
                            f"where this row gives {clip.speaker!r}; a recording has one speaker (and one split): "
                            f"fix the speaker or remove the duplicate row")
        else:
            problems.append(f"{clip.where}: the same file as {earlier.where} (a duplicate row); remove one of them")
    return problems


def clip_problem(clip: ClipInfo, labels: Optional[list[str]]) -> Optional[str]:
    """What is wrong with one row, as a message that says what to do, or None."""
    if not clip.path:
        return f"{clip.where}: empty path; fill it in or remove the row"
    if clip.label is None:
        return f"{clip.where}: empty label; fill it in or remove the row"
    if labels is not None and clip.label not in labels:
        closest = closest_label(clip.label, labels)
        hint = f"did you mean {closest!r}? " if closest else ""
        return (f"{clip.where}: unknown label {clip.label!r} (expected one of {list(labels)}); "
                f"{hint}fix or remove the row, or extend labels")
    if not clip.file.is_file():
        return (f"{clip.where}: file not found at {str(clip.file)!r}; fix the path (relative to the corpus "
                f"folder, or absolute) or remove the row")
    return audio_problem(clip)


def audio_problem(clip: ClipInfo) -> Optional[str]:
    """Cheap header check: soundfile (WAV/FLAC/OGG/MP3), then torchcodec for formats libsndfile lacks."""
    try:
        frames = sf.info(str(clip.file)).frames
    except sf.SoundFileError:
        frames = _torchcodec_frames(clip.file)
        if frames is None:
            return (f"{clip.where}: unreadable audio at {str(clip.file)!r}; re-encode it (16-bit WAV or FLAC) "
                    f"or remove the row")
    if frames == 0:
        return f"{clip.where}: empty audio (0 samples) at {str(clip.file)!r}; replace the file or remove the row"
    return None


def _torchcodec_frames(file: Path) -> Optional[int]:
    """Samples announced by FFmpeg's header (-1 when unknown), or None when FFmpeg cannot open the file."""
    try:
        from torchcodec.decoders import AudioDecoder

        metadata = AudioDecoder(str(file)).metadata
    except Exception:  # torchcodec raises RuntimeError/ValueError subclasses that vary by version
        return None
    if metadata.duration_seconds_from_header is None or metadata.sample_rate is None:
        return -1
    return round(metadata.duration_seconds_from_header * metadata.sample_rate)


def clips_to_dataset(clips: list[ClipInfo]) -> datasets.Dataset:
    """Build the Dataset (audio as absolute paths, then cast to the 16 kHz Audio feature)."""
    columns: dict[str, list[Any]] = {
        "audio": [str(clip.file.resolve()) for clip in clips],
        "label": [clip.label for clip in clips],
        "speaker": [clip.speaker for clip in clips],
        "transcript": [clip.transcript for clip in clips],
        "path": [clip.path for clip in clips],
    }
    for name in clips[0].extras:
        columns[name] = [clip.extras[name] for clip in clips]
    text = datasets.Value("string")
    dataset = datasets.Dataset.from_dict(columns)
    return dataset.cast(datasets.Features({**dataset.features, "audio": audio_feature(), "label": text,
                                          "speaker": text, "transcript": text, "path": text}))


def check_dataset_labels(dataset: datasets.Dataset, labels: Optional[Sequence[str]] = None) -> datasets.Dataset:
    """
    The `label` column normalized (`normalize_label`) and checked as `load_corpus` checks a folder's rows: every
    label in `labels` when given (an unknown one raises `ValueError` naming the closest known label), and no two
    labels alike (`check_label_typos`) without it. Reads one column; no audio is decoded.
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
    """Load a Hub dataset (or a local dataset folder) with ``datasets.load_dataset`` and rename its columns.

    The result has the same columns as :func:`load_corpus`: ``audio`` (16 kHz mono), ``label`` (str; a
    ``ClassLabel`` is turned into its names), ``speaker`` and ``transcript`` (a dataset column already
    called so is kept when no other is named; otherwise None), plus the dataset's other columns.
    """
    dataset = datasets.load_dataset(name, split=split)
    renames = {audio_column: "audio", label_column: "label"}
    if transcript_column is not None:
        renames[transcript_column] = "transcript"
    if speaker_column is not None:
        renames[speaker_column] = "speaker"
    absent = [column for column in renames if column not in dataset.column_names]
    if absent:
        raise ValueError(f"{name} ({split}): no column(s) {absent}; available: {dataset.column_names}")
    clashes = [target for source, target in renames.items() if target in dataset.column_names and target != source]
    if clashes:
        raise ValueError(f"{name} ({split}): column(s) {clashes} already exist but are not the ones named; "
                         f"pass them as the matching *_column argument or remove them first")
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


# --------------------------------------------------------------------------------------------------
# Speaker-independent splits
# --------------------------------------------------------------------------------------------------

_TRAILING_NUMBER = re.compile(r"(\d+)\D*$")
_NUMBER_OR_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def speaker_ids(dataset: datasets.Dataset) -> list[str]:
    """The speaker column as strings; raises if any row has no speaker (splits would be unverifiable)."""
    if "speaker" not in dataset.column_names:
        raise ValueError("the dataset has no 'speaker' column; add one (e.g. to manifest.csv)")
    speakers = list(dataset["speaker"])  # reads one column; audio is not decoded
    missing = [i for i, s in enumerate(speakers) if s is None or str(s) == ""]
    if missing:
        raise ValueError(f"{len(missing)} row(s) have no speaker (first: row {missing[0]}); speaker-independent "
                         f"splits need a speaker id on every row: add them to the manifest")
    return [str(s) for s in speakers]


def speaker_sort_key(speaker: str) -> tuple[str, int, str]:
    """Natural order: prefix, then trailing number, so ``ravdess_2`` comes before ``ravdess_10``."""
    match = _TRAILING_NUMBER.search(speaker)
    if match is None:
        return speaker, -1, speaker
    return speaker[: match.start()], int(match.group(1)), speaker


def resolve_speakers(spec: SpeakerSpec, known: Sequence[str]) -> set[str]:
    """Turn a speaker specification into speaker ids present in the data.

    Rule: ``spec`` is a comma-separated string, an int, or a sequence of these. Each item that equals a
    known id selects that id. Otherwise an item ``N`` or a range ``N-M`` (decimal numbers) selects every
    known id whose *last run of digits* has an integer value in ``[N, M]``: ``17`` or ``"17-20"`` match
    ``ravdess_17`` and ``Actor_17``; ``3`` matches ``emodb_03``. Any item that selects nothing is an error.
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


def check_speaker_disjoint(splits: Mapping[str, datasets.Dataset]) -> None:
    """Raise ValueError if a speaker appears in two splits (or a row has no speaker)."""
    owner: dict[str, str] = {}
    for split_name, dataset in splits.items():
        for speaker in sorted(set(speaker_ids(dataset)), key=speaker_sort_key):
            if speaker in owner and owner[speaker] != split_name:
                raise ValueError(f"speaker {speaker!r} is in both {owner[speaker]!r} and {split_name!r}; "
                                 f"each speaker must be in exactly one split")
            owner[speaker] = split_name


def _select_speakers(dataset: datasets.Dataset, speakers: list[str], chosen: set[str]) -> datasets.Dataset:
    """Rows whose speaker is in ``chosen`` (by index, so no audio is decoded)."""
    return dataset.select([i for i, s in enumerate(speakers) if s in chosen])


def split_by_speakers(
    dataset: datasets.Dataset, test_speakers: SpeakerSpec, eval_speakers: SpeakerSpec = None
) -> datasets.DatasetDict:
    """Split by speaker: ``test`` and ``validation`` hold the named speakers, ``train`` all others.

    Speakers follow :func:`resolve_speakers`. A split whose spec is empty is left out. The result is
    checked with :func:`check_speaker_disjoint` (naming a speaker in both test and eval is an error).
    """
    speakers = speaker_ids(dataset)
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
    check_speaker_disjoint(splits)
    return datasets.DatasetDict(splits)


def speaker_folds(dataset: datasets.Dataset, k: int) -> list[datasets.DatasetDict]:
    """Leave-speakers-out cross-validation: ``k`` folds of ``DatasetDict(train, test)``.

    Speakers are sorted naturally (see :func:`speaker_sort_key`) and cut into ``k`` contiguous groups of
    near-equal size (the first groups get one more when it does not divide); fold ``i`` tests on group ``i``.
    Deterministic; every speaker is a test speaker in exactly one fold.
    """
    speakers = speaker_ids(dataset)
    unique = sorted(set(speakers), key=speaker_sort_key)
    if not 2 <= k <= len(unique):
        raise ValueError(f"k={k} folds need 2 <= k <= number of speakers ({len(unique)})")
    groups = [list(group) for group in np.array_split(np.array(unique, dtype=object), k)]
    folds = []
    for group in groups:
        test = set(group)
        splits = {"train": _select_speakers(dataset, speakers, set(unique) - test),
                  "test": _select_speakers(dataset, speakers, test)}
        check_speaker_disjoint(splits)
        folds.append(datasets.DatasetDict(splits))
    return folds


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------
# scikit-learn, not `evaluate`: evaluate.load("accuracy"/"f1"/"recall") downloads metric scripts from the
# Hub and executes them, which fails offline and runs fetched code; those scripts wrap these same
# scikit-learn functions anyway.


def _as_label_names(values: Sequence[Any], labels: Sequence[str], what: str) -> list[str]:
    """Accept label names or integer class ids (indices into ``labels``)."""
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


def compute_ser_metrics(predictions: Sequence[Any], references: Sequence[Any], labels: Sequence[str]) -> dict[str, Any]:
    """SER metrics over label names or class ids.

    Returns:
        ``ua``: unweighted accuracy, the mean recall over the classes present in ``references``;
        ``wa``: weighted accuracy (plain accuracy);
        ``macro_f1`` / ``weighted_f1``: F1 over the classes present in references or predictions
        (a class predicted but never true counts with F1 0 in the macro mean, weight 0 in the weighted one);
        ``per_class_recall``: {label: recall} for the classes present in references;
        ``confusion_matrix``: counts, rows = reference, columns = prediction, in ``labels`` order;
        ``labels`` and ``num_samples``.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

    labels = [str(label) for label in labels]
    predicted = _as_label_names(predictions, labels, "predictions")
    true = _as_label_names(references, labels, "references")
    if len(predicted) != len(true) or not true:
        raise ValueError(f"need as many predictions as references, at least one ({len(predicted)} vs {len(true)})")
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


def save_confusion_matrix(predictions: Sequence[Any], references: Sequence[Any], labels: Sequence[str],
                          path_png: PathLike) -> Path:
    """Draw the confusion matrix (counts; colour = share of the reference class) to a PNG."""
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
    """Write metrics as indented JSON (numpy values made plain), creating parent folders."""
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


# --------------------------------------------------------------------------------------------------
# Smoke corpus: synthetic emotional speech made offline with espeak-ng
# --------------------------------------------------------------------------------------------------
# Design: emotion = valence (carried by the words) x arousal (carried by the voice).
#   neutral: positive/neutral words, low arousal     happy: positive words, high arousal
#   sad:     negative words,         low arousal     angry: negative words, high arousal
# Text alone separates only valence, prosody alone only arousal: each gives 50 % on 4 balanced classes,
# both together 100 %. Sentences come in matched pairs that differ only in their emotional words, and per
# speaker the same sentence pairs are used in all four classes, so length and wording carry nothing but
# valence. (An audio model that recognises the words can of course read valence from the speech too.)

SMOKE_LABELS = ("neutral", "happy", "sad", "angry")
SMOKE_VALENCE = {"neutral": "positive", "happy": "positive", "sad": "negative", "angry": "negative"}
SMOKE_AROUSAL = {"neutral": "low", "happy": "high", "sad": "low", "angry": "high"}
SMOKE_SENTENCE_PAIRS = (  # (positive, negative)
    ("What a beautiful morning this is.", "What a miserable morning this is."),
    ("I passed the exam with top marks.", "I failed the exam with low marks."),
    ("We finally got the good news.", "We finally got the bad news."),
    ("My sister is feeling much better.", "My sister is feeling much worse."),
    ("The children laughed all afternoon.", "The children cried all afternoon."),
    ("Our team won the final match.", "Our team lost the final match."),
    ("I found my lucky ring today.", "I lost my lucky ring today."),
    ("The new neighbours are very kind.", "The new neighbours are very rude."),
    ("The trip was a great success.", "The trip was a total failure."),
    ("I got the job I wanted.", "I lost the job I wanted."),
    ("This soup tastes really lovely.", "This soup tastes really awful."),
    ("They praised my work at the meeting.", "They mocked my work at the meeting."),
)
# espeak-ng parameter ranges (uniform jitter per clip): rate in words/min, pitch and pitch_range 0-100
# (relative to the voice's own pitch), volume 0-200 (100 = default).
SMOKE_PROSODY = {
    "high": {"rate": (185, 225), "pitch": (65, 80), "pitch_range": (65, 85), "volume": (90, 110)},
    "low": {"rate": (120, 145), "pitch": (15, 30), "pitch_range": (10, 25), "volume": (40, 55)},
}
# Voice variants bundled with espeak-ng, alternating male/female so a prefix of the list is balanced.
SMOKE_VOICES = ("m1", "f1", "m2", "f2", "m3", "f3", "m4", "f4", "m5", "f5", "m6", "m7")
SMOKE_VERSION = 1
SMOKE_INFO_NAME = "smoke_corpus.json"


def make_smoke_corpus(out_dir: PathLike, num_speakers: int = 8, clips_per_class: int = 6, seed: int = 0) -> Path:
    """Synthesize the smoke corpus (16 kHz mono WAV + ``manifest.csv``) into ``out_dir``; return ``out_dir``.

    ``num_speakers`` espeak-ng English voices (ids ``smoke_01``...; voice variant in the ``voice`` column)
    each say ``clips_per_class`` clips of every class in :data:`SMOKE_LABELS`. Deterministic for a seed. A
    folder already holding a complete corpus made with the same arguments is reused as it is.
    """
    if not 1 <= num_speakers <= len(SMOKE_VOICES):
        raise ValueError(f"num_speakers must be 1..{len(SMOKE_VOICES)} (bundled voice variants)")
    if clips_per_class < 1:
        raise ValueError("clips_per_class must be at least 1")
    root = Path(out_dir)
    info = {"version": SMOKE_VERSION, "num_speakers": num_speakers, "clips_per_class": clips_per_class, "seed": seed}
    if _smoke_corpus_complete(root, info):
        return root
    (root / SMOKE_INFO_NAME).unlink(missing_ok=True)  # written last: only a finished corpus has it
    rows = _synthesize_smoke_clips(root, num_speakers, clips_per_class, seed)
    _write_rows_atomically(root / MANIFEST_NAME, rows)
    (root / SMOKE_INFO_NAME).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return root


def _smoke_corpus_complete(root: Path, info: dict[str, int]) -> bool:
    """True when ``root`` holds a smoke corpus made with ``info`` whose files all exist."""
    try:
        if json.loads((root / SMOKE_INFO_NAME).read_text(encoding="utf-8")) != info:
            return False
        with open(root / MANIFEST_NAME, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, ValueError):
        return False
    expected = info["num_speakers"] * info["clips_per_class"] * len(SMOKE_LABELS)
    return len(rows) == expected and all((root / row["path"]).is_file() for row in rows)


def _synthesize_smoke_clips(root: Path, num_speakers: int, clips_per_class: int, seed: int) -> list[dict[str, str]]:
    """Plan every clip (seeded), render them in a fresh process, and return the manifest rows."""
    rng = np.random.default_rng(seed)
    rows, jobs = [], []
    for index, variant in enumerate(SMOKE_VOICES[:num_speakers]):
        speaker = f"smoke_{index + 1:02d}"
        (root / speaker).mkdir(parents=True, exist_ok=True)
        pairs = np.resize(rng.permutation(len(SMOKE_SENTENCE_PAIRS)), clips_per_class)
        for label in SMOKE_LABELS:
            side = 0 if SMOKE_VALENCE[label] == "positive" else 1
            for clip, pair in enumerate(pairs):
                text = SMOKE_SENTENCE_PAIRS[pair][side]
                prosody = {name: int(rng.integers(low, high + 1))
                           for name, (low, high) in SMOKE_PROSODY[SMOKE_AROUSAL[label]].items()}
                path = f"{speaker}/{speaker}_{label}_{clip + 1:02d}.wav"
                jobs.append({"file": str(root / path), "text": text, "voice": f"en+{variant}", **prosody})
                rows.append({"path": path, "label": label, "speaker": speaker, "transcript": text,
                             "voice": f"en+{variant}"})
    _render_in_fresh_process(jobs)
    return rows


def _render_in_fresh_process(jobs: list[dict[str, Any]]) -> None:
    """Run :func:`render_espeak_clips` in a new Python process.

    espeak-ng carries hidden synthesis state from one utterance to the next (waveform phase, pitch
    flutter position, ...) that neither ``espeak_Initialize`` nor its seed resets, so the same clip comes
    out slightly different depending on what the process said before. A fresh process per corpus makes
    the corpus byte-identical for the same arguments.
    """
    module_dir = str(Path(__file__).resolve().parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [module_dir, os.environ.get("PYTHONPATH")]))}
    code = "import json, sys, data_emosllm; data_emosllm.render_espeak_clips(json.load(sys.stdin))"
    result = subprocess.run([sys.executable, "-c", code], input=json.dumps(jobs), text=True, env=env,
                            capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"espeak-ng synthesis failed in its worker process:\n{result.stderr[-3000:]}")


def render_espeak_clips(jobs: list[dict[str, Any]]) -> None:
    """Synthesize each job (``file``, ``text``, ``voice``, ``rate``, ``pitch``, ``pitch_range``, ``volume``)
    to a 16 kHz 16-bit mono WAV file."""
    synthesizer = espeak_synthesizer()
    for job in jobs:
        audio = synthesizer.synthesize(job["text"], job["voice"], rate=job["rate"], pitch=job["pitch"],
                                       pitch_range=job["pitch_range"], volume=job["volume"])
        sf.write(job["file"], audio, SAMPLING_RATE, subtype="PCM_16")


def _write_rows_atomically(path: Path, rows: list[dict[str, str]]) -> None:
    """Write a CSV via a temporary file, so a half-written manifest never looks complete."""
    temporary = path.with_suffix(".tmp")
    with open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, path)


class EspeakSynthesizer:
    """Minimal ctypes binding to the espeak-ng library shipped in the ``espeakng_loader`` wheel.

    By hand because ``espeakng_loader`` only locates the library and its data (no synthesis API), no
    ``espeak-ng`` program is installed, and phonemizer-style wrappers only phonemize. Uses espeak-ng's
    synchronous mode: ``espeak_Synth`` returns after the callback has received all samples (22.05 kHz
    int16), which are then resampled to 16 kHz. espeak-ng keeps global state: use one instance per process
    (:func:`espeak_synthesizer`), guarded by a lock; and its output for a text depends slightly on what
    the process synthesized before (see :func:`_render_in_fresh_process`).
    """

    AUDIO_OUTPUT_SYNCHRONOUS = 2
    POS_CHARACTER = 1
    CHARS_UTF8 = 1
    PARAMETERS = {"rate": 1, "volume": 2, "pitch": 3, "pitch_range": 4}  # espeak_PARAMETER enum values
    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def __init__(self) -> None:
        import espeakng_loader

        library = ctypes.CDLL(espeakng_loader.get_library_path())
        library.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        library.espeak_Initialize.restype = ctypes.c_int
        library.espeak_SetSynthCallback.argtypes = [self._CALLBACK]
        library.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        library.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        library.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                         ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        # espeak_Initialize wants the folder that *contains* espeak-ng-data.
        data_parent = str(Path(espeakng_loader.get_data_path()).parent).encode()
        self.sample_rate = library.espeak_Initialize(self.AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent, 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise with data in {data_parent.decode()!r}")
        self._chunks: list[np.ndarray] = []
        self._callback = self._CALLBACK(self._collect)  # keep a reference: ctypes does not
        library.espeak_SetSynthCallback(self._callback)
        self._library = library
        self._lock = threading.Lock()

    def _collect(self, samples: Any, count: int, _events: Any) -> int:
        """espeak-ng callback: copy a chunk of int16 samples; returning 0 continues synthesis."""
        if samples and count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0

    def synthesize(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int, volume: int) -> np.ndarray:
        """Speak ``text`` with an espeak-ng voice name (e.g. ``en+f2``); float32 mono at 16 kHz."""
        from scipy.signal import resample_poly

        with self._lock:
            self._chunks = []
            if self._library.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r}")
            for name, value in {"rate": rate, "pitch": pitch, "pitch_range": pitch_range, "volume": volume}.items():
                self._library.espeak_SetParameter(self.PARAMETERS[name], value, 0)
            encoded = text.encode("utf-8") + b"\0"
            status = self._library.espeak_Synth(encoded, len(encoded), 0, self.POS_CHARACTER, 0,
                                                self.CHARS_UTF8, None, None)
            if status != 0:
                raise RuntimeError(f"espeak-ng failed to synthesize {text!r} (status {status})")
            samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        audio = samples.astype(np.float32) / 32768.0
        divisor = math.gcd(SAMPLING_RATE, self.sample_rate)
        resampled = resample_poly(audio, SAMPLING_RATE // divisor, self.sample_rate // divisor)
        return np.clip(resampled, -1.0, 1.0).astype(np.float32)


_SYNTHESIZER: Optional[EspeakSynthesizer] = None
_SYNTHESIZER_LOCK = threading.Lock()


def espeak_synthesizer() -> EspeakSynthesizer:
    """The process-wide espeak-ng synthesizer (initialised on first use)."""
    global _SYNTHESIZER
    with _SYNTHESIZER_LOCK:
        if _SYNTHESIZER is None:
            _SYNTHESIZER = EspeakSynthesizer()
        return _SYNTHESIZER
