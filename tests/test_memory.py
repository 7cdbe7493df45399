"""The activation meter against hand-counted saved tensors."""

import torch
from torch import nn

from revsnn.memory import ActivationMeter, activation_bytes_per_sample


def test_counts_saved_activations_not_parameters():
    torch.manual_seed(0)
    lin = nn.Linear(8, 8, bias=False).double()
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    with ActivationMeter(exclude=lin) as meter:
        y = torch.tanh(lin(x))
    # Linear saves its input x (the weight is excluded); tanh saves its output y. 5 * 8 float64 each.
    assert meter.count == 2
    assert meter.nbytes == 2 * 5 * 8 * 8
    y.sum().backward()


def test_views_count_once_and_dropped_graphs_not_at_all():
    x = torch.randn(6, 4, requires_grad=True)
    with ActivationMeter() as meter:
        a, b = x.chunk(2)            # two views of one storage
        out = a.sin() + b.sin()      # sin saves its input: both views, one storage
        unused = (x * 3).exp()       # exp saves its output ...
        del unused                   # ... but nothing keeps that graph alive
    assert meter.count == 1
    assert meter.nbytes == x.numel() * 4
    out.sum().backward()


def test_per_sample():
    lin = nn.Linear(3, 3)
    x = torch.randn(2, 10, 3)  # [T, B, N]
    assert activation_bytes_per_sample(lin, x) == x.numel() * 4 / 10
