"""``revsnn bench peers``: revsnn's reversible training against what users run instead, on one network.

The network is a zoo ResNet's plain-autograd twin (RevSResNet's coupled residual blocks, IF or LIF neurons)
with its neurons swapped for each peer's own: spikingjelly 2.x multi-step ``IFNode`` / ``LIFNode`` (torch
backend) and snnTorch's ``Leaky`` (``beta = 1`` for IF, stepped over time by a small loop), trained by
plain BPTT; and the spikingjelly network under ``spikingjelly.activation_based.memopt.optimize_memory``
(level 1: checkpoint every coupling block, with its spike compression where a block's input is binary),
the peers' strongest memory saver. Against them: revsnn reversible, reversible with recomputed
boundaries, and revsnn's own plain twin. Memory is the allocator's, per sample (``memory_per_sample``),
and time the median training step (forward, backward, AdamW), interleaved so that machine drift hits all
alike, as wall time and as the process's CPU time (with ``threads=1`` the step's own work, which other
jobs on a shared machine do not stretch). The peers are optional benchmark dependencies (scripts/setup.sh installs them); a missing one is
named, never downloaded.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import statistics
from typing import Any, Callable, Optional

import torch
from torch import nn

from .bench import _variant, intra_op_threads, model_depth, train_step_times
from .errors import RevsnnError
from .memory import memory_per_sample
from .models import get_config
from .neurons import IF, LIF, ATan, Sigmoid
from .reversible import Coupling

__all__ = ["PEERS", "missing_peers", "peer_rows", "PeerError"]

PEERS = {"spikingjelly": "spikingjelly==2.0.0 (with --no-deps, plus loguru)", "snntorch": "snntorch==1.0.0"}


class PeerError(RevsnnError):
    pass


def missing_peers() -> list[str]:
    return [name for name in PEERS if importlib.util.find_spec(name) is None]


def _swap_neurons(module: nn.Module, make: Callable[[nn.Module], nn.Module]) -> None:
    for name, child in module.named_children():
        if isinstance(child, (IF, LIF)):
            setattr(module, name, make(child))
        else:
            _swap_neurons(child, make)


def _sj_surrogate(s):
    from spikingjelly.activation_based import surrogate

    if isinstance(s, ATan):
        return surrogate.ATan(alpha=s.alpha)
    if isinstance(s, Sigmoid):
        return surrogate.Sigmoid(alpha=s.alpha)
    raise PeerError(f"no spikingjelly surrogate for {s!r}.")


def _sj_neuron(n: nn.Module) -> nn.Module:
    from spikingjelly.activation_based import neuron

    common = dict(v_threshold=n.v_threshold, v_reset=n.v_reset, surrogate_function=_sj_surrogate(n.surrogate),
                  detach_reset=n.detach_reset, step_mode="m")
    if isinstance(n, LIF):
        return neuron.LIFNode(tau=n.tau, decay_input=True, **common)
    return neuron.IFNode(**common)


class _SnnTorchSequence(nn.Module):
    """snnTorch neurons are single-step: run one over ``[T, B, ...]``, membrane from rest."""

    def __init__(self, n: nn.Module):
        super().__init__()
        import snntorch
        from snntorch import surrogate

        if isinstance(n.surrogate, ATan):
            grad = surrogate.atan(alpha=n.surrogate.alpha)
        elif isinstance(n.surrogate, Sigmoid):
            grad = surrogate.sigmoid(slope=n.surrogate.alpha)
        else:
            raise PeerError(f"no snnTorch surrogate for {n.surrogate!r}.")
        beta = 1.0 if isinstance(n, IF) else 1.0 - 1.0 / n.tau
        self.leaky = snntorch.Leaky(beta=beta, threshold=n.v_threshold, spike_grad=grad, reset_mechanism="zero")

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        mem = torch.zeros_like(x_seq[0])
        spikes = []
        for x in x_seq:
            s, mem = self.leaky(x, mem)
            spikes.append(s)
        return torch.stack(spikes)


class _ResetFirst(nn.Module):
    """spikingjelly keeps membranes between calls; reset them before each forward, as revsnn models do."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from spikingjelly.activation_based import functional

        functional.reset_net(self.net)
        return self.net(x)


def _build(config: dict, variant: str, example: torch.Tensor) -> nn.Module:
    if variant.startswith("revsnn "):
        return _variant(config, variant.split(" ", 1)[1])
    torch.manual_seed(0)
    net = _variant(config, "plain")
    if variant == "snntorch BPTT":
        _swap_neurons(net, _SnnTorchSequence)
        return net
    _swap_neurons(net, _sj_neuron)
    net = _ResetFirst(net)
    if variant == "spikingjelly memopt":
        from spikingjelly.activation_based import memopt

        # memopt traces through torch code that logs "Triton not available" at WARNING, twice per build, on
        # an install without Triton (any CPU one); nothing is wrong, so the bench's output stays its own.
        quiet = logging.getLogger("torch._library.triton")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            memopt.optimize_memory(net, (Coupling,), lambda m: m(example), level=1, checkpoint_budget="memory",
                                   compress=True)
        finally:
            quiet.setLevel(level)
    return net


def step_batch_default(model: str) -> int:
    """The batch a training step is timed at unless told: the model's own training batch size (its
    preset's), since that is the step users run; 8 for a config without one."""
    return int(get_config(model).get("train", {}).get("batch_size", 8))


