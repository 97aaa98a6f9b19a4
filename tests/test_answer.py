"""The answer: class scores from the LLM's label words, labels of several tokens, the probe's mix, generate, and the
shared prompt head (run once, exact) on tiny random backbones."""

import pytest
import torch
import torch.nn.functional as F
from conftest import LABELS, batch_of_lengths, fit_random_probe, tiny_mapper_config, tiny_model, tiny_processor, tone

from modeling_emosllm import EmoSLLMForSpeechEmotionRecognition


def test_class_scores_are_the_llms_logits_of_the_label_words_at_the_answer_position():
    """Labels with first tokens of their own: the scores are the softmax over the labels of those tokens' logits."""
    processor, model = tiny_model()
    model.eval()
    batch, audios = batch_of_lengths(processor)
    first_tokens = [ids[0] for ids in model.config.label_token_ids]
    assert model.label_answer_paths() == [[token] for token in first_tokens]
    with torch.no_grad():
        output = model(**batch)
        # The same clips without the answer appended: the prompt's last position is the answer position.
        prompt_only = processor(audios)
        llm_inputs = model._llm_inputs(prompt_only["input_ids"], prompt_only["attention_mask"],
                                       *model.get_audio_embeddings(prompt_only["audio_lengths"],
                                                                   prompt_only["input_features"]))
        next_token = model.language_model(**llm_inputs).logits[:, -1]
        without_answer = model(**prompt_only).logits
    expected = next_token[:, first_tokens].log_softmax(-1)
    torch.testing.assert_close(output.logits, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(output.llm_logits, output.logits)  # no probe to mix in
    assert output.probe_logits is None
    torch.testing.assert_close(without_answer, output.logits, atol=1e-4, rtol=1e-4)
    # The training target is the answer text: the LLM's next-token loss on the label word and the end of the turn.
    answer = batch["lm_labels"] != -100
    assert (batch["input_ids"][answer] == batch["lm_labels"][answer]).all()
    assert answer.sum(1).tolist() == [len(model.config.label_token_ids[i]) + 1 for i in batch["labels"].tolist()]
    with torch.no_grad():
        reference = model.language_model(**model._llm_inputs(
            batch["input_ids"], batch["attention_mask"],
            *model.get_audio_embeddings(batch["audio_lengths"], batch["input_features"])),
            labels=batch["lm_labels"]).loss
    torch.testing.assert_close(output.loss, reference, atol=1e-4, rtol=1e-4)
    # Without an answer in the prompt, `labels` give the cross-entropy of the class scores.
    with torch.no_grad():
        loss = model(**prompt_only, labels=batch["labels"]).loss
    torch.testing.assert_close(loss, F.cross_entropy(output.logits, batch["labels"]), atol=1e-4, rtol=1e-4)


def test_labels_with_the_same_tokens_are_an_error():
    with pytest.raises(ValueError, match="are the same tokens"):
        tiny_processor(**{})[1].__class__(
            **{**tiny_processor()[1].to_dict(), "label_token_ids": [[5], [5], [6], [7]]})


# Labels that share first tokens ("very ..."), span several words, and one that begins with another ("pleasant").
WORDY_LABELS = ["neutral", "very happy", "very sad", "pleasant", "pleasant surprise"]


def wordy_processor(**kwargs):
    """The tiny backbones with `WORDY_LABELS`: a word-level tokenizer that knows their words."""
    from conftest import CHAT_TEMPLATE, tiny_audio, tiny_llm_config
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from processing_emosllm import DEFAULT_PROMPT
    from processing_emosllm import EmoSLLMProcessor

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        [DEFAULT_PROMPT, " ".join(WORDY_LABELS)],
        trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "<|user|>", "<|end|>", "<|assistant|>"]),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="<|end|>", chat_template=CHAT_TEMPLATE)
    audio_config, feature_extractor = tiny_audio("whisper")
    settings = {"mapper_config": tiny_mapper_config("qpmapper"), **kwargs}
    return EmoSLLMProcessor.build(feature_extractor, tokenizer, audio_config, tiny_llm_config(len(tokenizer)),
                                  labels=WORDY_LABELS, **settings)


def brute_force_label_scores(model, processor, audios) -> torch.Tensor:
    """Each label's answer path teacher-forced one prompt at a time: its tokens' log-probabilities, summed, then
    renormalized over the labels."""
    rows = []
    for i in range(len(audios)):
        one = processor([audios[i]])
        audio = model.get_audio_embeddings(one["audio_lengths"], one["input_features"])
        row = []
        for path in model.label_answer_paths():
            sequence = torch.cat([one["input_ids"], torch.tensor([path[:-1]], dtype=torch.long)], dim=1)
            logits = model.language_model(**model._llm_inputs(sequence, torch.ones_like(sequence), *audio)).logits[0]
            log_probs, start = logits.float().log_softmax(-1), one["input_ids"].shape[1] - 1
            row.append(sum(log_probs[start + t, token] for t, token in enumerate(path)))
        rows.append(torch.stack(row).log_softmax(-1))
    return torch.stack(rows)


