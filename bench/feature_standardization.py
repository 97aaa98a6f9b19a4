# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""Why the audio encoder's layers are standardized per dimension before the interface, measured on RAVDESS.

A pooled linear probe on the frozen Whisper encoder's layer-weighted frames, trained by gradient descent with the same
optimizer family as EmoSLLM's interface (AdamW, batches of 8), in two variants that differ only in how the frames
are normalized before pooling:

* ``layernorm``: a LayerNorm over each frame (EmoSLLM's first design);
* ``standardized``: each layer standardized per dimension with training-set statistics
  (``EmoSLLMAudioEncoder.set_feature_statistics``, EmoSLLM's design now).

Frames -> masked mean+std over time -> linear layer; the layer weights and the head train (lr 1e-2), 6 epochs on
actors 01-12, validation UA on actors 13-16 after every epoch, 3 seeds. The test actors are not used.

    python bench/feature_standardization.py --data_dir ../shared/data/ravdess
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from data_emosllm import compute_ser_metrics, load_corpus, split_by_speakers  # noqa: E402
from encoder_cache_emosllm import EncoderStateCache, cached_states, padded_states  # noqa: E402
from encoder_padding import masked_mean_std  # noqa: E402
from train import ModelArguments, build_model, decoded_clips  # noqa: E402


def pooled_probe(model, clips: dict, labels: list[str], variant: str, seed: int, epochs: int) -> list[float]:
    """Validation UA after each epoch of the probe `variant` (`layernorm` or `standardized`)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    encoder = model.audio_encoder
    hidden = encoder.hidden_size
    layer_weights = nn.Parameter(torch.zeros(encoder.layer_weights.shape))
    norm = nn.LayerNorm(hidden)
    head = nn.Linear(2 * hidden, len(labels))
    params = [layer_weights, *head.parameters()] + (list(norm.parameters()) if variant == "layernorm" else [])
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)

    def scores(batch: list[dict]) -> torch.Tensor:
        states = padded_states(batch)
        longest = states.shape[2]
        if variant == "standardized":
            states = (states - encoder.feature_mean[:, None]) / encoder.feature_std[:, None]
        frames = torch.einsum("l,bltd->btd", torch.softmax(layer_weights, 0), states)
        frames = norm(frames) if variant == "layernorm" else frames
        valid = encoder.frame_mask(torch.tensor([len(c["audio"]) for c in batch]), longest)
        return head(masked_mean_std(frames, valid))

    target = {label: i for i, label in enumerate(labels)}
    history = []
    for _ in range(epochs):
        order = list(clips["train"])
        rng.shuffle(order)
        for start in range(0, len(order) - 7, 8):
            batch = order[start:start + 8]
            loss = nn.functional.cross_entropy(scores(batch), torch.tensor([target[c["label"]] for c in batch]))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        with torch.no_grad():
            validation = clips["validation"]
            predicted = torch.cat([scores(validation[i:i + 32]).argmax(-1) for i in range(0, len(validation), 32)])
        references = [target[c["label"]] for c in validation]
        history.append(compute_ser_metrics(predicted.numpy(), np.array(references), labels)["ua"])
    return history


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "ravdess"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default=None, help="Optional JSON file for the results.")
    args = parser.parse_args(argv)
    started = time.time()
    splits = split_by_speakers(load_corpus(args.data_dir), "17-20", "13-16")
    labels = sorted(set(splits["train"]["label"]))
    model, processor = build_model(ModelArguments(), labels)
    clips = {name: decoded_clips(splits[name]) for name in ("train", "validation")}
    cache = EncoderStateCache(model, processor)
    for split_clips in clips.values():
        cache.fill(split_clips)
    model.audio_encoder.set_feature_statistics(cached_states(c) for c in clips["train"])
    results = {}
    for variant in ("layernorm", "standardized"):
        runs = [pooled_probe(model, clips, labels, variant, int(seed), args.epochs) for seed in args.seeds.split(",")]
        final = [run[-1] for run in runs]
        results[variant] = {"validation_ua_per_epoch": runs, "final_mean": float(np.mean(final)),
                            "final_std": float(np.std(final))}
    print("| frames before pooling | validation UA after each epoch (mean of seeds) | final UA, mean ± std |")
    print("|---|---|---|")
    for variant, result in results.items():
        curve = ", ".join(f"{v:.3f}" for v in np.mean(result["validation_ua_per_epoch"], axis=0))
        print(f"| {variant} | {curve} | {result['final_mean']:.3f} ± {result['final_std']:.3f} |")
    print(f"({time.time() - started:.0f} s)")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
