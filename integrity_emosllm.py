# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
What a saved EmoSLLM folder must hold, recorded when it is saved and checked when it is loaded.

`save_pretrained` writes `emosllm_weights.json` last: every weights file of the folder (`model*.safetensors`,
`lora/adapter_model.safetensors`) with its size, SHA-256 and tensors (name: shape, dtype). Before it writes anything
into an existing folder it replaces that record with one that says the save is under way, so a save killed at any
moment leaves a folder that either holds a whole save or refuses to load. Loading checks the record first: a file
that is missing, cut short, changed, or not in the record is an error naming the file and what to do. Written by
hand: safetensors checks a file's header, not its content, and transformers and peft load what they find.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable

MANIFEST = "emosllm_weights.json"
WEIGHT_PATTERNS = ("model.safetensors", "model-", "lora/adapter_model.safetensors")

__all__ = ["MANIFEST", "check_saved_weights", "mark_save_started", "read_safetensors", "weight_files",
           "write_json_atomically", "write_manifest"]


def weight_files(folder: str) -> list[str]:
    """
    The weights files of a saved folder, relative to it (`/`-separated): what its record lists.

    Args:
        folder: The saved folder.

    Returns:
        The `model.safetensors` and `model-*.safetensors` files (sorted), then `lora/adapter_model.safetensors` if
        present.
    """
    found = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors") and (name == "model.safetensors" or name.startswith("model-")):
            found.append(name)
    lora = os.path.join(folder, "lora", "adapter_model.safetensors")
    if os.path.isfile(lora):
        found.append("lora/adapter_model.safetensors")
    return found


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomically(path: str | os.PathLike, content: dict) -> None:
    """
    Written beside (a temporary file of its own in the same folder), then renamed: the file holds the new content
    whole or the previous one, whenever the process is stopped; the temporary file is removed if the write fails.

    Args:
        path: The JSON file to write.
        content: What to write (JSON-serializable), indented by one space, non-ASCII characters kept.
    """
    folder, name = os.path.split(os.fspath(path))
    handle, partial = tempfile.mkstemp(dir=folder or ".", prefix=f".{name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(content, file, indent=1, ensure_ascii=False)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise


def mark_save_started(folder: str) -> None:
    """
    Before a save writes into `folder`: its record says the save is under way, so a killed save refuses to load.

    Args:
        folder: The folder about to be saved into (created if missing).
    """
    os.makedirs(folder, exist_ok=True)
    write_json_atomically(os.path.join(folder, MANIFEST), {"complete": False})


def write_manifest(folder: str) -> dict:
    """
    The record of `folder`'s weights files (see the module docstring), written last; returns it.

    Args:
        folder: The saved folder, with all its weights files written.

    Returns:
        `{"complete": True, "files": {file: {"bytes": ..., "sha256": ..., "tensors": {name: [shape, dtype]}}}}`.
    """
    from safetensors import safe_open

    files = {}
    for name in weight_files(folder):
        path = os.path.join(folder, *name.split("/"))
        with safe_open(path, framework="pt") as handle:
            tensors = {key: [list(handle.get_slice(key).get_shape()), handle.get_slice(key).get_dtype()]
                       for key in handle.keys()}
        files[name] = {"bytes": os.path.getsize(path), "sha256": _sha256(path), "tensors": tensors}
    record = {"complete": True, "files": files}
    write_json_atomically(os.path.join(folder, MANIFEST), record)
    return record


def check_saved_weights(name: str, resolve: Callable[[str], str | None], local_folder: str | None) -> None:
    """
    Checks a saved folder (or Hub repo) `name` against its record before anything is loaded from it. `resolve(f)`
    gives the local path of its file `f` (downloaded if need be), or None; `local_folder` is the folder itself when
    it is one (to find weights files the record does not list). A folder saved before records existed loads, with a
    warning.

    Args:
        name: The folder or Hub repo, as named in errors and warnings.
        resolve: Maps a file of the folder (`/`-separated, relative to it) to its local path, or None if it is absent.
        local_folder: The folder when `name` is a local one, else None.

    Raises:
        FileNotFoundError: a recorded weights file is missing.
        ValueError: the save did not finish, or a weights file was cut short, changed, or is not in the record.
    """
    manifest = resolve(MANIFEST)
    if manifest is None:
        warnings.warn(f"{name} carries no record of its weights ({MANIFEST}; folders saved before it have none), so "
                      "a missing or damaged file cannot be detected. Load it and save it again to add one.",
                      stacklevel=3)
        return
    try:
        with open(manifest, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"{name}: its record of the weights ({MANIFEST}) is unreadable ({error}). Copy or download "
                         "the whole folder again, or save the model again.") from None
    if not record.get("complete"):
        raise ValueError(f"{name}: its save did not finish (it was stopped while writing the weights), so the folder "
                         "may mix two saves. Save the model again, or use another copy of the folder.")
    for file, expected in record.get("files", {}).items():
        path = resolve(file)
        if path is None:
            raise FileNotFoundError(f"{name} is incomplete: {file} is missing. Copy or download the whole folder "
                                    "again, or save the model again.")
        size = os.path.getsize(path)
        if size != expected["bytes"] or _sha256(path) != expected["sha256"]:
            what = f"{size} bytes instead of {expected['bytes']}" if size != expected["bytes"] else "changed bytes"
            raise ValueError(f"{name}: {file} is damaged ({what}: not what was saved). Copy or download the whole "
                             "folder again, or save the model again.")
    if local_folder is not None:
        unrecorded = sorted(set(weight_files(local_folder)) - set(record.get("files", {})))
        if unrecorded:
            raise ValueError(f"{name}: {', '.join(unrecorded)} is not in its record of the weights ({MANIFEST}): the "
                             "folder mixes files of two saves. Save the model again, or use another copy.")


def read_safetensors(path: str) -> dict:
    """
    `safetensors.torch.load_file`, with an error that names the file when it cannot be read.

    Args:
        path: The `.safetensors` file.

    Returns:
        Its tensors by name, on the CPU.

    Raises:
        ValueError: the file is damaged or cut short.
    """
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as error:  # safetensors' own error types differ between releases
        raise ValueError(f"{path} could not be read ({error}): the file is damaged or cut short. Copy or download the "
                         "whole folder again, or save the model again.") from None
