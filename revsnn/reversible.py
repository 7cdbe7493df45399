"""The reversible core: couplings, and an autograd Function that trains a sequence of them without
keeping any block's activations.

Couplings (DESIGN §5), with the state ``X`` split in two halves along the channel axis:

- ``RevNetCoupling`` (RevSNN):  ``Y1 = X1 + F(X2)``,  ``Y2 = X2 + G(Y1)``;
  inverse ``X2 = Y2 - G(Y1)``, ``X1 = Y1 - F(X2)``.
- ``ParaRevCoupling`` (ParaRevSNN): ``Y1 = X2 + F(X1)``,  ``Y2 = X1 + G(Y1)``;
  inverse ``X1 = Y2 - G(Y1)``, ``X2 = Y1 - F(X1)``. In a sequence the next block's ``F`` reads the same
  ``Y1`` as this block's ``G``, so the two can run concurrently.

The parallel coupling is the RevNet coupling applied to the swapped halves ``(X2, X1)``; both share one
backward below.

``ReversibleSequence`` runs its couplings through ``_ReversibleFn`` when gradients are needed: forward runs
every block under ``no_grad`` and keeps only the sequence output (a ``ctx`` alias, released as soon as
the last block's input is reconstructed; the allocator measures see it, the saved-tensor meter does not). Backward walks the blocks from last to first; for each it recomputes ``G`` then ``F`` under
grad from the reconstructed inputs, which serves both reconstruction and the local backward. Around each
recompute it restores what the forward saw and leaves behind what the forward left behind:

- RNG state (CPU, and CUDA for the input's device), so dropout draws the same mask; a function whose
  forward drew no random number is recomputed without touching the RNG;
- neuron membranes at entry (the known initial state: at rest after a model's reset); the forward
  leaves the neurons in that state too rather than keeping each block's final membranes, which would
  grow with depth (``keep_state=True`` keeps them, as the plain twin does, for chunked input);
- every buffer (BatchNorm running statistics, ``num_batches_tracked``), which the recompute would
  otherwise update a second time (the original RevSNN code does): training BatchNorms are recomputed with
  ``track_running_stats`` off, any other buffer is copied and restored.

Parameter gradients are returned from ``backward`` as gradients of the Function's parameter inputs, so
they reach ``.grad`` through autograd's own accumulation (and DDP's hooks fire).
"""

from __future__ import annotations

import contextlib
import copy
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .neurons import get_states, set_states
from .chunked import check_chunk_size, check_chunkable, chunked_backward, record_batch_stats, releasing_membranes
from .graphtask import keeps_graph
from .spikepack import spikes_as_bits

__all__ = [
    "ReversibleModule",
    "Coupling",
    "RevNetCoupling",
    "ParaRevCoupling",
    "ReversibleSequence",
    "Recompute",
    "plain_twin",
    "set_reversible",
    "set_backward_chunk",
]


