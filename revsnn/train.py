"""Training: ``revsnn train``, on the embedded digits or a real data set (``revsnn.data``), with presets.

After every epoch the trainer writes ``DIR/model.pt`` (weights, config, optimizer, scheduler and RNG
states) and ``DIR/metrics.json``, both atomically; ``resume=True`` continues from the last finished epoch,
so a kill loses at most the epoch in progress, and a resumed run ends with the same weights as an
uninterrupted one. The same seed gives the same weights.

The loop is plain PyTorch; under torchrun (or ``--nproc``) every process runs it and ``revsnn.distributed``
supplies the process group, DDP, the global-batch shards and rank 0's writing. Parameter gradients of the
reversible blocks arrive through autograd, so DDP needs no change to the models.
"""

from __future__ import annotations

from revsnn.errors import RevsnnError

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint, write_json
from .limits import check_train_start
from .data import ENCODINGS, ImageData, encode, load_digits
from .models import USER_FAMILY, build_model, builder_config, get_config
from . import distributed as dist_
from .precision import PrecisionError, autocast, grad_scaler, resolve_precision

__all__ = ["TrainOptions", "TrainError", "Reporter", "train", "evaluate", "resolve_options", "hold_out", "validate"]


class TrainError(RevsnnError):
    """Bad training options; the message is one sentence that names the problem and the fix."""


@dataclass
class TrainOptions:
    model: str
    out: Path
    epochs: Optional[int] = None          # None: the preset's, else the model config's default
    time_steps: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    seed: Optional[int] = None   # None: 0 for a new run; a resumed run keeps its own (an explicit one must match)
    encoding: Optional[str] = None
    device: str = "cpu"
    resume: bool = False
    # the data (revsnn.data.DATASETS) and how it becomes input
    data: str = "digits"
    data_dir: Optional[Path] = None
    frames_by: Optional[str] = None       # event frames: "count" or "time"
    frame_size: Optional[int] = None      # event frames: bin the sensor down to this side
    image_size: Optional[int] = None      # image folders: resize + centre crop to this side
    augment: Optional[bool] = None        # None: the preset's; CIFAR crop+flip, events flip (+ shift)
    event_shift: int = 0                  # event augmentation: random shift of up to this many pixels
    workers: int = 0                      # DataLoader worker processes
    # the protocol (revsnn.presets); None: the preset's, else the built-in default
    preset: Optional[str] = None
    optimizer: Optional[str] = None       # sgd, adamw, lamb (= AdamW here)
    momentum: Optional[float] = None
    weight_decay: Optional[float] = None
    schedule: Optional[str] = None        # cosine or step
    milestones: Optional[list[int]] = None
    warmup_epochs: Optional[int] = None
    label_smoothing: Optional[float] = None
    mixup: Optional[float] = None
    ema: Optional[float] = None
    grad_clip: Optional[float] = None
    amp: Optional[bool] = None
    # several processes (revsnn.distributed) and precision (revsnn.precision)
    precision: Optional[str] = None       # fp32, bf16, fp16 (autocast) or fp64; None: fp16 if amp on CUDA
    sync_bn: bool = False                 # BatchNorm over the global batch when several processes train
    overwrite: bool = False               # replace an existing run at ``out`` (else refused)
    # issue 15, epoch selection: hold out this fraction of the training split (seeded, the same digits whatever
    # --seed) and write the epoch that does best on it, never the test split's best; 0 (None): the last epoch;
    # --resume keeps the run's
    val_fraction: Optional[float] = None


# What a run uses where neither the command line, the preset nor the model says otherwise (the trainer's
# behaviour before presets existed: AdamW, weight decay 1e-4, cosine per epoch).
_BUILTIN = {"optimizer": "adamw", "momentum": 0.9, "weight_decay": 1e-4, "schedule": "cosine", "milestones": None,
            "gamma": 0.1, "warmup_epochs": 0, "label_smoothing": 0.0, "mixup": 0.0, "ema": None, "grad_clip": None,
            "amp": False, "augment": False, "lr_per_1024": None, "image_size": None}
