"""
The inference pipeline as users call it: `pipeline(model=folder, trust_remote_code=True)` on a saved tiny-random model
folder, in a fresh process that cannot import the project. One subprocess runs every call and returns the results;
the tests below check them.
"""

import inspect
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import LABELS, save_tiny_model, tone
from scipy.signal import resample_poly

from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECONDS_LONG = 180.0  # the 3-minute clip
SILENCE = (60.0, 75.0)  # a silent stretch inside it
SEGMENT = 10.0  # the pipeline's default segment_seconds

CHECK = textwrap.dedent(
    r"""
    import io, json, os, pathlib, sys, traceback
    import numpy as np, soundfile as sf, torch
    from transformers import pipeline

    folder, files, w2v = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    try:
        import pipeline_emosllm  # must not be importable here: the code has to come from the folder
        raise SystemExit("project importable")
    except ImportError:
        pass
    results = {}
    # Tones are not speech: the speech detector is off here (tests/test_fuzz_inference.py tests it).
    clf = pipeline(model=folder, trust_remote_code=True, detect_speech=False)
    named = pipeline("audio-classification", model=folder, trust_remote_code=True, top_k=2, detect_speech=False)
    # The plumbing is checked exactly, in float32; the bf16 encoder's tolerance is tested in test_lean_and_fast.py.
    for loaded in (clf, named):
        loaded.model.audio_encoder.bf16_inference = False
    results["classes"] = [type(clf).__name__, type(named).__name__, type(clf.processor).__name__]

    clip, _ = sf.read(files["wav"], dtype="float32")
    clip48, _ = sf.read(files["wav48"], dtype="float32")
    data = pathlib.Path(files["wav"]).read_bytes()

    # Every input form of the same audio.
    forms = {
        "path": files["wav"], "flac": files["flac"], "pathlib": pathlib.Path(files["wav"]), "bytes": data,
        "array": clip, "float64": clip.astype(np.float64), "tensor": torch.from_numpy(clip),
        "dict_array": {"array": clip, "sampling_rate": 16000}, "dict_raw": {"raw": clip, "sampling_rate": 16000},
        "stereo": np.stack([clip, clip]),
        "wav48_path": files["wav48"], "dict48": {"array": clip48, "sampling_rate": 48000},
    }
    results["forms"] = {name: clf(value) for name, value in forms.items()}
    results["from48"] = clf(clf.processor.prepare_audio(clip48, 48000))  # the 48 kHz audio at 16 kHz
    results["batched"] = clf(list(forms.values()), batch_size=3)
    results["batched_bs1"] = clf([forms["path"], forms["array"]])
    results["named_default"] = named(clip)  # top_k=2 given when building
    results["named_all"] = named(clip, top_k=None)
    results["top_k"] = {str(k): clf(clip, top_k=k) for k in (1, 3, 100)}
    results["timeline_short"] = clf(clip, return_timeline=True)

    # Lossy and FFmpeg-only formats: decoded (to about the same length), classified.
    from torchcodec.encoders import AudioEncoder
    webm = AudioEncoder(torch.from_numpy(clip)[None], sample_rate=16000).to_tensor(format="webm").numpy().tobytes()
    pathlib.Path("clip.webm").write_bytes(webm)
    results["lossy"] = {name: clf(value, return_timeline=True)
                        for name, value in {"ogg": files["ogg"], "mp3": files["mp3"], "webm": "clip.webm",
                                            "webm_bytes": webm}.items()}

    # Transcript and text features: per input (dict keys) or for the call.
    text = "kids are talking by the door"
    results["text"] = {
        "none": clf(clip),
        "dict": clf({"array": clip, "sampling_rate": 16000, "transcript": text, "text_features": {"gender": "female"}}),
        "kwargs": clf(clip, transcript=text, text_features={"gender": "female"}),
        "list": clf([clip, clip], transcript=[text, None], text_features=[{"gender": "female"}, None]),
    }

    # Long recordings.
    rng = np.random.default_rng(7)
    t = np.arange(int(%(long)s * 16000)) / 16000
    long = (0.4 * np.sin(2 * np.pi * (200 + 3 * t) * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)
    long[int(%(silence_start)s * 16000):int(%(silence_end)s * 16000)] = 0.0
    results["long_default"] = clf(long)
    results["long"] = clf(long, return_timeline=True, top_k=None, batch_size=4)
    results["long_hop"] = clf(long[: 16000 * 40], return_timeline=True, top_k=None, hop_seconds=4.0, batch_size=8)
    results["odd"] = clf(long[: int(16000 * 23.7)], return_timeline=True, top_k=None)
    results["short_segments"] = clf(clip, return_timeline=True, segment_seconds=0.5)

    # Bad inputs: each must raise, naming the input; never a label.
    nan = clip.copy(); nan[100] = np.nan
    inf = clip.copy(); inf[100] = np.inf
    bad = {
        "missing": files["missing"], "truncated_wav": files["truncated_wav"], "truncated_flac": files["truncated_flac"],
        "garbage": files["garbage"], "empty_file": files["empty_file"], "zero_file": files["zero_wav"],
        "empty": np.zeros(0, np.float32), "zeros": np.zeros(16000, np.float32), "nan": nan, "inf": inf,
        "int16": (clip * 32767).astype(np.int16), "no_rate": {"array": clip}, "bad_key": {"array": clip,
        "sampling_rate": 16000, "transcripts": "x"}, "too_long": ("long", {"segment_seconds": None}),
        "segment_too_long": (clip, {"segment_seconds": 1000}), "hop_too_long": ("long", {"hop_seconds": 20}),
        "batch_missing": [files["wav"], clip, files["missing"]], "batch_nan": [clip, nan],
        "text_mismatch": ([clip, clip], {"transcript": ["a"]}), "wrong_type": 3.5,
    }
    results["errors"] = {}
    for name, value in bad.items():
        value, kwargs = value if isinstance(value, tuple) else (value, {})
        value = long if isinstance(value, str) and value == "long" else value
        try:
            results["errors"][name] = {"returned": clf(value, **kwargs)}
        except Exception as error:
            results["errors"][name] = {"type": type(error).__name__, "message": str(error)}

    # Registering for "audio-classification" leaves other models with transformers' own pipeline.
    other = pipeline("audio-classification", model=w2v)
    results["other"] = [type(other).__name__, other(clip)]
    print(json.dumps(results))
    """
) % {"long": SECONDS_LONG, "silence_start": SILENCE[0], "silence_end": SILENCE[1]}


