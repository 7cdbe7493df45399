"""A short self-check of the reversible core: a tiny network against its plain-autograd twin.

Used by ``revsnn check`` right after installation. It proves on this machine what the test suite proves
in depth: equal outputs and gradients, and activation memory that stays flat as blocks are added.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .blocks import conv_branch
from .memory import memory_per_sample
from .neurons import IF, LIF, neurons_of, reset_states
from .reversible import ParaRevCoupling, RevNetCoupling, ReversibleSequence, plain_twin


@dataclass
class DepthRow:
    blocks: int
    reversible_bytes: int
    plain_bytes: int


@dataclass
class SelfCheck:
    outputs_equal: bool
    max_grad_diff: float
    spikes: int
    memory: list[DepthRow]

    @property
    def ok(self) -> bool:
        flat = len({row.reversible_bytes for row in self.memory}) == 1
        growing = all(a.plain_bytes < b.plain_bytes for a, b in zip(self.memory, self.memory[1:]))
        return self.outputs_equal and self.max_grad_diff < 1e-9 and self.spikes > 0 and flat and growing


def _tiny(n_blocks: int, channels: int = 4, seed: int = 0) -> ReversibleSequence:
    torch.manual_seed(seed)
    blocks = []
    for i in range(n_blocks):
        coupling = RevNetCoupling if i % 2 == 0 else ParaRevCoupling
        neuron = (lambda: LIF(tau=2.0)) if i % 2 == 0 else IF
        blocks.append(coupling(conv_branch(channels, neuron), conv_branch(channels, neuron)))
    return ReversibleSequence(blocks).double()


def run_selfcheck(depths: tuple[int, ...] = (1, 2, 4, 8), time_steps: int = 4, batch: int = 2) -> SelfCheck:
    g = torch.Generator().manual_seed(1)
    x = 2.0 * torch.randn(time_steps, batch, 8, 6, 6, generator=g, dtype=torch.float64)
    w = torch.randn(x.shape, generator=g, dtype=torch.float64)

    rev = _tiny(4)
    twin = plain_twin(rev)
    results = []
    for model in (rev, twin):
        xi = x.clone().requires_grad_(True)
        out = model(xi)
        (out * w).sum().backward()
        results.append((out.detach(), xi.grad, [p.grad for p in model.parameters()]))
        reset_states(model)
    counted = []
    with torch.no_grad():
        hooks = [m.register_forward_hook(lambda m, i, o: counted.append(int(o.sum())))
                 for m in neurons_of(rev)]
        rev(x)
        for h in hooks:
            h.remove()
    spikes = sum(counted)
    (out_r, dx_r, g_r), (out_p, dx_p, g_p) = results
    diff = max([(dx_r - dx_p).abs().max().item()] + [(a - b).abs().max().item() for a, b in zip(g_r, g_p)])

    def make_input(b: int) -> torch.Tensor:
        return 2.0 * torch.randn(time_steps, b, 8, 6, 6, generator=torch.Generator().manual_seed(2),
                                 dtype=torch.float64).requires_grad_(True)

    memory = []
    for n in depths:
        model = _tiny(n)
        # By the allocator, per sample (slope between batch and 2 x batch): bytes alive when backward starts.
        # The meter would miss the reversible output alias; the slope removes RNG states and gradients.
        rev_b = memory_per_sample(model, make_input, (batch, 2 * batch))["retained"]
        plain_b = memory_per_sample(plain_twin(_tiny(n)), make_input, (batch, 2 * batch))["retained"]
        memory.append(DepthRow(n, rev_b, plain_b))
    return SelfCheck(torch.equal(out_r, out_p), diff, spikes, memory)
