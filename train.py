# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
Fine-tune and evaluate EmoSLLM on emotional speech with transformers' Trainer (and so Accelerate).

    python train.py                                    # offline smoke run: generated corpus, default backbones
    python train.py --data_dir ../shared/data/ravdess --test_speakers 17-20 --eval_speakers 13-16
    accelerate launch --num_processes 2 train.py ...  # several processes (CPU: gloo; GPUs: NCCL)

Stages (as in the paper): an optional ASR stage (`--asr_epochs`) where the LLM writes the transcript, then the SER
stage where it names the emotion. The frozen audio encoder's outputs are computed once and cached on disk.
"""

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from scipy.signal import resample_poly
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from backbones_emosllm import default_cache_dir, resolve_pretrained
from configuration_emosllm import DEFAULT_PROMPT
from data_emosllm import (
    SAMPLING_RATE,
    compute_ser_metrics,
    load_corpus,
    load_hub_dataset,
    make_smoke_corpus,
    save_confusion_matrix,
    speaker_folds,
    speaker_ids,
    speaker_sort_key,
    split_by_speakers,
    write_report,
)
from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition, pooled_statistics
from processing_emosllm import EmoSLLMProcessor

logger = logging.getLogger("emosllm.train")

SMOKE_DIR = Path(__file__).resolve().parent / "data" / "smoke"


@dataclass
class ModelArguments:
    audio_encoder: str = field(default="openai/whisper-tiny.en", metadata={"help": "Hub id or folder of the encoder."})
    llm: str = field(default="HuggingFaceTB/SmolLM2-135M-Instruct", metadata={"help": "Hub id or folder of the LLM."})
    adapter_type: str = field(
        default="qpmapper",
        metadata={"help": "qpmapper | qformer | mlp | statistics | probe. On RAVDESS-sized data: probe, with "
                  "--encoder_layer_combination concatenate --num_train_epochs 4 (BENCHMARKS.md)."},
    )
    encoder_layer_combination: str = field(
        default="weighted_average",
        metadata={"help": "weighted_average (learned) | concatenate (every encoder layer side by side)."},
    )
    probe_c: str = field(
        default="0.001,0.003,0.01,0.03",
        metadata={"help": "The probe interface: inverse L2 strengths (scikit-learn's C) to try; the one with the best "
                  "validation UA is kept (without validation speakers: the median)."},
    )
    num_queries: int = field(
        default=32,
        metadata={"help": "qpmapper: learned queries (the paper: 32); statistics: audio embeddings (its recipe: 4)."},
    )
    adapter_hidden_size: int = field(
        default=256,
        metadata={"help": "Width of the qpmapper/Q-Former transformer and of the MLP. The paper's 768 scored the "
                  "same on RAVDESS with 4x the trainable parameters (BENCHMARKS.md)."},
    )
    lora_rank: int = field(default=8, metadata={"help": "0 trains the interface only."})
    lora_alpha: int = field(default=16)
    freeze_language_model: bool = field(
        default=True, metadata={"help": "False (with --lora_rank 0): fine-tune all LLM weights instead of LoRA."}
    )
    adapter_learning_rate: float = field(
        default=1e-3, metadata={"help": "Learning rate of the interface; --learning_rate is the LLM's (LoRA)."}
    )
    head_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the encoder's layer weights and the class heads (default: "
                  "--adapter_learning_rate). The statistics interface: --adapter_learning_rate 1e-2 with 1e-3 here."},
    )
    classifier: str = field(default="verbalizer", metadata={"help": "verbalizer | linear"})
    audio_loss_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of the auxiliary emotion loss on the mean audio embedding (0: off; BENCHMARKS.md)."},
    )
    use_transcript: str = field(default="given", metadata={"help": "given | auto (ASR for missing) | none"})
    prompt: str = field(default=DEFAULT_PROMPT)
    backbone_cache_dir: str | None = field(default=None, metadata={"help": "Where converted backbones live."})


@dataclass
class DataArguments:
    data_dir: str | None = field(
        default=None,
        metadata={"help": "A corpus folder (manifest.csv, or RAVDESS/CREMA-D/TESS/EmoDB names). Default: the "
                  "generated smoke corpus."},
    )
    dataset_name: str | None = field(default=None, metadata={"help": "A `datasets` dataset (Hub id or folder)."})
    dataset_split: str = field(default="train")
    audio_column: str = field(default="audio")
    label_column: str = field(default="label")
    transcript_column: str | None = field(default=None)
    speaker_column: str | None = field(default=None)
    labels: str | None = field(default=None, metadata={"help": "Comma-separated label set (default: the data's)."})
    test_speakers: str | None = field(default=None, metadata={"help": "e.g. '17-20'; default: the last 20%%."})
    eval_speakers: str | None = field(default=None, metadata={"help": "e.g. '13-16'; default: the 10%% before."})
    folds: int = field(default=0, metadata={"help": "K>1: leave-speakers-out cross-validation instead."})
    speed_perturbation: str = field(
        default="",
        metadata={"help": "Comma-separated speed factors, e.g. '0.9,0.95,1.05,1.1': each training clip also gets a "
                  "copy resampled by each (tempo and pitch change together). Empty (default): none."},
    )
    noise_snr_db: str = field(
        default="",
        metadata={"help": "Comma-separated SNRs in dB, e.g. '20,10': each training clip also gets a copy with white "
                  "noise at each. Empty (default): none."},
    )
    asr_epochs: float = field(default=0.0, metadata={"help": "Epochs of the ASR stage before SER (0: none)."})
    encoder_cache_dir: str | None = field(default=None, metadata={"help": "Cache of frozen-encoder outputs."})
    resume: bool = field(default=False, metadata={"help": "Resume from the last checkpoint in output_dir."})


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """The command line (or `argv`) with this script's defaults."""
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    # Defaults that fit this model on a CPU; every TrainingArguments flag still works.
    parser.set_defaults(
        output_dir="outputs/emosllm", per_device_train_batch_size=8, per_device_eval_batch_size=16,
        learning_rate=5e-4, num_train_epochs=5, lr_scheduler_type="cosine", warmup_steps=0.1, weight_decay=0.01,
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=2, logging_steps=10, report_to="none",
        remove_unused_columns=False, label_names=["labels"], seed=42, dataloader_num_workers=0,
        bf16=True, use_cpu=not torch.cuda.is_available(), metric_for_best_model="ua", greater_is_better=True,
    )
    return parser.parse_args_into_dataclasses(args=argv)


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------
def load_data(args: DataArguments):
    labels = args.labels.split(",") if args.labels else None
    if args.dataset_name:
        return load_hub_dataset(
            args.dataset_name, args.dataset_split, args.audio_column, args.label_column, args.transcript_column,
            args.speaker_column,
        )
    data_dir = args.data_dir or make_smoke_corpus(SMOKE_DIR)
    return load_corpus(data_dir, labels)


