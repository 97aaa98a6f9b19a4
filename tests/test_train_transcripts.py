"""train.py's transcripts of the training data (`training.transcripts`): `--use_transcript auto` on data without
transcripts transcribes a sample first, shows progress and caches what Whisper wrote."""

import json
import logging
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import LABELS, tone
from test_train import run, tiny_setup, train_command  # noqa: F401 (tiny_setup: the module's fixture)

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------------------------------
# --use_transcript auto on data without transcripts (issue #39): a sample first, progress, a cache
# ----------------------------------------------------------------------------------------------------------------------
def untranscribed_clips(count: int = 120) -> list[dict]:
    return [{"audio": tone(0.5, 100 + 7 * i, seed=i), "label": LABELS[i % 4], "transcript": None}
            for i in range(count)]


@pytest.fixture
def fake_whisper(monkeypatch):
    """Whisper replaced by a recorder; `words(clip_audio) -> text` decides what it hears."""
    sys.path.insert(0, str(REPO))
    import transcription_emosllm

    heard: list[int] = []
    fake = {"words": lambda audio: "kids are talking by the door"}  # scripted: one sentence in every emotion

    def transcribe(audios, model_name):
        heard.extend(len(a) for a in audios)
        return [fake["words"](a) for a in audios]

    monkeypatch.setattr(transcription_emosllm, "transcribe", transcribe)
    fake["heard"] = heard
    return fake


def test_auto_transcripts_stop_after_a_sample_when_the_words_cannot_help(fake_whisper, tmp_path, caplog, capsys):
    from conftest import tiny_processor
    from training.transcripts import TranscriptCache, transcribe_training_clips

    clips = untranscribed_clips()
    processor, config = tiny_processor(use_transcript="auto")
    cache = TranscriptCache(processor.asr_model, tmp_path / "transcripts")
    with caplog.at_level(logging.INFO, logger="emosllm.train"):
        assert transcribe_training_clips(clips, processor, LABELS, cache, seed=42) is False
    assert len(fake_whisper["heard"]) == 48  # the sample only (10% of 120 is less than 48)
    sample = [c for c in clips if c["transcript"]]
    assert sorted(Counter(c["label"] for c in sample).values()) == [12, 12, 12, 12]  # stratified by label
    assert "the transcripts of a sample of 48 training clips (48 of them transcribed by" in caplog.text
    assert "The other 72 clips are not transcribed" in caplog.text and "--force_transcripts true" in caplog.text
    assert "Transcribing a sample of 48 training clips" in capsys.readouterr().err  # the progress bar
    stored = json.loads(cache.path.read_text())
    assert stored["asr_model"] == processor.asr_model and len(stored["transcripts"]) == 48
    assert not [p for p in cache.path.parent.iterdir() if p != cache.path]  # no temporary file left
    again = untranscribed_clips()
    fake_whisper["heard"].clear()
    reloaded = TranscriptCache(processor.asr_model, tmp_path / "transcripts")
    assert transcribe_training_clips(again, processor, LABELS, reloaded, seed=42) is False
    assert fake_whisper["heard"] == []  # the sample is read from the cache
    assert sum(bool(c["transcript"]) for c in again) == 48


def test_auto_transcripts_estimate_the_rest_then_transcribe_and_cache_every_clip(fake_whisper, tmp_path, caplog):
    from conftest import tiny_processor
    from training.transcripts import TranscriptCache, transcribe_training_clips

    fake_whisper["words"] = lambda audio: f"words number {int(np.argmax(np.abs(np.fft.rfft(audio))))}"  # unscripted
    clips = untranscribed_clips()
    clips[0]["transcript"] = "given words"
    processor, config = tiny_processor(use_transcript="auto")
    cache = TranscriptCache(processor.asr_model, tmp_path / "transcripts")
    with caplog.at_level(logging.INFO, logger="emosllm.train"):
        assert transcribe_training_clips(clips, processor, LABELS, cache, seed=0) is True
    assert len(fake_whisper["heard"]) == 119  # every clip without a transcript, once
    assert clips[0]["transcript"] == "given words" and all(c["transcript"].startswith("words") for c in clips[1:])
    assert re.search(r"a sample of 48 training clips \(47 of them .*\) show that the words can help .*Transcribing the "
                     r"other 72 with \S+: about \d+ (s|min|h) here \(cached in ", caplog.text)
    assert len(json.loads(cache.path.read_text())["transcripts"]) == 119
    same_audio = [dict(c, transcript=None) for c in untranscribed_clips()]
    fake_whisper["heard"].clear()
    assert cache.fill(same_audio) == [same_audio[0]]  # keyed by the audio: clip 0's transcript was given, not cached
    other_model = TranscriptCache("openai/whisper-base", tmp_path / "transcripts")
    assert other_model.path != cache.path and len(other_model.fill(untranscribed_clips())) == 120  # and by the model