class Coupling(nn.Module):
    """Two residual functions F and G over the two halves of the state. Subclasses fix the wiring."""

    def __init__(self, F: nn.Module, G: nn.Module):
        super().__init__()
        self.F = F
        self.G = G

    # The wiring is expressed once, as the RevNet coupling on an ordered pair (a, b):
    #   y1 = a + F(b), y2 = b + G(y1).
    # `_order` maps (x1, x2) to (a, b) and back; it is its own inverse.
    @staticmethod
    def _order(p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        a, b = self._order(x1, x2)
        y1 = a + self.F(b)
        y2 = b + self.G(y1)
        return y1, y2

    @torch.no_grad()
    def inverse(self, y1: Tensor, y2: Tensor) -> tuple[Tensor, Tensor]:
        b = y2 - self.G(y1)
        a = y1 - self.F(b)
        return self._order(a, b)


class RevNetCoupling(Coupling):
    """RevSNN's coupling: ``Y1 = X1 + F(X2)``, ``Y2 = X2 + G(Y1)``."""

    @staticmethod
    def _order(p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        return p, q


class ParaRevCoupling(Coupling):
    """ParaRevSNN's coupling: ``Y1 = X2 + F(X1)``, ``Y2 = X1 + G(Y1)``."""

    @staticmethod
    def _order(p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        return q, p


# --------------------------------------------------------------------------------------------------------
# What one function evaluation (F or G of one block) needs to be re-run exactly.


@dataclass
class _Evaluation:
    entry_states: list
    exit_states: list
    cpu_rng: Optional[Tensor]
    cuda_rng: Optional[tuple[int, Tensor]]
    # (device type, dtype) of the autocast the forward ran under, or None: the recompute in backward runs
    # outside the forward's autocast block, so it re-enters it to compute what the forward computed.
    autocast: Optional[tuple[str, torch.dtype]] = None
    # The batch statistics of each BatchNorm inside, for a chunked backward (revsnn.chunked); None otherwise.
    batch_stats: Optional[list] = None


def _autocast_state(device: torch.device) -> Optional[tuple[str, torch.dtype]]:
    if torch.is_autocast_enabled(device.type):
        return device.type, torch.get_autocast_dtype(device.type)
    return None


def stream_dtype(x: Tensor) -> Tensor:
    """``x`` in float32 when autocast would leave it in half precision: a reversible stream is rebuilt by
    subtraction in backward, and in bfloat16 that loses 8 mantissa bits per block (revsnn.precision)."""
    if x.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(x.device.type):
        return x.float()
    return x


def _rng_state(device: torch.device, preserve_rng: bool):
    if not preserve_rng:
        return None, None
    cuda = None
    if device.type == "cuda":
        cuda = (device.index if device.index is not None else torch.cuda.current_device(),
                torch.cuda.get_rng_state(device))
    return torch.get_rng_state(), cuda


def _drew_random(cpu_rng: Optional[Tensor], cuda_rng: Optional[tuple[int, Tensor]]):
    """The RNG states recorded before an evaluation, or None for a generator the evaluation did not draw
    from: a function that drew no random number (no dropout; the usual spiking block) draws none when it
    is recomputed on the same inputs, so its recompute needs no RNG to be set and restored (three state
    copies and a context manager per recompute, issue 18 speed). One more state read here, and a compare
    of a few KB, is cheaper."""
    if cpu_rng is not None and torch.equal(torch.get_rng_state(), cpu_rng):
        cpu_rng = None
    if cuda_rng is not None and torch.equal(torch.cuda.get_rng_state(cuda_rng[0]), cuda_rng[1]):
        cuda_rng = None
    return cpu_rng, cuda_rng


def _evaluate_no_grad(fn: nn.Module, x: Tensor, preserve_rng: bool,
                      keep_state: bool = True, batch_stats: bool = False) -> tuple[Tensor, _Evaluation]:
    """Run ``fn`` under no_grad, recording what a recompute needs. With ``keep_state=False`` the neurons
    of ``fn`` are put back into their entry state (at rest, after a model's reset) instead of keeping
    their final membranes: one membrane per neuron and block would otherwise stay alive until the next
    forward, memory that grows with depth. The recompute starts from the entry state either way.
    ``batch_stats``: also record the BatchNorms' batch statistics, for a chunked backward."""
    entry = get_states(fn)
    cpu_rng, cuda_rng = _rng_state(x.device, preserve_rng)
    cast = _autocast_state(x.device)
    stats = [] if batch_stats else None
    with record_batch_stats(fn, stats) if batch_stats else contextlib.nullcontext(), \
            releasing_membranes(fn, entry) if batch_stats and not keep_state else contextlib.nullcontext():
        out = fn(x)
    cpu_rng, cuda_rng = _drew_random(cpu_rng, cuda_rng)
    if keep_state:
        return out, _Evaluation(entry, get_states(fn), cpu_rng, cuda_rng, cast, stats)
    set_states(fn, entry)
    return out, _Evaluation(entry, entry, cpu_rng, cuda_rng, cast, stats)


def param_aliases(fn: nn.Module) -> tuple[list[Tensor], dict[str, Tensor]]:
    """``fn``'s trainable parameters and, by name, a detached alias of each (same storage, a new leaf).

    The recompute runs on the aliases (``_parameters_as``) and the local backward takes its
    gradients with respect to them. Taking them with respect to the parameters themselves would fire
    every ``param.register_hook`` once inside backward and again when the Function's returned gradient
    reaches the parameter: a scaling hook would scale twice. Shared (tied) parameters appear once.
    """
    params, aliases = [], {}
    for name, p in fn.named_parameters():
        if p.requires_grad:
            params.append(p)
            aliases[name] = p.detach().requires_grad_(True)
    return params, aliases


@contextlib.contextmanager
def _parameters_as(fn: nn.Module, aliases: dict[str, Tensor]):
    """Inside: every parameter of ``fn`` named in ``aliases`` (``param_aliases`` names; tied parameters
    under any of their names) is replaced by its alias, in the ``_parameters`` dict of each module that
    holds it; restored on exit. What ``torch.func.functional_call(fn, aliases, strict=False)`` does for
    a plain module tree, as two walks and dict writes: functional_call's untying and reparametrisation
    machinery cost about 0.4 ms per call here, a tenth of a small branch's recompute (issue 18, speed).
    Parametrised weights (``torch.nn.utils.parametrize``) work too: their ``original`` is a parameter in
    a ``_parameters`` dict like any other."""
    named = dict(fn.named_parameters())
    by_id = {id(named[name]): alias for name, alias in aliases.items() if name in named}
    swapped = [(m, name, p) for m in fn.modules() for name, p in m._parameters.items()
               if p is not None and id(p) in by_id]
    try:
        for m, name, p in swapped:
            m._parameters[name] = by_id[id(p)]
        yield
    finally:
        for m, name, p in swapped:
            m._parameters[name] = p


def _evaluate_again(fn: nn.Module, x: Tensor, ev: _Evaluation,
                    aliases: Optional[dict[str, Tensor]] = None,
                    pack_spikes: bool = True, saved: Optional[set] = None) -> tuple[Tensor, Callable[[], None]]:
    """Re-run ``fn`` under grad exactly as the forward ran it (on the parameter ``aliases`` if given).

    Returns the output and a function that puts ``fn``'s state back as the forward left it. Call it only
    after the local backward: a module's backward may read a buffer the recompute used, so none may be
    modified in place before then. (Training BatchNorms are run without updating their statistics instead,
    ``_frozen_statistics``, so theirs need no copy.)
    """
    frozen, others = _statistics_of(fn)
    buffers = [b.detach().clone() for b in others]
    cpu_state = cuda_state = None
    if ev.cpu_rng is not None:
        cpu_state = torch.get_rng_state()
        torch.set_rng_state(ev.cpu_rng)
    if ev.cuda_rng is not None:
        cuda_state = torch.cuda.get_rng_state(ev.cuda_rng[0])
        torch.cuda.set_rng_state(ev.cuda_rng[1], ev.cuda_rng[0])
    try:
        set_states(fn, ev.entry_states)
        cast = contextlib.nullcontext() if ev.autocast is None else torch.autocast(ev.autocast[0], ev.autocast[1])
        # The recomputed graph is the backward's working set, its peak: spikes it saves (a convolution's
        # input) are made again on use from what their neuron keeps, or kept as bits (revsnn.spikepack).
        with torch.enable_grad(), cast, spikes_as_bits(pack_spikes, saved), _frozen_statistics(frozen):
            if aliases is None:
                out = fn(x)
            else:
                with _parameters_as(fn, aliases):
                    out = fn(x)
    finally:
        if cpu_state is not None:
            torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, ev.cuda_rng[0])

    def restore() -> None:
        set_states(fn, ev.exit_states)
        with torch.no_grad():
            for b, saved in zip(others, buffers):
                b.copy_(saved)

    return out, restore


def _statistics_of(fn: nn.Module) -> tuple[list[nn.Module], list[Tensor]]:
    """``(batch norms, other buffers)`` of ``fn``: the BatchNorms that would update their running statistics
    in this call (training, tracking), and every buffer not theirs, which a recompute might modify and which
    is therefore saved and restored around it."""
    frozen, others = [], []
    for m in fn.modules():
        if isinstance(m, _BatchNorm) and m.training and m.track_running_stats:
            frozen.append(m)
        else:
            others.extend(b for b in m._buffers.values() if b is not None)
    return frozen, others


@contextlib.contextmanager
def _frozen_statistics(batch_norms: list[nn.Module]):
    """Inside: the BatchNorms given normalise with the batch's statistics without updating their running
    ones (``track_running_stats`` off, in training mode: the same output to the bit, since training
    normalises with the batch either way). A recompute then leaves the statistics as the forward left
    them, updated once, without a copy of every statistic before it and a copy back after its backward
    (issue 18, speed: the copies were a fifth of a small block's recompute overhead)."""
    for bn in batch_norms:
        bn.track_running_stats = False
    try:
        yield
    finally:
        for bn in batch_norms:
            bn.track_running_stats = True


def _grads(out: Tensor, leaf: Tensor, params: list[Tensor], grad_out: Tensor) -> tuple[Tensor, list]:
    got = torch.autograd.grad(out, [leaf, *params], grad_out, allow_unused=True)
    g_leaf = got[0] if got[0] is not None else torch.zeros_like(leaf)
    return g_leaf, list(got[1:])


class ParamGrads:
    """Gradients of a custom Function's parameter inputs, summed over every recompute that used them
    (a parameter shared by several blocks or columns gets the sum). ``grads`` is in ``params`` order,
    ``None`` where nothing arrived, ready to be returned from ``backward``."""

    def __init__(self, params: list[Tensor]):
        self._index = {id(p): i for i, p in enumerate(params)}
        self.grads: list[Optional[Tensor]] = [None] * len(params)

    def __call__(self, ps: list[Tensor], gs: list[Optional[Tensor]]) -> None:
        for p, g in zip(ps, gs):
            if g is None:
                continue
            i = self._index[id(p)]
            self.grads[i] = g if self.grads[i] is None else self.grads[i] + g


def _local_backward(fn: nn.Module, inp: Tensor, ev: _Evaluation, grad_out: Tensor, accumulate,
                    residual: Optional["_Owned"] = None, pack: bool = True,
                    need_output: bool = True, chunk: Optional[int] = None,
                    into: Optional[Tensor] = None) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """Recompute ``fn(inp)`` under grad, backpropagate ``grad_out`` through it, restore ``fn``'s state.

    Returns ``(fn's output, detached; gradient with respect to inp)``; parameter gradients go to
    ``accumulate``. With ``residual`` (a coupling's other stream ``r``, handed over) it returns
    ``r - fn(inp)`` instead, the reconstructed input, computed right after the recompute: then ``r`` is
    dropped and the output's storage freed before the local backward runs, unless the backward reads the
    output (some op saved it), so two fewer stream tensors are alive at the backward's peak. With
    ``need_output=False`` (``Recompute``, which only wants the input gradient) the output is freed the
    same way and None is returned in its place.

    With ``into`` (a stream-gradient accumulator of our own) the input gradient is added into it and None
    returned in its place. With ``chunk`` (and the batch statistics recorded in ``ev``) the recompute and
    its backward run ``chunk`` samples at a time (revsnn.chunked): the same numbers, a working set that does
    not grow with the batch, and each chunk's input gradient added into ``into`` as soon as it is known.
    """
    params, aliases = param_aliases(fn)
    if chunk is not None and ev.batch_stats is not None:
        def run_context():
            return contextlib.nullcontext() if ev.autocast is None else torch.autocast(ev.autocast[0], ev.autocast[1])

        result, g_in = chunked_backward(fn, inp, ev.entry_states, ev.batch_stats, grad_out, chunk, params, aliases,
                                        _parameters_as, run_context, accumulate, residual, into, need_output, pack)
        set_states(fn, ev.exit_states)
        return result, g_in
    leaf = inp.detach().requires_grad_(True)
    saved: set = set()
    out, restore = _evaluate_again(fn, leaf, ev, aliases, pack_spikes=pack, saved=saved)
    result = None
    if residual is not None:
        result = residual.take() - out.detach()
    if residual is not None or not need_output:
        storage = out.untyped_storage()
        base = out if out._base is None else out._base
        # A custom Function (a nested reversible sequence) may keep its output as a ctx attribute, which
        # the saved-tensor hooks do not see: its outputs are never freed here.
        own = not isinstance(base.grad_fn, torch.autograd.function.BackwardCFunction)
        if own and storage.data_ptr() not in saved and storage.data_ptr() != leaf.untyped_storage().data_ptr():
            # autograd.grad needs the output only as the graph's root (its shape and grad_fn), not its
            # values: free its bytes and keep the tensor (the way torch's FSDP frees parameters).
            storage.resize_(0)
    g_in, g_params = _grads(out, leaf, list(aliases.values()), grad_out)
    restore()
    accumulate(params, g_params)
    if residual is None and need_output:
        result = out.detach()
    if into is not None:
        into += g_in
        g_in = None
    return result, g_in


class _Streams:
    """A side CUDA stream for the parallel schedule; on the CPU every method is a no-op, so the same
    schedule runs there, in the same order, and gives the same numbers."""

    def __init__(self, device: torch.device, enabled: bool):
        self.cuda = enabled and device.type == "cuda"
        if self.cuda:
            self.main = torch.cuda.current_stream(device)
            self.side = torch.cuda.Stream(device)

    @contextlib.contextmanager
    def on_side(self):
        if not self.cuda:
            yield
            return
        self.side.wait_stream(self.main)  # the side stream reads what the main stream produced
        with torch.cuda.stream(self.side):
            yield

    def join(self, *from_side: Optional[Tensor]) -> None:
        if self.cuda:
            self.main.wait_stream(self.side)
            for t in from_side:
                if t is not None:
                    t.record_stream(self.main)  # freed only once the main stream is done with it


class _ReversibleFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, seq: "ReversibleSequence", *params: Tensor) -> Tensor:
        ctx.seq = seq
        with torch.no_grad():
            if seq.parallel_schedule:
                y, ctx.evaluations = _forward_parallel(seq, x)
            else:
                y, ctx.evaluations = _forward_serial(seq, x)
        # The output is kept as a detached alias (same storage, no grad_fn, so no reference cycle) rather
        # than with save_for_backward: autograd would hold a saved tensor until backward returns, but the
        # output is only needed to reconstruct the last block's input, and freeing it then keeps the
        # backward's peak the same at every depth. The alias shares the version counter, so an in-place
        # change of the output between forward and backward is still caught.
        ctx.y = y.detach()
        ctx.y_version = y._version
        ctx.y_dtype = y.dtype
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor):
        seq: ReversibleSequence = ctx.seq
        if ctx.y is None:
            raise RuntimeError("Trying to backward through a reversible sequence a second time; its output "
                               "was freed after the first backward (retain_graph is not supported).")
        if ctx.y._version != ctx.y_version:
            raise RuntimeError("The output of a reversible sequence was modified in place before backward; "
                               "its backward reconstructs the blocks' inputs from it. Use an out-of-place op.")
        accumulate = ParamGrads(list(seq.parameters()))
        backward = _backward_parallel if seq.parallel_schedule else _backward_serial
        evaluations = ctx.evaluations
        owned = _Owned(ctx.y)
        keeps = keeps_graph()
        if not keeps:
            ctx.y = None  # no reference left here: freed once the last block is undone
        ours = not keeps and _ours(dy, ctx.y_dtype)
        dx = backward(seq, evaluations, owned, dy, accumulate, ours)
        return (dx, None, *accumulate.grads)


