"""Property (issue 17): random small spiking graphs and random option values, fed to collapse and the NIR and
ONNX writers, end in one of two ways only: a verified export (every float target reproduces the model, step
by step) or a clean refusal (a ``RevsnnError``, with nothing left in the destination folder). Any other
exception, or an export that does not verify, is a failure.

Hypothesis draws the cases; they are few and tiny (max_examples small, no deadline), so the property costs
seconds."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is installed by scripts/setup.sh")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from revsnn.errors import RevsnnError  # noqa: E402
from revsnn.layers import TimeDistributed  # noqa: E402
from revsnn.neurons import IF, LIF  # noqa: E402

ODD_NUMBERS = [math.nan, math.inf, -math.inf, -1.0, 0.0, 1e30]


class RandomNet(nn.Module):
    """Linear layers, each followed by a LIF or IF population, then a linear readout; mean over time."""

    def __init__(self, widths: list[int], neurons: list[str], taus: list[float], classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(TimeDistributed(nn.Linear(w_in, w_out)))
            layers.append(LIF(tau=taus[i]) if neurons[i] == "LIF" else IF())
        self.body = nn.Sequential(*layers)
        self.head = TimeDistributed(nn.Linear(widths[-1], classes))

    def forward(self, x):
        return self.head(self.body(x.flatten(2))).mean(0)


@st.composite
def cases(draw):
    depth = draw(st.integers(1, 3))
    widths = [draw(st.integers(1, 6)) for _ in range(depth + 1)]
    return {
        "widths": widths,
        "neurons": [draw(st.sampled_from(["LIF", "IF"])) for _ in range(depth)],
        "taus": [draw(st.sampled_from([1.0, 1.5, 2.0, 8.0])) for _ in range(depth)],
        "classes": draw(st.integers(1, 4)),
        "seed": draw(st.integers(0, 2**16)),
        # damage: a population's threshold or a weight set to an odd value (or nothing)
        "threshold": draw(st.one_of(st.none(), st.sampled_from(ODD_NUMBERS), st.floats(0.05, 3.0))),
        "weight": draw(st.one_of(st.none(), st.sampled_from(ODD_NUMBERS))),
        "time_steps": draw(st.sampled_from([2, 3, 1, 0, -1])),  # valid first: shrinking goes left
        "mode": draw(st.sampled_from(["step", "unrolled"])),
        "opset": draw(st.sampled_from([17, 13, 21, 10, 30])),
    }


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True,
          database=None)
@given(cases())
def test_random_graphs_export_verified_or_refused_cleanly(case):
    from revsnn.exporters.collapse import collapse
    from revsnn.exporters.nir_file import read_nir, write_nir
    from revsnn.exporters.onnx_file import write_onnx
    from revsnn.verify import verify_model

    torch.manual_seed(case["seed"])
    model = RandomNet(case["widths"], case["neurons"], case["taus"], case["classes"]).double().eval()
    neurons = [m for m in model.modules() if isinstance(m, (LIF, IF))]
    if case["threshold"] is not None:
        neurons[0].v_threshold = case["threshold"]
    if case["weight"] is not None:
        with torch.no_grad():
            model.head.module.weight.view(-1)[0] = case["weight"]
    T = case["time_steps"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        try:
            graph = collapse(model, T, (case["widths"][0],)).graph
            write_nir(graph, folder / "g.nir")
            read_nir(folder / "g.nir")
            kw = {"mode": "unrolled", "time_steps": T} if case["mode"] == "unrolled" else {}
            write_onnx(graph, folder / "g.onnx", opset=case["opset"], **kw)
        except RevsnnError as exc:
            assert str(exc) and "\n" not in str(exc)
            assert list(folder.iterdir()) in ([], [folder / "g.nir"]), "a refusal left a partial file"
            return
        # Exported: the very file written must reproduce the model, step by step (revsnn.verify).
        x = (torch.rand(T, 3, case["widths"][0], generator=torch.Generator().manual_seed(1)) < 0.5).double()
        target = "onnxruntime" if case["mode"] == "step" else "onnxruntime-unrolled"
        report = verify_model(model, x, ("torch", target), file=folder / "g.onnx")
        assert report.ok, {name: t.mismatches for name, t in report.targets.items()}
