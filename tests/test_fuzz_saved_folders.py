"""
Saved folders load whole or not at all (issue #39): a damaged, incomplete or half-saved folder refuses to load,
naming the file; a folder saved by an earlier version still loads and answers the same. Tiny random backbones.
"""

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition

# ----------------------------------------------------------------------------------------------------------------------
# Saved folders load whole or not at all (issue #39)
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lean_folder(tmp_path_factory):
    """A lean tiny folder (LoRA in lora/, backbones by name) with a trained-looking LoRA, and how to load it."""
    from conftest import build_tiny

    root = tmp_path_factory.mktemp("integrity")
    processor, model = build_tiny(root)
    model.save_pretrained(root / "saved")
    processor.save_pretrained(root / "saved")
    ids = {"audio_model_id": str(root / "encoder"), "text_model_id": str(root / "llm")}
    return {"root": root, "folder": root / "saved", "ids": ids, "model": model.eval(), "processor": processor}


def damaged_copy(lean_folder, tmp_path, damage) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(lean_folder["folder"], folder)
    damage(folder)
    return folder


def keep_half_of_the_tensors(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    save_file(dict(sorted(tensors.items())[: len(tensors) // 2]), path, metadata={"format": "pt"})


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for offset in range(len(data) - 64, len(data) - 32):  # inside the last tensor's data, past the header
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


ADAPTER = Path("lora") / "adapter_model.safetensors"
DAMAGES = {
    "lora folder deleted": (lambda f: shutil.rmtree(f / "lora"), FileNotFoundError, "lora/adapter_model.safetensors"),
    "adapter cut in half": (lambda f: cut_in_half(f / ADAPTER), ValueError, "lora/adapter_model.safetensors"),
    "adapter with half its tensors": (lambda f: keep_half_of_the_tensors(f / ADAPTER), ValueError,
                                      "lora/adapter_model.safetensors"),
    "adapter bytes flipped": (lambda f: flip_bytes(f / ADAPTER), ValueError, "lora/adapter_model.safetensors is damaged"),
    "adapter zeroed": (lambda f: (f / ADAPTER).write_bytes(bytes((f / ADAPTER).stat().st_size)), ValueError,
                       "lora/adapter_model.safetensors is damaged"),
    "adapter empty": (lambda f: (f / ADAPTER).write_bytes(b""), ValueError, "lora/adapter_model.safetensors"),
    "model.safetensors cut": (lambda f: cut_in_half(f / "model.safetensors"), ValueError, "model.safetensors"),
    "model.safetensors missing": (lambda f: (f / "model.safetensors").unlink(), (FileNotFoundError, OSError),
                                  "model.safetensors"),
    "a weights file of another save": (lambda f: shutil.copy(f / "model.safetensors", f / "model-00002.safetensors"),
                                       ValueError, "model-00002.safetensors is not in its record"),
    "a save that did not finish": (lambda f: (f / "emosllm_weights.json").write_text('{"complete": false}'),
                                   ValueError, "its save did not finish"),
}


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_a_damaged_or_incomplete_folder_refuses_to_load_naming_the_file(lean_folder, tmp_path, case):
    damage, error, message = DAMAGES[case]
    folder = damaged_copy(lean_folder, tmp_path, damage)
    with pytest.raises(error, match=message.replace(".", r"\.")):
        EmoSLLMForSpeechEmotionRecognition.from_pretrained(folder, **lean_folder["ids"])
    # The same folder whole loads and answers (the damage is what the error is about).
    EmoSLLMForSpeechEmotionRecognition.from_pretrained(lean_folder["folder"], **lean_folder["ids"])


@pytest.mark.parametrize("case", ["lora folder deleted", "adapter with half its tensors"])
def test_a_folder_saved_before_the_record_loads_with_a_warning_but_never_without_its_lora(lean_folder, tmp_path, case):
    damage, error, message = DAMAGES[case]
    old = damaged_copy(lean_folder, tmp_path, lambda f: (f / "emosllm_weights.json").unlink())
    with pytest.warns(UserWarning, match="carries no record of its weights"):
        EmoSLLMForSpeechEmotionRecognition.from_pretrained(old, **lean_folder["ids"])
    damage(old)
    with pytest.warns(UserWarning, match="carries no record"), pytest.raises(error, match=message.replace(".", r"\.")):
        EmoSLLMForSpeechEmotionRecognition.from_pretrained(old, **lean_folder["ids"])


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "processor_config.json"])
def test_a_folder_without_its_processor_files_refuses_naming_them_without_a_prompt(lean_folder, tmp_path, name):
    """Not transformers' remote-code [y/N] prompt and then "Couldn't instantiate the backend tokenizer"."""
    from processing_emosllm import EmoSLLMProcessor

    folder = damaged_copy(lean_folder, tmp_path, lambda f: (f / name).unlink())
    with pytest.raises(FileNotFoundError, match=rf"is incomplete: .*{re.escape(name)}.* Copy or download the whole"):
        EmoSLLMProcessor.from_pretrained(folder)
    assert EmoSLLMProcessor.from_pretrained(lean_folder["folder"]).tokenizer is not None  # whole, it loads


KILLED_SAVE = """
import sys, time, torch
sys.path.insert(0, sys.argv[3])
from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
model = EmoSLLMForSpeechEmotionRecognition.from_pretrained(sys.argv[1], audio_model_id=sys.argv[4],
                                                           text_model_id=sys.argv[5])
model.config.audio_model_id, model.config.text_model_id = sys.argv[6], sys.argv[7]  # Hub ids again: a lean save
other = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
print("ready", flush=True)
for step in range(10000):  # two versions of the model (its LoRA and its probe differ), saved in turn
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(other[name] * (1 if step % 2 else -1))
        model.mapper.output_proj.bias.fill_(step % 2)
    model.save_pretrained(sys.argv[2])
    time.sleep(0.15)  # between saves too, so that kills land in both (a save takes about as long)
"""


def test_a_save_killed_at_any_moment_leaves_a_whole_folder_or_one_that_refuses(lean_folder, tmp_path):
    """kill -9 while a process saves two versions of the model into one folder in turn, at several moments."""
    import signal
    import subprocess

    from conftest import TINY_IDS, clips

    script = tmp_path / "save.py"
    script.write_text(KILLED_SAVE)
    audios = clips()
    processor = lean_folder["processor"]
    versions = {}
    outcomes = []
    for attempt, delay in enumerate((0.0, 0.05, 0.13, 0.21, 0.34, 0.55, 0.8, 1.1)):
        target = tmp_path / f"target{attempt}"
        if attempt % 2:  # an existing folder saved into, and a new one
            shutil.copytree(lean_folder["folder"], target)
        process = subprocess.Popen(
            [sys.executable, str(script), str(lean_folder["folder"]), str(target), str(Path(__file__).parent.parent),
             lean_folder["ids"]["audio_model_id"], lean_folder["ids"]["text_model_id"], *TINY_IDS.values()],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert process.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        try:
            model = EmoSLLMForSpeechEmotionRecognition.from_pretrained(target, **lean_folder["ids"])
        except (OSError, ValueError) as error:  # refused, naming why
            assert str(target) in str(error) or "target" in str(error)
            outcomes.append(f"refused: {str(error)[:300]}")
            continue
        with torch.no_grad():
            bias = float(model.mapper.output_proj.bias[0])
            scores = model(**processor(audios)).logits
        # Whole: one version's LoRA with that version's probe bias, never a mix.
        key = round(bias)
        versions.setdefault(key, scores)
        torch.testing.assert_close(scores, versions[key])
        assert bias in (0.0, 1.0) or attempt % 2  # the copied folder's own bias before any save finished
        outcomes.append("whole")
    assert "whole" in outcomes, outcomes


def test_a_folder_saved_before_this_version_loads_and_answers_the_same(lean_folder, tmp_path):
    """What the code before the record and the answer paths wrote: no emosllm_weights.json, no answer_end_token_id in
    config.json. It loads (with a warning) and scores as the model that was saved. (Older flat configs:
    tests/test_old_folders.py.)"""
    from conftest import clips

    old = damaged_copy(lean_folder, tmp_path, lambda f: (f / "emosllm_weights.json").unlink())
    config = json.loads((old / "config.json").read_text())
    config.pop("answer_end_token_id")  # (a qpmapper folder: its mapper_config never had the probe's mix weight)
    (old / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="carries no record"):
        loaded = EmoSLLMForSpeechEmotionRecognition.from_pretrained(old, **lean_folder["ids"])
    inputs = lean_folder["processor"](clips())
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, lean_folder["model"](**inputs).logits, atol=1e-5, rtol=0)


