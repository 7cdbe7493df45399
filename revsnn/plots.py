"""Pictures of results: one spike raster per target of a verify report (sample 0, the output populations).

Training core: it reads the report's plain tensors and knows nothing of exporters or targets.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["raster_plots"]


def _nonzero(raster):
    idx = raster.nonzero()
    return idx[:, 0].numpy(), idx[:, 1].numpy()


def raster_plots(report, folder: Path) -> list[Path]:
    """Write ``folder/raster_<target>.png`` for every target of ``report`` (a ``revsnn.verify.VerifyReport``)
    that exposes spikes: its output populations' spikes of sample 0 beside the reference executor's.
    Each file is written atomically. Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from revsnn.fileio import atomic_write, png_bytes

    paths = []
    for t in report.targets.values():
        if t.raster is None:  # a target that exposes no spikes (the unrolled ONNX model)
            continue
        fig, axes = plt.subplots(1, 2, figsize=(8, 4.5), sharey=True)
        for ax, raster, title in ((axes[0], report.reference_raster, "reference executor"),
                                  (axes[1], t.raster, t.name)):
            steps, neurons = _nonzero(raster)
            ax.scatter(steps, neurons, s=2, marker="|", color="black")
            ax.set_title(title)
            ax.set_xlabel("time step")
            ax.set_xlim(-0.5, raster.shape[0] - 0.5)
            ax.set_xticks(range(raster.shape[0]))
        axes[0].set_ylabel(f"neuron ({report.output_population})")
        fig.suptitle(f"{report.model}, sample 0: output population spikes "
                     f"({'identical' if t.output_spike_agreement == 1.0 else 'DIFFERENT'})")
        fig.tight_layout()
        path = Path(folder) / f"raster_{t.name}.png"
        atomic_write(path, png_bytes(fig, dpi=110))  # drawn in memory, then written whole
        plt.close(fig)
        paths.append(path)
    return paths
