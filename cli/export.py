"""``revsnn export FORMAT CKPT --out FILE``: write a trained model as a deployable file."""

from __future__ import annotations

from pathlib import Path

import typer

from revsnn.cli.common import console, fail

export_app = typer.Typer(help="Export a checkpoint: collapse its reversible blocks into a feedforward spiking "
                              "graph and write it (NIR).", no_args_is_help=True)


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
