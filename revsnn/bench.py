"""Benchmarks: activation memory against depth, and training-step time. Numbers, never assertions.

Memory variants of one model, all with identical parameters:

- ``reversible``: the model as trained (reversible blocks keep only their sequence outputs);
- ``reversible-recompute``: also recompute the non-reversible stem, downsample layers and head in
  backward (ResNet families) or the tokenizer, stage by stage (RevSFormer), keeping only their inputs;
- ``reversible-chunked`` (ResNet families): ``reversible-recompute`` with every recompute in backward run
  one sample at a time (``backward_chunk`` = ``CHUNK``, revsnn.chunked): the lowest peak, the slowest step;
  its per-sample slope leaves out the chunk's own working set, which does not grow with the batch (the
  rows carry the peak at both batch sizes, ``peak_at_batch_sizes``, to show what it costs);
- ``plain``: the plain-autograd twin;
- ``checkpoint``: the twin with ``torch.utils.checkpoint`` around every coupling block, what a user would
  otherwise reach for (it keeps each block's input; its recompute starts the block's neurons at rest,
  but it updates BatchNorm statistics twice, which is why the reversible Function does its own
  recompute).

Depth is counted in weight layers on the longest path (the papers' rule for ResNets: RevSResNet37 ->
37); a sweep scales blocks per stage (ResNets), blocks (RevSFormer), blocks per level (T-RevSNN) or
hidden layers (reversible node network).

Every figure is what the allocator holds during one training step (``revsnn.memory.memory_per_sample``),
per sample as the slope between batch sizes B and 2B: ``retained`` (alive when backward starts) and
``peak`` (over forward and backward; on CUDA the papers' ``max_memory_allocated`` difference), with the
saved-tensor meter's breakdown beside them (``saved``, ``neuron_state``, ``other``, ``transient``).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .memory import memory_per_sample
from .models import build_model, get_config
from .neurons import reset_states
from .reversible import ReversibleSequence, plain_twin

__all__ = ["VARIANTS", "variants_of", "variant_family", "chunk_of", "model_depth", "memory_rows", "train_step_seconds", "train_step_times",
           "speed_rows", "intra_op_threads", "DEFAULT_MEMORY_SWEEP"]

VARIANTS = ("reversible", "reversible-recompute", "reversible-chunked", "plain", "checkpoint")
# Samples per chunk of the ``reversible-chunked`` variant: one, the least memory.
CHUNK = 1


class _Checkpointed(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x1, x2):
        return checkpoint(self._run, x1, x2, use_reentrant=False)

    def _run(self, x1, x2):
        # The recompute in backward must start the block's neurons at rest, as the forward did (models
        # reset them at the start of each forward); torch's checkpoint would otherwise replay it from the
        # membranes the forward left behind.
        reset_states(self.block)
        return self.block(x1, x2)


def _variant(config: dict[str, Any], variant: str) -> nn.Module:
    if variant == "reversible-recompute":
        return build_model({**config, "recompute_boundaries": True})
    if variant_family(variant) == "reversible-chunked":
        return build_model({**config, "recompute_boundaries": True, "backward_chunk": chunk_of(variant)})
    model = build_model(config)
    if variant == "reversible":
        return model
    twin = plain_twin(model)
    if variant == "checkpoint":
        for m in twin.modules():
            if isinstance(m, ReversibleSequence):
                m.blocks = nn.ModuleList(_Checkpointed(b) for b in m.blocks)
    return twin


def chunk_of(variant: str) -> int:
    """Samples per chunk of a ``reversible-chunked`` variant: ``CHUNK``, or N for ``reversible-chunked-N``
    (``bench train-speed --pairs`` times other chunk sizes)."""
    rest = variant[len("reversible-chunked"):]
    return CHUNK if not rest else int(rest[1:])


def variant_family(variant: str) -> str:
    """``reversible-chunked`` for ``reversible-chunked-N`` (N a whole number of at least 1); else ``variant``."""
    rest = variant[len("reversible-chunked"):] if variant.startswith("reversible-chunked") else None
    if rest and rest[0] == "-" and rest[1:].isdigit() and int(rest[1:]) >= 1:
        return "reversible-chunked"
    return variant


def model_depth(config: dict[str, Any]) -> int:
    """Layer depth by the papers' rule: weight layers on the longest path (RevSResNet37 -> 37)."""
    family = config["family"]
    if family in ("revsresnet", "pararevsnn"):
        stages = len(config["blocks"])
        return 1 + 4 * sum(config["blocks"]) + (stages - 1) + 1
    if family == "revsformer":
        return 5 + 6 * config["depth"] + 1  # tokenizer convs, per block q|k|v + proj + 2 MLP convs, head
    if family == "trevsnn":  # stem, then per level a fuse conv and 4 convs a block, then the head
        return len(config["stem"]) + len(config["channels"]) * (1 + 4 * config["blocks_per_level"]) + 1
    if family == "revnode":
        return len(config["hidden"]) + 1
    if family == "scnn":  # two convolutions and the linear readout; fixed, not swept
        return 3
    raise ValueError(f"no depth rule for family {family!r}.")