def default_speaker_split(dataset) -> tuple[list[str], list[str]]:
    """Last 20% of speakers (at least one) for test, the 10% before (at least one) for validation."""
    speakers = sorted(set(speaker_ids(dataset)), key=speaker_sort_key)
    if len(speakers) < 3:
        raise ValueError(f"Speaker-independent splits need at least 3 speakers; the data has {speakers}.")
    num_test = max(1, round(0.2 * len(speakers)))
    num_eval = max(1, round(0.1 * len(speakers)))
    return speakers[-num_test:], speakers[-num_test - num_eval:-num_test]


def decoded_clips(dataset) -> list[dict]:
    """Rows as dicts with a float32 16 kHz mono `audio` array (decoded once through `datasets.Audio`)."""
    clips = []
    for row in dataset:
        samples = row["audio"].get_all_samples()
        clips.append({
            "audio": samples.data.mean(dim=0).numpy().astype(np.float32),
            "label": row["label"],
            "speaker": row["speaker"],
            "transcript": row.get("transcript"),
            "text_features": {},  # other columns (gender, intensity, ...) are not given to the model by default
        })
    return clips


def parse_floats(text: str, name: str) -> list[float]:
    try:
        return [float(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise ValueError(f"--{name} takes comma-separated numbers, e.g. '0.9,1.1'; got {text!r}.") from None


def augmented_copies(clip: dict, speeds: list[float], snrs_db: list[float], max_samples: int) -> list[dict]:
    """
    Copies of a training clip: speed perturbation (the audio resampled by each factor, so tempo and pitch change
    together, as Kaldi's recipes do; a slowed copy is cut at `max_samples`) and white noise at each SNR. The noise is
    seeded by the clip's own samples, so a copy is the same in every run and the encoder cache finds it. Written by
    hand: these are two lines on scipy's polyphase resampler, where torchaudio would be one more pinned dependency.
    """
    audio = clip["audio"]
    copies = []
    for speed in speeds:
        if speed <= 0:
            raise ValueError(f"--speed_perturbation factors must be positive; got {speed}.")
        ratio = Fraction(1 / speed).limit_denominator(100)
        resampled = resample_poly(audio, ratio.numerator, ratio.denominator)[:max_samples]
        copies.append(dict(clip, audio=resampled.astype(np.float32)))
    rng = np.random.default_rng(int.from_bytes(hashlib.sha1(audio.tobytes()).digest()[:8], "little"))
    power = float(np.mean(audio.astype(np.float64) ** 2))
    for snr in snrs_db:
        noise = rng.standard_normal(len(audio)) * np.sqrt(power / 10 ** (snr / 10))
        copies.append(dict(clip, audio=(audio + noise).astype(np.float32)))
    for copy in copies:
        copy.pop("states", None)
    return copies


class AugmentedClips(torch.utils.data.Dataset):
    """
    The training clips, each read as one of its versions (the original or an augmented copy), drawn anew every epoch.
    The draw depends only on the seed, the epoch and the clip, so a resumed run reads the same versions as an
    uninterrupted one; `EpochCallback` tells the dataset the epoch.
    """

    def __init__(self, versions: list[list[dict]], seed: int):
        self.versions, self.seed, self.epoch = versions, seed, 0

    def __len__(self) -> int:
        return len(self.versions)

    def __getitem__(self, index: int) -> dict:
        versions = self.versions[index]
        if len(versions) == 1:  # no augmentation: nothing to draw
            return versions[0]
        return versions[np.random.default_rng([self.seed, self.epoch, index]).integers(len(versions))]


class EpochCallback(TrainerCallback):
    """
    Sets `AugmentedClips.epoch` at every epoch's start (also when a run resumes in the middle of one). A callback and
    not `Dataset.set_epoch`: Accelerate forwards `set_epoch` to the dataset only when the sampler has none, which
    does not hold under `accelerate launch`.
    """

    def __init__(self, dataset: AugmentedClips):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.epoch = int(state.epoch or 0)


class EncoderStateCache:
    """
    The frozen audio encoder's per-layer outputs, computed once per clip and kept on disk as safetensors, keyed on
    the audio's bytes and the encoder (its name and config). Written by hand: `datasets.map` would store these
    `(layers, frames, hidden)` tensors in Arrow, several times larger and slower to read back than one file per clip.
    """

    def __init__(
        self, model: EmoSLLMForSpeechEmotionRecognition, processor: EmoSLLMProcessor, root: str | Path | None = None
    ):
        """`root`: the cache folder (`--encoder_cache_dir`); None: `encoder_states` under the backbone cache."""
        self.model, self.processor = model, processor
        root = Path(root) if root else Path(default_cache_dir()) / "encoder_states"
        encoder_key = json.dumps(
            [model.config.audio_config.to_dict(), model.config.pad_audio_to_max_length], sort_keys=True, default=str
        )
        self.root = root / hashlib.sha1(encoder_key.encode()).hexdigest()[:16]
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, audio: np.ndarray) -> Path:
        return self.root / f"{hashlib.sha1(audio.tobytes()).hexdigest()}.safetensors"

    @torch.no_grad()
    def fill(self, clips: list[dict], batch_size: int = 16) -> None:
        """Compute and store the states of every clip not cached yet; attach them as `clip["states"]` (fp16)."""
        todo = [c for c in clips if not self.path(c["audio"]).exists()]
        todo.sort(key=lambda c: len(c["audio"]))
        encoder = self.model.audio_encoder
        started = time.time()
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            features = self.processor.audio_features([c["audio"] for c in chunk])
            states = encoder.layer_states(features["input_features"], features["audio_lengths"])
            for clip, clip_states in zip(chunk, states):
                frames = self.model.config.num_encoder_frames(len(clip["audio"]))
                save_file({"states": clip_states[:, :frames].half().contiguous()}, str(self.path(clip["audio"])))
        if todo:
            logger.info("Encoded %d clips in %.1f s (cache: %s)", len(todo), time.time() - started, self.root)
        for clip in clips:
            clip["states"] = load_file(str(self.path(clip["audio"])))["states"]


def padded_states(clips: list[dict]) -> torch.Tensor:
    """Cached encoder states, zero-padded to the longest clip: `(batch, num_layers + 1, frames, encoder_hidden)`."""
    longest = max(c["states"].shape[1] for c in clips)
    return torch.stack([F.pad(c["states"].float(), (0, 0, 0, longest - c["states"].shape[1])) for c in clips])


@dataclass
class EmoSLLMCollator:
    """Clips -> model inputs: the processor's prompt, cached encoder states padded to the longest clip, labels."""

    processor: EmoSLLMProcessor
    task: str = "ser"

    def __call__(self, clips: list[dict]) -> dict[str, torch.Tensor]:
        lengths = [len(c["audio"]) for c in clips]
        batch = self.processor.text_inputs(
            lengths, [c["transcript"] for c in clips], [c["text_features"] for c in clips], task=self.task
        )
        batch["audio_lengths"] = torch.tensor(lengths)
        if "states" in clips[0]:
            batch["encoder_layer_states"] = padded_states(clips)
        else:
            batch.update(self.processor.audio_features([c["audio"] for c in clips]))
        if "probe_scores" in clips[0]:  # training clips of the probe interface: cross-fitted scores
            batch["probe_scores"] = torch.stack([c["probe_scores"] for c in clips])
        if self.task == "ser":
            batch["labels"] = self.processor.label_ids([c["label"] for c in clips])
        return batch


# --------------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------------
class EmoSLLMTrainer(Trainer):
    """
    Three learning rates: the interface (new, randomly initialized) learns at `adapter_learning_rate`, the
    encoder's layer weights and the class heads at `head_learning_rate`, the LLM (LoRA, or all its weights with
    `--freeze_language_model False`) at the usual `learning_rate`. Checkpoints hold only the trainable weights: the
    frozen backbones never change.
    """

    def __init__(self, *args, adapter_learning_rate: float, head_learning_rate: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.adapter_learning_rate, self.head_learning_rate = adapter_learning_rate, head_learning_rate

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = self.model if model is None else model
            groups = {"adapter": [], "head": [], "llm": []}
            for name, param in model.named_parameters():
                if param.requires_grad:
                    module = name.split(".", 1)[0]
                    groups[{"adapter": "adapter", "language_model": "llm"}.get(module, "head")].append(param)
            optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
            rates = {"adapter": self.adapter_learning_rate, "head": self.head_learning_rate,
                     "llm": self.args.learning_rate}
            self.optimizer = optimizer_cls(
                [{"params": params, "lr": rates[group]} for group, params in groups.items() if params],
                **optimizer_kwargs,
            )
        return self.optimizer

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self.accelerator.unwrap_model(self.model)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        state_dict = {n: t for n, t in (state_dict or model.state_dict()).items() if n in trainable}
        super()._save(output_dir, state_dict=state_dict)


def build_model(model_args: ModelArguments, labels: list[str]):
    cache = model_args.backbone_cache_dir
    audio_encoder = resolve_pretrained(model_args.audio_encoder, cache_dir=cache)
    llm = resolve_pretrained(model_args.llm, cache_dir=cache)
    processor = EmoSLLMProcessor.from_backbones(
        audio_encoder, llm, labels=labels, adapter_type=model_args.adapter_type, num_queries=model_args.num_queries,
        encoder_layer_combination=model_args.encoder_layer_combination,
        adapter_hidden_size=model_args.adapter_hidden_size,
        lora_rank=model_args.lora_rank, lora_alpha=model_args.lora_alpha, classifier=model_args.classifier,
        freeze_language_model=model_args.freeze_language_model,
        audio_loss_weight=model_args.audio_loss_weight,
        use_transcript=model_args.use_transcript, prompt=model_args.prompt,
    )
    model = EmoSLLMForSpeechEmotionRecognition.from_backbones(processor.config, audio_encoder, llm)
    trainable, total = model.trainable_parameters()
    logger.info("Trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / total)
    return model, processor


@torch.no_grad()
def clip_statistics(model: EmoSLLMForSpeechEmotionRecognition, clips: list[dict], batch_size: int = 32) -> np.ndarray:
    """Each clip's pooled statistics of its standardized encoder frames: `(clips, 2 * frame width)`."""
    statistics = []
    for start in range(0, len(clips), batch_size):
        chunk = clips[start:start + batch_size]
        lengths = torch.tensor([len(c["audio"]) for c in chunk])
        frames, mask = model.audio_encoder(lengths, encoder_layer_states=padded_states(chunk))
        statistics.append(pooled_statistics(frames, mask))
    return torch.cat(statistics).double().numpy()  # scikit-learn's lbfgs stops early on float32


def fit_probe(
    model, processor, train_clips: list[dict], eval_clips: list[dict] | None, cs: list[float],
    augmented_clips: Sequence[dict] = (), max_folds: int = 4,
) -> dict:
    """
    Fits the probe interface: scikit-learn's StandardScaler and L2-regularized LogisticRegression on the training
    clips' pooled statistics, one per C in `cs`; keeps the one with the best validation UA (without validation
    clips, the median C). Deterministic, so a resumed run refits the same probe.

    Then cross-fitting, as in stacking: each training clip, and each of their `augmented_clips` copies, gets
    `clip["probe_scores"]` from a probe fitted without its speaker (the training speakers in up to
    `max_folds` folds), which the collator passes to the model in training. The LLM so learns to read the probe as
    it is on voices it has not seen; on its own training clips the probe is far more confident and right than on new
    ones (RAVDESS: the LLM trained on those read validation clips 0.035-0.047 UA below the probe, BENCHMARKS.md).
    """
    if not cs:
        raise ValueError("--probe_c needs at least one value of C, e.g. '0.001,0.003,0.01,0.03'.")
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    def fit(x, y, c):
        scaler = StandardScaler().fit(x)
        return scaler, LogisticRegression(C=c, max_iter=3000).fit(scaler.transform(x), y)

    labels = processor.config.labels
    x_train = clip_statistics(model, train_clips)
    y_train = processor.label_ids([c["label"] for c in train_clips]).numpy()
    missing = sorted(set(labels) - {labels[i] for i in y_train.tolist()})
    if missing:
        raise ValueError(f"The probe interface needs training clips of every label; none of {missing}. Add clips of "
                         "these labels to the training speakers, or leave them out with --labels.")
    if eval_clips:
        x_eval = clip_statistics(model, eval_clips)
        y_eval = processor.label_ids([c["label"] for c in eval_clips]).numpy()
    else:
        cs = [sorted(cs)[len(cs) // 2]]
    best = None
    for c in cs:
        scaler, probe = fit(x_train, y_train, c)
        ua = compute_ser_metrics(probe.predict(scaler.transform(x_eval)), y_eval, labels)["ua"] if eval_clips else None
        logger.info("Probe with C=%g: validation UA %s", c, "n/a" if ua is None else f"{ua:.3f}")
        if best is None or (ua is not None and ua > best[0]):
            best = (ua, c, scaler, probe)
    ua, c, scaler, probe = best
    model.adapter.set_probe(*(torch.from_numpy(np.asarray(v)) for v in
                              (scaler.mean_, scaler.scale_, probe.coef_, probe.intercept_)))

    scored_clips = [*train_clips, *augmented_clips]
    x_scored = np.concatenate([x_train, clip_statistics(model, augmented_clips)]) if augmented_clips else x_train
    speakers = sorted({c["speaker"] for c in train_clips}, key=speaker_sort_key)
    if len(speakers) < 2:
        logger.warning("One training speaker: the LLM learns to read the probe on its own training clips.")
        folds = [speakers]
    else:
        folds = [speakers[i::min(max_folds, len(speakers))] for i in range(min(max_folds, len(speakers)))]
    for fold in folds:
        held_out = np.array([c["speaker"] in fold for c in train_clips])
        kept = ~held_out
        if len(folds) == 1 or len(set(y_train[kept].tolist())) < len(labels):  # or a label only they have
            kept = np.ones_like(held_out)
        fold_scaler, fold_probe = fit(x_train[kept], y_train[kept], c)
        rows = [i for i, clip in enumerate(scored_clips) if clip["speaker"] in fold]
        scores = fold_probe.decision_function(fold_scaler.transform(x_scored[rows]))
        for i, row_scores in zip(rows, scores):
            scored_clips[i]["probe_scores"] = torch.tensor(row_scores, dtype=torch.float32)
    return {"probe_c": c, "probe_validation_ua": ua}


def attach_transcripts(clips: list[dict], processor: EmoSLLMProcessor) -> None:
    """
    The processor's transcript rule, applied once before training: given transcripts win, `auto` transcribes the
    missing ones, `none` drops them all (the collator builds prompts from `clip["transcript"]`).
    """
    given = [c["transcript"] or None for c in clips]
    for clip, text in zip(clips, processor.resolve_transcripts([c["audio"] for c in clips], given)):
        clip["transcript"] = text


def last_complete_checkpoint(folder: Path) -> str | None:
    """
    The newest `checkpoint-N` that was written to the end. Trainer writes `trainer_state.json` last, so a run killed
    while saving leaves a folder without it (or with a cut one), which is skipped.
    """
    complete = []
    for checkpoint in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
            complete.append((int(checkpoint.name.rsplit("-", 1)[1]), checkpoint))
        except (OSError, ValueError):
            logger.warning("Skipping incomplete checkpoint %s", checkpoint)
    return str(max(complete)[1]) if complete else None


def run_stage(
    model, processor, training_args, model_args, train_clips, eval_clips, task, output_dir, epochs, resume
):
    evaluate = task == "ser" and bool(eval_clips)
    args = dataclasses.replace(
        training_args, output_dir=str(output_dir), num_train_epochs=epochs, load_best_model_at_end=evaluate,
        eval_strategy=training_args.eval_strategy if evaluate else "no",
    )
    labels = processor.config.labels

    def compute_metrics(prediction):
        scores = compute_ser_metrics(prediction.predictions.argmax(-1), prediction.label_ids, labels)
        return {k: scores[k] for k in ("ua", "wa", "macro_f1", "weighted_f1")}

    head_learning_rate = model_args.head_learning_rate
    trainer = EmoSLLMTrainer(
        model=model, args=args, adapter_learning_rate=model_args.adapter_learning_rate,
        head_learning_rate=model_args.adapter_learning_rate if head_learning_rate is None else head_learning_rate,
        train_dataset=train_clips,
        eval_dataset=eval_clips or None, data_collator=EmoSLLMCollator(processor, task),
        compute_metrics=compute_metrics if task == "ser" else None,
        callbacks=[EpochCallback(train_clips)],
    )
    checkpoint = last_complete_checkpoint(Path(output_dir)) if resume else None
    if resume and checkpoint is None:
        logger.info("No checkpoint in %s: starting this stage from scratch.", output_dir)
    trainer.train(resume_from_checkpoint=checkpoint)
    return trainer


def evaluate_and_report(trainer, processor, test_clips, output_dir: Path, name: str = "test") -> dict:
    prediction = trainer.predict(test_clips)
    labels = processor.config.labels
    predicted = prediction.predictions.argmax(-1)
    metrics = compute_ser_metrics(predicted, prediction.label_ids, labels)
    write_report(metrics, output_dir / f"{name}_report.json")
    save_confusion_matrix(predicted, prediction.label_ids, labels, output_dir / f"{name}_confusion_matrix.png")
    return metrics


def write_model_card(output_dir: Path, model_args, data_args, split: dict, metrics: dict, processor) -> None:
    """README.md with `model-index` metadata, through huggingface_hub's ModelCard."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    dataset = data_args.dataset_name or data_args.data_dir or "EmoSLLM smoke corpus (generated with espeak-ng)"
    results = [
        EvalResult(task_type="audio-classification", dataset_type=str(dataset), dataset_name=str(dataset),
                   metric_type=key, metric_name=name, metric_value=round(float(metrics[key]), 4),
                   dataset_split=f"speakers {', '.join(split['test'])}")
        for key, name in (("ua", "Unweighted accuracy"), ("wa", "Weighted accuracy"), ("macro_f1", "Macro F1"))
    ]
    card_data = ModelCardData(
        library_name="transformers", pipeline_tag="audio-classification", model_name=output_dir.name,
        tags=["speech-emotion-recognition", "emosllm", "lora"], eval_results=results,
    )
    probe = ""
    if "probe_c" in metrics:
        chosen = "chosen on validation" if metrics["probe_validation_ua"] is not None else "given, no validation split"
        probe = f" (probe C={metrics['probe_c']:g}, {chosen})"
    text = f"""---
{card_data.to_yaml()}
---

# {output_dir.name}

EmoSLLM (arXiv 2508.14130) fine-tuned for speech emotion recognition with this repository's `train.py`.

- Audio encoder: `{model_args.audio_encoder}` (frozen, layers: `{processor.config.encoder_layer_combination}`);
  interface: `{processor.config.adapter_type}`{probe};
  LLM: `{model_args.llm}` with LoRA rank {processor.config.lora_rank}.
- Data: `{dataset}`; labels: {", ".join(processor.config.labels)}.
- Speaker-independent split: train {len(split['train'])} speakers, validation {split['validation']},
  test {split['test']}.
- Test scores: UA {metrics['ua']:.4f}, WA {metrics['wa']:.4f}, macro F1 {metrics['macro_f1']:.4f},
  weighted F1 {metrics['weighted_f1']:.4f}.

```python
from transformers import pipeline
classifier = pipeline("audio-classification", model="{output_dir}", trust_remote_code=True)
classifier("speech.wav")
```
"""
    ModelCard(text).save(output_dir / "README.md")


def push_to_hub(output_dir: Path, repo_id: str) -> None:
    from huggingface_hub import HfApi

    try:
        HfApi().create_repo(repo_id, exist_ok=True)
        HfApi().upload_folder(folder_path=str(output_dir), repo_id=repo_id)
        logger.info("Pushed %s to https://huggingface.co/%s", output_dir, repo_id)
    except Exception as error:  # no token, no network: say so, keep the local folder
        logger.error("Could not push to the Hub (%s: %s); the model is saved in %s.",
                     type(error).__name__, error, output_dir)


def train_one_split(model_args, data_args, training_args, splits, output_dir: Path) -> dict:
    speeds = parse_floats(data_args.speed_perturbation, "speed_perturbation")
    snrs_db = parse_floats(data_args.noise_snr_db, "noise_snr_db")
    labels = sorted(set(splits["train"]["label"]) | set(splits["test"]["label"])) if not data_args.labels \
        else data_args.labels.split(",")
    set_seed(training_args.seed)
    model, processor = build_model(model_args, labels)
    clips = {name: decoded_clips(split) for name, split in splits.items()}
    cache = EncoderStateCache(model, processor, data_args.encoder_cache_dir)
    with training_args.main_process_first(desc="encoder cache"):
        for split_clips in clips.values():
            attach_transcripts(split_clips, processor)
            cache.fill(split_clips)
    # The interface reads each encoder dimension standardized over the training clips (never validation or test).
    model.audio_encoder.set_feature_statistics(clip["states"] for clip in clips["train"])
    versions = [[clip] for clip in clips["train"]]  # each training clip, then its augmented copies
    if speeds or snrs_db:
        max_samples = int(processor.config.max_audio_seconds * SAMPLING_RATE)
        with training_args.main_process_first(desc="encoder cache (augmented copies)"):
            for clip_versions in versions:
                clip_versions += augmented_copies(clip_versions[0], speeds, snrs_db, max_samples)
            cache.fill([copy for clip_versions in versions for copy in clip_versions[1:]])
    probe = {}
    if model.config.adapter_type == "probe":
        probe = fit_probe(model, processor, clips["train"], clips.get("validation"),
                          parse_floats(model_args.probe_c, "probe_c"), [c for cv in versions for c in cv[1:]])
    train_clips = AugmentedClips(versions, training_args.seed)
    started = time.time()
    if data_args.asr_epochs > 0:
        run_stage(model, processor, training_args, model_args, train_clips, None, "asr", output_dir / "stage1_asr",
                  data_args.asr_epochs, data_args.resume)
    trainer = run_stage(model, processor, training_args, model_args, train_clips, clips.get("validation"), "ser",
                        output_dir / "checkpoints", training_args.num_train_epochs, data_args.resume)
    train_seconds = time.time() - started
    metrics = evaluate_and_report(trainer, processor, clips["test"], output_dir)
    metrics["train_seconds"] = round(train_seconds, 1)
    metrics.update(probe)
    split_speakers = {name: sorted(set(split["speaker"])) for name, split in splits.items()}
    split_speakers.setdefault("validation", [])
    if training_args.process_index == 0:
        model.save_pretrained(output_dir)  # full weights, safetensors, auto_map and code files
        processor.save_pretrained(output_dir)
        write_model_card(output_dir, model_args, data_args, split_speakers, metrics, processor)
    return metrics


def main() -> None:
    model_args, data_args, training_args = parse_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    output_dir = Path(training_args.output_dir)
    dataset = load_data(data_args)
    if data_args.folds > 1:
        results = []
        for fold, splits in enumerate(speaker_folds(dataset, data_args.folds)):
            results.append(train_one_split(model_args, data_args, training_args, splits, output_dir / f"fold{fold}"))
        metrics = {key: float(np.mean([r[key] for r in results])) for key in ("ua", "wa", "macro_f1", "weighted_f1")}
        metrics["folds"] = results
    else:
        test, validation = (data_args.test_speakers, data_args.eval_speakers)
        if test is None:
            test, default_validation = default_speaker_split(dataset)
            validation = validation or default_validation
        splits = split_by_speakers(dataset, test, validation)
        metrics = train_one_split(model_args, data_args, training_args, splits, output_dir)
    if training_args.process_index == 0:
        write_report(metrics, output_dir / "all_results.json")
        print(json.dumps({k: v for k, v in metrics.items() if k in ("ua", "wa", "macro_f1", "weighted_f1",
                                                                     "train_seconds")}, indent=2))
        if training_args.push_to_hub:
            push_to_hub(output_dir, training_args.hub_model_id or output_dir.name)


if __name__ == "__main__":
    main()
