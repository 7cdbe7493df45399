"""T-RevSNN (revsnn.models.trev): the reversible columns against their plain-autograd twin, float64 on CPU."""

import copy

import pytest
import torch
from torch import nn

from revsnn.memory import activation_bytes
from revsnn.models import build_model, get_config
from revsnn.models.trev import SpikingConvNeXtBlock, TRevColumns, TRevSNN
from revsnn.neurons import Threshold
from revsnn.reversible import plain_twin

CHANNELS = (2, 3, 3, 4)  # 4 levels on 8x8: 8, 4, 2, 2


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make_model(T: int, blocks: int, static: bool = True, seed: int = 0, classes: int = 5) -> TRevSNN:
    torch.manual_seed(seed)
    model = TRevSNN([1, 8, 8], classes, channels=CHANNELS, time_steps=T, blocks_per_level=blocks,
                    stem=[[3, 1]], static_input=static).double()
    # Non-trivial alphas (per channel, both signs) so that the leak and its inverse are really exercised,
    # and PW1 gains large enough that the hidden Q of every block spikes even at these tiny widths.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SpikingConvNeXtBlock):
                m.pw1.weight.mul_(3.0)
        for a in model.body.alphas():
            a.uniform_(0.3, 0.9).mul_(torch.where(torch.rand_like(a) < 0.2, -1.0, 1.0))
    return model


