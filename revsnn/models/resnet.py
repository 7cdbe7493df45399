"""RevSResNet (Zhang & Zhang, AAAI 2024) and ParaRevSNN (Xu et al.): reversible spiking ResNets.

Layout, over time-first tensors ``[T, B, C, H, W]``:

- stem: ``Conv3x3(C_in -> 2 p0) -> BN`` per time step; its output is the two-stream state (real-valued);
- stage i: ``n_i`` reversible blocks on ``2 p_i`` channels, split in two streams of ``p_i``; each block is
  a coupling of ``F = G = SN -> Conv3x3 -> BN -> SN -> Conv3x3 -> BN`` (RevNet coupling for RevSResNet,
  the parallel coupling for ParaRevSNN);
- between stages: ``SN -> AvgPool3x3 s2 p1 -> Conv1x1(2 p_{i-1} -> 2 p_i) -> BN``;
- head: ``SN -> global average pool -> Linear`` per time step, then the mean over time.

Convolutions have no bias (BatchNorm follows). ``recompute_boundaries`` wraps the stem, the downsample
layers and the head in ``Recompute``: they then keep only their inputs for backward, which for the
downsample layers is the output the reversible sequence keeps anyway. ``backward_chunk`` (samples per
chunk) runs every recompute in backward a few samples at a time (revsnn.chunked): the same gradients, a
lower peak, a slower backward.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn

from ..blocks import conv_branch
from ..layers import TimeDistributed
from ..neurons import make_neuron, reset_states
from ..reversible import ParaRevCoupling, Recompute, RevNetCoupling, ReversibleSequence

__all__ = ["RevSResNet", "CONFIGS", "build"]

_COUPLINGS = {"revnet": RevNetCoupling, "para": ParaRevCoupling}

# The CIFAR setting of the RevSNN code: IF neurons, threshold 1, ATan(alpha = 2) surrogate.
IF_ATAN = {"type": "IF", "v_threshold": 1.0, "surrogate": {"type": "atan", "alpha": 2.0}}


class RevSResNet(nn.Module):
    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        planes: tuple[int, ...] = (64, 128, 256, 448),
        blocks: tuple[int, ...] = (1, 1, 1, 1),
        coupling: str = "revnet",
        neuron: dict[str, Any] = IF_ATAN,
        recompute_boundaries: bool = False,
        stem_stride: int = 1,
        stem_pool: bool = False,
        backward_chunk: Optional[int] = None,
    ):
        super().__init__()
        if len(planes) != len(blocks) or not planes:
            raise ValueError("planes and blocks need one entry per stage.")
        if coupling not in _COUPLINGS:
            raise ValueError(f"Unknown coupling {coupling!r}; known: {', '.join(_COUPLINGS)}.")
        in_channels = input_shape[0]

        def sn() -> nn.Module:
            return make_neuron(neuron)

        def wrap(m: nn.Module) -> nn.Module:
            return Recompute(m, chunk=backward_chunk) if recompute_boundaries else m

        # The DVS stem of the seeds (RevSResNet24): a stride-2 convolution and a 3x3 stride-2 average pool
        # bring 128x128 event frames to 32x32 before the reversible stages.
        stem = [TimeDistributed(nn.Conv2d(in_channels, 2 * planes[0], 3, stride=stem_stride, padding=1, bias=False)),
                TimeDistributed(nn.BatchNorm2d(2 * planes[0]))]
        if stem_pool:
            stem.append(TimeDistributed(nn.AvgPool2d(3, stride=2, padding=1)))
        self.stem = wrap(nn.Sequential(*stem))
        self.stages = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for i, (p, n) in enumerate(zip(planes, blocks)):
            if i > 0:
                self.downsamples.append(wrap(nn.Sequential(
                    sn(),
                    TimeDistributed(nn.AvgPool2d(3, stride=2, padding=1)),
                    TimeDistributed(nn.Conv2d(2 * planes[i - 1], 2 * p, 1, bias=False)),
                    TimeDistributed(nn.BatchNorm2d(2 * p)),
                )))
            self.stages.append(ReversibleSequence(
                [_COUPLINGS[coupling](conv_branch(p, sn), conv_branch(p, sn)) for _ in range(n)], split_dim=2,
                backward_chunk=backward_chunk))
        self.head = wrap(nn.Sequential(
            sn(),
            TimeDistributed(nn.AdaptiveAvgPool2d(1)),
            TimeDistributed(nn.Flatten()),
            TimeDistributed(nn.Linear(2 * planes[-1], num_classes)),
        ))

    def forward(self, x: Tensor) -> Tensor:
        reset_states(self)
        h = self.stem(x)
        for i, stage in enumerate(self.stages):
            if i > 0:
                h = self.downsamples[i - 1](h)
            h = stage(h)
        return self.head(h).mean(0)


def _digits(coupling: str) -> dict[str, Any]:
    return {
        "input_shape": [1, 8, 8], "num_classes": 10,
        "planes": [16, 32], "blocks": [1, 1], "coupling": coupling, "neuron": IF_ATAN,
        "train": {"epochs": 15, "lr": 0.003, "time_steps": 4, "batch_size": 64, "encoding": "direct"},
    }


def _cifar(planes, blocks, coupling: str, classes: int = 10) -> dict[str, Any]:
    return {
        "input_shape": [3, 32, 32], "num_classes": classes, "planes": planes, "blocks": blocks,
        "coupling": coupling, "neuron": IF_ATAN,
        "train": {"epochs": 200, "lr": 0.1, "time_steps": 4, "batch_size": 32, "encoding": "direct"},
    }


# RevSResNet24 on event frames (CIFAR10-DVS, DVS128 Gesture) as the seeds' DVS code builds it: LIF tau 1.5,
# Sigmoid(4) surrogate, 2 x 16 / 32 / 48 channels, [1, 2, 2] blocks, the stride-2 stem with pooling.
LIF_SIGMOID_DVS = {"type": "LIF", "tau": 1.5, "v_threshold": 1.0, "surrogate": {"type": "sigmoid", "alpha": 4.0}}
DVS_TRAIN = {"epochs": 96, "lr": 0.001, "time_steps": 16, "batch_size": 16, "encoding": "events"}


def _dvs(coupling: str) -> dict[str, Any]:
    return {"input_shape": [2, 128, 128], "num_classes": 10, "planes": [16, 32, 48], "blocks": [1, 2, 2],
            "coupling": coupling, "neuron": LIF_SIGMOID_DVS, "stem_stride": 2, "stem_pool": True, "train": DVS_TRAIN}


CONFIGS: dict[str, dict[str, Any]] = {
    "revsresnet-digits": {"family": "revsresnet", **_digits("revnet")},
    "revsresnet21": {"family": "revsresnet", **_cifar([64, 128, 256, 448], [1, 1, 1, 1], "revnet")},
    "revsresnet37": {"family": "revsresnet", **_cifar([64, 128, 256, 448], [1, 2, 3, 2], "revnet")},
    "revsresnet24-dvs": {"family": "revsresnet", **_dvs("revnet")},
    "pararevsnn-digits": {"family": "pararevsnn", **_digits("para")},
    "pararevsnn21": {"family": "pararevsnn", **_cifar([64, 128, 256, 448], [1, 1, 1, 1], "para")},
    "pararevsnn37": {"family": "pararevsnn", **_cifar([64, 128, 256, 448], [1, 2, 3, 2], "para")},
}


def build(config: dict[str, Any]) -> RevSResNet:
    return RevSResNet(
        input_shape=tuple(config["input_shape"]),
        num_classes=config["num_classes"],
        planes=tuple(config["planes"]),
        blocks=tuple(config["blocks"]),
        coupling=config["coupling"],
        neuron=config["neuron"],
        recompute_boundaries=config.get("recompute_boundaries", False),
        stem_stride=config.get("stem_stride", 1),
        stem_pool=config.get("stem_pool", False),
        backward_chunk=config.get("backward_chunk"),
    )
