# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""EmoSLLM configuration: an audio encoder, a mapper into the LLM's embedding space, and a causal LLM adapted with LoRA.

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
DEFAULT_AUDIO_MODEL_ID = "openai/whisper-tiny.en"
DEFAULT_TEXT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SAMPLING_RATE = 16_000  # every clip is resampled to it

# Audio encoders whose input is a log-mel spectrogram with a hop of 160 samples and a stride-2 convolution stem.
WHISPER_LIKE = ("whisper",)
MEL_HOP_LENGTH = 160

# The mapper (the paper's word for the part between the audio encoder and the LLM) and, for each type, its settings
# with the recipe's defaults. `mapper_config` holds `mapper_type` and only that type's settings.
MAPPER_SETTINGS = {
    # statistics pooling read by a fitted linear probe; its class probabilities mix the label words' embeddings into
    # one audio embedding. `mix_weight`: weight of the probe's own class log-probabilities in the answer.
    "probe": {"mix_weight": 0.0},
    # the paper's Query Pooling Mapper (the paper: 768 wide; 256 scored the same with a quarter of the parameters)
    "qpmapper": {"num_queries": 32, "hidden_size": 256, "num_layers": 2, "num_heads": 8},
    # for comparison only (measured below the two above): a window-level Q-Former, a frame-stacking MLP, and
    # statistics pooling mapped by one linear layer
    "qformer": {"window_size": 15, "queries_per_window": 3, "hidden_size": 256, "num_layers": 2, "num_heads": 8},
    "mlp": {"stack_factor": 8, "hidden_size": 256},
    "statistics": {"num_queries": 32},
}
DEFAULT_MAPPER_TYPE = "probe"  # the recipe (BENCHMARKS.md)
# The settings of each mapper that decide a clip's number of audio embeddings (`count_audio_embeddings`), and the
# mappers whose number grows with the clip's encoder frames.
COUNTING_SETTINGS = {"probe": (), "qpmapper": ("num_queries",), "statistics": ("num_queries",),
                     "qformer": ("window_size", "queries_per_window"), "mlp": ("stack_factor",)}
FRAME_MAPPERS = ("qformer", "mlp")

# Keys of folders saved before the config was slimmed (one setting each, flat), and where they went.
_OLD_MAPPER_KEYS = {
    "adapter_hidden_size": "hidden_size", "adapter_num_layers": "num_layers", "adapter_num_heads": "num_heads",
    "num_queries": "num_queries", "window_size": "window_size", "queries_per_window": "queries_per_window",
    "stack_factor": "stack_factor", "probe_mix_weight": "mix_weight",
}
OLD_LORA_KEYS = {"lora_rank": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
                 "lora_target_modules": "target_modules"}
# The processor's own settings (`EmoSLLMProcessor.__init__`, saved in processor_config.json), which older configs held.
PROCESSOR_SETTINGS = ("prompt", "audio_token", "max_audio_seconds", "pad_audio_to_max_length", "use_transcript",
                      "asr_model")


