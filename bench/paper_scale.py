# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""The paper's model at the paper's shapes, measured per LLM layer and extrapolated to full depth (#38).

    python bench/paper_scale.py --threads 1 --depths 1,2,3 --repeats 3 --json paper_scale.json

Random weights in the paper's shapes (the backbones cannot be downloaded here): WavLM Large as the audio encoder
(hidden 1024, 24 layers, 16 heads, 4096 feed-forward, the large feature extractor: layer-normed convolutions, stable
layer norm), Llama-3.2-3B-Instruct as the LLM (hidden 3072, 24 heads, 8 key/value heads, 8192 feed-forward, vocabulary
128256, tied embeddings, llama3 RoPE) with its depth reduced to `--depths`, the paper's Query Pooling Mapper (32
queries, 2 layers, 8 heads, width 768) and the config's default LoRA (rank 8, alpha 16, all linear layers). SmolLM2's
bundled tokenizer stands in for Llama 3's. The backbones are saved as folders (the LLM in bf16, as Llama 3.2 is
stored on the Hub) and built through the public API, `EmoSLLMProcessor.from_backbones` +
`EmoSLLMForSpeechEmotionRecognition.from_backbones`, so a leaner build shows here without changes.

Each depth runs in a fresh process with `--threads` torch threads and measures:

* the build: seconds and peak RSS (`ru_maxrss`), RSS after it (the float32 model in memory);
* the frozen encoder's pass over the batch (no gradients, as train.py's encoder cache computes it), in float32
  (`--time_default_encoder_path`: also once in its default path, bf16 autocast on a CPU with native bf16);
* the bytes of the tensors autograd keeps for backward in a plain training forward (each storage once, weights left
  out): the activations, exactly, where a step's RSS peak is too noisy for a few MB per layer;
* a training step as train.py runs it (encoder states from the cache; forward, backward and AdamW on the trainable
  weights, next-token loss on the answer, the paper's objective) with and without gradient checkpointing
  (`model.activation_checkpointing_enable()`, what the Trainer's `--activation_checkpointing` calls): median seconds of
  `--repeats` steps after one warm-up step, and the peak RSS above the RSS before the step (sampled every
  millisecond by a thread; glibc's freed blocks are given back with `malloc_trim` before each step), i.e. the
  activations, gradients and temporaries of a step. The first step's loss and gradients of both variants are
  compared (same weights, same seed);
* an inference step from the encoder's states (eval mode, LoRA merged and the prompt-head cache on, as the pipeline
  runs); from audio it costs this plus the encoder's pass.

The model is built with the precision policy of a bf16 GPU (`from_backbones(..., dtype=torch.bfloat16)`): the frozen
encoder and LLM in bf16, the mapper and LoRA in float32 (the dtypes are recorded per case).

Then every measure is fitted linearly in the LLM's depth (slope per layer, intercept) and extrapolated to
`--full_depth` (28 for Llama-3.2-3B). The trainable share at full depth is counted exactly on a model built on the meta
device, not extrapolated. The per-GPU memory of the full model is computed from the exact parameter counts and the
measured activations; the assumptions are printed with the table. `--from_json FILE` prints the report of an earlier
run again.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["GIB", "LABELS", "LLAMA_3B", "PAGE", "QPMAPPER", "TINY_LLAMA", "TINY_QPMAPPER", "TINY_WAVLM", "TOKENIZER",
           "WAVLM_FEATURE_EXTRACTOR", "WAVLM_LARGE", "PeakRSS", "audio_batch", "fit", "full_depth_counts", "gib",
           "machine_note", "main", "markdown", "max_rss", "measure_case", "parse_args", "rss", "run_child",
           "save_backbone", "saved_activation_bytes", "shapes", "summarize", "trim"]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LABELS = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
TOKENIZER = "HuggingFaceTB/SmolLM2-135M-Instruct"  # bundled; stands in for Llama 3's tokenizer
GIB = 1024**3

# The paper's shapes. WavLM Large: microsoft/wavlm-large's config.json and preprocessor_config.json.
WAVLM_LARGE = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, feat_extract_norm="layer",
    do_stable_layer_norm=True, conv_bias=True, conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    conv_stride=(5, 2, 2, 2, 2, 2, 2), num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
    num_buckets=320, max_bucket_distance=800, layer_norm_eps=1e-5, hidden_act="gelu", feat_extract_activation="gelu",
    vocab_size=32,
)
WAVLM_FEATURE_EXTRACTOR = dict(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                               return_attention_mask=True)
# Llama-3.2-3B-Instruct's config.json (depth set per case).
LLAMA_3B = dict(
    hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
    head_dim=128, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5, hidden_act="silu",
    tie_word_embeddings=True, attention_bias=False, mlp_bias=False, bos_token_id=128000,
    eos_token_id=[128001, 128008, 128009], initializer_range=0.02,
    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "high_freq_factor": 4.0,
                     "low_freq_factor": 1.0, "original_max_position_embeddings": 8192},
)
QPMAPPER = dict(mapper_config={"mapper_type": "qpmapper", "num_queries": 32, "num_layers": 2, "num_heads": 8,
                               "hidden_size": 768})