# A gradient that one of our own Functions returned (Recompute's input gradient) carries this attribute.
# Autograd hands such a tensor to the next node without keeping a reference of its own, and nothing outside
# revsnn sees it (it is the gradient of an internal boundary of a model), so the reversible sequence that
# receives it may accumulate its stream gradients into it in place instead of into copies: two streams'
# worth of gradient fewer at the backward's peak (issue 18). Any other incoming gradient (the user's, one
# autograd summed, an expanded one) is never written.
_OURS = "_revsnn_gradient_owned"


def _mark_ours(t: Optional[Tensor]) -> Optional[Tensor]:
    if t is not None and not keeps_graph():
        setattr(t, _OURS, True)
    return t


def _python_refs(t: Tensor) -> int:
    return sys.getrefcount(t)


def _ours(t: Tensor, ctx_dtype: torch.dtype, probe: Optional[list] = None) -> bool:
    """Whether the incoming gradient ``t`` (called as ``_ours(dy, ...)`` straight from a backward, with
    ``dy`` its only local name) may be written: ours, and referenced by nothing else in Python (a tensor
    hook that kept the gradient holds one reference more than the calibrated count). ``probe``: the
    calibration's call, which only records the count."""
    if probe is not None:
        probe.append(_python_refs(t))
        return False
    if not (getattr(t, _OURS, False) and t.is_contiguous() and t.dtype == ctx_dtype and t._base is None):
        return False
    return _python_refs(t) <= _baseline_refs()


