"""NIR graphs as other tools write them (continuous time, seconds, any node names, subgraphs, recurrent edges),
converted once to steps at dt and run on every target. The truths: hand computations of the discretised
equations, and for Lava the quantised reference, bit for bit."""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch

from revsnn.errors import RevsnnError
from revsnn.exporters.nir_import import load_foreign
from revsnn.targets.reference import ReferenceExecutor
from revsnn.verify import verify_graph

RNG = np.random.default_rng(0)


def _affine(i, o, scale=1.0):
    return nir.Affine(RNG.normal(0, scale, (o, i)), RNG.normal(0, 0.1, o))


def _spikes(T, B, n, seed=0, rate=0.5):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, B, n, generator=g) < rate).double()


def test_single_lif_at_tenth_of_a_millisecond_spikes_where_the_hand_computation_says():
    """tau = 2 ms at dt = 0.1 ms is 20 steps: h = v + (I - v) / 20 with I = 1.5, threshold 1, hard reset.
    v_n = 1.5 (1 - 0.95^n) first exceeds 1 at n = 22 (step index 21); the reset restarts the count."""
    g = nir.NIRGraph(nodes={"in": nir.Input(np.array([1])),
                            "lif": nir.LIF(tau=np.array([2e-3]), r=np.array([1.0]), v_leak=np.array([0.0]),
                                           v_threshold=np.array([1.0])),
                            "out": nir.Output(np.array([1]))}, edges=[("in", "lif"), ("lif", "out")])
    steps = load_foreign(g, dt=1e-4)
    assert float(steps.nodes["lif"].tau[0]) == pytest.approx(20.0)
    _, spikes = ReferenceExecutor(steps).run(torch.full((50, 1, 1), 1.5, dtype=torch.float64), record=True)
    n = next(k for k in range(1, 100) if 1.5 * (1 - 0.95 ** k) > 1.0)
    assert n == 22
    assert torch.nonzero(spikes["lif"][:, 0, 0]).flatten().tolist() == [n - 1, 2 * n - 1]
    # read as if dt were one second (the mistake the issue describes: tau would be 0.002 steps, and the neuron
    # would fire at almost every step) it is refused, naming the dt that would work
    with pytest.raises(RevsnnError, match="pass --dt 0.002 or smaller"):
        load_foreign(g, dt=1.0)


def test_if_and_integrator_scale_their_rate_by_dt():
    """NIR's IF is v' = r I: with snnTorch's r = 1 / dt it adds the input once per step."""
    dt = 1e-4
    g = nir.NIRGraph(nodes={"x": nir.Input(np.array([1])),
                            "if": nir.IF(r=np.array([1 / dt]), v_threshold=np.array([2.5])),
                            "i": nir.I(r=np.array([1 / dt])), "out": nir.Output(np.array([1]))},
                     edges=[("x", "if"), ("if", "i"), ("i", "out")])
    out, spikes = ReferenceExecutor(load_foreign(g, dt=dt)).run(torch.ones(7, 1, 1, dtype=torch.float64), record=True)
    assert spikes["if"][:, 0, 0].tolist() == [0, 0, 1, 0, 0, 1, 0]          # 1, 2, 3 > 2.5 -> reset
    assert out[:, 0, 0].tolist() == [0, 0, 1, 1, 1, 2, 2]                    # the integrator counts spikes


def test_a_graph_with_time_constants_and_no_dt_is_refused():
    g = nir.NIRGraph(nodes={"in": nir.Input(np.array([1])),
                            "li": nir.LI(tau=np.array([1e-3]), r=np.array([1.0]), v_leak=np.array([0.0])),
                            "out": nir.Output(np.array([1]))}, edges=[("in", "li"), ("li", "out")])
    with pytest.raises(RevsnnError, match="--dt"):
        load_foreign(g)
    g.metadata = {"dt": 1e-3}
    assert float(load_foreign(g).nodes["li"].tau[0]) == pytest.approx(1.0)


def _cuba_chain():
    """A chain as spikingjelly would name it (input ``input_1``): Affine -> CubaLIF -> Affine -> LI readout,
    tau_syn 2 and tau_mem 4 steps of dt = 0.1 ms."""
    n = 10
    return nir.NIRGraph(nodes={
        "input_1": nir.Input(np.array([6])), "fc1": _affine(6, n, 1.5),
        "cuba": nir.CubaLIF(tau_syn=np.full(n, 2e-4), tau_mem=np.full(n, 4e-4), r=np.full(n, 4.0),
                            v_leak=np.zeros(n), v_threshold=np.ones(n), w_in=np.full(n, 2.0)),
        "fc2": _affine(n, 3), "li": nir.LI(tau=np.full(3, 2e-4), r=np.ones(3), v_leak=np.zeros(3)),
        "out": nir.Output(np.array([3]))},
        edges=[("input_1", "fc1"), ("fc1", "cuba"), ("cuba", "fc2"), ("fc2", "li"), ("li", "out")])