# --tiny: the same code path at toy sizes (the test suite runs it).
TINY_WAVLM = dict(WAVLM_LARGE, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
TINY_LLAMA = dict(LLAMA_3B, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=16, vocab_size=49216, bos_token_id=1, eos_token_id=2)  # the stand-in tokenizer's ids fit
TINY_QPMAPPER = dict(mapper_config={**QPMAPPER["mapper_config"], "num_queries": 4, "num_heads": 2, "hidden_size": 32})


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per case (default: %(default)s)")
    parser.add_argument("--depths", default="1,2,3", help="LLM depths to measure (default: %(default)s)")
    parser.add_argument("--full_depth", type=int, default=None, help="depth to extrapolate to (default: 28, tiny 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant after a warm-up (default: 3)")
    parser.add_argument("--batch_size", type=int, default=2, help="clips per step (default: %(default)s)")
    parser.add_argument("--seconds", default="4,6", help="shortest,longest clip in seconds (default: %(default)s)")
    parser.add_argument("--gpu_gib", type=float, default=24.0, help="GPU memory to check the fit against (GiB)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: checks the script, measures nothing real")
    parser.add_argument("--workdir", default=None, help="where the random backbones are saved (default: a temp dir)")
    parser.add_argument("--json", default=None, help="write every measure and the extrapolation here")
    parser.add_argument("--time_default_encoder_path", action="store_true",
                        help="also time the encoder's default no-gradient path (bf16 autocast on a bf16 CPU) once")
    parser.add_argument("--from_json", default=None, help="only print the report of an earlier --json file")
    parser.add_argument("--_case", type=int, default=None, help=argparse.SUPPRESS)  # internal: one depth's process
    parser.add_argument("--_save", default=None, help=argparse.SUPPRESS)  # internal: save one random backbone
    args = parser.parse_args(argv)
    args.depth_list = [int(d) for d in args.depths.split(",")]
    args.clip_seconds = [float(s) for s in args.seconds.split(",")]
    if args.full_depth is None:
        args.full_depth = 4 if args.tiny else 28
    return args


def shapes(tiny: bool) -> tuple[dict, dict, dict]:
    return (TINY_WAVLM, TINY_LLAMA, TINY_QPMAPPER) if tiny else (WAVLM_LARGE, LLAMA_3B, QPMAPPER)


# ----------------------------------------------------------------------------------------------------- memory helpers
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """Resident set size of this process, bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def trim() -> None:
    """Collects garbage and gives glibc's freed blocks back to the system, so RSS deltas show live memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def max_rss() -> int:
    """Peak RSS of this process so far, bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """The highest RSS seen while the block runs, sampled every millisecond by a thread."""

    def __enter__(self):
        self.peak, self._stop = rss(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


# ------------------------------------------------------------------------------------------------- saving backbones
def save_backbone(spec: str, folder: str, tiny: bool) -> None:
    """`encoder` or `llm:<depth>`: a random backbone in the paper's shape saved as a Hub checkpoint would be."""
    import torch
    from transformers import (AutoTokenizer, LlamaConfig, LlamaForCausalLM, Wav2Vec2FeatureExtractor, WavLMConfig,
                              WavLMModel)

    from backbones_emosllm import resolve_pretrained

    wavlm, llama, _ = shapes(tiny)
    torch.manual_seed(0)
    if spec == "encoder":
        WavLMModel(WavLMConfig(**wavlm)).save_pretrained(folder)
        Wav2Vec2FeatureExtractor(**WAVLM_FEATURE_EXTRACTOR).save_pretrained(folder)
        return
    depth = int(spec.split(":")[1])
    config = LlamaConfig(**{**llama, "num_hidden_layers": depth})
    with torch.device("meta"):  # built empty, then initialised in bf16 (as Llama 3.2 is stored): half the memory
        model = LlamaForCausalLM(config)
    model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, config.initializer_range)
    if config.tie_word_embeddings:  # to_empty gave the head its own tensor: tie it back, so it is stored once
        model.lm_head.weight = model.model.embed_tokens.weight
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_pretrained(TOKENIZER)).save_pretrained(folder)


