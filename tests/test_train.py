"""
train.py end to end on tiny random backbones: a Hub folder comes out, a killed run resumes losing nothing, bad flags
and a diverged run stop it saying why (its probe recipe: test_train_probe.py).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from configuration_emosllm import DEFAULT_MAPPER_TYPE, MAPPER_SETTINGS
from conftest import LABELS, TINY_LORA, save_tiny_backbones, tone, write_tone_corpus
from safetensors.torch import load_file
from transformers import AutoModelForAudioClassification

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """Tiny random backbones saved as folders (as a Hub checkpoint would be) and a 4-speaker corpus."""
    root = tmp_path_factory.mktemp("train")
    save_tiny_backbones(root)
    write_tone_corpus(root / "corpus", speakers=4)
    return root


def train_command(setup: Path, output: Path, *extra: str, data: list[str] | None = None) -> list[str]:
    """train.py on the tiny backbones; `data`: the data flags (default: the tone corpus, speakers 4 test, 3 eval)."""
    if data is None:
        data = ["--data_dir", str(setup / "corpus"), "--test_speakers", "4", "--eval_speakers", "3"]
    # tiny sizes for the settings the mapper has (train.py refuses a flag its mapper does not read)
    mapper = extra[extra.index("--mapper_type") + 1] if "--mapper_type" in extra else DEFAULT_MAPPER_TYPE
    sizes = [item for flag, key, value in (("--num_queries", "num_queries", "4"),
                                           ("--mapper_hidden_size", "hidden_size", "32"))
             if key in MAPPER_SETTINGS[mapper] and flag not in extra for item in (flag, value)]
    return [
        sys.executable, str(REPO / "train.py"), *data,
        "--audio_encoder", str(setup / "encoder"), "--llm", str(setup / "llm"), "--output_dir", str(output),
        "--encoder_cache_dir", str(setup / "encoder_cache"),
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--bf16", "false",
        *sizes, "--lora_rank", "4", "--learning_rate", "3e-3",
        "--logging_steps", "1", "--save_strategy", "steps", "--eval_strategy", "steps", *extra,
    ]


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs `command` (with `env` added to the environment) and asserts that it succeeds."""
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def trainable_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


COMMAND_LINES = ["train.py", "cli_emosllm.py", "backbones_emosllm.py",
                 *sorted(f"bench/{p.name}" for p in (REPO / "bench").glob("*.py")  # scripts, not their modules
                         if 'if __name__ == "__main__":' in p.read_text())]


@pytest.mark.parametrize("script", COMMAND_LINES)
def test_help_lists_the_options(script):
    """`--help` must print every option (argparse formats help strings with %, so a bare % breaks it)."""
    result = run([sys.executable, str(REPO / script), "--help"], cwd=REPO)
    if script == "train.py":
        from training.arguments import DataArguments, ModelArguments

        options = [f"--{field.name}" for args in (ModelArguments, DataArguments) for field in fields(args)]
        options += ["--output_dir", "--learning_rate", "--resume_from_checkpoint"]  # the Trainer's, too
    else:
        calls = re.findall(r"add_argument\(\s*\"(--[\w-]+)\"(.*)", (REPO / script).read_text())
        # hidden on purpose: a bench's own subprocess flags (`--_name`, or help=argparse.SUPPRESS)
        options = [option for option, rest in calls if not option.startswith("--_") and "SUPPRESS" not in rest]
    assert options, script
    listed = set(re.findall(r"--[\w-]+", result.stdout))
    assert [option for option in options if option not in listed] == []


