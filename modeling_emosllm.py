# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
EmoSLLM: an audio encoder, a mapper into the LLM's embedding space, and a LoRA-adapted causal LLM that answers with the
emotion (arXiv 2508.14130). Where things happen, each in one place:
- audio becomes embeddings: `EmoSLLMModel.get_audio_embeddings` (the encoder's layers, then the mapper:
  `audio_embeddings_emosllm.py`);
- they enter the LLM: `EmoSLLMModel.merge_audio_embeddings` (`masked_scatter` over the placeholders);
- the LLM's hidden states: `EmoSLLMModel.forward` (the shared prompt head once: `prompt_head_emosllm.py`);
- class scores and the loss: `EmoSLLMForSpeechEmotionRecognition.forward`; the probe is fitted:
  `EmoSLLMForSpeechEmotionRecognition.fit_probe` (`probe_fitting_emosllm.py`);
- saving, loading and building from backbones: `saving_emosllm.py`; precision: `precision_emosllm.py`.
"""

import copy
from dataclasses import dataclass

# The configuration first: it checks the transformers version before anything else is imported from transformers.
try:  # a saved folder is loaded as a package (relative import); `python train.py` imports top-level modules
    from .configuration_emosllm import EmoSLLMConfig
    from .dependencies_emosllm import missing_dependency
except ImportError:
    if __package__:  # loaded as a package: the sibling failed on its own (a missing package, an old transformers)
        raise
    from configuration_emosllm import EmoSLLMConfig
    from dependencies_emosllm import missing_dependency
try:  # after the configuration (it checks the transformers version first)
    from .audio_embeddings_emosllm import (
        MAPPERS, EmoSLLMAudioEncoder, EmoSLLMQueryPoolingMapper, EmoSLLMStatisticsProbe, EmoSLLMWindowQFormer,
        pooled_statistics,
    )
    from .precision_emosllm import BACKBONES_ON_META, EmoSLLMPrecisionMixin, backbone_construction
    from .probe_fitting_emosllm import fit_probe
    from .lora_emosllm import DEFAULT_LORA, EmoSLLMLoraMixin
    from .prompt_head_emosllm import SharedPromptHead, prompts_only
    from .saving_emosllm import EmoSLLMLeanSavingMixin
except ImportError:
    if __package__:
        raise
    from audio_embeddings_emosllm import (
        MAPPERS, EmoSLLMAudioEncoder, EmoSLLMQueryPoolingMapper, EmoSLLMStatisticsProbe, EmoSLLMWindowQFormer,
        pooled_statistics,
    )
    from precision_emosllm import BACKBONES_ON_META, EmoSLLMPrecisionMixin, backbone_construction
    from probe_fitting_emosllm import fit_probe
    from lora_emosllm import DEFAULT_LORA, EmoSLLMLoraMixin
    from prompt_head_emosllm import SharedPromptHead, prompts_only
    from saving_emosllm import EmoSLLMLeanSavingMixin

try:  # a missing package is named with its pip command (dependencies_emosllm.py)
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, inject_adapter_in_model
    from torch import nn
    from transformers import AutoModelForCausalLM, PreTrainedModel
    from transformers.modeling_outputs import ModelOutput
except ModuleNotFoundError as error:
    raise missing_dependency(error, __name__) from error


@dataclass
class SpeechEmotionOutput(ModelOutput):
    """
    loss (`torch.FloatTensor` of shape `()`): cross-entropy over the emotion classes, when `labels` are given.
    logits (`torch.FloatTensor` of shape `(batch, num_labels)`, as below): class log-probabilities (softmax gives
        probabilities): `llm_logits` mixed with `probe_logits` by `config.mapper_config["mix_weight"]`.
    llm_logits: the LLM's answer's log-probability of each label word, renormalized over the labels.
    probe_logits: with the probe mapper, the probe's own class log-probabilities (the evidence the LLM reads).
    audio_logits: the auxiliary `audio_classifier`'s scores from the audio embeddings alone, when
        `config.audio_loss_weight > 0` (a training signal and diagnostic only).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    llm_logits: torch.FloatTensor | None = None
    probe_logits: torch.FloatTensor | None = None
    audio_logits: torch.FloatTensor | None = None


