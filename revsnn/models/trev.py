"""T-RevSNN (Hu et al., ICML 2024): temporal-reversible spiking columns, one column per time step.

Model, per column ``t = 0 .. T-1`` (``T = time_steps``) and level ``i = 0 .. L-1``::

    c_i[t] = L_i( Fuse_i(c_{i-1}[t], c_{i+1}[t-1]) ) + alpha_i[t] * c_i[t-1]
    Fuse_i  = Down_i(c_{i-1}[t]) + Up_i(c_{i+1}[t-1])          (column 0: Down only; c_i[-1] = 0)
    c_{-1}[t] = x[t]                                            (the stem output)

- ``c_i`` are real-valued per-level states, read by their consumers through a stateless spiking neuron
  ``Q`` (``revsnn.neurons.Threshold(0.5, Rectangular(1.0))``): a leaky membrane without reset whose
  leak ``alpha`` is learnt. Inside blocks every neuron is stateless ("temporal dynamics turned off").
- ``Q`` follows OUR contract (DESIGN §4): spike ``u > 0.5``, strict. The original code's
  ``floor(clip(u, 0, 1) + 0.5)`` spikes at ``u >= 0.5``; the two differ only at ``u == 0.5`` exactly. The
  surrogate is the same straight-through window: gradient 1 for ``0 <= u <= 1``, else 0.
- Down: level 0 identity on x; levels 1 .. L-2 ``Q -> Conv3x3 s2 -> BN``; the last level
  ``Q -> Conv1x1 -> BN`` (same resolution as the level below). Up: levels 0 .. L-3
  ``Q -> Conv1x1 -> BN -> nearest x2``; level L-2 ``Q -> Conv1x1 -> BN``; the last level has no Up.
  With L = 4 this is exactly the paper's wiring. Convolutions before a BN have no bias.
- ``level_strides`` (one per level 1 .. L-1, each 1 or 2): the stride of that level's Down convolution;
  the Up that reads a stride-2 level ends in nearest x2 upsampling, the Up that reads a stride-1 level
  has none (``Q -> Conv1x1 -> BN``). The default ``[2] * (L-2) + [1]`` is the wiring above.
  ``trevsnn-digits`` uses ``[1, 1, 1]``: every level stays at the stem's 8x8. NIR has no upsampling node,
  so only a single-resolution T-RevSNN collapses to a NIR graph (``exporters/collapse_trev.py``; a
  multi-resolution one is refused there and goes to ONNX); at 8x8 the pyramid buys little anyway.
- ``L_i`` is ``blocks_per_level`` ConvNeXt-like spiking blocks,
  ``u + gamma * DW2(PW2(Q(PW1(DW1(Q(u))))))`` (DW depthwise k x k with bias, PW 1x1 with bias,
  C -> expansion*C -> C, no normalisation inside). As in the code: even-indexed blocks ("block A") have
  ``gamma`` (per channel, init 1); odd-indexed blocks ("block B") have no gamma and, with
  ``reuse_pw2_dw2`` (default), share their PW2 and DW2 with the same block of every other column
  (parameter reuse across time steps). The default of 2 blocks is the paper's [A, B].
- ``alpha_i[t]`` is a per-channel parameter of each column ``t >= 1`` and level (init 0.5), as in the
  code (one per SubNet); column 0 has none since its previous state is 0. Before every forward,
  ``|alpha| >= alpha_min (1e-3)`` is enforced in place with the sign kept (zero counts as positive; the
  original code's ``sign()`` would turn 0 into 0). The clamp writes the parameter only when some entry is
  below the bound, so that an untouched alpha keeps its version (no in-place error for a graph that
  saved it), and gradients are taken at the clamped value in both the reversible model and its twin.

Simplifications and choices (the paper body was not available; see research/papers.md §2):

- Weight standardisation is NOT implemented: PW convolutions and the stem are plain ``nn.Conv2d``. The
  stem gets a BatchNorm after each convolution instead (real-valued, no neuron: it folds away at export).
  A trained weight-standardised conv is a plain conv with its standardised weight, so nothing downstream
  depends on this choice.
- Stem, the O(1) inference property: the stem is real-valued and runs ONCE per input. The model input is
  time-first ``[T, B, C, H, W]``. With ``static_input: true`` (direct encoding repeats the image every
  step) only ``x[0]`` is read, the stem runs once and the same ``x`` feeds level 0 of every column. With
  ``static_input: false`` (rate-coded or event input) the input must have exactly ``time_steps`` frames:
  the stem runs on each frame, all frames at once with time folded into the batch (its BatchNorm
  normalises over time and batch together), and column t reads frame t.
- Head: one spiking head on the top level of the LAST column, ``Q(c_top) -> global avg pool -> Linear``,
  logits ``[B, num_classes]``. The code's intermediate real-valued heads on earlier columns (deep
  supervision) and its two back-to-back 1x1 convs are not used: one linear layer is what they collapse to.
- Stem ``stem: [[kernel, stride], ...]``: ``[[7, 2], [3, 2]]`` for ImageNet (224 -> 56, the code's
  7x7 s2 + 3x3 s2), ``[[3, 1]]`` for 8x8 digits.

Reversible training (``TRevColumns``, a ``ReversibleModule``). One autograd Function spans ALL columns:
forward runs every level of every column under ``no_grad`` and saves with ``save_for_backward`` only the
stem output ``x`` (one frame, or T frames for non-static input) and the L states of the last column; the
Function's returned states are those last states. Backward walks the columns from last to first and,
inside a column, the levels top-down (the inverse of level i needs the already-reconstructed
``c_{i+1}[t-1]``)::

    f = L_i(Fuse_i(c_{i-1}[t], c_{i+1}[t-1]))        recomputed under grad
    c_i[t-1] = (c_i[t] - f) / alpha_i[t]

The recompute restores RNG state, neuron state and buffers through ``revsnn.reversible``'s
``_evaluate_no_grad``/``_evaluate_again``, so BatchNorm statistics are updated exactly once per forward.
Gradients: ``g(c_i[t-1]) = alpha_i[t] * g(c_i[t])`` plus what column t's ``Up_{i-1}`` sends back through its
``c_i[t-1]`` input, ``g(c_{i-1}[t]) += `` what level i's Down sends back,
``g(alpha) = sum_{B,H,W} g(c_i[t]) * c_i[t-1]``; all parameter gradients (shared PW2/DW2 accumulated over
columns) are returned as gradients of the Function's parameter inputs, via ``torch.autograd.grad``. Saved
activations are therefore O(levels), independent of both ``blocks_per_level`` and the number of columns
(for static input); the code saves every column's 5 tensors instead. RNG states are kept as ctx
attributes (one CPU state, about 5 kB, per level and column). Each inverse divides by alpha, so a
reconstruction error is amplified by ``1 / |alpha|`` per column; wherever a chain of inversions would
amplify it by more than ``max_amplification`` (16) the Function keeps that column's input states instead
(``TRevColumns.kept_columns``), which keeps float32 gradients within 1e-5 of the float64 twin for every
alpha the clamp allows (tests/test_trev_float32.py). At the default alpha = 0.5 and T = 4 nothing extra
is kept.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from ..neurons import Rectangular, Threshold, get_states, reset_states
from ..reversible import ParamGrads, ReversibleModule, _evaluate_again, _evaluate_no_grad, _Evaluation, param_aliases, stream_dtype

__all__ = [
    "CONFIGS",
    "build",
    "TRevSNN",
    "TRevColumns",
    "Level",
    "SpikingConvNeXtBlock",
    "SpikingHead",
    "threshold_neuron",
]

NeuronFactory = Callable[[], nn.Module]


def threshold_neuron(v_threshold: float = 0.5, surrogate_width: float = 1.0) -> NeuronFactory:
    """T-RevSNN's stateless neuron Q: spike ``u > v_threshold``, rectangular surrogate."""
    return lambda: Threshold(v_threshold, Rectangular(surrogate_width))


