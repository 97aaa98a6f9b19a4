# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
What train.py hands the Hub: the model card of a trained output folder (`write_model_card`, with huggingface_hub's
`ModelCard` and its model-index metadata) and the upload of that folder (`push_to_hub`, or the command that does it
later when there is no network). Imported by train.py only; a saved model folder does not need it.
"""

import json
import logging
import shlex
from pathlib import Path

logger = logging.getLogger("emosllm.train")  # its messages belong to train.py's run log


# Licences of the default backbones' families, named in the model card (other backbones: see their own cards).
BACKBONE_LICENSES = {"openai/whisper-": "MIT", "HuggingFaceTB/SmolLM2-": "Apache-2.0"}
# Speaker-id prefixes of the corpora training.corpora recognises by their file names.
KNOWN_CORPORA = {"ravdess_": "RAVDESS", "cremad_": "CREMA-D", "tess_": "TESS", "emodb_": "EmoDB"}
SMOKE_CORPUS_NAME = "EmoSLLM smoke corpus (generated with espeak-ng)"
# Licences of the corpora training.corpora recognises, as their distributors state them (Hub licence ids); EmoDB's is
# not listed here: pass train.py --license.
CORPUS_LICENSES = {"RAVDESS": "cc-by-nc-sa-4.0", "CREMA-D": "odbl", "TESS": "cc-by-nc-nd-4.0"}
# Creative Commons terms that weights trained on the data keep (non-commercial, no derivatives, share-alike).
RESTRICTING_TERMS = ("-nc", "-nd", "-sa")


def card_licenses(data_args, dataset_name: str) -> tuple[str | None, str]:
    """(the training data's licence, or None when unknown; the model's licence): `--license` or a known corpus's;
    the model takes the data's licence where its terms restrict what is made from the data, else Apache-2.0 (the
    code's).

    Args:
        data_args: The run's `DataArguments` (`license`, `dataset_name`, `data_dir`; no data source: the smoke corpus,
            made by this repository, so both are Apache-2.0).
        dataset_name: The data's name as the card gives it (`card_dataset`), looked up in `CORPUS_LICENSES`.
    """
    if not (data_args.dataset_name or data_args.data_dir):
        return "apache-2.0", "apache-2.0"  # the smoke corpus: made by this repository
    data = getattr(data_args, "license", None) or CORPUS_LICENSES.get(dataset_name)
    restricted = data is not None and any(term in data.lower() for term in RESTRICTING_TERMS)
    return data, data.lower() if restricted else "apache-2.0"


def hub_repo_id(name: str | None) -> str | None:
    """
    `name` when it is a Hub repo id, None when it is a local path (or nothing).

    Args:
        name: A Hub repo id or a local path (e.g. `--audio_encoder`, `--llm`, `--dataset_name`), or None.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not name or Path(name).expanduser().exists() or Path(name).is_absolute() or name.startswith(("~", ".")):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def card_backbone(name: str) -> str:
    """
    A backbone as the card names it: its Hub id with its licence, or a local folder by its folder name only.

    Args:
        name: The backbone's Hub id or local folder (`--audio_encoder`, `--llm`).

    Returns:
        Markdown for the card: a link to the Hub id, or the folder's name.
    """
    repo_id = hub_repo_id(name)
    if repo_id is None:
        return f"a local folder (`{Path(name).name}`)"
    licence = next((lic for prefix, lic in BACKBONE_LICENSES.items() if repo_id.startswith(prefix)), None)
    return f"[`{repo_id}`](https://huggingface.co/{repo_id}) (licence: {licence or 'see its model card'})"


def card_dataset(data_args, split: dict) -> tuple[str | None, str, str]:
    """
    (Hub dataset id or None, the model-index dataset type, its name): never a local path.

    Args:
        data_args: The run's `DataArguments` (`dataset_name`, `data_dir`; neither: the smoke corpus).
        split: The speakers by split name (`train`, `validation`, `test`), as `write_model_card` takes them; speaker
            ids of one known corpus (`KNOWN_CORPORA`'s prefixes) name that corpus.
    """
    source = data_args.dataset_name or data_args.data_dir
    if not source:
        return None, "emosllm-smoke-corpus", SMOKE_CORPUS_NAME
    repo_id = hub_repo_id(data_args.dataset_name)
    if repo_id is not None:
        return repo_id, repo_id, repo_id
    speakers = [s for name in ("train", "validation", "test") for s in split.get(name, [])]
    corpora = {corpus for prefix, corpus in KNOWN_CORPORA.items() if any(s.startswith(prefix) for s in speakers)}
    if len(corpora) == 1 and all(s.startswith(tuple(KNOWN_CORPORA)) for s in speakers):
        corpus = corpora.pop()
        return None, corpus.lower(), corpus
    return None, "local", f"a local corpus (`{Path(source).name}`)"


