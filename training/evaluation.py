# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
The test report, scored as the saved folder answers through the pipeline (`evaluate_and_report`,
`predict_as_delivered`), and the check that the saved folder itself scores what the run reports
(`check_delivered_score`).
"""

import logging
from pathlib import Path

import numpy as np
import torch

from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
from saving_emosllm import saved_language_model_dtype
from training.corpora import SAMPLING_RATE
from training.engines import model_in_shards, models_built_whole
from training.metrics import check_finite_scores, compute_ser_metrics, save_confusion_matrix, write_report

logger = logging.getLogger("emosllm.train")

__all__ = ["DELIVERED_BATCH_SIZE", "DELIVERED_UA_TOLERANCE", "check_delivered_score", "clips_without_speech",
           "evaluate_and_report", "predict_as_delivered"]


def evaluate_and_report(trainer, processor, test_clips, output_dir: Path, name: str = "test") -> dict:
    """
    Scores `test_clips` with the trained model in the form the saved folder in `output_dir` answers through the
    pipeline: the LLM's pretrained weights in the dtype that loading the folder gives them
    (`saved_language_model_dtype`: bf16 where the LLM is stored in bf16 and bf16 is native, else float32), LoRA merged,
    no autocast, and the clips in the pipeline's batches (`predict_as_delivered`). With `--bf16` (the default where
    bf16 is native) accelerate wraps the model's forward in bf16 autocast for training; a test score taken through
    that wrapper differed from the saved model's (docs/experiment-log.md), so the wrapper is taken off. Call
    after the folder is saved; under several processes every process calls it and gets the same metrics.

    Args:
        trainer: The SER stage's `EmoSLLMTrainer`; its model is unwrapped, cast and LoRA-merged in place.
        processor: The model's processor (the pipeline's inputs, the labels and their ids).
        test_clips: The test clips: float32 `audio` at 16 kHz, `label`, `transcript` and `text_features`.
        output_dir: The saved folder; the first process writes `<name>_report.json` and
            `<name>_confusion_matrix.png` there.
        name: The prefix of those files' names.

    Returns:
        The metrics (`compute_ser_metrics`'s), and `llm_ua` and `probe_ua` where the model gives those scores.
    """
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    if model_in_shards(trainer):
        # ZeRO-3 and FSDP hold the trained model in shards that the processes gather together for each forward, and
        # they score different batches: each scores the saved folder instead, loaded whole, as the pipeline loads it.
        with models_built_whole(trainer.args):  # (FSDP2 changes the model's class: the plain one loads it)
            model = EmoSLLMForSpeechEmotionRecognition.from_pretrained(str(output_dir))
    else:
        trainer.model = model
    model.cast_language_model(saved_language_model_dtype(str(output_dir)))
    model.merge_lora()
    scores = predict_as_delivered(model, processor, test_clips, trainer.accelerator)
    labels = processor.labels
    label_ids = processor.label_ids([c["label"] for c in test_clips]).numpy()
    check_finite_scores(scores["logits"], "the test clips")
    predicted = scores["logits"].argmax(-1)
    metrics = compute_ser_metrics(predicted, label_ids, labels)
    # Beside the answer: what the LLM alone and the probe alone score on the same clips.
    for key, output in (("llm_ua", "llm_logits"), ("probe_ua", "probe_logits")):
        if output in scores:
            metrics[key] = compute_ser_metrics(scores[output].argmax(-1), label_ids, labels)["ua"]
    if trainer.is_world_process_zero():  # every process has all predictions (gathered); one writes the files
        write_report(metrics, output_dir / f"{name}_report.json")
        save_confusion_matrix(predicted, label_ids, labels, output_dir / f"{name}_confusion_matrix.png")
    return metrics


# The batch size of the pipeline call that checks the saved folder (`check_delivered_score`), and so of the batches
# the test report is scored in (`predict_as_delivered`).
DELIVERED_BATCH_SIZE = 8


@torch.no_grad()
def predict_as_delivered(model, processor, clips: list[dict], accelerator=None,
                         batch_size: int = DELIVERED_BATCH_SIZE) -> dict[str, np.ndarray]:
    """
    The model's class scores of `clips` as the pipeline computes them (`pipeline(..., batch_size=batch_size)`):
    `{"logits", "llm_logits", "probe_logits"}` (the last for the probe mapper only), each `(clips, labels)` in the
    clips' order. A clip's scores depend on the clips batched with it (the padding changes the shapes of bf16 matrix
    products with a bf16 LLM: BENCHMARKS.md, "Several processes against one"), so the clips are
    read in the pipeline's batches, `clips[i:i + batch_size]`, with the pipeline's inputs (the processor's prompt
    without the answer). Under several processes (`accelerator`), process r scores batches r, r + N, ... and the scores
    are gathered: no batch is cut, padded or completed with repeated clips (as the Trainer's distributed evaluation
    does), so every process gets the scores that one process, and the saved folder through the pipeline, give.

    Args:
        model: The EmoSLLM model, unwrapped; set to eval mode here.
        processor: Its processor, which makes the pipeline's inputs.
        clips: The clips: float32 `audio` at 16 kHz, and `transcript` and `text_features` where they have them.
        accelerator: The run's `Accelerator` (several processes share the batches); None: one process.
        batch_size: Clips per batch, as the pipeline's `batch_size`.
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    model.eval()
    scored = []
    for start in list(range(0, len(clips), batch_size))[rank::world]:
        chunk = clips[start:start + batch_size]
        batch = dict(processor([c["audio"] for c in chunk], sampling_rate=SAMPLING_RATE,
                               transcript=[c.get("transcript") for c in chunk],
                               text_features=[c.get("text_features") or None for c in chunk]))
        batch["input_features"] = batch["input_features"].to(model.dtype)
        output = model(**{k: v.to(model.device) for k, v in batch.items()})
        scored.append((start, {key: getattr(output, key).float().cpu().numpy()
                               for key in ("logits", "llm_logits", "probe_logits")
                               if getattr(output, key) is not None}))
    if world > 1:
        from accelerate.utils import gather_object

        scored = gather_object(scored)  # every process's (start, scores), in rank order
    scored.sort(key=lambda item: item[0])
    return {key: np.concatenate([part[key] for _, part in scored]) for key in scored[0][1]}


# The most the saved folder's test UA through the pipeline may differ from the score the run reports.
DELIVERED_UA_TOLERANCE = 0.01


def check_delivered_score(output_dir: Path, test_clips: list[dict], reported_ua: float, labels: list[str]) -> float:
    """
    Re-scores the saved folder as a user gets it, `pipeline("audio-classification", model=output_dir)` on the test
    clips (decoded audio, their transcripts and text features, whole clips), and raises `RuntimeError` if its UA
    differs from the reported one by more than `DELIVERED_UA_TOLERANCE`: the reported score must be the delivered
    score.

    Args:
        output_dir: The saved model folder.
        test_clips: The test clips: float32 `audio` at 16 kHz, `transcript`, `text_features` and `label`.
        reported_ua: The test UA that the run reports (`evaluate_and_report`).
        labels: The label set, in class-id order.

    Returns:
        The delivered test UA, rounded to 4 decimals.
    """
    from transformers import pipeline

    classifier = pipeline("audio-classification", model=str(output_dir), trust_remote_code=True, device="cpu")
    reads_transcripts = classifier.processor.use_transcript != "none"  # (else the pipeline says it drops them)
    inputs = [{"array": c["audio"], "sampling_rate": SAMPLING_RATE,
               "transcript": c["transcript"] if reads_transcripts else None,
               "text_features": c.get("text_features") or None} for c in test_clips]
    # Every clip's answer, as the run scored it (the speech detector's verdict on each is counted apart).
    outputs = classifier(inputs, top_k=1, segment_seconds=None, batch_size=DELIVERED_BATCH_SIZE,
                         detect_speech=False)
    delivered = compute_ser_metrics([o[0]["label"] for o in outputs], [c["label"] for c in test_clips], labels)["ua"]
    logger.info("The saved folder through the pipeline: test UA %.4f (reported %.4f)", delivered, reported_ua)
    if abs(delivered - reported_ua) > DELIVERED_UA_TOLERANCE:
        raise RuntimeError(
            f"The saved model in {output_dir} scores test UA {delivered:.4f} through the pipeline, but training "
            f"reported {reported_ua:.4f} (tolerance {DELIVERED_UA_TOLERANCE}): its inputs are not computed the same "
            "way in training and inference. Do not publish this folder; please report this as a bug."
        )
    return round(float(delivered), 4)


def clips_without_speech(test_clips: list[dict]) -> int:
    """
    How many test clips the pipeline's speech detector finds no speech in (it gives them no emotion); logged.

    Args:
        test_clips: The test clips: float32 `audio` at 16 kHz, and `file` (the first such clip is named).
    """
    from vad_emosllm import MIN_SPEECH_SECONDS, speech_mask, speech_seconds

    without = [c for c in test_clips if speech_seconds(speech_mask(c["audio"])) < MIN_SPEECH_SECONDS]
    if without:
        logger.warning("%d of %d test clips hold no speech that the pipeline's speech detector finds (first: %s): "
                       "the pipeline gives them no emotion (pass detect_speech=False to classify them); the scores "
                       "above count the model's answer for them.", len(without), len(test_clips),
                       without[0]["file"])
    return len(without)
