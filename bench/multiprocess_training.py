# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""Training time of train.py in several processes against one, side by side, the same data, epochs and flags.

    python bench/multiprocess_training.py --processes 1,2 --threads 1 -- --data_dir ../shared/data/ravdess ...

Each run is `train.py <flags after -->` (one process: python; several: `torchrun --standalone --nproc_per_node N`)
with OMP_NUM_THREADS=--threads in every process, evaluation and checkpoints off during training (`--eval_strategy
no --save_strategy no`: the training stage alone is timed) and its own output folder. It reports the training
stage's seconds (train.py's `train_seconds`: the Trainer's training loop, after the encoder cache is filled), the
speed-up over the first run, the test UA and its delivered value, and the whole run's wall seconds. The encoder cache is filled by an untimed warm-up run
first, so no run pays for encoding. `--per_device_train_batch_size` is per process: N processes read N times the
clips per step, so runs over the same epochs take 1/N of the steps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main", "parse_args", "run"]

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per process (default: %(default)s)")
    parser.add_argument("--output_root", default=None, help="where the runs' folders go (default: a temporary one)")
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    return parser.parse_args(argv[:split]), argv[split + 1:]


def run(processes: int, threads: int, flags: list[str], output: Path) -> dict:
    script = [str(ROOT / "train.py"), *flags, "--output_dir", str(output), "--eval_strategy", "no",
              "--save_strategy", "no"]
    launch = [sys.executable, *script] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *script]
    started = time.time()
    result = subprocess.run(launch, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if result.returncode != 0:
        raise RuntimeError(f"{processes} process(es) failed:\n{result.stderr[-3000:]}")
    metrics = json.loads((output / "all_results.json").read_text())
    return {"processes": processes, "threads": threads, "train_seconds": metrics["train_seconds"],
            "wall_seconds": round(time.time() - started, 1), "ua": round(metrics["ua"], 4),
            "delivered_ua": metrics.get("delivered_ua")}


def main(argv=None) -> list[dict]:
    args, flags = parse_args(argv)
    counts = [int(n) for n in args.processes.split(",") if n.strip()]
    root = Path(args.output_root or tempfile.mkdtemp(prefix="emosllm_multiprocess_"))
    run(1, args.threads, [*flags, "--max_steps", "1"], root / "warm_up")  # fills the encoder cache, untimed
    rows = [run(n, args.threads, flags, root / f"processes{n}") for n in counts]
    print("| processes | threads each | train seconds | speed-up | test UA (delivered) | wall seconds |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        row["speed_up"] = round(rows[0]["train_seconds"] / row["train_seconds"], 2)
        print(f"| {row['processes']} | {row['threads']} | {row['train_seconds']} | {row['speed_up']}x | "
              f"{row['ua']} ({row['delivered_ua']}) | {row['wall_seconds']} |")
    return rows


if __name__ == "__main__":
    main()
