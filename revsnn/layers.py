"""Stateless building blocks over time-first tensors ``[T, B, ...]``."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["TimeDistributed"]


class TimeDistributed(nn.Module):
    """Apply a stateless layer (conv, BatchNorm, pooling, linear) to every time step at once.

    ``[T, B, ...]`` is folded to ``[T * B, ...]``, so BatchNorm normalises over time and batch together,
    as the seed papers' multi-step layers do.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        T, B = x.shape[:2]
        y = self.module(x.reshape(T * B, *x.shape[2:]))
        return y.reshape(T, B, *y.shape[1:])
