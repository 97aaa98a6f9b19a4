# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
The probe mapper's fit on the training clips (`fit_probe`), the held-out folds that stand in for validation
speakers (`hold_out_probe_fold`), and how far the answer may depart from the probe (`choose_probe_mix_weight`: only
as far as the held-out clips show it helps beyond their noise, `chosen_mix_weight`).
"""

import logging

import numpy as np
import torch

from probe_fitting_emosllm import PROBE_C_GRID
from training.metrics import compute_ser_metrics
from training.trainer import EmoSLLMCollator

logger = logging.getLogger("emosllm.train")

__all__ = ["BOOTSTRAP_RESAMPLES", "DEPARTURE_CONFIDENCE", "PROBE_MIX_WEIGHTS", "bootstrap_ua_gain",
           "choose_probe_mix_weight", "chosen_mix_weight", "departure_folds", "fit_probe", "held_out_scores",
           "hold_out_probe_fold"]


def fit_probe(model, processor, train_clips: list[dict], eval_clips: list[dict] | None, cs: list[float]) -> dict:
    """
    The probe mapper's fit (`model.fit_probe`, scikit-learn) on the training clips' cached encoder states (and
    those of their augmented copies); C by validation UA, or, without validation speakers, by cross-validation over
    the training speakers (a clip and its copies are always in the same fold). Each training clip also gets
    `clip["probe_scores"]`, its scores from the probe fitted without its fold's speakers, which the LLM trains on
    (`EmoSLLMTrainer.compute_loss`); with fewer than 2 speakers there are no folds, and it trains on the probe's
    in-sample scores, with a warning.

    Args:
        model: The EmoSLLM model with the probe mapper (`mapper_type="probe"`).
        processor: Its processor (the collator's inputs).
        train_clips: The training clips and their augmented copies, with cached `"states"` and their `group` (else
            `speaker`), which a fold keeps together; each gets `probe_scores` and `probe_fold`.
        eval_clips: The validation clips (decoded audio) that choose C; None or empty: C by cross-validation.
        cs: The values of C to try (`--probe_c`), at least one.

    Returns:
        `model.fit_probe`'s figures for the report (`probe_c`, `probe_selection`, `probe_selection_ua`, ...), without
        the out-of-fold scores.
    """
    collate = EmoSLLMCollator(processor)

    def batches(clips):
        return (collate(clips[i:i + 32]) for i in range(0, len(clips), 32))

    if not cs:
        raise ValueError(f"--probe_c needs at least one value of C, e.g. '{','.join(f'{c:g}' for c in PROBE_C_GRID)}'.")
    chosen = model.fit_probe(
        batches(train_clips), cs, validation_batches=batches(eval_clips) if eval_clips else None,
        groups=[c.get("group", c["speaker"]) for c in train_clips],
    )
    selection_ua = chosen["probe_selection_ua"]
    logger.info("Probe: C=%g (%s%s)", chosen["probe_c"], chosen["probe_selection"],
                "" if selection_ua is None else f", UA {selection_ua:.4f}")
    out_of_fold, folds = chosen.pop("out_of_fold_scores", None), chosen.pop("out_of_fold_folds", None)
    if out_of_fold is None:
        logger.warning("The training clips come from fewer than 2 speakers (groups): the LLM learns to read the "
                       "probe's scores on the clips it was fitted on, surer than on new voices, so the model's class "
                       "probabilities will be overconfident.")
    else:
        for clip, scores, fold in zip(train_clips, out_of_fold, folds.tolist()):
            clip["probe_scores"], clip["probe_fold"] = scores, fold
    return chosen


def hold_out_probe_fold(versions: list[list[dict]], fold: int = 0) -> tuple[list[list[dict]], list[dict]]:
    """
    Without validation speakers: the training speakers of one of the probe's cross-validation folds are held out of
    the LLM's training, as its validation speakers: `(the versions the LLM trains on, the held-out original clips)`.
    Their out-of-fold probe scores come from a probe fitted without them, and the LLM never reads them, so they
    score the LLM's answer and the probe's alike, as on new voices. The first fold's choose the saved model's best
    epoch; every fold's, each held out in turn (`--departure_folds`), how far its answer may depart from the probe
    (`choose_probe_mix_weight`). Empty when the probe had no folds (fewer than 2 speakers).

    Args:
        versions: Per training clip, its versions: the original first (with its `probe_fold` from `fit_probe`), then
            its augmented copies.
        fold: The fold held out.
    """
    if "probe_fold" not in versions[0][0]:
        return versions, []
    kept = [clip_versions for clip_versions in versions if clip_versions[0]["probe_fold"] != fold]
    held_out = [clip_versions[0] for clip_versions in versions if clip_versions[0]["probe_fold"] == fold]
    return kept, held_out


def departure_folds(versions: list[list[dict]], count: int | None, engine: str | None) -> list[int]:
    """
    The probe's cross-validation folds held out of the LLM's training in turn (`--departure_folds`), in order: the
    first one's LLM is the saved model, each further one's is trained again to score its clips. Under FSDP or
    DeepSpeed only the first (their engines wrap the model, and DeepSpeed hooks its parameters, once per Trainer, so
    the LLM is not trained again there; logged). None without folds (fewer than 2 speakers).

    Args:
        versions: Per training clip, its versions, the original first with its `probe_fold` from `fit_probe`.
        count: At most this many folds (`--departure_folds`); None: every fold.
        engine: `training.engines.requested_engine`'s answer: "fsdp", "deepspeed" or None.
    """
    folds = sorted({clip_versions[0]["probe_fold"] for clip_versions in versions if "probe_fold" in clip_versions[0]})
    folds = folds[:count]
    if len(folds) > 1 and engine:
        logger.info("Under %s only the probe's first fold decides how far the answer may depart from the probe (pass "
                    "--departure_folds 1 to say so; every fold's LLM trains in one process or under DDP).",
                    "FSDP" if engine == "fsdp" else "DeepSpeed")
        folds = folds[:1]
    return folds


# The weights of the probe's class log-probabilities in the answer that `choose_probe_mix_weight` tries: from the LLM's
# answer alone (0) to the probe's alone (1), so the chosen answer scores at least the probe on the held-out speakers.
PROBE_MIX_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
# The answer departs from the probe's evidence only where the held-out clips show that it helps beyond their sampling
# noise: the best mix must score a higher UA than the probe alone in at least this share of bootstrap resamples of the
# held-out clips, else the answer is the probe's (issue #37: a gain picked on one fold of four speakers was as often a
# loss on new speakers).
DEPARTURE_CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000


def bootstrap_ua_gain(predicted: np.ndarray, baseline: np.ndarray, label_ids: np.ndarray, seed: int = 0) -> float:
    """
    The share of `BOOTSTRAP_RESAMPLES` resamples of the clips (drawn with replacement) on which `predicted` scores a
    higher UA (the mean recall over the classes the resample holds) than `baseline`.

    Args:
        predicted, baseline: Two systems' predicted class ids of the same clips, `(clips,)`.
        label_ids: The clips' true class ids, `(clips,)`.
        seed: The resamples' random seed.
    """
    draws = np.random.default_rng(seed).integers(0, len(label_ids), (BOOTSTRAP_RESAMPLES, len(label_ids)))
    truth = label_ids[draws][..., None] == np.arange(int(label_ids.max()) + 1)  # (resamples, clips, classes)
    counts = truth.sum(1)

    def ua(hits: np.ndarray) -> np.ndarray:
        recalls = (truth & hits[draws][..., None]).sum(1) / np.maximum(counts, 1)
        return np.where(counts > 0, recalls, 0).sum(1) / (counts > 0).sum(1)

    return float((ua(predicted == label_ids) > ua(baseline == label_ids)).mean())


def chosen_mix_weight(llm: torch.Tensor, probe: torch.Tensor, label_ids: np.ndarray, names: list[str],
                      seed: int = 0) -> tuple[float, dict[float, float], float]:
    """
    The probe's weight in the answer, from held-out clips' class log-probabilities: the mix of `PROBE_MIX_WEIGHTS` with
    the best UA there (ties: the larger weight, nearer the probe), kept only where it beats the probe alone in at least
    `DEPARTURE_CONFIDENCE` of the bootstrap resamples (`bootstrap_ua_gain`); else 1, the probe's answer.

    Args:
        llm, probe: The LLM's and the probe's class log-probabilities of the held-out clips, `(clips, labels)`.
        label_ids: Their true class ids, `(clips,)`.
        names: The labels, in class-id order.
        seed: The resamples' random seed.

    Returns:
        `(weight, {weight: held-out UA of that mix}, the best mix's bootstrap share)`; the share is 0 where the best
        mix is the probe alone.
    """
    def predicted(weight: float) -> np.ndarray:
        return ((1 - weight) * llm + weight * probe).argmax(-1).numpy()

    mixes = {weight: float(compute_ser_metrics(predicted(weight), label_ids, names)["ua"])
             for weight in PROBE_MIX_WEIGHTS}
    best = max(mixes, key=lambda w: (mixes[w], w))
    confidence = 0.0 if best == 1.0 else bootstrap_ua_gain(predicted(best), predicted(1.0), label_ids, seed)
    return (best if confidence >= DEPARTURE_CONFIDENCE else 1.0), mixes, confidence


def held_out_scores(trainer, held_out: list[dict]) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """
    The trained model's class log-probabilities on held-out clips, the LLM's answer alone and the probe's (from the
    clips' out-of-fold `probe_scores` where they carry them), and the clips' class ids.

    Args:
        trainer: The SER stage's `EmoSLLMTrainer`, after training.
        held_out: The held-out clips (validation clips, or `hold_out_probe_fold`'s).

    Returns:
        `(llm (clips, labels), probe (clips, labels), label_ids (clips,))`.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.config.mapper_config["mix_weight"] = 0.0  # the answer's scores are then the LLM's alone
    prediction = trainer.predict(held_out, ignore_keys=["audio_logits"], metric_key_prefix="held_out")
    llm, probe = (torch.from_numpy(p) for p in prediction.predictions[1:3])
    return llm, probe, prediction.label_ids


def choose_probe_mix_weight(model, scores: list[tuple[torch.Tensor, torch.Tensor, np.ndarray]], where: str,
                            seed: int) -> dict:
    """
    How far the answer may depart from the probe's evidence, decided on held-out speakers (never on test): the
    LLM's and the probe's class log-probabilities of the held-out clips (`held_out_scores`; with several folds held out
    in turn, all their clips together) are mixed with each weight of `PROBE_MIX_WEIGHTS`, and the best mix is kept
    where it beats the probe beyond the noise of those clips (`chosen_mix_weight`), as
    `config.mapper_config["mix_weight"]`. Logs the LLM's and the probe's UA there, and warns when the LLM alone scores
    below its probe.

    Args:
        model: The trained model; its `mix_weight` is set here.
        scores: Per held-out set (the validation clips, or each held-out fold), `held_out_scores`'s triple.
        where: How the log and the report name those clips (e.g. "the validation speakers").
        seed: The bootstrap resamples' random seed.

    Returns:
        The figures for the report and the model card: `held_out`, `held_out_clips`, `held_out_llm_ua`,
        `held_out_probe_ua`, `held_out_answer_ua`, `held_out_departure_confidence` and `probe_mix_weight`.
    """
    llm, probe = (torch.cat([part[i] for part in scores]) for i in (0, 1))
    label_ids = np.concatenate([part[2] for part in scores])
    weight, mixes, confidence = chosen_mix_weight(llm, probe, label_ids, model.config.labels, seed)
    model.config.mapper_config["mix_weight"] = weight
    report = {"held_out": where, "held_out_clips": len(label_ids), "held_out_llm_ua": round(mixes[0.0], 4),
              "held_out_probe_ua": round(mixes[1.0], 4), "held_out_answer_ua": round(mixes[weight], 4),
              "held_out_departure_confidence": round(confidence, 3), "probe_mix_weight": weight}
    logger.info("On %s (%d clips): the LLM's answer alone UA %.4f, its probe alone %.4f, the best mix %.4f (better "
                "than the probe in %.0f%% of bootstrap resamples; kept from %.0f%%): the answer mixes in the probe's "
                "scores with weight %g (UA %.4f).", where, len(label_ids), mixes[0.0], mixes[1.0], max(mixes.values()),
                100 * confidence, 100 * DEPARTURE_CONFIDENCE, weight, mixes[weight])
    if mixes[0.0] < mixes[1.0]:
        logger.warning("The LLM's answer alone scores below the probe it reads on %s (UA %.4f < %.4f); the saved "
                       "model mixes the probe's scores into its answer (probe_mix_weight=%g, UA %.4f there).",
                       where, mixes[0.0], mixes[1.0], weight, mixes[weight])
    return report
