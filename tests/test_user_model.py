"""A model of the user's own from the command line: `revsnn train --model MODULE:FUNCTION`, rebuilt from the
checkpoint by importing MODULE; every failure is one sentence."""

import json
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from revsnn.checkpoint import CheckpointError, load_model
from revsnn.cli.main import app
from revsnn.models import ModelBuilderError, build_model, builder_config, get_config
from revsnn.neurons import reset_states

runner = CliRunner()
MODULE = "mymodels"

# A reversible MLP made only of revsnn's public blocks. Its forward does not reset the neurons: revsnn does.
MYMODELS = textwrap.dedent('''
    from torch import nn

    from revsnn.layers import TimeDistributed
    from revsnn.neurons import IF, LIF
    from revsnn.reversible import RevNetCoupling, ReversibleSequence


    def branch(width):
        return nn.Sequential(LIF(), TimeDistributed(nn.Linear(width, width)))


    class RevMLP(nn.Module):
        def __init__(self, features, num_classes, width=16, blocks=2):
            super().__init__()
            self.stem = TimeDistributed(nn.Linear(features, 2 * width))
            self.body = ReversibleSequence([RevNetCoupling(branch(width), branch(width)) for _ in range(blocks)])
            self.neuron = IF()
            self.head = TimeDistributed(nn.Linear(2 * width, num_classes))

        def forward(self, x):
            return self.head(self.neuron(self.body(self.stem(x.flatten(2))))).mean(0)


    def build(input_shape, num_classes):
        c, h, w = input_shape
        return RevMLP(c * h * w, num_classes)


    def not_a_model(input_shape, num_classes):
        return 42


    def broken(input_shape, num_classes):
        raise RuntimeError("no GPU here")

    answer = 42
''')


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder holding mymodels.py, as the current directory; the module is forgotten afterwards."""
    (tmp_path / f"{MODULE}.py").write_text(MYMODELS)
    monkeypatch.chdir(tmp_path)
    sys.modules.pop(MODULE, None)
    yield tmp_path
    sys.modules.pop(MODULE, None)


def test_train_your_own_model_then_info(workdir, tmp_path_factory):
    out = workdir / "D"
    result = runner.invoke(app, ["train", "--model", f"{MODULE}:build", "--out", str(out), "--epochs", "1",
                                 "--batch-size", "128", "--time-steps", "2"])
    assert result.exit_code == 0, result.output
    assert f"{MODULE}:build on digits: test accuracy" in result.output

    # The checkpoint records the builder as plain strings and ints: it loads with weights_only=True.
    payload = torch.load(out / "model.pt", weights_only=True)
    config = payload["config"]
    assert config["family"] == "user" and config["builder"] == f"{MODULE}:build"
    assert config["input_shape"] == [1, 8, 8] and config["num_classes"] == 10

    result = runner.invoke(app, ["info", str(out / "model.pt")])
    assert result.exit_code == 0, result.output
    assert f"{MODULE}:build (user)" in result.output and f"rebuilding imports {MODULE}" in result.output
    assert "3,498" in result.output   # 64*32+32 + 4 * (16*16+16) + 32*10+10 parameters

    # Rebuilt from the checkpoint it is the trained model: same weights, same logits.
    model, _ = load_model(out / "model.pt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in payload["state_dict"].items())

    # export and verify rebuild it the same way (the rule-based collapse takes any model of revsnn's blocks)
    for fmt in ("nir", "onnx"):
        result = runner.invoke(app, ["export", fmt, str(out / "model.pt"), "--out", str(out / f"model.{fmt}")])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["verify", str(out / "model.pt"), "--samples", "4", "--json", "--targets",
                                 "torch,norse,onnxruntime,onnxruntime-unrolled,onnx-reference"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] and set(report["targets"]) == {"torch", "norse", "onnxruntime", "onnxruntime-unrolled",
                                                       "onnx-reference"}
    assert all(t["spike_count"] > 0 for t in report["targets"].values())
    result = runner.invoke(app, ["verify", str(out / "model.pt"), "--samples", "4", "--file", str(out / "model.onnx")])
    assert result.exit_code == 0, result.output

    # From a folder where mymodels is not importable: one sentence, exit code 2.
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    sys.modules.pop(MODULE, None)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(elsewhere)
        result = runner.invoke(app, ["info", str(out / "model.pt")])
    assert result.exit_code == 2
    assert f"cannot import module '{MODULE}'" in result.output and "Traceback" not in result.output


def test_revsnn_resets_the_neurons_before_every_forward(workdir):
    torch.manual_seed(0)
    model = build_model(builder_config(f"{MODULE}:build", (1, 8, 8), 10)).eval()
    x = 2 * torch.rand(3, 2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first = model(x)
        second = model(x)                 # without the reset, the membranes would carry over
        reset_states(model)
        by_hand = model.forward(x)        # the user's forward alone (no hooks), from rest
        carried = model.forward(x)        # ... and again without a reset: the membranes carry over
    assert torch.equal(first, second) and torch.equal(first, by_hand)
    assert not torch.equal(carried, first)   # so the reset before every forward is what makes them equal
    assert first.shape == (2, 10)


@pytest.mark.parametrize("spec, message", [
    ("nosuchmodule:build", "cannot import module 'nosuchmodule'"),
    (f"{MODULE}:missing", "has no function 'missing'"),
    (f"{MODULE}:answer", "has a non-callable 'answer'"),
    (f"{MODULE}:not_a_model", "returned a int, not a torch.nn.Module"),
    (f"{MODULE}:broken", "raised RuntimeError: no GPU here"),
    ("my-models:build", "neither a model of the zoo nor MODULE:FUNCTION"),
])
def test_bad_builders_fail_in_one_sentence(workdir, spec, message):
    result = runner.invoke(app, ["train", "--model", spec, "--out", str(workdir / "run"), "--epochs", "1"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (workdir / "run").exists()    # nothing written


def test_load_model_names_the_builder_problem(workdir):
    config = builder_config(f"{MODULE}:not_a_model")
    with pytest.raises(ModelBuilderError, match="not a torch.nn.Module"):
        build_model(config)
    with pytest.raises(ModelBuilderError, match="cannot import module"):
        get_config("absent_module_xyz:build")
    assert get_config(f"{MODULE}:build")["train"]["time_steps"] >= 1
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(workdir / "absent.pt")
