"""
train.py end to end on tiny random backbones, for every kind of `datasets` source (an audiofolder without speakers,
a CSV table of audio paths, save_to_disk folders of a Dataset and a DatasetDict) and for the TrainingArguments flags
that change what is saved, evaluated, kept and pushed.
"""

import csv
import json
import shutil
import sys
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file
from test_train import REPO, run, tiny_setup, train_command  # noqa: F401 (tiny_setup: the module's fixture)

sys.path.insert(0, str(REPO))

STEPS = ["--max_steps", "2", "--save_steps", "2", "--eval_steps", "2"]


def corpus_rows(setup: Path) -> list[dict]:
    """The tone corpus's manifest rows (4 speakers x 4 labels x 2 takes)."""
    with open(setup / "corpus" / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def sources(tiny_setup):
    """The tone corpus in four other forms, each under `tiny_setup / "sources"`."""
    root, rows = tiny_setup / "sources", corpus_rows(tiny_setup)
    corpus = tiny_setup / "corpus"
    for row in rows:  # an audiofolder: one subfolder per label, nothing else (no speakers, no transcripts)
        (root / "audiofolder" / row["label"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus / row["path"], root / "audiofolder" / row["label"] / row["path"])
    (root / "table").mkdir()  # a CSV of its own names, paths relative to its folder
    lines = ["file,emotion,spk,text"] + [f"../../corpus/{r['path']},{r['label']},{r['speaker']},{r['transcript']}"
                                         for r in rows]
    (root / "table" / "clips.csv").write_text("\n".join(lines) + "\n")

    def dataset(selected, with_speaker=True):
        columns = {"audio": [str(corpus / r["path"]) for r in selected], "label": [r["label"] for r in selected],
                   "transcript": [r["transcript"] for r in selected]}
        if with_speaker:
            columns["speaker"] = [r["speaker"] for r in selected]
        else:  # a recording-session id instead: spk01's clips are session sess1
            columns["session"] = [f"sess{int(r['speaker'][3:])}" for r in selected]
        return datasets.Dataset.from_dict(columns).cast_column("audio", datasets.Audio())

    dataset(rows, with_speaker=False).save_to_disk(str(root / "saved_dataset"))
    datasets.DatasetDict({
        "train": dataset([r for r in rows if r["speaker"] != "spk04"]),
        "test": dataset([r for r in rows if r["speaker"] == "spk04"]),
    }).save_to_disk(str(root / "saved_dict"))
    return root


def env(setup: Path) -> dict[str, str]:
    return {"HF_DATASETS_CACHE": str(setup / "datasets_cache"), "OMP_NUM_THREADS": "1"}


def test_audiofolder_without_speakers_trains_on_a_seeded_split_by_clip_and_warns(tiny_setup, sources, tmp_path):
    output = tmp_path / "out"
    result = run(train_command(tiny_setup, output, "--use_transcript", "none", *STEPS,
                               data=["--data_dir", str(sources / "audiofolder")]), tmp_path, env(tiny_setup))
    assert "CANNOT be speaker-independent" in result.stderr and "Splitting by clip" in result.stderr
    assert "manifest" not in result.stderr
    report = json.loads((output / "test_report.json").read_text())
    assert report["num_samples"] == 8  # 20% of each label's 8 clips (2) for test
    assert (output / "model.safetensors").exists()


def test_csv_table_with_relative_paths_and_its_own_column_names_trains(tiny_setup, sources, tmp_path):
    output = tmp_path / "out"
    data = ["--data_dir", str(sources / "table"), "--label_column", "emotion", "--speaker_column", "spk",
            "--transcript_column", "text", "--test_speakers", "4", "--eval_speakers", "3"]
    result = run(train_command(tiny_setup, output, *STEPS, data=data), tmp_path, env(tiny_setup))
    assert "reading the audio files named in 'file'" in result.stderr
    assert json.loads((output / "test_report.json").read_text())["num_samples"] == 8  # speaker 4's clips


def test_saved_dataset_without_speakers_trains_split_by_a_group_column(tiny_setup, sources, tmp_path):
    output = tmp_path / "out"
    data = ["--dataset_name", str(sources / "saved_dataset"), "--group_column", "session", "--test_speakers", "4",
            "--eval_speakers", "3"]
    result = run(train_command(tiny_setup, output, *STEPS, data=data), tmp_path, env(tiny_setup))
    assert "Splitting by 'session'" in result.stderr and "CANNOT be speaker-independent" not in result.stderr
    assert json.loads((output / "test_report.json").read_text())["num_samples"] == 8  # session 4's clips


def test_saved_dataset_dict_trains_on_the_splits_it_is_told_to_join(tiny_setup, sources, tmp_path):
    output = tmp_path / "out"
    data = ["--data_dir", str(sources / "saved_dict"), "--dataset_split", "train+test", "--test_speakers", "4",
            "--eval_speakers", "3"]
    run(train_command(tiny_setup, output, *STEPS, data=data), tmp_path, env(tiny_setup))
    # Speaker 4 is only in the DatasetDict's 'test' split: the joined splits were read.
    assert json.loads((output / "test_report.json").read_text())["num_samples"] == 8


def test_folds_train_one_model_per_fold_each_tested_on_its_own_speakers_and_report_their_mean(tiny_setup, tmp_path):
    """`--folds 2`: leave-speakers-out cross-validation, the fold's model in `fold<i>`, all_results.json the mean."""
    output = tmp_path / "out"
    run(train_command(tiny_setup, output, "--folds", "2", "--max_steps", "2", "--eval_strategy", "no",
                      "--save_strategy", "no", data=["--data_dir", str(tiny_setup / "corpus")]), tmp_path)
    report = json.loads((output / "all_results.json").read_text())
    tested = []
    for fold in (0, 1):
        folder = output / f"fold{fold}"
        assert (folder / "model.safetensors").is_file() and report["folds"][fold]["delivered_ua"] is not None
        tested.append(json.loads((folder / "test_report.json").read_text())["num_samples"])
    assert tested == [16, 16]  # speakers 1-2, then 3-4: every clip of the corpus tested once
    for key in ("ua", "wa", "macro_f1"):
        assert report[key] == pytest.approx(sum(fold[key] for fold in report["folds"]) / 2, abs=1e-12)


def test_push_to_hub_offline_trains_saves_and_prints_the_command_to_push_later(tiny_setup, tmp_path):
    output = tmp_path / "emosllm-tones"
    result = run(train_command(tiny_setup, output, *STEPS, "--push_to_hub", "true"), tmp_path,
                 {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert (output / "model.safetensors").exists() and (output / "checkpoints" / "checkpoint-2").is_dir()
    assert "The model was NOT pushed to the Hub (HF_HUB_OFFLINE=1 is set)" in result.stdout
    # The default repo id is the output folder's name; the command leaves out the checkpoints.
    assert f"hf upload emosllm-tones {output.resolve()} . --exclude '*checkpoints/*'" in result.stdout
    assert "upload_folder(repo_id='emosllm-tones'" in result.stdout
    assert "Traceback" not in result.stderr


def test_push_to_hub_uploads_the_final_folder_once_and_reports_a_failed_push(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    import training.hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, exist_ok, private):
            calls.append(("create", repo_id, private))
            return huggingface_hub.RepoUrl(f"https://huggingface.co/user/{repo_id}")

        def upload_folder(self, folder_path, repo_id, revision, ignore_patterns, commit_message):
            calls.append(("upload", folder_path, repo_id, tuple(ignore_patterns)))
            if repo_id.endswith("broken"):
                raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
    assert training.hub.push_to_hub(tmp_path, "model", token="t", private=True)
    assert calls == [("token", "t"), ("create", "model", True),
                     ("upload", str(tmp_path), "user/model", ("*checkpoints/*", "*stage1_asr/*"))]
    assert not training.hub.push_to_hub(tmp_path, "broken")
    printed = capsys.readouterr().out
    assert "NOT pushed to the Hub (ConnectionError: no route to host)" in printed
    assert f"hf upload user/broken {tmp_path.resolve()} ." in printed


def parsed(tmp_path, *flags):
    from training.arguments import parse_args

    return parse_args(["--output_dir", str(tmp_path), *flags])[2]


@pytest.mark.parametrize("flags, task, evaluate, best", [
    ([], "ser", True, True),  # the default: the best checkpoint by validation UA
    (["--save_strategy", "no"], "ser", True, False),
    (["--eval_strategy", "no"], "ser", True, False),
    (["--eval_strategy", "steps", "--eval_steps", "3"], "ser", True, False),  # checkpoints at other moments
    (["--save_strategy", "best"], "ser", True, True),
    (["--load_best_model_at_end", "False"], "ser", True, False),
    (["--load_best_model_at_end", "True"], "ser", True, True),
    (["--load_best_model_at_end", "True"], "asr", False, False),  # the ASR stage has no UA to choose by
    (["--load_best_model_at_end", "True"], "ser", False, False),  # no validation clips: warned, the last is kept
])
def test_stage_arguments_follow_the_save_eval_and_best_model_flags(tmp_path, flags, task, evaluate, best):
    from training.trainer import stage_arguments

    args = stage_arguments(parsed(tmp_path, *flags, "--push_to_hub", "true"), tmp_path / "stage", 3, task, evaluate)
    assert args.load_best_model_at_end is best
    assert args.output_dir == str(tmp_path / "stage") and args.num_train_epochs == 3
    assert args.eval_strategy == ("no" if not evaluate else parsed(tmp_path, *flags).eval_strategy)
    assert args.push_to_hub is False  # train.py pushes the final folder itself


def test_an_impossible_best_model_request_is_refused_naming_the_fix(tmp_path):
    from training.trainer import stage_arguments

    for flags in (["--save_strategy", "no"], ["--eval_strategy", "no"], ["--save_strategy", "steps"]):
        with pytest.raises(ValueError, match="With --load_best_model_at_end true, evaluate during training"):
            parsed(tmp_path, "--load_best_model_at_end", "True", *flags)
    args = parsed(tmp_path, "--eval_strategy", "no")
    args.load_best_model_at_end = True  # as a script that builds its own TrainingArguments could
    with pytest.raises(ValueError, match="--load_best_model_at_end true, but --eval_strategy no. With"):
        stage_arguments(args, tmp_path, 1, "ser", True)


def trained_weights(output: Path) -> dict[str, torch.Tensor]:
    """The trainable weights of the saved folder, loaded as a user loads it."""
    from transformers import AutoModelForAudioClassification

    model = AutoModelForAudioClassification.from_pretrained(output, trust_remote_code=True)
    return model.state_dict()


def assert_saved_model_is(output: Path, checkpoint: Path) -> None:
    saved, expected = trained_weights(output), load_file(str(checkpoint / "model.safetensors"))
    for name, tensor in expected.items():
        torch.testing.assert_close(saved[name], tensor, msg=name)


def trainer_arguments(checkpoint: Path):
    """The TrainingArguments the stage's Trainer ran with (saved in every checkpoint)."""
    return torch.load(checkpoint / "training_args.bin", weights_only=False)


def test_save_strategy_no_trains_evaluates_and_keeps_the_last_model(tiny_setup, tmp_path):
    output = tmp_path / "out"
    result = run(train_command(tiny_setup, output, "--save_strategy", "no", "--eval_steps", "1", "--max_steps", "2",
                               "--resume", "true"), tmp_path, {"OMP_NUM_THREADS": "1"})
    assert not list((output / "checkpoints").glob("checkpoint-*"))
    assert "--save_strategy no: no checkpoints to choose from; the last model is kept" in result.stderr
    assert "--save_strategy no writes none, so there is nothing to resume from" in result.stderr
    assert "'eval_ua'" in result.stdout + result.stderr  # it still evaluated
    assert (output / "model.safetensors").exists() and (output / "test_report.json").exists()


def test_eval_strategy_no_trains_without_evaluating_and_keeps_the_last_checkpoint(tiny_setup, tmp_path):
    output = tmp_path / "out"
    result = run(train_command(tiny_setup, output, "--eval_strategy", "no", "--save_steps", "1", "--max_steps", "2"),
                 tmp_path, {"OMP_NUM_THREADS": "1"})
    assert "No evaluation during training (--eval_strategy no): the last model is kept" in result.stderr
    state = json.loads((output / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert not any("eval_ua" in entry for entry in state["log_history"])
    assert trainer_arguments(output / "checkpoints" / "checkpoint-2").load_best_model_at_end is False
    assert_saved_model_is(output, output / "checkpoints" / "checkpoint-2")


def test_load_best_model_at_end_false_keeps_the_last_checkpoint_not_the_best(tiny_setup, tmp_path):
    output = tmp_path / "out"
    run(train_command(tiny_setup, output, "--load_best_model_at_end", "False", "--save_steps", "1", "--eval_steps",
                      "1", "--max_steps", "2"), tmp_path, {"OMP_NUM_THREADS": "1"})
    state = json.loads((output / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert sum("eval_ua" in entry for entry in state["log_history"]) == 2
    assert trainer_arguments(output / "checkpoints" / "checkpoint-2").load_best_model_at_end is False
    assert_saved_model_is(output, output / "checkpoints" / "checkpoint-2")
    first = load_file(str(output / "checkpoints" / "checkpoint-1" / "model.safetensors"))
    saved = trained_weights(output)
    assert any(not torch.equal(saved[name], tensor) for name, tensor in first.items())  # the steps changed weights
