"""The embedded default data: scikit-learn's digits (8x8 grey images, 10 classes), spike-encoded over T steps.

No download: the images ship inside scikit-learn. The split is deterministic (stratified, 20% test,
``random_state=0``), so every command that says "test samples" means the same 360 images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

__all__ = ["ImageData", "load_digits", "encode", "ENCODINGS"]

ENCODINGS = ("direct", "rate")


@dataclass
class ImageData:
    name: str
    x_train: Tensor  # [N, C, H, W], float32 in [0, 1]
    y_train: Tensor  # [N], int64
    x_test: Tensor
    y_test: Tensor

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def load_digits(test_fraction: float = 0.2) -> ImageData:
    """scikit-learn's digits as ``[N, 1, 8, 8]`` images scaled to [0, 1], split 80/20 (1437 / 360)."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    digits = sk_load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=test_fraction, random_state=0, stratify=y.numpy())
    idx_train, idx_test = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    return ImageData("digits", x[idx_train], y[idx_train], x[idx_test], y[idx_test])


def encode(x: Tensor, time_steps: int, encoding: str, generator: Optional[torch.Generator] = None) -> Tensor:
    """Images ``[B, C, H, W]`` in [0, 1] -> time-first input ``[T, B, C, H, W]``.

    - ``direct``: the same real-valued image every step (the first layer sees a constant current);
    - ``rate``: Bernoulli spikes with the pixel value as the probability per step, what spike-only
      hardware such as Loihi needs. ``generator`` makes the draw reproducible.
    """
    if time_steps < 1:
        raise ValueError(f"time_steps must be at least 1, got {time_steps}.")
    if encoding == "direct":
        return x.unsqueeze(0).expand(time_steps, *x.shape).contiguous()
    if encoding == "rate":
        p = x.clamp(0.0, 1.0).unsqueeze(0).expand(time_steps, *x.shape)
        return torch.bernoulli(p, generator=generator)
    raise ValueError(f"Unknown encoding {encoding!r}; use one of: {', '.join(ENCODINGS)}.")
