# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""Does cutting leading and trailing non-speech keep RAVDESS accuracy? Two copies of a corpus, trained and tested alike.

    python bench/trim_non_speech.py --data_dir ../shared/data/ravdess --speakers 1-16 --out runs/trim
    python train.py --data_dir runs/trim/whole   --test_speakers 13-16 --output_dir runs/trim/model-whole
    python train.py --data_dir runs/trim/trimmed --test_speakers 13-16 --output_dir runs/trim/model-trimmed

Writes `whole/` (the clips of `--speakers` as they are) and `trimmed/` (each clip cut to its first and last 32 ms
chunk of detected speech, `vad_emosllm.speech_mask` as the pipeline detects it, widened by `--margin_seconds` on each
side; a clip without detected speech is kept whole), both 16 kHz FLAC with the corpus's `manifest.csv` (durations
updated), so train.py trains and tests each copy alike: trimming "in training and inference alike". Prints the
seconds kept. The choice is made on a development split (train actors 01-12, test 13-16), never on 17-20.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from audio_emosllm import read_audio_file  # noqa: E402
from configuration_emosllm import SAMPLING_RATE  # noqa: E402
from vad_emosllm import CHUNK, speech_mask  # noqa: E402

__all__ = ["main", "speaker_number", "speech_bounds"]


def speech_bounds(samples: np.ndarray, margin: int) -> tuple[int, int]:
    """The samples `start:end` from the first to the last chunk of speech, `margin` samples wider on each side."""
    chunks = np.flatnonzero(speech_mask(samples))
    if len(chunks) == 0:
        return 0, len(samples)
    return max(0, int(chunks[0]) * CHUNK - margin), min(len(samples), (int(chunks[-1]) + 1) * CHUNK + margin)


def speaker_number(speaker: str) -> int:
    return int(speaker.rsplit("_", 1)[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="../shared/data/ravdess", help="a corpus folder with manifest.csv")
    parser.add_argument("--speakers", default="1-16", help="actor numbers to copy, e.g. 1-16")
    parser.add_argument("--margin_seconds", type=float, default=0.1, help="kept before and after the speech")
    parser.add_argument("--out", default="runs/trim", help="folder for whole/ and trimmed/")
    args = parser.parse_args(argv)
    first, last = (int(x) for x in args.speakers.split("-"))
    data, out = Path(args.data_dir), Path(args.out)
    rows = [r for r in csv.DictReader(open(data / "manifest.csv")) if first <= speaker_number(r["speaker"]) <= last]
    margin = round(args.margin_seconds * SAMPLING_RATE)
    kept = {"whole": 0.0, "trimmed": 0.0}
    for copy in kept:
        (out / copy).mkdir(parents=True, exist_ok=True)
    manifests = {copy: [] for copy in kept}
    for row in rows:
        samples, rate = read_audio_file(data / row["path"], row["path"])
        if rate not in (None, SAMPLING_RATE):
            raise ValueError(f"{row['path']}: {rate} Hz; this bench reads the 16 kHz copy of the corpus")
        start, end = speech_bounds(samples, margin)
        for copy, clip in (("whole", samples), ("trimmed", samples[start:end])):
            target = out / copy / row["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            sf.write(target, clip, SAMPLING_RATE, subtype="PCM_16")
            kept[copy] += len(clip) / SAMPLING_RATE
            manifests[copy].append({**row, "duration": f"{len(clip) / SAMPLING_RATE:.4f}"})
    for copy, manifest in manifests.items():
        with open(out / copy / "manifest.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(manifest[0]))
            writer.writeheader()
            writer.writerows(manifest)
    print(f"{len(rows)} clips: {kept['whole']:.0f} s whole, {kept['trimmed']:.0f} s trimmed "
          f"({kept['trimmed'] / kept['whole']:.1%} kept)")


if __name__ == "__main__":
    main()