class EmoSLLMConfig(PreTrainedConfig):
    r"""
    Configuration of [`EmoSLLMForSpeechEmotionRecognition`]: an audio encoder, a mapper into the LLM's embedding
    space, and a causal LLM. The defaults are the recipe train.py trains (BENCHMARKS.md).

    Args:
        audio_config (`dict` or `PreTrainedConfig`): the audio encoder's config: Whisper (its encoder is used), WavLM,
            HuBERT, wav2vec2 or any other `AutoModel` audio encoder. Defaults to Whisper tiny.en.
        text_config (`dict` or `PreTrainedConfig`): the causal LLM's config. Defaults to SmolLM2-135M-Instruct.
        mapper_config (`dict`): `{"mapper_type": ..., <that type's settings>}`, see `MAPPER_SETTINGS`: `"probe"`
            (the default; not in the paper: a fitted linear emotion probe whose class probabilities mix the label
            words' embeddings into one audio embedding, a "soft emotion word"), `"qpmapper"` (the paper's Query
            Pooling Mapper), and for comparison `"qformer"`, `"mlp"`, `"statistics"`. Settings left out take the
            type's defaults.
        encoder_layer_combination (`str`): how the encoder's standardized layers become one frame sequence:
            `"concatenate"` (every layer side by side, `(num_layers + 1) * encoder_hidden` wide; the recipe) or
            `"weighted_average"` (a learned softmax-weighted average, SUPERB-style).
        language_model_training (`str`): how the LLM trains: `"lora"` (the paper; LoRA's settings are peft's
            `LoraConfig`, saved as `lora/adapter_config.json`), `"frozen"` (only the mapper trains) or `"full"` (every
            LLM weight, for comparison).
        audio_loss_weight (`float`): weight of an auxiliary training loss: a linear layer (`audio_classifier`) names
            the emotion from the mean audio embedding, a short path for the mapper's gradient. `0` turns it off;
            inference never reads it.
        audio_model_id, text_model_id (`str`, optional): the backbones' Hub ids. A lean save holds only what EmoSLLM
            trained and fitted, and loading fetches the backbones by these names
            (`backbones_emosllm.resolve_pretrained`).
        audio_token_id (`int`): the audio placeholder's token id (set from the tokenizer by
            `EmoSLLMProcessor.from_backbones`); the model puts one audio embedding in place of each.
        label_token_ids (`list[list[int]]`): the tokens of each label's words, the LLM's answer for that class. Labels
            may share first tokens or span several words (`EmoSLLMForSpeechEmotionRecognition.label_answer_paths`).
        answer_end_token_id (`int`): the token that ends the answer (the tokenizer's end of turn). It tells a label
            from a longer one that starts with its words (`pleasant`, `pleasant surprise`).
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
    mapper_config: dict | None = None
    encoder_layer_combination: Literal["concatenate", "weighted_average"] = "concatenate"
    language_model_training: Literal["lora", "frozen", "full"] = "lora"
    audio_loss_weight: float = 1.0
    audio_model_id: str | None = None
    text_model_id: str | None = None
    audio_token_id: int | None = None
    label_token_ids: list[list[int]] | None = None
    answer_end_token_id: int | None = None

    def __post_init__(self, **kwargs):
        self._upgrade_old_keys(kwargs)
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
        self.mapper_config = self.checked_mapper_config(self.mapper_config)
        # A misspelt choice would otherwise run another one. Checked by hand: huggingface_hub's `@strict` (which
        # transformers' own configs use) would check these, but raises a non-ValueError and rejects ints for float
        # fields (`audio_loss_weight=0`).
        for name in ("encoder_layer_combination", "language_model_training"):
            choices = get_args(type(self).__annotations__[name])
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {', '.join(choices)}.")
        self.check_label_token_ids()

    def _upgrade_old_keys(self, kwargs: dict) -> None:
        """
        Maps the flat keys of folders saved before the config was slimmed onto today's fields (the mapper's settings
        into `mapper_config`, `freeze_language_model`/`lora_rank` into `language_model_training`). Their LoRA and
        processor settings are kept aside (`old_lora_settings`, `old_processor_settings`), not saved again: LoRA's
        live in peft's `LoraConfig`, the processor's in `processor_config.json`.
        """
        mapper_type = kwargs.pop("adapter_type", None)
        old_mapper = {new: kwargs.pop(old) for old, new in _OLD_MAPPER_KEYS.items() if old in kwargs}
        if mapper_type is not None and self.mapper_config is None:
            allowed = MAPPER_SETTINGS.get(mapper_type, {})
            self.mapper_config = {"mapper_type": mapper_type, **{k: v for k, v in old_mapper.items() if k in allowed}}
        self._old_lora = {new: kwargs.pop(old) for old, new in OLD_LORA_KEYS.items() if old in kwargs}
        freeze = kwargs.pop("freeze_language_model", None)
        if freeze is not None or "r" in self._old_lora:
            rank = self._old_lora.get("r", 8)
            self.language_model_training = "lora" if rank > 0 else ("frozen" if freeze in (None, True) else "full")
        if kwargs.pop("freeze_audio_encoder", True) is False:
            raise ValueError("freeze_audio_encoder=False is no longer supported: the audio encoder is always frozen.")
        self._old_processor = {key: kwargs.pop(key) for key in PROCESSOR_SETTINGS if key in kwargs}

    @property
    def old_lora_settings(self) -> dict:
        """LoRA settings (peft `LoraConfig` keyword arguments) of a folder saved before they moved to `lora/`."""
        return dict(getattr(self, "_old_lora", {}))

    @property
    def old_processor_settings(self) -> dict:
        """Processor settings of a folder saved before they moved to `processor_config.json`."""
        return dict(getattr(self, "_old_processor", {}))

    def to_dict(self) -> dict:
        output = super().to_dict()
        for key in ("_old_lora", "_old_processor"):
            output.pop(key, None)
        return output

    @staticmethod
    def checked_mapper_config(mapper_config: dict | None) -> dict:
        """
        `mapper_config` with its type's defaults filled in; an unknown type or setting is a `ValueError`.

        Args:
            mapper_config: `{"mapper_type": ..., <some of that type's settings>}`, or None for the default mapper
                (`DEFAULT_MAPPER_TYPE`); not modified.

        Returns:
            A new dict `{"mapper_type": ..., <every setting of that type>}`.
        """
        mapper_config = dict(mapper_config or {"mapper_type": DEFAULT_MAPPER_TYPE})
        mapper_type = mapper_config.pop("mapper_type", None)
        if mapper_type not in MAPPER_SETTINGS:
            raise ValueError(f"mapper_config['mapper_type']={mapper_type!r} is not one of {', '.join(MAPPER_SETTINGS)}.")
        defaults = MAPPER_SETTINGS[mapper_type]
        unknown = sorted(set(mapper_config) - set(defaults))
        if unknown:
            raise ValueError(
                f"mapper_config: {', '.join(unknown)} is no setting of the {mapper_type!r} mapper; its settings are "
                f"{', '.join(defaults) or 'none'}."
            )
        mapper_config = {"mapper_type": mapper_type, **defaults, **mapper_config}
        for key, value in mapper_config.items():  # sizes and counts (every setting but the type and mix_weight)
            if key not in ("mapper_type", "mix_weight") and (isinstance(value, bool) or not isinstance(value, int)
                                                              or value < 1):
                raise ValueError(f"mapper_config['{key}']={value!r}: give a whole number of at least 1.")
        if "num_heads" in mapper_config and mapper_config["hidden_size"] % mapper_config["num_heads"]:
            raise ValueError(f"mapper_config['hidden_size']={mapper_config['hidden_size']} is not divisible by its "
                             f"num_heads={mapper_config['num_heads']}: give a multiple of it.")
        if not 0.0 <= mapper_config.get("mix_weight", 0.0) <= 1.0:
            raise ValueError(f"mapper_config['mix_weight']={mapper_config['mix_weight']} must lie in [0, 1].")
        return mapper_config

    @property
    def mapper_type(self) -> str:
        """The mapper's type (`mapper_config["mapper_type"]`)."""
        return self.mapper_config["mapper_type"]

    @property
    def answered_by_probe(self) -> bool:
        """Whether the answer is the probe's alone (`mapper_config["mix_weight"]` 1, what train.py saves where the LLM
        showed no gain over its probe): then the LLM need not run, nor read a transcript."""
        return self.mapper_config.get("mix_weight", 0.0) == 1.0

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

    def audio_window_seconds(self) -> float | None:
        """The longest clip the audio encoder can read at once (Whisper's window), or None where it has no limit."""
        if not self.is_whisper_encoder:
            return None
        return 2 * self.audio_config.max_source_positions * MEL_HOP_LENGTH / SAMPLING_RATE

    @property
    def encoder_frames_rule(self) -> dict:
        """What decides the audio encoder's number of output frames (`count_encoder_frames`): Whisper's mel hop, or the
        wav2vec2 family's convolution kernels and strides."""
        if self.is_whisper_encoder:
            return {"mel_hop_length": MEL_HOP_LENGTH}
        return {"conv_kernel": list(self.audio_config.conv_kernel), "conv_stride": list(self.audio_config.conv_stride)}

    @property
    def audio_embedding_count(self) -> dict:
        """What decides a clip's number of audio embeddings (`count_audio_embeddings`): the mapper's type, its settings
        that count, and for the mappers whose output grows with the clip the encoder's frame rule. The processor saves
        a copy (`processor_config.json`), and the pipeline checks that it is this model's."""
        rule = {"mapper_type": self.mapper_type,
                **{key: self.mapper_config[key] for key in COUNTING_SETTINGS[self.mapper_type]}}
        if self.mapper_type in FRAME_MAPPERS:
            rule["encoder_frames"] = self.encoder_frames_rule
        return rule

    def num_encoder_frames(self, num_samples: int) -> int:
        """
        Number of audio-encoder output frames for `num_samples` samples at 16 kHz (`count_encoder_frames`).

        Args:
            num_samples: The clip's length in samples at 16 kHz.
        """
        return count_encoder_frames(self.encoder_frames_rule, num_samples)

    def num_audio_embeddings(self, num_samples: int) -> int:
        """
        Number of audio embeddings the mapper gives the LLM for a clip of `num_samples` samples at 16 kHz
        (`count_audio_embeddings`).

        Args:
            num_samples: The clip's length in samples at 16 kHz (read only by the mappers whose output grows with it).
        """
        return count_audio_embeddings(self.audio_embedding_count, num_samples)


