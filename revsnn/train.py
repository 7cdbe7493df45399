"""Training on the embedded digits data: ``revsnn train``.

After every epoch the trainer writes ``DIR/model.pt`` (weights, config, optimizer, scheduler and RNG
states) and ``DIR/metrics.json``, both atomically; ``resume=True`` continues from the last finished epoch,
so a kill loses at most the epoch in progress, and a resumed run ends with the same weights as an
uninterrupted one. The same seed gives the same weights.

The loop is plain single-process PyTorch; parameter gradients of the reversible blocks arrive through
autograd, so wrapping the model in DistributedDataParallel needs no change to the model.
"""

from __future__ import annotations

from revsnn.errors import RevsnnError

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

import torch
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint, write_json
from .data import ENCODINGS, ImageData, encode, load_digits
from .models import USER_FAMILY, build_model, builder_config, get_config

__all__ = ["TrainOptions", "TrainError", "Reporter", "train", "evaluate", "resolve_options"]


class TrainError(RevsnnError):
    """Bad training options; the message is one sentence that names the problem and the fix."""


@dataclass
class TrainOptions:
    model: str
    out: Path
    epochs: Optional[int] = None          # None: the model config's default
    time_steps: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    seed: int = 0
    encoding: Optional[str] = None
    device: str = "cpu"
    resume: bool = False


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
    """Fill unset options from the model's defaults and check them all; raise TrainError on bad input."""
    try:
        config = get_config(opts.model)
    except ValueError as exc:
        raise TrainError(str(exc)) from exc
    defaults = config.get("train", {})
    settings = {
        "epochs": opts.epochs if opts.epochs is not None else defaults.get("epochs", 10),
        "time_steps": opts.time_steps if opts.time_steps is not None else defaults.get("time_steps", 4),
        "batch_size": opts.batch_size if opts.batch_size is not None else defaults.get("batch_size", 64),
        "lr": opts.lr if opts.lr is not None else defaults.get("lr", 1e-3),
        "encoding": opts.encoding if opts.encoding is not None else defaults.get("encoding", "direct"),
        "seed": opts.seed,
    }
    if settings["epochs"] < 1:
        raise TrainError(f"--epochs must be at least 1, got {settings['epochs']}.")
    if settings["time_steps"] < 1:
        raise TrainError(f"--time-steps must be at least 1, got {settings['time_steps']}.")
    if settings["batch_size"] < 1:
        raise TrainError(f"--batch-size must be at least 1, got {settings['batch_size']}.")
    if not (settings["lr"] > 0 and math.isfinite(settings["lr"])):
        raise TrainError(f"--lr must be a positive number, got {settings['lr']}.")
    if settings["encoding"] not in ENCODINGS:
        raise TrainError(f"--encoding must be one of {', '.join(ENCODINGS)}, got {settings['encoding']!r}.")
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
    return {"config": config, **settings}


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    return list(order.split(batch_size))


