# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""What a trained model scores through the pipeline with the true transcripts, with the pipeline's plain call (no
transcript given: the model's configured `use_transcript`, e.g. `auto` transcribes the audio) and with no transcript
at all, on the same test clips.

    python bench/transcript_parity.py --model outputs/emosllm --data_dir data/smoke --test_speakers spk07,spk08
    python bench/transcript_parity.py --model outputs/emosllm-ravdess --data_dir ../shared/data/ravdess \\
        --test_speakers 17-20

Prints a Markdown table (UA, WA, macro F1 and the share of the true-transcript UA) and, with `--out`, writes it as
JSON. The clips are read and checked as train.py reads them; whole clips, one thread by default.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["main", "parse_args"]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a saved EmoSLLM folder (train.py's output)")
    parser.add_argument("--data_dir", required=True, help="the corpus folder")
    parser.add_argument("--test_speakers", required=True, help="the test speakers, e.g. '17-20'")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=8, help="pipeline batch size (default: %(default)s)")
    parser.add_argument("--out", default=None, help="write the results here as JSON")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch
    from transformers import pipeline

    from training.clips import decoded_clips
    from training.corpora import SAMPLING_RATE
    from training.data import load_corpus
    from training.metrics import compute_ser_metrics
    from training.splits import split_by_speakers

    torch.set_num_threads(args.threads)
    test = split_by_speakers(load_corpus(args.data_dir), test_speakers=args.test_speakers)["test"]
    clips = decoded_clips(test)
    classifier = pipeline("audio-classification", model=args.model, trust_remote_code=True, device="cpu")
    labels = classifier.model.config.labels
    configured = classifier.processor.use_transcript

    def score(transcripts: list | None, use_transcript: str) -> dict:
        classifier.processor.use_transcript = use_transcript
        inputs = [{"array": c["audio"], "sampling_rate": SAMPLING_RATE} for c in clips]
        if transcripts is not None:
            inputs = [dict(i, transcript=t) for i, t in zip(inputs, transcripts)]
        started = time.perf_counter()
        outputs = classifier(inputs, top_k=1, segment_seconds=None, batch_size=args.batch_size)
        seconds = time.perf_counter() - started
        metrics = compute_ser_metrics([o[0]["label"] for o in outputs], [c["label"] for c in clips], labels)
        return {key: metrics[key] for key in ("ua", "wa", "macro_f1")} | {"seconds": round(seconds, 1)}

    rows = {
        "true transcripts": score([c["transcript"] for c in clips], configured),
        f"plain call (use_transcript={configured!r})": score(None, configured),
        "no transcript": score(None, "none"),
    }
    reference = rows["true transcripts"]["ua"]
    lines = ["| transcripts | UA | WA | macro F1 | share of the true-transcript UA | seconds |", "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        share = row["ua"] / reference if reference else float("nan")
        lines.append(f"| {name} | {row['ua']:.3f} | {row['wa']:.3f} | {row['macro_f1']:.3f} | {share:.3f} | "
                     f"{row['seconds']:.0f} |")
    print(f"{args.model} on {len(clips)} test clips ({args.test_speakers}), {args.threads} thread(s)")
    print("\n".join(lines))
    result = {"model": args.model, "data_dir": args.data_dir, "test_speakers": args.test_speakers,
              "clips": len(clips), "threads": args.threads, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
