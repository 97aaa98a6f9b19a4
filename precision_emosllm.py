# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
EmoSLLM's precision policy (`PRECISION_POLICY`): which dtype each part is held and computed in, stated once; the dtypes
of building and loading (`training_backbone_dtype`, `language_model_load_kwargs`); applying it to a model
(`EmoSLLMPrecisionMixin`); and where a backbone's skeleton is made (`backbone_construction`).
"""

import contextlib
import contextvars
import functools
import os
from pathlib import Path

try:  # a saved folder is loaded as a package (relative import); scripts import top-level modules
    from .dependencies_emosllm import missing_dependency
except ImportError:
    if __package__:  # loaded as a package: the sibling failed on its own
        raise
    from dependencies_emosllm import missing_dependency
try:  # a missing package is named with its pip command (dependencies_emosllm.py)
    import torch
    import torch.nn.functional as F
except ModuleNotFoundError as error:
    raise missing_dependency(error, __name__) from error


@functools.lru_cache(maxsize=None)
def bf16_is_native(device_type: str | None = None) -> bool:
    """
    Whether `device_type` ("cpu", "cuda"; None: the GPU if there is one, else the CPU) runs bf16 natively: a GPU
    with bf16, or a CPU with the `avx512_bf16` or `amx_bf16` instructions (read from /proc/cpuinfo: torch's public
    `get_cpu_capability` does not report them). Elsewhere (an AVX2 CPU) bf16 is emulated and slower than float32
    (BENCHMARKS.md, "One training step").

    Args:
        device_type: A torch device type ("cpu", "cuda"; any other is not native), or None for the default device.
    """
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


PRECISION_POLICY = """
EmoSLLM's precision policy, the one place it is stated (`training_backbone_dtype`, `language_model_load_kwargs`,
`TRAINED_DTYPE`; tested in tests/test_lean_and_fast.py):