def test_cubalif_steps_as_the_table_says():
    g = load_foreign(_cuba_chain(), dt=1e-4)
    x = _spikes(6, 2, 6, seed=3)
    out, spikes = ReferenceExecutor(g).run(x, record=True)
    fc1, fc2 = g.nodes["fc1"], g.nodes["fc2"]
    i = v = torch.zeros(2, 10, dtype=torch.float64)
    li = torch.zeros(2, 3, dtype=torch.float64)
    for t in range(6):
        a = x[t] @ torch.as_tensor(fc1.weight).T + torch.as_tensor(fc1.bias)
        i = i + (2.0 * a - i) / 2.0
        h = v + (4.0 * i - v) / 4.0
        s = (h > 1.0).double()
        v = torch.where(s > 0, torch.zeros_like(h), h)
        assert torch.equal(spikes["cuba"][t], s)
        b = s @ torch.as_tensor(fc2.weight).T + torch.as_tensor(fc2.bias)
        li = li + (b - li) / 2.0
        assert torch.allclose(out[t], li, atol=1e-12)


def test_foreign_chain_verifies_on_every_target_and_lava_bit_exact():
    g = load_foreign(_cuba_chain(), dt=1e-4)
    report = verify_graph(g, _spikes(8, 4, 6), ("torch", "onnxruntime", "onnxruntime-unrolled", "lava"))
    assert all(t.ok for t in report.targets.values()), {n: t.note for n, t in report.targets.items()}
    assert report.targets["lava"].mismatches == 0 and report.targets["lava"].max_abs_diff == 0.0
    assert report.targets["lava"].spike_count > 0


def _residual():
    """A residual block from another tool: a -> b, and a + b both read by the readout (fan-in)."""
    lif = lambda n: nir.LIF(tau=np.full(n, 2e-3), r=np.full(n, 2.0), v_leak=np.zeros(n),  # noqa: E731
                            v_threshold=np.ones(n))
    return nir.NIRGraph(nodes={
        "x": nir.Input(np.array([6])), "fa": _affine(6, 8, 1.5), "a": lif(8), "fb": _affine(8, 8, 1.5), "b": lif(8),
        "fo1": _affine(8, 3), "fo2": _affine(8, 3), "li": nir.LI(tau=np.full(3, 1e-3), r=np.ones(3), v_leak=np.zeros(3)),
        "out": nir.Output(np.array([3]))},
        edges=[("x", "fa"), ("fa", "a"), ("a", "fb"), ("fb", "b"), ("a", "fo1"), ("b", "fo2"), ("fo1", "li"),
               ("fo2", "li"), ("li", "out")])


def test_residual_graph_runs_in_lava_as_a_relay_chain_bit_exact():
    g = load_foreign(_residual(), dt=1e-3)
    report = verify_graph(g, _spikes(8, 4, 6, seed=1), ("torch", "onnxruntime", "norse", "lava"))
    assert all(t.ok for t in report.targets.values()), {n: t.note for n, t in report.targets.items()}
    lava = report.targets["lava"]
    assert lava.details["chain_layers"] == 3 and lava.details["relay_neuron_overhead"] > 0
    assert lava.mismatches == 0 and lava.spike_count > 0


def test_recurrent_subgraph_takes_one_step_per_loop():
    """snnTorch writes a recurrent layer as a subgraph whose LIF feeds itself through a Linear: NIR edges have
    no delay, so the neuron reads its own spikes of the previous step (a Delay(1) is made explicit)."""
    n = 3
    rec = nir.NIRGraph(nodes={"input": nir.Input(np.array([n])),
                              "lif": nir.LIF(tau=np.full(n, 2e-3), r=np.full(n, 2.0), v_leak=np.zeros(n),
                                             v_threshold=np.ones(n)),
                              "w_rec": nir.Linear(np.full((n, n), 0.6)), "output": nir.Output(np.array([n]))},
                       edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")],
                       type_check=False)
    outer = nir.NIRGraph(nodes={"x": nir.Input(np.array([2])), "fc": nir.Linear(np.array([[1.2, 0], [0, 0], [0, 0]])),
                                "rsnn": rec, "out": nir.Output(np.array([n]))},
                         edges=[("x", "fc"), ("fc", "rsnn.input"), ("rsnn.output", "out")], type_check=False)
    g = load_foreign(outer, dt=1e-3)
    assert any(isinstance(node, nir.Delay) for node in g.nodes.values())
    x = torch.zeros(6, 1, 2, dtype=torch.float64)
    x[0, 0, 0] = 1.0
    _, spikes = ReferenceExecutor(g).run(x, record=True)
    s = spikes["rsnn.lif"][:, 0]
    # by hand: neuron 0 gets 1.2 at step 0 (h = 1.2 > 1: spike); at step 1 every neuron gets 0.6 from it
    # (h = 0.6), at step 2 nothing new (h = 0.3 for 1 and 2, neuron 0: 0.3) ... no further spikes
    assert s.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]
    report = verify_graph(g, _spikes(6, 3, 2, rate=0.8), ("torch", "onnxruntime", "onnxruntime-unrolled", "norse"))
    assert all(t.ok for t in report.targets.values())


