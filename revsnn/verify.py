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

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from .checkpoint import load_model
from .data import DataError, test_samples
from .errors import RevsnnError
from .neurons import SpikingNeuron, reset_states

__all__ = ["TargetReport", "VerifyReport", "verify", "verify_model", "verify_graph", "compare", "TIE_TOLERANCE"]

TIE_TOLERANCE = 1e-6


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
    # each target's own run, kept so that `revsnn report` counts spikes from the very runs verify checked
    # instead of running every target a second time (not part of the JSON)
    traces: dict[str, Any] = field(default_factory=dict, repr=False)

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
    reset_states(model)   # a user's forward need not reset its neurons: revsnn does, before every forward
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    T, B = x.shape[:2]
    # The head's per-step outputs, when it runs per step (a head after the mean over time shows only the readout).
    per_step = per_step and bool(outputs) and outputs[0].numel() == T * B * logits[0].numel()
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
        if g.shape != w.shape and g.numel() == w.numel():   # a target that shows a population flat (lava)
            g = g.reshape(w.shape)
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


@dataclass
class Baseline:
    """What a target's trace is compared with: per-step outputs, spikes per population, the readout mode,
    and (for the float references) the membrane potentials and thresholds that tell a tie."""

    outputs: torch.Tensor
    spikes: dict[str, torch.Tensor]
    readout: str
    steps_of: Optional[dict[str, int]] = None        # populations that equal ``spikes`` at one step only
    potentials: Optional[dict[str, torch.Tensor]] = None
    thresholds: Optional[dict[str, torch.Tensor]] = None
    output_populations: list[str] = field(default_factory=list)
    predictions: Optional[torch.Tensor] = None

    def pred(self) -> torch.Tensor:
        return self.predictions if self.predictions is not None else _readout(self.outputs, self.readout).argmax(1)


def compare(name: str, trace, base: Baseline, tolerance: float, note: str = "") -> TargetReport:
    """One target's trace against its baseline (pure): spikes of every population both have (threshold ties,
    tie-induced differences and mismatches counted apart where the baseline has potentials), predictions, and
    ``max |Δ|`` of the per-step outputs over the samples without a tie."""
    spikes = trace.spikes
    T, n = trace.outputs.shape[0], trace.outputs.shape[1]
    ties_known = base.potentials is not None
    if ties_known:
        potentials, thresholds = base.potentials, base.thresholds
        if spikes:
            first_tie = _first_ties(spikes, base.spikes, potentials, thresholds, base.steps_of, T, n)
        else:  # a target that shows no spikes: any baseline membrane at the threshold may have flipped
            first_tie = _first_ties({k: 1 - v for k, v in base.spikes.items()}, base.spikes, potentials, thresholds,
                                    base.steps_of, T, n)
    else:      # bit-exact targets: no ties, every difference is a mismatch
        potentials = {k: torch.full_like(v.double(), float("inf")) for k, v in base.spikes.items()}
        thresholds = {k: torch.zeros(()) for k in base.spikes}
        first_tie = torch.full((n,), float("inf"), dtype=torch.float64)
    diff = _compare_spikes(spikes, base.spikes, potentials, thresholds, base.steps_of, first_tie)
    out_pops = {p: spikes[p] for p in base.output_populations if p in spikes}
    out_diff = _compare_spikes(out_pops, {p: base.spikes[p] for p in out_pops}, potentials, thresholds,
                               base.steps_of, first_tie)
    clean = torch.isinf(first_tie)   # samples without any tie are held to the tolerance
    steps = trace.outputs.to(torch.float64).cpu()
    pred = _readout(steps, base.readout).argmax(1)
    if base.outputs.shape[0] == steps.shape[0]:
        delta = (steps - base.outputs).abs()
    else:   # a baseline that shows only the readout (T-RevSNN's last step, a head after the mean over time)
        delta = (_readout(steps, base.readout).unsqueeze(0) - base.outputs).abs()
    max_diff = float(delta[:, clean].max()) if clean.any() else 0.0
    same_pred = pred == base.pred()
    agreement = lambda d: 1.0 - (d.ties + d.induced + d.mismatches) / d.total if d.total else None  # noqa: E731
    return TargetReport(
        name=name, ok=diff.mismatches == 0 and bool(same_pred[clean].all()) and max_diff <= tolerance,
        time_steps=int(steps.shape[0]), spike_agreement=agreement(diff), output_spike_agreement=agreement(out_diff),
        threshold_ties=diff.ties, tie_induced=diff.induced, tie_samples=int((~clean).sum()),
        mismatches=diff.mismatches, prediction_agreement=float(same_pred.double().mean()), max_abs_diff=max_diff,
        tolerance=tolerance, populations=len([p for p in spikes if p in base.spikes]),
        spike_count=int(sum(float(v.sum()) for v in spikes.values())), seconds=0.0, note=note,
        raster=_raster(spikes, base.output_populations) if base.output_populations and
        all(p in spikes for p in base.output_populations) else None)