def write_model_card(output_dir: Path, model_args, data_args, split: dict, metrics: dict, config,
                     hub_model_id: str | None = None, full_weights: bool = False) -> None:
    """
    README.md: the model card of the saved folder, through huggingface_hub's ModelCard. Metadata: licence, base models
    (the backbones' Hub ids), the Hub dataset (when the data came from the Hub), pipeline tag, library and the test
    scores as `model-index` results (standard metric types: accuracy, f1). Text: the backbones and their licences,
    the data and split, the scores, what a user installs, and a usage snippet for `hub_model_id` (`--hub_model_id`;
    else a placeholder), and whether the folder holds every weight (`full_weights`) or loads its backbones by Hub id.
    Never a local path: local backbones and data are named by their folder's name only.

    Args:
        output_dir: The saved model folder: README.md is written there, and the card is named after it.
        model_args: The run's `ModelArguments` (`audio_encoder`, `llm`).
        data_args: The run's `DataArguments` (the data source and `license`).
        split: `{split name: its speakers (or groups)}` and `"unit"` (`speaker`, `clip` or the `--group_column`).
        metrics: The run's test report (`ua`, `wa`, `macro_f1`, `weighted_f1`; the probe's figures where present).
        config: The trained model's `EmoSLLMConfig`: the layers, mapper, labels and how the LLM trained.
        hub_model_id: The repo id of the usage snippet; None: a placeholder.
        full_weights: Whether the folder holds every weight.
    """
    import importlib.metadata

    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from training.probe import DEPARTURE_CONFIDENCE

    from dependencies_emosllm import HUB_OPTIONAL_REQUIREMENTS, HUB_REQUIREMENTS, distribution_name, pip_command

    hub_dataset, dataset_type, dataset_name = card_dataset(data_args, split)
    unit = split.get("unit", "speaker")
    held_out = (f"test {unit}s: {', '.join(split['test'])}" if unit != "clip" else "test clips drawn at random")
    scores = (  # (key, metric type, name, metric arguments)
        ("ua", "balanced_accuracy", "Unweighted accuracy (UA, mean per-class recall)", None),
        ("wa", "accuracy", "Weighted accuracy (WA, overall accuracy)", None),
        ("macro_f1", "f1", "Macro F1", {"average": "macro"}),
        ("weighted_f1", "f1", "Weighted F1", {"average": "weighted"}),
    )
    results = [
        EvalResult(task_type="audio-classification", task_name="Speech emotion recognition",
                   dataset_type=dataset_type, dataset_name=dataset_name, dataset_split=held_out,
                   metric_type=metric_type, metric_name=name, metric_args=args,
                   metric_value=round(float(metrics[key]), 4))
        for key, metric_type, name, args in scores
    ]
    base_models = [m for m in (hub_repo_id(model_args.audio_encoder), hub_repo_id(model_args.llm)) if m]
    data_license, model_license = card_licenses(data_args, dataset_name)
    card_data = ModelCardData(
        license=model_license, library_name="transformers", pipeline_tag="audio-classification",
        base_model=base_models or None, datasets=[hub_dataset] if hub_dataset else None,
        metrics=["balanced_accuracy", "accuracy", "f1"], model_name=output_dir.name,
        tags=["speech-emotion-recognition", "emosllm", "lora", "peft", "custom_code"], eval_results=results,
    )
    repo_id = hub_model_id or f"<your-username>/{output_dir.name}"
    probe = ""
    if "probe_c" in metrics:
        probe = f" (probe C={metrics['probe_c']:g}, {metrics['probe_selection']})"
    answer_and_probe = ""
    if "held_out_probe_ua" in metrics:  # the probe mapper: the answer beside the probe it reads (train.py)
        answer_and_probe = (
            f"\n- The LLM's answer and the probe it reads, on {metrics['held_out']} ({metrics['held_out_clips']} "
            f"clips): UA {metrics['held_out_llm_ua']:.4f} (LLM alone), {metrics['held_out_probe_ua']:.4f} (probe "
            f"alone); the answer mixes in the probe's scores with weight {metrics['probe_mix_weight']:g} (UA "
            f"{metrics['held_out_answer_ua']:.4f} there; it departs from the probe only where it beats it in at least "
            f"{DEPARTURE_CONFIDENCE:.0%} of bootstrap resamples of those clips, here "
            f"{metrics['held_out_departure_confidence']:.0%}). On the test {unit}s: LLM alone UA "
            f"{metrics['llm_ua']:.4f}, probe alone {metrics['probe_ua']:.4f}."
        )
        if metrics["held_out_llm_ua"] < metrics["held_out_probe_ua"]:
            answer_and_probe += " **The LLM alone scored below its probe on the held-out speakers.**"
        if config.answered_by_probe:
            answer_and_probe += " The answer is the probe's alone: the pipeline gives it without running the LLM."
    if unit == "speaker":
        split_text = "Speaker-independent split"
    elif unit == "clip":
        split_text = "Random split by clip (the data has no speaker ids: NOT speaker-independent)"
    else:
        split_text = f"Split by `{unit}` (no value in two splits)"
    split_line = split_text if unit == "clip" else (
        f"{split_text}: train {len(split['train'])} {unit}s; validation {unit}s: "
        f"{', '.join(split['validation']) or 'none'}; {held_out}"
    )
    versions = []
    for requirement in HUB_REQUIREMENTS:
        name = distribution_name(requirement)
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    if data_license is None:
        licence_text = (f"The training data's licence is not known here: check that {dataset_name}'s terms allow "
                        "this model's use, and state it with train.py's `--license` (its Hub licence id). This "
                        "model's code is Apache-2.0.")
    elif model_license == "apache-2.0":
        licence_text = (f"The training data, {dataset_name}, is licensed `{data_license}`. This model's code and "
                        "trained weights are Apache-2.0.")
    else:
        licence_text = (f"The training data, {dataset_name}, is licensed `{data_license}`, whose terms carry over to "
                        f"what is made from it, so this model's trained weights are `{model_license}` too. Its code "
                        "is Apache-2.0.")
    weights_note = (
        "This folder holds only what EmoSLLM trained and fitted (the mapper, the layer statistics, the probe; LoRA "
        "in peft's layout under `lora/`); loading fetches the frozen backbones named in `config.json` "
        "(`audio_model_id`, `text_model_id`) from the Hub, or from a local copy: `from_pretrained(folder, "
        "text_model_id='path/to/a/copy')`. For a self-contained folder with every weight, load it and call "
        "`model.save_pretrained(new_folder, full_weights=True)` (bf16 backbones), or train with "
        "`--save_full_weights true`."
        if not full_weights else
        "This folder holds every weight (the frozen backbones in bf16); it loads without fetching anything."
    )
    saved_processor = output_dir / "processor_config.json"  # the text features the saved folder reads
    features = json.loads(saved_processor.read_text()).get("text_features", []) if saved_processor.is_file() else []
    example = ", ".join(f'"{name}": ...' for name in features)
    features_note = (f"\n\nThis model reads the text features {', '.join(features)} (trained from the data's columns): "
                     f"pass them with each clip, `classifier('speech.wav', text_features={{{example}}})`."
                     if features else "")
    lora_file = output_dir / "lora" / "adapter_config.json"
    lora = (f"with LoRA rank {json.loads(lora_file.read_text())['r']}" if lora_file.is_file()
            else f"({config.language_model_training})")
    text = f"""---
{card_data.to_yaml()}
---

# {output_dir.name}

EmoSLLM (arXiv 2508.14130) fine-tuned for speech emotion recognition with this repository's `train.py`.

- Audio encoder: {card_backbone(model_args.audio_encoder)}, frozen (layers:
  `{config.encoder_layer_combination}`); mapper: `{config.mapper_type}`{probe};
  LLM: {card_backbone(model_args.llm)} {lora}.
- Data: {dataset_name}; labels: {", ".join(config.labels)}.
- {split_line}.
- Test scores: UA {metrics['ua']:.4f}, WA {metrics['wa']:.4f}, macro F1 {metrics['macro_f1']:.4f},
  weighted F1 {metrics['weighted_f1']:.4f}.{answer_and_probe}

## Requirements

```bash
{pip_command(*HUB_REQUIREMENTS)}
```

Optional: `{", ".join(HUB_OPTIONAL_REQUIREMENTS)}` (with FFmpeg's shared libraries) decodes audio formats libsndfile
does not read. Trained with {", ".join(versions)}.

## Usage

```python
from transformers import pipeline

classifier = pipeline("audio-classification", model="{repo_id}", trust_remote_code=True)
classifier("speech.wav")  # [{{"score": ..., "label": ...}}, ...], best first
```{features_note}

The scores rank the classes; on speakers the model did not train on their size is a little surer than it should be
(measured on RAVDESS: a mean top probability of 0.79-0.83 for 71-73% right answers), so read the label first.

{weights_note}

## Licence

{licence_text} The backbones keep their own licences: the audio encoder {card_backbone(model_args.audio_encoder)}
and the LLM {card_backbone(model_args.llm)}.
"""
    ModelCard(text).save(output_dir / "README.md")


