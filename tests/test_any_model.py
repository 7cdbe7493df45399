"""Models that are not in the zoo, written as ordinary PyTorch from revsnn's public blocks, collapse by rules
and verify on every target that can express them (issue: any model built from revsnn's blocks).

The independent truth is the training model's own forward (the torch target), and for every other target the
reference executor (itself held to the model), or for Lava the quantised reference, bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from revsnn.errors import RevsnnError
from revsnn.exporters.collapse import collapse, register_rule, RULES
from revsnn.layers import TimeDistributed
from revsnn.models.former import SpikingMLP, SpikingSelfAttention
from revsnn.neurons import IF, LIF, reset_states
from revsnn.reversible import ParaRevCoupling, RevNetCoupling, ReversibleSequence
from revsnn.verify import verify_model

FLOAT_TARGETS = ("torch", "onnxruntime", "onnxruntime-unrolled", "onnx-reference")


class RevMLP(nn.Module):
    """A reversible MLP with LIF neurons: flatten, a Linear stem, two RevNet couplings of LIF -> Linear, a
    LIF readout population and a Linear head, mean over time."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.stem = TimeDistributed(nn.Linear(16, 12))

        def branch() -> nn.Module:
            return nn.Sequential(LIF(tau=2.0), TimeDistributed(nn.Linear(6, 6)))
        self.body = ReversibleSequence([RevNetCoupling(branch(), branch()) for _ in range(2)])
        self.sn = LIF(tau=2.0)
        self.head = TimeDistributed(nn.Linear(12, classes))

    def forward(self, x):
        h = self.stem(x.flatten(2))
        return self.head(self.sn(self.body(h))).mean(0)


