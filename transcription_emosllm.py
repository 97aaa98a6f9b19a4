# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
Automatic transcripts: greedy Whisper speech recognition (`transcribe`) and the rule that decides which transcript a
clip's prompt shows (`resolve_transcripts`). The processor only uses the transcripts it is given; the pipeline (its
`preprocess`) and train.py run this step before it, for models whose config says `use_transcript="auto"`.
"""

import functools
from collections.abc import Sequence

try:  # a saved folder is loaded as a package (relative import); `python train.py` imports top-level modules
    from .backbones_emosllm import resolve_pretrained
    from .configuration_emosllm import SAMPLING_RATE
    from .dependencies_emosllm import missing_dependency
    from .processing_emosllm import DEFAULT_ASR_MODEL
except ImportError:
    if __package__:  # loaded as a package: the sibling failed on its own
        raise
    from backbones_emosllm import resolve_pretrained
    from configuration_emosllm import SAMPLING_RATE
    from dependencies_emosllm import missing_dependency
    from processing_emosllm import DEFAULT_ASR_MODEL

try:  # a missing package is named with its pip command (dependencies_emosllm.py)
    import numpy as np
except ModuleNotFoundError as error:
    raise missing_dependency(error, __name__) from error

@functools.lru_cache(maxsize=None)
def _load_whisper(path: str):
    """Load (once per process) a Whisper model in eval mode and its processor."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = WhisperForConditionalGeneration.from_pretrained(path, dtype=torch.float32).to(device).eval()
    return model, WhisperProcessor.from_pretrained(path)


def _generate_texts(model, processor, clips: list[np.ndarray], long_form: bool) -> list[str]:
    """One greedy generate() call. Short-form needs exactly 30 s windows; long-form needs each clip's real length
    (attention mask) and predicts timestamps to move from one 30 s window to the next."""
    import torch

    features = processor.feature_extractor(
        clips,
        sampling_rate=SAMPLING_RATE,
        return_tensors="pt",
        return_attention_mask=True,
        **({"truncation": False, "padding": "longest"} if long_form else {}),
    )
    with torch.inference_mode():
        ids = model.generate(
            input_features=features.input_features.to(model.device),
            attention_mask=features.attention_mask.to(model.device),
            do_sample=False,
            num_beams=1,
            return_timestamps=long_form,
        )
    return [t.strip() for t in processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def transcribe(
    audios: list[np.ndarray],
    model_name: str = DEFAULT_ASR_MODEL,
    cache_dir: str | None = None,
    batch_size: int = 16,
) -> list[str]:
    """Greedy speech recognition of 16 kHz mono waveforms with a Whisper model.

    Clips of up to 30 s are transcribed in batches. Longer clips are transcribed whole, one at a time, with
    transformers' sequential long-form decoding (batching them with short clips makes generate() several times
    slower). Multilingual models detect the language of each clip and transcribe (not translate).

    Args:
        audios: The clips, each a float waveform `(samples,)` at 16 kHz.
        model_name: Hub id or local folder, resolved with :func:`resolve_pretrained`.
        cache_dir: Where converted bundled folders live; defaults to `backbones_emosllm.default_cache_dir`.
        batch_size: Clips of up to 30 s per generate() call.

    Returns:
        One stripped transcript per clip, in input order.
    """
    model, processor = _load_whisper(resolve_pretrained(model_name, cache_dir))
    clips = [np.asarray(a, dtype=np.float32).reshape(-1) for a in audios]
    short = [i for i, clip in enumerate(clips) if len(clip) <= processor.feature_extractor.n_samples]
    texts = [""] * len(clips)
    for start in range(0, len(short), batch_size):
        batch = short[start : start + batch_size]
        for i, text in zip(batch, _generate_texts(model, processor, [clips[i] for i in batch], long_form=False)):
            texts[i] = text
    for i in sorted(set(range(len(clips))) - set(short)):
        texts[i] = _generate_texts(model, processor, [clips[i]], long_form=True)[0]
    return texts


def resolve_transcripts(
    audios: Sequence[np.ndarray], transcripts: Sequence[str | None], use_transcript: str, asr_model: str
) -> list[str | None]:
    """
    The transcript each clip's prompt shows, by the model's `use_transcript` setting: given transcripts win; with
    `"auto"` the missing ones come from Whisper (`transcribe` with `asr_model`); with `"none"` there are none.

    Args:
        audios: The clips, each a float waveform `(samples,)` at 16 kHz (what `EmoSLLMProcessor.prepare_audio`
            returns).
        transcripts: One given transcript per clip, or None where there is none.
        use_transcript: `"given"`, `"auto"` or `"none"` (the processor's configured mode).
        asr_model: The Whisper model `"auto"` transcribes with: a Hub id or a local folder.

    Returns:
        One transcript (or None) per clip, in input order.
    """
    if use_transcript == "none":
        return [None] * len(audios)
    transcripts = list(transcripts)
    missing = [i for i, text in enumerate(transcripts) if text is None]
    if use_transcript == "auto" and missing:
        for i, text in zip(missing, transcribe([audios[i] for i in missing], asr_model)):
            transcripts[i] = text
    return transcripts


__all__ = ["resolve_transcripts", "transcribe"]
