# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""Labelling many files: one pipeline call per file against the command line's batches, side by side in one process.

    python bench/label_speed.py --model outputs/emosllm --input ../shared/data/ravdess --clips 100

The first `--clips` audio files of `--input` (sorted, recursively) are labelled twice with the same pipeline: one
`classifier(path)` call per file (a loop over the files, calling the pipeline), then `cli_emosllm.label_clips` in
batches of `--batch_size` (what `python -m cli_emosllm` runs), after one untimed warm-up call. Speech detection on in
both. Prints both wall times, their ratio, and whether the two gave the same labels. One torch thread.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    import torch
    from transformers import pipeline

    from cli_emosllm import clips_of, label_clips

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", default=str(ROOT.parent / "shared" / "data" / "ravdess"))
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    clips = clips_of(args.input, None, None, None)[: args.clips]
    classifier = pipeline("audio-classification", model=args.model, trust_remote_code=True, device="cpu")
    call = {"top_k": None, "segment_seconds": 10.0, "return_timeline": True}
    classifier(clips[0].source, **call)  # warm-up: lazy loading, the prompt cache
    started = time.perf_counter()
    one_by_one = [classifier(clip.source, **call)["label"] for clip in clips]
    per_file = time.perf_counter() - started
    started = time.perf_counter()
    batched = [line.get("label") for line in label_clips(classifier, clips, args.batch_size, call)]
    in_batches = time.perf_counter() - started
    same = sum(a == b for a, b in zip(one_by_one, batched))
    print(f"| {len(clips)} clips | one call per file {per_file:.1f} s | batches of {args.batch_size} "
          f"{in_batches:.1f} s | {per_file / in_batches:.2f}x | same label on {same} of {len(clips)} |")


if __name__ == "__main__":
    main()
