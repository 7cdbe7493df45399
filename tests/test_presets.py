"""Training presets of the seeds, command-line overrides, schedules, gradient clipping, EMA and mixup."""

import math

import pytest
import torch
from typer.testing import CliRunner

from revsnn.cli.main import app
from revsnn.data import ImageData, load_digits
from revsnn.train import TrainOptions, _lr_factor, resolve_options, train

runner = CliRunner()


def settings(tmp_path, **kw):
    return resolve_options(TrainOptions(model=kw.pop("model", "revsresnet-digits"), out=tmp_path / "r", **kw))


def test_presets_set_the_issue_values(tmp_path):
    s = settings(tmp_path, preset="revsnn-resnet-cifar", data="cifar10")
    assert (s["optimizer"], s["lr"], s["momentum"], s["weight_decay"], s["batch_size"], s["epochs"]) == \
        ("sgd", 0.1, 0.9, 1e-4, 32, 200)
    assert (s["schedule"], s["milestones"], s["time_steps"], s["augment"]) == ("step", [100, 150], 4, True)
    s = settings(tmp_path, preset="revsnn-former-cifar", model="revsformer-digits")
    assert (s["optimizer"], s["lr"], s["weight_decay"], s["warmup_epochs"], s["epochs"], s["batch_size"]) == \
        ("adamw", 5e-4, 0.06, 20, 300, 64)
    assert (s["label_smoothing"], s["mixup"], s["time_steps"]) == (0.1, 0.5, 4)
    s = settings(tmp_path, preset="revsnn-dvs", data="cifar10-dvs", model="scnn-digits")
    assert (s["optimizer"], s["lr"], s["weight_decay"], s["batch_size"], s["epochs"], s["amp"], s["encoding"]) == \
        ("adamw", 1e-3, 0.0, 16, 96, True, "events")
    assert settings(tmp_path, preset="revsnn-dvs", data="dvs128-gesture", model="scnn-digits")["epochs"] == 192
    assert any("mixed precision needs a GPU" in n for n in s["notes"])
    s = settings(tmp_path, preset="trevsnn-imagenet", data="imagefolder", model="scnn-digits")
    assert (s["lr"], s["warmup_epochs"], s["weight_decay"], s["grad_clip"], s["ema"], s["label_smoothing"],
            s["epochs"], s["image_size"]) == (2e-3 * 512 / 1024, 20, 0.01, 0.02, 0.9992, 0.1, 300, 224)
    assert any("LAMB is not part of torch" in n for n in s["notes"])


def test_command_line_overrides_the_preset(tmp_path):
    s = settings(tmp_path, preset="trevsnn-imagenet", data="imagefolder", model="scnn-digits", batch_size=256,
                 weight_decay=0.05)
    assert s["lr"] == 2e-3 * 256 / 1024 and s["weight_decay"] == 0.05  # the rate follows the batch
    assert "weight decay 0.01 (overridden: 0.05)" in s["notes"][0]
    s = settings(tmp_path, preset="revsnn-resnet-cifar", lr=0.05, epochs=3, optimizer="adamw")
    assert (s["lr"], s["epochs"], s["optimizer"]) == (0.05, 3, "adamw")
    assert "learning rate 0.1 (overridden: 0.05)" in s["notes"][0]


def test_schedules():
    step = {"warmup_epochs": 0, "schedule": "step", "milestones": [100, 150], "gamma": 0.1, "epochs": 200}
    assert [_lr_factor(step, e, 0, 10) for e in (0, 99, 100, 149, 150, 199)] == \
        pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cos = {"warmup_epochs": 2, "schedule": "cosine", "epochs": 6, "gamma": 0.1, "milestones": None}
    assert [_lr_factor(cos, 0, k, 4) for k in range(4)] == pytest.approx([1 / 8, 2 / 8, 3 / 8, 4 / 8])
    assert _lr_factor(cos, 1, 3, 4) == 1.0
    assert [_lr_factor(cos, e, 0, 4) for e in (2, 4)] == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 2))])


@pytest.fixture(scope="module")
def tiny():
    d = load_digits()
    return ImageData("digits", d.x_train[:48], d.y_train[:48], d.x_test[:16], d.y_test[:16])


def test_gradient_clipping_bounds_each_step(tmp_path, tiny):
    """Plain SGD with the gradient norm clipped to c moves the parameters by at most lr * c a step."""
    torch.manual_seed(0)
    from revsnn.models import build_model, get_config

    init = {k: v.clone() for k, v in build_model(get_config("scnn-digits")).named_parameters()}
    opts = TrainOptions(model="scnn-digits", out=tmp_path / "c", epochs=1, batch_size=16, lr=0.5, seed=0,
                        optimizer="sgd", momentum=0.0, weight_decay=0.0, grad_clip=1e-3)
    train(opts, data=tiny)
    final = torch.load(tmp_path / "c" / "model.pt", weights_only=True)["state_dict"]
    moved = math.sqrt(sum(((final[k] - init[k]) ** 2).sum().item() for k in init))
    assert 0 < moved <= 3 * 0.5 * 1e-3 * (1 + 1e-5)  # 3 steps (cosine keeps lr at 0.5 in epoch 1 of 1)


def test_ema_mixup_and_label_smoothing_run_and_resume(tmp_path, tiny):
    opts = dict(model="scnn-digits", epochs=2, batch_size=16, lr=0.01, seed=1, ema=0.9, mixup=0.5,
                label_smoothing=0.1)
    train(TrainOptions(out=tmp_path / "full", **opts), data=tiny)
    full = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    assert set(full["state_dict"]) == set(full["raw_state_dict"])
    assert not all(torch.equal(full["state_dict"][k], full["raw_state_dict"][k]) for k in full["state_dict"])
    train(TrainOptions(out=tmp_path / "half", **{**opts, "epochs": 1}), data=tiny)
    train(TrainOptions(out=tmp_path / "half", resume=True, **opts), data=tiny)
    half = torch.load(tmp_path / "half" / "model.pt", weights_only=True)
    for key in ("state_dict", "raw_state_dict"):
        assert all(torch.equal(full[key][k], half[key][k]) for k in full[key])


def test_cli_prints_what_the_preset_sets(tmp_path):
    r = runner.invoke(app, ["train", "--model", "scnn-digits", "--out", str(tmp_path / "p"), "--preset",
                            "revsnn-resnet-cifar", "--epochs", "1", "--batch-size", "256", "--lr", "0.05",
                            "--time-steps", "1"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "preset revsnn-resnet-cifar: optimizer sgd, learning rate 0.1 (overridden: 0.05)" in text
    assert "batch size 32 (overridden: 256)" in text and "decay at epochs [100, 150]" in text
    r = runner.invoke(app, ["train", "--model", "scnn-digits", "--out", str(tmp_path / "q"), "--preset", "nope"])
    assert r.exit_code == 2 and "unknown preset 'nope'" in r.output and "Traceback" not in r.output
