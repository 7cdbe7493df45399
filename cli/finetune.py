"""``revsnn finetune CKPT --for loihi --epochs N --out DIR``: adapt a float checkpoint to Loihi 2's fixed point."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from revsnn.cli.common import console


def finetune_command(
    checkpoint: Path = typer.Argument(..., help="model.pt written by `revsnn train` (rate-coded or event input)."),
    target: str = typer.Option("loihi", "--for", help="The hardware whose arithmetic the forward follows: loihi."),
    epochs: int = typer.Option(3, "--epochs", help="Epochs of fine-tuning."),
    out: Path = typer.Option(..., "--out", help="Directory for the fine-tuned model.pt and metrics.json."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate [default: the checkpoint's / 30]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size [default: the checkpoint's]."),
    seed: int = typer.Option(0, "--seed", help="Seed of data order and rate coding."),
    # Defaults None, filled by revsnn.finetune's DISTILL, TEMPERATURE, VAL_FRACTION (importing it here would load
    # torch for --help; the help repeats their values).
    distill: Optional[float] = typer.Option(None, "--distill", help="Weight of the float checkpoint's softened "
                                            "logits (knowledge distillation) against the labels; 0: labels only "
                                            "[default: 0.9]."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Softening of the logits in the "
                                                "distillation term [default: 4]."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Part of the training split held out "
                                                 "(seeded) to choose the epoch written, the start counting as epoch "
                                                 "0; 0: the last epoch [default: 0.2]."),
) -> None:
    """Fine-tune a float checkpoint with the forward Loihi 2 runs: the weights, biases and thresholds on the integer grid with the exporter's own per-layer scales, decays in 1/4096, 24-bit state, BatchNorm folded; gradients go straight through the rounding.

    Writes DIR/model.pt and DIR/metrics.json as `train` does; prints test accuracy (float and quantised) and how often the quantised network (what Lava runs, bit for bit) agrees with the float model, before and after.
    """
    from revsnn.cli.main import _ProgressReporter
    from revsnn.finetune import finetune

    reporter = _ProgressReporter()
    try:
        metrics = finetune(checkpoint, target, epochs, out, lr=lr, batch_size=batch_size, seed=seed, reporter=reporter,
                           **{k: v for k, v in (("distill", distill), ("temperature", temperature),
                                                ("val_fraction", val_fraction)) if v is not None})
    finally:
        reporter.progress.stop()
    loihi = metrics["loihi"]
    table = Table(title=f"{metrics['model']}: Loihi-aware fine-tuning, {loihi['after']['samples']} test samples")
    # Short labels that do not wrap: the row names fit an 80-column terminal beside the four figures.
    table.add_column("", justify="left", no_wrap=True)
    for col in ("accuracy float", "accuracy quantised", "prediction agreement", "spike agreement"):
        table.add_column(col, justify="right")
    chosen = metrics.get("selection")
    after = f"after {metrics['epochs']} epochs" if chosen is None else \
        f"kept: epoch {chosen['epoch']}/{metrics['epochs']}"
    for label, key in (("float checkpoint", "before"), (after, "after")):
        r = loihi[key]
        table.add_row(label, f"{r['float_accuracy']:.1%}", f"{r['quantized_accuracy']:.1%}",
                      f"{r['prediction_agreement']:.1%}", f"{(r['spike_agreement'] or 0.0):.2%}")
    console.print(table)
    if chosen is not None:   # revsnn.train.hold_out: chosen on held-out training digits, never the test split
        console.print(f"model.pt is epoch {chosen['epoch']}" + (" (the start on the grid)" if chosen["epoch"] == 0 else "")
                      + f": the best of epochs 0-{metrics['epochs']} on {chosen['validation_samples']} held-out training "
                      f"samples (validation accuracy {chosen['val_accuracy']:.1%}, loss {chosen['val_loss']:.3f}).",
                      highlight=False)
    grid = (metrics["history"][-1] if metrics.get("history") else {}).get("grid")
    if grid:   # revsnn.finetune.snap_to_grid: the checkpoint's float weights are the deployed integers / scale
        console.print("model.pt holds the dequantised grid values" + (
            ": its float forward is the fixed-point network Lava runs" if grid["exact"] else
            f" only in part ({grid['weight_conflicts']} weights on conflicting grids, {grid['bias_misses']} biases "
            f"missed, residual {grid['residual']:.3g})") + ("" if grid["same_network"] else
            "; snapping moved a layer's vThMant, so that layer's integers are re-rounded on its new grid") + ".",
            highlight=False)
    console.print(f"Wrote {out / 'model.pt'} and {out / 'metrics.json'}; export it with `revsnn export lava`.",
                  highlight=False)
