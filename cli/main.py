"""The ``revsnn`` command line. It parses options, calls one function, and prints: no logic lives here."""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import io
import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

import revsnn
from revsnn.cli.bench import bench_app
from revsnn.cli.common import RevsnnGroup, console, err, fail
from revsnn.cli.export import export_app
from revsnn.cli.finetune import finetune_command
from revsnn.cli.report import report_command, resources_table

app = typer.Typer(
    name="revsnn",
    help="Train reversible spiking neural networks and deploy them to NIR, ONNX and Lava (Loihi 2).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=RevsnnGroup,  # the one place where a RevsnnError becomes one sentence and exit code 2
)
app.add_typer(bench_app, name="bench")
app.add_typer(export_app, name="export")
app.command("report")(report_command)
app.command("finetune")(finetune_command)

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
    mem = Table(title="Bytes per sample alive when backward starts (allocator; float64, T=4, batch 2 -> 4)",
                header_style="bold")
    mem.add_column("blocks", justify="right")
    mem.add_column("reversible (bytes)", justify="right")
    mem.add_column("plain twin (bytes)", justify="right")
    for row in result.memory:
        mem.add_row(str(row.blocks), f"{row.reversible_bytes:,.0f}", f"{row.plain_bytes:,.0f}")
    console.print(mem)
    ok = ok and result.ok
    if missing:
        err.print(f"[red]Missing packages: {', '.join(missing)}. Run scripts/setup.sh.[/red]")
    if not ok:
        err.print("[red]The check failed.[/red]")
        raise typer.Exit(1)
    console.print("[green]All checks passed.[/green]")


@app.command()
def targets(json_out: bool = typer.Option(False, "--json", help="Print the list as JSON.")) -> None:
    """List every target `verify` can run: what it runs and what it is compared with."""
    from revsnn.targets.registry import target_info

    info = target_info()
    if json_out:
        print(json.dumps(info, indent=2))
        return
    table = Table(title="revsnn targets", header_style="bold")
    table.add_column("target", no_wrap=True)
    table.add_column("what it runs, and against what")
    for name, text in info.items():
        table.add_row(name, text)
    console.print(table)


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

    def note(self, text: str) -> None:
        """What the trainer set or had to change (a preset, LAMB as AdamW, an md5 mismatch)."""
        self.progress.console.print(f"[yellow]note:[/yellow] {escape(text)}", highlight=False, soft_wrap=True)

    def warn(self, text: str) -> None:
        """Something about the data that does not stop training (a file that differs from the published one)."""
        err.print(f"[yellow]warning:[/yellow] {escape(text)}", highlight=False)

    def end_epoch(self, record: dict) -> None:
        self.progress.remove_task(self.task)
        self.progress.console.print(f"epoch {record['epoch']:>3}  loss {record['loss']:.4f}  train {record['train_accuracy']:.1%}"
                      f"  test {record['test_accuracy']:.1%}"
                      + (f"  quantised {record['quantized_test_accuracy']:.1%}" if "quantized_test_accuracy" in record
                         else "") + (f"  validation {record['val_accuracy']:.1%}" if "val_accuracy" in record else "")
                      + f"  ({record['seconds']:.1f} s)", highlight=False)


