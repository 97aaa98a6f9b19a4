# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
The command line for EmoSLLM inference: the `audio-classification` pipeline of a saved folder on a few files, a
folder, a table or a `datasets` dataset; one line per clip.

    python -m cli_emosllm --model path/to/emosllm a.wav b.flac [--format table|jsonl] [--top_k K] [--timeline]
    ffmpeg -i talk.mp4 -f wav - | python -m cli_emosllm --model path/to/emosllm -     # - : standard input
    python -m cli_emosllm --model M --input ../shared/data/ravdess --output labels.jsonl  # a folder, recursively
    python -m cli_emosllm --model M --input clips.csv --output labels.jsonl              # a table's path column
    python -m cli_emosllm --model M --dataset user/corpus --split test --output labels.jsonl      # datasets
    torchrun --nproc_per_node 2 cli_emosllm.py --model M --input FOLDER --output labels.jsonl    # 2 processes

Inside a saved model folder (it is copied there), `python cli_emosllm.py FILES` uses that folder.

Inputs: audio files (or `-`); with `--input`, a folder (searched recursively for audio files) or a CSV/TSV/JSON(L)
table whose `--audio_column` (default: `path`, else `file_name` or `audio`) holds file paths relative to the table's
folder (an optional `transcript` column is used, and the columns of the model's text features); with `--dataset`, a
`datasets` dataset: a `save_to_disk` folder or a Hub id (its `--split`, needed only where it has several), its
`--audio_column` an `Audio` column.
`--batch_size` clips go through the model at once, so that a batch is spread over files, clips of similar length
together (`label_clips`).

Output: one JSON object per clip (`--format jsonl`, always with `--output`), in input order per process: `file` (the
path as given, relative to the folder or table, the dataset's row index, or `row N` for a table row without a path),
`label`, `score`, `scores` (best first; `label` None and no scores for a clip without speech), `duration` and
`speech` (seconds), and for recordings longer than one window (`--segment_seconds`, default 10 s) the `timeline` of
windows; a clip that cannot be classified (or a table row without a path) gets `{"file", "error"}` instead and the
others go on (exit status 1 if any failed, in this run or an earlier one it resumed). `--format table` (the default
on the terminal) prints the same as aligned columns.

With `--output`: resumable, clips already in it (and in the part files of a killed multi-process run) are not
classified again; a line cut by a kill is dropped and its clip redone (a file holding other lines is refused, left
as it is). Lines are flushed and synced every `--batch_size` clips. Several processes (`torchrun`, `accelerate
launch`): each takes every N-th clip, writes `<output>.rank<R>`, and the first process merges the parts into
`--output` in input order once all are done. Each process uses its own GPU where there is one (`cuda:<LOCAL_RANK>`),
else the CPU.
"""

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

try:  # inside a saved folder loaded as a package; `python -m cli_emosllm` imports top-level modules
    from .pipeline_emosllm import DEFAULT_SEGMENT_SECONDS, check_device
    from .processing_emosllm import feature_value
except ImportError:
    if __package__:
        raise
    from pipeline_emosllm import DEFAULT_SEGMENT_SECONDS, check_device
    from processing_emosllm import feature_value

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".webm")
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".json": None, ".jsonl": None}
TABLE_PATH_COLUMNS = ("path", "file_name", "audio")  # a table's audio path column, the first of these it has


# ----------------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------------
class Clip:
    """One clip to label."""

    def __init__(self, key: str, source, transcript: str | None = None, columns: dict[str, str] | None = None,
                 error: str | None = None):
        """
        Args:
            key: Its name in the output (`file`).
            source: What the pipeline reads: a path, the bytes of a file, or a `datasets` audio value (a torchcodec
                decoder or `{"array": samples (samples,), "sampling_rate": rate}`).
            transcript: Its transcript, or None.
            columns: Its table or dataset row's other values as text (empty ones left out), where the model's text
                features are looked up (`processor.text_features`).
            error: Why the clip cannot be labelled, known before it is read (a table row without a path); its output
                line is this error.
        """
        self.key, self.source, self.transcript, self.columns = key, source, transcript, columns or {}
        self.error = error


def clips_of(input_path: str | None, dataset: str | None, split: str | None, audio_column: str | None) -> list[Clip]:
    """
    The clips of a folder, a table, or a `datasets` dataset, in a stable order (see the module docstring).

    Args:
        input_path: A folder of audio files, or a CSV/TSV/JSON(L) table of audio paths (None with `dataset`).
        dataset: A `datasets` dataset: a `save_to_disk` folder or a Hub id (None with `input_path`).
        split: The dataset's split; None: its only one (a dataset saved with several needs one named).
        audio_column: The table's path column or the dataset's `Audio` column; None picks a usual name.

    Returns:
        The clips, keyed by their path relative to the folder or table (`row N` for a row without one), or by the
        dataset's row index.
    """
    if dataset:
        import datasets

        local = Path(dataset)
        if not local.is_dir() and split is None:  # a Hub dataset's splits, known before anything is downloaded
            names = datasets.get_dataset_split_names(dataset)
            split = names[0] if len(names) == 1 else None
            if split is None:
                raise ValueError(f"--dataset {dataset!r} has the splits {names}; name one with --split.")
        data = datasets.load_from_disk(str(local)) if local.is_dir() else datasets.load_dataset(dataset, split=split)
        if isinstance(data, datasets.DatasetDict):
            if split not in data and not (split is None and len(data) == 1):
                raise ValueError(f"--dataset {dataset!r} has the splits {list(data)}; name one with --split.")
            data = data[split or next(iter(data))]
        elif split is not None and split != (data.split and str(data.split)):  # one dataset, saved from another split
            saved = f"saved from its split {str(data.split)!r}" if data.split else "saved without splits"
            raise ValueError(f"--dataset {dataset!r} is one dataset ({saved}), so it has no split {split!r}; leave "
                             f"--split out to label its {len(data)} rows.")
        if not len(data):
            raise ValueError(f"--dataset {dataset!r}{f' (split {split!r})' if split else ''} has no rows, so there are "
                             "no clips to label.")
        column = audio_column or next((c for c in ("audio", "path", "file_name") if c in data.column_names), None)
        if column not in data.column_names:
            raise ValueError(f"--dataset {dataset!r} has no audio column {column!r} (columns: {data.column_names}); "
                             "name it with --audio_column.")
        others = [name for name in data.column_names if name not in (column, "transcript")]
        return [Clip(str(i), row[column], row.get("transcript"), _columns(row, others)) for i, row in enumerate(data)]
    path = Path(input_path)
    if path.is_dir():
        if audio_column:
            raise ValueError(f"--input {input_path!r} is a folder, whose audio files are found by their names; "
                             "--audio_column names a table's column: leave it out.")
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise ValueError(f"--input {input_path!r} holds no audio files ({', '.join(AUDIO_SUFFIXES)}).")
        return [Clip(str(p.relative_to(path)), str(p)) for p in files]
    if path.suffix.lower() in TABLE_SUFFIXES and path.is_file():
        return _table_clips(path, audio_column)
    if not path.exists():
        raise FileNotFoundError(f"--input {input_path!r} does not exist; pass a folder of audio files, a CSV/TSV/JSON "
                                "table of audio paths, or --dataset for a datasets dataset.")
    raise ValueError(f"--input {input_path!r} is neither a folder nor a table ({', '.join(TABLE_SUFFIXES)}).")


def _table_clips(path: Path, audio_column: str | None) -> list[Clip]:
    """The clips of a CSV/TSV/JSON(L) table (`clips_of`); a table that cannot be read, or has no rows or no path
    column, raises `ValueError` naming it. A row whose path cell is empty or not text is keyed `row N` (from 1) and
    gets an error line."""
    import pandas as pd

    name, separator = f"--input {str(path)!r}", TABLE_SUFFIXES[path.suffix.lower()]
    # The path columns as they are written (pandas would read "001" as the number 1; JSON's numbers stay numbers).
    as_written = dict.fromkeys((audio_column,) if audio_column else TABLE_PATH_COLUMNS, str if separator else object)
    try:
        table = pd.read_csv(path, sep=separator, dtype=as_written) if separator else pd.read_json(
            path, lines=path.suffix.lower() == ".jsonl", dtype=as_written)
    except ValueError as error:  # pandas' parser errors, an empty file, bad JSON, text that is not UTF-8
        raise ValueError(f"{name} could not be read as a {path.suffix} table ({error}); pass a CSV/TSV file with a "
                         "header row, or JSON(L) with one object per clip.") from None
    if table.empty:
        raise ValueError(f"{name} has no rows, so there are no clips to label; add one row per audio file.")
    column = audio_column or next((c for c in TABLE_PATH_COLUMNS if c in table.columns), None)
    if column not in table.columns:
        wanted = f"--audio_column {audio_column!r}" if audio_column else f"any of {', '.join(TABLE_PATH_COLUMNS)}"
        raise ValueError(f"{name} has no audio path column (looked for {wanted}; its columns are "
                         f"{list(table.columns)}); name its column of file paths with --audio_column.")
    others = [other for other in table.columns if other not in (column, "transcript")]
    clips = []
    for number, row in enumerate(table.to_dict("records"), start=1):
        file = row[column]
        if isinstance(file, str) and file.strip():
            transcript = row["transcript"] if isinstance(row.get("transcript"), str) else None
            clips.append(Clip(file, str(path.parent / file), transcript, _columns(row, others)))
        else:
            problem = "is empty" if feature_value(file) is None else f"holds {file!r}, not a file path"
            counted = "counting from 1, the header not counted" if separator else "counting from 1"
            clips.append(Clip(f"row {number}", None, error=f"{name}, row {number} ({counted}): its {column!r} cell "
                              f"{problem}; write the audio file's path there or remove the row."))
    return clips


# ----------------------------------------------------------------------------------------------------------------------
# Labelling
# ----------------------------------------------------------------------------------------------------------------------
# Clips sorted by length within groups of this many batches before batching (`label_clips`), so that a batch holds
# clips of similar length and the encoder computes little padding (BENCHMARKS.md, "Labelling a dataset"). A group's
# lines are written once it is done.
SORTED_GROUP_BATCHES = 16


def _columns(row: dict, names: list[str]) -> dict[str, str]:
    """A row's values of the columns `names` as text (`feature_value`), empty ones left out."""
    return {name: value for name in names if (value := feature_value(row.get(name))) is not None}


def _size(clip: Clip) -> int:
    """A clip's length, for sorting: its file's bytes or its samples (a file that cannot be read sorts first)."""
    source = clip.source
    if isinstance(source, (str, os.PathLike)):
        with contextlib.suppress(OSError):
            return os.path.getsize(source)
        return 0
    if isinstance(source, dict):
        return len(source.get("array", source.get("raw", ())))
    return len(source) if isinstance(source, (bytes, bytearray)) else 0


def label_clips(classifier, clips: list[Clip], batch_size: int, call: dict) -> Iterator[dict]:
    """
    One output object per clip, in order: the pipeline on `batch_size` clips at a time, the clips of each group of
    `SORTED_GROUP_BATCHES` batches sorted by length first; a batch with a bad clip is redone clip by clip, so that
    only the bad one gets an error line. A clip with an `error` gets it as its line, unread.

    Args:
        classifier: The model's `audio-classification` pipeline.
        clips: The clips to label.
        batch_size: Clips per pipeline call (and windows per forward pass).
        call: The pipeline's call parameters; `return_timeline=True` gives the output described in the module
            docstring.

    Returns:
        An iterator of `{"file": clip.key, **result}` or `{"file": clip.key, "error": message}`.
    """
    group_size = batch_size * SORTED_GROUP_BATCHES
    for group_start in range(0, len(clips), group_size):
        group = clips[group_start:group_start + group_size]
        lines = {i: {"file": clip.key, "error": clip.error} for i, clip in enumerate(group) if clip.error}
        order = sorted((i for i in range(len(group)) if i not in lines), key=lambda i: _size(group[i]))
        for start in range(0, len(order), batch_size):
            batch = [group[i] for i in order[start:start + batch_size]]
            lines.update(zip(order[start:start + batch_size], _label_batch(classifier, batch, batch_size, call)))
        yield from (lines[i] for i in range(len(group)))


def _label_batch(classifier, batch: list[Clip], batch_size: int, call: dict) -> Iterator[dict]:
    """`label_clips`' output objects for one batch, in its order."""
    texts = {"transcript": [c.transcript for c in batch]} if any(c.transcript for c in batch) else {}
    # The text features the model was trained with, from the rows (a folder saved before they existed: none).
    names = getattr(classifier.processor, "text_features", [])
    features = [{name: c.columns[name] for name in names if name in c.columns} or None for c in batch]
    if any(features):
        texts["text_features"] = features
    try:
        results = classifier([c.source for c in batch], batch_size=batch_size, **texts, **call)
    except (ValueError, OSError):
        results = None
    for index, clip in enumerate(batch):
        if results is not None:
            result = results[index]
        else:
            try:
                result = classifier(clip.source, **{key: values[index] for key, values in texts.items()}, **call)
            except (ValueError, OSError) as error:
                yield {"file": clip.key, "error": _naming(clip, str(error))}
                continue
        if len(result.get("timeline", ())) <= 1:  # a timeline only for recordings longer than one window
            result.pop("timeline", None)
        yield {"file": clip.key, **result}


def _naming(clip: Clip, message: str) -> str:
    """An error message that names its clip: as it is where it starts with the clip's path (the audio's errors), else
    after the clip's key (a transcript's error names only the argument)."""
    return message if isinstance(clip.source, str) and message.startswith(clip.source) else f"{clip.key}: {message}"


def done_files(path: Path) -> dict[str, bool]:
    """
    What an earlier run finished: `{file: whether its line is an error}` of every complete line of a JSONL output; a
    last line cut by a kill is cut off the file. A file that is not this command's output raises `ValueError` naming
    the line, and is left as it is.

    Args:
        path: The JSONL output (or a part file); missing means nothing is done.
    """
    if not path.exists():
        return {}
    data = path.read_bytes()
    *complete, last = data.split(b"\n")
    done = {}
    for number, text in enumerate(complete, start=1):
        line = _output_line(text)
        if line is None and text.strip():
            raise _not_output(path, number)
        if line:
            done[line["file"]] = "error" in line
    if last.strip() and not last.startswith(b'{"file": '):  # a line cut by a kill starts as each of ours does
        raise _not_output(path, len(complete) + 1)
    if last:  # a partial last line: its clip is done again
        with open(path, "r+b") as handle:
            handle.truncate(len(data) - len(last))
    return done


def _output_line(text: bytes) -> dict | None:
    """A line of the JSONL output as this command writes it (a JSON object with a str `file`), or None."""
    try:
        line = json.loads(text)
    except ValueError:  # not JSON, or not UTF-8
        return None
    return line if isinstance(line, dict) and isinstance(line.get("file"), str) else None


def _not_output(path: Path, number: int) -> ValueError:
    """The error of a file to resume whose line `number` this command did not write."""
    return ValueError(f"{str(path)!r}, line {number}: not a line of this command's JSONL output (a JSON object with a "
                      "\"file\"), so --output cannot resume it; pass another --output, or move or remove the file.")


def merge_parts(output: Path, clips: list[Clip]) -> None:
    """
    `output` and the part files `<output>.rank<R>` merged into `output`, in input order; written beside it and
    renamed, so that a kill leaves either the old output with its parts or the merged one.

    Args:
        output: The JSONL output.
        clips: Every clip of the run (all processes'), in input order.
    """
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


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------
def _format_scores(scores: list[dict]) -> str:
    return ", ".join(f"{s['label']} {s['score']:.3f}" for s in scores)


def _table_rows(line: dict, width: int, timeline: bool) -> list[str]:
    """A result line as table rows: the clip, then with `timeline` each window of a long recording."""
    if "error" in line:  # the error itself is on standard error
        return [f"{line['file']:<{width}}  {'':>8}  {'(error)':<12}"]
    if line.get("label") is None:
        return [f"{line['file']:<{width}}  {line['duration']:>8.2f}  {'(no speech)':<12}"]
    rows = [f"{line['file']:<{width}}  {line['duration']:>8.2f}  {line['label']:<12} {line['score']:>6.3f}  "
            f"{_format_scores(line['scores'])}"]
    for entry in line.get("timeline", []) if timeline else []:
        span = f"{entry['start']:.1f}-{entry['end']:.1f} s"
        score = "" if entry["score"] is None else f"{entry['score']:>6.3f}"
        rows.append(f"{'':<{width}}  {span:>14}  {entry['label'] or '(no speech)':<12} {score}  "
                    f"{_format_scores(entry['scores'])}")
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cli_emosllm", description="Emotion labels of audio files or datasets with an EmoSLLM model."
    )
    parser.add_argument("--model", default=None,
                        help="a saved EmoSLLM folder (or Hub id); default: the folder this file is in, if it is one")
    parser.add_argument("files", nargs="*", help="audio files: WAV, FLAC, OGG, MP3 (others through torchcodec); "
                        "- reads one file's content from standard input")
    parser.add_argument("--input", help="a folder of audio files, or a CSV/TSV/JSON(L) table of audio paths")
    parser.add_argument("--dataset", help="a datasets dataset: a save_to_disk folder or a Hub id")
    parser.add_argument("--split", default=None, help="the --dataset split (needed where it has several)")
    parser.add_argument("--audio_column", default=None, help="table: the path column; dataset: the Audio column")
    parser.add_argument("--output", default=None, help="a JSONL file to write (resumed if it exists; several "
                        "processes write it together); default: standard output")
    parser.add_argument("--format", choices=["table", "jsonl"], default=None,
                        help="standard output's format (default: table); --output is always JSONL")
    parser.add_argument("--top_k", type=int, default=None, help="classes to show per clip (default: all)")
    parser.add_argument("--segment_seconds", type=float, default=DEFAULT_SEGMENT_SECONDS,
                        help="window length for long files (default: 10); 0 classifies files whole")
    parser.add_argument("--hop_seconds", type=float, default=None, help="largest distance between window starts")
    parser.add_argument("--timeline", action="store_true", help="table: print each window of long files too")
    parser.add_argument("--batch_size", type=int, default=16, help="clips per forward pass (default: %(default)s)")
    parser.add_argument("--device", default=None,
                        help="e.g. cpu, cuda:0 (default: this process's GPU if there is one, else the CPU)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar (shown with --output)")
    parser.add_argument("--no_speech_detection", action="store_true",
                        help="classify every clip (default: a clip or window without speech gets no emotion)")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace, world: int) -> None:
    """Refuses bad arguments (exit status 2, naming the fix) before anything is loaded."""
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
    if sum(map(bool, (args.files, args.input, args.dataset))) != 1:
        parser.error("give the data once: audio files, --input (a folder or table) or --dataset (a datasets "
                     "dataset).")
    if args.files.count("-") > 1:
        parser.error("- (standard input) can be given once: it holds one file's content.")
    for flag, value, low in (("--top_k", args.top_k, 1), ("--batch_size", args.batch_size, 1)):
        if value is not None and value < low:
            parser.error(f"{flag} must be at least {low}, got {value}.")
    if not 0 <= args.segment_seconds < math.inf:
        parser.error(f"--segment_seconds must be 0 (whole files) or a positive number of seconds, got "
                     f"{args.segment_seconds}.")
    if args.hop_seconds is not None and not 0 < args.hop_seconds < math.inf:
        parser.error(f"--hop_seconds must be a positive number of seconds, got {args.hop_seconds}.")
    if args.output and args.format == "table":
        parser.error("--output writes JSONL; leave --format out (or pass --format jsonl).")
    if args.timeline and (args.output or args.format == "jsonl"):
        parser.error("--timeline prints the windows in the table; JSON lines always hold a long recording's "
                     "timeline: leave --timeline out.")
    if args.hop_seconds is not None and not args.segment_seconds:
        parser.error("--hop_seconds spaces the windows of long files, but --segment_seconds 0 classifies files whole; "
                     "leave --hop_seconds out or pass a --segment_seconds.")
    if args.split is not None and not args.dataset:
        parser.error("--split names a split of a --dataset; leave it out for files or --input.")
    if args.audio_column is not None and args.files:
        parser.error("--audio_column names a column of an --input table or a --dataset; leave it out for files.")
    if world > 1 and not args.output:
        parser.error(f"{world} processes write one file: pass --output.")
    if args.output:
        _check_output(parser, Path(args.output))
    try:
        check_device(args.device, "--device")
    except ValueError as error:
        parser.error(str(error))
    if not os.path.isdir(args.model) and (os.path.exists(args.model) or args.model.startswith((".", "/", "~"))):
        parser.error(f"--model {args.model!r}: no such model folder; pass a folder written by save_pretrained "
                     "(train.py's --output_dir) or a Hub id.")


