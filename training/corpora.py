# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""Corpus folders, the lowest layer of the training data, put together by ``training.data.load_corpus``: the audio
feature every loader casts to, label normalization and typo checks, ``manifest.csv`` reading, the file-name parsers of
RAVDESS, CREMA-D, TESS and EmoDB, label subfolders, a label column's disagreement with the file names, and the checks of
every clip (missing, empty or unreadable files, unknown labels, duplicate rows). Speaker ids read from file names carry
the corpus name (``ravdess_01``, ``cremad_1001``, ``tess_OAF``, ``emodb_03``) so that two corpora never share a speaker
id; a manifest's speaker ids are kept as written.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import datasets
import numpy as np
import pandas as pd
import soundfile as sf

from configuration_emosllm import SAMPLING_RATE

logger = logging.getLogger("emosllm.data")

__all__ = ["AUDIO_EXTENSIONS", "CORPUS_PARSERS", "CREMAD_EMOTIONS", "CREMAD_INTENSITIES", "CREMAD_PATTERN",
           "CREMAD_SENTENCES", "EMODB_EMOTIONS", "EMODB_GENDERS", "EMODB_PATTERN", "EMODB_SENTENCES", "EMOTION_WORDS",
           "LABEL_TYPO_SIMILARITY", "MANIFEST_NAME", "MAX_REPORTED_PROBLEMS", "RAVDESS_EMOTIONS",
           "RAVDESS_INTENSITIES", "RAVDESS_PATTERN", "RAVDESS_STATEMENTS", "REQUIRED_MANIFEST_COLUMNS",
           "SAMPLING_RATE", "TESS_EMOTIONS", "TESS_PATTERN", "ClipInfo", "ParsedName", "PathLike", "audio_feature",
           "audio_files", "audio_problem", "check_label_typos", "clip_problem", "clips_to_dataset", "closest_label",
           "corpus_of_names", "duplicate_rows", "label_subfolders", "normalize_label", "normalize_labels",
           "parse_corpus_folder", "parse_cremad_name", "parse_emodb_name", "parse_ravdess_name", "parse_tess_name",
           "read_manifest", "report_name_disagreement", "validate_clips"]


MANIFEST_NAME = "manifest.csv"
REQUIRED_MANIFEST_COLUMNS = ("path", "label")
AUDIO_EXTENSIONS = (".wav", ".flac")
MAX_REPORTED_PROBLEMS = 20
# Two labels of one corpus this alike (difflib's ratio: 'hapy'/'happy' 0.89, 'bored'/'board' 0.8; real pairs such as
# 'sad'/'mad' 0.67 or 'fear'/'fearful' 0.73 stay below) are taken for a typo.
LABEL_TYPO_SIMILARITY = 0.8

PathLike = Union[str, os.PathLike]


def audio_feature() -> datasets.Audio:
    """The audio feature every loader casts to: 16 kHz, down-mixed to mono by the decoder."""
    return datasets.Audio(sampling_rate=SAMPLING_RATE, num_channels=1)


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


def normalize_label(label: Optional[str]) -> Optional[str]:
    """A label as every loader keeps it: stripped and lower-cased (`' Happy'` and `'happy'` are one class).

    Args:
        label: A label as written (any value is turned into a string), or None.

    Returns:
        The normalized label; None for None or for a label that is empty once stripped.
    """
    return None if label is None else str(label).strip().lower() or None