class ParaRevConvNet(nn.Module):
    """A conv net with ParaRev couplings, a grouped convolution, average pooling, a channel swap by chunk and
    cat, and the head applied after the mean over time."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.stem = nn.Sequential(TimeDistributed(nn.Conv2d(1, 8, 3, padding=1, bias=False)),
                                  TimeDistributed(nn.BatchNorm2d(8)))

        def branch() -> nn.Module:
            return nn.Sequential(IF(), TimeDistributed(nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False)),
                                 TimeDistributed(nn.BatchNorm2d(4)))
        self.body = ReversibleSequence([ParaRevCoupling(branch(), branch()) for _ in range(2)])
        self.sn = IF()
        self.pool = TimeDistributed(nn.AvgPool2d(2))
        self.head = nn.Linear(8 * 2 * 2, classes)

    def forward(self, x):
        if x.dim() != 5:
            raise ValueError("time-first input expected")
        a, b = self.body(self.stem(x)).chunk(2, dim=2)
        s = self.pool(self.sn(torch.cat([b, a], dim=2)))
        return self.head(s.flatten(2).mean(0))


class AttentionStack(nn.Module):
    """A small stack of reversible couplings of spiking self-attention (F) and a spiking MLP (G) over tokens."""

    def __init__(self, classes: int = 4, dim: int = 8):
        super().__init__()
        neuron = {"type": "LIF", "tau": 2.0, "v_threshold": 1.0, "surrogate": {"type": "sigmoid", "alpha": 4.0}}
        self.embed = nn.Sequential(TimeDistributed(nn.Conv2d(1, dim, 1, bias=False)),
                                   TimeDistributed(nn.BatchNorm2d(dim)))
        self.blocks = ReversibleSequence([RevNetCoupling(SpikingSelfAttention(dim, 2, neuron), SpikingMLP(dim, 2, neuron))
                                          for _ in range(2)])
        self.head = nn.Linear(dim, classes)
        with torch.no_grad():   # strong enough drive that every population spikes within 4 steps
            self.embed[0].module.weight.uniform_(1.0, 4.0)
            for m in self.modules():
                if isinstance(m, nn.Conv1d):
                    m.weight.mul_(6.0)

    def forward(self, x):
        t = self.embed(x).flatten(3)                    # [T, B, C, N]
        h = self.blocks(torch.cat([t, t], dim=2))
        a, b = h.chunk(2, dim=2)
        return self.head((a + b).mean(3)).mean(0)


def _train_one_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    model.train()
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return model.eval()


def _data(shape, seed=0, T=4, B=6):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(T, B, *shape, generator=g) < 0.4).float()   # rate-coded spikes: what Loihi receives
    y = torch.randint(0, 4, (B,), generator=g)
    return x, y


CASES = {
    "revmlp": (RevMLP, (1, 4, 4), FLOAT_TARGETS + ("norse", "lava")),
    "pararev-conv": (ParaRevConvNet, (1, 4, 4), FLOAT_TARGETS + ("norse", "lava")),
    "attention": (AttentionStack, (1, 2, 2), FLOAT_TARGETS),
}


@pytest.mark.parametrize("case", list(CASES))
def test_models_outside_the_zoo_verify_on_every_target(case):
    build, shape, targets = CASES[case]
    torch.manual_seed(1)
    x, y = _data(shape)
    model = _train_one_step(build(), x, y)
    report = verify_model(model, x, targets, encoding="rate", name=case)
    failed = {n: (t.mismatches, t.max_abs_diff, t.prediction_agreement) for n, t in report.targets.items() if not t.ok}
    assert not failed, failed
    assert set(report.targets) == set(targets)
    torch_report = report.targets["torch"]
    assert torch_report.populations > 0 and torch_report.spike_count > 0
    if "lava" in targets:
        assert report.targets["lava"].max_abs_diff == 0.0 and report.targets["lava"].mismatches == 0


def test_collapse_graph_equals_the_model_in_float64():
    """The public API: revsnn.collapse(model, input_shape, time_steps) and the reference executor."""
    import revsnn
    from revsnn.targets.reference import ReferenceExecutor

    torch.manual_seed(2)
    model = _train_one_step(ParaRevConvNet(), *_data((1, 4, 4))).double()
    x = _data((1, 4, 4), seed=3)[0].double()
    graph = revsnn.collapse(model, (1, 4, 4), 4).graph
    reset_states(model)
    with torch.no_grad():
        want = model(x)
    got = ReferenceExecutor(graph).run(x).mean(0)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)


class _Gate(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x)


def test_a_module_without_a_rule_names_its_path_class_and_the_fix():
    model = nn.Sequential(TimeDistributed(nn.Flatten()), TimeDistributed(nn.Linear(16, 4)), _Gate(), LIF())

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.seq = model

        def forward(self, x):
            return self.seq(x).mean(0)
    with pytest.raises(RevsnnError, match=r"seq\.2 \(.*_Gate\) has no collapse rule: register a rule"):
        collapse(Net(), 4, (1, 4, 4))


def test_a_registered_rule_is_one_entry():
    """Registering a rule for the module above makes the same model collapse (here: the gate read as an
    identity, which is what the rule says)."""
    @register_rule(_Gate)
    def gate(ctx, module, value, name):
        return value
    try:
        net = nn.Sequential(TimeDistributed(nn.Flatten()), TimeDistributed(nn.Linear(16, 4)), _Gate(), LIF())

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.seq = net

            def forward(self, x):
                return self.seq(x).mean(0)
        graph = collapse(Net(), 4, (1, 4, 4)).graph
        assert sum(type(n).__name__ == "LIF" for n in graph.nodes.values()) == 1
    finally:
        RULES.pop(_Gate)


def test_operations_without_a_rule_and_missing_readout_are_refused():
    class NoReadout(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = TimeDistributed(nn.Linear(16, 4))

        def forward(self, x):
            return self.lin(x.flatten(2))

    class Relu(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = TimeDistributed(nn.Linear(16, 4))

        def forward(self, x):
            return torch.relu(self.lin(x.flatten(2))).mean(0)
    with pytest.raises(RevsnnError, match="must end with a readout"):
        collapse(NoReadout(), 4, (1, 4, 4))
    with pytest.raises(RevsnnError, match="'relu'.*no collapse rule"):
        collapse(Relu(), 4, (1, 4, 4))