def clean_env(tmp) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # one thread: the tiny model gains nothing from more, and OpenMP spin-waits badly when other jobs share the cores
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp / "modules"), TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")
    return env


def write_files(folder) -> tuple[dict, np.ndarray]:
    """A 2 s clip on the 16-bit grid (so WAV/FLAC hold exactly the array) in several formats, and broken files."""
    clip = np.round(tone(2.0, 300, seed=1) * 32767) / 32767
    clip = clip.astype(np.float32)
    files = {name: str(folder / name) for name in (
        "clip.wav", "clip.flac", "clip48.wav", "clip.ogg", "clip.mp3", "truncated.wav", "truncated.flac",
        "garbage.wav", "empty.wav", "zeros.wav")}
    sf.write(files["clip.wav"], clip, 16000, subtype="PCM_16")
    sf.write(files["clip.flac"], clip, 16000, subtype="PCM_16")
    sf.write(files["clip48.wav"], resample_poly(clip, 3, 1).astype(np.float32), 48000, subtype="FLOAT")
    sf.write(files["clip.ogg"], clip, 16000, format="OGG", subtype="VORBIS")
    sf.write(files["clip.mp3"], clip, 16000, format="MP3", subtype="MPEG_LAYER_III")
    sf.write(files["zeros.wav"], np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    for name in ("wav", "flac"):
        data = open(files[f"clip.{name}"], "rb").read()
        open(files[f"truncated.{name}"], "wb").write(data[: len(data) // 2])
    open(files["garbage.wav"], "wb").write(b"this is not audio at all\n" * 50)
    open(files["empty.wav"], "wb").close()
    keys = {"wav": "clip.wav", "flac": "clip.flac", "wav48": "clip48.wav", "ogg": "clip.ogg", "mp3": "clip.mp3",
            "truncated_wav": "truncated.wav", "truncated_flac": "truncated.flac", "garbage": "garbage.wav",
            "empty_file": "empty.wav", "zero_wav": "zeros.wav"}
    files = {key: files[name] for key, name in keys.items()}
    files["missing"] = str(folder / "no-such-file.wav")
    return files, clip


def save_other_audio_classifier(folder) -> None:
    """A tiny wav2vec2 audio classifier: a model that transformers' own audio-classification pipeline serves."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    config = Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, num_labels=3,
    )
    Wav2Vec2ForSequenceClassification(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor().save_pretrained(folder)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny model saved once, copied elsewhere, with audio files and its direct (no pipeline) probabilities."""
    tmp = tmp_path_factory.mktemp("pipeline")
    processor, model = save_tiny_model(tmp / "saved")
    folder = tmp / "elsewhere" / "emosllm-pipeline"
    shutil.copytree(tmp / "saved", folder)
    save_other_audio_classifier(tmp / "w2v")
    files, clip = write_files(tmp)
    model.audio_encoder.bf16_inference = False  # float32, as the pipelines in CHECK
    with torch.no_grad():
        direct = model(**processor(clip)).logits.softmax(-1)[0]
    return {"tmp": tmp, "folder": folder, "files": files, "clip": clip, "direct": direct, "config": model.config}


@pytest.fixture(scope="module")
def results(saved):
    tmp = saved["tmp"]
    (tmp / "check.py").write_text(CHECK)
    run = subprocess.run(
        [sys.executable, "check.py", str(saved["folder"]), json.dumps(saved["files"]), str(tmp / "w2v")],
        cwd=tmp, env=clean_env(tmp), capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-5000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def as_vector(output: list[dict]) -> torch.Tensor:
    """[{score, label}] -> probabilities in label-id order."""
    scores = {item["label"]: item["score"] for item in output}
    return torch.tensor([scores[label] for label in LABELS])


def assert_transformers_format(output, num: int = len(LABELS)):
    """What transformers' audio-classification pipeline returns: [{"score": float, "label": str}], best first."""
    assert isinstance(output, list) and len(output) == num
    for item in output:
        assert list(item) == ["score", "label"]
        assert isinstance(item["score"], float) and item["label"] in LABELS
    scores = [item["score"] for item in output]
    assert scores == sorted(scores, reverse=True)


# ----------------------------------------------------------------------------------------------------------------------
# Loading and output format
# ----------------------------------------------------------------------------------------------------------------------
def test_saved_folder_carries_the_pipeline(saved):
    config = json.loads((saved["folder"] / "config.json").read_text())
    assert config["custom_pipelines"] == {
        "audio-classification": {
            "impl": "pipeline_emosllm.EmoSLLMAudioClassificationPipeline",
            "pt": ["AutoModelForAudioClassification"],
            "type": "audio",
        }
    }
    assert (saved["folder"] / "pipeline_emosllm.py").exists() and (saved["folder"] / "cli_emosllm.py").exists()


def test_importing_the_pipeline_registers_nothing():
    """transformers' own `audio-classification` entry is untouched: the folder's config names this pipeline."""
    import importlib.util

    from transformers.pipelines import PIPELINE_REGISTRY

    before = dict(PIPELINE_REGISTRY.supported_tasks["audio-classification"])
    # The module run afresh under another name: a reload would replace the module's objects (its `_UNSET`) under the
    # pipelines other tests hold, which then took every default for a given value.
    path = os.path.join(REPO, "pipeline_emosllm.py")
    spec = importlib.util.spec_from_file_location("pipeline_emosllm_run_again", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    after = PIPELINE_REGISTRY.supported_tasks["audio-classification"]
    impl = after["impl"]  # a class, or its dotted name (newer transformers)
    assert after == before and getattr(impl, "__name__", str(impl).rsplit(".", 1)[-1]) == "AudioClassificationPipeline"


def test_both_pipeline_calls_load_the_emosllm_pipeline(results):
    assert results["classes"] == ["EmoSLLMAudioClassificationPipeline"] * 2 + ["EmoSLLMProcessor"]


def test_output_matches_transformers_format_and_the_model(results, saved):
    output = results["forms"]["path"]
    assert_transformers_format(output)
    assert math.isclose(sum(item["score"] for item in output), 1.0, rel_tol=1e-5)
    torch.testing.assert_close(as_vector(output), saved["direct"], atol=1e-5, rtol=0)
    # transformers' own pipeline on another model: the same structure
    name, other = results["other"]
    assert name == "AudioClassificationPipeline"
    assert [list(item) for item in other] == [["score", "label"]] * len(other)


def test_top_k(results):
    assert_transformers_format(results["top_k"]["1"], 1)
    assert_transformers_format(results["top_k"]["3"], 3)
    assert_transformers_format(results["top_k"]["100"], len(LABELS))  # capped at the number of classes
    assert_transformers_format(results["named_default"], 2)  # given when building the pipeline
    assert_transformers_format(results["named_all"], len(LABELS))  # top_k=None: all
    assert results["top_k"]["3"] == results["forms"]["path"][:3]


# ----------------------------------------------------------------------------------------------------------------------
# Input forms
# ----------------------------------------------------------------------------------------------------------------------
def test_every_input_form_gives_the_same_scores(results, saved):
    reference = as_vector(results["forms"]["path"])
    for name, output in results["forms"].items():
        assert_transformers_format(output)
        if name in ("wav48_path", "dict48"):
            continue  # resampled: checked below
        torch.testing.assert_close(as_vector(output), reference, atol=1e-5, rtol=0, msg=name)
    # 48 kHz audio as a file, as a dict, and resampled beforehand: the same scores
    torch.testing.assert_close(as_vector(results["forms"]["dict48"]), as_vector(results["forms"]["wav48_path"]))
    torch.testing.assert_close(as_vector(results["forms"]["dict48"]), as_vector(results["from48"]), atol=1e-5, rtol=0)
    # and close to the 16 kHz original it was made from (resampling both ways filters the top of the band)
    torch.testing.assert_close(as_vector(results["forms"]["dict48"]), reference, atol=5e-3, rtol=0)


def test_batches_give_the_same_scores_in_order(results):
    assert len(results["batched"]) == len(results["forms"])
    for output, name in zip(results["batched"], results["forms"]):
        torch.testing.assert_close(as_vector(output), as_vector(results["forms"][name]), atol=1e-5, rtol=0, msg=name)
    assert len(results["batched_bs1"]) == 2
    torch.testing.assert_close(as_vector(results["batched_bs1"][1]), as_vector(results["forms"]["path"]))


def test_lossy_and_ffmpeg_formats_decode(results):
    for name, output in results["lossy"].items():
        assert_transformers_format(output["scores"])
        assert abs(output["duration"] - 2.0) < 0.1, name


def test_transcript_and_text_features(results):
    text = results["text"]
    assert as_vector(text["dict"]).tolist() == pytest.approx(as_vector(text["kwargs"]).tolist(), abs=1e-6)
    assert as_vector(text["dict"]).tolist() != pytest.approx(as_vector(text["none"]).tolist(), abs=1e-4)
    assert as_vector(text["list"][0]).tolist() == pytest.approx(as_vector(text["dict"]).tolist(), abs=1e-5)
    assert as_vector(text["list"][1]).tolist() == pytest.approx(as_vector(text["none"]).tolist(), abs=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Long recordings
# ----------------------------------------------------------------------------------------------------------------------
def check_timeline(result, duration, segment, hop):
    timeline = result["timeline"]
    assert result["duration"] == pytest.approx(duration, abs=1e-3)
    assert timeline[0]["start"] == 0.0 and timeline[-1]["end"] == pytest.approx(duration, abs=1e-3)
    for before, after in zip(timeline, timeline[1:]):
        assert after["start"] <= before["end"] + 1e-3  # no gap
        assert 0 < after["start"] - before["start"] <= hop + 1e-3  # starts at most a hop apart
    for entry in timeline:
        assert entry["end"] - entry["start"] == pytest.approx(segment, abs=1e-3)
        assert list(entry) == ["start", "end", "label", "score", "scores", "speech"]
        # Speech detection is off here: a window's speech is its length (tests/test_fuzz_inference.py: detection on).
        assert entry["speech"] == pytest.approx(segment, abs=1e-3)
    assert len(timeline) == math.ceil((duration - segment) / hop) + 1


def expected_clip_scores(timeline, duration) -> torch.Tensor:
    """Each window weighs the stretch it owns (overlaps split in the middle); silent windows weigh nothing."""
    cuts = [0.0] + [(a["end"] + b["start"]) / 2 for a, b in zip(timeline, timeline[1:])] + [duration]
    total, weight = torch.zeros(len(LABELS), dtype=torch.float64), 0.0
    for entry, left, right in zip(timeline, cuts, cuts[1:]):
        if entry["label"] is not None:
            total += (right - left) * as_vector(entry["scores"]).double()
            weight += right - left
    return (total / weight).float()


def test_three_minute_clip_timeline(results):
    result = results["long"]
    check_timeline(result, SECONDS_LONG, SEGMENT, SEGMENT)
    timeline = result["timeline"]
    assert len(timeline) == 18 and [e["start"] for e in timeline] == [10.0 * i for i in range(18)]
    silent = [e for e in timeline if e["label"] is None]
    assert [(e["start"], e["end"]) for e in silent] == [(60.0, 70.0)]  # fully inside the silent stretch
    assert silent[0]["score"] is None and silent[0]["scores"] == []
    for entry in timeline:
        if entry["label"] is not None:
            assert_transformers_format(entry["scores"])
            assert entry["label"] == entry["scores"][0]["label"] and entry["score"] == entry["scores"][0]["score"]
    assert_transformers_format(result["scores"])
    assert result["label"] == result["scores"][0]["label"]
    torch.testing.assert_close(as_vector(result["scores"]), expected_clip_scores(timeline, SECONDS_LONG))
    assert sum(item["score"] for item in result["scores"]) == pytest.approx(1.0, abs=1e-5)
    # the default output stays transformers' list: the whole-clip scores
    assert_transformers_format(results["long_default"])
    torch.testing.assert_close(as_vector(results["long_default"]), as_vector(result["scores"]))


def test_overlapping_and_uneven_windows(results):
    check_timeline(results["long_hop"], 40.0, SEGMENT, 4.0)  # starts 0, 4, ..., 28, 30
    torch.testing.assert_close(
        as_vector(results["long_hop"]["scores"]), expected_clip_scores(results["long_hop"]["timeline"], 40.0)
    )
    check_timeline(results["odd"], 23.7, SEGMENT, SEGMENT)  # 3 windows spread evenly, the last ends at 23.7 s
    check_timeline(results["short_segments"], 2.0, 0.5, 0.5)


def test_short_clip_timeline_is_the_clip(results):
    result = results["timeline_short"]
    assert result["scores"] == results["forms"]["path"]
    assert result["timeline"] == [{"start": 0.0, "end": 2.0, "label": result["label"], "score": result["score"],
                                   "scores": result["scores"], "speech": 2.0}]
    assert result["speech"] == 2.0


# ----------------------------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------------------------
BAD = {
    "missing": ("FileNotFoundError", r"no-such-file\.wav.*check the path"),
    "truncated_wav": ("ValueError", r"truncated\.wav: the audio file is truncated"),
    "truncated_flac": ("ValueError", r"truncated\.flac: the audio file is damaged or truncated"),
    "garbage": ("ValueError", r"garbage\.wav: could not decode the audio"),
    "empty_file": ("ValueError", r"empty\.wav: the file is empty"),
    "zero_file": ("ValueError", r"zeros\.wav: the clip is silent"),
    "empty": ("ValueError", r"^inputs: the clip is empty"),
    "zeros": ("ValueError", r"^inputs: the clip is silent"),
    "nan": ("ValueError", r"^inputs: the clip has NaN or infinite samples"),
    "inf": ("ValueError", r"^inputs: the clip has NaN or infinite samples"),
    "int16": ("ValueError", r"^inputs: samples have dtype int16.*floating-point"),
    "no_rate": ("ValueError", r"^inputs: a dict input needs.*sampling_rate"),
    "bad_key": ("ValueError", r"^inputs: unknown keys \['transcripts'\]"),
    "too_long": ("ValueError", r"^inputs: the clip lasts 180\.0 s, longer than the model's 30 s.*segment_seconds"),
    "segment_too_long": ("ValueError", r"segment_seconds=1000 must lie in \(0, 30\]"),
    "hop_too_long": ("ValueError", r"hop_seconds=20 is longer than segment_seconds"),
    "batch_missing": ("FileNotFoundError", r"^inputs\[2\] \(.*no-such-file\.wav\): no such audio file"),
    "batch_nan": ("ValueError", r"^inputs\[1\]: the clip has NaN"),
    "text_mismatch": ("ValueError", r"transcript: got 1 values for 2 inputs"),
    "wrong_type": ("TypeError", r"^inputs: got a float; pass a file path"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_naming_it(results, case):
    error = results["errors"][case]
    assert "returned" not in error, f"{case} gave a result: {error}"
    kind, pattern = BAD[case]
    assert error["type"] == kind, error
    assert __import__("re").search(pattern, error["message"]), error["message"]


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------
def test_command_line_jsonl(saved, tmp_path):
    files = saved["files"]
    run = subprocess.run(
        [sys.executable, "-m", "cli_emosllm", "--model", str(saved["folder"]), "--no_speech_detection", files["wav"], files["flac"],
         files["missing"], "--format", "jsonl", "--top_k", "2"],
        cwd=REPO, env=clean_env(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 1, run.stderr[-3000:]  # one file failed
    lines = [json.loads(line) for line in run.stdout.strip().splitlines()]
    assert [line["file"] for line in lines] == [files["wav"], files["flac"], files["missing"]]
    for line in lines[:2]:
        assert_transformers_format(line["scores"], 2)
        assert line["label"] == line["scores"][0]["label"] and line["duration"] == 2.0
        assert "timeline" not in line  # a timeline only for recordings longer than one window
    assert "no such audio file" in lines[2]["error"] and "no-such-file.wav" in run.stderr

    # Inside the saved folder (as downloaded): its own copy of the command line, with the folder as the model.
    inside = subprocess.run(
        [sys.executable, "cli_emosllm.py", "--no_speech_detection", files["wav"], "--format", "jsonl"],
        cwd=saved["folder"], env=clean_env(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert inside.returncode == 0, inside.stderr[-3000:]
    assert json.loads(inside.stdout.strip().splitlines()[-1])["label"] == lines[0]["label"]


def test_command_line_table(saved, capsys, monkeypatch, tmp_path):
    import cli_emosllm

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    long = tone(25.0, 200, seed=3)
    sf.write(tmp_path / "long.wav", long, 16000, subtype="PCM_16")
    code = cli_emosllm.main(
        ["--model", str(saved["folder"]), saved["files"]["wav"], str(tmp_path / "long.wav"), "--timeline",
         "--no_speech_detection"]
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].split()[:4] == ["file", "seconds", "label", "score"]
    assert out[1].startswith(saved["files"]["wav"]) and "2.00" in out[1]
    assert out[2].startswith(str(tmp_path / "long.wav")) and "25.00" in out[2]
    assert [line.split()[0] for line in out[3:]] == ["0.0-10.0", "7.5-17.5", "15.0-25.0"]  # the timeline rows


def test_automatic_transcripts_per_window_and_a_warning_when_a_transcript_reader_gets_none(monkeypatch, caplog):
    """use_transcript='auto': every window of a long recording is transcribed on its own; 'given' without one warns."""
    import transcription_emosllm
    from conftest import tiny_processor, tone

    from pipeline_emosllm import EmoSLLMAudioClassificationPipeline

    heard = []

    def fake_transcribe(audios, model_name):
        heard.extend(len(a) for a in audios)
        return ["kids are talking"] * len(audios)

    monkeypatch.setattr(transcription_emosllm, "transcribe", fake_transcribe)
    processor, config = tiny_processor(use_transcript="auto")
    torch.manual_seed(0)
    classifier = EmoSLLMAudioClassificationPipeline(
        model=EmoSLLMForSpeechEmotionRecognition(config), processor=processor, detect_speech=False)
    result = classifier(tone(25.0, 300), return_timeline=True)
    assert len(result["timeline"]) == 3 and heard == [10 * 16000] * 3  # each 10 s window, transcribed alone
    heard.clear()
    classifier(tone(2.0, 300), transcript="the door")
    assert heard == []  # a given transcript is used as it is

    processor, config = tiny_processor(use_transcript="given")
    classifier = EmoSLLMAudioClassificationPipeline(
        model=EmoSLLMForSpeechEmotionRecognition(config), processor=processor, detect_speech=False)
    with caplog.at_level("WARNING"):
        classifier(tone(2.0, 300))
        classifier(tone(2.0, 400))
    warnings = [r.message for r in caplog.records if "none was given" in r.message]
    assert len(warnings) == 1 and "use_transcript='auto'" in warnings[0]  # said once, with the way out


def test_a_model_answered_by_its_probe_alone_gives_its_scores_without_running_the_llm_or_asr(monkeypatch, caplog):
    """With the probe's mix weight 1 the answer is the probe's: the pipeline returns the model's scores, and runs
    neither the LLM nor Whisper (use_transcript='auto'), whose transcript only the LLM reads; a transcript given is
    said (once) to change nothing."""
    import transcription_emosllm
    from conftest import fit_random_probe, tiny_processor

    from pipeline_emosllm import EmoSLLMAudioClassificationPipeline

    heard = []
    monkeypatch.setattr(transcription_emosllm, "transcribe", lambda audios, model_name: heard.extend(audios) or
                        ["kids are talking by the door"] * len(audios))
    processor, config = tiny_processor(mapper="probe", mix_weight=1.0, use_transcript="auto")
    model = EmoSLLMForSpeechEmotionRecognition(config).eval()
    fit_random_probe(model)
    clips = [tone(1.5, 220, seed=1), tone(2.5, 330, seed=2)]
    with torch.no_grad():
        expected = model(**processor(clips)).logits.softmax(-1)  # the whole model, the LLM included
    calls, prompts = [], []
    for module in model.language_model.modules():
        module.register_forward_pre_hook(lambda *_: calls.append(1))
    text_inputs = processor.text_inputs
    monkeypatch.setattr(processor, "text_inputs", lambda *a, **k: prompts.append(1) or text_inputs(*a, **k))
    classifier = EmoSLLMAudioClassificationPipeline(model=model, processor=processor, detect_speech=False)
    outputs = classifier(clips, top_k=None, batch_size=2)
    assert not calls and not heard and not prompts  # nor a prompt built for it
    torch.testing.assert_close(torch.stack([as_vector(o) for o in outputs]), expected, atol=1e-6, rtol=0)
    given = [classifier(clips[0], transcript="kids are talking by the door", top_k=None) for _ in range(2)]
    assert [r.message for r in caplog.records].count("This model's answer is its probe's (mix weight 1), which reads "
                                                     "the audio alone: the transcript and text features given do not "
                                                     "change it.") == 1
    assert as_vector(given[0]).tolist() == as_vector(classifier(clips[0], top_k=None)).tolist()
    model.config.mapper_config["mix_weight"] = 0.5  # the answer reads the LLM and the transcript: both run
    classifier(clips[0])
    assert calls and len(heard) == 1 and prompts


def test_the_llm_takes_the_shared_head_under_its_own_name_for_the_cache_and_nothing_warns():
    """transformers 5.24 renamed the LLM's `past_key_values` to `cache` (the old name warns on every call and goes in
    5.40): the shared prompt head passes the name the installed release takes (`.ci/transformers_range.sh` runs this
    file under 5.24 too), with the head shared and the scores of one full pass."""
    import warnings

    from conftest import tiny_model

    from pipeline_emosllm import EmoSLLMAudioClassificationPipeline
    from prompt_head_emosllm import cache_keyword

    processor, model = tiny_model()
    llm_class = type(model.language_model.model)
    assert cache_keyword(llm_class.forward) in inspect.signature(llm_class.forward).parameters
    classifier = EmoSLLMAudioClassificationPipeline(model=model, processor=processor, detect_speech=False, top_k=None)
    clips = [tone(1.5, 220, seed=1), tone(2.5, 330, seed=2)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shared = [as_vector(output) for output in classifier(clips, batch_size=2)]
    assert model.prompt_head.kept is not None  # the head ran once and reached the prompts through the cache
    assert not [w for w in caught if "past_key_values" in str(w.message)]
    model.prompt_head.min_shared_prefix = 10**9  # no head shared: one full pass over each prompt, no cache
    with torch.no_grad():
        whole = model(**processor(clips)).logits.softmax(-1)
    torch.testing.assert_close(torch.stack(shared), whole, atol=1e-5, rtol=0)
