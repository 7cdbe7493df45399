"""``revsnn export FORMAT CKPT --out FILE``: write a trained model as a deployable file."""

from __future__ import annotations

from pathlib import Path

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
    opset: int = typer.Option(17, help="ONNX opset."),
) -> None:
    """Write the graph as a one-step ONNX model: x_t and every neuron state in, y_t and the new states out (float32, dynamic batch; zero initial states)."""
    from revsnn.checkpoint import CheckpointError, load_model
    from revsnn.exporters.collapse import CollapseError, collapse
    from revsnn.exporters.onnx_file import ONNXFileError, write_onnx

    if out.suffix != ".onnx":
        fail(f"--out must name a .onnx file, got {out}.")
    if not 13 <= opset <= 21:
        fail(f"--opset must be between 13 and 21, got {opset}.")
    try:
        model, payload = load_model(checkpoint)
        time_steps = int(payload.get("train", {}).get("time_steps", model.config.get("train", {}).get("time_steps", 4)))
        write_onnx(collapse(model, time_steps).graph, out, opset=opset)
    except (CheckpointError, CollapseError, ONNXFileError) as exc:
        fail(str(exc))
    console.print(f"Wrote {out}: one time step with its neuron states as inputs and outputs; run it T = "
                  f"{time_steps} times from zero states.", highlight=False)