@app.command()
def train(
    model: str = typer.Option(..., "--model", help="A model of the zoo (see `revsnn models`), or your own as "
                                                   "MODULE:FUNCTION: FUNCTION(input_shape=(C, H, W), num_classes=N) "
                                                   "returns the nn.Module. MODULE is imported from the current "
                                                   "directory or PYTHONPATH, here and whenever the checkpoint is "
                                                   "rebuilt (export, verify, info, bench infer), which runs its code."),
    out: Path = typer.Option(..., "--out", help="Directory for model.pt and metrics.json (created if absent)."),
    data: str = typer.Option("digits", "--data", help="digits (embedded), cifar10, cifar100, imagefolder, nmnist, "
                                                      "dvs128-gesture or cifar10-dvs."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder holding the data set's official files "
                                                                     "(nothing is downloaded)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="A seed's protocol: revsnn-resnet-cifar, "
                                         "revsnn-former-cifar, revsnn-dvs or trevsnn-imagenet; options given here "
                                         "override it."),
    epochs: Optional[int] = typer.Option(None, help="Epochs in total (default: the preset's, else the model's)."),
    time_steps: Optional[int] = typer.Option(None, "--time-steps", help="Time steps T (event frames per sample) "
                                             "[default: the preset's, else the model's]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size (default: the preset's, else "
                                             "the model's)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default: the preset's, else the model's)."),
    seed: Optional[int] = typer.Option(None, help="Seed of weights, data order, augmentation and rate coding: same "
                                           "seed, same weights (default: 0; a resumed run keeps its own)."),
    encoding: Optional[str] = typer.Option(None, help="Images: direct (real-valued image every step) or rate "
                                           "(Bernoulli spikes; what Loihi needs). Event frames: events (a spike per "
                                           "pixel with an event; what Loihi needs) or counts (default: the model's; "
                                           "events for event data)."),
    frames_by: Optional[str] = typer.Option(None, "--frames-by", help="Event frames: count (equal event numbers, as "
                                            "the seeds) or time (equal time windows) (default: count)."),
    frame_size: Optional[int] = typer.Option(None, "--frame-size", help="Event frames: bin the sensor down to this "
                                             "side (default: a 2-channel model's input side, else the sensor's)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Image folders: resize and centre-crop to "
                                             "this side (default: the preset's, else the model's input)."),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="CIFAR: random crop (padding 4) "
                                           "and horizontal flip; image folders: flip; events: random flip "
                                           "[default: the preset's; off without one]."),
    event_shift: int = typer.Option(0, "--event-shift", help="Event frames: random shift of up to this many pixels."),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes (pinned memory on CUDA)."),
    optimizer: Optional[str] = typer.Option(None, help="sgd, adamw or lamb (AdamW here: torch has no LAMB) "
                                            "[default: the preset's, else adamw]."),
    momentum: Optional[float] = typer.Option(None, help="SGD momentum (default: 0.9)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="Weight decay (default: 1e-4)."),
    schedule: Optional[str] = typer.Option(None, help="cosine or step (x0.1 at --milestones) (default: cosine)."),
    milestones: Optional[str] = typer.Option(None, help="Epochs of the step schedule's decays, e.g. 100,150."),
    warmup_epochs: Optional[int] = typer.Option(None, "--warmup-epochs", help="Linear warm-up epochs (default: 0)."),
    label_smoothing: Optional[float] = typer.Option(None, "--label-smoothing", help="Label smoothing (default: 0)."),
    mixup: Optional[float] = typer.Option(None, help="Mixup alpha (0: off) (default: 0)."),
    ema: Optional[float] = typer.Option(None, help="EMA decay of the weights; the average is evaluated and saved."),
    grad_clip: Optional[float] = typer.Option(None, "--grad-clip", help="Clip the gradient norm to this value."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision (CUDA only)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue from DIR/model.pt after an interruption."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run already in DIR (without it, or "
                                   "--resume, an existing DIR/model.pt is refused)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32, bf16 or fp16 (autocast; fp16 with a "
                                            "gradient scaler), or fp64 [default: fp16 with --amp on CUDA, else fp32]."),
    nproc: int = typer.Option(1, "--nproc", help="Processes on this machine (DDP: gloo on the CPU, nccl with one GPU "
                              "each); for several machines use torchrun -m revsnn.cli train."),
    sync_bn: bool = typer.Option(False, "--sync-bn", help="With several processes: BatchNorm statistics over the "
                                 "global batch (SyncBatchNorm) instead of each process's share."),
    loihi_aware: bool = typer.Option(False, "--loihi-aware", help="Train with the forward Loihi 2 runs: the "
                                     "exporter's fixed-point network, straight-through gradients (rate or event "
                                     "input); see `revsnn finetune` to adapt a float checkpoint instead."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Hold out this part of the training split "
                                       "(seeded, the same samples whatever --seed) and write the epoch that does "
                                       "best on it instead of the last one [default: 0, none held out; --resume keeps the run's]."),
) -> None:
    """Train a model of the zoo, or your own (--model MODULE:FUNCTION), on the embedded digits (no download) or a data set you have on disk.

    Writes DIR/model.pt (weights, full config, the data set's name, shape and folder; loadable with weights_only=True) and DIR/metrics.json after every epoch, atomically; --resume continues after a kill, losing at most the epoch in progress. The model takes the data's input shape and class count.
    """
    from revsnn.cli.common import parse_ints
    from revsnn.train import TrainOptions
    from revsnn.train import train as run_training

    opts = TrainOptions(model=model, out=out, epochs=epochs, time_steps=time_steps, batch_size=batch_size,
                        lr=lr, seed=seed, encoding=encoding, device=device, resume=resume, data=data,
                        data_dir=data_dir, frames_by=frames_by, frame_size=frame_size, image_size=image_size,
                        augment=augment, event_shift=event_shift, workers=workers, preset=preset,
                        optimizer=optimizer, momentum=momentum, weight_decay=weight_decay, schedule=schedule,
                        milestones=parse_ints(milestones, "--milestones") if milestones else None,
                        warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, mixup=mixup, ema=ema,
                        grad_clip=grad_clip, amp=amp, precision=precision, sync_bn=sync_bn, overwrite=overwrite,
                        val_fraction=val_fraction)
    from revsnn.distributed import is_main_process, train_on_processes

    reporter = _ProgressReporter()
    try:
        if loihi_aware:
            if nproc != 1:
                fail("--loihi-aware trains in one process; drop --nproc.")
            from revsnn.finetune import train_loihi_aware as run_training
        metrics = run_training(opts, reporter) if nproc == 1 else train_on_processes(opts, nproc, _ProgressReporter)
    except KeyboardInterrupt:
        fail(f"interrupted; the last finished epoch is in {out / 'model.pt'}: add --resume to go on.", 130)
    finally:
        reporter.progress.stop()
    if not is_main_process():  # under torchrun: rank 0 prints
        return
    console.print(f"[green]{metrics['model']}[/green] on {metrics['data']}: test accuracy "
                  f"{metrics['test_accuracy']:.1%} after {metrics['epochs']} epochs ({metrics['train_seconds']:.0f} s "
                  f"of training, T = {metrics['time_steps']}, {metrics['encoding']} encoding).", highlight=False)
    if metrics.get("selection"):   # --val-fraction: model.pt is the best held-out epoch, its test figure above
        chosen = metrics["selection"]
        console.print(f"model.pt is epoch {chosen['epoch']}, the best on {chosen['validation_samples']} held-out "
                      f"training samples (validation accuracy {chosen['val_accuracy']:.1%}).", highlight=False)
    console.print(f"Wrote {out / 'model.pt'} and {out / 'metrics.json'}.", highlight=False)


