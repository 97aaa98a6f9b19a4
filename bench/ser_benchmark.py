# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""One speech-emotion benchmark: baselines, EmoSLLM variants and ablations on the same speaker-independent split.

    python bench/ser_benchmark.py --mode quick --out /tmp/serbench     # every row, reduced; sized for < 20 min
    python bench/ser_benchmark.py --mode full --out /tmp/serbench-full  # all clips, 5 epochs, seeds 0,1,2; hours
    python bench/ser_benchmark.py --mode quick --systems mfcc_lr,emosllm_qpmapper --out /tmp/serbench

Data: ``--data_dir`` (default ``../shared/data/ravdess``) through ``training.data.load_corpus``; validation speakers
``--eval_speakers`` (13-16), test speakers ``--test_speakers`` (17-20), every other speaker (RAVDESS: 01-12) trains.
Every system selects on validation only (its C, its epoch) and is scored once on test. ``--eval_speakers none`` is
the frozen-feature bar's protocol: every speaker but the test ones trains (RAVDESS: 01-16), C is chosen by 4-fold
cross-validation over the training speakers (scikit-learn's GroupKFold) and the trained systems keep their last
epoch.

Systems (``--systems``, default all):

* ``mfcc_lr``: MFCC statistics (``ser_benchmark_systems.mfcc_statistics``, librosa's default MFCC recipe with 40
  coefficients, computed with ``transformers.audio_utils`` as librosa is not a dependency), mean+std, ``StandardScaler`` + ``LogisticRegression``. C by validation UA after
  fitting on train; then refit on train + validation and scored on test.
  Deterministic, so it runs once (first seed).
* ``whisper_layers_lr``: the frozen Whisper encoder's every layer, each clip's mean+std over its frames side by side
  (the features EmoSLLM's default probe reads), ``StandardScaler`` + ``LogisticRegression``, C chosen as for
  ``mfcc_lr``: the linear read-out that EmoSLLM's answer has to beat.
* ``whisper_linear_frozen`` / ``whisper_linear_finetuned``: transformers' ``WhisperForAudioClassification`` (the
  model ``run_audio_classification.py`` trains: ``projector`` Linear, mean pooling, ``classifier``) on the same
  Whisper encoder, frozen or fine-tuned. The encoder runs on each clip's own length with
  ``EmoSLLMAudioEncoder.layer_states`` (HF's ``WhisperEncoder.forward`` insists on 30 s inputs, ~12x slower here)
  and the mean is taken over valid frames only. AdamW, lr 1e-3 for the head and 3e-5 for the encoder, linear decay
  with 10% warm-up, batch 8; the epoch with the best validation UA is kept.
* ``emosllm_default``: ``training.recipe.train_one_split`` with train.py's own defaults and no other flag (the probe
  mapper on every encoder layer). Besides the scores, its row measures the LLM's free answer
  (``generate(constrain_to_labels=False)``) against the class its scores rank first, the test UA with no transcript
  in the prompt, and the saved folder's test UA through the pipeline (train.py's own check).
* ``emosllm_qpmapper`` / ``emosllm_qformer`` / ``emosllm_mlp``: train.py's defaults with ``--mapper_type`` and the
  learned layer average (the paper's design); ``emosllm_statistics``: the statistics-pooling mapper with its own
  recipe (``--num_queries 4 --mapper_learning_rate 1e-2 --head_learning_rate 1e-3``).
* ``emosllm_transcript_only``: ablation without audio (the prompt keeps transcript and task, no audio
  placeholders); ``emosllm_no_lora``: ``--lora_rank 0`` (mapper and head only); ``emosllm_full_finetune``:
  ``--language_model_training full --learning_rate 2e-5``.

Reported per system: test UA, WA, macro F1 (``compute_ser_metrics``); trainable and total parameters; training
wall time (the fitting loop with its validation passes; precomputed features such as MFCCs or frozen-encoder states
are not included, their time is in the JSON); inference real-time factor on the test clips (processing seconds /
audio seconds, batches of 8, from decoded 16 kHz arrays: features, prompt and model, one untimed warm-up batch);
peak memory (``ru_maxrss`` of the process that ran that system and seed, everything included). Each (system, seed)
runs in a fresh process of this script (``--run_one SYSTEM --seed S --result FILE``), with ``--threads`` torch and
BLAS threads. Rows with several seeds show mean ± sample std; results.json holds every seed's values.

Modes: ``quick`` keeps a fixed stratified 10% of the clips of every (speaker, emotion) group, at least one, in
train, validation and test (RAVDESS: 96 / 32 / 32 clips), trains 1 epoch and runs seed 0; the table header and the
JSON say so. ``full`` uses every clip, train.py's default epochs (5) and seeds 0, 1, 2. ``--epochs``,
``--subset_fraction`` and ``--seeds`` override the mode. Epochs apply to every trained system (EmoSLLM and the
Whisper heads).

Writes ``--out/results.json`` and ``--out/results.md`` and prints the table. ``--out/runs/SYSTEM/seedS/`` keeps each
run's ``result.json``, log and test report (the EmoSLLM weights and checkpoints are deleted after measuring, as 18
full-mode models would take ~11 GB). A finished (system, seed) whose result was made with the same settings is
reused when the command is run again (so a killed full run continues); delete ``--out/runs`` to start over.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import inspect
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import datasets  # noqa: E402

