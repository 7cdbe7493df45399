"""The ``revsnn`` command line. It parses options, calls one function, and prints: no logic lives here."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

import revsnn
from revsnn.cli.bench import bench_app
from revsnn.cli.common import console, err, fail

app = typer.Typer(
    name="revsnn",
    help="Train reversible spiking neural networks and deploy them to NIR, ONNX and Lava (Loihi 2).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(bench_app, name="bench")

# Distribution names of what the toolchain runs on, in the order a user thinks of them.
_PACKAGES = ["torch", "numpy", "nir", "nirtorch", "norse", "onnx", "onnxruntime", "lava-nc", "lava-dl", "h5py",
             "scikit-learn", "matplotlib", "typer", "rich"]


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"revsnn {revsnn.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.",
                                 callback=_version_callback, is_eager=True),
) -> None:
    """Train reversible spiking neural networks and deploy them to NIR, ONNX and Lava (Loihi 2)."""


def _installed_versions() -> list[tuple[str, str]]:
    rows = []
    for name in _PACKAGES:
        try:
            rows.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            rows.append((name, "missing"))
    return rows


@app.command()
def check(
    lava: bool = typer.Option(True, help="Also import Lava through revsnn's compatibility layer."),
) -> None:
    """Check the installation: print versions, import Lava, and train a tiny reversible network one step.

    The tiny network (4 reversible blocks, LIF and IF neurons, both couplings) runs forward and backward beside its plain-autograd twin: outputs and gradients must agree, and its retained activation memory must stay flat as blocks are added while the twin's grows.
    """
    versions = Table(title="Installed", show_header=True, header_style="bold")
    versions.add_column("package")
    versions.add_column("version")
    missing = []
    for name, ver in _installed_versions():
        versions.add_row(name, ver if ver != "missing" else "[red]missing[/red]")
        if ver == "missing":
            missing.append(name)
    console.print(f"revsnn {revsnn.__version__}")
    console.print(versions)

    ok = not missing
    if lava:
        t0 = time.perf_counter()
        try:
            # lava-dl prints a notice about an optional dataset toolbox on import; it is not ours to show.
            with contextlib.redirect_stdout(io.StringIO()):
                from revsnn.targets import lava as lava_target  # noqa: F401  (installs the compat layer)
                import lava.lib.dl.netx  # noqa: F401
            console.print(f"Lava imports through the compatibility layer ({time.perf_counter() - t0:.1f} s).")
        except Exception as exc:  # report any import failure as one sentence, never a traceback
            err.print(f"[red]Lava does not import: {type(exc).__name__}: {exc}. Re-run scripts/setup.sh.[/red]")
            ok = False

    from revsnn.selfcheck import run_selfcheck

    with console.status("Running a tiny reversible network beside its plain twin..."):
        result = run_selfcheck()
    console.print(f"Tiny reversible network: outputs equal the twin's: {result.outputs_equal}; "
                  f"max |gradient difference| {result.max_grad_diff:.1e}; {result.spikes} spikes.")
    mem = Table(title="Activation memory retained for backward (float64, T=4, batch 2)", header_style="bold")
    mem.add_column("blocks", justify="right")
    mem.add_column("reversible (bytes)", justify="right")
    mem.add_column("plain twin (bytes)", justify="right")
    for row in result.memory:
        mem.add_row(str(row.blocks), f"{row.reversible_bytes:,}", f"{row.plain_bytes:,}")
    console.print(mem)
    ok = ok and result.ok
    if missing:
        err.print(f"[red]Missing packages: {', '.join(missing)}. Run scripts/setup.sh.[/red]")
    if not ok:
        err.print("[red]The check failed.[/red]")
        raise typer.Exit(1)
    console.print("[green]All checks passed.[/green]")


@app.command()
def models(json_out: bool = typer.Option(False, "--json", help="Print the list as JSON.")) -> None:
    """List every model of the zoo: name, family, parameters, input shape and training defaults."""
    from revsnn.models import all_configs, build_model

    rows = []
    for name, config in all_configs().items():
        n_params = sum(p.numel() for p in build_model(config).parameters())
        train = config.get("train", {})
        rows.append({"name": name, "family": config["family"], "parameters": n_params,
                     "input_shape": config["input_shape"], "num_classes": config["num_classes"],
                     "time_steps": train.get("time_steps"), "encoding": train.get("encoding")})
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="revsnn models", header_style="bold")
    for col, justify in [("name", "left"), ("family", "left"), ("parameters", "right"),
                         ("input", "left"), ("classes", "right"), ("T", "right"), ("encoding", "left")]:
        table.add_column(col, justify=justify, no_wrap=col in ("name", "input"))
    for r in rows:
        table.add_row(r["name"], r["family"], f"{r['parameters']:,}", "×".join(map(str, r["input_shape"])),
                      str(r["num_classes"]),
                      str(r["time_steps"]), str(r["encoding"]))
    console.print(table)
    console.print("The *-digits models train on the embedded digits data; the others have the papers' sizes.")


class _ProgressReporter:
    """Draws the trainer's progress: a bar per epoch with loss and accuracy, then a line per epoch."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.1%}"),
                                 TimeElapsedColumn(), console=console, transient=True)
        self.task = None
        self.sums = [0.0, 0.0, 0]

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None:
        self.progress.start()  # no-op while already live
        self.sums = [0.0, 0.0, 0]
        self.task = self.progress.add_task("train", total=batches, epoch=f"{epoch}/{epochs}", loss=0.0, acc=0.0)

    def batch(self, loss: float, accuracy: float) -> None:
        self.sums = [self.sums[0] + loss, self.sums[1] + accuracy, self.sums[2] + 1]
        n = self.sums[2]
        self.progress.update(self.task, advance=1, loss=self.sums[0] / n, acc=self.sums[1] / n)

    def end_epoch(self, record: dict) -> None:
        self.progress.remove_task(self.task)
        self.progress.console.print(f"epoch {record['epoch']:>3}  loss {record['loss']:.4f}  train {record['train_accuracy']:.1%}"
                      f"  test {record['test_accuracy']:.1%}  ({record['seconds']:.1f} s)", highlight=False)


