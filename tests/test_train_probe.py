"""
train.py's probe recipe on tiny random backbones: the probe fitted on the training clips, the LLM trained on
out-of-fold probe evidence with each probe fold held out in turn, and the answer's mix of probe and LLM chosen on
held-out clips, never below the probe beyond noise.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LABELS, TINY_LORA, tone
from test_train import REPO, run, tiny_setup, train_command, trainable_weights  # noqa: F401 (tiny_setup: fixture)
from transformers import AutoModelForAudioClassification

sys.path.insert(0, str(REPO))


def test_probe_run_fits_the_probe_on_the_training_clips_and_saves_it(tiny_setup, tmp_path):
    output = tmp_path / "out"
    run(train_command(tiny_setup, output, "--mapper_type", "probe", "--encoder_layer_combination", "concatenate",
                      "--probe_c", "0.01,1", "--max_steps", "2", "--save_steps", "2", "--eval_steps", "2"), tmp_path)
    report = json.loads((output / "all_results.json").read_text())
    assert report["probe_c"] in (0.01, 1.0) and 0 <= report["probe_selection_ua"] <= 1
    assert f"probe C={report['probe_c']:g}, validation UA" in (output / "README.md").read_text()
    model = AutoModelForAudioClassification.from_pretrained(output, trust_remote_code=True)
    assert model.config.mapper_type == "probe" and model.config.encoder_layer_combination == "concatenate"
    assert model.mapper.probe_weight.abs().sum() > 0 and (model.mapper.statistics_std != 1).any()
    # Checkpoints keep what trains and what was fitted (the probe is refitted, deterministically, when a run
    # resumes, and then equals the checkpoint's).
    checkpoint = trainable_weights(output / "checkpoints" / "checkpoint-2")
    assert "mapper.label_embeddings.weight" in checkpoint
    torch.testing.assert_close(checkpoint["mapper.probe_weight"], model.mapper.probe_weight)
    # The answer is never below the probe on the validation speakers: the mix weight is chosen there and saved.
    assert report["held_out"] == "the validation speakers" and report["held_out_clips"] == 8
    assert report["held_out_answer_ua"] >= report["held_out_probe_ua"]  # never below the probe there
    assert model.config.mapper_config["mix_weight"] == report["probe_mix_weight"]
    assert {"llm_ua", "probe_ua"} <= set(report)  # the test clips scored by each alone, too
    card = (output / "README.md").read_text()
    assert f"{report['held_out_llm_ua']:.4f} (LLM alone), {report['held_out_probe_ua']:.4f} (probe" in card


def test_without_validation_speakers_a_probe_fold_is_held_out_of_the_llms_training(tiny_setup, tmp_path):
    """
    The first fold's speakers choose the epoch; with `--departure_folds 1` they alone choose the mix weight. The LLM
    never trains on their clips.
    """
    output = tmp_path / "out"
    result = run(train_command(tiny_setup, output, "--mapper_type", "probe", "--encoder_layer_combination",
                               "concatenate", "--probe_c", "0.01,1", "--max_steps", "2", "--save_steps", "2",
                               "--eval_steps", "2", "--departure_folds", "1",
                               data=["--data_dir", str(tiny_setup / "corpus"), "--test_speakers", "4"]),
                 tmp_path, env={"EMOSLLM_RECORD_TRAINING_CLIPS": "1"})
    report = json.loads((output / "all_results.json").read_text())
    held = report["held_out"]
    assert held.startswith("training speakers held out of the LLM's training (") and report["held_out_clips"] == 8
    held_speakers = held[held.index("(") + 1:-1].split(", ")
    assert len(held_speakers) == 1 and held_speakers[0] in ("spk01", "spk02", "spk03")
    assert report["held_out_answer_ua"] >= report["held_out_probe_ua"]  # never below the probe there
    assert "choose its epoch" in result.stderr
    read = [json.loads(line)["clip"] for line in
            (output / "checkpoints" / "training_clips" / "rank0.jsonl").read_text().splitlines()]
    assert read and not any(held_speakers[0] in clip for clip in read), read[:3]
    assert not list((output / "checkpoints").glob("fold_*"))  # no further fold trained


def test_by_default_every_probe_fold_is_held_out_in_turn_and_the_saved_model_is_the_first_folds(tiny_setup, tmp_path):
    """
    Cross-fitting (`--departure_folds`, default every fold): the LLM is trained again without each further fold's
    speakers, never reading their clips, and all training speakers' clips, each scored by a LLM that did not train on
    it, choose the mix weight; the saved model is the first fold's (its trainable weights equal that stage's last
    checkpoint's, exactly), not the last fold's.
    """
    output = tmp_path / "out"
    run(train_command(tiny_setup, output, "--mapper_type", "probe", "--encoder_layer_combination", "concatenate",
                      "--probe_c", "0.01,1", "--max_steps", "2", "--save_steps", "2", "--eval_steps", "2",
                      "--load_best_model_at_end", "false",
                      data=["--data_dir", str(tiny_setup / "corpus"), "--test_speakers", "4"]),
        tmp_path, env={"EMOSLLM_RECORD_TRAINING_CLIPS": "1"})
    report = json.loads((output / "all_results.json").read_text())
    assert report["held_out"].startswith("training speakers held out of the LLM's training, 3 folds in turn (")
    assert report["held_out_clips"] == 24  # the three training speakers' 8 clips each
    folds = report["held_out"][report["held_out"].index("(") + 1:-1].split(" | ")
    assert sorted(folds) == ["spk01", "spk02", "spk03"]
    records = {0: output / "checkpoints", 1: output / "checkpoints" / "fold_1", 2: output / "checkpoints" / "fold_2"}
    for fold, folder in records.items():
        read = [json.loads(line)["clip"] for line in (folder / "training_clips" / "rank0.jsonl").read_text().splitlines()]
        assert read and not any(folds[fold] in clip for clip in read), (fold, read[:3])
        assert any(other in clip for clip in read for other in set(folds) - {folds[fold]})
    assert report["held_out_answer_ua"] >= report["held_out_probe_ua"]
    saved, first = trainable_weights(output), trainable_weights(output / "checkpoints" / "checkpoint-2")
    last_fold = trainable_weights(output / "checkpoints" / "fold_2" / "checkpoint-2")
    trained = [name for name in saved if name in first and not name.startswith(("mapper.probe", "mapper.statistics"))]
    assert "mapper.label_embeddings.weight" in trained  # the mapper's trained weights (LoRA is under lora/)
    assert all(torch.equal(saved[name], first[name]) for name in trained)
    assert any(not torch.equal(saved[name], last_fold[name]) for name in trained)


def test_with_an_asr_stage_each_further_folds_llm_reads_none_of_its_speakers_in_either_stage(tiny_setup, tmp_path):
    """
    `--asr_epochs`: the further folds' LLMs started from the saved model's ASR stage, which had read their speakers'
    clips (to transcribe them), so the clips that choose the mix weight were not all new to the LLM that scored them.
    Now each further fold trains its own ASR stage without its speakers, then SER, as the saved model trained.
    """
    output = tmp_path / "out"
    run(train_command(tiny_setup, output, "--mapper_type", "probe", "--encoder_layer_combination", "concatenate",
                      "--probe_c", "0.01,1", "--max_steps", "2", "--save_steps", "2", "--eval_steps", "2",
                      "--asr_epochs", "1", "--use_transcript", "given",
                      data=["--data_dir", str(tiny_setup / "corpus"), "--test_speakers", "4"]),
        tmp_path, env={"EMOSLLM_RECORD_TRAINING_CLIPS": "1"})
    report = json.loads((output / "all_results.json").read_text())
    folds = report["held_out"][report["held_out"].index("(") + 1:-1].split(" | ")
    assert sorted(folds) == ["spk01", "spk02", "spk03"]
    for fold in range(3):
        for stage in ("stage1_asr", "checkpoints"):
            folder = output / stage / (f"fold_{fold}" if fold else "")
            read = [json.loads(line)["clip"] for line in
                    (folder / "training_clips" / "rank0.jsonl").read_text().splitlines()]
            assert read and not any(folds[fold] in clip for clip in read), (fold, stage, read[:3])
    assert (output / "stage1_asr" / "fold_2" / "checkpoint-2").is_dir()


def test_a_run_killed_while_a_further_fold_trains_resumes_there_and_ends_the_same(tiny_setup, tmp_path):
    """
    Cross-fitting takes most of a run's time, so a kill lands there most often: resumed with `--resume true`, the run
    keeps the saved model's stage and the folds already trained, goes on from the fold's last checkpoint, and ends with
    the weights, the held-out figures and the test score of a run never killed (weights within 1e-5).
    """
    steps = ["--mapper_type", "probe", "--encoder_layer_combination", "concatenate", "--probe_c", "0.01,1",
             "--max_steps", "4", "--save_steps", "2", "--eval_steps", "2", "--save_total_limit", "10"]
    data = ["--data_dir", str(tiny_setup / "corpus"), "--test_speakers", "4"]
    straight = tmp_path / "straight"
    run(train_command(tiny_setup, straight, *steps, data=data), tmp_path)

    killed = tmp_path / "killed"
    process = subprocess.Popen(train_command(tiny_setup, killed, *steps, data=data), cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "fold_1" / "checkpoint-2" / "trainer_state.json").exists():
        assert process.poll() is None and time.time() < deadline, "the run ended before fold 1's 2nd step was saved"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "all_results.json").exists()  # killed while the further folds trained
    done = [killed / "checkpoints" / "checkpoint-4" / "model.safetensors",
            killed / "checkpoints" / "fold_1" / "checkpoint-2" / "model.safetensors"]
    written = [path.stat().st_mtime_ns for path in done]

    run(train_command(tiny_setup, killed, *steps, "--resume", "true", data=data), tmp_path)
    assert [path.stat().st_mtime_ns for path in done] == written  # what was trained is not trained again
    straight_report = json.loads((straight / "all_results.json").read_text())
    resumed_report = json.loads((killed / "all_results.json").read_text())
    for key in ("held_out", "held_out_clips", "held_out_llm_ua", "held_out_probe_ua", "probe_mix_weight", "ua"):
        assert resumed_report[key] == pytest.approx(straight_report[key]), key
    for folder in (Path("."), Path("checkpoints") / "fold_1" / "checkpoint-4", Path("checkpoints") / "fold_2" /
                   "checkpoint-4"):
        resumed_weights, straight_weights = trainable_weights(killed / folder), trainable_weights(straight / folder)
        assert resumed_weights.keys() == straight_weights.keys(), folder
        for name in straight_weights:
            torch.testing.assert_close(resumed_weights[name], straight_weights[name], atol=1e-5, rtol=1e-4)


def test_the_departure_folds_are_every_fold_by_default_and_the_first_only_under_fsdp_or_deepspeed(caplog):
    sys.path.insert(0, str(REPO))
    from training.probe import departure_folds

    versions = [[{"probe_fold": fold}, {"probe_fold": fold}] for fold in (2, 0, 3, 1, 0)]  # originals, then copies
    assert departure_folds(versions, None, None) == [0, 1, 2, 3]
    assert departure_folds(versions, 2, None) == [0, 1] and departure_folds(versions, 1, None) == [0]
    with caplog.at_level("INFO"):
        assert departure_folds(versions, None, "deepspeed") == [0]
    assert "Under DeepSpeed only the probe's first fold decides" in caplog.text
    assert departure_folds(versions, None, "fsdp") == [0]
    assert departure_folds([[{"speaker": "a"}]], None, None) == []  # no folds: fewer than 2 speakers


def test_departure_folds_below_one_or_beside_validation_speakers_is_refused_with_the_way_out(tiny_setup, tmp_path):
    from training.arguments import parse_args

    for value in ("0", "-1"):
        with pytest.raises(ValueError, match=f"--departure_folds {value}: give at least 1"):
            parse_args(["--output_dir", str(tmp_path), "--departure_folds", value])
    assert parse_args(["--output_dir", str(tmp_path), "--departure_folds", "2"])[0].departure_folds == 2
    # with validation speakers (train_command's --eval_speakers 3) the folds decide nothing: it was dropped unsaid
    result = subprocess.run(train_command(tiny_setup, tmp_path / "out", "--departure_folds", "2"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "--departure_folds: this run has validation speakers" in result.stderr
    assert "--eval_speakers none" in result.stderr and not (tmp_path / "out" / "model.safetensors").exists()


def test_the_mix_weight_is_chosen_on_held_out_clips_and_the_answer_is_not_below_the_probe(tmp_path, caplog):
    sys.path.insert(0, str(REPO))
    from conftest import TONE_FREQUENCIES, tiny_processor
    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
    from training.arguments import parse_args
    from training.probe import PROBE_MIX_WEIGHTS, choose_probe_mix_weight, held_out_scores
    from training.trainer import EmoSLLMCollator, EmoSLLMTrainer

    processor, config = tiny_processor(mapper="probe")
    torch.manual_seed(0)
    model = EmoSLLMForSpeechEmotionRecognition(config).eval()

    def clips(seeds):
        return [{"audio": tone(0.8, TONE_FREQUENCIES[label], seed=seed), "label": label, "transcript": None,
                 "text_features": {}} for seed in seeds for label in LABELS]

    model.fit_probe([processor([c["audio"] for c in clips(range(4))], labels=LABELS * 4)], 1.0)
    _, _, args = parse_args(["--output_dir", str(tmp_path), "--eval_strategy", "no"])
    trainer = EmoSLLMTrainer(model=model, args=args, mapper_learning_rate=1e-2, head_learning_rate=1e-3,
                             data_collator=EmoSLLMCollator(processor))
    with caplog.at_level("INFO"):
        report = choose_probe_mix_weight(model, [held_out_scores(trainer, clips(range(10, 13)))],
                                         "the validation speakers", seed=0)
    # The tiny LLM is untrained (near chance); the probe names every tone: the answer takes the probe's side.
    assert report["held_out_probe_ua"] == 1.0 and report["held_out_llm_ua"] < 0.75
    assert report["probe_mix_weight"] in PROBE_MIX_WEIGHTS[1:] and report["held_out_answer_ua"] == 1.0
    assert model.config.mapper_config["mix_weight"] == report["probe_mix_weight"]
    assert "scores below the probe it reads" in caplog.text
    with torch.no_grad():  # and the model answers so from now on
        held = processor([c["audio"] for c in clips(range(10, 13))])
        assert model(**held).logits.argmax(-1).tolist() == processor.label_ids(LABELS * 3).tolist()


def test_the_answer_departs_from_the_probe_only_where_held_out_clips_show_a_gain_beyond_their_noise():
    """
    The best mix is kept only where it beats the probe alone in at least `DEPARTURE_CONFIDENCE` of the bootstrap
    resamples of the held-out clips: an LLM that fixes 2 of the probe's 48 errors (8 classes x 30 clips) is noise, one
    that fixes 25 is not; the resamples' share is the paired one (2 fixed clips: both missed by about e^-2 of them).
    """
    sys.path.insert(0, str(REPO))
    from training.probe import DEPARTURE_CONFIDENCE, bootstrap_ua_gain, chosen_mix_weight

    label_ids = np.repeat(np.arange(8), 30)
    wrong = np.random.default_rng(0).permutation(len(label_ids))[:48]
    probe_answers = label_ids.copy()
    probe_answers[wrong] = (label_ids[wrong] + 1) % 8

    def log_probabilities(answers: np.ndarray) -> torch.Tensor:
        scores = torch.full((len(answers), 8), -3.0)
        scores[np.arange(len(answers)), answers] = 0.0
        return scores

    names = [f"class{i}" for i in range(8)]
    for fixed, departs in ((2, False), (25, True)):
        llm_answers = probe_answers.copy()
        llm_answers[wrong[:fixed]] = label_ids[wrong[:fixed]]
        weight, mixes, confidence = chosen_mix_weight(log_probabilities(llm_answers), log_probabilities(probe_answers),
                                                      label_ids, names)
        assert mixes[0.0] > mixes[1.0]  # the LLM is better on these clips either way
        assert (weight < 1.0) == departs and (confidence >= DEPARTURE_CONFIDENCE) == departs, (fixed, confidence)
    two_fixed = probe_answers.copy()
    two_fixed[wrong[:2]] = label_ids[wrong[:2]]
    assert abs(bootstrap_ua_gain(two_fixed, probe_answers, label_ids) - (1 - np.exp(-2))) < 0.04


def test_fit_probe_chooses_c_on_validation_or_across_training_speakers():
    sys.path.insert(0, str(REPO))
    from conftest import TONE_FREQUENCIES, tiny_processor
    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
    from training.probe import fit_probe
    from training.trainer import EmoSLLMCollator

    processor, config = tiny_processor(mapper="probe")
    torch.manual_seed(0)
    model = EmoSLLMForSpeechEmotionRecognition(config).eval()

    def clips(seeds, labels=LABELS):
        made = []
        for seed in seeds:
            for label in labels:
                audio = tone(0.8, TONE_FREQUENCIES[label], seed=seed)
                features = processor.audio_features([audio])
                states = model.audio_encoder.layer_states(features["input_features"], features["audio_lengths"])[0]
                frames = config.num_encoder_frames(len(audio))
                made.append({"audio": audio, "label": label, "states": states[:, :frames].detach().half(),
                             "speaker": f"spk{seed % 4}", "transcript": None, "text_features": {}})
        return made

    # More angry clips than others: a probe with C=1e-8 is left with its intercept and names every clip angry.
    train, validation = clips(range(4)) + clips(range(20, 28), ["angry"]), clips(range(10, 12))
    chosen = fit_probe(model, processor, train, validation, [1e-8, 1.0])
    assert chosen["probe_c"] == 1.0 and chosen["probe_selection_ua"] == 1.0
    batch = processor([c["audio"] for c in validation])
    with torch.no_grad():  # the fitted probe itself names the held-out tones (the tiny LLM is untrained)
        scores = model.mapper.class_scores(*model.audio_encoder(batch["audio_lengths"], batch["input_features"]))
    assert scores.argmax(-1).tolist() == processor.label_ids([c["label"] for c in validation]).tolist()
    # No validation speakers: cross-validation over the training speakers chooses.
    chosen = fit_probe(model, processor, train, None, [1e-8, 1.0])
    assert chosen["probe_c"] == 1.0 and "cross-validation" in chosen["probe_selection"]
    # Either way each training clip carries its out-of-fold scores (what the LLM trains on), and the report has no
    # tensors in it (it goes to all_results.json).
    assert all(c["probe_scores"].shape == (len(LABELS),) for c in train)
    assert all(isinstance(v, (int, float, str, type(None))) for k, v in chosen.items() if k != "probe_cs")
    assert all(isinstance(c, float) for c in chosen["probe_cs"])
    assert {c["probe_fold"] for c in train} == {0, 1, 2, 3}  # the fold that held each clip's speaker out
    assert len({c["probe_fold"] for c in train if c["speaker"] == "spk1"}) == 1
    batch = EmoSLLMCollator(processor)(train)
    kept = model.mapper.scores_of_statistics(model.pooled_audio_statistics(batch))
    assert not torch.allclose(batch["probe_scores"], kept, atol=1e-3)  # not those of the probe the model keeps
    with pytest.raises(ValueError, match="--probe_c needs at least one value"):
        fit_probe(model, processor, train, validation, [])
    with pytest.raises(ValueError, match="every class"):
        fit_probe(model, processor, [c for c in train if c["label"] != "sad"], validation, [1.0])


def test_trainer_feeds_the_llm_the_out_of_fold_probe_scores_and_only_for_that_call(tmp_path):
    sys.path.insert(0, str(REPO))
    from conftest import tiny_processor
    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
    from training.arguments import parse_args
    from training.trainer import EmoSLLMCollator, EmoSLLMTrainer

    processor, config = tiny_processor(mapper="probe")
    torch.manual_seed(0)
    model = EmoSLLMForSpeechEmotionRecognition(config, TINY_LORA).eval()
    model.mapper.set_probe(model.mapper.statistics_mean, model.mapper.statistics_std,
                            torch.randn_like(model.mapper.probe_weight), torch.randn(len(LABELS)))
    _, _, args = parse_args(["--output_dir", str(tmp_path), "--eval_strategy", "no"])
    trainer = EmoSLLMTrainer(model=model, args=args, mapper_learning_rate=1e-2, head_learning_rate=1e-3)
    batch = EmoSLLMCollator(processor)([{"audio": tone(0.8, 200 + 50 * i, seed=i), "label": label, "transcript": None,
                                         "text_features": {}} for i, label in enumerate(LABELS[:3])])
    with torch.no_grad():
        plain = trainer.compute_loss(model, dict(batch))
        in_sample = model.mapper.class_scores(*model.audio_encoder(batch["audio_lengths"], batch["input_features"]))
        same = trainer.compute_loss(model, {**batch, "probe_scores": in_sample})
        other = trainer.compute_loss(model, {**batch, "probe_scores": in_sample.flip(0)})
        after = trainer.compute_loss(model, dict(batch))
    torch.testing.assert_close(same, plain)  # given scores are embedded exactly as the mapper does
    assert not torch.allclose(other, plain)  # ... and the given scores are what the LLM reads
    torch.testing.assert_close(after, plain)  # only for that call