def _pct(x: Optional[float]) -> str:
    if x is None:
        return "n/a"
    # rounded down, so that anything short of full agreement never prints as 100%
    return "100%" if x == 1.0 else f"{math.floor(x * 10000) / 100:.2f}%"


def _verify_table(report) -> Table:
    table = Table(title=f"verify {report.model}: {report.samples} test samples x {report.time_steps} steps "
                        f"({report.encoding} encoding)", header_style="bold")
    # spikes: agreement of the output population / of all populations; ties: count / samples with one
    for col in ("target", "spikes", "ties", "pred.", "max |Δ|", "s", "ok"):
        table.add_column(col, justify="left" if col in ("target", "ok") else "right", no_wrap=True)
    for t in report.targets.values():
        table.add_row(t.name, f"{_pct(t.output_spike_agreement)}/{_pct(t.spike_agreement)}",
                      f"{t.threshold_ties}/{t.tie_samples}", _pct(t.prediction_agreement), f"{t.max_abs_diff:.1e}",
                      f"{t.seconds:.1f}", "[green]pass[/green]" if t.ok else "[red]FAIL[/red]")
    return table


def _print_lava_note(report) -> None:
    lava = report.targets.get("lava")
    if lava is None:
        return
    d = lava.details
    console.print(f"lava: Loihi 2 fixed point in Lava's simulation, compared bit for bit with the quantised "
                  f"reference ({d.get('chain_layers')} netx layers, {d.get('synapses')} synapses, "
                  f"{d.get('lava_seconds_per_step', 0) * 1e3:.0f} ms per simulated step). Quantisation against the "
                  f"float reference: predictions {_pct(lava.float_prediction_agreement)}, spikes "
                  f"{_pct(lava.float_spike_agreement)}.", highlight=False)


