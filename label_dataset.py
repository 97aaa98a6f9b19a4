# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""Label a whole dataset with a saved EmoSLLM model: one JSON line per clip, batched, resumable, in N processes.

    python label_dataset.py --model outputs/emosllm --input ../shared/data/ravdess --output labels.jsonl
    python label_dataset.py --model M --input clips.csv --output labels.jsonl             # a path column
    python label_dataset.py --model M --dataset user/corpus --split test --output labels.jsonl   # datasets
    torchrun --nproc_per_node 2 label_dataset.py --model M --input FOLDER --output labels.jsonl  # 2 processes

Inputs: a folder (searched recursively for audio files), a CSV/TSV/JSON(L) table whose `--audio_column` (default:
`path`, else `file_name` or `audio`) holds file paths relative to the table's folder (an optional `transcript`
column is used), or with `--dataset` a `datasets` dataset: a `save_to_disk` folder or a Hub id (its `--split`), its
`--audio_column` an `Audio` column. Each clip goes through the model's own pipeline
(`pipeline("audio-classification")`), `--batch_size` clips per forward pass, so that a batch is spread over files.

Output: one JSON object per clip, in input order per process: `file` (the path relative to the folder or table, or
the dataset's row index), `label`, `score`, `scores` (every class, best first; `label` None and no scores for a
clip without speech), `duration` and `speech` (seconds), and for
recordings longer than one window (`--segment_seconds`, default 10 s) the `timeline` of windows; a clip that cannot
be classified gets `{"file", "error"}` instead and the others go on (exit status 1 if any failed, in this run or an
earlier one it resumed).

Resumable: clips already in `--output` (and in the per-process part files of a killed multi-process run) are not
classified again; a line cut by a kill is dropped and its clip redone. Lines are flushed and synced every
`--batch_size` clips. Several processes (`torchrun`, `accelerate launch`): each takes every N-th clip, writes
`<output>.rank<R>`, and the first process merges the parts into `--output` in input order once all are done. Each
process uses its own GPU where there is one (`cuda:<LOCAL_RANK>`), else the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".webm")
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".json": None, ".jsonl": None}

__all__ = ["Clip", "clips_of", "done_files", "label_clips", "main", "merge_parts"]


class Clip:
    """One clip to label: its `key` in the output (`file`) and what the pipeline reads (`source`)."""

    def __init__(self, key: str, source, transcript: str | None = None):
        self.key, self.source, self.transcript = key, source, transcript

    def pipeline_input(self):
        """A path, or a `datasets` audio value (a torchcodec decoder or `{"array", "sampling_rate"}`); with a
        transcript, the pipeline's dict input of its samples and the transcript."""
        if self.transcript is None:
            return self.source
        if isinstance(self.source, str):
            from processing_emosllm import read_audio_file

            samples, rate = read_audio_file(self.source, self.key)
        elif hasattr(self.source, "get_all_samples"):  # what datasets' Audio column gives
            decoded = self.source.get_all_samples()
            samples, rate = decoded.data, int(decoded.sample_rate)
        else:
            samples, rate = self.source["array"], self.source["sampling_rate"]
        return {"array": samples, "sampling_rate": rate, "transcript": self.transcript}


