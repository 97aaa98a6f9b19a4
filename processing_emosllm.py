# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""EmoSLLM processor: every step from raw audio, transcripts and labels to the model's input tensors."""

import numbers
import os
from collections.abc import Sequence

# The configuration first: it checks the transformers version before anything else is imported from transformers.
try:  # a saved folder is loaded as a package (relative import); `python train.py` imports top-level modules
    from .audio_emosllm import prepare_clip
    from .backbones_emosllm import hub_id_of, resolve_pretrained
    from .configuration_emosllm import PROCESSOR_SETTINGS, SAMPLING_RATE, EmoSLLMConfig, count_audio_embeddings
    from .dependencies_emosllm import missing_dependency
except ImportError:
    if __package__:  # loaded as a package: the sibling failed on its own (a missing package, an old transformers)
        raise
    from audio_emosllm import prepare_clip
    from backbones_emosllm import hub_id_of, resolve_pretrained
    from configuration_emosllm import PROCESSOR_SETTINGS, SAMPLING_RATE, EmoSLLMConfig, count_audio_embeddings
    from dependencies_emosllm import missing_dependency

try:  # a missing package is named with its pip command (dependencies_emosllm.py)
    import numpy as np
    import torch
    from transformers import AutoConfig, AutoFeatureExtractor, AutoTokenizer, BatchFeature, ProcessorMixin
    from transformers.utils import logging
except ModuleNotFoundError as error:
    raise missing_dependency(error, __name__) from error

logger = logging.get_logger(__name__)

# The first training stage (the paper's ASR task): the LLM writes what was said.
ASR_PROMPT = "Transcribe the speech."

AudioInput = np.ndarray | torch.Tensor

DEFAULT_PROMPT = "Listen to the speech and name the emotion of the speaker. Answer with one word from: {labels}."
DEFAULT_AUDIO_TOKEN = "<|audio|>"
DEFAULT_ASR_MODEL = "openai/whisper-tiny.en"
USE_TRANSCRIPT = ("auto", "given", "none")
# What a saved processor consists of (`save_pretrained`): its settings and the LLM's tokenizer (its vocabulary in one
# of the forms transformers writes).
PROCESSOR_FILES = ("processor_config.json", "tokenizer_config.json", "tokenizer.json|tokenizer.model|vocab.json")


def feature_value(value) -> str | None:
    """A table cell as a text feature's value: its text, or None where empty (None, blank, NaN: a pandas gap)."""
    empty = value is None or (isinstance(value, float) and value != value) or not str(value).strip()
    return None if empty else str(value)


