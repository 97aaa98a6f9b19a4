# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
Where audio becomes embeddings: the frozen audio encoder's standardized layers (`EmoSLLMAudioEncoder`), then the
mapper into the LLM's embedding space (`MAPPERS`: the paper's Query Pooling Mapper, the fitted-probe mapper, and the
ones measured for comparison). `EmoSLLMModel.get_audio_embeddings` runs the two.
"""

import contextlib
from collections.abc import Iterable, Iterator

try:  # a saved folder is loaded as a package (relative import); scripts import top-level modules
    from .configuration_emosllm import EmoSLLMConfig
    from .dependencies_emosllm import missing_dependency
except ImportError:
    if __package__:  # loaded as a package: the sibling failed on its own
        raise
    from configuration_emosllm import EmoSLLMConfig
    from dependencies_emosllm import missing_dependency
try:  # a saved folder is loaded as a package (relative import); scripts import top-level modules
    from .precision_emosllm import backbone_construction, bf16_is_native
except ImportError:
    if __package__:  # loaded as a package: the sibling failed on its own
        raise
    from precision_emosllm import backbone_construction, bf16_is_native
try:  # a missing package is named with its pip command (dependencies_emosllm.py)
    import torch
    import torch.nn.functional as F
    from torch import nn
    from transformers import AutoModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
except ModuleNotFoundError as error:
    raise missing_dependency(error, __name__) from error


def lengths_to_mask(lengths: torch.Tensor, max_length: int) -> torch.BoolTensor:
    """
    `(batch,)` lengths -> `(batch, max_length)` mask, True on valid positions.

    Args:
        lengths: `(batch,)` integer lengths: each row's number of valid leading positions.
        max_length: The mask's width.

    Returns:
        A bool `(batch, max_length)` mask, True at the positions below each row's length.
    """
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


@contextlib.contextmanager
def _folded_matmuls(module: nn.Module) -> Iterator[None]:
    """
    Only without gradients, marks `module`'s frozen weights as requiring them for the call (recording nothing), since
    torch's matmul folds a transposed 3-D input into one 2-D product only for such a weight; for a frozen one it runs a
    batched product on a weight copy expanded over the batch, which took most of a bf16 pass of wav2vec2-family encoders
    (WavLM's attention reads its input transposed; BENCHMARKS.md, "The paper's model at the paper's scale").
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
    The pretrained audio encoder and the combination of its layers (emotion lives in the middle layers as much as in the
    last one): a learned softmax-weighted average (SUPERB-style, `encoder_layer_combination="weighted_average"`) or
    every layer side by side (`"concatenate"`: `output_size` is then `num_layers + 1` times the encoder's width). Each
    layer is first standardized per dimension with training-data statistics (`set_feature_statistics`), as a linear
    probe's StandardScaler would: a few dimensions of Whisper's hidden states, far larger than the rest, dominate a
    per-frame LayerNorm (measured in docs/experiment-log.md, "Closing the gap to the frozen-feature bar").
    """

    def __init__(self, config: EmoSLLMConfig):
        """
        Builds the encoder (without pretrained weights), its layer combination and its feature statistics.

        Args:
            config: The model's config; reads `audio_config`, `is_whisper_encoder` and `encoder_layer_combination`.
        """
        super().__init__()
        self.config = config
        audio_config = config.audio_config
        if config.is_whisper_encoder:
            with backbone_construction():
                self.encoder = WhisperEncoder(audio_config)
            num_layers = audio_config.encoder_layers
        else:
            audio_config.layerdrop = 0.0  # the layer-weighted average needs every layer's output
            with backbone_construction():
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
        """
        The dtype the encoder computes in without gradients on `device_type` (see `bf16_inference`).

        Args:
            device_type: A torch device type: "cpu", "cuda".

        Returns:
            `torch.bfloat16` where `bf16_inference` is on and bf16 is native (`bf16_is_native`), else `torch.float32`.
        """
        return torch.bfloat16 if self.bf16_inference and bf16_is_native(device_type) else torch.float32

    def layer_states(self, input_features: torch.Tensor, audio_lengths: torch.Tensor) -> torch.Tensor:
        """
        Every layer's output of the pretrained encoder, computed without gradients in `inference_dtype`.

        Args:
            input_features: `(batch, num_mel_bins, mel_frames)` log-mel features (Whisper) or `(batch, samples)`
                waveforms at 16 kHz (wav2vec2 family).
            audio_lengths: `(batch,)` valid samples of each clip at 16 kHz.

        Returns:
            `(batch, num_layers + 1, frames, encoder_hidden)` in `input_features`' dtype, the embeddings first.
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
        """
        The standardized, combined encoder frames of a batch of clips.

        Args:
            audio_lengths: `(batch,)` valid samples of each clip at 16 kHz.
            input_features: `(batch, num_mel_bins, mel_frames)` (Whisper) or `(batch, samples)` (wav2vec2 family); not
                read, and the encoder not run, given `encoder_layer_states` (e.g. cached while the encoder is frozen).
            encoder_layer_states: `(batch, num_layers + 1, frames, encoder_hidden)` from `layer_states`, or None.

        Returns:
            The frames `(batch, frames, output_size)` (float32, `feature_mean`'s dtype) and bool mask `(batch, frames)`.
        """
        if encoder_layer_states is None:
            encoder_layer_states = self.layer_states(input_features, audio_lengths)
        # Rounded to float16, the precision of train.py's encoder-state cache: a clip scores the same from the cache
        # (training, the reported test score) and from audio (the pipeline). Without this, clips of one fixed length
        # scored 0.76 from the cache and 0.26 live (a pooled statistic with a tiny spread amplified the rounding).
        rounded = encoder_layer_states.to(torch.float16).to(self.feature_mean.dtype, copy=True)  # ours to change
        standardized = rounded.sub_(self.feature_mean[:, None]).div_(self.feature_std[:, None])
        if self.concatenate_layers:
            frames = standardized.permute(0, 2, 1, 3).flatten(2)  # (batch, frames, layers * encoder_hidden)
        else:
            weights = torch.softmax(self.layer_weights, dim=0).to(standardized.dtype)
            frames = torch.einsum("l,bltd->btd", weights, standardized)
        return frames, self.frame_mask(audio_lengths, frames.shape[1])

    @torch.no_grad()
    def set_feature_statistics(self, clip_layer_states: Iterable[torch.Tensor]) -> None:
        """
        Sets `feature_mean`/`feature_std` from the training clips' valid frames. Call before training.

        Args:
            clip_layer_states: Each training clip's `layer_states` `(num_layers + 1, frames, encoder_hidden)`, its
                valid frames only (e.g. the frozen-encoder cache).
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
        """
        `(batch, num_frames)`: True on each clip's valid encoder frames.

        Args:
            audio_lengths: `(batch,)` valid samples of each clip at 16 kHz.
            num_frames: The batch's number of encoder frames (the mask's width).
        """
        samples = audio_lengths.tolist()
        if min(samples, default=1) < 1:  # Whisper's frame count is at least 1: the clip's padding would be read
            raise ValueError(f"audio_lengths {samples[:8]}: each clip's samples at 16 kHz, at least 1; let the "
                             "processor set them from the audio (EmoSLLMProcessor(audio))")
        lengths = [self.config.num_encoder_frames(n) for n in samples]
        return lengths_to_mask(torch.tensor(lengths, device=audio_lengths.device).clamp(max=num_frames), num_frames)


class EmoSLLMQueryPoolingMapper(nn.Module):
    """
    The paper's Query Pooling Mapper: `num_queries` learned queries join the encoder frames in a small transformer
    encoder, and only the query positions are projected to the LLM width, whatever the clip length.
    """

    def __init__(self, config: EmoSLLMConfig, encoder_hidden: int):
        """
        The mapper's layers, sized by `config.mapper_config` (`hidden_size`, `num_queries`, `num_layers`, `num_heads`).

        Args:
            config: The model's config: `mapper_config` and the LLM's width `text_config.hidden_size` (`llm_hidden`).
            encoder_hidden: The width of the encoder frames it reads (`EmoSLLMAudioEncoder.output_size`).
        """
        super().__init__()
        width = config.mapper_config["hidden_size"]
        self.input_proj = nn.Linear(encoder_hidden, width)
        self.queries = nn.Parameter(torch.zeros(1, config.mapper_config["num_queries"], width))
        layer = nn.TransformerEncoderLayer(
            width, config.mapper_config["num_heads"], 4 * width, dropout=0.1, activation="gelu", batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, config.mapper_config["num_layers"], enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.output_proj = nn.Linear(width, config.text_config.hidden_size)

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Maps each clip's valid frames to `num_queries` LLM embeddings.

        Args:
            frames: Encoder frames `(batch, frames, encoder_hidden)`.
            frame_mask: `(batch, frames)` bool, True on valid frames.

        Returns:
            The embeddings `(batch, num_queries, llm_hidden)` and their mask `(batch, num_queries)` (all True).
        """
        batch, num_queries = frames.shape[0], self.queries.shape[1]
        hidden = torch.cat([self.queries.expand(batch, -1, -1), self.input_proj(frames)], dim=1)
        query_mask = frame_mask.new_ones(batch, num_queries)
        hidden = self.transformer(hidden, src_key_padding_mask=~torch.cat([query_mask, frame_mask], dim=1))
        return self.output_proj(self.norm(hidden[:, :num_queries])), query_mask


class EmoSLLMWindowQFormer(nn.Module):
    """
    Window-level Q-Former (SALMONN; transformers' Granite Speech projector): `queries_per_window` learned queries
    cross-attend to each window of `window_size` encoder frames, so the output grows with the audio.
    """

    def __init__(self, config: EmoSLLMConfig, encoder_hidden: int):
        """
        The Q-Former (transformers' `Blip2QFormerModel`), its queries and output projection, sized by
        `config.mapper_config` (`hidden_size`, `window_size`, `queries_per_window`, `num_layers`, `num_heads`).

        Args:
            config: The model's config: `mapper_config` and the LLM's width `text_config.hidden_size` (`llm_hidden`).
            encoder_hidden: The width of the encoder frames it reads (`EmoSLLMAudioEncoder.output_size`).
        """
        super().__init__()
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        width = config.mapper_config["hidden_size"]
        self.window_size = config.mapper_config["window_size"]
        self.queries = nn.Parameter(torch.zeros(1, config.mapper_config["queries_per_window"], width))
        qformer_config = Blip2QFormerConfig(
            hidden_size=width, num_hidden_layers=config.mapper_config["num_layers"],
            num_attention_heads=config.mapper_config["num_heads"], intermediate_size=4 * width,
            encoder_hidden_size=encoder_hidden, cross_attention_frequency=1,
        )
        self.qformer = Blip2QFormerModel(qformer_config)
        self.output_proj = nn.Linear(width, config.text_config.hidden_size)

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Maps each window of `window_size` frames (the last one padded) to `queries_per_window` LLM embeddings.

        Args:
            frames: Encoder frames `(batch, frames, encoder_hidden)`.
            frame_mask: `(batch, frames)` bool, True on valid frames.

        Returns:
            The embeddings `(batch, windows * queries_per_window, llm_hidden)`, `windows = ceil(frames / window_size)`,
            and their mask `(batch, windows * queries_per_window)`: True for the windows with a valid frame.
        """
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
    A mapper like Ultravox's projector: `stack_factor` consecutive frames are stacked and mapped by an MLP.
    """

    def __init__(self, config: EmoSLLMConfig, encoder_hidden: int):
        """
        The LayerNorm and two-layer MLP, sized by `config.mapper_config` (`stack_factor`, `hidden_size`).

        Args:
            config: The model's config: `mapper_config` and the LLM's width `text_config.hidden_size` (`llm_hidden`).
            encoder_hidden: The width of the encoder frames it reads (`EmoSLLMAudioEncoder.output_size`).
        """
        super().__init__()
        self.stack_factor = config.mapper_config["stack_factor"]
        self.norm = nn.LayerNorm(encoder_hidden * self.stack_factor)
        self.mlp = nn.Sequential(
            nn.Linear(encoder_hidden * self.stack_factor, config.mapper_config["hidden_size"]),
            nn.GELU(),
            nn.Linear(config.mapper_config["hidden_size"], config.text_config.hidden_size),
        )

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Stacks each `stack_factor` consecutive frames (padding frames zeroed, the last group padded) and maps them.

        Args:
            frames: Encoder frames `(batch, frames, encoder_hidden)`.
            frame_mask: `(batch, frames)` bool, True on valid frames.

        Returns:
            The embeddings `(batch, ceil(frames / stack_factor), llm_hidden)` and their mask
            `(batch, ceil(frames / stack_factor))`: True for the groups with a valid frame.
        """
        batch, num_frames, dim = frames.shape
        pad = -num_frames % self.stack_factor
        stacked = F.pad(frames * frame_mask[..., None], (0, 0, 0, pad)).reshape(batch, -1, dim * self.stack_factor)
        mask = F.pad(frame_mask, (0, pad)).reshape(batch, -1, self.stack_factor).any(dim=-1)
        return self.mlp(self.norm(stacked)), mask


def pooled_statistics(frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """
    Mean and standard deviation over each clip's valid frames.

    Args:
        frames: Frames `(batch, frames, dim)`.
        frame_mask: `(batch, frames)` bool, True on valid frames.

    Returns:
        `(batch, 2 * dim)` in `frames`' dtype: the means, then the standard deviations (at least 1e-3).
    """
    weights = frame_mask.to(frames.dtype)[:, None]  # (batch, 1, frames)
    count = weights.sum(dim=-1).clamp(min=1)
    # The masked sums as batched products: one read of the frames each, no masked copy (a third of the time).
    mean = torch.bmm(weights, frames)[:, 0] / count
    variance = torch.bmm(weights, (frames - mean[:, None]).square_())[:, 0] / count
    return torch.cat([mean, variance.clamp(min=1e-6).sqrt()], dim=-1)


class EmoSLLMStatisticsPooling(nn.Module):
    """
    Statistics pooling (as in x-vectors): the mean and standard deviation of the clip's valid encoder frames, mapped
    by one linear layer to `num_queries` LLM embeddings. Not in the paper: on RAVDESS it scored above the Query
    Pooling Mapper in less time (BENCHMARKS.md), with 4 embeddings and the mapper trained at 10x the heads' rate
    (train.py: `--num_queries 4 --mapper_learning_rate 1e-2 --head_learning_rate 1e-3`).
    """

    def __init__(self, config: EmoSLLMConfig, encoder_hidden: int):
        """
        One linear layer from the pooled statistics to `num_queries` (`config.mapper_config`) LLM embeddings.

        Args:
            config: The model's config: `mapper_config` and the LLM's width `text_config.hidden_size` (`llm_hidden`).
            encoder_hidden: The width of the encoder frames it reads (`EmoSLLMAudioEncoder.output_size`).
        """
        super().__init__()
        self.num_queries, self.llm_hidden = config.mapper_config["num_queries"], config.text_config.hidden_size
        self.output_proj = nn.Linear(2 * encoder_hidden, self.num_queries * self.llm_hidden)

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Maps the mean and standard deviation of each clip's valid frames to `num_queries` LLM embeddings.

        Args:
            frames: Encoder frames `(batch, frames, encoder_hidden)`.
            frame_mask: `(batch, frames)` bool, True on valid frames.

        Returns:
            The embeddings `(batch, num_queries, llm_hidden)` and their mask `(batch, num_queries)` (all True).
        """
        embeddings = self.output_proj(pooled_statistics(frames, frame_mask))
        embeddings = embeddings.reshape(-1, self.num_queries, self.llm_hidden)
        return embeddings, frame_mask.new_ones(embeddings.shape[:2])


class EmoSLLMStatisticsProbe(nn.Module):
    """
    Statistics pooling read by a linear emotion probe, whose class probabilities mix the label words' embeddings into
    one audio embedding: a "soft emotion word" that the LLM reads like the word itself. Not in the paper. The probe
    (`statistics_mean`, `statistics_std`, `probe_weight`, `probe_bias`) is fitted, not trained: an L2-regularized
    logistic regression (scikit-learn, `probe_fitting_emosllm`) on labelled clips' pooled statistics
    (`EmoSLLMForSpeechEmotionRecognition.fit_probe` does it from model inputs), which on RAVDESS generalizes to new
    voices better than any gradient-trained mapper measured (BENCHMARKS.md). What trains is `label_embeddings`, which
    starts as the LLM's input embeddings of the label words (`from_backbones`); LoRA then learns to read the mixture
    together with the rest of the prompt (the transcript, other text features).
    """

    def __init__(self, config: EmoSLLMConfig, encoder_hidden: int):
        """
        The probe's buffers (a zero probe until `set_probe`) and `label_embeddings` (set by `from_backbones`).

        Args:
            config: The model's config: `labels` and the LLM's width `text_config.hidden_size` (`llm_hidden`).
            encoder_hidden: The width of the encoder frames it reads (`EmoSLLMAudioEncoder.output_size`).
        """
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
        Within this block the probe's scores are `scores`, for the soft emotion word and the answer's mix: train.py
        shows the LLM each clip's out-of-fold scores (from a probe fitted without its speakers), as for new voices.

        Args:
            scores: Class scores `(batch, num_labels)` (before softmax) of the batch the block's calls read.
        """
        self._given_scores = scores
        try:
            yield
        finally:
            self._given_scores = None

    def class_scores(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """
        The probe's scores (before softmax); inside `given_scores`, the given ones.

        Args:
            frames: Encoder frames `(batch, frames, encoder_hidden)`.
            frame_mask: `(batch, frames)` bool, True on valid frames.

        Returns:
            Float32 scores `(batch, num_labels)` on `frames`' device.
        """
        if self._given_scores is not None:
            if self._given_scores.shape != (frames.shape[0], self.probe_bias.shape[0]):
                raise ValueError(f"given_scores has shape {tuple(self._given_scores.shape)}, but the batch has "
                                 f"{frames.shape[0]} clips of {self.probe_bias.shape[0]} classes.")
            return self._given_scores.to(frames.device, torch.float32)
        return self.scores_of_statistics(pooled_statistics(frames, frame_mask))

    def scores_of_statistics(self, statistics: torch.Tensor) -> torch.Tensor:
        """
        The probe's scores `(clips, num_labels)`, in float32 (its fitted precision) even in a bf16 model (DeepSpeed).

        Args:
            statistics: Pooled statistics `(clips, 2 * encoder_hidden)` (`pooled_statistics`), in any float dtype.
        """
        standardized = (statistics.float() - self.statistics_mean.float()) / self.statistics_std.float()
        return F.linear(standardized, self.probe_weight.float(), self.probe_bias.float())

    def embed_class_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """
        The soft emotion word of probe scores.

        Args:
            scores: Probe scores `(batch, num_labels)` (before softmax); their softmax weighs the label embeddings.

        Returns:
            `(batch, 1, llm_hidden)` in `label_embeddings`' dtype.
        """
        probabilities = scores.float().softmax(dim=-1)
        return self.label_embeddings(probabilities.to(self.label_embeddings.weight.dtype))[:, None]

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Each clip's soft emotion word (`embed_with_scores` without the scores).

        Args:
            frames: Encoder frames `(batch, frames, encoder_hidden)`.
            frame_mask: `(batch, frames)` bool, True on valid frames.

        Returns:
            The soft emotion words `(batch, 1, llm_hidden)` and their mask `(batch, 1)` (all True).
        """
        return self.embed_with_scores(frames, frame_mask)[:2]

    def embed_with_scores(
        self, frames: torch.Tensor, frame_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        `forward`'s soft emotion word and mask, and the probe's scores it was made from.

        Args:
            frames: Encoder frames `(batch, frames, encoder_hidden)` (read in float32).
            frame_mask: `(batch, frames)` bool, True on valid frames.

        Returns:
            The soft emotion word `(batch, 1, llm_hidden)`, its mask `(batch, 1)` (all True), and the probe's float32
            scores `(batch, num_labels)` (`class_scores`).
        """
        scores = self.class_scores(frames.float(), frame_mask)
        embeddings = self.embed_class_scores(scores)
        return embeddings, frame_mask.new_ones(embeddings.shape[:2]), scores

    @torch.no_grad()
    def set_probe(self, mean: torch.Tensor, std: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """
        Sets the probe scoring `((statistics - mean) / std) @ weight.T + bias`; a wrong shape raises `ValueError`.

        Args:
            mean: The standardization's mean `(2 * encoder_hidden,)`.
            std: The standardization's scale `(2 * encoder_hidden,)`.
            weight: The class weights `(num_labels, 2 * encoder_hidden)`.
            bias: The class biases `(num_labels,)`.
        """
        for buffer, value in zip((self.statistics_mean, self.statistics_std, self.probe_weight, self.probe_bias),
                                 (mean, std, weight, bias)):
            if buffer.shape != value.shape:
                raise ValueError(f"The probe expects a tensor of shape {tuple(buffer.shape)}, got {tuple(value.shape)}.")
            buffer.copy_(torch.as_tensor(value, dtype=buffer.dtype))


MAPPERS = {
    "qpmapper": EmoSLLMQueryPoolingMapper,
    "qformer": EmoSLLMWindowQFormer,
    "mlp": EmoSLLMFrameStackMLP,
    "statistics": EmoSLLMStatisticsPooling,
    "probe": EmoSLLMStatisticsProbe,
}


__all__ = [
    "MAPPERS",
    "EmoSLLMAudioEncoder",
    "EmoSLLMFrameStackMLP",
    "EmoSLLMQueryPoolingMapper",
    "EmoSLLMStatisticsPooling",
    "EmoSLLMStatisticsProbe",
    "EmoSLLMWindowQFormer",
    "lengths_to_mask",
    "pooled_statistics",
]