def _check_output(parser: argparse.ArgumentParser, output: Path) -> None:
    """Refuses an `--output` that cannot be written (a folder, a path under a file, a place that takes no files); its
    missing folders are made."""
    try:
        if output.is_dir():
            parser.error(f"--output {str(output)!r} is a folder; pass a file in it, e.g. "
                         f"{str(output / 'labels.jsonl')!r}.")
        above = next(folder for folder in output.parents if folder.exists())  # the nearest existing folder (or file)
        if not above.is_dir():
            parser.error(f"--output {str(output)!r}: {str(above)!r} is a file, not a folder; pass a path in a folder.")
        existed = output.exists()
        output.parent.mkdir(parents=True, exist_ok=True)
        output.open("a").close()
    except OSError as error:
        parser.error(f"--output {str(output)!r} cannot be written ({error.strerror}); pass a file in a folder you can "
                     "write to.")
    if not existed:
        output.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """
    Runs the command line (see the module docstring).

    Args:
        argv: The arguments; None reads `sys.argv`.

    Returns:
        The exit status: 0, 1 when a clip could not be classified, 2 when the model cannot be loaded (bad arguments
        exit with 2 through argparse).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    _check_args(parser, args, world)
    if args.files:
        clips = [Clip(path, sys.stdin.buffer.read() if path == "-" else path) for path in args.files]
    else:
        try:
            clips = clips_of(args.input, args.dataset, args.split, args.audio_column)
        except (ValueError, OSError) as error:
            parser.error(str(error))
    mine, failed = clips[rank::world], 0
    todo = mine
    if args.output:
        output = Path(args.output)
        try:
            done = done_files(output)
            for part in output.parent.glob(f"{output.name}.rank*"):  # a killed run's parts, whatever its world size
                done.update(done_files(part))
        except ValueError as error:
            parser.error(str(error))
        todo = [clip for clip in mine if clip.key not in done]
        failed = sum(done.get(clip.key, False) for clip in mine)  # clips an earlier run could not classify count too

    import torch
    from tqdm.auto import tqdm
    from transformers import pipeline

    device = args.device or (f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else None)
    try:
        classifier = pipeline(model=args.model, trust_remote_code=True, device=device)
    except (OSError, ValueError) as error:
        print(f"error: could not load --model {args.model!r}: {error}", file=sys.stderr)
        return 2
    call = {"top_k": args.top_k, "segment_seconds": args.segment_seconds or None, "hop_seconds": args.hop_seconds,
            "return_timeline": True, "detect_speech": not args.no_speech_detection}
    table = not args.output and args.format != "jsonl"
    width = max(len(clip.key) for clip in clips)
    if table:
        print(f"{'file':<{width}}  {'seconds':>8}  {'label':<12} {'score':>6}  scores")
    progress = tqdm(total=len(todo), disable=args.no_progress or not args.output, unit="clip", position=rank,
                    desc=f"rank {rank}" if world > 1 else "clips")
    part = None if not args.output else output if world == 1 else output.with_name(f"{output.name}.rank{rank}")
    with open(part, "a", encoding="utf-8") if part else contextlib.nullcontext() as handle:
        for count, line in enumerate(label_clips(classifier, todo, args.batch_size, call), start=1):
            if "error" in line:
                failed += 1
                tqdm.write(f"error: {line['error']}", file=sys.stderr)
            if part:
                handle.write(json.dumps(line) + "\n")
                if count % args.batch_size == 0 or count == len(todo):
                    handle.flush()
                    os.fsync(handle.fileno())
            elif table:
                print("\n".join(_table_rows(line, width, args.timeline)), flush=True)
            else:
                print(json.dumps(line), flush=True)
            progress.update()
    progress.close()
    if world > 1:
        failed = _meet(failed, rank, output, clips)
    elif args.output and any(output.parent.glob(f"{output.name}.rank*")):  # an earlier multi-process run's parts
        merge_parts(output, clips)
    return 1 if failed else 0


def _meet(failed: int, rank: int, output: Path, clips: list[Clip]) -> int:
    """
    The processes meet once their shares are done (gloo, also beside GPUs: only a barrier): the first merges the
    parts and reports every share's failures in its exit status. Returns this process's count of failures.
    """
    import datetime

    import torch
    import torch.distributed as dist

    # A long timeout: a process whose share was quicker waits for the slowest at the barrier.
    dist.init_process_group("gloo", timeout=datetime.timedelta(hours=48))
    total = torch.tensor([failed])
    dist.all_reduce(total)
    if rank == 0:
        merge_parts(output, clips)
    dist.barrier()
    dist.destroy_process_group()
    return int(total) if rank == 0 else 0


__all__ = ["Clip", "clips_of", "done_files", "label_clips", "main", "merge_parts"]


if __name__ == "__main__":
    sys.exit(main())
