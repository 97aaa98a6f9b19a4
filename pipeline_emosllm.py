# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
EmoSLLM inference the way transformers users call it: an `audio-classification` pipeline.

    from transformers import pipeline
    classifier = pipeline(model="path/to/emosllm", trust_remote_code=True)
    classifier("speech.wav")                          # [{"score": 0.71, "label": "happy"}, ...]
    classifier("podcast.flac", return_timeline=True)  # whole-clip scores and a per-segment timeline

`model.save_pretrained(folder)` copies this file next to the model and writes `CUSTOM_PIPELINES` into config.json
(`custom_pipelines`), so `pipeline(model=folder, trust_remote_code=True)` (with or without the task name) finds it
without the project being installed. Nothing is registered in the process: transformers' own `audio-classification`
pipeline stays what it is for every other model. The command line is `cli_emosllm.py`.

Long recordings: a clip longer than `segment_seconds` (default 10 s) is cut into windows of exactly that length whose
starts are at most `hop_seconds` (default: `segment_seconds`) apart, spread evenly so that the first starts at 0 and
the last ends at the clip's end. Each window is classified on its own; the whole-clip scores are the mean of the
windows' probabilities, each weighted by the stretch of audio it is closest to (overlaps are split in their middle,
so every second of the recording counts once). Windows that are silent are not classified and weigh nothing.
"""

import math
import os
import types
from pathlib import Path
from typing import Any

# The processing module first: its configuration checks the transformers version before anything else is imported.
try:  # a saved folder is loaded as a package (relative import); `python -m pipeline_emosllm` imports top-level modules
    from .processing_emosllm import EmoSLLMProcessor
    from .audio_emosllm import (MIN_AUDIO_SECONDS, SAMPLING_RATE, SILENCE_PEAK, check_sampling_rate, decode_audio,
                                  read_audio_file)
    from .dependencies_emosllm import missing_dependency
    from .transcription_emosllm import resolve_transcripts
    from .vad_emosllm import MIN_SPEECH_SECONDS, speech_mask, speech_seconds
except ImportError:
    if __package__:  # loaded as a package: the sibling failed on its own (a missing package, an old transformers)
        raise
    from processing_emosllm import EmoSLLMProcessor
    from audio_emosllm import (MIN_AUDIO_SECONDS, SAMPLING_RATE, SILENCE_PEAK, check_sampling_rate, decode_audio,
                               read_audio_file)
    from dependencies_emosllm import missing_dependency
    from transcription_emosllm import resolve_transcripts
    from vad_emosllm import MIN_SPEECH_SECONDS, speech_mask, speech_seconds

try:  # a missing package is named with its pip command (dependencies_emosllm.py)
    import numpy as np
    import torch
    from torch.utils.data import Dataset as TorchDataset
    from transformers.pipelines.base import ChunkPipeline
    from transformers.utils import logging
except ModuleNotFoundError as error:
    raise missing_dependency(error, __name__) from error

logger = logging.get_logger(__name__)

TASK = "audio-classification"
# 10 s covers nearly every single utterance of the emotion corpora the model learns from (IEMOCAP, RAVDESS, CREMA-D,
# MSP-Podcast: 1-11 s), so such clips are classified whole, exactly as in training; a longer recording is a sequence
# of utterances whose emotion changes, and 10 s windows follow it while keeping the prompt short.
DEFAULT_SEGMENT_SECONDS = 10.0
DICT_KEYS = {"array", "raw", "sampling_rate", "path", "transcript", "text_features"}
_UNSET = object()


def _check_seconds(value, name: str) -> None:
    """A duration argument is None or a finite real number of seconds; `ValueError` naming `name` otherwise."""
    if value is None:
        return
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number of seconds or None, got {value!r} ({type(value).__name__}).")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}.")


def check_device(device, name: str = "device") -> None:
    """
    `device` (None, an int, a str such as "cpu" or "cuda:1", or a `torch.device`) names a device this machine has;
    `ValueError` naming `name` otherwise, before any weights move.

    Args:
        device: The device, as `pipeline()` takes it.
        name: What the error names (the argument, e.g. `--device`).
    """
    if device is None:
        return
    if isinstance(device, bool):
        raise ValueError(f"{name}={device!r} is not a device; pass e.g. 'cpu', 'cuda:0' or a GPU index.")
    if isinstance(device, (int, np.integer)):
        return  # an index: transformers picks the machine's accelerator, or the CPU when it has none
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ValueError(f"{name}={device!r} is not a device ({error}); pass e.g. 'cpu' or 'cuda:0'.") from None
    if device.type == "cpu" or device.type == "meta":
        return
    backend = getattr(torch, device.type, None)
    if device.type == "mps":
        available, count = torch.backends.mps.is_available(), 1
    elif backend is not None and hasattr(backend, "is_available"):
        available = backend.is_available()
        count = backend.device_count() if available and hasattr(backend, "device_count") else 0
    else:
        available, count = False, 0
    if not available:
        raise ValueError(f"{name}={str(device)!r}: this machine has no {device.type} device; pass 'cpu' (or leave "
                         "the device out).")
    if device.index is not None and device.index >= count:
        raise ValueError(f"{name}={str(device)!r}: this machine has {count} {device.type} device(s) (0-{count - 1}); "
                         "pass one of them.")


def answer_logits(model, batch: dict) -> torch.Tensor:
    """
    The class scores a batch is answered with, `(batch, num_labels)`: the model's `logits`. Where the model is
    answered by its probe (`EmoSLLMConfig.answered_by_probe`) they are the probe's own log-probabilities, the same
    numbers, so the LLM is not run: half a call's time or more.

    Args:
        model: The `EmoSLLMForSpeechEmotionRecognition` model.
        batch: What its processor returns, on the model's device.
    """
    if model.config.answered_by_probe:
        scores = model.get_audio_embeddings(batch["audio_lengths"], batch["input_features"], return_probe_scores=True)
        return scores[-1].float().log_softmax(-1)
    return model(**batch).logits


class _Input:
    """One input and its place in the call (`index` None for a single input), so that errors name it."""

    def __init__(self, value, index: int | None = None):
        self.value = value
        self.index = index


# ----------------------------------------------------------------------------------------------------------------------
# Segments
# ----------------------------------------------------------------------------------------------------------------------
def segment_bounds(num_samples: int, segment: int | None, hop: int | None) -> list[tuple[int, int]]:
    """
    `(start, end)` sample bounds of the windows a clip is classified in. A clip no longer than `segment` (or with
    `segment=None`) is one window; a longer one gets windows of exactly `segment` samples whose starts are evenly
    spread at most `hop` apart, from 0 to `num_samples - segment`: no gaps, overlaps of at least `segment - hop`.

    Args:
        num_samples: The clip's length in samples.
        segment: The window length in samples, or None to classify the clip whole.
        hop: The largest distance between window starts in samples (None: `segment`).

    Returns:
        One `(start, end)` pair per window, in order.
    """
    if segment is None or num_samples <= segment:
        return [(0, num_samples)]
    hop = hop or segment
    count = math.ceil((num_samples - segment) / hop) + 1
    stride = (num_samples - segment) / (count - 1)
    return [(round(i * stride), round(i * stride) + segment) for i in range(count)]


def segment_weights(bounds: list[tuple[int, int]]) -> np.ndarray:
    """
    Each window weighs the stretch of the clip it owns: overlaps are split in their middle; the weights sum to the
    clip's length.

    Args:
        bounds: The windows' `(start, end)` sample bounds (`segment_bounds`).

    Returns:
        The windows' weights `(num_windows,)`, float64.
    """
    cuts = [bounds[0][0]] + [(bounds[i + 1][0] + bounds[i][1]) / 2 for i in range(len(bounds) - 1)] + [bounds[-1][1]]
    return np.diff(np.asarray(cuts, dtype=np.float64))


# ----------------------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------------------
class EmoSLLMAudioClassificationPipeline(ChunkPipeline):
    """
    Speech emotion recognition with an EmoSLLM model; the interface and output of transformers'
    `AudioClassificationPipeline`, plus transcripts, long recordings and a timeline.

    Inputs (one, or a list of them; `batch_size` windows run through the model at once):
        - a path or http(s) URL of an audio file (WAV, FLAC, OGG, MP3 with soundfile; other formats with torchcodec);
        - `bytes`: the content of an audio file;
        - a 1-D `np.ndarray` or `torch.Tensor` of float samples at 16 kHz (2-D `(channels, samples)`: mixed down);
        - a dict `{"array" or "raw": samples, "sampling_rate": rate}` at any rate (resampled), optionally with
          `"transcript"` (str) and `"text_features"` (dict, e.g. `{"gender": "female"}`) for this input;
        - a torchcodec `AudioDecoder` (what `datasets` gives for an `Audio` column).

    Call parameters (also accepted when building the pipeline, as defaults):
        top_k (`int`, defaults to 5, as in transformers' `AudioClassificationPipeline`): how many classes to return,
            best first (at most the model's number of classes); `None` returns all.
        function_to_apply (`"softmax"`, `"sigmoid"` or `"none"`, defaults to `"softmax"`): scores from the logits.
        transcript (`str`, or a list with one per input): the transcript, for models whose config uses one
            (`use_transcript`); a dict input's `"transcript"` wins. Without one, a model with `use_transcript="auto"`
            has each window transcribed (`transcription_emosllm`) before the processor builds its prompt. A clip cut
            into segments ignores it (it cannot be split in time).
        text_features (`dict`, or a list with one per input): other features said in words, e.g. `{"gender": "f"}`;
            only those the model was trained with are read (`processor.text_features`), the others left out (a warning).
        segment_seconds (`float` or `None`, defaults to 10 s, at most `processor.max_audio_seconds`): longer clips are
            classified in windows of this length; `None` classifies the clip whole and a clip longer than
            `processor.max_audio_seconds` raises `ValueError`.
        hop_seconds (`float`, defaults to `segment_seconds`): the largest distance between window starts; smaller
            values make overlapping windows (a smoother timeline, more compute); an error with `segment_seconds=None`.
        return_timeline (`bool`, defaults to `False`): return a dict instead of the list (see below).
        detect_speech (`bool`, defaults to `True`): classify only clips and windows in which the speech detector
            (`vad_emosllm`) finds at least `MIN_SPEECH_SECONDS` of speech; `False` classifies everything.

    Returns, per input:
        - by default, as transformers' audio-classification pipeline: a list of `{"score": float, "label": str}`,
          best first (`top_k` of them), for the whole clip; an empty list for a clip without speech;
        - with `return_timeline=True`: `{"label", "score", "scores", "duration", "speech", "timeline"}` where
          `scores` is that same list, `duration` the clip's length and `speech` the seconds of speech in it, and
          `timeline` a list with one `{"start", "end", "label", "score", "scores", "speech"}` per window (seconds; a
          window without speech has `label` and `score` `None` and empty `scores`, as a clip without speech has).

    Bad input (missing file, damaged or truncated file, empty, silent, NaN or infinite samples, integer samples, a
    clip too long for `segment_seconds=None`) raises `FileNotFoundError` or `ValueError` naming the input (its index
    in a list, and its path) and what to do; no label is returned for it.
    """

    def __init__(self, model, processor: EmoSLLMProcessor | None = None, **kwargs):
        """
        Puts the model in eval mode with LoRA merged into the LLM's weights (the fast path, same scores).

        Args:
            model: The EmoSLLM model (`EmoSLLMForSpeechEmotionRecognition`).
            processor: Its `EmoSLLMProcessor`; None or a failed `pipeline()` load: loaded from `model.name_or_path`.
            **kwargs: `ChunkPipeline`'s (`device`, `batch_size`, ...) and the call parameters as defaults.
        """
        if not isinstance(processor, EmoSLLMProcessor) and not hasattr(processor, "prepare_audio"):
            if not model.name_or_path:
                raise ValueError("Pass the model's EmoSLLMProcessor: processor=EmoSLLMProcessor.from_pretrained(...).")
            # `pipeline()` swallows processor loading errors (flag None); loading again shows the real cause.
            processor = EmoSLLMProcessor.from_pretrained(model.name_or_path)
        processor.check_model(model.config)  # the processor reads no model file: the two must belong together
        check_device(kwargs.get("device"))
        kwargs.setdefault("top_k", 5)  # transformers' AudioClassificationPipeline default; None gives every class
        super().__init__(model=model, processor=processor, **kwargs)
        # transformers' loader for `batch_size` > 1 (`pad_collate_fn`) only lists the windows' fields here (they hold
        # no tensors: the processor builds the batch in `_forward`), but it wants a tokenizer or a feature extractor,
        # and refuses two padding sides: the prompt's tokenizer (left padding) is the one it is shown.
        self.tokenizer, self.feature_extractor = self.processor.tokenizer, None
        self.model.eval()  # an inference pipeline: no dropout, whatever mode the model was given in
        # The fast path, same scores: LoRA merged into the LLM's weights (`model.train()` takes it back out).
        self.model.merge_lora()
        self._warned_no_transcript = False

    # ------------------------------------------------------------------------------------------------------------------
    # Parameters
    # ------------------------------------------------------------------------------------------------------------------
    def _sanitize_parameters(
        self,
        top_k=_UNSET,
        function_to_apply=None,
        transcript=_UNSET,
        text_features=_UNSET,
        segment_seconds=_UNSET,
        hop_seconds=_UNSET,
        return_timeline=None,
        detect_speech=None,
    ):
        preprocess, postprocess = {}, {}
        if detect_speech is not None:
            preprocess["detect_speech"] = bool(detect_speech)
        num_labels = self.model.config.num_labels
        if top_k is not _UNSET:
            if top_k is not None and (not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 1):
                raise ValueError(f"top_k must be a positive integer or None (all classes), got {top_k!r}.")
            postprocess["top_k"] = num_labels if top_k is None else min(int(top_k), num_labels)
        if function_to_apply is not None:
            if function_to_apply not in ("softmax", "sigmoid", "none"):
                raise ValueError(f"Invalid value for `function_to_apply`: {function_to_apply}. "
                                 "Valid options are ['softmax', 'sigmoid', 'none']")
            postprocess["function_to_apply"] = function_to_apply
        if return_timeline is not None:
            postprocess["return_timeline"] = bool(return_timeline)
        if transcript is not _UNSET:
            for value in transcript if isinstance(transcript, (list, tuple)) else [transcript]:
                self.processor.check_text_inputs(transcript=value, name="")
            preprocess["transcript"] = transcript
        if text_features is not _UNSET:
            for value in text_features if isinstance(text_features, (list, tuple)) else [text_features]:
                self.processor.check_text_inputs(text_features=value, name="")
            preprocess["text_features"] = text_features
        max_seconds = self.processor.max_audio_seconds
        if segment_seconds is not _UNSET:
            _check_seconds(segment_seconds, "segment_seconds")
            if segment_seconds is not None and not 0 < segment_seconds <= max_seconds:
                raise ValueError(f"segment_seconds={segment_seconds} must lie in (0, {max_seconds:g}] (the model's "
                                 "max_audio_seconds), or be None to classify clips whole.")
            if segment_seconds is not None and segment_seconds < MIN_AUDIO_SECONDS:
                raise ValueError(f"segment_seconds={segment_seconds} is shorter than the {MIN_AUDIO_SECONDS:g} s a "
                                 "window needs to hold speech; pass a longer segment.")
            preprocess["segment_seconds"] = segment_seconds
        if hop_seconds is not _UNSET:
            _check_seconds(hop_seconds, "hop_seconds")
            if hop_seconds is not None and hop_seconds <= 0:
                raise ValueError(f"hop_seconds must be positive, got {hop_seconds}.")
            preprocess["hop_seconds"] = hop_seconds
        return preprocess, {}, postprocess

    def __call__(self, inputs, **kwargs: Any):
        """Classify one input or a list of them; input forms, parameters and output: the class documentation."""
        batch_size = kwargs.get("batch_size")
        if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool)
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, list):
            if not inputs:
                raise ValueError("No inputs given: pass an audio file, an array or a dict, or a list of them.")
            for key in ("transcript", "text_features"):
                value = kwargs.get(key)
                if isinstance(value, (list, tuple)) and len(value) != len(inputs):
                    raise ValueError(f"{key}: got {len(value)} values for {len(inputs)} inputs; give one per input.")
            return super().__call__([_Input(item, index) for index, item in enumerate(inputs)], **kwargs)
        if isinstance(inputs, (types.GeneratorType, TorchDataset)):  # streamed: results come back as they are ready
            return super().__call__((_Input(item, index) for index, item in enumerate(inputs)), **kwargs)
        for key in ("transcript", "text_features"):
            if isinstance(kwargs.get(key), (list, tuple)):
                raise ValueError(f"{key}: a list needs a list of inputs, one value per input.")
        return super().__call__(_Input(inputs), **kwargs)

    # ------------------------------------------------------------------------------------------------------------------
    # Steps
    # ------------------------------------------------------------------------------------------------------------------
    def _load(self, inputs, name: str) -> tuple[np.ndarray, int | None, dict, str]:
        """Any input form -> (samples, sampling rate or None for 16 kHz, per-input text, name for errors)."""
        text = {}
        if isinstance(inputs, (str, os.PathLike)):
            path = os.fspath(inputs)
            name = path if name == "inputs" else f"{name} ({path})"
            audio, rate = read_audio_file(path, name)
            return audio, rate, text, name
        if isinstance(inputs, (bytes, bytearray)):
            audio, rate = decode_audio(bytes(inputs), name)
            return audio, rate, text, name
        if hasattr(inputs, "get_all_samples"):  # torchcodec AudioDecoder
            decoded = inputs.get_all_samples()
            return decoded.data, int(decoded.sample_rate), text, name
        if isinstance(inputs, dict):
            unknown = set(inputs) - DICT_KEYS
            if unknown:
                raise ValueError(f"{name}: unknown keys {sorted(unknown)}; a dict input takes {sorted(DICT_KEYS)}.")
            if "sampling_rate" not in inputs or ("raw" not in inputs and "array" not in inputs):
                raise ValueError(
                    f"{name}: a dict input needs the samples under \"array\" (or \"raw\") and their \"sampling_rate\"."
                )
            if inputs.get("path"):
                name = f"{name} ({inputs['path']})"
            text = {key: inputs[key] for key in ("transcript", "text_features") if inputs.get(key) is not None}
            audio = inputs["raw"] if "raw" in inputs else inputs["array"]
            if inputs["sampling_rate"] is None:
                raise ValueError(f"{name}: a dict input needs the samples' \"sampling_rate\" (e.g. 16000), not None.")
            rate = check_sampling_rate(inputs["sampling_rate"], name)
            return audio, rate, text, name
        if isinstance(inputs, (np.ndarray, torch.Tensor)):
            return inputs, None, text, name
        raise TypeError(
            f"{name}: got a {type(inputs).__name__}; pass a file path, bytes, a float array at "
            f"{SAMPLING_RATE} Hz or a dict {{'array': samples, 'sampling_rate': rate}} (or a list of these)."
        )

    def preprocess(
        self,
        inputs: "_Input",
        transcript=None,
        text_features=None,
        segment_seconds=DEFAULT_SEGMENT_SECONDS,
        hop_seconds=None,
        detect_speech: bool = True,
    ):
        """
        Yields the windows of one input: checked 16 kHz samples, the prompt's text, their place in the clip, and the
        seconds of speech in the window and in the clip (`vad_emosllm`; with `detect_speech=False`, all of it). A
        window with less than `MIN_SPEECH_SECONDS` of speech, or digital silence, is not classified.

        Args:
            inputs: One input of the call, with its index in the call's list (None for a single input).
            transcript: The transcript, or a list with one per input; a dict input's own wins. Dropped for a clip cut
                into several windows.
            text_features: Other features as `{name: value}`, or a list with one per input; a dict input's own wins.
            segment_seconds: The window length (at most `processor.max_audio_seconds`); None classifies the clip whole.
            hop_seconds: The largest distance between window starts in seconds; None: `segment_seconds`.
            detect_speech: Run the speech detector; False counts all the audio as speech.

        Yields:
            One dict per window: `audio` (float32 `(samples,)` at 16 kHz), `silent`, `speech` and `clip_speech`
            (seconds), `transcript`, `text_features`, `start`, `end` and `duration` (seconds), `weight`
            (`segment_weights`) and `is_last`.
        """
        index = inputs.index
        name = "inputs" if index is None else f"inputs[{index}]"
        audio, rate, text, name = self._load(inputs.value, name)
        max_seconds = self.processor.max_audio_seconds
        if segment_seconds is not None:
            segment_seconds = min(segment_seconds, max_seconds)
        audio = self.processor.prepare_audio(audio, rate, name, check_length=segment_seconds is None)
        if isinstance(transcript, (list, tuple)):
            transcript = transcript[index]
        if isinstance(text_features, (list, tuple)):
            text_features = text_features[index]
        transcript = text.get("transcript", transcript)
        text_features = text.get("text_features", text_features)
        longest = len(audio) if segment_seconds is None else min(len(audio), round(segment_seconds * SAMPLING_RATE))
        self.processor.check_text_inputs(transcript, text_features, name, num_samples=longest)

        segment = hop = None
        if segment_seconds is None and hop_seconds is not None:
            raise ValueError(f"hop_seconds={hop_seconds} spaces windows, but segment_seconds=None classifies clips "
                             "whole; pass a segment_seconds or leave hop_seconds out.")
        if segment_seconds is not None:
            hop_seconds = segment_seconds if hop_seconds is None else hop_seconds
            if hop_seconds > segment_seconds:
                raise ValueError(
                    f"hop_seconds={hop_seconds} is longer than segment_seconds={segment_seconds}: the windows would "
                    "leave gaps; pass a hop no longer than the segment."
                )
            segment, hop = round(segment_seconds * SAMPLING_RATE), max(1, round(hop_seconds * SAMPLING_RATE))
        bounds = segment_bounds(len(audio), segment, hop)
        # The processor's transcript settings: "auto" has Whisper transcribe each window without a transcript below.
        use_transcript, asr_model = self.processor.use_transcript, self.processor.asr_model
        if self.model.config.answered_by_probe:
            use_transcript = "none"  # the answer reads no transcript: Whisper would run for nothing
            if transcript is not None or text_features:  # and the prompt that holds them is not read either
                logger.warning_once("This model's answer is its probe's (mix weight 1), which reads the audio alone: "
                                    "the transcript and text features given do not change it.")
        if len(bounds) > 1 and transcript is not None:
            instead = ("each window is transcribed on its own instead" if use_transcript == "auto"
                       else "the windows are classified without one")
            logger.warning(
                f"{name}: the clip is cut into {len(bounds)} segments; its transcript cannot be split in time, so "
                f"{instead}. Pass segment_seconds=None (clips up to max_audio_seconds) to use it."
            )
            transcript = None
        if transcript is None and use_transcript == "given" and not self._warned_no_transcript:
            # A model that reads transcripts, asked without one and told not to transcribe: say so once.
            logger.warning(
                f"{name}: this model reads a transcript (use_transcript='given') but none was given, so it "
                "classifies from the audio alone. Pass transcript=..., or set processor.use_transcript='auto' "
                "to transcribe the audio."
            )
            self._warned_no_transcript = True
        weights = segment_weights(bounds)
        mask = speech_mask(audio) if detect_speech else None
        clip_speech = speech_seconds(mask) if detect_speech else len(audio) / SAMPLING_RATE
        if clip_speech < MIN_SPEECH_SECONDS:
            logger.warning(f"{name}: no speech detected ({clip_speech:.2f} s), so no emotion is given for it. Pass "
                           "detect_speech=False to classify it anyway.")
        windows = []
        for i, ((start, end), weight) in enumerate(zip(bounds, weights)):
            window = audio[start:end]
            speech = speech_seconds(mask, start, end) if detect_speech else (end - start) / SAMPLING_RATE
            windows.append({
                "audio": window,
                "silent": bool(np.abs(window).max() < SILENCE_PEAK) or speech < MIN_SPEECH_SECONDS,
                "speech": round(speech, 3),
                "clip_speech": round(clip_speech, 3),
                "transcript": transcript,
                "text_features": text_features,
                "start": start / SAMPLING_RATE,
                "end": end / SAMPLING_RATE,
                "weight": float(weight),
                "duration": len(audio) / SAMPLING_RATE,
                "is_last": i == len(bounds) - 1,
            })
        # Automatic transcripts, before the processor (which only uses those it is given): the windows that are
        # classified, in one Whisper call.
        classified = [w for w in windows if not w["silent"]]
        texts = resolve_transcripts([w["audio"] for w in classified], [transcript] * len(classified), use_transcript,
                                    asr_model)
        for window, text in zip(classified, texts):
            window["transcript"] = text
        yield from windows

    def _forward(self, model_inputs: dict) -> dict:
        """
        One window (`batch_size` 1), or the fields of `batch_size` windows, each as a list (transformers' loader
        lists them): the windows with speech go through the model together, padded by the processor as in
        training. Returns the windows' descriptions with their `logits` (`(num_labels,)`, None for a window that is
        not classified), in the same form as the input, for transformers to hand to `postprocess` per clip.
        """
        batched = isinstance(model_inputs["is_last"], list)
        windows = ([dict(zip(model_inputs, values)) for values in zip(*model_inputs.values())] if batched
                   else [model_inputs])
        speech = [w for w in windows if not w["silent"]]
        logits = iter(())
        if speech:
            audios = [w["audio"] for w in speech]  # checked, 16 kHz mono (`preprocess`); a probe's answer: no prompt
            batch = self.processor.audio_features(audios) if self.model.config.answered_by_probe else self.processor(
                audios, sampling_rate=SAMPLING_RATE, transcript=[w["transcript"] for w in speech],
                text_features=[w["text_features"] for w in speech])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            batch["input_features"] = batch["input_features"].to(self.model.dtype)
            logits = answer_logits(self.model, batch).float().cpu()
            if not torch.isfinite(logits).all():  # the input is checked finite: the model's weights are broken
                raise ValueError("The model gave NaN or infinite class scores: its weights are not finite (a training "
                                 "run that diverged?). Load a checkpoint from before, or train again with a lower "
                                 "learning rate.")
            logits = iter(logits)
        outputs = [dict({k: v for k, v in w.items() if k not in ("audio", "transcript", "text_features")},
                        logits=None if w["silent"] else next(logits)) for w in windows]
        if not batched:
            return outputs[0]
        return {key: [output[key] for output in outputs] for key in ("is_last", *outputs[0])}

    def postprocess(self, model_outputs: list[dict], top_k=None, function_to_apply="softmax", return_timeline=False):
        """
        Turns one clip's window logits into scores: the model's for a clip classified whole, else the mean of its
        windows' scores weighted by the stretch each owns (`segment_weights`), windows without speech left out.

        Args:
            model_outputs: The clip's windows (`_forward`), each with `logits` `(num_labels,)` (None: not classified).
            top_k: How many classes to return, best first; None: all.
            function_to_apply: `"softmax"`, `"sigmoid"` or `"none"`: how scores come from the logits.
            return_timeline: Return the dict with the per-window timeline instead of the list.

        Returns:
            A list of `{"score", "label"}` (empty without speech), or with `return_timeline` the class docstring's dict.
        """
        config = self.model.config
        top_k = config.num_labels if top_k is None else top_k

        def scores_of(logits: torch.Tensor) -> torch.Tensor:
            if function_to_apply == "softmax":
                return logits.softmax(-1)
            return logits.sigmoid() if function_to_apply == "sigmoid" else logits

        def ranked(scores: torch.Tensor) -> list[dict]:
            values, ids = scores.topk(top_k)
            return [{"score": s, "label": config.id2label[i]} for s, i in zip(values.tolist(), ids.tolist())]

        timeline, total, weight = [], torch.zeros(config.num_labels, dtype=torch.float64), 0.0
        for output in model_outputs:
            best = {"label": None, "score": None, "scores": []}  # a silent window
            if output["logits"] is not None:
                scores = scores_of(output["logits"].reshape(-1))
                total += output["weight"] * scores.double()
                weight += output["weight"]
                listed = ranked(scores)
                best = {"label": listed[0]["label"], "score": listed[0]["score"], "scores": listed}
            timeline.append({"start": round(output["start"], 3), "end": round(output["end"], 3), **best,
                             "speech": output["speech"]})
        if weight == 0:  # no window holds speech: no emotion
            clip = []
        elif len(model_outputs) == 1:  # classified whole: exactly the model's scores
            clip = ranked(scores_of(model_outputs[0]["logits"].reshape(-1)))
        else:  # windows without speech weigh nothing
            clip = ranked((total / weight).float())
        if not return_timeline:
            return clip
        return {
            "label": clip[0]["label"] if clip else None,
            "score": clip[0]["score"] if clip else None,
            "scores": clip,
            "duration": round(model_outputs[0]["duration"], 3),
            "speech": model_outputs[0]["clip_speech"],
            "timeline": timeline,
        }

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs):
        """
        The model (with this pipeline's file and `custom_pipelines`) and the processor, ready for `pipeline()`.

        Args:
            save_directory: The folder to save into.
            **kwargs: Passed to both the model's and the processor's `save_pretrained`.
        """
        self.model.save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory, **kwargs)


# What `save_pretrained` writes into config.json, so that `pipeline(model=folder, trust_remote_code=True)` and
# `pipeline("audio-classification", model=folder, trust_remote_code=True)` load this pipeline from the folder.
CUSTOM_PIPELINES = {
    TASK: {
        "impl": f"{Path(__file__).stem}.EmoSLLMAudioClassificationPipeline",
        "pt": ["AutoModelForAudioClassification"],
        "type": "audio",
    }
}


__all__ = ["CUSTOM_PIPELINES", "DEFAULT_SEGMENT_SECONDS", "EmoSLLMAudioClassificationPipeline", "answer_logits",
           "check_device", "segment_bounds", "segment_weights"]