@app.command()
def train(
    model: str = typer.Option(..., "--model", help="Model name (see `revsnn models`)."),
    out: Path = typer.Option(..., "--out", help="Directory for model.pt and metrics.json (created if absent)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs in total [default: the model's]."),
    time_steps: Optional[int] = typer.Option(None, "--time-steps", help="Time steps T [default: the model's]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size [default: the model's]."),
    lr: Optional[float] = typer.Option(None, help="Learning rate of AdamW [default: the model's]."),
    seed: int = typer.Option(0, help="Seed of weights, data order and rate coding: same seed, same weights."),
    encoding: Optional[str] = typer.Option(None, help="direct (real-valued image every step) or rate "
                                                      "(Bernoulli spikes; what Loihi needs) [default: the model's]."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue from DIR/model.pt after an interruption."),
) -> None:
    """Train a model of the zoo on the embedded digits data (scikit-learn, no download).

    Writes DIR/model.pt (weights and full config; loadable with weights_only=True) and DIR/metrics.json after every epoch, atomically; --resume continues after a kill, losing at most the epoch in progress.
    """
    from revsnn.train import TrainError, TrainOptions
    from revsnn.train import train as run_training

    opts = TrainOptions(model=model, out=out, epochs=epochs, time_steps=time_steps, batch_size=batch_size,
                        lr=lr, seed=seed, encoding=encoding, device=device, resume=resume)
    reporter = _ProgressReporter()
    try:
        metrics = run_training(opts, reporter)
    except TrainError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail(f"interrupted; the last finished epoch is in {out / 'model.pt'}: add --resume to go on.", 130)
    finally:
        reporter.progress.stop()
    console.print(f"[green]{metrics['model']}[/green]: test accuracy {metrics['test_accuracy']:.1%} after "
                  f"{metrics['epochs']} epochs ({metrics['train_seconds']:.0f} s of training, T = "
                  f"{metrics['time_steps']}, {metrics['encoding']} encoding).", highlight=False)
    console.print(f"Wrote {out / 'model.pt'} and {out / 'metrics.json'}.", highlight=False)


if __name__ == "__main__":
    app()
