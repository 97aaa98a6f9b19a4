# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
train.py's frozen-encoder cache: the audio encoder's per-layer outputs of every training clip (and copy), computed
once and kept on disk, so that each epoch reads them instead of running the encoder again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from backbones_emosllm import default_cache_dir
from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
from audio_emosllm import check_audio
from processing_emosllm import EmoSLLMProcessor
from training.corpora import SAMPLING_RATE

logger = logging.getLogger("emosllm.train")  # its messages belong to train.py's run log

__all__ = ["EncoderStateCache", "cached_states", "padded_states", "state_dict_hash"]


def state_dict_hash(module: torch.nn.Module) -> str:
    """
    A content hash of a module's weights and buffers (names, dtypes, shapes and bytes): two encoders hash alike only
    if they compute alike. One pass over the tensors, a fraction of a second for Whisper-sized encoders.

    Args:
        module: The module to hash (the audio encoder).

    Returns:
        The SHA-1 hex digest.
    """
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tensor.numel()};".encode())
        digest.update(tensor.view(torch.uint8).numpy())
    return digest.hexdigest()


class EncoderStateCache:
    """
    The frozen audio encoder's per-layer outputs, computed once per clip and kept on disk as safetensors, keyed on
    the audio's bytes, the encoder (its config and a content hash of its weights, so an encoder re-converted or
    fine-tuned into the same folder never reads the old states) and the preprocessing (the feature extractor's
    settings, `pad_audio_to_max_length`) and the precision it runs in (bf16 where native, as at inference: the
    encoder's `bf16_inference`). Written by hand: `datasets.map` would store these `(layers, frames,
    hidden)` tensors in Arrow, several times larger and slower to read back than one file per clip.
    """

    def __init__(
        self, model: EmoSLLMForSpeechEmotionRecognition, processor: EmoSLLMProcessor, root: str | Path | None = None
    ):
        """
        The cache of this encoder and preprocessing: a subfolder of `root` named by their key's hash, created here.

        Args:
            model: The model whose audio encoder is cached; its config, weights and precision key the cache (under
                several processes: rank 0's key).
            processor: Its processor; the feature extractor's settings and `pad_audio_to_max_length` key the cache.
            root: The cache folder (`--encoder_cache_dir`); None: `encoder_states` under the backbone cache.
        """
        self.model, self.processor = model, processor
        root = Path(root) if root else Path(default_cache_dir()) / "encoder_states"
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        encoder_key = [None if distributed and dist.get_rank() != 0 else json.dumps(
            [model.config.audio_config.to_dict(), processor.pad_audio_to_max_length,
             processor.feature_extractor.to_dict(), state_dict_hash(model.audio_encoder.encoder),
             str(model.audio_encoder.inference_dtype(model.device.type))],
            sort_keys=True, default=str,
        )]
        if distributed:  # rank 0's key for every rank: a rank that FSDP fills later holds no encoder weights to hash
            dist.broadcast_object_list(encoder_key, src=0)
        self.root = root / hashlib.sha1(encoder_key[0].encode()).hexdigest()[:16]
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, audio: np.ndarray) -> Path:
        """
        The file that holds (or will hold) a clip's states, named by the SHA-1 of its samples' bytes.

        Args:
            audio: The clip's float32 samples at 16 kHz, `(num_samples,)`.
        """
        return self.root / f"{hashlib.sha1(audio.tobytes()).hexdigest()}.safetensors"

    @torch.no_grad()
    def fill(self, clips: list[dict], batch_size: int = 16) -> None:
        """
        Compute and store the states of every clip not cached yet; attach each clip's file as `clip["states"]`,
        which `cached_states` reads (fp16). The states stay on disk, read batch by batch, so that train.py's memory
        does not grow with the corpus (BENCHMARKS.md, "train.py's peak memory").

        Args:
            clips: Training clips (`{"audio": samples (num_samples,) at 16 kHz, ...}`); each gets `"states"`.
            batch_size: Clips per encoder pass.
        """
        todo = [c for c in clips if not self.path(c["audio"]).exists()]
        for clip in todo:  # the checks every clip passes (decoded_clips ran them on the originals; these are copies)
            check_audio(clip["audio"], SAMPLING_RATE, clip.get("file", "clip"))
        # Longest first: later, smaller batches reuse the memory the first ones freed. Shortest first, every batch
        # needed larger blocks than any freed before, and glibc's heap grew by 1 GB on RAVDESS (BENCHMARKS.md).
        todo.sort(key=lambda c: len(c["audio"]), reverse=True)
        encoder = self.model.audio_encoder
        if todo and any(param.is_meta for param in encoder.encoder.parameters()):
            raise RuntimeError(
                f"{len(todo)} clips are not in the encoder cache {self.root}, and this process holds no encoder "
                "weights (FSDP gives them to it from rank 0 later): fill the cache on rank 0 first "
                "(TrainingArguments.main_process_first), as train.py does."
            )
        started = time.time()
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            features = self.processor.audio_features([c["audio"] for c in chunk])
            states = encoder.layer_states(features["input_features"], features["audio_lengths"])
            for clip, clip_states in zip(chunk, states):
                frames = self.model.config.num_encoder_frames(len(clip["audio"]))
                # Written beside and renamed into place: another run filling the same cache (two trainings side by
                # side) sees either no file or a whole one, never a half-written one.
                path = self.path(clip["audio"])
                partial = path.with_name(f"{path.stem}.{os.getpid()}.partial")
                save_file({"states": clip_states[:, :frames].half().contiguous()}, str(partial))
                os.replace(partial, path)
        if todo:
            logger.info("Encoded %d clips in %.1f s (cache: %s)", len(todo), time.time() - started, self.root)
        for clip in clips:
            clip["states"] = self.path(clip["audio"])


def cached_states(clip: dict) -> torch.Tensor:
    """
    A clip's cached encoder states `(num_layers + 1, frames, encoder_hidden)`: `clip["states"]`, or its file.

    Args:
        clip: A training clip whose `"states"` is a tensor or its cache file (`EncoderStateCache.fill`); a file gone
            or damaged raises `RuntimeError`.

    Returns:
        The states (fp16 as the cache stores them, or the tensor given).
    """
    states = clip["states"]
    if isinstance(states, torch.Tensor):
        return states
    try:
        return load_file(str(states))["states"]
    except (OSError, SafetensorError, KeyError) as error:
        raise RuntimeError(
            f"The encoder cache file {states} of {clip.get('file', 'a training clip')} is gone or damaged "
            f"({type(error).__name__}: {str(error)[:200]}): the cache folder was changed while this run read it. "
            "Run train.py again (with --resume true to continue from the last checkpoint); it encodes missing "
            "clips anew."
        ) from error


def padded_states(clips: list[dict]) -> torch.Tensor:
    """
    Cached encoder states, zero-padded to the longest clip: `(batch, num_layers + 1, frames, encoder_hidden)`.

    Args:
        clips: The batch's training clips, each with `"states"` (`cached_states`).

    Returns:
        The states as float32, each clip's frames padded with zeros at the end.
    """
    states = [cached_states(c) for c in clips]
    longest = max(s.shape[1] for s in states)
    return torch.stack([F.pad(s.float(), (0, 0, 0, longest - s.shape[1])) for s in states])
