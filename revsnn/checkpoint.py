"""Checkpoints: weights plus the full model config, so that export needs nothing else.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, loaded with
``torch.load(weights_only=True)``: no pickled code runs from a file someone sent you. Every file is
written whole or not at all (``revsnn.fileio.atomic_write``).

Validation happens once, here, where a checkpoint is loaded, for every command: the config's keys, types
and ranges (time steps, encoding, thresholds, every number finite), every tensor finite, the state dict's
keys and shapes against the rebuilt model, and, for ``train --resume``, the training, RNG and optimizer
state. A file that fails gets one sentence naming the file, what is wrong and what to do.
"""

from __future__ import annotations

from revsnn.errors import RevsnnError

import io
import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import revsnn
from revsnn.fileio import atomic_write as _atomic_write

__all__ = ["CheckpointError", "FORMAT", "atomic_write", "write_json", "save_checkpoint", "load_checkpoint",
           "load_model", "summarize_checkpoint", "MAX_TIME_STEPS", "validate_payload"]

FORMAT = "revsnn.checkpoint/1"
# No spiking network runs anywhere near this many steps per sample (the papers use 4 to 16); a larger value is
# a damaged file, refused before anything allocates [T, ...] tensors. Options are bounded by memory instead
# (revsnn/limits.py).
MAX_TIME_STEPS = 1_000_000
_SEED_LIMIT = 2**63   # torch.manual_seed and numpy take seeds below 2**64; 2**63 keeps int64 arithmetic safe


class CheckpointError(RevsnnError):
    """A file that is not a usable revsnn checkpoint; the message says what is wrong and what to do."""


def atomic_write(path: Path | str, write) -> Path:
    """``revsnn.fileio.atomic_write``: kept here for the modules that import it from this one."""
    return _atomic_write(path, write)


def write_json(path: Path | str, data: Any) -> None:
    _atomic_write(path, (json.dumps(data, indent=2) + "\n").encode())


def save_checkpoint(path: Path | str, model: nn.Module, **extra: Any) -> None:
    """Save ``model`` (its ``config`` and ``state_dict``) and ``extra`` entries (optimizer, epoch, ...).

    Serialised into memory first: torch's zip writer, writing to a full disk itself, fails with a RuntimeError
    that names no file; plain writes fail with ENOSPC, which becomes one sentence. The folder is created here
    (one level), so that a run that fails before its first checkpoint leaves no empty folder."""
    path = Path(path)
    payload = {"format": FORMAT, "revsnn_version": revsnn.__version__, "config": model.config,
               "state_dict": model.state_dict(), **extra}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    created = False
    if not path.parent.exists() and path.parent.parent.is_dir():
        from revsnn.fileio import WriteError, os_error_sentence

        try:
            path.parent.mkdir()
            created = True
        except OSError as exc:
            raise WriteError(os_error_sentence(exc, path.parent, "create")) from exc
    try:
        _atomic_write(path, buffer.getbuffer())
    except BaseException:
        if created:  # the folder was made for this file alone: a failed write takes it away again
            try:
                path.parent.rmdir()
            except OSError:
                pass
        raise


