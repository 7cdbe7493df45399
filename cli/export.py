"""``revsnn export FORMAT CKPT --out FILE``: write a trained model as a deployable file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from revsnn.cli.common import console, fail

export_app = typer.Typer(help="Export a checkpoint: collapse its reversible blocks into a feedforward spiking "
                              "graph and write it (NIR, ONNX, Lava netx).", no_args_is_help=True)


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


def export_lava_file(checkpoint: Path, out: Path, synapses: str = "conv"):
    """Quantise ``checkpoint`` for Loihi 2, relay it into a netx chain and write ``out``; returns the chain and
    the quantised populations. Raises on bad input."""
    from revsnn.checkpoint import load_model
    from revsnn.exporters.collapse import collapse
    from revsnn.exporters.loihi import quantize, require_spike_input
    from revsnn.exporters.loihi_chain import build_chain
    from revsnn.exporters.loihi_resources import require_fits
    from revsnn.exporters.netx_file import write_netx

    model, payload = load_model(checkpoint)
    train = payload.get("train", {})
    require_spike_input(train.get("encoding", "direct"), model.config.get("name", "this model"))
    time_steps = int(train.get("time_steps", model.config.get("train", {}).get("time_steps", 4)))
    quantized = quantize(collapse(model, time_steps).graph)
    chain = build_chain(quantized, synapses)
    require_fits(chain)   # a neuron no Loihi 2 core can hold: one sentence naming the layer and the limit
    write_netx(chain, out)
    return chain, quantized


def describe_chain(chain) -> list[str]:
    """What a user needs to know of a written chain: layers, latency, relay overhead, neuron settings."""
    o = chain.overhead()
    kinds = [layer.kind for layer in chain.layers]
    lines = [f"{len(kinds)} layers ({kinds.count('conv')} conv, {kinds.count('dense')} dense, the last the readout); "
             f"latency {chain.depth} steps (one per synapse): output step t + {chain.depth} is model step t.",
             f"neurons: {o['neurons']:,} of the model + {o['relay_neurons']:,} relays (+{o['neuron_overhead']:.0%}); "
             f"synapses: {o['synapses']:,} + {o['relay_synapses']:,} relay (+{o['synapse_overhead']:.1%})."]
    thresholds = sorted({layer.v_th_mant for layer in chain.layers if not layer.readout})
    decays = sorted({layer.v_decay for layer in chain.layers if not layer.readout})
    lines.append(f"CUBA neurons: iDecay 4096, vDecay {', '.join(map(str, decays))}, vThMant "
                 f"{', '.join(map(str, thresholds))}; readout vThMant {chain.layers[-1].v_th_mant} (never fires).")
    return lines


@export_app.command("lava")
def lava_command(
    checkpoint: Path = typer.Argument(..., help="model.pt written by `revsnn train` (with --encoding rate)."),
    out: Path = typer.Option(..., "--out", help="The .net file (lava-dl netx HDF5) to write."),
    synapses: str = typer.Option("conv", help="conv: convolution layers while the chain allows (compact on "
                                              "Loihi); dense: every layer dense (faster in Lava's CPU "
                                              "simulation for small feature maps, much larger on chip)."),
) -> None:
    """Write a Loihi 2 network for lava-dl's netx: the model quantised onto Loihi's fixed-point grid and, where it has skip or reversible connections, relayed into a latency-aligned chain."""
    from revsnn.checkpoint import CheckpointError
    from revsnn.exporters.collapse import CollapseError
    from revsnn.exporters.loihi import LoihiExportError
    from revsnn.exporters.netx_file import NetxFileError

    if out.suffix != ".net":
        fail(f"--out must name a .net file, got {out}.")
    if synapses not in ("conv", "dense"):
        fail(f"--synapses must be conv or dense, got {synapses!r}.")
    try:
        chain, _ = export_lava_file(checkpoint, out, synapses)
    except (CheckpointError, CollapseError, LoihiExportError, NetxFileError) as exc:
        fail(str(exc))
    console.print(f"Wrote {out}: a netx chain for Lava / Loihi 2 (fixed point).", highlight=False)
    for line in describe_chain(chain):
        console.print("  " + line, highlight=False)