import configuration_emosllm  # noqa: E402
import training.arguments  # noqa: E402
from lora_emosllm import DEFAULT_LORA  # noqa: E402
from probe_fitting_emosllm import PROBE_C_GRID  # noqa: E402
from processing_emosllm import EmoSLLMProcessor  # noqa: E402
from training.splits import speaker_ids  # noqa: E402

from ser_benchmark_systems import (  # noqa: E402
    BATCH_SIZE, CALIBRATION_KEYS, CROSS_VALIDATION_FOLDS, EMOSLLM_FLAGS, ENCODER_LEARNING_RATE, HEAD_LEARNING_RATE,
    MFCC_RECIPE, load_splits, run_one,
)

__all__ = ["ANSWER_KEYS", "DETERMINISTIC_SYSTEMS", "MODES", "RECIPE_TRAINING_ARGUMENTS", "SUMMARY_KEYS", "SYSTEMS",
           "child_command", "describe_splits", "format_count", "format_mean_std", "machine_info", "main",
           "markdown_table", "parse_args", "recipe", "reductions_of", "resolve_settings", "run_all", "summarize"]


SYSTEMS = {
    "mfcc_lr": "MFCC (librosa recipe, transformers.audio_utils), mean+std, StandardScaler + LogisticRegression "
               "(C by validation UA, refit on train+validation)",
    "whisper_layers_lr": "Whisper encoder frozen, every layer's mean+std side by side, StandardScaler + "
                         "LogisticRegression (C as for mfcc_lr)",
    "whisper_linear_frozen": "Whisper encoder frozen + WhisperForAudioClassification head (projector, masked mean, "
                             "classifier)",
    "whisper_linear_finetuned": "Whisper encoder fine-tuned + WhisperForAudioClassification head (projector, "
                                "masked mean, classifier)",
    "emosllm_default": "EmoSLLM, train.py's default recipe (probe mapper on every encoder layer, LoRA)",
    "emosllm_qpmapper": "EmoSLLM, the paper's Query Pooling Mapper, LoRA",
    "emosllm_qformer": "EmoSLLM, window Q-Former, LoRA",
    "emosllm_mlp": "EmoSLLM, frame-stacking MLP, LoRA",
    "emosllm_statistics": "EmoSLLM, statistics pooling (mean+std to 4 embeddings, mapper at lr 1e-2), LoRA",
    "emosllm_transcript_only": "EmoSLLM ablation: no audio (prompt with transcript and task only), LoRA",
    "emosllm_no_lora": "EmoSLLM ablation: Query Pooling Mapper, no LoRA (mapper and head only)",
    "emosllm_full_finetune": "EmoSLLM, Query Pooling Mapper, every LLM weight fine-tuned instead of LoRA (lr 2e-5)",
}


DETERMINISTIC_SYSTEMS = ("mfcc_lr", "whisper_layers_lr")  # the same result for every seed: run once


MODES = {
    "quick": {"subset_fraction": 0.1, "epochs": 1, "seeds": "0"},
    "full": {"subset_fraction": 1.0, "epochs": None, "seeds": "0,1,2"},  # epochs None: train.py's default
}