# ---------------------------------------------------------------------------------------------------- one depth's case
def audio_batch(args) -> list:
    import numpy as np

    rng = np.random.default_rng(0)
    lengths = np.linspace(args.clip_seconds[0], args.clip_seconds[-1], args.batch_size) if args.batch_size > 1 else [
        args.clip_seconds[0]]
    clips = []
    for i, seconds in enumerate(lengths):
        t = np.arange(int(seconds * 16000)) / 16000
        clips.append((0.3 * np.sin(2 * np.pi * (150 + 50 * i) * t) + 0.02 * rng.standard_normal(t.shape))
                     .astype(np.float32))
    return clips


def measure_case(args, encoder_dir: str, llm_dir: str) -> dict:
    import torch

    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
    from processing_emosllm import EmoSLLMProcessor

    torch.set_num_threads(args.threads)
    _, _, mapper = shapes(args.tiny)
    out = {"depth": args._case, "threads": torch.get_num_threads(), "load_before": os.getloadavg()}
    started = time.perf_counter()
    processor, config = EmoSLLMProcessor.from_backbones(encoder_dir, llm_dir, labels=LABELS, **mapper)
    torch.manual_seed(0)
    # The precision policy of a bf16 GPU (precision_emosllm.PRECISION_POLICY): frozen backbones in bf16, the parts
    # that train in float32; on this CPU from_backbones would hold the backbones in float32.
    model = EmoSLLMForSpeechEmotionRecognition.from_backbones(config, encoder_dir, llm_dir,
                                                              dtype=torch.bfloat16)
    out["build_seconds"] = time.perf_counter() - started
    out["build_peak_rss"] = max_rss()
    trim()
    out["rss_after_build"] = rss()
    trainable, total = model.trainable_parameters()
    lora = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
    out.update(trainable=trainable, total=total, lora=lora, mapper=trainable - lora,
               weight_bytes=sum(p.numel() * p.element_size() for p in model.parameters()))
    dtypes = {part: {str(p.dtype) for n, p in model.named_parameters() if test(n)} for part, test in (
        ("llm_dtype", lambda n: n.startswith("language_model.") and "lora_" not in n),
        ("lora_dtype", lambda n: "lora_" in n), ("encoder_dtype", lambda n: n.startswith("audio_encoder.encoder.")),
        ("mapper_dtype", lambda n: n.startswith("mapper.")))}
    out.update({part: ",".join(sorted(found)) for part, found in dtypes.items()})

    clips = audio_batch(args)
    transcripts = ["Kids are talking by the door"] * len(clips)
    batch = processor(clips, transcript=transcripts, labels=[LABELS[i % len(LABELS)] for i in range(len(clips))])
    out["prompt_tokens"] = int(batch["attention_mask"].sum())
    out["audio_seconds"] = [len(c) / 16000 for c in clips]

    # The frozen encoder's pass (no gradients), in float32 and in the default path (bf16 autocast where the CPU has
    # native bf16, as train.py's cache and the pipeline run it); the bf16 path is timed once (see the report).
    model.train()
    encoder = model.audio_encoder
    encoder.bf16_inference = False
    times = []
    for step in range(args.repeats + 1):
        started = time.perf_counter()
        with torch.no_grad():
            states = encoder.layer_states(batch["input_features"], batch["audio_lengths"])
        if step:
            times.append(time.perf_counter() - started)
    out["encoder_seconds"] = statistics.median(times)
    encoder.bf16_inference = True
    out["encoder_dtype_default_path"] = str(encoder.inference_dtype("cpu"))
    if args.time_default_encoder_path:
        started = time.perf_counter()
        with torch.no_grad():
            encoder.layer_states(batch["input_features"], batch["audio_lengths"])
        out["encoder_seconds_default_path_once"] = time.perf_counter() - started
    train_batch = {k: v for k, v in batch.items() if k != "input_features"}
    train_batch["encoder_layer_states"] = states.half().float()  # as train.py's cache gives them
    del states

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    out["saved_activation_bytes"] = saved_activation_bytes(model, train_batch)
    initial = {n: p.detach().clone() for n, p in params}
    first_grads = {}
    for checkpointing in (False, True):
        with torch.no_grad():
            for n, p in params:
                p.copy_(initial[n])
        if checkpointing:  # what the Trainer calls (newer transformers renamed it; the old name warns)
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        else:
            model.gradient_checkpointing_disable()
        model.train()
        optimizer = torch.optim.AdamW([p for _, p in params], lr=1e-4)
        times, peaks = [], []
        for step in range(args.repeats + 1):
            torch.manual_seed(step)  # the mapper's dropout draws the same masks in both variants
            trim()
            base = rss()
            with PeakRSS() as peak:
                started = time.perf_counter()
                loss = model(**train_batch).loss
                loss.backward()
                if step == 0:
                    out[f"first_loss_checkpointing_{checkpointing}"] = float(loss)
                    first_grads[checkpointing] = torch.cat([p.grad.flatten() for _, p in params if p.grad is not None])
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                elapsed = time.perf_counter() - started
            del loss
            if step:  # the first step warms up (and allocates AdamW's states)
                times.append(elapsed)
                peaks.append(peak.peak - base)
        key = "train_checkpointing" if checkpointing else "train"
        out[f"{key}_seconds"] = statistics.median(times)
        out[f"{key}_seconds_all"] = times
        out[f"{key}_peak_bytes"] = max(peaks)
        del optimizer
    model.gradient_checkpointing_disable()
    plain, checkpointed = first_grads[False], first_grads[True]
    out["checkpointing_grad_max_rel_diff"] = float((plain - checkpointed).abs().max() / plain.abs().max())
    del first_grads, plain, checkpointed, initial

    # Inference as the pipeline runs it (eval mode, LoRA merged, the prompt head cached across calls), from the
    # encoder's states: the encoder's own pass is timed above, inference from audio is the sum.
    model.eval()
    model.merge_lora()
    infer_batch = {k: v for k, v in processor(clips, transcript=transcripts).items() if k != "input_features"}
    infer_batch["encoder_layer_states"] = train_batch["encoder_layer_states"]
    times, peaks = [], []
    for step in range(args.repeats + 1):
        trim()
        base = rss()
        with PeakRSS() as peak, torch.no_grad():
            started = time.perf_counter()
            model(**infer_batch)
            elapsed = time.perf_counter() - started
        if step:
            times.append(elapsed)
            peaks.append(peak.peak - base)
    out["inference_seconds"] = statistics.median(times)
    out["inference_seconds_all"] = times
    out["inference_peak_bytes"] = max(peaks)
    out["load_after"] = os.getloadavg()
    out["process_peak_rss"] = max_rss()
    return out