# --------------------------------------------------------------------------------------------------------
# Building blocks. Inside a column everything works on one time step, [B, C, H, W].


class SpikingConvNeXtBlock(nn.Module):
    """``u + gamma * DW2(PW2(Q(PW1(DW1(Q(u))))))``; without ``gamma`` when ``gamma_init`` is None.

    ``shared``: an existing ``(pw2, dw2)`` pair to reuse (block B's parameter reuse across columns).
    """

    def __init__(self, channels: int, kernel_size: int, expansion: int, neuron: NeuronFactory,
                 gamma_init: Optional[float] = 1.0, shared: Optional[tuple[nn.Conv2d, nn.Conv2d]] = None):
        super().__init__()
        hidden = expansion * channels
        self.q1 = neuron()
        self.dw1 = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.pw1 = nn.Conv2d(channels, hidden, 1)
        self.q2 = neuron()
        if shared is None:
            shared = make_pw2_dw2(channels, kernel_size, expansion)
        self.pw2, self.dw2 = shared
        self.gamma = None if gamma_init is None else nn.Parameter(torch.full((channels,), float(gamma_init)))

    def forward(self, u: Tensor) -> Tensor:
        y = self.dw2(self.pw2(self.q2(self.pw1(self.dw1(self.q1(u))))))
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        return u + y


def make_pw2_dw2(channels: int, kernel_size: int, expansion: int) -> tuple[nn.Conv2d, nn.Conv2d]:
    return (nn.Conv2d(expansion * channels, channels, 1),
            nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels))


