"""A micro-batched (chunked) backward for the functions the reversible core recomputes (issue 18, Deliver 3).

The reversible Functions recompute each branch (F or G of a coupling) and each ``Recompute`` module under
grad in backward and backpropagate through it at once; that recompute graph, and the convolution and
BatchNorm backward buffers on top of it, are the backward's peak and grow with the batch (about 7 of the
11 stream-sized tensors alive at RevSResNet37's peak). Here the same backward runs a few samples at a
time, so that only the streams and their gradients grow with the batch and the working set of the
recompute is that of ``chunk`` samples, whatever the batch.

Every layer such a function is made of works on each sample alone (convolution, pooling, linear, spiking
neurons over their full T, reshapes), except BatchNorm in training mode, whose batch statistics couple the
samples. Its gradient stays exact in chunks: the forward (``record_batch_stats``) records each
BatchNorm's batch mean and inverse standard deviation; every chunk's recompute normalises with those
(``_FrozenBatchNorm``, which equals the training-mode BatchNorm on the full batch), and with

    xhat = (x - mean) * invstd,   S1 = sum(dy),   S2 = sum(dy * xhat)   (sums over all N positions)

the exact input gradient of the full-batch BatchNorm is ``dx = w * invstd * (dy - S1 / N - xhat * S2 / N)``
(``dw = S2``, ``db = S1``): once S1 and S2 are known, it is per position, so per chunk. The sums of a
BatchNorm need the gradient that reaches it, which depends on the sums of the BatchNorms after it, so a
function with k BatchNorms takes k chunked passes that each collect one BatchNorm's sums, last to first
(each a recompute of the chunk and a backward from the output to that BatchNorm only, with nothing before
it on the graph), and a final pass that backpropagates each chunk in full: the input gradient, the
parameter gradients (summed over chunks) and the function's output (for the reconstruction ``r - F(x)``).
A RevSResNet branch (two BatchNorms) is thus recomputed three times instead of once: memory for time.

What cannot be chunked is refused when the model is built (``check_chunkable``): a layer of a kind not
known to work per sample (it might couple samples), dropout (a chunk would draw a different mask than the
forward did), a BatchNorm called twice in one function.

Why our own: torch has micro-batching only for whole models (gradient accumulation), which changes the
BatchNorm statistics; the exact chunked BatchNorm gradient needs the two global sums above.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .errors import RevsnnError
from .layers import TimeDistributed
from .neurons import SpikingNeuron, set_states
from .spikepack import spikes_as_bits

__all__ = ["ChunkedBackwardError", "check_chunkable", "check_chunk_size", "record_batch_stats", "releasing_membranes",
           "chunked_backward", "BATCH_DIM"]

# Tensors are time-first [T, B, ...] (DESIGN §4): the samples are on dim 1.
BATCH_DIM = 1


class ChunkedBackwardError(RevsnnError):
    """A function that the chunked backward cannot split into samples; one sentence naming the layer."""


_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Layers known to compute each sample from that sample alone (exact types: a subclass may override
# forward). Neurons are the exception, by the neuron contract: elementwise, state per sample.
_PER_SAMPLE = {
    nn.Sequential, nn.ModuleList, TimeDistributed, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
    *_BATCHNORMS,
}


def check_chunk_size(chunk) -> Optional[int]:
    if chunk is None:
        return None
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ChunkedBackwardError(f"backward_chunk must be a whole number of samples, at least 1, or None "
                                   f"(no chunking); got {chunk!r}.")
    return chunk


def check_chunkable(fn: nn.Module, where: str = "") -> None:
    """Raise ChunkedBackwardError unless every layer of ``fn`` is one the chunked backward can split."""
    for name, m in fn.named_modules():
        label = f"{where}{'.' if where and name else ''}{name}" or type(m).__name__
        if isinstance(m, nn.modules.dropout._DropoutNd):
            if m.p > 0:
                raise ChunkedBackwardError(f"{label} is dropout (p = {m.p}), which the chunked backward cannot "
                                           "replay sample by sample (each chunk would draw another mask); "
                                           "train it without backward_chunk.")
            continue
        if isinstance(m, SpikingNeuron) or type(m) in _PER_SAMPLE:
            continue
        raise ChunkedBackwardError(f"{label} is a {type(m).__name__}, a layer the chunked backward does not know "
                                   "to work per sample (it might couple the samples of a batch); use only "
                                   "convolution, pooling, linear, BatchNorm and neuron layers there, or train "
                                   "without backward_chunk.")


# --------------------------------------------------------------------------------------------------------
# The forward: batch statistics of every BatchNorm that normalises with them.


@dataclass
class _BatchStats:
    module: nn.Module
    mean: Tensor      # [C], in the promoted dtype (at least float32)
    invstd: Tensor    # [C]
    n: int            # positions per channel over the whole batch: N = x.numel() / C
    s1: Optional[Tensor] = None   # sum of the output gradient, once collected
    s2: Optional[Tensor] = None   # sum of the output gradient times xhat


def _uses_batch_stats(bn: nn.Module) -> bool:
    # nn.BatchNorm's own rule (torch/nn/modules/batchnorm.py: bn_training).
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def _reduce_dims(x: Tensor) -> list[int]:
    return [d for d in range(x.dim()) if d != 1]


def _recording_forward(bn: nn.Module, into: list, x: Tensor) -> Tensor:
    """nn.BatchNorm's training forward (torch/nn/modules/batchnorm.py, ``_BatchNorm.forward``: the same
    momentum and ``num_batches_tracked`` rule), through ``torch.native_batch_norm``, which is what
    ``F.batch_norm`` runs on the CPU (the same output to the bit) and also returns the batch mean and inverse
    standard deviation it normalised with: recording them costs nothing (a separate ``var_mean`` pass took
    as long as the BatchNorm itself)."""
    if not _uses_batch_stats(bn):
        return type(bn).forward(bn, x)  # normalises with its running statistics: per sample already
    bn._check_input_dim(x)
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    keep = not bn.training or bn.track_running_stats
    out, mean, invstd = torch.native_batch_norm(x, bn.weight, bn.bias, bn.running_mean if keep else None,
                                                bn.running_var if keep else None, True, factor, bn.eps)
    if any(s.module is bn for s in into):
        raise ChunkedBackwardError(f"a {type(bn).__name__} runs twice in one recomputed function; the chunked "
                                   "backward needs each BatchNorm once (train without backward_chunk).")
    into.append(_BatchStats(bn, mean, invstd, x.numel() // x.shape[1]))
    return out


@contextlib.contextmanager
def record_batch_stats(fn: nn.Module, into: list):
    """Inside: every BatchNorm of ``fn`` that normalises with batch statistics appends a ``_BatchStats`` to
    ``into`` as it runs, in the order they run (``_recording_forward``)."""
    bns = [m for m in fn.modules() if isinstance(m, _BATCHNORMS)]
    for bn in bns:
        # An instance attribute shadows the class's forward (nn.Module.__call__ looks up self.forward, so
        # hooks still run); removed on exit.
        bn.forward = (lambda bn: lambda x: _recording_forward(bn, into, x))(bn)
    try:
        yield
    finally:
        for bn in bns:
            del bn.forward


@contextlib.contextmanager
def releasing_membranes(fn: nn.Module, entry_states: list):
    """Inside: each stateful neuron of ``fn`` is put back into its entry state as soon as its forward
    returns, instead of when the whole function has run (``keep_state=False``: nothing reads the final
    membranes). A function's forward otherwise holds every neuron's final membrane to its end: at
    RevSResNet37's chunked peak, the first stage's no-grad forward of G, two membranes, half a stream a
    sample. A neuron that runs twice in one function would then start its second run at rest: refused."""
    from .neurons import neurons_of

    ran: set = set()

    def hook(module, args, output, entry):
        if id(module) in ran:
            raise ChunkedBackwardError(f"a {type(module).__name__} neuron runs twice in one recomputed function; "
                                       "the chunked backward needs each neuron once (train without "
                                       "backward_chunk).")
        ran.add(id(module))
        module.v = entry

    handles = [n.register_forward_hook(lambda m, a, o, e=e: hook(m, a, o, e))
               for n, e in zip(neurons_of(fn), entry_states)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------------------------------------
# BatchNorm with the full batch's statistics, and its exact full-batch gradient once S1, S2 are known.


def _view(t: Tensor, x: Tensor) -> Tensor:
    return t.view(1, -1, *([1] * (x.dim() - 2)))


def _scale(bn: nn.Module, s: _BatchStats) -> Tensor:
    return s.invstd if bn.weight is None else s.invstd * bn.weight.to(s.invstd.dtype)


def _frozen_normalise(x: Tensor, bn: nn.Module, s: _BatchStats) -> Tensor:
    # (x - mean) * (w invstd) + b: two passes over x.
    centred = x.to(s.mean.dtype) - _view(s.mean, x)
    if bn.bias is None:
        return centred.mul_(_view(_scale(bn, s), x)).to(x.dtype)
    return torch.addcmul(_view(bn.bias.to(s.mean.dtype), x), centred, _view(_scale(bn, s), x)).to(x.dtype)


class _FrozenBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], stats: _BatchStats, bn: nn.Module):
        ctx.stats, ctx.bn = stats, bn
        ctx.save_for_backward(x)
        with torch.no_grad():
            return _frozen_normalise(x, bn, stats)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor):
        (x,) = ctx.saved_tensors
        s: _BatchStats = ctx.stats
        bn = ctx.bn
        dims = _reduce_dims(x)
        dy_ = dy.to(s.mean.dtype)
        xhat = (x.to(s.mean.dtype) - _view(s.mean, x)).mul_(_view(s.invstd, x))
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            # dx = k (dy - S1 / N - xhat S2 / N) with k = w invstd, as two fused passes over the chunk.
            k = _scale(bn, s)
            dx = torch.addcmul(_view(-k * s.s1 / s.n, x), xhat, _view(-k * s.s2 / s.n, x))
            dx = dx.addcmul_(dy_, _view(k, x)).to(x.dtype)
        if bn.weight is not None and ctx.needs_input_grad[1]:
            dw = xhat.mul_(dy_).sum(dims).to(bn.weight.dtype)   # this chunk's share of S2
        if bn.weight is not None and ctx.needs_input_grad[2]:
            db = dy_.sum(dims).to(bn.weight.dtype)              # ... and of S1
        return dx, dw, db, None, None


@contextlib.contextmanager
def _frozen(stats: list[_BatchStats], target: Optional[_BatchStats], captured: list):
    """Inside: each recorded BatchNorm runs with the full batch's statistics. Where its sums are known, as
    ``_FrozenBatchNorm`` (exact gradient); the ``target``'s output becomes a new leaf (``captured`` gets its
    input and the leaf) from which the pass backpropagates; the others are computed without a graph (in a
    pass that collects the target's sums nothing before the target needs one)."""
    def frozen_forward(bn, s, x):
        if s.s1 is not None:
            return _FrozenBatchNorm.apply(x, bn.weight, bn.bias, s, bn)
        with torch.no_grad():
            y = _frozen_normalise(x, bn, s)
        if s is target:
            y.requires_grad_(True)
            captured.append((x.detach(), y))
        return y

    for s in stats:
        # An instance attribute shadows the class's forward for this call only (nn.Module.__call__ looks
        # up self.forward); removed on exit.
        s.module.forward = (lambda bn, s: lambda x: frozen_forward(bn, s, x))(s.module, s)
    try:
        yield
    finally:
        for s in stats:
            del s.module.forward


# --------------------------------------------------------------------------------------------------------
# The chunked backward.


def _state_of_chunk(v, sl: slice, batch: int):
    # Neuron membranes are [B, ...] (one time step's shape); anything else (None: at rest) is shared.
    if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == batch:
        return v[sl]
    return v


def chunked_backward(fn: nn.Module, inp: Tensor, entry_states: list, stats: list, grad_out: Tensor, chunk: int,
                     params: list[Tensor], aliases: dict[str, Tensor], parameters_as: Callable, run_context: Callable,
                     accumulate, residual=None, into: Optional[Tensor] = None, need_output: bool = True,
                     pack: bool = True) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """``fn(inp)``'s backward, ``chunk`` samples at a time; the same contract as the core's
    ``_local_backward``: returns ``(r - fn(inp)`` with ``residual`` r, else ``fn(inp)`` or None without
    ``need_output``; the input gradient, or None when it was added into ``into``)``, parameter gradients to
    ``accumulate``. ``stats``: the forward's ``record_batch_stats``; ``parameters_as(fn, tensors)`` and
    ``run_context()`` (autocast as the forward ran) come from the core. Neuron states are set per chunk and
    left for the caller to restore, like the recompute's."""
    batch = inp.shape[BATCH_DIM]
    slices = [slice(i, min(i + chunk, batch)) for i in range(0, batch, chunk)]
    for s in stats:
        s.s1 = s.s2 = None
    plain = {name: a.detach() for name, a in aliases.items()}  # the parameters' values, no graph

    def running(tensors: dict, target: Optional[_BatchStats], captured: list, bits: bool):
        # Entered once per pass, not per chunk: the contexts cost more than a small chunk's layers.
        stack = contextlib.ExitStack()
        try:
            for c in (torch.enable_grad(), run_context(), spikes_as_bits(bits), parameters_as(fn, tensors),
                      _frozen(stats, target, captured)):
                stack.enter_context(c)
        except BaseException:
            stack.close()
            raise
        return stack

    def run(sl: slice, x: Tensor) -> Tensor:
        set_states(fn, [_state_of_chunk(v, sl, batch) for v in entry_states])
        return fn(x)

    # One pass per BatchNorm, last to first: the gradient that reaches it, summed over the batch. Spikes are
    # not packed here: these graphs are a chunk's and short-lived, and packing costs time.
    for target in reversed(stats):
        captured: list = []
        s1 = s2 = None
        with running(plain, target, captured, False):
            for sl in slices:
                captured.clear()
                out = run(sl, inp[:, sl].detach())
                (x_in, leaf), = captured
                g = None
                if out.requires_grad:
                    g, = torch.autograd.grad(out, leaf, grad_out[:, sl], allow_unused=True)
                del out
                with torch.no_grad():
                    if g is None:
                        g = torch.zeros_like(leaf)
                    dims = _reduce_dims(x_in)
                    g = g.to(target.mean.dtype)
                    xhat = (x_in.to(target.mean.dtype) - _view(target.mean, x_in)) * _view(target.invstd, x_in)
                    part1, part2 = g.sum(dims), xhat.mul_(g).sum(dims)
                    s1 = part1 if s1 is None else s1.add_(part1)
                    s2 = part2 if s2 is None else s2.add_(part2)
                del g, xhat, x_in, leaf
        captured.clear()
        target.s1, target.s2 = s1, s2

    # The final pass: every chunk backpropagated in full.
    r = residual.take() if residual is not None else None
    result = torch.empty_like(r) if r is not None else None
    g_in = None if into is not None else torch.zeros_like(inp)
    names = list(aliases)
    # The parameter gradients, summed over the chunks in place: one set alive beside the chunk's own, however
    # many chunks (summing out of place would hold three). The first chunk's are kept as autograd made them,
    # unless they share the incoming gradient's storage (a parameter that is itself the output), never ours.
    sums: list[Optional[Tensor]] = [None] * len(names)
    out_storage = grad_out.untyped_storage().data_ptr()
    with running(aliases, None, [], pack):
        for sl in slices:
            leaf = inp[:, sl].detach().requires_grad_(True)
            out = run(sl, leaf)
            with torch.no_grad():
                if r is not None:
                    result[:, sl] = r[:, sl] - out
                elif need_output:
                    if result is None:
                        result = out.new_empty((out.shape[0], batch, *out.shape[2:]))
                    result[:, sl] = out
            got = torch.autograd.grad(out, [leaf, *(aliases[n] for n in names)], grad_out[:, sl], allow_unused=True)
            del out
            with torch.no_grad():
                if got[0] is not None:
                    (into if into is not None else g_in)[:, sl] += got[0]
                for i, g in enumerate(got[1:]):
                    if g is None:
                        continue
                    if sums[i] is not None:
                        sums[i] += g
                    else:
                        sums[i] = g.clone() if g.untyped_storage().data_ptr() == out_storage else g
            del got, leaf
    accumulate(params, sums)
    for s in stats:
        s.s1 = s.s2 = None
    return result, g_in
