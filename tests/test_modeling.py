"""EmoSLLM on tiny random backbones: shapes, audio placeholders, what trains, overfitting, errors, Hub round trip."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import LABELS, batch_of_lengths, fit_random_probe, tiny_model, tiny_processor, tone
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition
from probe_fitting_emosllm import MIN_RELATIVE_STD, fit_linear_probe

ENCODERS = ["whisper", "wav2vec2"]
MAPPERS = ["qpmapper", "qformer", "mlp", "statistics", "probe"]
# The mapper and the layer weights between encoder and mapper (the class scores are the LLM's own head).
TRAINABLE = ("mapper.", "audio_encoder.layer_weights")


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("mapper", MAPPERS)
def test_shapes_and_placeholders_match_mapper(encoder, mapper):
    processor, model = tiny_model(encoder, mapper)
    batch, audios = batch_of_lengths(processor)
    placeholders = (batch["input_ids"] == model.config.audio_token_id).sum(dim=1)
    _, audio_mask = model.get_audio_embeddings(batch["audio_lengths"], batch["input_features"])
    assert placeholders.tolist() == audio_mask.sum(dim=1).tolist()
    assert placeholders.tolist() == [model.config.num_audio_embeddings(len(a)) for a in audios]
    if mapper in ("qpmapper", "statistics"):
        assert set(placeholders.tolist()) == {model.config.mapper_config["num_queries"]}
    elif mapper == "probe":  # one soft emotion word per clip
        assert set(placeholders.tolist()) == {1}
    else:  # grows with the audio
        assert placeholders[0] < placeholders[1] < placeholders[2]
    output = model(**batch)
    assert output.logits.shape == (3, len(LABELS))
    assert output.loss.shape == () and torch.isfinite(output.loss)
    embeddings, _ = model.get_audio_embeddings(batch["audio_lengths"], batch["input_features"])
    assert embeddings.shape[-1] == model.config.text_config.hidden_size


@pytest.mark.parametrize("mapper", MAPPERS)
def test_gradients_reach_only_mapper_and_lora(mapper):
    processor, model = tiny_model("whisper", mapper)
    batch, _ = batch_of_lengths(processor)
    model.train()
    model(**batch).loss.backward()
    for name, param in model.named_parameters():
        trainable = name.startswith(TRAINABLE) or "lora_" in name
        assert param.requires_grad == trainable, name
        assert (param.grad is not None) == trainable, name
    # LoRA's B starts at zero, so the signal shows on B (and on every mapper weight) at the first step.
    lora_b = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(g.abs().sum() > 0 for g in lora_b)
    layer = {"mlp": None, "probe": "label_embeddings"}.get(mapper, "output_proj")
    assert getattr(model.mapper, layer).weight.grad.abs().sum() > 0 if layer else True
    trainable, total = model.trainable_parameters()
    expected = sum(p.numel() for n, p in model.named_parameters() if n.startswith(TRAINABLE) or "lora_" in n)
    assert trainable == expected < total


def test_no_lora_trains_only_the_mapper():
    processor, model = tiny_model(language_model_training="frozen")
    assert not any("lora_" in n for n, _ in model.named_parameters())
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trains == {n for n, _ in model.named_parameters() if n.startswith(TRAINABLE)}
    assert any(n.startswith("mapper.") for n in trains)  # the mapper does train: not an empty set


def test_full_finetuning_trains_every_llm_weight_and_excludes_lora():
    processor, model = tiny_model(language_model_training="full")
    batch, _ = batch_of_lengths(processor)
    model(**batch).loss.backward()
    llm = dict(model.language_model.named_parameters())
    assert all(p.requires_grad and p.grad is not None for p in llm.values())
    assert not any(p.requires_grad for p in model.audio_encoder.encoder.parameters())


def test_frozen_encoder_stays_in_eval_mode():
    _, model = tiny_model("wav2vec2")
    model.train()
    assert not model.audio_encoder.encoder.training and model.mapper.training


@pytest.mark.parametrize("encoder", ENCODERS)
def test_overfits_eight_clips(encoder):
    processor, model = tiny_model(encoder, "qpmapper", seed=1)
    frequencies = {"neutral": 150, "happy": 450, "sad": 900, "angry": 1800}
    audios, labels = [], []
    for i, label in enumerate(LABELS * 2):
        audios.append(tone(0.8 + 0.1 * i, frequencies[label], seed=i))
        labels.append(label)
    batch = processor(audios, labels=labels)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(40):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        predictions = model(**batch).logits.argmax(-1)
    assert predictions.tolist() == batch["labels"].tolist()


def test_cached_encoder_states_give_the_same_logits():
    processor, model = tiny_model("wav2vec2", "qformer")
    model.eval()
    batch, _ = batch_of_lengths(processor)
    with torch.no_grad():
        states = model.audio_encoder.layer_states(batch["input_features"], batch["audio_lengths"])
        direct = model(**batch).logits
        cached = model(**{k: v for k, v in batch.items() if k != "input_features"}, encoder_layer_states=states).logits
    torch.testing.assert_close(cached, direct)


def test_feature_statistics_standardize_each_layer_and_dimension():
    processor, model = tiny_model("whisper", "mlp")
    batch, audios = batch_of_lengths(processor)
    with torch.no_grad():
        states = model.audio_encoder.layer_states(batch["input_features"], batch["audio_lengths"])
    clip_states = [s[:, : model.config.num_encoder_frames(len(a))] for s, a in zip(states, audios)]
    model.audio_encoder.set_feature_statistics(clip_states)
    frames = torch.cat(clip_states, dim=1)  # (layers + 1, all valid frames, hidden): padding never counts
    standardized = (frames - model.audio_encoder.feature_mean[:, None]) / model.audio_encoder.feature_std[:, None]
    torch.testing.assert_close(standardized.mean(dim=1), torch.zeros_like(standardized[:, 0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(standardized.std(dim=1, unbiased=False), torch.ones_like(standardized[:, 0]),
                               atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="at least one clip"):
        model.audio_encoder.set_feature_statistics([])


@pytest.mark.parametrize("mapper", ["qpmapper", "qformer"])
def test_audio_loss_adds_a_weighted_term_that_trains_the_mapper_directly(mapper):
    processor, model = tiny_model("whisper", mapper, audio_loss_weight=0.5)
    batch, _ = batch_of_lengths(processor)
    model.eval()  # no dropout, so the two passes below see the same embeddings
    output = model(**batch)
    embeddings, mask = model.get_audio_embeddings(batch["audio_lengths"], batch["input_features"])
    mean_audio = (embeddings * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # padding embeddings excluded
    torch.testing.assert_close(output.audio_logits, model.audio_classifier(mean_audio))
    answer_loss = model(**{k: v for k, v in batch.items() if k != "labels"}).loss  # the LLM's loss on the answer
    expected = answer_loss + 0.5 * F.cross_entropy(output.audio_logits, batch["labels"])
    torch.testing.assert_close(output.loss, expected)
    model.train()
    model(**batch).loss.backward()
    assert model.audio_classifier.weight.grad.abs().sum() > 0
    # The answer is the LLM's alone: the auxiliary head does not move the class scores.
    model.eval()
    with torch.no_grad():
        before = model(**batch).logits
        model.audio_classifier.weight.add_(1.0)
        torch.testing.assert_close(model(**batch).logits, before)
    assert not hasattr(tiny_model()[1], "audio_classifier")  # off by default in the config


@pytest.mark.parametrize("mapper", ["qpmapper", "mlp", "statistics"])
def test_scores_do_not_depend_on_batch_company(mapper):
    processor, model = tiny_model("whisper", mapper)
    model.eval()
    short, long = tone(1.0, 300), tone(3.0, 700, seed=2)
    # Exact in float32; the bf16 encoder (where bf16 is native) rounds a padded batch's matrix products differently.
    for bf16, tolerance in ((False, 1e-5), (True, 1e-3)):
        model.audio_encoder.bf16_inference = bf16
        with torch.no_grad():
            alone = model(**processor(short)).logits
            together = model(**processor([short, long])).logits[:1]
        torch.testing.assert_close(together, alone, atol=tolerance, rtol=0)


def test_statistics_mapper_maps_mean_and_std_of_the_valid_frames():
    processor, model = tiny_model("whisper", "statistics")
    mapper = model.mapper
    frames = torch.randn(2, 7, mapper.output_proj.in_features // 2)
    frame_mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])
    embeddings, mask = mapper(frames, frame_mask)
    assert embeddings.shape == (2, model.config.mapper_config["num_queries"], model.config.text_config.hidden_size)
    assert mask.all()
    short = frames[1, :3]
    statistics = torch.cat([short.mean(dim=0), short.std(dim=0, unbiased=False)])
    expected = mapper.output_proj(statistics).reshape(model.config.mapper_config["num_queries"], -1)
    torch.testing.assert_close(embeddings[1], expected)


def test_probe_mapper_mixes_the_label_words_by_the_probes_probabilities():
    processor, model = tiny_model("whisper", "probe")
    fit_random_probe(model)
    mapper = model.mapper
    frames = torch.randn(2, 7, mapper.probe_weight.shape[1] // 2)
    frame_mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])
    embeddings, mask = mapper(frames, frame_mask)
    assert embeddings.shape == (2, 1, model.config.text_config.hidden_size) and mask.all()
    short = frames[1, :3]
    statistics = (torch.cat([short.mean(dim=0), short.std(dim=0, unbiased=False)]) - mapper.statistics_mean)
    probabilities = (mapper.probe_weight @ (statistics / mapper.statistics_std) + mapper.probe_bias).softmax(-1)
    torch.testing.assert_close(embeddings[1, 0], mapper.label_embeddings.weight @ probabilities)
    # The probe is fitted, not trained: its values are buffers, saved with the model but outside the optimizer.
    assert {n for n, _ in mapper.named_parameters()} == {"label_embeddings.weight"}
    assert {"statistics_mean", "statistics_std", "probe_weight", "probe_bias"} <= set(mapper.state_dict())
    with pytest.raises(ValueError, match="shape"):
        mapper.set_probe(mapper.statistics_mean, mapper.statistics_std, mapper.probe_weight[:2], mapper.probe_bias)


def tone_batches(processor, speakers=range(4), takes=2):
    """Processor batches of noisy tones, one pitch per label, one batch per speaker; and each clip's speaker."""
    from conftest import TONE_FREQUENCIES

    batches, groups = [], []
    for speaker in speakers:
        audios = [tone(0.8, TONE_FREQUENCIES[label] * (1 + 0.03 * speaker), seed=10 * speaker + take)
                  for label in LABELS for take in range(takes)]
        batches.append(processor(audios, labels=[label for label in LABELS for _ in range(takes)]))
        groups += [f"spk{speaker}"] * len(audios)
    return batches, groups


