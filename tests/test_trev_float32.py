"""T-RevSNN's reversible columns in float32, the training dtype (issue 18, Deliver 6).

The truth is the plain-autograd twin in float64 with the same parameters. Each inversion divides by
alpha; the Function keeps a column's input states wherever a chain of inversions would amplify float
error by more than ``max_amplification`` (``TRevColumns.kept_columns``), so the gradients stay within
1e-5 (relative L2) for every alpha the clamp allows.
"""

import copy

import pytest
import torch

from revsnn.models.trev import SpikingConvNeXtBlock, TRevSNN
from revsnn.reversible import plain_twin


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make(T: int, alpha, seed: int = 0) -> TRevSNN:
    torch.manual_seed(seed)
    model = TRevSNN([1, 8, 8], 5, channels=(2, 3, 3, 4), time_steps=T, blocks_per_level=1, stem=[[3, 1]]).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SpikingConvNeXtBlock):
                m.pw1.weight.mul_(3.0)   # so that every hidden Q spikes at these tiny widths
        for a in model.body.alphas():
            if alpha == "mixed":         # per channel, both signs, from the clamp up to 1.1
                a.copy_(torch.empty_like(a).uniform_(1e-3, 1.1) * torch.where(torch.rand_like(a) < 0.3, -1.0, 1.0))
            else:
                a.fill_(alpha)
    return model


def gradients(model, x, w):
    x = x.clone().requires_grad_(True)
    out = model(x)
    (out * w).sum().backward()
    return torch.cat([x.grad.flatten().double()] + [p.grad.flatten().double() for p in model.parameters()])


@pytest.mark.parametrize("T,alpha", [(4, 1e-3), (8, 1e-3), (16, 1e-3), (4, 1.1), (8, 1.1), (16, 1.05),
                                     (16, 0.5), (16, "mixed")])
def test_float32_gradients_match_float64_twin(T, alpha):
    model = make(T, alpha)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 2, 1, 8, 8, generator=g, dtype=torch.float64).expand(T, -1, -1, -1, -1)
    w = torch.randn(2, 5, generator=g, dtype=torch.float64)
    truth = gradients(plain_twin(model), x, w)
    assert (truth != 0).sum() > 100, "vacuous: almost no gradient reaches the parameters"
    got = gradients(copy.deepcopy(model).float(), x.float(), w.float())
    error = ((got - truth).norm() / truth.norm()).item()
    assert error <= 1e-5, f"relative L2 gradient error {error:.2e} at T={T}, alpha={alpha}"


def test_kept_columns_bound_the_amplification():
    assert make(4, 0.5).body.kept_columns() == []            # 2^3 = 8 <= 16: O(levels) memory as before
    assert make(16, 0.5).body.kept_columns() == [1, 6, 11]  # chains of 4 inversions: 2^4 = 16
    assert make(8, 1e-3).body.kept_columns() == list(range(1, 8))  # one inversion would amplify 1000x
    assert make(16, 1.1).body.kept_columns() == []           # |alpha| > 1 damps the error
    body = make(16, 0.5).body
    body.max_amplification = 2 ** 15
    assert body.kept_columns() == []
