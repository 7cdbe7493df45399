"""Activation memory: what a forward pass keeps alive for backward (DESIGN §5).

On any device, ``ActivationMeter`` counts the bytes that autograd saves for backward, through
``torch.autograd.graph.saved_tensors_hooks``: every tensor an op or a custom Function's
``save_for_backward`` keeps is packed once. Tensors are deduplicated by storage (views of one buffer
count once) and storages of parameters and buffers are excluded: those exist whether or not anything
is trained.

Blind spots, by construction: tensors a Function keeps as ``ctx`` attributes, and module state such as
neuron membranes, are not packed (the reversible sequence's output, kept as a ``ctx`` alias so that
backward can free it early, is one of them): the meter is a breakdown, the allocator measures below are
the figures of record.

On a GPU, ``cuda_bytes_per_sample`` measures the papers' metric without weights and optimizer state:
``(max_memory_allocated(B2) - max_memory_allocated(B1)) / (B2 - B1)``.

``step_memory`` and ``memory_per_sample`` measure what the allocator really holds during one training
step (DESIGN §5, §8): the bytes alive when backward starts ("retained") and the peak over forward and
backward, both counted from the start of the step (so the model's weights, and anything allocated
before, are not in them), per sample as the slope between two batch sizes (which also removes the
gradient buffers and everything else that does not scale with the batch). On the CPU the allocator's
own report comes through the profiler's memory events (``torch.profiler`` with ``profile_memory``: each
allocation and free with its size, in time order); on CUDA from ``memory_allocated`` and
``max_memory_allocated``. On the CPU the peak per sample compares the two steps at the same moment: event
by event where both make the same allocations, else top-level op by top-level op (the most bytes alive
during each; ``_cpu_allocations``). The saved-tensor meter runs in the same step as a breakdown: ``saved``
(tensors saved for backward), ``neuron_state`` (membranes held by neuron modules after the forward),
``other`` (the rest of what is retained: the input, the output, ``ctx`` attributes) and ``transient``
(peak minus retained: what backward and forward allocate on top).
"""

from __future__ import annotations

import gc
import os
import weakref
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor, nn

__all__ = ["ActivationMeter", "activation_bytes", "activation_bytes_per_sample", "cuda_bytes_per_sample",
           "step_memory", "memory_per_sample", "neuron_state_bytes"]


def _storage_key(t: Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


class _Packed:
    """What autograd holds instead of a saved tensor while the meter is active.

    A weak reference to it tells whether autograd still keeps the tensor: a saved tensor whose graph
    node was already dropped (e.g. the last membrane update, which nothing reads) is not retained, and
    its freed address may be reused by a later tensor, so only the living ones are counted.
    """

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: Tensor):
        self.tensor = tensor


class ActivationMeter:
    """Context manager that measures the unique storages saved for backward inside it.

    ``exclude``: modules whose parameters and buffers are not activations (usually the model itself).
    When the block ends, ``nbytes`` is the activation memory still retained for backward and ``count``
    the number of storages that hold it.
    """

    def __init__(self, exclude: Iterable[nn.Module] | nn.Module | None = None):
        if isinstance(exclude, nn.Module):
            exclude = [exclude]
        self._excluded: set[tuple[str, int]] = set()
        for m in exclude or []:
            for t in [*m.parameters(), *m.buffers()]:
                self._excluded.add(_storage_key(t))
        self._packed: list[weakref.ref] = []
        self._hooks = None
        self.nbytes = 0
        self.count = 0

    def _pack(self, t: Tensor) -> _Packed:
        # Detached: a saved *output* would otherwise keep its own grad_fn alive through this object, a
        # reference cycle through C++ that Python's collector cannot break. Same storage, same values.
        packed = _Packed(t.detach())
        self._packed.append(weakref.ref(packed))
        return packed

    @staticmethod
    def _unpack(packed: _Packed) -> Tensor:
        return packed.tensor

    def __enter__(self) -> "ActivationMeter":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        gc.collect()
        storages: dict[tuple[str, int], int] = {}
        for ref in self._packed:
            packed = ref()
            if packed is None:
                continue
            key = _storage_key(packed.tensor)
            if key not in self._excluded:
                storages[key] = packed.tensor.untyped_storage().nbytes()
        self._packed = []
        self.nbytes = sum(storages.values())
        self.count = len(storages)


def activation_bytes(model: nn.Module, *inputs: Tensor, loss_fn: Optional[Callable[[Tensor], Tensor]] = None,
                     backward: bool = True) -> int:
    """Bytes of activations ``model(*inputs)`` retains for backward (then runs backward to free them)."""
    with ActivationMeter(exclude=model) as meter:
        out = model(*inputs)
    if backward:
        loss = loss_fn(out) if loss_fn is not None else out.float().sum()
        loss.backward()
    return meter.nbytes