_PROTOCOL_KEYS = ("optimizer", "momentum", "weight_decay", "schedule", "milestones", "warmup_epochs",
                  "label_smoothing", "mixup", "ema", "grad_clip", "amp", "augment", "image_size")
OPTIMIZERS = ("sgd", "adamw", "lamb")
SCHEDULES = ("cosine", "step")


class Reporter(Protocol):
    """What the trainer tells its caller; the CLI draws progress bars from it."""

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None: ...

    def batch(self, loss: float, accuracy: float) -> None: ...

    def end_epoch(self, record: dict[str, Any]) -> None: ...


class _Silent:
    def start_epoch(self, epoch, epochs, batches):
        pass

    def batch(self, loss, accuracy):
        pass

    def end_epoch(self, record):
        pass


def resolve_options(opts: TrainOptions) -> dict[str, Any]:
    """Fill unset options from the preset, then the model's defaults, and check them all (TrainError).

    ``notes`` in the result lists, for the caller to print, what the preset set and what stood in for
    something this machine lacks (LAMB, mixed precision without a GPU).
    """
    from .data import DATASETS
    from .presets import PresetError, SETTING_LABELS, preset_settings

    try:
        config = get_config(opts.model)
    except ValueError as exc:
        raise TrainError(str(exc)) from exc
    if opts.data not in DATASETS:
        raise TrainError(f"--data must be one of {', '.join(DATASETS)}, got {opts.data!r}.")
    try:
        preset = preset_settings(opts.preset, opts.data)
    except PresetError as exc:
        raise TrainError(str(exc)) from exc
    defaults = config.get("train", {})
    events = DATASETS[opts.data].kind == "events"

    def pick(key: str, given: Any, fallback: Any) -> Any:
        if given is not None:
            return given
        if key in preset:
            return preset[key]
        return fallback

    settings = {
        "epochs": pick("epochs", opts.epochs, defaults.get("epochs", 10)),
        "time_steps": pick("time_steps", opts.time_steps, defaults.get("time_steps", 4)),
        "batch_size": pick("batch_size", opts.batch_size, defaults.get("batch_size", 64)),
        "encoding": pick("encoding", opts.encoding, "events" if events else defaults.get("encoding", "direct")),
        "seed": 0 if opts.seed is None else opts.seed,
        "val_fraction": float(getattr(opts, "val_fraction", 0.0) or 0.0),
    }
    for key in _PROTOCOL_KEYS:
        settings[key] = pick(key, getattr(opts, key, None), _BUILTIN[key])
    settings["gamma"] = preset.get("gamma", _BUILTIN["gamma"])
    try:
        settings["precision"] = resolve_precision(opts.precision, bool(settings["amp"]), opts.device.startswith("cuda"))[0]
    except PrecisionError as exc:
        raise TrainError(str(exc)) from exc
    lr_per_1024 = preset.get("lr_per_1024")
    if opts.lr is not None:
        settings["lr"] = opts.lr
    elif lr_per_1024 is not None:  # T-RevSNN scales its base rate with the total batch
        settings["lr"] = lr_per_1024 * settings["batch_size"] / 1024
    else:
        settings["lr"] = preset.get("lr", defaults.get("lr", 1e-3))
    if events and settings["encoding"] in ("direct", "rate"):
        settings["encoding"] = "events" if opts.encoding is None else settings["encoding"]
    if not events and settings["encoding"] == "events" and opts.encoding is None:
        settings["encoding"] = "rate"  # a spiking preset on images: spikes are rate-coded

    notes: list[str] = []
    if opts.preset is not None:
        shown = dict(preset)
        if lr_per_1024 is not None:
            shown["lr"] = f"{lr_per_1024} x batch / 1024 = {lr_per_1024 * settings['batch_size'] / 1024:g}"
        parts = []
        for key, value in shown.items():
            final = settings.get(key, value) if key != "lr_per_1024" else value
            label = SETTING_LABELS.get(key, key)
            text = f"{label} {value}"
            if key in settings and key != "lr" and final != value:
                text += f" (overridden: {final})"
            if key == "lr" and opts.lr is not None:
                text += f" (overridden: {opts.lr})"
            parts.append(text)
        notes.append(f"preset {opts.preset}: " + ", ".join(p for p in parts if not p.startswith("learning rate per")))
    if settings["optimizer"] == "lamb":
        notes.append("LAMB is not part of torch; training with AdamW at the same learning rate and weight decay.")
    if settings["amp"] and not opts.device.startswith("cuda") and opts.precision is None:
        notes.append("mixed precision needs a GPU; training in float32 on the CPU.")

    from .data import ENCODINGS, EVENT_ENCODINGS

    if settings["epochs"] < 1:
        raise TrainError(f"--epochs must be at least 1, got {settings['epochs']}.")
    if settings["time_steps"] < 1:
        raise TrainError(f"--time-steps must be at least 1, got {settings['time_steps']}.")
    if settings["batch_size"] < 1:
        raise TrainError(f"--batch-size must be at least 1, got {settings['batch_size']}.")
    if not (settings["lr"] > 0 and math.isfinite(settings["lr"])):
        raise TrainError(f"--lr must be a positive number, got {settings['lr']}.")
    allowed = EVENT_ENCODINGS if events else ENCODINGS
    if settings["encoding"] not in allowed:
        raise TrainError(f"--encoding must be one of {', '.join(allowed)} for {opts.data}, got {settings['encoding']!r}.")
    if settings["optimizer"] not in OPTIMIZERS:
        raise TrainError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {settings['optimizer']!r}.")
    if settings["schedule"] not in SCHEDULES:
        raise TrainError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {settings['schedule']!r}.")
    if settings["schedule"] == "step" and not settings["milestones"]:
        settings["milestones"] = [settings["epochs"] // 2, settings["epochs"] * 3 // 4]
    for key, low, high in (("weight_decay", 0, None), ("momentum", 0, 1), ("label_smoothing", 0, 1), ("mixup", 0, None),
                           ("warmup_epochs", 0, None)):
        v = settings[key]
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= low and (high is None or v < high)):
            raise TrainError(f"--{key.replace('_', '-')} must be a number of at least {low}"
                             + (f" and below {high}" if high is not None else "") + f", got {v}.")
    if not (math.isfinite(settings["val_fraction"]) and 0 <= settings["val_fraction"] < 1):
        raise TrainError(f"--val-fraction must be at least 0 and below 1, got {settings['val_fraction']}.")
    if settings["ema"] is not None and not 0 < settings["ema"] < 1:
        raise TrainError(f"--ema must be a decay between 0 and 1, got {settings['ema']}.")
    if settings["grad_clip"] is not None and not settings["grad_clip"] > 0:
        raise TrainError(f"--grad-clip must be a positive norm, got {settings['grad_clip']}.")
    if opts.workers < 0:
        raise TrainError(f"--workers must be 0 or more, got {opts.workers}.")
    if opts.event_shift < 0:
        raise TrainError(f"--event-shift must be 0 or more pixels, got {opts.event_shift}.")
    fixed_t = config.get("time_steps")  # families whose architecture fixes T (one column per step)
    if fixed_t is not None and settings["time_steps"] != fixed_t:
        raise TrainError(f"{opts.model} has {fixed_t} columns, one per time step; use --time-steps {fixed_t}.")
    if opts.device not in ("cpu", "cuda") and not opts.device.startswith("cuda:"):
        raise TrainError(f"--device must be cpu or cuda, got {opts.device!r}.")
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError("--device cuda was asked for, but this machine has no CUDA device; use --device cpu.")
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {out} is a file; give a directory for model.pt and metrics.json.")
    if not out.exists() and not out.parent.is_dir():
        raise TrainError(f"--out {out}: its parent directory {out.parent} does not exist; create it first.")
    return {"config": config, "notes": notes, **settings}