def _with_depth(config: dict[str, Any], scale: int) -> dict[str, Any]:
    config = dict(config)
    if config["family"] in ("revsresnet", "pararevsnn"):
        config["blocks"] = [scale] * len(config["blocks"])
    elif config["family"] == "revsformer":
        config["depth"] = scale
    elif config["family"] == "trevsnn":
        config["blocks_per_level"] = scale
    elif config["family"] == "revnode":
        config["hidden"] = [config["hidden"][0]] * scale
    else:
        raise ValueError(f"no depth sweep for family {config['family']!r}.")
    return config


# (model, depth scales) of the default sweep; the named paper configs are measured as they are.
DEFAULT_MEMORY_SWEEP: list[tuple[str, Optional[list[int]]]] = [
    ("revsresnet-digits", [1, 2, 4, 8]),
    ("pararevsnn-digits", [1, 2, 4, 8]),
    ("revsformer-digits", [1, 2, 4, 8]),
    ("trevsnn-digits", [1, 2, 4, 8]),
    ("revnode-digits", [1, 2, 4, 8]),
    ("revsresnet37", None),
    ("revsformer-4-384", None),
]


def variants_of(family: str) -> tuple[str, ...]:
    """The variants that exist for a family: boundary recompute exists for the ResNets and RevSFormer, the
    chunked backward for the ResNets (RevSFormer's attention is not among the layers it can split), and
    the checkpoint variant wraps coupling blocks, which T-RevSNN columns and the reversible node do not
    have. The plain SCNN baseline has nothing reversible: only ``plain``."""
    if family == "scnn":
        return ("plain",)
    if family in ("revsresnet", "pararevsnn"):
        return VARIANTS
    if family == "revsformer":
        return ("reversible", "reversible-recompute", "plain", "checkpoint")
    return ("reversible", "plain")


def memory_rows(sweep: Iterable[tuple[str, Optional[list[int]]]], time_steps: int = 4, batch_size: int = 2,
                variants: Iterable[str] = VARIANTS, device: str = "cpu",
                on_row: Optional[Callable[[dict[str, Any]], None]] = None) -> list[dict[str, Any]]:
    """Measure every (model, depth, variant); ``on_row`` sees each row as it is measured."""
    rows = []
    # On the CPU with one intra-op thread: the per-sample peak compares the two batch sizes' steps event by
    # event, and multi-threaded oneDNN kernels allocate per-thread scratch that differs between the two
    # steps, so the events would not line up and the figure would fall back to the slope of two peaks
    # (taken at two different moments). Bytes, not time, are measured here: one thread costs nothing.
    with intra_op_threads(None if device.startswith("cuda") else 1):
        for name, scales in sweep:
            base = get_config(name)
            configs = [base] if not scales or base["family"] == "scnn" else [_with_depth(base, s) for s in scales]
            for config in configs:
                for variant in variants:
                    if variant not in variants_of(config["family"]):
                        continue
                    row = _measure(config, variant, time_steps, batch_size, device)
                    rows.append(row)
                    if on_row:
                        on_row(row)
    return rows


