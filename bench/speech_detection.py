# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""Which speech detector: Silero VAD (what the pipeline uses) against WebRTC's, on speech and on sounds that are not.

    pip install --no-deps webrtcvad-wheels==2.0.14.post1   # the other detector, for this comparison only
    python bench/speech_detection.py --data_dir ../shared/data/ravdess

Speech: every RAVDESS clip (no labels are read). Not speech, 40 clips of each, 3 s at 16 kHz, levels drawn from
-40 to -6 dBFS (seeded): white noise, pink noise, a sine of 200-4000 Hz, clicks in silence (1-10 per second), mains
hum with harmonics, a chord of three sines. A clip "holds speech" when at least `MIN_SPEECH_SECONDS` (0.25 s) of it
is detected as speech, as the pipeline decides. WebRTC VAD at aggressiveness 0-3, 30 ms frames. Prints each
detector's share of speech clips found, of non-speech clips taken for speech per kind, and its time per second of
audio (one thread).

    python bench/speech_detection.py --model outputs/emosllm-ravdess --speakers 17-20

With `--model` (a saved folder): its pipeline labels the clips of `--speakers` whole, with and without speech
detection, side by side; prints UA of each (a clip given no emotion counts as wrong), the clips given none, and
the pipeline's time per clip each way (batches of 8, one thread).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "non_speech", "ua_with_and_without_detection", "webrtc_speech_seconds"]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def non_speech(kind: str, rng: np.random.Generator, seconds: float = 3.0, rate: int = 16000) -> np.ndarray:
    """One clip of a sound that is not speech, at a random level."""
    n, t = int(seconds * rate), np.arange(int(seconds * rate)) / rate
    if kind == "white noise":
        x = rng.standard_normal(n)
    elif kind == "pink noise":
        spectrum = np.fft.rfft(rng.standard_normal(n))
        x = np.fft.irfft(spectrum / np.sqrt(np.maximum(np.arange(len(spectrum)), 1)), n)
    elif kind == "sine":
        x = np.sin(2 * np.pi * rng.uniform(200, 4000) * t)
    elif kind == "clicks":
        x = np.zeros(n)
        x[rng.choice(n - 40, int(rng.uniform(1, 10) * seconds), replace=False)[:, None] + np.arange(40)] = 1.0
    elif kind == "hum":
        x = sum(np.sin(2 * np.pi * 50 * k * t) / k for k in range(1, 6))
    else:  # chord
        x = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(110, 880, 3))
    level = 10 ** (rng.uniform(-40, -6) / 20)
    return (x / np.abs(x).max() * level).astype(np.float32)


def webrtc_speech_seconds(vad, audio: np.ndarray) -> float:
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes()
    frame = 480 * 2  # 30 ms at 16 kHz, 16-bit
    voiced = sum(vad.is_speech(pcm[i:i + frame], 16000) for i in range(0, len(pcm) - frame + 1, frame))
    return voiced * 0.03


def ua_with_and_without_detection(model: str, data_dir: Path, speakers: list[int]) -> None:
    import pandas as pd
    import soundfile as sf
    import torch
    from transformers import pipeline

    torch.set_num_threads(1)
    rows = pd.read_csv(data_dir / "manifest.csv")
    rows = rows[rows["speaker"].str[-2:].astype(int).isin(speakers)]
    audios = [{"array": sf.read(data_dir / p, dtype="float32")[0], "sampling_rate": 16000} for p in rows["path"]]
    classifier = pipeline("audio-classification", model=model, trust_remote_code=True, device="cpu")
    truth = list(rows["label"])
    classifier(audios[:8], batch_size=8, top_k=1, segment_seconds=None)  # warm-up
    for detect in (False, True):
        started = time.perf_counter()
        outputs = classifier(audios, batch_size=8, top_k=1, segment_seconds=None, detect_speech=detect)
        seconds = time.perf_counter() - started
        answers = [o[0]["label"] if o else None for o in outputs]
        recalls = [np.mean([a == t for a, t in zip(answers, truth) if t == label]) for label in sorted(set(truth))]
        print(f"| detect_speech={detect} | UA {np.mean(recalls):.4f} | clips given no emotion: "
              f"{sum(a is None for a in answers)} of {len(answers)} | {1000 * seconds / len(audios):.0f} ms per clip |")


def main(argv=None) -> None:
    import pandas as pd
    import soundfile as sf
    import torch

    from vad_emosllm import MIN_SPEECH_SECONDS, speech_mask, speech_seconds

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "ravdess"))
    parser.add_argument("--per_kind", type=int, default=40)
    parser.add_argument("--model", help="a saved EmoSLLM folder: its UA with and without speech detection instead")
    parser.add_argument("--speakers", default="17-20", help="with --model: the actors whose clips it labels")
    args = parser.parse_args(argv)
    if args.model:
        first, _, last = args.speakers.partition("-")
        return ua_with_and_without_detection(args.model, Path(args.data_dir),
                                             list(range(int(first), int(last or first) + 1)))
    torch.set_num_threads(1)
    speech = [sf.read(Path(args.data_dir) / p, dtype="float32")[0]
              for p in pd.read_csv(Path(args.data_dir) / "manifest.csv")["path"]]
    rng = np.random.default_rng(0)
    kinds = ("white noise", "pink noise", "sine", "clicks", "hum", "chord")
    others = {kind: [non_speech(kind, rng) for _ in range(args.per_kind)] for kind in kinds}

    detectors = {"silero (pipeline)": lambda audio: speech_seconds(speech_mask(audio))}
    try:
        import webrtcvad

        for level in range(4):
            detectors[f"webrtc {level}"] = (lambda vad: lambda audio: webrtc_speech_seconds(vad, audio))(
                webrtcvad.Vad(level))
    except ModuleNotFoundError:
        print("(webrtcvad not installed: pip install --no-deps webrtcvad-wheels==2.0.14.post1 to compare)")
    print(f"| detector | RAVDESS clips with speech ({len(speech)}) | " + " | ".join(kinds) + " | ms per s of audio |")
    print("|---|---:|" + "---:|" * len(kinds) + "---:|")
    for name, detect in detectors.items():
        started = time.perf_counter()
        found = np.mean([detect(audio) >= MIN_SPEECH_SECONDS for audio in speech])
        elapsed = time.perf_counter() - started
        taken = [np.mean([detect(audio) >= MIN_SPEECH_SECONDS for audio in others[kind]]) for kind in kinds]
        per_second = 1000 * elapsed / sum(len(a) / 16000 for a in speech)
        print(f"| {name} | {found:.3f} | " + " | ".join(f"{t:.3f}" for t in taken) + f" | {per_second:.1f} |")


if __name__ == "__main__":
    main()