def _spike_conv_bn(neuron: NeuronFactory, c_in: int, c_out: int, kernel: int, stride: int,
                   upsample: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [
        neuron(),
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if upsample:
        layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
    return nn.Sequential(*layers)


class Level(nn.Module):
    """``L_i(Down_i(lower) + Up_i(upper))``: one level of one column (``up`` is None in column 0)."""

    def __init__(self, down: nn.Module, up: Optional[nn.Module], blocks: Sequence[nn.Module]):
        super().__init__()
        self.down = down
        self.up = up
        self.blocks = nn.Sequential(*blocks)

    def forward(self, lower: Tensor, upper: Optional[Tensor] = None) -> Tensor:
        u = self.down(lower)
        if upper is not None:
            if self.up is None:
                raise ValueError("This level has no Up path (column 0, or the top level) but got an upper input.")
            u = u + self.up(upper)
        return self.blocks(u)


class _WithUpper(nn.Module):
    """A level with its upper input bound: a one-input function, as the reversible helpers expect."""

    def __init__(self, level: Level, upper: Optional[Tensor]):
        super().__init__()
        self.level = level
        self.upper = upper

    def forward(self, lower: Tensor) -> Tensor:
        return self.level(lower, self.upper)


class Column(nn.Module):
    """The L levels of one time step, and their leaks ``alpha`` (absent in column 0)."""

    def __init__(self, levels: Sequence[Level], alpha: Optional[nn.ParameterList]):
        super().__init__()
        self.levels = nn.ModuleList(levels)
        self.alpha = alpha


def default_level_strides(num_levels: int) -> list[int]:
    """The paper's wiring: levels 1 .. L-2 halve the resolution, the last level keeps it."""
    return [2] * (num_levels - 2) + [1]


def _frame(x: Tensor, t: int, static: bool) -> Tensor:
    """Column t's stem output: the shared one (static input) or frame t."""
    return x if static else x[t]


def _leak(f: Tensor, alpha: Optional[Tensor], prev: Optional[Tensor]) -> Tensor:
    """``f + alpha * prev`` (per-channel alpha), or ``f`` in column 0. Shared by both modes: bit-equal."""
    f = stream_dtype(f)  # the level states are rebuilt by subtraction and division: float32 under autocast
    if prev is None:
        return f
    return f + alpha.view(1, -1, 1, 1) * prev


# --------------------------------------------------------------------------------------------------------
# The columns and their reversible Function.


class _TRevFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, body: "TRevColumns", *params: Tensor):
        ctx.body = body
        ctx.static = static = body.is_static(x)
        L = body.num_levels
        states: list[Optional[Tensor]] = [None] * L
        evaluations = []
        kept = body.kept_columns()
        snapshots: list[Tensor] = []
        with torch.no_grad():
            for t, column in enumerate(body.columns):
                if t in kept:  # c[t-1] is kept, so column t is never inverted (see kept_columns)
                    snapshots += states
                x_t = _frame(x, t, static)
                evs = []
                for i, level in enumerate(column.levels):
                    lower = x_t if i == 0 else states[i - 1]
                    upper = states[i + 1] if (t > 0 and i < L - 1) else None
                    f, ev = _evaluate_no_grad(_WithUpper(level, upper), lower, body.preserve_rng)
                    states[i] = _leak(f, None if t == 0 else column.alpha[i], states[i] if t > 0 else None)
                    del f
                    evs.append(ev)
                evaluations.append(evs)
        ctx.evaluations = evaluations
        ctx.kept = kept
        ctx.save_for_backward(x, *states, *snapshots)
        return tuple(states)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_states: Tensor):
        body: TRevColumns = ctx.body
        L = body.num_levels
        x, *saved = ctx.saved_tensors
        states, saved = saved[:L], saved[L:]
        snapshot = {t: [s.detach() for s in saved[L * k:L * (k + 1)]] for k, t in enumerate(ctx.kept)}
        accumulate = ParamGrads(list(body.parameters()))

        x = x.detach()
        dx = torch.zeros_like(x)
        c = [s.detach() for s in states]          # c_i[t], starting with the last column
        g = list(grad_states)                     # dLoss / dc_i[t] (materialised: zeros when unused)
        for t in range(body.time_steps - 1, -1, -1):
            column = body.columns[t]
            x_t = _frame(x, t, ctx.static)
            prev: list[Optional[Tensor]] = [None] * L    # c_i[t-1], reconstructed top-down
            g_prev: list[Optional[Tensor]] = [None] * L  # dLoss / dc_i[t-1]
            for i in range(L - 1, -1, -1):
                level = column.levels[i]
                lower = x_t if i == 0 else c[i - 1]
                upper = prev[i + 1] if (t > 0 and i < L - 1) else None
                ps, aliases = param_aliases(level)
                box = [g[i]]
                g[i] = None  # handed over (in a box nothing else refers to): the blockwise backward drops it once used

                def finish(f: Tensor, g_i: Tensor, i: int = i, column=column) -> None:
                    # What this level's output gradient still gives, once f is known: the leak's shortcut
                    # to c_i[t-1] and alpha's gradient.
                    if t > 0:
                        alpha = column.alpha[i]
                        a = alpha.detach().view(1, -1, 1, 1)
                        prev[i] = snapshot[t][i] if t in snapshot else (c[i] - f.detach()) / a
                        shortcut = a * g_i
                        g_prev[i] = shortcut if g_prev[i] is None else g_prev[i] + shortcut
                        if alpha.requires_grad:
                            accumulate([alpha], [(g_i * prev[i]).sum(dim=(0, 2, 3))])

                if body.blockwise and _replayable(level):
                    f, got, n_leaves, restore = _level_backward_blockwise(level, lower, upper, ctx.evaluations[t][i],
                                                                          aliases, box, finish)
                    lower_leaf = upper_leaf = None
                    has_upper = upper is not None
                else:
                    f, lower_leaf, upper_leaf, restore = _recompute(level, lower, upper, ctx.evaluations[t][i],
                                                                    aliases)
                    leaves = [lower_leaf] + ([upper_leaf] if upper_leaf is not None else [])
                    n_leaves, has_upper = len(leaves), upper_leaf is not None
                    g_i = box.pop()
                    got = torch.autograd.grad(f, leaves + list(aliases.values()), g_i, allow_unused=True)
                    finish(f, g_i)
                    del g_i
                restore()
                accumulate(ps, list(got[n_leaves:]))
                d_lower = got[0] if got[0] is not None else torch.zeros_like(lower)
                if i == 0:
                    if ctx.static:
                        dx += d_lower
                    else:
                        dx[t] += d_lower
                else:
                    g[i - 1] = g[i - 1] + d_lower
                if has_upper and got[1] is not None:
                    g_prev[i + 1] = got[1] if g_prev[i + 1] is None else g_prev[i + 1] + got[1]
                del f, lower_leaf, upper_leaf, got, d_lower
            if t > 0:
                c = prev
                g = [gp if gp is not None else torch.zeros_like(cp) for gp, cp in zip(g_prev, prev)]
        return (dx, None, *accumulate.grads)


