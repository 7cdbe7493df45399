"""Training on several processes (DDP over gloo, CPU): N processes equal one on the same global batch, for
every family, BatchNorm statistics included; without --sync-bn each rank normalises its own half-batch, as a
hand computation of two processes averaging gradients says; a rank killed mid-epoch and resumed (at another
world size too) ends with the uninterrupted run's weights."""

import copy
import os
import sys
import textwrap

import pytest
import torch
from torch import nn

from revsnn import distributed as D
from revsnn.data import ImageData, as_splits, load_digits, to_input
from revsnn.models import build_model, builder_config, get_config
from revsnn.testing import train_in_group
from revsnn.train import TrainError, TrainOptions, train

FAMILIES = ["revsresnet-digits", "pararevsnn-digits", "revsformer-digits", "trevsnn-digits", "revnode-digits",
            "scnn-digits", "ddpmodels:build"]

# A model of the user's own with every piece the zoo's digits models lack: a Recompute boundary around a
# BatchNorm'd stem, a reversible sequence whose branches hold BatchNorm, and a plain head.
DDPMODELS = textwrap.dedent('''
    from torch import nn

    from revsnn.layers import TimeDistributed
    from revsnn.neurons import IF, LIF
    from revsnn.reversible import Recompute, RevNetCoupling, ReversibleSequence


    def branch(width):
        return nn.Sequential(LIF(), TimeDistributed(nn.Linear(width, width)), TimeDistributed(nn.BatchNorm1d(width)))


    class Net(nn.Module):
        def __init__(self, features, num_classes, width=8):
            super().__init__()
            self.stem = Recompute(nn.Sequential(TimeDistributed(nn.Linear(features, 2 * width)),
                                                TimeDistributed(nn.BatchNorm1d(2 * width))))
            self.body = ReversibleSequence([RevNetCoupling(branch(width), branch(width)) for _ in range(2)])
            self.neuron = IF()
            self.head = TimeDistributed(nn.Linear(2 * width, num_classes))

        def forward(self, x):
            return self.head(self.neuron(self.body(self.stem(x.flatten(2))))).mean(0)


    def build(input_shape, num_classes):
        c, h, w = input_shape
        return Net(c * h * w, num_classes)
''')


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddpmodels")
    (folder / "ddpmodels.py").write_text(DDPMODELS)
    sys.path.insert(0, str(folder))  # spawned ranks inherit sys.path
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("ddpmodels", None)


def tiny() -> ImageData:
    """24 training samples: 3 global batches of 8, i.e. 3 optimizer steps per epoch."""
    d = load_digits()
    return ImageData("digits", d.x_train[:24], d.y_train[:24], d.x_test[:8], d.y_test[:8])


def options(model, out, **kw) -> TrainOptions:
    # SGD: its step is linear in the gradient. AdamW divides by the gradient's root mean square, which turns
    # the rounding noise of a gradient that is zero in exact arithmetic (a bias right before a BatchNorm) into
    # a step of size ~lr * noise / eps; N processes and one sum in different orders, so the noise differs.
    base = dict(model=model, out=out, epochs=1, time_steps=2, batch_size=8, lr=0.1, seed=5, encoding="direct",
                precision="fp64", optimizer="sgd", momentum=0.9)
    if model.startswith("trevsnn"):
        base["time_steps"] = 4  # one column per step
    base.update(kw)
    return TrainOptions(**base)


def _weights(path):
    return torch.load(path / "model.pt", weights_only=True)["state_dict"]


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


def test_two_processes_equal_one_every_family_and_half_batch_bn(tmp_path, user_module):
    (tmp_path / "two").mkdir()
    (tmp_path / "one").mkdir()
    runs = [(options(m, tmp_path / "two" / m.replace(":", "_"), sync_bn=True), tiny()) for m in FAMILIES]
    # Without --sync-bn: each rank normalises its own half batch (checked by hand below).
    runs.append((options("revsresnet-digits", tmp_path / "two-local-bn"), tiny()))
    D.launch(2, train_in_group, runs)
    for model in FAMILIES:
        out = tmp_path / "one" / model.replace(":", "_")
        train(options(model, out), data=tiny())
        one, two = _weights(out), _weights(tmp_path / "two" / model.replace(":", "_"))
        init = _initial_state(model)
        moved = _max_diff(one, init)
        assert moved > 1e-3, f"{model}: 3 steps hardly changed the weights ({moved})"
        assert _max_diff(one, two) < 1e-9, f"{model}: 2 processes differ from 1 by {_max_diff(one, two)}"
        bn = [k for k in one if k.endswith("running_var")]
        if bn:  # statistics updated once per step under recompute, over the global batch
            assert all(int(two[k.replace("running_var", "num_batches_tracked")]) == 3 for k in bn), model
    by_hand = _two_ranks_by_hand("revsresnet-digits")
    got = _weights(tmp_path / "two-local-bn")
    assert _max_diff(by_hand, got) < 1e-9
    # and it really differs from one process over the whole batch (the statistics are per half)
    assert _max_diff(_weights(tmp_path / "one" / "revsresnet-digits"), got) > 1e-6