class EmoSLLMInputChecks:
    """
    The processor's checks of what a call is given, before anything runs: text (no special tokens, a prompt within
    the LLM's positions) and labels; and that a processor and a model belong together (`check_model`). Mixed into
    `EmoSLLMProcessor`, which provides `tokenizer`, `audio_token`, `labels`, `audio_embedding_count`,
    `max_audio_seconds`, `max_prompt_tokens` and `build_prompt`.
    """

    def prompt_text(self, value, name: str) -> str:
        """A transcript, or a text feature's name or value, for the prompt. It must hold none of the tokenizer's special
        tokens (`tokenizer.all_special_tokens`: the chat template's control tokens such as `<|im_end|>`, the audio
        placeholder `<|audio|>`), which it would read as the tokens themselves: a transcript is data and must never end
        the user turn or add audio slots. Rejected (`ValueError`), not escaped: an escaped token would still silently
        change what the model reads, and a transcript that holds one is an upstream bug (or an attack) to fix.

        Args:
            value: A str or a number (written out).
            name: What the error names (the argument).

        Returns:
            The text.
        """
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (str, numbers.Number)):
            raise ValueError(f"{name}: expected a str, got {type(value).__name__} ({value!r:.80}); pass text.")
        text = str(value)
        special = {*self.tokenizer.all_special_tokens, self.audio_token,
                   *(token.content for token in self.tokenizer.added_tokens_decoder.values() if token.special)}
        found = sorted(token for token in special if token and token in text)
        if found:
            raise ValueError(
                f"{name}: the text holds the tokenizer's special token(s) {found}, which would be read as control "
                "tokens of the prompt (the chat template, the audio placeholder); remove or replace them."
            )
        return text

    def check_text_inputs(
        self, transcript=None, text_features=None, name: str = "audio", num_samples: int | None = None
    ) -> None:
        """The boundary check of one clip's text: no special tokens in any (`prompt_text`), and with `num_samples` the
        whole prompt within the LLM's positions (a 100,000-character transcript is an error here, not a minutes-long
        forward). Raises `ValueError` naming the clip and the argument.

        Args:
            transcript: The clip's transcript: a str, or None.
            text_features: The clip's other features as a dict of str names to str (or number) values, or None.
            name: The clip, as errors name it; empty for a call's argument.
            num_samples: The clip's length in samples at 16 kHz, to check the prompt's length; None skips that check.
        """
        prefix = f"{name}: " if name else ""
        if transcript is not None:
            if not isinstance(transcript, str):
                raise ValueError(
                    f"{prefix}transcript must be a str or None, got {type(transcript).__name__} ({transcript!r:.80})."
                )
            self.prompt_text(transcript, f"{prefix}transcript")
        if text_features is not None:
            if not isinstance(text_features, dict):
                raise ValueError(
                    f"{prefix}text_features must be a dict such as {{'gender': 'female'}} or None, got "
                    f"{type(text_features).__name__} ({text_features!r:.80})."
                )
            for key, value in text_features.items():
                if not isinstance(key, str) or not key.strip():
                    raise ValueError(f"{prefix}text_features names must be non-empty str, got {key!r}.")
                self.prompt_text(key, f"{prefix}text_features name {key!r}")
                self.prompt_text(value, f"{prefix}text_features[{key!r}]")
        limit = self.max_prompt_tokens
        if limit is not None and num_samples is not None:
            length = len(self.tokenizer(self.build_prompt(num_samples, transcript, text_features),
                                        add_special_tokens=False).input_ids)
            if length > limit:
                raise ValueError(
                    f"{prefix}the prompt is {length} tokens long (transcript: {len(transcript or '')} characters), "
                    f"more than the LLM's {limit} positions; shorten the transcript or text_features, or cut the "
                    "audio into shorter clips."
                )

    def check_built(self) -> None:
        """The processor knows its model's labels and count of audio placeholders (`build` or `from_pretrained` gave
        them); else `ValueError` saying how to make one that does."""
        if self.labels is None or self.audio_embedding_count is None:
            raise ValueError(
                "This processor has no labels or count of audio placeholders; build it with its model "
                "(EmoSLLMProcessor.from_backbones) or load it from the model's folder (EmoSLLMProcessor.from_pretrained)."
            )

    def stated_features(self, text_features: dict | None) -> dict:
        """
        The text features a prompt states: those the model was trained with (`self.text_features`); any other is left
        out (checked all the same) and a trained one missing is not stated, each said once (a warning).

        Args:
            text_features: A clip's features as `{name: value}`, or None.
        """
        given = text_features or {}
        if missing := [name for name in self.text_features if name not in given]:
            logger.warning_once(f"This model was trained with the text features {self.text_features}; a clip without "
                                f"{', '.join(map(repr, missing))} is classified without them (pass text_features).")
        for key, value in given.items():
            self.prompt_text(key, f"text_features name {key!r}")
            self.prompt_text(value, f"text_features[{key!r}]")
            if key not in self.text_features:
                logger.warning_once(f"text_features {key!r} is left out of the prompt: this model was trained with "
                                    f"{self.text_features or 'none'} (train.py --text_feature_columns {key} reads it).")
        return {key: value for key, value in given.items() if key in self.text_features}

    def check_model(self, config: EmoSLLMConfig) -> None:
        """The processor belongs to the model of `config`: the same labels and count of audio placeholders, and clips
        no longer than its audio encoder reads.

        Args:
            config: The model's `EmoSLLMConfig`.

        Raises:
            ValueError: They disagree (say which, and how to load a matching pair).
        """
        self.check_built()
        for name, mine, models in (("labels", self.labels, config.labels),
                                   ("audio_embedding_count", self.audio_embedding_count, config.audio_embedding_count)):
            if mine != models:
                raise ValueError(
                    f"The processor's {name} ({mine}) are not the model's ({models}): they come from different "
                    "models. Load both from the same folder."
                )
        window = config.audio_window_seconds()
        if window is not None and self.max_audio_seconds > window:
            raise ValueError(
                f"max_audio_seconds={self.max_audio_seconds} is longer than this Whisper encoder's window ({window:g} s)."
            )

    def label_ids(self, labels: Sequence[str | int]) -> torch.Tensor:
        """Label names (or ids) -> class ids; unknown labels raise `ValueError`.

        Args:
            labels: Each clip's label name, or its class id.

        Returns:
            The class ids, int64 `(batch,)`.
        """
        ids = []
        for label in labels:
            if isinstance(label, (int, np.integer)) and 0 <= label < len(self.labels):
                ids.append(int(label))
            elif label in self.labels:
                ids.append(self.labels.index(label))
            else:
                raise ValueError(
                    f"Unknown label {label!r}; this model knows {self.labels}. Map it to one of them or "
                    "train a model with this label (train.py --labels ...)."
                )
        return torch.tensor(ids)