def _bad(path: Path, what: str, fix: str = "re-create it with `revsnn train`") -> CheckpointError:
    return CheckpointError(f"{path}: {what}; {fix}.")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_numbers(path: Path, value: Any, where: str) -> None:
    """Every number in the config is finite (a NaN threshold would export and verify as if it were fine)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise _bad(path, f"{where} has a non-text key {k!r}")
            _check_numbers(path, v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_numbers(path, v, f"{where}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise _bad(path, f"{where} is {value}, not a finite number")
    elif isinstance(value, torch.Tensor):
        raise _bad(path, f"{where} is a tensor where the config holds plain numbers")


def _check_neuron_values(path: Path, value: Any, where: str) -> None:
    """Thresholds positive, time constants at least one step (DESIGN §4: dv = 1/τ in (0, 1])."""
    if isinstance(value, dict):
        for k, v in value.items():
            here = f"{where}.{k}"
            if k in ("v_threshold", "threshold") and v is not None and not (_is_number(v) and 0 < v < 1e9):
                raise _bad(path, f"{here} is {v!r}; a threshold is a positive number")
            if k == "tau" and v is not None and not (_is_number(v) and 1 <= v < 1e9):
                raise _bad(path, f"{here} is {v!r}; a time constant is a number of steps of at least 1")
            _check_neuron_values(path, v, here)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_neuron_values(path, v, f"{where}[{i}]")


def _check_config(path: Path, config: Any) -> None:
    if not isinstance(config, dict):
        raise _bad(path, f"its config is a {type(config).__name__}, not a dict")
    for key, kind in (("name", str), ("family", str)):
        if not isinstance(config.get(key), kind):
            raise _bad(path, f"its config has no text '{key}' entry")
    shape = config.get("input_shape")
    if not (isinstance(shape, (list, tuple)) and 1 <= len(shape) <= 4 and all(_is_int(v) and 1 <= v <= 1 << 20
                                                                              for v in shape)):
        raise _bad(path, f"its config's input_shape {shape!r} is not a list of positive whole numbers")
    classes = config.get("num_classes")
    if not (_is_int(classes) and 1 <= classes <= 1 << 24):
        raise _bad(path, f"its config's num_classes {classes!r} is not a positive whole number")
    if "time_steps" in config and config["time_steps"] is not None:
        _check_time_steps(path, config["time_steps"], "its config's time_steps")
    _check_numbers(path, config, "config")
    _check_neuron_values(path, config, "config")
    if "train" in config and not isinstance(config["train"], dict):
        raise _bad(path, "its config's 'train' defaults are not a dict")


def _check_time_steps(path: Path, value: Any, what: str) -> None:
    if not (_is_int(value) and 1 <= value <= MAX_TIME_STEPS):
        raise _bad(path, f"{what} is {value!r}, not a whole number from 1 to {MAX_TIME_STEPS:,}")


def _check_train(path: Path, train: Any) -> None:
    from .data import ENCODINGS, EVENT_ENCODINGS

    if not isinstance(train, dict):
        raise _bad(path, f"its training settings are a {type(train).__name__}, not a dict")
    if "time_steps" in train:
        _check_time_steps(path, train["time_steps"], "its time_steps")
    if "encoding" in train and train["encoding"] not in ENCODINGS + EVENT_ENCODINGS:
        raise _bad(path, f"its encoding {train['encoding']!r} is none of {', '.join(ENCODINGS + EVENT_ENCODINGS)}")
    for key in ("epochs", "batch_size"):
        if key in train and not (_is_int(train[key]) and train[key] >= 1):
            raise _bad(path, f"its {key} {train[key]!r} is not a positive whole number")
    if "lr" in train and not (_is_number(train["lr"]) and math.isfinite(train["lr"]) and train["lr"] > 0):
        raise _bad(path, f"its learning rate {train['lr']!r} is not a positive number")
    if "seed" in train and not (_is_int(train["seed"]) and 0 <= train["seed"] < _SEED_LIMIT):
        raise _bad(path, f"its seed {train['seed']!r} is not a whole number from 0 to 2**63 - 1")
    _check_numbers(path, {k: v for k, v in train.items() if k != "config"}, "train")


def _check_state_dict(path: Path, state: Any, key: str) -> None:
    if not isinstance(state, dict):
        raise _bad(path, f"its '{key}' is a {type(state).__name__}, not a dict of tensors")
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise _bad(path, f"its '{key}' entry {name!r} is a {type(tensor).__name__}, not a tensor")
        if (tensor.is_floating_point() or tensor.is_complex()) and not torch.isfinite(tensor).all():
            raise _bad(path, f"'{name}' holds NaN or infinite values", "retrain the model")


def _check_history(path: Path, payload: dict) -> None:
    history = payload.get("history")
    if history is None:
        return
    if not isinstance(history, list):
        raise _bad(path, f"its history is a {type(history).__name__}, not a list")
    for i, record in enumerate(history):
        if not isinstance(record, dict):
            raise _bad(path, f"its history entry {i} is a {type(record).__name__}, not a dict")
        for key in ("epoch", "test_accuracy", "loss", "train_accuracy", "seconds"):
            v = record.get(key)
            if key in ("epoch", "test_accuracy") and v is None:
                raise _bad(path, f"its history entry {i} has no '{key}'")
            if v is not None and not (_is_number(v) and math.isfinite(v)):
                raise _bad(path, f"its history entry {i} has {key} {v!r}, not a finite number")
        if not 0 <= record["test_accuracy"] <= 1:
            raise _bad(path, f"its history entry {i} has test accuracy {record['test_accuracy']!r}, outside [0, 1]")
    if "epoch" in payload:
        epoch = payload["epoch"]
        if not _is_int(epoch):
            raise _bad(path, f"its epoch {epoch!r} is not a whole number")
        if epoch != len(history):
            raise _bad(path, f"its epoch {epoch} does not match its {len(history)} history entries")


def validate_payload(path: Path | str, payload: Any) -> dict[str, Any]:
    """Check a loaded checkpoint's structure, config and tensors (not yet against the rebuilt model)."""
    path = Path(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a revsnn checkpoint (no '{FORMAT}' format tag); pass the "
                              "model.pt written by `revsnn train`.")
    for key in ("config", "state_dict"):
        if key not in payload:
            raise CheckpointError(f"{path} lacks its '{key}' entry; re-create it with `revsnn train`.")
    _check_config(path, payload["config"])
    if "train" in payload:
        _check_train(path, payload["train"])
    for key in ("state_dict", "raw_state_dict"):
        if key in payload:
            _check_state_dict(path, payload[key], key)
    if "data" in payload and not isinstance(payload["data"], dict):
        raise _bad(path, "its data record is not a dict")
    _check_history(path, payload)
    return payload


