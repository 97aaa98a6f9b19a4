"""EmoSLLMProcessor: audio checks, resampling, down-mixing, prompts, labels."""

import numpy as np
import pytest
import torch
from conftest import LABELS, tone


def test_prompt_has_task_transcript_features_and_placeholders(processor, config):
    processor.text_features = ["gender"]  # a model trained with it (train.py --text_feature_columns gender)
    batch = processor(tone(1.0, 300), transcript="kids are talking by the door", text_features={"gender": "female"})
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert "talking" in text and "female" in text and "emotion" in text
    for label in LABELS:
        assert label in text
    assert (batch["input_ids"][0] == config.audio_token_id).sum() == config.mapper_config["num_queries"]


def test_transcript_not_used_when_config_says_none_and_that_is_said(caplog):
    import logging

    from conftest import tiny_processor

    processor, config = tiny_processor(use_transcript="none")
    without = processor(tone(1.0, 300))
    assert "not read" not in caplog.text  # nothing to say without a transcript
    logging.Logger.warning_once.cache_clear()  # transformers' warning_once: said once per process, maybe already
    with caplog.at_level(logging.WARNING):
        batch = processor(tone(1.0, 300), transcript="kids are talking by the door")
    assert "trained without transcripts (use_transcript='none'): the transcripts given are not read" in caplog.text
    assert torch.equal(batch["input_ids"], without["input_ids"])  # no trace of it: the prompt of a clip without one
    given = tiny_processor(use_transcript="given")[0](tone(1.0, 300), transcript="kids are talking by the door")
    assert given["input_ids"].shape[1] > without["input_ids"].shape[1]  # where the config says so, it is read


def test_a_call_without_sampling_rate_says_that_16_khz_is_assumed(processor, caplog):
    """Audio at another rate given without its rate is misread (slowed or sped up): said, as transformers' feature
    extractors say it; a call that names the rate says nothing."""
    import logging

    logging.Logger.warning_once.cache_clear()  # transformers' warning_once: said once per process, maybe already
    with caplog.at_level(logging.WARNING):
        named = processor(tone(1.0, 300), sampling_rate=16000)
        assert "sampling_rate" not in caplog.text
        assumed = processor(tone(1.0, 300))
    assert "No sampling_rate given to the processor, so the audio is read as 16 kHz: pass sampling_rate=..." in \
        caplog.text
    assert torch.equal(assumed["input_features"], named["input_features"])


def test_stereo_is_mixed_down(processor):
    mono = tone(1.0, 300)
    stereo_first = np.stack([mono, mono])
    stereo_last = stereo_first.T.copy()
    reference = processor(mono)["input_features"]
    for stereo in (stereo_first, stereo_last):
        torch.testing.assert_close(processor(stereo)["input_features"], reference)


def test_a_bare_array_of_more_than_two_rows_is_refused_as_ambiguous(processor):
    """transformers' feature extractors read a 2-D array as a batch: four clips were averaged into one, silently."""
    clips = np.stack([tone(1.0, f) for f in (200, 300, 400, 500)])
    with pytest.raises(ValueError, match=r"4 channels of one clip, or 4 clips \(\(4, 16000\)\)\? Pass clips as a list"):
        processor(clips)
    assert processor(list(clips))["input_features"].shape[0] == 4  # the batch, as a list
    torch.testing.assert_close(processor([clips])["input_features"], processor(clips.mean(axis=0))["input_features"])


def test_other_rates_are_resampled(processor):
    clip_16k = tone(1.0, 300, rate=16000)
    clip_8k = tone(1.0, 300, rate=8000)
    prepared = processor.prepare_audio(clip_8k, 8000)
    assert prepared.shape == clip_16k.shape
    spectrum = np.abs(np.fft.rfft(prepared))
    assert abs(np.argmax(spectrum) * 16000 / len(prepared) - 300) < 2  # the tone stays at 300 Hz


def test_left_padding_keeps_prompts_aligned_at_the_end(processor):
    batch = processor([tone(0.5, 300), tone(1.0, 300)], transcript=["kids are talking by the door", None])
    assert batch["attention_mask"][:, -1].tolist() == [1, 1]
    assert batch["attention_mask"][1, 0] == 0


@pytest.mark.parametrize(
    "audio, message",
    [
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.zeros(16000, dtype=np.float32), "silent"),
        (np.full(16000, np.nan, dtype=np.float32), "NaN"),
        (np.ones((2, 2, 100), dtype=np.float32), "shape"),
        ((tone(1.0, 300) * 32767).astype(np.int16), "dtype"),
        (tone(31.0, 300), "longer than"),
    ],
)
def test_bad_audio_raises_clear_error(processor, audio, message):
    with pytest.raises(ValueError, match=message):
        processor(audio)


def test_bad_member_of_batch_is_named(processor):
    with pytest.raises(ValueError, match=r"audio\[1\].*silent"):
        processor([tone(1.0, 300), np.zeros(1000, dtype=np.float32)])


def test_labels(processor):
    batch = processor([tone(1.0, 300), tone(1.0, 400)], labels=["sad", 0])
    assert batch["labels"].tolist() == [LABELS.index("sad"), 0]
    with pytest.raises(ValueError, match="Unknown label 'bored'"):
        processor(tone(1.0, 300), labels="bored")
    with pytest.raises(ValueError, match="one per clip"):
        processor([tone(1.0, 300), tone(1.0, 400)], labels=["sad"])


