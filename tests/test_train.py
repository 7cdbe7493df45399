"""The trainer and `revsnn train`: checkpoints, resume after a kill, reproducibility, bad options."""

import json

import pytest
import torch
from typer.testing import CliRunner

from revsnn.checkpoint import CheckpointError, load_checkpoint, load_model
from revsnn.cli.main import app
from revsnn.data import ImageData, encode, load_digits
from revsnn.train import TrainError, TrainOptions, train

runner = CliRunner()


@pytest.fixture(scope="module")
def small_data() -> ImageData:
    """A slice of the real digits split, so that each run takes a second or two."""
    d = load_digits()
    return ImageData("digits", d.x_train[:96], d.y_train[:96], d.x_test[:40], d.y_test[:40])


def opts(out, **kw):
    base = dict(model="revsresnet-digits", out=out, epochs=2, time_steps=2, batch_size=32, lr=0.01, seed=3)
    base.update(kw)
    return TrainOptions(**base)


def test_digits_split_is_deterministic():
    a, b = load_digits(), load_digits()
    assert len(a.y_train) == 1437 and len(a.y_test) == 360
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_test, b.y_test)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0


def test_encodings():
    x = torch.tensor([[[[0.0, 1.0], [0.5, 0.25]]]])
    direct = encode(x, 3, "direct")
    assert direct.shape == (3, 1, 1, 2, 2) and torch.equal(direct[2], x)
    g = torch.Generator().manual_seed(0)
    rate = encode(x.expand(2000, 1, 2, 2), 5, "rate", g)
    assert set(rate.unique().tolist()) <= {0.0, 1.0}
    assert rate[..., 0, 0].sum() == 0 and rate[..., 0, 1].mean() == 1.0
    assert abs(rate[..., 1, 0].mean().item() - 0.5) < 0.03
    with pytest.raises(ValueError):
        encode(x, 0, "direct")


def test_train_writes_loadable_checkpoint_and_metrics(tmp_path, small_data):
    metrics = train(opts(tmp_path / "run"), data=small_data)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["model"] == "revsresnet-digits" and written["epochs"] == 2 and written["time_steps"] == 2
    assert written["test_accuracy"] == metrics["test_accuracy"]
    payload = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert payload["config"]["name"] == "revsresnet-digits"
    model, _ = load_model(tmp_path / "run" / "model.pt")
    x = encode(small_data.x_test, 2, "direct")
    assert model(x).shape == (40, 10)
    assert not list((tmp_path / "run").glob("*tmp*"))  # no temporary file (revsnn.fileio) is left


def test_same_seed_same_weights(tmp_path, small_data):
    train(opts(tmp_path / "a", epochs=1), data=small_data)
    train(opts(tmp_path / "b", epochs=1), data=small_data)
    train(opts(tmp_path / "c", epochs=1, seed=4), data=small_data)
    a, b, c = (torch.load(tmp_path / d / "model.pt", weights_only=True)["state_dict"] for d in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


class KillInEpoch:
    """A reporter that interrupts training at the first batch of one epoch, like Ctrl-C."""

    def __init__(self, epoch):
        self.kill, self.epoch = epoch, 0

    def start_epoch(self, epoch, epochs, batches):
        self.epoch = epoch

    def batch(self, loss, accuracy):
        if self.epoch == self.kill:
            raise KeyboardInterrupt

    def end_epoch(self, record):
        pass


@pytest.mark.parametrize("encoding", ["direct", "rate"])
def test_resume_after_kill_gives_uninterrupted_weights(tmp_path, small_data, encoding):
    whole = train(opts(tmp_path / "whole", epochs=3, encoding=encoding), data=small_data)
    with pytest.raises(KeyboardInterrupt):
        train(opts(tmp_path / "killed", epochs=3, encoding=encoding), KillInEpoch(3), data=small_data)
    assert load_checkpoint(tmp_path / "killed" / "model.pt")["epoch"] == 2
    resumed = train(opts(tmp_path / "killed", epochs=3, encoding=encoding, resume=True), data=small_data)
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["test_accuracy"] == whole["test_accuracy"] and resumed["epochs"] == 3


@pytest.mark.parametrize("args, message", [
    (["--model", "nope"], "Unknown model 'nope'"),
    (["--time-steps", "0"], "--time-steps must be at least 1"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--encoding", "poisson"], "--encoding must be one of"),
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--device", "tpu"], "--device must be cpu or cuda"),
])
def test_bad_options_fail_cleanly(tmp_path, args, message):
    base = ["train", "--model", "revsresnet-digits", "--out", str(tmp_path / "run")]
    result = runner.invoke(app, base + args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_missing_parent_and_wrong_resume(tmp_path, small_data):
    result = runner.invoke(app, ["train", "--model", "revsresnet-digits", "--out", str(tmp_path / "no" / "run")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(app, ["train", "--model", "revsresnet-digits", "--out", str(tmp_path), "--resume"])
    assert result.exit_code == 2 and "no " in result.output and "resume" in result.output
    train(opts(tmp_path / "run", epochs=1), data=small_data)
    with pytest.raises(TrainError, match="holds a 'revsresnet-digits' model"):
        train(opts(tmp_path / "run", model="pararevsnn-digits", resume=True), data=small_data)


def test_corrupt_checkpoints_are_refused(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable revsnn checkpoint"):
        load_checkpoint(bad)
    torch.save({"weights": torch.zeros(2)}, bad)
    with pytest.raises(CheckpointError, match="not a revsnn checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")


def test_cli_trains_one_epoch(tmp_path):
    result = runner.invoke(app, ["train", "--model", "revsresnet-digits", "--out", str(tmp_path / "run"),
                                 "--epochs", "1", "--time-steps", "1", "--batch-size", "128"])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 1