def test_labels_that_share_first_tokens_or_span_words_are_scored_trained_and_generated():
    processor, config = wordy_processor()
    torch.manual_seed(2)
    model = EmoSLLMForSpeechEmotionRecognition(config)
    ids = config.label_token_ids
    end = processor.tokenizer.eos_token_id
    assert config.answer_end_token_id == end
    assert ids[1][0] == ids[2][0] and ids[4][: len(ids[3])] == ids[3]  # the cases this test is about
    # Each path runs to the first token no other label has there; "pleasant" needs its end token.
    assert model.label_answer_paths() == [ids[0][:1], ids[1][:2], ids[2][:2], ids[3] + [end], ids[4][:2]]

    frequencies = [150, 450, 900, 1800, 3000]
    audios = [tone(0.8 + 0.1 * take, frequencies[k], seed=7 * k + take) for take in range(2) for k in range(5)]
    labels = [WORDY_LABELS[k] for _ in range(2) for k in range(5)]
    prompts = processor(audios)

    def brute_force_scores() -> torch.Tensor:
        return brute_force_label_scores(model, processor, audios)

    model.eval()
    with torch.no_grad():
        expected = brute_force_scores()
        torch.testing.assert_close(model(**prompts).logits, expected, atol=1e-4, rtol=1e-4)
        # With the answers appended (training and evaluation batches) the scores are the same.
        torch.testing.assert_close(model(**processor(audios, labels=labels)).logits, expected, atol=1e-4, rtol=1e-4)

    batch = processor(audios, labels=labels)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(150):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        scores = model(**prompts).logits
        answers = processor.batch_decode(model.generate(**prompts), skip_special_tokens=True)
        torch.testing.assert_close(scores, brute_force_scores(), atol=1e-4, rtol=1e-4)
    assert [WORDY_LABELS[i] for i in scores.argmax(-1).tolist()] == labels  # trained: every clip right
    assert [a.strip() for a in answers] == labels  # and the answer is the label the scores rank first


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_the_answer_mixes_the_llms_and_the_probes_class_log_probabilities(weight):
    processor, model = tiny_model("whisper", "probe", mix_weight=weight)
    fit_random_probe(model)
    model.eval()
    batch, _ = batch_of_lengths(processor)
    with torch.no_grad():
        output = model(**batch)
        frames, mask = model.audio_encoder(batch["audio_lengths"], batch["input_features"])
        probe = model.mapper.class_scores(frames.float(), mask).log_softmax(-1)
    torch.testing.assert_close(output.probe_logits, probe)
    torch.testing.assert_close(output.logits, (1 - weight) * output.llm_logits + weight * probe)
    if weight in (0.0, 1.0):  # one side's log-probabilities alone
        torch.testing.assert_close(output.logits.exp().sum(-1), torch.ones(3))


def test_the_probe_mix_weight_is_checked():
    with pytest.raises(ValueError, match="must lie in"):
        tiny_processor(mapper="probe", mix_weight=1.5)
    with pytest.raises(ValueError, match="no setting of the 'qpmapper' mapper"):
        tiny_processor(mapper="qpmapper", mix_weight=0.5)


def test_constrained_generate_refuses_generation_options():
    processor, model = tiny_model()
    batch = processor([tone(0.8, 300)])
    with pytest.raises(ValueError, match="constrain_to_labels=False"):
        model.generate(**batch, max_new_tokens=3)


@pytest.mark.parametrize("mapper", ["qpmapper", "probe"])
def test_generate_names_the_class_the_scores_rank_first(mapper):
    """By construction: the answer is constrained to the label words and decoded greedily from the same logits."""
    processor, model = tiny_model("whisper", mapper, seed=3)
    if mapper == "probe":
        fit_random_probe(model)
    model.eval()
    audios = [tone(0.5 + 0.3 * i, 150 * (i + 1), seed=i) for i in range(6)]
    inputs = processor(audios)
    with torch.no_grad():
        ranked_first = model(**inputs).logits.argmax(-1).tolist()
    answers = processor.batch_decode(model.generate(**inputs), skip_special_tokens=True)
    assert [a.strip() for a in answers] == [LABELS[i] for i in ranked_first]


