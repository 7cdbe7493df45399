"""RevSFormer (Zhang & Zhang, AAAI 2024): a reversible spiking transformer.

Over time-first tensors; tokens are ``[T, B, C, N]`` (channels, then N = H·W tokens):

- tokenizer (non-reversible): ``Conv3x3(C_in -> C/8) -> BN``, then four stages
  ``SN -> [MaxPool3x3 s2] -> Conv3x3 -> BN`` with channels C/8 -> C/4 -> C/2 -> C -> C; the max-pool is
  present in the stages listed in ``pool_stages`` (the last two at CIFAR size: 32x32 -> 64 tokens);
- the tokens are duplicated into the two streams, ``X = cat(tok, tok)``;
- ``depth`` reversible blocks, RevNet coupling with ``F`` = spiking self-attention and ``G`` = MLP:
  - SSA: ``S = SN(x)``; ``Q, K, V = SN(BN(Conv1x1(S)))`` (no bias), split in heads;
    ``A = (Q Kᵀ) V · scale`` with no softmax; ``out = BN(Conv1x1(SN_{θ=0.5}(A)))`` (with bias);
  - MLP: ``BN(Conv1x1_{4C -> C}(SN(BN(Conv1x1_{C -> 4C}(SN(x))))))``, both convolutions with bias;
- head: the mean over tokens, ``Linear(2C -> classes)`` per step, then the mean over time.

Neurons: LIF, tau = 2, threshold 1, Sigmoid(alpha = 4) surrogate; the attention output's threshold is 0.5.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..layers import TimeDistributed
from ..neurons import SpikingNeuron, make_neuron, reset_states
from ..reversible import Recompute, RevNetCoupling, ReversibleSequence

__all__ = ["RevSFormer", "SpikingSelfAttention", "SpikingMLP", "CONFIGS", "build"]

LIF_SIGMOID = {"type": "LIF", "tau": 2.0, "v_threshold": 1.0, "surrogate": {"type": "sigmoid", "alpha": 4.0}}


def _conv_bn(c_in: int, c_out: int, bias: bool) -> list[nn.Module]:
    return [TimeDistributed(nn.Conv1d(c_in, c_out, 1, bias=bias)), TimeDistributed(nn.BatchNorm1d(c_out))]


class SpikingSelfAttention(nn.Module):
    """Spikformer-style attention without softmax, over ``[T, B, C, N]``."""

    def __init__(self, dim: int, heads: int, neuron: dict[str, Any], scale: float = 0.125,
                 attn_threshold: float = 0.5):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads.")
        self.heads, self.scale = heads, scale
        self.input_sn = make_neuron(neuron)
        self.q = nn.Sequential(*_conv_bn(dim, dim, False), make_neuron(neuron))
        self.k = nn.Sequential(*_conv_bn(dim, dim, False), make_neuron(neuron))
        self.v = nn.Sequential(*_conv_bn(dim, dim, False), make_neuron(neuron))
        self.attn_sn = make_neuron(neuron, v_threshold=attn_threshold)
        self.proj = nn.Sequential(*_conv_bn(dim, dim, True))

    def _split(self, x: Tensor) -> Tensor:  # [T, B, C, N] -> [T, B, heads, N, C / heads]
        T, B, C, N = x.shape
        return x.reshape(T, B, self.heads, C // self.heads, N).transpose(-1, -2)

    def forward(self, x: Tensor) -> Tensor:
        s = self.input_sn(x)
        q, k, v = self._split(self.q(s)), self._split(self.k(s)), self._split(self.v(s))
        a = (q @ k.transpose(-1, -2)) @ v * self.scale  # [T, B, heads, N, d]
        T, B, H, N, d = a.shape
        a = a.transpose(-1, -2).reshape(T, B, H * d, N)
        return self.proj(self.attn_sn(a))


class SpikingMLP(nn.Sequential):
    def __init__(self, dim: int, ratio: int, neuron: dict[str, Any]):
        super().__init__(make_neuron(neuron), *_conv_bn(dim, ratio * dim, True),
                         make_neuron(neuron), *_conv_bn(ratio * dim, dim, True))


class RevSFormer(nn.Module):
    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        dim: int = 384,
        depth: int = 4,
        heads: int = 12,
        mlp_ratio: int = 4,
        pool_stages: tuple[int, ...] = (2, 3),
        neuron: dict[str, Any] = LIF_SIGMOID,
        scale: float = 0.125,
        recompute_boundaries: bool = False,
    ):
        super().__init__()
        if dim % 8:
            raise ValueError(f"dim must be a multiple of 8 (the tokenizer starts at dim / 8), got {dim}.")
        widths = [dim // 8, dim // 4, dim // 2, dim, dim]
        tok: list[nn.Module] = [
            TimeDistributed(nn.Conv2d(input_shape[0], widths[0], 3, padding=1, bias=False)),
            TimeDistributed(nn.BatchNorm2d(widths[0])),
        ]
        for stage in range(4):
            tok.append(make_neuron(neuron))
            if stage in pool_stages:
                tok.append(TimeDistributed(nn.MaxPool2d(3, stride=2, padding=1)))
            tok += [TimeDistributed(nn.Conv2d(widths[stage], widths[stage + 1], 3, padding=1, bias=False)),
                    TimeDistributed(nn.BatchNorm2d(widths[stage + 1]))]
        if recompute_boundaries:
            # The tokenizer runs at full resolution (32x32 at CIFAR size), where most of a RevSFormer's
            # activations are. Recompute keeps only its input (the image) and, inside, each stage keeps
            # only its own input while the outer recompute runs, so backward holds one stage's graph at a
            # time: the same layers in the same order (state_dict keys differ from the plain layout).
            stages, start = [], 0
            for i, m in enumerate(tok):
                if i > 0 and isinstance(m, SpikingNeuron):
                    stages.append(Recompute(nn.Sequential(*tok[start:i])))
                    start = i
            stages.append(Recompute(nn.Sequential(*tok[start:])))
            self.tokenizer = Recompute(nn.Sequential(*stages))
        else:
            self.tokenizer = nn.Sequential(*tok)
        self.blocks = ReversibleSequence(
            [RevNetCoupling(SpikingSelfAttention(dim, heads, neuron, scale), SpikingMLP(dim, mlp_ratio, neuron))
             for _ in range(depth)], split_dim=2)
        self.head = nn.Linear(2 * dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        reset_states(self)
        t = self.tokenizer(x)                     # [T, B, C, H, W]
        t = t.flatten(3)                          # [T, B, C, N]
        h = self.blocks(t.repeat(1, 1, 2, 1))     # both streams start as the tokens
        return self.head(h.mean(3)).mean(0)


def _config(dim: int, depth: int, heads: int, input_shape, classes: int, pool_stages, train) -> dict[str, Any]:
    return {"family": "revsformer", "input_shape": input_shape, "num_classes": classes, "dim": dim,
            "depth": depth, "heads": heads, "mlp_ratio": 4, "pool_stages": pool_stages, "neuron": LIF_SIGMOID,
            "scale": 0.125, "train": train}


_CIFAR_TRAIN = {"epochs": 300, "lr": 5e-4, "time_steps": 4, "batch_size": 64, "encoding": "direct"}
_DIGITS_TRAIN = {"epochs": 20, "lr": 0.003, "time_steps": 4, "batch_size": 64, "encoding": "direct"}

# RevSFormer-2-256 on 128x128 event frames (the seeds' DVS setting): LIF tau 1.5, 16 heads, max pooling in
# all four tokenizer stages (128 -> 8, 64 tokens).
_DVS_TRAIN = {"epochs": 96, "lr": 0.001, "time_steps": 16, "batch_size": 16, "encoding": "events"}
_DVS_NEURON = {**LIF_SIGMOID, "tau": 1.5}

CONFIGS: dict[str, dict[str, Any]] = {
    "revsformer-2-256-dvs": {**_config(256, 2, 16, [2, 128, 128], 10, [0, 1, 2, 3], _DVS_TRAIN),
                             "neuron": _DVS_NEURON},
    "revsformer-digits": _config(32, 2, 4, [1, 8, 8], 10, [3], _DIGITS_TRAIN),
    "revsformer-2-384": _config(384, 2, 12, [3, 32, 32], 10, [2, 3], _CIFAR_TRAIN),
    "revsformer-4-384": _config(384, 4, 12, [3, 32, 32], 10, [2, 3], _CIFAR_TRAIN),
}


def build(config: dict[str, Any]) -> RevSFormer:
    return RevSFormer(
        input_shape=tuple(config["input_shape"]),
        num_classes=config["num_classes"],
        dim=config["dim"],
        depth=config["depth"],
        heads=config["heads"],
        mlp_ratio=config["mlp_ratio"],
        pool_stages=tuple(config["pool_stages"]),
        neuron=config["neuron"],
        scale=config["scale"],
        recompute_boundaries=config.get("recompute_boundaries", False),
    )