@dataclass
class EmoSLLMModelOutput(ModelOutput):
    """
    last_hidden_state (`torch.FloatTensor` of shape `(batch, seq - hidden_start, llm_hidden)`): the LLM's last hidden
        states of the prompt columns from `hidden_start` (`int`) on; the shared prompt head runs once, before them.
    audio_embeddings (`torch.FloatTensor` of shape `(batch, num_audio_embeddings, llm_hidden)`), audio_mask
        (`torch.BoolTensor` of shape `(batch, num_audio_embeddings)`): the mapper's output and its validity.
    probe_scores (`torch.FloatTensor` of shape `(batch, num_labels)`): the probe mapper's class scores (else None).
    """

    last_hidden_state: torch.FloatTensor | None = None
    hidden_start: int | None = None
    audio_embeddings: torch.FloatTensor | None = None
    audio_mask: torch.BoolTensor | None = None
    probe_scores: torch.FloatTensor | None = None


class EmoSLLMPreTrainedModel(EmoSLLMLeanSavingMixin, PreTrainedModel):
    config: EmoSLLMConfig
    config_class = EmoSLLMConfig
    base_model_prefix = ""
    main_input_name = "input_features"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, (EmoSLLMQueryPoolingMapper, EmoSLLMWindowQFormer)):
            nn.init.normal_(module.queries, std=0.02)
        elif isinstance(module, EmoSLLMAudioEncoder):
            if not module.concatenate_layers:
                nn.init.zeros_(module.layer_weights)
            nn.init.zeros_(module.feature_mean)
            nn.init.ones_(module.feature_std)
        elif isinstance(module, EmoSLLMStatisticsProbe):  # an unfitted probe: every class equally likely
            for buffer in (module.statistics_mean, module.probe_weight, module.probe_bias):
                nn.init.zeros_(buffer)
            nn.init.ones_(module.statistics_std)


