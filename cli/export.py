"""``revsnn export FORMAT CKPT --out FILE``: write a trained model as a deployable file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from revsnn.cli.common import console, fail

export_app = typer.Typer(help="Export a checkpoint: collapse its reversible blocks into a feedforward spiking "
                              "graph and write it (NIR, ONNX, Lava netx).", no_args_is_help=True)


def export_nir_file(checkpoint: Path, out: Path, dt: Optional[float] = None) -> dict:
    """Collapse ``checkpoint`` (or convert a ``.nir`` file from another tool to steps) and write it to ``out``;
    returns the graph summary. Raises on bad input."""
    from revsnn.exporters.nir_file import summarize, write_nir
    from revsnn.pipeline import load_source

    source = load_source(checkpoint, dt)
    write_nir(source.graph, out, fingerprint=source.fingerprint)
    return summarize(source.graph)


SOURCE_HELP = "model.pt written by `revsnn train`, or a .nir file written by any tool (see --dt)."
DT_HELP = ("For a .nir file from another tool: its time step in seconds, to turn its time constants into steps "
           "[default: the file's own metadata; snnTorch and spikingjelly assume 1e-4, norse 1e-3].")


@export_app.command("nir")
def nir_command(
    checkpoint: Path = typer.Argument(..., help=SOURCE_HELP),
    out: Path = typer.Option(..., "--out", help="The .nir file to write."),
    dt: Optional[float] = typer.Option(None, "--dt", help=DT_HELP),
) -> None:
    """Write the collapsed spiking graph as NIR (nir.write; dt = 1, reset mode and version in metadata); a foreign .nir is written back in steps."""
    if out.suffix != ".nir":
        fail(f"--out must name a .nir file, got {out}.")
    summary = export_nir_file(checkpoint, out, dt)
    counts = ", ".join(f"{n} {k}" for k, n in sorted(summary["node_types"].items()))
    console.print(f"Wrote {out}: {counts}; {summary['neurons']:,} neurons, {summary['synapses']:,} synapses.",
                  highlight=False)


@export_app.command("onnx")
def onnx_command(
    checkpoint: Path = typer.Argument(..., help=SOURCE_HELP),
    out: Path = typer.Option(..., "--out", help="The .onnx file to write."),
    mode: str = typer.Option("step", help="step: one time step, states in and out (streaming); unrolled: a "
                                          "fixed-T graph from [T, B, ...] to the logits, for one call."),
    time_steps: Optional[int] = typer.Option(None, "--time-steps", help="T of the unrolled graph [default: the "
                                                                        "checkpoint's]."),
    opset: int = typer.Option(17, help="ONNX opset."),
    dt: Optional[float] = typer.Option(None, "--dt", help=DT_HELP),
) -> None:
    """Write the graph as ONNX (float32, dynamic batch): a one-step model with every neuron state as input and output, or an unrolled fixed-T model."""
    from revsnn.exporters.onnx_file import write_onnx
    from revsnn.pipeline import load_source

    if out.suffix != ".onnx":
        fail(f"--out must name a .onnx file, got {out}.")
    if not 13 <= opset <= 21:
        fail(f"--opset must be between 13 and 21, got {opset}.")
    if mode not in ("step", "unrolled"):
        fail(f"--mode must be step or unrolled, got {mode!r}.")
    if time_steps is not None and (mode == "step" or time_steps < 1):
        fail("--time-steps applies to --mode unrolled and must be at least 1.")
    source = load_source(checkpoint, dt, time_steps)
    if source.time_steps is None and mode == "unrolled":
        fail("an unrolled ONNX model of a .nir graph needs its T: give --time-steps.")
    T, graph, fingerprint = source.time_steps, source.graph, source.fingerprint
    if mode == "step":
        write_onnx(graph, out, opset=opset, fingerprint=fingerprint)
    else:
        write_onnx(graph, out, opset=opset, mode="unrolled", time_steps=T, fingerprint=fingerprint)
    if mode == "step":
        console.print(f"Wrote {out}: one time step with its neuron states as inputs and outputs; run it "
                      f"{'T = ' + str(T) + ' times' if T else 'once per time step'} from zero states.",
                      highlight=False)
    else:
        console.print(f"Wrote {out}: input x [{T}, batch, ...], outputs logits and the per-step outputs y.",
                      highlight=False)


def export_lava_file(checkpoint: Path, out: Path, synapses: str = "conv", dt: Optional[float] = None):
    """Quantise ``checkpoint`` (or a ``.nir`` file from any tool) for Loihi 2, relay it into a netx chain and
    write ``out``; returns the chain and the quantised populations. Raises on bad input
    (``revsnn.pipeline.export_lava``)."""
    from revsnn.pipeline import export_lava

    return export_lava(checkpoint, out, synapses, dt)


@export_app.command("lava")
def lava_command(
    checkpoint: Path = typer.Argument(..., help="model.pt written by `revsnn train` (with --encoding rate), or a "
                                     ".nir file written by any tool (see --dt)."),
    out: Path = typer.Option(..., "--out", help="The .net file (lava-dl netx HDF5) to write."),
    synapses: str = typer.Option("conv", help="conv: convolution layers while the chain allows (compact on "
                                              "Loihi); dense: every layer dense (faster in Lava's CPU "
                                              "simulation for small feature maps, much larger on chip)."),
    dt: Optional[float] = typer.Option(None, "--dt", help=DT_HELP),
) -> None:
    """Write a Loihi 2 network for lava-dl's netx: the model quantised onto Loihi's fixed-point grid and, where it has skip or reversible connections, relayed into a latency-aligned chain."""
    from revsnn.exporters.netx_file import describe_chain

    if out.suffix != ".net":
        fail(f"--out must name a .net file, got {out}.")
    if synapses not in ("conv", "dense"):
        fail(f"--synapses must be conv or dense, got {synapses!r}.")
    chain, _ = export_lava_file(checkpoint, out, synapses, dt)
    console.print(f"Wrote {out}: a netx chain for Lava / Loihi 2 (fixed point).", highlight=False)
    for line in describe_chain(chain):
        console.print("  " + line, highlight=False)