def test_two_steps_write_a_loadable_hub_folder(tiny_setup, tmp_path):
    output = tmp_path / "out"
    run(train_command(tiny_setup, output, "--mapper_type", "qpmapper", "--encoder_layer_combination",
                      "weighted_average", "--max_steps", "2", "--save_steps", "2", "--eval_steps", "2"), tmp_path)
    for name in ("config.json", "model.safetensors", "modeling_emosllm.py", "processor_config.json",
                 "test_report.json", "test_confusion_matrix.png", "README.md"):
        assert (output / name).exists(), name
    report = json.loads((output / "test_report.json").read_text())
    assert set(report["per_class_recall"]) <= set(LABELS) and 0 <= report["ua"] <= 1
    card = (output / "README.md").read_text()
    assert "model-index" in card and "Unweighted accuracy" in card
    from huggingface_hub import ModelCard  # the card parses, with its metadata (tests/test_model_card.py: the rest)

    card_data = ModelCard.load(output / "README.md").data
    assert card_data.license == "apache-2.0" and card_data.pipeline_tag == "audio-classification"
    assert card_data.base_model is None and card_data.datasets is None  # local backbones and data: no Hub ids
    assert str(tmp_path) not in card and str(tiny_setup) not in card  # and no local paths
    model = AutoModelForAudioClassification.from_pretrained(output, trust_remote_code=True)
    assert model.config.labels == sorted(LABELS)
    assert model.config.mapper_config["hidden_size"] == 32 and model.mapper.input_proj.out_features == 32
    # Checkpoints keep everything but the frozen backbones, which never change: what trains, and the fitted
    # statistics, so that a checkpoint also loads with from_pretrained.
    checkpoint = trainable_weights(output / "checkpoints" / "checkpoint-2")
    stage_args = torch.load(output / "checkpoints" / "checkpoint-2" / "training_args.bin", weights_only=False)
    assert stage_args.load_best_model_at_end is True  # by default the best checkpoint by validation UA is kept
    own = ("mapper.", "audio_encoder.layer_weights", "audio_encoder.feature_", "audio_classifier.")
    assert checkpoint and all("lora_" in k or k.startswith(own) for k in checkpoint)
    assert "audio_encoder.feature_std" in checkpoint