def _replayable(level: Level) -> bool:
    """Whether the level's blocks may be re-run any number of times in backward with the same result:
    no buffers (BatchNorm statistics), no dropout (RNG draws) and no stateful neuron inside them. True for
    T-RevSNN's ConvNeXt blocks (stateless threshold neurons, no normalisation); anything else falls back
    to recomputing the whole level at once."""
    if any(True for _ in level.blocks.buffers()):
        return False
    # The fuse (Down, Up) is replayed too: its BatchNorm statistics are restored afterwards, but dropout or
    # a stateful neuron there would not replay the same.
    return not any(isinstance(m, nn.modules.dropout._DropoutNd) or getattr(m, "stateful", False)
                   for m in level.modules())


class _LevelBackward(nn.Module):
    """One level's backward, block by block, run as the "forward" of ``_evaluate_again`` (so that it runs
    under the forward's RNG, neuron states, autocast and spike packing, on the parameter aliases).

    Why: recomputing a level's ``blocks_per_level`` blocks as one graph keeps every block's activations
    at once, so the backward's peak grows with the blocks per level. The blocks are not invertible, so
    their inputs cannot be reconstructed; instead the input of block k is replayed from the level's
    inputs under no_grad (the fuse, then blocks 0 .. k-1) and only block k is recomputed under grad and
    backpropagated, last block first. The peak is one block's graph plus one state whatever the depth,
    for ``n (n - 1) / 2`` extra block forwards and ``n`` extra fuse forwards per level (one block and two
    fuses at the paper's 2 blocks). Running statistics end as the forward left them (restored).
    Returns ``(f detached, [d lower, (d upper,) *d aliases])``."""

    def __init__(self, level: Level, upper: Optional[Tensor], grad: list, aliases: list[Tensor],
                 on_output: Callable[[Tensor, Tensor], None]):
        super().__init__()
        self.level = level
        self.upper = upper
        self.grad = grad     # a one-element list, popped by forward, so that the gradient is freed once used
        self.alias_list = aliases
        self.on_output = on_output  # called with (f, the level's output gradient) as soon as f is known

    def fuse(self, lower: Tensor) -> Tensor:
        u = self.level.down(lower)
        return u if self.upper is None else u + self.level.up(self.upper)

    def forward(self, lower: Tensor):
        aliases = self.alias_list
        sums: list[Optional[Tensor]] = [None] * len(aliases)

        def add(grads) -> None:
            for j, gr in enumerate(grads):
                if gr is not None:
                    sums[j] = gr if sums[j] is None else sums[j] + gr

        blocks = list(self.level.blocks)
        g, f = self.grad.pop(), None
        for k in range(len(blocks) - 1, -1, -1):
            # Block k's input, replayed from the level's inputs (the fuse output is not kept between
            # blocks: then exactly one state is alive beside block k's graph, at every depth). BatchNorm
            # in the fuse updates its running statistics on each replay; _evaluate_again restores them.
            with torch.no_grad():
                h = self.fuse(lower)
                for j in range(k):
                    h = blocks[j](h)
            h.requires_grad_(True)
            out = blocks[k](h)
            if f is None:
                f = out.detach()
                self.on_output(f, g)
            got = torch.autograd.grad(out, [h, *aliases], g, allow_unused=True)
            del out, h
            g = got[0] if got[0] is not None else torch.zeros_like(f)
            add(got[1:])
        # The fuse last, under grad: its BatchNorm's backward then reads the statistics its forward used.
        u = self.fuse(lower)
        leaves = [lower] + ([self.upper] if self.upper is not None else [])
        got = torch.autograd.grad(u, leaves + list(aliases), g, allow_unused=True)
        del u
        add(got[len(leaves):])
        d_leaves = [d if d is not None else torch.zeros_like(leaf) for d, leaf in zip(got[:len(leaves)], leaves)]
        return f, [*d_leaves, *sums]