def saved_activation_bytes(model, batch: dict) -> int:
    """
    Bytes of the tensors autograd keeps for the backward pass of one plain training forward (no checkpointing): each
    storage once, the model's own weights left out. Exact where the RSS peak of a step is noisy at a few MB per layer.
    """
    import torch

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.gradient_checkpointing_disable()
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch).loss
    del loss
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


# ---------------------------------------------------------------------------------------------------- full-depth counts
def full_depth_counts(encoder_dir: str, llm_dir: str, full_depth: int, tiny: bool) -> dict:
    """Exact parameter counts of the model at `full_depth`, built on the meta device (no memory)."""
    import torch

    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
    from processing_emosllm import EmoSLLMProcessor

    _, config = EmoSLLMProcessor.from_backbones(encoder_dir, llm_dir, labels=LABELS, **shapes(tiny)[2])
    config.text_config.num_hidden_layers = full_depth
    with torch.device("meta"):
        model = EmoSLLMForSpeechEmotionRecognition(config)
    named = dict(model.named_parameters())  # tied weights once
    trainable = sum(p.numel() for p in named.values() if p.requires_grad)
    lora = sum(p.numel() for n, p in named.items() if p.requires_grad and "lora_" in n)
    encoder = sum(p.numel() for n, p in named.items() if n.startswith("audio_encoder.encoder."))
    llm = sum(p.numel() for n, p in named.items() if n.startswith("language_model.") and "lora_" not in n)
    text = config.text_config
    return {"depth": full_depth, "trainable": trainable, "total": sum(p.numel() for p in named.values()),
            "lora": lora, "mapper": trainable - lora, "encoder": encoder, "llm": llm,
            "frozen": sum(p.numel() for p in named.values() if not p.requires_grad),
            "lm_head": text.vocab_size * text.hidden_size}


