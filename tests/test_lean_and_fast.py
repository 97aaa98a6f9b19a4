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
from conftest import LABELS, TINY_IDS, TINY_LORA, clips, probabilities, tone, trained_like
from safetensors import safe_open

from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
from precision_emosllm import bf16_is_native
from processing_emosllm import EmoSLLMProcessor


def test_prompt_cache_and_merged_lora_give_the_plain_scores(tiny):
    processor, model, _ = tiny
    audios = clips()
    texts = ["kids are talking by the door", None, "kids are talking"]
    model.prompt_head.enabled = False
    plain_batch = probabilities(model, processor, audios, texts)
    plain_single = [probabilities(model, processor, [a], [t]) for a, t in zip(audios, texts)]

    model.prompt_head.enabled = True
    model.merge_lora()
    assert model.lora_merged
    for _ in range(2):  # the second round reuses the head kept by the first
        fast_single = [probabilities(model, processor, [a], [t]) for a, t in zip(audios, texts)]
        for fast, plain in zip(fast_single, plain_single):
            torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)
        assert model.prompt_head.kept is not None
    torch.testing.assert_close(probabilities(model, processor, audios, texts), plain_batch, atol=1e-5, rtol=0)
    # The kept head is the prompt's constant part: one clip's own tokens are few.
    kept_ids = model.prompt_head.kept[0]
    prompt = processor([audios[0]], transcript=[texts[0]])["input_ids"][0]
    assert torch.equal(prompt[: len(kept_ids)], kept_ids) and len(prompt) - len(kept_ids) < len(prompt) / 2


def test_training_takes_the_merge_and_the_cache_back(tiny):
    processor, model, _ = tiny
    batch = processor(clips(2), labels=LABELS[:2])
    with torch.no_grad():
        model.merge_lora()
        model(**batch)
    model.train()
    assert not model.lora_merged and model.prompt_head.kept is None
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
    assert "audio_encoder.feature_mean" in keys and any(k.startswith("mapper.") for k in keys)
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
    assert config.peft_type == "LORA" and config.r == model.lora_config.r == TINY_LORA.r
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
    bundled SmolLM2 is converted (conversion_emosllm.convert_gguf_llm)."""
    from transformers import AutoModelForCausalLM

    from conversion_emosllm import save_bf16_variant

    shutil.copytree(llm_folder, out)
    save_bf16_variant(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32), str(out))
    return out


@pytest.mark.parametrize("native", [True, False])
def test_lean_llm_loads_in_bf16_where_native_and_answers_as_train_py_scores(tiny, tmp_path, monkeypatch, native):
    import precision_emosllm

    processor, model, root = tiny
    model.audio_encoder.bf16_inference = False  # the LLM's dtype is the point here; the encoder's is tested below
    audios = clips()
    float32 = probabilities(model, processor, audios, [None] * 3)
    llm = with_bf16_variant(root / "llm", tmp_path / "llm_bf16")
    model.save_pretrained(tmp_path / "lean")
    monkeypatch.setattr(precision_emosllm, "bf16_is_native", lambda device_type=None: native)
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
    model.cast_language_model(precision_emosllm.language_model_load_kwargs(str(llm))["dtype"])
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
    processor, config = EmoSLLMProcessor.from_backbones(encoder, llm, labels=["angry", "calm", "happy", "sad"],
                                                use_transcript="none")
    assert config.audio_model_id == encoder_id and config.text_model_id == llm_id
    torch.manual_seed(0)
    model = EmoSLLMForSpeechEmotionRecognition.from_backbones(config, encoder, llm)
    audios = clips(4)
    trained_like(model, processor(audios), seed=1)
    from test_modeling import fit_random_probe

    fit_random_probe(model)
    return processor, model.eval(), audios, tmp_path_factory.mktemp("real")


@pytest.mark.slow
def test_real_backbones_fast_path_gives_the_plain_scores(real):
    processor, model, audios, _ = real
    model.prompt_head.enabled = False
    model.unmerge_lora()
    plain = [probabilities(model, processor, [a], [None]) for a in audios]
    model.prompt_head.enabled = True
    weights = {name: tensor.clone() for name, tensor in model.language_model.state_dict().items()}
    model.merge_lora()
    try:
        for _ in range(2):
            for audio, expected in zip(audios, plain):
                torch.testing.assert_close(probabilities(model, processor, [audio], [None]), expected,
                                           atol=1e-4, rtol=0)
    finally:
        model.unmerge_lora()
        model.language_model.load_state_dict(weights)  # unmerging rounds them; later tests compare folders


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
    # The same weights, the backbones read from the bundled copies instead: equal up to float rounding.
    torch.testing.assert_close(torch.tensor(json.loads(run.stdout.strip().splitlines()[-1])), from_full,
                               atol=1e-6, rtol=0)


@pytest.mark.slow
def test_real_backbones_lean_folder_delivers_what_train_py_scores(real):
    from saving_emosllm import saved_language_model_dtype

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