class _ProbeSource(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        return _mark_ours(g.clone())


class _ProbeSink(_ProbeSource):   # the same forward; its backward records instead of marking
    seen: list = []

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor):
        _ours(dy, dy.dtype, _ProbeSink.seen)  # the same call shape as in _ReversibleFn.backward
        return dy


_BASELINE: list[int] = []


def _baseline_refs() -> int:
    """How many Python references an incoming gradient that nothing else holds has at ``_ours``, measured
    once on this interpreter with the same call shape (the count depends on the Python and torch
    versions, not on the model)."""
    if not _BASELINE:
        with torch.enable_grad():
            x = torch.zeros(2, requires_grad=True)
            _ProbeSource.apply(_ProbeSink.apply(x)).sum().backward()
        _BASELINE.append(_ProbeSink.seen.pop())
    return _BASELINE[0]


class _Owned:
    """Hands a tensor over to a callee that drops it as soon as it can (``take`` leaves no reference)."""

    def __init__(self, t: Tensor):
        self._t = t

    def take(self) -> Tensor:
        t, self._t = self._t, None
        return t


def _sum(p: Tensor, q: Tensor, own: bool) -> Tensor:
    """``p + q``, written into ``p`` where ``p`` is a stream of our own that nothing reads afterwards (a
    block's input from the previous block of the same forward) and the in-place sum is the same sum."""
    if own and p.shape == q.shape and torch.result_type(p, q) == p.dtype:
        return p.add_(q)
    return p + q


