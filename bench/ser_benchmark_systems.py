# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""The rows of bench/ser_benchmark.py: the data split every system uses, each system's training and scoring (the
baselines: MFCC and Whisper-layer statistics with logistic regression, transformers' WhisperForAudioClassification
frozen or fine-tuned; EmoSLLM's rows through `training.recipe.train_one_split`), and one (system, seed) run in this
process (`run_one`, which bench/ser_benchmark.py starts as a child process). Its command line and report:
bench/ser_benchmark.py."""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import math
import re
import resource
import shutil
import statistics
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from unittest import mock

import numpy as np
import scipy.fft

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import datasets  # noqa: E402

import training.arguments  # noqa: E402
import training.recipe  # noqa: E402
from training.clips import decoded_clips  # noqa: E402
from training.corpora import SAMPLING_RATE  # noqa: E402
from training.data import load_corpus  # noqa: E402
from training.metrics import compute_ser_metrics, write_report  # noqa: E402
from training.splits import check_speaker_disjoint, speaker_ids, split_by_speakers  # noqa: E402

__all__ = ["BATCH_SIZE", "CALIBRATION_KEYS", "CROSS_VALIDATION_FOLDS", "DEFAULT_CS", "EMOSLLM_FLAGS",
           "ENCODER_LEARNING_RATE", "HEAD_LEARNING_RATE", "LAYERS_LR_CS", "MFCC_RECIPE", "PAPER", "WARMUP_FRACTION",
           "answer_checks", "build_whisper_classifier", "fit_and_score_lr", "load_splits", "mfcc_statistics",
           "peak_rss_mib", "pooled_encoder_output", "real_time_factor", "run_emosllm", "run_mfcc_lr", "run_one",
           "run_whisper_layers_lr", "run_whisper_linear", "score_test", "stratified_subset", "transcript_only_classes",
           "validation_history"]


# train.py flags of each EmoSLLM row, on top of train.py's defaults.
PAPER = ["--mapper_type", "qpmapper", "--encoder_layer_combination", "weighted_average"]
EMOSLLM_FLAGS = {
    "emosllm_default": [],
    "emosllm_qpmapper": PAPER,
    "emosllm_qformer": ["--mapper_type", "qformer", "--encoder_layer_combination", "weighted_average"],
    "emosllm_mlp": ["--mapper_type", "mlp", "--encoder_layer_combination", "weighted_average"],
    "emosllm_statistics": ["--mapper_type", "statistics", "--encoder_layer_combination", "weighted_average",
                           "--num_queries", "4", "--mapper_learning_rate", "1e-2", "--head_learning_rate", "1e-3"],
    "emosllm_transcript_only": [*PAPER, "--audio_loss_weight", "0"],  # no audio, no audio loss
    "emosllm_no_lora": [*PAPER, "--lora_rank", "0"],
    "emosllm_full_finetune": [*PAPER, "--language_model_training", "full", "--learning_rate", "2e-5"],
}


CROSS_VALIDATION_FOLDS = 4  # over the training speakers, where no validation speakers are given


MFCC_RECIPE = "mfcc_librosa"  # the stronger of the two MFCC recipes in BENCHMARKS.md (UA 0.465 vs 0.309)
BATCH_SIZE = 8  # training batch of the Whisper heads (train.py's default for EmoSLLM) and the RTF batch
HEAD_LEARNING_RATE = 1e-3
ENCODER_LEARNING_RATE = 3e-5
WARMUP_FRACTION = 0.1


# How far the same row's class probabilities can be trusted, from the same test pass (bench/calibration.py's figures).
CALIBRATION_KEYS = ("mean_top_probability", "share_above_0.99", "accuracy_above_0.99", "nll", "ece")


def stratified_subset(dataset: datasets.Dataset, fraction: float, seed: int = 0) -> datasets.Dataset:
    """
    `fraction` of the clips of every (speaker, label) group, at least one per group, drawn with a fixed seed; rows
    keep their order. Written by hand because scikit-learn's stratified splits need two clips per group and round
    the total rather than each group, so a speaker's rarer emotion could vanish from a small subset.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"subset fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return dataset
    groups: dict[tuple[str, str], list[int]] = {}
    for row, key in enumerate(zip(speaker_ids(dataset), dataset["label"])):
        groups.setdefault(key, []).append(row)
    rng = np.random.default_rng(seed)
    chosen = []
    for key in sorted(groups):
        rows = groups[key]
        chosen += rng.permutation(rows)[: max(1, round(fraction * len(rows)))].tolist()
    return dataset.select(sorted(chosen))