def adapt_config(config: dict[str, Any], input_shape, num_classes: int) -> dict[str, Any]:
    """The zoo config with the data's input shape and class count; TrainError if the model cannot take them."""
    if list(config["input_shape"]) == list(input_shape) and config["num_classes"] == num_classes:
        return config
    adapted = {**config, "input_shape": list(input_shape), "num_classes": int(num_classes)}
    try:
        model = build_model(adapted)
        with torch.no_grad():  # one tiny forward proves the layers fit the new shape
            model.eval()(torch.zeros(config.get("time_steps") or 1, 1, *input_shape))
    except (ValueError, RuntimeError) as exc:
        raise TrainError(f"{config['name']} cannot take inputs {'x'.join(map(str, input_shape))} ({exc}); choose "
                         "another model or resize the data (--frame-size, --image-size).") from exc
    return adapted


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    return list(order.split(batch_size))


@torch.no_grad()
def _test_logits(model: nn.Module, splits, time_steps: int, encoding: str, device: torch.device, batch_size: int,
                 seed: int, workers: int, dtype: Optional[torch.dtype]):
    """``(logits on the CPU, labels)`` over ``splits.test`` in order, batch by batch; rate coding draws from
    a generator seeded with ``seed``, so the same call sees the same spikes (``evaluate``, ``validate``)."""
    from .data import make_loader, to_input

    generator = torch.Generator().manual_seed(seed)
    n = len(splits.test)
    loader = make_loader(splits.test, list(torch.arange(n).split(batch_size)), workers,
                         pin_memory=device.type == "cuda")
    for x, y in loader:
        xin = to_input(x, splits, time_steps, encoding, generator).to(device, dtype, non_blocking=True)
        yield model(xin).cpu(), y