def clips_of(input_path: str | None, dataset: str | None, split: str, audio_column: str | None) -> list[Clip]:
    """The clips of a folder, a table, or a `datasets` dataset, in a stable order (see the module docstring)."""
    if dataset:
        import datasets

        local = Path(dataset)
        data = datasets.load_from_disk(str(local)) if local.is_dir() else datasets.load_dataset(dataset, split=split)
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise ValueError(f"--dataset {dataset!r} has the splits {list(data)}; name one with --split.")
            data = data[split]
        column = audio_column or next((c for c in ("audio", "path", "file_name") if c in data.column_names), None)
        if column not in data.column_names:
            raise ValueError(f"--dataset {dataset!r} has no audio column {column!r} (columns: {data.column_names}); "
                             "name it with --audio_column.")
        transcripts = data["transcript"] if "transcript" in data.column_names else [None] * len(data)
        return [Clip(str(i), row[column], text) for i, (row, text) in enumerate(zip(data, transcripts))]
    path = Path(input_path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise ValueError(f"--input {input_path!r} holds no audio files ({', '.join(AUDIO_SUFFIXES)}).")
        return [Clip(str(p.relative_to(path)), str(p)) for p in files]
    if path.suffix.lower() in TABLE_SUFFIXES and path.is_file():
        import pandas as pd

        separator = TABLE_SUFFIXES[path.suffix.lower()]
        table = pd.read_csv(path, sep=separator) if separator else pd.read_json(
            path, lines=path.suffix.lower() == ".jsonl")
        column = audio_column or next((c for c in ("path", "file_name", "audio") if c in table.columns), None)
        if column not in table.columns:
            raise ValueError(f"--input {input_path!r} has no audio path column {column!r} (columns: "
                             f"{list(table.columns)}); name it with --audio_column.")
        transcripts = table["transcript"] if "transcript" in table.columns else [None] * len(table)
        return [Clip(str(f), str(path.parent / str(f)), None if not isinstance(t, str) else t)
                for f, t in zip(table[column], transcripts)]
    if not path.exists():
        raise FileNotFoundError(f"--input {input_path!r} does not exist; pass a folder of audio files, a CSV/TSV/JSON "
                                "table of audio paths, or --dataset for a datasets dataset.")
    raise ValueError(f"--input {input_path!r} is neither a folder nor a table ({', '.join(TABLE_SUFFIXES)}).")


def done_files(path: Path) -> dict[str, bool]:
    """`{file: whether its line is an error}` of every complete line of a JSONL output; a last line cut by a kill is
    cut off the file."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # a partial last line: its clip is done again
        with open(path, "r+b") as handle:
            handle.truncate(end)
    lines = (json.loads(line) for line in data[:end].decode().splitlines() if line.strip())
    return {line["file"]: "error" in line for line in lines}


def label_clips(classifier, clips: list[Clip], batch_size: int, call: dict) -> Iterator[dict]:
    """One output object per clip: the pipeline on `batch_size` clips at a time; a batch with a bad clip is redone
    clip by clip, so that only the bad one gets an error line."""
    for start in range(0, len(clips), batch_size):
        batch = clips[start:start + batch_size]
        try:
            results = classifier([c.pipeline_input() for c in batch], batch_size=batch_size, **call)
        except (ValueError, OSError):
            results = None
        for index, clip in enumerate(batch):
            if results is not None:
                result = results[index]
            else:
                try:
                    result = classifier(clip.pipeline_input(), **call)
                except (ValueError, OSError) as error:
                    yield {"file": clip.key, "error": str(error)}
                    continue
            if len(result.get("timeline", ())) <= 1:  # a timeline only for recordings longer than one window
                result.pop("timeline", None)
            yield {"file": clip.key, **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a saved EmoSLLM folder or Hub id")
    parser.add_argument("--input", help="a folder of audio files, or a CSV/TSV/JSON(L) table of audio paths")
    parser.add_argument("--dataset", help="a datasets dataset: a save_to_disk folder or a Hub id")
    parser.add_argument("--split", default="train", help="the --dataset split (default: %(default)s)")
    parser.add_argument("--audio_column", default=None, help="table: the path column; dataset: the Audio column")
    parser.add_argument("--output", required=True, help="the JSONL file to write (resumed if it exists)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--segment_seconds", type=float, default=10.0, help="window of long recordings; 0: whole")
    parser.add_argument("--device", default=None, help="default: this process's GPU if there is one, else cpu")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--no_speech_detection", action="store_true",
                        help="classify every clip (default: a clip or window without speech gets no emotion)")
    args = parser.parse_args(argv)
    if bool(args.input) == bool(args.dataset):
        parser.error("give the data once: --input (a folder or table) or --dataset (a datasets dataset).")
    if args.batch_size < 1:
        parser.error(f"--batch_size must be at least 1, got {args.batch_size}.")
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    try:
        clips = clips_of(args.input, args.dataset, args.split, args.audio_column)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = done_files(output)
    for part in output.parent.glob(f"{output.name}.rank*"):  # a killed run's parts, whatever its world size
        done.update(done_files(part))
    mine = clips[rank::world]
    todo = [clip for clip in mine if clip.key not in done]
    failed = sum(done.get(clip.key, False) for clip in mine)  # clips an earlier run could not classify count too

    import torch
    from transformers import pipeline

    device = args.device or (f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    classifier = pipeline("audio-classification", model=args.model, trust_remote_code=True, device=device)
    call = {"top_k": None, "segment_seconds": args.segment_seconds or None, "return_timeline": True,
            "detect_speech": not args.no_speech_detection}
    from tqdm.auto import tqdm

    progress = tqdm(total=len(todo), disable=args.no_progress, desc=f"rank {rank}" if world > 1 else "clips",
                    position=rank, unit="clip")
    with open(output if world == 1 else output.with_name(f"{output.name}.rank{rank}"), "a", encoding="utf-8") as handle:
        for count, line in enumerate(label_clips(classifier, todo, args.batch_size, call), start=1):
            failed += "error" in line
            handle.write(json.dumps(line) + "\n")
            if count % args.batch_size == 0 or count == len(todo):
                handle.flush()
                os.fsync(handle.fileno())
            progress.update()
    progress.close()
    if world > 1:  # the processes meet once their shares are done (gloo, also beside GPUs: only a barrier)
        import datetime

        import torch.distributed as dist

        # A long timeout: a process whose share was quicker waits for the slowest at the barrier.
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=48))
        total = torch.tensor([failed])
        dist.all_reduce(total)  # every share's failures, reported by the first process's exit status alone
        failed = int(total) if rank == 0 else 0
        if rank == 0:
            merge_parts(output, clips)
        dist.barrier()
        dist.destroy_process_group()
    elif any(output.parent.glob(f"{output.name}.rank*")):  # parts of an earlier multi-process run, resumed alone
        merge_parts(output, clips)
    return 1 if failed else 0


def merge_parts(output: Path, clips: list[Clip]) -> None:
    """`output` and the part files `<output>.rank<R>` merged into `output`, in input order; written beside it and
    renamed, so that a kill leaves either the old output with its parts or the merged one."""
    lines = {}
    for source in [output, *sorted(output.parent.glob(f"{output.name}.rank*"))]:
        if source.exists():
            for text in source.read_text(encoding="utf-8").splitlines():
                if text.strip():
                    lines[json.loads(text)["file"]] = text
    merged = output.with_name(output.name + ".merging")
    merged.write_text("".join(lines[c.key] + "\n" for c in clips if c.key in lines), encoding="utf-8")
    os.replace(merged, output)
    for part in output.parent.glob(f"{output.name}.rank*"):
        part.unlink()


if __name__ == "__main__":
    sys.exit(main())
