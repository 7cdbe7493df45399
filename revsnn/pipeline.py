"""The demo pipeline: train, export every format, verify every target. What ``revsnn demo`` runs.

Besides ``revsnn/verify.py`` this is the one named place where the training core, the exporters and the
targets meet (README, "Layout"); nothing in the training core imports it. The CLI calls :func:`run_demo`
and prints what it reports through its callbacks; no logic of the pipeline lives in the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

__all__ = ["DemoResult", "run_demo", "export_lava", "demo_targets", "DEMO_LAVA_SYNAPSES"]

# The demo's Lava file is dense: Lava's CPU simulation of a convolution calls scipy once per channel pair and
# step, several times slower on these small maps (`revsnn export lava` writes conv layers by default).
DEMO_LAVA_SYNAPSES = "dense"


@dataclass
class DemoResult:
    """What the demo made, filled in stage by stage (a callback sees the stages done so far)."""
    out: Path
    model: str
    lava: bool
    metrics: dict = field(default_factory=dict)                 # the trainer's metrics.json
    nir_path: Optional[Path] = None
    onnx_path: Optional[Path] = None
    net_path: Optional[Path] = None
    nir_summary: dict = field(default_factory=dict)            # exporters.nir_file.summarize of the graph
    chain: Any = None                                          # the Loihi chain written to net_path
    report: Any = None                                         # revsnn.verify.VerifyReport
    plots: list[Path] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        """The files written, relative to ``out``."""
        names = ["model.pt", "metrics.json", "model.nir", "model.onnx"] + (["model.net"] if self.lava else [])
        return names + [f"plots/{p.name}" for p in self.plots]

    @property
    def ok(self) -> bool:
        return self.report is not None and self.report.ok


def export_lava(checkpoint: Path | str, out: Path | str, synapses: str = "conv", dt: Optional[float] = None):
    """Quantise ``checkpoint`` for Loihi 2, relay it into a netx chain and write ``out`` (with the
    checkpoint's fingerprint); returns the chain and the quantised populations. Raises a
    ``RevsnnError`` on bad input (a direct-coded model, a graph Loihi cannot express, a bad path)."""
    from revsnn.exporters.loihi import quantize, require_spike_input
    from revsnn.exporters.loihi_chain import build_chain
    from revsnn.exporters.loihi_resources import require_fits
    from revsnn.exporters.netx_file import write_netx

    source = load_source(checkpoint, dt)   # a checkpoint collapsed at its T, or a .nir in steps at dt
    if not source.foreign:                 # a foreign graph's input is the user's to make spikes
        require_spike_input(source.encoding, source.name)
    quantized = quantize(source.graph)
    chain = build_chain(quantized, synapses)
    require_fits(chain)   # a neuron no Loihi 2 core can hold: one sentence naming the layer and the limit
    write_netx(chain, out, fingerprint=source.fingerprint)
    return chain, quantized


def check_demo_options(out: Path, model: str, epochs: int, samples: int, lava: bool) -> None:
    """What ``demo`` checks before it trains: counts, the model, that the model's graph can be written as NIR
    (and, with ``lava``, placed on Loihi: an untrained copy is collapsed and quantised, which takes a
    second), that verify's run fits in memory, and that ``out`` is a demo's folder (a previous demo's files
    are replaced; a training run of the user's is not)."""
    from revsnn.errors import RevsnnError
    from revsnn.exporters.collapse import collapse
    from revsnn.exporters.nir_file import _check_nodes
    from revsnn.limits import check_count, require_run_memory
    from revsnn.models import build_model, get_config

    check_count(epochs, "--epochs", 1)
    check_count(samples, "--samples", 1)
    if out.exists() and not out.is_dir():
        raise RevsnnError(f"--out {out} is a file; give a folder for the demo's files.")
    if (out / "model.pt").exists() and not (out / "model.nir").exists():
        raise RevsnnError(f"--out {out} holds a training run that is not a demo's ({out / 'model.pt'}); choose "
                          "another --out.")
    config = get_config(model)
    T = int(config.get("time_steps") or config.get("train", {}).get("time_steps", 4))
    untrained = build_model(config).eval()
    require_run_memory(untrained, T, samples, f"verifying {model} on {samples:,} samples", "lower --samples")
    graph = collapse(untrained, T).graph
    writes = "NIR and Lava files" if lava else "a NIR file"
    try:
        _check_nodes(graph)
        if lava:
            from revsnn.exporters.loihi import quantize
            from revsnn.exporters.loihi_chain import build_chain
            from revsnn.exporters.loihi_resources import require_fits

            require_fits(build_chain(quantize(graph), DEMO_LAVA_SYNAPSES))
    except RevsnnError as exc:
        raise RevsnnError(f"--model {model}: the demo writes {writes}, but {str(exc).rstrip('.')} (checked before training; "
                          "choose another --model" + (", or add --no-lava)." if lava else ").")) from exc


def demo_targets(lava: bool) -> list[str]:
    """The targets the demo verifies: every one this machine can run (torch-cuda only with a GPU)."""
    import torch

    return ["torch"] + (["torch-cuda"] if torch.cuda.is_available() else []) + \
        ["norse", "onnxruntime", "onnxruntime-unrolled"] + (["lava"] if lava else [])


def run_demo(out: Path | str = Path("revsnn-demo"), model: str = "revsresnet-digits", epochs: int = 4,
             samples: int = 64, lava: bool = True, reporter=None,
             on_stage: Optional[Callable[[str, DemoResult], None]] = None,
             on_target: Optional[Callable[[Any], None]] = None, data: str = "digits",
             data_dir: Optional[Path | str] = None, frame_size: Optional[int] = None) -> DemoResult:
    """Train ``model`` on rate-coded digits (spikes are what Loihi receives, so one model serves every
    target), export it to ``out/model.nir``, ``model.onnx`` and (with ``lava``) ``model.net``, each with the
    checkpoint's fingerprint, verify every target on ``samples`` test samples and draw a spike raster per
    target into ``out/plots/``.

    ``reporter`` receives the trainer's progress; ``on_stage(stage, result)`` is called as each stage
    begins (``"train"``, ``"export"``, ``"verify"``) and once at the end (``"done"``), with the result so
    far; ``on_target`` receives each target's report as verify finishes it. Bad input raises a
    ``RevsnnError``; a target that disagrees does not raise: see ``result.ok``."""
    from revsnn.checkpoint import load_model
    from revsnn.exporters.collapse import collapse
    from revsnn.exporters.fingerprint import checkpoint_fingerprint
    from revsnn.exporters.nir_file import summarize, write_nir
    from revsnn.exporters.onnx_file import write_onnx
    from revsnn.plots import raster_plots
    from revsnn.train import TrainOptions, train
    from revsnn.verify import verify

    out = Path(out)
    check_demo_options(out, model, epochs, samples, lava)  # every option, before minutes of training
    result = DemoResult(out=out, model=model, lava=lava)
    stage = on_stage or (lambda name, res: None)

    stage("train", result)
    from revsnn.data import DATASETS

    # ``data``: a data set on disk instead (revsnn.data); event frames are spikes already.
    spikes = "events" if data in DATASETS and DATASETS[data].kind == "events" else "rate"
    result.metrics = train(TrainOptions(model=model, out=out, epochs=epochs, encoding=spikes, data=data,
                                        data_dir=data_dir, frame_size=frame_size, overwrite=True), reporter)

    stage("export", result)
    checkpoint = out / "model.pt"
    trained, payload = load_model(checkpoint)
    T = int(payload["train"]["time_steps"])
    fingerprint = checkpoint_fingerprint(trained, payload, T)
    graph = collapse(trained, T).graph
    result.nir_path = write_nir(graph, out / "model.nir", fingerprint=fingerprint)
    result.onnx_path = write_onnx(graph, out / "model.onnx", fingerprint=fingerprint)
    result.nir_summary = summarize(graph)
    if lava:
        result.net_path = out / "model.net"
        result.chain = export_lava(checkpoint, result.net_path, DEMO_LAVA_SYNAPSES)[0]

    stage("verify", result)
    result.report = verify(checkpoint, tuple(demo_targets(lava)), samples, on_target=on_target,
                           lava_synapses=DEMO_LAVA_SYNAPSES)
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    result.plots = raster_plots(result.report, plots)
    stage("done", result)
    return result


# --------------------------------------------------------------------------------------------------------
# A source to export or verify: a checkpoint (collapsed) or a NIR file from any tool (converted to steps).


@dataclass
class Source:
    graph: Any                        # nir.NIRGraph in steps (DESIGN §4)
    time_steps: Optional[int]         # the checkpoint's T; None for a foreign graph (the user says)
    fingerprint: Optional[str]        # what exported files record (exporters/fingerprint.py)
    name: str
    foreign: bool                     # a NIR graph written by another tool
    encoding: str = "direct"


def load_source(path: Path | str, dt: Optional[float] = None, time_steps: Optional[int] = None) -> Source:
    """``.pt``: the checkpoint's model collapsed at its T (or ``time_steps``); ``.nir``: the file read and its
    time constants converted to steps at ``dt`` seconds (default: the file's own metadata)."""
    from revsnn.errors import RevsnnError

    path = Path(path)
    if path.suffix == ".nir":
        from revsnn.exporters.fingerprint import nir_digest
        from revsnn.exporters.nir_import import load_foreign

        graph = load_foreign(path, dt)
        if time_steps is not None:
            graph.metadata["time_steps"] = int(time_steps)
        return Source(graph, time_steps, f"nir:{nir_digest(graph)}", path.stem,
                      "revsnn_version" not in graph.metadata, "spikes")
    if path.suffix != ".pt":
        raise RevsnnError(f"{path}: a source is a .pt checkpoint (revsnn train) or a .nir file (any tool).")
    if dt is not None:
        raise RevsnnError("--dt applies to a .nir file from another tool; a checkpoint already runs in steps.")
    from revsnn.checkpoint import load_model
    from revsnn.exporters.collapse import collapse
    from revsnn.exporters.fingerprint import checkpoint_fingerprint

    model, payload = load_model(path)
    train = payload.get("train", {})
    T = int(time_steps or train.get("time_steps", model.config.get("train", {}).get("time_steps", 4)))
    graph = collapse(model, T).graph
    return Source(graph, T, checkpoint_fingerprint(model, payload, T), model.config.get("name", path.stem), False,
                  train.get("encoding", "direct"))


def foreign_inputs(graph, samples: int, time_steps: int, rate: float = 0.2, seed: int = 0,
                   array: Optional[Path | str] = None):
    """Inputs for verifying a graph that has no data set behind it: ``array`` (a ``.npy`` of ``[T, B, ...]``), or
    Bernoulli spikes at ``rate`` drawn with ``seed``, ``[time_steps, samples, *input shape]``."""
    import numpy as np
    import torch

    from revsnn.errors import RevsnnError
    from revsnn.exporters.graph import schedule

    sched = schedule(graph)
    shape = tuple(sched.shapes[sched.input_name])
    if array is not None:
        try:
            x = np.load(array, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise RevsnnError(f"--input {array}: not a readable .npy array ({exc}).") from exc
        if x.ndim < 3 or tuple(x.shape[2:]) != shape or not np.issubdtype(x.dtype, np.number):
            raise RevsnnError(f"--input {array} holds a {x.dtype} array of shape {tuple(x.shape)}; the graph takes "
                              f"[T, B, {', '.join(map(str, shape))}].")
        if not np.all(np.isfinite(x)):
            raise RevsnnError(f"--input {array} holds NaN or inf values.")
        return torch.as_tensor(x, dtype=torch.float64)
    if not 0.0 <= rate <= 1.0:
        raise RevsnnError(f"--rate must be a probability in [0, 1], got {rate}.")
    if samples < 1 or time_steps < 1:
        raise RevsnnError("--samples and --time-steps must be at least 1.")
    from revsnn.limits import require_tensor

    # the spikes themselves, float64, and as many again for what the targets record (a lower bound)
    require_tensor([time_steps, samples, *shape], f"--time-steps {time_steps:,} with --samples {samples:,}",
                   "lower --time-steps or --samples", bytes_per=16)
    g = torch.Generator().manual_seed(int(seed))
    return (torch.rand(int(time_steps), int(samples), *shape, generator=g) < rate).double()
