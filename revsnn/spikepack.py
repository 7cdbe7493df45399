"""Spikes kept as bits: tensors saved for backward whose every value is 0 or 1 are stored packed, eight
to a byte (issue 18, Deliver 3).

A spike tensor is saved by the layer that reads it (a convolution keeps its input for the weight
gradient), and in float32 it costs 32 bits per spike where one carries all of it. ``spikes_as_bits``
installs ``torch.autograd.graph.saved_tensors_hooks`` that test each saved floating tensor and pack the
binary ones; backward unpacks them on use, exactly (0 and 1 are exact in every float dtype). spikingjelly's
``memopt`` compresses spikes the same way; this is our own because torch has no ``packbits`` and the test
is four lines.

The reversible Functions use it around every recompute in backward, where the recomputed block's graph is
the backward's working set (the peak); the plain twin stays plain autograd, as users run it.

Spikes that can be made again from what their neuron keeps for backward anyway (``SpikeSource``: the
neuron's membranes, or its input and one more run of its recurrence, which its own backward then reuses)
are not even packed: a saved view of them is kept as that source, no bytes and no pass to pack or unpack.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Optional, Union

import torch
from torch import Tensor

__all__ = ["pack_bits", "unpack_bits", "spikes_as_bits", "mark_binary", "SpikeSource", "FromMembranes",
           "MIN_PACKED_NUMEL"]

# Tensors with fewer elements are not tested. Kept tiny on purpose: a threshold that a batch's tensor
# crosses at one batch size and not at another would make the same step allocate differently at two
# batch sizes, which the per-sample measure (revsnn.memory) compares event by event.
MIN_PACKED_NUMEL = 8

_SHIFTS = torch.arange(8, dtype=torch.uint8)

# Issue 18 (speed): packing as a product and unpacking as a table lookup. On this CPU build integer and
# bool elementwise ops (shifts, casts to uint8, comparisons with a bool result) run 5-10 times slower than
# float ops, and the shift/sum packing was a tenth of a reversible training step. For float32 / float64:
# bits = spikes viewed [n / 8, 8] @ (1, 2, ..., 128) (exact: integers below 256), cast once on n / 8
# values; unpack = rows of a [256, 8] table of bit patterns, gathered by the packed byte. Other dtypes
# (half precision) keep the shift form. Everything is allocated by torch, so the allocator measures see it.
_FAST = (torch.float32, torch.float64)
_TABLES: dict = {}


def _table(dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    key = (dtype, str(device))
    if key not in _TABLES:
        bits = (torch.arange(256)[:, None] >> torch.arange(8)) & 1
        _TABLES[key] = (bits.to(dtype=dtype, device=device), (2.0 ** torch.arange(8)).to(dtype=dtype, device=device))
    return _TABLES[key]


class _Packed:
    __slots__ = ("bits", "shape", "dtype", "device", "numel")

    def __init__(self, bits: Tensor, shape: torch.Size, dtype: torch.dtype, device: torch.device, numel: int):
        self.bits, self.shape, self.dtype, self.device, self.numel = bits, shape, dtype, device, numel


def pack_bits(t: Tensor) -> _Packed:
    """``t`` (values 0 or 1) as one bit per element, little-endian within each byte."""
    n = t.numel()
    pad = (-n) % 8
    if t.dtype in _FAST:
        flat = t.detach().reshape(-1)
        if pad:
            flat = torch.cat((flat, flat.new_zeros(pad)))
        bits = torch.mv(flat.view(-1, 8), _table(t.dtype, t.device)[1]).to(torch.uint8)
        return _Packed(bits, t.shape, t.dtype, t.device, n)
    flat = t.detach().reshape(-1).to(torch.uint8)
    if pad:
        flat = torch.cat((flat, flat.new_zeros(pad)))
    bits = (flat.view(-1, 8) << _SHIFTS.to(flat.device)).sum(-1, dtype=torch.uint8)
    return _Packed(bits, t.shape, t.dtype, t.device, n)


def unpack_bits(p: _Packed) -> Tensor:
    if p.dtype in _FAST:
        flat = torch.index_select(_table(p.dtype, p.bits.device)[0], 0, p.bits.int()).view(-1)
    else:
        flat = ((p.bits.unsqueeze(-1) >> _SHIFTS.to(p.bits.device)) & 1).reshape(-1).to(p.dtype)
    return flat[: p.numel].reshape(p.shape)


# Tensors known to hold only 0 and 1: the fused neurons' spike outputs mark themselves (``mark_binary``),
# so the saved-tensor hook needs no pass over their values (issue 18, speed: the test was three bool ops
# over every saved tensor). The mark records the version counter, which views share and every in-place op
# bumps, so a spike tensor changed in place afterwards is tested again rather than trusted.
_MARK = "_revsnn_binary_version"
_SOURCE = "_revsnn_spikes_of"


class SpikeSource:
    """How a spike tensor can be made again in backward without keeping it: ``spikes()`` returns the
    whole tensor (its dtype, the marked tensor's shape), ``valid()`` whether its ingredients are unchanged
    since the spikes were fired. ``mark_binary(t, source)`` attaches one."""

    def valid(self) -> bool:
        raise NotImplementedError

    def spikes(self) -> Tensor:
        raise NotImplementedError


class FromMembranes(SpikeSource):
    """Spikes that are exactly ``membranes > v_threshold``, the membranes kept for backward by the neuron
    that fired them: recomputed by that one comparison."""

    __slots__ = ("membranes", "version", "v_threshold")

    def __init__(self, membranes: Tensor, v_threshold: float):
        self.membranes, self.version, self.v_threshold = membranes, membranes._version, float(v_threshold)

    def valid(self) -> bool:
        return self.membranes._version == self.version

    def spikes(self) -> Tensor:
        h = self.membranes
        # h > theta into a float tensor of h's dtype: the very operation the neuron fired with (revsnn.neurons).
        return torch.gt(h, self.v_threshold, out=torch.empty_like(h))


def mark_binary(t: Tensor, source: Optional[SpikeSource] = None) -> Tensor:
    """Record that ``t`` (and every view of it, until it is modified in place) holds only 0 and 1.

    With ``source``: ``t`` can be made again from what its neuron keeps for backward anyway. A saved view
    of ``t`` then costs nothing: it is kept as that source and made again on use, not packed (issue 18,
    speed: packing and unpacking were most of what keeping spikes as bits cost, and this also drops the
    bits). Safe because every reader of ``t`` is downstream of its neuron, so the reader's backward, which
    unpacks, runs before the neuron's own backward (which may turn what it kept into its gradient in
    place); the source is checked on use all the same."""
    setattr(t, _MARK, t._version)
    if source is not None:
        setattr(t, _SOURCE, source)
    return t


# How many spikes_as_bits contexts that pack are open, per thread: saved-tensor hooks are per thread too
# (a recompute on CUDA runs in autograd's device thread, hooks and forward alike), so a forward running
# meanwhile in another thread attaches no source it would never use.
_ACTIVE = threading.local()


def packing() -> bool:
    """Whether saved spikes are being packed here (inside ``spikes_as_bits``, in this thread): only then is
    a ``SpikeSource`` worth attaching. Outside, a source would keep what it refers to alive for as long as
    anyone holds the spikes (a monitor that records them), for nothing."""
    return getattr(_ACTIVE, "depth", 0) > 0


def _marked(t: Tensor) -> bool:
    for u in (t, t._base):
        if u is not None and getattr(u, _MARK, None) == u._version:
            return True
    return False


def _all_binary(t: Tensor) -> bool:
    return bool(torch.logical_or(t == 0, t == 1).all())


# Nodes whose output is a weighted sum or a normalisation: real-valued in any network that trains (a
# convolution of spikes with trained weights is not 0 / 1). A tensor they produced is kept as it is without
# sampling its values; were one ever binary, it is merely not packed, which changes no number.
_REAL_VALUED = frozenset({"ConvolutionBackward0", "NativeBatchNormBackward0", "CudnnBatchNormBackward0",
                          "AddmmBackward0", "MmBackward0", "BmmBackward0", "_FrozenBatchNormBackward"})
_VIEWS = frozenset({"ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0"})


def producer(t: Tensor) -> Optional[str]:
    """The type name of the autograd node that computed ``t``, looking through reshapes (the time folding of
    ``TimeDistributed``); None for a leaf or a tensor outside any graph."""
    g = t.grad_fn
    while g is not None and type(g).__name__ in _VIEWS:
        g = g.next_functions[0][0]
    return None if g is None else type(g).__name__


def _is_binary(t: Tensor) -> bool:
    if t.grad_fn is None or not t.is_floating_point() or t.numel() < MIN_PACKED_NUMEL:
        # Leaves and views of leaves (parameters, buffers, BatchNorm's statistics, inputs) are kept as
        # they are: someone else holds them, so bits of them would add memory, not save it.
        return False
    if _marked(t):
        return True
    if producer(t) in _REAL_VALUED:
        return False
    # 64 values spread over the whole tensor first, in Python: a real-valued tensor (a convolution's
    # output saved by BatchNorm) almost always fails there, for the cost of one small copy instead of
    # three passes over all of it; exact either way. Spread, not leading: the first time step's
    # convolution output is mostly exact zeros (few neurons fire at t = 0), and a leading sample passed.
    flat = t.detach().reshape(-1)
    n = flat.numel()
    sample = flat[:: max(1, n // 64)][:64].tolist()
    if not all(v == 0.0 or v == 1.0 for v in sample):
        return False
    return n <= 64 or _all_binary(t)


class _Derived:
    """A saved spike tensor kept as its ``SpikeSource`` (``mark_binary(t, source)``)."""
    __slots__ = ("source", "shape")

    def __init__(self, source: SpikeSource, shape: torch.Size):
        self.source, self.shape = source, shape

    def spikes(self) -> Tensor:
        if not self.source.valid():
            raise RuntimeError("What a saved spike tensor is made again from was modified in place before it "
                               "was used (revsnn.spikepack); backward cannot reproduce the spikes.")
        return self.source.spikes().view(self.shape)


def _derived(t: Tensor) -> Optional[_Derived]:
    """``t`` as a ``_Derived`` when it is the whole of a marked spike tensor with a source (itself or a
    contiguous view of all of it, unmodified, the source's ingredients unmodified), else None."""
    base = t if t._base is None else t._base
    source = getattr(base, _SOURCE, None)
    if source is None or getattr(base, _MARK, None) != base._version or not source.valid():
        return None
    if not t.is_contiguous() or not base.is_contiguous() or t.storage_offset() != 0 or t.numel() != base.numel():
        return None
    return _Derived(source, t.shape)


def _unpack(p: Union[Tensor, _Packed, _Derived]) -> Tensor:
    if isinstance(p, _Packed):
        return unpack_bits(p)
    if isinstance(p, _Derived):
        return p.spikes()
    return p


@contextlib.contextmanager
def spikes_as_bits(enabled: bool = True, saved: Optional[set] = None) -> Iterator[None]:
    """Inside: every binary floating tensor that autograd saves is kept as bits (others untouched).

    ``saved``, if given, collects the storage addresses of the tensors kept as they are, so that a caller
    can tell whether some tensor (a recompute's output) is needed by the backward or may be freed.
    """
    if not enabled and saved is None:
        yield
        return

    def pack(t: Tensor) -> Union[Tensor, _Packed, _Derived]:
        if t.grad_fn is None and t.requires_grad:
            # Leaves that require grad (parameters, the recompute's input), a third of what is saved:
            # never packed (see _is_binary) and never a recompute's output, so nothing to record.
            return t
        if enabled and _is_binary(t):
            return _derived(t) or pack_bits(t)
        if saved is not None:
            saved.add(t.untyped_storage().data_ptr())
        return t

    if enabled:
        _ACTIVE.depth = getattr(_ACTIVE, "depth", 0) + 1
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, _unpack):
            yield
    finally:
        if enabled:
            _ACTIVE.depth -= 1
