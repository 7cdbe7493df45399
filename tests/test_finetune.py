"""Loihi-aware training (issue 15): the training forward is the quantised reference, exactly; gradients reach
every parameter, and the reversible backward (recompute) gives the plain twin's gradients."""

from __future__ import annotations

import json

import pytest
import torch

from revsnn.checkpoint import load_model, save_checkpoint
from revsnn.data import ImageData, encode, load_digits
from revsnn.exporters.collapse import collapse
from revsnn.exporters.loihi import quantize
from revsnn.finetune import FinetuneError, LoihiAware, finetune
from revsnn.models import build_model, get_config
from revsnn.reversible import ReversibleModule
from revsnn.targets.reference import ReferenceExecutor

T = 4


def _samples(n: int = 16, seed: int = 0) -> torch.Tensor:
    digits = load_digits()
    return encode(digits.x_test[:n], T, "rate", torch.Generator().manual_seed(seed)).double()


def _model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(get_config(name)).double()
    # Random BatchNorm statistics and a larger gain, so that the populations fire (and the grid matters).
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(1.0, 2.0)
    return model


@pytest.mark.parametrize("name", ["scnn-digits", "revsresnet-digits", "pararevsnn-digits"])
def test_loihi_aware_forward_is_the_quantised_reference(name):
    """Spikes of every population and the per-step readout equal the quantised reference executor's, bit for
    bit, on rate-coded test digits; the logits are its mean over time."""
    model = _model(name)
    x = _samples()
    runner = LoihiAware(model, T).eval()
    with torch.no_grad():
        logits = runner(x)
    q = quantize(collapse(model, T).graph)
    steps, spikes = ReferenceExecutor(q.graph).run(x, record=True)
    assert torch.equal(runner.last_readout, steps)
    assert torch.equal(logits, steps.mean(0))
    ours = runner.last_spikes
    assert set(ours) == set(spikes) - {"readout"} and len(ours) >= 2
    fired = 0.0
    for pop, s in ours.items():
        assert torch.equal(s.reshape(spikes[pop].shape), spikes[pop]), pop
        fired += float(s.sum())
    assert fired > 0
    # The float model is a different network: the grid changes at least some spikes or logits.
    float_logits = model.eval()(x)
    assert not torch.equal(float_logits, logits)


def test_gradients_reach_every_parameter_and_reversible_equals_twin():
    """Straight-through backward: every trained parameter gets a finite, non-zero gradient, and the reversible
    model (which recomputes the quantised forward in backward) gets exactly its plain-autograd twin's."""
    x = _samples(8, seed=1)
    y = torch.arange(8) % 10
    grads = []
    for reversible in (True, False):
        model = _model("revsresnet-digits")
        for m in model.modules():
            if isinstance(m, ReversibleModule):
                m.reversible = reversible
        runner = LoihiAware(model, T).train()
        loss = torch.nn.functional.cross_entropy(runner(x), y)
        loss.backward()
        runner.release()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    rev, twin = grads
    assert set(rev) == set(twin)
    for n in twin:
        torch.testing.assert_close(rev[n], twin[n], rtol=1e-9, atol=1e-12)
    convs = [n for n in twin if n.endswith("weight")]
    assert convs and all(torch.isfinite(twin[n]).all() and twin[n].abs().sum() > 0 for n in convs)


