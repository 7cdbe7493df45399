"""The RevSResNet, ParaRevSNN and RevSFormer families: published sizes, twin equality, flat memory."""

import pytest
import torch

from revsnn.memory import activation_bytes
from revsnn.models import all_configs, build_model, get_config
from revsnn.neurons import neurons_of
from revsnn.reversible import plain_twin


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, classes, published", [
    ("revsresnet21", 100, 11_048_420),   # RevSNN README: 11.05M
    ("revsresnet37", 100, 23_590_884),   # RevSNN README: 23.59M
    ("revsformer-4-384", 10, 9_323_962),  # RevSNN README: 9.32M
    ("revsformer-2-384", 10, 5_760_000),  # RevSNN README: 5.76M
])
def test_published_parameter_counts(name, classes, published):
    config = get_config(name)
    config["num_classes"] = classes
    assert n_params(build_model(config)) == pytest.approx(published, rel=0.005)


def test_pararevsnn_has_the_resnet_parameters():
    assert n_params(build_model("pararevsnn37")) == n_params(build_model("revsresnet37"))


def test_every_config_lists_its_fields():
    configs = all_configs()
    for family in ("revsresnet", "pararevsnn", "revsformer"):
        assert f"{family}-digits" in configs
    for name, config in configs.items():
        assert {"family", "input_shape", "num_classes", "train"} <= set(config), name


def small(name, **changes):
    config = get_config(name)
    config.update(changes)
    torch.manual_seed(0)
    return build_model(config).double()


def _boost_batchnorm(model, gain=2.0):
    """Larger BatchNorm gains so that every neuron population spikes in a tiny random network."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.weight.fill_(gain)


def _grads(model, x, w):
    x = x.clone().requires_grad_(True)
    out = model(x)
    (out * w).sum().backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in model.named_parameters()}


CASES = {
    "revsresnet-digits": dict(planes=[2, 3], blocks=[2, 1]),
    "pararevsnn-digits": dict(planes=[2, 3], blocks=[2, 1]),
    "revsformer-digits": dict(dim=8, heads=2, depth=2, scale=1.0),  # scale: so that attention spikes
}


@pytest.mark.parametrize("name, recompute", [(n, False) for n in CASES] + [
    ("revsresnet-digits", True), ("pararevsnn-digits", True)])  # boundary recompute is a ResNet option
def test_model_equals_plain_twin(name, recompute):
    model = small(name, recompute_boundaries=recompute, **CASES[name])
    _boost_batchnorm(model)
    twin = plain_twin(model)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 4, 1, 8, 8, generator=g, dtype=torch.float64) * 2
    w = torch.randn(4, 10, generator=g, dtype=torch.float64)

    counts = []
    hooks = [n.register_forward_hook(lambda m, i, o: counts.append(o.sum().item())) for n in neurons_of(model)]
    out_r, dx_r, g_r = _grads(model, x, w)
    for h in hooks:
        h.remove()
    assert min(counts) > 0, "a neuron population never spiked"
    out_p, dx_p, g_p = _grads(twin, x, w)

    assert torch.equal(out_r, out_p)
    torch.testing.assert_close(dx_r, dx_p, rtol=1e-9, atol=1e-12)
    for name_ in g_r:
        torch.testing.assert_close(g_r[name_], g_p[name_], rtol=1e-9, atol=1e-12, msg=name_)
    for (b, v_r), (_, v_p) in zip(model.named_buffers(), twin.named_buffers()):
        assert torch.equal(v_r, v_p), b


@pytest.mark.parametrize("name, key", [("revsresnet-digits", "blocks"), ("pararevsnn-digits", "blocks"),
                                       ("revsformer-digits", "depth")])
def test_retained_bytes_flat_in_depth(name, key):
    x = torch.rand(2, 2, 1, 8, 8, dtype=torch.float64)
    rev, plain = [], []
    for depth in (1, 2, 4):
        changes = {key: [depth, depth]} if key == "blocks" else {key: depth}
        if name.startswith("revsformer"):
            changes.update(dim=8, heads=2)
        else:
            changes.update(planes=[2, 3])
        model = small(name, **changes)
        rev.append(activation_bytes(model, x))
        plain.append(activation_bytes(plain_twin(model), x))
    assert rev[0] == rev[1] == rev[2]
    assert plain[0] < plain[1] < plain[2]
    assert plain[2] - plain[1] == 2 * (plain[1] - plain[0])


def test_recompute_boundaries_keep_less():
    x = torch.rand(2, 2, 1, 8, 8, dtype=torch.float64)
    plain_boundaries = activation_bytes(small("revsresnet-digits", planes=[2, 3]), x)
    recomputed = activation_bytes(small("revsresnet-digits", planes=[2, 3], recompute_boundaries=True), x)
    assert recomputed < plain_boundaries