def _run_verify(checkpoint: Path, targets: Optional[list[str]], samples: int, plot: Optional[Path],
                lava_synapses: str = "conv", file: Optional[Path] = None, foreign: Optional[dict] = None,
                data_dir: Optional[Path] = None):
    from revsnn.plots import raster_plots
    from revsnn.verify import verify, verify_foreign

    if plot is not None and not plot.is_dir():
        if plot.exists() or not plot.parent.is_dir():
            fail(f"--plot {plot} must be a directory (its parent must exist).")
    if plot is not None:
        from revsnn.fileio import check_writable_dir

        check_writable_dir(plot if plot.is_dir() else plot.parent, "--plot")  # before the targets run
    with console.status("running every target step by step ...") as status:
        progress = lambda t: status.update(f"{t.name} done; running the next target ...")  # noqa: E731
        if foreign is not None:   # a .nir file from any tool
            report = verify_foreign(checkpoint, targets=None if targets is None else tuple(targets), samples=samples,
                                    on_target=progress, lava_synapses=lava_synapses, **foreign)
        else:
            report = verify(checkpoint, None if targets is None else tuple(targets), samples,
                            on_target=progress, lava_synapses=lava_synapses, file=file, data_dir=data_dir)
    plots = []
    if plot is not None:
        plot.mkdir(exist_ok=True)
        plots = raster_plots(report, plot)
    return report, plots


def _targets_help() -> str:
    from revsnn.targets.registry import target_names

    return ("Comma-separated targets: " + ", ".join(target_names()) + " [default: torch,norse; with --file, "
            "every target that runs that file]. `revsnn targets` describes each.")


