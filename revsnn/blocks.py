"""Residual functions F and G used inside couplings. Each begins with a spiking neuron (DESIGN §5)."""

from __future__ import annotations

from typing import Callable

from torch import nn

from .layers import TimeDistributed
from .neurons import SpikingNeuron

__all__ = ["conv_branch"]


def conv_branch(channels: int, neuron: Callable[[], SpikingNeuron], dropout: float = 0.0) -> nn.Sequential:
    """RevSResNet's basic branch over ``[T, B, C, H, W]``: SN -> Conv3x3 -> BN -> SN -> [Dropout] -> Conv3x3 -> BN.

    Convolutions are stride 1, padding 1, without bias (BatchNorm follows), C -> C.
    """
    layers: list[nn.Module] = [
        neuron(),
        TimeDistributed(nn.Conv2d(channels, channels, 3, padding=1, bias=False)),
        TimeDistributed(nn.BatchNorm2d(channels)),
        neuron(),
    ]
    if dropout:
        layers.append(TimeDistributed(nn.Dropout(dropout)))
    layers += [
        TimeDistributed(nn.Conv2d(channels, channels, 3, padding=1, bias=False)),
        TimeDistributed(nn.BatchNorm2d(channels)),
    ]
    return nn.Sequential(*layers)
