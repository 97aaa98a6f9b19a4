# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
Training-time augmentation: speed-perturbed and noisy copies of each training clip (`augmented_copies`), and the
dataset that reads one version of each clip per epoch (`AugmentedClips`, told the epoch by `EpochCallback`).
"""

import hashlib
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from scipy.signal import resample_poly
from transformers import TrainerCallback

__all__ = ["AugmentedClips", "EpochCallback", "augmented_copies", "parse_floats"]


def parse_floats(text: str, name: str) -> list[float]:
    """
    A flag's comma-separated numbers, e.g. '0.9,1.1' -> [0.9, 1.1]; empty items are skipped.

    Args:
        text: The flag's value.
        name: The flag's name without `--`, named in the `ValueError` that a value other than a number raises.

    Returns:
        The numbers in order; empty for an empty `text`.
    """
    try:
        return [float(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise ValueError(f"--{name} takes comma-separated numbers, e.g. '0.9,1.1'; got {text!r}.") from None


def augmented_copies(clip: dict, speeds: list[float], snrs_db: list[float], max_samples: int) -> list[dict]:
    """
    Copies of a training clip: speed perturbation (the audio resampled by each factor, so tempo and pitch change
    together, as Kaldi's recipes do; a slowed copy is cut at `max_samples`) and white noise at each SNR. The noise is
    seeded by the clip's own samples, so a copy is the same in every run and the encoder cache finds it. Written by
    hand: these are two lines on scipy's polyphase resampler, where torchaudio would be one more pinned dependency.

    Args:
        clip: A decoded training clip (`training.clips.decoded_clips`): `clip["audio"]` float32 samples at 16 kHz;
            its other keys are copied into each copy, all but its cached `"states"`.
        speeds: Speed factors (each positive; 0.9: slower and lower), one resampled copy each.
        snrs_db: Signal-to-noise ratios in dB, one copy with white noise each.
        max_samples: The most samples (at 16 kHz) a resampled copy keeps.

    Returns:
        The copies, one per speed and then one per SNR: the clip's dict with new float32 `audio`.
    """
    audio = clip["audio"]
    copies = []
    for speed in speeds:
        if speed <= 0:
            raise ValueError(f"--speed_perturbation factors must be positive; got {speed}.")
        ratio = Fraction(1 / speed).limit_denominator(100)
        resampled = resample_poly(audio, ratio.numerator, ratio.denominator)[:max_samples]
        copies.append(dict(clip, audio=resampled.astype(np.float32)))
    rng = np.random.default_rng(int.from_bytes(hashlib.sha1(audio.tobytes()).digest()[:8], "little"))
    power = float(np.mean(audio.astype(np.float64) ** 2))
    for snr in snrs_db:
        noise = rng.standard_normal(len(audio)) * np.sqrt(power / 10 ** (snr / 10))
        copies.append(dict(clip, audio=(audio + noise).astype(np.float32)))
    for copy in copies:
        copy.pop("states", None)
    return copies


class AugmentedClips(torch.utils.data.Dataset):
    """
    The training clips, each read as one of its versions (the original or an augmented copy), drawn anew every epoch,
    and shown without its transcript with probability `transcript_dropout`. The draws depend only on the seed, the
    epoch and the clip, so a resumed run reads the same versions as an uninterrupted one; `EpochCallback` tells the
    dataset the epoch. With `record_to` set (`RECORD_CLIPS_ENV`), every read is appended to that file as a JSON line.
    """

    def __init__(self, versions: list[list[dict]], seed: int, transcript_dropout: float = 0.0):
        """
        The dataset at epoch 0, recording no reads.

        Args:
            versions: Per training clip, its versions: the original clip first, then its augmented copies.
            seed: The run's seed; with the epoch and the clip's index it decides each draw.
            transcript_dropout: The probability (0 to 1) that a read shows the clip without its transcript.
        """
        if not 0 <= transcript_dropout <= 1:
            raise ValueError(f"--transcript_dropout is a share between 0 and 1; got {transcript_dropout}.")
        self.versions, self.seed, self.epoch, self.transcript_dropout = versions, seed, 0, transcript_dropout
        self.record_to: Path | None = None
        self.world_size, self.rank = 1, 0

    def __len__(self) -> int:
        return len(self.versions)

    def __getitem__(self, index: int) -> dict:
        versions = self.versions[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        clip = versions[rng.integers(len(versions))] if len(versions) > 1 else versions[0]
        if clip.get("transcript") and rng.random() < self.transcript_dropout:
            clip = dict(clip, transcript=None)  # this epoch's prompt for this clip comes without its transcript
        if self.record_to is not None:
            self.record_to.parent.mkdir(parents=True, exist_ok=True)
            with open(self.record_to, "a", encoding="utf-8") as record:
                record.write(json.dumps({"world_size": self.world_size, "rank": self.rank, "epoch": self.epoch,
                                         "index": index, "clip": clip.get("file")}) + "\n")
        return clip


class EpochCallback(TrainerCallback):
    """
    Sets `AugmentedClips.epoch` at every epoch's start (also when a run resumes in the middle of one). A callback and
    not `Dataset.set_epoch`: Accelerate forwards `set_epoch` to the dataset only when the sampler has none, which
    does not hold under `accelerate launch`.
    """

    def __init__(self, dataset: AugmentedClips):
        """
        A callback that keeps `dataset.epoch` up to date.

        Args:
            dataset: The training dataset whose `epoch` it sets.
        """
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        """
        Sets the dataset's epoch to the one beginning, `int(state.epoch)` (0 where the state has none yet).

        Args:
            args: As `transformers.TrainerCallback.on_epoch_begin` (unused).
            state: As `transformers.TrainerCallback.on_epoch_begin`; its `epoch` is read.
            control: As `transformers.TrainerCallback.on_epoch_begin` (unused).
            **kwargs: The Trainer's other callback arguments (unused).
        """
        self.dataset.epoch = int(state.epoch or 0)