class EmoSLLMModel(EmoSLLMLoraMixin, EmoSLLMPrecisionMixin, EmoSLLMPreTrainedModel):
    """
    The base model: audio encoder -> mapper -> audio embeddings in place of the prompt's placeholders -> the LLM's
    hidden states (`forward`); `EmoSLLMForSpeechEmotionRecognition` adds the class scores, the loss and `generate`. The
    prompt (`EmoSLLMProcessor`) holds the task text, any transcript or other text features, and one audio placeholder
    per audio embedding.
    """

    def __init__(self, config: EmoSLLMConfig, lora_config: LoraConfig | None = None):
        """
        Builds the model's modules from `config`; `from_backbones` and `from_pretrained` give it pretrained weights.

        Args:
            config: `EmoSLLMConfig` with `audio_token_id` and `label_token_ids` set (`EmoSLLMProcessor.from_backbones`).
            lora_config: LoRA's settings, used when `config.language_model_training == "lora"`; None: `DEFAULT_LORA`
                (with `config.old_lora_settings` of folders saved before LoRA's settings moved to `lora/`).
        """
        super().__init__(config)
        if config.audio_token_id is None or config.label_token_ids is None:
            raise ValueError(
                "The config has no audio_token_id/label_token_ids: build config and processor together with "
                "EmoSLLMProcessor.from_backbones(...) (or load a saved EmoSLLM folder)."
            )
        self.audio_encoder = EmoSLLMAudioEncoder(config)
        self.mapper = MAPPERS[config.mapper_type](config, self.audio_encoder.output_size)
        with backbone_construction():
            self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        # LoRA's settings are peft's own config, saved as lora/adapter_config.json (the one place they live).
        self.lora_config = None
        if config.language_model_training == "lora":
            self.lora_config = lora_config or LoraConfig(**{**DEFAULT_LORA, **config.old_lora_settings})
            if not BACKBONES_ON_META.get():  # (else injected once into the loaded LLM: `_add_fresh_lora`)
                inject_adapter_in_model(copy.deepcopy(self.lora_config), self.language_model)
        # Training aid (`audio_loss_weight`): names the emotion from the mean audio embedding, a short path for the
        # mapper's gradient that does not pass through the 30 LLM layers. Inference never reads it.
        if config.audio_loss_weight > 0:
            self.audio_classifier = nn.Linear(config.text_config.hidden_size, config.num_labels)
        # Inference speed-ups, both exact (tested): the prompt head's key/value cache kept between calls
        # (`prompt_head`) and LoRA merged into the LLM's weights (`merge_lora`, which the pipeline calls).
        self.prompt_head = SharedPromptHead()
        self.post_init()
        self.freeze_backbones()
        self.train(self.training)
        # `save_pretrained` writes the AutoModelForAudioClassification entry; plain AutoModel loads the same class.
        module = __name__.split(".")[-1]
        self.config.auto_map = {**getattr(self.config, "auto_map", {}), "AutoModel": f"{module}.{type(self).__name__}"}

    def backbone_keys(self) -> list[str]:
        """The state-dict keys of the frozen pretrained backbones, which a lean save leaves out."""
        keys = []
        for name in self.state_dict():
            in_llm = name.startswith("language_model.") and "lora_" not in name
            in_encoder = name.startswith("audio_encoder.encoder.")
            if (in_llm and self.config.language_model_training != "full") or in_encoder:
                keys.append(name)
        return keys

    def freeze_backbones(self) -> None:
        """
        Only the mapper, encoder layer weights, LoRA, the classifier's own weights and unfrozen backbones train.
        """
        backbone = set(self.backbone_keys())
        for name, param in self.named_parameters():
            param.requires_grad_(name not in backbone)
        # What a lean save and train.py's checkpoints leave out; the Trainer then does not warn that they are missing
        # when it loads a checkpoint back (and does warn about any other missing key).
        self._keys_to_ignore_on_save = sorted(backbone)

    def train(self, mode: bool = True) -> "EmoSLLMModel":
        """
        `nn.Module.train`, but the frozen encoder stays in eval mode, the kept prompt head is cleared and training
        unmerges LoRA.

        Args:
            mode: True for training mode, False for eval mode.

        Returns:
            The model itself.
        """
        super().train(mode)
        self.audio_encoder.encoder.eval()  # a frozen encoder gives the same frames in training and inference
        self.prompt_head.clear()  # weights may change from here on
        if mode and self.lora_merged:
            self.unmerge_lora()  # a merged LoRA would not train: its update is already in the frozen weights
        return self

    def label_vectors(self) -> torch.Tensor:
        """`(num_labels, llm_hidden)`: each class the mean input embedding of its label's tokens."""
        table = self.get_input_embeddings().weight
        return torch.stack([table[ids].mean(dim=0) for ids in self.config.label_token_ids])

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def get_audio_embeddings(
        self,
        audio_lengths: torch.Tensor,
        input_features: torch.Tensor | None = None,
        encoder_layer_states: torch.Tensor | None = None,
        return_probe_scores: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """
        Audio -> LLM embeddings; clip `i` owns its first `mask[i].sum()` embeddings.

        Args:
            audio_lengths: `(batch,)` valid samples of each clip at 16 kHz.
            input_features: `(batch, num_mel_bins, mel_frames)` (Whisper) or `(batch, samples)` (wav2vec2 family).
            encoder_layer_states: `(batch, num_layers + 1, frames, encoder_hidden)`: the frozen encoder's outputs
                computed beforehand (`audio_encoder.layer_states`), read in place of `input_features`; or None.
            return_probe_scores: Also return the probe's class scores.

        Returns:
            The embeddings `(batch, num_audio_embeddings, llm_hidden)`, their validity mask
                `(batch, num_audio_embeddings)` and with `return_probe_scores` the probe's class scores
                `(batch, num_labels)` (None for other mappers).
        """
        frames, frame_mask = self.audio_encoder(audio_lengths, input_features, encoder_layer_states)
        # Read in the mapper's own dtype: float32, or bf16 where an engine casts the weights but not the buffers
        # (DeepSpeed's bf16 mode: the frames come standardized by the float32 statistics buffers).
        weight = next((p for p in self.mapper.parameters() if p.is_floating_point()), None)
        if weight is not None:
            frames = frames.to(weight.dtype)
        if not return_probe_scores:
            return self.mapper(frames, frame_mask)
        if self.config.mapper_type != "probe":
            return *self.mapper(frames, frame_mask), None
        return self.mapper.embed_with_scores(frames, frame_mask)

    def merge_audio_embeddings(
        self, input_ids: torch.Tensor, audio_embeddings: torch.Tensor, audio_mask: torch.Tensor
    ) -> torch.Tensor:
        """
        Token embeddings with the audio placeholders replaced by the audio embeddings.

        Args:
            input_ids: `(batch, seq)` prompt token ids with audio placeholders (`config.audio_token_id`).
            audio_embeddings: `(batch, num_audio_embeddings, llm_hidden)` from `get_audio_embeddings`.
            audio_mask: `(batch, num_audio_embeddings)` bool; clip `i`'s valid embeddings fill its placeholders.

        Returns:
            `(batch, seq, llm_hidden)` in the LLM's embedding dtype.

        Raises:
            ValueError: a clip's placeholders and valid embeddings differ in number (processor and model do not match).
        """
        placeholder = input_ids == self.config.audio_token_id
        expected, produced = placeholder.sum(dim=1), audio_mask.sum(dim=1)
        if not torch.equal(expected, produced):
            raise ValueError(
                f"The prompt has {expected.tolist()} audio placeholders per clip but the mapper produced "
                f"{produced.tolist()} embeddings: the processor and the model do not match. Load both from the same "
                "folder (EmoSLLMProcessor.from_pretrained / AutoProcessor)."
            )
        # The placeholder id may lie outside the LLM's vocabulary; it is looked up as token 0 and then overwritten.
        embeddings = self.get_input_embeddings()(input_ids.masked_fill(placeholder, 0))
        audio = audio_embeddings[audio_mask].to(embeddings.dtype)
        return embeddings.masked_scatter(placeholder[..., None].expand_as(embeddings), audio)

    def _llm_inputs(self, input_ids, attention_mask, audio_embeddings, audio_mask) -> dict:
        inputs_embeds = self.merge_audio_embeddings(input_ids, audio_embeddings, audio_mask)
        # Prompts are left-padded; positions count real tokens only.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask, "position_ids": position_ids}

    def clear_prompt_cache(self) -> None:
        """
        Forgets the kept prompt head (`prompt_head`); needed after changing the LLM's weights by hand in eval mode.
        """
        self.prompt_head.clear()

    def shared_prefix_length(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, lm_labels: torch.Tensor | None = None
    ) -> int:
        """
        How many leading tokens the batch's prompts share and run once (`SharedPromptHead.shared_prefix_length`).

        Args:
            input_ids: `(batch, seq)` left-padded prompt token ids.
            attention_mask: `(batch, seq)`, 0 on the left padding.
            lm_labels: `(batch, seq)` answer token ids following the prompts (-100 elsewhere), or None.
        """
        return self.prompt_head.shared_prefix_length(self, input_ids, attention_mask, lm_labels)

    def language_model_hidden(
        self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
        position_ids: torch.Tensor, lm_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, int]:
        """
        The LLM's last hidden states; the head every prompt shares runs once (`SharedPromptHead.hidden`).

        Args:
            input_ids: `(batch, seq)` left-padded prompt token ids (to find the shared head).
            inputs_embeds: `(batch, seq, llm_hidden)` token embeddings with the audio embeddings merged in.
            attention_mask: `(batch, seq)`, 0 on the left padding.
            position_ids: `(batch, seq)` positions counting real tokens only.
            lm_labels: `(batch, seq)` answer token ids following the prompts (-100 elsewhere), or None.

        Returns:
            The hidden states `(batch, seq - start, llm_hidden)` of the prompt columns `start:`, and `start`.
        """
        return self.prompt_head.hidden(self, input_ids, inputs_embeds, attention_mask, position_ids, lm_labels)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor,
        audio_lengths: torch.LongTensor,
        input_features: torch.Tensor | None = None,
        encoder_layer_states: torch.Tensor | None = None,
        lm_labels: torch.LongTensor | None = None,
    ) -> EmoSLLMModelOutput:
        """
        Audio embeddings in place of the prompts' placeholders, then the LLM's last hidden states.

        Args:
            input_ids (`(batch, seq)`): the left-padded prompts with audio placeholders.
            attention_mask (`(batch, seq)`): 1 on the prompts' tokens, 0 on the left padding.
            audio_lengths (`(batch,)`): valid samples of each clip at 16 kHz.
            input_features: `(batch, num_mel_bins, mel_frames)` (Whisper) or `(batch, samples)` (wav2vec2 family).
            encoder_layer_states (`(batch, num_layers + 1, frames, encoder_hidden)`, optional): the frozen encoder's
                outputs computed beforehand, in place of `input_features`.
            lm_labels (`(batch, seq)`, optional): answers after the prompts (-100 elsewhere); the shared head stops
                before them.

        Returns:
            An `EmoSLLMModelOutput`: hidden states from `hidden_start` on, audio embeddings, mask and probe scores.
        """
        audio_embeddings, audio_mask, probe_scores = self.get_audio_embeddings(
            audio_lengths, input_features, encoder_layer_states, return_probe_scores=True
        )
        llm_inputs = self._llm_inputs(input_ids, attention_mask, audio_embeddings, audio_mask)
        hidden, start = self.language_model_hidden(input_ids, **llm_inputs, lm_labels=lm_labels)
        return EmoSLLMModelOutput(last_hidden_state=hidden, hidden_start=start, audio_embeddings=audio_embeddings,
                                  audio_mask=audio_mask, probe_scores=probe_scores)


