# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""EmoSLLM configuration: an audio encoder, an interface (adapter) and a causal LLM adapted with LoRA.

The paper is "EmoSLLM: Parameter-Efficient Adaptation of LLMs for Speech Emotion Recognition" (arXiv 2508.14130).
"""

import math
from typing import Literal, get_args

try:  # a saved folder is loaded as a package (relative import); `python train.py` imports top-level modules
    from .dependencies_emosllm import check_installed, check_transformers_version, missing_dependency
except ImportError:
    if __package__:  # loaded as a package: the sibling failed on its own; its error is the one to see
        raise
    from dependencies_emosllm import check_installed, check_transformers_version, missing_dependency

try:  # a missing package is named with its pip command (dependencies_emosllm.py)
    import transformers
except ModuleNotFoundError as error:
    raise missing_dependency(error, __name__) from error
check_transformers_version(transformers.__version__)  # before the names older releases lack (SubConfigSpec: 5.20)
check_installed()  # every package a saved folder needs, named at once; loading a folder imports this file first
from transformers import AutoConfig, PreTrainedConfig  # noqa: E402
from transformers.configuration_utils import SubConfigSpec  # noqa: E402

DEFAULT_LABELS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")

DEFAULT_PROMPT = (
    "Listen to the speech and name the emotion of the speaker. "
    "Answer with one word from: {labels}."
)

# Audio encoders whose input is a log-mel spectrogram with a hop of 160 samples and a stride-2 convolution stem.
WHISPER_LIKE = ("whisper",)
MEL_HOP_LENGTH = 160


class EmoSLLMConfig(PreTrainedConfig):
    r"""
    Configuration of [`EmoSLLMForSpeechEmotionRecognition`].

    audio_config (`dict` or `PreTrainedConfig`):
        Config of the audio encoder: Whisper (its encoder is used), WavLM, HuBERT, wav2vec2 or any other
        `AutoModel` audio encoder of the Hub. Defaults to Whisper tiny.en.
    text_config (`dict` or `PreTrainedConfig`):
        Config of the causal LLM. Defaults to SmolLM2-135M-Instruct (a Llama).
    adapter_type (`str`):
        The interface between encoder and LLM. `"probe"` (train.py's default, the best measured on RAVDESS,
        BENCHMARKS.md; not in the paper): statistics pooling read by a linear emotion probe that is fitted
        (`EmoSLLMForSpeechEmotionRecognition.fit_probe`), not trained, whose class probabilities mix the label
        words' embeddings into one audio embedding, a "soft emotion word". `"qpmapper"` (the config's default: the
        paper's Query Pooling Mapper, `num_queries` outputs per clip). For comparison only, measured below those two:
        `"qformer"` (window-level Q-Former, `queries_per_window` outputs per window of `window_size` encoder
        frames), `"mlp"` (an MLP over `stack_factor` stacked frames) and `"statistics"` (the clip's mean and standard
        deviation over its frames, mapped by one linear layer to `num_queries` embeddings).
    encoder_layer_combination (`str`): how the audio encoder's standardized layers become one frame sequence:
        `"weighted_average"` (a learned softmax-weighted average, SUPERB-style) or `"concatenate"` (every layer side
        by side: frames `(num_layers + 1) * encoder_hidden` wide; what the probe interface is recommended with).
    adapter_hidden_size, adapter_num_layers, adapter_num_heads (`int`):
        Width, depth and heads of the qpmapper's transformer and of the Q-Former (the paper: 768, 2, 8).
    num_queries (`int`): learned queries of the qpmapper (the paper: 32); audio embeddings of the statistics
        interface.
    window_size, queries_per_window (`int`): the Q-Former's window of encoder frames and queries per window.
    stack_factor (`int`): frames stacked into one LLM embedding by the MLP interface.
    freeze_audio_encoder (`bool`): keep the audio encoder frozen (the paper does).
    lora_rank, lora_alpha, lora_dropout, lora_target_modules: LoRA on the LLM (`lora_rank=0`: no LoRA, the LLM is
        frozen and only the interface trains).
    freeze_language_model (`bool`): keep the LLM's own weights frozen (the paper: LoRA adapts it). `False`, with
        `lora_rank=0`, fine-tunes every LLM weight instead (full fine-tuning, for comparison).
    audio_loss_weight (`float`): weight of an auxiliary loss during training: a linear layer (`audio_classifier`)
        names the emotion from the mean of the audio embeddings, so the interface gets a direct training signal
        besides the one that comes back through the LLM. `0` turns it off. Inference reads only the LLM's answer.
    prompt (`str`): the task text; `{labels}` is replaced by the comma-separated label names.
    audio_token (`str`), audio_token_id (`int`): placeholder token that the processor repeats once per audio
        embedding and the model replaces by them. `audio_token_id` is set from the tokenizer.
    label_token_ids (`list[list[int]]`): token ids of each label's words, the LLM's answer for that class (set from
        the tokenizer). Labels may share first tokens or span several words: a class's score is the LLM's
        log-probability of its answer up to the token that tells it from every other label
        (`EmoSLLMForSpeechEmotionRecognition.label_answer_paths`).
    answer_end_token_id (`int`): the token that ends the answer (the tokenizer's end of turn; set from the
        tokenizer). It tells a label from a longer one that starts with its words (`pleasant`, `pleasant surprise`).
    probe_mix_weight (`float`): with the probe interface, the weight `w` of the probe's own class log-probabilities
        in the answer: class scores = `(1 - w) * LLM + w * probe` (both log-softmaxed over the classes). `0` (default):
        the LLM's answer alone. train.py chooses it on held-out speakers (`choose_probe_mix_weight`), so that the
        answer scores at least what the probe scores there.
    max_audio_seconds (`float`): longest clip the processor accepts; longer audio must be segmented (the pipeline
        does it).
    pad_audio_to_max_length (`bool`): pad every clip to `max_audio_seconds` (Whisper's own 30 s habit) instead of
        the longest clip of the batch.
    use_transcript (`str`): `"given"` puts a given transcript into the prompt, `"auto"` also transcribes clips
        that come without one with `asr_model`, `"none"` never uses transcripts.
    asr_model (`str`): Whisper used for automatic transcripts.
    audio_model_id, text_model_id (`str`, optional): the Hub ids of the pretrained audio encoder and LLM. A lean
        save (`save_pretrained`'s default) holds only what EmoSLLM trained and fitted, and loading fetches the
        backbones by these names (`backbones_emosllm.resolve_pretrained`).
    """

    model_type = "emosllm"
    # Trainer's predictions are the answer's class scores only
    keys_to_ignore_at_inference = ["llm_logits", "probe_logits", "audio_logits"]
    sub_configs_defaults = {
        "audio_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="whisper",
            init_kwargs={
                "d_model": 384,
                "encoder_layers": 4,
                "encoder_attention_heads": 6,
                "encoder_ffn_dim": 1536,
                "num_mel_bins": 80,
                "vocab_size": 51864,
            },
        ),
        "text_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="llama",
            init_kwargs={
                "hidden_size": 576,
                "intermediate_size": 1536,
                "num_hidden_layers": 30,
                "num_attention_heads": 9,
                "num_key_value_heads": 3,
                "vocab_size": 49152,
                "max_position_embeddings": 8192,
                "rms_norm_eps": 1e-5,
                "tie_word_embeddings": True,
                "bos_token_id": 1,
                "eos_token_id": 2,
            },
        ),
    }

    audio_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    adapter_type: Literal["qpmapper", "qformer", "mlp", "statistics", "probe"] = "qpmapper"
    encoder_layer_combination: Literal["weighted_average", "concatenate"] = "weighted_average"
    adapter_hidden_size: int = 768
    adapter_num_layers: int = 2
    adapter_num_heads: int = 8
    num_queries: int = 32
    window_size: int = 15
    queries_per_window: int = 3
    stack_factor: int = 8
    freeze_audio_encoder: bool = True
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | str = "all-linear"
    freeze_language_model: bool = True
    audio_loss_weight: float = 0.0
    prompt: str = DEFAULT_PROMPT
    audio_token: str = "<|audio|>"
    audio_token_id: int | None = None
    label_token_ids: list[list[int]] | None = None
    answer_end_token_id: int | None = None
    probe_mix_weight: float = 0.0
    max_audio_seconds: float = 30.0
    pad_audio_to_max_length: bool = False
    use_transcript: Literal["given", "auto", "none"] = "given"
    asr_model: str = "openai/whisper-tiny.en"
    audio_model_id: str | None = None
    text_model_id: str | None = None

    def __post_init__(self, **kwargs):
        if self.id2label is None and "num_labels" not in kwargs:
            self.id2label = dict(enumerate(DEFAULT_LABELS))
        # PreTrainedConfig resets the sub-configs' attention implementation; keep the one they came with (SDPA).
        chosen = {k: getattr(getattr(self, k), "_attn_implementation", None) for k in ("audio_config", "text_config")}
        super().__post_init__(**kwargs)
        for key, implementation in chosen.items():
            if implementation is not None and kwargs.get("attn_implementation") is None:
                getattr(self, key)._attn_implementation = implementation
        self.label2id = {label: i for i, label in self.id2label.items()}
        # The sub-configs remember the folder they were read from (a path of the training machine); a saved config
        # names the backbones by Hub id instead.
        for key, name in (("audio_config", self.audio_model_id), ("text_config", self.text_model_id)):
            getattr(self, key)._name_or_path = name or ""
        # A misspelt choice would otherwise run another one. Checked by hand: huggingface_hub's `@strict` (which
        # transformers' own configs use) would check these, but raises a non-ValueError and rejects ints for float
        # fields (`audio_loss_weight=0`).
        for name in ("adapter_type", "encoder_layer_combination", "use_transcript"):
            choices = get_args(type(self).__annotations__[name])
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {', '.join(choices)}.")
        if self.lora_rank > 0 and not self.freeze_language_model:
            raise ValueError(
                "LoRA and full fine-tuning of the LLM exclude each other: use lora_rank>0 with a frozen LLM, or "
                "freeze_language_model=False with lora_rank=0."
            )
        self.check_label_token_ids()
        if not 0.0 <= self.probe_mix_weight <= 1.0:
            raise ValueError(f"probe_mix_weight={self.probe_mix_weight} must lie in [0, 1].")
        if self.probe_mix_weight > 0 and self.adapter_type != "probe":
            raise ValueError(f"probe_mix_weight={self.probe_mix_weight} mixes the probe's scores into the answer, but "
                             f"adapter_type={self.adapter_type!r} has no probe; set it to 0.")
        if self.is_whisper_encoder:
            max_positions = self.audio_config.max_source_positions
            if self.max_audio_seconds * 16000 // MEL_HOP_LENGTH > 2 * max_positions:
                raise ValueError(
                    f"max_audio_seconds={self.max_audio_seconds} is longer than this Whisper encoder's window "
                    f"({2 * max_positions * MEL_HOP_LENGTH / 16000:g} s)."
                )

    def check_label_token_ids(self) -> None:
        """Every label has tokens, and no two labels have the same ones (the LLM's answer could not tell them apart)."""
        if self.label_token_ids is None:
            return
        if len(self.label_token_ids) != self.num_labels:
            raise ValueError(
                f"label_token_ids has {len(self.label_token_ids)} entries but there are {self.num_labels} labels; "
                "rebuild the processor and config together (EmoSLLMProcessor.from_backbones)."
            )
        seen = {}
        for label, ids in zip(self.labels, self.label_token_ids):
            if not ids:
                raise ValueError(f"Label {label!r} has no tokens; give every class a non-empty name.")
            if tuple(ids) in seen:
                raise ValueError(
                    f"Labels {seen[tuple(ids)]!r} and {label!r} are the same tokens ({ids}) for the LLM, so its "
                    "answer cannot tell them apart; rename one of them."
                )
            seen[tuple(ids)] = label

    @property
    def labels(self) -> list[str]:
        """The class names in id order."""
        return [self.id2label[i] for i in range(self.num_labels)]

    @property
    def is_whisper_encoder(self) -> bool:
        return self.audio_config.model_type in WHISPER_LIKE

    def num_encoder_frames(self, num_samples: int) -> int:
        """Number of audio-encoder output frames for `num_samples` samples at 16 kHz (the encoder's valid frames)."""
        if self.is_whisper_encoder:
            # Two 3-wide convolutions (the second with stride 2) put mel frames 2j-2..2j+2 into encoder frame j; the
            # last mel frame's STFT window reaches past the clip. Frames that see it, or padding, are not counted,
            # so a clip's frames are the same alone and padded in a batch.
            mel_frames = num_samples // MEL_HOP_LENGTH
            return max((mel_frames - 2) // 2, 1)
        # wav2vec2 family: a stack of 1-D convolutions without padding
        length = num_samples
        for kernel, stride in zip(self.audio_config.conv_kernel, self.audio_config.conv_stride):
            length = (length - kernel) // stride + 1
        return max(length, 0)

    def num_audio_embeddings(self, num_samples: int) -> int:
        """
        Number of audio embeddings the interface gives the LLM for a clip of `num_samples` samples at 16 kHz.

        This is the one place that decides it: the processor repeats the audio placeholder this many times and the
        model checks that its interface produced as many.
        """
        if self.adapter_type in ("qpmapper", "statistics"):
            return self.num_queries
        if self.adapter_type == "probe":
            return 1
        frames = self.num_encoder_frames(num_samples)
        if self.adapter_type == "qformer":
            return math.ceil(frames / self.window_size) * self.queries_per_window
        return math.ceil(frames / self.stack_factor)


EmoSLLMConfig.register_for_auto_class()

__all__ = ["EmoSLLMConfig"]