# What a push leaves out of the output folder: the stages' checkpoints (and the debug records kept with them).
PUSH_IGNORE_PATTERNS = ["*checkpoints/*", "*stage1_asr/*"]


def push_command(output_dir: Path, repo_id: str, private: bool | None = None, revision: str | None = None) -> str:
    """
    The `hf upload` command line that pushes the output folder as `push_to_hub` does.

    Args:
        output_dir: The output folder to upload (named by its absolute path).
        repo_id: The model repo on the Hub.
        private: Whether the repo is created private (`--private`).
        revision: The branch to push to; None: the default branch.
    """
    command = ["hf", "upload", repo_id, str(Path(output_dir).resolve()), "."]
    for pattern in PUSH_IGNORE_PATTERNS:
        command += ["--exclude", pattern]
    command += ["--private"] if private else []
    command += ["--revision", revision] if revision else []
    return shlex.join(command)


def push_to_hub(output_dir: Path, repo_id: str, token: str | None = None, private: bool | None = None,
                revision: str | None = None) -> bool:
    """
    `--push_to_hub`: uploads the final output folder (without the checkpoints) to the model repo `repo_id`, once, at
    the end of the run (the stages' Trainers never push). Where it cannot (HF_HUB_OFFLINE=1, no network, no token),
    it prints plainly that nothing was pushed and the command that pushes the folder later; the run still succeeds,
    the model is saved.

    Args:
        output_dir: The final output folder; its checkpoints are left out (`PUSH_IGNORE_PATTERNS`).
        repo_id: The model repo (`--hub_model_id`, else the folder's name), created if absent.
        token: The Hub token (`--hub_token`); None: the one `hf auth login` saved.
        private: Whether a repo created now is private (`--hub_private_repo`); None: the Hub's default.
        revision: The branch to push to (`--hub_revision`); None: the default branch.

    Returns:
        Whether the folder was pushed.
    """
    from huggingface_hub import HfApi, is_offline_mode

    if is_offline_mode():
        reason = "HF_HUB_OFFLINE=1 is set"
    else:
        try:
            api = HfApi(token=token)
            repo_id = api.create_repo(repo_id, exist_ok=True, private=private).repo_id
            api.upload_folder(folder_path=str(output_dir), repo_id=repo_id, revision=revision,
                              ignore_patterns=PUSH_IGNORE_PATTERNS, commit_message="EmoSLLM model from train.py")
            logger.info("Pushed %s to https://huggingface.co/%s", output_dir, repo_id)
            return True
        except Exception as error:  # no network, no token, no rights: say so, keep the local folder
            reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:300]}"
    folder = str(Path(output_dir).resolve())
    logger.warning("--push_to_hub: the model was not pushed (%s).", reason)
    print(
        f"\nThe model was NOT pushed to the Hub ({reason}). It is saved in {folder}.\n"
        "To push it later, from a machine with the network and a token (`hf auth login`), run:\n"
        f"  {push_command(output_dir, repo_id, private, revision)}\n"
        "or, in Python:\n"
        f"  from huggingface_hub import upload_folder; upload_folder(repo_id={repo_id!r}, folder_path={folder!r}, "
        f"ignore_patterns={PUSH_IGNORE_PATTERNS!r})",
        flush=True,
    )
    return False


__all__ = ["hub_repo_id", "push_command", "push_to_hub", "write_model_card"]
