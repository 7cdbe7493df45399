"""``revsnn verify``: prove that every target reproduces the training model, step by step.

This is the one place where the training core, the exporters and the targets meet (DESIGN §3); nothing
in the training core imports it. For a checkpoint it:

1. rebuilds the model and runs its own T-step forward (float64) on N test samples of its data, recording
   every neuron module's spikes;
2. collapses it into the spiking graph and exports what each target needs into a temporary folder;
3. runs every target one time step at a time on the same inputs and compares:
   - ``torch``: the reference executor against the training model itself (spikes of every population,
     per-step logits, predictions);
   - every other target against the reference executor;
   - ``lava``: the model quantised onto Loihi 2's fixed-point grid (``exporters/loihi.py``), relayed into a
     latency-aligned netx chain and run by lava-dl's netx in Lava's bit-accurate simulation, against the
     quantised reference executor, bit for bit (tolerance 0); its distance from the float reference
     (prediction and spike agreement) is reported beside it. Only spike (rate-coded) input reaches Loihi.

Spike differences are split in three: *threshold ties*, where the reference's membrane lies within float
rounding of the threshold (``|h - θ| <= 1e-6 · max(1, |θ|)``), which an implementation may legitimately
resolve either way; *tie-induced* differences, later in a sample that had a tie (a flipped spike changes
what follows); and *mismatches*, every other difference, which are errors. All three are reported. A
target passes when it has no mismatch, and, over the samples without a tie, full prediction agreement and
``max |Δ|`` of the per-step outputs within its tolerance; the samples with a tie are counted.
"""

from __future__ import annotations

from revsnn.errors import RevsnnError

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from .checkpoint import load_model
from .data import DataError, test_samples
from .neurons import SpikingNeuron

__all__ = ["TargetReport", "VerifyReport", "verify", "TARGETS", "TIE_TOLERANCE"]

TIE_TOLERANCE = 1e-6
# Tolerance of max |Δ| of the per-step outputs, per target.
# lava is held to its own reference, the quantised one, which it must reproduce bit for bit.
TOLERANCES = {"torch": 1e-6, "torch-cuda": 1e-5, "norse": 1e-5, "onnxruntime": 1e-5, "onnxruntime-unrolled": 1e-5,
              "lava": 0.0}
TARGETS = ("torch", "torch-cuda", "norse", "onnxruntime", "onnxruntime-unrolled", "lava")


@dataclass
class TargetReport:
    name: str
    ok: bool
    time_steps: int
    spike_agreement: Optional[float]         # over every population the target exposes (None: it exposes none)
    output_spike_agreement: Optional[float]  # the population that feeds the readout
    threshold_ties: int
    tie_induced: int                 # differences after a tie in the same sample (consequences of the tie)
    tie_samples: int                 # samples with a tie; their outputs and predictions are not held to the tolerance
    mismatches: int
    prediction_agreement: float
    max_abs_diff: float
    tolerance: float
    populations: int
    spike_count: int                 # spikes emitted over all populations, samples and steps
    seconds: float
    note: str = ""
    raster: Optional[torch.Tensor] = field(default=None, repr=False)   # [T, neurons] of sample 0
    # Targets held to the quantised reference (lava): how far they are from the float reference.
    float_prediction_agreement: Optional[float] = None
    float_spike_agreement: Optional[float] = None
    details: dict = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "spike_agreement": self.spike_agreement,
                "output_spike_agreement": self.output_spike_agreement, "threshold_ties": self.threshold_ties,
                "tie_induced": self.tie_induced, "tie_samples": self.tie_samples, "mismatches": self.mismatches, "prediction_agreement": self.prediction_agreement,
                "max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance, "time_steps": self.time_steps,
                "populations": self.populations, "spike_count": self.spike_count, "seconds": self.seconds,
                "note": self.note, **({"float_prediction_agreement": self.float_prediction_agreement,
                                       "float_spike_agreement": self.float_spike_agreement, **self.details}
                                      if self.float_prediction_agreement is not None else {})}


@dataclass
class VerifyReport:
    model: str
    samples: int
    time_steps: int
    encoding: str
    targets: dict[str, TargetReport]
    reference_raster: Optional[torch.Tensor] = field(default=None, repr=False)
    output_population: str = ""

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.targets.values())

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "model": self.model, "samples": self.samples, "time_steps": self.time_steps,
                "encoding": self.encoding, "targets": {n: t.as_json() for n, t in self.targets.items()}}


class VerifyError(RevsnnError):
    """Bad verify options; one sentence."""