def _agreement_with(trace, base: Baseline) -> tuple[float, Optional[float]]:
    """Prediction and spike agreement of ``trace`` with another baseline (the float reference, for lava)."""
    pred = _readout(trace.outputs.double(), base.readout).argmax(1)
    total = same = 0
    for name, got in trace.spikes.items():
        if name in base.spikes:
            want = base.spikes[name].reshape(got.shape)
            total, same = total + got.numel(), same + int((got == want).sum())
    return float((pred == base.pred()).double().mean()), (same / total if total else None)


def _test_inputs(payload: dict, config: dict, samples: int, data_dir: Optional[Path | str] = None):
    """The first test samples of the data the model was trained on (revsnn.data.test_samples)."""
    train = payload.get("train", {})
    T = int(train.get("time_steps", config.get("train", {}).get("time_steps", 4)))
    encoding = train.get("encoding", "direct")
    try:
        x = test_samples(payload, samples, data_dir)[0].double()
    except DataError as exc:
        raise VerifyError(str(exc)) from exc
    return x, T, encoding


def verify(checkpoint: Path | str, targets: Optional[tuple[str, ...]] = ("torch", "norse"), samples: int = 32,
           on_target: Optional[Callable[[TargetReport], None]] = None, lava_synapses: str = "conv",
           file: Optional[Path | str] = None, data_dir: Optional[Path | str] = None) -> VerifyReport:
    """Verify the checkpoint's model on test samples of its data (``data_dir``: where that data set is now,
    if not where the checkpoint recorded it). With ``file``, run that very file (an
    exported ``.nir``, ``.onnx`` or ``.net``) instead of a fresh export; ``targets`` None then means every
    target that runs that kind of file."""
    if samples < 1:
        raise VerifyError(f"--samples must be at least 1, got {samples}.")
    model, payload = load_model(checkpoint)
    config = model.config
    if file is not None:
        file = Path(file)
        if not file.is_file():
            raise VerifyError(f"--file {file} does not exist.")
        _check_fingerprint(file, model, payload)
    _check_memory(model, payload, samples)
    x, T, encoding = _test_inputs(payload, config, samples, data_dir)
    return verify_model(model, x, targets, encoding=encoding, on_target=on_target, lava_synapses=lava_synapses,
                        file=file, name=config.get("name", "?"))


def _check_memory(model: nn.Module, payload: dict, samples: int) -> None:
    """Refuse, before any input is made, a run whose recorded activations this machine cannot hold."""
    from .data import dataset_record, load_digits
    from .limits import require_run_memory

    T = int(payload.get("train", {}).get("time_steps", model.config.get("train", {}).get("time_steps", 4)))
    n = min(samples, len(load_digits().y_test)) if dataset_record(payload)["name"] == "digits" else samples
    require_run_memory(model, T, n, f"verifying {model.config.get('name')} at T = {T} on {n} samples",
                       "lower --samples")


def _check_fingerprint(file: Path, model: nn.Module, payload: dict) -> None:
    """The file must have been exported from this checkpoint, and be unchanged since (see exporters/fingerprint)."""
    from revsnn.exporters import fingerprint

    fingerprint.check_file(file, fingerprint.checkpoint_fingerprint(model, payload))