def normalize_labels(labels: Optional[Sequence[str]]) -> Optional[list[str]]:
    """A label set (e.g. `--labels`) normalized like the data's labels; duplicates or empty names raise `ValueError`.

    Args:
        labels: The label names, or None (no label set).

    Returns:
        The labels normalized by `normalize_label`, in the given order; None for None.
    """
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
    """The known label most like `label` (difflib, similarity at least 0.6), or None when none is alike.

    Args:
        label: The label to match, e.g. an unknown one from the data.
        known: The labels to choose from.
    """
    matches = difflib.get_close_matches(label, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def check_label_typos(labels: Sequence[Optional[str]], allowed: Optional[Sequence[str]] = None) -> None:
    """Two labels of the data that look alike (`LABEL_TYPO_SIMILARITY`) are taken for a typo and raise `ValueError`
    naming both and how often each occurs: a misspelt label would otherwise become a class of its own.

    Args:
        labels: The data's labels, one per clip, normalized (None entries are skipped).
        allowed: The label set (`--labels`), or None; when given, nothing is checked here: a label set that lists both
            accepts them (and `load_corpus` checks every row against it).
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
    """Read ``manifest.csv`` (line 1: the header); a non-CSV file or one without ``path``/``label`` raises `ValueError`.

    Args:
        manifest: The manifest file; the ``path`` cells are relative to its folder (or absolute).

    Returns:
        One `ClipInfo` per non-blank row, in file order: labels normalized, empty cells None, other columns in `extras`.
    """
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
    """``03-01-EE-II-SS-RR-AA``: emotion, intensity, statement, repetition, actor (odd male, even female).

    Args:
        stem: A file name without its extension.

    Returns:
        `(label, speaker, transcript, extras)` with extras ``gender``, ``intensity`` and ``repetition``; None when
        `stem` does not follow this naming (song files, ``03-02-...``, included).
    """
    match = RAVDESS_PATTERN.fullmatch(stem)
    if match is None:
        return None
    emotion, intensity, statement, repetition, actor = match.groups()
    extras = {"gender": "male" if int(actor) % 2 else "female",
              "intensity": RAVDESS_INTENSITIES[intensity], "repetition": int(repetition)}
    return RAVDESS_EMOTIONS[emotion], f"ravdess_{actor}", RAVDESS_STATEMENTS[statement], extras


def parse_cremad_name(stem: str) -> Optional[ParsedName]:
    """``1001_DFA_ANG_XX``: actor, sentence code, emotion code, intensity code.

    Args:
        stem: A file name without its extension.

    Returns:
        `(label, speaker, transcript, extras)` with extra ``intensity``; None for another naming or an unknown code.
    """
    match = CREMAD_PATTERN.fullmatch(stem)
    if match is None:
        return None
    actor, sentence, emotion, intensity = match.groups()
    if sentence not in CREMAD_SENTENCES or emotion not in CREMAD_EMOTIONS or intensity not in CREMAD_INTENSITIES:
        return None
    return (CREMAD_EMOTIONS[emotion], f"cremad_{actor}", CREMAD_SENTENCES[sentence],
            {"intensity": CREMAD_INTENSITIES[intensity]})


def parse_tess_name(stem: str) -> Optional[ParsedName]:
    """``OAF_back_angry``: speaker (OAF older / YAF younger female), target word, emotion.

    Args:
        stem: A file name without its extension.

    Returns:
        `(label, speaker, "Say the word <word>", extras)` with extra ``gender``; None for another naming or emotion.
    """
    match = TESS_PATTERN.fullmatch(stem)
    if match is None or match.group(3).lower() not in TESS_EMOTIONS:
        return None
    speaker, word, emotion = match.groups()
    return TESS_EMOTIONS[emotion.lower()], f"tess_{speaker}", f"Say the word {word.lower()}", {"gender": "female"}


def parse_emodb_name(stem: str) -> Optional[ParsedName]:
    """``03a01Fa``: speaker, text code, emotion letter (German initial), version letter.

    Args:
        stem: A file name without its extension.

    Returns:
        `(label, speaker, transcript, extras)` with extra ``gender``; None for another naming or an unknown code.
    """
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


def corpus_of_names(stems: Sequence[str]) -> tuple[Optional[str], list[Optional[ParsedName]]]:
    """The known corpus whose naming most of the file names follow, and each stem parsed by its parser.

    Args:
        stems: File names without their extensions.

    Returns:
        `(corpus, parsed)`: a key of `CORPUS_PARSERS` (None when no stem fits any) and each stem's `ParsedName` or None.
    """
    parsed = {name: [parser(stem) for stem in stems] for name, parser in CORPUS_PARSERS.items()}
    corpus = max(parsed, key=lambda name: sum(p is not None for p in parsed[name]))
    if not any(p is not None for p in parsed[corpus]):
        return None, [None] * len(stems)
    return corpus, parsed[corpus]


def parse_corpus_folder(root: Path, labels: Optional[Sequence[str]] = None) -> list[ClipInfo]:
    """Recognise the corpus of a folder without manifest by its file names; no audio files, or one that does not fit,
    raises `ValueError`. Subfolders are only named in the log (a warning where they look like labels).

    Args:
        root: The corpus folder; its ``.wav``/``.flac`` files are read at any depth.
        labels: The label set (`--labels`), or None; subfolders named after it (or emotion words) get the warning.

    Returns:
        One `ClipInfo` per audio file, sorted by path, with the label, speaker, transcript and extras of its name.
    """
    files = audio_files(root)
    if not files:
        raise ValueError(f"{root}: no {MANIFEST_NAME} and no {'/'.join(AUDIO_EXTENSIONS)} files; "
                         f"write a {MANIFEST_NAME} with columns path,label[,speaker,transcript]")
    corpus, parsed = corpus_of_names([f.stem for f in files])
    if corpus is None:
        raise ValueError(f"{root}: no {MANIFEST_NAME}, and the file names (e.g. {files[0].name!r}) follow none of "
                         f"the known corpora {list(CORPUS_PARSERS)}; write a {MANIFEST_NAME} with columns "
                         f"path,label[,speaker,transcript]")
    misfits = [f for f, p in zip(files, parsed) if p is None]
    if misfits:
        shown = ", ".join(repr(str(f.relative_to(root))) for f in misfits[:MAX_REPORTED_PROBLEMS])
        raise ValueError(f"{root}: looks like {corpus} ({len(files) - len(misfits)} of {len(files)} files fit its "
                         f"naming), but {len(misfits)} file(s) do not: {shown}; remove them or write a {MANIFEST_NAME}")
    folders = sorted({f.parent.name for f in files if f.parent != root})
    known = EMOTION_WORDS.union(normalize_labels(labels) or [])
    label_like = [name for name in folders if normalize_label(name) in known]
    if label_like:
        logger.warning("%s: read as %s by its file names (labels, speakers and sentences from the names); the "
                       "subfolder(s) %s look like labels but are not read as labels, because not every audio file sits "
                       "in a label subfolder at one depth (datasets' audiofolder layout). Move every file into a label "
                       "subfolder to label them by folder, or write a %s.", root, corpus, label_like[:5],
                       MANIFEST_NAME)
    elif folders:
        logger.info("%s: read as %s by its file names (labels, speakers and sentences from the names); its subfolders "
                    "(%s) are not label names, so they are not read as labels. Subfolders named after the labels "
                    "(happy/, sad/, ... or the --labels) would be.", root, corpus,
                    ", ".join(folders[:5]) + (", ..." if len(folders) > 5 else ""))
    clips = []
    for file, (label, speaker, transcript, extras) in zip(files, parsed):
        relative = file.relative_to(root).as_posix()
        clips.append(ClipInfo(where=f"file {relative!r}", path=relative, file=file, label=label,
                              speaker=speaker, transcript=transcript, extras=extras))
    return clips


def audio_files(root: Path) -> list[Path]:
    """The ``.wav``/``.flac`` files under `root` at any depth, sorted.

    Args:
        root: The folder to search.
    """
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


# Subfolder names read as labels without --labels: every label the corpus parsers give, and other common emotion words.
EMOTION_WORDS = frozenset(
    {*RAVDESS_EMOTIONS.values(), *CREMAD_EMOTIONS.values(), *TESS_EMOTIONS, *TESS_EMOTIONS.values(),
     *EMODB_EMOTIONS.values(), "anger", "fear", "happiness", "joy", "sadness", "surprise", "disgusted", "boredom",
     "contempt", "excited", "excitement", "frustrated", "frustration", "amused", "amusement", "anxious", "anxiety"}
)


def label_subfolders(root: Path, files: Sequence[Path], labels: Optional[Sequence[str]] = None) -> list[str]:
    """The label subfolders of `root`, when the audio files form an audiofolder with labels: every file in a subfolder
    (all at one depth, as ``datasets`` needs), at least two distinct ones, each named (normalized) after an emotion word
    (:data:`EMOTION_WORDS`) or one of `labels`; not RAVDESS's ``Actor_01/`` folders.

    Args:
        root: The data folder.
        files: The audio files under `root` (`audio_files`).
        labels: The label set (``--labels``), or None.

    Returns:
        The label subfolders' names as written, sorted; ``[]`` when the layout is not one of label subfolders.
    """
    if not files or any(f.parent == root for f in files):
        return []
    if len({len(f.relative_to(root).parts) for f in files}) != 1:
        return []
    names = sorted({f.parent.name for f in files})
    known = EMOTION_WORDS.union(normalize_labels(labels) or [])
    if len(names) < 2 or any(normalize_label(name) not in known for name in names):
        return []
    return names


def report_name_disagreement(paths: Sequence[Optional[str]], labels: Sequence[Optional[str]], source: str,
                             layout: str) -> int:
    """Where the files carry corpus-style names (RAVDESS, CREMA-D, TESS, EmoDB) and the user's `layout` (label
    subfolders, a label column) gives them labels, the layout wins; the files whose name says another label are
    counted and logged as a warning with the commonest disagreements and an example.

    Args:
        paths: Each file's path (only its stem is read), or None where a row has none.
        labels: Each file's label from the layout, in the order of `paths` (None where it has none).
        source: How the warning names the data, e.g. the manifest's path or the dataset's name.
        layout: How the warning names where the labels came from, e.g. ``"manifest's label column"``.

    Returns:
        The number of files whose name says another label (0 when the names follow no known corpus).
    """
    stems = [Path(str(path)).stem if path else "" for path in paths]
    corpus, parsed = corpus_of_names(stems)
    if corpus is None:
        return 0
    pairs: Counter = Counter()
    example = None
    for path, label, name in zip(paths, labels, parsed):
        if name is not None and label is not None and normalize_label(label) != name[0]:
            pairs[(normalize_label(label), name[0])] += 1
            example = example or (path, normalize_label(label), name[0])
    count = sum(pairs.values())
    if count:
        commonest = ", ".join(f"{given!r} where the name says {named!r}: {n}" for (given, named), n in
                              pairs.most_common(3))
        logger.warning(
            "%s: %d of %d files have a label from the %s that differs from the one their %s file name gives (%s%s; "
            "e.g. %r: %r, the name %r). The labels from the %s are kept; if the file names are right, fix the %s.",
            source, count, len(paths), layout, corpus, commonest, ", ..." if len(pairs) > 3 else "", example[0],
            example[1], example[2], layout, layout,
        )
    return count


def validate_clips(clips: list[ClipInfo], labels: Optional[list[str]], check_audio: bool = True) -> None:
    """Check every row; raise one ValueError listing all problems (at most ``MAX_REPORTED_PROBLEMS``).

    Args:
        clips: The corpus's rows (`read_manifest`, `parse_corpus_folder`); none at all is a problem too.
        labels: The normalized label set, or None to accept any label.
        check_audio: Check each file's audio header too (`audio_problem`); False leaves unreadable or empty audio to
            the decoding's checks (train.py's `--skip_bad_clips` lists and leaves out such clips there).
    """
    if not clips:
        raise ValueError("the corpus has no rows; add clips to the manifest")
    problems = [problem for clip in clips if (problem := clip_problem(clip, labels, check_audio)) is not None]
    problems += duplicate_rows(clips)
    if problems:
        shown = "\n  ".join(problems[:MAX_REPORTED_PROBLEMS])
        more = len(problems) - MAX_REPORTED_PROBLEMS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise ValueError(f"{len(problems)} bad row(s) in the corpus:\n  {shown}{tail}")


def duplicate_rows(clips: list[ClipInfo]) -> list[str]:
    """Rows that name a file an earlier row names too: a duplicate row counts its clip twice, and one file under two
    speakers puts the same recording into two splits (training audio leaking into the test set).

    Args:
        clips: The corpus's rows; files are compared by absolute path, and rows with an empty path are skipped.

    Returns:
        One problem message per such row, naming the earlier row and saying what to do.
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