- The parts that train (the mapper, the encoder's layer weights and feature statistics, the probe, LoRA and
  the audio classifier) are held in float32 always, whatever dtype a backbone's checkpoint declares and whatever
  `dtype=` is asked for; bf16 autocast (the Trainer's `--bf16`) may still compute them in bf16.
- The frozen backbones (the audio encoder and the LLM, each only while the config freezes it; a backbone that trains
  is a trained part) are held in bf16 where the device runs bf16 natively, else float32:
  - building a model to train (`from_backbones`, train.py): bf16 on a CUDA GPU with bf16 support, float32 on the CPU
    (any CPU: the reported CPU scores come from float32 training, and an AVX2 CPU emulates bf16, far slower);
  - loading a lean folder for inference (`from_pretrained`): the LLM in bf16 where bf16 is native (a bf16 GPU, or a
    CPU with avx512_bf16/amx_bf16) and its checkpoint holds bf16 weights, else float32; the encoder in float32 (it
    computes in bf16 autocast without gradients where that is native: `EmoSLLMAudioEncoder.bf16_inference`);
  - `dtype=` (`from_backbones`, `from_pretrained`) sets the frozen backbones' dtype and nothing else.
- Class scores and the loss are computed in float32 from the LLM's last hidden states (`_next_token_logits`), reading a
  bf16 language-model head in float32 one block of rows at a time: no float32 copy of the whole head is made or kept
  for backward.
- Saving writes each backbone in the dtype its checkpoint declares (or `dtype=`), EmoSLLM's own tensors in float32,
  and tied weights once.
"""
TRAINED_DTYPE = torch.float32  # the dtype of every part that trains (PRECISION_POLICY)


def training_backbone_dtype(device_type: str | None = None) -> torch.dtype:
    """
    The dtype of the frozen backbones of a model built to train on `device_type` ("cuda", "cpu"; None: the GPU if
    there is one, else the CPU), as `PRECISION_POLICY` states: bf16 on a CUDA GPU with bf16 support, float32 elsewhere.

    Args:
        device_type: A torch device type ("cuda", "cpu"), or None for the default device.

    Returns:
        `torch.bfloat16` or `torch.float32`.
    """
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.bfloat16 if device_type == "cuda" and bf16_is_native("cuda") else torch.float32


# Set while `from_backbones` builds its skeleton: the pretrained backbones are then made on the meta device (no memory,
# no random init), to be replaced by the loaded ones; EmoSLLM's own parts are made and initialised as usual.
# "parameters": only the backbones' parameters on the meta device, their buffers made as usual, for a rank that FSDP
# gives rank 0's weights (it broadcasts parameters and persistent buffers, not the rotary tables).
BACKBONES_ON_META = contextvars.ContextVar("emosllm_backbones_on_meta", default=False)


def backbone_construction():
    """The device context in which a pretrained backbone's skeleton is made (`BACKBONES_ON_META`)."""
    where = BACKBONES_ON_META.get()
    if where == "parameters":
        from accelerate import init_empty_weights

        return init_empty_weights(include_buffers=False)
    return torch.device("meta") if where else contextlib.nullcontext()


class FrozenHeadLogits(torch.autograd.Function):
    """
    `hidden.float() @ weight.float().T` for a frozen low-precision language-model head `weight` `(vocab, hidden)`,
    computed in float32 `ROWS` rows of the head at a time, forward and backward (where it reads the head again), so
    neither makes nor keeps a float32 copy of the whole head. Gives no gradient to the head (it is frozen).
    """

    ROWS = 8192

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """
        The logits, reading the head `ROWS` rows at a time in float32.

        Args:
            ctx: Autograd's context; it keeps `weight` for backward.
            hidden: Float32 hidden states `(..., hidden)`.
            weight: The frozen head `(vocab, hidden)`, in a low precision (e.g. bf16).

        Returns:
            The logits `(..., vocab)` in `hidden`'s dtype.
        """
        ctx.save_for_backward(weight)
        logits = hidden.new_empty(*hidden.shape[:-1], weight.shape[0])
        for start in range(0, weight.shape[0], FrozenHeadLogits.ROWS):
            rows = weight[start:start + FrozenHeadLogits.ROWS].float()
            logits[..., start:start + rows.shape[0]] = hidden @ rows.T
        return logits

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        """
        The gradient of `hidden`, reading the head again `ROWS` rows at a time in float32; none for the head.

        Args:
            ctx: Autograd's context, holding `weight`.
            grad: The gradient of the logits `(..., vocab)` (float32).

        Returns:
            `(grad_hidden, None)`: the gradient of `hidden` `(..., hidden)`, and none for `weight`.
        """
        (weight,) = ctx.saved_tensors
        grad_hidden = None
        for start in range(0, weight.shape[0], FrozenHeadLogits.ROWS):
            rows = weight[start:start + FrozenHeadLogits.ROWS].float()
            part = grad[..., start:start + rows.shape[0]] @ rows
            grad_hidden = part if grad_hidden is None else grad_hidden + part
        return grad_hidden, None


def language_model_load_kwargs(llm_folder: str, device_type: str = "cpu", dtype: torch.dtype | None = None) -> dict:
    """
    The `from_pretrained` dtype (and weights variant) of a lean folder's LLM backbone. With no `dtype`: bf16 where
    `device_type` runs bf16 natively (`bf16_is_native`) and the checkpoint holds bf16 weights, stored so (the Hub's
    SmolLM2) or as its `bf16` variant (`model.bf16.safetensors`, which the bundled copy writes); float32 elsewhere. bf16
    maps the stored weights as they are (half float32's memory, a faster LLM), where converting float32 weights at load
    would first map them whole. train.py scores its test clips with the LLM in the same dtype (`cast_language_model`),
    so the score it reports is the one the saved folder delivers.

    Args:
        llm_folder: The LLM backbone's local folder.
        device_type: Where the model will run (`"cpu"`, `"cuda"`, ...).
        dtype: The dtype asked for; None chooses as above.

    Returns:
        `{"dtype": dtype}`, with `"variant": "bf16"` when bf16 loads from `model.bf16.safetensors`.
    """
    from transformers import AutoConfig

    bf16_variant = os.path.isfile(os.path.join(llm_folder, "model.bf16.safetensors"))
    if dtype is None:
        stored = str(AutoConfig.from_pretrained(llm_folder).dtype).replace("torch.", "")
        bf16 = bf16_is_native(device_type) and (bf16_variant or stored == "bfloat16")
        dtype = torch.bfloat16 if bf16 else torch.float32
    return {"dtype": dtype, "variant": "bf16"} if dtype == torch.bfloat16 and bf16_variant else {"dtype": dtype}


def as_torch_dtype(dtype) -> torch.dtype | None:
    """`dtype=` as `from_pretrained` takes it (a torch dtype, its name, "auto" or None) -> a torch dtype or None."""
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):  # "float32", as transformers
        dtype = getattr(torch, dtype)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype={dtype!r} is not a torch dtype: pass torch.float32 (or 'float32'), "
                         "torch.bfloat16, or leave it unset for the default.")
    return dtype


def weights_come_from_rank_0() -> bool:
    """
    Whether this process is a node's non-first rank under Accelerate's FSDP with `fsdp_cpu_ram_efficient_loading`, where
    `from_pretrained` leaves pretrained weights on the meta device (no memory) and FSDP broadcasts rank 0's into the
    sharded model (`accelerator.prepare`): `from_backbones` builds this rank's backbones and LoRA empty.
    """
    from transformers.integrations import is_fsdp_enabled

    return is_fsdp_enabled() and int(os.environ.get("LOCAL_RANK", 0)) != 0