def _model_trace(model: nn.Module, x: torch.Tensor, per_step: bool):
    """Every neuron module's output, the model's logits and, if ``per_step``, the per-step outputs of
    its last Linear layer ``[T, B, K]`` (the graph's output before the readout)."""
    spikes, hooks = {}, []
    names = {id(m): n for n, m in model.named_modules()}
    for m in model.modules():
        if isinstance(m, SpikingNeuron):
            # A node whose output is not its spike train (the reversible RevLIF node emits y = s + d) says
            # what its spikes are; models start every forward from rest.
            record = (lambda mod, i, o: mod.spike_train(i[0])) if hasattr(m, "spike_train") else \
                (lambda mod, i, o: o)
            hooks.append(m.register_forward_hook(
                lambda mod, i, o, record=record: spikes.__setitem__(names[id(mod)], record(mod, i, o))))
    outputs = []
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    hooks.append(head.register_forward_hook(lambda mod, i, o: outputs.append(o)))
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    T, B = x.shape[:2]
    return spikes, logits, (outputs[0].reshape(T, B, -1) if per_step else None)


@dataclass
class _SpikeDiff:
    total: int = 0          # neuron-steps compared
    ties: int = 0           # differences where the reference membrane is within rounding of the threshold
    induced: int = 0        # other differences, in a sample at or after its first tie: the tie's consequences
    mismatches: int = 0     # every other difference: errors


def _differences(got, want, potentials, thresholds, steps):
    """Yield (population, differ, near, step index of each element along dim 0 or a fixed step)."""
    for name, w in want.items():
        if name not in got:
            continue
        g, p = got[name], potentials[name]
        step = None
        if steps and name in steps:
            step = steps[name]
            g, p = g[step], p[step]
        g = g.to(w.device, w.dtype)
        near = (p - thresholds[name]).abs() <= TIE_TOLERANCE * thresholds[name].abs().clamp(min=1)
        yield name, g != w, near, step


def _compare_spikes(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor],
                    potentials: dict[str, torch.Tensor], thresholds: dict[str, torch.Tensor],
                    steps: Optional[dict[str, int]] = None, first_tie: Optional[torch.Tensor] = None) -> _SpikeDiff:
    """Compare spike trains ``[T, B, ...]`` over the populations both sides have.

    ``steps``: populations that equal ``want`` at one step only (unrolled graphs); ``want`` then has no
    time axis and ``got[name][step]`` is compared with it. ``first_tie[b]``: the first step at which sample
    b had a threshold tie anywhere (``inf`` if never); differences at or after it are counted as induced.
    """
    out = _SpikeDiff()
    for name, differ, near, step in _differences(got, want, potentials, thresholds, steps):
        out.total += differ.numel()
        if not differ.any():
            continue
        out.ties += int((differ & near).sum())
        other = differ & ~near
        if first_tie is not None:
            t_idx = (torch.full(other.shape[:1], step) if step is not None else
                     torch.arange(other.shape[0])).to(first_tie.dtype)
            if step is not None:  # [B, ...]: every element is at `step`
                after = (t_idx.new_full((other.shape[0],), float(step)) >= first_tie)
                after = after.view(-1, *[1] * (other.dim() - 1))
            else:                 # [T, B, ...]
                after = (t_idx.view(-1, 1) >= first_tie.view(1, -1))
                after = after.view(*after.shape, *[1] * (other.dim() - 2))
            out.induced += int((other & after).sum())
            other = other & ~after
        out.mismatches += int(other.sum())
    return out


def _first_ties(got, want, potentials, thresholds, steps, T: int, B: int) -> torch.Tensor:
    """For each sample, the first step with a threshold tie in any population (``inf`` if none)."""
    first = torch.full((B,), float("inf"), dtype=torch.float64)
    for name, differ, near, step in _differences(got, want, potentials, thresholds, steps):
        tie = differ & near
        if not tie.any():
            continue
        if step is not None:  # [B, ...]
            hit = tie.reshape(B, -1).any(1)
            first = torch.where(hit, torch.minimum(first, torch.tensor(float(step), dtype=torch.float64)), first)
        else:                 # [T, B, ...]
            hit = tie.reshape(T, B, -1).any(2)   # [T, B]
            steps_idx = torch.arange(T, dtype=torch.float64).view(-1, 1).expand(T, B)
            earliest = torch.where(hit, steps_idx, torch.full_like(steps_idx, float("inf"))).min(0).values
            first = torch.minimum(first, earliest)
    return first


def _readout(outputs: torch.Tensor, mode: str) -> torch.Tensor:
    return outputs[-1] if mode == "last" else outputs.mean(0)


