"""Tiny random backbones and a tiny offline tokenizer, as transformers' own model tests use."""

from __future__ import annotations  # (annotations name the model class, imported where it is used)

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from peft import LoraConfig

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

from configuration_emosllm import MAPPER_SETTINGS  # noqa: E402
from processing_emosllm import DEFAULT_PROMPT, EmoSLLMProcessor  # noqa: E402

if TYPE_CHECKING:
    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition

LABELS = ["neutral", "happy", "sad", "angry"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|> {{ m['content'] }} <|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained on the prompt's own words, so prompts stay short and tests run offline."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [DEFAULT_PROMPT, " ".join(LABELS), 'Transcript: "kids are talking by the door" Gender: female.']
    trainer = trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "<|user|>", "<|end|>", "<|assistant|>"])
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", eos_token="<|end|>",
        chat_template=CHAT_TEMPLATE,
    )


def tiny_llm_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, pad_token_id=1,
        bos_token_id=None, eos_token_id=3, initializer_range=0.1,
    )


def tiny_audio(encoder: str):
    """(audio_config, feature_extractor) of a tiny random Whisper or wav2vec2 encoder."""
    if encoder == "whisper":
        config = WhisperConfig(
            d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=1,
            pad_token_id=0, bos_token_id=0, eos_token_id=0, decoder_start_token_id=0,
            decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=16, vocab_size=100,
            max_source_positions=1500, max_target_positions=32, init_std=0.2,
        )
        return config, WhisperFeatureExtractor(feature_size=16)
    config = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=10,
    )
    return config, Wav2Vec2FeatureExtractor(return_attention_mask=True)


# Tiny sizes of every mapper's settings; each mapper takes the ones it has.
MAPPER_SIZES = {"hidden_size": 32, "num_heads": 2, "num_queries": 4, "window_size": 5, "queries_per_window": 2,
                "stack_factor": 4}
# The tiny models' LoRA, where a test gives one (`from_backbones(..., lora_config=TINY_LORA)`).
TINY_LORA = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear")
# The settings the tiny models are tested with where a test names none (the config's defaults are the recipe's).
TINY_DEFAULTS = {"encoder_layer_combination": "weighted_average", "audio_loss_weight": 0.0, "use_transcript": "given"}


def tiny_mapper_config(mapper: str = "qpmapper", **settings) -> dict:
    """`mapper_config` of a tiny `mapper`: its settings from `MAPPER_SIZES`, then `settings` as given."""
    sizes = {key: value for key, value in MAPPER_SIZES.items() if key in MAPPER_SETTINGS[mapper]}
    return {"mapper_type": mapper, **sizes, **settings}


def tiny_processor(encoder: str = "whisper", mapper: str = "qpmapper", **kwargs) -> tuple:
    """
    A processor and its model's config, `(processor, config)`, of the tiny random backbones. `kwargs`: processor
    settings and config fields; `num_queries=`/`mix_weight=` are the mapper's settings.
    """
    audio_config, feature_extractor = tiny_audio(encoder)
    tokenizer = tiny_tokenizer()
    settings = {key: kwargs.pop(key) for key in ("num_queries", "mix_weight") if key in kwargs}
    kwargs = {**TINY_DEFAULTS, "mapper_config": tiny_mapper_config(mapper, **settings), **kwargs}
    return EmoSLLMProcessor.build(
        feature_extractor, tokenizer, audio_config, tiny_llm_config(len(tokenizer)), labels=LABELS, **kwargs
    )


