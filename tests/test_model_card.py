"""
train.py's reporting: its SER scores come from an `evaluate` metric module loaded from the repository (offline), and
the model card it writes parses with huggingface_hub and carries the metadata the Hub reads.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from huggingface_hub import ModelCard

import dependencies_emosllm as deps

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import training.evaluation  # noqa: E402
import training.hub  # noqa: E402
import training.metrics  # noqa: E402

LABELS = ["angry", "happy", "neutral", "sad"]


# --------------------------------------------------------------------------------------------------------------------
# The metric
# --------------------------------------------------------------------------------------------------------------------
OFFLINE_LOAD = textwrap.dedent(
    r"""
    import json, sys
    import evaluate
    metric = evaluate.load(sys.argv[1])
    print(json.dumps({"class": type(metric).__mro__[1].__name__, "name": metric.name,
                      "scores": metric.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2],
                                               labels=["sad", "happy", "angry"])}))
    """
)


def test_the_ser_metric_is_an_evaluate_module_that_loads_from_its_folder_without_the_network(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # offline, a fresh module cache, and a Hub endpoint nothing answers on: a download attempt would fail
    env.update(HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               HF_ENDPOINT="http://127.0.0.1:9", OMP_NUM_THREADS="1")
    (tmp_path / "load.py").write_text(OFFLINE_LOAD)
    run = subprocess.run([sys.executable, "load.py", str(training.metrics.SER_METRIC_PATH)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["class"] == "Metric" and result["name"] == "ser_accuracy"
    scores = result["scores"]
    assert scores["ua"] == pytest.approx((1 + 1 + 0.5) / 3) and scores["wa"] == pytest.approx(0.75)
    assert scores["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_the_scores_come_from_the_evaluate_module_and_match_scikit_learn():
    import evaluate
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    rng = np.random.default_rng(0)
    for size in (5, 40):
        predictions, references = rng.integers(0, 4, size), rng.integers(0, 4, size)
        references[:4] = range(4)  # every class present, so UA is scikit-learn's balanced accuracy
        scores = training.metrics.compute_ser_metrics(predictions, references, LABELS)
        assert scores["ua"] == pytest.approx(balanced_accuracy_score(references, predictions))
        assert scores["wa"] == pytest.approx(accuracy_score(references, predictions))
        assert scores["macro_f1"] == pytest.approx(f1_score(references, predictions, average="macro"))
        names = training.metrics.compute_ser_metrics([LABELS[i] for i in predictions], [LABELS[i] for i in references],
                                                 LABELS)
        assert names == scores
    assert isinstance(training.metrics._ser_metric, evaluate.Metric)  # what compute_ser_metrics used
    assert training.evaluation.compute_ser_metrics is training.metrics.compute_ser_metrics
    assert set(scores) == {"ua", "wa", "macro_f1", "weighted_f1", "per_class_recall", "confusion_matrix", "labels",
                           "num_samples"}
    # a class never true counts in the macro F1 with 0, not at all in UA
    scores = training.metrics.compute_ser_metrics(["sad", "sad", "happy"], ["sad", "happy", "happy"], LABELS)
    assert scores["ua"] == pytest.approx(0.75) and scores["per_class_recall"] == {"happy": 0.5, "sad": 1.0}
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    for bad, references, match in (([9], [0], "class id 9 is outside 0..3"),
                                   (["bored"], ["sad"], "'bored' is not one of the labels"),
                                   ([0, 1], [0], "as many predictions as references")):
        with pytest.raises(ValueError, match=match):
            training.metrics.compute_ser_metrics(bad, references, LABELS)


# --------------------------------------------------------------------------------------------------------------------
# The model card
# --------------------------------------------------------------------------------------------------------------------
METRICS = {"ua": 0.7104, "wa": 0.7031, "macro_f1": 0.6987, "weighted_f1": 0.7012, "probe_c": 0.01,
           "probe_selection": "validation UA 0.69"}
CONFIG = SimpleNamespace(encoder_layer_combination="concatenate", mapper_type="probe", language_model_training="lora",
                         labels=LABELS, answered_by_probe=False)


def data_args(**given) -> SimpleNamespace:
    return SimpleNamespace(**{"dataset_name": None, "data_dir": None, "dataset_split": "train", **given})


def write_card(tmp_path: Path, model_args, data, split, hub_model_id=None) -> tuple[ModelCard, str]:
    output = tmp_path / "outputs" / "emosllm-ravdess"
    output.mkdir(parents=True)
    training.hub.write_model_card(output, model_args, data, split, METRICS, CONFIG,
                                 hub_model_id=hub_model_id)
    path = output / "README.md"
    return ModelCard.load(path), path.read_text()


def assert_no_absolute_paths(text: str, tmp_path: Path) -> None:
    assert str(tmp_path) not in text and "/tmp" not in text and "outputs/" not in text
    # a path token: a slash where a word starts (`https://...` and `owner/name` Hub ids are fine)
    found = re.search(r"(?:^|[\s\"'`(=\[])/\w", text, re.MULTILINE)
    assert found is None, text[max(found.start() - 40, 0):found.end() + 40]


def assert_common_metadata(card: ModelCard, text: str, license: str = "apache-2.0") -> None:
    data = card.data
    assert data.license == license and data.library_name == "transformers"
    assert data.pipeline_tag == "audio-classification"
    results = {result.metric_name: result for result in data.eval_results}
    assert {r.metric_type for r in results.values()} == {"balanced_accuracy", "accuracy", "f1"}
    assert results["Unweighted accuracy (UA, mean per-class recall)"].metric_value == 0.7104
    assert results["Unweighted accuracy (UA, mean per-class recall)"].metric_type == "balanced_accuracy"
    assert results["Weighted accuracy (WA, overall accuracy)"].metric_type == "accuracy"
    assert results["Weighted accuracy (WA, overall accuracy)"].metric_value == 0.7031
    assert results["Macro F1"].metric_type == "f1" and results["Macro F1"].metric_args == {"average": "macro"}
    assert results["Weighted F1"].metric_args == {"average": "weighted"}
    assert all(r.task_type == "audio-classification" for r in results.values())
    # what a user of the folder installs, with the tested transformers range
    assert deps.pip_command(*deps.HUB_REQUIREMENTS) in text and '"transformers>=5.20,<5.25"' in text
    assert "Apache-2.0" in text and "probe C=0.01, validation UA 0.69" in text


def test_card_of_hub_backbones_on_a_local_ravdess_copy(tmp_path):
    model_args = SimpleNamespace(audio_encoder="openai/whisper-tiny.en", llm="HuggingFaceTB/SmolLM2-135M-Instruct")
    split = {"train": [f"ravdess_{i:02d}" for i in range(1, 13)], "validation": ["ravdess_13", "ravdess_14"],
             "test": ["ravdess_17", "ravdess_18"], "unit": "speaker"}
    card, text = write_card(tmp_path, model_args, data_args(data_dir=str(tmp_path / "data" / "ravdess")), split,
                            hub_model_id="someone/emosllm-ravdess")
    # RAVDESS is CC BY-NC-SA 4.0: the weights trained on it carry its terms.
    assert_common_metadata(card, text, license="cc-by-nc-sa-4.0")
    assert "RAVDESS, is licensed `cc-by-nc-sa-4.0`, whose terms carry over" in text
    assert card.data.base_model == ["openai/whisper-tiny.en", "HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert card.data.datasets is None  # a local copy has no Hub id; the corpus is named instead
    result = card.data.eval_results[0]
    assert (result.dataset_type, result.dataset_name) == ("ravdess", "RAVDESS")
    assert result.dataset_split == "test speakers: ravdess_17, ravdess_18"
    assert 'model="someone/emosllm-ravdess"' in text
    assert "(licence: MIT)" in text and "(licence: Apache-2.0)" in text  # Whisper's and SmolLM2's
    assert "Speaker-independent split: train 12 speakers; validation speakers: ravdess_13, ravdess_14; test" in text
    assert_no_absolute_paths(text, tmp_path)


def test_card_of_local_backbones_on_a_hub_dataset_without_a_hub_id(tmp_path):
    model_args = SimpleNamespace(audio_encoder=str(tmp_path / "encoder"), llm=str(tmp_path / "llm"))
    split = {"train": ["a", "b", "c"], "validation": [], "test": ["d"], "unit": "speaker"}
    card, text = write_card(tmp_path, model_args, data_args(dataset_name="someone/emotional-speech"), split)
    assert_common_metadata(card, text)  # the data's licence is not known: the card says so and how to state it
    assert "licence is not known here" in text and "`--license`" in text
    card, text = write_card(tmp_path / "given", model_args,
                            data_args(dataset_name="someone/emotional-speech", license="cc-by-4.0"), split)
    assert_common_metadata(card, text)  # a permissive licence leaves the model Apache-2.0
    assert "is licensed `cc-by-4.0`. This model's code and trained weights are Apache-2.0." in text
    assert card.data.base_model is None  # local folders are no Hub ids
    assert card.data.datasets == ["someone/emotional-speech"]
    assert card.data.eval_results[0].dataset_type == "someone/emotional-speech"
    assert 'model="<your-username>/emosllm-ravdess"' in text  # no --hub_model_id: a placeholder, never a path
    assert "a local folder (`encoder`)" in text and "a local folder (`llm`)" in text
    assert_no_absolute_paths(text, tmp_path)


def test_card_states_the_llm_and_the_probe_and_when_the_answer_is_the_probes_alone(tmp_path):
    model_args = SimpleNamespace(audio_encoder="openai/whisper-tiny.en", llm="HuggingFaceTB/SmolLM2-135M-Instruct")
    split = {"train": ["a", "b", "c"], "validation": [], "test": ["d"], "unit": "speaker"}
    held_out = {"held_out": "the training speakers (every fold held out in turn)", "held_out_clips": 96,
                "held_out_llm_ua": 0.71, "held_out_probe_ua": 0.74, "held_out_answer_ua": 0.74,
                "held_out_departure_confidence": 0.12, "llm_ua": 0.70, "probe_ua": 0.69}
    for weight, alone in ((1.0, True), (0.5, False)):
        output = tmp_path / str(weight)
        output.mkdir()
        config = SimpleNamespace(**{**vars(CONFIG), "answered_by_probe": alone})  # EmoSLLMConfig's: mix weight 1
        training.hub.write_model_card(output, model_args, data_args(), split,
                                      {**METRICS, **held_out, "probe_mix_weight": weight}, config)
        text = (output / "README.md").read_text()
        assert "UA 0.7100 (LLM alone), 0.7400 (probe alone)" in text and "scored below its probe" in text
        assert ("The answer is the probe's alone: the pipeline gives it without running the LLM." in text) is alone


def test_card_of_the_smoke_corpus_split_by_clip(tmp_path):
    model_args = SimpleNamespace(audio_encoder="openai/whisper-tiny.en", llm="HuggingFaceTB/SmolLM2-135M-Instruct")
    split = {name: [f"{n} clips drawn at random (no speaker ids; not speaker-independent)"]
             for name, n in (("train", 40), ("validation", 5), ("test", 10))}
    split["unit"] = "clip"
    card, text = write_card(tmp_path, model_args, data_args(), split)
    assert_common_metadata(card, text)
    assert card.data.datasets is None
    assert card.data.eval_results[0].dataset_name == "EmoSLLM smoke corpus (generated with espeak-ng)"
    assert "NOT speaker-independent" in text
    assert_no_absolute_paths(text, tmp_path)