def evaluate(model: nn.Module, data_x, data_y: Optional[torch.Tensor] = None, time_steps: int = 4,
             encoding: str = "direct", device: torch.device = torch.device("cpu"), batch_size: int = 256,
             seed: int = 1234, workers: int = 0, dtype: Optional[torch.dtype] = None) -> float:
    """Test accuracy; rate coding draws from a fixed generator so that the figure is reproducible.

    ``data_x`` is either images ``[N, C, H, W]`` (with ``data_y``) or a ``DataSplits``, whose test split is read.
    """
    from .data import DataSplits

    model.eval()
    if isinstance(data_x, DataSplits):
        correct = sum((logits.argmax(1) == y).sum().item() for logits, y in
                      _test_logits(model, data_x, time_steps, encoding, device, batch_size, seed, workers, dtype))
        return correct / max(1, len(data_x.test))
    generator = torch.Generator().manual_seed(seed)
    correct = 0
    for i in range(0, len(data_y), batch_size):
        x = encode(data_x[i:i + batch_size], time_steps, encoding, generator).to(device, dtype)
        correct += (model(x).argmax(1).cpu() == data_y[i:i + batch_size]).sum().item()
    return correct / len(data_y)


# The held-out digits do not depend on --seed: runs of several seeds (or a resumed run) select on one set.
VALIDATION_SEED = 15


def hold_out(splits, fraction: float):
    """``(splits without the held-out samples, splits whose test split is them)``: a seeded random
    ``fraction`` of the training split (at least one sample, and one left to train on), for choosing the epoch
    to keep; ``(splits, None)`` for ``fraction`` 0. The test split is untouched (and never read for selection)."""
    import dataclasses

    if not fraction:
        return splits, None
    n = len(splits.train)
    k = int(round(n * fraction))
    if not 1 <= k < n:
        raise TrainError(f"--val-fraction {fraction} of {n} training samples holds out {k}; give a fraction that "
                         "leaves at least one sample on each side.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    held, kept = order[:k].sort().values.tolist(), order[k:].sort().values.tolist()
    subset = torch.utils.data.Subset
    return (dataclasses.replace(splits, train=subset(splits.train, kept)),
            dataclasses.replace(splits, test=subset(splits.train, held)))


@torch.no_grad()
def validate(model: nn.Module, validation, time_steps: int, encoding: str, device: torch.device = torch.device("cpu"),
             workers: int = 0, dtype: Optional[torch.dtype] = None, seed: int = 1234) -> dict[str, float]:
    """Accuracy and mean cross-entropy on ``validation.test`` (``hold_out``'s held-out split), rate coding
    drawn from a fixed generator as ``evaluate`` does, so that every epoch is judged on the same spikes."""
    model.eval()
    n = len(validation.test)
    correct, loss = 0, 0.0
    for logits, y in _test_logits(model, validation, time_steps, encoding, device, 256, seed, workers, dtype):
        logits = logits.double()
        correct += int((logits.argmax(1) == y).sum())
        loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
    return {"val_accuracy": correct / n, "val_loss": loss / n}


def _lr_factor(s: dict[str, Any], epoch: int, step: int, steps: int) -> float:
    """The schedule in closed form (resuming needs only the epoch): linear warm-up per step, then cosine per
    epoch over the remaining epochs, or step decay by ``gamma`` at each milestone."""
    warm = int(s["warmup_epochs"])
    if warm > 0 and epoch < warm:
        return (epoch * steps + step + 1) / (warm * steps)
    if s["schedule"] == "step":
        return s["gamma"] ** sum(epoch >= m for m in s["milestones"])
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warm) / max(1, s["epochs"] - warm)))


