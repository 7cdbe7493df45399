"""``revsnn report CKPT --out DIR`` and the Loihi resources table that ``revsnn info model.net`` prints."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from revsnn.cli.common import console, fail, parse_ints, parse_list


def resources_table(chain) -> Table:
    """Loihi 2 resources of a chain, per layer and in total (``exporters/loihi_resources.py``)."""
    from revsnn.exporters.loihi_resources import resources

    r = resources(chain)
    table = Table(title=f"Loihi 2 resources: {r.cores} neuro-cores, {r.chips} chip(s)", header_style="bold")
    for col in ("layer", "neurons", "relays", "synapses", "relay syn.", "bits", "syn. bytes", "fan-in", "fan-out",
                "cores"):
        table.add_column(col, justify="right", no_wrap=True)
    for layer in r.layers:
        table.add_row(f"{layer.index}{' (readout)' if layer.readout else ''}", f"{layer.neurons:,}",
                      f"{layer.relay_neurons:,}", f"{layer.synapses:,}", f"{layer.relay_synapses:,}",
                      str(layer.weight_bits), f"{layer.synaptic_bytes:,}", f"{layer.fan_in_max:,}",
                      f"{layer.fan_out_max:,}", str(layer.cores))
    table.add_row("total", f"{r.total('neurons'):,}", f"{r.total('relay_neurons'):,}", f"{r.total('synapses'):,}",
                  f"{r.total('relay_synapses'):,}", "", f"{r.total('synaptic_bytes'):,}", "", "", str(r.cores))
    table.caption = (f"per core ≤ {r.limits['neurons_per_core']:,} neurons and ≤ {r.limits['synaptic_memory_per_core']:,} "
                     f"bytes of synapses (estimate: weights only); per chip {r.limits['neuro_cores_per_chip']} cores, "
                     f"{r.limits['neurons_per_chip']:,} neurons, {r.limits['synapses_per_chip']:,} synapses; fan-in/out: "
                     "the largest of one neuron")
    return table


def report_command(
    checkpoint: Path = typer.Argument(..., help="model.pt written by `revsnn train`."),
    out: Path = typer.Option(..., "--out", help="Directory for report.html (self-contained) and report.json."),
    samples: int = typer.Option(16, help="Test samples to run on every target."),
    targets: str = typer.Option("torch,norse,onnxruntime,lava", help="Targets to verify and count spikes on "
                                "(lava only for models Loihi can run)."),
    lava_synapses: str = typer.Option("dense", "--lava-synapses", help="Synapse form of the .net Lava runs: dense "
                                      "(fast in Lava's CPU simulation) or conv."),
    memory_depths: str = typer.Option("1,2,4", "--memory-depths", help="Depth scales (blocks per stage) of the "
                                      "memory sweep."),
) -> None:
    """One HTML page on a checkpoint: summary, verify table, memory against depth, spikes and operations per layer, Loihi 2 resources and energy per inference."""
    from revsnn.errors import RevsnnError
    from revsnn.report import write_report

    if lava_synapses not in ("conv", "dense"):
        fail(f"--lava-synapses must be conv or dense, got {lava_synapses!r}.")
    try:
        with console.status("writing the report ...") as status:
            data = write_report(checkpoint, out, samples, tuple(parse_list(targets, "--targets")), lava_synapses,
                                tuple(parse_ints(memory_depths, "--memory-depths")),
                                on_step=lambda s: status.update(s + " ..."))
    except RevsnnError as exc:
        fail(str(exc))
    costs = data["costs"]
    table = Table(title=f"{data['model']}: per inference, {costs['samples']} samples", header_style="bold")
    for col in ("run", "spikes", "SOPs", "MACs", "energy (nJ)"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for a in costs["activities"].values():
        table.add_row(a["label"], f"{a['spikes']:,.0f}", f"{a['synops']:,.0f}", f"{a['macs']:,.0f}",
                      f"{a['energy_pj'] / 1e3:,.2f}")
    console.print(table)
    res = costs["loihi_resources"]
    if res is not None:
        console.print(f"Loihi 2: {res['totals']['cores']} neuro-cores, {res['chips']} chip(s). {costs['loihi_note']}",
                      highlight=False)
    else:
        console.print(f"Loihi 2: no figures: {costs['loihi_note']}", highlight=False)
    console.print(f"Wrote {out / 'report.html'} and {out / 'report.json'}.", highlight=False)
    if not data["verify"]["ok"]:
        fail("a target disagrees with its reference; see the verify table in the report.", 1)
