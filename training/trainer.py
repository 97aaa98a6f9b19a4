# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
The `Trainer` side of a run: the collator (clips -> model inputs), `EmoSLLMTrainer` (three learning rates, the
probe's out-of-fold scores in the loss), and one training stage's arguments and run (`stage_arguments`,
`run_stage`).
"""

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer import TRAINING_ARGS_NAME

from processing_emosllm import EmoSLLMProcessor
from training.arguments import BEST_MODEL_ADVICE
from training.augmentation import EpochCallback
from training.encoder_cache import padded_states
from training.engines import check_engine_runs
from training.metrics import check_finite_scores, compute_ser_metrics
from training.resume import last_complete_checkpoint

logger = logging.getLogger("emosllm.train")

__all__ = ["RECORD_CLIPS_ENV", "EmoSLLMCollator", "EmoSLLMTrainer", "run_stage", "stage_arguments"]


# Debug output, off by default: with EMOSLLM_RECORD_TRAINING_CLIPS=1 every process appends one JSON line per training
# clip its dataloader reads to <stage folder>/training_clips/rank<N>.jsonl ({"world_size", "rank", "epoch", "index",
# "clip"}), to check that several processes (torchrun) read disjoint shares of the data.
RECORD_CLIPS_ENV = "EMOSLLM_RECORD_TRAINING_CLIPS"


@dataclass
class EmoSLLMCollator:
    """
    Clips -> model inputs: the processor's prompt followed by the answer (the label word; the transcript in the ASR
    stage) with its `lm_labels`, cached encoder states padded to the longest clip, and class ids.
    """

    processor: EmoSLLMProcessor
    task: str = "ser"

    def __call__(self, clips: list[dict]) -> dict[str, torch.Tensor]:
        lengths = [c["num_samples"] if "num_samples" in c else len(c["audio"]) for c in clips]
        answers = [c["label"] for c in clips] if self.task == "ser" else None
        batch = self.processor.text_inputs(
            lengths, [c["transcript"] for c in clips], [c["text_features"] for c in clips], task=self.task,
            answers=answers,
        )
        batch["audio_lengths"] = torch.tensor(lengths)
        if "states" in clips[0]:
            batch["encoder_layer_states"] = padded_states(clips)
        else:
            batch.update(self.processor.audio_features([c["audio"] for c in clips]))
        if self.task == "ser":
            batch["labels"] = self.processor.label_ids([c["label"] for c in clips])
        if "probe_scores" in clips[0]:  # (training.probe.fit_probe: read by EmoSLLMTrainer, not by the model)
            batch["probe_scores"] = torch.stack([c["probe_scores"] for c in clips])
        return batch


class EmoSLLMTrainer(Trainer):
    """
    Three learning rates: the mapper (new, randomly initialized) learns at `mapper_learning_rate`, the
    encoder's layer weights and the class heads at `head_learning_rate`, the LLM (LoRA, or all its weights with
    `--language_model_training full`) at the usual `learning_rate`. Checkpoints hold only the trainable weights: the
    frozen backbones never change.
    """

    def __init__(self, *args, mapper_learning_rate: float, head_learning_rate: float, **kwargs):
        """
        A `transformers.Trainer` with the mapper's and the heads' own learning rates.

        Args:
            *args: As `transformers.Trainer`.
            mapper_learning_rate: The mapper's learning rate (`--mapper_learning_rate`).
            head_learning_rate: The learning rate of the encoder's layer weights and the class heads.
            **kwargs: As `transformers.Trainer`.
        """
        super().__init__(*args, **kwargs)
        self.mapper_learning_rate, self.head_learning_rate = mapper_learning_rate, head_learning_rate

    def create_optimizer(self, model=None):
        """
        The Trainer's optimizer class and settings over three parameter groups, the trainable weights of the mapper,
        of the heads (and the encoder's layer weights) and of the LLM, each at its learning rate; made once.

        Args:
            model: As `transformers.Trainer.create_optimizer`: the model whose trainable weights are optimized;
                None: `self.model`.

        Returns:
            The optimizer (`self.optimizer`).
        """
        if self.optimizer is None:
            model = self.model if model is None else model
            groups = {"mapper": [], "head": [], "llm": []}
            for name, param in model.named_parameters():
                if param.requires_grad:
                    module = name.split(".", 1)[0]
                    groups[{"mapper": "mapper", "language_model": "llm"}.get(module, "head")].append(param)
            optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
            rates = {"mapper": self.mapper_learning_rate, "head": self.head_learning_rate,
                     "llm": self.args.learning_rate}
            self.optimizer = optimizer_cls(
                [{"params": params, "lr": rates[group]} for group, params in groups.items() if params],
                **optimizer_kwargs,
            )
        return self.optimizer

    def compute_loss(self, model, inputs: dict, *args, **kwargs):
        """
        With the probe mapper, each training clip's soft emotion word comes from its out-of-fold probe scores
        (`inputs["probe_scores"]`, `training.probe.fit_probe`), not from the probe fitted on that very clip: so the LLM
        learns to read the probe as it reads new voices, right about as often as in cross-validation, and its
        answers are no surer than that evidence (in-sample, the probe is nearly always right, and the LLM learned
        to repeat it with a probability near 1; BENCHMARKS.md, Calibration). The probe's own API puts them in place
        of its scores for this one call (`given_scores`), so that the model's `forward` takes no training-only
        argument and the saved model answers from its one fitted probe. Evaluation on held-out training speakers
        (`hold_out_probe_fold`) reads their out-of-fold scores the same way.

        Args:
            model: As `transformers.Trainer.compute_loss`; its unwrapped model's `mapper` takes the given scores.
            inputs: As `transformers.Trainer.compute_loss` (the collator's batch); its `probe_scores`
                `(batch, num_labels)`, where present, are taken out of it.
            *args: As `transformers.Trainer.compute_loss` (e.g. `return_outputs`), passed on.
            **kwargs: As `transformers.Trainer.compute_loss` (e.g. `num_items_in_batch`), passed on.

        Returns:
            As `transformers.Trainer.compute_loss`.
        """
        scores = inputs.pop("probe_scores", None)
        if scores is None:
            return super().compute_loss(model, inputs, *args, **kwargs)
        with self.accelerator.unwrap_model(model).mapper.given_scores(scores):
            return super().compute_loss(model, inputs, *args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """
        Saves the model as a checkpoint (the Trainer's `save_model`, public): a lean folder with LoRA inline,
        everything but the frozen backbones (trained weights and fitted statistics), so it also loads with
        from_pretrained; the model's `_keys_to_ignore_on_save` (the backbones) tells the Trainer not to warn about
        them when it loads a checkpoint back. The model's `save_pretrained` writes a given `state_dict` without the
        backbones; FSDP and DeepSpeed gather theirs and pass it on (the Trainer's own `save_model`), the plain path
        passes the model's own here.

        Args:
            output_dir: the checkpoint folder (default: `args.output_dir`).
            _internal_call: the Trainer's own flag (its checkpoints), passed on where the Trainer saves.
        """
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super().save_model(output_dir, _internal_call=_internal_call)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)  # written in place, as the Trainer's own save writes it
        model = self.accelerator.unwrap_model(self.model)
        model.save_pretrained(output_dir, state_dict=model.state_dict())
        if self.processing_class is not None:  # as the Trainer does: the checkpoint's processor settings
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))  # as the Trainer does, for resuming


def stage_arguments(training_args: TrainingArguments, output_dir, epochs: float, task: str,
                    evaluate: bool) -> TrainingArguments:
    """
    One stage's `TrainingArguments`: the user's, with the stage's output folder and epochs, evaluation only where
    there are validation clips to score (the SER stage), and never a push to the Hub (`push_to_hub` off: the Trainer
    would create a repo at start, offline a crash, and push every checkpoint; train.py pushes the final folder once,
    see `push_to_hub`). `--load_best_model_at_end`: as asked; not given (None), the SER stage keeps its best
    checkpoint by validation UA wherever the eval and save strategies allow it, and says that it keeps the last model
    where they do not (`--save_strategy no`, `--eval_strategy no`, strategies that differ).

    Args:
        training_args: The user's `TrainingArguments` (not changed: a changed copy is returned).
        output_dir: The stage's folder (`stage1_asr` or `checkpoints` under `--output_dir`).
        epochs: The stage's epochs (`--asr_epochs`, or `--num_train_epochs` for the SER stage).
        task: "asr" or "ser".
        evaluate: Whether the stage is scored on validation clips during training (the SER stage, when it has some).
    """
    eval_strategy = training_args.eval_strategy if evaluate else "no"
    stage = dict(output_dir=str(output_dir), num_train_epochs=epochs, eval_strategy=eval_strategy, push_to_hub=False,
                 hub_always_push=False)
    asked = training_args.load_best_model_at_end
    if asked is False:
        return dataclasses.replace(training_args, load_best_model_at_end=False, **stage)
    if not evaluate or eval_strategy == "no":
        if task == "ser" and asked:
            if evaluate:
                raise ValueError(f"--load_best_model_at_end true, but --eval_strategy no. {BEST_MODEL_ADVICE}")
            logger.warning("--load_best_model_at_end: there are no validation clips to choose a checkpoint by; "
                           "the last model is kept.")
        elif task == "ser":
            logger.info("No evaluation during training%s: the last model is kept.",
                        " (--eval_strategy no)" if evaluate else " (no validation clips)")
        return dataclasses.replace(training_args, load_best_model_at_end=False, **stage)
    try:
        return dataclasses.replace(training_args, load_best_model_at_end=True, **stage)
    except ValueError as error:  # TrainingArguments: the save and eval strategies do not allow it
        if asked:
            raise ValueError(f"{error}\n{BEST_MODEL_ADVICE}") from None
        if training_args.save_strategy == "no":
            logger.info("--save_strategy no: no checkpoints to choose from; the last model is kept.")
        else:
            logger.info("Checkpoints (--save_strategy %s) are not saved at every evaluation (--eval_strategy %s): the "
                        "last model is kept, not the best one.", training_args.save_strategy.value,
                        eval_strategy.value)
        return dataclasses.replace(training_args, load_best_model_at_end=False, **stage)


def run_stage(
    model, processor, training_args, model_args, train_clips, eval_clips, task, output_dir, epochs, resume
):
    """
    Trains one stage (`stage_arguments`, `EmoSLLMTrainer`, `EmoSLLMCollator`), from its newest complete checkpoint
    on `resume`.

    Args:
        model: The EmoSLLM model, trained in place.
        processor: Its processor (the collator's inputs; saved with every checkpoint).
        training_args: The user's `TrainingArguments`.
        model_args: The run's `ModelArguments` (`mapper_learning_rate`, `head_learning_rate`).
        train_clips: The training clips (`AugmentedClips`); with `EMOSLLM_RECORD_TRAINING_CLIPS` set, its reads are
            recorded under `output_dir/training_clips/`.
        eval_clips: The validation clips (dicts) the SER stage is scored on; None or empty: no evaluation.
        task: "asr" (the answer is the transcript) or "ser" (the answer is the label word).
        output_dir: The stage's folder, for its checkpoints.
        epochs: The stage's epochs.
        resume: Whether to resume: the SER stage from `--resume_from_checkpoint`'s path where given, else from the
            newest complete checkpoint in `output_dir` (none: from scratch).

    Returns:
        The stage's `EmoSLLMTrainer`, after training.
    """
    args = stage_arguments(training_args, output_dir, epochs, task, evaluate=task == "ser" and bool(eval_clips))
    train_clips.record_to = None
    if os.environ.get(RECORD_CLIPS_ENV, "") not in ("", "0"):
        train_clips.record_to = Path(output_dir) / "training_clips" / f"rank{args.process_index}.jsonl"
        train_clips.world_size, train_clips.rank = args.world_size, args.process_index
    labels = processor.labels

    def compute_metrics(prediction):
        logits = prediction.predictions  # the answer's class scores (first, when more outputs were asked for)
        logits = logits[0] if isinstance(logits, tuple) else logits
        check_finite_scores(logits, "the validation clips")
        scores = compute_ser_metrics(logits.argmax(-1), prediction.label_ids, labels)
        return {k: scores[k] for k in ("ua", "wa", "macro_f1", "weighted_f1")}

    head_learning_rate = model_args.head_learning_rate
    trainer = EmoSLLMTrainer(
        model=model, args=args, processing_class=processor, mapper_learning_rate=model_args.mapper_learning_rate,
        head_learning_rate=model_args.mapper_learning_rate if head_learning_rate is None else head_learning_rate,
        train_dataset=train_clips,
        eval_dataset=eval_clips or None, data_collator=EmoSLLMCollator(processor, task),
        compute_metrics=compute_metrics if task == "ser" else None,
        callbacks=[EpochCallback(train_clips)],
    )
    check_engine_runs(trainer)  # FSDP or DeepSpeed asked for, and not what the Accelerator runs: stop, not DDP
    asked = training_args.resume_from_checkpoint if task == "ser" else None  # a path (`resume_from_checkpoint`)
    checkpoint = (asked or last_complete_checkpoint(Path(output_dir))) if resume else None
    if resume and checkpoint is None:
        logger.info("No checkpoint in %s: starting this stage from scratch.%s", output_dir,
                    " (--save_strategy no writes none, so there is nothing to resume from.)"
                    if args.save_strategy == "no" else "")
    trainer.train(resume_from_checkpoint=checkpoint)
    return trainer