def _level_backward_blockwise(level: Level, lower: Tensor, upper: Optional[Tensor], ev: _Evaluation,
                              aliases: dict[str, Tensor], grad: list, on_output: Callable[[Tensor, Tensor], None]):
    """``_LevelBackward`` under ``_evaluate_again``: ``(f, gradients, number of input leaves, restore)``."""
    lower_leaf = lower.detach().requires_grad_(True)
    upper_leaf = None if upper is None else upper.detach().requires_grad_(True)
    runner = _LevelBackward(level, upper_leaf, grad, list(aliases.values()), on_output)
    del grad
    named = {f"level.{name}": a for name, a in aliases.items()}
    (f, got), restore = _evaluate_again(runner, lower_leaf, ev, named)
    return f, got, 1 + (upper_leaf is not None), restore


def _recompute(level: Level, lower: Tensor, upper: Optional[Tensor], ev: _Evaluation,
               aliases: Optional[dict[str, Tensor]] = None):
    """Re-run one level under grad from detached leaves, as the forward ran it (on the level's parameter
    ``aliases`` from ``param_aliases(level)`` if given, so that parameter hooks fire only once)."""
    lower_leaf = lower.detach().requires_grad_(True)
    upper_leaf = None if upper is None else upper.detach().requires_grad_(True)
    wrapped = _WithUpper(level, upper_leaf)
    if aliases is not None:
        aliases = {f"level.{name}": a for name, a in aliases.items()}
    f, restore = _evaluate_again(wrapped, lower_leaf, ev, aliases)
    return f, lower_leaf, upper_leaf, restore


