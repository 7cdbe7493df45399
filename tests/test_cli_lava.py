"""`revsnn export lava`, `revsnn info model.net`, `revsnn bench lava` and `verify --targets lava`, as a user runs them."""

import json

import pytest
from typer.testing import CliRunner

from revsnn.cli.main import app
from revsnn.train import TrainOptions, train

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """scnn-digits trained briefly on rate-coded input (deployable) and on direct input (not deployable)."""
    root = tmp_path_factory.mktemp("lava-cli")
    out = {}
    for encoding in ("rate", "direct"):
        train(TrainOptions(model="scnn-digits", out=root / encoding, epochs=2, time_steps=3, batch_size=64,
                           lr=0.01, encoding=encoding))
        out[encoding] = root / encoding / "model.pt"
    return out


def test_export_info_bench_and_verify(checkpoints, tmp_path):
    net = tmp_path / "model.net"
    result = runner.invoke(app, ["export", "lava", str(checkpoints["rate"]), "--out", str(net)])
    assert result.exit_code == 0, result.output
    assert net.is_file()
    assert "latency 3 steps" in result.output and "relays" in result.output

    result = runner.invoke(app, ["info", str(net)])
    assert result.exit_code == 0, result.output
    assert "lava-dl netx chain" in result.output and "readout" in result.output and "vDecay" in result.output
    assert "Loihi 2 resources" in result.output and "neuro-cores" in result.output   # exporters/loihi_resources.py

    result = runner.invoke(app, ["bench", "lava", str(net), "--samples", "2", "--json"])
    assert result.exit_code == 0, result.output
    bench = json.loads(result.output)
    assert bench["layers"] == 3 and bench["steps"] == 2 * 4 + 3 and bench["seconds_per_step"] > 0

    result = runner.invoke(app, ["verify", str(checkpoints["rate"]), "--targets", "lava", "--samples", "8", "--json"])
    assert result.exit_code == 0, result.output
    lava = json.loads(result.output)["targets"]["lava"]
    assert lava["ok"] and lava["mismatches"] == 0 and lava["max_abs_diff"] == 0.0 and lava["spike_count"] > 0
    assert 0.0 <= lava["float_prediction_agreement"] <= 1.0


def test_direct_input_is_refused_with_a_sentence(checkpoints, tmp_path):
    net = tmp_path / "direct.net"
    for args in (["export", "lava", str(checkpoints["direct"]), "--out", str(net)],
                 ["verify", str(checkpoints["direct"]), "--targets", "torch,lava", "--samples", "2"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "--encoding rate" in result.output and "Traceback" not in result.output
    assert not net.exists()


def test_bad_lava_inputs_fail_cleanly(checkpoints, tmp_path):
    cases = [
        (["export", "lava", str(checkpoints["rate"]), "--out", str(tmp_path / "model.nir")], ".net"),
        (["export", "lava", str(checkpoints["rate"]), "--out", str(tmp_path / "x.net"), "--synapses", "sparse"],
         "--synapses"),
        (["export", "lava", str(checkpoints["rate"]), "--out", str(tmp_path / "missing" / "x.net")], "does not exist"),
        (["verify", str(checkpoints["rate"]), "--targets", "lava", "--lava-synapses", "x"], "--lava-synapses"),
        (["bench", "lava", str(tmp_path / "none.net")], "does not exist"),
        (["info", str(tmp_path / "none.net")], "does not exist"),
    ]
    for args, words in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert words in result.output and "Traceback" not in result.output, (args, result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