def _select_targets(targets: Optional[tuple[str, ...]], file: Optional[Path]):
    from revsnn.targets.registry import get_target, target_names

    if targets is None:
        if file is None:
            targets = ("torch", "norse")
        else:
            chosen = [t for t in (get_target(n) for n in target_names()) if t.unavailable() is None and t.accepts(file)]
            if not chosen:
                raise VerifyError(f"no target runs {file.name}; verify --file takes a .nir, .onnx or .net file "
                                  "written by `revsnn export`.")
            return chosen
    chosen = []
    for name in targets:
        try:
            t = get_target(name)
        except RevsnnError as exc:
            raise VerifyError(str(exc)) from exc
        why = t.unavailable()
        if why:
            raise VerifyError(why)
        if file is not None and t.suffix is not None and not t.accepts(file):
            raise VerifyError(f"target {name} does not run {file.name} (it runs {t.suffix} files); drop it from "
                              "--targets, or leave --targets out to run every target that runs this file.")
        chosen.append(t)
    return chosen


def verify_model(model: nn.Module, x: torch.Tensor, targets: Optional[tuple[str, ...]] = ("torch", "norse"),
                 encoding: str = "direct", on_target: Optional[Callable[[TargetReport], None]] = None,
                 lava_synapses: str = "conv", file: Optional[Path] = None, name: Optional[str] = None,
                 input_shape: Optional[tuple[int, ...]] = None) -> VerifyReport:
    """Verify any model made of revsnn's blocks (``collapse`` takes it) on the inputs ``x`` ``[T, B, ...]``:
    collapse it, run every target step by step (on a fresh export, or on ``file``), and compare each with its
    baseline: the training model (``torch``), the float reference executor, or the Loihi-quantised one."""
    from revsnn.exporters.collapse import collapse

    chosen = _select_targets(targets, file)
    T = int(x.shape[0])
    if any(t.compare_with == "loihi" for t in chosen):
        from revsnn.exporters.loihi import LoihiExportError, require_spike_input

        try:
            require_spike_input(encoding, name or "this model")
        except LoihiExportError as exc:
            raise VerifyError(str(exc)) from exc
    x = x.double()
    model = model.double().eval()
    collapsed = collapse(model, T, input_shape=input_shape or tuple(x.shape[2:]))
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
    model_base = (model_steps, want, steps_of or None, model_logits.argmax(1))
    return _run_targets(graph, x, chosen, encoding, model_base, on_target, lava_synapses, file,
                        name or getattr(model, "config", {}).get("name", "custom"))


def verify_graph(graph, x: torch.Tensor, targets: Optional[tuple[str, ...]] = None,
                 on_target: Optional[Callable[[TargetReport], None]] = None, lava_synapses: str = "conv",
                 file: Optional[Path] = None, name: Optional[str] = None) -> VerifyReport:
    """Verify a graph with no training model behind it (a NIR graph from another tool, converted to steps by
    ``exporters.nir_import``): every target against revsnn's reference executor (``torch`` then checks the
    executor against itself on CPU, ``torch-cuda`` against the CPU)."""
    if targets is None:
        targets = ("onnxruntime", "onnx-reference", "norse")
    chosen = _select_targets(targets, file)
    return _run_targets(graph, x.double(), chosen, "spikes" if _is_spikes(x) else "direct", None, on_target,
                        lava_synapses, file, name or str((graph.metadata or {}).get("model", "graph")))


