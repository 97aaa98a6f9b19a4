# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
Audio in: the checks every clip passes (`check_audio`), resampling to the model's rate (`prepare_clip`), and decoding
files, bytes and URLs (`decode_audio`, `read_audio_file`). The processor, the pipeline and train.py's data loading
all run these same functions.
"""

import io
import numbers
import os
import re
from math import gcd

try:  # a saved folder is loaded as a package (relative import); `python train.py` imports top-level modules
    from .configuration_emosllm import SAMPLING_RATE
    from .dependencies_emosllm import missing_dependency
except ImportError:
    if __package__:  # loaded as a package: the sibling failed on its own
        raise
    from configuration_emosllm import SAMPLING_RATE
    from dependencies_emosllm import missing_dependency

try:  # a missing package is named with its pip command (dependencies_emosllm.py)
    import numpy as np
    import soundfile  # noqa: F401 (decode_audio reads audio files with it: required, so that its absence is named here)
    import torch
    import scipy  # noqa: F401 (resampling: scipy.signal itself, 0.7 s to import, loads when a clip needs it)
except ModuleNotFoundError as error:
    raise missing_dependency(error, __name__) from error

# Peak below this (-80 dBFS) counts as silence: such a clip carries no emotion to classify.
SILENCE_PEAK = 1e-4

# A clip shorter than this holds a syllable or two at most (a syllable lasts 0.1-0.3 s): too little prosody to carry
# an emotion, so any label for it would be a guess. The shortest utterances of the corpora the model learns from
# last about 1 s (TESS's "Say the word ...": ~1.3 s; RAVDESS: 2.9 s and more), so 0.25 s only refuses clips that
# cannot be speech.
MIN_AUDIO_SECONDS = 0.25
# Sampling rates outside these bounds are a mistake (0, 1, a sample count or a kHz figure passed as the rate), and
# resampling from them could take minutes: below 4 kHz the formants of speech (telephone band: up to 3.4 kHz) are
# gone; 384 kHz is the highest rate common audio interfaces record.
MIN_SAMPLING_RATE = 4000
MAX_SAMPLING_RATE = 384000
# Float samples lie in [-1, 1]; a float file may overshoot a little, but a peak past 8 (18 dB over full scale) is
# integer PCM turned into floats without its scale (int16 as float: peaks in the thousands), which the encoder would
# read as noise of absurd loudness.
MAX_SAMPLE_PEAK = 8.0


def check_sampling_rate(sampling_rate, name: str = "audio") -> int:
    """
    The rate of a clip as a whole number of Hz: None means 16 kHz (the model's rate); anything else must be a real,
    whole number of Hz in [`MIN_SAMPLING_RATE`, `MAX_SAMPLING_RATE`]. Raises `ValueError` naming `name` otherwise.

    Args:
        sampling_rate: The rate in Hz (an int, a whole float, a one-element tensor), or None for 16 kHz.
        name: What the error names (the clip, or the argument).

    Returns:
        The rate as an int.
    """
    if sampling_rate is None:
        return SAMPLING_RATE
    if isinstance(sampling_rate, torch.Tensor) and sampling_rate.numel() == 1:
        sampling_rate = sampling_rate.item()
    if isinstance(sampling_rate, (bool, np.bool_)) or not isinstance(sampling_rate, numbers.Real):
        raise ValueError(
            f"{name}: sampling_rate must be a number of Hz such as 16000, got {sampling_rate!r} "
            f"({type(sampling_rate).__name__})."
        )
    if not np.isfinite(sampling_rate) or sampling_rate != int(sampling_rate):
        raise ValueError(f"{name}: sampling_rate must be a whole number of Hz such as 16000, got {sampling_rate!r}.")
    if not MIN_SAMPLING_RATE <= sampling_rate <= MAX_SAMPLING_RATE:
        raise ValueError(
            f"{name}: sampling_rate={sampling_rate!r} Hz is not a rate audio is recorded at; pass the clip's real rate "
            f"({MIN_SAMPLING_RATE}-{MAX_SAMPLING_RATE} Hz, e.g. 16000 or 44100)."
        )
    return int(sampling_rate)


def check_audio(audio, sampling_rate=None, name: str = "audio") -> tuple[np.ndarray, int]:
    """
    The one check of a clip that every path runs (training data, the encoder cache, the processor, the pipeline):
    float samples, 1-D or 2-D (channels first or last, mixed down here), not empty, finite, not silent, at least
    `MIN_AUDIO_SECONDS` long, at a sane sampling rate (`check_sampling_rate`). Returns (mono float samples, rate);
    raises `ValueError` naming `name` with what to do.

    Args:
        audio: Float samples: `(samples,)`, or `(channels, samples)` / `(samples, channels)` (mixed down); an
            `np.ndarray` or a `torch.Tensor`.
        sampling_rate: Their rate in Hz; None means 16 kHz.
        name: What the error names.

    Returns:
        The mono samples `(samples,)` and the rate, unchanged.
    """
    rate = check_sampling_rate(sampling_rate, name)
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu()
        audio = (audio.float() if audio.dtype == torch.bfloat16 else audio).numpy()
    try:
        audio = np.asarray(audio)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{name}: the samples are not an array of numbers ({error}); pass a float array.") from None
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
    if np.abs(audio - audio.mean()).max() < SILENCE_PEAK:  # also a constant (DC-only) clip: no sound in it
        raise ValueError(f"{name}: the clip is silent (peak below -80 dBFS); there is no speech to classify.")
    peak = float(np.abs(audio).max())
    if peak > MAX_SAMPLE_PEAK:
        raise ValueError(
            f"{name}: the samples reach {peak:g}, far outside [-1, 1]; integer PCM must be scaled (int16 divided by "
            "32768, int32 by 2**31)."
        )
    if audio.shape[0] < MIN_AUDIO_SECONDS * rate:
        raise ValueError(
            f"{name}: the clip lasts {audio.shape[0] / rate:.3f} s, too short to hold speech (at least "
            f"{MIN_AUDIO_SECONDS:g} s); pass a longer recording, or check its sampling_rate ({rate} Hz)."
        )
    return audio, rate


def prepare_clip(audio, sampling_rate=None, name: str = "audio", max_seconds: float | None = None) -> np.ndarray:
    """
    One clip -> checked (`check_audio`) float32 mono samples at 16 kHz (other rates resampled with scipy's polyphase
    resampler). With `max_seconds`, a longer clip raises `ValueError` (checked before resampling it). What
    `EmoSLLMProcessor.prepare_audio` and train.py's data loading both run.

    Args:
        audio: Float samples: `(samples,)`, or 2-D with channels first or last.
        sampling_rate: Their rate in Hz; None means 16 kHz.
        name: What the error names.
        max_seconds: The longest clip accepted, or None for no limit.

    Returns:
        float32 mono samples `(samples_at_16_kHz,)`.
    """
    audio, sampling_rate = check_audio(audio, sampling_rate, name)

    def check_length(num_samples: int, rate: int) -> None:
        if max_seconds is not None and num_samples > max_seconds * rate:
            raise ValueError(
                f"{name}: the clip lasts {num_samples / rate:.1f} s, longer than the model's {max_seconds:g} s; cut "
                "it into segments (the pipeline does this with `segment_seconds`)."
            )

    check_length(audio.shape[0], sampling_rate)
    if sampling_rate != SAMPLING_RATE:
        # scipy's polyphase resampler: no torchaudio CPU build exists for torch 2.13.
        divisor = gcd(sampling_rate, SAMPLING_RATE)
        from scipy.signal import resample_poly

        audio = resample_poly(audio, SAMPLING_RATE // divisor, sampling_rate // divisor)
        check_length(audio.shape[0], SAMPLING_RATE)
    return audio.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------------
# Decoding files: the pipeline's file inputs and train.py's corpora go through the same two functions.
# ----------------------------------------------------------------------------------------------------------------------
def _wav_data_missing(extra_info: str) -> bool:
    """libsndfile notes a WAV whose data chunk is shorter than its header says as `data : N (should be M)`."""
    match = re.search(r"data\s*:\s*(\d+)\s*\(should be (\d+)\)", extra_info or "")
    if not match:
        return False
    declared, present = int(match.group(1)), int(match.group(2))
    streamed = declared == 0 or declared >= 0x7FFFFFFF  # written to a pipe: the size was never filled in
    return not streamed and declared > present + 64


def _ogg_truncated(data: bytes) -> bool:
    """
    Ogg has no length in its header: libsndfile reads the length from the last page it finds, so an Ogg file cut
    short decodes, without an error, to the pages it still holds. A complete file ends each logical stream with a
    page flagged end-of-stream, and its last page ends with the file; a cut one does not (RFC 3533, section 6).
    """
    offset, open_streams = 0, set()
    while offset + 27 <= len(data) and data[offset:offset + 4] == b"OggS":
        flags, serial, segments = data[offset + 5], data[offset + 14:offset + 18], data[offset + 26]
        table = data[offset + 27:offset + 27 + segments]
        size = 27 + segments + sum(table)
        if len(table) < segments or offset + size > len(data):
            return True  # the file ends inside a page
        if flags & 0x02:
            open_streams.add(serial)
        if flags & 0x04:
            open_streams.discard(serial)
        offset += size
    return bool(open_streams)


def decode_audio(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """
    An encoded file's bytes -> (float32 mono samples, sampling rate). soundfile (libsndfile: WAV, FLAC, OGG, MP3, ...)
    first; torchcodec (FFmpeg) for formats libsndfile does not know. A damaged or truncated file (one that does not
    decode to the length its header, or for Ogg its page structure, states) raises `ValueError` naming `name`.

    Args:
        data: The file's content.
        name: What the error names.

    Returns:
        float32 mono samples `(samples,)` and their rate in Hz.
    """
    if len(data) == 0:
        raise ValueError(f"{name}: the file is empty (0 bytes); pass a recording.")
    errors = []
    try:
        import soundfile
    except ImportError:
        soundfile = None
    if soundfile is not None:
        try:
            with soundfile.SoundFile(io.BytesIO(data)) as audio_file:
                declared, rate, extra = audio_file.frames, audio_file.samplerate, audio_file.extra_info
                audio_format = audio_file.format
                samples = audio_file.read(dtype="float32", always_2d=True)
        except Exception as error:  # soundfile.LibsndfileError, or a RuntimeError from a broken stream
            message = str(error)
            if "not recognised" not in message.lower() and "unknown format" not in message.lower():
                raise ValueError(
                    f"{name}: the audio file is damaged or truncated ({message.strip()}); re-export or re-download it."
                ) from error
            errors.append(f"soundfile: {message.strip()}")
        else:
            slack = 2304 if audio_format == "MP3" else 0  # an MP3's length in its header is an estimate
            if samples.shape[0] + slack < declared or _wav_data_missing(extra):
                held = (f"it holds {samples.shape[0]} of the {declared} frames its header announces"
                        if samples.shape[0] + slack < declared else "its data chunk is shorter than its header says")
                raise ValueError(f"{name}: the audio file is truncated ({held}); re-export or re-download it.")
            if audio_format == "OGG" and _ogg_truncated(data):
                raise ValueError(
                    f"{name}: the audio file is truncated (the Ogg stream stops without its end-of-stream page, "
                    f"after {samples.shape[0] / rate:.2f} s); re-export or re-download it."
                )
            return samples.mean(axis=1), int(rate)
    try:
        from torchcodec.decoders import AudioDecoder

        decoded = AudioDecoder(data).get_all_samples()
        return decoded.data.mean(dim=0).numpy().astype(np.float32), int(decoded.sample_rate)
    except Exception as error:  # ImportError, or FFmpeg failing on the data
        errors.append(f"torchcodec: {str(error).strip()[:300]}")
    raise ValueError(
        f"{name}: could not decode the audio ({'; '.join(errors)}). Pass a WAV, FLAC, OGG or MP3 file (other formats "
        "need torchcodec with FFmpeg), or decoded samples as {'array': samples, 'sampling_rate': rate}."
    )


# How long an http(s) input's server may take to answer (each read), in seconds.
URL_TIMEOUT_SECONDS = 30.0


def read_audio_file(path: str | os.PathLike, name: str) -> tuple[np.ndarray, int]:
    """A path (or an http(s) URL, as transformers accepts) -> (float32 mono samples, sampling rate).

    Args:
        path: A local file, or an http(s) URL (each read waits `URL_TIMEOUT_SECONDS` at most).
        name: What the error names.

    Returns:
        float32 mono samples `(samples,)` and their rate in Hz.

    Raises:
        FileNotFoundError: No such file.
        OSError: The URL cannot be read.
        ValueError: A folder, or a file that does not decode (`decode_audio`).
    """
    path = os.fspath(path)
    if path.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(path, timeout=URL_TIMEOUT_SECONDS) as response:  # noqa: S310 (the user's URL)
                return decode_audio(response.read(), name)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            reason = getattr(error, "reason", None) or error
            raise OSError(f"{name}: could not download {path!r} ({reason}; the server is given "
                          f"{URL_TIMEOUT_SECONDS:g} s to answer). Check the URL and the network, or download the file "
                          "and pass its path.") from None
    if os.path.isdir(path):
        raise ValueError(f"{name}: {path!r} is a directory; pass the audio files in it.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: no such audio file: {path!r}; check the path.")
    with open(path, "rb") as audio_file:
        return decode_audio(audio_file.read(), name)


__all__ = [
    "MAX_SAMPLE_PEAK",
    "MAX_SAMPLING_RATE",
    "MIN_AUDIO_SECONDS",
    "MIN_SAMPLING_RATE",
    "SILENCE_PEAK",
    "URL_TIMEOUT_SECONDS",
    "check_audio",
    "check_sampling_rate",
    "decode_audio",
    "prepare_clip",
    "read_audio_file",
]