def _forward_serial(seq: "ReversibleSequence", x: Tensor):
    # Every stream is dropped (or summed into) as soon as it is dead: inside block k > 0 the previous block's
    # outputs are ours, and keeping both until the block's end held two streams more than the first block
    # (whose inputs are views of the caller's x) at the forward's peak, which then grew from depth 1 to 2.
    x1, x2 = seq.split(x)
    evaluations = []
    for i, block in enumerate(seq.blocks):
        a, b = block._order(x1, x2)
        del x1, x2
        f, ev_f = _evaluate_no_grad(block.F, b, seq.preserve_rng, seq.keep_state, seq.chunked)
        y1 = _sum(a, f, own=i > 0)
        del f, a
        g, ev_g = _evaluate_no_grad(block.G, y1, seq.preserve_rng, seq.keep_state, seq.chunked)
        y2 = _sum(b, g, own=i > 0)
        del g, b
        evaluations.append((ev_f, ev_g))
        x1, x2 = y1, y2
        del y1, y2
    return torch.cat((x1, x2), dim=seq.split_dim), evaluations


def _streams_and_accumulators(seq: "ReversibleSequence", y: "_Owned", dy: Tensor, dy_ours: bool):
    """``(y1, y2, dy1, dy2, own_dy2)`` at the start of a sequence's backward (serial and parallel): the output's
    two streams (taken from ``y``, which keeps no reference) and the stream-gradient accumulators.

    The stream gradients are accumulated in place, into tensors of our own: autograd keeps ``dy`` alive (and
    may share it) for the whole backward, so it is never written. dy1 is copied out at once and dy2 replaced
    after the first block's F (``own_dy2`` False until then); from then on every block holds the same
    tensors, so the first block's peak is the others' (flat in depth). When ``dy`` is ours (see _OURS) its
    two halves are the accumulators themselves, and y1 is copied out of the sequence output, so that the
    output's storage is freed with y2 in the first recompute: every block then holds its two streams and
    ``dy``, the same at every depth."""
    y1, y2 = seq.split(y.take())
    dy1, dy2 = seq.split(dy)
    if dy_ours:
        return y1.clone(), y2, dy1, dy2, True
    return y1, y2, dy1.clone(), dy2, False