def verify(checkpoint: Path | str, targets: tuple[str, ...] = ("torch", "norse"), samples: int = 32,
           on_target: Optional[Callable[[TargetReport], None]] = None, lava_synapses: str = "conv",
           data_dir: Optional[Path | str] = None) -> VerifyReport:
    from revsnn.exporters.collapse import collapse
    from revsnn.targets.reference import NEURON_TYPES, ReferenceExecutor

    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise VerifyError(f"unknown target {unknown[0]!r}; known: {', '.join(TARGETS)}.")
    if samples < 1:
        raise VerifyError(f"--samples must be at least 1, got {samples}.")
    if "torch-cuda" in targets and not torch.cuda.is_available():
        raise VerifyError("target torch-cuda needs a CUDA device, and this machine has none.")

    model, payload = load_model(checkpoint)
    config = model.config
    train = payload.get("train", {})
    T, encoding = int(train.get("time_steps", config.get("train", {}).get("time_steps", 4))), \
        train.get("encoding", "direct")
    if "lava" in targets:
        from revsnn.exporters.loihi import LoihiExportError, require_spike_input

        try:
            require_spike_input(encoding, config.get("name", "this model"))
        except LoihiExportError as exc:
            raise VerifyError(str(exc)) from exc
    try:
        x = test_samples(payload, samples, data_dir)[0].double()  # the data the model was trained on
    except DataError as exc:
        raise VerifyError(str(exc)) from exc
    n = x.shape[1]

    model = model.double().eval()
    collapsed = collapse(model, T)
    graph = collapsed.graph
    readout = graph.metadata.get("readout", "mean")
    model_spikes, model_logits, model_steps = _model_trace(model, x, per_step=readout == "mean")
    if model_steps is None:  # only the last step is the model's output (T-RevSNN: one column per step)
        model_steps = model_logits.unsqueeze(0)
    # The model's spikes, as the graph's populations (a population of an unrolled graph equals its
    # module's single output at one step).
    steps_of = collapsed.population_steps or {}
    want = {node: (model_spikes[mod][:, c0:c1] if node in steps_of else model_spikes[mod][:, :, c0:c1])
            for node, (mod, c0, c1) in collapsed.populations.items()}
    neuron_nodes = [n_ for n_ in graph.nodes if isinstance(graph.nodes[n_], NEURON_TYPES)]
    thresholds = {}
    for name in neuron_nodes:
        node = graph.nodes[name]
        th = node.threshold if hasattr(node, "threshold") else node.v_threshold
        thresholds[name] = torch.as_tensor(th, dtype=torch.float64)
    output_pops = _output_populations(graph, neuron_nodes)

    reference = ReferenceExecutor(graph)
    t_ref = time.perf_counter()
    ref_steps, ref_spikes, ref_potentials = _run_recording(reference, x)
    t_ref = time.perf_counter() - t_ref
    reports: dict[str, TargetReport] = {}
    model_pred = model_logits.argmax(1)
    with tempfile.TemporaryDirectory(prefix="revsnn-verify-") as tmp:
        for name in targets:
            t0 = time.perf_counter()
            note = ""
            if name in ("torch", "torch-cuda"):
                device = "cuda" if name == "torch-cuda" else "cpu"
                executor = reference if device == "cpu" else ReferenceExecutor(graph, device=device)
                steps, spikes, _ = (ref_steps, ref_spikes, ref_potentials) if device == "cpu" else \
                    _run_recording(executor, x)
                # Against the training model itself.
                base_spikes, base_steps_of, base_steps, base_pred = want, steps_of, model_steps, model_pred
                note = "reference executor vs the training model"
            elif name == "lava":
                report = _verify_lava(graph, Path(tmp), x, readout, ref_steps, ref_spikes, output_pops,
                                      lava_synapses)
                report.seconds = time.perf_counter() - t0
                reports[name] = report
                if on_target:
                    on_target(report)
                continue
            else:
                steps, spikes = _run_file_target(name, graph, Path(tmp), x)
                base_spikes, base_steps_of = ref_spikes, None
                base_steps, base_pred = ref_steps, _readout(ref_steps, readout).argmax(1)
                note = "vs the reference executor"
            seconds = time.perf_counter() - t0
            if spikes:
                first_tie = _first_ties(spikes, base_spikes, ref_potentials, thresholds, base_steps_of, T, n)
            else:  # a target that shows no spikes: any reference membrane at the threshold may have flipped
                first_tie = _first_ties({k: 1 - v for k, v in ref_spikes.items()}, ref_spikes, ref_potentials,
                                        thresholds, None, T, n)
            diff = _compare_spikes(spikes, base_spikes, ref_potentials, thresholds, base_steps_of, first_tie)
            out_pops = {p: spikes[p] for p in output_pops if p in spikes}
            out_diff = _compare_spikes(out_pops, {p: base_spikes[p] for p in out_pops}, ref_potentials, thresholds,
                                       base_steps_of, first_tie)
            clean = torch.isinf(first_tie)   # samples without any tie are held to the tolerance
            steps = steps.to(torch.float64).cpu()
            pred = _readout(steps, readout).argmax(1)
            delta = (steps[-base_steps.shape[0]:] - base_steps).abs()
            max_diff = float(delta[:, clean].max()) if clean.any() else 0.0
            if name == "torch":
                seconds += t_ref
            tol = TOLERANCES[name]
            same_pred = pred == base_pred
            report = TargetReport(
                name=name, ok=diff.mismatches == 0 and bool(same_pred[clean].all()) and max_diff <= tol,
                time_steps=T,
                spike_agreement=1.0 - (diff.ties + diff.induced + diff.mismatches) / diff.total if diff.total else None,
                output_spike_agreement=(1.0 - (out_diff.ties + out_diff.induced + out_diff.mismatches) / out_diff.total
                                        if out_diff.total else None),
                threshold_ties=diff.ties, tie_induced=diff.induced, tie_samples=int((~clean).sum()),
                mismatches=diff.mismatches,
                prediction_agreement=float(same_pred.double().mean()), max_abs_diff=max_diff,
                tolerance=tol, populations=len([p for p in spikes if p in ref_spikes]),
                spike_count=int(sum(float(v.sum()) for v in spikes.values())), seconds=seconds, note=note,
                raster=_raster(spikes, output_pops) if all(p in spikes for p in output_pops) else None)
            reports[name] = report
            if on_target:
                on_target(report)
    return VerifyReport(config.get("name", "?"), n, T, encoding, reports,
                        reference_raster=_raster(ref_spikes, output_pops),
                        output_population=", ".join(output_pops))


