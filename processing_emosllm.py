# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""EmoSLLM processor: every step from raw audio, transcripts and labels to the model's input tensors."""

import os
from collections.abc import Sequence
from math import gcd

import numpy as np
import torch
from scipy.signal import resample_poly
from transformers import AutoConfig, AutoFeatureExtractor, AutoTokenizer, BatchFeature, ProcessorMixin

try:  # a saved folder is loaded as a package (relative import); `python train.py` imports top-level modules
    from .configuration_emosllm import EmoSLLMConfig
except ImportError:
    from configuration_emosllm import EmoSLLMConfig

SAMPLING_RATE = 16000
# Peak below this (-80 dBFS) counts as silence: such a clip carries no emotion to classify.
SILENCE_PEAK = 1e-4
# The first training stage (the paper's ASR task): the LLM writes what was said.
ASR_PROMPT = "Transcribe the speech."

AudioInput = np.ndarray | torch.Tensor


class EmoSLLMProcessor(ProcessorMixin):
    r"""
    Wraps the audio encoder's feature extractor and the LLM's tokenizer. It owns all input preparation: checking,
    resampling and down-mixing audio, the prompt (task text, audio placeholders, transcript and other text features),
    batching and padding, and label ids.

    The model's `EmoSLLMConfig` (held as `processor.config`, read from `config.json` next to the processor files)
    decides the labels, the prompt and how many audio placeholders a clip gets.
    """

    def __init__(self, feature_extractor, tokenizer, config: EmoSLLMConfig | None = None, chat_template=None):
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template)
        self.config = config

    # ----------------------------------------------------------------------------------------------------------------
    # Construction, saving and loading
    # ----------------------------------------------------------------------------------------------------------------
    @classmethod
    def from_backbones(
        cls, audio_encoder: str, llm: str, labels: Sequence[str] | None = None, **config_kwargs
    ) -> "EmoSLLMProcessor":
        """
        A new processor, and its `EmoSLLMConfig` (`processor.config`), for the pretrained backbones in the folders
        (or Hub ids) `audio_encoder` and `llm`.
        """
        return cls.build(
            AutoFeatureExtractor.from_pretrained(audio_encoder),
            AutoTokenizer.from_pretrained(llm),
            AutoConfig.from_pretrained(audio_encoder),
            AutoConfig.from_pretrained(llm),
            labels=labels,
            **config_kwargs,
        )

    @classmethod
    def build(cls, feature_extractor, tokenizer, audio_config, text_config, labels=None, **config_kwargs):
        """Adds the audio placeholder token to `tokenizer` and makes the config that matches it."""
        audio_token = config_kwargs.get("audio_token", EmoSLLMConfig.audio_token)
        tokenizer.add_special_tokens({"additional_special_tokens": [audio_token]})
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if labels is not None:
            config_kwargs["id2label"] = dict(enumerate(labels))
        config = EmoSLLMConfig(audio_config=audio_config, text_config=text_config, **config_kwargs)
        config.audio_token_id = tokenizer.convert_tokens_to_ids(audio_token)
        # The verbalizer: the tokens the LLM would write for each label right after the answer prompt.
        config.label_token_ids = [tokenizer(label, add_special_tokens=False).input_ids for label in config.labels]
        return cls(feature_extractor, tokenizer, config=config)

    def to_dict(self) -> dict:
        output = super().to_dict()
        output.pop("config", None)  # saved as config.json by the model, not twice
        return output

    def save_pretrained(self, save_directory, **kwargs):
        files = super().save_pretrained(save_directory, **kwargs)
        if not os.path.exists(os.path.join(save_directory, "config.json")):
            self.config.save_pretrained(save_directory)
        return files

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "EmoSLLMProcessor":
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        config_kwargs = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
        processor.config = EmoSLLMConfig.from_pretrained(pretrained_model_name_or_path, **config_kwargs)
        return processor

    # ----------------------------------------------------------------------------------------------------------------
    # Audio
    # ----------------------------------------------------------------------------------------------------------------
    def prepare_audio(
        self, audio: AudioInput, sampling_rate: int | None = None, name: str = "audio", check_length: bool = True
    ) -> np.ndarray:
        """
        One clip -> float32 mono at 16 kHz. Stereo is mixed down (channels first or last), other rates resampled.
        Raises `ValueError` naming `name` for audio that cannot give an honest answer. `check_length=False` accepts
        clips longer than `max_audio_seconds` (the pipeline checks a whole recording, then cuts it into segments).
        """
        if isinstance(audio, torch.Tensor):
            audio = audio.detach().cpu().numpy()
        audio = np.asarray(audio)
        if not np.issubdtype(audio.dtype, np.floating):
            raise ValueError(
                f"{name}: samples have dtype {audio.dtype}; pass floating-point samples in [-1, 1] "
                "(e.g. int16 PCM divided by 32768)."
            )
        if audio.ndim == 2:
            channels_first = audio.shape[0] <= audio.shape[1]
            audio = audio.mean(axis=0 if channels_first else 1)
        if audio.ndim != 1:
            raise ValueError(f"{name}: expected a 1-D clip or a 2-D (channels, samples) array, got shape {audio.shape}.")
        if audio.size == 0:
            raise ValueError(f"{name}: the clip is empty; pass at least some speech.")
        if not np.isfinite(audio).all():
            raise ValueError(f"{name}: the clip has NaN or infinite samples; fix or drop the recording.")
        if np.abs(audio).max() < SILENCE_PEAK:
            raise ValueError(f"{name}: the clip is silent (peak below -80 dBFS); there is no speech to classify.")
        sampling_rate = sampling_rate or SAMPLING_RATE
        if sampling_rate != SAMPLING_RATE:
            # scipy's polyphase resampler: no torchaudio CPU build exists for torch 2.13.
            divisor = gcd(int(sampling_rate), SAMPLING_RATE)
            audio = resample_poly(audio, SAMPLING_RATE // divisor, int(sampling_rate) // divisor)
        max_samples = int(self.config.max_audio_seconds * SAMPLING_RATE)
        if check_length and audio.shape[0] > max_samples:
            raise ValueError(
                f"{name}: the clip lasts {audio.shape[0] / SAMPLING_RATE:.1f} s, longer than the model's "
                f"{self.config.max_audio_seconds:g} s; cut it into segments (the pipeline does this with "
                "`segment_seconds`)."
            )
        return audio.astype(np.float32)

    def audio_features(self, audios: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """
        Feature extraction of prepared clips (`prepare_audio`), padded to the batch's longest clip (or to
        `max_audio_seconds`): `input_features` `(batch, num_mel_bins, mel_frames)` for Whisper, `(batch, samples)`
        for the wav2vec2 family, and `audio_lengths` `(batch,)`.
        """
        if self.config.pad_audio_to_max_length:
            padding = {"padding": "max_length", "max_length": int(self.config.max_audio_seconds * SAMPLING_RATE)}
        else:
            padding = {"padding": "longest"}
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
        """
        The prompt of one clip: transcript and text features as sentences, the task text, then the audio
        placeholders. `task="asr"` asks for the transcript instead (the first training stage) and so never shows one.

        The audio comes last, right before the answer (the paper puts it first): with it there, EmoSLLM's loss left
        chance sooner on RAVDESS (BENCHMARKS.md), as the answer position sits next to the audio it has to read.
        """
        lines = []
        if task == "asr":
            lines.append(ASR_PROMPT)
        else:
            if transcript:
                lines.append(f'Transcript: "{transcript.strip()}"')
            for key, value in (text_features or {}).items():
                lines.append(f"{key.replace('_', ' ').capitalize()}: {value}.")
            lines.append(self.config.prompt.format(labels=", ".join(self.config.labels)))
        lines.append("Speech: " + self.config.audio_token * self.config.num_audio_embeddings(num_samples))
        messages = [{"role": "user", "content": "\n".join(lines)}]
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return f"User: {messages[0]['content']}\nAssistant:"

    def text_inputs(
        self,
        num_samples: Sequence[int],
        transcripts: Sequence[str | None],
        text_features: Sequence[dict | None],
        task: str = "ser",
    ) -> dict[str, torch.Tensor]:
        """
        Left-padded `input_ids`/`attention_mask` `(batch, seq)` for clips of `num_samples` samples. With
        `task="asr"` the transcripts are appended as the answer and `lm_labels` `(batch, seq)` mark them (-100
        elsewhere) for the language-model loss.
        """
        prompts = [self.build_prompt(n, t, f, task) for n, t, f in zip(num_samples, transcripts, text_features)]
        if task != "asr":
            return dict(self.tokenizer(prompts, padding=True, add_special_tokens=False, return_tensors="pt"))
        if any(not t for t in transcripts):
            raise ValueError("The ASR stage needs a transcript for every clip (given, or use_transcript='auto').")
        sequences, targets = [], []
        for prompt, transcript in zip(prompts, transcripts):
            prompt_ids = self.tokenizer(prompt, add_special_tokens=False).input_ids
            answer_ids = self.tokenizer(transcript.strip(), add_special_tokens=False).input_ids
            answer_ids = answer_ids + [self.tokenizer.eos_token_id]
            sequences.append(prompt_ids + answer_ids)
            targets.append([-100] * len(prompt_ids) + answer_ids)
        longest = max(len(ids) for ids in sequences)
        pad = [longest - len(ids) for ids in sequences]
        return {
            "input_ids": torch.tensor([[self.tokenizer.pad_token_id] * p + ids for p, ids in zip(pad, sequences)]),
            "attention_mask": torch.tensor([[0] * p + [1] * len(ids) for p, ids in zip(pad, sequences)]),
            "lm_labels": torch.tensor([[-100] * p + ids for p, ids in zip(pad, targets)]),
        }

    def label_ids(self, labels: Sequence[str | int]) -> torch.Tensor:
        """Label names (or ids) -> `(batch,)` class ids; unknown labels raise `ValueError`."""
        ids = []
        for label in labels:
            if isinstance(label, (int, np.integer)) and 0 <= label < self.config.num_labels:
                ids.append(int(label))
            elif label in self.config.label2id:
                ids.append(self.config.label2id[label])
            else:
                raise ValueError(
                    f"Unknown label {label!r}; this model knows {self.config.labels}. Map it to one of them or "
                    "train a model with this label (train.py --labels ...)."
                )
        return torch.tensor(ids)

    def resolve_transcripts(self, audios: list[np.ndarray], transcripts: list[str | None]) -> list[str | None]:
        """
        The transcript each clip's prompt shows, by `config.use_transcript`: given transcripts win; with `"auto"` the
        missing ones come from the bundled Whisper; with `"none"` there are none.
        """
        if self.config.use_transcript == "none":
            return [None] * len(audios)
        missing = [i for i, t in enumerate(transcripts) if t is None]
        if self.config.use_transcript == "auto" and missing:
            try:
                from .backbones_emosllm import transcribe
            except ImportError:
                from backbones_emosllm import transcribe
            for i, text in zip(missing, transcribe([audios[i] for i in missing], self.config.asr_model)):
                transcripts[i] = text
        return transcripts

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
        """
        Prepare one clip or a batch.

        Args:
            audio: one clip (an array: 1-D, or 2-D multi-channel), or a list of clips; float samples in [-1, 1].
            sampling_rate: rate of `audio` (default 16 kHz); other rates are resampled.
            transcript: per-clip transcript (or None); see `config.use_transcript`.
            text_features: per-clip dict of other features given as natural language, e.g. `{"gender": "female"}`.
            labels: per-clip label names or ids.

        Returns a `BatchFeature` with `input_ids`, `attention_mask` `(batch, seq)`, `input_features`
        (`(batch, mel_bins, frames)` or `(batch, samples)`), `audio_lengths` `(batch,)` and `labels` `(batch,)`.
        """
        audios = [audio] if isinstance(audio, (np.ndarray, torch.Tensor)) else list(audio)  # one array: one clip
        if len(audios) == 0:
            raise ValueError("No audio given.")
        names = ["audio"] if len(audios) == 1 else [f"audio[{i}]" for i in range(len(audios))]
        audios = [self.prepare_audio(a, sampling_rate, name) for a, name in zip(audios, names)]
        transcripts = self._per_clip(transcript, len(audios), "transcript")
        features = self._per_clip(text_features, len(audios), "text_features")
        transcripts = self.resolve_transcripts(audios, transcripts)
        data = {**self.text_inputs([len(a) for a in audios], transcripts, features), **self.audio_features(audios)}
        if labels is not None:
            data["labels"] = self.label_ids(self._per_clip(labels, len(audios), "labels"))
        return BatchFeature(data)

    @staticmethod
    def _per_clip(value, batch: int, name: str) -> list:
        """One value per clip: None for every clip, a single value for a single clip, or a list of `batch`."""
        if value is None:
            return [None] * batch
        values = [value] if isinstance(value, (str, dict, int, np.integer)) else list(value)
        if len(values) != batch:
            raise ValueError(f"{name}: got {len(values)} values for {batch} clips; give one per clip.")
        return values

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)


EmoSLLMProcessor.register_for_auto_class()

__all__ = ["EmoSLLMProcessor"]