def _optimizer(model: nn.Module, s: dict[str, Any]) -> torch.optim.Optimizer:
    if s["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"])
    # "lamb": torch has no LAMB; AdamW is the documented stand-in (resolve_options says so).
    return torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=s["weight_decay"])


def _load_data(opts: TrainOptions, s: dict[str, Any], data) -> Any:
    from .data import DataError, DataSplits, ImageData, as_splits, load_dataset

    if data is not None:
        return as_splits(data) if isinstance(data, ImageData) else data
    if opts.data == "digits":
        return as_splits(load_digits())
    image_size = opts.image_size or s.get("image_size") or s["config"]["input_shape"][-1]
    frame_size = opts.frame_size
    if frame_size is None and s["config"]["input_shape"][0] == 2:  # a DVS-shaped model: frames at its size
        frame_size = s["config"]["input_shape"][-1]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # returned in .warnings; the caller prints them
            return load_dataset(opts.data, opts.data_dir, time_steps=s["time_steps"], frames_by=opts.frames_by,
                                frame_size=frame_size, image_size=image_size)
    except DataError as exc:
        raise TrainError(str(exc)) from exc


def train(opts: TrainOptions, reporter: Optional[Reporter] = None, data=None, loihi=None, objective=None) -> dict:
    """Train ``opts.model`` and return the metrics written to ``DIR/metrics.json``.

    ``data``: an ``ImageData`` or ``DataSplits`` to use instead of reading ``opts.data``. Under torchrun (or
    ``revsnn.distributed.launch``) every process calls this; they train one model with DDP. ``loihi``: a
    function that wraps the built model in the Loihi-aware forward (``revsnn/finetune.py``, which passes it).
    ``objective``: ``(logits, labels, input) -> loss`` instead of the cross-entropy (fine-tuning's distillation).
    """
    s = resolve_options(opts)  # bad options fail before any process group is joined
    dctx, device = dist_.setup(opts.device)
    try:
        if dctx.world > s["batch_size"]:
            raise TrainError(f"{dctx.world} processes cannot share a batch of {s['batch_size']}; give --batch-size "
                             f"{dctx.world} or more.")
        return _train(opts, reporter if dctx.main else _Silent(), data, dctx, device, loihi, objective)
    finally:
        dist_.teardown(dctx)


