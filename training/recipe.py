# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
One training run on one split, in order: the model from its backbones (`build_model`), the checked clips, the
encoder cache, the probe, the training stages, the saved folder, its test report and model card
(`train_one_split`).
"""

import dataclasses
import gc
import logging
import time
from pathlib import Path

import numpy as np
import torch
from transformers import TrainingArguments, set_seed

from backbones_emosllm import resolve_pretrained
from peft import LoraConfig

from configuration_emosllm import DEFAULT_MAPPER_TYPE, MAPPER_SETTINGS, SAMPLING_RATE, EmoSLLMConfig
from lora_emosllm import DEFAULT_LORA
from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
from probe_fitting_emosllm import PROBE_C_GRID
from saving_emosllm import backbones_left_out
from processing_emosllm import EmoSLLMProcessor
from training.arguments import DataArguments, ModelArguments, parse_labels
from training.augmentation import AugmentedClips, augmented_copies, parse_floats
from training.clips import load_checked_clips, text_feature_columns
from training.encoder_cache import EncoderStateCache, cached_states
from training.engines import model_to_save, models_built_whole, requested_engine
from training.evaluation import check_delivered_score, clips_without_speech, evaluate_and_report
from training.hub import write_model_card
from training.probe import (choose_probe_mix_weight, departure_folds, fit_probe, held_out_scores,
                            hold_out_probe_fold)
from training.resume import check_resume_matches, check_run_record, run_record
from training.splits import check_split_labels, has_speaker_ids, speaker_sort_key
from training.trainer import run_stage
from training.transcripts import TranscriptCache, attach_transcripts, transcribe_clips, transcribe_training_clips

logger = logging.getLogger("emosllm.train")

__all__ = ["build_model", "check_asr_stage_transcripts", "check_model_args", "fold_scores", "load_trainable_state",
           "lora_settings", "model_settings", "train_one_split", "train_stages", "trainable_state"]


# The model flags that set a mapper setting (`MAPPER_SETTINGS`): the flag's field in `ModelArguments` -> the setting.
MAPPER_FLAGS = {"num_queries": "num_queries", "mapper_hidden_size": "hidden_size"}


def model_settings(model_args: ModelArguments) -> dict:
    """
    The config's fields and the processor's settings the flags set; a flag left unset is not passed, so the
    config's (or processor's) own default applies.

    Args:
        model_args: The model flags.

    Returns:
        `{name: value}` for `EmoSLLMProcessor.from_backbones`: config fields (the mapper's as `mapper_config`) and
        processor settings.
    """
    settings = {name: getattr(model_args, name) for name in
                ("encoder_layer_combination", "language_model_training", "audio_loss_weight", "use_transcript", "prompt")
                if getattr(model_args, name) is not None}
    if model_args.lora_rank == 0 and model_args.language_model_training is None:
        settings["language_model_training"] = "frozen"  # no LoRA: only the mapper trains
    mapper = {key: getattr(model_args, flag) for flag, key in MAPPER_FLAGS.items()
              if getattr(model_args, flag) is not None}
    if model_args.mapper_type is not None or mapper:  # a setting the mapper lacks: refused by `check_model_args`
        settings["mapper_config"] = {"mapper_type": model_args.mapper_type or DEFAULT_MAPPER_TYPE, **mapper}
    return settings


def lora_settings(model_args: ModelArguments) -> dict:
    """LoRA's settings the flags set (peft `LoraConfig` keyword arguments); the others take `DEFAULT_LORA`'s."""
    return {key: value for key, value in (("r", model_args.lora_rank), ("lora_alpha", model_args.lora_alpha),
                                          ("lora_dropout", model_args.lora_dropout)) if value is not None}


def check_model_args(model_args: ModelArguments) -> None:
    """
    The model flags' values, checked before any data is read: a bad one would otherwise stop the run only when the
    model is built (after the data, the splits and the probe's encoder states), in torch's words, or not at all.
    A flag that the chosen mapper (`--num_queries`, `--mapper_hidden_size`, `--probe_c`, `--departure_folds`) or the
    chosen LLM training (LoRA's) does not read is refused too, rather than dropped.

    Args:
        model_args: The model flags.

    Raises:
        ValueError: naming the flag and what it takes, or what would read it.
    """
    # A flag the chosen mapper or LLM training has no use for would otherwise be dropped without a word.
    mapper_type = model_args.mapper_type or DEFAULT_MAPPER_TYPE
    for flag, key in MAPPER_FLAGS.items():
        if getattr(model_args, flag) is not None and key not in MAPPER_SETTINGS[mapper_type]:
            readers = [name for name, settings in MAPPER_SETTINGS.items() if key in settings]
            raise ValueError(f"--{flag} is no setting of the {mapper_type!r} mapper (--mapper_type): only "
                             f"{', '.join(readers)} read it. Drop the flag, or pass --mapper_type with one of those.")
    try:
        EmoSLLMConfig.checked_mapper_config(model_settings(model_args).get("mapper_config"))
    except ValueError as error:
        raise ValueError(f"{error} (set by --mapper_type, --num_queries, --mapper_hidden_size)") from None
    for flag in ("--probe_c", "--departure_folds"):
        if getattr(model_args, flag[2:]) is not None and mapper_type != "probe":
            raise ValueError(f"{flag} is read by the probe mapper only, and this run trains the {mapper_type!r} "
                             f"mapper (--mapper_type): drop the flag, or pass --mapper_type probe.")
    lora = lora_settings(model_args)
    training = model_args.language_model_training or ("frozen" if lora.get("r") == 0 else "lora")
    unused = [f"--{name}" for name in ("lora_rank", "lora_alpha", "lora_dropout") if getattr(model_args, name) is not None
              and not (name == "lora_rank" and model_args.lora_rank == 0)]  # rank 0 says "no LoRA": it agrees
    if training != "lora" and unused:
        by = ", set by --lora_rank 0" if model_args.language_model_training is None else ""
        raise ValueError(f"{', '.join(unused)}: LoRA's settings, and this run trains no LoRA "
                         f"(--language_model_training {training}{by}). Drop them, or pass --language_model_training lora.")
    if training == "lora" and lora.get("r") == 0:
        raise ValueError("--lora_rank 0 means no LoRA, and --language_model_training lora asks for it: give a rank "
                         "of 1 or more, or pass --language_model_training frozen.")
    for flag, value, ok, takes in (
        ("--lora_rank", lora.get("r"), lambda v: v >= 0, "a whole number, 0 for no LoRA"),
        ("--lora_alpha", lora.get("lora_alpha"), lambda v: v > 0, "a number above 0"),
        ("--lora_dropout", lora.get("lora_dropout"), lambda v: 0 <= v < 1, "a share from 0 up to (not including) 1"),
        ("--audio_loss_weight", model_args.audio_loss_weight, lambda v: v >= 0, "a weight of 0 (off) or more"),
    ):
        if value is not None and not ok(value):
            raise ValueError(f"{flag} {value:g}: give {takes}.")


def check_asr_stage_transcripts(train_clips: list[dict], processor: EmoSLLMProcessor, asr_epochs: float) -> None:
    """
    With `--asr_epochs`, every training clip needs a transcript (the ASR stage's answer), checked before the encoder
    cache and the probe: the stage would otherwise stop at its first batch that lacks one, in the processor's words.

    Args:
        train_clips: The training clips, their transcripts attached (`attach_transcripts`).
        processor: The run's processor (`use_transcript` says where transcripts come from).
        asr_epochs: `--asr_epochs` (0: no ASR stage, nothing to check).

    Raises:
        ValueError: naming how many clips lack one and how to give them one.
    """
    missing = sum(not clip.get("transcript") for clip in train_clips)
    if asr_epochs > 0 and missing:
        why = (": the model reads none, by --use_transcript none or because a sample's words did not tell the "
               "emotions apart" if processor.use_transcript == "none" else "")
        raise ValueError(f"--asr_epochs {asr_epochs:g}: the ASR stage trains the LLM to write each clip's transcript, "
                         f"and {missing} of the {len(train_clips)} training clips have none (use_transcript="
                         f"{processor.use_transcript!r}{why}). Give every clip one (a transcript column, or "
                         "--use_transcript auto to have Whisper write the missing ones), or leave --asr_epochs out.")


def build_model(model_args: ModelArguments, labels: list[str], device_type: str | None = None):
    """
    The processor and a new model from the backbones, built memory-lean (`from_backbones`): the frozen backbones in
    the precision policy's dtype for `device_type` (None: the GPU if there is one, else the CPU; bf16 on a bf16 GPU,
    float32 on the CPU), the parts that train in float32 (`precision_emosllm.PRECISION_POLICY`).

    Args:
        model_args: The model flags: the backbones and their cache folder, the settings (`model_settings`) and LoRA's.
        labels: The label set, in class-id order.
        device_type: The device type the precision policy plans for ("cpu", "cuda", ...); None: as above.

    Returns:
        `(model, processor)`.
    """
    cache = model_args.backbone_cache_dir
    audio_encoder = resolve_pretrained(model_args.audio_encoder, cache_dir=cache)
    llm = resolve_pretrained(model_args.llm, cache_dir=cache)
    processor, config = EmoSLLMProcessor.from_backbones(audio_encoder, llm, labels=labels, **model_settings(model_args))
    lora_config = (LoraConfig(**{**DEFAULT_LORA, **lora_settings(model_args)})
                   if config.language_model_training == "lora" else None)
    model = EmoSLLMForSpeechEmotionRecognition.from_backbones(config, audio_encoder, llm, lora_config,
                                                              device_type=device_type)
    trainable, total = model.trainable_parameters()
    logger.info("Trainable parameters: %d of %d (%.2f%%)", trainable, total, 100 * trainable / total)
    return model, processor


def trainable_state(model) -> dict[str, torch.Tensor]:
    """A copy of the weights that train (the mapper, the heads, LoRA), by parameter name."""
    return {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    """Puts `trainable_state`'s copy back into the model."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in state:
                param.copy_(state[name])


def fold_scores(
    model: EmoSLLMForSpeechEmotionRecognition, processor: EmoSLLMProcessor, model_args: ModelArguments,
    data_args: DataArguments, training_args: TrainingArguments, fold: int, kept: list[list[dict]], held_out: list[dict],
    untrained: dict[str, torch.Tensor], output_dir: Path,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """
    Cross-fitting the LLM for `--departure_folds`: trains the stages again from `untrained`, as the saved model
    trained (the ASR stage first, with `--asr_epochs`, in `stage1_asr/fold_<fold>`), but without `fold`'s speakers
    (the SER stage's checkpoints in `checkpoints/fold_<fold>`; both resumable), and scores their clips
    (`held_out_scores`). The caller puts the saved model's weights back.

    Args:
        model, processor: The run's model (its trainable weights are overwritten) and processor.
        model_args, data_args, training_args: The run's flags.
        fold: The probe fold held out.
        kept, held_out: `hold_out_probe_fold`'s split for `fold`: the versions the LLM trains on, the fold's clips.
        untrained: `trainable_state` before the first stage.
        output_dir: The run's output folder.

    Returns:
        `held_out_scores` of the fold's clips.
    """
    load_trainable_state(model, untrained)
    logger.info("Probe fold %d: the LLM trained again without its %d clips' speakers, to score them.", fold,
                len(held_out))
    args = dataclasses.replace(training_args, resume_from_checkpoint=None)  # a given path is the saved model's
    # The fold's speakers are read in no stage, not even the ASR stage for their words.
    trainer = train_stages(model, processor, model_args, data_args, args, kept, held_out,
                           output_dir / "stage1_asr" / f"fold_{fold}", output_dir / "checkpoints" / f"fold_{fold}")
    return held_out_scores(trainer, held_out)


def train_stages(model: EmoSLLMForSpeechEmotionRecognition, processor: EmoSLLMProcessor, model_args: ModelArguments,
                 data_args: DataArguments, training_args: TrainingArguments, versions: list[list[dict]],
                 held_out: list[dict], asr_dir: Path, ser_dir: Path):
    """
    The LLM's training, the same for the saved model and each cross-fitting fold: the ASR stage (with
    `--asr_epochs`; every transcript read, none dropped) in `asr_dir`, then the SER stage in `ser_dir`, scored on
    `held_out` during training where there are such clips. Both resumable (`--resume`).

    Returns:
        The SER stage's Trainer.
    """
    if data_args.asr_epochs > 0:  # the transcript is this stage's answer: never dropped (--transcript_dropout)
        run_stage(model, processor, training_args, model_args, AugmentedClips(versions, training_args.seed), None,
                  "asr", asr_dir, data_args.asr_epochs, data_args.resume)
    return run_stage(model, processor, training_args, model_args,
                     AugmentedClips(versions, training_args.seed, model_args.transcript_dropout), held_out, "ser",
                     ser_dir, training_args.num_train_epochs, data_args.resume)


def train_one_split(model_args, data_args, training_args, splits, output_dir: Path) -> dict:
    """
    One training run on one split: the model built, the clips checked and encoded, the probe fitted, the stages
    trained, the folder saved in `output_dir`, scored as delivered and given its model card.

    Args:
        model_args: The model flags (`ModelArguments`).
        data_args: The data flags (`DataArguments`).
        training_args: The Trainer's flags (`TrainingArguments`).
        splits: The split datasets by name: `train`, `test`, and `validation` where there are validation speakers.
        output_dir: The run's output folder (with `--folds`, the fold's).

    Returns:
        The test metrics (`evaluate_and_report`) with `train_seconds` and the probe's figures; on the first process
        also `delivered_ua` and `test_clips_without_speech`.
    """
    speeds = parse_floats(data_args.speed_perturbation, "speed_perturbation")
    snrs_db = parse_floats(data_args.noise_snr_db, "noise_snr_db")
    labels = sorted(set(splits["train"]["label"]) | set(splits["test"]["label"])) if not data_args.labels \
        else parse_labels(data_args.labels)
    check_split_labels({name: split["label"] for name, split in splits.items()}, labels, data_args.min_clips_per_label)
    if model_args.departure_folds is not None and "validation" in splits:
        raise ValueError("--departure_folds: this run has validation speakers, which decide how far the answer may "
                         "depart from the probe; the folds decide only without them. Drop the flag, or pass "
                         "--eval_speakers none.")
    set_seed(training_args.seed)
    feature_columns = text_feature_columns(data_args.text_feature_columns, splits["train"].column_names)
    with models_built_whole(training_args):  # DeepSpeed ZeRO-3: partitioned by the engine, not as it is built
        model, processor = build_model(model_args, labels, "cpu" if training_args.use_cpu else None)
    processor.text_features = feature_columns  # read from those columns (`decoded_clips`), expected at inference
    if data_args.resume:
        check_resume_matches(model, output_dir, processor)
    clips = load_checked_clips(splits, processor, data_args, labels)  # stops at a bad clip, before anything trains
    check_run_record(output_dir / "checkpoints", run_record(model_args, data_args, training_args, splits),
                     data_args.resume, write=training_args.process_index == 0)
    cache = EncoderStateCache(model, processor, data_args.encoder_cache_dir)
    with training_args.main_process_first(desc="encoder cache"):
        if processor.use_transcript == "auto":
            transcripts = TranscriptCache(processor.asr_model, data_args.transcript_cache_dir)
            if transcribe_training_clips(clips["train"], processor, labels, transcripts, training_args.seed,
                                         data_args.force_transcripts):
                for name, split_clips in clips.items():  # scored as the saved model answers: with transcripts
                    if name != "train" and (todo := transcripts.fill(split_clips)):
                        transcribe_clips(todo, processor.asr_model, transcripts, f"{len(todo)} {name} clips")
            else:  # the model reads no transcript, and the saved one never runs ASR
                processor.use_transcript = "none"
        for name, split_clips in clips.items():
            attach_transcripts(split_clips, processor)  # 'none' drops every transcript
        check_asr_stage_transcripts(clips["train"], processor, data_args.asr_epochs)
        # Only the training clips, read every epoch, are cached; validation and test clips are encoded live, as the
        # pipeline encodes them, so the scores a run reports come from the same path as the saved model's answers.
        cache.fill(clips["train"])
    # The mapper reads each encoder dimension standardized over the training clips (never validation or test).
    model.audio_encoder.set_feature_statistics(cached_states(clip) for clip in clips["train"])
    versions = [[clip] for clip in clips["train"]]  # each training clip, then its augmented copies
    if speeds or snrs_db:
        max_samples = int(processor.max_audio_seconds * SAMPLING_RATE)
        with training_args.main_process_first(desc="encoder cache (augmented copies)"):
            for clip_versions in versions:
                clip_versions += augmented_copies(clip_versions[0], speeds, snrs_db, max_samples)
            cache.fill([copy for clip_versions in versions for copy in clip_versions[1:]])
    # Training reads the cached states: the decoded samples of the training clips and their copies can go.
    for clip in (copy for clip_versions in versions for copy in clip_versions):
        clip["num_samples"] = len(clip.pop("audio"))
    unit = data_args.group_column or ("speaker" if has_speaker_ids(splits["train"]) else None)
    probe, held_out, where = {}, clips.get("validation"), f"the validation {unit or 'clip'}s"
    further_folds = []  # the probe folds after the first, each held out of the LLM's training in turn
    if model.config.mapper_type == "probe":  # fitted on the training clips and their augmented copies
        cs = parse_floats(model_args.probe_c, "probe_c") if model_args.probe_c else list(PROBE_C_GRID)
        probe = fit_probe(model, processor, [clip for clip_versions in versions for clip in clip_versions],
                          clips.get("validation"), cs)
        if not held_out:
            folds = departure_folds(versions, model_args.departure_folds, requested_engine(training_args))
            fold_splits = {fold: hold_out_probe_fold(versions, fold) for fold in folds}  # (kept, held out) by fold
            fold_speakers = [", ".join(sorted({str(c.get("group", c["speaker"])) for c in fold_splits[fold][1]},
                                              key=speaker_sort_key)) for fold in folds]
            versions, held_out = fold_splits[folds[0]] if folds else (versions, [])
            further_folds = folds[1:]
            where = f"training {unit or 'clip'}s held out of the LLM's training" + (
                f", {len(folds)} folds in turn ({' | '.join(fold_speakers)})" if further_folds
                else f" ({fold_speakers[0]})" if fold_speakers else "")
            if held_out:
                logger.info("No validation speakers: the LLM trains without the %ss %s, which choose its epoch; %s "
                            "choose how far its answer may depart from the probe.", unit or "clip", fold_speakers[0],
                            f"they and {len(further_folds)} more folds, each held out of the LLM's training in turn,"
                            if further_folds else "they")
    started = time.time()
    untrained = trainable_state(model) if further_folds else None  # where each further fold's LLM starts
    trainer = train_stages(model, processor, model_args, data_args, training_args, versions, held_out,
                           output_dir / "stage1_asr", output_dir / "checkpoints")
    if model.config.mapper_type == "probe" and held_out:
        scores = [held_out_scores(trainer, held_out)]
        if further_folds:
            trained = trainable_state(model)
            for fold in further_folds:
                scores.append(fold_scores(model, processor, model_args, data_args, training_args, fold,
                                          *fold_splits[fold], untrained, output_dir))
            load_trainable_state(model, trained)
        probe.update(choose_probe_mix_weight(model, scores, where, training_args.seed))
    train_seconds = time.time() - started
    if unit:  # what no two splits share: speakers, or the --group_column's values
        split_speakers = {name: sorted({str(v) for v in split[unit]}, key=speaker_sort_key)
                          for name, split in splits.items()}
    else:
        split_speakers = {name: [f"{len(split)} clips drawn at random (no speaker ids; not speaker-independent)"]
                          for name, split in splits.items()}
    split_speakers.setdefault("validation", [])
    split_speakers["unit"] = unit or "clip"
    with model_to_save(trainer) as whole:  # ZeRO-3 and FSDP hold the model in shards: every process gathers them
        if training_args.process_index == 0:
            # Lean unless asked (or unless a backbone has no Hub id: then every weight, with a warning); code included.
            whole.save_pretrained(output_dir, full_weights=True if model_args.save_full_weights else None)
            processor.save_pretrained(output_dir)
            size = sum(f.stat().st_size for f in output_dir.rglob("*") if f.is_file() and "checkpoints" not in f.parts
                       and "stage1_asr" not in f.parts) / 1e6
            whole = not backbones_left_out(output_dir / "model.safetensors")  # also when a backbone has no Hub id
            if whole:
                logger.info("Saved %s with every weight: %.0f MB.", output_dir, size)
            else:
                logger.info(
                    "Saved %s as a lean folder (%.1f MB: the mapper, statistics, probe and LoRA, in peft's layout "
                    "under lora/); it loads its backbones %s and %s by Hub id. For a folder with every weight pass "
                    "--save_full_weights true, or call model.save_pretrained(folder, full_weights=True).",
                    output_dir, size, model.config.audio_model_id, model.config.text_model_id,
                )
    trainer.accelerator.wait_for_everyone()  # the folder is saved: every process reads its LLM dtype from it
    metrics = evaluate_and_report(trainer, processor, clips["test"], output_dir)
    metrics["train_seconds"] = round(train_seconds, 1)
    metrics.update(probe)
    if training_args.process_index == 0:
        # The trained model and the encoder cache (which holds the model) are not needed any more: freed before the
        # saved folder is loaded beside them.
        config = model.config
        del trainer, model, cache
        gc.collect()
        with models_built_whole(training_args):  # the folder loaded whole, as a user's pipeline loads it
            metrics["delivered_ua"] = check_delivered_score(output_dir, clips["test"], metrics["ua"], labels)
        metrics["test_clips_without_speech"] = clips_without_speech(clips["test"])
        write_model_card(output_dir, model_args, data_args, split_speakers, metrics, config,
                         hub_model_id=training_args.hub_model_id, full_weights=whole)
    return metrics