def _backward_serial(seq: "ReversibleSequence", evaluations, y: "_Owned", dy: Tensor, accumulate,
                     dy_ours: bool = False) -> Tensor:
    # Every name is dropped (del) as soon as it is dead, so that at each block exactly the same tensors
    # are alive whatever the depth: the block's outputs (the first block's alias the sequence output,
    # released once reconstructed), their gradients and one recompute graph.
    y1, y2, dy1, dy2, own_dy2 = _streams_and_accumulators(seq, y, dy, dy_ours)
    chunk = seq.backward_chunk
    for block, (ev_f, ev_g) in zip(reversed(seq.blocks), reversed(evaluations)):
        # (a, b) -> y1 = a + F(b), y2 = b + G(y1). Each stream is handed over to the recompute that
        # reconstructs from it (b = y2 - G(y1), a = y1 - F(b)), which drops it before its backward; the
        # output's two halves share one storage, freed once both are handed over.
        rest = _Owned(y2)
        del y2
        b, _ = _local_backward(block.G, y1, ev_g, dy2, accumulate, rest, seq.pack_spikes, chunk=chunk, into=dy1)
        rest = _Owned(y1)
        del y1
        if chunk is not None and not own_dy2:
            dy2, own_dy2 = dy2.clone(), True  # chunks add into it as they go: one copy, no second tensor
        a, db_from_f = _local_backward(block.F, b, ev_f, dy1, accumulate, rest, seq.pack_spikes, chunk=chunk,
                                       into=dy2 if own_dy2 else None)
        del rest
        if db_from_f is not None:
            dy2 = dy2 + db_from_f
            own_dy2 = True
        del db_from_f
        y1, y2 = block._order(a, b)
        dy1, dy2 = block._order(dy1, dy2)
        del a, b
    if dy_ours and dy1.data_ptr() == dy.data_ptr() and dy2.data_ptr() == seq.split(dy)[1].data_ptr():
        return dy  # the halves were accumulated in place, in order: dy is the input gradient (no copy)
    return torch.cat((dy1, dy2), dim=seq.split_dim)


# The parallel schedule of ParaRevSNN. With Y1 = X2 + F(X1), Y2 = X1 + G(Y1), block k's G and block k+1's
# F both read Y1 of block k, so they run side by side: G_k on a side stream, F_{k+1} on the main one. In
# backward, F_k and G_{k-1} both read block k's reconstructed input X1 (= Y1 of block k-1), and both
# backpropagate the same gradient (dY1 total of block k = dY2 of block k-1), so they run side by side too.
# Work is launched from the host in the serial order (G_k before F_{k+1}), so the RNG draws are the same.


def _forward_parallel(seq: "ReversibleSequence", x: Tensor):
    streams = _Streams(x.device, seq.use_streams)
    blocks = list(seq.blocks)
    x1, x2 = seq.split(x)
    ev_f = [None] * len(blocks)
    ev_g = [None] * len(blocks)
    f, ev_f[0] = _evaluate_no_grad(blocks[0].F, x1, seq.preserve_rng, seq.keep_state, seq.chunked)
    # As in _forward_serial, dead streams are dropped or summed into at once (X2 is dead once Y1 is made).
    y1 = x2 + f
    del f, x2
    for k, block in enumerate(blocks):
        with streams.on_side():
            g, ev_g[k] = _evaluate_no_grad(block.G, y1, seq.preserve_rng, seq.keep_state, seq.chunked)
        y2 = None
        if not streams.cuda:
            # Nothing runs side by side: Y2 is summed before F_{k+1} runs, so that G_k's output is not alive
            # through it (the host order, G_k then F_{k+1}, and so every number, are the same).
            y2 = _sum(x1, g, own=k > 0)
            del g, x1
        f_next = None
        if k + 1 < len(blocks):
            f_next, ev_f[k + 1] = _evaluate_no_grad(blocks[k + 1].F, y1, seq.preserve_rng, seq.keep_state,
                                                         seq.chunked)
        if y2 is None:
            streams.join(g)
            # x1 is ours from the second block on (the previous Y1); every reader of it has finished (G of
            # the previous block was joined, F of this one ran on the main stream before).
            y2 = _sum(x1, g, own=k > 0)
            del g, x1
        if f_next is None:
            break
        x1 = y1                            # block k+1's X1, and its X2 = y2 (ours): Y1 = X2 + F(X1)
        y1 = _sum(y2, f_next, own=True)
        del y2, f_next
    return torch.cat((y1, y2), dim=seq.split_dim), list(zip(ev_f, ev_g))


