# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
Transcripts of the training data for `--use_transcript auto`: whether they tell the emotions apart
(`transcripts_inform_labels`), Whisper's transcripts of the clips without one (`transcribe_training_clips`), kept
in an on-disk cache keyed by the audio's content (`TranscriptCache`).
"""

import hashlib
import json
import logging
import math
import os
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
from transformers.utils import logging as hf_logging

import transcription_emosllm
from backbones_emosllm import default_cache_dir
from integrity_emosllm import write_json_atomically
from processing_emosllm import EmoSLLMProcessor

logger = logging.getLogger("emosllm.train")

__all__ = ["TRANSCRIBE_CHUNK", "TRANSCRIPT_INFORMATION_NATS", "TRANSCRIPT_SAMPLE_CLIPS", "TRANSCRIPT_SAMPLE_SHARE",
           "TranscriptCache", "attach_transcripts", "duration", "stratified_sample", "transcribe_clips",
           "transcribe_training_clips", "transcripts_inform_labels"]


# Transcripts inform the labels when, left out one clip at a time, knowing a clip's words raises the probability of
# its label by at least this much on average (in nats: log-likelihood per clip over the label's overall share).
TRANSCRIPT_INFORMATION_NATS = 0.05


def transcripts_inform_labels(clips: list[dict], labels: list[str]) -> tuple[bool, str]:
    """
    Whether the training transcripts can tell the emotions apart, and why. Unscripted speech (most transcripts
    distinct) counts as informative. A scripted corpus (a few sentences, each read in every emotion: RAVDESS,
    CREMA-D, EmoDB) is informative only if a clip's sentence predicts its label: leaving each clip out, the label
    shares among the other clips with the same (normalized) words, smoothed towards the overall shares, must give
    its label `TRANSCRIPT_INFORMATION_NATS` more log-probability per clip than the overall shares do. Where the words
    carry no emotion, a transcript in the prompt only costs an ASR pass per clip at inference (RAVDESS: the same UA
    with and without, BENCHMARKS.md).

    Args:
        clips: The training clips, dicts with ``label`` and ``transcript`` (None or empty: none).
        labels: The label set; its size sets the add-one smoothing of the overall label shares.

    Returns:
        `(informative, reason)`: whether the transcripts tell the emotions apart, and why, as a phrase for the log.
    """
    def words(text) -> str:
        return " ".join("".join(ch for ch in (text or "").lower() if ch.isalnum() or ch.isspace()).split())

    texts = [words(c.get("transcript")) for c in clips]
    if not any(texts):
        return False, "no clip has a transcript"
    distinct = len(set(texts))
    if distinct > len(texts) / 2:
        return True, f"{distinct} different transcripts in {len(texts)} clips: unscripted speech"
    groups: dict[str, Counter] = {}
    for text, clip in zip(texts, clips):
        groups.setdefault(text, Counter())[clip["label"]] += 1
    totals, others = Counter(c["label"] for c in clips), len(clips) - 1
    gains = []
    for text, clip in zip(texts, clips):  # leave-one-out: this clip's own label is not counted
        label = clip["label"]
        overall = (totals[label] - 1 + 1) / (others + len(labels))  # add-one smoothed share
        group = sum(groups[text].values()) - 1
        given_words = (groups[text][label] - 1 + overall) / (group + 1)  # smoothed towards the overall share
        gains.append(np.log(given_words / overall))
    gain = float(np.mean(gains))
    detail = (f"{distinct} different sentences; knowing a clip's sentence adds {gain:+.3f} nats per clip about its "
              f"emotion, leave-one-out (informative from {TRANSCRIPT_INFORMATION_NATS})")
    return gain >= TRANSCRIPT_INFORMATION_NATS, detail


def attach_transcripts(clips: list[dict], processor: EmoSLLMProcessor) -> None:
    """
    The processor's transcript rule, applied once before training: given transcripts win, `auto` transcribes the
    missing ones, `none` drops them all (the collator builds prompts from `clip["transcript"]`).

    Args:
        clips: The clips of one split, dicts with ``audio`` (float32 `(samples,)` at 16 kHz) and ``transcript``
            (None or empty: none), which is set in place.
        processor: The model's processor: its `use_transcript` (`"given"`, `"auto"` or `"none"`) and `asr_model`.
    """
    given = [c["transcript"] or None for c in clips]
    for clip, text in zip(clips, transcription_emosllm.resolve_transcripts([c["audio"] for c in clips], given, processor.use_transcript,
                                                                                processor.asr_model)):
        clip["transcript"] = text


class TranscriptCache:
    """
    Transcripts that `--use_transcript auto` had Whisper write, keyed by the audio's content (SHA-256 of the decoded
    16 kHz float32 samples, whatever the file is called) and the ASR model: one JSON file per model id under `root`
    (`--transcript_cache_dir`; default `transcripts/` under the backbone cache), replaced whole on every write (a
    temporary file beside it, then a rename), so a killed run leaves the old file or the new one.
    """

    def __init__(self, asr_model: str, root: str | os.PathLike | None = None):
        """
        Open the cache of `asr_model`'s transcripts, reading its file where there is one (a file that cannot be read
        is logged, and rewritten on the next `add`).

        Args:
            asr_model: The Whisper model, a Hub id or local folder; it names the file, and must match the stored one.
            root: The cache folder (`--transcript_cache_dir`); None: `transcripts/` under the backbone cache.
        """
        self.asr_model = asr_model
        folder = Path(root).expanduser() if root else Path(default_cache_dir()) / "transcripts"
        readable = re.sub(r"[^\w.-]+", "--", asr_model).strip("-.")[-80:]
        self.path = folder / f"{readable}-{hashlib.sha256(asr_model.encode()).hexdigest()[:8]}.json"
        self.transcripts: dict[str, str] = {}
        if self.path.is_file():
            try:
                stored = json.loads(self.path.read_text(encoding="utf-8"))
                if stored.get("asr_model") == asr_model and isinstance(stored.get("transcripts"), dict):
                    self.transcripts = stored["transcripts"]
            except (OSError, ValueError, AttributeError) as error:
                logger.warning("The transcript cache %s cannot be read (%s); it is rewritten.", self.path, error)

    @staticmethod
    def key(audio: np.ndarray) -> str:
        """
        The audio's content hash.

        Args:
            audio: A clip's decoded samples, `(samples,)` at 16 kHz (hashed as contiguous float32).

        Returns:
            The SHA-256 hex digest of the samples' bytes.
        """
        return hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()

    def fill(self, clips: list[dict]) -> list[dict]:
        """
        Gives the clips without a transcript their cached one; returns those still without one.

        Args:
            clips: Dicts with ``audio`` (float32 `(samples,)` at 16 kHz) and ``transcript``, which is set in place.

        Returns:
            The clips with neither a transcript nor a cached one, in order.
        """
        left = []
        for clip in clips:
            if not clip["transcript"]:
                clip["transcript"] = self.transcripts.get(self.key(clip["audio"]))
                if clip["transcript"] is None:
                    left.append(clip)
        return left

    def add(self, clips: list[dict]) -> None:
        """
        Stores the clips' transcripts and rewrites the file whole.

        Args:
            clips: Dicts with ``audio`` (float32 `(samples,)` at 16 kHz) and its ``transcript``.
        """
        self.transcripts.update({self.key(clip["audio"]): clip["transcript"] for clip in clips})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(self.path, {"asr_model": self.asr_model, "transcripts": self.transcripts})


# Clips per Whisper call while transcribing training data (the progress bar and the cache advance by these).
TRANSCRIBE_CHUNK = 16
# The sample `--use_transcript auto` transcribes first: this share of the clips without a transcript, at least
# TRANSCRIPT_SAMPLE_CLIPS of them.
TRANSCRIPT_SAMPLE_SHARE, TRANSCRIPT_SAMPLE_CLIPS = 0.1, 48


def transcribe_clips(clips: list[dict], asr_model: str, cache: TranscriptCache, what: str) -> list[tuple[int, float]]:
    """
    Whisper (`transcription_emosllm.transcribe`) writes the transcript of each clip, `TRANSCRIBE_CHUNK` at a time,
    with a progress bar (transformers' tqdm) named `what`; each chunk is cached as soon as it is done.

    Args:
        clips: Dicts with ``audio`` (float32 `(samples,)` at 16 kHz); each one's ``transcript`` is set in place.
        asr_model: The Whisper model, a Hub id or local folder.
        cache: The cache each transcribed chunk is added to.
        what: What the progress bar says is transcribed, e.g. ``"48 training clips"``.

    Returns:
        Per chunk, `(samples, seconds)`: its clips' total length in samples at 16 kHz, and the seconds it took.
    """
    timings = []
    with hf_logging.tqdm(total=len(clips), desc=f"Transcribing {what}", unit="clip") as progress:
        for start in range(0, len(clips), TRANSCRIBE_CHUNK):
            chunk = clips[start:start + TRANSCRIBE_CHUNK]
            started = time.time()
            for clip, text in zip(chunk, transcription_emosllm.transcribe([c["audio"] for c in chunk], asr_model)):
                clip["transcript"] = text
            timings.append((sum(len(c["audio"]) for c in chunk), time.time() - started))
            cache.add(chunk)
            progress.update(len(chunk))
    return timings


def stratified_sample(clips: list[dict], size: int, seed: int) -> list[int]:
    """
    `size` of the clips' indices, drawn with `seed`, each label's share as in `clips` (each label's clips shuffled and
    spread evenly over [0, 1), the first `size` positions taken; a label of one clip is drawn like any other, where
    scikit-learn's `train_test_split(stratify=...)` refuses it).

    Args:
        clips: Dicts with a ``label``.
        size: How many indices to draw (all of them when it is `len(clips)` or more).
        seed: The seed of the draw.

    Returns:
        The drawn indices into `clips`, sorted.
    """
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for index, clip in enumerate(clips):
        by_label.setdefault(str(clip["label"]), []).append(index)
    positions = []
    for _, indices in sorted(by_label.items()):
        offset = rng.random()
        order = rng.permutation(len(indices))
        positions += [((rank + offset) / len(indices), indices[i]) for rank, i in enumerate(order)]
    return sorted(index for _, index in sorted(positions)[:size])


def duration(seconds: float) -> str:
    """
    A rough duration for the log: 'about 40 s', 'about 7 min', 'about 2.5 h'.

    Args:
        seconds: The duration in seconds.
    """
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    return f"about {round(seconds / 60)} min" if seconds < 5400 else f"about {seconds / 3600:.1f} h"


def transcribe_training_clips(clips: list[dict], processor: EmoSLLMProcessor, labels: list[str],
                              cache: TranscriptCache, seed: int, force: bool = False) -> bool:
    """
    `--use_transcript auto` on the training clips: gives the clips without a transcript one (from `cache`, else from
    Whisper, with a progress bar, cached) and says whether the model should read transcripts
    (`transcripts_inform_labels` over all of them). Where many clips need Whisper, a sample is transcribed first (a
    `TRANSCRIPT_SAMPLE_SHARE` share, at least `TRANSCRIPT_SAMPLE_CLIPS`; seeded, stratified by label): if the words
    known then do not tell the emotions apart, the rest are not transcribed (logged, with how to force it);
    otherwise the time the rest will take is logged first.

    Args:
        clips: The training clips, dicts with ``audio`` (float32 `(samples,)` at 16 kHz), ``label`` and
            ``transcript`` (None or empty: none), which is set in place.
        processor: The model's processor; its `asr_model` transcribes.
        labels: The label set.
        cache: The transcript cache of `processor.asr_model`.
        seed: The seed of the sample's draw (`stratified_sample`).
        force: Every clip is transcribed and the answer is True (`--force_transcripts`).

    Returns:
        Whether the model should read transcripts.
    """
    asr_model = processor.asr_model
    todo = cache.fill(clips)
    target = max(TRANSCRIPT_SAMPLE_CLIPS, math.ceil(TRANSCRIPT_SAMPLE_SHARE * len(clips)))
    need = target - (len(clips) - len(todo))  # given and cached transcripts count towards the sample
    if todo and not force and need < len(todo):
        sample: list[dict] = []
        timings: list[tuple[int, float]] = []
        if need > 0:
            chosen = set(stratified_sample(todo, need, seed))
            sample = [clip for i, clip in enumerate(todo) if i in chosen]
            todo = [clip for i, clip in enumerate(todo) if i not in chosen]
            timings = transcribe_clips(sample, asr_model, cache, f"a sample of {len(sample)} training clips")
        spent = sum(seconds for _, seconds in timings)
        known = [c for c in clips if c["transcript"]]
        informative, reason = transcripts_inform_labels(known, labels)
        source = (f"{len(sample)} of them transcribed by {asr_model} now (seeded, stratified by label) in {spent:.0f} s"
                  if sample else "given or cached")
        if not informative:
            logger.info("--use_transcript auto: the transcripts of a sample of %d training clips (%s) show that the "
                        "words do not tell the emotions apart (%s). The other %d clips are not transcribed, and the "
                        "model is trained and saved without transcripts (use_transcript='none'). To transcribe them "
                        "all and train with the words anyway, pass --force_transcripts true.", len(known), source,
                        reason, len(todo))
            return False
        timed = timings[1:] or timings  # the first call also loads Whisper
        rate = sum(seconds for _, seconds in timed) / max(sum(samples for samples, _ in timed), 1)
        logger.info("--use_transcript auto: the transcripts of a sample of %d training clips (%s) show that the words "
                    "can help (%s). Transcribing the other %d with %s: %s here (cached in %s for later runs). To train "
                    "without transcripts instead, pass --use_transcript none.", len(known), source, reason, len(todo),
                    asr_model, duration(rate * sum(len(c["audio"]) for c in todo)) if sample else "time unknown",
                    cache.path)
    if todo:
        transcribe_clips(todo, asr_model, cache, f"{len(todo)} training clips")
    informative, reason = transcripts_inform_labels(clips, labels)
    if force:
        logger.info("--force_transcripts: the model reads transcripts (%s).", reason)
        return True
    if not informative:  # the model reads no transcript, and the saved one never runs ASR
        logger.info("--use_transcript auto: the training transcripts do not tell the emotions apart (%s); the model "
                    "is trained and saved without transcripts (use_transcript='none'). Pass --use_transcript given to "
                    "use given ones anyway, or --force_transcripts true to use Whisper's too.", reason)
    return informative
