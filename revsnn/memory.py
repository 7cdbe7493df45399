"""Activation memory: what a forward pass keeps alive for backward (DESIGN §5).

On any device, ``ActivationMeter`` counts the bytes that autograd saves for backward, through
``torch.autograd.graph.saved_tensors_hooks``: every tensor an op or a custom Function's
``save_for_backward`` keeps is packed once. Tensors are deduplicated by storage (views of one buffer
count once) and storages of parameters and buffers are excluded: those exist whether or not anything
is trained.

Blind spots, by construction: tensors a Function keeps as ``ctx`` attributes, and module state such as
neuron membranes, are not packed. The reversible Function saves its output with ``save_for_backward`` so
that it is counted.

On a GPU, ``cuda_bytes_per_sample`` measures the papers' metric without weights and optimizer state:
``(max_memory_allocated(B2) - max_memory_allocated(B1)) / (B2 - B1)``.
"""

from __future__ import annotations

import gc
import weakref
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor, nn

__all__ = ["ActivationMeter", "activation_bytes", "activation_bytes_per_sample", "cuda_bytes_per_sample"]


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
