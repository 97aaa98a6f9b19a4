"""Folders saved by the code before the config was slimmed (commit e967a10) load and score the same today."""

import json
from pathlib import Path

import pytest
import torch
from conftest import tone

from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
from processing_emosllm import EmoSLLMProcessor

# Written by e967a10's code (tiny random backbones, full weights, LoRA rank 4 inline; the code files left out, as
# this project's classes load them): a Query Pooling Mapper model with its processor's old defaults, and a probe model
# with a mix weight, the auxiliary audio loss, concatenated layers, its own prompt and no transcripts. `expected.json`
# holds the class scores e967a10 computed for two tones, one with a transcript, and the prompts' token ids.
FOLDERS = Path(__file__).parent / "fixtures" / "saved_by_e967a10"


@pytest.mark.parametrize("name", ["qpmapper", "probe"])
def test_a_folder_saved_before_the_slim_config_loads_and_scores_the_same(name):
    expected = json.loads((FOLDERS / "expected.json").read_text())[name]
    processor = EmoSLLMProcessor.from_pretrained(FOLDERS / name)
    model = EmoSLLMForSpeechEmotionRecognition.from_pretrained(FOLDERS / name).eval()
    # the old flat keys, mapped: the mapper's settings, LoRA's (peft's config), the processor's
    old = json.loads((FOLDERS / name / "config.json").read_text())
    assert model.config.mapper_type == old["adapter_type"] == name
    assert model.lora_config.r == old["lora_rank"] == 4 and model.lora_config.lora_alpha == old["lora_alpha"]
    assert processor.use_transcript == old["use_transcript"] and processor.prompt == old["prompt"]
    if name == "probe":
        assert model.config.mapper_config["mix_weight"] == old["probe_mix_weight"] == 0.25
        assert model.config.encoder_layer_combination == "concatenate" and model.config.audio_loss_weight == 1.0
    else:
        assert model.config.mapper_config["num_queries"] == old["num_queries"]
        assert model.config.encoder_layer_combination == "weighted_average" and model.config.audio_loss_weight == 0.0
    batch = processor([tone(1.0, 220.0, seed=1), tone(1.5, 440.0, seed=2)], transcript=["kids are talking", None])
    assert batch["input_ids"].tolist() == expected["input_ids"]
    with torch.no_grad():
        logits = model(**batch).logits
    torch.testing.assert_close(logits, torch.tensor(expected["logits"]), rtol=1e-5, atol=1e-5)


def test_an_old_folder_saved_again_has_the_slim_config_and_still_scores_the_same(tmp_path):
    expected = json.loads((FOLDERS / "expected.json").read_text())["probe"]
    processor = EmoSLLMProcessor.from_pretrained(FOLDERS / "probe")
    model = EmoSLLMForSpeechEmotionRecognition.from_pretrained(FOLDERS / "probe").eval()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert not {"adapter_type", "lora_rank", "prompt", "use_transcript", "probe_mix_weight"} & set(saved)
    assert json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["r"] == 4
    assert json.loads((tmp_path / "processor_config.json").read_text())["use_transcript"] == "none"
    processor = EmoSLLMProcessor.from_pretrained(tmp_path)
    model = EmoSLLMForSpeechEmotionRecognition.from_pretrained(tmp_path).eval()
    batch = processor([tone(1.0, 220.0, seed=1), tone(1.5, 440.0, seed=2)], transcript=["kids are talking", None])
    with torch.no_grad():
        logits = model(**batch).logits
    torch.testing.assert_close(logits, torch.tensor(expected["logits"]), rtol=1e-5, atol=1e-5)
