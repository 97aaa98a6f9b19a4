# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""Peak host memory of building EmoSLLM from its backbones (`from_backbones`), against the built model's weights:
the build before the lean construction (the whole model made at random, then each backbone loaded again in float32
and copied in) and the lean build (backbones on the meta device, each loaded once in its final dtype), side by side.

    python bench/build_memory.py --threads 1 --encoder_layers 24 --llm 1b --llm_layers 2

Random backbones in the paper's shapes, saved to a temporary folder as Hub checkpoints are: WavLM Large
(transformers' WavLMConfig with the large settings: width 1024, 16 heads, 4096 feed-forward, stable layer norm) in
float32 and a Llama-3.2-1B- or 3B-shaped LLM (vocabulary 128256, tied head) in bf16, as Meta publishes it, at the
depths asked for; SmolLM2's tokenizer (the bundled copy) stands in for Llama's. The mapper is the paper's QPMapper
at 32 queries. Each case runs in a subprocess of its own, which reports its peak resident set (Linux's VmHWM) after
the imports and the processor (the baseline) and after the build, and the bytes of the model's parameters and
buffers. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["CASES", "LABELS", "LLAMA_SHAPES", "build_one", "main", "model_bytes", "old_from_backbones", "parse_args",
           "peak_rss_bytes", "save_backbones"]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LABELS = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
LLAMA_SHAPES = {  # Llama-3.2's published configs, depth aside
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 32, "num_key_value_heads": 8,
           "head_dim": 64, "num_hidden_layers": 16},
    "3b": {"hidden_size": 3072, "intermediate_size": 8192, "num_attention_heads": 24, "num_key_value_heads": 8,
           "head_dim": 128, "num_hidden_layers": 28},
}
CASES = {
    "before: random model, backbones loaded again in float32 and copied in": "old",
    "lean, float32 backbones (the CPU policy)": "lean",
    "lean, bf16 backbones (the CUDA policy; dtype=torch.bfloat16)": "lean_bf16",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--encoder_layers", type=int, default=24, help="WavLM Large layers (24 in full)")
    parser.add_argument("--llm", choices=sorted(LLAMA_SHAPES), default="1b", help="the Llama-3.2 shape")
    parser.add_argument("--llm_layers", type=int, default=2, help="the LLM's depth (16 for 1B, 28 for 3B in full)")
    parser.add_argument("--cases", default=",".join(CASES.values()), help="comma-separated: old, lean, lean_bf16")
    parser.add_argument("--folder", default=None, help="keep the random backbones here (default: a temp folder)")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # a child process: build this one case
    return parser.parse_args(argv)


def _fill_random(model, std: float = 0.02) -> None:
    """Random weights, written in place without a float32 copy of each tensor (made on the meta device first)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                param.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
            else:
                for row in param.view(param.shape[0], -1).split(4096):
                    row.copy_(torch.randn(row.shape, generator=generator) * std)


def save_backbones(folder: Path, args) -> tuple[str, str]:
    """The random WavLM Large and Llama-3.2-shaped LLM (with SmolLM2's tokenizer) saved under `folder`."""
    import torch
    from transformers import (
        AutoTokenizer, LlamaConfig, LlamaForCausalLM, Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel,
    )

    from backbones_emosllm import resolve_pretrained

    encoder_dir, llm_dir = folder / "wavlm-large", folder / f"llama-3.2-{args.llm}-{args.llm_layers}layers"
    if not (encoder_dir / "config.json").exists():
        config = WavLMConfig(hidden_size=1024, num_hidden_layers=args.encoder_layers, num_attention_heads=16,
                             intermediate_size=4096, feat_extract_norm="layer", do_stable_layer_norm=True,
                             conv_bias=True, layerdrop=0.1)
        with torch.device("meta"):
            encoder = WavLMModel(config)
        encoder.to_empty(device="cpu")
        _fill_random(encoder)
        for name, buffer in encoder.named_buffers():
            buffer.zero_()
        encoder.save_pretrained(encoder_dir)
        Wav2Vec2FeatureExtractor(return_attention_mask=True, do_normalize=True).save_pretrained(encoder_dir)
        del encoder
    if not (llm_dir / "config.json").exists():
        shape = {**LLAMA_SHAPES[args.llm], "num_hidden_layers": args.llm_layers}
        config = LlamaConfig(vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
                             rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=128000,
                             eos_token_id=128009, dtype="bfloat16",
                             rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                             **shape)
        with torch.device("meta"):
            llm = LlamaForCausalLM(config).to(torch.bfloat16)
        llm.to_empty(device="cpu")
        llm.tie_weights()  # to_empty gives the head a storage of its own
        _fill_random(llm)
        llm.model.rotary_emb.__init__(config=config)  # its inverse frequencies, lost by to_empty
        llm.save_pretrained(llm_dir)
        tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct"))
        tokenizer.save_pretrained(llm_dir)
        del llm
    return str(encoder_dir), str(llm_dir)


def old_from_backbones(config, audio_encoder: str, llm: str):
    """`EmoSLLMForSpeechEmotionRecognition.from_backbones` before the lean construction, as it was."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition

    model = EmoSLLMForSpeechEmotionRecognition(config)
    encoder = AutoModel.from_pretrained(audio_encoder, dtype=torch.float32)
    encoder = encoder.get_encoder() if config.is_whisper_encoder else encoder
    model.audio_encoder.encoder.load_state_dict(encoder.state_dict())
    weights = AutoModelForCausalLM.from_pretrained(llm, dtype=torch.float32).state_dict()
    own = set(model.language_model.state_dict())
    weights = {name if name in own else ".base_layer.".join(name.rsplit(".", 1)): w for name, w in weights.items()}
    model.language_model.load_state_dict(weights, strict=False)
    model.freeze_backbones()
    return model


def peak_rss_bytes() -> int:
    """This process's peak resident set (Linux's VmHWM: unlike `getrusage`'s ru_maxrss, not inherited from the
    parent through fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def model_bytes(model) -> dict:
    """Bytes of the model's parameters and buffers, each storage once (tied weights), by dtype."""
    seen, by_dtype = set(), {}
    for tensor in [*model.state_dict().values(), *model.buffers()]:  # the state dict names a tied tensor twice
        key = tensor.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        name = str(tensor.dtype).replace("torch.", "")
        by_dtype[name] = by_dtype.get(name, 0) + tensor.untyped_storage().nbytes()
    return by_dtype


def build_one(case: str, encoder: str, llm: str, threads: int) -> dict:
    """The child process: one build, its peak memory and the model's size."""
    import torch

    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
    from processing_emosllm import EmoSLLMProcessor

    torch.set_num_threads(threads)
    _, config = EmoSLLMProcessor.from_backbones(encoder, llm, labels=LABELS, mapper_config={
        "mapper_type": "qpmapper", "num_queries": 32, "num_layers": 2, "num_heads": 8, "hidden_size": 768})
    baseline = peak_rss_bytes()
    torch.manual_seed(0)
    if case == "old":
        model = old_from_backbones(config, encoder, llm)
    else:
        dtype = torch.bfloat16 if case == "lean_bf16" else None
        model = EmoSLLMForSpeechEmotionRecognition.from_backbones(config, encoder, llm, dtype=dtype,
                                                                  device_type="cpu")
    peak = peak_rss_bytes()
    trainable = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters() if p.requires_grad})
    return {"case": case, "baseline": baseline, "peak": peak, "weights": model_bytes(model), "trainable": trainable}


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.case:  # the child
        encoder, llm = args.folder.split(os.pathsep)
        print("RESULT " + json.dumps(build_one(args.case, encoder, llm, args.threads)))
        return []
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(args.folder or temporary)
        encoder, llm = save_backbones(folder, args)
        rows = []
        for case in args.cases.split(","):
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1",
                   "TRANSFORMERS_VERBOSITY": "error"}
            child = subprocess.run(
                [sys.executable, __file__, "--case", case, "--threads", str(args.threads),
                 "--folder", os.pathsep.join((encoder, llm))],
                capture_output=True, text=True, env=env,
            )
            lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
            if child.returncode or not lines:
                raise RuntimeError(f"case {case} failed:\n{child.stderr[-3000:]}")
            rows.append(json.loads(lines[-1][len("RESULT "):]))
    gib = 2 ** 30
    print(f"\nWavLM Large at {args.encoder_layers} layers (float32 on disk), Llama-3.2-{args.llm.upper()} shape at "
          f"{args.llm_layers} layers (bf16 on disk), QPMapper at 32 queries; {args.threads} thread(s).\n")
    print("| build | model weights (GiB, by dtype) | peak RSS (GiB) | after imports (GiB) | peak / weights "
          "| (peak - imports) / weights | trainable dtype |")
    print("|---|---|---|---|---|---|---|")
    names = {v: k for k, v in CASES.items()}
    for row in rows:
        weights = sum(row["weights"].values())
        parts = ", ".join(f"{k} {v / gib:.2f}" for k, v in sorted(row["weights"].items()))
        print(f"| {names[row['case']]} | {weights / gib:.2f} ({parts}) | {row['peak'] / gib:.2f} | "
              f"{row['baseline'] / gib:.2f} | {row['peak'] / weights:.2f}x | "
              f"{(row['peak'] - row['baseline']) / weights:.2f}x | {', '.join(row['trainable'])} |")
    return rows


if __name__ == "__main__":
    main()