class EmoSLLMProcessor(EmoSLLMInputChecks, ProcessorMixin):
    r"""Wraps the audio encoder's feature extractor and the LLM's tokenizer; owns all input preparation: checking,
    resampling and down-mixing audio, the prompt (task text, audio placeholders, transcript, text features), batching,
    padding and label ids. Everything it needs is its own and saved in `processor_config.json`: the settings, the
    label words, and the model's rule for a clip's number of audio placeholders (`audio_embedding_count`). It reads no
    model file: the pipeline checks that processor and model belong together (`check_model`).
    """

    def __init__(
        self, feature_extractor, tokenizer, chat_template=None, labels: Sequence[str] | None = None,
        audio_embedding_count: dict | None = None, max_prompt_tokens: int | None = None,
        prompt: str = DEFAULT_PROMPT, audio_token: str = DEFAULT_AUDIO_TOKEN, max_audio_seconds: float = 30.0,
        pad_audio_to_max_length: bool = False, use_transcript: str = "auto", asr_model: str = DEFAULT_ASR_MODEL,
        text_features: Sequence[str] = (),
    ):
        """The processor. `build` (or `from_backbones`) makes one together with its model's config.

        Args:
            feature_extractor: The audio encoder's feature extractor.
            tokenizer: The LLM's tokenizer, with the audio placeholder token added (`build`).
            chat_template: The processor's chat template (`ProcessorMixin`'s), or None; prompts use the tokenizer's.
            labels: The class names in id order (the model's `config.labels`); the prompt lists them.
            audio_embedding_count: The model's `config.audio_embedding_count`: what decides a clip's number of audio
                placeholders (`configuration_emosllm.count_audio_embeddings`).
            max_prompt_tokens: The LLM's positions, the longest prompt it reads; None: no limit checked.
            prompt: The task text; `{labels}` is replaced by the comma-separated label names.
            audio_token: The placeholder token, repeated once per audio embedding (the model replaces them).
            max_audio_seconds: The longest clip accepted; longer audio must be segmented (the pipeline does it).
            pad_audio_to_max_length: Pad to `max_audio_seconds` (Whisper's 30 s habit), not to the batch's longest clip.
            use_transcript: `"auto"` (the recipe): a given transcript goes into the prompt, and the pipeline has Whisper
                (`asr_model`) transcribe clips that come without one; `"given"`: only given ones; `"none"`: never.
            asr_model: The Whisper (folder or Hub id) that writes automatic transcripts.
            text_features: The names of the text features the model was trained with (train.py
                `--text_feature_columns`); the prompt states those only, and leaves out others with a warning (the
                model never read them), as a model trained without transcripts reads none.
        """
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template)
        if use_transcript not in USE_TRANSCRIPT:
            raise ValueError(f"use_transcript={use_transcript!r} is not one of {', '.join(USE_TRANSCRIPT)}.")
        self.labels = list(labels) if labels is not None else None
        self.audio_embedding_count, self.max_prompt_tokens = audio_embedding_count, max_prompt_tokens
        self.prompt, self.audio_token, self.asr_model = prompt, audio_token, asr_model
        self.max_audio_seconds, self.pad_audio_to_max_length = max_audio_seconds, pad_audio_to_max_length
        self.use_transcript = use_transcript
        self.text_features = list(text_features)

    def num_audio_embeddings(self, num_samples: int) -> int:
        """A clip's number of audio placeholders: the model's rule (`count_audio_embeddings`), from the saved copy.

        Args:
            num_samples: The clip's length in samples at 16 kHz.
        """
        self.check_built()
        return count_audio_embeddings(self.audio_embedding_count, num_samples)

    # ----------------------------------------------------------------------------------------------------------------
    # Construction, saving and loading
    # ----------------------------------------------------------------------------------------------------------------
    @classmethod
    def from_backbones(
        cls, audio_encoder: str, llm: str, labels: Sequence[str] | None = None, **kwargs
    ) -> tuple["EmoSLLMProcessor", EmoSLLMConfig]:
        """A new processor and its model's `EmoSLLMConfig`, for the pretrained backbones `audio_encoder` and `llm`.

        Args:
            audio_encoder: The audio encoder's folder or Hub id (its feature extractor and config are loaded; offline,
                a bundled id loads its converted copy: `backbones_emosllm.resolve_pretrained`).
            llm: The LLM's folder or Hub id (its tokenizer and config are loaded; resolved likewise).
            labels: The class names in id order; None: the config's default labels.
            **kwargs: The processor's settings (`__init__`) and the config's fields (`EmoSLLMConfig`).

        Returns:
            `(processor, config)`: build the model from `config` (`EmoSLLMForSpeechEmotionRecognition.from_backbones`).
        """
        kwargs.setdefault("audio_model_id", hub_id_of(audio_encoder))
        kwargs.setdefault("text_model_id", hub_id_of(llm))
        audio_encoder, llm = resolve_pretrained(audio_encoder), resolve_pretrained(llm)  # offline: a bundled copy
        return cls.build(
            AutoFeatureExtractor.from_pretrained(audio_encoder),
            AutoTokenizer.from_pretrained(llm),
            AutoConfig.from_pretrained(audio_encoder),
            AutoConfig.from_pretrained(llm),
            labels=labels,
            **kwargs,
        )

    @classmethod
    def build(
        cls, feature_extractor, tokenizer, audio_config, text_config, labels=None, **kwargs
    ) -> tuple["EmoSLLMProcessor", EmoSLLMConfig]:
        """Adds the audio placeholder token to `tokenizer` and makes the model's config that matches it.

        Args:
            feature_extractor: The audio encoder's feature extractor.
            tokenizer: The LLM's tokenizer; changed in place (placeholder token, left padding, a pad token).
            audio_config, text_config: The audio encoder's config and the LLM's.
            labels: The class names in id order; None: the config's default labels.
            **kwargs: The processor's settings (`__init__`) and the config's fields (`EmoSLLMConfig`).

        Returns:
            `(processor, config)`: the config with its label token ids and audio token id set.
        """
        settings = {key: kwargs.pop(key) for key in (*PROCESSOR_SETTINGS, "text_features") if key in kwargs}
        config_kwargs = kwargs
        audio_token = settings.get("audio_token", DEFAULT_AUDIO_TOKEN)
        tokenizer.add_special_tokens({"additional_special_tokens": [audio_token]})
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if labels is not None:
            config_kwargs["id2label"] = dict(enumerate(labels))
        config = EmoSLLMConfig(audio_config=audio_config, text_config=text_config, **config_kwargs)
        config.audio_token_id = tokenizer.convert_tokens_to_ids(audio_token)
        # Each label's answer: the tokens the LLM writes for it right after the answer prompt, then the end of the turn
        # (`text_inputs` appends the same token to the training answers).
        config.label_token_ids = [tokenizer(label, add_special_tokens=False).input_ids for label in config.labels]
        config.answer_end_token_id = tokenizer.eos_token_id
        config.check_label_token_ids()
        processor = cls(feature_extractor, tokenizer, **cls.settings_from_config(config), **settings)
        processor.check_model(config)
        return processor, config

    @staticmethod
    def settings_from_config(config: EmoSLLMConfig) -> dict:
        """What the processor keeps of its model's config: the labels, the count of audio placeholders and the LLM's
        positions (`__init__`'s `labels`, `audio_embedding_count`, `max_prompt_tokens`).

        Args:
            config: The model's `EmoSLLMConfig`.
        """
        positions = None
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            if isinstance(getattr(config.text_config, key, None), int):
                positions = getattr(config.text_config, key)
                break
        return {"labels": config.labels, "audio_embedding_count": config.audio_embedding_count,
                "max_prompt_tokens": positions}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "EmoSLLMProcessor":
        """Loads a saved processor. A folder saved before the processor kept its labels and count of audio placeholders
        in `processor_config.json` gets them (and the settings older folders kept there) from its `config.json`.

        Args:
            pretrained_model_name_or_path: A saved folder or Hub repo id.
            **kwargs: Passed to `ProcessorMixin.from_pretrained` (`cache_dir`, `revision`, `token` and
                `local_files_only` also to an old folder's config); a processor setting given here wins over the saved.

        Returns:
            The processor.

        Raises:
            FileNotFoundError: a local folder lacks one of the processor's files (`PROCESSOR_FILES`).
        """
        folder = os.path.join(str(pretrained_model_name_or_path), kwargs.get("subfolder") or "")
        if os.path.isdir(folder):  # a local folder without them gets transformers' remote-code prompt, then a riddle
            missing = [names.replace("|", " or ") for names in PROCESSOR_FILES
                       if not any(os.path.isfile(os.path.join(folder, name)) for name in names.split("|"))]
            if missing:
                raise FileNotFoundError(
                    f"{pretrained_model_name_or_path} is incomplete: {', '.join(missing)} (the processor's files) "
                    "missing. Copy or download the whole folder again, or save the processor again "
                    "(processor.save_pretrained(folder))."
                )
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        processor.tokenizer.padding_side = "left"  # as `build` sets it; tokenizer_config.json does not keep it
        if processor.labels is None:  # saved before 2026-12-07: the model's config.json holds what the processor needs
            config_kwargs = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
            config = EmoSLLMConfig.from_pretrained(pretrained_model_name_or_path, **config_kwargs)
            for key, value in {**config.old_processor_settings, **cls.settings_from_config(config)}.items():
                if key not in kwargs:
                    setattr(processor, key, value)
            processor.check_model(config)
        return processor

    # ----------------------------------------------------------------------------------------------------------------
    # Audio
    # ----------------------------------------------------------------------------------------------------------------
    def prepare_audio(
        self, audio: AudioInput, sampling_rate: int | None = None, name: str = "audio", check_length: bool = True
    ) -> np.ndarray:
        """Checks one clip (`check_audio`, as for training data and inference input: `prepare_clip`), mixes stereo down
        and resamples other rates; `ValueError` naming `name` for audio that cannot give an honest answer.

        Args:
            audio: Float samples: `(samples,)`, or 2-D with channels first or last.
            sampling_rate: Their rate in Hz; None means 16 kHz.
            name: What errors name the clip.
            check_length: Reject clips over `max_audio_seconds` (the pipeline checks a recording whole, then cuts it).

        Returns:
            float32 mono samples at 16 kHz, `(samples,)`.
        """
        return prepare_clip(audio, sampling_rate, name, self.max_audio_seconds if check_length else None)

    def audio_features(self, audios: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Feature extraction of prepared clips, padded to the batch's longest clip (or to `max_audio_seconds`).

        Args:
            audios: The clips from `prepare_audio`, float32 mono at 16 kHz, each `(samples,)`.

        Returns:
            `input_features` `(batch, num_mel_bins, mel_frames)` for Whisper, `(batch, samples)` for the wav2vec2
            family, and `audio_lengths` `(batch,)`: each clip's samples before padding.
        """
        padding = ({"padding": "max_length", "max_length": int(self.max_audio_seconds * SAMPLING_RATE)}
                   if self.pad_audio_to_max_length else {"padding": "longest"})
        features = self.feature_extractor(
            audios, sampling_rate=SAMPLING_RATE, return_tensors="pt", return_attention_mask=False, **padding
        )
        values = features["input_features"] if "input_features" in features else features["input_values"]
        return {"input_features": values, "audio_lengths": torch.tensor([len(a) for a in audios])}

    # ----------------------------------------------------------------------------------------------------------------
    # Text
    # ----------------------------------------------------------------------------------------------------------------
    def build_prompt(
        self, num_samples: int, transcript: str | None = None, text_features: dict | None = None, task: str = "ser"
    ) -> str:
        """The prompt of one clip in the LLM's chat template: the task text as the system turn (the same for every clip,
        so it comes first and replaces the template's default system text), a user turn stating the transcript and text
        features, then the audio placeholders, opening the assistant's turn after the template's constant tokens.
        `task="asr"` asks for the transcript instead (the first training stage), so it shows none. The audio comes last,
        right before the answer (the paper puts it first), so the answer position sits next to the audio it reads;
        everything before it, the same for every clip without a transcript, is computed once (the model's prompt cache),
        so a clip costs the LLM only its audio embeddings. Why, measured: docs/architecture.md, "The steps in words".

        Args:
            num_samples: The clip's length in samples at 16 kHz (decides the number of audio placeholders).
            transcript: Its transcript, or None.
            text_features: Other features as `{name: value}` (e.g. `{"gender": "female"}`), or None; only those the
                model was trained with (`self.text_features`) are stated, the others left out with a warning.
            task: `"ser"` (emotion recognition) or `"asr"` (transcription).

        Returns:
            The prompt text, ending with the audio placeholders.
        """
        self.check_built()
        lines = []
        if task == "asr":
            instruction = ASR_PROMPT
        else:
            instruction = self.prompt.format(labels=", ".join(self.labels))
            if transcript:
                lines.append(f'Transcript: "{self.prompt_text(transcript, "transcript").strip()}"')
            for key, value in self.stated_features(text_features).items():
                lines.append(f"{self.prompt_text(key, f'text_features name {key!r}').replace('_', ' ').capitalize()}: "
                             f"{self.prompt_text(value, f'text_features[{key!r}]')}.")
        lines.append("Speech:")
        user = "\n".join(lines)
        audio = self.audio_token * self.num_audio_embeddings(num_samples)
        if not self.tokenizer.chat_template:
            return f"System: {instruction}\nUser: {user}\nAssistant:{audio}"
        messages = [{"role": "system", "content": instruction}, {"role": "user", "content": user}]
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception:  # a template without a system role (jinja's raise_exception): the task opens the user turn
            messages = [{"role": "user", "content": f"{instruction}\n{user}"}]
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text + audio

    def text_inputs(
        self,
        num_samples: Sequence[int],
        transcripts: Sequence[str | None],
        text_features: Sequence[dict | None],
        task: str = "ser",
        answers: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Left-padded token ids; with `answers`, each answer's tokens and the end-of-turn token follow the prompt,
        marked in `lm_labels` (-100 elsewhere) for the LLM's next-token loss (the paper's training target).

        Args:
            num_samples: Each clip's length in samples at 16 kHz.
            transcripts: Each clip's transcript, or None.
            text_features: Each clip's other features as `{name: value}`, or None.
            task: `"ser"` (emotion recognition) or `"asr"` (transcription: every clip needs a transcript, its answer).
            answers: Each clip's label word, for training; None for inference (ignored with `task="asr"`).

        Returns:
            `input_ids`, `attention_mask` (int64 `(batch, seq)`), with answers `lm_labels` `(batch, seq)`.
        """
        prompts = [self.build_prompt(n, t, f, task) for n, t, f in zip(num_samples, transcripts, text_features)]
        if task == "asr":
            if any(not t for t in transcripts):
                raise ValueError("The ASR stage needs a transcript for every clip (given, or use_transcript='auto').")
            answers = [t.strip() for t in transcripts]
        sequences, targets = [], []
        for i, prompt in enumerate(prompts):
            prompt_ids = self.tokenizer(prompt, add_special_tokens=False).input_ids
            answer_ids = []
            if answers is not None:
                answer_ids = self.tokenizer(answers[i], add_special_tokens=False).input_ids
                answer_ids = answer_ids + [self.tokenizer.eos_token_id]
            sequences.append(prompt_ids + answer_ids)
            targets.append([-100] * len(prompt_ids) + answer_ids)
        # Padded on the left by hand, whatever the tokenizer's own padding side (a reloaded tokenizer may say
        # "right"): the answer position is the last one of every prompt.
        longest = max(len(ids) for ids in sequences)
        pad = [longest - len(ids) for ids in sequences]
        inputs = {
            "input_ids": torch.tensor([[self.tokenizer.pad_token_id] * p + ids for p, ids in zip(pad, sequences)]),
            "attention_mask": torch.tensor([[0] * p + [1] * len(ids) for p, ids in zip(pad, sequences)]),
        }
        if answers is not None:
            inputs["lm_labels"] = torch.tensor([[-100] * p + ids for p, ids in zip(pad, targets)])
        return inputs

    # ----------------------------------------------------------------------------------------------------------------
    # The call
    # ----------------------------------------------------------------------------------------------------------------
    def __call__(
        self,
        audio: AudioInput | Sequence[AudioInput],
        sampling_rate: int | None = None,
        transcript: str | None | Sequence[str | None] = None,
        text_features: dict | Sequence[dict] | None = None,
        labels: str | int | Sequence[str | int] | None = None,
    ) -> BatchFeature:
        """Prepare one clip or a batch.

        Args:
            audio: One clip (1-D, or 2-D stereo; more channels inside a list), or a list of clips; floats in [-1, 1].
            sampling_rate: The rate of `audio` (None: 16 kHz, with a warning); other rates are resampled.
            transcript: Per-clip transcript (or None), used as given (`"none"` models read none); automatic transcripts
                are a step before the processor (`transcription_emosllm.resolve_transcripts`).
            text_features: Per-clip dict of other features given as natural language, e.g. `{"gender": "female"}`.
            labels: Per-clip label names or ids, for training: the label word then follows each prompt as the answer.

        Returns:
            A `BatchFeature` with `input_ids`, `attention_mask` `(batch, seq)`, `input_features` (`(batch, mel_bins,
            frames)` or `(batch, samples)`), `audio_lengths` `(batch,)`, and with `labels` also `labels` `(batch,)` and
            `lm_labels` `(batch, seq)` (the answer's tokens, -100 elsewhere).
        """
        if isinstance(audio, (str, bytes, os.PathLike)):
            raise ValueError(f"audio: got a {type(audio).__name__}; the processor takes samples (decode a file with "
                             "read_audio_file, or give the file to the pipeline).")
        if isinstance(audio, (np.ndarray, torch.Tensor)):  # one array: one clip (stereo mixed down)
            if audio.ndim == 2 and min(audio.shape) > 2:  # transformers' feature extractors read a 2-D array as a batch
                count = min(audio.shape)
                raise ValueError(f"audio: {count} channels of one clip, or {count} clips ({tuple(audio.shape)})? Pass "
                                 "clips as a list of 1-D arrays, one clip's channels as [audio] (mixed down).")
            audios = [audio]
        elif isinstance(audio, (list, tuple)):
            audios = list(audio)
        else:
            raise ValueError(f"audio: expected a float array or a list of them, got {type(audio).__name__}.")
        if len(audios) == 0:
            raise ValueError("No audio given.")
        if sampling_rate is None:  # as transformers' feature extractors warn: audio at another rate would be misread
            logger.warning_once("No sampling_rate given to the processor, so the audio is read as 16 kHz: pass "
                                "sampling_rate=... (other rates are resampled).")
        names = ["audio"] if len(audios) == 1 else [f"audio[{i}]" for i in range(len(audios))]
        audios = [self.prepare_audio(a, sampling_rate, name) for a, name in zip(audios, names)]
        transcripts = self._per_clip(transcript, len(audios), "transcript")
        features = self._per_clip(text_features, len(audios), "text_features")
        for text, feature, name in zip(transcripts, features, names):
            self.check_text_inputs(text, feature, name)
        if self.use_transcript == "none":  # a model trained without transcripts reads none
            if any(text is not None for text in transcripts):
                logger.warning_once("This model was trained without transcripts (use_transcript='none'): the "
                                    "transcripts given are not read.")
            transcripts = [None] * len(audios)
        for clip, text, feature, name in zip(audios, transcripts, features, names):  # the prompt fits the LLM
            self.check_text_inputs(text, feature, name, num_samples=len(clip))
        label_ids, answers = None, None
        if labels is not None:  # training inputs: the label word is the answer the LLM learns to write
            label_ids = self.label_ids(self._per_clip(labels, len(audios), "labels"))
            answers = [self.labels[i] for i in label_ids.tolist()]
        data = {**self.text_inputs([len(a) for a in audios], transcripts, features, answers=answers),
                **self.audio_features(audios)}
        if label_ids is not None:
            data["labels"] = label_ids
        return BatchFeature(data)

    @staticmethod
    def _per_clip(value, batch: int, name: str) -> list:
        """One value per clip: None for every clip, a single value for a single clip, or a list of `batch`."""
        if value is None:
            return [None] * batch
        if isinstance(value, torch.Tensor) and value.ndim == 0:
            value = value.item()
        values = list(value) if isinstance(value, (list, tuple, np.ndarray, torch.Tensor)) else [value]
        if len(values) != batch:
            raise ValueError(f"{name}: got {len(values)} values for {batch} clips; give one per clip.")
        return values

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)


EmoSLLMProcessor.register_for_auto_class()

__all__ = ["ASR_PROMPT", "DEFAULT_PROMPT", "PROCESSOR_FILES", "EmoSLLMInputChecks", "EmoSLLMProcessor", "feature_value"]
