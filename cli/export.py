"""``revsnn export FORMAT CKPT --out FILE``: write a trained model as a deployable file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from revsnn.cli.common import console, fail

export_app = typer.Typer(help="Export a checkpoint: collapse its reversible blocks into a feedforward spiking "
                              "graph and write it (NIR, ONNX).", no_args_is_help=True)


def export_nir_file(checkpoint: Path, out: Path) -> dict:
    """Collapse ``checkpoint`` and write it to ``out``; returns the graph summary. Raises on bad input."""
    from revsnn.checkpoint import load_model
    from revsnn.exporters.collapse import collapse
    from revsnn.exporters.nir_file import summarize, write_nir

    model, payload = load_model(checkpoint)
    time_steps = int(payload.get("train", {}).get("time_steps", model.config.get("train", {}).get("time_steps", 4)))
    collapsed = collapse(model, time_steps)
    write_nir(collapsed.graph, out)
    return summarize(collapsed.graph)


@export_app.command("nir")
def nir_command(
    checkpoint: Path = typer.Argument(..., help="model.pt written by `revsnn train`."),
    out: Path = typer.Option(..., "--out", help="The .nir file to write."),
) -> None:
    """Write the collapsed spiking graph as NIR (nir.write; dt = 1, reset mode and version in metadata)."""
    from revsnn.checkpoint import CheckpointError
    from revsnn.exporters.collapse import CollapseError
    from revsnn.exporters.nir_file import NIRFileError

    if out.suffix != ".nir":
        fail(f"--out must name a .nir file, got {out}.")
    try:
        summary = export_nir_file(checkpoint, out)
    except (CheckpointError, CollapseError, NIRFileError) as exc:
        fail(str(exc))
    counts = ", ".join(f"{n} {k}" for k, n in sorted(summary["node_types"].items()))
    console.print(f"Wrote {out}: {counts}; {summary['neurons']:,} neurons, {summary['synapses']:,} synapses.",
                  highlight=False)


@export_app.command("onnx")
def onnx_command(
    checkpoint: Path = typer.Argument(..., help="model.pt written by `revsnn train`."),
    out: Path = typer.Option(..., "--out", help="The .onnx file to write."),
    mode: str = typer.Option("step", help="step: one time step, states in and out (streaming); unrolled: a "
                                          "fixed-T graph from [T, B, ...] to the logits, for one call."),
    time_steps: Optional[int] = typer.Option(None, "--time-steps", help="T of the unrolled graph [default: the "
                                                                        "checkpoint's]."),
    opset: int = typer.Option(17, help="ONNX opset."),
) -> None:
    """Write the graph as ONNX (float32, dynamic batch): a one-step model with every neuron state as input and output, or an unrolled fixed-T model."""
    from revsnn.checkpoint import CheckpointError, load_model
    from revsnn.exporters.collapse import CollapseError, collapse
    from revsnn.exporters.onnx_file import ONNXFileError, write_onnx

    if out.suffix != ".onnx":
        fail(f"--out must name a .onnx file, got {out}.")
    if not 13 <= opset <= 21:
        fail(f"--opset must be between 13 and 21, got {opset}.")
    if mode not in ("step", "unrolled"):
        fail(f"--mode must be step or unrolled, got {mode!r}.")
    if time_steps is not None and (mode == "step" or time_steps < 1):
        fail("--time-steps applies to --mode unrolled and must be at least 1.")
    try:
        model, payload = load_model(checkpoint)
        trained_t = int(payload.get("train", {}).get("time_steps", model.config.get("train", {}).get("time_steps", 4)))
        T = time_steps or trained_t
        graph = collapse(model, T).graph
        if mode == "step":
            write_onnx(graph, out, opset=opset)
        else:
            write_onnx(graph, out, opset=opset, mode="unrolled", time_steps=T)
    except (CheckpointError, CollapseError, ONNXFileError) as exc:
        fail(str(exc))
    if mode == "step":
        console.print(f"Wrote {out}: one time step with its neuron states as inputs and outputs; run it T = {T} "
                      "times from zero states.", highlight=False)
    else:
        console.print(f"Wrote {out}: input x [{T}, batch, ...], outputs logits and the per-step outputs y.",
                      highlight=False)
