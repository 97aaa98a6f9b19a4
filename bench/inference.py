# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""Inference speed and memory of EmoSLLM's `audio-classification` pipeline on CPU, on RAVDESS clips, per lever.

For N clips (a fixed choice from the test actors 17-20) and each inference variant (`--variants`, see VARIANTS:
the plain path, the prompt cache alone, LoRA merged alone, the bf16 encoder alone, the bf16 LLM alone, all = the
pipeline's default, all but the bf16 LLM, automatic transcripts, opt-in int8),
the script runs, each in a FRESH Python process (so that its memory figures hold only that run):

    classifier = pipeline("audio-classification", model=FOLDER, trust_remote_code=True)
    classifier(path)  for each clip, one per call      # "one clip per call": median per-clip real-time factor
    classifier(paths, batch_size=min(N, 8))            # "batch": the call's seconds / the clips' audio seconds

after one warm-up call, `--repeats` timed passes each, with `--threads` torch intra-op threads (default 1). It reports
the real-time factor (processing seconds / audio seconds; file decoding, feature extraction, prompt building, any
automatic transcription, the model and post-processing: everything the user waits for), the speed-up over the
plain variant in the same run, the largest difference of any class probability from the plain variant and the
top-1 agreement with it, the model load time (`pipeline(...)`), the peak resident memory of the process
(`ru_maxrss`, load and warm-up included), and a split of the time into the Whisper encoder, the mapper, the LLM
and everything outside the model (forward hooks).

Without `--model` it builds an EmoSLLM with train.py's default recipe (probe mapper on every Whisper tiny.en
layer, SmolLM2-135M-Instruct with LoRA, the 8 RAVDESS labels, no transcripts) from the offline default backbones,
untrained (seeded random), and saves it once under `--work_dir`: an untrained model costs exactly the same compute as
a trained one; only its answers are meaningless. Pass `--model` a train.py output folder for a trained model.

    python bench/inference.py --model outputs/emosllm-ravdess --out /tmp/infbench

Writes `--out/results.json` (or `--out` itself if it ends in `.json`) and prints Markdown tables. The parent process
never imports torch, so the per-N processes start small.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