class TRevColumns(ReversibleModule):
    """The T columns of L levels: stem output in, the L states of the last column out.

    ``forward(x)`` takes one stem output ``[B, C0, H, W]`` shared by every column (static input) or one
    per column, ``[T, B, C0, H, W]``. With ``reversible=True`` and gradients needed it runs through the
    reversible Function (see the module docstring); otherwise it is the plain-autograd twin.
    """

    def __init__(
        self,
        channels: Sequence[int],
        time_steps: int,
        blocks_per_level: int = 2,
        kernel_size: int = 3,
        expansion: int = 4,
        neuron: Optional[NeuronFactory] = None,
        reuse_pw2_dw2: bool = True,
        alpha_init: float = 0.5,
        alpha_min: float = 1e-3,
        gamma_init: float = 1.0,
        reversible: bool = True,
        preserve_rng: bool = True,
        level_strides: Optional[Sequence[int]] = None,
        max_amplification: float = 16.0,
    ):
        super().__init__()
        channels = [int(c) for c in channels]
        if not max_amplification >= 1:
            raise ValueError(f"max_amplification must be at least 1, got {max_amplification}.")
        if len(channels) < 2:
            raise ValueError(f"T-RevSNN needs at least 2 levels, got channels={channels}.")
        if time_steps < 1:
            raise ValueError(f"T-RevSNN needs time_steps >= 1 (one column per step), got {time_steps}.")
        if blocks_per_level < 1:
            raise ValueError(f"T-RevSNN needs blocks_per_level >= 1, got {blocks_per_level}.")
        if not alpha_min > 0:
            raise ValueError(f"alpha_min must be positive (the inverse divides by alpha), got {alpha_min}.")
        neuron = neuron or threshold_neuron()
        L = len(channels)
        strides = default_level_strides(L) if level_strides is None else [int(s) for s in level_strides]
        if len(strides) != L - 1 or any(s not in (1, 2) for s in strides):
            raise ValueError(f"level_strides must give a stride of 1 or 2 for each of levels 1..{L - 1}, got "
                             f"{list(level_strides)}.")
        self.level_strides = strides
        self.channels = channels
        self.num_levels = L
        self.time_steps = int(time_steps)
        self.alpha_min = float(alpha_min)
        self.max_amplification = float(max_amplification)
        self.reversible = reversible
        self.preserve_rng = preserve_rng
        # Backward recomputes a level block by block (``_LevelBackward``): flat peak in blocks per level.
        # False recomputes each level as one graph (fewer block forwards, a peak that grows with depth).
        self.blockwise = True

        shared = {(i, b): make_pw2_dw2(channels[i], kernel_size, expansion)
                  for i in range(L) for b in range(1, blocks_per_level, 2)} if reuse_pw2_dw2 else {}
        columns = []
        for t in range(self.time_steps):
            levels = []
            for i in range(L):
                if i == 0:
                    down: nn.Module = nn.Identity()
                elif i < L - 1:
                    down = _spike_conv_bn(neuron, channels[i - 1], channels[i], 3, strides[i - 1])
                else:
                    down = _spike_conv_bn(neuron, channels[i - 1], channels[i], 1, strides[i - 1])
                up = None
                if t > 0 and i < L - 1:
                    up = _spike_conv_bn(neuron, channels[i + 1], channels[i], 1, 1, upsample=strides[i] == 2)
                blocks = []
                for b in range(blocks_per_level):
                    block_a = b % 2 == 0
                    blocks.append(SpikingConvNeXtBlock(
                        channels[i], kernel_size, expansion, neuron,
                        gamma_init=gamma_init if block_a else None,
                        shared=None if block_a else shared.get((i, b))))
                levels.append(Level(down, up, blocks))
            alpha = None if t == 0 else nn.ParameterList(
                [nn.Parameter(torch.full((c,), float(alpha_init))) for c in channels])
            columns.append(Column(levels, alpha))
        self.columns = nn.ModuleList(columns)

    def alphas(self) -> list[Tensor]:
        return [a for col in self.columns if col.alpha is not None for a in col.alpha]

    @torch.no_grad()
    def clamp_alpha_(self) -> None:
        """Enforce ``|alpha| >= alpha_min`` with the sign kept (zero counts as positive), in place."""
        for a in self.alphas():
            if (a.abs() < self.alpha_min).any():
                sign = torch.where(a < 0, -torch.ones_like(a), torch.ones_like(a))
                a.copy_(sign * a.abs().clamp_min(self.alpha_min))

    def kept_columns(self) -> list[int]:
        """The columns ``t`` whose previous states ``c[t-1]`` the reversible Function keeps instead of
        reconstructing them by ``(c[t] - f) / alpha``.

        Why: each inversion divides by alpha, so a float error in ``c[t]`` reaches ``c[t-1]`` multiplied
        by ``1 / |alpha|``, and the factors multiply along a chain of inversions. In float32 (eps 6e-8)
        T = 16 columns at alpha = 0.5 already give 2^15 x eps, and alpha near the clamp (1e-3) is wrong
        after one column, even in float64. An exact reformulation would need fixed-point state with an
        information buffer (MacKay et al. 2018) and would change the model; bounding alpha away from 0
        would restrict what the model can learn. Instead the Function bounds the amplification: walking
        the columns as backward does (last to first), it multiplies ``max 1 / |alpha_i[t]|`` over levels
        and channels and, before the product would exceed ``max_amplification``, keeps that column's
        input states and starts a new chain. With the default of 16 a reconstruction carries at most
        16 x eps of relative error (about 1e-6 in float32); at alpha = 0.5 and T = 4 nothing is kept
        (O(levels) memory as before), at T = 16 every fourth column is, and near the clamp every column.
        """
        kept: list[int] = []
        chain = 1.0
        for t in range(self.time_steps - 1, 0, -1):
            factor = max(float(a.detach().abs().min().reciprocal()) for a in self.columns[t].alpha)
            if chain * factor > self.max_amplification:
                kept.append(t)
                chain = 1.0
            else:
                chain *= factor
        return sorted(kept)

    def is_static(self, x: Tensor) -> bool:
        """True for one stem output shared by every column, False for one per column (checked)."""
        if x.dim() == 4:
            return True
        if x.dim() == 5:
            if x.shape[0] != self.time_steps:
                raise ValueError(f"Per-column input must have {self.time_steps} frames (one per column), got "
                                 f"shape {tuple(x.shape)}.")
            return False
        raise ValueError(f"TRevColumns expects [B, C, H, W] (static) or [T, B, C, H, W], got shape "
                             f"{tuple(x.shape)}.")

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        self.is_static(x)
        self.clamp_alpha_()
        if self.use_reversible(x):
            return _TRevFn.apply(x, self, *self.parameters())
        return tuple(self.column_states(x)[-1])

    def column_states(self, x: Tensor) -> list[list[Tensor]]:
        """Every column's states ``[c_0[t], ..., c_{L-1}[t]]`` for t = 0 .. T-1, by plain autograd."""
        static = self.is_static(x)
        L = self.num_levels
        states: list[Optional[Tensor]] = [None] * L
        history = []
        for t, column in enumerate(self.columns):
            x_t = _frame(x, t, static)
            for i, level in enumerate(column.levels):
                lower = x_t if i == 0 else states[i - 1]
                upper = states[i + 1] if (t > 0 and i < L - 1) else None
                f = level(lower, upper)
                states[i] = _leak(f, None if t == 0 else column.alpha[i], states[i] if t > 0 else None)
            history.append(list(states))
        return history

    @torch.no_grad()
    def inverse_column(self, t: int, x: Tensor, states: Sequence[Tensor]) -> list[Tensor]:
        """Reconstruct column ``t-1``'s states from column ``t``'s (t >= 1), top-down, as backward does.

        Buffers (BatchNorm statistics) are left as they were; in training mode BatchNorm uses the batch
        statistics of the reconstructed inputs, exactly as the backward recompute does.
        """
        static = self.is_static(x)
        if not 1 <= t < self.time_steps:
            raise ValueError(f"Column {t} has no previous column to reconstruct (1 <= t < {self.time_steps}).")
        column = self.columns[t]
        L = self.num_levels
        prev: list[Optional[Tensor]] = [None] * L
        for i in range(L - 1, -1, -1):
            level = column.levels[i]
            lower = _frame(x, t, static) if i == 0 else states[i - 1]
            upper = prev[i + 1] if i < L - 1 else None
            ev = _Evaluation(get_states(level), get_states(level), None, None)
            f, _, _, restore = _recompute(level, lower, upper, ev)
            restore()
            prev[i] = (states[i] - f.detach()) / column.alpha[i].view(1, -1, 1, 1)
        return prev

    def extra_repr(self) -> str:
        return f"channels={self.channels}, time_steps={self.time_steps}, reversible={self.reversible}"