@app.command()
def verify(
    checkpoint: Path = typer.Argument(..., help="model.pt written by `revsnn train`, or a .nir file written by any "
                                     "tool (then see --dt, --rate, --input)."),
    targets: Optional[str] = typer.Option(None, help=_targets_help()),
    samples: int = typer.Option(32, help="Test samples of the model's data to run (a .nir file: input samples)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    plot: Optional[Path] = typer.Option(None, help="Directory for one spike-raster PNG per target (sample 0)."),
    lava_synapses: str = typer.Option("conv", "--lava-synapses", help="Synapse form of the .net the lava target "
                                      "runs: conv (as `export lava` writes by default) or dense."),
    file: Optional[Path] = typer.Option(None, "--file", help="Run this exported file (.nir, .onnx or .net) instead "
                                        "of a fresh export; it must have been exported from CHECKPOINT and be "
                                        "unchanged since (its fingerprint says)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Where the model's data set is now "
                                            "(default: the folder its checkpoint recorded)."),
    dt: Optional[float] = typer.Option(None, "--dt", help="A .nir file from another tool: its time step in "
                                       "seconds [default: the file's metadata]."),
    time_steps: int = typer.Option(20, "--time-steps", help="A .nir file: time steps of the input."),
    rate: float = typer.Option(0.2, help="A .nir file: Bernoulli spike probability of the input per step."),
    seed: int = typer.Option(0, help="A .nir file: seed of the input spikes."),
    inputs: Optional[Path] = typer.Option(None, "--input", help="A .nir file: your own input, a .npy array "
                                          "[T, B, ...] (instead of --rate spikes)."),
) -> None:
    """Prove that every target reproduces the training model, one time step at a time.

    Exports what each target needs to a temporary folder, runs it step by step on test samples, and compares spikes of every population it exposes, predictions and per-step outputs with the reference executor (which is itself compared with the training model). Exit code 0 only when every target agrees.
    """
    from revsnn.cli.common import parse_list

    if lava_synapses not in ("conv", "dense"):
        fail(f"--lava-synapses must be conv or dense, got {lava_synapses!r}.")
    foreign = None
    if checkpoint.suffix == ".nir":
        if file is not None:
            fail("--file applies to a checkpoint; a .nir file is run itself.")
        foreign = {"dt": dt, "time_steps": time_steps, "rate": rate, "seed": seed, "inputs": inputs}
    elif dt is not None or inputs is not None:
        fail("--dt and --input apply to a .nir file from another tool, not to a checkpoint.")
    report, plots = _run_verify(checkpoint, None if targets is None else parse_list(targets, "--targets"), samples,
                                plot, lava_synapses, file, foreign, data_dir)
    if json_out:
        print(json.dumps(report.as_json(), indent=2))
    else:
        console.print(_verify_table(report))
        _print_lava_note(report)
        console.print("spikes: agreement of the population(s) feeding the readout / of every population. "
                      "ties: spike differences where the reference membrane is within float rounding of the "
                      "threshold / samples with one; later differences in those samples count as tie-induced "
                      "(--json), and max |Δ| and predictions are held to the tolerance on the other samples.",
                      highlight=False)
        for p in plots:
            console.print(f"Wrote {p}.", highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def info(file: Path = typer.Argument(..., help="A .pt checkpoint, a .nir, .onnx or .net file."),
         dt: Optional[float] = typer.Option(None, "--dt", help="A .nir file from another tool: its time step in "
                                            "seconds, to show its time constants in steps.")) -> None:
    """A readable summary of a checkpoint or an exported file: nodes by type, neurons, synapses, shapes, metadata.

    A checkpoint of your own model (`train --model MODULE:FUNCTION`) is rebuilt by importing MODULE, so its code runs: only read checkpoints whose code you trust.
    """
    if not file.exists():
        fail(f"{file} does not exist.")
    if not file.is_file():  # a directory, a FIFO or a device: nothing to summarise, and reading could block
        fail(f"{file} is not a regular file; pass a .pt, .nir, .onnx or .net file.")
    if file.suffix == ".pt":
        from revsnn.checkpoint import load_model, summarize_checkpoint

        model_, payload_ = load_model(file)
        s = summarize_checkpoint(model_, payload_)
        data_rec = payload_.get("data")
        table = Table(title=f"{file}", show_header=False)
        table.add_row("model", escape(f"{s['model']} ({s['family']})"))
        if "builder" in s:
            module = s["builder"].partition(":")[0]
            table.add_row("built by", escape(f"{s['builder']}(input_shape={tuple(s['input_shape'])}, num_classes="
                                             f"{s['num_classes']}); rebuilding imports {module}"))
        table.add_row("parameters", f"{s['parameters']:,}")
        table.add_row("input", "×".join(map(str, s["input_shape"])) + f", {s['num_classes']} classes")
        if data_rec:
            table.add_row("data", escape(f"{data_rec.get('name')} from {data_rec.get('dir') or '(embedded)'}"))
        for key, value in s["train"].items():
            table.add_row(key, str(value))
        if "epochs_done" in s:
            table.add_row("epochs done", str(s["epochs_done"]))
            table.add_row("test accuracy", f"{s['test_accuracy']:.2%}")
        if "selected_epoch" in s:   # issue 15: chosen on held-out training samples (revsnn.train.hold_out)
            table.add_row("kept epoch", f"{s['selected_epoch']} (best on the held-out validation split)")
        table.add_row("revsnn version", str(s["revsnn_version"]))
        console.print(table)
        return
    if file.suffix == ".nir":
        from revsnn.exporters.nir_file import read_nir, summarize

        summary = summarize(read_nir(file))
        table = Table(title=f"{file}", show_header=False)
        table.add_row("nodes", ", ".join(f"{n} {k}" for k, n in sorted(summary["node_types"].items())))
        table.add_row("edges", str(summary["edges"]))
        table.add_row("neurons", f"{summary['neurons']:,}")
        table.add_row("synapses", f"{summary['synapses']:,}")
        table.add_row("input", str(summary["input_shape"]))
        table.add_row("output", str(summary["output_shape"]))
        from revsnn.exporters.nir_import import time_summary

        for key, value in time_summary(read_nir(file), dt):
            table.add_row(key, value)
        for key, value in summary["metadata"].items():
            table.add_row(f"metadata: {key}", str(value))
        console.print(table)
        return
    if file.suffix == ".onnx":
        from revsnn.exporters.onnx_file import read_onnx, summarize_onnx

        s = summarize_onnx(read_onnx(file))
        shape = lambda io: "×".join(map(str, io["shape"]))  # noqa: E731
        table = Table(title=f"{file}", show_header=False)
        table.add_row("input", escape(f"{s['input']['name']} [{shape(s['input'])}]"))
        table.add_row("output", escape(f"{s['output']['name']} [{shape(s['output'])}]"))
        table.add_row("states", f"{s['states']} (in: state.*, out: state_out.*)")
        table.add_row("ops", ", ".join(f"{n} {k}" for k, n in s["ops"].items()))
        table.add_row("opset", str(s["opset"]))
        for key, value in s["metadata"].items():
            table.add_row(f"metadata: {key}", escape(value))
        console.print(table)
        return
    if file.suffix == ".net":
        from revsnn.exporters.netx_file import read_netx, summarize_netx

        chain = read_netx(file)
        s = summarize_netx(chain, file)
        layers = Table(title=f"{file}: lava-dl netx chain, input {'×'.join(map(str, s['input_shape']))}",
                       header_style="bold")
        for col in ("layer", "type", "shape", "synapse", "i/vDecay", "vThMant", "pops", "relays"):
            layers.add_column(col, justify="left" if col in ("type", "synapse") else "right", no_wrap=True)
        for layer in s["layers"]:
            layers.add_row(str(layer["index"]), layer["type"], "×".join(map(str, layer["shape"])), layer["synapse"],
                           f"{layer['i_decay']}/{layer['v_decay']}", str(layer["v_th_mant"]),
                           str(len(layer["populations"])), str(len(layer["relays"])))
        console.print(layers)
        for layer in s["layers"]:
            relays = layer["relays"]
            line = f"layer {layer['index']}: {', '.join(layer['populations'])}" + \
                (f"; relays of {', '.join(relays)}" if relays else "")
            console.print(escape(line), highlight=False, soft_wrap=True)
        for line in s["description"]:
            console.print(line, highlight=False)
        console.print(resources_table(chain))
        for key, value in s["metadata"].items():
            console.print(f"{key}: {value}", highlight=False)
        return
    fail(f"{file}: info reads .pt checkpoints, .nir, .onnx and .net files.")


@app.command()
def demo(
    out: Path = typer.Option(Path("revsnn-demo"), "--out", help="Folder for the checkpoint, exports and plots."),
    model: str = typer.Option("revsresnet-digits", "--model", help="Model to train (see `revsnn models`)."),
    epochs: int = typer.Option(4, help="Training epochs."),
    samples: int = typer.Option(64, help="Test samples that verify runs on every target."),
    lava: bool = typer.Option(True, "--lava/--no-lava", help="Also export to Lava (netx) and verify Loihi 2's "
                                                             "fixed-point simulation."),
    data: str = typer.Option("digits", "--data", help="Data set to train on (see `revsnn train --help`)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder holding the data set's files."),
    frame_size: Optional[int] = typer.Option(None, "--frame-size", help="Event frames: bin the sensor to this side."),
) -> None:
    """The main job: train a small reversible SNN on rate-coded digits, export it (NIR, ONNX, Lava netx), and verify every target reproduces it."""
    from revsnn.exporters.netx_file import describe_chain
    from revsnn.pipeline import run_demo

    reporter = _ProgressReporter()
    status = console.status("running every target step by step ...")

    def stage(name: str, r) -> None:
        if name == "train":
            # Rate-coded input: spikes are what Loihi receives, so one model serves every target.
            console.rule(f"1/3 train {model} on " + ("the embedded digits (rate-coded spikes)" if data == "digits"
                                                   else f"{data} from {data_dir} (spikes)"))
        elif name == "export":
            reporter.progress.stop()
            console.print(f"test accuracy {r.metrics['test_accuracy']:.1%}", highlight=False)
            console.rule("2/3 export")
        elif name == "verify":
            summary = r.nir_summary
            console.print(f"{r.nir_path}: {len(summary['node_types'])} node types, {summary['neurons']:,} neurons, "
                          f"{summary['synapses']:,} synapses", highlight=False)
            console.print(f"{r.onnx_path}: one time step, neuron states as inputs and outputs", highlight=False)
            if r.chain is not None:
                lines = describe_chain(r.chain)
                console.print(f"{r.net_path}: Loihi 2 fixed point, lava-dl netx; " + lines[0], highlight=False)
                for line in lines[1:]:
                    console.print("  " + line, highlight=False)
            console.rule("3/3 verify: every target, one time step at a time")
            status.start()

    try:
        result = run_demo(out, model, epochs, samples, lava, reporter=reporter, on_stage=stage,
                          on_target=lambda t: status.update(f"{t.name} done; running the next target ..."),
                          data=data, data_dir=data_dir, frame_size=frame_size)
    finally:
        status.stop()
        reporter.progress.stop()
    console.print(_verify_table(result.report))
    _print_lava_note(result.report)
    if "lava" in result.report.targets:   # issue 15: how to close the quantisation gap the note shows
        console.print(f"To train the model on this grid (what Lava runs is then what was trained, and the checkpoint's "
                      f"float model agrees with it on every prediction and spike, README \"Loihi-aware fine-tuning\"): "
                      f"revsnn finetune {out / 'model.pt'} --for loihi --epochs 3 --out {out / 'loihi'}", highlight=False)
    console.print(f"Files in {out}/: " + ", ".join(result.files), highlight=False)
    if not result.ok:
        fail("a target disagrees with its reference; see the table above.", 1)
    console.print("[green]Every target reproduces the training model" + (" (Lava: bit for bit its fixed-point "
                  "quantisation)" if lava else "") + ".[/green]")


if __name__ == "__main__":
    app()
