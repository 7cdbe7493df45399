"""The one loop every step-by-step target shares: reset, then one ``step`` per time step, recording spikes."""

from __future__ import annotations

import torch

__all__ = ["run_steps"]


def run_steps(target, x, record: bool = False, potentials: bool = False):
    """Run ``x`` ``[T, B, ...]`` on ``target`` (``reset()``, ``step(x_t)``, ``neurons``, ``spikes``) from reset.

    Returns the per-step outputs ``[T, B, ...]`` and, with ``record``, each neuron node's spikes
    ``[T, B, ...]``; with ``potentials`` too, each neuron node's membrane ``[T, B, ...]`` (``target.potentials``)."""
    target.reset()
    outs, rec, pots = [], {n: [] for n in target.neurons}, {n: [] for n in target.neurons}
    for x_t in x:
        outs.append(target.step(x_t))
        if record:
            for n in target.neurons:
                rec[n].append(target.spikes[n])
                if potentials:
                    pots[n].append(target.potentials[n])
    outputs = torch.stack(outs)
    if not record:
        return outputs
    spikes = {n: torch.stack(v) for n, v in rec.items()}
    if not potentials:
        return outputs, spikes
    return outputs, spikes, {n: torch.stack(v) for n, v in pots.items()}