def _verify_lava(graph, folder: Path, x: torch.Tensor, readout: str, float_steps: torch.Tensor,
                 float_spikes: dict[str, torch.Tensor], output_pops: list[str], synapses: str) -> TargetReport:
    """Lava's fixed-point run of the exported .net against the quantised reference (bit for bit: every
    population's spikes and the readout's potentials), and how both compare with the float reference."""
    from revsnn.exporters.loihi import LoihiExportError, quantize
    from revsnn.exporters.loihi_chain import build_chain
    from revsnn.exporters.netx_file import write_netx
    from revsnn.targets.lava import LavaTarget
    from revsnn.targets.reference import ReferenceExecutor

    try:
        quantized = quantize(graph)
        chain = build_chain(quantized, synapses)
    except LoihiExportError as exc:
        raise VerifyError(str(exc)) from exc
    path = write_netx(chain, folder / "model.net")
    q_steps, q_spikes = ReferenceExecutor(quantized.graph).run(x, record=True)
    target = LavaTarget.load(path)
    steps, spikes = target.run(x, record=True)
    T, B = x.shape[:2]
    total = differ = out_total = out_differ = float_total = float_same = 0
    for name, got in spikes.items():
        want = q_spikes[name].reshape(got.shape)
        d = int((got != want).sum())
        total, differ = total + got.numel(), differ + d
        if name in output_pops:
            out_total, out_differ = out_total + got.numel(), out_differ + d
        if name in float_spikes:
            f = float_spikes[name].reshape(got.shape)
            float_total, float_same = float_total + got.numel(), float_same + int((got == f).sum())
    pred = _readout(steps, readout).argmax(1)
    q_pred = _readout(q_steps, readout).argmax(1)
    float_pred = _readout(float_steps, readout).argmax(1)
    max_diff = float((steps - q_steps).abs().max())
    overhead = chain.overhead()
    timing = target.timing
    return TargetReport(
        name="lava", ok=differ == 0 and max_diff == 0.0 and bool((pred == q_pred).all()), time_steps=T,
        spike_agreement=1.0 - differ / total if total else None,
        output_spike_agreement=1.0 - out_differ / out_total if out_total else None,
        threshold_ties=0, tie_induced=0, tie_samples=0, mismatches=differ,
        prediction_agreement=float((pred == q_pred).double().mean()), max_abs_diff=max_diff, tolerance=0.0,
        populations=len(spikes), spike_count=int(sum(float(v.sum()) for v in spikes.values())), seconds=0.0,
        note=f"vs the quantised reference (Loihi 2 fixed point, bit for bit); vs the float reference: predictions "
             f"{float((pred == float_pred).double().mean()):.1%}, spikes {float_same / max(float_total, 1):.1%}",
        raster=_raster(spikes, output_pops) if all(p in spikes for p in output_pops) else None,
        float_prediction_agreement=float((pred == float_pred).double().mean()),
        float_spike_agreement=float_same / float_total if float_total else None,
        details={"synapses": synapses, "chain_layers": chain.depth, "latency_steps": chain.depth,
                 "relay_neuron_overhead": overhead["neuron_overhead"],
                 "relay_synapse_overhead": overhead["synapse_overhead"],
                 "lava_steps": timing.get("steps"), "lava_seconds_per_step": timing.get("seconds_per_step")})