def load_checkpoint(path: Path | str, resume: bool = False) -> dict[str, Any]:
    """Load and validate a checkpoint on the CPU; raise CheckpointError with one clear sentence.

    ``resume``: also check what ``train --resume`` needs (training, RNG and optimizer state, the epoch), against
    a model rebuilt from the config (see :func:`check_resume_state`)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass the model.pt written by `revsnn train`.")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file; pass the model.pt written by `revsnn train`.")
    try:
        with warnings.catch_warnings():
            # torch warns (UserWarning) about what weights_only refuses; the sentence below says it instead.
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt, truncated, foreign or malicious files
        raise CheckpointError(f"{path} is not a readable revsnn checkpoint ({type(exc).__name__}); "
                              "pass the model.pt written by `revsnn train`.") from exc
    validate_payload(path, payload)
    if resume:
        check_resume_state(path, payload)
    return payload


def _fit_state_dict(path: Path, model: nn.Module, state: dict, key: str = "state_dict") -> None:
    """Compare keys and shapes ourselves, so the user reads one sentence instead of torch's 2.6 KB message."""
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    name = model.config.get("name") if hasattr(model, "config") else type(model).__name__

    def few(keys):
        return ", ".join(repr(k) for k in keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    if missing or extra:
        parts = ([f"lacks {few(missing)}"] if missing else []) + ([f"has unknown {few(extra)}"] if extra else [])
        raise _bad(path, f"its '{key}' does not belong to a {name} model (it {' and '.join(parts)})",
                   "pass a checkpoint written for this model by `revsnn train`")
    for k, t in want.items():
        if tuple(state[k].shape) != tuple(t.shape):
            raise _bad(path, f"'{k}' has shape {list(state[k].shape)} but the {name} model of its config needs "
                             f"{list(t.shape)}", "pass a checkpoint written for this model by `revsnn train`")
        if state[k].dtype.is_floating_point != t.dtype.is_floating_point:
            raise _bad(path, f"'{k}' holds {state[k].dtype} values where the model needs {t.dtype}")
    try:
        model.load_state_dict(state)
    except Exception as exc:
        raise _bad(path, f"its weights do not load into its model ({type(exc).__name__})") from exc


def _build(path: Path, payload: dict) -> nn.Module:
    from .models import ModelBuilderError, UnknownModelError, build_model

    try:
        # A model of the user's own (config "builder": MODULE:FUNCTION) is rebuilt by importing MODULE.
        return build_model(payload["config"])
    except ModelBuilderError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    except (UnknownModelError, KeyError, TypeError, RuntimeError, ValueError, AttributeError, IndexError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: its model config does not build a model ({first[:200]}); re-create it "
                              "with `revsnn train`.") from exc


def check_resume_state(path: Path | str, payload: dict) -> None:
    """What ``train --resume`` loads, checked before it is used: the epoch and history, the training settings,
    the weights against the model, the optimizer state against an optimizer of those settings, the RNG states."""
    path = Path(path)
    fix = "resume from a checkpoint `revsnn train` wrote, or start again with --overwrite"
    for key in ("train", "optimizer", "rng", "epoch", "history"):
        if key not in payload:
            raise _bad(path, f"it lacks the '{key}' entry that --resume needs", fix)
    train = payload["train"]
    for key in ("epochs", "time_steps", "batch_size", "lr", "seed", "encoding", "optimizer"):
        if key not in train:
            raise _bad(path, f"its training settings lack '{key}'", fix)
    if not (_is_int(payload["epoch"]) and payload["epoch"] >= 1):
        raise _bad(path, f"its epoch {payload['epoch']!r} is not a positive whole number", fix)
    rng = payload["rng"]
    reference = torch.Generator().get_state()
    if not isinstance(rng, dict) or not all(isinstance(rng.get(k), torch.Tensor) and rng[k].dtype == torch.uint8
                                            and rng[k].shape == reference.shape for k in ("generator", "torch")):
        raise _bad(path, "its random-number state is damaged", fix)
    model = _build(path, payload)
    _fit_state_dict(path, model, payload.get("raw_state_dict", payload["state_dict"]),
                    "raw_state_dict" if "raw_state_dict" in payload else "state_dict")
    optimizer_state = payload["optimizer"]
    if not (isinstance(optimizer_state, dict) and isinstance(optimizer_state.get("state"), dict)
            and isinstance(optimizer_state.get("param_groups"), list)):
        raise _bad(path, "its optimizer state is damaged", fix)
    for entry in optimizer_state["state"].values():
        for v in (entry.values() if isinstance(entry, dict) else [entry]):
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all():
                raise _bad(path, "its optimizer state holds NaN or infinite values", fix)
    from .train import _optimizer  # the optimizer the run would build, to load the state into

    try:
        settings = {"optimizer": train["optimizer"], "lr": float(train["lr"]),
                    "momentum": float(train.get("momentum", 0.9)), "weight_decay": float(train.get("weight_decay", 0))}
        _optimizer(model, settings).load_state_dict(optimizer_state)
    except Exception as exc:  # torch raises ValueError/KeyError/TypeError/RuntimeError for a mismatched state
        raise _bad(path, f"its optimizer state does not fit its model ({type(exc).__name__})", fix) from exc
    if "ema" in payload:
        _check_state_dict(path, payload["ema"], "ema")


def load_model(path: Path | str) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a checkpoint, in eval mode on the CPU, and the checkpoint itself."""
    path = Path(path)
    payload = load_checkpoint(path)
    model = _build(path, payload)
    _fit_state_dict(path, model, payload["state_dict"])
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
    selection = payload.get("selection")
    if isinstance(selection, dict) and "epoch" in selection:   # issue 15: the weights are the kept epoch's
        summary["selected_epoch"] = selection["epoch"]
        summary["test_accuracy"] = selection.get("test_accuracy")
    summary["revsnn_version"] = payload.get("revsnn_version")
    return summary
