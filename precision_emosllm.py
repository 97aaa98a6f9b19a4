# Copyright 2026 The EmoSLLM authors. Licensed under the Apache License, Version 2.0.
"""
EmoSLLM's precision policy (`PRECISION_POLICY`): which dtype each part is held and computed in, stated once.
"""

import contextlib
import contextvars
import functools
from pathlib import Path

try:  # a saved folder is loaded as a package (relative import); scripts import top-level modules
    from .dependencies_emosllm import missing_dependency
except ImportError:
    if __package__:  # loaded as a package: the sibling failed on its own
        raise
    from dependencies_emosllm import missing_dependency
try:  # a missing package is named with its pip command (dependencies_emosllm.py)
    import torch
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


__all__ = [
    "BACKBONES_ON_META",
    "PRECISION_POLICY",
    "TRAINED_DTYPE",
    "FrozenHeadLogits",
    "backbone_construction",
    "bf16_is_native",
    "training_backbone_dtype",
]