def cuda_bytes_per_sample(step: Callable[[int], None], batch_sizes: tuple[int, int],
                          device: torch.device | str = "cuda") -> float:
    """Per-sample peak memory of ``step(batch_size)`` on a CUDA device, from two batch sizes.

    ``step`` must run one full training step (forward and backward) at the given batch size. The
    difference of the two peaks divided by the difference of the batch sizes removes everything that
    does not scale with the batch: weights, gradients, optimizer state, the CUDA context.
    """
    b1, b2 = batch_sizes
    if b2 <= b1:
        raise ValueError("batch_sizes must be increasing, e.g. (8, 16).")
    peaks = []
    for b in (b1, b2):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        step(b)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device))
    return (peaks[1] - peaks[0]) / (b2 - b1)


def activation_bytes_per_sample(model: nn.Module, x: Tensor, batch_dim: int = 1,
                                loss_fn: Optional[Callable[[Tensor], Tensor]] = None) -> float:
    """Activation bytes retained for backward per sample of ``x`` (time-first input: batch on dim 1)."""
    return activation_bytes(model, x, loss_fn=loss_fn) / x.shape[batch_dim]


# --------------------------------------------------------------------------------------------------------
# What the allocator holds during a training step.


def neuron_state_bytes(model: nn.Module) -> int:
    """Bytes of the membranes that ``model``'s neuron modules hold now (unique storages)."""
    from .neurons import SpikingNeuron  # neurons imports nothing from here; local to keep this module light

    storages: dict[tuple[str, int], int] = {}
    for m in model.modules():
        v = getattr(m, "v", None) if isinstance(m, SpikingNeuron) else None
        if isinstance(v, Tensor):
            storages[_storage_key(v)] = v.untyped_storage().nbytes()
    return sum(storages.values())


def _walk(nodes):
    for n in nodes:
        yield n
        yield from _walk(n.children)


_FORWARD_MARK = "revsnn::forward"


def _cpu_allocations(prof) -> tuple[list[tuple[int, int, int]], int, int]:
    """(time, signed size, unit) of every CPU allocation and free the profiler saw, in time order, the end
    time of the forward mark and the number of units. Frees of blocks allocated before profiling are not
    reported, by design of the profiler (it cannot know their size), so the running sum counts only what
    the step allocated.

    A unit is one top-level operation of the step: an op the forward mark encloses directly (a layer's
    aten op, a custom Function's forward), or one outside it (an autograd node's backward, a free outside
    any op). The same program runs the same units in the same order at every batch size, even where the
    allocations inside a unit differ (oneDNN's convolutions pick their scratch buffers by shape), so
    ``memory_per_sample`` can align two steps unit by unit when their events do not line up."""
    events, forward_end = [], None
    units = []
    for root in prof.profiler.kineto_results.experimental_event_tree():
        if root.name == _FORWARD_MARK:
            forward_end = root.end_time_ns
            units += list(root.children)
        else:
            units.append(root)
    for i, unit in enumerate(units):
        for n in _walk([unit]):
            fields = n.extra_fields
            if type(fields).__name__ == "_ExtraFields_Allocation" and str(fields.device).startswith("cpu"):
                events.append((n.start_time_ns, int(fields.alloc_size), i))
    if forward_end is None:
        raise RuntimeError("the profiler recorded no forward mark; is another profiler running?")
    events.sort()
    return events, forward_end, len(units)


def step_memory(model: nn.Module, make_input: Callable[[], Tensor],
                loss_fn: Optional[Callable[[Tensor], Tensor]] = None) -> dict[str, int]:
    """One training step (``loss_fn(model(make_input())).backward()``), measured by the allocator.

    Returns bytes counted from the start of the step: ``retained`` (alive when backward starts),
    ``peak`` (the maximum over forward and backward), and the meter's ``saved`` and ``neuron_state``
    at the end of the forward. The input is made inside the step, so it counts, as on a GPU.
    Gradients are set to None first, so each call allocates them afresh (batch-independent).
    """
    return _measured_step(model, make_input, loss_fn)[0]