def _initial_state(model):
    config = get_config(model) if ":" not in model else builder_config(model, (1, 8, 8), 10)
    torch.manual_seed(5)
    return build_model(config).double().state_dict()


def _two_ranks_by_hand(model_name):
    """Two data-parallel ranks computed in one process: each its contiguous half of the global batch, plain
    BatchNorm over that half, the two gradients averaged; rank 1 starts each step from rank 0's buffers
    (what DDP broadcasts); SGD as the trainer builds it."""
    torch.manual_seed(5)
    model = build_model(get_config(model_name)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    splits = as_splits(tiny())
    order = torch.randperm(24, generator=torch.Generator().manual_seed(5)).split(8)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for batch in order:
        grads = []
        other = copy.deepcopy(model)
        for net, half in ((model, batch[:4]), (other, batch[4:])):
            x, y = splits.train[half.tolist()]
            x = to_input(x, splits, 2, "direct").double()
            net.zero_grad()
            loss_fn(net(x), y).backward()
            grads.append([p.grad.clone() for p in net.parameters()])
        for p, g0, g1 in zip(model.parameters(), *grads):
            p.grad = (g0 + g1) / 2
        opt.step()
    return model.state_dict()


def test_rank_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    kw = {"epochs": 3, "sync_bn": True}
    train(options("revsresnet-digits", tmp_path / "whole", **kw), data=tiny())
    monkeypatch.setenv(D.KILL_ENV, "1:2:1")  # rank 1 SIGKILLs itself at step 1 of epoch 2
    with pytest.raises(D.DistributedError, match="died"):
        D.launch(2, train_in_group, [(options("revsresnet-digits", tmp_path / "killed", **kw), tiny())])
    monkeypatch.delenv(D.KILL_ENV)
    assert torch.load(tmp_path / "killed" / "model.pt", weights_only=True)["epoch"] == 1
    # resumed with 1 process: the checkpoint of a run on 2 resumes at any world size
    train(options("revsresnet-digits", tmp_path / "killed", **kw, resume=True), data=tiny())
    assert _max_diff(_weights(tmp_path / "whole"), _weights(tmp_path / "killed")) < 1e-9


def test_shards_and_weights_cover_the_global_batch():
    ctx = [D.DistContext(rank=r, world=3) for r in range(3)]
    batches = [torch.arange(10), torch.arange(10, 12)]  # the second is shorter than the world: left out
    shards = [D.shard_batches(batches, c) for c in ctx]
    assert torch.equal(torch.cat([s[0][0] for s in shards]), batches[0])
    assert all(len(s[0]) == 1 and s[1] == [10] for s in shards)
    weights = [D.local_weight(len(s[0][0]), 10, c) for s, c in zip(shards, ctx)]
    assert sum(w * len(s[0][0]) / (len(s[0][0]) * 3) for w, s in zip(weights, shards)) == pytest.approx(1.0)
    one = D.DistContext()
    assert D.shard_batches(batches, one) == (batches, [10, 2]) and D.local_weight(4, 10, one) == 1.0
    # ranks draw different noise, the same again when an epoch is re-run
    g = [D.rank_generator(0, 1, c).initial_seed() for c in ctx]
    assert len(set(g)) == 3 and D.rank_generator(0, 1, ctx[1]).initial_seed() == g[1]


def test_bad_distributed_set_ups_fail_in_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(D.DistributedError, match="RANK=5 and WORLD_SIZE=2"):
        train(options("scnn-digits", tmp_path / "x"), data=tiny())
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(D.DistributedError, match="MASTER_ADDR is not set"):
        train(options("scnn-digits", tmp_path / "x"), data=tiny())
    with pytest.raises(TrainError, match="--precision must be one of"):
        train(options("scnn-digits", tmp_path / "x", precision="fp8"), data=tiny())


@pytest.mark.parametrize("model", FAMILIES)
def test_every_parameter_gradient_accumulates_once_per_step(model, user_module):
    """DDP's hooks sit where autograd accumulates a parameter's gradient: each reversible Function must
    deliver every parameter's gradient there once per backward (never inside its own recompute)."""
    config = get_config(model) if ":" not in model else builder_config(model, (1, 8, 8), 10)
    torch.manual_seed(0)
    net = build_model(config).train()
    calls = {}
    for name, p in net.named_parameters():
        p.register_post_accumulate_grad_hook(lambda p, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    x = torch.rand(config.get("time_steps") or 2, 4, 1, 8, 8)
    net(x).sum().backward()
    assert calls == {name: 1 for name, _ in net.named_parameters()}


@pytest.mark.parametrize("args, message", [
    (["--nproc", "0"], "--nproc must be at least 1"),
    (["--precision", "fp8"], "--precision must be one of fp32, bf16, fp16, fp64"),
])
def test_cli_bad_distributed_options(tmp_path, args, message):
    from typer.testing import CliRunner

    from revsnn.cli.main import app

    result = CliRunner().invoke(app, ["train", "--model", "scnn-digits", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()