# --------------------------------------------------------------------------------------------------------
# The whole network.


class SpikingHead(nn.Module):
    """``Q(c_top) -> global average pool -> Linear``: logits ``[B, num_classes]``."""

    def __init__(self, channels: int, num_classes: int, neuron: NeuronFactory):
        super().__init__()
        self.q = neuron()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, c_top: Tensor) -> Tensor:
        return self.fc(self.flatten(self.pool(self.q(c_top))))


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


class TRevSNN(nn.Module):
    """Stem (real-valued, once per input) -> T reversible columns -> spiking head on the last column."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (64, 128, 256, 384),
        time_steps: int = 4,
        blocks_per_level: int = 2,
        kernel_size: int = 3,
        expansion: int = 4,
        stem: Sequence[Sequence[int]] = ((7, 2), (3, 2)),
        static_input: bool = True,
        reuse_pw2_dw2: bool = True,
        v_threshold: float = 0.5,
        surrogate_width: float = 1.0,
        alpha_init: float = 0.5,
        alpha_min: float = 1e-3,
        gamma_init: float = 1.0,
        neuron: Optional[NeuronFactory] = None,
        reversible: bool = True,
        level_strides: Optional[Sequence[int]] = None,
    ):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        if len(self.input_shape) != 3:
            raise ValueError(f"input_shape must be [C, H, W], got {list(input_shape)}.")
        if not stem:
            raise ValueError("The stem needs at least one [kernel, stride] layer.")
        channels = [int(c) for c in channels]
        neuron = neuron or threshold_neuron(v_threshold, surrogate_width)
        self.time_steps = int(time_steps)
        self.static_input = bool(static_input)

        layers: list[nn.Module] = []
        c_in, (h, w) = self.input_shape[0], self.input_shape[1:]
        for kernel, stride in stem:
            layers += [nn.Conv2d(c_in, channels[0], kernel, stride=stride, padding=kernel // 2, bias=False),
                       nn.BatchNorm2d(channels[0])]
            c_in, h, w = channels[0], _conv_out(h, kernel, stride), _conv_out(w, kernel, stride)
        self.stem = nn.Sequential(*layers)
        # nearest x2 must restore the size a stride-2 conv halved: a level below a stride-2 level needs even sizes.
        strides = default_level_strides(len(channels)) if level_strides is None else [int(s) for s in level_strides]
        halving = [i for i, s in enumerate(strides) if s == 2]
        for i, s in enumerate(strides):
            if s == 2:
                if h % 2 or w % 2:
                    raise ValueError(f"Level {i} of T-RevSNN would be {h}x{w}; levels {halving} need even sizes "
                                     f"for the x2 upsampling. Change input_shape, stem, level_strides or the levels.")
                h, w = (h + 1) // 2, (w + 1) // 2
        self.body = TRevColumns(channels, time_steps, blocks_per_level, kernel_size, expansion, neuron,
                                reuse_pw2_dw2, alpha_init, alpha_min, gamma_init, reversible,
                                level_strides=level_strides)
        self.head = SpikingHead(channels[-1], num_classes, neuron)

    def encode(self, x: Tensor) -> Tensor:
        """The stem: ``[B, C0, H0, W0]`` from ``x[0]`` (static input) or ``[T, B, ...]`` per frame."""
        if x.dim() != 5 or tuple(x.shape[2:]) != self.input_shape:
            raise ValueError(f"T-RevSNN expects a time-first input [T, B, {', '.join(map(str, self.input_shape))}]"
                             f", got shape {tuple(x.shape)}.")
        if self.static_input:
            return self.stem(x[0])
        T, B = x.shape[:2]
        if T != self.time_steps:
            raise ValueError(f"This T-RevSNN has {self.time_steps} columns and static_input false, so the input "
                             f"needs {self.time_steps} time steps; got {T}.")
        s = self.stem(x.reshape(T * B, *x.shape[2:]))
        return s.reshape(T, B, *s.shape[1:])

    def forward(self, x: Tensor) -> Tensor:
        reset_states(self)
        states = self.body(self.encode(x))
        return self.head(states[-1])


# --------------------------------------------------------------------------------------------------------
# Registry.

_MODEL_KEYS = ("channels", "time_steps", "blocks_per_level", "kernel_size", "expansion", "stem", "static_input",
               "reuse_pw2_dw2", "v_threshold", "surrogate_width", "alpha_init", "alpha_min", "gamma_init",
               "level_strides")

def _imagenet(channels: list[int], kernel_size: int) -> dict:
    """The code's ImageNet settings: 224x224 input, 4 columns, stem 7x7 s2 + 3x3 s2, paper wiring."""
    return {
        "family": "trevsnn",
        "input_shape": [3, 224, 224],
        "num_classes": 1000,
        "channels": channels,
        "time_steps": 4,
        "blocks_per_level": 2,
        "kernel_size": kernel_size,
        "expansion": 4,
        "stem": [[7, 2], [3, 2]],
        "static_input": True,
        "reuse_pw2_dw2": True,
        "v_threshold": 0.5,
        "surrogate_width": 1.0,
        "alpha_init": 0.5,
        "alpha_min": 1e-3,
        "gamma_init": 1.0,
        "train": {"epochs": 300, "lr": 2e-3, "time_steps": 4, "batch_size": 512, "encoding": "direct"},
    }