def test_fit_probe_is_the_models_own_and_matches_scikit_learn(caplog):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    processor, model = tiny_model("whisper", "probe")
    batches, groups = tone_batches(processor)
    statistics = torch.cat([model.pooled_audio_statistics(b) for b in batches]).double().numpy()
    labels = torch.cat([b["labels"] for b in batches]).numpy()
    chosen = model.fit_probe(batches, 0.1)
    assert chosen == {"probe_c": 0.1, "probe_selection_ua": None, "probe_selection": "given", "probe_cs": [0.1]}
    scaler = StandardScaler().fit(statistics)
    reference = LogisticRegression(C=0.1, max_iter=3000).fit(scaler.transform(statistics), labels)
    torch.testing.assert_close(model.mapper.probe_weight, torch.tensor(reference.coef_).float(), atol=1e-4, rtol=1e-3)
    with torch.no_grad():
        scores = model.mapper.class_scores(*model.audio_encoder(batches[0]["audio_lengths"], batches[0]["input_features"]))
    expected = reference.decision_function(scaler.transform(statistics[: len(scores)]))
    torch.testing.assert_close(scores, torch.tensor(expected).float(), atol=1e-3, rtol=1e-3)
    # Several C: validation speakers choose, or else cross-validation over the training speakers (groups).
    # Imbalanced training clips (extra neutral ones), on which C=1e-8 answers the majority class.
    extra = processor([tone(0.8, 150, seed=100 + i) for i in range(12)], labels=["neutral"] * 12)
    by_validation = model.fit_probe([*batches[:3], extra], [1e-8, 1.0], validation_batches=batches[3:])
    assert by_validation["probe_c"] == 1.0 and by_validation["probe_selection"] == "validation UA"
    # 1.0 beat the grid's other end, so the grid went on past it (by its step, at most 10x) until C stopped rising.
    assert by_validation["probe_cs"] == [1e-8, 1.0, 10.0]
    assert "at the edge of the grid tried (1e-08, 1); trying C=10" in caplog.text
    by_groups = model.fit_probe([*batches, extra], [1e-8, 1.0], groups=groups + ["spk0"] * 12)
    assert by_groups["probe_c"] == 1.0 and "cross-validation" in by_groups["probe_selection"]
    with pytest.raises(ValueError, match="validation_batches or groups"):
        model.fit_probe(batches, [0.1, 1.0])
    with pytest.raises(ValueError, match="one per clip"):
        model.fit_probe(batches, 0.1, groups=groups[:-1])