def refuse_zero3_init() -> None:
    """
    Raises `ValueError` where transformers would build pretrained models partitioned (DeepSpeed ZeRO-3's
    `deepspeed.zero.Init`): EmoSLLM runs its audio encoder and reads the LLM's embeddings before an engine starts.
    """
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        raise ValueError(
            "DeepSpeed ZeRO-3 would build EmoSLLM's backbones partitioned here (deepspeed.zero.Init: a stage-3 "
            "HfDeepSpeedConfig, or TrainingArguments with one, exists), but EmoSLLM runs its audio encoder and reads "
            "the LLM's embeddings before the engine starts, so it needs them whole. Build or load the model before "
            "creating those, or inside train.py's `training.engines.models_built_whole(training_args)`: "
            "deepspeed.initialize partitions the whole model when the Trainer prepares it."
        )


class EmoSLLMPrecisionMixin:
    """
    `PRECISION_POLICY` applied to a model (mixed into `EmoSLLMModel`, which provides `backbone_keys`, `prompt_head`
    and `language_model`), and the language-model head's logits in float32.
    """

    @torch.no_grad()
    def apply_precision(self, backbone_dtype: torch.dtype | None = None) -> None:
        """
        `PRECISION_POLICY`: what trains and EmoSLLM's own buffers in float32; tied weights stay tied (cast once).

        Args:
            backbone_dtype: The frozen backbones' dtype, e.g. `torch.bfloat16`; None leaves them as they are.
        """
        backbone = set(self.backbone_keys())
        for name, param in self.named_parameters():
            target = backbone_dtype if name in backbone else TRAINED_DTYPE
            if param.is_floating_point() and target is not None and param.dtype != target:
                param.data = param.data.to(target)
        for name, module in self.named_modules():  # EmoSLLM's own buffers (statistics, probe), not the backbones'
            if name.startswith(("audio_encoder.encoder", "language_model")):
                continue
            for key, buffer in module.named_buffers(recurse=False):
                if buffer.is_floating_point() and buffer.dtype != TRAINED_DTYPE:
                    setattr(module, key, buffer.to(TRAINED_DTYPE))
        self.prompt_head.clear()

    @torch.no_grad()
    def cast_language_model(self, dtype: torch.dtype) -> None:
        """
        Casts the LLM's pretrained weights as loading a lean folder does (`language_model_load_kwargs`); LoRA, EmoSLLM's
        own weights and the LLM's buffers (rotary frequencies) stay float32. float32 from a bf16 checkpoint gives its
        exact values back; LoRA merged into bf16 weights (`merge_lora`) rounds once, `unmerge_lora` restoring them only
        to bf16 rounding.

        Args:
            dtype: Their new dtype, e.g. `torch.bfloat16` or `torch.float32`.
        """
        for name, param in self.language_model.named_parameters():
            if "lora_" not in name and param.dtype != dtype:
                param.data = param.data.to(dtype)
        self.prompt_head.clear()

    def _next_token_logits(self, hidden: torch.Tensor, tokens: list[int] | None = None) -> torch.Tensor:
        """
        The LLM's next-token logits `(batch, len(tokens))` (all `(batch, vocab)` without `tokens`) of hidden states
        `(batch, llm_hidden)`, via its language-model head. In float32 even under bf16 autocast and with bf16 weights:
        LLM logits sit near 20-30, where bf16's spacing (0.125) is coarser than the differences training has to grow.
        """
        head = self.language_model.get_output_embeddings()
        weight = head.weight if tokens is None else head.weight[tokens]
        bias = None if head.bias is None else (head.bias if tokens is None else head.bias[tokens])
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            if tokens is None and weight.dtype != torch.float32 and not weight.requires_grad:
                # A frozen bf16 head over the whole vocabulary: read in float32 a block of rows at a time, never a
                # float32 copy of the whole head (1.5 GiB at Llama-3's vocabulary), not even for backward.
                logits = FrozenHeadLogits.apply(hidden.float(), weight)
                return logits if bias is None else logits + bias.float()
            return F.linear(hidden.float(), weight.float(), None if bias is None else bias.float())


__all__ = [
    "BACKBONES_ON_META",
    "PRECISION_POLICY",
    "TRAINED_DTYPE",
    "EmoSLLMPrecisionMixin",
    "FrozenHeadLogits",
    "as_torch_dtype",
    "backbone_construction",
    "bf16_is_native",
    "language_model_load_kwargs",
    "refuse_zero3_init",
    "training_backbone_dtype",
    "weights_come_from_rank_0",
]