@pytest.mark.parametrize("case", ["no-output", "stateless-cycle", "shapes", "nan", "delay-fraction", "tau-below-dt"])
def test_bad_foreign_graphs_fail_with_one_sentence(case):
    lif = nir.LIF(tau=np.full(2, 1e-3), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.ones(2))
    nodes = {"x": nir.Input(np.array([2])), "fc": nir.Linear(np.eye(2)), "lif": lif, "out": nir.Output(np.array([2]))}
    edges = [("x", "fc"), ("fc", "lif"), ("lif", "out")]
    match = {"no-output": "one Input and one Output", "stateless-cycle": "no neuron state and no Delay",
             "shapes": "different shapes", "nan": "non-finite", "delay-fraction": "whole number of steps",
             "tau-below-dt": "shorter than the time step dt = 0.001 s"}[case]
    if case == "no-output":
        nodes.pop("out")
        edges = edges[:2]
    elif case == "stateless-cycle":
        nodes["fc2"] = nir.Linear(np.eye(2))
        edges += [("fc", "fc2"), ("fc2", "fc")]
    elif case == "shapes":
        nodes["fc3"] = nir.Linear(np.ones((3, 2)))
        edges += [("x", "fc3"), ("fc3", "lif")]
    elif case == "nan":
        lif.tau[0] = np.nan
    elif case == "tau-below-dt":   # tau = dt / 2: forward Euler overshoots, Loihi's decay would pass 4096
        lif.tau[1] = 5e-4
    else:
        nodes["d"] = nir.Delay(delay=np.full(2, 1.5e-3))
        edges = [("x", "fc"), ("fc", "d"), ("d", "lif"), ("lif", "out")]
    g = nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)
    with pytest.raises(RevsnnError, match=match) as info:
        load_foreign(g, dt=1e-3)
    assert "\n" not in str(info.value)


def test_the_cli_takes_a_nir_file_from_another_tool(tmp_path):
    """info, verify, export nir|onnx|lava on a foreign .nir: --dt asked for when the file has none; bad files
    give one sentence and write nothing."""
    import json

    from typer.testing import CliRunner

    from revsnn.cli.main import app

    runner = CliRunner()
    path = tmp_path / "residual.nir"
    nir.write(str(path), _residual())
    result = runner.invoke(app, ["verify", str(path), "--targets", "torch,onnxruntime"])
    assert result.exit_code == 2 and "--dt" in result.output
    result = runner.invoke(app, ["verify", str(path), "--dt", "1e-3", "--targets", "onnxruntime,norse,lava",
                                 "--samples", "3", "--time-steps", "6", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] and set(report["targets"]) == {"onnxruntime", "norse", "lava"}
    x = _spikes(5, 2, 6, seed=4).numpy()
    np.save(tmp_path / "x.npy", x)
    result = runner.invoke(app, ["verify", str(path), "--dt", "1e-3", "--input", str(tmp_path / "x.npy"),
                                 "--targets", "onnxruntime", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["samples"] == 2, result.output
    for fmt, name, extra in (("nir", "steps.nir", []), ("onnx", "m.onnx", []), ("lava", "m.net", ["--synapses", "dense"])):
        result = runner.invoke(app, ["export", fmt, str(path), "--dt", "1e-3", "--out", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
    assert float(nir.read(str(tmp_path / "steps.nir")).nodes["a"].tau[0]) == pytest.approx(2.0)
    result = runner.invoke(app, ["info", str(path), "--dt", "1e-3"])
    assert result.exit_code == 0 and "2 steps" in result.output

    bad = _residual()
    bad.nodes["a"].v_threshold[0] = np.nan
    nir.write(str(tmp_path / "nan.nir"), bad)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(app, ["export", "onnx", str(tmp_path / "nan.nir"), "--dt", "1e-3", "--out",
                                 str(tmp_path / "nan.onnx")])
    assert result.exit_code == 2 and "non-finite" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before
