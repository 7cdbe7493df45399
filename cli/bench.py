"""``revsnn bench ...``: benchmarks that print tables and write numbers (never test assertions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from revsnn.cli.common import console, fail, parse_ints, parse_list

bench_app = typer.Typer(help="Benchmarks: activation memory against depth, training-step speed, inference and Lava speed, "
                        "mixed precision, several processes.",
                        no_args_is_help=True)


def _check_device(device: str) -> None:
    import torch

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        fail(f"--device must be cpu or cuda, got {device!r}.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        fail("--device cuda was asked for, but this machine has no CUDA device; use --device cpu.")


def _check_models(names: list[str]) -> None:
    from revsnn.models import all_configs

    known = all_configs()
    for name in names:
        if name not in known:
            fail(f"Unknown model {name!r}; `revsnn models` lists the known names.")


def _check_plot_path(plot: Optional[Path]) -> None:
    if plot is not None:
        if plot.suffix.lower() != ".png":
            fail(f"--plot must name a .png file, got {plot}.")
        if not plot.parent.is_dir():
            fail(f"--plot {plot}: the directory {plot.parent} does not exist.")
        from revsnn.fileio import check_writable_dir

        check_writable_dir(plot.parent, "--plot")  # before the measurement, not after it


@bench_app.command("memory")
def memory(
    models: Optional[str] = typer.Option(None, help="Comma-separated models [default: the digits models swept "
                                                     "in depth, plus revsresnet37 and revsformer-4-384]."),
    depths: str = typer.Option("1,2,4,8", help="Depth scales of the *-digits models: blocks per stage "
                                               "(ResNets), blocks (RevSFormer), blocks per level (T-RevSNN), "
                                               "hidden layers (reversible node); paper configs are measured "
                                               "as named."),
    time_steps: int = typer.Option(4, "--time-steps", help="Time steps T."),
    batch_size: int = typer.Option(2, "--batch-size", help="Batch size B; memory per sample is the slope "
                                                           "between B and 2B."),
    device: str = typer.Option("cpu", help="cpu (the profiler's allocator events) or cuda (memory_allocated and "
                                           "max_memory_allocated)."),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as JSON instead of a table."),
    plot: Optional[Path] = typer.Option(None, help="Also draw memory against depth into this PNG file."),
) -> None:
    """Memory per sample of a training step, by the allocator (retained when backward starts, and the peak), for each model: reversible, reversible with recomputed boundaries, the same with a chunked backward (ResNets), plain twin, and the twin under torch.utils.checkpoint."""
    from revsnn.bench import DEFAULT_MEMORY_SWEEP, memory_rows

    _check_device(device)
    _check_plot_path(plot)
    if time_steps < 1 or batch_size < 1:
        fail("--time-steps and --batch-size must be at least 1.")
    scales = parse_ints(depths, "--depths")
    if models is None:
        sweep = [(name, scales if s else None) for name, s in DEFAULT_MEMORY_SWEEP]
    else:
        names = parse_list(models, "--models")
        _check_models(names)
        sweep = [(name, scales if name.endswith("-digits") else None) for name in names]
    from revsnn.limits import check_bench_memory

    check_bench_memory(sweep, time_steps, batch_size, device)  # a LimitError (one sentence) before measuring

    rows = []
    with console.status("measuring ...") as status:
        def on_row(row):
            rows.append(row)
            status.update(f"measured {row['model']} depth {row['depth']} {row['variant']}")

        memory_rows(sweep, time_steps, batch_size, device=device, on_row=on_row)
    if json_out:
        print(json.dumps(rows, indent=2))
    else:
        _memory_table(rows)
    if plot is not None:
        _memory_plot(rows, plot)
        if not json_out:
            console.print(f"Wrote {plot}.")


def _memory_table(rows: list[dict]) -> None:
    plain = {(r["model"], r["depth"]): r for r in rows if r["variant"] == "plain"}
    b1, b2 = rows[0]["batch_sizes"]
    table = Table(title=f"Memory per sample of a training step (allocator: {rows[0]['method']}; slope of batch "
                        f"{b1} -> {b2}; T = {rows[0]['time_steps']}), KiB", header_style="bold")
    for col in ("model", "depth", "variant", "retained", "peak", "plain / this retained", "plain / this peak",
                "saved", "neuron state", "transient", f"step peak at B = {b1}, {b2}"):
        table.add_column(col, justify="left" if col in ("model", "variant") else "right",
                         no_wrap=col in ("model", "variant"))

    def ratio(r, key):
        p = plain.get((r["model"], r["depth"]))
        return f"{p[key] / r[key]:.2f}x" if p is not None and r[key] > 0 else "-"

    for r in rows:
        table.add_row(r["model"], str(r["depth"]), r["variant"], f"{r['retained_per_sample'] / 1024:,.1f}",
                      f"{r['peak_per_sample'] / 1024:,.1f}", ratio(r, "retained_per_sample"),
                      ratio(r, "peak_per_sample"), f"{r['saved_per_sample'] / 1024:,.1f}",
                      f"{r['neuron_state_per_sample'] / 1024:,.1f}", f"{r['transient_per_sample'] / 1024:,.1f}",
                      " / ".join(f"{p / 1024:,.0f}" for p in r["peak_at_batch_sizes"]))
    console.print(table)
    console.print("retained: alive when backward starts; peak: the most alive during forward + backward; saved, "
                  "neuron state: the saved-tensor meter's breakdown of retained; transient: peak - retained; step "
                  "peak: the whole step's peak at each batch size (KiB, weight gradients and a chunked backward's "
                  "working set included, which the per-sample slope leaves out).")


def _memory_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from revsnn.fileio import atomic_write, png_bytes

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    styles = {"reversible": "-o", "reversible-recompute": "-s", "reversible-chunked": "-d", "plain": "--^",
              "checkpoint": ":v"}
    for ax, key, title in ((axes[0], "peak_per_sample", "peak over forward + backward"),
                           (axes[1], "retained_per_sample", "retained when backward starts")):
        series: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for r in rows:
            series.setdefault((r["model"], r["variant"]), []).append((r["depth"], r[key] / 2**20))
        for (model, variant), points in series.items():
            points.sort()
            xs, ys = zip(*points)
            ax.plot(xs, ys, styles.get(variant, "-"), label=f"{model} {variant}")
        ax.set_xlabel("depth (weight layers)")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("MiB per sample (allocator)")
    axes[1].legend(fontsize=6, ncol=1)
    fig.suptitle(f"Training-step memory against depth (T = {rows[0]['time_steps']}, {rows[0]['device']})")
    fig.tight_layout()
    atomic_write(path, png_bytes(fig, dpi=120))  # drawn in memory, then written whole
    plt.close(fig)


@bench_app.command("node-memory")
def node_memory(
    time_steps: str = typer.Option("1,4,16,64", "--time-steps", help="Comma-separated T values."),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as JSON instead of a table."),
) -> None:
    """Activation memory of one neuron node under BPTT: the reversible node (RevLIF) against its plain twin and a standard LIF, on a [T, 32, 256] float32 input."""
    from revsnn.models.revnode import node_memory_comparison

    from revsnn.limits import check_node_memory

    steps = parse_ints(time_steps, "--time-steps")
    check_node_memory(steps)
    result = node_memory_comparison(time_steps=steps)
    if json_out:
        print(json.dumps(result, indent=2))
        return
    table = Table(title="Bytes retained for backward by one node, [T, 32, 256] float32", header_style="bold")
    for col in ("T", "RevLIF", "BPTT twin", "LIF", "LIF / RevLIF", "in a network: LIF / RevLIF"):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        table.add_row(str(r["time_steps"]), f"{r['reversible_bytes']:,}", f"{r['bptt_twin_bytes']:,}",
                      f"{r['lif_bytes']:,}", f"{r['ratio_lif']:.2f}x",
                      f"{r['ratio_lif_beyond_output']:.1f}x")
    console.print(table)
    console.print("In a network the next layer keeps the node's output anyway; the last column counts only "
                  "what each node keeps beyond it.")


@bench_app.command("peers")
def peers(
    model: str = typer.Option("revsresnet-digits", "--model", help="A ResNet of the zoo (revsresnet / pararevsnn)."),
    time_steps: int = typer.Option(4, "--time-steps", help="Time steps T."),
    batch_size: int = typer.Option(8, "--batch-size", help="Batch size B of the memory measure (per sample: the "
                                                           "slope between B and 2B)."),
    step_batch_size: Optional[int] = typer.Option(None, "--step-batch-size", help="Batch size of the timed "
                                                  "training steps [default: the model's training batch size]."),
    repeats: int = typer.Option(15, help="Rounds of timed training steps, every variant once a round (time "
                                         "ratios: the median over rounds of the ratio within a round; one "
                                         "step's time varies by about 20% on a shared machine)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch intra-op threads for the run [default: "
                                                                  "torch's]; 1 on a shared machine."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON instead of a table."),
) -> None:
    """One network, trained by revsnn (reversible, recomputed boundaries, plain) and by spikingjelly (BPTT, memopt) and snnTorch (BPTT): peak and retained memory per sample and step time, as ratios to revsnn reversible (CPU)."""
    from revsnn.bench_peers import peer_rows

    _check_models([model])
    if min(time_steps, batch_size, repeats) < 1 or (step_batch_size is not None and step_batch_size < 1):
        fail("--time-steps, --batch-size, --step-batch-size and --repeats must be at least 1.")
    if threads is not None and threads < 1:
        fail(f"--threads must be at least 1, got {threads}.")
    from revsnn.bench_peers import step_batch_default
    from revsnn.limits import check_bench_memory

    step_batch = step_batch_size if step_batch_size is not None else step_batch_default(model)
    # before measuring: the memory measure's larger batch and the timed batch
    check_bench_memory([(model, None)], time_steps, max(batch_size, (step_batch + 1) // 2), command="bench peers")
    with console.status("measuring ...") as status:  # a PeerError is a RevsnnError: the app prints it
        result = peer_rows(model, time_steps, batch_size, repeats,
                           on_row=lambda r: status.update(f"measured {r['variant']}"), threads=threads,
                           step_batch_size=step_batch)
    if json_out:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"{model} (depth {result['depth']}), T = {time_steps}, CPU; memory per sample: batch "
                        f"{batch_size} -> {2 * batch_size}; step time: batch {step_batch}, median of "
                        f"{repeats}; ratios to revsnn reversible", header_style="bold")
    # Step CPU time only (wall time is in --json and in the lines below): with the wall columns the table
    # needed 100 columns, and at 80 (a pipe, a small terminal) rich cut every number to an ellipsis.
    # Headers may wrap onto two lines, numbers never (each column is at least as wide as its longest one).
    cells = [[f"{r['peak_per_sample'] / 1024:,.1f}", f"{r['retained_per_sample'] / 1024:,.1f}",
              f"{1e3 * r['step_cpu_seconds']:.1f}", f"{r['peak_ratio']:.2f}", f"{r['retained_ratio']:.2f}",
              f"{r['step_cpu_ratio']:.2f}"] for r in result["rows"]]
    table.add_column("variant", justify="left", overflow="fold")
    for i, col in enumerate(("peak KiB", "retained KiB", "step CPU ms", "peak x", "retained x", "CPU x")):
        width = max(len(c[i]) for c in cells)
        table.add_column(col, justify="right", min_width=width, max_width=max(8, width))
    for r, row in zip(result["rows"], cells):
        table.add_row(r["variant"], *row)
    console.print(table)
    for pair, r in result["versus_peers"].items():
        console.print(f"{pair}: peak {r['peak']:.2f}x, retained {r['retained']:.2f}x, step time "
                      f"{r['step_time']:.2f}x (CPU time {r['step_cpu_time']:.2f}x; ratio of the medians "
                      f"{r['step_time_of_medians']:.2f}x)", highlight=False)
    console.print(f"{result['threads']} thread(s), load average {result['load_average']:.1f} while measuring.",
                  highlight=False)
    for name, why in result["missing"].items():
        console.print(f"{name}: {why}.", highlight=False)


def _parse_pairs(text: str) -> list[tuple[str, str, str, str]]:
    from revsnn.bench import variant_family, variants_of
    from revsnn.models import all_configs

    known = all_configs()
    pairs = []
    for item in parse_list(text, "--pairs"):
        sides = item.split("/")
        parts = [side.split(":") for side in sides]
        if len(sides) != 2 or any(len(p) != 2 for p in parts):
            fail(f"--pairs needs MODEL:VARIANT/MODEL:VARIANT items, got {item!r}.")
        for name, variant in parts:
            if name not in known:
                fail(f"Unknown model {name!r} in --pairs; `revsnn models` lists the known names.")
            if variant_family(variant) not in variants_of(known[name]["family"]):
                fail(f"{name} has no variant {variant!r} (--pairs); it has "
                     f"{', '.join(variants_of(known[name]['family']))} (reversible-chunked-N: N samples a chunk).")
        (a, va), (b, vb) = parts
        pairs.append((a, va, b, vb))
    return pairs


@bench_app.command("train-speed")
def train_speed(
    batch_size: int = typer.Option(64, "--batch-size", help="Batch size."),
    time_steps: int = typer.Option(4, "--time-steps", help="Time steps T."),
    repeats: int = typer.Option(5, help="Timed training steps per model (median reported)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch intra-op threads for the run [default: "
                                                                  "torch's]; 1 on a shared machine."),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as JSON instead of a table."),
    pair_spec: Optional[str] = typer.Option(None, "--pairs", help="Comma-separated pairs to time instead, each "
                                            "MODEL:VARIANT/MODEL:VARIANT with the variants of `bench memory` "
                                            "(and reversible-chunked-N, N samples a chunk), e.g. "
                                            "revsresnet37:reversible-chunked-4/revsresnet37:reversible-recompute."),
) -> None:
    """Time one training step of reversible against plain, and ParaRev against Rev, in the same run."""
    from revsnn.bench import speed_rows

    _check_device(device)
    if min(batch_size, time_steps, repeats) < 1:
        fail("--batch-size, --time-steps and --repeats must be at least 1.")
    if threads is not None and threads < 1:
        fail(f"--threads must be at least 1, got {threads}.")
    pairs = [
        ("revsresnet-digits", "reversible", "revsresnet-digits", "plain"),
        ("pararevsnn-digits", "reversible", "pararevsnn-digits", "plain"),
        ("pararevsnn-digits", "reversible", "revsresnet-digits", "reversible"),
        ("revsformer-digits", "reversible", "revsformer-digits", "plain"),
    ] if pair_spec is None else _parse_pairs(pair_spec)
    from revsnn.limits import check_bench_memory

    # a training step at batch B (the estimate is for 2B, hence the half)
    check_bench_memory([(name, None) for name in sorted({p[0] for p in pairs} | {p[2] for p in pairs})], time_steps,
                       max(1, batch_size // 2), device, command="bench train-speed")
    rows = []
    with console.status("timing ...") as status:
        def on_row(row):
            rows.append(row)
            status.update(f"timed {row['a']} against {row['b']}")

        speed_rows(pairs, batch_size, time_steps, repeats, device, on_row=on_row, threads=threads)
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"Training step, median of {repeats} (batch {batch_size}, T = {time_steps}, {device})",
                  header_style="bold")
    cpu = device == "cpu"
    for col in ("A", "B", "A (ms)", "B (ms)", "A / B") + (("A / B, CPU time",) if cpu else ()):
        table.add_column(col, justify="left" if col in ("A", "B") else "right", no_wrap=col not in ("A", "B"))
    for r in rows:
        table.add_row(r["a"], r["b"], f"{1e3 * r['median_a_s']:.1f}", f"{1e3 * r['median_b_s']:.1f}",
                      f"{r['ratio']:.2f}", *((f"{r['cpu_ratio']:.2f}",) if cpu else ()))
    console.print(table)
    if rows:
        console.print(f"{rows[0]['threads']} thread(s), load average {rows[-1]['load_average']:.1f} while measuring.",
                      highlight=False)


@bench_app.command("infer")
def infer(
    model: str = typer.Option("revsresnet-digits", "--model", help="Model to time (random weights), see "
                                                                   "`revsnn models`."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Time a trained model.pt instead."),
    batch_size: int = typer.Option(64, "--batch-size", help="Batch size of the throughput measurement."),
    repeats: int = typer.Option(7, help="Repetitions; the median is reported."),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as JSON instead of a table."),
) -> None:
    """Inference speed, step by step: the torch reference executor against onnxruntime on the same graph (float32), per-step latency at batch 1 and throughput at a large batch."""
    from revsnn.bench_infer import infer_rows

    if min(batch_size, repeats) < 1:
        fail("--batch-size and --repeats must be at least 1.")
    if checkpoint is None:
        _check_models([model])
    with console.status("timing torch and onnxruntime ..."):
        rows = infer_rows(model, checkpoint, batch_size, repeats)
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"Inference, {rows[0]['model']}, T = {rows[0]['time_steps']}, median of {repeats} (float32, CPU)",
                  header_style="bold")
    for col in ("measure", "torch", "onnxruntime", "onnxruntime speed"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    for r in rows:
        unit = r["unit"]
        fmt = (lambda v: f"{v:.3f} {unit}") if unit == "ms" else (lambda v: f"{v:,.0f} {unit}")
        table.add_row(r["measure"], fmt(r["torch"]), fmt(r["onnxruntime"]), f"{r['onnxruntime_speedup']:.2f}x faster"
                      if r["onnxruntime_speedup"] >= 1 else f"{1 / r['onnxruntime_speedup']:.2f}x slower")
    console.print(table)


@bench_app.command("lava")
def lava(
    file: Path = typer.Argument(..., help="A .net file written by `revsnn export lava`."),
    samples: int = typer.Option(16, help="Rate-coded test digits to stream through the network (random spikes at "
                                         "10% of the steps for a network of another input shape)."),
    time_steps: int = typer.Option(4, "--time-steps", help="Steps per sample."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Lava's fixed-point simulation speed for a .net file: build, wall seconds per simulated step, stop (no spike recording)."""
    import torch

    from revsnn.data import encode, load_digits

    if samples < 1 or time_steps < 1:
        fail("--samples and --time-steps must be at least 1.")
    from revsnn.targets.lava import LavaTarget

    target = LavaTarget.load(file)
    shape = tuple(target.chain.input_shape)  # (C, H, W), or (N,) when the first layer is dense
    from revsnn.limits import check_lava_bench

    digits = shape in ((1, 8, 8), (64,))
    check_lava_bench(samples, time_steps, shape, len(load_digits().y_test) if digits else None)
    if digits:
        data = load_digits()
        x = encode(data.x_test[:samples], time_steps, "rate", torch.Generator().manual_seed(0))
    else:  # a network for other data (event frames, CIFAR): random spikes at 10% of the steps
        x = torch.bernoulli(torch.full((time_steps, samples, *shape), 0.1), generator=torch.Generator().manual_seed(0))
    with console.status(f"running {samples} samples x {time_steps} steps in Lava ..."):
        target.run(x.double())
    t = target.timing
    o = target.chain.overhead()
    result = {"file": str(file), "layers": target.chain.depth, "neurons": o["neurons"] + o["relay_neurons"],
              "steps": t["steps"], "build_seconds": t["build"], "compile_seconds": t["compile"], "run_seconds": t["run"],
              "seconds_per_step": t["seconds_per_step"], "stop_seconds": t["stop"]}
    if json_out:
        print(json.dumps(result, indent=2))
        return
    console.print(f"{file}: {result['layers']} layers, {result['neurons']:,} neurons (relays included); "
                  f"{t['steps']} steps ({samples} samples x {time_steps} + {result['layers']} of latency).",
                  highlight=False)
    console.print(f"netx build {t['build']:.2f} s, Lava compile and first step {t['compile']:.2f} s; then "
                  f"{t['seconds_per_step'] * 1e3:.1f} ms per simulated step; stop {t['stop']:.2f} s.", highlight=False)


