"""bench/ser_benchmark.py on tiny data: the split, the aggregation and an end-to-end quick run on tiny backbones."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LABELS, save_tiny_backbones, tone, write_tone_corpus
from transformers import WhisperModel

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import ser_benchmark  # noqa: E402
import ser_benchmark_systems  # noqa: E402

@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """Tiny random backbones saved as folders (as in tests/test_train.py) and an 80-clip, 10-speaker corpus."""
    root = tmp_path_factory.mktemp("bench")
    save_tiny_backbones(root)
    write_tone_corpus(root / "corpus", speakers=10)
    return root


def test_split_never_shares_a_speaker_and_subsets_every_group(tiny_setup):
    corpus = str(tiny_setup / "corpus")
    splits = ser_benchmark_systems.load_splits(corpus, eval_speakers="7-8", test_speakers="9-10")
    speakers = {name: set(split["speaker"]) for name, split in splits.items()}
    assert speakers == {"train": {f"spk{i:02d}" for i in range(1, 7)}, "validation": {"spk07", "spk08"},
                        "test": {"spk09", "spk10"}}
    half = ser_benchmark_systems.load_splits(corpus, eval_speakers="7-8", test_speakers="9-10", fraction=0.5)
    assert {name: len(split) for name, split in half.items()} == {"train": 24, "validation": 8, "test": 8}
    for name, split in half.items():
        speakers_of_half = set(split["speaker"])
        assert speakers_of_half == speakers[name]  # every speaker keeps every label, one clip each
        assert sorted(zip(split["speaker"], split["label"])) == sorted(
            (s, label) for s in speakers_of_half for label in LABELS)
    again = ser_benchmark_systems.load_splits(corpus, eval_speakers="7-8", test_speakers="9-10", fraction=0.5)
    assert again["train"]["path"] == half["train"]["path"]  # fixed, not drawn anew
    with pytest.raises(ValueError, match="both test and validation"):
        ser_benchmark_systems.load_splits(corpus, eval_speakers="7-9", test_speakers="9-10")


def test_transcript_only_prompt_has_no_audio():
    from conftest import tiny_processor

    processor_class, _ = ser_benchmark_systems.transcript_only_classes()
    base, config = tiny_processor()
    processor = processor_class(base.feature_extractor, base.tokenizer, labels=base.labels,
                                audio_embedding_count=base.audio_embedding_count)
    prompt = processor.build_prompt(16000, transcript="kids are talking by the door")
    assert base.audio_token not in prompt and "Speech" not in prompt
    assert prompt == base.build_prompt(16000, "kids are talking by the door").replace(
        base.audio_token * config.mapper_config["num_queries"], "").replace("\nSpeech:", "")


def test_whisper_head_is_hfs_on_the_valid_frames_of_the_pretrained_encoder(tiny_setup):
    from types import SimpleNamespace

    from processing_emosllm import EmoSLLMProcessor

    model, runner, feature_extractor = ser_benchmark_systems.build_whisper_classifier(
        str(tiny_setup / "encoder"), LABELS, freeze_encoder=True)
    pretrained = WhisperModel.from_pretrained(tiny_setup / "encoder").encoder.state_dict()
    assert all(torch.equal(value, pretrained[name]) for name, value in model.encoder.state_dict().items())
    assert runner.encoder is model.encoder
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "projector.weight", "projector.bias", "classifier.weight", "classifier.bias"}

    model.eval()
    runner.bf16_inference = False  # exact in float32 (a padded batch rounds differently in bf16)
    short, long = tone(0.5, 300), tone(1.2, 900, seed=1)
    with torch.no_grad():
        pooled = ser_benchmark_systems.pooled_encoder_output
        alone = model(encoder_outputs=(pooled(runner, feature_extractor, [short]),))
        batch = model(encoder_outputs=(pooled(runner, feature_extractor, [short, long]),))
        # HF's order on the short clip's own frames: projector on every frame, mean over them, classifier.
        owner = SimpleNamespace(config=runner.config, feature_extractor=feature_extractor, pad_audio_to_max_length=False)
        features = EmoSLLMProcessor.audio_features(owner, [short])
        last = runner.layer_states(features["input_features"], features["audio_lengths"])[0, -1]
        frames = runner.config.num_encoder_frames(len(short))
        expected = model.classifier(model.projector(last[:frames]).mean(dim=0))
    torch.testing.assert_close(alone.logits[0], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batch.logits[0], expected, rtol=1e-4, atol=1e-5)  # padding never enters the mean


def run_result(seed: int, ua: float, wa: float, seconds: float) -> dict:
    return {"seed": seed, "ua": ua, "wa": wa, "macro_f1": ua / 2, "weighted_f1": wa / 2, "train_seconds": seconds,
            "real_time_factor": 0.25, "peak_rss_mib": 1000.0 + seed, "wall_seconds": 2 * seconds,
            "trainable_parameters": 17_400_000, "total_parameters": 160_123_456}


def test_aggregation_and_table_match_hand_computed_values():
    runs = [run_result(0, 0.5, 0.6, 100.0), run_result(1, 0.6, 0.6, 110.0), run_result(2, 0.7, 0.9, 120.0),
            {"system": "x", "seed": 3, "error": "killed"}]
    row = ser_benchmark.summarize(runs)
    assert row["seeds"] == [0, 1, 2] and row["failed_seeds"] == [3]
    assert row["ua"]["mean"] == pytest.approx(0.6) and row["ua"]["std"] == pytest.approx(0.1)
    assert row["wa"]["mean"] == pytest.approx(0.7) and row["wa"]["std"] == pytest.approx(0.3 / 3**0.5)
    assert row["train_seconds"]["values"] == [100.0, 110.0, 120.0] and row["train_seconds"]["std"] == pytest.approx(10)
    single = ser_benchmark.summarize([run_result(0, 0.25, 0.5, 7.0)])
    assert single["ua"] == {"mean": 0.25, "std": None, "values": [0.25]}

    table = ser_benchmark.markdown_table({"emosllm_qpmapper": row, "mfcc_lr": single}, ["1 epoch(s) instead of 5"])
    lines = table.splitlines()
    assert lines[0] == "**REDUCED benchmark (1 epoch(s) instead of 5)**"
    assert lines[4] == ("| emosllm_qpmapper | 0,1,2 (failed: 3) | 0.600 ± 0.100 | 0.700 ± 0.173 | 0.300 ± 0.050 | "
                        "17.4M / 160.1M | 110 ± 10 | 0.250 ± 0.000 | 1001 ± 1 |")
    assert lines[5] == "| mfcc_lr | 0 | 0.250 | 0.500 | 0.125 | 17.4M / 160.1M | 7 | 0.250 | 1000 |"
    assert ser_benchmark.markdown_table({}, []).startswith("**Full benchmark**")


def test_modes_state_their_reductions(tmp_path):
    full = ser_benchmark.resolve_settings(ser_benchmark.parse_args(["--mode", "full", "--out", str(tmp_path)]))
    assert (full["epochs"], full["subset_fraction"]) == (2, 1.0)  # train.py's default epochs, every clip
    assert ser_benchmark.reductions_of(full, [0, 1, 2]) == []
    quick = ser_benchmark.resolve_settings(ser_benchmark.parse_args(["--out", str(tmp_path)]))
    assert (quick["epochs"], quick["subset_fraction"], quick["threads"]) == (1, 0.1, 1)
    assert ser_benchmark.reductions_of(quick, [0]) == [
        "10% of the clips of every speaker-emotion group (at least one) in train, validation and test",
        "1 epoch(s) instead of 2", "seed(s) 0 only"]


def test_a_finished_run_is_reused_only_while_train_py_defaults_are_unchanged(tmp_path, monkeypatch):
    import configuration_emosllm

    settings = ser_benchmark.resolve_settings(ser_benchmark.parse_args(["--mode", "full", "--out", str(tmp_path)]))
    default_width = configuration_emosllm.MAPPER_SETTINGS["qpmapper"]["hidden_size"]
    assert settings["recipe"]["model_defaults"]["mappers"]["qpmapper"]["hidden_size"] == default_width
    ran = []

    def fake_run(command, **kwargs):  # stands for the child process: writes the result file it was given
        ran.append(command)
        result = Path(command[command.index("--result") + 1])
        result.write_text(json.dumps(run_result(0, 0.5, 0.5, 1.0) | {"settings": settings}, default=str))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(ser_benchmark.subprocess, "run", fake_run)
    ser_benchmark.run_all(["emosllm_qpmapper"], [0], settings)
    ser_benchmark.run_all(["emosllm_qpmapper"], [0], settings)
    assert len(ran) == 1  # same settings and recipe: the finished run is reused

    # as if the qpmapper's default width (which train.py's unset --mapper_hidden_size takes) changed
    monkeypatch.setitem(configuration_emosllm.MAPPER_SETTINGS, "qpmapper",
                        {**configuration_emosllm.MAPPER_SETTINGS["qpmapper"], "hidden_size": 768})
    changed = ser_benchmark.resolve_settings(ser_benchmark.parse_args(["--mode", "full", "--out", str(tmp_path)]))
    assert changed["recipe"] != settings["recipe"]
    ser_benchmark.run_all(["emosllm_qpmapper"], [0], changed)
    assert len(ran) == 2  # run again, not reused


def test_report_only_tables_the_finished_runs_and_names_the_missing_ones(tiny_setup, tmp_path, monkeypatch):
    out = tmp_path / "serbench"
    argv = ["--mode", "full", "--out", str(out), "--data_dir", str(tiny_setup / "corpus"), "--eval_speakers", "7-8",
            "--test_speakers", "9-10", "--systems", "emosllm_qpmapper,mfcc_lr", "--seeds", "0,1", "--report_only"]
    settings = ser_benchmark.resolve_settings(ser_benchmark.parse_args(argv))
    finished = out / "runs" / "emosllm_qpmapper" / "seed0" / "result.json"
    finished.parent.mkdir(parents=True)
    finished.write_text(json.dumps(run_result(0, 0.5, 0.6, 10.0) | {"settings": settings}))
    monkeypatch.setattr(ser_benchmark, "child_command", lambda *a, **k: pytest.fail("--report_only ran something"))

    assert ser_benchmark.main(argv) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["rows"]["emosllm_qpmapper"]["seeds"] == [0]
    assert report["rows"]["emosllm_qpmapper"]["missing_seeds"] == [1]
    assert report["rows"]["emosllm_qpmapper"]["ua"]["values"] == [0.5]
    assert report["rows"]["mfcc_lr"]["missing_seeds"] == [0]  # deterministic: one run, not made yet
    assert report["reductions"][-1] == "not run yet: emosllm_qpmapper (seed 1), mfcc_lr (seed 0)"
    lines = report["table"].splitlines()
    assert lines[0].startswith("**REDUCED benchmark") and "not run yet" in lines[0]
    assert lines[4].startswith("| emosllm_qpmapper | 0 (not run yet: 1) | 0.500 |")
    assert lines[5].startswith("| mfcc_lr | - (not run yet: 0) | - |")


@pytest.mark.slow
def test_quick_run_end_to_end_on_tiny_backbones(tiny_setup, tmp_path):
    # Every row but emosllm_qformer / emosllm_mlp / emosllm_statistics, which differ from emosllm_qpmapper only by
    # train.py flags (the mappers have their own tests); that keeps this test near a minute.
    systems = [s for s in ser_benchmark.SYSTEMS if s not in ("emosllm_qformer", "emosllm_mlp", "emosllm_statistics")]
    out = tmp_path / "serbench"
    argv = ["--mode", "quick", "--out", str(out), "--data_dir", str(tiny_setup / "corpus"), "--eval_speakers", "7-8",
            "--test_speakers", "9-10", "--subset_fraction", "0.5", "--audio_encoder", str(tiny_setup / "encoder"),
            "--llm", str(tiny_setup / "llm"), "--systems", ",".join(systems)]
    assert ser_benchmark.main(argv) == 0
    report = json.loads((out / "results.json").read_text())
    assert list(report["rows"]) == systems
    assert sum(split["clips"] for split in report["splits"].values()) == 40
    assert report["settings"]["epochs"] == 1 and report["seeds"] == [0]
    assert any("50%" in text for text in report["reductions"]) and "REDUCED" in report["table"]
    for system in systems:
        row = report["rows"][system]
        assert row["seeds"] == [0] and not row["failed_seeds"], system
        assert 0 <= row["ua"]["mean"] <= 1 and row["real_time_factor"]["mean"] > 0, system
        assert 0 < row["trainable_parameters"] <= row["total_parameters"], system
        assert row["peak_rss_mib"]["mean"] > 0 and row["train_seconds"]["mean"] > 0, system
        run = report["runs"][system][0]
        assert run["num_samples"] == 8 and run["speed"]["clips"] == 8, system
    runs = {system: report["runs"][system][0] for system in systems}
    # Frozen encoder: only HF's head trains (projector 32 -> 256, classifier 256 -> 4); fine-tuned: the encoder too.
    assert runs["whisper_linear_frozen"]["trainable_parameters"] == (32 + 1) * 256 + (256 + 1) * 4
    frozen_positions = 1500 * 32  # HF keeps Whisper's sinusoidal position table frozen (max_source_positions x d_model)
    finetuned = runs["whisper_linear_finetuned"]
    assert finetuned["trainable_parameters"] + frozen_positions == finetuned["total_parameters"]
    # Without audio only LoRA and the head train; without LoRA the mapper and the head; full fine-tuning trains
    # every LLM weight.
    assert runs["emosllm_transcript_only"]["trainable_parameters"] < runs["emosllm_qpmapper"]["trainable_parameters"]
    assert runs["emosllm_no_lora"]["trainable_parameters"] < runs["emosllm_qpmapper"]["trainable_parameters"]
    if "emosllm_full_finetune" in runs:
        assert runs["emosllm_full_finetune"]["trainable_parameters"] > runs["emosllm_qpmapper"]["trainable_parameters"]
    # The default row also measures the LLM's free answer against its scores, and the saved folder's delivered UA.
    default = runs["emosllm_default"]
    assert 0 <= default["generate_agreement"] <= 1 and abs(default["delivered_ua"] - default["ua"]) <= 0.01
    assert 0 <= default["ua_no_transcript"] <= 1 and "free answer = top class" in report["table"]
    # ... and how far its class probabilities can be trusted, from that same pass over the test clips.
    assert 1 / len(LABELS) <= default["mean_top_probability"] <= 1 and default["nll"] > 0 and 0 <= default["ece"] <= 1
    assert report["rows"]["emosllm_default"]["nll"]["values"] == [default["nll"]] and "| NLL | ECE |" in report["table"]
    assert runs["whisper_layers_lr"]["selection"]["C"] in ser_benchmark_systems.LAYERS_LR_CS
    markdown = (out / "results.md").read_text()
    assert all(f"| {system} |" in markdown for system in systems) and "Command:" in markdown
    assert not list((out / "runs").rglob("*.safetensors"))  # EmoSLLM weights are removed after measuring

    # A second call with the same settings reuses every finished run.
    assert ser_benchmark.main(argv) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["rows"]["emosllm_qpmapper"]["ua"] == report["rows"]["emosllm_qpmapper"]["ua"]


def test_calibration_figures_match_hand_computed_values():
    import calibration

    probabilities = np.array([[0.995, 0.005], [0.995, 0.005], [0.6, 0.4], [0.3, 0.7]])
    targets = np.array([0, 1, 0, 1])  # right, wrong (at 0.995), right, right
    figures = calibration.calibration(probabilities, targets)
    assert figures["wa"] == pytest.approx(0.75) and figures["ua"] == pytest.approx(0.75)
    assert figures["mean_top_probability"] == pytest.approx(0.8225)
    assert figures["share_above_0.99"] == 0.5 and figures["accuracy_above_0.99"] == 0.5
    # ECE: half the clips at 0.995 are half right (0.5 * 0.495), then 0.6 right (0.25 * 0.4) and 0.7 right (0.25 * 0.3)
    assert figures["ece"] == pytest.approx(0.5 * 0.495 + 0.25 * 0.4 + 0.25 * 0.3)
    assert figures["nll"] == pytest.approx(-np.log([0.995, 0.005, 0.6, 0.7]).mean())
    assert figures["brier"] == pytest.approx((2 * 0.005**2 + 2 * 0.995**2 + 2 * 0.4**2 + 2 * 0.3**2) / 4)
    assert figures["nll_at_temperature"]["1.0"] == pytest.approx(figures["nll"])
    softened = np.sqrt(probabilities) / np.sqrt(probabilities).sum(axis=1, keepdims=True)  # T = 2
    assert figures["nll_at_temperature"]["2.0"] == pytest.approx(-np.log(softened[np.arange(4), targets]).mean())


def test_probe_readout_scores_each_speaker_with_a_read_out_fitted_without_it():
    from probe_readout import cross_validated_ua
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    speakers = np.repeat(np.arange(8), 10)  # 8 speakers x 10 clips, 5 of each of 2 classes
    y = np.tile(np.repeat([0, 1], 5), 8)
    emotion = np.stack([2.0 * y - 1 + 0.1 * rng.standard_normal(80), rng.standard_normal(80)], axis=1)
    uas = cross_validated_ua(emotion, emotion + 0.01, y, speakers, LogisticRegression)
    assert len(uas) == 4 and uas == [1.0] * 4  # the emotion dimension carries over to new speakers
    # Features that only name the speaker, with a speaker's clips all of one class: a fit that had seen a held-out
    # speaker would score it perfectly; one that has not gives all of them one answer (UA 0.5 or less).
    y_by_speaker = speakers % 2
    identity = np.eye(8)[speakers]
    uas = cross_validated_ua(identity, identity, y_by_speaker, speakers, LogisticRegression)
    assert len(uas) == 4 and max(uas) <= 0.5


def test_probe_readout_extra_statistics_read_only_each_clips_valid_frames():
    from probe_readout import EXTRA_STATISTICS

    torch.manual_seed(0)
    frames, mel = torch.randn(2, 8, 6), torch.randn(2, 4, 16)
    mask = torch.tensor([[True] * 5 + [False] * 3, [True] * 8])
    alone = {"input_features": mel[:1, :, :10]}
    for name, pool in EXTRA_STATISTICS.items():
        batched = pool(frames, mask, {"input_features": mel})
        assert batched.shape[0] == 2 and torch.isfinite(batched).all(), name
        # The first clip alone, without its padding frames, gets the same statistics as in the padded batch.
        torch.testing.assert_close(pool(frames[:1, :5], mask[:1, :5], alone)[0], batched[0], msg=name)
        # Padding frames carry no weight: changing them changes nothing.
        padded = frames.clone()
        padded[0, 5:] = 100.0
        torch.testing.assert_close(pool(padded, mask, {"input_features": mel}), batched, msg=name)


def test_build_memory_counts_tied_weights_once_and_reads_the_peak_of_its_own_process():
    import build_memory
    from conftest import tiny_processor

    from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition

    model = EmoSLLMForSpeechEmotionRecognition(tiny_processor()[1])
    head = model.language_model.get_output_embeddings().weight
    assert head is model.get_input_embeddings().weight  # tied
    held = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])  # tied: once
    counted = sum(build_memory.model_bytes(model).values())
    assert counted == held
    assert counted < sum(t.numel() * t.element_size() for t in model.state_dict().values())  # which names it twice
    assert 50 * 2 ** 20 < build_memory.peak_rss_bytes() < 64 * 2 ** 30


def test_fit_is_least_squares_per_layer():
    import paper_scale

    assert paper_scale.fit([1, 2, 3], [5.0, 7.0, 9.0]) == pytest.approx((2.0, 3.0))
    assert paper_scale.fit([1, 2, 3], [1.0, 3.0, 2.0]) == pytest.approx((0.5, 1.0))
    slope, intercept = paper_scale.fit([2], [4.0])
    assert np.isnan(slope) and intercept == 4.0


def test_paper_scale_runs_at_toy_sizes_and_counts_the_full_depth_exactly(tmp_path):
    import paper_scale
    from backbones_emosllm import installed_backbones

    if paper_scale.TOKENIZER not in installed_backbones():
        pytest.skip(f"the bundled {paper_scale.TOKENIZER} (its tokenizer stands in for Llama 3's) is not installed")
    # full_depth 2 = the deepest measured depth: the meta-device counts must equal the built model's own.
    result = paper_scale.main(["--tiny", "--depths", "1,2", "--full_depth", "2", "--repeats", "1", "--seconds",
                               "0.5,0.8", "--workdir", str(tmp_path / "work"), "--json", str(tmp_path / "r.json")])
    cases, summary = result["cases"], result["summary"]
    assert [c["depth"] for c in cases] == [1, 2] and all(c["threads"] == 1 for c in cases)
    counts = summary["counts"]
    assert (counts["trainable"], counts["total"]) == (cases[1]["trainable"], cases[1]["total"])
    assert counts["lora"] == cases[1]["lora"] and cases[1]["lora"] > cases[0]["lora"]  # LoRA grows per layer
    assert summary["trainable_share_full"] == pytest.approx(cases[1]["trainable"] / cases[1]["total"])
    for c in cases:  # checkpointing gives the loss and gradients of the plain pass (same weights and seed)
        assert c["first_loss_checkpointing_True"] == pytest.approx(c["first_loss_checkpointing_False"], rel=1e-4)
        assert c["checkpointing_grad_max_rel_diff"] < 1e-2
        assert c["train_seconds"] > 0 and c["inference_seconds"] > 0 and c["train_peak_bytes"] >= 0
    # Two depths: the line passes through both, so "full depth" 2 gives the second case back.
    assert summary["fits"]["train_seconds"]["at_full_depth"] == pytest.approx(cases[1]["train_seconds"])
    gpu = summary["gpu"]["with checkpointing"]
    assert gpu["weights_bf16"] == 2 * counts["frozen"] and gpu["trainable_states"] == 16 * counts["trainable"]
    assert c["saved_activation_bytes"] > 0 and cases[1]["saved_activation_bytes"] > cases[0]["saved_activation_bytes"]
    assert gpu["total"] == pytest.approx(gpu["weights_bf16"] + gpu["trainable_states"] + gpu["activations"])
    # Built as on a bf16 GPU (PRECISION_POLICY): frozen backbones bf16, the parts that train float32.
    assert summary["llm_bf16"] and all(c["llm_dtype"] == c["encoder_dtype"] == "torch.bfloat16" for c in cases)
    assert all(c["mapper_dtype"] == c["lora_dtype"] == "torch.float32" for c in cases)
    assert "| LLM layers |" in result["markdown"] and "--tiny" in result["markdown"]
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["counts"] == counts


def test_inference_variants_switch_the_levers_they_name():
    """bench/inference.py's `apply_variant`: "plain" keeps no prompt cache, leaves LoRA unmerged and the encoder in
    float32; "fast" keeps the cache (used by the next call), merges LoRA and runs the encoder in bf16 where native."""
    from types import SimpleNamespace

    from conftest import batch_of_lengths, tiny_model

    import inference

    processor, model = tiny_model()
    _, audios = batch_of_lengths(processor)
    batch = processor(audios)
    classifier = SimpleNamespace(model=model.eval(), processor=processor)
    for variant, cached, merged in (("plain", False, False), ("prompt_cache", True, False),
                                    ("merged_lora", False, True), ("fast", True, True)):
        assert inference.apply_variant(classifier, variant) is model
        with torch.no_grad():
            model(**batch)
        assert (model.prompt_head.kept is not None) == cached, variant
        assert model.lora_merged == merged, variant
        assert model.audio_encoder.bf16_inference == (variant == "fast"), variant
