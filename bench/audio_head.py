# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""Where a trained EmoSLLM loses accuracy: the LLM's answer against the auxiliary audio head, on the same clips.

A model trained with `--audio_loss_weight > 0` has two classifiers: the LLM's answer (what inference reads) and the
linear `audio_classifier` on the mean of the interface's audio embeddings (a training aid). If both score alike, the
LLM passes on what the interface gives it and the interface's representation is the limit; if the answer is well
below the audio head, the LLM path is. Scores every split of a corpus split by speakers (training speakers too, to
show how far the model fits the voices it trained on).

    python bench/audio_head.py --model outputs/ravdess --data_dir ../shared/data/ravdess
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data_emosllm import compute_ser_metrics, load_corpus, split_by_speakers  # noqa: E402
from encoder_cache_emosllm import EncoderStateCache  # noqa: E402
from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition  # noqa: E402
from processing_emosllm import EmoSLLMProcessor  # noqa: E402
from train import EmoSLLMCollator, attach_transcripts, decoded_clips  # noqa: E402


@torch.no_grad()
def answer_and_audio_head_ua(model, processor, clips: list[dict], batch_size: int = 16) -> dict[str, float]:
    """UA of the LLM's answer, of the audio head, and of the two softmaxes summed, over `clips`."""
    collator = EmoSLLMCollator(processor, "ser")
    answers, audio_heads, references = [], [], []
    for start in range(0, len(clips), batch_size):
        batch = collator(clips[start:start + batch_size])
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as train.py evaluates
            output = model(**batch)
        answers.append(output.logits.float())
        audio_heads.append(output.audio_logits.float())
        references += batch["labels"].tolist()
    answers, audio_heads, references = torch.cat(answers), torch.cat(audio_heads), np.array(references)

    def ua(scores: torch.Tensor) -> float:
        return compute_ser_metrics(scores.argmax(-1).numpy(), references, processor.config.labels)["ua"]

    return {"answer": ua(answers), "audio_head": ua(audio_heads),
            "answer_plus_audio_head": ua(answers.softmax(-1) + audio_heads.softmax(-1))}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a folder written by train.py (with --audio_loss_weight > 0)")
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "ravdess"))
    parser.add_argument("--test_speakers", default="17-20")
    parser.add_argument("--eval_speakers", default="13-16")
    parser.add_argument("--encoder_cache_dir", default=None,
                        help="cache of frozen-encoder outputs (train.py's flag of the same name); default: train.py's")
    args = parser.parse_args(argv)
    model = EmoSLLMForSpeechEmotionRecognition.from_pretrained(args.model).eval()
    processor = EmoSLLMProcessor.from_pretrained(args.model)
    if model.config.audio_loss_weight <= 0:
        raise ValueError(f"{args.model} was trained without the audio loss: it has no audio head to compare.")
    splits = split_by_speakers(load_corpus(args.data_dir, processor.config.labels), args.test_speakers,
                               args.eval_speakers)
    cache = EncoderStateCache(model, processor, args.encoder_cache_dir)
    print("| split | clips (speakers) | LLM answer UA | audio head UA | both (summed softmaxes) UA |")
    print("|---|---|---:|---:|---:|")
    results = {}
    for name, split in splits.items():
        clips = decoded_clips(split)
        attach_transcripts(clips, processor)
        cache.fill(clips)
        results[name] = answer_and_audio_head_ua(model, processor, clips)
        speakers = sorted(set(split["speaker"]))
        scores = " | ".join(f"{value:.3f}" for value in results[name].values())
        print(f"| {name} | {len(clips)} ({speakers[0]} to {speakers[-1]}) | {scores} |", flush=True)
    return results


if __name__ == "__main__":
    main()
