"""Data utilities for EmoSLLM: corpora, speaker-independent splits and SER metrics (the offline smoke corpus:
``smoke_corpus_emosllm``).

Every loader (``load_corpus`` for corpus folders, ``load_source`` for any ``datasets`` source: a Hub id, an
audiofolder, a CSV/JSON table of audio paths, a ``save_to_disk`` folder) returns a ``datasets.Dataset`` with the
same columns:

* ``audio``: ``datasets.Audio(sampling_rate=16000, num_channels=1)``; an item decodes to a torchcodec
  ``AudioDecoder`` (``.get_all_samples()`` gives ``.data`` of shape ``[1, samples]`` and ``.sample_rate``;
  ``item["array"]`` / ``item["sampling_rate"]`` also work),
* ``label`` (str), ``speaker`` (str or None), ``transcript`` (str or None),
* any extra columns (``path`` for folder corpora, ``gender``, ``intensity`` ... where known).

Speaker ids read from file names carry the corpus name (``ravdess_01``, ``cremad_1001``, ``tess_OAF``,
``emodb_03``) so that two corpora never share a speaker id; a manifest's speaker ids are kept as written.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import numbers
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import datasets
import numpy as np
import pandas as pd
import soundfile as sf

logger = logging.getLogger("emosllm.data")

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
    folder depth; only ``.wav``/``.flac`` files are considered). Any other folder (an ``audiofolder``
    with label subfolders, a CSV/JSON table of audio paths, a ``save_to_disk`` folder) is read by
    :func:`load_source` through ``datasets``; label subfolders (:func:`label_subfolders`) win over corpus-style
    file names, and a label column over the names' labels (a disagreement is logged with a count).

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
    if not manifest.is_file() and source_kind(root, labels) != "corpus":
        return load_source(root, labels=labels, hub=False)
    clips = read_manifest(manifest) if manifest.is_file() else parse_corpus_folder(root, labels)
    labels = normalize_labels(labels)
    validate_clips(clips, labels)
    if manifest.is_file():
        report_name_disagreement([clip.path for clip in clips], [clip.label for clip in clips],
                                 f"{manifest}", "manifest's label column")
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


def corpus_of_names(stems: Sequence[str]) -> tuple[Optional[str], list[Optional[ParsedName]]]:
    """The known corpus whose naming most of the file names (stems) follow, and each stem parsed by its parser (None
    where it does not fit); ``(None, [None, ...])`` when no stem follows any."""
    parsed = {name: [parser(stem) for stem in stems] for name, parser in CORPUS_PARSERS.items()}
    corpus = max(parsed, key=lambda name: sum(p is not None for p in parsed[name]))
    if not any(p is not None for p in parsed[corpus]):
        return None, [None] * len(stems)
    return corpus, parsed[corpus]


def parse_corpus_folder(root: Path, labels: Optional[Sequence[str]] = None) -> list[ClipInfo]:
    """
    Recognise the corpus of a folder without manifest by its file names; every audio file must fit. Subfolders are
    named in the log (a warning where they look like labels, `labels` or emotion words, but are not read as such).
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
    """The ``.wav``/``.flac`` files under `root` at any depth, sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


# Subfolder names read as labels without --labels: every label the corpus parsers give, and other common emotion words.
EMOTION_WORDS = frozenset(
    {*RAVDESS_EMOTIONS.values(), *CREMAD_EMOTIONS.values(), *TESS_EMOTIONS, *TESS_EMOTIONS.values(),
     *EMODB_EMOTIONS.values(), "anger", "fear", "happiness", "joy", "sadness", "surprise", "disgusted", "boredom",
     "contempt", "excited", "excitement", "frustrated", "frustration", "amused", "amusement", "anxious", "anxiety"}
)


def label_subfolders(root: Path, files: Sequence[Path], labels: Optional[Sequence[str]] = None) -> list[str]:
    """
    The label subfolders of `root`, when the audio files are laid out as an audiofolder with labels: every file sits
    in a subfolder (all at one depth, as ``datasets``' audiofolder needs to read labels from them), at least two
    distinct ones, and every subfolder's name (normalized) is an emotion word (:data:`EMOTION_WORDS`) or one of
    `labels` (``--labels``). Else ``[]``: RAVDESS's own ``Actor_01/`` folders are not labels.
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
    """
    Where the files carry corpus-style names (RAVDESS, CREMA-D, TESS, EmoDB) and the user's `layout` (label
    subfolders, a label column) gives them labels, the layout wins; the files whose name says another label are
    counted and logged as a warning with the commonest disagreements and an example. Returns the count.
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
    """A Hub dataset or any local ``datasets`` folder or file, as :func:`load_source` reads it."""
    return load_source(name, split, audio_column, label_column, transcript_column, speaker_column)


# --------------------------------------------------------------------------------------------------
# Any `datasets` source: Hub id, audiofolder, CSV/JSON table of audio paths, save_to_disk folder
# --------------------------------------------------------------------------------------------------

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
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (what ``load_from_disk`` reads)."""
    return (folder / datasets.config.DATASETDICT_JSON_FILENAME).is_file() or (
        (folder / datasets.config.DATASET_STATE_JSON_FILENAME).is_file()
        and (folder / datasets.config.DATASET_INFO_FILENAME).is_file()
    )


# JSON files at the top of a dataset folder that describe it rather than hold its rows.
DATASET_DESCRIPTION_NAMES = ("dataset_infos.json", "dataset_info.json", "dataset_dict.json", "state.json")


def table_files(folder: Path) -> list[Path]:
    """The CSV/TSV/JSON(L) files at the top of a folder, leaving out audiofolder's and `datasets`' own files."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TABLE_BUILDERS
                  and p.name not in FOLDER_METADATA_NAMES + DATASET_DESCRIPTION_NAMES)


def has_dataset_card(folder: Path) -> bool:
    """A Hub dataset's README.md whose YAML header configures it (`configs:` / `dataset_info:`), as in a clone."""
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
        return load_corpus(path, normalize_labels(labels))
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


def read_file_names(dataset: datasets.Dataset, name: str, layout: str) -> datasets.Dataset:
    """
    A local dataset whose labels came from the user's `layout` (label subfolders, a label column), beside file names
    that follow a known corpus's naming: the layout's labels are kept and every file whose name says another label
    is counted (:func:`report_name_disagreement`). Where the data has no speaker ids and every file name follows the
    corpus's naming, speakers (and, where no clip has a transcript, the corpus's sentences and its other columns)
    come from the names, logged. Reads the audio column's paths; no audio is decoded.
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


# --------------------------------------------------------------------------------------------------
# Speaker-independent splits
# --------------------------------------------------------------------------------------------------

_TRAILING_NUMBER = re.compile(r"(\d+)\D*$")
_NUMBER_OR_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def speaker_ids(dataset: datasets.Dataset, column: str = "speaker") -> list[str]:
    """
    The speaker column (or another grouping `column`, e.g. a session id) as strings; raises if any row has none
    (splits would be unverifiable).
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
    """True when every row has a speaker id, False when none has, None when only some have (reads one column)."""
    if "speaker" not in dataset.column_names:
        return False
    present = [s is not None and str(s) != "" for s in dataset["speaker"]]
    return True if all(present) else False if not any(present) else None


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


def check_speaker_disjoint(splits: Mapping[str, datasets.Dataset], column: str = "speaker") -> None:
    """Raise ValueError if a speaker (a value of `column`) appears in two splits (or a row has none)."""
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
    """Split by speaker: ``test`` and ``validation`` hold the named speakers, ``train`` all others.

    Speakers follow :func:`resolve_speakers`. A split whose spec is empty is left out. The result is
    checked with :func:`check_speaker_disjoint` (naming a speaker in both test and eval is an error).
    `column` splits by another grouping column instead (e.g. a session or recording id).
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
    """Leave-speakers-out cross-validation: ``k`` folds of ``DatasetDict(train, test)``.

    Speakers are sorted naturally (see :func:`speaker_sort_key`) and cut into ``k`` contiguous groups of
    near-equal size (the first groups get one more when it does not divide); fold ``i`` tests on group ``i``.
    Deterministic; every speaker is a test speaker in exactly one fold. `column`: another grouping column.
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
    """Split by clip, stratified by label: `test_fraction` of each label's clips (rounded) for ``test``,
    `eval_fraction` for ``validation`` (left out when it rounds to none for every label), the rest (at least one
    per label) for ``train``; drawn with `seed`, the same for the same data and seed. Rows keep their order."""
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
    """``k``-fold cross-validation by clip, stratified by label (each label's clips, shuffled by `seed`, dealt to
    the folds in turn): ``k`` ``DatasetDict(train, test)``; every clip is a test clip in exactly one fold."""
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


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------
# The SER scores as an `evaluate` metric module, loaded from its folder in this repository (metrics/ser_accuracy):
# offline, nothing fetched from the Hub or run from it. (evaluate.load("accuracy"/"f1"/"recall") would download
# metric scripts and execute them.) Loaded once per process.
SER_METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "ser_accuracy"
_ser_metric = None


def compute_ser_metrics(predictions: Sequence[Any], references: Sequence[Any], labels: Sequence[str]) -> dict[str, Any]:
    """SER metrics over label names or class ids (indices into ``labels``), by the metric module metrics/ser_accuracy.

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
