"""
Bad input against train.py (issue #23): bad data stops the run before anything trains, with a message that names
the input and the problem; the encoder cache and resuming refuse what does not fit. Tiny random backbones.
"""

import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import LABELS, tiny_processor, tone
from fuzz_helpers import (  # noqa: F401 (fixtures)
    CLIP, FORMATS, SPEECHLIKE, ReachedTraining, backbones, corpus, encoded, manifest_rows, run_until_training, tiny,
    train_args, with_nan, write_rows,
)

import training.arguments
import training.clips
import training.data
import training.encoder_cache
import training.resume
import training.splits
from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
from audio_emosllm import prepare_clip, read_audio_file
from probe_fitting_emosllm import fit_linear_probe

def bad_file(folder: Path, name: str, kind: str) -> None:
    """Replace the file `name` of a tone corpus with a bad one of `kind`."""
    path = folder / name
    clip, _ = sf.read(path, dtype="float32")
    if kind == "nan":
        sf.write(path, with_nan(clip), 16000, subtype="FLOAT")
    elif kind == "zeros":
        sf.write(path, np.zeros_like(clip), 16000)
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 3 // 4])
    elif kind == "short":
        sf.write(path, clip[:800], 16000)
    elif kind == "garbage":
        path.write_bytes(b"not audio at all " * 64)
    elif kind == "empty":
        sf.write(path, np.zeros(0, np.float32), 16000)
    elif kind == "too_long":
        sf.write(path, tone(31.0, 300), 16000)
    elif kind == "truncated_ogg":
        ogg = path.with_suffix(".ogg")
        data = encoded(SPEECHLIKE, **FORMATS["ogg"])
        ogg.write_bytes(data[: len(data) * 3 // 4])
        rows = [row.replace(name, ogg.name) for row in manifest_rows(folder)]
        write_rows(folder, rows)
        path.unlink()
        return


@pytest.mark.parametrize("kind, message", [
    ("nan", "NaN or infinite samples"),
    ("zeros", "silent"),
    ("truncated", "truncated"),
    ("short", "too short to hold speech"),
    ("too_long", "longer than the model's 30 s"),
    ("truncated_ogg", "truncated"),
])
@pytest.mark.parametrize("bad_split, file", [("train", "s01_sad_1.wav"), ("test", "s04_happy_0.wav")])
def test_a_bad_clip_stops_train_py_before_training(backbones, tmp_path, monkeypatch, kind, message, bad_split, file):
    data_dir = corpus(tmp_path)
    bad_file(data_dir, file, kind)
    shown = file if kind != "truncated_ogg" else file.replace(".wav", ".ogg")
    with pytest.raises(ValueError) as stopped:
        run_until_training(backbones, data_dir, tmp_path, monkeypatch)
    text = str(stopped.value)
    assert text.startswith(f"{bad_split} row ") and shown in text and message in text
    assert "Nothing was trained" in text and "--skip_bad_clips" in text
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_skip_bad_clips_leaves_them_out_and_lists_them(backbones, tmp_path, monkeypatch, caplog):
    data_dir = corpus(tmp_path)
    bad_file(data_dir, "s01_sad_1.wav", "nan")
    bad_file(data_dir, "s02_angry_0.wav", "zeros")
    # Unreadable and empty files of a manifest corpus: found on loading, they stopped the run despite the flag
    bad_file(data_dir, "s01_happy_1.wav", "garbage")
    bad_file(data_dir, "s02_sad_0.wav", "empty")
    loaded = []
    original = training.clips.load_checked_clips

    def keep(*args, **kwargs):  # a copy: train.py drops the training clips' samples once they are cached
        clips = original(*args, **kwargs)
        loaded.append({name: [dict(c) for c in split] for name, split in clips.items()})
        return clips

    monkeypatch.setattr(training.recipe, "load_checked_clips", keep)
    with caplog.at_level(logging.WARNING, logger="emosllm.train"), pytest.raises(ReachedTraining):
        run_until_training(backbones, data_dir, tmp_path, monkeypatch, "--skip_bad_clips", "true")
    assert "left out 4 clip(s)" in caplog.text
    for name in ("s01_sad_1.wav", "s02_angry_0.wav", "s01_happy_1.wav", "s02_sad_0.wav"):
        assert name in caplog.text
    assert len(loaded[0]["train"]) == 2 * 4 * 2 - 4
    assert all(np.isfinite(c["audio"]).all() and np.abs(c["audio"]).max() > 0 for c in loaded[0]["train"])


def test_training_decodes_a_file_as_the_pipeline_does(tmp_path):
    data_dir = corpus(tmp_path)
    sf.write(data_dir / "s01_sad_0.wav", tone(0.8, 900, rate=44100), 44100)  # another rate: resampled alike
    dataset = training.data.load_corpus(data_dir)
    clips = training.clips.decoded_clips(dataset, split="train")
    for index in (0, [row["path"] for row in dataset].index("s01_sad_0.wav")):
        samples, rate = read_audio_file(data_dir / dataset[index]["path"], "x")
        np.testing.assert_array_equal(clips[index]["audio"], prepare_clip(samples, rate))


def test_the_encoder_cache_checks_what_it_is_given(tiny, tmp_path):
    model, processor = tiny
    cache = training.encoder_cache.EncoderStateCache(model, processor, tmp_path)
    with pytest.raises(ValueError, match="copy 3: the clip has NaN"):
        cache.fill([{"audio": with_nan(CLIP), "file": "copy 3"}])
    assert not list(cache.root.iterdir())


def test_the_encoder_cache_writes_whole_files_only(tiny, tmp_path, monkeypatch):
    model, processor = tiny
    cache = training.encoder_cache.EncoderStateCache(model, processor, tmp_path)

    def killed(tensors, filename):  # the run is killed halfway through writing a clip's states
        Path(filename).write_bytes(b"half a safetensors file")
        raise KeyboardInterrupt

    monkeypatch.setattr(training.encoder_cache, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.fill([{"audio": CLIP, "file": "clip"}])
    assert not cache.path(CLIP).exists()  # a run side by side, or the next one, encodes the clip again
    monkeypatch.undo()
    clips = [{"audio": CLIP, "file": "clip"}]
    cache.fill(clips)
    whole = [p.name for p in cache.root.iterdir() if not p.name.endswith(".partial")]
    assert whole == [cache.path(CLIP).name]
    assert not isinstance(clips[0]["states"], torch.Tensor)  # read from disk batch by batch, not held in memory
    states = training.encoder_cache.cached_states(clips[0])
    assert states.dtype == torch.float16 and states.shape[1] == model.config.num_encoder_frames(len(CLIP))
    cache.path(CLIP).write_bytes(b"cut")  # the cache folder changed under a running training
    with pytest.raises(RuntimeError, match="encoder cache file .* gone or damaged.*--resume true"):
        training.encoder_cache.cached_states(clips[0])
    cache.path(CLIP).unlink()
    with pytest.raises(RuntimeError, match="gone or damaged"):
        training.encoder_cache.cached_states(clips[0])


# ----------------------------------------------------------------------------------------------------------------------
# train.py: labels, duplicates, splits
# ----------------------------------------------------------------------------------------------------------------------
def test_label_case_and_whitespace_are_one_class(tmp_path):
    data_dir = corpus(tmp_path)
    rows = manifest_rows(data_dir)
    rows[1] = rows[1].replace(",neutral,", ", Neutral ,")
    rows[2] = rows[2].replace(",neutral,", ",NEUTRAL,")
    write_rows(data_dir, rows)
    assert sorted(set(training.data.load_corpus(data_dir)["label"])) == sorted(LABELS)
    assert training.data.load_corpus(data_dir, [" Happy", "SAD", "neutral", "angry"])["label"][0] == "neutral"


def test_a_label_typo_is_an_error_naming_the_closest_label(tmp_path, backbones):
    data_dir = corpus(tmp_path)
    rows = manifest_rows(data_dir)
    rows[3] = rows[3].replace(",happy,", ",hapy,")
    write_rows(data_dir, rows)
    with pytest.raises(ValueError, match=r"labels 'hapy' \(1 clip\(s\)\) and 'happy' .*did you mean 'happy'.*--labels"):
        training.data.load_corpus(data_dir)
    with pytest.raises(ValueError, match=r"line 4 .*unknown label 'hapy'.*did you mean 'happy'"):
        training.data.load_corpus(data_dir, LABELS)
    _, data_args, _ = train_args(backbones, data_dir, tmp_path, "--labels", "neutral,happy,hapy,sad,angry")
    assert "hapy" in training.data.load_data(data_args)["label"]  # listed: a class of its own, as asked
    import datasets

    hub = datasets.Dataset.from_dict({"audio": ["a.wav"] * 3, "label": ["Happy ", "hapy", "happy"]})
    with pytest.raises(ValueError, match="did you mean 'happy'"):
        training.data.check_dataset_labels(hub)
    with pytest.raises(ValueError, match=r"'hapy' \(did you mean 'happy'\?\) are not in the label set"):
        training.data.check_dataset_labels(hub, ["happy", "sad"])
    assert training.data.check_dataset_labels(hub, ["happy", "hapy"])["label"] == ["happy", "hapy", "happy"]
    with pytest.raises(ValueError, match="names \\['happy'\\] more than once"):
        training.arguments.parse_labels("happy,sad,Happy")


def test_duplicate_rows_and_one_file_under_two_speakers_are_errors(tmp_path):
    data_dir = corpus(tmp_path)
    rows = manifest_rows(data_dir)
    write_rows(data_dir, rows + [rows[3]])
    with pytest.raises(ValueError, match=r"line 34 .*the same file as .*line 4 .*a duplicate row"):
        training.data.load_corpus(data_dir)
    moved = rows[3].replace(",spk01,", ",spk04,")
    write_rows(data_dir, rows + [moved])
    with pytest.raises(ValueError, match=r"line 34 .*same file as .*line 4.*speaker 'spk01' where this row gives "
                                         r"'spk04'"):
        training.data.load_corpus(data_dir)


def test_the_same_audio_under_two_speakers_is_an_error_before_training(backbones, tmp_path, monkeypatch):
    data_dir = corpus(tmp_path)
    shutil.copy(data_dir / "s01_happy_0.wav", data_dir / "copy_of_a_training_clip.wav")
    rows = manifest_rows(data_dir)
    write_rows(data_dir, rows + ["copy_of_a_training_clip.wav,happy,spk04,kids are talking by the door"])
    with pytest.raises(ValueError, match=r"copy_of_a_training_clip\.wav.*holds the same audio as .*s01_happy_0\.wav.*"
                                         r"splits test and train"):
        run_until_training(backbones, data_dir, tmp_path, monkeypatch)


def test_the_same_audio_twice_under_one_speaker_is_only_a_warning(caplog):
    clip = {"audio": CLIP, "speaker": "a", "label": "happy"}
    with caplog.at_level(logging.WARNING, logger="emosllm.train"):
        training.clips.check_duplicate_audio({"train": [dict(clip, file="x.wav"), dict(clip, file="y.wav")]})
    assert "y.wav holds the same audio as x.wav" in caplog.text
    with pytest.raises(ValueError, match="under two labels"):
        training.clips.check_duplicate_audio(
            {"train": [dict(clip, file="x.wav"), dict(clip, file="y.wav", label="sad")]})


def test_labels_missing_from_training(backbones, tmp_path, monkeypatch, caplog):
    data_dir = corpus(tmp_path)
    rows = manifest_rows(data_dir)
    kept = [rows[0]] + [r for r in rows[1:] if ",angry," not in r or ",spk04," in r]  # angry: test speaker only
    write_rows(data_dir, kept)
    with pytest.raises(ValueError, match=r"label 'angry' has no training clips \(2 in test\).*cannot learn it"):
        run_until_training(backbones, data_dir, tmp_path, monkeypatch)
    kept = [rows[0]] + [r for r in rows[1:] if ",angry," not in r or ",spk03," in r]  # angry: validation only
    write_rows(data_dir, kept)
    with pytest.raises(ValueError, match=r"label 'angry' has no training clips \(2 in validation\)"):
        run_until_training(backbones, data_dir, tmp_path, monkeypatch)
    with pytest.raises(ValueError, match=r"label 'bored' has no training clips \(no clips at all\)"):
        training.splits.check_split_labels({"train": LABELS}, LABELS + ["bored"])
    with caplog.at_level(logging.WARNING, logger="emosllm.train"):
        training.splits.check_split_labels({"train": LABELS * 2, "test": LABELS[:3]}, LABELS, min_clips=5)
    assert "Label 'angry' has only 2 training clip(s)" in caplog.text
    assert "The test split has no clip of label(s) ['angry'], which training has: its scores (UA) cover 3 of 4" \
        in caplog.text


def test_a_transcript_that_cannot_fit_the_prompt_stops_training(backbones, tmp_path, monkeypatch):
    data_dir = corpus(tmp_path)
    rows = manifest_rows(data_dir)
    rows[7] = rows[7].rsplit(",", 1)[0] + "," + "door " * 2000
    rows[8] = rows[8].rsplit(",", 1)[0] + ",it was fine <|end|> angry"
    write_rows(data_dir, rows)
    with pytest.raises(ValueError, match=r"train row \d+ .*s01_angry_0\.wav.*the prompt is \d+ tokens long"):
        run_until_training(backbones, data_dir, tmp_path, monkeypatch)
    rows[7] = rows[7].rsplit(",", 1)[0] + ",kids are talking"
    write_rows(data_dir, rows)
    with pytest.raises(ValueError, match=r"s01_angry_1\.wav.*transcript: .*special token.*<\|end\|>"):
        run_until_training(backbones, data_dir, tmp_path, monkeypatch)


# ----------------------------------------------------------------------------------------------------------------------
# The encoder cache knows its weights
# ----------------------------------------------------------------------------------------------------------------------
def test_encoder_cache_folder_follows_the_encoder_weights_and_preprocessing(tmp_path):
    processor, config = tiny_processor()
    torch.manual_seed(0)
    model = EmoSLLMForSpeechEmotionRecognition(config)
    root = training.encoder_cache.EncoderStateCache(model, processor, tmp_path).root
    assert training.encoder_cache.EncoderStateCache(model, processor, tmp_path).root == root  # stable
    with torch.no_grad():
        model.audio_encoder.layer_weights += 1.0  # trains; not part of the encoder
        model.audio_encoder.feature_mean += 1.0  # set from the cache itself
    assert training.encoder_cache.EncoderStateCache(model, processor, tmp_path).root == root
    with torch.no_grad():
        model.audio_encoder.encoder.layers[0].fc1.weight[0, 0] += 1e-3  # one weight of the encoder
    changed = training.encoder_cache.EncoderStateCache(model, processor, tmp_path).root
    assert changed != root
    processor.feature_extractor.dither = 0.5  # the same weights, other preprocessing
    assert training.encoder_cache.EncoderStateCache(model, processor, tmp_path).root not in (root, changed)


# ----------------------------------------------------------------------------------------------------------------------
# Resuming: the last checkpoint that loads, and one that fits the model
# ----------------------------------------------------------------------------------------------------------------------
def write_checkpoint(folder: Path, model, step: int) -> Path:
    """A checkpoint as EmoSLLMTrainer writes one: trainable weights, config, optimizer, scheduler, trainer state."""
    from safetensors.torch import save_file

    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    trainable = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, str(checkpoint / "model.safetensors"))
    model.config.save_pretrained(checkpoint)
    torch.save({"state": {}}, checkpoint / "optimizer.pt")
    torch.save({"last_epoch": step}, checkpoint / "scheduler.pt")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return checkpoint


@pytest.mark.parametrize("damage", ["cut_weights", "garbage_weights", "no_weights", "cut_optimizer",
                                    "no_scheduler", "cut_state"])
def test_resume_falls_back_to_the_last_checkpoint_that_loads(tiny, tmp_path, damage, caplog):
    model, _ = tiny
    for step in (2, 4):
        write_checkpoint(tmp_path, model, step)
    newest = tmp_path / "checkpoint-4"
    target = {"cut_weights": "model.safetensors", "garbage_weights": "model.safetensors",
              "no_weights": "model.safetensors", "cut_optimizer": "optimizer.pt", "no_scheduler": "scheduler.pt",
              "cut_state": "trainer_state.json"}[damage]
    data = (newest / target).read_bytes()
    if damage.startswith("no_"):
        (newest / target).unlink()
    elif damage == "garbage_weights":
        (newest / target).write_bytes(os.urandom(len(data)))
    else:
        (newest / target).write_bytes(data[: len(data) // 2])
    (tmp_path / "checkpoint-x").mkdir()  # not a step: ignored
    with caplog.at_level(logging.INFO, logger="emosllm.train"):
        assert training.resume.last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert f"Skipping checkpoint {newest}" in caplog.text and target.split(".")[0] in caplog.text
    assert f"Resuming from {tmp_path / 'checkpoint-2'}" in caplog.text


def test_resume_with_flags_that_change_the_models_shape_says_so(tmp_path, caplog):
    torch.manual_seed(0)
    saved = EmoSLLMForSpeechEmotionRecognition(tiny_processor(num_queries=4)[1])
    saved.freeze_backbones()
    checkpoint = write_checkpoint(tmp_path, saved, 2)
    training.resume.check_checkpoint_matches(checkpoint, saved)  # the same flags: fine
    wider = EmoSLLMForSpeechEmotionRecognition(tiny_processor(num_queries=8)[1])
    wider.freeze_backbones()
    with pytest.raises(ValueError, match=r"--resume: .*checkpoint-2 was saved by a model of another shape.*"
                                         r"num_queries \(4 -> 8\).*mapper\.queries.*new --output_dir"):
        training.resume.check_checkpoint_matches(checkpoint, wider)
    tiny_processor(num_queries=4)[0].save_pretrained(checkpoint)  # what the Trainer writes when given the processor
    reworded, _ = tiny_processor(num_queries=4, prompt="Name the emotion.")
    with caplog.at_level(logging.WARNING, logger="emosllm.train"):
        training.resume.check_checkpoint_matches(checkpoint, saved, reworded)  # same shapes: a warning, not an error
    assert "saved with other settings" in caplog.text and "prompt" in caplog.text


def test_train_py_on_a_nan_clip_exits_non_zero_before_training(backbones, tmp_path):
    """The issue's case end to end: `python train.py` on a manifest with a NaN clip."""
    import subprocess

    data_dir = corpus(tmp_path)
    bad_file(data_dir, "s02_happy_1.wav", "nan")
    command = [sys.executable, str(Path(__file__).resolve().parent.parent / "train.py"), "--data_dir", str(data_dir),
               "--audio_encoder", str(backbones / "encoder"), "--llm", str(backbones / "llm"),
               "--output_dir", str(tmp_path / "out"), "--encoder_cache_dir", str(tmp_path / "cache"),
               "--test_speakers", "4", "--eval_speakers", "3",
               "--lora_rank", "4", "--bf16", "false", "--max_steps", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ,
                                                                                     "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    assert "s02_happy_1.wav" in result.stderr and "NaN or infinite samples" in result.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists() and not (tmp_path / "out" / "checkpoints").exists()


def test_a_label_of_one_speaker_and_a_corpus_of_one_label_are_errors_naming_them():
    """A label whose every clip is one speaker's cannot be cross-validated over speakers: the error names the label
    (it named a class id); a corpus of one label is refused before anything is fitted."""
    from test_modeling import tone_batches

    processor, config = tiny_processor(mapper="probe")
    torch.manual_seed(0)
    model = EmoSLLMForSpeechEmotionRecognition(config).eval()
    batches, groups = tone_batches(processor)  # 4 speakers, every label
    only_one = processor([tone(0.8, 1800, seed=90 + i) for i in range(2)], labels=["angry"] * 2)
    others = [processor([tone(0.8, 150 * (k + 1), seed=k) for k in range(3)], labels=["neutral", "happy", "sad"])
              for _ in range(3)]
    with pytest.raises(ValueError, match=r"every clip of \['angry'\] is in one fold's speakers"):
        model.fit_probe([only_one, *others], [0.1, 1.0], groups=["a"] * 2 + ["b"] * 3 + ["c"] * 3 + ["d"] * 3)
    with pytest.raises(ValueError, match=r"it got none of \['angry'\]"):
        fit_linear_probe(model.mapper, torch.randn(3, model.mapper.probe_weight.shape[1]), torch.tensor([0, 1, 2]), 1.0)
    model.fit_probe(batches, [0.1, 1.0], groups=groups)  # every label in every fold's training speakers: fitted
    with pytest.raises(ValueError, match="The data has one label \\(sad\\)"):
        training.splits.check_split_labels({"train": ["sad"] * 6, "test": ["sad"] * 2}, ["sad"])