SUMMARY_KEYS = ("ua", "wa", "macro_f1", "weighted_f1", "train_seconds", "real_time_factor", "peak_rss_mib",
                "wall_seconds")
# Measured on the emosllm_default row only (`answer_checks`, and train.py's re-scoring of the saved folder).
ANSWER_KEYS = ("generate_agreement", "ua_with_transcript", "ua_no_transcript", "delivered_ua")


def describe_splits(splits: datasets.DatasetDict) -> dict:
    """Clip count, speakers and clips per label of every split."""
    return {
        name: {"clips": len(split), "speakers": sorted(set(speaker_ids(split))),
               "labels": {label: split["label"].count(label) for label in sorted(set(split["label"]))}}
        for name, split in splits.items()
    }


def summarize(runs: list[dict]) -> dict:
    """
    One system's row: for each of `SUMMARY_KEYS` the mean, the sample standard deviation (None for one run) and the
    per-seed values over the runs that finished; parameter counts of the first run; failed seeds and seeds not run
    yet (`--report_only`) listed apart.
    """
    done = [run for run in runs if "error" not in run and not run.get("missing")]
    row = {"seeds": [run["seed"] for run in done], "failed_seeds": [run["seed"] for run in runs if "error" in run],
           "missing_seeds": [run["seed"] for run in runs if run.get("missing")]}
    for key in SUMMARY_KEYS:
        values = [float(run[key]) for run in done]
        row[key] = {
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None,
            "values": values,
        }
    for key in ANSWER_KEYS + CALIBRATION_KEYS:
        values = [float(run[key]) for run in done if run.get(key) is not None]
        if values:
            row[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
                        "values": values}
    for key in ("trainable_parameters", "total_parameters"):
        row[key] = done[0][key] if done else None
    return row


def format_mean_std(stat: dict, digits: int) -> str:
    """`mean ± std` (just the mean for one run, `-` for none) with `digits` decimals."""
    if stat["mean"] is None:
        return "-"
    if stat["std"] is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def format_count(count: int | None) -> str:
    """Parameter count with an SI suffix: 1234 -> `1.2k`, 17_400_000 -> `17.4M`."""
    if count is None:
        return "-"
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= size:
            return f"{count / size:.1f}{suffix}"
    return str(count)


