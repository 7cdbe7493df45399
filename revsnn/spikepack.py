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
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Union

import torch
from torch import Tensor

__all__ = ["pack_bits", "unpack_bits", "spikes_as_bits", "MIN_PACKED_NUMEL"]

# Tensors with fewer elements are not tested. Kept tiny on purpose: a threshold that a batch's tensor
# crosses at one batch size and not at another would make the same step allocate differently at two
# batch sizes, which the per-sample measure (revsnn.memory) compares event by event.
MIN_PACKED_NUMEL = 8

_SHIFTS = torch.arange(8, dtype=torch.uint8)


class _Packed:
    __slots__ = ("bits", "shape", "dtype", "device", "numel")

    def __init__(self, bits: Tensor, shape: torch.Size, dtype: torch.dtype, device: torch.device, numel: int):
        self.bits, self.shape, self.dtype, self.device, self.numel = bits, shape, dtype, device, numel


def pack_bits(t: Tensor) -> _Packed:
    """``t`` (values 0 or 1) as one bit per element, little-endian within each byte."""
    flat = t.detach().reshape(-1).to(torch.uint8)
    n = flat.numel()
    pad = (-n) % 8
    if pad:
        flat = torch.cat((flat, flat.new_zeros(pad)))
    bits = (flat.view(-1, 8) << _SHIFTS.to(flat.device)).sum(-1, dtype=torch.uint8)
    return _Packed(bits, t.shape, t.dtype, t.device, n)


def unpack_bits(p: _Packed) -> Tensor:
    flat = (p.bits.unsqueeze(-1) >> _SHIFTS.to(p.bits.device)) & 1
    return flat.reshape(-1)[: p.numel].to(p.dtype).reshape(p.shape)


def _is_binary(t: Tensor) -> bool:
    if not t.is_floating_point() or t.numel() < MIN_PACKED_NUMEL or t.requires_grad and t.grad_fn is None:
        return False  # leaves that require grad (parameters, user inputs) are kept as they are
    return bool(torch.logical_or(t == 0, t == 1).all())


def _unpack(p: Union[Tensor, _Packed]) -> Tensor:
    return unpack_bits(p) if isinstance(p, _Packed) else p


@contextlib.contextmanager
def spikes_as_bits(enabled: bool = True, saved: Optional[set] = None) -> Iterator[None]:
    """Inside: every binary floating tensor that autograd saves is kept as bits (others untouched).

    ``saved``, if given, collects the storage addresses of the tensors kept as they are, so that a caller
    can tell whether some tensor (a recompute's output) is needed by the backward or may be freed.
    """
    if not enabled and saved is None:
        yield
        return

    def pack(t: Tensor) -> Union[Tensor, _Packed]:
        if enabled and _is_binary(t):
            return pack_bits(t)
        if saved is not None:
            saved.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, _unpack):
        yield
