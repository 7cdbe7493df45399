"""Helpers for checking exporters and targets against the training models (used by the test suite)."""

from __future__ import annotations

import torch
from torch import nn

from .models import build_model, get_config

__all__ = ["trained_like"]


def trained_like(name: str, seed: int = 0, **changes) -> nn.Module:
    """A zoo model in float64 eval mode whose BatchNorms hold non-trivial statistics and affine parameters,
    as after training, so that folding them into the weights is really exercised. ``changes`` override
    config fields (smaller widths, fewer blocks)."""
    config = get_config(name)
    config.update(changes)
    torch.manual_seed(seed)
    model = build_model(config).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(c, generator=g, dtype=torch.float64))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g, dtype=torch.float64))
                m.weight.copy_(1.5 + 0.5 * torch.randn(c, generator=g, dtype=torch.float64))
                m.bias.copy_(0.2 * torch.randn(c, generator=g, dtype=torch.float64))
    return model.eval()


def train_in_group(runs) -> None:
    """Run ``train(opts, data=data)`` for every ``(opts, data)`` of ``runs`` in one process group (a rank's
    work under ``revsnn.distributed.launch``; a module-level function, so spawned ranks can import it)."""
    import torch.distributed as dist

    from .train import train

    dist.init_process_group("gloo")
    try:
        for opts, data in runs:
            train(opts, data=data)
    finally:
        dist.destroy_process_group()