CONFIGS: dict[str, dict] = {
    "trevsnn-tiny": _imagenet([64, 128, 256, 384], 3),
    # The code's small config (kernel 5); its log reports 32.33M parameters for the original, which also
    # has weight-standardised convolutions and deep-supervision heads that this implementation leaves out.
    "trevsnn-small": _imagenet([96, 192, 384, 512], 5),
    # Single resolution (level_strides all 1): every level stays 8x8, so Up is Q -> Conv1x1 -> BN with no
    # upsampling and the trained model collapses to NIR (which has no upsampling node); see exporters.
    "trevsnn-digits": {
        "family": "trevsnn",
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "channels": [16, 24, 24, 32],
        "level_strides": [1, 1, 1],
        "time_steps": 4,
        "blocks_per_level": 2,
        "kernel_size": 3,
        "expansion": 4,
        "stem": [[3, 1]],
        "static_input": True,
        "reuse_pw2_dw2": True,
        "v_threshold": 0.5,
        "surrogate_width": 1.0,
        "alpha_init": 0.5,
        "alpha_min": 1e-3,
        "gamma_init": 1.0,
        "train": {"epochs": 20, "lr": 3e-3, "time_steps": 4, "batch_size": 64, "encoding": "direct"},
    },
}


def build(config: dict) -> TRevSNN:
    kwargs = {k: config[k] for k in _MODEL_KEYS if k in config}
    return TRevSNN(config["input_shape"], config["num_classes"], **kwargs)