@contextlib.contextmanager
def intra_op_threads(threads: Optional[int]):
    """torch's intra-op threads set to ``threads`` for the block (None: left as they are), restored after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


MEMORY_KEYS = ("retained", "peak", "saved", "neuron_state", "other", "transient")


def _measure(config: dict[str, Any], variant: str, time_steps: int, batch_size: int, device: str) -> dict:
    torch.manual_seed(0)
    model = _variant(config, variant).to(device).train()
    shape, classes = config["input_shape"], config["num_classes"]
    loss_fn = nn.CrossEntropyLoss()

    def make_input(b: int) -> torch.Tensor:
        return torch.rand(time_steps, b, *shape, device=device)

    def loss(out: torch.Tensor, b: int) -> torch.Tensor:
        return loss_fn(out, torch.randint(0, classes, (b,), device=device))

    if device.startswith("cuda"):  # warm-up: cuDNN workspaces and allocator pools
        loss(model(make_input(batch_size)), batch_size).backward()
    per = memory_per_sample(model, make_input, (batch_size, 2 * batch_size), loss)
    row = {"model": config["name"], "family": config["family"], "variant": variant, "depth": model_depth(config),
           "time_steps": time_steps, "batch_sizes": [batch_size, 2 * batch_size], "device": device,
           "method": "cuda memory_allocated / max_memory_allocated" if device.startswith("cuda")
           else "cpu profiler memory events"}
    row.update({f"{k}_per_sample": per[k] for k in MEMORY_KEYS})
    # What one step holds at each batch size (from the start of the step): the per-sample slope leaves out
    # whatever does not grow with the batch, the weight gradients and a chunked backward's working set.
    row["peak_at_batch_sizes"] = per["peak_at_batch_sizes"]
    row["retained_at_batch_sizes"] = per["retained_at_batch_sizes"]
    return row


def train_step_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> list[float]:
    """Wall time of full training steps (forward, backward, AdamW step), after one warm-up step."""
    return [wall for wall, _ in train_step_times(model, x, y, repeats)]


def train_step_times(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> list[tuple[float, float]]:
    """``(wall, cpu)`` seconds of full training steps after one warm-up step. ``cpu`` is the process's CPU
    time (``time.process_time``): with one intra-op thread it is the step's own work, which other jobs on
    a shared machine do not stretch the way they stretch wall time (with several threads it also counts
    their spin-waits); on CUDA it is only the host's share and not reported by the callers."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for i in range(repeats + 1):
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        t0, c0 = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        if i:
            times.append((time.perf_counter() - t0, time.process_time() - c0))
    return times


def speed_rows(pairs: Iterable[tuple[str, str, str, str]], batch_size: int, time_steps: int, repeats: int,
               device: str = "cpu", on_row: Optional[Callable[[dict[str, Any]], None]] = None,
               threads: Optional[int] = None) -> list[dict]:
    """For each (label, model A, variant A, model B, variant B)-style pair ``(a_name, a_variant, b_name,
    b_variant)``: the median training-step time of each and the ratio A / B, measured interleaved.
    ``threads`` sets torch's intra-op threads for the run (restored after)."""
    with intra_op_threads(threads):
        return _speed_rows(pairs, batch_size, time_steps, repeats, device, on_row)


def _speed_rows(pairs, batch_size, time_steps, repeats, device, on_row) -> list[dict]:
    rows = []
    for a_name, a_variant, b_name, b_variant in pairs:
        a_cfg, b_cfg = get_config(a_name), get_config(b_name)
        torch.manual_seed(0)
        x = torch.rand(time_steps, batch_size, *a_cfg["input_shape"], device=device)
        y = torch.randint(0, a_cfg["num_classes"], (batch_size,), device=device)
        models = {}
        for key, cfg, variant in (("a", a_cfg, a_variant), ("b", b_cfg, b_variant)):
            torch.manual_seed(0)
            models[key] = _variant(cfg, variant).to(device).train()
        times = {"a": [], "b": []}
        for _ in range(repeats):  # interleaved, so that drifts of the machine hit both alike
            for key in ("a", "b"):
                times[key] += train_step_times(models[key], x, y, 1)
        med_a, med_b = (statistics.median(w for w, _ in times[k]) for k in ("a", "b"))
        row = {"a": f"{a_name} ({a_variant})", "b": f"{b_name} ({b_variant})", "median_a_s": med_a,
               "median_b_s": med_b, "ratio": med_a / med_b}
        if device == "cpu":
            cpu_a, cpu_b = (statistics.median(c for _, c in times[k]) for k in ("a", "b"))
            row.update({"median_cpu_a_s": cpu_a, "median_cpu_b_s": cpu_b, "cpu_ratio": cpu_a / cpu_b})
        row.update({"repeats": repeats, "batch_size": batch_size, "time_steps": time_steps, "device": device,
                    "threads": torch.get_num_threads(), "load_average": os.getloadavg()[0]})
        rows.append(row)
        if on_row:
            on_row(row)
    return rows