def test_force_transcripts_transcribes_every_clip_and_keeps_the_words(fake_whisper, tmp_path):
    from conftest import tiny_processor
    from training.arguments import parse_args
    from training.transcripts import TranscriptCache, transcribe_training_clips

    clips = untranscribed_clips()
    processor, config = tiny_processor(use_transcript="auto")
    cache = TranscriptCache(processor.asr_model, tmp_path)
    assert transcribe_training_clips(clips, processor, LABELS, cache, seed=42, force=True) is True
    assert len(fake_whisper["heard"]) == 120
    with pytest.raises(ValueError, match="--force_transcripts true .* with --use_transcript none nothing"):
        parse_args(["--output_dir", str(tmp_path), "--use_transcript", "none", "--force_transcripts", "true"])
    # Each was dropped without a word.
    for flag, use, message in (("--transcript_column", "none", "and --use_transcript none reads"),
                               ("--transcript_cache_dir", "none", "Whisper writes, and --use_transcript none reads"),
                               ("--transcript_cache_dir", "given", "Whisper writes, and --use_transcript given reads")):
        with pytest.raises(ValueError, match=f"{flag} x is for transcripts {message} none: leave one of the two out"):
            parse_args(["--output_dir", str(tmp_path), "--use_transcript", use, flag, "x"])
    parse_args(["--output_dir", str(tmp_path), "--use_transcript", "given", "--transcript_column", "x"])  # read


def test_the_transcript_cache_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    import training.transcripts

    cache = training.transcripts.TranscriptCache("some/asr", tmp_path)
    clip = {"audio": tone(0.5, 300), "transcript": "first"}
    cache.add([clip])
    before = cache.path.read_text()

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)  # as integrity_emosllm.write_json_atomically renames
    with pytest.raises(KeyboardInterrupt):
        cache.add([{"audio": tone(0.5, 400), "transcript": "second"}])
    assert cache.path.read_text() == before and list(tmp_path.iterdir()) == [cache.path]
    cache.path.write_text("{not json")  # damaged: read as empty, with a warning, and rewritten on the next add
    assert training.transcripts.TranscriptCache("some/asr", tmp_path).fill([dict(clip, transcript=None)]) != []


@pytest.mark.slow
def test_auto_transcripts_of_training_clips_from_the_bundled_whisper_are_cached(tmp_path, monkeypatch):
    import importlib.util

    import soundfile as sf

    sys.path.insert(0, str(REPO))
    import transcription_emosllm
    from conftest import tiny_processor
    from training.transcripts import TranscriptCache, transcribe_training_clips

    wav = Path(importlib.util.find_spec("moonshine_onnx").origin).parent / "assets" / "beckett.wav"
    audio, rate = sf.read(wav, dtype="float32")
    processor, config = tiny_processor(use_transcript="auto", max_audio_seconds=30.0)
    speech = processor.prepare_audio(audio, rate)
    clips = [{"audio": speech, "label": "sad", "transcript": None}, {"audio": speech[::-1].copy(), "label": "happy",
                                                                     "transcript": None}]
    cache = TranscriptCache(processor.asr_model, tmp_path)
    transcribe_training_clips(clips, processor, LABELS, cache, seed=0, force=True)
    assert "fail" in clips[0]["transcript"].lower()
    monkeypatch.setattr(transcription_emosllm, "transcribe", None)  # a second run needs no ASR
    again = [dict(c, transcript=None) for c in clips]
    assert TranscriptCache(processor.asr_model, tmp_path).fill(again) == []
    assert again[0]["transcript"] == clips[0]["transcript"]


# ----------------------------------------------------------------------------------------------------------------------
# The ASR stage (--asr_epochs): the transcript is its answer
# ----------------------------------------------------------------------------------------------------------------------
def test_the_asr_stage_trains_on_every_transcript_then_ser_and_refuses_clips_without_one(tiny_setup, tmp_path):
    """`--transcript_dropout` (0.5 by default) dropped transcripts in the ASR stage too, whose answer they are, so
    `--asr_epochs` stopped at its first batch; clips without any transcript stopped it there as well, after the
    encoder cache and the probe. Now the stage reads every transcript, and a run without them stops before."""
    output = tmp_path / "out"
    result = run(train_command(tiny_setup, output, "--asr_epochs", "1", "--max_steps", "2", "--use_transcript",
                               "given"), tmp_path)
    losses = [float(line.split("'loss': '")[1].split("'")[0]) for line in result.stdout.splitlines()
              if "'loss': '" in line]
    assert len(losses) == 4 and all(np.isfinite(losses))  # two ASR steps, then two SER steps
    assert (output / "stage1_asr" / "checkpoint-2").is_dir() and (output / "model.safetensors").is_file()
    refused = subprocess.run(train_command(tiny_setup, tmp_path / "none", "--asr_epochs", "1", "--max_steps", "2",
                                           "--use_transcript", "none"), capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "--asr_epochs 1: the ASR stage trains the LLM to write" in refused.stderr
    assert "of the 16 training clips have none (use_transcript='none'" in refused.stderr
    assert not (tmp_path / "none" / "stage1_asr").exists()
