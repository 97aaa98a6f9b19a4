# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""Seconds per training step of train.py's default model, side by side: float32 or bf16 autocast, LoRA dropout on
or off, the shared prompt head computed once or once per prompt.

    python bench/training_step.py --threads 1 --steps 5

Real default backbones (Whisper tiny.en, SmolLM2-135M-Instruct), the probe mapper on every encoder layer, a batch
of 8 RAVDESS-like prompts (3.5 s of noisy tones as audio, a transcript); forward, backward and an AdamW step on the
trainable weights, as the Trainer does. Each variant gets one untimed warm-up step, then the median of `--steps`.
Prints a Markdown table with each variant's time relative to train.py's default (float32 on a CPU without native
bf16, no LoRA dropout, shared head).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

__all__ = ["LABELS", "main", "parse_args"]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LABELS = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=8, help="clips per step (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    import numpy as np
    import torch
    from peft import LoraConfig

    from backbones_emosllm import resolve_pretrained
    from configuration_emosllm import DEFAULT_AUDIO_MODEL_ID, DEFAULT_TEXT_MODEL_ID
    from lora_emosllm import DEFAULT_LORA
    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
    from processing_emosllm import EmoSLLMProcessor

    torch.set_num_threads(args.threads)
    encoder = resolve_pretrained(DEFAULT_AUDIO_MODEL_ID)
    llm = resolve_pretrained(DEFAULT_TEXT_MODEL_ID)
    rng = np.random.default_rng(0)
    audios = [(0.3 * np.sin(2 * np.pi * (150 + 50 * i) * np.arange(56000) / 16000)
               + 0.02 * rng.standard_normal(56000)).astype(np.float32) for i in range(args.batch_size)]
    variants = [("float32, no LoRA dropout, shared head (train.py's default)", False, 0.0, True),
                ("float32, no LoRA dropout, one pass per prompt", False, 0.0, False),
                ("float32, LoRA dropout 0.05, shared head", False, 0.05, True),
                ("bf16 autocast, no LoRA dropout, shared head", True, 0.0, True)]
    rows = []
    for name, bf16, dropout, shared in variants:
        processor, config = EmoSLLMProcessor.from_backbones(
            encoder, llm, labels=LABELS, mapper_config={"mapper_type": "probe"}, encoder_layer_combination="concatenate",
            audio_loss_weight=1.0)
        torch.manual_seed(0)
        lora_config = LoraConfig(**{**DEFAULT_LORA, "lora_dropout": dropout})
        model = EmoSLLMForSpeechEmotionRecognition.from_backbones(config, encoder, llm, lora_config).train()
        if not shared:
            model.MIN_SHARED_PREFIX = 10**9
        batch = processor(audios, transcript=["Kids are talking by the door"] * len(audios),
                          labels=[LABELS[i % len(LABELS)] for i in range(len(audios))])
        with torch.no_grad():
            states = model.audio_encoder.layer_states(batch.pop("input_features"), batch["audio_lengths"])
        batch["encoder_layer_states"] = states.half().float()  # as train.py's cache gives them
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        times = []
        for step in range(args.steps + 1):
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step:  # the first step warms up
                times.append(time.perf_counter() - started)
        rows.append({"variant": name, "seconds": statistics.median(times), "tokens": int(batch["attention_mask"].sum())})
        del model, optimizer
    base = rows[0]["seconds"]
    print(f"{args.threads} torch thread(s), batch {args.batch_size}, {rows[0]['tokens']} prompt tokens, "
          f"median of {args.steps} steps")
    print("| variant | s / step | relative to the default |\n|---|---:|---:|")
    for row in rows:
        print(f"| {row['variant']} | {row['seconds']:.2f} | {row['seconds'] / base:.2f}x |")
    return rows


if __name__ == "__main__":
    main()