def test_fit_probe_gives_each_clip_the_scores_of_a_probe_that_never_saw_its_speaker():
    """With groups, every clip's out-of-fold scores come from the probe fitted, at the chosen C, on the other
    speakers only; the probe the model keeps is still the one fitted on every clip."""
    processor, model = tiny_model("whisper", "probe")
    batches, groups = tone_batches(processor)
    statistics = torch.cat([model.pooled_audio_statistics(b) for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    chosen = model.fit_probe(batches, 0.1, groups=groups)
    kept = model.mapper.scores_of_statistics(statistics)
    out_of_fold = chosen["out_of_fold_scores"]
    assert out_of_fold.shape == (len(labels), len(LABELS))
    speakers = np.asarray(groups)
    for speaker in sorted(set(groups)):  # 4 speakers, 4 folds: each fold holds out one speaker
        held = torch.from_numpy(speakers == speaker)
        fit_linear_probe(model.mapper, statistics[~held], labels[~held], 0.1)
        torch.testing.assert_close(out_of_fold[held], model.mapper.scores_of_statistics(statistics[held]))
    assert not torch.allclose(out_of_fold, kept, atol=1e-3)
    assert "out_of_fold_scores" not in model.fit_probe(batches, 0.1)  # no groups, no folds
    with pytest.raises(ValueError, match="every class"):
        model.fit_probe([processor([tone(0.8, 150)] * 2, labels=["neutral", "happy"])], 0.1)
    with pytest.raises(ValueError, match="fit_probe is for the probe mapper"):
        tiny_model("whisper", "statistics")[1].fit_probe(batches, 0.1)


def test_probe_standardization_has_a_floor_on_the_spread():
    """A statistic that hardly varies across the training clips must not turn rounding noise into the answer."""
    processor, model = tiny_model("whisper", "probe")
    statistics = torch.randn(16, model.mapper.statistics_mean.shape[0], dtype=torch.float64)
    statistics[:, 0] = 3.0 + 1e-9 * torch.randn(16, dtype=torch.float64)  # e.g. clips all of one length
    fit_linear_probe(model.mapper, statistics, torch.arange(16) % len(LABELS), 0.1)
    spread = model.mapper.statistics_std
    assert spread[0] >= MIN_RELATIVE_STD * spread[1:].median() * 0.99


def test_cached_float16_states_and_live_audio_give_the_same_scores():
    """train.py caches encoder states in float16; the pipeline computes them live: both must score a clip alike."""
    processor, model = tiny_model("whisper", "probe")
    fit_random_probe(model)
    model.eval()
    batch, _ = batch_of_lengths(processor)
    with torch.no_grad():
        states = model.audio_encoder.layer_states(batch["input_features"], batch["audio_lengths"])
        live = model(**batch).logits
        cached = model(**{k: v for k, v in batch.items() if k != "input_features"},
                       encoder_layer_states=states.half().float()).logits
    torch.testing.assert_close(live, cached, atol=1e-5, rtol=1e-5)


def test_concatenated_encoder_layers_sit_side_by_side_and_have_no_layer_weights():
    processor, model = tiny_model("whisper", "statistics", encoder_layer_combination="concatenate")
    encoder = model.audio_encoder
    batch, _ = batch_of_lengths(processor)
    with torch.no_grad():
        states = encoder.layer_states(batch["input_features"], batch["audio_lengths"])
        encoder.set_feature_statistics(states)
        frames, _ = encoder(batch["audio_lengths"], encoder_layer_states=states)
    num_layers, width = states.shape[1], states.shape[-1]
    assert frames.shape == (3, states.shape[2], num_layers * width) and encoder.output_size == num_layers * width
    # The states are rounded to float16 (the cache's precision) before they are standardized.
    standardized = (states.half().float() - encoder.feature_mean[:, None]) / encoder.feature_std[:, None]
    for layer in range(num_layers):
        torch.testing.assert_close(frames[..., layer * width:(layer + 1) * width], standardized[:, layer])
    assert not hasattr(encoder, "layer_weights")
    assert model.mapper.output_proj.in_features == 2 * num_layers * width


def test_asr_stage_gives_language_model_loss_on_the_answer_only():
    processor, model = tiny_model()
    audios = [tone(1.0, 300), tone(1.5, 500, seed=1)]
    text = processor.text_inputs([len(a) for a in audios], ["kids are talking", "the door"], [None, None], task="asr")
    features = processor.audio_features(audios)
    answer = text["lm_labels"] != -100
    assert answer.sum(1).tolist() == [4, 3]  # the words and the end-of-text token
    assert (text["input_ids"][answer] == text["lm_labels"][answer]).all()
    output = model(**text, **features)
    assert output.loss > 0
    output.loss.backward()
    assert model.mapper.output_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="transcript"):
        processor.text_inputs([16000], [None], [None], task="asr")


def test_a_frozen_wav2vec2_family_encoder_runs_with_folded_matmuls_and_stays_frozen():
    """
    Without gradients, the encoder's frozen weights count as requiring them for the call (torch then folds the
    transposed inputs of wav2vec2/WavLM attention into one matrix product instead of copying the weight over the batch;
    15x faster for WavLM in bf16): the same states to the bit, every weight frozen again after, nothing with gradients.
    """
    import contextlib

    import audio_embeddings_emosllm

    processor, model = tiny_model("wav2vec2")
    model.eval()
    batch, _ = batch_of_lengths(processor)
    encoder = model.audio_encoder
    seen = []
    linear = next(m for m in encoder.encoder.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_pre_hook(lambda module, args: seen.append(module.weight.requires_grad))
    with torch.no_grad():
        folded = encoder.layer_states(batch["input_features"], batch["audio_lengths"])
        assert seen and all(seen)  # marked during the call
        assert not any(p.requires_grad for p in encoder.encoder.parameters())  # and frozen again after
        original = audio_embeddings_emosllm._folded_matmuls
        audio_embeddings_emosllm._folded_matmuls = lambda module: contextlib.nullcontext()
        try:
            plain = encoder.layer_states(batch["input_features"], batch["audio_lengths"])
        finally:
            audio_embeddings_emosllm._folded_matmuls = original
    torch.testing.assert_close(folded, plain, rtol=0, atol=0)
    seen.clear()
    encoder.layer_states(batch["input_features"], batch["audio_lengths"])  # with gradients on: left as they are
    assert seen and not any(seen)


def test_whisper_encoder_on_own_length_equals_hf_forward_at_full_length():
    processor, model = tiny_model("whisper")
    model.eval()
    features = torch.randn(1, 16, 3000)
    every_frame_valid = torch.tensor([480000 + 640])  # HF masks nothing; neither do we when all frames count
    ours = model.audio_encoder._whisper_hidden_states(features, every_frame_valid)
    reference = WhisperEncoder.forward(model.audio_encoder.encoder, features, output_hidden_states=True)
    assert len(ours) == len(reference.hidden_states)
    for layer, (mine, theirs) in enumerate(zip(ours, reference.hidden_states)):  # every layer: "concatenate" reads all
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5, msg=f"layer {layer}")
    torch.testing.assert_close(ours[-1], reference.last_hidden_state, atol=1e-5, rtol=1e-5)


def test_padding_to_max_length_gives_same_placeholders():
    processor, config = tiny_processor("whisper", "mlp", pad_audio_to_max_length=True, max_audio_seconds=4.0)
    batch, audios = batch_of_lengths(processor)
    assert batch["input_features"].shape[-1] == 400  # 4 s of 10 ms mel frames
    placeholders = (batch["input_ids"] == config.audio_token_id).sum(dim=1)
    assert placeholders.tolist() == [config.num_audio_embeddings(len(a)) for a in audios]


def test_mismatched_processor_and_model_raise():
    processor, _ = tiny_model(num_queries=4)
    _, model = tiny_model(num_queries=6)
    batch, _ = batch_of_lengths(processor)
    with pytest.raises(ValueError, match="processor and the model do not match"):
        model(**batch)


def test_class_ids_outside_the_labels_are_an_error_naming_them():
    """They failed inside torch's cross-entropy ("Target 99 is out of bounds"; on a GPU, a device-side assert)."""
    processor, model = tiny_model()
    inputs, _ = batch_of_lengths(processor)
    del inputs["lm_labels"]  # the class loss on the scores
    model(**inputs)  # the processor's own ids are fine
    for bad in (len(LABELS), -1):
        inputs["labels"] = torch.tensor([0, bad, 1])
        with pytest.raises(ValueError, match=rf"labels: class ids \[0, {bad}, 1\] outside 0\.\.{len(LABELS) - 1}"):
            model(**inputs)


def test_model_needs_tokenizer_ids():
    _, config = tiny_processor()
    config.audio_token_id = None
    with pytest.raises(ValueError, match="from_backbones"):
        EmoSLLMForSpeechEmotionRecognition(config)


def test_mismatched_checkpoint_raises(tmp_path):
    _, model = tiny_model(language_model_training="frozen")
    model.save_pretrained(tmp_path)
    _, config = tiny_processor(language_model_training="frozen")
    config.language_model_training = "lora"  # the folder has no LoRA weights for this config: they would start random
    with pytest.raises(ValueError, match="does not match this EmoSLLM config"):
        EmoSLLMForSpeechEmotionRecognition.from_pretrained(tmp_path, config=config)
    loaded = EmoSLLMForSpeechEmotionRecognition.from_pretrained(tmp_path)
    assert loaded.config.language_model_training == "frozen"
    # What trains after loading is what the config says, as in a fresh model (fine-tuning a loaded model).
    assert loaded.trainable_parameters() == model.trainable_parameters()


ROUND_TRIP = textwrap.dedent(
    """
    import json, sys, numpy as np, torch
    from transformers import AutoConfig, AutoModel, AutoModelForAudioClassification, AutoProcessor
    folder, data = sys.argv[1], np.load(sys.argv[2])
    try:
        import modeling_emosllm  # must not be importable here: the code has to come from the folder
        raise SystemExit("project importable")
    except ImportError:
        pass
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    batch = processor([data["a"], data["b"]], sampling_rate=16000, transcript=["kids are talking", None])
    results = {"config": type(config).__name__, "processor": type(processor).__name__}
    for auto in (AutoModel, AutoModelForAudioClassification):
        model = auto.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            results[auto.__name__] = model(**batch).logits.tolist()
        results[auto.__name__ + "_class"] = type(model).__name__
    print(json.dumps(results))
    """
)


@pytest.mark.parametrize("mapper", MAPPERS)
def test_save_and_load_in_fresh_process(tmp_path, mapper):
    processor, model = tiny_model("whisper", mapper)
    model.eval()
    audios = [tone(1.3, 300), tone(2.2, 600, seed=3)]
    batch = processor(audios, transcript=["kids are talking", None])
    with torch.no_grad():
        states = model.audio_encoder.layer_states(batch["input_features"], batch["audio_lengths"])
    model.audio_encoder.set_feature_statistics(states)  # the standardization is part of the saved model
    if mapper == "probe":
        fit_random_probe(model)  # and so is the fitted probe
    with torch.no_grad():
        expected = model(**batch).logits
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    processor.save_pretrained(saved)
    config = json.loads((saved / "config.json").read_text())
    assert set(config["auto_map"]) >= {"AutoConfig", "AutoModel", "AutoModelForAudioClassification"}
    assert (saved / "model.safetensors").exists() and (saved / "configuration_emosllm.py").exists()
    elsewhere = tmp_path / "elsewhere" / "emosllm-copy"
    shutil.copytree(saved, elsewhere)
    np.savez(tmp_path / "audio.npz", a=audios[0], b=audios[1])
    (tmp_path / "check.py").write_text(ROUND_TRIP)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    run = subprocess.run(
        [sys.executable, "check.py", str(elsewhere), "audio.npz"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert results["config"] == "EmoSLLMConfig" and results["processor"] == "EmoSLLMProcessor"
    for auto in ("AutoModel", "AutoModelForAudioClassification"):
        assert results[auto + "_class"] == "EmoSLLMForSpeechEmotionRecognition"
        torch.testing.assert_close(torch.tensor(results[auto]), expected, atol=1e-5, rtol=0)


def test_wrapping_a_config_keeps_its_attention_implementation():
    from conftest import tiny_audio

    from configuration_emosllm import EmoSLLMConfig

    audio_config, _ = tiny_audio("whisper")
    audio_config._attn_implementation = "sdpa"
    assert EmoSLLMConfig(audio_config=audio_config).audio_config._attn_implementation == "sdpa"