def _output_populations(graph, neuron_nodes: list[str]) -> list[str]:
    """The neuron populations nearest the output: the ones the readout reads (one per stream half)."""
    feeds: dict[str, set[str]] = {}
    for s, d in graph.edges:
        feeds.setdefault(d, set()).add(s)
    frontier, seen = ["output"], set()
    while frontier:
        found = sorted(n for n in frontier if n in neuron_nodes)
        if found:
            return found
        nxt = []
        for node in frontier:
            for s in sorted(feeds.get(node, ())):
                if s not in seen:
                    seen.add(s)
                    nxt.append(s)
        frontier = nxt
    return neuron_nodes[-1:]


def _raster(spikes: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    """Sample 0 of the named populations as one raster [T, neurons]."""
    return torch.cat([spikes[n][:, 0].reshape(spikes[n].shape[0], -1) for n in names], dim=1).cpu()


def _run_recording(executor, x: torch.Tensor):
    executor.reset()
    outs, spikes, potentials = [], {n: [] for n in executor.neurons}, {n: [] for n in executor.neurons}
    for x_t in x:
        outs.append(executor.step(x_t))
        for n in executor.neurons:
            spikes[n].append(executor.spikes[n])
            potentials[n].append(executor.potentials[n])
    return (torch.stack(outs).cpu(), {n: torch.stack(v).cpu() for n, v in spikes.items()},
            {n: torch.stack(v).cpu() for n, v in potentials.items()})


def _onnx_float(graph) -> str:
    """float64 where onnxruntime's CPU build can run every op in double (it has no float64 convolution or
    pooling), float32 otherwise: the closest the ONNX targets can come to the float64 reference."""
    import nir

    from revsnn.exporters.nodes import CUSTOM_NODES

    kinds = (nir.Conv1d, nir.Conv2d, nir.AvgPool2d, nir.SumPool2d, *CUSTOM_NODES)
    return "float32" if any(isinstance(n, kinds) for n in graph.nodes.values()) else "float64"


def _run_file_target(name: str, graph, folder: Path, x: torch.Tensor):
    if name == "norse":
        from revsnn.exporters.nir_file import write_nir
        from revsnn.targets.norse import NorseTarget

        path = folder / "model.nir"
        write_nir(graph, path)
        target = NorseTarget.load(path, dtype=torch.float64)
        steps, spikes = target.run(x, record=True)
        return steps.cpu(), {k: v.cpu() for k, v in spikes.items()}
    if name == "onnxruntime":
        from revsnn.exporters.onnx_file import graph_to_onnx_step, write_onnx
        from revsnn.targets.onnxruntime import OnnxRuntimeTarget

        path = folder / "model.onnx"
        write_onnx(graph_to_onnx_step(graph, dtype=_onnx_float(graph)), path)
        steps, spikes = OnnxRuntimeTarget.load(path).run(x, record=True)
        return steps.cpu().double(), {k: v.cpu().double() for k, v in spikes.items()}
    if name == "onnxruntime-unrolled":
        from revsnn.exporters.onnx_file import write_onnx
        from revsnn.targets.onnxruntime import OnnxRuntimeUnrolledTarget

        from revsnn.exporters.onnx_file import graph_to_onnx_unrolled

        path = folder / "model-unrolled.onnx"
        # with every population's spikes as extra outputs, so that they can be compared too
        write_onnx(graph_to_onnx_unrolled(graph, x.shape[0], spikes=True, dtype=_onnx_float(graph)), path)
        steps, spikes = OnnxRuntimeUnrolledTarget.load(path).run(x, record=True)
        return steps.cpu().double(), {k: v.cpu().double() for k, v in spikes.items()}
    raise VerifyError(f"unknown target {name!r}.")
