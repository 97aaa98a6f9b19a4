# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""The smoke corpus: synthetic emotional speech made offline with espeak-ng, on which the README's main job
(`python train.py` with no data argument) trains and tests in minutes. ``make_smoke_corpus`` writes it as a corpus
folder (16 kHz mono WAV + ``manifest.csv``) that ``training.data.load_corpus`` reads like any other.
"""

from __future__ import annotations

import csv
import ctypes
import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np
import soundfile as sf

from training.corpora import MANIFEST_NAME, SAMPLING_RATE, PathLike

__all__ = ["SMOKE_AROUSAL", "SMOKE_INFO_NAME", "SMOKE_LABELS", "SMOKE_PROSODY", "SMOKE_SENTENCE_PAIRS",
           "SMOKE_VALENCE", "SMOKE_VERSION", "SMOKE_VOICES", "EspeakSynthesizer", "espeak_synthesizer",
           "make_smoke_corpus", "render_espeak_clips"]

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

    Args:
        out_dir: The corpus folder (created where absent).
        num_speakers: How many speakers, 1 to ``len(SMOKE_VOICES)``.
        clips_per_class: Clips per speaker and class, at least 1.
        seed: The seed of the sentences and prosody drawn for each clip.
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
    module_dir = str(Path(__file__).resolve().parent.parent)  # the repository: `training` is a package in it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [module_dir, os.environ.get("PYTHONPATH")]))}
    code = "import json, sys, training.smoke_corpus as m; m.render_espeak_clips(json.load(sys.stdin))"
    result = subprocess.run([sys.executable, "-c", code], input=json.dumps(jobs), text=True, env=env,
                            capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"espeak-ng synthesis failed in its worker process:\n{result.stderr[-3000:]}")


def render_espeak_clips(jobs: list[dict[str, Any]]) -> None:
    """Synthesize each job (``file``, ``text``, ``voice``, ``rate``, ``pitch``, ``pitch_range``, ``volume``)
    to a 16 kHz 16-bit mono WAV file.

    Args:
        jobs: One dict per clip: ``file`` (the WAV file to write), ``text``, ``voice`` and the prosody values that
            :meth:`EspeakSynthesizer.synthesize` takes.
    """
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
        """Speak ``text`` with an espeak-ng voice name (e.g. ``en+f2``); float32 mono at 16 kHz.

        Args:
            text: The text to speak.
            voice: The espeak-ng voice name; one espeak-ng does not have raises ``ValueError``.
            rate: The speaking rate in words per minute.
            pitch: The base pitch, 0-100 (relative to the voice's own pitch).
            pitch_range: The pitch's variation, 0-100.
            volume: The volume, 0-200 (100: espeak-ng's default).

        Returns:
            The samples `(num_samples,)`, float32 in [-1, 1] at 16 kHz.
        """
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
