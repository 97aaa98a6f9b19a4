# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
The command line for EmoSLLM inference on a few files: the `audio-classification` pipeline of a saved folder, one
line per file.

    python -m cli_emosllm --model path/to/emosllm a.wav b.flac [--format table|jsonl] [--top_k K] [--timeline]
    ffmpeg -i talk.mp4 -f wav - | python -m cli_emosllm --model path/to/emosllm -     # - : standard input

Inside a saved model folder (it is copied there), `python cli_emosllm.py FILES` uses that folder. For whole datasets
(folders, tables, `datasets`; batched, resumable, several processes) use `label_dataset.py`.
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path

try:  # inside a saved folder loaded as a package; `python -m cli_emosllm` imports top-level modules
    from .pipeline_emosllm import DEFAULT_SEGMENT_SECONDS, check_device
except ImportError:
    if __package__:
        raise
    from pipeline_emosllm import DEFAULT_SEGMENT_SECONDS, check_device

# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------
def _format_scores(scores: list[dict]) -> str:
    return ", ".join(f"{s['label']} {s['score']:.3f}" for s in scores)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cli_emosllm", description="Emotion labels of audio files with an EmoSLLM model."
    )
    parser.add_argument("--model", default=None,
                        help="a saved EmoSLLM folder (or Hub id); default: the folder this file is in, if it is one")
    parser.add_argument("files", nargs="+", help="audio files: WAV, FLAC, OGG, MP3 (others through torchcodec); "
                        "- reads one file's content from standard input")
    parser.add_argument("--format", choices=["table", "jsonl"], default="table")
    parser.add_argument("--top_k", type=int, default=None, help="classes to show per file (default: all)")
    parser.add_argument("--segment_seconds", type=float, default=DEFAULT_SEGMENT_SECONDS,
                        help="window length for long files (default: 10); 0 classifies files whole")
    parser.add_argument("--hop_seconds", type=float, default=None, help="largest distance between window starts")
    parser.add_argument("--timeline", action="store_true", help="table: print each window of long files too")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda:0 (default: an accelerator if there is one)")
    parser.add_argument("--no_speech_detection", action="store_true",
                        help="classify every file (default: a file or window without speech gets no emotion)")
    args = parser.parse_args(argv)
    if args.model is None:
        here = Path(__file__).resolve().parent
        try:
            own_folder = json.loads((here / "config.json").read_text()).get("model_type") == "emosllm"
        except (OSError, ValueError):
            own_folder = False
        if not own_folder:
            parser.error("--model is required: pass a saved EmoSLLM folder or Hub id, e.g. --model outputs/emosllm "
                         "(or run the cli_emosllm.py inside a saved model folder).")
        args.model = str(here)
    for flag, value, low in (("--top_k", args.top_k, 1), ("--batch_size", args.batch_size, 1)):
        if value is not None and value < low:
            parser.error(f"{flag} must be at least {low}, got {value}.")
    if not 0 <= args.segment_seconds < math.inf:
        parser.error(f"--segment_seconds must be 0 (whole files) or a positive number of seconds, got "
                     f"{args.segment_seconds}.")
    if args.hop_seconds is not None and not 0 < args.hop_seconds < math.inf:
        parser.error(f"--hop_seconds must be a positive number of seconds, got {args.hop_seconds}.")
    try:
        check_device(args.device, "--device")
    except ValueError as error:
        parser.error(str(error))
    if not os.path.isdir(args.model) and (os.path.exists(args.model) or args.model.startswith((".", "/", "~"))):
        parser.error(f"--model {args.model!r}: no such model folder; pass a folder written by save_pretrained "
                     "(train.py's --output_dir) or a Hub id.")

    from transformers import pipeline

    try:
        classifier = pipeline(model=args.model, trust_remote_code=True, device=args.device)
    except (OSError, ValueError) as error:
        print(f"error: could not load --model {args.model!r}: {error}", file=sys.stderr)
        return 2
    call = {"top_k": args.top_k, "segment_seconds": args.segment_seconds or None, "hop_seconds": args.hop_seconds,
            "return_timeline": True, "batch_size": args.batch_size, "detect_speech": not args.no_speech_detection}
    failed = 0
    if args.format == "table":
        width = max(len(f) for f in args.files)
        print(f"{'file':<{width}}  {'seconds':>8}  {'label':<12} {'score':>6}  scores")
    if args.files.count("-") > 1:
        parser.error("- (standard input) can be given once: it holds one file's content.")
    for path in args.files:
        try:
            result = classifier(sys.stdin.buffer.read() if path == "-" else path, **call)
        except (ValueError, OSError) as error:
            failed += 1
            print(f"error: {error}", file=sys.stderr)
            if args.format == "jsonl":
                print(json.dumps({"file": path, "error": str(error)}), flush=True)
            continue
        if args.format == "jsonl":
            print(json.dumps({"file": path, **result}), flush=True)
            continue
        if result["label"] is None:
            print(f"{path:<{width}}  {result['duration']:>8.2f}  {'(no speech)':<12}", flush=True)
            continue
        print(f"{path:<{width}}  {result['duration']:>8.2f}  {result['label']:<12} {result['score']:>6.3f}  "
              f"{_format_scores(result['scores'])}", flush=True)
        if args.timeline and len(result["timeline"]) > 1:
            for entry in result["timeline"]:
                span = f"{entry['start']:.1f}-{entry['end']:.1f} s"
                label = entry["label"] or "(no speech)"
                score = "" if entry["score"] is None else f"{entry['score']:>6.3f}"
                print(f"{'':<{width}}  {span:>14}  {label:<12} {score}  {_format_scores(entry['scores'])}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main"]