def test_finetune_writes_a_checkpoint_whose_export_is_its_forward(tmp_path):
    """`finetune` on a small slice of digits: DIR/model.pt and metrics.json (before / after figures), BatchNorm
    statistics untouched (they are folded), and the saved model's Loihi-aware forward equals the quantised
    reference of its export."""
    digits = load_digits()
    data = ImageData("digits", digits.x_train[:64], digits.y_train[:64], digits.x_test[:32], digits.y_test[:32])
    model = _model("scnn-digits").float()
    model.config = get_config("scnn-digits")
    src = tmp_path / "float" / "model.pt"
    src.parent.mkdir()
    save_checkpoint(src, model, train={"time_steps": T, "encoding": "rate", "batch_size": 32, "lr": 0.003},
                    data={"name": "digits"})
    out = tmp_path / "tuned"
    metrics = finetune(src, "loihi", 1, out, data=data)
    assert (out / "model.pt").is_file()
    written = json.loads((out / "metrics.json").read_text())
    assert written["loihi"]["after"]["samples"] == 32
    for key in ("float_accuracy", "quantized_accuracy", "prediction_agreement", "spike_agreement"):
        assert 0.0 <= written["loihi"]["before"][key] <= 1.0
    assert "quantized_test_accuracy" in metrics["history"][-1]
    # The checkpoint holds the grid values (snap_to_grid): its float model is the quantised network.
    assert metrics["history"][-1]["grid"]["exact"]
    after = written["loihi"]["after"]
    assert after["prediction_agreement"] == 1.0 and after["spike_agreement"] == 1.0
    tuned, _ = load_model(out / "model.pt")
    before = dict(model.named_buffers())
    for n, b in tuned.named_buffers():
        if n.endswith("running_mean") or n.endswith("running_var"):
            assert torch.equal(b, before[n].to(b.dtype)), n
    assert any(not torch.equal(p, dict(model.named_parameters())[n].to(p.dtype)) for n, p in tuned.named_parameters())
    tuned = tuned.double()
    x = _samples(8)
    runner = LoihiAware(tuned, T).eval()
    with torch.no_grad():
        logits = runner(x)
    steps, _ = ReferenceExecutor(quantize(collapse(tuned, T).graph).graph).run(x, record=True)
    assert torch.equal(logits, steps.mean(0))


