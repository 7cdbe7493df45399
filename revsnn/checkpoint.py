"""Checkpoints: weights plus the full model config, so that export needs nothing else.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, loaded with
``torch.load(weights_only=True)``: no pickled code runs from a file someone sent you. Every file is
written to a temporary name in the same folder and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

from revsnn.errors import RevsnnError

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import revsnn

__all__ = ["CheckpointError", "FORMAT", "atomic_write", "write_json", "save_checkpoint", "load_checkpoint",
           "load_model", "summarize_checkpoint"]

FORMAT = "revsnn.checkpoint/1"


class CheckpointError(RevsnnError):
    """A file that is not a usable revsnn checkpoint; the message says what is wrong and what to do."""


def atomic_write(path: Path | str, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path | str, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def save_checkpoint(path: Path | str, model: nn.Module, **extra: Any) -> None:
    """Save ``model`` (its ``config`` and ``state_dict``) and ``extra`` entries (optimizer, epoch, ...)."""
    payload = {"format": FORMAT, "revsnn_version": revsnn.__version__, "config": model.config,
               "state_dict": model.state_dict(), **extra}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load and validate a checkpoint on the CPU; raise CheckpointError with one clear sentence."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; pass the model.pt written by `revsnn train`.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt, truncated or foreign files
        raise CheckpointError(f"{path} is not a readable revsnn checkpoint ({type(exc).__name__}); "
                              "pass the model.pt written by `revsnn train`.") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a revsnn checkpoint (no '{FORMAT}' format tag); pass the "
                              "model.pt written by `revsnn train`.")
    for key in ("config", "state_dict"):
        if key not in payload:
            raise CheckpointError(f"{path} lacks its '{key}' entry; re-create it with `revsnn train`.")
    return payload


def load_model(path: Path | str) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a checkpoint, in eval mode on the CPU, and the checkpoint itself."""
    from .models import ModelBuilderError, UnknownModelError, build_model

    payload = load_checkpoint(path)
    try:
        # A model of the user's own (config "builder": MODULE:FUNCTION) is rebuilt by importing MODULE.
        model = build_model(payload["config"])
        model.load_state_dict(payload["state_dict"])
    except ModelBuilderError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    except (UnknownModelError, KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its weights do not fit its model config ({exc}).") from exc
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: '{name}' holds NaN or infinite values; retrain the model.")
    return model.eval(), payload


def summarize_checkpoint(model: nn.Module, payload: dict[str, Any]) -> dict[str, Any]:
    """What ``revsnn info`` shows of a checkpoint (``load_model``'s two results), as plain data: ``model``,
    ``family``, ``builder`` (``MODULE:FUNCTION`` of a model of the user's own, else absent), ``parameters``,
    ``input_shape``, ``num_classes``, ``train`` (its training settings), ``epochs_done`` and
    ``test_accuracy`` (when it has a history), ``revsnn_version``."""
    config = model.config
    summary: dict[str, Any] = {"model": config.get("name"), "family": config.get("family")}
    if config.get("builder"):
        summary["builder"] = config["builder"]
    summary.update({"parameters": sum(p.numel() for p in model.parameters()),
                    "input_shape": list(config["input_shape"]), "num_classes": config["num_classes"],
                    "train": dict(payload.get("train", {}))})
    history = payload.get("history") or []
    if history:
        summary["epochs_done"] = payload.get("epoch")
        summary["test_accuracy"] = history[-1]["test_accuracy"]
    summary["revsnn_version"] = payload.get("revsnn_version")
    return summary
