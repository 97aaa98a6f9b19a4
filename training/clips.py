# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
The training data's clips decoded and checked exactly as the pipeline decodes and checks an input file, before
anything trains: bad audio, duplicate recordings, transcripts that do not fit the prompt.
"""

import hashlib
import logging

import datasets

from audio_emosllm import decode_audio, prepare_clip, read_audio_file
from processing_emosllm import EmoSLLMProcessor, feature_value
from training.arguments import DataArguments
from training.splits import check_split_labels

logger = logging.getLogger("emosllm.train")

__all__ = ["BAD_CLIP_ADVICE", "check_duplicate_audio", "decoded_clips", "load_checked_clips", "text_feature_columns"]


BAD_CLIP_ADVICE = ("fix or re-export the file, or remove its row from the data; or pass --skip_bad_clips true to "
                   "leave out every such clip (they are listed)")


def decoded_clips(
    dataset, processor: EmoSLLMProcessor | None = None, split: str = "data", skip_bad_clips: bool = False,
    skipped: list[str] | None = None, group_column: str | None = "speaker",
) -> list[dict]:
    """
    Rows as dicts with a float32 16 kHz mono `audio` array, decoded and checked exactly as the pipeline decodes and
    checks an input file (`read_audio_file`/`decode_audio`, then `prepare_audio`): training never learns from audio
    that inference would refuse (damaged, truncated, NaN, silent, too short; too long for `processor`'s model), and
    both compute the same samples from a file. The first bad clip raises `ValueError` naming the split, the row and
    the file, before anything trains; with `skip_bad_clips` it is left out and its message added to `skipped`.
    `group`: the clip's value of `group_column` (what the probe's cross-validation keeps together), or, where it
    has none, the clip's own id. `text_features`: the row's values of the columns `processor.text_features` names
    (`--text_feature_columns`), as text, an empty value left out.

    Args:
        dataset: The split's `datasets.Dataset` (`training.data.load_data`'s columns).
        processor: The model's processor, whose `max_audio_seconds` bounds a clip's length; None: no bound.
        split: The split's name, in messages and in a clip's own id.
        skip_bad_clips: Whether a bad clip is left out (`--skip_bad_clips`) instead of raising.
        skipped: Where the messages of clips left out are appended; None: not kept.
        group_column: The column that gives a clip's `group`; None: every clip is its own group.

    Returns:
        The clips: `audio` (float32 samples at 16 kHz), `label`, `speaker`, `group`, `transcript`, `text_features`
        and `file` (the row as messages name it).
    """
    max_seconds = processor.max_audio_seconds if processor is not None else None
    features = processor.text_features if processor is not None else []
    clips = []
    for index, row in enumerate(dataset.cast_column("audio", datasets.Audio(decode=False))):
        source = row["audio"] or {}
        file = source.get("path")
        name = f"{split} row {index} (file {file!r}, speaker {row.get('speaker')!r})"
        try:
            if source.get("bytes"):
                samples, rate = decode_audio(source["bytes"], name)
            elif file:
                samples, rate = read_audio_file(file, name)
            else:
                raise ValueError(f"{name}: the row has no audio (neither a file nor its bytes)")
            audio = prepare_clip(samples, rate, name, max_seconds)
        except (ValueError, FileNotFoundError) as error:
            if not skip_bad_clips:
                raise ValueError(f"{error}\nNothing was trained. To go on: {BAD_CLIP_ADVICE}.") from None
            if skipped is not None:
                skipped.append(str(error))
            continue
        group = row.get(group_column) if group_column else None
        clips.append({
            "audio": audio,
            "label": row["label"],
            "speaker": row["speaker"],
            "group": f"{split} row {index}" if group is None or group == "" else str(group),
            "transcript": row.get("transcript"),
            "text_features": {name: value for name in features if (value := feature_value(row.get(name))) is not None},
            "file": name,
        })
    return clips


def text_feature_columns(flag: str | None, column_names: list[str]) -> list[str]:
    """
    `--text_feature_columns 'gender, age'` -> `["gender", "age"]`, each a column of the data; the label, the audio
    and the transcript cannot be one (the label would be the answer written into the prompt).

    Args:
        flag: The flag's comma-separated column names, or None.
        column_names: The data's columns (`training.data.load_data`'s names: `label`, `audio`, `transcript`, ...).

    Returns:
        The column names, in the flag's order; empty without the flag.
    """
    names = list(dict.fromkeys(name.strip() for name in (flag or "").split(",") if name.strip()))
    reserved = {"label": "the label (the answer itself)", "audio": "the audio",
                "transcript": "the transcript (read as such; --transcript_column names it)"}
    for name in names:
        if name in reserved:
            raise ValueError(f"--text_feature_columns {name!r} is {reserved[name]}; name other columns.")
        if name not in column_names:
            raise ValueError(f"--text_feature_columns {name!r} is not a column of the data (columns: "
                             f"{', '.join(column_names)}); name one of them.")
    return names


def check_duplicate_audio(clips_by_split: dict[str, list[dict]]) -> None:
    """
    One recording (the same decoded samples, whatever the file names) on two rows: under two speakers, or with two
    labels, it is an error (its audio would be in two splits, training audio leaking into the test set, or it
    teaches two answers); under one speaker with one label, a warning (it only counts twice; RAVDESS as distributed
    holds one such pair).

    Args:
        clips_by_split: The decoded clips (`decoded_clips`) by split name.
    """
    seen: dict[str, tuple[str, dict]] = {}
    for split, clips in clips_by_split.items():
        for clip in clips:
            key = hashlib.sha1(clip["audio"].tobytes()).hexdigest()
            if key not in seen:
                seen[key] = (split, clip)
                continue
            first_split, first = seen[key]
            if first_split != split:
                raise ValueError(
                    f"{clip['file']} holds the same audio as {first['file']} (splits {split} and {first_split}): "
                    "the same recording in two splits puts training audio into the test set. Remove one of the rows."
                )
            if first["speaker"] != clip["speaker"] or first["label"] != clip["label"]:
                raise ValueError(
                    f"{clip['file']} holds the same audio as {first['file']} (labels {clip['label']!r} and "
                    f"{first['label']!r}, splits {split} and {first_split}): one recording under two speakers puts "
                    "training audio into the test set, under two labels it teaches both. Remove one of the rows."
                )
            logger.warning("%s holds the same audio as %s; it counts twice.", clip["file"], first["file"])


def load_checked_clips(splits, processor: EmoSLLMProcessor, data_args: DataArguments, labels: list[str]) -> dict:
    """
    Every split decoded and checked before anything trains (`decoded_clips`, then labels per split, duplicate
    audio and the transcripts' and text features' fit in the prompt). With `--skip_bad_clips`, the clips left out are
    listed.

    Args:
        splits: The split datasets by name (`train`, `test`, and `validation` where there is one).
        processor: The model's processor (the longest clip; the prompt that the transcripts must fit).
        data_args: The data flags (`skip_bad_clips`, `group_column`, `min_clips_per_label`).
        labels: The label set; with clips left out, each split's labels are checked against it again.

    Returns:
        The decoded clips (`decoded_clips`) by split name.
    """
    skipped: list[str] = []
    clips = {name: decoded_clips(split, processor, name, data_args.skip_bad_clips, skipped,
                                 data_args.group_column or "speaker")
             for name, split in splits.items()}
    empty = [name for name, split_clips in clips.items() if not split_clips]
    if empty:
        raise ValueError(f"No clip of the {', '.join(empty)} split(s) passed the audio checks; fix the data.")
    if skipped:
        logger.warning("--skip_bad_clips: left out %d clip(s) that fail the audio checks:\n  %s", len(skipped),
                       "\n  ".join(skipped))
        check_split_labels({name: [c["label"] for c in split] for name, split in clips.items()}, labels,
                           data_args.min_clips_per_label)
    check_duplicate_audio(clips)
    if processor.use_transcript != "none" or processor.text_features:  # the text fits the prompt, with no control token
        for split_clips in clips.values():
            for clip in split_clips:
                transcript = clip["transcript"] if processor.use_transcript != "none" else None
                processor.check_text_inputs(transcript, clip["text_features"], clip["file"],
                                            num_samples=len(clip["audio"]))
    return clips
