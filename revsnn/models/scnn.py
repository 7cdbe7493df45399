"""SCNN: a plain (non-reversible) spiking CNN, the chain-shaped baseline that deploys to Loihi.

Layout, over time-first tensors ``[T, B, C, H, W]``, every layer applied per time step (``TimeDistributed``):

    Conv3x3(C_in -> c1, pad 1) -> BN -> LIF -> AvgPool2d(2)
    -> Conv3x3(c1 -> c2, pad 1) -> BN -> LIF -> AvgPool2d(2)
    -> Flatten -> Linear(c2 * H/4 * W/4 -> classes)

then the mean over time of the per-step Linear outputs. Convolutions have no bias (BatchNorm follows).
Neurons: LIF, tau = 2, threshold 1, ATan(alpha = 2) surrogate.

Every neuron population is fed only by the previous one (the first by the input), so the collapsed graph
is a chain, what a Lava netx network needs. Nothing here is reversible: there is no ``ReversibleModule``,
``plain_twin`` is a plain copy, and the model trains by ordinary BPTT. Train it with ``rate`` encoding:
on Loihi the input arrives as spikes, not real values.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..layers import TimeDistributed
from ..neurons import make_neuron, reset_states

__all__ = ["SCNN", "CONFIGS", "build", "LIF_ATAN"]

LIF_ATAN = {"type": "LIF", "tau": 2.0, "v_threshold": 1.0, "surrogate": {"type": "atan", "alpha": 2.0}}


class SCNN(nn.Module):
    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        channels: tuple[int, int] = (16, 32),
        neuron: dict[str, Any] = LIF_ATAN,
    ):
        super().__init__()
        c_in, h, w = input_shape
        if len(channels) != 2:
            raise ValueError("channels needs two widths, one per convolution.")
        if h % 4 or w % 4:
            raise ValueError(f"input height and width must be multiples of 4 (two 2x2 poolings), got {h}x{w}.")
        c1, c2 = channels
        self.layers = nn.Sequential(
            TimeDistributed(nn.Conv2d(c_in, c1, 3, padding=1, bias=False)),
            TimeDistributed(nn.BatchNorm2d(c1)),
            make_neuron(neuron),
            TimeDistributed(nn.AvgPool2d(2)),
            TimeDistributed(nn.Conv2d(c1, c2, 3, padding=1, bias=False)),
            TimeDistributed(nn.BatchNorm2d(c2)),
            make_neuron(neuron),
            TimeDistributed(nn.AvgPool2d(2)),
            TimeDistributed(nn.Flatten()),
            TimeDistributed(nn.Linear(c2 * (h // 4) * (w // 4), num_classes)),
        )

    def forward(self, x: Tensor) -> Tensor:
        reset_states(self)
        return self.layers(x).mean(0)


CONFIGS: dict[str, dict[str, Any]] = {
    "scnn-digits": {
        "family": "scnn", "input_shape": [1, 8, 8], "num_classes": 10, "channels": [16, 32], "neuron": LIF_ATAN,
        "train": {"epochs": 15, "lr": 0.003, "time_steps": 4, "batch_size": 64, "encoding": "rate"},
    },
}


def build(config: dict[str, Any]) -> SCNN:
    return SCNN(
        input_shape=tuple(config["input_shape"]),
        num_classes=config["num_classes"],
        channels=tuple(config["channels"]),
        neuron=config["neuron"],
    )