def _train(opts: TrainOptions, reporter: Optional[Reporter], data, dctx: "dist_.DistContext",
           device: torch.device, loihi=None, objective=None) -> dict:
    from .data import DataError, make_loader, to_input

    reporter = reporter or _Silent()
    note = getattr(reporter, "note", None) or (lambda text: None)
    s = resolve_options(opts)
    check_train_start(opts, s)  # seed, memory, overwrite, --resume's checkpoint and conflicts, writable --out
    out = Path(opts.out)
    ckpt_path, metrics_path = out / "model.pt", out / "metrics.json"
    splits = _load_data(opts, s, data)
    warn = getattr(reporter, "warn", None) or note
    for line in s["notes"]:
        note(line)
    for line in splits.warnings:  # md5 mismatches: the data is read all the same
        warn(line)
    if s["config"].get("family") == USER_FAMILY:
        # A model of the user's own is built for the data it trains on; built once here, so that a builder
        # that fails does so in one sentence before anything is written.
        config = s["config"] = builder_config(s["config"]["builder"], splits.input_shape, splits.num_classes)
        build_model(config)
    else:
        config = adapt_config(s["config"], splits.input_shape, splits.num_classes)
        if config is not s["config"]:
            note(f"{opts.model}: input set to {'x'.join(map(str, splits.input_shape))} and {splits.num_classes} "
                 f"classes for {splits.name}.")
    if splits.kind == "events" and splits.options.get("time_steps") not in (None, s["time_steps"]):
        raise TrainError(f"the event frames were made for T = {splits.options['time_steps']}, training uses "
                         f"T = {s['time_steps']}; give both the same --time-steps.")

    resume_state = None
    if opts.resume:
        if not ckpt_path.is_file():
            raise TrainError(f"--resume: there is no {ckpt_path} to resume from; run without --resume first.")
        try:
            resume_state = load_checkpoint(ckpt_path, resume=True)
        except CheckpointError as exc:
            raise TrainError(f"--resume: {exc}") from exc
        if resume_state["config"].get("name") != opts.model:
            raise TrainError(f"--resume: {ckpt_path} holds a {resume_state['config'].get('name')!r} model, not "
                             f"{opts.model!r}; pass --model {resume_state['config'].get('name')} or a new --out.")
        was = (resume_state.get("data") or {}).get("name", "digits")
        if was != splits.name:
            raise TrainError(f"--resume: {ckpt_path} was trained on {was}, not {splits.name}; pass --data {was} or "
                             "a new --out.")
        kept = {k: v for k, v in resume_state["train"].items() if k in s and k not in ("epochs", "notes", "config")}
        s = {**s, **kept, "epochs": s["epochs"] if opts.epochs is not None else resume_state["train"]["epochs"]}
    splits, validation = hold_out(splits, s["val_fraction"])   # issue 15: the epoch kept is chosen on these

    torch.manual_seed(s["seed"])
    model = build_model(config).to(device)
    if s.get("precision") == "fp64":
        model = model.double()
    if opts.sync_bn and dctx.enabled:
        model = dist_.convert_sync_bn(model, device)
    if loihi is not None and dctx.enabled:
        raise TrainError("Loihi-aware training runs in one process; drop --nproc (or torchrun).")
    runner = model if loihi is None else loihi(model)   # the forward that training runs (issue 15)
    optimizer = _optimizer(model, s)
    generator = torch.Generator().manual_seed(s["seed"])
    ema = None
    if s["ema"] is not None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(s["ema"]), use_buffers=True)
    # Reversible models train in mixed precision too: their recompute re-enters the forward's autocast and
    # their streams stay in float32 (revsnn.precision; errors measured by `revsnn bench precision`).
    precision = s.get("precision", "fp32")
    scaler = grad_scaler(device, precision)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume_state is not None:
        model.load_state_dict(resume_state.get("raw_state_dict", resume_state["state_dict"]))
        optimizer.load_state_dict(resume_state["optimizer"])
        generator.set_state(resume_state["rng"]["generator"])
        torch.set_rng_state(resume_state["rng"]["torch"])
        if ema is not None and "ema" in resume_state:
            ema.load_state_dict(resume_state["ema"])
        if scaler is not None and "scaler" in resume_state:
            scaler.load_state_dict(resume_state["scaler"])
        history = list(resume_state.get("history", []))
        start_epoch = int(resume_state["epoch"])
    # Epoch selection (issue 15): the best candidate on the held-out split so far, and its model to write.
    selection, chosen = None, None
    if validation is not None and resume_state is not None and resume_state.get("selection"):
        selection = dict(resume_state["selection"])
        chosen = build_model(config).to(device)
        if s.get("precision") == "fp64":
            chosen = chosen.double()
        chosen.load_state_dict(resume_state["state_dict"])

    train_settings = {k: v for k, v in s.items() if k not in ("config", "notes")}
    if splits.kind == "events":
        augment = {"flip": True, "shift": opts.event_shift} if s["augment"] or opts.event_shift else None
    elif s["augment"]:
        augment = {"crop_padding": 4, "flip": True} if splits.name in ("cifar10", "cifar100") else {"flip": True}
    else:
        augment = None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=float(s["label_smoothing"]))
    pin = device.type == "cuda"
    net = dist_.wrap_model(model, dctx, device) if loihi is None else runner  # DDP with several processes
    eval_dtype = torch.float64 if precision == "fp64" else None

    def consider(epoch: int, candidate: nn.Module, record: dict) -> None:
        """Validation figures into ``record``; ``candidate`` becomes the model written if it is the best so far
        (higher validation accuracy, then lower validation loss; an earlier epoch wins a full tie). Reads the
        held-out part of the training split only, never the test split."""
        nonlocal selection, chosen
        if validation is None:
            return
        v = validate(candidate, validation, s["time_steps"], s["encoding"], device, opts.workers, eval_dtype)
        record.update(v)
        if selection is None or (v["val_accuracy"], -v["val_loss"]) > (selection["val_accuracy"], -selection["val_loss"]):
            import copy

            chosen = copy.deepcopy(candidate)
            kept = {k: selection[k] for k in ("start",) if selection is not None and k in selection}
            selection = {"epoch": epoch, **v, "test_accuracy": record.get("test_accuracy"),
                         "by": "validation accuracy, then validation loss", "validation_samples": len(validation.test),
                         "validation_fraction": s["val_fraction"], "validation_seed": VALIDATION_SEED, **kept}

    if validation is not None and loihi is not None and resume_state is None and dctx.main:
        # Fine-tuning's epoch 0: the start projected onto its grid, i.e. the float checkpoint's own quantised
        # network, is a candidate too (fine-tuning that loses on held-out data is then not written).
        start, grid = runner.deployable()
        start.config = config
        start_record = {"epoch": 0, "test_accuracy": evaluate(start, splits, time_steps=s["time_steps"],
                                                              encoding=s["encoding"], device=device,
                                                              workers=opts.workers, dtype=eval_dtype),
                        "grid_exact": grid["exact"]}
        consider(0, start, start_record)
        selection["start"] = start_record
    for epoch in range(start_epoch, s["epochs"]):
        runner.train()
        batches = _batches(len(splits.train), s["batch_size"], generator)
        batches, sizes = dist_.shard_batches(batches, dctx)  # this rank's slice of every global batch
        draw = dist_.rank_generator(s["seed"], epoch, dctx) if dctx.enabled else generator
        if dctx.enabled:
            dist_.seed_rank(s["seed"], epoch, dctx)
        # The loader's own generator only seeds its workers; the order is the one drawn above.
        loader = make_loader(splits.train, batches, opts.workers, pin, seed=s["seed"] * 1000 + epoch)
        reporter.start_epoch(epoch + 1, s["epochs"], len(batches))
        t0 = time.perf_counter()
        total_loss, total_correct, seen = 0.0, 0, 0
        try:
            for step, (xb, yb) in enumerate(loader):
                dist_.kill_hook(dctx, epoch + 1, step)
                for group in optimizer.param_groups:
                    group["lr"] = s["lr"] * _lr_factor(s, epoch, step, len(batches))
                x = to_input(xb, splits, s["time_steps"], s["encoding"], draw, augment).to(device, non_blocking=pin)
                if precision == "fp64":
                    x = x.double()
                y = yb.to(device, non_blocking=pin)
                mix = None
                if s["mixup"] > 0:  # mixup: a Beta(a, a) blend of the batch with a permutation of itself
                    lam = float(np.random.default_rng(int(torch.randint(2**31, (1,), generator=draw))).beta(
                        s["mixup"], s["mixup"]))
                    perm = torch.randperm(len(y), generator=draw).to(device)
                    x = lam * x + (1 - lam) * x[:, perm]
                    mix = (lam, y[perm])
                with autocast(device, precision):
                    logits = net(x)
                    if objective is not None:   # fine-tuning's distillation (revsnn/finetune.py), which has no mixup
                        loss = objective(logits, y, x)
                    else:
                        loss = loss_fn(logits, y) if mix is None else \
                            mix[0] * loss_fn(logits, y) + (1 - mix[0]) * loss_fn(logits, mix[1])
                if not torch.isfinite(loss):
                    raise TrainError(f"the loss became {loss.item()} in epoch {epoch + 1}; lower --lr.")
                optimizer.zero_grad(set_to_none=True)
                # DDP averages the ranks' gradients; weighting each rank's mean by its share makes that the
                # global batch's mean (the weight is 1 when the batch splits evenly).
                back = loss * dist_.local_weight(len(y), sizes[step], dctx) if dctx.enabled else loss
                if scaler is not None:
                    scaler.scale(back).backward()
                    scaler.unscale_(optimizer)
                else:
                    back.backward()
                if s["grad_clip"] is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), s["grad_clip"])
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                if ema is not None:
                    ema.update_parameters(model)
                correct = (logits.argmax(1) == y).sum().item()
                total_loss += loss.item() * len(y)
                total_correct += correct
                seen += len(y)
                reporter.batch(loss.item(), correct / len(y))
        except DataError as exc:  # a damaged file found while reading a batch
            raise TrainError(str(exc)) from exc
        if dctx.enabled:  # the epoch's figures over the global batches
            total_loss, total_correct, seen = dist_.all_sum([total_loss, float(total_correct), float(seen)], dctx)
            total_correct, seen = int(total_correct), int(seen)
        deployed = ema.module if ema is not None else model
        quantized = runner.evaluate(splits, s) if loihi is not None else {}   # the quantised test accuracy
        if loihi is not None:   # issue 15: what is evaluated and written is the latent weights' grid projection
            deployed, quantized["grid"] = runner.deployable()
        try:
            test_acc = None
            if dctx.main:  # every rank holds the same weights: rank 0 evaluates for all
                test_acc = evaluate(deployed, splits, time_steps=s["time_steps"], encoding=s["encoding"], device=device,
                                    workers=opts.workers, dtype=torch.float64 if precision == "fp64" else None)
            test_acc = dist_.broadcast_object(test_acc, dctx)
        except DataError as exc:
            raise TrainError(str(exc)) from exc
        record = {"epoch": epoch + 1, "loss": total_loss / seen, "train_accuracy": total_correct / seen,
                  "test_accuracy": test_acc, **quantized, "seconds": time.perf_counter() - t0}
        deployed.config = config
        if dctx.main:
            consider(epoch + 1, deployed, record)
        history.append(record)
        extra = {"raw_state_dict": model.state_dict(), "ema": ema.state_dict()} if ema is not None else {}
        if scaler is not None:
            extra["scaler"] = scaler.state_dict()
        if loihi is not None or selection is not None:   # resume continues from the latent weights the
            extra["raw_state_dict"] = model.state_dict()      # optimizer holds (not the snapped or selected ones)
        if selection is not None:
            chosen.config = config
            extra["selection"] = selection
        if dctx.main:  # one writer; atomic, so a rank killed meanwhile leaves the previous epoch's files
            save_checkpoint(ckpt_path, deployed if chosen is None else chosen, optimizer=optimizer.state_dict(),
                            epoch=epoch + 1, train=train_settings,
                            rng={"generator": generator.get_state(), "torch": torch.get_rng_state()},
                            history=history, data=splits.record(), **extra)
            metrics = _metrics(opts.model, train_settings, history, epoch + 1, splits.record(), selection)
            write_json(metrics_path, metrics)
        dist_.barrier(dctx)
        reporter.end_epoch(record)
    return _metrics(opts.model, train_settings, history, len(history), splits.record(), selection)


def _metrics(model: str, settings: dict[str, Any], history: list[dict[str, Any]], epochs_done: int,
             data: Optional[dict] = None, selection: Optional[dict] = None) -> dict:
    extra = {}
    if selection is not None:   # model.pt holds the selected epoch: its test accuracy is the run's figure
        extra = {"test_accuracy": selection["test_accuracy"], "selected_epoch": selection["epoch"],
                 "selection": selection}
    return {
        "model": model,
        "data": (data or {}).get("name", "digits"),
        "epochs": epochs_done,
        "time_steps": settings["time_steps"],
        "encoding": settings["encoding"],
        "batch_size": settings["batch_size"],
        "lr": settings["lr"],
        "seed": settings["seed"],
        "test_accuracy": history[-1]["test_accuracy"],
        "train_seconds": sum(h["seconds"] for h in history),
        "history": history,
        "settings": settings,
        "data_record": data,
        **extra,
    }