class EmoSLLMForSpeechEmotionRecognition(EmoSLLMModel):
    """
    EmoSLLM with its answer: the class scores are the LLM's log-probabilities of each label's answer (its LoRA-adapted
    language-model head; `label_scores`), so `generate()` writes the top class; training takes the language-model loss
    on the answer text, as the paper does (`forward`).
    """

    def answer_end_token_id(self) -> int:
        """The token that ends an answer (`config.answer_end_token_id`; for folders saved before it, the LLM's own)."""
        end = self.config.answer_end_token_id
        for source in (self.language_model.generation_config, self.config.text_config):
            if end is None:
                end = source.eos_token_id
                end = end[0] if isinstance(end, (list, tuple)) else end
        return end

    def label_answer_paths(self) -> list[list[int]]:
        """
        Each label's answer (its tokens, then the end of the turn) up to and including the first token no other label's
        answer has there. Labels whose first tokens differ are scored by their first token alone; labels sharing first
        tokens (`very happy`, `very sad`) or beginning with another label (`pleasant`, `pleasant surprise`) read as many
        tokens as it takes. The rest of an answer is forced (no other label continues it): it tells no class apart.
        """
        answers = [list(ids) + [self.answer_end_token_id()] for ids in self.config.label_token_ids]

        def shared(a: list[int], b: list[int]) -> int:
            return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

        return [answer[: 1 + max((shared(answer, other) for other in answers if other is not answer), default=0)]
                for answer in answers]

    def _continuation_hidden(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, audio_embeddings: torch.Tensor,
        audio_mask: torch.Tensor, continuations: list[tuple[int, ...]],
    ) -> torch.Tensor:
        """
        The LLM's last hidden state `(len(continuations), batch, llm_hidden)` after each prompt `(batch, seq)`
        (left-padded, no answer) followed by each continuation (a label answer's first tokens), in one pass over
        `len(continuations) * batch` rows; the shared prompt head still runs once (`language_model_hidden`).
        """
        batch, longest = input_ids.shape[0], max(len(c) for c in continuations)
        filler = self.answer_end_token_id()
        ids, masks = [], []
        for tokens in continuations:  # left-padded, so every row's last position is its continuation's last token
            fill = longest - len(tokens)
            ids.append(torch.cat([input_ids.new_full((batch, fill), filler), input_ids,
                                  input_ids.new_tensor(tokens).expand(batch, -1)], dim=1))
            masks.append(torch.cat([attention_mask.new_zeros(batch, fill), attention_mask,
                                    attention_mask.new_ones(batch, len(tokens))], dim=1))
        ids, masks, repeats = torch.cat(ids), torch.cat(masks), len(continuations)
        llm_inputs = self._llm_inputs(ids, masks, audio_embeddings.repeat(repeats, 1, 1), audio_mask.repeat(repeats, 1))
        hidden, _ = self.language_model_hidden(ids, **llm_inputs)
        return hidden[:, -1].reshape(repeats, batch, -1)

    def label_scores(
        self, answer_hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
        audio_embeddings: torch.Tensor, audio_mask: torch.Tensor, lm_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Each label's answer path (`label_answer_paths`) scored by the LLM's teacher-forced log-probability of its
        tokens, renormalized over the labels; a longer path reads the LLM again on the prompt and its first tokens
        (`_continuation_hidden`). Where each label's first token is its own: the softmax of those tokens' logits.

        Args:
            answer_hidden: `(batch, llm_hidden)` the hidden state at the answer position.
            input_ids: `(batch, seq)` the left-padded prompts, possibly followed by answers (`lm_labels`).
            attention_mask: `(batch, seq)`, 0 on the left padding.
            audio_embeddings: `(batch, num_audio_embeddings, llm_hidden)`, for the continuations' passes.
            audio_mask: `(batch, num_audio_embeddings)` bool, their validity.
            lm_labels: `(batch, seq)` the answers' token ids (-100 elsewhere), dropped for the continuations; or None.

        Returns:
            The class log-probabilities, float32 `(batch, num_labels)`.
        """
        paths = self.label_answer_paths()
        continuations = sorted({tuple(path[:t]) for path in paths for t in range(1, len(path))})
        if not continuations:
            return self._next_token_logits(answer_hidden, [path[0] for path in paths]).log_softmax(-1)
        log_probs = {(): self._next_token_logits(answer_hidden).log_softmax(-1)}
        prompt_ids, prompt_mask = prompts_only(input_ids, attention_mask, lm_labels, self.answer_end_token_id())
        hidden = self._continuation_hidden(prompt_ids, prompt_mask, audio_embeddings, audio_mask, continuations)
        for tokens, state in zip(continuations, hidden):
            log_probs[tokens] = self._next_token_logits(state).log_softmax(-1)
        scores = [sum(log_probs[tuple(path[:t])][:, path[t]] for t in range(len(path))) for path in paths]
        return torch.stack(scores, dim=-1).log_softmax(-1)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor,
        audio_lengths: torch.LongTensor,
        input_features: torch.Tensor | None = None,
        encoder_layer_states: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        lm_labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> SpeechEmotionOutput:
        r"""
        The class scores, read right before the answer (the prompt's last position): the LLM's (`label_scores`) mixed
        with the probe's by `config.mapper_config["mix_weight"]` (`logits`).

        Args:
            input_ids (`(batch, seq)`): the left-padded prompt with audio placeholders, then the answer's tokens where
                `lm_labels` mark them (`EmoSLLMProcessor(..., labels=...)` appends the label word).
            attention_mask (`(batch, seq)`): 1 on the tokens, 0 on the left padding.
            audio_lengths (`(batch,)`): valid samples of each clip at 16 kHz.
            input_features: `(batch, num_mel_bins, mel_frames)` (Whisper) or `(batch, samples)` (wav2vec2 family).
            encoder_layer_states (`(batch, num_layers + 1, frames, encoder_hidden)`, optional): the frozen encoder's
                outputs computed beforehand (`model.audio_encoder.layer_states`), in place of `input_features`.
            labels (`(batch,)`, optional): class ids; the loss is the class scores' cross-entropy (with `lm_labels`,
                they feed only the auxiliary audio loss).
            lm_labels (`(batch, seq)`, optional): the answer's token ids (-100 elsewhere); the loss is the LLM's
                next-token cross-entropy over the whole vocabulary on them (the paper's objective; the ASR stage's too).
            **kwargs: Ignored.

        Returns:
            A `SpeechEmotionOutput`: `loss` (with `labels` or `lm_labels`) and each class score where present.
        """
        if labels is not None and labels.numel() and (labels.min() < 0 or labels.max() >= self.config.num_labels):
            raise ValueError(f"labels: class ids {labels.tolist()[:8]} outside 0..{self.config.num_labels - 1}; give "
                             "ids of config.labels (processor(..., labels=[label names]) makes them).")
        outputs = super().forward(input_ids, attention_mask, audio_lengths, input_features, encoder_layer_states,
                                  lm_labels)
        hidden, start = outputs.last_hidden_state, outputs.hidden_start
        audio_embeddings, audio_mask, probe_scores = outputs.audio_embeddings, outputs.audio_mask, outputs.probe_scores
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        answer_labels = None if lm_labels is None else lm_labels[:, start:]
        if answer_labels is None:
            answer_position = torch.full_like(rows, hidden.shape[1] - 1)
        else:  # the position that predicts the answer's first token
            answer_position = (answer_labels != -100).int().argmax(dim=1) - 1
        probe_logits = None if probe_scores is None else probe_scores.float().log_softmax(-1)
        llm_logits = self.label_scores(
            hidden[rows, answer_position], input_ids, attention_mask, audio_embeddings, audio_mask, lm_labels
        )
        logits = llm_logits
        if self.config.mapper_config.get("mix_weight", 0.0) > 0:
            weight = self.config.mapper_config["mix_weight"]
            logits = (1 - weight) * llm_logits + weight * probe_logits
        loss = None
        if answer_labels is not None:
            # Next-token loss on the answer tokens only: the head runs on those few positions, not the whole prompt.
            targets = answer_labels[:, 1:]
            predicting = targets != -100
            token_logits = self._next_token_logits(hidden[:, :-1][predicting])
            loss = F.cross_entropy(token_logits, targets[predicting])
        elif labels is not None:
            loss = F.cross_entropy(logits, labels)
        audio_logits = None
        if self.config.audio_loss_weight > 0:
            with torch.autocast(device_type=hidden.device.type, enabled=False):
                weights = audio_mask[..., None].float()
                mean_audio = (audio_embeddings.float() * weights).sum(dim=1) / weights.sum(dim=1)
                # The mean in float32, read in the classifier's own dtype: float32, or bf16 where an engine casts the
                # whole model (DeepSpeed's bf16 mode), which a float32 input would not multiply with.
                classifier_dtype = self.audio_classifier.weight.dtype
                audio_logits = self.audio_classifier(mean_audio.to(classifier_dtype)).float()
            if labels is not None:
                loss = loss + self.config.audio_loss_weight * F.cross_entropy(audio_logits, labels)
        return SpeechEmotionOutput(
            loss=loss, logits=logits, llm_logits=llm_logits, probe_logits=probe_logits, audio_logits=audio_logits
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor,
        audio_lengths: torch.LongTensor,
        input_features: torch.Tensor | None = None,
        encoder_layer_states: torch.Tensor | None = None,
        constrain_to_labels: bool = True,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """
        The answer's new tokens, padded with the end token (`processor.batch_decode(..., skip_special_tokens=True)`
        gives the text). Constrained, the label word the class scores (`forward`'s `logits`) rank first and the end of
        the turn, whatever tokens the labels share; written freely, a trained model also answers with the label
        (BENCHMARKS.md measures how often it matches the scores).

        Args:
            input_ids (`(batch, seq)`): the left-padded prompts with audio placeholders, without answers.
            attention_mask (`(batch, seq)`): 1 on the tokens, 0 on the left padding.
            audio_lengths (`(batch,)`): valid samples of each clip at 16 kHz.
            input_features: `(batch, num_mel_bins, mel_frames)` (Whisper) or `(batch, samples)` (wav2vec2 family).
            encoder_layer_states (`(batch, num_layers + 1, frames, encoder_hidden)`, optional): the frozen encoder's
                outputs computed beforehand, in place of `input_features`.
            constrain_to_labels: True (default) writes the label the scores rank first; False lets the LLM write freely.
            **generate_kwargs: The LLM's `generate` options (`max_new_tokens=...`); a `ValueError` unless unconstrained.

        Returns:
            The answer's token ids `(batch, answer_length)`.
        """
        if constrain_to_labels:
            if generate_kwargs:
                raise ValueError(
                    f"generate(constrain_to_labels=True) writes the label the class scores rank first and takes no "
                    f"generation options (got {sorted(generate_kwargs)}); pass constrain_to_labels=False to let the "
                    "LLM write freely with them."
                )
            logits = self(input_ids=input_ids, attention_mask=attention_mask, audio_lengths=audio_lengths,
                          input_features=input_features, encoder_layer_states=encoder_layer_states).logits
            end = self.answer_end_token_id()
            answers = [list(self.config.label_token_ids[i]) + [end] for i in logits.argmax(-1).tolist()]
            width = max(len(answer) for answer in answers)
            return torch.tensor([answer + [end] * (width - len(answer)) for answer in answers], device=input_ids.device)
        audio_embeddings, audio_mask = self.get_audio_embeddings(audio_lengths, input_features, encoder_layer_states)
        llm_inputs = self._llm_inputs(input_ids, attention_mask, audio_embeddings, audio_mask)
        llm_inputs.pop("position_ids")  # generate() derives positions from the attention mask
        return self.language_model.generate(**llm_inputs, **generate_kwargs)

    @torch.no_grad()
    def pooled_audio_statistics(self, batch: dict) -> torch.Tensor:
        """
        Mean and std over each clip's standardized encoder frames.

        Args:
            batch: Model inputs: `audio_lengths` `(batch,)`, and `input_features` or `encoder_layer_states`.

        Returns:
            float32 `(batch, 2 * frame width)`: the means, then the standard deviations.
        """
        frames, mask = self.audio_encoder(
            batch["audio_lengths"], batch.get("input_features"), batch.get("encoder_layer_states")
        )
        return pooled_statistics(frames.float(), mask)

    # Fits the probe mapper on labelled clips: `probe_fitting_emosllm.fit_probe` (which documents its arguments and
    # what it returns) as the model's method, its public entry point.
    fit_probe = fit_probe


EmoSLLMForSpeechEmotionRecognition.register_for_auto_class("AutoModelForAudioClassification")

__all__ = [
    "EmoSLLMForSpeechEmotionRecognition",
    "EmoSLLMModel",
    "EmoSLLMModelOutput",
    "EmoSLLMPreTrainedModel",
    "SpeechEmotionOutput",
]