def peer_rows(model: str = "revsresnet-digits", time_steps: int = 4, batch_size: int = 8, repeats: int = 5,
              on_row: Optional[Callable[[dict[str, Any]], None]] = None,
              threads: Optional[int] = None, step_batch_size: Optional[int] = None) -> dict[str, Any]:
    """Memory (allocator, per sample, batch B -> 2B) and step time (at ``step_batch_size``, by default the
    model's training batch) of every variant; ratios are ``variant / revsnn reversible``, and
    ``versus_peers`` gives revsnn reversible (and with recomputed boundaries) over each peer variant.

    Steps are timed in rounds, every variant once per round in a fixed order; a time ratio is the median
    over rounds of the two variants' ratio within a round, which cancels the machine's slow drifts (on a
    shared machine a variant's own median moved by 15% from run to run, and a ratio of two medians with
    it). ``threads`` sets torch's intra-op threads for the run (restored after): on a shared machine one
    thread keeps every variant off the OpenMP barriers that load turns into waits, which punish the
    variants with many small ops most."""
    with intra_op_threads(threads):
        return _peer_rows(model, time_steps, batch_size, repeats, on_row,
                          step_batch_size if step_batch_size is not None else step_batch_default(model))


def _paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of ``a / b`` (the two variants' times in the same round)."""
    return statistics.median(x / y for x, y in zip(a, b))


def _peer_rows(model: str, time_steps: int, batch_size: int, repeats: int,
               on_row: Optional[Callable[[dict[str, Any]], None]], step_batch_size: int) -> dict[str, Any]:
    threads = torch.get_num_threads()
    config = get_config(model)
    if config["family"] not in ("revsresnet", "pararevsnn"):
        raise PeerError(f"bench peers compares ResNets (revsresnet / pararevsnn families); {model!r} is "
                        f"{config['family']}.")
    missing = missing_peers()
    variants = ["revsnn reversible", "revsnn reversible-recompute", "revsnn plain"]
    if "spikingjelly" not in missing:
        variants += ["spikingjelly BPTT", "spikingjelly memopt"]
    if "snntorch" not in missing:
        variants += ["snntorch BPTT"]
    shape, classes = config["input_shape"], config["num_classes"]
    loss_fn = nn.CrossEntropyLoss()
    torch.manual_seed(0)
    example = torch.rand(time_steps, step_batch_size, *shape)
    labels = torch.randint(0, classes, (step_batch_size,))
    traced = torch.rand(time_steps, batch_size, *shape)  # what memopt plans its checkpoints on
    models = {}
    for v in variants:
        torch.manual_seed(0)
        models[v] = _build(config, v, traced).train()
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for v in variants:  # warm-up, then interleaved timing
        train_step_times(models[v], example, labels, 1)
    for _ in range(repeats):
        for v in variants:
            times[v] += train_step_times(models[v], example, labels, 1)
    rows = []
    for v in variants:
        per = memory_per_sample(models[v], lambda b: torch.rand(time_steps, b, *shape), (batch_size, 2 * batch_size),
                                lambda out, b: loss_fn(out, torch.randint(0, classes, (b,))))
        row = {"variant": v, "peak_per_sample": per["peak"], "retained_per_sample": per["retained"],
               "step_seconds": statistics.median(w for w, _ in times[v]),
               "step_cpu_seconds": statistics.median(c for _, c in times[v]),
               "step_seconds_each": [w for w, _ in times[v]], "step_cpu_seconds_each": [c for _, c in times[v]]}
        rows.append(row)
        if on_row:
            on_row(row)
    base = rows[0]

    def ratios(a: dict, b: dict) -> dict[str, float]:
        return {"peak": a["peak_per_sample"] / b["peak_per_sample"],
                "retained": a["retained_per_sample"] / b["retained_per_sample"],
                "step_time": _paired_ratio(a["step_seconds_each"], b["step_seconds_each"]),
                "step_cpu_time": _paired_ratio(a["step_cpu_seconds_each"], b["step_cpu_seconds_each"]),
                # the ratio of the two medians, for comparison: the same quantity, more exposed to drift
                "step_time_of_medians": a["step_seconds"] / b["step_seconds"],
                "step_cpu_time_of_medians": a["step_cpu_seconds"] / b["step_cpu_seconds"]}

    for r in rows:
        q = ratios(r, base)
        r.update(peak_ratio=q["peak"], retained_ratio=q["retained"], step_time_ratio=q["step_time"],
                 step_cpu_ratio=q["step_cpu_time"])
    by = {r["variant"]: r for r in rows}
    versus = {}
    for ours in ("revsnn reversible", "revsnn reversible-recompute"):
        for peer in ("spikingjelly BPTT", "spikingjelly memopt", "snntorch BPTT"):
            if peer in by:
                versus[f"{ours} / {peer}"] = ratios(by[ours], by[peer])
    return {"model": model, "depth": model_depth(config), "time_steps": time_steps,
            "batch_sizes": [batch_size, 2 * batch_size], "step_batch_size": step_batch_size,
            "repeats": repeats, "device": "cpu",
            "threads": threads, "load_average": os.getloadavg()[0], "versus_peers": versus,
            "missing": {name: f"not installed; `pip install {PEERS[name]}` adds it" for name in missing},
            "rows": rows}
