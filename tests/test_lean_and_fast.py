"""The fast inference path (prompt cache, merged LoRA) changes no score; the lean save (only what EmoSLLM trained and
fitted, LoRA in peft's layout, backbones by Hub id) loads elsewhere and scores like the full folder."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import LABELS, save_tiny_backbones, tone
from safetensors import safe_open

from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition, bf16_is_native
from processing_emosllm import EmoSLLMProcessor

TINY_IDS = {"audio_model_id": "tiny-org/whisper-encoder", "text_model_id": "tiny-org/llama"}


def trained_like(model: EmoSLLMForSpeechEmotionRecognition, batch, seed: int = 0) -> None:
    """What training leaves: feature statistics and a non-zero LoRA (a fresh LoRA's B is zero, so merging it would
    test nothing)."""
    with torch.no_grad():
        states = model.audio_encoder.layer_states(batch["input_features"], batch["audio_lengths"])
        model.audio_encoder.set_feature_statistics(states)
        generator = torch.Generator().manual_seed(seed)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))


def clips(count: int = 3) -> list:
    return [tone(0.8 + 0.45 * i, 200 * (i + 1), seed=i) for i in range(count)]


def build_tiny(root: Path) -> tuple[EmoSLLMProcessor, EmoSLLMForSpeechEmotionRecognition]:
    """A tiny EmoSLLM built from tiny backbones saved as folders under `root` (as Hub checkpoints would be), its
    backbones named by the Hub ids `TINY_IDS`, with what training leaves (`trained_like`)."""
    save_tiny_backbones(root)
    processor = EmoSLLMProcessor.from_backbones(
        str(root / "encoder"), str(root / "llm"), labels=LABELS, adapter_hidden_size=32, adapter_num_heads=2,
        num_queries=4, lora_rank=4, lora_alpha=8, **TINY_IDS,
    )
    torch.manual_seed(0)
    model = EmoSLLMForSpeechEmotionRecognition.from_backbones(processor.config, str(root / "encoder"), str(root / "llm"))
    trained_like(model, processor(clips()))
    return processor, model.eval()


@pytest.fixture
def tiny(tmp_path):
    processor, model = build_tiny(tmp_path / "backbones")
    return processor, model, tmp_path / "backbones"


def probabilities(model, processor, audios, transcripts) -> torch.Tensor:
    with torch.no_grad():
        return model(**processor(audios, transcript=transcripts)).logits.softmax(-1)


def test_prompt_cache_and_merged_lora_give_the_plain_scores(tiny):
    processor, model, _ = tiny
    audios = clips()
    texts = ["kids are talking by the door", None, "kids are talking"]
    model.prompt_cache_enabled = False
    plain_batch = probabilities(model, processor, audios, texts)
    plain_single = [probabilities(model, processor, [a], [t]) for a, t in zip(audios, texts)]

    model.prompt_cache_enabled = True
    model.merge_lora()
    assert model.lora_merged
    for _ in range(2):  # the second round reuses the head kept by the first
        fast_single = [probabilities(model, processor, [a], [t]) for a, t in zip(audios, texts)]
        for fast, plain in zip(fast_single, plain_single):
            torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)
        assert model._prompt_cache is not None
    torch.testing.assert_close(probabilities(model, processor, audios, texts), plain_batch, atol=1e-5, rtol=0)
    # The kept head is the prompt's constant part: one clip's own tokens are few.
    kept_ids = model._prompt_cache[0]
    prompt = processor([audios[0]], transcript=[texts[0]])["input_ids"][0]
    assert torch.equal(prompt[: len(kept_ids)], kept_ids) and len(prompt) - len(kept_ids) < len(prompt) / 2


def test_training_takes_the_merge_and_the_cache_back(tiny):
    processor, model, _ = tiny
    batch = processor(clips(2), labels=LABELS[:2])
    with torch.no_grad():
        model.merge_lora()
        model(**batch)
    model.train()
    assert not model.lora_merged and model._prompt_cache is None
    model(**batch).loss.backward()  # LoRA trains again
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_A" in n)


LOAD_ELSEWHERE = textwrap.dedent(
    """
    import json, sys, numpy as np, torch
    from transformers import AutoModelForAudioClassification, AutoProcessor
    folder, data, ids = sys.argv[1], np.load(sys.argv[2]), json.loads(sys.argv[3])
    try:
        import modeling_emosllm  # the code must come from the folder
        raise SystemExit("project importable")
    except ImportError:
        pass
    model = AutoModelForAudioClassification.from_pretrained(folder, trust_remote_code=True, **ids).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    audios = [data[k] for k in sorted(data.files)]
    with torch.no_grad():
        probs = model(**processor(audios, transcript=[None] * len(audios))).logits.softmax(-1)
    print(json.dumps(probs.tolist()))
    """
)


def load_elsewhere(folder: Path, tmp_path: Path, audios, ids: dict | None = None) -> subprocess.CompletedProcess:
    """Copies `folder` to a new place and scores `audios` from it in a fresh process (no project on the path)."""
    elsewhere = tmp_path / "elsewhere" / folder.name
    shutil.copytree(folder, elsewhere)
    import numpy as np

    np.savez(tmp_path / "audio.npz", **{f"clip{i}": a for i, a in enumerate(audios)})
    (tmp_path / "load.py").write_text(LOAD_ELSEWHERE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, "load.py", str(elsewhere), "audio.npz", json.dumps(ids or {})], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300,
    )


def test_lean_folder_holds_only_what_trained_and_loads_elsewhere(tiny, tmp_path):
    processor, model, root = tiny
    audios = clips()
    expected = probabilities(model, processor, audios, [None] * 3)
    lean = tmp_path / "lean"
    model.save_pretrained(lean)
    processor.save_pretrained(lean)
    with safe_open(lean / "model.safetensors", framework="pt") as handle:
        keys = set(handle.keys())
    assert keys and not keys & set(model.backbone_keys()) and not any("lora_" in k for k in keys)
    assert "audio_encoder.feature_mean" in keys and any(k.startswith("adapter.") for k in keys)
    config = json.loads((lean / "config.json").read_text())
    assert config["audio_model_id"] == TINY_IDS["audio_model_id"] and config["text_model_id"] == TINY_IDS["text_model_id"]
    saved_text = "".join(p.read_text(errors="ignore") for p in lean.rglob("*.json"))
    assert str(tmp_path) not in saved_text  # no path of this machine in any saved file

    run = load_elsewhere(lean, tmp_path, audios,
                         {"audio_model_id": str(root / "encoder"), "text_model_id": str(root / "llm")})
    assert run.returncode == 0, run.stderr[-3000:]
    torch.testing.assert_close(torch.tensor(json.loads(run.stdout.strip().splitlines()[-1])), expected,
                               atol=1e-6, rtol=0)


def test_lean_lora_is_peft_readable_and_adapts_the_plain_llm_alike(tiny, tmp_path):
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    processor, model, root = tiny
    model.save_pretrained(tmp_path / "lean")
    adapter_dir = tmp_path / "lean" / "lora"
    config = PeftConfig.from_pretrained(adapter_dir)
    assert config.peft_type == "LORA" and config.r == model.config.lora_rank
    assert config.base_model_name_or_path == TINY_IDS["text_model_id"]
    # peft loads the adapter onto the plain LLM: the same logits as EmoSLLM's own adapted LLM.
    llm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(root / "llm"), adapter_dir).eval()
    ids = processor([tone(1.0, 300)])["input_ids"][:, :12]
    with torch.no_grad():
        torch.testing.assert_close(llm(input_ids=ids).logits, model.language_model(input_ids=ids).logits,
                                   atol=1e-5, rtol=0)


def test_lean_folder_whose_backbone_is_missing_says_which_and_how(tiny, tmp_path, monkeypatch):
    processor, model, _ = tiny
    model.save_pretrained(tmp_path / "lean")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"audio encoder 'tiny-org/whisper-encoder' \(config.audio_model_id\)"
                                         r"[\s\S]*audio_model_id="):
        EmoSLLMForSpeechEmotionRecognition.from_pretrained(tmp_path / "lean")


def test_full_weights_are_bf16_unless_float32_is_asked(tiny, tmp_path):
    processor, model, _ = tiny
    audios = clips()
    expected = probabilities(model, processor, audios, [None] * 3)
    for dtype, tolerance in ((torch.bfloat16, 2e-2), (torch.float32, 1e-6)):
        folder = tmp_path / str(dtype)
        model.save_pretrained(folder, full_weights=True, dtype=dtype)
        with safe_open(folder / "model.safetensors", framework="pt") as handle:
            backbone = handle.get_tensor("language_model.model.layers.0.mlp.up_proj.base_layer.weight")
            own = handle.get_tensor("audio_encoder.feature_std")
        assert backbone.dtype == dtype and own.dtype == torch.float32
        loaded = EmoSLLMForSpeechEmotionRecognition.from_pretrained(folder).eval()
        assert loaded.dtype == torch.float32  # computed in float32 on CPU
        torch.testing.assert_close(probabilities(loaded, processor, audios, [None] * 3), expected,
                                   atol=tolerance, rtol=0)


def with_bf16_variant(llm_folder: Path, out: Path) -> Path:
    """A copy of the LLM checkpoint `llm_folder` with a bf16 copy of its weights (the `bf16` variant), as the
    bundled SmolLM2 is converted (backbones_emosllm.convert_gguf_llm)."""
    from transformers import AutoModelForCausalLM

    from backbones_emosllm import save_bf16_variant

    shutil.copytree(llm_folder, out)
    save_bf16_variant(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32), str(out))
    return out


@pytest.mark.parametrize("native", [True, False])
def test_lean_llm_loads_in_bf16_where_native_and_answers_as_train_py_scores(tiny, tmp_path, monkeypatch, native):
    import modeling_emosllm

    processor, model, root = tiny
    model.audio_encoder.bf16_inference = False  # the LLM's dtype is the point here; the encoder's is tested below
    audios = clips()
    float32 = probabilities(model, processor, audios, [None] * 3)
    llm = with_bf16_variant(root / "llm", tmp_path / "llm_bf16")
    model.save_pretrained(tmp_path / "lean")
    monkeypatch.setattr(modeling_emosllm, "bf16_is_native", lambda device_type=None: native)
    ids = {"audio_model_id": str(root / "encoder"), "text_model_id": str(llm)}
    loaded = EmoSLLMForSpeechEmotionRecognition.from_pretrained(tmp_path / "lean", **ids).eval()
    loaded.audio_encoder.bf16_inference = False
    llm_dtype = torch.bfloat16 if native else torch.float32
    params = dict(loaded.language_model.named_parameters())
    assert {p.dtype for n, p in params.items() if "lora_" not in n} == {llm_dtype}
    assert {p.dtype for n, p in params.items() if "lora_" in n} == {torch.float32}
    assert {b.dtype for b in loaded.language_model.buffers()} == {torch.float32}  # rotary frequencies
    assert {p.dtype for n, p in loaded.named_parameters() if not n.startswith("language_model.")} == {torch.float32}
    loaded.merge_lora()  # as the pipeline does
    delivered = probabilities(loaded, processor, audios, [None] * 3)
    with torch.no_grad():  # train.py's test clips come with their label words: the LLM's loss is taken too
        assert torch.isfinite(loaded(**processor(audios, labels=LABELS[:3])).loss)
    torch.testing.assert_close(delivered, float32, atol=2e-2 if native else 1e-6, rtol=0)
    # What train.py scores its test clips with: the trained model in the loaded folder's form, exactly.
    model.cast_language_model(modeling_emosllm.language_model_load_kwargs(str(llm))["dtype"])
    model.merge_lora()
    torch.testing.assert_close(probabilities(model, processor, audios, [None] * 3), delivered, atol=1e-6, rtol=0)
    # Asked for float32, a lean folder keeps every weight in float32 even where bf16 is native.
    asked = EmoSLLMForSpeechEmotionRecognition.from_pretrained(tmp_path / "lean", dtype="float32", **ids)
    assert {p.dtype for p in asked.parameters()} == {torch.float32}
    with pytest.raises(ValueError, match=r"dtype='float23' is not a torch dtype: pass torch.float32"):
        EmoSLLMForSpeechEmotionRecognition.from_pretrained(tmp_path / "lean", dtype="float23", **ids)


def test_a_merged_model_saves_its_lora_once(tiny, tmp_path):
    processor, model, _ = tiny
    audios = clips(2)
    expected = probabilities(model, processor, audios, [None, None])
    model.merge_lora()
    model.save_pretrained(tmp_path / "full", full_weights=True, dtype=torch.float32)
    assert model.lora_merged  # saving leaves the model as it was
    loaded = EmoSLLMForSpeechEmotionRecognition.from_pretrained(tmp_path / "full").eval()
    torch.testing.assert_close(probabilities(loaded, processor, audios, [None, None]), expected, atol=1e-5, rtol=0)


def test_backbones_without_a_hub_id_are_saved_whole_with_a_warning(tiny, tmp_path, caplog):
    processor, model, _ = tiny
    model.config.text_model_id = None
    with pytest.raises(ValueError, match="lean save names its backbones by Hub id"):
        model.save_pretrained(tmp_path / "lean", full_weights=False)
    model.save_pretrained(tmp_path / "whole")
    with safe_open(tmp_path / "whole" / "model.safetensors", framework="pt") as handle:
        tied = {"language_model.lm_head.weight"}  # the LLM's head is its embedding table, saved once
        assert set(model.backbone_keys()) - tied <= set(handle.keys())
    assert "not a Hub id" in caplog.text


def test_a_training_checkpoint_loads_and_an_old_one_says_how_to_resume(tiny, tmp_path):
    processor, model, root = tiny
    audios = clips(2)
    expected = probabilities(model, processor, audios, [None, None])
    backbone = set(model.backbone_keys())
    checkpoint = tmp_path / "checkpoints" / "checkpoint-12"
    # What train.py's Trainer writes: everything but the backbones, LoRA inline.
    model.save_pretrained(checkpoint, state_dict={k: v for k, v in model.state_dict().items() if k not in backbone})
    ids = {"audio_model_id": str(root / "encoder"), "text_model_id": str(root / "llm")}
    loaded = EmoSLLMForSpeechEmotionRecognition.from_pretrained(checkpoint, **ids)
    torch.testing.assert_close(probabilities(loaded, processor, audios, [None, None]), expected, atol=1e-6, rtol=0)
    # An older checkpoint held the trainable weights only (no fitted statistics).
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    old = tmp_path / "old" / "checkpoint-3"
    model.save_pretrained(old, state_dict={k: v for k, v in model.state_dict().items() if k in trainable})
    with pytest.raises(ValueError, match=r"missing \[[\s\S]*train.py checkpoint[\s\S]*--resume"):
        EmoSLLMForSpeechEmotionRecognition.from_pretrained(old, **ids)


def test_transcripts_inform_labels_only_where_the_words_differ_by_emotion():
    from training.transcripts import transcripts_inform_labels

    scripted = [{"label": label, "transcript": sentence}  # every sentence in every emotion (RAVDESS)
                for sentence in ("Kids are talking by the door.", "Dogs are sitting by the door")
                for label in LABELS for _ in range(4)]
    assert transcripts_inform_labels(scripted, LABELS)[0] is False
    worded = [{"label": label, "transcript": f"I feel so {label} {i % 3}"} for label in LABELS for i in range(6)]
    assert transcripts_inform_labels(worded, LABELS)[0] is True
    # The smoke corpus: each sentence is read in the two emotions of its valence (the words give half the answer).
    valence = {"neutral": "good", "happy": "good", "sad": "bad", "angry": "bad"}
    halves = [{"label": label, "transcript": f"the news is {valence[label]} {i % 6}"} for label in LABELS
              for i in range(12)]
    assert transcripts_inform_labels(halves, LABELS)[0] is True
    free = [{"label": LABELS[i % 4], "transcript": f"sentence number {i}"} for i in range(40)]
    assert transcripts_inform_labels(free, LABELS)[0] is True  # unscripted speech: the words may matter
    assert transcripts_inform_labels([{"label": "sad", "transcript": None}], LABELS)[0] is False


# --------------------------------------------------------------------------------------------------------------------
# The real default backbones (Whisper tiny.en, SmolLM2-135M-Instruct, bundled)
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from backbones_emosllm import BUNDLED, _bundled_sources, resolve_pretrained

    encoder_id, llm_id = "openai/whisper-tiny.en", "HuggingFaceTB/SmolLM2-135M-Instruct"
    for hub_id in (encoder_id, llm_id):
        if _bundled_sources(BUNDLED[hub_id]) is None:
            pytest.fail(f"the weights of {hub_id} are not installed: {BUNDLED[hub_id].pip_command}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    encoder, llm = resolve_pretrained(encoder_id), resolve_pretrained(llm_id)
    processor = EmoSLLMProcessor.from_backbones(encoder, llm, labels=["angry", "calm", "happy", "sad"],
                                                adapter_type="probe", encoder_layer_combination="concatenate",
                                                use_transcript="none")
    assert processor.config.audio_model_id == encoder_id and processor.config.text_model_id == llm_id
    torch.manual_seed(0)
    model = EmoSLLMForSpeechEmotionRecognition.from_backbones(processor.config, encoder, llm)
    audios = clips(4)
    trained_like(model, processor(audios), seed=1)
    from test_modeling import fit_random_probe

    fit_random_probe(model)
    return processor, model.eval(), audios, tmp_path_factory.mktemp("real")


@pytest.mark.slow
def test_real_backbones_fast_path_gives_the_plain_scores(real):
    processor, model, audios, _ = real
    model.prompt_cache_enabled = False
    model.unmerge_lora()
    plain = [probabilities(model, processor, [a], [None]) for a in audios]
    model.prompt_cache_enabled = True
    model.merge_lora()
    try:
        for _ in range(2):
            for audio, expected in zip(audios, plain):
                torch.testing.assert_close(probabilities(model, processor, [audio], [None]), expected,
                                           atol=1e-4, rtol=0)
    finally:
        model.unmerge_lora()


@pytest.mark.slow
def test_real_backbones_lean_folder_scores_as_the_full_folder(real):
    processor, model, audios, tmp_path = real
    full, lean = tmp_path / "full", tmp_path / "lean"
    for folder, full_weights in ((full, True), (lean, False)):
        model.save_pretrained(folder, full_weights=full_weights, dtype=torch.float32)
        processor.save_pretrained(folder)
    size = sum(f.stat().st_size for f in lean.rglob("*") if f.is_file())
    assert size < 25e6 < sum(f.stat().st_size for f in full.rglob("*") if f.is_file())
    from_full = probabilities(EmoSLLMForSpeechEmotionRecognition.from_pretrained(full).eval(), processor, audios,
                              [None] * len(audios))
    # Backbones found by Hub id (the bundled copies, offline); float32 asked, as the full folder loads.
    run = load_elsewhere(lean, tmp_path, audios, {"dtype": "float32"})
    assert run.returncode == 0, run.stderr[-3000:]
    # 1e-5: an earlier test merged and unmerged this model's LoRA, which moves its weights by float rounding.
    torch.testing.assert_close(torch.tensor(json.loads(run.stdout.strip().splitlines()[-1])), from_full,
                               atol=1e-5, rtol=0)


@pytest.mark.slow
def test_real_backbones_lean_folder_delivers_what_train_py_scores(real):
    from modeling_emosllm import saved_language_model_dtype

    processor, model, audios, tmp_path = real
    lean = tmp_path / "lean_default"
    model.save_pretrained(lean)
    processor.save_pretrained(lean)
    llm_dtype = saved_language_model_dtype(str(lean))
    assert llm_dtype == (torch.bfloat16 if bf16_is_native("cpu") else torch.float32)  # the bundled bf16 variant
    loaded = EmoSLLMForSpeechEmotionRecognition.from_pretrained(lean).eval()
    assert loaded.language_model.model.layers[0].mlp.up_proj.base_layer.weight.dtype == llm_dtype
    loaded.merge_lora()
    delivered = probabilities(loaded, processor, audios, [None] * len(audios))
    # What train.py's evaluate_and_report scores with: its float32 model (the module's model has had LoRA merged
    # and unmerged by earlier tests, which moves its float32 weights by rounding; so the folder's, loaded in float32)
    # with the LLM cast to the dtype the folder loads in.
    trained = EmoSLLMForSpeechEmotionRecognition.from_pretrained(lean, dtype=torch.float32).eval()
    assert {p.dtype for p in trained.parameters()} == {torch.float32}
    trained.cast_language_model(llm_dtype)
    trained.merge_lora()
    torch.testing.assert_close(probabilities(trained, processor, audios, [None] * len(audios)), delivered,
                               atol=1e-6, rtol=0)
    # bf16 moves a class probability by at most a few hundredths (0.027 from the float32 path on 8 RAVDESS clips of a
    # trained model; BENCHMARKS.md).
    float32 = probabilities(model, processor, audios, [None] * len(audios))
    torch.testing.assert_close(delivered, float32, atol=5e-2 if llm_dtype == torch.bfloat16 else 1e-5, rtol=0)


def test_encoder_runs_in_bf16_only_without_gradients_and_where_bf16_is_native(tiny):
    processor, model, _ = tiny
    batch = processor(clips(2))
    encoder = model.audio_encoder
    encoder.bf16_inference = False
    with torch.no_grad():
        float32 = encoder.layer_states(batch["input_features"], batch["audio_lengths"])
    encoder.bf16_inference = True
    with torch.enable_grad():  # training: float32, whatever the hardware
        torch.testing.assert_close(encoder.layer_states(batch["input_features"], batch["audio_lengths"]).detach(),
                                   float32, atol=0, rtol=0)
    with torch.no_grad():
        inference = encoder.layer_states(batch["input_features"], batch["audio_lengths"])
    assert inference.dtype == torch.float32
    if bf16_is_native("cpu"):
        assert not torch.equal(inference, float32)  # bf16 ran
        # bf16 keeps 8 bits of mantissa: each state within a few percent of the layer's scale
        scale = float32.abs().amax(dim=(0, 2, 3), keepdim=True)
        assert ((inference - float32).abs() / scale).max() < 0.05
    else:
        torch.testing.assert_close(inference, float32, atol=0, rtol=0)


# --------------------------------------------------------------------------------------------------------------------
# Memory-lean construction (`from_backbones`)
# --------------------------------------------------------------------------------------------------------------------
def old_build(config, encoder: str, llm: str) -> EmoSLLMForSpeechEmotionRecognition:
    """`from_backbones` as it was before the lean build (bench/build_memory.py's reference): the reference the lean
    build must equal on the backbones."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from build_memory import old_from_backbones

    return old_from_backbones(config, encoder, llm)


class RandomInitCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the elements that random-init ops (normal_, uniform_, ...) write outside the meta device."""

    RANDOM = {"normal_", "uniform_", "bernoulli_", "random_", "exponential_", "log_normal_", "cauchy_",
              "geometric_", "normal", "rand", "randn", "randint", "randperm"}

    def __init__(self):
        super().__init__()
        self.elements, self.storages = 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.__name__.split(".")[0] in self.RANDOM and isinstance(out, torch.Tensor) and not out.is_meta:
            self.elements += out.numel()
            self.storages.add(out.untyped_storage().data_ptr())
        return out


def lean_processor(root: Path, **kwargs) -> EmoSLLMProcessor:
    return EmoSLLMProcessor.from_backbones(
        str(root / "encoder"), str(root / "llm"), labels=LABELS, adapter_hidden_size=32, adapter_num_heads=2,
        num_queries=4, lora_rank=4, lora_alpha=8, **TINY_IDS, **kwargs,
    )


@pytest.mark.parametrize("adapter", ["qpmapper", "probe"])
def test_from_backbones_initialises_only_emosllms_own_parts_and_loads_each_backbone_once(tmp_path, monkeypatch,
                                                                                         adapter):
    import modeling_emosllm
    from transformers import AutoModel, AutoModelForCausalLM

    save_tiny_backbones(tmp_path)
    processor = lean_processor(tmp_path, adapter_type=adapter)
    loads = []
    for auto in (AutoModel, AutoModelForCausalLM):
        original = auto.from_pretrained

        def spy(*args, original=original, **kwargs):
            loads.append(kwargs.get("dtype"))
            return original(*args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", spy)
    skeletons = []
    post_init = modeling_emosllm.EmoSLLMForSpeechEmotionRecognition.post_init

    def seen_at_init(self):  # where the random init runs: every backbone tensor must still be on the meta device
        skeletons.append({n: t.device.type for n, t in self.state_dict().items()
                          if n.startswith(("audio_encoder.encoder.", "language_model."))})
        return post_init(self)

    monkeypatch.setattr(modeling_emosllm.EmoSLLMForSpeechEmotionRecognition, "post_init", seen_at_init)
    counter = RandomInitCounter()
    with counter:
        model = EmoSLLMForSpeechEmotionRecognition.from_backbones(processor.config, str(tmp_path / "encoder"),
                                                                  str(tmp_path / "llm"))
    assert len(skeletons) == 1 and skeletons[0] and set(skeletons[0].values()) == {"meta"}
    assert loads == [torch.float32, torch.float32]  # each backbone once, in its final dtype (the CPU policy)
    backbone = set(model.backbone_keys())
    own = sum(t.numel() for n, t in model.state_dict().items() if n not in backbone)
    backbones = sum(t.numel() for n, t in model.state_dict().items() if n in backbone)
    # Random init wrote EmoSLLM's own parts (some twice: their constructor's init, then post_init's), no backbone.
    assert 0 < counter.elements < backbones and own < backbones
    assert not counter.storages & {t.untyped_storage().data_ptr() for n, t in model.state_dict().items()
                                   if n in backbone}
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])


@pytest.mark.parametrize("adapter", ["qpmapper", "probe"])
def test_from_backbones_equals_the_old_build_on_the_backbones_and_alike_elsewhere(tmp_path, adapter):
    save_tiny_backbones(tmp_path)
    processor = lean_processor(tmp_path, adapter_type=adapter)
    encoder, llm = str(tmp_path / "encoder"), str(tmp_path / "llm")
    torch.manual_seed(0)
    new = EmoSLLMForSpeechEmotionRecognition.from_backbones(processor.config, encoder, llm)
    torch.manual_seed(0)
    old = old_build(processor.config, encoder, llm)
    new_state, old_state = new.state_dict(), old.state_dict()
    assert new_state.keys() == old_state.keys()
    for name in old.backbone_keys():
        assert new_state[name].dtype == old_state[name].dtype and torch.equal(new_state[name], old_state[name]), name
    for name, tensor in old_state.items():  # EmoSLLM's own parts: the same shapes, dtypes and spread of init
        assert new_state[name].shape == tensor.shape and new_state[name].dtype == tensor.dtype, name
        if name.startswith("adapter.") and name.endswith("weight") and tensor.numel() > 64:
            assert torch.isclose(new_state[name].std(), tensor.std(), rtol=0.35), name
    # LoRA as peft makes it (A random, B zero; the old build drew B at random too).
    lora = {n: t for n, t in new_state.items() if "lora_" in n}
    assert lora and all((t == 0).all() == ("lora_B" in n) for n, t in lora.items())
    assert [(n, p.requires_grad) for n, p in new.named_parameters()] == \
           [(n, p.requires_grad) for n, p in old.named_parameters()]
    assert [(n, m.training) for n, m in new.named_modules()] == [(n, m.training) for n, m in old.named_modules()]
    if adapter == "probe":  # the soft emotion word starts as the mixture of the label words
        torch.testing.assert_close(new.adapter.label_embeddings.weight, new.label_vectors().T, rtol=0, atol=0)
    batch = processor([tone(0.8, 300)], labels=["happy"])
    assert torch.isfinite(new(**batch).loss)
    from transformers import AutoModelForCausalLM

    # The fresh model's LLM is the pretrained LLM (LoRA's B is zero), to the last bit.
    ids = torch.arange(1, 9)[None]
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(llm, dtype=torch.float32).eval()(ids).logits
        torch.testing.assert_close(new.language_model.eval()(ids).logits, plain, rtol=0, atol=0)



# --------------------------------------------------------------------------------------------------------------------
# The precision policy (modeling_emosllm.PRECISION_POLICY)
# --------------------------------------------------------------------------------------------------------------------
def bf16_llm(root: Path) -> Path:
    """The tiny LLM saved in bf16, declaring it (as Llama 3.2 is on the Hub)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = root / "llm_bf16"
    AutoModelForCausalLM.from_pretrained(root / "llm", dtype=torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(root / "llm").save_pretrained(out)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    return out


def trained_dtypes(model) -> set:
    return {p.dtype for n, p in model.named_parameters() if p.requires_grad}


def own_dtypes(model) -> set:
    backbone = set(model.backbone_keys())
    return {t.dtype for n, t in model.state_dict().items() if n not in backbone and t.is_floating_point()}


@pytest.mark.parametrize("cuda", [False, True])
def test_a_bf16_backbone_checkpoint_gives_float32_lora_and_interface_and_bf16_backbones_only_on_a_bf16_gpu(
        tmp_path, monkeypatch, cuda):
    import modeling_emosllm

    save_tiny_backbones(tmp_path)
    llm = str(bf16_llm(tmp_path))
    encoder = str(tmp_path / "encoder")
    processor = EmoSLLMProcessor.from_backbones(encoder, llm, labels=LABELS, adapter_hidden_size=32,
                                                adapter_num_heads=2, num_queries=4, lora_rank=4, lora_alpha=8,
                                                adapter_type="probe", audio_loss_weight=1.0, **TINY_IDS)
    # The device check, mocked: a CPU with native bf16 (avx512_bf16) still trains in float32; a bf16 GPU in bf16.
    monkeypatch.setattr(modeling_emosllm, "bf16_is_native", lambda device_type=None: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert modeling_emosllm.training_backbone_dtype("cpu") == torch.float32
    model = EmoSLLMForSpeechEmotionRecognition.from_backbones(processor.config, encoder, llm)
    frozen = torch.bfloat16 if cuda else torch.float32
    backbone = set(model.backbone_keys())
    assert {t.dtype for n, t in model.state_dict().items() if n in backbone} == {frozen}
    assert trained_dtypes(model) == own_dtypes(model) == {torch.float32}  # LoRA, interface, probe, classifier
    assert any("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    loss = model(**processor([tone(0.8, 300), tone(1.0, 500)], labels=["happy", "sad"])).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert {p.grad.dtype for p in model.parameters() if p.grad is not None} == {torch.float32}
    assert EmoSLLMForSpeechEmotionRecognition.from_backbones(processor.config, encoder, llm, dtype=torch.bfloat16) \
        .language_model.model.embed_tokens.weight.dtype == torch.bfloat16  # dtype= sets the backbones'


@pytest.mark.parametrize("full_weights", [False, True])
def test_dtype_on_loading_applies_to_the_backbones_only(tiny, tmp_path, full_weights):
    processor, model, root = tiny
    model.save_pretrained(tmp_path / "folder", full_weights=full_weights)
    ids = {"audio_model_id": str(root / "encoder"), "text_model_id": str(root / "llm")}
    loaded = EmoSLLMForSpeechEmotionRecognition.from_pretrained(tmp_path / "folder", dtype=torch.bfloat16, **ids)
    backbone = set(loaded.backbone_keys())
    assert {t.dtype for n, t in loaded.state_dict().items() if n in backbone} == {torch.bfloat16}
    assert own_dtypes(loaded) == {torch.float32}  # LoRA, interface, layer weights and statistics
    loaded.eval()
    expected = probabilities(model, processor, clips(2), [None] * 2)
    torch.testing.assert_close(probabilities(loaded, processor, clips(2), [None] * 2), expected, atol=3e-2, rtol=0)


class Float32Copies(torch.utils._python_dispatch.TorchDispatchMode):
    """The largest float32 tensor made by a cast (`_to_copy`) while active, and the shapes of all of them."""

    def __init__(self):
        super().__init__()
        self.largest, self.shapes = 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.__name__.startswith("_to_copy") and isinstance(out, torch.Tensor) and out.dtype == torch.float32:
            self.largest = max(self.largest, out.numel())
            self.shapes.add(tuple(out.shape))
        return out


def test_a_bf16_head_is_read_in_float32_blocks_without_a_full_float32_copy(tiny, monkeypatch):
    import modeling_emosllm

    processor, model, _ = tiny
    model.train()
    model.cast_language_model(torch.bfloat16)
    head = model.language_model.get_output_embeddings().weight
    monkeypatch.setattr(modeling_emosllm._FrozenHeadLogits, "ROWS", 8)  # the tiny vocabulary in several blocks
    assert head.shape[0] > 2 * 8
    hidden = torch.randn(5, head.shape[1], requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with Float32Copies() as copies:
            logits = model._next_token_logits(hidden)
            logits.log_softmax(-1)[:, 3].sum().backward()
    assert copies.largest <= 8 * head.shape[1] < head.numel()  # one block of the head at a time, forward and back
    assert not any(t.dtype == torch.float32 and t.shape == head.shape for t in saved)
    reference_hidden = hidden.detach().clone().requires_grad_(True)
    reference = torch.nn.functional.linear(reference_hidden, head.float())
    reference.log_softmax(-1)[:, 3].sum().backward()
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden.grad, reference_hidden.grad, atol=1e-5, rtol=1e-5)
    batch = processor(clips(2), labels=LABELS[:2])  # the loss path (lm_labels: the whole vocabulary) takes it too
    with Float32Copies() as copies:
        model(**batch).loss.backward()
    assert copies.shapes and tuple(head.shape) not in copies.shapes


def test_a_full_save_writes_each_backbone_in_its_declared_dtype_and_the_tied_head_once(tmp_path, caplog):
    save_tiny_backbones(tmp_path)
    llm, encoder = str(bf16_llm(tmp_path)), str(tmp_path / "encoder")
    processor = EmoSLLMProcessor.from_backbones(encoder, llm, labels=LABELS, adapter_hidden_size=32,
                                                adapter_num_heads=2, num_queries=4, lora_rank=4, lora_alpha=8)
    model = EmoSLLMForSpeechEmotionRecognition.from_backbones(processor.config, encoder, llm)  # float32 on the CPU
    assert model.config.text_model_id is None  # a local folder: no Hub id, so every weight is saved
    model.save_pretrained(tmp_path / "whole")
    assert "not a Hub id" in caplog.text
    for folder, kwargs in ((tmp_path / "whole", {}), (tmp_path / "bf16", {"full_weights": True})):
        if kwargs:
            model.save_pretrained(folder, **kwargs)
        with safe_open(folder / "model.safetensors", framework="pt") as handle:
            dtypes = {k: handle.get_tensor(k).dtype for k in handle.keys()}
        assert "language_model.lm_head.weight" not in dtypes  # tied to the embedding table: written once
        assert dtypes["language_model.model.embed_tokens.weight"] == torch.bfloat16  # as its checkpoint declares
        encoder_dtype = torch.bfloat16 if kwargs else torch.float32  # declares float32 (or none), unless asked
        assert {d for k, d in dtypes.items() if k.startswith("audio_encoder.encoder.")} == {encoder_dtype}
        assert {d for k, d in dtypes.items() if "lora_" in k or k.startswith("adapter.")} == {torch.float32}
        loaded = EmoSLLMForSpeechEmotionRecognition.from_pretrained(folder)
        assert own_dtypes(loaded) == {torch.float32}