def inputs(T: int, static: bool, B: int = 2, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    if static:
        # Direct encoding: one frame repeated T times. Expanded, so the input storage is one frame and its
        # retained bytes do not depend on T (the memory test relies on this).
        x = torch.rand(1, B, 1, 8, 8, generator=g, dtype=torch.float64).expand(T, -1, -1, -1, -1)
    else:
        x = torch.rand(T, B, 1, 8, 8, generator=g, dtype=torch.float64)
    return x


def run(model: nn.Module, x: torch.Tensor, w: torch.Tensor):
    x = x.clone().requires_grad_(True)
    out = model(x)
    (out * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.detach(), x.grad.clone(), grads


def q_populations(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, int, float]]:
    """name -> (spikes, size, min |u - theta|) of every Q population, from a no-grad forward of a copy."""
    model = copy.deepcopy(model)
    records = {}
    for name, m in model.named_modules():
        if isinstance(m, Threshold):
            m.register_forward_hook(lambda mod, i, o, name=name: records.__setitem__(
                name, (int(o.sum().item()), o.numel(), (i[0] - mod.v_threshold).abs().min().item())))
    with torch.no_grad():
        model(x)
    n_neurons = sum(isinstance(m, Threshold) for m in model.modules())
    assert len(records) == n_neurons, "every Q population is evaluated exactly once per forward"
    return records


@pytest.mark.parametrize("T,blocks,static", [(1, 1, True), (1, 2, True), (3, 1, True), (3, 2, True),
                                             (3, 2, False)])
def test_gradients_equal_plain_twin(T, blocks, static):
    rev = make_model(T, blocks, static)
    twin = plain_twin(rev)
    assert twin.body.reversible is False and rev.body.reversible is True
    x = inputs(T, static)
    w = torch.randn(2, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    pops = q_populations(rev, x)
    silent = [name for name, (s, _, _) in pops.items() if s == 0]
    assert not silent, f"Q populations that never spiked (the comparison would be vacuous): {silent}"
    assert sum(s for s, _, _ in pops.values()) < sum(n for _, n, _ in pops.values())
    # No input sits within rounding distance of the threshold, where a reconstruction error could flip it.
    assert min(m for _, _, m in pops.values()) > 1e-9

    out_r, dx_r, grads_r = run(rev, x, w)
    out_p, dx_p, grads_p = run(twin, x, w)

    assert torch.equal(out_r, out_p)
    torch.testing.assert_close(dx_r, dx_p, rtol=1e-9, atol=1e-12)
    assert grads_r.keys() == grads_p.keys()
    for name in grads_r:
        assert grads_p[name].abs().sum() > 0, name
        torch.testing.assert_close(grads_r[name], grads_p[name], rtol=1e-9, atol=1e-12, msg=name)
    # BatchNorm statistics: updated once per forward, the recompute leaves them alone.
    for (name, b_r), (_, b_p) in zip(rev.named_buffers(), twin.named_buffers()):
        assert torch.equal(b_r, b_p), name
    for m in rev.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.num_batches_tracked.item() == 1


def test_shared_block_parameters_accumulate_over_columns():
    rev = make_model(3, 2)
    col0, col2 = rev.body.columns[0], rev.body.columns[2]
    # Block B (index 1) reuses PW2/DW2 across columns: one tensor, registered in every column.
    assert col0.levels[1].blocks[1].pw2.weight is col2.levels[1].blocks[1].pw2.weight
    assert col0.levels[1].blocks[0].pw2.weight is not col2.levels[1].blocks[0].pw2.weight
    x, w = inputs(3, True), torch.randn(2, 5, dtype=torch.float64)
    _, _, grads_r = run(rev, x, w)
    _, _, grads_p = run(plain_twin(rev), x, w)
    name = "body.columns.0.levels.1.blocks.1.pw2.weight"
    assert name in grads_r and "body.columns.2.levels.1.blocks.1.pw2.weight" not in grads_r  # deduplicated
    torch.testing.assert_close(grads_r[name], grads_p[name], rtol=1e-9, atol=1e-12)


def test_repeatable_and_alpha_clamped():
    rev = make_model(3, 1)
    with torch.no_grad():
        a = rev.body.columns[1].alpha[0]
        a[0], a[1] = 0.0, -1e-5
    twin = plain_twin(rev)
    x, w = inputs(3, True), torch.randn(2, 5, dtype=torch.float64)
    first = run(rev, x, w)
    run(twin, x, w)
    # |alpha| >= 1e-3 with the sign kept (0 counts as positive), the same in both modes.
    assert rev.body.columns[1].alpha[0][:2].tolist() == [1e-3, -1e-3]
    for a_r, a_p in zip(rev.body.alphas(), twin.body.alphas()):
        assert torch.equal(a_r, a_p) and bool((a_r.abs() >= 1e-3).all())
    for p in rev.parameters():
        p.grad = None
    second = run(rev, x, w)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    for name in first[2]:
        assert torch.equal(first[2][name], second[2][name]), name


def reconstruction_errors(model: TRevSNN, x: torch.Tensor) -> tuple[float, float]:
    """(worst single-column inverse error, error after inverting the whole chain back to column 0)."""
    with torch.no_grad():
        s = model.encode(x)
        history = model.body.column_states(s)
        T = len(history)
        step = max((a - b).abs().max().item()
                   for t in range(1, T)
                   for a, b in zip(model.body.inverse_column(t, s, history[t]), history[t - 1]))
        states = history[-1]
        for t in range(T - 1, 0, -1):
            states = model.body.inverse_column(t, s, states)
        chain = max((a - b).abs().max().item() for a, b in zip(states, history[0]))
    return step, chain


def test_inverse_reconstructs_previous_column():
    model = make_model(4, 2)
    x = inputs(4, True)
    step, chain = reconstruction_errors(model, x)
    assert step < 1e-10 and chain < 1e-10, (step, chain)

    # alpha = 1e-3 (the clamp bound): each inverse divides by alpha. Measured (states up to ~5 in size):
    # one column's inverse errs by ~2e-13 (vs ~1e-15 with alpha in 0.3..0.9, ~200x); inverting the whole
    # chain of 4 columns back to column 0 errs by ~2e-7 (vs ~4e-15), because every inverse also divides the
    # error it is handed by alpha: about 1000x per further column. That is the conditioning of the
    # T-RevSNN inverse itself; in float32 a small alpha makes reconstruction (and backward) unreliable.
    with torch.no_grad():
        for a in model.body.alphas():
            a.fill_(1e-3)
    step_small, chain_small = reconstruction_errors(model, x)
    assert step_small < 1e-10, step_small
    assert chain_small < 1e-5, chain_small


class SmoothQ(nn.Module):
    """A differentiable stand-in for Q (sigmoid instead of the step): gradcheck only."""

    def forward(self, u):
        return torch.sigmoid(4.0 * (u - 0.5))


def test_gradcheck_column_function_with_smooth_neurons():
    torch.manual_seed(0)
    body = TRevColumns((2, 2, 2), time_steps=3, blocks_per_level=2, expansion=2, neuron=SmoothQ).double()
    with torch.no_grad():
        for a in body.alphas():
            a.uniform_(0.4, 0.8)
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    params = list(body.parameters())
    assert any(p is a for p in params for a in body.alphas())

    def f(x, *ps):
        return body(x)

    assert type(f(x)[0].grad_fn).__name__ == "_TRevFnBackward"  # the reversible Function is what is checked

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5)


def retained(model: nn.Module, x: torch.Tensor) -> int:
    w = torch.randn(x.shape[1], 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    return activation_bytes(model, x, loss_fn=lambda o: (o * w).sum())


def test_activation_memory_flat_in_blocks_and_columns():
    # Blocks per level (T = 2): the reversible model retains the same bytes; the twin grows linearly (in
    # steps of one A+B block pair: block A's gamma product keeps one more tensor than block B).
    x = inputs(2, True)
    rev_b, twin_b = {}, {}
    for n in (1, 2, 3, 5):
        rev = make_model(2, n)
        rev_b[n], twin_b[n] = retained(rev, x), retained(plain_twin(rev), x)
    assert len(set(rev_b.values())) == 1, rev_b
    assert twin_b[1] < twin_b[2] < twin_b[3]
    assert twin_b[5] - twin_b[3] == twin_b[3] - twin_b[1] > 0, twin_b
    assert rev_b[1] < twin_b[1]

    # Columns, static input: what the Function saves (stem output x and the L last-column states) does
    # not depend on T at all, so the reversible bytes are identical; the twin grows with every column.
    rev_t, twin_t = {}, {}
    for T in (1, 2, 3):
        rev = make_model(T, 2)
        xt = inputs(T, True)
        rev_t[T], twin_t[T] = retained(rev, xt), retained(plain_twin(rev), xt)
    assert len(set(rev_t.values())) == 1, rev_t
    assert twin_t[1] < twin_t[2] < twin_t[3], twin_t

    # Columns, per-column (non-static) input: the reversible model grows by exactly one frame each of the
    # input (saved by the stem conv), the stem conv output (saved by its BatchNorm) and the stem output
    # (saved by the Function): 8 bytes x B x (1 + 2 C0) x 8 x 8 per column. Nothing inside the columns.
    per_column = 8 * 2 * (1 + 2 * CHANNELS[0]) * 8 * 8
    rev_n, twin_n = {}, {}
    for T in (1, 2, 3):
        rev = make_model(T, 2, static=False)
        xt = inputs(T, False)
        rev_n[T], twin_n[T] = retained(rev, xt), retained(plain_twin(rev), xt)
    assert rev_n[2] - rev_n[1] == rev_n[3] - rev_n[2] == per_column, (rev_n, per_column)
    assert twin_n[2] - twin_n[1] > 5 * per_column, twin_n


def expected_trev_params(cfg: dict) -> int:
    """Parameter count of a T-RevSNN config, counted by hand from the architecture (independent check)."""
    C, T, k, e, nb = cfg["channels"], cfg["time_steps"], cfg["kernel_size"], cfg["expansion"], cfg["blocks_per_level"]
    L = len(C)
    dw = lambda c: c * k * k + c  # noqa: E731
    total, c_in = 0, cfg["input_shape"][0]
    for kern, _ in cfg["stem"]:
        total += c_in * C[0] * kern * kern + 2 * C[0]
        c_in = C[0]
    for i, c in enumerate(C):
        per_column = 0
        for b in range(nb):
            per_column += dw(c) + (c * e * c + e * c)          # DW1, PW1
            if b % 2 == 0:
                per_column += (e * c * c + c) + dw(c) + c      # own PW2, DW2, gamma
            else:
                total += (e * c * c + c) + dw(c)               # PW2, DW2 shared by all columns
        if i > 0:
            kern = 3 if i < L - 1 else 1
            per_column += C[i - 1] * c * kern * kern + 2 * c    # Down conv + BN
        total += T * per_column
        if i < L - 1:
            total += (T - 1) * (C[i + 1] * c + 2 * c)           # Up conv + BN, columns 1..T-1
        total += (T - 1) * c                                     # alpha, columns 1..T-1
    return total + C[-1] * cfg["num_classes"] + cfg["num_classes"]


def test_registry_configs(capsys):
    tiny = build_model("trevsnn-tiny")
    n_tiny = sum(p.numel() for p in tiny.parameters())
    assert isinstance(tiny, TRevSNN) and tiny.config["name"] == "trevsnn-tiny"
    assert n_tiny == expected_trev_params(get_config("trevsnn-tiny"))
    with capsys.disabled():
        print(f"\ntrevsnn-tiny: {n_tiny:,} parameters")

    digits = build_model("trevsnn-digits")
    cfg = digits.config
    assert sum(p.numel() for p in digits.parameters()) == expected_trev_params(cfg)
    assert cfg["train"]["encoding"] == "direct" and cfg["train"]["time_steps"] == cfg["time_steps"]
    x = torch.rand(cfg["time_steps"], 3, *cfg["input_shape"])
    out = digits(x)
    assert out.shape == (3, 10)
    out.sum().backward()
    digits.eval()
    with torch.no_grad():
        assert digits(x).shape == (3, 10)


def test_bad_input_shapes():
    model = make_model(3, 1, static=False)
    with pytest.raises(ValueError, match="3 time steps"):
        model(torch.rand(2, 2, 1, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="time-first"):
        model(torch.rand(2, 1, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="even sizes"):
        TRevSNN([1, 6, 6], 10, channels=(2, 2, 2, 2), stem=[[3, 1]])
