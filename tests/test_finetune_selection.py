"""Issue 15's accuracy work: the distillation loss of Loihi-aware fine-tuning, and the epoch it writes, chosen on
training samples held out from it (never on the test split)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from revsnn.checkpoint import load_checkpoint, load_model
from revsnn.data import ImageData, as_splits, load_digits
from revsnn.finetune import FinetuneError, distillation_loss, finetune, snap_to_grid
from revsnn.train import TrainOptions, hold_out, train, validate

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py: small tensors, a busy machine


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def test_distillation_loss_against_a_hand_computation():
    """``(1 - w) CE + w tau^2 KL(teacher || student)`` on softened logits, batch means, written out with the
    math module; and its gradient, by hand ``((1 - w) (p - onehot) + w tau (p_tau - q_tau)) / B``."""
    s = [[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, -0.4], [-1.5, 2.5, 0.0, 1.0]]
    t = [[1.0, 1.5, 0.0, -2.0], [3.0, -1.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0]]
    y = [0, 2, 1]
    w, tau = 0.3, 2.5
    ce = [-math.log(_softmax(r)[k]) for r, k in zip(s, y)]
    kl = []
    for rs, rt in zip(s, t):
        p, q = _softmax([v / tau for v in rs]), _softmax([v / tau for v in rt])
        kl.append(sum(qi * math.log(qi / pi) for pi, qi in zip(p, q)))
    hand = (1 - w) * sum(ce) / 3 + w * tau * tau * sum(kl) / 3

    logits = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    loss = distillation_loss(logits, torch.tensor(t, dtype=torch.float64), torch.tensor(y), w, tau)
    assert math.isclose(loss.item(), hand, rel_tol=1e-12)
    loss.backward()
    for i in range(3):
        p, p_tau, q_tau = _softmax(s[i]), _softmax([v / tau for v in s[i]]), _softmax([v / tau for v in t[i]])
        for j in range(4):
            g = ((1 - w) * (p[j] - (j == y[i])) + w * tau * (p_tau[j] - q_tau[j])) / 3
            assert math.isclose(logits.grad[i, j].item(), g, rel_tol=1e-9, abs_tol=1e-14)
    # weight 0 is the plain cross-entropy; a teacher equal to the student leaves only the label term
    plain = distillation_loss(logits, torch.tensor(t), torch.tensor(y), 0.0, tau)
    assert math.isclose(plain.item(), sum(ce) / 3, rel_tol=1e-12)
    same = distillation_loss(logits, logits.detach(), torch.tensor(y), w, tau)
    assert math.isclose(same.item(), (1 - w) * sum(ce) / 3, rel_tol=1e-12)


def test_hold_out_is_seeded_disjoint_and_leaves_the_test_split_alone():
    digits = as_splits(load_digits())
    train_part, validation = hold_out(digits, 0.2)
    held, kept = validation.test.indices, train_part.train.indices
    assert len(held) == round(0.2 * len(digits.train)) and len(held) + len(kept) == len(digits.train)
    assert not set(held) & set(kept)
    assert validation.test.dataset is digits.train and train_part.test is digits.test
    assert hold_out(digits, 0.2)[1].test.indices == held   # the same samples every time (whatever --seed)
    assert hold_out(digits, 0.0) == (digits, None)


def test_finetune_writes_the_best_held_out_epoch_not_the_test_splits(tmp_path):
    """A toy run where the best epoch is known: a float scnn trained briefly, then one fine-tuning epoch at a
    learning rate that wrecks it (lr 1). The start on the grid (epoch 0) is best on the held-out digits, so
    model.pt must hold it: the float checkpoint projected onto its grid (``snap_to_grid``, computed here
    independently). The test split's labels are shifted by one class, so that on it the wrecked epoch scores
    higher: a choice made on the test split would have taken epoch 1."""
    d = load_digits()
    x, y = d.x_train[:400], d.y_train[:400]
    shifted = ImageData("digits", x, y, d.x_test[:60], (d.y_test[:60] + 1) % 10)
    src = tmp_path / "float"
    train(TrainOptions(model="scnn-digits", out=src, epochs=3, encoding="rate", batch_size=32, lr=3e-3), data=shifted)
    out = tmp_path / "tuned"
    metrics = finetune(src / "model.pt", "loihi", 1, out, lr=1.0, data=shifted, val_fraction=0.25)

    chosen = json.loads((out / "metrics.json").read_text())["selection"]
    start, wrecked = chosen["start"], metrics["history"][0]
    assert wrecked["val_accuracy"] < start["val_accuracy"] - 0.2          # the premise: lr 1 wrecks it
    assert wrecked["test_accuracy"] > start["test_accuracy"]              # and the shifted test split prefers it
    assert chosen["epoch"] == 0 and metrics["selected_epoch"] == 0
    assert chosen["validation_samples"] == 100 and chosen["by"].startswith("validation accuracy")
    assert metrics["test_accuracy"] == start["test_accuracy"]             # the run's figure is the kept epoch's

    tuned, _ = load_model(out / "model.pt")
    expected, _ = load_model(src / "model.pt")
    assert snap_to_grid(expected, 4).exact
    got = tuned.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.state_dict().items())
    # what model.pt scores on the held-out digits, recomputed here, is the figure the selection recorded
    _, validation = hold_out(as_splits(shifted), 0.25)
    assert validate(tuned, validation, 4, "rate")["val_accuracy"] == start["val_accuracy"]
    # --resume continues from the optimizer's latent weights (the wrecked ones), not from the kept ones
    raw = load_checkpoint(out / "model.pt", resume=True)["raw_state_dict"]
    assert any(not torch.equal(raw[k], got[k]) for k in got if k.endswith("weight"))


def test_selection_survives_resume(tmp_path):
    """A float run with a held-out split, killed after epoch 1 and resumed, writes what the whole run writes:
    the same kept epoch, the same weights, the same selection record."""
    d = load_digits()
    data = ImageData("digits", d.x_train[:96], d.y_train[:96], d.x_test[:40], d.y_test[:40])

    def opts(out, **kw):
        return TrainOptions(model="scnn-digits", out=out, epochs=3, batch_size=32, lr=0.01, seed=3, encoding="rate",
                            val_fraction=0.25, **kw)

    class KillInEpoch2:
        def start_epoch(self, epoch, epochs, batches):
            if epoch == 2:
                raise KeyboardInterrupt

        def batch(self, loss, accuracy):
            pass

        def end_epoch(self, record):
            pass

    whole = train(opts(tmp_path / "whole"), data=data)
    with pytest.raises(KeyboardInterrupt):
        train(opts(tmp_path / "killed"), KillInEpoch2(), data=data)
    resumed = train(opts(tmp_path / "killed", resume=True), data=data)
    assert resumed["selection"] == whole["selection"] and 1 <= whole["selected_epoch"] <= 3
    best = max(whole["history"], key=lambda h: (h["val_accuracy"], -h["val_loss"]))
    assert whole["selected_epoch"] == best["epoch"]
    a = load_checkpoint(tmp_path / "whole" / "model.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "killed" / "model.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kw, words", [({"distill": 1.5}, "--distill"), ({"temperature": 0.0}, "--temperature"),
                                       ({"val_fraction": 1.0}, "--val-fraction")])
def test_finetune_refuses_bad_selection_and_distillation_options(tmp_path, kw, words):
    with pytest.raises(FinetuneError, match=words):
        finetune(tmp_path / "missing.pt", "loihi", 1, tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists()


def test_cli_val_fraction_bad_values_are_one_sentence(tmp_path):
    """`revsnn train --val-fraction 1` and `revsnn finetune --distill 2`: one sentence, exit 2, nothing written
    (the options reach the library's checks; a training run through the CLI is too slow for here)."""
    from typer.testing import CliRunner

    from revsnn.cli.main import app

    for args, words in ((["train", "--model", "scnn-digits", "--val-fraction", "1"], "--val-fraction"),
                        (["finetune", str(tmp_path / "x.pt"), "--distill", "2"], "--distill")):
        bad = CliRunner().invoke(app, args + ["--out", str(tmp_path / "bad")])
        assert bad.exit_code == 2 and words in bad.output and "Traceback" not in bad.output, bad.output
    assert not (tmp_path / "bad").exists()


def test_cli_help_states_the_library_defaults():
    """The CLI leaves the defaults to revsnn.finetune (None) and repeats their values in its help: they agree."""
    import inspect

    from revsnn.cli.finetune import finetune_command
    from revsnn.finetune import DISTILL, LR_DIVISOR, TEMPERATURE, VAL_FRACTION

    params = inspect.signature(finetune_command).parameters
    for name, value in (("distill", DISTILL), ("temperature", TEMPERATURE), ("val_fraction", VAL_FRACTION)):
        assert params[name].default.default is None and f"[default: {value:g}]" in params[name].default.help, name
    assert f"/ {LR_DIVISOR}]" in params["lr"].default.help