def _backward_parallel(seq: "ReversibleSequence", evaluations, y: "_Owned", dy: Tensor, accumulate,
                       dy_ours: bool = False) -> Tensor:
    streams = _Streams(dy.device, seq.use_streams)
    blocks = list(seq.blocks)
    pack, chunk = seq.pack_spikes, seq.backward_chunk
    # As in _backward_serial, each stream is handed over to the recompute that reconstructs from it.
    y1, y2, dy1, dy2, own_dy2 = _streams_and_accumulators(seq, y, dy, dy_ours)
    k = len(blocks) - 1
    rest = _Owned(y2)
    del y2
    # x1: block k's X1, the input of F_k and of G_{k-1}; G_k's input gradient is added into dy1.
    x1, _ = _local_backward(blocks[k].G, y1, evaluations[k][1], dy2, accumulate, rest, pack, chunk=chunk, into=dy1)
    dy1_total = dy1
    del dy1
    # Dead names are dropped at once. Without CUDA streams nothing runs side by side, so G_{k-1} runs
    # after F_k, once block k's dead tensors are freed, and reconstructs from F_k's result: the peak is
    # then the serial schedule's. With streams both recomputes are alive together, one state pair more
    # (the price of the concurrency). The order changes no number: each recompute restores its own RNG.
    concurrent = streams.cuda
    while True:
        g_prev = dprev = x1_prev = None
        if concurrent and k > 0:
            with streams.on_side():
                g_prev, dprev = _local_backward(blocks[k - 1].G, x1, evaluations[k - 1][1], dy1_total,
                                                accumulate, pack=pack, chunk=chunk)
        rest = _Owned(y1)
        del y1
        if chunk is not None and not own_dy2:
            dy2, own_dy2 = dy2.clone(), True  # as in _backward_serial
        x2, dx1_from_f = _local_backward(blocks[k].F, x1, evaluations[k][0], dy1_total, accumulate, rest, pack,
                                         chunk=chunk, into=dy2 if own_dy2 else None)
        del rest
        streams.join(g_prev, dprev)
        if dx1_from_f is None:
            dx1 = dy2
        else:
            dx1 = dy2 + dx1_from_f
            own_dy2 = True
        del dy2, dx1_from_f
        if not concurrent and k > 0:
            rest = _Owned(x2)
            del x2
            # Its input gradient goes straight into dx1 (block k-1's dY1, ours by now).
            x1_prev, dprev = _local_backward(blocks[k - 1].G, x1, evaluations[k - 1][1], dy1_total,
                                             accumulate, rest, pack, chunk=chunk, into=dx1)
            del rest
        dx2 = dy1_total
        del dy1_total
        if k == 0:
            return torch.cat((dx1, dx2), dim=seq.split_dim)
        # Block k-1's outputs are block k's inputs: (y1, y2) = (x1, x2), (dy1, dy2) = (dx1, dx2).
        y1, dy1, dy2 = x1, dx1, dx2
        del x1, dx1, dx2
        if x1_prev is not None:
            x1 = x1_prev             # = y2 - G_{k-1}(y1), reconstructed inside the recompute
        else:
            x1 = x2 - g_prev
            del x2, g_prev
        del x1_prev
        if dprev is not None:
            dy1 += dprev
        dy1_total = dy1
        del dy1, dprev
        k -= 1


class ReversibleModule(nn.Module):
    """A module that trains either reversibly (``reversible=True``) or with plain autograd.

    Both modes must compute the same outputs, gradients and buffers; ``plain_twin`` switches every such
    module of a model to plain autograd.
    """

    reversible: bool = True
    # Whether the neurons inside keep their final membranes after a reversible training forward, as the
    # plain twin's do. Off by default: models reset every neuron at the start of each forward, so
    # nothing reads those membranes, and keeping them costs one membrane per neuron, growing with depth.
    # Turn it on to feed one long sequence in chunks through the reversible module itself.
    keep_state: bool = False
    # Whether the recompute in backward keeps the spikes it saves as bits (revsnn.spikepack); off only to
    # measure what that saves.
    pack_spikes: bool = True
    _backward_chunk: Optional[int] = None

    @property
    def backward_chunk(self) -> Optional[int]:
        """Samples per chunk of the micro-batched backward (revsnn.chunked), or None: the recomputes in
        backward then run on the whole batch at once (faster; the default). Setting it checks that every
        recomputed layer can be split into samples (a ChunkedBackwardError, one sentence, if not)."""
        return self._backward_chunk

    @backward_chunk.setter
    def backward_chunk(self, chunk: Optional[int]) -> None:
        chunk = check_chunk_size(chunk)
        if chunk is not None:
            for name, fn in self._chunked_functions():
                check_chunkable(fn, name)
        self._backward_chunk = chunk

    @property
    def chunked(self) -> bool:
        return self._backward_chunk is not None

    def _chunked_functions(self) -> list[tuple[str, nn.Module]]:
        """(name, function) of every function this module recomputes in backward."""
        raise NotImplementedError(f"{type(self).__name__} has no chunked backward.")

    def set_backward_chunk(self, chunk: Optional[int]) -> None:
        self.backward_chunk = chunk

    def use_reversible(self, x: Tensor) -> bool:
        """Whether this call should run the reversible Function: in reversible mode, and only when a
        gradient will be asked for (otherwise the plain forward is the same computation, cheaper)."""
        return self.reversible and torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self.parameters()))


