"""Training protocols of the seed papers' code, as presets: ``revsnn train --preset NAME``.

A preset fills the training settings; the model's own defaults fill what it leaves open, and every option
given on the command line overrides both. Values follow the issue that asked for them (itself from the
seeds' scripts; see shared/research/wave2.md and papers.md).
"""

from __future__ import annotations

from typing import Any, Optional

from .errors import RevsnnError

__all__ = ["PRESETS", "PresetError", "preset_settings", "SETTING_LABELS"]


class PresetError(RevsnnError):
    pass


PRESETS: dict[str, dict[str, Any]] = {
    "revsnn-resnet-cifar": {
        "about": "RevSNN's ResNets on CIFAR",
        "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 32, "epochs": 200,
        "schedule": "step", "milestones": [100, 150], "gamma": 0.1, "time_steps": 4, "encoding": "direct",
        "augment": True,
    },
    "revsnn-former-cifar": {
        "about": "RevSNN's RevSFormer on CIFAR",
        "optimizer": "adamw", "lr": 5e-4, "weight_decay": 0.06, "schedule": "cosine", "warmup_epochs": 20,
        "epochs": 300, "batch_size": 64, "time_steps": 4, "label_smoothing": 0.1, "mixup": 0.5,
        "encoding": "direct", "augment": True,
    },
    "revsnn-dvs": {
        "about": "RevSNN on CIFAR10-DVS and DVS128 Gesture",
        "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.0, "schedule": "cosine", "batch_size": 16,
        "time_steps": 16, "epochs": 96, "amp": True, "encoding": "events",
    },
    "trevsnn-imagenet": {
        "about": "T-RevSNN on ImageNet",
        # LAMB is not in torch; AdamW takes its place (printed when the preset is used).
        "optimizer": "lamb", "lr_per_1024": 2e-3, "batch_size": 512, "warmup_epochs": 20, "schedule": "cosine",
        "weight_decay": 0.01, "grad_clip": 0.02, "ema": 0.9992, "label_smoothing": 0.1, "epochs": 300,
        "image_size": 224, "encoding": "direct", "augment": True,
    },
}

SETTING_LABELS = {
    "optimizer": "optimizer", "lr": "learning rate", "lr_per_1024": "learning rate per 1024 samples of batch",
    "momentum": "momentum", "weight_decay": "weight decay", "batch_size": "batch size", "epochs": "epochs",
    "schedule": "schedule", "milestones": "decay at epochs", "gamma": "decay factor", "warmup_epochs": "warm-up epochs",
    "time_steps": "time steps T", "label_smoothing": "label smoothing", "mixup": "mixup alpha", "ema": "EMA decay",
    "grad_clip": "gradient clipping (norm)", "amp": "mixed precision", "image_size": "image size",
    "encoding": "encoding", "augment": "augmentation",
}


def preset_settings(name: Optional[str], data: str = "digits") -> dict[str, Any]:
    """The settings a preset names for ``data`` (without its ``about``); ``{}`` for no preset."""
    if name is None:
        return {}
    if name not in PRESETS:
        raise PresetError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}.")
    settings = {k: v for k, v in PRESETS[name].items() if k != "about"}
    if name == "revsnn-dvs" and data == "dvs128-gesture":
        settings["epochs"] = 192  # the seeds train Gesture twice as long as CIFAR10-DVS
    return settings