__all__ = ["BF16_LLM_VARIANTS", "DEFAULT_AUDIO_ENCODER", "DEFAULT_LLM", "MIB", "TEST_ACTORS", "VARIANTS", "StageTimer",
           "apply_variant", "build_default_model", "busy_processes", "choose_clips", "main", "markdown", "maxrss_mib",
           "measure", "proc_status_kib", "reset_peak_rss"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_AUDIO_ENCODER = "openai/whisper-tiny.en"
DEFAULT_LLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
TEST_ACTORS = ("17", "18", "19", "20")
MIB = 1024 * 1024


# ----------------------------------------------------------------------------------------------------------------------
# Small helpers (no torch)
# ----------------------------------------------------------------------------------------------------------------------
def proc_status_kib(field: str) -> int:
    """A `kB` field of /proc/self/status (VmRSS: current resident memory, VmHWM: its peak)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def maxrss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM, and so ru_maxrss) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def busy_processes(limit: int = 6) -> list[str]:
    """Other processes using the CPU right now (a snapshot for the record, commands shortened)."""
    try:
        listing = subprocess.run(["ps", "-eo", "pid,pcpu,rss,args", "--sort=-pcpu"], capture_output=True, text=True,
                                 check=True).stdout.splitlines()[1:]
    except (OSError, subprocess.CalledProcessError):
        return []
    own = {os.getpid()}
    rows = []
    for line in listing:
        pid, pcpu, rss, args = line.split(None, 3)
        if int(pid) in own or float(pcpu) < 10 or args.startswith("ps "):
            continue
        rows.append(f"{float(pcpu):.0f}% CPU, {int(rss) / 1024:.0f} MiB: {args[:110]}")
    return rows[:limit]


def choose_clips(data_dir: Path, count: int) -> list[dict]:
    """`count` RAVDESS clips of actors 17-20, evenly spaced over their sorted paths (deterministic; covers every
    actor, emotion, both sentences). Read from manifest.csv when there is one, else from the file names."""
    manifest = data_dir / "manifest.csv"
    if manifest.is_file():
        with open(manifest, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r["path"].split("-")[-1].split(".")[0] in TEST_ACTORS]
        clips = [{"path": str(data_dir / r["path"]), "label": r.get("label"), "speaker": r.get("speaker")} for r in rows]
    else:
        clips = [{"path": str(p), "label": None, "speaker": p.parent.name}
                 for actor in TEST_ACTORS for p in (data_dir / f"Actor_{actor}").iterdir()
                 if p.suffix.lower() in (".wav", ".flac")]
    clips.sort(key=lambda c: c["path"])
    if len(clips) < count:
        raise SystemExit(f"{data_dir}: found {len(clips)} clips of actors {'-'.join(TEST_ACTORS)}, need {count}.")
    return [clips[(i * len(clips)) // count] for i in range(count)]


# ----------------------------------------------------------------------------------------------------------------------
# Building the default model (its own process: the parent stays free of torch)
# ----------------------------------------------------------------------------------------------------------------------
def build_default_model(folder: Path, labels: list[str], seed: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    from backbones_emosllm import resolve_pretrained
    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
    from processing_emosllm import EmoSLLMProcessor

    torch.manual_seed(seed)
    start = time.perf_counter()
    audio_encoder, llm = resolve_pretrained(DEFAULT_AUDIO_ENCODER), resolve_pretrained(DEFAULT_LLM)
    processor, config = EmoSLLMProcessor.from_backbones(
        audio_encoder, llm, labels=labels, mapper_config={"mapper_type": "probe"}, encoder_layer_combination="concatenate",
        use_transcript="none",
    )
    model = EmoSLLMForSpeechEmotionRecognition.from_backbones(config, audio_encoder, llm)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    trainable, total = model.trainable_parameters()
    info = {"audio_encoder": DEFAULT_AUDIO_ENCODER, "audio_encoder_folder": audio_encoder, "llm": DEFAULT_LLM,
            "llm_folder": llm, "labels": labels, "seed": seed, "trainable_parameters": trainable,
            "total_parameters": total, "build_seconds": round(time.perf_counter() - start, 1),
            "note": "untrained mapper and LoRA (seeded random init): the same compute as a trained model"}
    (folder / "bench_model_info.json").write_text(json.dumps(info, indent=2))
    return info


# ----------------------------------------------------------------------------------------------------------------------
# One measurement (runs in a fresh process per N)
# ----------------------------------------------------------------------------------------------------------------------
class StageTimer:
    """Forward pre/post hooks that add up the wall time spent inside a module."""

    def __init__(self, module):
        self.seconds, self._start = 0.0, None
        module.register_forward_pre_hook(self._enter)
        module.register_forward_hook(self._leave)

    def _enter(self, *_):
        self._start = time.perf_counter()

    def _leave(self, *_):
        self.seconds += time.perf_counter() - self._start


# The inference levers, each on its own and together ("fast" is what the pipeline does by default).
VARIANTS = {
    "plain_with_asr": "plain, with an automatic transcript of every clip (use_transcript='auto', Whisper tiny.en): "
                      "what a model of the earlier recipe did on RAVDESS",
    "plain": "no prompt cache, LoRA not merged, the encoder in float32 (the path before these levers)",
    "prompt_cache": "the prompt's constant head as a key/value cache kept between calls",
    "merged_lora": "LoRA merged into the LLM's weights",
    "bf16_encoder": "the Whisper encoder in bf16 autocast (where the CPU runs bf16 natively: avx512_bf16 / amx_bf16)",
    "bf16_llm": "the LLM's pretrained weights in bf16, mapped from its bf16 checkpoint (where bf16 is native)",
    "fast": "all four (the pipeline's default; the bf16 encoder and LLM only where bf16 is native)",
    "fast_float32_llm": "prompt cache + merged LoRA + bf16 encoder, the LLM in float32 (the default before the bf16 "
                        "LLM)",
    "fast_float32_encoder": "prompt cache + merged LoRA, the encoder and the LLM in float32 (the default on a CPU "
                            "without native bf16)",
    "int8_llm": "prompt cache + merged LoRA + bf16 encoder + dynamic int8 quantization of the float32 LLM body's "
                "linear layers (torch.ao quantize_dynamic)",
    "fast_with_asr": "fast, with an automatic transcript of every clip (use_transcript='auto', Whisper tiny.en)",
}


# The variants whose LLM loads as the pipeline loads it by default; the others ask for float32.
BF16_LLM_VARIANTS = ("bf16_llm", "fast", "fast_with_asr")


def apply_variant(classifier, variant: str):
    """Sets the pipeline's loaded model to `variant` (see VARIANTS); returns the model to run."""
    import torch

    model = classifier.model
    if variant.endswith("_with_asr"):
        classifier.processor.use_transcript = "auto"

    model.prompt_head.enabled = variant not in ("plain", "plain_with_asr", "merged_lora", "bf16_encoder", "bf16_llm")
    model.audio_encoder.bf16_inference = variant in ("bf16_encoder", "fast", "fast_with_asr", "int8_llm",
                                                     "fast_float32_llm")
    if variant in ("plain", "plain_with_asr", "prompt_cache", "bf16_encoder", "bf16_llm"):
        model.unmerge_lora()
    else:
        model.merge_lora()
    if variant == "int8_llm":
        # The LLM's body only: its language-model head (tied to the embeddings) gives the class scores.
        model.language_model.model = torch.ao.quantization.quantize_dynamic(
            model.language_model.model, {torch.nn.Linear}, dtype=torch.qint8
        )
    model.clear_prompt_cache()
    return model


def measure(model_folder: str, paths: list[str], batch_size: int, repeats: int, threads: int,
            variant: str = "fast", one_at_a_time: bool = False) -> dict:
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    import soundfile
    import torch
    import transformers
    from transformers import pipeline

    import_seconds = time.perf_counter() - t0
    default_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    rss_after_import = proc_status_kib("VmRSS") / 1024

    start = time.perf_counter()
    # The LLM loads in bf16 where its checkpoint is bf16 and bf16 is native (the pipeline's default), else float32.
    llm_float32 = {} if variant in BF16_LLM_VARIANTS else {"model_kwargs": {"dtype": torch.float32}}
    classifier = pipeline("audio-classification", model=model_folder, trust_remote_code=True, device="cpu",
                          **llm_float32)
    load_seconds = time.perf_counter() - start
    model = apply_variant(classifier, variant)
    # from_pretrained memory-maps the safetensors file: most weights become resident only when first used, so the
    # "loaded model" baseline is taken after the warm-up call.
    rss_after_load = proc_status_kib("VmRSS") / 1024

    timers = {
        "model": StageTimer(model),
        "audio_encoder": StageTimer(model.audio_encoder),
        "mapper": StageTimer(model.mapper),
        "llm_body": StageTimer(model.language_model.model),
    }
    durations = [soundfile.info(p).frames / soundfile.info(p).samplerate for p in paths]
    audio_seconds = sum(durations)
    first = soundfile.info(paths[0])
    prompt = classifier.processor.build_prompt(round(first.frames * 16000 / first.samplerate))
    prompt_tokens = len(classifier.processor.tokenizer(prompt, add_special_tokens=False).input_ids)

    def run(inputs) -> tuple[float, dict, list]:
        for timer in timers.values():
            timer.seconds = 0.0
        start = time.perf_counter()
        with torch.inference_mode():
            outputs = classifier(inputs, batch_size=batch_size, top_k=None)
        total = time.perf_counter() - start
        return total, {name: timer.seconds for name, timer in timers.items()}, outputs

    warmup_seconds, _, _ = run(paths[0] if one_at_a_time else paths)
    rss_loaded = proc_status_kib("VmRSS") / 1024
    peak_through_warmup = maxrss_mib()
    peak_reset = reset_peak_rss()
    times, splits, per_clip_rtf = [], [], []
    probabilities = None
    for _ in range(repeats):
        if one_at_a_time:  # each clip its own call, as a user classifying files one by one
            seconds, split, outputs = 0.0, dict.fromkeys(timers, 0.0), []
            for path, duration in zip(paths, durations):
                clip_seconds, clip_split, clip_output = run(path)
                seconds += clip_seconds
                split = {k: split[k] + clip_split[k] for k in split}
                outputs.append(clip_output)
                per_clip_rtf.append(clip_seconds / duration)
        else:
            seconds, split, outputs = run(paths)
        assert len(outputs) == len(paths)
        times.append(seconds)
        splits.append(split)
        labels = classifier.model.config.labels
        probabilities = [[next(o["score"] for o in clip if o["label"] == label) for label in labels] for clip in outputs]
    median = statistics.median(times)
    # The split of the median timed call (upper median for an even count): its parts add up to its total.
    middle = sorted(range(len(times)), key=times.__getitem__)[len(times) // 2]
    split, split_total = splits[middle], times[middle]
    parts = {
        "outside_model": split_total - split["model"],
        "whisper_encoder": split["audio_encoder"],
        "mapper": split["mapper"],
        "llm": split["model"] - split["audio_encoder"] - split["mapper"],
    }
    peak_inference = maxrss_mib() if peak_reset else None
    peak_total = max(maxrss_mib(), peak_through_warmup)
    return {
        "variant": variant,
        "mode": "one clip per call" if one_at_a_time else f"one call, batch_size {batch_size}",
        "clips": len(paths),
        "batch_size": 1 if one_at_a_time else batch_size,
        "paths": [os.path.relpath(p, Path(paths[0]).parents[1]) for p in paths],
        "audio_seconds": audio_seconds,
        "repeats": repeats,
        "warmup_seconds": warmup_seconds,
        "processing_seconds_all": times,
        "processing_seconds": median,
        "real_time_factor": (statistics.median(per_clip_rtf) if one_at_a_time else median / audio_seconds),
        "real_time_factor_note": ("median over clips of (seconds / audio seconds)" if one_at_a_time
                                  else "median call's seconds / audio seconds"),
        "clips_per_second": len(paths) / median,
        "seconds_per_clip": median / len(paths),
        "split_seconds": parts,
        "split_fraction": {k: v / split_total for k, v in parts.items()},
        "probabilities": probabilities,
        "labels": classifier.model.config.labels,
        "use_transcript": classifier.processor.use_transcript,
        "import_seconds": import_seconds,
        "load_seconds": load_seconds,
        "rss_after_import_mib": rss_after_import,
        "rss_after_load_mib": rss_after_load,
        "rss_loaded_model_mib": rss_loaded,
        "peak_rss_through_warmup_mib": peak_through_warmup,
        "peak_rss_mib": peak_total,
        "peak_rss_inference_mib": peak_inference,
        "inference_delta_over_loaded_mib": None if peak_inference is None else max(0.0, peak_inference - rss_loaded),
        "torch_threads": torch.get_num_threads(),
        "torch_default_threads": default_threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": str(model.dtype),
        "prompt_tokens": prompt_tokens,
        "audio_embeddings_per_clip": model.config.num_audio_embeddings(first.frames),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------
def markdown(results: list[dict]) -> str:
    plain = {(r["mode"], r["torch_threads"]): r for r in results if r["variant"] == "plain"}
    lines = [
        "| variant | mode | torch threads | clips | audio (s) | processing (s), median [min-max] | real-time factor | "
        "speed-up over plain | max prob. difference vs plain | top-1 agreement vs plain | peak RSS (MiB) | "
        "model load (s) |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        base = plain.get((r["mode"], r["torch_threads"]))
        speed_up = diff = agree = "n/a"
        if base is not None:
            speed_up = f"{base['processing_seconds'] / r['processing_seconds']:.2f}x"
            a, b = np.array(base["probabilities"]), np.array(r["probabilities"])
            diff = f"{np.abs(a - b).max():.1e}"
            agree = f"{(a.argmax(1) == b.argmax(1)).mean():.3f}"
        lines.append(
            f"| {r['variant']} | {r['mode']} | {r['torch_threads']} | {r['clips']} | {r['audio_seconds']:.1f} | "
            f"{r['processing_seconds']:.2f} [{min(r['processing_seconds_all']):.2f}-"
            f"{max(r['processing_seconds_all']):.2f}] | {r['real_time_factor']:.4f} | {speed_up} | {diff} | {agree} | "
            f"{r['peak_rss_mib']:.0f} | {r['load_seconds']:.2f} |"
        )
    lines += [
        "",
        "| variant | mode | outside the model (decode, features, prompt, post-processing) | Whisper encoder | "
        "mapper | LLM (SmolLM2 + label-word scores) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        s, f = r["split_seconds"], r["split_fraction"]
        cells = [f"{s[k]:.2f} s ({100 * f[k]:.0f}%)" for k in ("outside_model", "whisper_encoder", "mapper", "llm")]
        lines.append(f"| {r['variant']} | {r['mode']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="../shared/data/ravdess", help="a RAVDESS copy (Actor_XX folders)")
    parser.add_argument("--model", default=None,
                        help="a saved EmoSLLM folder; default: build the default untrained EmoSLLM in --work_dir")
    parser.add_argument("--work_dir", default="/tmp/emosllm-bench-inference",
                        help="cache folder for the default model (built once)")
    parser.add_argument("--out", default="/tmp/infbench", help="output folder (results.json), or a .json file")
    parser.add_argument("--clips", default="8", help="comma-separated clip counts")
    parser.add_argument("--one_clip_per_call", type=lambda v: v.lower() in ("1", "true", "yes"), default=True,
                        help="also classify the clips one per call (the median per-clip real-time factor)")
    parser.add_argument("--variants",
                        default="plain,prompt_cache,merged_lora,bf16_encoder,bf16_llm,fast,fast_float32_llm,"
                                "fast_float32_encoder",
                        help="comma-separated inference variants: " + "; ".join(f"{k}: {v}" for k, v in VARIANTS.items()))
    parser.add_argument("--max_batch_size", type=int, default=8, help="batch_size = min(clips, this)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up call")
    parser.add_argument("--threads", default="1",
                        help="comma-separated torch intra-op thread counts to measure; 0 = torch's default (the "
                             "pipeline's: one per core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--_build", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._build:  # child: build the default model
        print(json.dumps(build_default_model(Path(args._build), json.loads(os.environ["BENCH_LABELS"]), args.seed)))
        return 0
    if args._measure:  # child: one N
        job = json.loads(Path(args._measure).read_text())
        result = measure(job["model"], job["paths"], job["batch_size"], job["repeats"], job["threads"],
                         job["variant"], job["single"])
        Path(job["result"]).write_text(json.dumps(result, indent=2))
        return 0

    started = datetime.now(timezone.utc)
    load_before = os.getloadavg()
    busy_before = busy_processes()
    out = Path(args.out)
    out_dir = out.parent if out.suffix == ".json" else out
    out_file = out if out.suffix == ".json" else out / "results.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(args.data_dir).resolve()
    counts = [int(c) for c in args.clips.split(",")]
    choose_clips(data_dir, max(counts))  # enough clips?
    script = [sys.executable, str(Path(__file__).resolve())]

    model_info = None
    if args.model is None:
        folder = Path(args.work_dir) / "emosllm-default-untrained"
        info_file = folder / "bench_model_info.json"
        if not info_file.is_file():
            with open(data_dir / "manifest.csv", newline="") as handle:
                labels = sorted({r["label"] for r in csv.DictReader(handle)})
            print(f"building the default EmoSLLM (untrained mapper) in {folder} ...", flush=True)
            env = {**os.environ, "BENCH_LABELS": json.dumps(labels)}
            subprocess.run(script + ["--_build", str(folder), "--seed", str(args.seed)], check=True, env=env,
                           stdout=subprocess.DEVNULL)
        model_info = json.loads(info_file.read_text())
        model = str(folder)
    else:
        model = args.model

    results = []
    thread_counts = [int(t) for t in args.threads.split(",")]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}.")
    for threads in thread_counts:
        for count in counts:
            paths = [c["path"] for c in choose_clips(data_dir, count)]
            for variant in variants:
                one_at_a_time = args.one_clip_per_call and count > 1
                for single in ([True, False] if one_at_a_time else [False]):
                    name = f"threads_{threads or 'default'}_clips_{count}_{variant}_{'single' if single else 'batch'}"
                    job = {"model": model, "paths": paths, "batch_size": min(count, args.max_batch_size),
                           "repeats": args.repeats, "threads": threads, "variant": variant, "single": single,
                           "result": str(out_dir / f"{name}.json")}
                    job_file = out_dir / f"job_{name}.json"
                    job_file.write_text(json.dumps(job))
                    mode = "one clip per call" if single else f"batch_size {job['batch_size']}"
                    print(f"{count} clips, {variant}, {mode}, torch threads {threads or 'default'}: fresh process, "
                          f"1 warm-up + {args.repeats} timed passes", flush=True)
                    subprocess.run(script + ["--_measure", str(job_file)], check=True)
                    results.append(json.loads(Path(job["result"]).read_text()))
                    r = results[-1]
                    print(f"  {r['processing_seconds']:.2f} s for {r['audio_seconds']:.1f} s of audio (RTF "
                          f"{r['real_time_factor']:.4f}), peak RSS {r['peak_rss_mib']:.0f} MiB, load "
                          f"{r['load_seconds']:.2f} s, load average {r['loadavg_after'][0]:.1f}", flush=True)

    busy_after = busy_processes()
    report = {
        "command": "python " + " ".join([os.path.relpath(__file__, os.getcwd())] + (argv or sys.argv[1:])),
        "date_utc": started.isoformat(timespec="seconds"),
        "wall_seconds": round((datetime.now(timezone.utc) - started).total_seconds(), 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version(),
                    "note": "other processes used the CPU while measuring: see busy_processes"
                    if busy_before or busy_after else "no other process used the CPU before or after measuring"},
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "busy_processes_before": busy_before,
        "busy_processes_after": busy_after,
        "model": model,
        "model_info": model_info,
        "data_dir": str(data_dir),
        "pipeline_call": "pipeline('audio-classification', model=FOLDER, trust_remote_code=True, device='cpu')"
                         "(paths, batch_size=min(N, %d)); file paths in, so FLAC decoding is timed" % args.max_batch_size,
        "memory_note": "peak RSS = ru_maxrss of the fresh process for N (model load included); inference peak over "
                       "loaded model = ru_maxrss after the calls, the peak having been reset (clear_refs) right after "
                       "loading, minus the RSS of the loaded model",
        "results": results,
    }
    out_file.write_text(json.dumps(report, indent=2))
    print()
    print(markdown(results))
    print()
    print(f"load average (1, 5, 15 min) before {tuple(round(x, 2) for x in load_before)}, after "
          f"{tuple(round(x, 2) for x in report['loadavg_after'])} on {os.cpu_count()} CPUs; torch "
          f"{results[0]['torch']}, transformers {results[0]['transformers']}; use_transcript "
          f"{results[0]['use_transcript']!r}")
    print("other processes using the CPU:", *busy_before, sep="\n  ")
    if model_info:
        print(f"model: default backbones, {model_info['note']}")
    print(f"wrote {out_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