class ReversibleSequence(ReversibleModule):
    """A sequence of couplings over a state split in two halves along ``split_dim``.

    With ``reversible=True`` (the default) training keeps only the sequence output for backward, so the
    retained activation memory does not grow with the number of blocks. With ``reversible=False`` it is
    the plain-autograd twin: the same couplings, every activation kept. Both compute the same outputs,
    gradients and BatchNorm statistics.

    ``preserve_rng`` restores the RNG state before each recompute; turn it off only to demonstrate what
    goes wrong with stochastic blocks (dropout) without it.

    ``parallel`` (ParaRevSNN couplings only): run block k's G beside block k+1's F, forward and backward,
    on two CUDA streams. On the CPU the same schedule runs serially and gives identical numbers.

    ``backward_chunk``: recompute and backpropagate each branch that many samples at a time
    (revsnn.chunked); same gradients, a backward peak that grows with the batch only by the streams and
    their gradients, at the cost of recomputing each branch once more per BatchNorm in it.
    """

    def __init__(
        self,
        blocks: Sequence[Coupling],
        split_dim: int = 2,
        reversible: bool = True,
        preserve_rng: bool = True,
        parallel: bool = True,
        backward_chunk: Optional[int] = None,
    ):
        super().__init__()
        if len(blocks) == 0:
            raise ValueError("A ReversibleSequence needs at least one coupling block.")
        kinds = {type(b) for b in blocks}
        if not all(issubclass(k, Coupling) for k in kinds):
            raise TypeError("Every block of a ReversibleSequence must be a Coupling.")
        self.blocks = nn.ModuleList(blocks)
        self.split_dim = split_dim
        self.reversible = reversible
        self.preserve_rng = preserve_rng
        # ParaRevSNN's inter-block parallelism: only for sequences of parallel couplings.
        self.parallel_schedule = parallel and all(isinstance(b, ParaRevCoupling) for b in blocks)
        self.use_streams = True  # the side CUDA stream of the parallel schedule (no effect on the CPU)
        self.set_backward_chunk(backward_chunk)
        _baseline_refs()  # as in Recompute

    def _chunked_functions(self) -> list[tuple[str, nn.Module]]:
        return [(f"blocks.{i}.{part}", getattr(b, part)) for i, b in enumerate(self.blocks) for part in ("F", "G")]

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[self.split_dim] % 2:
            raise ValueError(f"The reversible state needs an even size on dim {self.split_dim}, got shape "
                             f"{tuple(x.shape)}.")
        x1, x2 = torch.chunk(x, 2, dim=self.split_dim)
        return x1, x2

    def forward(self, x: Tensor) -> Tensor:
        x = stream_dtype(x)
        if self.use_reversible(x):
            return _ReversibleFn.apply(x, self, *self.parameters())
        x1, x2 = self.split(x)
        for block in self.blocks:
            x1, x2 = block(x1, x2)
        return torch.cat((x1, x2), dim=self.split_dim)

    @torch.no_grad()
    def inverse(self, y: Tensor) -> Tensor:
        """Reconstruct the input from the output (for checks; training never needs to call this)."""
        y1, y2 = self.split(y)
        for block in reversed(self.blocks):
            y1, y2 = block.inverse(y1, y2)
        return torch.cat((y1, y2), dim=self.split_dim)

    def extra_repr(self) -> str:
        return f"split_dim={self.split_dim}, reversible={self.reversible}"


class _RecomputeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, owner: "Recompute", *params: Tensor) -> Tensor:
        ctx.owner = owner
        with torch.no_grad():
            out, ctx.evaluation = _evaluate_no_grad(owner.module, x, owner.preserve_rng, owner.keep_state,
                                                    owner.chunked)
        ctx.save_for_backward(x)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout: Tensor):
        owner: Recompute = ctx.owner
        (x,) = ctx.saved_tensors
        accumulate = ParamGrads(list(owner.parameters()))
        _, dx = _local_backward(owner.module, x, ctx.evaluation, dout, accumulate, pack=owner.pack_spikes,
                                need_output=False, chunk=owner.backward_chunk)
        return (_mark_ours(dx), None, *accumulate.grads)


class Recompute(ReversibleModule):
    """Keep only the input of ``module`` for backward and recompute the rest there.

    Like ``torch.utils.checkpoint``, but with the same restoration as the reversible blocks (RNG, neuron
    membranes, BatchNorm statistics updated once), so it stays exactly equal to its plain twin. Used for
    the non-reversible stem and downsample layers, whose activations otherwise dominate what a reversible
    network retains; the input it keeps is usually the output a reversible sequence keeps anyway.
    """

    def __init__(self, module: nn.Module, preserve_rng: bool = True, chunk: Optional[int] = None):
        super().__init__()
        self.module = module
        self.preserve_rng = preserve_rng
        self.set_backward_chunk(chunk)  # as ReversibleSequence's backward_chunk
        # Calibrated here, not lazily inside the first backward: a training step must allocate the same
        # at every call (the per-sample memory measure compares two steps event by event).
        _baseline_refs()

    def _chunked_functions(self) -> list[tuple[str, nn.Module]]:
        return [("module", self.module)]

    def forward(self, x: Tensor) -> Tensor:
        if self.use_reversible(x):
            return _RecomputeFn.apply(x, self, *self.parameters())
        return self.module(x)


def plain_twin(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every ReversibleModule switched to plain autograd.

    Parameters, buffers and neuron states are copied, so the twin starts identical to ``model``.
    """
    return set_reversible(copy.deepcopy(model), False)


def set_backward_chunk(model: nn.Module, chunk: Optional[int]) -> nn.Module:
    """Chunk the backward of every ReversibleSequence and Recompute in ``model`` (``chunk`` samples at a
    time; None: the whole batch). Raises ``revsnn.chunked.ChunkedBackwardError`` where a recomputed
    function has a layer that cannot be split into samples."""
    for m in model.modules():
        if isinstance(m, (ReversibleSequence, Recompute)):
            m.set_backward_chunk(chunk)
    return model


def set_reversible(model: nn.Module, reversible: bool) -> nn.Module:
    """Switch every ReversibleModule in ``model`` to reversible (True) or plain autograd (False)."""
    for m in model.modules():
        if isinstance(m, ReversibleModule):
            m.reversible = reversible
    return model