@pytest.mark.parametrize("name", ["language_model_training", "encoder_layer_combination", "use_transcript"])
def test_a_misspelt_choice_is_an_error_not_another_choice(name):
    with pytest.raises(ValueError, match=f"{name}='Verbalizer' is not one of"):
        tiny_processor(**{name: "Verbalizer"})
    with pytest.raises(ValueError, match=r"mapper_config\['mapper_type'\]='Verbalizer' is not one of"):
        tiny_processor(mapper_config={"mapper_type": "Verbalizer"})


def test_generate_writes_free_text():
    processor, model = tiny_model()
    batch, _ = batch_of_lengths(processor, (1.0,))
    batch.pop("labels")
    for key in ("labels", "lm_labels"):
        batch.pop(key, None)
    tokens = model.generate(**batch, constrain_to_labels=False, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert tokens.shape == (1, 3)
    # The same greedy answer, decoded by hand: the prompt's token embeddings with the audio embeddings in the
    # placeholders' places, one full LLM pass per new token.
    model.eval()
    with torch.no_grad():
        audio, _ = model.get_audio_embeddings(batch["audio_lengths"], batch["input_features"])
        placeholder = batch["input_ids"] == model.config.audio_token_id
        embeds = model.get_input_embeddings()(batch["input_ids"].masked_fill(placeholder, 0))
        embeds[placeholder] = audio.reshape(-1, audio.shape[-1])
        expected = []
        for _ in range(3):
            logits = model.language_model(inputs_embeds=embeds).logits[0, -1]
            expected.append(int(logits.argmax()))
            embeds = torch.cat([embeds, model.get_input_embeddings()(torch.tensor([[expected[-1]]]))], dim=1)
    assert tokens[0].tolist() == expected


def test_the_shared_prompt_head_runs_once_and_changes_nothing():
    """The system turn every prompt shares is computed once as a key/value cache; scores and loss stay the same."""
    processor, model = tiny_model("whisper", "qpmapper", seed=1)
    model.eval()
    batch, _ = batch_of_lengths(processor)
    prefix = model.shared_prefix_length(batch["input_ids"], batch["attention_mask"])
    assert prefix >= model.prompt_head.min_shared_prefix
    heads = [row[mask.bool()][:prefix] for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    assert all(torch.equal(head, heads[0]) for head in heads)  # the same tokens in every prompt ...
    assert model.config.audio_token_id not in heads[0]  # ... before any audio
    with torch.no_grad():
        shared = model(**batch)
        model.prompt_head.min_shared_prefix = 10**6  # one full pass per prompt instead
        full = model(**batch)
    torch.testing.assert_close(shared.logits, full.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared.loss, full.loss, atol=1e-5, rtol=1e-5)
    # Gradients flow through the shared head's cache into LoRA.
    model.prompt_head.min_shared_prefix = 8
    model.train()
    model(**batch).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n and "layers.0." in n)


@pytest.mark.parametrize("mapper", ["qpmapper", "probe"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(mapper):
    """
    The shared prompt head's cache would be dropped by checkpointed decoder layers: it must change nothing, with
    gradients or without (a training-mode pass under `torch.no_grad()` checkpoints too).
    """
    processor, model = tiny_model("whisper", mapper)
    if mapper == "probe":
        fit_random_probe(model)
    batch, _ = batch_of_lengths(processor)
    assert model.shared_prefix_length(batch["input_ids"], batch["attention_mask"], batch["lm_labels"]) > 0

    def loss_and_gradients():
        torch.manual_seed(1)  # the same dropout masks (the mapper's transformer) in both runs
        model.zero_grad()
        model.train()
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def loss_without_gradients():  # in training mode (transformers' layers checkpoint then, gradients or not)
        torch.manual_seed(1)
        model.train()
        with torch.no_grad():
            return model(**batch).loss

    plain_loss, plain = loss_and_gradients()
    plain_no_grad = loss_without_gradients()
    # What the Trainer's --activation_checkpointing calls (newer transformers' name; the old one warns).
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.language_model.modules())
    loss, gradients = loss_and_gradients()
    torch.testing.assert_close(loss_without_gradients(), plain_no_grad, rtol=1e-5, atol=1e-6)
    # Tolerance: float32 rounding of the same computation in another order (measured: 1e-6 relative).
    torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=1e-6)
    assert gradients.keys() == plain.keys() and any("lora_" in n for n in plain)
    for name in plain:
        torch.testing.assert_close(gradients[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_shared_head_stops_before_the_answer():
    """Prompts without audio that are the same up to the end (an ablation) must keep their answers out of the head."""
    processor, model = tiny_model(seed=1)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 3]] * 2)
    lm_labels = torch.full_like(ids, -100)
    lm_labels[:, -3:] = ids[:, -3:]
    mask = torch.ones_like(ids)
    assert model.shared_prefix_length(ids, mask) == ids.shape[1] - 1
    assert model.shared_prefix_length(ids, mask, lm_labels) == ids.shape[1] - 3
