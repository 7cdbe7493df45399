"""Training precision: ``--precision fp32 | bf16 | fp16 | fp64``.

- ``fp32``: the default.
- ``bf16`` / ``fp16``: torch autocast (matrix products and convolutions in half precision, reductions
  and the loss in float32), on the CPU or CUDA; ``fp16`` adds a gradient scaler.
- ``fp64``: everything in float64 (model and input); for checks, such as N processes against one.

Reversible models under autocast (the policy, measured by ``revsnn bench precision``): the recompute in
backward re-enters the forward's autocast state (``reversible._Evaluation``), so the reconstructed blocks
see the same half-precision products as the forward; the streams that reversal subtracts from (the
coupling halves, the T-RevSNN level states, the RevLIF membrane) are kept in float32, because an input
rebuilt by subtraction in bfloat16 loses 8 bits of mantissa per block.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

from .errors import RevsnnError

__all__ = ["PRECISIONS", "PrecisionError", "resolve_precision", "autocast", "grad_scaler", "half_dtype"]

PRECISIONS = ("fp32", "bf16", "fp16", "fp64")
_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(RevsnnError):
    """An unknown --precision; one sentence."""


def resolve_precision(precision: Optional[str], amp: bool, cuda: bool) -> tuple[str, Optional[str]]:
    """The precision to train in and a note for the user (or None).

    ``precision`` wins; without it a preset's ``amp`` means fp16 on CUDA and float32 on the CPU, as before.
    """
    if precision is None:
        if amp and cuda:
            return "fp16", None
        return "fp32", ("mixed precision needs a GPU; training in float32 on the CPU." if amp else None)
    if precision not in PRECISIONS:
        raise PrecisionError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    return precision, None


def half_dtype(precision: str) -> Optional[torch.dtype]:
    return _HALF.get(precision)


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32 and fp64)."""
    dtype = _HALF.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str):
    """A gradient scaler for fp16 (its small range underflows gradients); None otherwise."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
