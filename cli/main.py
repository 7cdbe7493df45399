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
from revsnn.cli.common import console, err, fail
from revsnn.cli.export import export_app
from revsnn.cli.report import report_command, resources_table

app = typer.Typer(
    name="revsnn",
    help="Train reversible spiking neural networks and deploy them to NIR, ONNX and Lava (Loihi 2).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(bench_app, name="bench")
app.add_typer(export_app, name="export")
app.command("report")(report_command)

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


def _raster_plots(report, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from revsnn.checkpoint import atomic_write

    paths = []
    for t in report.targets.values():
        if t.raster is None:  # a target that exposes no spikes (the unrolled ONNX model)
            continue
        fig, axes = plt.subplots(1, 2, figsize=(8, 4.5), sharey=True)
        for ax, raster, title in ((axes[0], report.reference_raster, "reference executor"),
                                  (axes[1], t.raster, t.name)):
            steps, neurons = torch_nonzero(raster)
            ax.scatter(steps, neurons, s=2, marker="|", color="black")
            ax.set_title(title)
            ax.set_xlabel("time step")
            ax.set_xlim(-0.5, raster.shape[0] - 0.5)
            ax.set_xticks(range(raster.shape[0]))
        axes[0].set_ylabel(f"neuron ({report.output_population})")
        fig.suptitle(f"{report.model}, sample 0: output population spikes "
                     f"({'identical' if t.output_spike_agreement == 1.0 else 'DIFFERENT'})")
        fig.tight_layout()
        path = folder / f"raster_{t.name}.png"
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)
        paths.append(path)
    return paths


def torch_nonzero(raster):
    idx = raster.nonzero()
    return idx[:, 0].numpy(), idx[:, 1].numpy()


def _run_verify(checkpoint: Path, targets: list[str], samples: int, plot: Optional[Path],
                lava_synapses: str = "conv"):
    from revsnn.checkpoint import CheckpointError
    from revsnn.exporters.collapse import CollapseError
    from revsnn.exporters.netx_file import NetxFileError
    from revsnn.exporters.nir_file import NIRFileError
    from revsnn.exporters.onnx_file import ONNXFileError
    from revsnn.targets.reference import UnsupportedNodeError
    from revsnn.verify import VerifyError, verify

    if plot is not None and not plot.is_dir():
        if plot.exists() or not plot.parent.is_dir():
            fail(f"--plot {plot} must be a directory (its parent must exist).")
    try:
        with console.status("running every target step by step ...") as status:
            report = verify(checkpoint, tuple(targets), samples,
                            on_target=lambda t: status.update(f"{t.name} done; running the next target ..."),
                            lava_synapses=lava_synapses)
    except (CheckpointError, CollapseError, NIRFileError, ONNXFileError, NetxFileError, UnsupportedNodeError,
            VerifyError) as exc:
        fail(str(exc))
    plots = []
    if plot is not None:
        plot.mkdir(exist_ok=True)
        plots = _raster_plots(report, plot)
    return report, plots


@app.command()
def verify(
    checkpoint: Path = typer.Argument(..., help="model.pt written by `revsnn train`."),
    targets: str = typer.Option("torch,norse", help="Comma-separated targets: torch, torch-cuda, norse, "
                                                     "onnxruntime, onnxruntime-unrolled, lava."),
    samples: int = typer.Option(32, help="Test samples of the model's data to run."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    plot: Optional[Path] = typer.Option(None, help="Directory for one spike-raster PNG per target (sample 0)."),
    lava_synapses: str = typer.Option("conv", "--lava-synapses", help="Synapse form of the .net the lava target "
                                      "runs: conv (as `export lava` writes by default) or dense."),
) -> None:
    """Prove that every target reproduces the training model, one time step at a time.

    Exports what each target needs to a temporary folder, runs it step by step on test samples, and compares spikes of every population it exposes, predictions and per-step outputs with the reference executor (which is itself compared with the training model). Exit code 0 only when every target agrees.
    """
    from revsnn.cli.common import parse_list

    if lava_synapses not in ("conv", "dense"):
        fail(f"--lava-synapses must be conv or dense, got {lava_synapses!r}.")
    report, plots = _run_verify(checkpoint, parse_list(targets, "--targets"), samples, plot, lava_synapses)
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
def info(file: Path = typer.Argument(..., help="A .pt checkpoint, a .nir, .onnx or .net file.")) -> None:
    """A readable summary of a checkpoint or an exported file: nodes by type, neurons, synapses, shapes, metadata."""
    if not file.is_file():
        fail(f"{file} does not exist.")
    if file.suffix == ".pt":
        from revsnn.checkpoint import CheckpointError, load_model

        try:
            model, payload = load_model(file)
        except CheckpointError as exc:
            fail(str(exc))
        config = model.config
        table = Table(title=f"{file}", show_header=False)
        table.add_row("model", f"{config.get('name')} ({config.get('family')})")
        table.add_row("parameters", f"{sum(p.numel() for p in model.parameters()):,}")
        table.add_row("input", "×".join(map(str, config["input_shape"])) + f", {config['num_classes']} classes")
        for key, value in payload.get("train", {}).items():
            table.add_row(key, str(value))
        history = payload.get("history") or []
        if history:
            table.add_row("epochs done", str(payload.get("epoch")))
            table.add_row("test accuracy", f"{history[-1]['test_accuracy']:.2%}")
        table.add_row("revsnn version", str(payload.get("revsnn_version")))
        console.print(table)
        return
    if file.suffix == ".nir":
        from revsnn.exporters.nir_file import NIRFileError, read_nir, summarize

        try:
            summary = summarize(read_nir(file))
        except NIRFileError as exc:
            fail(str(exc))
        table = Table(title=f"{file}", show_header=False)
        table.add_row("nodes", ", ".join(f"{n} {k}" for k, n in sorted(summary["node_types"].items())))
        table.add_row("edges", str(summary["edges"]))
        table.add_row("neurons", f"{summary['neurons']:,}")
        table.add_row("synapses", f"{summary['synapses']:,}")
        table.add_row("input", str(summary["input_shape"]))
        table.add_row("output", str(summary["output_shape"]))
        for key, value in summary["metadata"].items():
            table.add_row(f"metadata: {key}", str(value))
        console.print(table)
        return
    if file.suffix == ".onnx":
        from revsnn.exporters.onnx_file import ONNXFileError, read_onnx

        try:
            model = read_onnx(file)
        except ONNXFileError as exc:
            fail(str(exc))
        graph = model.graph
        ops: dict[str, int] = {}
        for node in graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1

        def shape(v) -> str:
            return "×".join(d.dim_param or str(d.dim_value) for d in v.type.tensor_type.shape.dim)

        table = Table(title=f"{file}", show_header=False)
        table.add_row("input", escape(f"{graph.input[0].name} [{shape(graph.input[0])}]"))
        table.add_row("output", escape(f"{graph.output[0].name} [{shape(graph.output[0])}]"))
        table.add_row("states", f"{len(graph.input) - 1} (in: state.*, out: state_out.*)")
        table.add_row("ops", ", ".join(f"{n} {k}" for k, n in sorted(ops.items())))
        table.add_row("opset", str(model.opset_import[0].version))
        for prop in model.metadata_props:
            if prop.key not in ("states", "neurons", "state_inputs", "graph_metadata"):
                table.add_row(f"metadata: {prop.key}", escape(prop.value))
        console.print(table)
        return
    if file.suffix == ".net":
        from revsnn.cli.export import describe_chain
        from revsnn.exporters.netx_file import NetxFileError, read_netx

        try:
            chain = read_netx(file)
        except NetxFileError as exc:
            fail(str(exc))
        layers = Table(title=f"{file}: lava-dl netx chain, input {'×'.join(map(str, chain.input_shape))}",
                       header_style="bold")
        for col in ("layer", "type", "shape", "synapse", "i/vDecay", "vThMant", "pops", "relays"):
            layers.add_column(col, justify="left" if col in ("type", "synapse") else "right", no_wrap=True)
        holds = []
        for k, layer in enumerate(chain.layers, 1):
            if layer.kind == "conv":
                kh, kw = layer.weight.shape[2:]
                syn = f"{kh}×{kw}/s{layer.stride[0]}/p{layer.padding[0]}"
            else:
                syn = f"{layer.weight.shape[0]}×{layer.weight.shape[1]}"
            pops = [m.name for m in layer.members if not m.relay]
            relays = [m.name for m in layer.members if m.relay]
            holds.append(f"layer {k}: {', '.join(pops)}" + (f"; relays of {', '.join(relays)}" if relays else ""))
            layers.add_row(str(k), "readout" if layer.readout else layer.kind, "×".join(map(str, layer.shape)), syn,
                           f"{layer.i_decay}/{layer.v_decay}", str(layer.v_th_mant), str(len(pops)),
                           str(len(relays)))
        console.print(layers)
        for line in holds:
            console.print(escape(line), highlight=False, soft_wrap=True)
        for line in describe_chain(chain):
            console.print(line, highlight=False)
        console.print(resources_table(chain))
        for key, value in chain.metadata.items():
            if key in ("model", "time_steps", "readout", "synapses", "revsnn_version", "quantized"):
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
) -> None:
    """The main job: train a small reversible SNN on rate-coded digits, export it (NIR, ONNX, Lava netx), and verify every target reproduces it."""
    from revsnn.checkpoint import CheckpointError
    from revsnn.exporters.collapse import CollapseError
    from revsnn.exporters.loihi import LoihiExportError
    from revsnn.exporters.netx_file import NetxFileError
    from revsnn.exporters.nir_file import NIRFileError
    from revsnn.train import TrainError, TrainOptions
    from revsnn.train import train as run_training

    # Rate-coded input: spikes are what Loihi receives, so one model serves every target.
    console.rule(f"1/3 train {model} on the embedded digits (rate-coded spikes)")
    reporter = _ProgressReporter()
    try:
        metrics = run_training(TrainOptions(model=model, out=out, epochs=epochs, encoding="rate"), reporter)
    except TrainError as exc:
        fail(str(exc))
    finally:
        reporter.progress.stop()
    console.print(f"test accuracy {metrics['test_accuracy']:.1%}", highlight=False)

    console.rule("2/3 export")
    from revsnn.checkpoint import load_model
    from revsnn.cli.export import describe_chain, export_lava_file
    from revsnn.exporters.collapse import collapse
    from revsnn.exporters.nir_file import summarize, write_nir
    from revsnn.exporters.onnx_file import ONNXFileError, write_onnx

    nir_path, onnx_path, net_path = out / "model.nir", out / "model.onnx", out / "model.net"
    # The demo's Lava file is dense: Lava's CPU simulation of a convolution calls scipy once per channel pair
    # and step, several times slower on these small maps (`revsnn export lava` writes conv layers by default).
    lava_synapses = "dense"
    try:
        trained, payload = load_model(out / "model.pt")
        graph = collapse(trained, payload["train"]["time_steps"]).graph
        write_nir(graph, nir_path)
        write_onnx(graph, onnx_path)
        chain = export_lava_file(out / "model.pt", net_path, lava_synapses)[0] if lava else None
    except (CheckpointError, CollapseError, NIRFileError, ONNXFileError, LoihiExportError, NetxFileError) as exc:
        fail(str(exc))
    summary = summarize(graph)
    console.print(f"{nir_path}: {len(summary['node_types'])} node types, {summary['neurons']:,} neurons, "
                  f"{summary['synapses']:,} synapses", highlight=False)
    console.print(f"{onnx_path}: one time step, neuron states as inputs and outputs", highlight=False)
    if chain is not None:
        console.print(f"{net_path}: Loihi 2 fixed point, lava-dl netx; " + describe_chain(chain)[0], highlight=False)
        for line in describe_chain(chain)[1:]:
            console.print("  " + line, highlight=False)

    console.rule("3/3 verify: every target, one time step at a time")
    import torch

    targets = ["torch"] + (["torch-cuda"] if torch.cuda.is_available() else []) + \
        ["norse", "onnxruntime", "onnxruntime-unrolled"] + (["lava"] if lava else [])
    report, plots = _run_verify(out / "model.pt", targets, samples, out / "plots", lava_synapses)
    console.print(_verify_table(report))
    _print_lava_note(report)
    files = ["model.pt", "metrics.json", "model.nir", "model.onnx"] + (["model.net"] if lava else [])
    console.print(f"Files in {out}/: " + ", ".join(files + [f"plots/{p.name}" for p in plots]), highlight=False)
    if not report.ok:
        fail("a target disagrees with its reference; see the table above.", 1)
    console.print("[green]Every target reproduces the training model" + (" (Lava: bit for bit its fixed-point "
                  "quantisation)" if lava else "") + ".[/green]")


if __name__ == "__main__":
    app()
