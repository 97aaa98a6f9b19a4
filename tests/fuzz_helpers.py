"""Helpers and fixtures that the tests/test_fuzz_*.py files share: a clip, tiny models and backbones, tone corpora and
their manifests, and train.py run up to training."""

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import save_tiny_backbones, tiny_processor, tone, write_tone_corpus

import training.arguments
import training.data
import training.recipe
import training.splits
from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition

__all__ = ["CLIP", "FORMATS", "SPEECHLIKE", "ReachedTraining", "backbones", "corpus", "encoded", "manifest_rows",
           "run_until_training", "tiny", "train_args", "with_nan", "write_rows"]


CLIP = tone(1.0, 300)


@pytest.fixture(scope="module")
def tiny():
    processor, config = tiny_processor()
    torch.manual_seed(0)
    model = EmoSLLMForSpeechEmotionRecognition(config).eval()
    return model, processor


def with_nan(clip: np.ndarray) -> np.ndarray:
    clip = clip.copy()
    clip[len(clip) // 2] = np.nan
    return clip


# ----------------------------------------------------------------------------------------------------------------------
# Files: damaged or truncated ones are errors in every format, complete ones decode whole
# ----------------------------------------------------------------------------------------------------------------------
def encoded(clip: np.ndarray, **format_args) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, clip, 16000, **format_args)
    return buffer.getvalue()


SPEECHLIKE = (0.3 * np.random.default_rng(0).standard_normal(16000 * 6)).astype(np.float32)  # 6 s, many Ogg pages


FORMATS = {
    "wav": {"format": "WAV", "subtype": "PCM_16"},
    "flac": {"format": "FLAC", "subtype": "PCM_16"},
    "ogg": {"format": "OGG", "subtype": "VORBIS"},
    "opus": {"format": "OGG", "subtype": "OPUS"},
    "mp3": {"format": "MP3", "subtype": "MPEG_LAYER_III"},
}


# ----------------------------------------------------------------------------------------------------------------------
# train.py: bad data stops the run before anything trains
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    save_tiny_backbones(root)
    return root


def corpus(tmp_path: Path, name: str = "corpus") -> Path:
    return write_tone_corpus(tmp_path / name, speakers=4)


def manifest_rows(folder: Path) -> list[str]:
    return (folder / "manifest.csv").read_text().splitlines()


def write_rows(folder: Path, rows: list[str]) -> None:
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")


class ReachedTraining(Exception):
    """Raised in place of training: the data checks let the run through."""


def train_args(backbones: Path, data_dir: Path, tmp_path: Path, *extra: str):
    return training.arguments.parse_args([
        "--data_dir", str(data_dir), "--audio_encoder", str(backbones / "encoder"), "--llm", str(backbones / "llm"),
        "--output_dir", str(tmp_path / "out"), "--encoder_cache_dir", str(tmp_path / "cache"),
        "--test_speakers", "4", "--eval_speakers", "3",
        "--lora_rank", "4", "--bf16", "false", *extra,
    ])


def run_until_training(backbones, data_dir, tmp_path, monkeypatch, *extra):
    """train.py's main path up to training: loading, splits, model, data checks, encoder cache."""

    def no_training(*args, **kwargs):
        raise ReachedTraining

    monkeypatch.setattr(training.recipe, "run_stage", no_training)
    model_args, data_args, training_args = train_args(backbones, data_dir, tmp_path, *extra)
    dataset = training.data.load_data(data_args)
    splits = training.splits.split_by_speakers(dataset, data_args.test_speakers, data_args.eval_speakers)
    training.recipe.train_one_split(model_args, data_args, training_args, splits, Path(training_args.output_dir))