def load_splits(data_dir: str, eval_speakers: str, test_speakers: str, fraction: float = 1.0) -> datasets.DatasetDict:
    """
    `train` / `validation` / `test` of the corpus in `data_dir`: validation and test hold the named speakers, train
    every other one, each cut to `stratified_subset(fraction)`; no speaker is in two splits (checked).
    """
    eval_speakers = None if eval_speakers in (None, "", "none") else eval_speakers
    splits = split_by_speakers(load_corpus(data_dir), test_speakers=test_speakers, eval_speakers=eval_speakers)
    if "test" not in splits or (eval_speakers is not None and "validation" not in splits):
        raise ValueError("the benchmark needs test speakers (--test_speakers) and the named validation speakers")
    splits = datasets.DatasetDict({name: stratified_subset(split, fraction) for name, split in splits.items()})
    check_speaker_disjoint(splits)
    return splits


def real_time_factor(predict: Callable[[list[dict]], object], clips: list[dict]) -> dict:
    """
    Inference speed of `predict(batch_of_clips)` over `clips` in batches of `BATCH_SIZE`: processing seconds
    (everything `predict` does: features, prompt, model; decoding is done beforehand) / seconds of audio. The first
    batch is run once untimed as a warm-up.
    """
    batches = [clips[start:start + BATCH_SIZE] for start in range(0, len(clips), BATCH_SIZE)]
    predict(batches[0])
    started = time.perf_counter()
    for batch in batches:
        predict(batch)
    seconds = time.perf_counter() - started
    audio_seconds = sum(len(c["audio"]) for c in clips) / SAMPLING_RATE
    return {"real_time_factor": seconds / audio_seconds, "processing_seconds": seconds, "audio_seconds": audio_seconds,
            "clips": len(clips), "batch_size": BATCH_SIZE}


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (`ru_maxrss`, KiB on Linux) in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def score_test(predicted: Sequence, references: Sequence, labels: list[str], run_dir: Path) -> dict:
    """`compute_ser_metrics` on the test clips, also written to `run_dir/test_report.json`."""
    metrics = compute_ser_metrics(predicted, references, labels)
    write_report(metrics, run_dir / "test_report.json")
    return metrics


def run_mfcc_lr(clips: dict[str, list[dict]], labels: list[str], run_dir: Path) -> dict:
    """MFCC statistics + logistic regression: C by validation UA (fit on train), refit on train + validation."""
    def features(batch: list[dict]) -> np.ndarray:
        return np.stack([mfcc_statistics(c["audio"], MFCC_RECIPE) for c in batch])

    started = time.perf_counter()
    x = {name: features(split) for name, split in clips.items()}
    feature_seconds = time.perf_counter() - started
    return fit_and_score_lr(x, clips, labels, DEFAULT_CS, run_dir, features, feature_seconds)