def test_finetune_refuses_direct_input(tmp_path):
    model = _model("scnn-digits").float()
    model.config = get_config("scnn-digits")
    src = tmp_path / "model.pt"
    save_checkpoint(src, model, train={"time_steps": T, "encoding": "direct"}, data={"name": "digits"})
    with pytest.raises(FinetuneError, match="rate"):
        finetune(src, "loihi", 1, tmp_path / "out")
    with pytest.raises(FinetuneError, match="--for"):
        finetune(src, "spinnaker", 1, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_finetune_bad_input_is_one_sentence(tmp_path):
    from typer.testing import CliRunner

    from revsnn.cli.main import app

    model = _model("scnn-digits").float()
    model.config = get_config("scnn-digits")
    src = tmp_path / "model.pt"
    save_checkpoint(src, model, train={"time_steps": T, "encoding": "direct"}, data={"name": "digits"})
    for args, words in ((["finetune", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")], "does not exist"),
                        (["finetune", str(src), "--out", str(tmp_path / "o")], "rate"),
                        (["finetune", str(src), "--for", "spinnaker", "--out", str(tmp_path / "o")], "--for"),
                        (["finetune", str(src), "--epochs", "0", "--out", str(tmp_path / "o")], "--epochs")):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert words in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_train_loihi_aware_from_scratch(tmp_path):
    """`train --loihi-aware`: the trainer's forward is the Loihi-aware one (quantised accuracy recorded every
    epoch); direct input is refused before anything is written."""
    from revsnn.finetune import train_loihi_aware
    from revsnn.train import TrainOptions

    digits = load_digits()
    data = ImageData("digits", digits.x_train[:64], digits.y_train[:64], digits.x_test[:32], digits.y_test[:32])
    with pytest.raises(FinetuneError, match="rate"):
        train_loihi_aware(TrainOptions(model="scnn-digits", out=tmp_path / "direct", epochs=1, encoding="direct"),
                          data=data)
    assert not (tmp_path / "direct").exists()
    metrics = train_loihi_aware(TrainOptions(model="scnn-digits", out=tmp_path / "q", epochs=1, encoding="rate",
                                             batch_size=32), data=data)
    record = metrics["history"][-1]
    assert 0.0 <= record["quantized_test_accuracy"] <= 1.0 and (tmp_path / "q" / "model.pt").is_file()
    # From scratch BatchNorm learns its statistics (a fresh model's would fold into layers that never fire).
    trained, _ = load_model(tmp_path / "q" / "model.pt")
    assert any(n.endswith("running_var") and not torch.allclose(b, torch.ones_like(b))
               for n, b in trained.named_buffers())


def _small(name: str, seed: int = 0) -> torch.nn.Module:
    """The digits model with narrow layers (4 / 8 channels for the reversible ones): the grid map probes the
    collapse a few times, cheap only when the folded matrices are small."""
    config = dict(get_config(name))
    if "planes" in config:
        config["planes"] = [4, 8]
    else:
        config["channels"] = [4, 8]
    torch.manual_seed(seed)
    model = build_model(config).double()
    model.config = config
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(1.0, 2.0)
            m.bias.data.uniform_(-0.3, 0.3)
    return model


@pytest.mark.usefixtures("one_thread")   # tests/conftest.py: many tiny convolutions
@pytest.mark.parametrize("name", ["scnn-digits", "revsresnet-digits", "pararevsnn-digits"])
def test_snap_to_grid_makes_the_float_model_its_quantised_network(name):
    """After `snap_to_grid` the checkpoint's float weights are the dequantised grid values: (hand check) every
    folded matrix of the float graph is the quantiser's integer weights divided by its factor, every folded bias
    the integer bias (less the tie margin) divided by it, with the same vThMant and integers as before the
    projection (for these models); snapping again changes nothing; and the two executors, float and
    fixed point, emit the same spikes on test digits (they did not before)."""
    from revsnn.exporters.loihi import float_terms
    from revsnn.finetune import snap_to_grid

    model = _small(name)
    x = _samples(24, seed=2)

    def run(m):
        c = collapse(m, T)
        q = quantize(c.graph)
        fo, fs = ReferenceExecutor(c.graph).run(x, record=True)
        qo, qs = ReferenceExecutor(q.graph).run(x, record=True)
        return c, q, fo, fs, qo, qs

    _, q0, _, fs, _, qs = run(model)
    assert any(not torch.equal(qs[p], fs[p].reshape(qs[p].shape)) for p in qs if p in fs), "grid too fine to test"
    report = snap_to_grid(model, T)
    assert report.exact and report.weights > 0 and report.biases > 0
    c, q, fo, fs, qo, qs = run(model)
    terms = float_terms(c.graph)
    for pop, srcs in q.sources.items():
        f = q.factors[pop]
        w_int = [torch.as_tensor(q.graph.nodes[f"{s}.to.{pop}"].weight) for s in srcs]
        for t, w in zip(terms[pop], w_int):
            torch.testing.assert_close(torch.as_tensor(t.matrix), w / f, rtol=0, atol=1e-9 / f)
        if pop != q.readout:
            assert q.populations[pop].v_th_mant == q0.populations[pop].v_th_mant
            before_ = [torch.as_tensor(q0.graph.nodes[f"{s}.to.{pop}"].weight) for s in srcs]
            assert all(torch.equal(w, w0) for w, w0 in zip(w_int, before_))
            bias = torch.as_tensor(sum(t.bias for t in terms[pop]))
            b_int = torch.as_tensor(q.graph.nodes[pop].bias, dtype=torch.float64)
            torch.testing.assert_close(bias, (b_int - 1 / 32) / f, rtol=0, atol=1e-9)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    again = snap_to_grid(model, T)
    assert again.exact and again.rounds == 1
    assert all(torch.allclose(p, before[n], rtol=0, atol=1e-12) for n, p in model.named_parameters())
    fired = 0
    for pop, s in qs.items():
        if pop in fs:
            assert torch.equal(s, fs[pop].reshape(s.shape)), pop
            fired += int(s.sum())
    assert fired > 0
    assert torch.equal(fo.mean(0).argmax(1), qo.mean(0).argmax(1))