def count_encoder_frames(rule: dict, num_samples: int) -> int:
    """
    Number of audio-encoder output frames for `num_samples` samples at 16 kHz (the encoder's valid frames).

    Args:
        rule: `EmoSLLMConfig.encoder_frames_rule`: `{"mel_hop_length": ...}` (Whisper) or `{"conv_kernel": [...],
            "conv_stride": [...]}` (the wav2vec2 family).
        num_samples: The clip's length in samples at 16 kHz.
    """
    if "mel_hop_length" in rule:
        # Two 3-wide convolutions (the second with stride 2) put mel frames 2j-2..2j+2 into encoder frame j; the
        # last mel frame's STFT window reaches past the clip. Frames that see it, or padding, are not counted,
        # so a clip's frames are the same alone and padded in a batch.
        mel_frames = num_samples // rule["mel_hop_length"]
        return max((mel_frames - 2) // 2, 1)
    # wav2vec2 family: a stack of 1-D convolutions without padding
    length = num_samples
    for kernel, stride in zip(rule["conv_kernel"], rule["conv_stride"]):
        length = (length - kernel) // stride + 1
    return max(length, 0)


def count_audio_embeddings(rule: dict, num_samples: int) -> int:
    """
    Number of audio embeddings the mapper gives the LLM for a clip of `num_samples` samples at 16 kHz.

    This is the one place that decides it: the processor repeats the audio placeholder this many times (from its
    saved copy of the rule), and the model checks that its mapper produced as many (from its config's).

    Args:
        rule: `EmoSLLMConfig.audio_embedding_count`: `{"mapper_type": ..., <its counting settings>}`, with
            `"encoder_frames"` for the mappers whose output grows with the clip.
        num_samples: The clip's length in samples at 16 kHz (read only by the mappers whose output grows with it).
    """
    mapper_type = rule["mapper_type"]
    if mapper_type == "probe":
        return 1
    if mapper_type not in FRAME_MAPPERS:
        return rule["num_queries"]
    frames = count_encoder_frames(rule["encoder_frames"], num_samples)
    if mapper_type == "qformer":
        return math.ceil(frames / rule["window_size"]) * rule["queries_per_window"]
    return math.ceil(frames / rule["stack_factor"])


EmoSLLMConfig.register_for_auto_class()

__all__ = [
    "DEFAULT_AUDIO_MODEL_ID",
    "DEFAULT_LABELS",
    "DEFAULT_MAPPER_TYPE",
    "DEFAULT_TEXT_MODEL_ID",
    "MAPPER_SETTINGS",
    "PROCESSOR_SETTINGS",
    "SAMPLING_RATE",
    "EmoSLLMConfig",
    "count_audio_embeddings",
    "count_encoder_frames",
]