def _is_spikes(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def _run_targets(graph, x, chosen, encoding, model_base, on_target, lava_synapses, file, name) -> VerifyReport:
    from revsnn.exporters.graph import schedule
    from revsnn.targets.reference import ReferenceExecutor, record_run

    T = int(x.shape[0])
    readout = (graph.metadata or {}).get("readout", "mean")
    sched = schedule(graph)
    thresholds = {}
    for n_ in sched.neurons:
        node = graph.nodes[n_]
        th = node.threshold if hasattr(node, "threshold") else node.v_threshold
        thresholds[n_] = torch.as_tensor(th, dtype=torch.float64)
    output_pops = _output_populations(sched)
    t_ref = time.perf_counter()
    ref_steps, ref_spikes, ref_potentials = record_run(ReferenceExecutor(graph), x)
    t_ref = time.perf_counter() - t_ref
    bases = {"float": Baseline(ref_steps, ref_spikes, readout, None, ref_potentials, thresholds, output_pops)}
    if model_base is not None:
        steps, spikes, steps_of, pred = model_base
        bases["model"] = Baseline(steps, spikes, readout, steps_of, ref_potentials, thresholds, output_pops, pred)
    else:
        bases["model"] = bases["float"]
    if any(t.compare_with == "loihi" for t in chosen):
        from revsnn.exporters.loihi import LoihiExportError, quantize

        if not _is_spikes(x):
            raise VerifyError("Loihi receives spikes: the lava target needs 0/1 input (rate-coded or event "
                              "frames).")
        try:
            quantized = quantize(graph)
        except LoihiExportError as exc:
            raise VerifyError(str(exc)) from exc
        q_steps, q_spikes = ReferenceExecutor(quantized.graph).run(x, record=True)
        bases["loihi"] = Baseline(q_steps, q_spikes, readout, None, None, None, output_pops)
    notes = {"model": "reference executor vs the training model" if model_base is not None else
             "reference executor vs itself (no training model)", "float": "vs the reference executor",
             "loihi": "vs the quantised reference (Loihi 2 fixed point, bit for bit)"}
    reports: dict[str, TargetReport] = {}
    traces: dict[str, Any] = {}
    options = {"time_steps": T, "synapses": lava_synapses}
    with tempfile.TemporaryDirectory(prefix="revsnn-verify-") as tmp:
        for target in chosen:
            t0 = time.perf_counter()
            try:
                source = file if (file is not None and target.suffix is not None) else \
                    target.export(graph, Path(tmp), **options)
                trace = target.run(source, x, **options)
            except RevsnnError as exc:
                raise VerifyError(f"target {target.name}: {exc}") from exc
            base = bases[target.compare_with]
            report = compare(target.name, trace, base, target.tolerance, notes[target.compare_with])
            report.seconds = time.perf_counter() - t0 + (t_ref if target.compare_with == "model" else 0.0)
            if target.compare_with == "loihi":
                pred_agree, spike_agree = _agreement_with(trace, bases["float"])
                report.float_prediction_agreement, report.float_spike_agreement = pred_agree, spike_agree
                report.details = dict(trace.info)
                report.note = (f"{report.note}; vs the float reference: predictions {pred_agree:.1%}, spikes "
                               f"{(spike_agree or 0.0):.1%}")
            reports[target.name] = report
            traces[target.name] = trace
            if on_target:
                on_target(report)
    return VerifyReport(name, int(x.shape[1]), T, encoding, reports, reference_raster=_raster(ref_spikes, output_pops)
                        if output_pops else None, output_population=", ".join(output_pops), traces=traces)


def _output_populations(sched) -> list[str]:
    """The neuron populations nearest the output: the ones the readout reads (one per stream half)."""
    frontier, seen = [sched.output_name], set()
    while frontier:
        found = sorted(n for n in frontier if n in sched.neurons)
        if found:
            return found
        nxt = []
        for node in frontier:
            for s in sorted(set(sched.inputs.get(node, ()))):
                if s not in seen:
                    seen.add(s)
                    nxt.append(s)
        frontier = nxt
    return sched.neurons[-1:]


def _raster(spikes: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    """Sample 0 of the named populations as one raster [T, neurons]."""
    return torch.cat([spikes[n][:, 0].reshape(spikes[n].shape[0], -1) for n in names], dim=1).cpu()


def verify_foreign(path: Path | str, dt: Optional[float] = None, targets: Optional[tuple[str, ...]] = None,
                   samples: int = 8, time_steps: int = 20, rate: float = 0.2, seed: int = 0,
                   inputs: Optional[Path | str] = None, on_target: Optional[Callable[[TargetReport], None]] = None,
                   lava_synapses: str = "conv") -> VerifyReport:
    """``revsnn verify FILE.nir``: a NIR graph from any tool, converted to steps at ``dt``, on every target,
    against revsnn's reference executor; inputs are Bernoulli spikes (``rate``, ``seed``) or ``inputs`` (.npy)."""
    from .pipeline import foreign_inputs, load_source

    source = load_source(path, dt)
    x = foreign_inputs(source.graph, samples, time_steps, rate, seed, inputs)
    return verify_graph(source.graph, x, targets, on_target=on_target, lava_synapses=lava_synapses,
                        name=source.name)