@bench_app.command("cifar-digits")
def cifar_digits(
    model: str = typer.Option("revsresnet-digits", "--model", help="Model to train twice (see `revsnn models`)."),
    out: Path = typer.Option(Path("runs/cifar-digits"), "--out", help="Folder for the CIFAR files and both runs."),
    epochs: Optional[int] = typer.Option(None, help="Epochs of each run [default: the model's]."),
    time_steps: Optional[int] = typer.Option(None, "--time-steps", help="Time steps T [default: the model's]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size [default: the model's]."),
    augment: bool = typer.Option(False, "--augment/--no-augment", help="CIFAR augmentation in the CIFAR run."),
    seed: int = typer.Option(0, help="Seed of both runs."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """The CIFAR pipeline against the digits: the digits upsampled to 3x32x32 and written as official CIFAR-10 batches, then the same model trained on them (`--data cifar10`) and on the digits directly."""
    from revsnn.cifar_digits import compare_cifar_digits
    from revsnn.cli.main import _ProgressReporter
    from revsnn.train import TrainError

    if not out.parent.is_dir():
        fail(f"--out {out}: its parent directory {out.parent} does not exist; create it first.")
    reporter = _ProgressReporter()
    try:
        r = compare_cifar_digits(model, out, epochs, seed, reporter, time_steps=time_steps, batch_size=batch_size,
                                 augment=augment or None)
    except TrainError as exc:
        fail(str(exc))
    finally:
        reporter.progress.stop()
    if json_out:
        print(json.dumps(r, indent=2))
        return
    table = Table(title=f"{model}: digits directly against the digits as CIFAR-10 files ({r['epochs']} epochs)",
                  header_style="bold")
    for col in ("data", "input", "test accuracy", "training s"):
        table.add_column(col, justify="left" if col in ("data", "input") else "right")
    table.add_row("digits", "1x8x8", f"{r['digits_accuracy']:.1%}", f"{r['digits_seconds']:.0f}")
    table.add_row("cifar10 (digits)", "3x32x32", f"{r['cifar_accuracy']:.1%}", f"{r['cifar_seconds']:.0f}")
    console.print(table)


def _sci(v) -> str:
    return "n/a" if v is None else f"{v:.1e}"


@bench_app.command("precision")
def precision(
    models: Optional[str] = typer.Option(None, help="Comma-separated models [default: every family's digits model]."),
    precision_: str = typer.Option("bf16", "--precision", help="bf16 or fp16 (autocast on the CPU)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Test digits in the batch."),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as JSON instead of a table."),
) -> None:
    """Mixed precision against float32, per family: the error of what reversal reconstructs, and of the gradient (beside the plain twin's under the same autocast)."""
    from revsnn.bench_dist import PRECISION_MODELS, precision_rows

    if precision_ not in ("bf16", "fp16"):
        fail(f"--precision must be bf16 or fp16, got {precision_!r}.")
    if batch_size < 1:
        fail("--batch-size must be at least 1.")
    names = parse_list(models, "--models") if models else list(PRECISION_MODELS)
    _check_models(names)
    with console.status("measuring ...") as status:
        rows = precision_rows(names, precision_, batch_size,
                              on_row=lambda r: status.update(f"measured {r['model']}"))
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{precision_} autocast against float32 (CPU, {batch_size} test digits, relative L2 errors)",
                  header_style="bold")
    for col in ("model", "reconstruction", "rec. fp32", f"rec. {precision_} streams", "gradient", "plain twin",
                "cosine", "reversal vs twin"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for r in rows:
        table.add_row(r["model"], _sci(r["reconstruction_error"]), _sci(r["reconstruction_error_fp32"]),
                      _sci(r["reconstruction_error_half_streams"]), _sci(r["gradient_error"]),
                      _sci(r["gradient_error_plain_twin"]), f"{r['gradient_cosine']:.3f}",
                      _sci(r["reversal_gradient_error"]))
    console.print(table)
    console.print(f"reconstruction: the inputs reversal rebuilds (float32 streams, the policy); rec. {precision_} "
                  "streams: the same with the coupling halves in half precision; gradient / plain twin: the "
                  "reversible model's and its plain twin's gradient under autocast against the float32 twin's; "
                  "reversal vs twin: the reversible gradient against the twin's, both under autocast.")


@bench_app.command("distributed")
def distributed(
    model: str = typer.Option("revsresnet-digits", "--model", help="Model to train (random data)."),
    processes: str = typer.Option("1,2", "--processes", help="Comma-separated process counts, timed one after another."),
    batch_size: int = typer.Option(64, "--batch-size", help="Global batch, split among the processes."),
    steps: int = typer.Option(10, help="Timed training steps."),
    depths: str = typer.Option("1,2,4", help="Depth scales for the per-rank memory (as `bench memory`)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Intra-op threads of every process [default: the "
                                          "cores shared out among the processes]."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON instead of tables."),
) -> None:
    """DDP on this machine: samples per second with 1 and N processes (gloo, CPU) in one run, and each rank's activation memory per sample against depth."""
    from revsnn.bench_dist import distributed_rows

    counts = parse_ints(processes, "--processes")
    depth_list = parse_ints(depths, "--depths")
    _check_models([model])
    if threads is not None and threads < 1:
        fail(f"--threads must be at least 1, got {threads}.")
    if steps < 1 or any(batch_size < n for n in counts):
        fail("--steps must be at least 1 and --batch-size at least the largest process count.")
    with console.status("timing with " + ", ".join(map(str, counts)) + " processes ..."):
        result = distributed_rows(model, counts, batch_size, steps=steps, depths=depth_list, threads=threads)
    if json_out:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"{model}: {steps} training steps of a global batch of {batch_size} "
                        f"({result['cpu_count']} CPU cores, gloo)", header_style="bold")
    for col in ("processes", "threads each", "samples / s", "speed-up"):
        table.add_column(col, justify="right")
    for r in result["runs"]:
        table.add_row(str(r["processes"]), str(r["threads_per_process"]), f"{r['samples_per_second']:.1f}",
                      f"{r['speedup']:.2f}")
    console.print(table)
    mem = Table(title="Activation memory per sample of each rank (allocator; retained when backward starts / peak)",
                header_style="bold")
    mem.add_column("processes", justify="right")
    mem.add_column("depth", justify="right")
    mem.add_column("rank", justify="right")
    mem.add_column("retained (bytes)", justify="right")
    mem.add_column("peak (bytes)", justify="right")
    for r in result["runs"]:
        for rank, rows in enumerate(r["memory"]):
            for m in rows:
                mem.add_row(str(r["processes"]), str(m["depth"]), str(rank), f"{m['retained_per_sample']:,.0f}",
                            f"{m['peak_per_sample']:,.0f}")
    console.print(mem)