def save_tiny_model(folder: Path):
    """The tiny random EmoSLLM (seed 0) and its processor saved as a folder: `(processor, model)`, in eval mode."""
    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition

    processor, config = tiny_processor()
    torch.manual_seed(0)
    model = EmoSLLMForSpeechEmotionRecognition(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return processor, model


def tone(seconds: float, frequency: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """A noisy sine tone: audio that differs by class without any real speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


@pytest.fixture
def processor() -> EmoSLLMProcessor:
    return tiny_processor()[0]


@pytest.fixture
def config():
    """The model config that goes with the `processor` fixture (the same tiny build)."""
    return tiny_processor()[1]


TONE_FREQUENCIES = {"neutral": 150, "happy": 450, "sad": 900, "angry": 1800}


def save_tiny_backbones(root: Path) -> None:
    """A tiny random Whisper and Llama saved as `root/encoder` and `root/llm`, as Hub checkpoints would be."""
    audio_config, feature_extractor = tiny_audio("whisper")
    torch.manual_seed(0)
    WhisperModel(audio_config).save_pretrained(root / "encoder")
    feature_extractor.save_pretrained(root / "encoder")
    tokenizer = tiny_tokenizer()
    LlamaForCausalLM(tiny_llm_config(len(tokenizer) + 1)).save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")


def write_tone_corpus(folder: Path, speakers: int, takes: int = 2) -> Path:
    """A manifest corpus of noisy tones, one pitch per label: `speakers` x 4 labels x `takes` clips of 0.6-0.8 s."""
    import soundfile as sf

    folder.mkdir(parents=True)
    rows = ["path,label,speaker,transcript"]
    for speaker in range(1, speakers + 1):
        for label in LABELS:
            for take in range(takes):
                name = f"s{speaker:02d}_{label}_{take}.wav"
                audio = tone(0.6 + 0.2 * take, TONE_FREQUENCIES[label], seed=speaker * 10 + take)
                sf.write(folder / name, audio, 16000)
                rows.append(f"{name},{label},spk{speaker:02d},kids are talking by the door")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder


def tiny_model(encoder: str = "whisper", mapper: str = "qpmapper", seed: int = 0, **kwargs):
    """A tiny random EmoSLLM (seeded) and its processor: `(processor, model)`; `kwargs` as `tiny_processor`'s."""
    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition

    processor, config = tiny_processor(encoder, mapper, **kwargs)
    torch.manual_seed(seed)
    return processor, EmoSLLMForSpeechEmotionRecognition(config)


def batch_of_lengths(processor, seconds=(0.7, 1.9, 3.1)):
    """Tones of the given lengths and their labels as one batch: `(batch, audios)`."""
    audios = [tone(s, 150 * (i + 1), seed=i) for i, s in enumerate(seconds)]
    return processor(audios, labels=LABELS[: len(audios)]), audios


def fit_random_probe(model, seed: int = 0) -> None:
    """Gives the probe mapper random fitted values, as train.py's fit would (a zero probe scores every clip alike)."""
    generator = torch.Generator().manual_seed(seed)
    probe = model.mapper
    probe.set_probe(*(torch.randn(b.shape, generator=generator) for b in (
        probe.statistics_mean, probe.statistics_std, probe.probe_weight, probe.probe_bias)))
    probe.statistics_std.abs_().add_(0.5)


# A tiny EmoSLLM built from backbones saved as folders, named by Hub ids (lean saves, precision tests).
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
    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition

    save_tiny_backbones(root)
    processor, config = EmoSLLMProcessor.from_backbones(
        str(root / "encoder"), str(root / "llm"), labels=LABELS, mapper_config=tiny_mapper_config("qpmapper"),
        **TINY_DEFAULTS, **TINY_IDS,
    )
    torch.manual_seed(0)
    model = EmoSLLMForSpeechEmotionRecognition.from_backbones(config, str(root / "encoder"), str(root / "llm"),
                                                              lora_config=TINY_LORA)
    trained_like(model, processor(clips()))
    return processor, model.eval()


@pytest.fixture
def tiny(tmp_path):
    processor, model = build_tiny(tmp_path / "backbones")
    return processor, model, tmp_path / "backbones"


def probabilities(model, processor, audios, transcripts) -> torch.Tensor:
    with torch.no_grad():
        return model(**processor(audios, transcript=transcripts)).logits.softmax(-1)