def clip_problem(clip: ClipInfo, labels: Optional[list[str]], check_audio: bool = True) -> Optional[str]:
    """What is wrong with one row, as a message that says what to do, or None.

    Args:
        clip: The row: its path, label, file and (with `check_audio`) audio header are checked.
        labels: The normalized label set, or None to accept any label.
        check_audio: Check the audio header (`audio_problem`).
    """
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
    return audio_problem(clip) if check_audio else None


SKIP_ADVICE = "(train.py: or pass --skip_bad_clips true to leave such clips out)"


def audio_problem(clip: ClipInfo) -> Optional[str]:
    """Cheap header check: soundfile (WAV/FLAC/OGG/MP3), then torchcodec for formats libsndfile lacks.

    Args:
        clip: A row whose file exists.

    Returns:
        A message that says what to do when the file is unreadable or has no samples, else None.
    """
    try:
        frames = sf.info(str(clip.file)).frames
    except sf.SoundFileError:
        frames = _torchcodec_frames(clip.file)
        if frames is None:
            return (f"{clip.where}: unreadable audio at {str(clip.file)!r}; re-encode it (16-bit WAV or FLAC) "
                    f"or remove the row {SKIP_ADVICE}")
    if frames == 0:
        return (f"{clip.where}: empty audio (0 samples) at {str(clip.file)!r}; replace the file or remove the row "
                f"{SKIP_ADVICE}")
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
    """Build the Dataset (audio as absolute paths, then cast to the 16 kHz `audio_feature`).

    Args:
        clips: The validated rows, at least one; every row has the first row's `extras` keys.

    Returns:
        Columns ``audio``, ``label``, ``speaker``, ``transcript``, ``path`` (text, None where empty) and one per extra.
    """
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