def test_killed_run_resumes_from_last_checkpoint_and_ends_the_same(tiny_setup, tmp_path):
    steps = ["--max_steps", "8", "--save_steps", "2", "--eval_steps", "2", "--save_total_limit", "10",
             "--speed_perturbation", "0.9,1.1", "--noise_snr_db", "20"]  # the resumed run must draw the same copies
    straight = tmp_path / "straight"
    run(train_command(tiny_setup, straight, *steps), tmp_path)

    killed = tmp_path / "killed"
    process = subprocess.Popen(train_command(tiny_setup, killed, *steps), cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists():
        assert process.poll() is None and time.time() < deadline, "the run ended before its 4th step was saved"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "checkpoints" / "checkpoint-8").exists()

    run(train_command(tiny_setup, killed, *steps, "--resume", "true"), tmp_path)
    state = json.loads((killed / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    resumed_weights = trainable_weights(killed / "checkpoints" / "checkpoint-8")
    straight_weights = trainable_weights(straight / "checkpoints" / "checkpoint-8")
    assert resumed_weights.keys() == straight_weights.keys()
    for name in straight_weights:
        torch.testing.assert_close(resumed_weights[name], straight_weights[name], atol=1e-5, rtol=1e-4)
    straight_report = json.loads((straight / "test_report.json").read_text())
    resumed_report = json.loads((killed / "test_report.json").read_text())
    assert resumed_report["ua"] == pytest.approx(straight_report["ua"])


def test_the_trainers_checkpointing_flag_trains_as_without_it(tiny_setup, tmp_path):
    """
    `--activation_checkpointing true` (the Trainer's flag, formerly `--gradient_checkpointing`) checkpoints the LLM's
    layers and trains the same weights as a plain run: the shared prompt head is off while they checkpoint, since they
    would drop its key/value cache. Tolerance: float32 rounding of the same steps in another order.
    """
    steps = ["--mapper_type", "qpmapper", "--max_steps", "2", "--save_steps", "2", "--eval_steps", "2"]
    plain, checkpointed = tmp_path / "plain", tmp_path / "checkpointed"
    run(train_command(tiny_setup, plain, *steps), tmp_path)
    result = run(train_command(tiny_setup, checkpointed, *steps, "--activation_checkpointing", "true"), tmp_path)
    assert "incompatible with gradient checkpointing" in result.stderr  # transformers' layers did checkpoint
    plain_weights = trainable_weights(plain / "checkpoints" / "checkpoint-2")
    weights = trainable_weights(checkpointed / "checkpoints" / "checkpoint-2")
    assert weights.keys() == plain_weights.keys() and any("lora_" in name for name in weights)
    for name in plain_weights:
        expected, got = plain_weights[name], weights[name]
        if name.endswith("self_attn.in_proj_bias"):  # the mapper's attention biases [query; key; value]: the key's
            # has no effect on the output (softmax ignores a shift), so its gradient is rounding noise that AdamW
            # scales up to steps of the learning rate's size; the query's and value's are compared.
            expected, got = (torch.cat([t.chunk(3)[0], t.chunk(3)[2]]) for t in (expected, got))
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4, msg=name)
    logs = [json.loads((folder / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
            for folder in (plain, checkpointed)]
    for plain_step, step in zip(*logs, strict=True):
        for key in ("loss", "grad_norm", "eval_loss", "eval_ua"):
            assert step.get(key) == pytest.approx(plain_step.get(key), rel=1e-5), key


def test_resume_refuses_other_data_another_split_or_other_flags(tiny_setup, tmp_path):
    """A run resumed with what it was not started with stops before training, naming each difference."""
    output = tmp_path / "out"
    steps = ["--max_steps", "2", "--save_steps", "2", "--eval_steps", "2"]
    run(train_command(tiny_setup, output, *steps), tmp_path)
    assert (output / "checkpoints" / "run.json").is_file()
    for changed, named in (
        (["--data_dir", str(tiny_setup / "corpus"), "--test_speakers", "3", "--eval_speakers", "4"],
         "split test: ['spk04'] -> ['spk03']"),
        (None, "flags learning_rate: '0.003' -> '0.001'"),
    ):
        extra = [*steps, "--resume", "true"] + ([] if changed else ["--learning_rate", "1e-3"])
        result = subprocess.run(train_command(tiny_setup, output, *extra, data=changed), cwd=tmp_path,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode != 0 and "--resume: the run in" in result.stderr, result.stderr[-2000:]
        assert named in result.stderr, result.stderr[-2000:]
    run(train_command(tiny_setup, output, *steps, "--resume", "true"), tmp_path)  # the same: it resumes


def test_incomplete_checkpoint_is_skipped(tmp_path):
    sys.path.insert(0, str(REPO))
    from training.resume import last_complete_checkpoint

    from safetensors.torch import save_file

    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        save_file({"mapper.weight": torch.zeros(2)}, str(folder / "model.safetensors"))
        for name in ("optimizer.pt", "scheduler.pt"):
            torch.save({}, folder / name)
        if complete:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-6" / "trainer_state.json").write_text('{"global_st')  # cut while writing
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert last_complete_checkpoint(tmp_path / "checkpoint-2") is None


def test_the_trainers_resume_from_checkpoint_flag_resumes_and_refuses_what_cannot_be_resumed(tmp_path):
    sys.path.insert(0, str(REPO))
    from safetensors.torch import save_file

    from training.arguments import parse_args

    _, data_args, training_args = parse_args(["--output_dir", str(tmp_path), "--resume_from_checkpoint", "true"])
    assert data_args.resume and training_args.resume_from_checkpoint is None  # as --resume: the newest complete one
    folder = tmp_path / "checkpoints" / "checkpoint-4"
    folder.mkdir(parents=True)
    save_file({"mapper.weight": torch.zeros(2)}, str(folder / "model.safetensors"))
    for name in ("optimizer.pt", "scheduler.pt"):
        torch.save({}, folder / name)
    with pytest.raises(ValueError, match="cannot be resumed from: trainer_state.json"):  # cut: not complete
        parse_args(["--output_dir", str(tmp_path), "--resume_from_checkpoint", str(folder)])
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    _, data_args, training_args = parse_args(["--output_dir", str(tmp_path), "--resume_from_checkpoint", str(folder)])
    assert data_args.resume and training_args.resume_from_checkpoint == str(folder)  # run_stage resumes from it
    with pytest.raises(ValueError, match="it is not a folder"):
        parse_args(["--output_dir", str(tmp_path), "--resume_from_checkpoint", str(tmp_path / "checkpoint-9")])


def test_training_prompts_follow_the_transcript_setting(monkeypatch):
    sys.path.insert(0, str(REPO))
    import transcription_emosllm
    from conftest import tiny_processor
    from training.transcripts import attach_transcripts

    monkeypatch.setattr(transcription_emosllm, "transcribe", lambda audios, model_name: ["asr text"] * len(audios))
    for setting, expected in (("none", [None, None]), ("given", ["the door", None]), ("auto", ["the door", "asr text"])):
        clips = [{"audio": tone(1.0, 300), "transcript": "the door"}, {"audio": tone(1.0, 400), "transcript": ""}]
        attach_transcripts(clips, tiny_processor(use_transcript=setting)[0])
        assert [c["transcript"] for c in clips] == expected, setting


def test_soft_emotion_word_starts_as_the_llms_label_words(tiny_setup):
    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
    from processing_emosllm import EmoSLLMProcessor

    encoder, llm = str(tiny_setup / "encoder"), str(tiny_setup / "llm")
    processor, config = EmoSLLMProcessor.from_backbones(encoder, llm, labels=LABELS, mapper_config={"mapper_type": "probe"})
    model = EmoSLLMForSpeechEmotionRecognition.from_backbones(config, encoder, llm, TINY_LORA)
    input_embeddings = model.get_input_embeddings().weight
    for column, ids in zip(model.mapper.label_embeddings.weight.T, config.label_token_ids):
        torch.testing.assert_close(column, input_embeddings[ids].mean(dim=0))
    assert model.mapper.label_embeddings.weight.requires_grad


def test_optimizer_gives_mapper_heads_and_lora_their_own_learning_rates(tmp_path):
    sys.path.insert(0, str(REPO))
    from conftest import tiny_processor
    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
    from training.arguments import parse_args
    from training.trainer import EmoSLLMTrainer

    model = EmoSLLMForSpeechEmotionRecognition(tiny_processor(mapper="statistics", audio_loss_weight=1.0)[1])
    _, _, args = parse_args(["--output_dir", str(tmp_path), "--learning_rate", "5e-4", "--eval_strategy", "no"])
    trainer = EmoSLLMTrainer(model=model, args=args, mapper_learning_rate=1e-2, head_learning_rate=1e-3)
    by_id = {id(p): n for n, p in model.named_parameters()}
    groups = {group["lr"]: {by_id[id(p)] for p in group["params"]} for group in trainer.create_optimizer().param_groups}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert sorted(groups) == [5e-4, 1e-3, 1e-2] and set().union(*groups.values()) == trainable
    assert all(n.startswith("mapper.") for n in groups[1e-2])
    assert all(n.startswith(("audio_encoder.layer_weights", "audio_classifier.")) for n in groups[1e-3])
    assert groups[5e-4] and all("lora_" in n for n in groups[5e-4])


def test_bad_model_flag_values_stop_the_run_before_any_data_is_read(tiny_setup, tmp_path, capsys):
    """`--num_queries 0` trained a model that answered NaN; other bad values stopped the run only once the model was
    built, after the data, in torch's words, and a misspelt choice as a KeyError."""
    from training.arguments import parse_args
    from training.recipe import check_model_args

    for flags, message in (
        (["--mapper_type", "qpmapper", "--num_queries", "0"], r"num_queries'\]=0: give a whole number.*--num_queries"),
        (["--mapper_type", "statistics", "--num_queries", "-1"], r"num_queries'\]=-1: give a whole number"),
        (["--mapper_type", "qpmapper", "--mapper_hidden_size", "100"], r"hidden_size'\]=100 is not divisible by its"),
        (["--lora_dropout", "1.5"], r"--lora_dropout 1.5: give a share from 0"),
        (["--lora_rank", "-1"], r"--lora_rank -1: give a whole number"),
        (["--audio_loss_weight", "-2"], r"--audio_loss_weight -2: give a weight"),
        # flags the chosen mapper or LLM training does not read were dropped without a word
        (["--num_queries", "4"], r"--num_queries is no setting of the 'probe' mapper.*only qpmapper, statistics"),
        (["--mapper_type", "statistics", "--mapper_hidden_size", "32"], r"--mapper_hidden_size is no setting of the "
                                                                         r"'statistics' mapper.*--mapper_type"),
        (["--mapper_type", "qpmapper", "--probe_c", "1"], r"--probe_c is read by the probe mapper only.*'qpmapper'"),
        (["--mapper_type", "mlp", "--departure_folds", "2"], r"--departure_folds is read by the probe mapper only"),
        (["--language_model_training", "full", "--lora_rank", "8"], r"--lora_rank: LoRA's settings.*full\)"),
        (["--lora_rank", "0", "--lora_alpha", "16"], r"--lora_alpha: LoRA's.*frozen, set by --lora_rank 0"),
        (["--language_model_training", "lora", "--lora_rank", "0"], r"--lora_rank 0 means no LoRA"),
    ):
        with pytest.raises(ValueError, match=message):
            check_model_args(parse_args(["--output_dir", str(tmp_path), *flags])[0])
    for good in (["--mapper_type", "qpmapper", "--num_queries", "4", "--mapper_hidden_size", "32", "--lora_dropout",
                  "0.1"], ["--probe_c", "0.1", "--departure_folds", "2"], ["--language_model_training", "frozen",
                                                                            "--lora_rank", "0"]):
        check_model_args(parse_args(["--output_dir", str(tmp_path), *good])[0])  # good values pass
    for flag in ("--mapper_type", "--encoder_layer_combination", "--language_model_training", "--use_transcript"):
        with pytest.raises(SystemExit):  # argparse's choices: the config's and processor's own values
            parse_args(["--output_dir", str(tmp_path), flag, "bogus"])
        assert "invalid choice: 'bogus'" in capsys.readouterr().err
    # train.py itself: the flag is named although the data folder does not even exist
    result = subprocess.run(train_command(tiny_setup, tmp_path / "out", "--mapper_type", "qpmapper", "--num_queries",
                                          "0", data=["--data_dir", str(tmp_path / "missing")]),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "--num_queries" in result.stderr and "does not exist" not in result.stderr


@pytest.mark.parametrize("scored_on", ["validation", "test"])
def test_a_run_that_diverges_stops_saying_so_instead_of_reporting_a_score(tiny_setup, tmp_path, scored_on):
    """At a learning rate of 1e30 the scores turn NaN; the run used to end normally, reporting UA 0.25 (every clip
    read as one class), and its folder answered NaN through the pipeline."""
    flags = ["--mapper_type", "qpmapper", "--encoder_layer_combination", "weighted_average", "--learning_rate",
             "1e30", "--mapper_learning_rate", "1e30", "--max_steps", "2"]
    data = ["--data_dir", str(tiny_setup / "corpus"), "--test_speakers", "4"]
    if scored_on == "validation":
        data += ["--eval_speakers", "3"]
    else:  # no validation during training: the test clips' scores are the first the run reads
        flags += ["--eval_strategy", "no", "--save_strategy", "no"]
    result = subprocess.run(train_command(tiny_setup, tmp_path / "out", *flags, data=data), capture_output=True,
                            text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    assert f"Training diverged: the model's class scores on the {scored_on} clips are NaN" in result.stderr
    assert not (tmp_path / "out" / "all_results.json").exists()


def test_transcript_dropout_hides_a_share_of_transcripts_reproducibly():
    sys.path.insert(0, str(REPO))
    from training.augmentation import AugmentedClips

    versions = [[{"audio": tone(0.5, 200, seed=i), "transcript": "the door", "label": "sad"}] for i in range(400)]
    dataset = AugmentedClips(versions, seed=1, transcript_dropout=0.5)
    shown = [dataset[i]["transcript"] for i in range(len(dataset))]
    assert 150 < shown.count(None) < 250 and set(shown) == {None, "the door"}
    assert [dataset[i]["transcript"] for i in range(len(dataset))] == shown  # the same draw again (resume)
    dataset.epoch = 1
    assert [dataset[i]["transcript"] for i in range(len(dataset))] != shown  # another epoch, another draw
    assert all(v[0]["transcript"] == "the door" for v in versions)  # the clips themselves keep theirs
    assert all(AugmentedClips(versions, 1, 0.0)[i]["transcript"] == "the door" for i in range(10))
    with pytest.raises(ValueError, match="transcript_dropout"):
        AugmentedClips(versions, 1, 1.5)


def test_saved_folder_through_the_pipeline_reproduces_the_reported_score_on_fixed_length_clips(tmp_path):
    """Clips all of one length (zero-padded) once made the cached and the live path disagree (0.76 vs 0.26)."""
    import soundfile as sf
    from conftest import TONE_FREQUENCIES

    setup = tmp_path / "setup"
    save_tiny_backbones(setup)
    corpus = setup / "corpus"
    corpus.mkdir()
    rows = ["path,label,speaker,transcript"]
    for speaker in range(1, 5):
        for label in LABELS:
            for take in range(3):
                audio = tone(0.5 + 0.1 * take, TONE_FREQUENCIES[label] * (1 + 0.02 * speaker), seed=speaker * 10 + take)
                fixed = np.zeros(16000, dtype=np.float32)  # every clip exactly 1.000 s, peak-normalised
                fixed[: len(audio)] = audio / np.abs(audio).max() * 0.9
                name = f"s{speaker}_{label}_{take}.wav"
                sf.write(corpus / name, fixed, 16000)
                rows.append(f"{name},{label},spk{speaker:02d},kids are talking by the door")
    (corpus / "manifest.csv").write_text("\n".join(rows) + "\n")
    output = tmp_path / "out"
    run(train_command(setup, output, "--max_steps", "4", "--save_steps", "4", "--eval_steps", "4"), tmp_path)
    report = json.loads((output / "all_results.json").read_text())
    assert abs(report["delivered_ua"] - report["ua"]) <= 0.01


def test_augmented_copies_change_speed_and_add_noise_at_the_asked_snr():
    sys.path.insert(0, str(REPO))
    from training.augmentation import augmented_copies, parse_floats

    clip = {"audio": tone(1.0, 300), "label": "angry", "states": torch.zeros(1)}
    original = clip["audio"].copy()
    slow, fast, noisy = augmented_copies(clip, speeds=[0.9, 1.1], snrs_db=[20.0], max_samples=10**6)
    assert len(slow["audio"]) == pytest.approx(len(original) / 0.9, abs=2)
    assert len(fast["audio"]) == pytest.approx(len(original) / 1.1, abs=2)
    noise = noisy["audio"].astype(float) - original
    snr = 10 * torch.log10(torch.tensor((original.astype(float) ** 2).mean() / (noise ** 2).mean())).item()
    assert snr == pytest.approx(20.0, abs=0.5)
    assert all(copy["label"] == "angry" and "states" not in copy for copy in (slow, fast, noisy))
    assert (clip["audio"] == original).all() and "states" in clip  # the original is left as it was
    # The same clip gets the same copies in every run, so the encoder cache finds them.
    again = augmented_copies(clip, speeds=[0.9, 1.1], snrs_db=[20.0], max_samples=10**6)
    assert all((a["audio"] == b["audio"]).all() for a, b in zip((slow, fast, noisy), again))
    # A slowed copy never gets longer than the processor accepts.
    (cut,) = augmented_copies(clip, speeds=[0.5], snrs_db=[], max_samples=len(original))
    assert len(cut["audio"]) == len(original)
    with pytest.raises(ValueError, match="positive"):
        augmented_copies(clip, speeds=[0.0], snrs_db=[], max_samples=10**6)
    assert parse_floats("0.9, 1.1", "speed_perturbation") == [0.9, 1.1] and parse_floats("", "noise_snr_db") == []
    with pytest.raises(ValueError, match="--speed_perturbation takes comma-separated numbers"):
        parse_floats("0.9,fast", "speed_perturbation")


def test_augmented_clips_draw_a_version_per_epoch_reproducibly():
    sys.path.insert(0, str(REPO))
    from transformers import TrainerState

    from training.augmentation import AugmentedClips, EpochCallback

    versions = [[{"clip": i, "version": v} for v in range(4)] for i in range(16)]
    dataset = AugmentedClips(versions, seed=0)
    drawn = {}
    for epoch in range(6):
        dataset.epoch = epoch
        drawn[epoch] = [dataset[i]["version"] for i in range(len(dataset))]
        assert [dataset[i]["clip"] for i in range(len(dataset))] == list(range(16))
    assert set(v for epoch in drawn.values() for v in epoch) == {0, 1, 2, 3}
    assert drawn[0] != drawn[1]
    dataset.epoch = 0
    assert [dataset[i]["version"] for i in range(16)] == drawn[0]  # a resumed run reads what the first run read
    # The Trainer's epoch reaches the dataset, also for a run resumed in the middle of epoch 2.
    EpochCallback(dataset).on_epoch_begin(None, TrainerState(epoch=2.5), None)
    assert dataset.epoch == 2


@pytest.mark.parametrize("use_cpu", [True, False])
def test_build_model_holds_the_frozen_backbones_in_the_policy_dtype_of_the_training_device(tiny_setup, monkeypatch,
                                                                                           use_cpu):
    """On a bf16 GPU (mocked) the frozen backbones are bf16; with --use_cpu (or on a CPU) float32, as the reported
    CPU scores were trained; LoRA and the mapper are float32 either way."""
    import precision_emosllm
    from training.arguments import ModelArguments
    from training.recipe import build_model

    monkeypatch.setattr(precision_emosllm, "bf16_is_native", lambda device_type=None: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = ModelArguments(audio_encoder=str(tiny_setup / "encoder"), llm=str(tiny_setup / "llm"), num_queries=4,
                          mapper_hidden_size=32, mapper_type="qpmapper", lora_rank=4)
    model, _ = build_model(args, LABELS, "cpu" if use_cpu else None)
    backbone = set(model.backbone_keys())
    frozen = torch.float32 if use_cpu else torch.bfloat16
    assert {t.dtype for n, t in model.state_dict().items() if n in backbone} == {frozen}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}


def test_renamed_flags_still_work_and_say_their_new_name(caplog):
    """`--adapter_*` (the mapper's old name) sets the same option as `--mapper_*`, with a warning naming the new flag;
    model options left unset stay None, so the config's own defaults apply."""
    import logging

    from training.arguments import RENAMED_FLAGS, parse_args

    with caplog.at_level(logging.WARNING, logger="emosllm.train"):
        old, _, _ = parse_args(["--adapter_type", "qpmapper", "--adapter_hidden_size=48", "--adapter_learning_rate",
                                "0.01", "--output_dir", "unused"])
    new, _, _ = parse_args(["--mapper_type", "qpmapper", "--mapper_hidden_size", "48", "--mapper_learning_rate", "0.01",
                            "--output_dir", "unused"])
    assert old == new and new.mapper_type == "qpmapper" and new.mapper_hidden_size == 48
    for flag, renamed in RENAMED_FLAGS.items():
        assert f"{flag} is now {renamed}" in caplog.text
    default, _, _ = parse_args(["--output_dir", "unused"])
    assert default.mapper_type is None and default.audio_loss_weight is None and default.probe_c is None
