# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
What EmoSLLM's code needs installed, checked when that code is imported, so that a gap is named with the pip command
that closes it (instead of surfacing as `No module named 'processing_emosllm'` or a missing transformers name).

Imports only the standard library at module level, so it can run before anything else in the code files a saved
folder ships (`save_pretrained` copies it next to them, following their relative imports).

- `check_transformers_version`: transformers inside `TRANSFORMERS_SPECIFIER` (the range requirements.txt declares and
  CI tests at both ends); older raises `ImportError`, newer than tested warns.
- `check_installed`: every package a saved folder needs is installed, else one error naming all that are missing.
  configuration_emosllm.py runs it: loading a saved folder imports the configuration first, before transformers
  checks the other code files' imports itself (and would name scikit-learn `sklearn`, or only one package at a time).
- `missing_dependency`: the error to raise for a `ModuleNotFoundError` of a third-party import (one that
  `check_installed` does not see coming: a dependency of a dependency, a broken install).
"""

import importlib.util
import re
import sys
import warnings

# The tested range of transformers: `.ci/run` runs the loading and pipeline tests with the oldest (5.20.0) and the
# newest (5.24.0) release in it; the full suite runs with requirements-train.txt's pin. 5.19 lacks
# `transformers.configuration_utils.SubConfigSpec`.
TRANSFORMERS_MINIMUM = "5.20"
TRANSFORMERS_BELOW = "5.25"
TRANSFORMERS_SPECIFIER = f">={TRANSFORMERS_MINIMUM},<{TRANSFORMERS_BELOW}"

# Import name -> (pip requirement, what EmoSLLM needs it for).
DEPENDENCIES = {
    "torch": ("torch", "the model"),
    "transformers": (f"transformers{TRANSFORMERS_SPECIFIER}", "the model, processor and pipeline"),
    "peft": ("peft", "LoRA on the LLM"),
    "numpy": ("numpy", "audio arrays"),
    "scipy": ("scipy", "resampling audio to 16 kHz"),
    "soundfile": ("soundfile", "reading audio files"),
    # transformers checks every import of modeling_emosllm.py before it loads it, fit_probe's included
    "sklearn": ("scikit-learn", "the probe mapper's fitting"),
    "silero_vad": ("silero-vad", "speech detection (its safetensors weights)"),
    "torchcodec": ("torchcodec", "decoding audio formats libsndfile does not read (with FFmpeg)"),
    "packaging": ("packaging", "version checks"),
}
# What a saved (Hub) folder needs to load and run. requirements.txt declares the same (a test checks); the model card
# that train.py writes lists them.
HUB_MODULES = ("torch", "transformers", "peft", "numpy", "scipy", "soundfile", "sklearn", "silero_vad")
HUB_REQUIREMENTS = tuple(DEPENDENCIES[module][0] for module in HUB_MODULES)
# Optional at inference: decodes what libsndfile cannot (WebM, M4A, ...), with FFmpeg's shared libraries.
HUB_OPTIONAL_REQUIREMENTS = ("torchcodec",)


def pip_command(*requirements: str) -> str:
    """
    `pip install ...`, each requirement quoted when the shell would misread it (`>`, `<`).

    Args:
        *requirements: The pip requirements to install, e.g. `"transformers>=5.20,<5.25"`.
    """
    return "pip install " + " ".join(f'"{r}"' if re.search(r"[<>=!~;\s]", r) else r for r in requirements)


def distribution_name(requirement: str) -> str:
    """
    'transformers>=5.20,<5.25' -> 'transformers'.

    Args:
        requirement: A pip requirement (a name with optional version specifiers, extras or markers).

    Returns:
        The distribution name: the requirement up to its first specifier, extra, marker or space.
    """
    return re.split(r"[<>=!~;\[\s]", requirement, maxsplit=1)[0]


def check_transformers_version(installed: str | None = None) -> None:
    """
    Raises `ImportError` when transformers `installed` (default: the imported one) is older than
    `TRANSFORMERS_MINIMUM`, naming both versions and the pip command; warns when it is `TRANSFORMERS_BELOW` or newer
    (untested: it may work).

    Args:
        installed: The transformers version to check, e.g. `"5.20.0"`; None checks the imported transformers.
    """
    from packaging.version import Version  # a dependency of transformers

    if installed is None:
        import transformers

        installed = transformers.__version__
    fix = pip_command(f"transformers{TRANSFORMERS_SPECIFIER}")
    if Version(installed) < Version(TRANSFORMERS_MINIMUM):
        raise ImportError(
            f"EmoSLLM needs transformers{TRANSFORMERS_SPECIFIER}, but transformers {installed} is installed "
            f"(in {sys.executable}). Fix: {fix}"
        )
    if Version(installed) >= Version(TRANSFORMERS_BELOW):
        warnings.warn(
            f"EmoSLLM is tested with transformers{TRANSFORMERS_SPECIFIER}; transformers {installed} is installed and "
            f"may not work. If it fails: {fix}",
            stacklevel=2,
        )


def _installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None  # None: imports of it are blocked
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_installed(modules: tuple[str, ...] = HUB_MODULES) -> None:
    """
    Raises `ModuleNotFoundError` naming every one of `modules` (import names, keys of `DEPENDENCIES`) that is not
    installed, what each is for, and the pip command for them and for everything a saved folder needs. Finds the
    modules without importing them: it takes milliseconds.

    Args:
        modules: The import names to check (keys of `DEPENDENCIES`); default: `HUB_MODULES`.
    """
    missing = [module for module in modules if not _installed(module)]
    if not missing:
        return
    listed = ", ".join(f"{distribution_name(DEPENDENCIES[m][0])} ({DEPENDENCIES[m][1]})" for m in missing)
    raise ModuleNotFoundError(
        f"EmoSLLM needs Python packages that are not installed (in {sys.executable}): {listed}. "
        f"Fix: {pip_command(*(DEPENDENCIES[m][0] for m in missing))}. "
        f"Everything a saved EmoSLLM folder needs: {pip_command(*HUB_REQUIREMENTS)}",
        name=missing[0],
    )


def _imported_by(error: ModuleNotFoundError, importer: str) -> str | None:
    """The top-level package whose code ran the failed import (the traceback's deepest frame), if not `importer`."""
    frame, module = error.__traceback__, None
    while frame is not None:
        name = frame.tb_frame.f_globals.get("__name__") or ""
        if name != importer and not name.startswith(("importlib", "_frozen_importlib")):
            module = name
        frame = frame.tb_next
    return module.split(".")[0] if module and module != "__main__" else None


def missing_dependency(error: ModuleNotFoundError, importer: str) -> ModuleNotFoundError:
    """
    The error to raise when module `importer` failed with `error`: it names the missing package, what it is for and
    the pip command for it and for everything a saved EmoSLLM folder needs. A module that none of EmoSLLM's own
    dependencies is (a dependency's dependency, or a part of a broken install) is named with the package that
    imports it. `error.name` is kept, so code that looks at it still can.

    Args:
        error: The `ModuleNotFoundError` the import raised.
        importer: The `__name__` of the EmoSLLM module whose import failed (its file is named in the message).

    Returns:
        A new `ModuleNotFoundError` with the explanation and the pip command, and `name=error.name`.
    """
    name = error.name or ""
    top = name.split(".")[0]
    file = importer.rsplit(".", 1)[-1]
    if top in DEPENDENCIES:
        requirement, purpose = DEPENDENCIES[top]
        what = f"needs the Python package {distribution_name(requirement)!r} ({purpose}), and it is not installed"
        fix = pip_command(requirement)
    else:
        via = _imported_by(error, importer)
        via_requirement = DEPENDENCIES.get(via, (via,))[0] if via else None
        what = (f"imports {distribution_name(via_requirement)}, which needs the Python module {name!r}, and it is "
                f"missing" if via else f"needs the Python module {name!r} (for one of its dependencies), and it is "
                f"missing")
        fix = pip_command(top) + (" if it is a package of its own, else reinstall what needs it: "
                                  f"pip install --force-reinstall {distribution_name(via_requirement)}" if via else "")
    return ModuleNotFoundError(
        f"EmoSLLM's {file}.py {what} (in {sys.executable}). Fix: {fix}. Everything a saved EmoSLLM folder needs: "
        f"{pip_command(*HUB_REQUIREMENTS)}",
        name=name,
    )