# -------------------------------------------------------------------------------------------------------- the summary
def fit(depths: list[int], values: list[float]) -> tuple[float, float]:
    """Least-squares (slope per layer, intercept); one depth gives no slope."""
    if len(set(depths)) < 2:
        return float("nan"), float(values[0])
    n = len(depths)
    mean_d, mean_v = sum(depths) / n, sum(values) / n
    slope = sum((d - mean_d) * (v - mean_v) for d, v in zip(depths, values)) / sum((d - mean_d) ** 2 for d in depths)
    return slope, mean_v - slope * mean_d


def summarize(cases: list[dict], counts: dict, args) -> dict:
    depths = [c["depth"] for c in cases]
    full = args.full_depth
    measures = ["build_seconds", "build_peak_rss", "rss_after_build", "train_seconds",
                "train_checkpointing_seconds", "inference_seconds", "train_peak_bytes",
                "train_checkpointing_peak_bytes", "inference_peak_bytes", "saved_activation_bytes"]
    fits = {}
    for m in measures:
        if not all(m in c for c in cases):
            continue
        slope, intercept = fit(depths, [c[m] for c in cases])
        fits[m] = {"slope": slope, "intercept": intercept, "at_full_depth": slope * full + intercept}
    # Per-GPU memory of the full model in training, computed (one process, the measured batch). The model is built as on
    # a bf16 GPU (frozen backbones bf16, LoRA and mapper float32: PRECISION_POLICY), so the tensors a plain step
    # keeps for backward (measured exactly, fitted per layer) are what a GPU keeps, LoRA's float32 inputs included;
    # checkpointed, a step keeps each layer's bf16 input and, while it recomputes, one layer's own tensors.
    bf16_weights = counts["frozen"] * 2
    trainable_states = counts["trainable"] * (4 + 4 + 8)  # float32 weights, gradients, AdamW's two moments
    text = LLAMA_3B if not args.tiny else TINY_LLAMA
    saved = fits["saved_activation_bytes"]
    tokens = statistics.mean(c["prompt_tokens"] for c in cases)
    activations = {"without checkpointing": saved["at_full_depth"],
                   "with checkpointing": saved["intercept"] + saved["slope"] + full * tokens * text["hidden_size"] * 2}
    gpu = {}
    for name, kept in activations.items():
        gpu[name] = {"weights_bf16": bf16_weights, "trainable_states": trainable_states, "activations": kept,
                     "total": bf16_weights + trainable_states + kept}
    llm_bf16 = all(c.get("llm_dtype") == "torch.bfloat16" for c in cases)
    return {"depths": depths, "full_depth": full, "fits": fits, "counts": counts, "gpu": gpu, "llm_bf16": llm_bf16,
            "trainable_share_full": counts["trainable"] / counts["total"]}