@torch.no_grad()
def evaluate(model: nn.Module, data_x: torch.Tensor, data_y: torch.Tensor, time_steps: int, encoding: str,
             device: torch.device, batch_size: int = 256, seed: int = 1234) -> float:
    """Test accuracy; rate coding draws from a fixed generator so that the figure is reproducible."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    correct = 0
    for i in range(0, len(data_y), batch_size):
        x = encode(data_x[i:i + batch_size], time_steps, encoding, generator).to(device)
        correct += (model(x).argmax(1).cpu() == data_y[i:i + batch_size]).sum().item()
    return correct / len(data_y)


def train(opts: TrainOptions, reporter: Optional[Reporter] = None, data: Optional[ImageData] = None) -> dict:
    """Train ``opts.model`` and return the metrics written to ``DIR/metrics.json``."""
    reporter = reporter or _Silent()
    s = resolve_options(opts)
    out = Path(opts.out)
    ckpt_path, metrics_path = out / "model.pt", out / "metrics.json"
    device = torch.device(opts.device)
    data = data or load_digits()
    config = s["config"]
    if config.get("family") == USER_FAMILY:
        # A model of the user's own is built for the data it trains on; built once here, so that a builder
        # that fails does so in one sentence before anything is written.
        config = s["config"] = builder_config(config["builder"], data.input_shape, data.num_classes)
        build_model(config)
    if list(data.input_shape) != list(config["input_shape"]):
        raise TrainError(f"{opts.model} expects inputs of shape {config['input_shape']}, the data has "
                         f"{list(data.input_shape)}; choose a model built for it (see `revsnn models`).")

    resume_state = None
    if opts.resume:
        if not ckpt_path.is_file():
            raise TrainError(f"--resume: there is no {ckpt_path} to resume from; run without --resume first.")
        try:
            resume_state = load_checkpoint(ckpt_path)
        except CheckpointError as exc:
            raise TrainError(f"--resume: {exc}") from exc
        if resume_state["config"].get("name") != opts.model:
            raise TrainError(f"--resume: {ckpt_path} holds a {resume_state['config'].get('name')!r} model, not "
                             f"{opts.model!r}; pass --model {resume_state['config'].get('name')} or a new --out.")
        s = {**s, **{k: resume_state["train"][k] for k in ("time_steps", "batch_size", "lr", "encoding", "seed")},
             "epochs": s["epochs"] if opts.epochs is not None else resume_state["train"]["epochs"]}
    out.mkdir(exist_ok=True)

    torch.manual_seed(s["seed"])
    model = build_model(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=1e-4)
    generator = torch.Generator().manual_seed(s["seed"])
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume_state is not None:
        model.load_state_dict(resume_state["state_dict"])
        optimizer.load_state_dict(resume_state["optimizer"])
        generator.set_state(resume_state["rng"]["generator"])
        torch.set_rng_state(resume_state["rng"]["torch"])
        history = list(resume_state.get("history", []))
        start_epoch = int(resume_state["epoch"])

    train_settings = {k: s[k] for k in ("epochs", "time_steps", "batch_size", "lr", "encoding", "seed")}
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(start_epoch, s["epochs"]):
        model.train()
        for group in optimizer.param_groups:  # cosine schedule in closed form: resuming needs only the epoch
            group["lr"] = s["lr"] * 0.5 * (1.0 + math.cos(math.pi * epoch / s["epochs"]))
        batches = _batches(len(data.y_train), s["batch_size"], generator)
        reporter.start_epoch(epoch + 1, s["epochs"], len(batches))
        t0 = time.perf_counter()
        total_loss, total_correct, seen = 0.0, 0, 0
        for idx in batches:
            x = encode(data.x_train[idx], s["time_steps"], s["encoding"], generator).to(device)
            y = data.y_train[idx].to(device)
            logits = model(x)
            loss = loss_fn(logits, y)
            if not torch.isfinite(loss):
                raise TrainError(f"the loss became {loss.item()} in epoch {epoch + 1}; lower --lr.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            correct = (logits.argmax(1) == y).sum().item()
            total_loss += loss.item() * len(y)
            total_correct += correct
            seen += len(y)
            reporter.batch(loss.item(), correct / len(y))
        test_acc = evaluate(model, data.x_test, data.y_test, s["time_steps"], s["encoding"], device)
        record = {"epoch": epoch + 1, "loss": total_loss / seen, "train_accuracy": total_correct / seen,
                  "test_accuracy": test_acc, "seconds": time.perf_counter() - t0}
        history.append(record)
        save_checkpoint(ckpt_path, model, optimizer=optimizer.state_dict(), epoch=epoch + 1, train=train_settings,
                        rng={"generator": generator.get_state(), "torch": torch.get_rng_state()},
                        history=history)
        metrics = _metrics(opts.model, train_settings, history, epoch + 1)
        write_json(metrics_path, metrics)
        reporter.end_epoch(record)
    return _metrics(opts.model, train_settings, history, len(history))


def _metrics(model: str, settings: dict[str, Any], history: list[dict[str, Any]], epochs_done: int) -> dict:
    return {
        "model": model,
        "epochs": epochs_done,
        "time_steps": settings["time_steps"],
        "encoding": settings["encoding"],
        "batch_size": settings["batch_size"],
        "lr": settings["lr"],
        "seed": settings["seed"],
        "test_accuracy": history[-1]["test_accuracy"],
        "train_seconds": sum(h["seconds"] for h in history),
        "history": history,
    }