def fit_and_score_lr(x: dict, clips: dict, labels: list[str], cs, run_dir: Path, features, feature_seconds) -> dict:
    """
    StandardScaler + LogisticRegression on the features `x[split]`: C by validation UA (fit on train; then refit on
    train + validation), or without validation speakers by GroupKFold cross-validation over the training speakers
    (then fit on train). Scored once on test; `features(batch)` times the inference.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(x_fit: np.ndarray, y_fit: np.ndarray, c: float):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000)).fit(x_fit, y_fit)

    def ua(model, x_score, y_score) -> float:
        return compute_ser_metrics(model.predict(x_score), y_score, labels)["ua"]

    y = {name: np.array([c["label"] for c in split]) for name, split in clips.items()}
    started = time.perf_counter()
    if "validation" in clips:
        selection_ua = {c: ua(fit(x["train"], y["train"], c), x["validation"], y["validation"]) for c in cs}
        x_final, y_final = np.concatenate([x["train"], x["validation"]]), np.concatenate([y["train"], y["validation"]])
        how = "validation UA; final fit on train + validation"
    else:
        groups = np.array([c["speaker"] for c in clips["train"]])
        folds = list(GroupKFold(n_splits=CROSS_VALIDATION_FOLDS).split(x["train"], y["train"], groups))
        selection_ua = {c: float(np.mean([ua(fit(x["train"][a], y["train"][a], c), x["train"][b], y["train"][b])
                                          for a, b in folds])) for c in cs}
        x_final, y_final = x["train"], y["train"]
        how = f"{CROSS_VALIDATION_FOLDS}-fold cross-validation over the training speakers; final fit on train"
    best_c = max(cs, key=lambda c: (selection_ua[c], -c))  # ties: the stronger regularization
    final = fit(x_final, y_final, best_c)
    train_seconds = time.perf_counter() - started

    metrics = score_test(final.predict(x["test"]), y["test"], labels, run_dir)
    classifier = final[-1]
    parameters = int(classifier.coef_.size + classifier.intercept_.size)  # the scaler's statistics are not counted
    return {
        **metrics, "trainable_parameters": parameters, "total_parameters": parameters,
        "train_seconds": train_seconds, "feature_seconds": feature_seconds,
        "speed": real_time_factor(lambda batch: final.predict(features(batch)), clips["test"]),
        "selection": {"C": best_c, "selection_ua_by_C": {str(c): u for c, u in selection_ua.items()}, "how": how},
    }


# The C values the every-layer regression tries: train.py's default --probe_c and a decade on each side.
LAYERS_LR_CS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1)


def run_whisper_layers_lr(clips: dict[str, list[dict]], labels: list[str], audio_encoder: str, run_dir: Path) -> dict:
    """The frozen encoder's every layer, mean+std over each clip's valid frames side by side; logistic regression."""
    import torch

    _, runner, feature_extractor = build_whisper_classifier(audio_encoder, labels, freeze_encoder=True)
    runner.eval()

    @torch.no_grad()
    def features(batch: list[dict]) -> np.ndarray:
        from processing_emosllm import EmoSLLMProcessor

        owner = types.SimpleNamespace(config=runner.config, feature_extractor=feature_extractor,
                                  pad_audio_to_max_length=False)
        rows = []
        for start in range(0, len(batch), 16):
            audios = [c["audio"] for c in batch[start:start + 16]]
            inputs = EmoSLLMProcessor.audio_features(owner, audios)
            states = runner.layer_states(inputs["input_features"], inputs["audio_lengths"])  # (b, layers, t, d)
            mask = runner.frame_mask(inputs["audio_lengths"], states.shape[2])[:, None, :, None].float()
            mean = (states * mask).sum(2) / mask.sum(2)
            std = (((states - mean[:, :, None]) ** 2 * mask).sum(2) / mask.sum(2)).sqrt()
            rows.append(torch.cat([mean, std], dim=-1).flatten(1).numpy())
        return np.concatenate(rows)

    started = time.perf_counter()
    x = {name: features(split) for name, split in clips.items()}
    feature_seconds = time.perf_counter() - started
    return fit_and_score_lr(x, clips, labels, LAYERS_LR_CS, run_dir, features, feature_seconds)


def build_whisper_classifier(audio_encoder: str, labels: list[str], freeze_encoder: bool):
    """
    transformers' `WhisperForAudioClassification` (new `projector` and `classifier`) holding the pretrained encoder
    of `audio_encoder`, an `EmoSLLMAudioEncoder` that runs that same encoder module on each clip's own length, and
    the encoder's feature extractor.
    """
    import torch
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, WhisperForAudioClassification

    from backbones_emosllm import resolve_pretrained
    from configuration_emosllm import EmoSLLMConfig
    from audio_embeddings_emosllm import EmoSLLMAudioEncoder

    path = resolve_pretrained(audio_encoder)
    config = AutoConfig.from_pretrained(path, num_labels=len(labels), id2label=dict(enumerate(labels)),
                                        label2id={label: i for i, label in enumerate(labels)})
    if config.model_type != "whisper":
        raise ValueError(f"the whisper_linear systems need a Whisper encoder, {audio_encoder} is {config.model_type}")
    model = WhisperForAudioClassification(config)
    model.encoder.load_state_dict(AutoModel.from_pretrained(path, dtype=torch.float32).get_encoder().state_dict())
    if freeze_encoder:
        model.freeze_encoder()
    # A copy of the config for EmoSLLMConfig: wrapping the model's own config object would reset its attention
    # implementation (docs/experiment-log.md, the encoder padding measurements). The runner then uses the model's
    # encoder module itself, so there is one set of encoder weights, counted and trained as part of the HF model.
    runner = EmoSLLMAudioEncoder(EmoSLLMConfig(audio_config=copy.deepcopy(config)))
    runner.encoder = model.encoder
    return model, runner, AutoFeatureExtractor.from_pretrained(path)


def pooled_encoder_output(runner, feature_extractor, audios: list[np.ndarray]):
    """
    `(batch, 1, d_model)`: the encoder's last layer on the clips' own length, averaged over each clip's valid frames.
    Passed to `WhisperForAudioClassification.forward` as `encoder_outputs`, its projector, mean over this one frame
    and classifier give exactly HF's projector-then-mean over the valid frames (the projector is affine, so it
    commutes with the mean), without padding frames in the mean.
    """
    from processing_emosllm import EmoSLLMProcessor

    # The processor's own feature step; it reads only `feature_extractor` and the padding setting (no tokenizer).
    owner = types.SimpleNamespace(feature_extractor=feature_extractor, pad_audio_to_max_length=False)
    features = EmoSLLMProcessor.audio_features(owner, audios)
    last = runner.layer_states(features["input_features"], features["audio_lengths"])[:, -1]
    mask = runner.frame_mask(features["audio_lengths"], last.shape[1]).to(last.dtype)[..., None]
    return ((last * mask).sum(dim=1) / mask.sum(dim=1))[:, None]


def run_whisper_linear(
    clips: dict[str, list[dict]], labels: list[str], audio_encoder: str, epochs: int, seed: int, finetune: bool,
    run_dir: Path,
) -> dict:
    """
    HF's audio-classification recipe on the Whisper encoder, trained with a plain torch loop (a Trainer would have to
    save a model whose encoder module is shared with the runner). Frozen: the pooled encoder outputs are computed
    once. Model selection: the epoch with the best validation UA.
    """
    import torch
    from transformers import get_scheduler, set_seed

    set_seed(seed)
    model, runner, feature_extractor = build_whisper_classifier(audio_encoder, labels, freeze_encoder=not finetune)
    label_ids = {label: i for i, label in enumerate(labels)}
    targets = {name: torch.tensor([label_ids[c["label"]] for c in split]) for name, split in clips.items()}

    cached, feature_seconds = {}, None
    if not finetune:
        started = time.perf_counter()
        with torch.no_grad():
            cached = {name: torch.cat([pooled_encoder_output(runner, feature_extractor, [c["audio"] for c in chunk])
                                       for chunk in (split[i:i + 16] for i in range(0, len(split), 16))])
                      for name, split in clips.items()}
        feature_seconds = time.perf_counter() - started

    def encoder_output(split: str, rows: torch.Tensor):
        if cached:
            return cached[split][rows]
        return pooled_encoder_output(runner, feature_extractor, [clips[split][i]["audio"] for i in rows.tolist()])

    @torch.inference_mode()
    def predict(split: str) -> np.ndarray:
        model.eval()
        rows = torch.arange(len(clips[split]))
        return torch.cat([model(encoder_outputs=(encoder_output(split, chunk),)).logits.argmax(-1)
                          for chunk in rows.split(16)]).numpy()

    groups = [{"params": [*model.projector.parameters(), *model.classifier.parameters()], "lr": HEAD_LEARNING_RATE}]
    if finetune:
        groups.append({"params": list(model.encoder.parameters()), "lr": ENCODER_LEARNING_RATE})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)  # TrainingArguments' default weight decay
    total_steps = epochs * math.ceil(len(clips["train"]) / BATCH_SIZE)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=round(WARMUP_FRACTION * total_steps),
                              num_training_steps=total_steps)
    generator = torch.Generator().manual_seed(seed)
    history, best_ua, best_epoch, best_state = [], -1.0, 0, None
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        losses = []
        for rows in torch.randperm(len(clips["train"]), generator=generator).split(BATCH_SIZE):
            loss = model(encoder_outputs=(encoder_output("train", rows),), labels=targets["train"][rows]).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        ua = None  # without validation speakers, the last epoch is kept
        if "validation" in clips:
            ua = compute_ser_metrics(predict("validation"), targets["validation"].numpy(), labels)["ua"]
        history.append({"epoch": epoch, "validation_ua": ua, "train_loss": statistics.fmean(losses)})
        if ua is None or ua > best_ua:
            best_ua, best_epoch = ua, epoch
            best_state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    train_seconds = time.perf_counter() - started
    model.load_state_dict(best_state)

    metrics = score_test(predict("test"), targets["test"].numpy(), labels, run_dir)

    @torch.inference_mode()
    def classify(batch: list[dict]) -> torch.Tensor:
        output = pooled_encoder_output(runner, feature_extractor, [c["audio"] for c in batch])
        return model(encoder_outputs=(output,)).logits.argmax(-1)

    model.eval()
    return {
        **metrics,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": train_seconds, "feature_seconds": feature_seconds,
        "speed": real_time_factor(classify, clips["test"]),
        "selection": {"best_epoch": best_epoch, "validation_ua": best_ua, "epochs": history,
                      "learning_rates": {"head": HEAD_LEARNING_RATE,
                                         "encoder": ENCODER_LEARNING_RATE if finetune else None}},
    }


def transcript_only_classes():
    """
    The `emosllm_transcript_only` ablation: a processor whose prompt has no audio line and a model whose audio
    embeddings are empty, so the LLM sees the transcript and the task only. It lives in the bench, not in the model
    code, because it is an experiment, not a configuration anyone would ship. The audio path's weights stay in the
    model (counted in its total) but are frozen, as they get no input.
    """
    import torch

    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
    from processing_emosllm import EmoSLLMProcessor

    # `_auto_class = None`: these classes are for this benchmark only, so `save_pretrained` copies no code for them
    # (transformers could not: it skips classes defined in `__main__`, then fails cleaning up after the tokenizer).
    class TranscriptOnlyProcessor(EmoSLLMProcessor):
        _auto_class = None

        def build_prompt(self, num_samples, transcript=None, text_features=None, task="ser") -> str:
            prompt = super().build_prompt(num_samples, transcript, text_features, task)
            # Drop the run of placeholders (they open the answer) and the user turn's "Speech:" line.
            prompt = re.sub(rf"(?:{re.escape(self.audio_token)})+", "", prompt, count=1)
            return prompt.replace("\nSpeech:", "", 1)

    class TranscriptOnlyEmoSLLM(EmoSLLMForSpeechEmotionRecognition):
        _auto_class = None

        def freeze_backbones(self) -> None:
            super().freeze_backbones()
            for param in [*self.audio_encoder.parameters(), *self.mapper.parameters()]:
                param.requires_grad_(False)

        def get_audio_embeddings(self, audio_lengths, input_features=None, encoder_layer_states=None,
                                 return_probe_scores=False):
            batch = audio_lengths.shape[0]
            embeddings = torch.zeros(batch, 0, self.config.text_config.hidden_size, device=audio_lengths.device)
            mask = torch.zeros(batch, 0, dtype=torch.bool, device=audio_lengths.device)
            return (embeddings, mask, None) if return_probe_scores else (embeddings, mask)

    return TranscriptOnlyProcessor, TranscriptOnlyEmoSLLM


def validation_history(checkpoints: Path) -> dict:
    """Validation UA after each epoch and the best one, from the Trainer state of the newest checkpoint."""
    states = sorted(checkpoints.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not states:
        return {}
    state = json.loads(states[-1].read_text())
    epochs = [{"epoch": entry["epoch"], "validation_ua": entry["eval_ua"]}
              for entry in state["log_history"] if "eval_ua" in entry]
    return {"validation_ua": state.get("best_metric"), "epochs": epochs}


def run_emosllm(
    system: str, clips_test: list[dict], splits: datasets.DatasetDict, labels: list[str], settings: dict, seed: int,
    run_dir: Path,
) -> dict:
    """
    One EmoSLLM row: `training.recipe.train_one_split` with train.py's defaults plus the row's flags; then the saved
    folder is loaded back for the parameter counts and the speed on the test clips.
    """
    import torch

    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
    from processing_emosllm import EmoSLLMProcessor

    argv = [
        "--output_dir", str(run_dir), "--data_dir", settings["data_dir"], "--labels", ",".join(labels),
        "--audio_encoder", settings["audio_encoder"], "--llm", settings["llm"], "--seed", str(seed),
        "--num_train_epochs", str(settings["epochs"]), "--disable_tqdm", "true",
        "--encoder_cache_dir", str(Path(settings["out"]) / "encoder_cache"), *EMOSLLM_FLAGS[system],
    ]
    model_args, data_args, training_args = training.arguments.parse_args(argv)
    processor_class, model_class = EmoSLLMProcessor, EmoSLLMForSpeechEmotionRecognition
    with contextlib.ExitStack() as patches:
        if system == "emosllm_transcript_only":
            processor_class, model_class = transcript_only_classes()
            # training.recipe builds its model from these module-level names; this child process runs only this row.
            patches.enter_context(mock.patch.object(training.recipe, "EmoSLLMProcessor", processor_class))
            patches.enter_context(mock.patch.object(training.recipe, "EmoSLLMForSpeechEmotionRecognition", model_class))
            # Its saved folder has no code of its own (the classes live here), so no pipeline can load it to re-score.
            patches.enter_context(mock.patch.object(training.recipe, "check_delivered_score", lambda *args: None))
        metrics = training.recipe.train_one_split(model_args, data_args, training_args, splits, run_dir)
    gc.collect()  # the trained model and its Trainer are gone; free them before loading the saved copy
    selection = validation_history(run_dir / "checkpoints")

    processor = processor_class.from_pretrained(run_dir, trust_remote_code=True)  # the folder this run just wrote
    model = model_class.from_pretrained(run_dir).eval()
    trainable, total = model.trainable_parameters()

    @torch.inference_mode()
    def classify(batch: list[dict]) -> torch.Tensor:
        inputs = processor([c["audio"] for c in batch], transcript=[c["transcript"] for c in batch])
        return model(**inputs).logits.argmax(-1)

    speed = real_time_factor(classify, clips_test)
    answers = answer_checks(model, processor, clips_test, labels) if system == "emosllm_default" else {}
    # The weights (and the checkpoints, with optimizer state) are large and not needed for the report.
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    for weights in run_dir.glob("*.safetensors"):
        weights.unlink()
    return {
        **metrics, **answers, "trainable_parameters": trainable, "total_parameters": total, "speed": speed,
        "selection": selection, "train_py_arguments": argv,
    }


def answer_checks(model, processor, clips: list[dict], labels: list[str]) -> dict:
    """
    On the test clips: how often the LLM's free answer (`generate(constrain_to_labels=False)`, greedy) is the class
    its scores rank first (`generate_agreement`), the test UA with the true transcripts against none in the
    prompt (`ua_no_transcript`; `use_transcript="none"` for this pass), and the calibration of its class
    probabilities (`CALIBRATION_KEYS`, bench/calibration.py's `calibration`).
    """
    import torch
    from calibration import calibration

    ranked, free, ranked_without, probabilities = [], [], [], []
    use_transcript = processor.use_transcript
    with torch.inference_mode():
        for start in range(0, len(clips), BATCH_SIZE):
            batch = clips[start:start + BATCH_SIZE]
            inputs = processor([c["audio"] for c in batch], transcript=[c["transcript"] for c in batch])
            logits = model(**inputs).logits.float()
            ranked += logits.argmax(-1).tolist()
            probabilities.append(logits.softmax(-1).double().numpy())
            tokens = model.generate(**inputs, constrain_to_labels=False, max_new_tokens=8, do_sample=False)
            free += [text.strip().lower() for text in processor.batch_decode(tokens, skip_special_tokens=True)]
            processor.use_transcript = "none"
            try:
                ranked_without += model(**processor([c["audio"] for c in batch])).logits.argmax(-1).tolist()
            finally:
                processor.use_transcript = use_transcript
    names = model.config.labels
    agreement = float(np.mean([answer == names[i] for answer, i in zip(free, ranked)]))
    references = [c["label"] for c in clips]
    calibrated = calibration(np.concatenate(probabilities), np.array([names.index(r) for r in references]))
    return {
        **{key: calibrated[key] for key in CALIBRATION_KEYS},
        "generate_agreement": agreement,
        "free_answers": {str(k): int(v) for k, v in zip(*np.unique(free, return_counts=True))} if free else {},
        "ua_with_transcript": compute_ser_metrics([names[i] for i in ranked], references, labels)["ua"],
        "ua_no_transcript": compute_ser_metrics([names[i] for i in ranked_without], references, labels)["ua"],
    }


def run_one(system: str, seed: int, settings: dict, run_dir: Path) -> dict:
    """Train and score `system` with `seed`; returns its result (metrics, sizes, times, speed, peak memory)."""
    import logging

    import torch
    from threadpoolctl import threadpool_limits


    started = time.perf_counter()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    torch.set_num_threads(settings["threads"])
    run_dir.mkdir(parents=True, exist_ok=True)
    with threadpool_limits(settings["threads"]):
        splits = load_splits(settings["data_dir"], settings["eval_speakers"], settings["test_speakers"],
                             settings["subset_fraction"])
        labels = sorted({label for split in splits.values() for label in split["label"]})
        if system in EMOSLLM_FLAGS:
            result = run_emosllm(system, decoded_clips(splits["test"]), splits, labels, settings, seed, run_dir)
        else:
            clips = {name: decoded_clips(split) for name, split in splits.items()}
            if system == "mfcc_lr":
                result = run_mfcc_lr(clips, labels, run_dir)
            elif system == "whisper_layers_lr":
                result = run_whisper_layers_lr(clips, labels, settings["audio_encoder"], run_dir)
            else:
                result = run_whisper_linear(clips, labels, settings["audio_encoder"], settings["epochs"], seed,
                                            finetune=system == "whisper_linear_finetuned", run_dir=run_dir)
    result.update({
        "system": system, "seed": seed, "settings": settings, "labels": labels,
        "real_time_factor": result["speed"]["real_time_factor"], "peak_rss_mib": peak_rss_mib(),
        "wall_seconds": time.perf_counter() - started, "torch_threads": torch.get_num_threads(),
    })
    return result


# The C values the MFCC regression tries (chosen by validation UA).
DEFAULT_CS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)


def mfcc_statistics(audio: np.ndarray, recipe: str, n_mfcc: int = 40) -> np.ndarray:
    """MFCC statistics of one 16 kHz clip.

    `mfcc_librosa`: `librosa.feature.mfcc(y, sr=16000, n_mfcc=40)` with librosa's defaults (2048-point periodic Hann
    frames, hop 512, centred with zero padding, power spectrum, 128 Slaney-normalised Slaney-scale mel bands 0-8 kHz,
    `power_to_db(ref=1, amin=1e-10, top_db=80)`, orthonormal DCT-II); mean and std over frames: `(2 * n_mfcc,)`.
    `mfcc_speech`: 25 ms Hann frames, 10 ms hop, 512-point FFT, 40 HTK mel bands 20 Hz-8 kHz, natural log (floor
    1e-10), orthonormal DCT-II, plus deltas; mean and std over frames of both: `(4 * n_mfcc,)`."""
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    if recipe == "mfcc_librosa":
        mel_filters = mel_filter_bank(
            num_frequency_bins=1025, num_mel_filters=128, min_frequency=0.0, max_frequency=SAMPLING_RATE / 2,
            sampling_rate=SAMPLING_RATE, norm="slaney", mel_scale="slaney",
        )
        log_mel = spectrogram(
            audio.astype(np.float64), window_function(2048, "hann"), frame_length=2048, hop_length=512,
            fft_length=2048, power=2.0, pad_mode="constant", mel_filters=mel_filters, log_mel="dB",
            reference=1.0, min_value=1e-10, db_range=80.0,
        )  # (n_mels, frames)
        mfcc = scipy.fft.dct(log_mel, type=2, axis=0, norm="ortho")[:n_mfcc]
        return np.concatenate([mfcc.mean(1), mfcc.std(1)]).astype(np.float32)
    mel_filters = mel_filter_bank(
        num_frequency_bins=257, num_mel_filters=40, min_frequency=20.0, max_frequency=8000.0,
        sampling_rate=SAMPLING_RATE, norm=None, mel_scale="htk",
    )
    log_mel = spectrogram(
        audio.astype(np.float64), window_function(400, "hann"), frame_length=400, hop_length=160, fft_length=512,
        power=2.0, mel_filters=mel_filters, log_mel="log", mel_floor=1e-10,
    )
    mfcc = scipy.fft.dct(log_mel, type=2, axis=0, norm="ortho")[:n_mfcc]
    delta = np.gradient(mfcc, axis=1)
    return np.concatenate([mfcc.mean(1), mfcc.std(1), delta.mean(1), delta.std(1)]).astype(np.float32)