def _measured_step(model: nn.Module, make_input: Callable[[], Tensor],
                   loss_fn: Optional[Callable[[Tensor], Tensor]] = None) -> tuple[dict[str, int], Optional[tuple]]:
    """``step_memory``'s figures, and on the CPU ``(bytes alive after each allocator event, the most bytes
    alive during each unit)`` (None on CUDA), which ``memory_per_sample`` aligns across two batch sizes."""
    from .neurons import reset_states

    loss_fn = loss_fn or (lambda out: out.float().sum())
    model.zero_grad(set_to_none=True)
    reset_states(model)  # free the previous step's membranes before counting starts
    gc.collect()
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    result: dict[str, int] = {}

    def forward() -> Tensor:
        x = make_input()
        with ActivationMeter(exclude=model) as meter:
            out = model(x)
        loss = loss_fn(out)
        del x, out
        result["saved"] = meter.nbytes
        result["neuron_state"] = neuron_state_bytes(model)
        return loss

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        loss = forward()
        torch.cuda.synchronize(device)
        result["retained"] = torch.cuda.memory_allocated(device) - base
        loss.backward()
        del loss
        torch.cuda.synchronize(device)
        result["peak"] = torch.cuda.max_memory_allocated(device) - base
        return result, None

    from torch.profiler import ProfilerActivity, profile, record_function

    # torch's profiler back end (kineto) prints two log lines to stderr at every start and stop
    # ("USDT: ... profiler_start"), dozens per bench run, at any of its documented log levels up to 5;
    # 6 silences them. Read when the profiler first starts, so setting it here is in time; a user's own
    # setting wins.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with record_function(_FORWARD_MARK):
            loss = forward()
        loss.backward()
        del loss
    events, forward_end, n_units = _cpu_allocations(prof)
    alive = peak = retained = 0
    trace = []
    unit_peaks: list[Optional[int]] = [None] * n_units
    for t, size, unit in events:
        alive += size
        peak = max(peak, alive)
        trace.append(alive)
        unit_peaks[unit] = alive if unit_peaks[unit] is None else max(unit_peaks[unit], alive)
        if t <= forward_end:
            retained = alive
    result["retained"], result["peak"] = retained, peak
    # A unit without allocations holds what the one before it left (units run one after the other).
    carried = 0
    for i, p in enumerate(unit_peaks):
        carried = unit_peaks[i] = p if p is not None else carried
    # The traces: bytes alive after each event, and the most alive during each unit, for
    # memory_per_sample's aligned peak.
    return result, (trace, unit_peaks)


def _aligned_peak(t1: list[int], t2: list[int], b1: int, b2: int) -> Optional[float]:
    """The peak of the per-sample bytes over the step: the same program at two batch sizes makes the same
    allocations in the same order, so bytes alive after the i-th event differ only by what scales with
    the batch; their slope's maximum over i is the peak per sample. The slope of the two peaks can be
    off by whatever does not scale with the batch (weight gradients, the optimizer's buffers): at a small
    batch they move the moment of the peak, so it is compared at two different moments. None when the
    two sequences do not line up (a different number of allocations, or of units for the unit traces)."""
    if len(t1) != len(t2) or not t1:
        return None
    return max((a2 - a1) / (b2 - b1) for a1, a2 in zip(t1, t2))


def memory_per_sample(model: nn.Module, make_input: Callable[[int], Tensor], batch_sizes: tuple[int, int],
                      loss_fn: Optional[Callable[[Tensor, int], Tensor]] = None) -> dict[str, float]:
    """Per-sample ``retained``, ``peak``, ``saved``, ``neuron_state``, ``other`` and ``transient`` bytes:
    the slope of ``step_memory`` between two batch sizes; ``peak_at_batch_sizes`` and
    ``retained_at_batch_sizes``: the two steps' own figures (bytes). ``make_input(b)`` builds a batch of ``b``;
    ``loss_fn(out, b)`` its loss (default: the sum of the output)."""
    b1, b2 = batch_sizes
    if b2 <= b1:
        raise ValueError("batch_sizes must be increasing, e.g. (2, 4).")
    steps = []
    # One unmeasured step first (its figures dropped): what is made once per process or model on first use
    # (spikepack's unpack table, a calibration, oneDNN's primitives) would otherwise be allocated inside the
    # first measured step only; the two steps' events would then not line up and the peak would fall back
    # to the slope of the two peaks, so the first model measured in a process read differently.
    for b in (b1, b1, b2):
        fn = None if loss_fn is None else (lambda out, b=b: loss_fn(out, b))
        steps.append(_measured_step(model, lambda b=b: make_input(b), fn))
    steps = steps[1:]
    steps, traces = [s for s, _ in steps], [t for _, t in steps]
    per = {k: (steps[1][k] - steps[0][k]) / (b2 - b1) for k in steps[0]}
    if traces[0] is not None and traces[1] is not None:
        (events1, units1), (events2, units2) = traces
        # Event by event where the two steps allocate alike; otherwise unit by unit (one top-level op each,
        # see _cpu_allocations), which still compares the same moment of the step. Only where even the
        # units differ does the peak stay the slope of the two peaks, which compares two different moments
        # (at batch 2 of RevSResNet37 the plain twin's peak falls late in backward, where the weight
        # gradients are alive, and at batch 4 early: that slope read 48.6 MiB, below its 53.3 retained).
        aligned = _aligned_peak(events1, events2, b1, b2)
        if aligned is None:
            aligned = _aligned_peak(units1, units2, b1, b2)
        if aligned is not None:
            per["peak"] = aligned
    per["other"] = per["retained"] - per["saved"] - per["neuron_state"]
    per["transient"] = per["peak"] - per["retained"]
    per["peak_at_batch_sizes"] = [steps[0]["peak"], steps[1]["peak"]]
    per["retained_at_batch_sizes"] = [steps[0]["retained"], steps[1]["retained"]]
    return per
