# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
Speech detection: which stretches of a clip hold speech, with Silero VAD (the `silero-vad` package's 16 kHz model).

The package loads its PyTorch model as TorchScript (`silero_vad.jit`), which runs code from a data file; it also ships
the same weights as safetensors (`silero_vad_16k.safetensors`) with a reference implementation of the network in
tinygrad. `SileroVAD` is that network in PyTorch (the package has no PyTorch module of it), loaded from the
safetensors file; it gives the same speech probabilities as the package's model (tested). The package is located
without importing it (its import sets torch's thread count).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SAMPLING_RATE = 16000
CHUNK = 512  # samples per speech probability (32 ms), the model's own step at 16 kHz
CONTEXT = 64  # samples of the previous chunk that each chunk sees
# A chunk holds speech above this probability. The package's default is 0.5; 0.3 finds 99.4% of RAVDESS's clips
# instead of 98.9% (shouted and screamed ones are what it misses) and takes no more non-speech for speech
# (bench/speech_detection.py, BENCHMARKS.md).
SPEECH_THRESHOLD = 0.3
MIN_SPEECH_SECONDS = 0.25  # a clip or window holds speech with at least this much of it (the package's default)
DETECTION_PEAK = 0.5  # the peak a clip is scaled to before detection (-6 dBFS)

__all__ = ["MIN_SPEECH_SECONDS", "SileroVAD", "load_speech_detector", "speech_mask", "speech_seconds"]


class SileroVAD(nn.Module):
    """Silero VAD v5/v6 at 16 kHz: chunks of 512 samples -> the probability that each holds speech."""

    def __init__(self):
        super().__init__()
        self.stft_conv = nn.Conv1d(1, 258, kernel_size=256, stride=128, bias=False)  # a learned STFT, 129 bins
        self.conv1 = nn.Conv1d(129, 128, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, kernel_size=3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, kernel_size=3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, kernel_size=3, padding=1)
        # The package's `lstm_cell` (an LSTMCell stepped chunk by chunk), run as one LSTM over all the chunks: the
        # same recurrence in one call instead of a Python loop (BENCHMARKS.md, "Labelling a dataset"; the weights are
        # renamed on loading, `LSTM_WEIGHTS`).
        self.lstm = nn.LSTM(128, 128)
        self.final_conv = nn.Conv1d(128, 1, 1)

    @torch.no_grad()
    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        """
        Mono float samples at 16 kHz -> the probability that each 512-sample chunk holds speech.

        Args:
            samples: Mono samples at 16 kHz, `(num_samples,)`, any float dtype (computed in float32).

        Returns:
            Speech probabilities, float32 `(ceil(num_samples / 512),)`.
        """
        padded = F.pad(samples.float(), (CONTEXT, (-len(samples)) % CHUNK))
        chunks = padded.unfold(0, CHUNK + CONTEXT, CHUNK)  # (chunks, 576): each chunk with its context
        x = F.pad(chunks[:, None], (0, CONTEXT), mode="reflect")
        x = self.stft_conv(x)
        x = (x[:, :129] ** 2 + x[:, 129:] ** 2).sqrt()
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = conv(x).relu()
        features = x.squeeze(-1)  # (chunks, 128): independent of the state, so computed for all chunks at once
        hidden = self.lstm(features)[0]  # (chunks, 128): the state carried from chunk to chunk, starting at zero
        out = self.final_conv(hidden.relu()[:, :, None])
        return out.sigmoid().flatten()


def _weights_file() -> str:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "Speech detection needs the silero-vad package (its weights): pip install --no-deps silero-vad==6.2.3 "
            "(or pass detect_speech=False to the pipeline to classify every clip as speech)."
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "silero_vad_16k.safetensors")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The silero-vad package has no {path}: reinstall silero-vad==6.2.3.")
    return path


# silero-vad's names of the LSTM cell's weights -> `nn.LSTM`'s (one layer: the same four tensors).
LSTM_WEIGHTS = {f"lstm_cell.{name}": f"lstm.{name}_l0" for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}


@functools.lru_cache(maxsize=1)
def load_speech_detector() -> SileroVAD:
    """The speech detector, loaded once per process from silero-vad's safetensors weights."""
    from safetensors.torch import load_file

    model = SileroVAD()
    weights = load_file(_weights_file())
    model.load_state_dict({LSTM_WEIGHTS.get(name, name): tensor for name, tensor in weights.items()})
    return model.eval()


def speech_mask(samples: np.ndarray) -> np.ndarray:
    """
    Which 32 ms chunks of a 16 kHz clip hold speech. The clip is scaled to a peak of `DETECTION_PEAK` first: the
    detector misses quiet speech (RAVDESS clips peaking near -37 dBFS), and a louder copy of a sound that is not
    speech is still not speech (bench/speech_detection.py).

    Args:
        samples: The clip's mono samples at 16 kHz, `(num_samples,)`.

    Returns:
        A bool array `(ceil(num_samples / 512),)`: True where a chunk's speech probability is above
        `SPEECH_THRESHOLD`.
    """
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    peak = float(np.abs(samples).max()) if len(samples) else 0.0
    if peak > 0:
        samples = samples * (DETECTION_PEAK / peak)
    return load_speech_detector()(torch.from_numpy(samples)).numpy() > SPEECH_THRESHOLD


def speech_seconds(mask: np.ndarray, start: int = 0, end: int | None = None) -> float:
    """
    Seconds of speech in samples `start:end` of a clip whose `speech_mask` is `mask`.

    Args:
        mask: The clip's `speech_mask`, bools `(num_chunks,)`, one per 512 samples.
        start: The first sample (at 16 kHz) of the stretch.
        end: The sample (at 16 kHz) the stretch ends before; None: the end of the clip.

    Returns:
        Seconds of speech in the 512-sample chunks that overlap the stretch.
    """
    end = len(mask) * CHUNK if end is None else end
    return float(mask[start // CHUNK: -(-end // CHUNK)].sum() * CHUNK / SAMPLING_RATE)