def markdown_table(rows: dict[str, dict], reductions: list[str]) -> str:
    """The results table; its header line states the mode's reductions."""
    title = "Full benchmark" if not reductions else "REDUCED benchmark (" + "; ".join(reductions) + ")"
    lines = [
        f"**{title}**",
        "",
        "| system | seeds | UA | WA | macro F1 | trainable / total params | training time (s) | RTF (batch 8) "
        "| peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for system, row in rows.items():
        seeds = ",".join(map(str, row["seeds"])) or "-"
        if row["failed_seeds"]:
            seeds += " (failed: " + ",".join(map(str, row["failed_seeds"])) + ")"
        if row["missing_seeds"]:
            seeds += " (not run yet: " + ",".join(map(str, row["missing_seeds"])) + ")"
        lines.append(
            f"| {system} | {seeds} | {format_mean_std(row['ua'], 3)} | {format_mean_std(row['wa'], 3)} | "
            f"{format_mean_std(row['macro_f1'], 3)} | {format_count(row['trainable_parameters'])} / "
            f"{format_count(row['total_parameters'])} | {format_mean_std(row['train_seconds'], 0)} | "
            f"{format_mean_std(row['real_time_factor'], 3)} | {format_mean_std(row['peak_rss_mib'], 0)} |"
        )
    answered = {system: row for system, row in rows.items() if "generate_agreement" in row}
    if answered:
        lines += ["", "| system | free answer = top class | test UA, true transcripts | test UA, no transcript "
                  "| saved folder via pipeline, UA |", "|---|---|---|---|---|"]
        for system, row in answered.items():
            lines.append(f"| {system} | " + " | ".join(
                format_mean_std(row[key], 3) if key in row else "-" for key in ANSWER_KEYS) + " |")
    calibrated = {system: row for system, row in rows.items() if "nll" in row}
    if calibrated:
        lines += ["", "| system | mean top probability | answers above 0.99 | right among those | NLL | ECE |",
                  "|---|---|---|---|---|---|"]
        for system, row in calibrated.items():
            lines.append(f"| {system} | " + " | ".join(
                format_mean_std(row[key], 3) if key in row else "-" for key in CALIBRATION_KEYS) + " |")
    return "\n".join(lines)


def machine_info() -> dict:
    """CPU model and count, platform, Python and library versions."""
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
    versions = {}
    for package in ("torch", "transformers", "peft", "datasets", "scikit-learn", "numpy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions}


# TrainingArguments that shape an EmoSLLM run and that train.py gives its own defaults.
RECIPE_TRAINING_ARGUMENTS = (
    "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "num_train_epochs",
    "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "bf16", "metric_for_best_model",
)


def recipe() -> dict:
    """
    What a run's result depends on besides this invocation's flags: train.py's defaults (all of its model and data
    arguments, the training arguments above, and the defaults of the config, mappers, LoRA, processor and probe grid
    that its unset model flags take) and this script's own constants. It is part of the settings, so a
    finished run is reused only while none of these changed; train.py's default mapper width once went from 768
    to 256, and a resumed table must not mix the two.
    """

    model_args, data_args, training_args = training.arguments.parse_args(["--output_dir", "unused"])
    raw = {
        "train_py": {**dataclasses.asdict(model_args), **dataclasses.asdict(data_args),
                     **{name: getattr(training_args, name) for name in RECIPE_TRAINING_ARGUMENTS}},
        "model_defaults": {
            "config": configuration_emosllm.EmoSLLMConfig().to_dict(), "mappers": configuration_emosllm.MAPPER_SETTINGS,
            "lora": DEFAULT_LORA, "probe_c": PROBE_C_GRID,
            "processor": {name: parameter.default
                          for name, parameter in inspect.signature(EmoSLLMProcessor.__init__).parameters.items()
                          if parameter.default is not inspect.Parameter.empty},
        },
        "emosllm_flags": EMOSLLM_FLAGS, "mfcc_recipe": MFCC_RECIPE, "batch_size": BATCH_SIZE,
        "head_learning_rate": HEAD_LEARNING_RATE, "encoder_learning_rate": ENCODER_LEARNING_RATE,
    }
    return json.loads(json.dumps(raw, default=str))  # as a result.json stores it (enums as text), for comparison


def resolve_settings(args: argparse.Namespace) -> dict:
    """The settings every run of this invocation shares, with the mode's defaults filled in."""
    mode, run_recipe = MODES[args.mode], recipe()
    epochs = args.epochs if args.epochs is not None else mode["epochs"]
    if epochs is None:
        epochs = int(run_recipe["train_py"]["num_train_epochs"])
    return {
        "mode": args.mode, "data_dir": str(Path(args.data_dir).resolve()), "out": str(Path(args.out).resolve()),
        "eval_speakers": args.eval_speakers, "test_speakers": args.test_speakers,
        "audio_encoder": args.audio_encoder, "llm": args.llm, "epochs": epochs,
        "subset_fraction": args.subset_fraction if args.subset_fraction is not None else mode["subset_fraction"],
        "threads": args.threads, "recipe": run_recipe,
    }


def reductions_of(settings: dict, seeds: list[int]) -> list[str]:
    """What this invocation leaves out compared with the full benchmark, in words (empty for a full run)."""
    full_epochs = int(settings["recipe"]["train_py"]["num_train_epochs"])  # train.py's default
    reductions = []
    if settings["subset_fraction"] < 1:
        reductions.append(f"{settings['subset_fraction']:.0%} of the clips of every speaker-emotion group (at least "
                          "one) in train, validation and test")
    if settings["epochs"] < full_epochs:
        reductions.append(f"{settings['epochs']} epoch(s) instead of {full_epochs}")
    if len(seeds) < len(MODES["full"]["seeds"].split(",")):
        reductions.append(f"seed(s) {','.join(map(str, seeds))} only")
    return reductions


def child_command(system: str, seed: int, settings: dict, result: Path) -> list[str]:
    """This script in a fresh process for one (system, seed), with the shared settings spelled out."""
    command = [sys.executable, str(Path(__file__).resolve()), "--run_one", system, "--seed", str(seed),
               "--result", str(result)]
    for key in ("mode", "data_dir", "out", "eval_speakers", "test_speakers", "audio_encoder", "llm", "epochs",
                "subset_fraction", "threads"):
        command += [f"--{key}", str(settings[key])]
    return command


def run_all(systems: list[str], seeds: list[int], settings: dict, report_only: bool = False) -> dict[str, list[dict]]:
    """
    Every (system, seed) in its own process, one after the other; a finished one with the same settings is reused.
    With `report_only`, nothing runs: a (system, seed) not finished yet is marked `missing`.
    """
    out = Path(settings["out"])
    env = {**os.environ, "OMP_NUM_THREADS": str(settings["threads"])}
    runs: dict[str, list[dict]] = {}
    for system in systems:
        runs[system] = []
        for seed in seeds[:1] if system in DETERMINISTIC_SYSTEMS else seeds:
            run_dir = out / "runs" / system / f"seed{seed}"
            result_file = run_dir / "result.json"
            if result_file.is_file() and json.loads(result_file.read_text()).get("settings") == settings:
                print(f"{system} seed {seed}: reusing {result_file}", flush=True)
                runs[system].append(json.loads(result_file.read_text()))
                continue
            if report_only:
                runs[system].append({"system": system, "seed": seed, "missing": True})
                continue
            result_file.unlink(missing_ok=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            print(f"{system} seed {seed}: running (log: {run_dir / 'log.txt'})", flush=True)
            with open(run_dir / "log.txt", "w") as log:
                process = subprocess.run(child_command(system, seed, settings, result_file), stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
                                         check=False)
            if process.returncode != 0 or not result_file.is_file():
                tail = (run_dir / "log.txt").read_text()[-3000:]
                print(f"  FAILED (exit status {process.returncode}); end of the log:\n{tail}", flush=True)
                runs[system].append({"system": system, "seed": seed, "error": tail})
                continue
            result = json.loads(result_file.read_text())
            runs[system].append(result)
            print(f"  UA {result['ua']:.3f}, WA {result['wa']:.3f}, macro F1 {result['macro_f1']:.3f}, training "
                  f"{result['train_seconds']:.0f} s, RTF {result['real_time_factor']:.3f}, peak RSS "
                  f"{result['peak_rss_mib']:.0f} MiB, wall {result['wall_seconds']:.0f} s", flush=True)
    return runs


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="quick",
                        help="quick: 10%% of the clips, 1 epoch, seed 0; full: all clips, train.py's epochs, seeds "
                             "0,1,2 (default: %(default)s)")
    parser.add_argument("--out", required=True, help="folder for results.json, results.md and the runs")
    parser.add_argument("--data_dir", default="../shared/data/ravdess", help="corpus folder (default: %(default)s)")
    parser.add_argument("--eval_speakers", default="13-16", help="validation speakers (default: %(default)s)")
    parser.add_argument("--test_speakers", default="17-20", help="test speakers (default: %(default)s)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of: " + ", ".join(SYSTEMS))
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: the mode's)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every trained system (default: the mode's)")
    parser.add_argument("--subset_fraction", type=float, default=None,
                        help="share of every speaker-emotion group's clips kept in each split (default: the mode's)")
    parser.add_argument("--report_only", action="store_true",
                        help="train nothing: build the table from the runs already finished in --out (with the same "
                             "settings), listing the (system, seed) pairs not run yet")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads of each run (default: 1)")
    parser.add_argument("--audio_encoder", default=configuration_emosllm.DEFAULT_AUDIO_MODEL_ID,
                        help="Hub id or folder of every Whisper and EmoSLLM row's encoder (default: %(default)s)")
    parser.add_argument("--llm", default=configuration_emosllm.DEFAULT_TEXT_MODEL_ID,
                        help="Hub id or folder of the EmoSLLM rows' LLM (default: %(default)s)")
    parser.add_argument("--run_one", choices=list(SYSTEMS), default=None,
                        help="run one system in this process and write its result to --result (used by the parent)")
    parser.add_argument("--seed", type=int, default=0, help="with --run_one: the seed")
    parser.add_argument("--result", default=None, help="with --run_one: where to write the result JSON")
    args = parser.parse_args(argv)
    if args.run_one and not args.result:
        parser.error("--run_one needs --result")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = resolve_settings(args)
    if args.run_one:
        result_file = Path(args.result)
        result = run_one(args.run_one, args.seed, settings, result_file.parent)
        result_file.write_text(json.dumps(result, indent=2, default=str) + "\n")
        return 0

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown system(s) {unknown}; choose from {list(SYSTEMS)}")
    seeds = [int(s) for s in (args.seeds or MODES[args.mode]["seeds"]).split(",")]
    out = Path(settings["out"])
    out.mkdir(parents=True, exist_ok=True)
    started, load_before = datetime.now(timezone.utc), os.getloadavg()
    splits = load_splits(settings["data_dir"], settings["eval_speakers"], settings["test_speakers"],
                         settings["subset_fraction"])  # fails fast on a bad corpus or split, before any run
    reductions = reductions_of(settings, seeds)
    print(f"SER benchmark, mode {args.mode}: " + ("; ".join(reductions) or "no reductions") + "; splits "
          + ", ".join(f"{name} {len(split)} clips" for name, split in splits.items()), flush=True)

    runs = run_all(systems, seeds, settings, report_only=args.report_only)
    rows = {system: summarize(system_runs) for system, system_runs in runs.items()}
    missing = [f"{system} (seed {','.join(map(str, row['missing_seeds']))})" for system, row in rows.items()
               if row["missing_seeds"]]
    if missing:
        reductions.append("not run yet: " + ", ".join(missing))
    table = markdown_table(rows, reductions)
    command = shlex.join(["python", os.path.relpath(__file__), *(argv if argv is not None else sys.argv[1:])])
    report = {
        "command": command, "cwd": os.getcwd(), "date_utc": started.isoformat(timespec="seconds"),
        "wall_seconds": round((datetime.now(timezone.utc) - started).total_seconds(), 1),
        "machine": {**machine_info(), "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "settings": settings, "seeds": seeds, "reductions": reductions, "splits": describe_splits(splits),
        "systems": {system: SYSTEMS[system] for system in systems},
        "protocol": {
            "selection": ("validation speakers only (C for the regressions, the best epoch for the trained systems)"
                          if settings["eval_speakers"] not in (None, "", "none") else
                          f"no validation speakers: C by {CROSS_VALIDATION_FOLDS}-fold cross-validation over the "
                          "training speakers, the last epoch of the trained systems")
                         + "; test speakers scored once per run",
            "regressions": "mfcc_lr and whisper_layers_lr: fit on train to choose C, final fit on train + validation, "
                           "or on train when C came from cross-validation",
            "train_seconds": "wall time of the fit with its validation passes; precomputed features excluded "
                             "(their time is feature_seconds in each run)",
            "real_time_factor": f"processing s / audio s on the test clips, batches of {BATCH_SIZE}, from decoded "
                                "16 kHz arrays, one untimed warm-up batch",
            "peak_rss_mib": "ru_maxrss of the fresh process that ran the (system, seed), everything included",
            "aggregation": "mean ± sample standard deviation over seeds",
        },
        "rows": rows,
        "runs": runs,
        "table": table,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    machine = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    split_text = "; ".join(f"{name}: {info['clips']} clips, speakers {', '.join(info['speakers'])}"
                           for name, info in report["splits"].items())
    markdown = "\n".join([
        f"# SER benchmark ({args.mode})", "",
        f"- Command: `{command}` (in `{report['cwd']}`)",
        f"- Date: {report['date_utc']}; wall time {report['wall_seconds']:.0f} s",
        f"- Machine: {machine['cpu']}, {machine['cpu_count']} CPUs, {settings['threads']} torch thread(s) per run; "
        f"load average {tuple(round(x, 2) for x in load_before)} before, "
        f"{tuple(round(x, 2) for x in machine['load_average_after'])} after; {versions}",
        f"- Data: `{settings['data_dir']}`; {split_text}",
        f"- Backbones: `{settings['audio_encoder']}`, `{settings['llm']}`; epochs {settings['epochs']}; "
        f"seeds {','.join(map(str, seeds))}",
        "", table, "",
        *[f"- `{system}`: {description}" for system, description in report["systems"].items()],
        "", *[f"- {key}: {text}" for key, text in report["protocol"].items()], "",
    ])
    (out / "results.md").write_text(markdown)
    print()
    print(table)
    print(f"\nwrote {out / 'results.json'} and {out / 'results.md'}")
    return 1 if any(row["failed_seeds"] for row in rows.values()) else 0




if __name__ == "__main__":
    sys.exit(main())
