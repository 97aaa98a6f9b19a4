"""Memory-lean construction (`from_backbones`: each backbone loaded once, only EmoSLLM's own parts initialised) and
the precision policy (`precision_emosllm.PRECISION_POLICY`), on tiny backbones saved as folders."""

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import LABELS, TINY_DEFAULTS, TINY_IDS, clips, probabilities, save_tiny_backbones, tiny_mapper_config, tone
from safetensors import safe_open

from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
from processing_emosllm import EmoSLLMProcessor


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


def lean_processor(root: Path, mapper: str = "qpmapper") -> tuple:
    """The processor and model config of the tiny backbones saved under `root`: `(processor, config)`."""
    return EmoSLLMProcessor.from_backbones(
        str(root / "encoder"), str(root / "llm"), labels=LABELS, mapper_config=tiny_mapper_config(mapper),
        **TINY_DEFAULTS, **TINY_IDS,
    )


@pytest.mark.parametrize("mapper", ["qpmapper", "probe"])
def test_from_backbones_initialises_only_emosllms_own_parts_and_loads_each_backbone_once(tmp_path, monkeypatch,
                                                                                         mapper):
    import modeling_emosllm
    from transformers import AutoModel, AutoModelForCausalLM

    save_tiny_backbones(tmp_path)
    processor, config = lean_processor(tmp_path, mapper)
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
        model = EmoSLLMForSpeechEmotionRecognition.from_backbones(config, str(tmp_path / "encoder"),
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


@pytest.mark.parametrize("mapper", ["qpmapper", "probe"])
def test_from_backbones_equals_the_old_build_on_the_backbones_and_alike_elsewhere(tmp_path, mapper):
    save_tiny_backbones(tmp_path)
    processor, config = lean_processor(tmp_path, mapper)
    encoder, llm = str(tmp_path / "encoder"), str(tmp_path / "llm")
    torch.manual_seed(0)
    new = EmoSLLMForSpeechEmotionRecognition.from_backbones(config, encoder, llm)
    torch.manual_seed(0)
    old = old_build(config, encoder, llm)
    new_state, old_state = new.state_dict(), old.state_dict()
    assert new_state.keys() == old_state.keys()
    for name in old.backbone_keys():
        assert new_state[name].dtype == old_state[name].dtype and torch.equal(new_state[name], old_state[name]), name
    for name, tensor in old_state.items():  # EmoSLLM's own parts: the same shapes, dtypes and spread of init
        assert new_state[name].shape == tensor.shape and new_state[name].dtype == tensor.dtype, name
        if name.startswith("mapper.") and name.endswith("weight") and tensor.numel() > 64:
            assert torch.isclose(new_state[name].std(), tensor.std(), rtol=0.35), name
    # LoRA as peft makes it (A random, B zero; the old build drew B at random too).
    lora = {n: t for n, t in new_state.items() if "lora_" in n}
    assert lora and all((t == 0).all() == ("lora_B" in n) for n, t in lora.items())
    assert [(n, p.requires_grad) for n, p in new.named_parameters()] == \
           [(n, p.requires_grad) for n, p in old.named_parameters()]
    assert [(n, m.training) for n, m in new.named_modules()] == [(n, m.training) for n, m in old.named_modules()]
    if mapper == "probe":  # the soft emotion word starts as the mixture of the label words
        torch.testing.assert_close(new.mapper.label_embeddings.weight, new.label_vectors().T, rtol=0, atol=0)
    batch = processor([tone(0.8, 300)], labels=["happy"])
    assert torch.isfinite(new(**batch).loss)
    from transformers import AutoModelForCausalLM

    # The fresh model's LLM is the pretrained LLM (LoRA's B is zero), to the last bit.
    ids = torch.arange(1, 9)[None]
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(llm, dtype=torch.float32).eval()(ids).logits
        torch.testing.assert_close(new.language_model.eval()(ids).logits, plain, rtol=0, atol=0)



# --------------------------------------------------------------------------------------------------------------------
# The precision policy (precision_emosllm.PRECISION_POLICY)
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
def test_a_bf16_backbone_checkpoint_gives_float32_lora_and_mapper_and_bf16_backbones_only_on_a_bf16_gpu(
        tmp_path, monkeypatch, cuda):
    import precision_emosllm

    save_tiny_backbones(tmp_path)
    llm = str(bf16_llm(tmp_path))
    encoder = str(tmp_path / "encoder")
    processor, config = EmoSLLMProcessor.from_backbones(encoder, llm, labels=LABELS,
                                                mapper_config=tiny_mapper_config("probe"), **TINY_IDS)
    # The device check, mocked: a CPU with native bf16 (avx512_bf16) still trains in float32; a bf16 GPU in bf16.
    monkeypatch.setattr(precision_emosllm, "bf16_is_native", lambda device_type=None: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert precision_emosllm.training_backbone_dtype("cpu") == torch.float32
    model = EmoSLLMForSpeechEmotionRecognition.from_backbones(config, encoder, llm)
    frozen = torch.bfloat16 if cuda else torch.float32
    backbone = set(model.backbone_keys())
    assert {t.dtype for n, t in model.state_dict().items() if n in backbone} == {frozen}
    assert trained_dtypes(model) == own_dtypes(model) == {torch.float32}  # LoRA, mapper, probe, classifier
    assert any("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    loss = model(**processor([tone(0.8, 300), tone(1.0, 500)], labels=["happy", "sad"])).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert {p.grad.dtype for p in model.parameters() if p.grad is not None} == {torch.float32}
    assert EmoSLLMForSpeechEmotionRecognition.from_backbones(config, encoder, llm, dtype=torch.bfloat16) \
        .language_model.model.embed_tokens.weight.dtype == torch.bfloat16  # dtype= sets the backbones'


@pytest.mark.parametrize("full_weights", [False, True])
def test_dtype_on_loading_applies_to_the_backbones_only(tiny, tmp_path, full_weights):
    processor, model, root = tiny
    model.save_pretrained(tmp_path / "folder", full_weights=full_weights)
    ids = {"audio_model_id": str(root / "encoder"), "text_model_id": str(root / "llm")}
    loaded = EmoSLLMForSpeechEmotionRecognition.from_pretrained(tmp_path / "folder", dtype=torch.bfloat16, **ids)
    backbone = set(loaded.backbone_keys())
    assert {t.dtype for n, t in loaded.state_dict().items() if n in backbone} == {torch.bfloat16}
    assert own_dtypes(loaded) == {torch.float32}  # LoRA, mapper, layer weights and statistics
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
    import precision_emosllm

    processor, model, _ = tiny
    model.train()
    model.cast_language_model(torch.bfloat16)
    head = model.language_model.get_output_embeddings().weight
    monkeypatch.setattr(precision_emosllm.FrozenHeadLogits, "ROWS", 8)  # the tiny vocabulary in several blocks
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
    processor, config = EmoSLLMProcessor.from_backbones(encoder, llm, labels=LABELS,
                                                mapper_config=tiny_mapper_config("qpmapper"))
    model = EmoSLLMForSpeechEmotionRecognition.from_backbones(config, encoder, llm)  # float32 on the CPU
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
        assert {d for k, d in dtypes.items() if "lora_" in k or k.startswith("mapper.")} == {torch.float32}
        loaded = EmoSLLMForSpeechEmotionRecognition.from_pretrained(folder)
        assert own_dtypes(loaded) == {torch.float32}