def gib(x: float) -> str:
    return f"{x / GIB:.2f}"


def markdown(cases: list[dict], summary: dict, args, machine: str) -> str:
    full, fits, counts = summary["full_depth"], summary["fits"], summary["counts"]
    lines = [f"{machine}; {args.threads} torch thread(s) per case, one process per depth; batch {args.batch_size} "
             f"clips of {'-'.join(f'{s:g}' for s in args.clip_seconds)} s; median of {args.repeats} steps after a "
             f"warm-up; dtypes as from_backbones builds them: " + ", ".join(
                 f"{part} {cases[0].get(part + '_dtype', '?').replace('torch.', '')}"
                 for part in ("encoder", "mapper", "llm", "lora")) +
             (" **(--tiny: toy sizes, not the paper's)**" if args.tiny else ""), ""]
    lines += ["| LLM layers | trainable / total params | trainable % | build s | build peak RSS GiB | "
              "RSS after build GiB | encoder pass s (its dtype) | encoder pass s (default path, once) | train step s | "
              "train step s, checkpointing | checkpointing / plain | inference step s | train step peak GiB | "
              "checkpointing peak GiB | inference peak GiB | kept for backward GiB | load (1 min) |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cases:
        lines.append(
            f"| {c['depth']} | {c['trainable'] / 1e6:.2f}M / {c['total'] / 1e6:.1f}M | "
            f"{100 * c['trainable'] / c['total']:.3f} | {c['build_seconds']:.1f} | {gib(c['build_peak_rss'])} | "
            f"{gib(c['rss_after_build'])} | {c['encoder_seconds']:.2f} | "
            + (f"{c['encoder_seconds_default_path_once']:.2f} ({c['encoder_dtype_default_path'].split('.')[-1]})"
               if "encoder_seconds_default_path_once" in c else "not timed") + " | "
            f"{c['train_seconds']:.2f} | {c['train_checkpointing_seconds']:.2f} | "
            f"{c['train_checkpointing_seconds'] / c['train_seconds']:.2f}x | {c['inference_seconds']:.2f} | "
            f"{gib(c['train_peak_bytes'])} | {gib(c['train_checkpointing_peak_bytes'])} | "
            f"{gib(c['inference_peak_bytes'])} | "
            + (gib(c["saved_activation_bytes"]) if "saved_activation_bytes" in c else "-")
            + f" | {c['load_before'][0]:.1f} -> {c['load_after'][0]:.1f} |")
    lines += ["", "Checkpointing against the plain step, first step at identical weights and seed: " + "; ".join(
        f"{c['depth']} layer(s): loss {c['first_loss_checkpointing_False']:.5f} vs "
        f"{c['first_loss_checkpointing_True']:.5f}, gradients' max difference "
        f"{100 * c['checkpointing_grad_max_rel_diff']:.2f}% of the largest" for c in cases) + "."]
    lines += ["", f"Linear fit over depths {summary['depths']} and extrapolation to {full} layers (CPU, "
              f"{args.threads} thread(s), dtypes as above):", "",
              "| measure | per LLM layer | intercept | at full depth |", "|---|---:|---:|---:|"]
    for m, f in fits.items():
        unit_gib = not m.endswith("seconds")
        show = gib if unit_gib else (lambda x: f"{x:.2f}")
        lines.append(f"| {m} ({'GiB' if unit_gib else 's'}) | {show(f['slope'])} | {show(f['intercept'])} | "
                     f"{show(f['at_full_depth'])} |")
    lines += ["", f"Exact counts at {full} layers (meta-device build, not extrapolated): trainable "
              f"{counts['trainable']:,} of {counts['total']:,} = **{100 * summary['trainable_share_full']:.3f}%** "
              f"(LoRA {counts['lora']:,}, mapper {counts['mapper']:,}); frozen encoder {counts['encoder']:,}, "
              f"frozen LLM {counts['llm']:,}.", "",
              f"Per-GPU memory of the {full}-layer model in training (computed, one process, the batch above):", "",
              "| GiB | without checkpointing | with checkpointing |", "|---|---:|---:|"]
    g = summary["gpu"]
    rows = [("frozen weights in bf16 (exact count x 2 bytes)", "weights_bf16"),
            ("trainable: float32 weights + gradients + AdamW's 2 moments (exact count x 16 bytes)", "trainable_states"),
            ("activations: tensors kept for backward, measured and fitted per layer (LoRA's float32 inputs "
             "included); checkpointed: bf16 layer inputs + one layer's", "activations"),
            ("**total**", "total")]
    for label, key in rows:
        lines.append(f"| {label} | {gib(g['without checkpointing'][key])} | {gib(g['with checkpointing'][key])} |")
    worst = g["without checkpointing"]["total"]
    fits_gpu = worst + GIB < args.gpu_gib * GIB
    lines += ["", f"Fits one {args.gpu_gib:g} GiB GPU with LoRA (worst column + 1 GiB for the CUDA context and "
              f"allocator): **{'yes' if fits_gpu else 'no'}** ({gib(worst + GIB)} GiB)."]
    summary["fits_gpu"] = fits_gpu
    return "\n".join(lines)


def machine_note(threads: int) -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPU(s) visible"


def run_child(argv: list[str], threads: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    result = subprocess.run([sys.executable, __file__, *argv], env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout


def main(argv=None) -> dict:
    args = parse_args(argv)
    tiny_flag = ["--tiny"] if args.tiny else []
    if args._save:
        save_backbone(args._save, args.workdir, args.tiny)
        return {}
    if args._case is not None:
        encoder_dir, llm_dir = str(Path(args.workdir) / "encoder"), str(Path(args.workdir) / f"llm{args._case}")
        print("RESULT " + json.dumps(measure_case(args, encoder_dir, llm_dir)), flush=True)
        return {}

    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        renamed = {"interface": "mapper", "interface_dtype": "mapper_dtype"}  # the mapper's keys in older runs
        for record in (*saved["cases"], saved["summary"]["counts"]):
            record.update({new: record.pop(old) for old, new in renamed.items() if old in record})
        for key, value in saved.get("settings", {}).items():  # the run's own settings, not this command's
            setattr(args, key, value)
        summary = summarize(saved["cases"], saved["summary"]["counts"], args)
        table = markdown(saved["cases"], summary, args, saved.get("machine", machine_note(args.threads)))
        print(table)
        return {**saved, "summary": summary, "markdown": table}
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="paper_scale_"))
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "encoder" / "config.json").exists():
        run_child(["--_save", "encoder", "--workdir", str(workdir / "encoder"), *tiny_flag], args.threads)
    cases = []
    for depth in args.depth_list:
        llm_dir = workdir / f"llm{depth}"
        if not (llm_dir / "config.json").exists():
            run_child(["--_save", f"llm:{depth}", "--workdir", str(llm_dir), *tiny_flag], args.threads)
        stdout = run_child(["--_case", str(depth), "--workdir", str(workdir), "--threads", str(args.threads),
                            "--repeats", str(args.repeats), "--batch_size", str(args.batch_size),
                            "--seconds", args.seconds, *tiny_flag,
                            *(["--time_default_encoder_path"] if args.time_default_encoder_path else [])], args.threads)
        case = json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])
        cases.append(case)
        print(f"depth {depth}: train {case['train_seconds']:.2f} s, checkpointing "
              f"{case['train_checkpointing_seconds']:.2f} s, inference {case['inference_seconds']:.2f} s, "
              f"build peak {gib(case['build_peak_rss'])} GiB", flush=True)
    counts = full_depth_counts(str(workdir / "encoder"), str(workdir / f"llm{args.depth_list[0]}"),
                               args.full_depth, args.tiny)
    summary = summarize(cases, counts, args)
    table = markdown(cases, summary, args, machine_note(args.threads))
    print(table)
    result = {"cases": cases, "summary": summary, "markdown": table, "machine": machine_note(args.threads),
              "settings": {k: getattr(args, k) for k in (
                  "threads", "repeats", "batch_size", "clip_seconds", "depth_list", "full_depth", "tiny", "gpu_gib")},
              "command": "python bench/paper_scale.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