def test_auto_transcripts_fill_only_missing_ones_and_the_processor_runs_no_asr(monkeypatch):
    import transcription_emosllm
    from conftest import tiny_processor

    processor, config = tiny_processor(use_transcript="auto")
    calls = []

    def fake_transcribe(audios, model_name):
        calls.append((len(audios), model_name))
        return ["kids are talking"] * len(audios)

    monkeypatch.setattr(transcription_emosllm, "transcribe", fake_transcribe)
    audios = [tone(1.0, 300), tone(1.0, 400)]
    without = processor(audios, transcript=["the door", None])
    assert calls == []  # the processor uses the transcripts it is given, and transcribes nothing
    settings = processor.use_transcript, processor.asr_model
    transcripts = transcription_emosllm.resolve_transcripts(audios, ["the door", None], *settings)
    assert calls == [(1, processor.asr_model)]  # only the clip without a transcript was transcribed
    assert transcripts == ["the door", "kids are talking"]
    batch = processor(audios, transcript=transcripts)
    texts = [processor.tokenizer.decode(ids) for ids in batch["input_ids"]]
    assert "door" in texts[0] and "kids" not in texts[0]
    assert "kids" in texts[1] and "kids" not in processor.tokenizer.decode(without["input_ids"][1])
    assert transcription_emosllm.resolve_transcripts(audios, ["the door", None], "none", "unused") == [None, None]
    assert transcription_emosllm.resolve_transcripts(audios, ["the door", None], "given", "unused") == ["the door", None]


@pytest.mark.slow
def test_auto_transcript_from_bundled_whisper_on_real_speech():
    import importlib.util
    from pathlib import Path

    import soundfile as sf
    from conftest import tiny_processor

    from transcription_emosllm import resolve_transcripts

    wav = Path(importlib.util.find_spec("moonshine_onnx").origin).parent / "assets" / "beckett.wav"
    audio, rate = sf.read(wav, dtype="float32")
    processor, config = tiny_processor(use_transcript="auto", max_audio_seconds=30.0)
    settings = processor.use_transcript, processor.asr_model
    (transcript,) = resolve_transcripts([processor.prepare_audio(audio, rate)], [None], *settings)
    assert "fail" in transcript.lower()  # Beckett: "Ever tried. Ever failed. No matter. Try again. Fail again..."


def test_prompts_are_left_padded_whatever_the_tokenizers_padding_side(tmp_path):
    """A reloaded tokenizer may pad on the right; the answer position must stay every prompt's last column."""
    from conftest import tiny_processor

    processor, config = tiny_processor()
    processor.tokenizer.padding_side = "right"  # as a tokenizer_config.json without padding_side reloads
    inputs = processor.text_inputs([16000, 16000], ['kids are talking by the door', None], [None, None])
    mask = inputs["attention_mask"]
    assert mask[:, -1].all() and not mask[1, 0]  # the shorter prompt is padded at its start
    processor.save_pretrained(tmp_path)
    assert type(processor).from_pretrained(tmp_path).tokenizer.padding_side == "left"


@pytest.mark.parametrize("mapper", ["probe", "mlp"])
def test_the_processor_saves_what_it_needs_and_reads_no_model_file(tmp_path, mapper):
    """A saved processor is whole on its own: its folder holds no config.json, and it prepares the same inputs as
    the processor it was saved from, with the model's number of audio placeholders (for `mlp` it grows with the
    clip, so the saved rule must hold the encoder's frame rule too)."""
    import json

    from conftest import tiny_processor

    from processing_emosllm import EmoSLLMProcessor

    processor, config = tiny_processor(mapper=mapper)
    processor.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["labels"] == config.labels and saved["audio_embedding_count"] == config.audio_embedding_count
    loaded = EmoSLLMProcessor.from_pretrained(tmp_path)
    audios = [tone(0.7, 300), tone(2.9, 500, seed=1)]
    before, after = processor(audios, labels=LABELS[:2]), loaded(audios, labels=LABELS[:2])
    assert before.keys() == after.keys() and all(torch.equal(before[key], after[key]) for key in before)
    placeholders = (after["input_ids"] == config.audio_token_id).sum(dim=1).tolist()
    assert placeholders == [config.num_audio_embeddings(len(a)) for a in audios]
    if mapper == "mlp":
        assert placeholders[0] < placeholders[1]


def test_a_processor_and_a_model_that_do_not_belong_together_are_refused():
    from conftest import tiny_model, tiny_processor

    from pipeline_emosllm import EmoSLLMAudioClassificationPipeline

    _, model = tiny_model(num_queries=6)
    other_count, _ = tiny_processor(num_queries=4)
    with pytest.raises(ValueError, match=r"audio_embedding_count .* not the model's.*same folder"):
        EmoSLLMAudioClassificationPipeline(model=model, processor=other_count, detect_speech=False)
    other_labels, _ = tiny_processor(num_queries=6)
    other_labels.labels = list(reversed(other_labels.labels))
    with pytest.raises(ValueError, match=r"labels .* not the model's"):
        EmoSLLMAudioClassificationPipeline(model=model, processor=other_labels, detect_speech=False)
    matching, _ = tiny_processor(num_queries=6)
    EmoSLLMAudioClassificationPipeline(model=model, processor=matching, detect_speech=False)  # and its own is taken


def test_a_processor_made_without_its_models_labels_refuses_with_the_way_out(processor):
    """Made directly (not by `build` or `from_pretrained`), it knows no labels nor placeholder count: a clear error."""
    from processing_emosllm import EmoSLLMProcessor

    bare = EmoSLLMProcessor(processor.feature_extractor, processor.tokenizer)
    with pytest.raises(ValueError, match="no labels or count of audio placeholders; build it with its model"):
        bare(tone(1.0, 300))
