"""``revsnn report``: one self-contained HTML page on a trained checkpoint — does it run everywhere, does it fit
on Loihi 2, and what does an inference cost.

Like ``verify`` (which it calls), this is a place where the training core, the exporters and the targets meet
(DESIGN §3); nothing in the training core imports it, and it imports the exporters and targets only inside
its functions. For a checkpoint it:

1. summarises the model (family, parameters, input, training, accuracy);
2. runs ``revsnn.verify.verify`` on the chosen targets and shows its table;
3. measures activation memory against depth for the model's family (``revsnn.bench.memory_rows``);
4. counts activity on test samples (``exporters/activity.py``) for the float graph on the reference executor,
   each file target that exposes spikes (norse, onnxruntime), and, for models Loihi can run, the quantised
   reference, its relay chain and Lava's own run of the exported ``.net``; the synaptic operations of Lava's
   recorded spikes must equal the chain's;
5. shows the Loihi 2 resources of the chain (``exporters/loihi_resources.py``) and the energy per inference.

Plots are PNG, embedded in the page as base64, so the one file opens in a browser with no server and can be
mailed; ``report.json`` beside it holds every number. Both are written to temporary files and renamed.
"""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from .checkpoint import atomic_write, load_model
from .data import DataError, test_samples
from .errors import RevsnnError

__all__ = ["ReportError", "Costs", "model_costs", "write_report", "REPORT_TARGETS"]

REPORT_TARGETS = ("torch", "norse", "onnxruntime", "lava")
SPIKE_TARGETS = ("norse", "onnxruntime", "onnx-reference")   # file targets that expose every population's spikes


class ReportError(RevsnnError):
    """Bad report options; one sentence."""


@dataclass
class Costs:
    """Activity, energy and Loihi resources of one checkpoint on ``samples`` test samples."""

    model: str
    family: str
    encoding: str
    time_steps: int
    samples: int
    accuracy: Optional[float]                  # the checkpoint's recorded test accuracy
    sample_accuracy: float                     # the float reference's accuracy on these samples
    activities: dict[str, Any]                 # label -> exporters.activity.Activity
    resources: Any = None                      # exporters.loihi_resources.ChainResources, when Loihi runs it
    loihi_note: str = ""                       # why Loihi is not covered, or what was checked
    lava_equals_chain: Optional[bool] = None   # SOPs from Lava's spikes == SOPs of the chain reference
    details: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"model": self.model, "family": self.family, "encoding": self.encoding,
                "time_steps": self.time_steps, "samples": self.samples, "accuracy": self.accuracy,
                "sample_accuracy": self.sample_accuracy,
                "activities": {k: a.as_json() for k, a in self.activities.items()},
                "loihi_resources": self.resources.as_json() if self.resources is not None else None,
                "loihi_note": self.loihi_note, "lava_equals_chain": self.lava_equals_chain, **self.details}


def _settings(payload: dict, model) -> tuple[int, str]:
    train = payload.get("train", {})
    T = int(train.get("time_steps", model.config.get("train", {}).get("time_steps", 4)))
    return T, train.get("encoding", "direct")


def model_costs(checkpoint: Path | str, samples: int = 16, targets: tuple[str, ...] = REPORT_TARGETS,
                lava_synapses: str = "dense", on_step: Optional[Callable[[str], None]] = None,
                traces: Optional[dict[str, Any]] = None) -> Costs:
    """Count spikes, synaptic operations and MACs per inference on every requested target that exposes spikes,
    and the Loihi 2 resources when the model deploys there (see the module docstring). ``traces``: the
    targets' runs that ``verify`` already made on these samples (``VerifyReport.traces``); a target found
    there is not run again."""
    from revsnn.exporters.activity import count_activity
    from revsnn.exporters.collapse import collapse
    from revsnn.targets.reference import ReferenceExecutor

    say = on_step or (lambda s: None)
    if samples < 1:
        raise ReportError(f"--samples must be at least 1, got {samples}.")
    model, payload = load_model(checkpoint)
    config = model.config
    T, encoding = _settings(payload, model)
    # The same samples of the model's own data and the same draw as verify (revsnn.data.test_samples), so
    # that its table and these counts describe the same run.
    try:
        x, y = test_samples(payload, samples)
    except DataError as exc:
        raise ReportError(str(exc)) from exc
    x, n = x.double(), int(x.shape[1])
    say("collapsing the model and running the reference executor")
    collapsed = collapse(model.double().eval(), T)
    graph = collapsed.graph
    live = dict(collapsed.population_steps) if collapsed.population_steps else None
    static = bool(getattr(model, "static_input", False))
    if static:
        live = {**(live or {}), "input": 0}    # the stem reads x[0] only: later input steps reach nothing
    outputs, spikes = ReferenceExecutor(graph).run(x, record=True)
    readout = (graph.metadata or {}).get("readout", "mean")
    logits = outputs[-1] if readout == "last" else outputs.mean(0)
    sample_accuracy = float((logits.argmax(1) == y).double().mean())
    fan_outs: dict = {}
    acts: dict[str, Any] = {}
    acts["float"] = count_activity(graph, spikes, x, encoding, live, static, label="float graph, reference executor",
                                   fan_outs=fan_outs)
    details: dict = {}
    with tempfile.TemporaryDirectory(prefix="revsnn-report-") as tmp:
        from revsnn.targets.registry import get_target

        for name in targets:
            if name not in SPIKE_TARGETS:
                continue
            say(f"counting {name}'s spikes")
            try:
                if traces and name in traces:
                    t_spikes = traces[name].spikes
                else:
                    target = get_target(name)
                    options = {"time_steps": T}
                    t_spikes = target.run(target.export(graph, Path(tmp), **options), x, **options).spikes
            except RevsnnError as exc:   # a target this graph cannot go to (RevSFormer on norse): say so
                details[f"{name}_skipped"] = str(exc)
                continue
            acts[name] = count_activity(graph, t_spikes, x, encoding, live, static, label=f"{name} (float, its own run)",
                                        fan_outs=fan_outs)
        res, note, equal = None, _loihi_refusal(graph, encoding, config.get("name", "this model")), None
        if "lava" in targets:
            lava = (traces or {}).get("lava")
            res, note, equal = _loihi_costs(graph, x, encoding, config.get("name", "this model"), lava_synapses,
                                            Path(tmp), acts, say, lava.layer_spikes if lava is not None else None)
    history = payload.get("history") or []
    return Costs(config.get("name", "?"), config.get("family", "?"), encoding, T, n,
                 history[-1]["test_accuracy"] if history else None, sample_accuracy, acts, res, note, equal, details)


def _loihi_refusal(graph, encoding: str, name: str) -> str:
    """Why Loihi cannot run this model (its own sentence), or that lava was simply not asked for."""
    from revsnn.exporters.loihi import LoihiExportError, quantize, require_spike_input

    try:
        require_spike_input(encoding, name)
        quantize(graph)
    except LoihiExportError as exc:
        return str(exc)
    return "not computed: lava was not among the targets."


def _loihi_costs(graph, x, encoding: str, name: str, synapses: str, folder: Path, acts: dict, say,
                 layer_spikes: Optional[list] = None):
    from revsnn.exporters.activity import count_activity
    from revsnn.exporters.loihi import LoihiExportError, quantize, require_spike_input
    from revsnn.exporters.loihi_chain import build_chain
    from revsnn.exporters.loihi_resources import resources
    from revsnn.exporters.netx_file import write_netx
    from revsnn.targets.reference import ReferenceExecutor

    try:
        require_spike_input(encoding, name)
        say("quantising for Loihi 2 and building the relay chain")
        q = quantize(graph)
        chain = build_chain(q, synapses)
    except LoihiExportError as exc:
        return None, str(exc), None
    res = resources(chain)
    _, q_spikes = ReferenceExecutor(q.graph).run(x, record=True)
    acts["quantised"] = count_activity(q.graph, q_spikes, x, encoding, label="quantised reference (Loihi fixed point)")
    chain_graph = chain.to_graph()
    xc = x.reshape(x.shape[0], x.shape[1], *chain.input_shape)   # a dense first synapse reads the input flat
    _, c_spikes = ReferenceExecutor(chain_graph).run(xc, record=True)
    chain_fan: dict = {}
    acts["chain"] = count_activity(chain_graph, c_spikes, x, encoding, label="Loihi chain with relays (reference)",
                                   fan_outs=chain_fan)
    _mark_relays(acts["chain"], chain, c_spikes, chain_fan)
    if layer_spikes is None:   # verify did not run Lava on this chain: run it here
        say("running Lava's fixed-point simulation")
        from revsnn.targets.lava import LavaTarget

        target = LavaTarget.load(write_netx(chain, folder / "model.net"))
        target.run(x, record=True)
        layer_spikes = target.layer_spikes
    lava_spikes = {f"layer{k}": s for k, s in enumerate(layer_spikes)}
    acts["lava"] = count_activity(chain_graph, lava_spikes, x, encoding, label="lava (Loihi 2 simulation, its spikes)",
                                  fan_outs=chain_fan)
    _mark_relays(acts["lava"], chain, lava_spikes, chain_fan)
    equal = bool(np.array_equal(acts["lava"].per_step()["synops"], acts["chain"].per_step()["synops"]))
    note = (f"{chain.depth} netx layers ({synapses} synapses); Lava's recorded spikes give "
            f"{acts['lava'].synops:,.1f} SOPs per inference, the chain reference {acts['chain'].synops:,.1f}"
            f" ({'equal' if equal else 'DIFFERENT'}).")
    return res, note, equal


def _mark_relays(activity, chain, spikes: dict, fan: dict) -> None:
    """Split each chain layer's spikes and SOPs into the model's populations and the relays."""
    relay_spikes = relay_synops = 0.0
    per_layer = {}
    for k, layer in enumerate(chain.layers[:-1]):
        name = f"layer{k}"
        s = torch.as_tensor(spikes[name], dtype=torch.float64)
        T, B = s.shape[:2]
        flat = s.reshape(T, B, -1)
        mask = torch.zeros(flat.shape[2], dtype=torch.bool)
        for m in layer.members:
            if m.relay:
                lo, hi = layer.flat_range(m)
                mask[lo:hi] = True
        f = torch.as_tensor(fan[name], dtype=torch.float64)
        relay_spikes += float(flat[:, :, mask].sum()) / B
        per_layer[name] = float((flat[:, :, mask] @ f[mask]).sum()) / B
        relay_synops += per_layer[name]
    activity.details.update(relay_spikes=relay_spikes, relay_synops_total=relay_synops,
                            relay_synops_per_layer=per_layer)


# --------------------------------------------------------------------------------------------------------
# The page.


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plot_layers(costs: Costs) -> str:
    """Left: SOPs per population of the float graph (and of the quantised one, by name). Right: SOPs per
    netx layer of Lava's run (or the chain reference), split into the model's neurons and the relays."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chain = costs.activities.get("lava") or costs.activities.get("chain")
    fig, axes = plt.subplots(1, 2 if chain is not None else 1, figsize=(11 if chain is not None else 7, 4.2),
                             squeeze=False)
    ax = axes[0][0]
    names = [p.name for p in costs.activities["float"].populations]
    width = 0.4
    for i, key in enumerate(k for k in ("float", "quantised") if k in costs.activities):
        by = {p.name: p.synops.sum() for p in costs.activities[key].populations}
        ax.bar(np.arange(len(names)) + (i - 0.5) * width * (1 if "quantised" in costs.activities else 0),
               [by.get(n, 0.0) for n in names], width, label=costs.activities[key].label)
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=6 if len(names) > 12 else 8)
    ax.set_ylabel("SOPs per inference")
    ax.set_title("synaptic operations per population (the input: its spikes)")
    ax.legend(fontsize=7)
    if chain is not None:
        ax = axes[0][1]
        layers = [p for p in chain.populations]
        relay = chain.details.get("relay_synops_per_layer", {})
        model_part = [p.synops.sum() - relay.get(p.name, 0.0) for p in layers]
        relay_part = [relay.get(p.name, 0.0) for p in layers]
        idx = np.arange(len(layers))
        ax.bar(idx, model_part, label="model neurons (and the input)")
        ax.bar(idx, relay_part, bottom=model_part, label="sent by relays (identity hops + the last hop into a reader)")
        ax.set_xticks(idx)
        ax.set_xticklabels([p.name for p in layers], rotation=60, ha="right", fontsize=8)
        ax.set_title(f"{chain.label}: SOPs per netx layer")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _plot_steps(costs: Costs) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for a in costs.activities.values():
        steps = a.per_step()
        axes[0].plot(steps["spikes"], marker="o", label=a.label)
        axes[1].plot(steps["synops"], marker="o", label=a.label)
    axes[0].set_title("spikes per inference, per step")
    axes[1].set_title("synaptic operations per inference, per step")
    for ax in axes:
        ax.set_xlabel("time step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _plot_memory(rows: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        # the peak over forward + backward, by the allocator (the papers' measure; revsnn.bench.memory_rows)
        pts = sorted((r["depth"], r["peak_per_sample"] / 2 ** 20) for r in rows if r["variant"] == variant)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=variant)
    ax.set_xlabel("depth (weight layers on the longest path)")
    ax.set_ylabel("peak MiB per sample")
    ax.set_title(f"activation memory against depth ({rows[0]['method']}, T = {rows[0]['time_steps']})")
    ax.legend()
    fig.tight_layout()
    return _png(fig)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    def cell(c: Any) -> str:   # sentences read better left-aligned; numbers stay right-aligned
        text = str(c)
        cls = " class='text'" if len(text) > 12 and sum(ch.isalpha() for ch in text) > 6 else ""
        return f"<td{cls}>{html.escape(text)}</td>"

    body = "".join("<tr>" + "".join(cell(c) for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else ("100%" if v == 1.0 else f"{np.floor(v * 10000) / 100:.2f}%")


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 1150px; margin: 1.5em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }}
th, td {{ border: 1px solid #bbb; padding: 3px 8px; text-align: right; }}
th {{ background: #eee; }} td:first-child, th:first-child, td.text {{ text-align: left; }}
img {{ max-width: 100%; }} .note {{ color: #555; font-size: 0.9em; }}
#broken {{ display: none; background: #fdd; padding: 0.5em; }}
</style></head>
<body data-images="{images}">
<div id="broken">Some images of this report did not load.</div>
<h1>{title}</h1>
{body}
<script>
// Says on the page (and in body[data-images-loaded]) whether every embedded plot decoded.
window.addEventListener("load", function () {{
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
  document.body.setAttribute("data-images-loaded", String(ok));
  if (ok < imgs.length) {{ document.getElementById("broken").style.display = "block"; }}
}});
</script>
</body></html>
"""


def write_report(checkpoint: Path | str, out: Path | str, samples: int = 16,
                 targets: tuple[str, ...] = REPORT_TARGETS, lava_synapses: str = "dense",
                 memory_depths: tuple[int, ...] = (1, 2, 4),
                 on_step: Optional[Callable[[str], None]] = None) -> dict:
    """Write ``out/report.html`` (self-contained) and ``out/report.json``; returns the JSON dict."""
    from revsnn.exporters.activity import ENERGY_SOURCE
    from revsnn.exporters.loihi_resources import LIMIT_SOURCES
    from revsnn.verify import verify

    say = on_step or (lambda s: None)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file; give a directory for report.html and report.json.")
    if not out.parent.is_dir():
        raise ReportError(f"the parent of --out {out} does not exist; create it first.")
    from revsnn.fileio import check_writable_dir

    check_writable_dir(out if out.is_dir() else out.parent, "--out")  # before minutes of verify
    from revsnn.targets.registry import target_names

    unknown = [t for t in targets if t not in target_names()]
    if unknown:
        raise ReportError(f"unknown target {unknown[0]!r}; known: {', '.join(target_names())}.")
    t0 = time.perf_counter()
    model, payload = load_model(checkpoint)
    config = model.config
    if config.get("family") != "scnn" and memory_depths:   # before minutes of verify, not after
        from .limits import check_bench_memory

        check_bench_memory([(config, memory_depths)], _settings(payload, model)[0], 2, command="report")
    say("running verify on every target")
    report = verify(checkpoint, tuple(targets), samples, lava_synapses=lava_synapses)
    costs = model_costs(checkpoint, samples, tuple(targets), lava_synapses, on_step=say, traces=report.traces)
    say("measuring activation memory against depth")
    mem_rows, mem_note = _memory(config, costs.time_steps, memory_depths)

    sections = []
    params = sum(p.numel() for p in model.parameters())
    train = payload.get("train", {})
    summary_rows = [["model", f"{config.get('name')} ({config.get('family')})"], ["parameters", f"{params:,}"],
                    ["input", "×".join(map(str, config.get("input_shape", []))) + f", {config.get('num_classes')} classes"],
                    *[[k, v] for k, v in train.items()],
                    ["test accuracy (checkpoint)", _pct(costs.accuracy)],
                    [f"accuracy on the {costs.samples} report samples", _pct(costs.sample_accuracy)]]
    sections.append("<h2>Model</h2>" + _table(["", ""], summary_rows))

    v_rows = [[t.name, _pct(t.output_spike_agreement), _pct(t.spike_agreement), f"{t.threshold_ties}/{t.tie_samples}",
               _pct(t.prediction_agreement), f"{t.max_abs_diff:.1e}", f"{t.seconds:.1f}", "pass" if t.ok else "FAIL",
               t.note] for t in report.targets.values()]
    sections.append(f"<h2>Verify: {report.samples} test samples × {report.time_steps} steps ({report.encoding})</h2>"
                    + _table(["target", "output spikes", "all spikes", "ties", "predictions", "max |Δ|", "s", "ok",
                              "compared with"], v_rows))

    if mem_rows:
        mem_table = [[r["variant"], r["depth"], f"{r['retained_per_sample'] / 2 ** 20:.3f}",
                      f"{r['peak_per_sample'] / 2 ** 20:.3f}"] for r in mem_rows]
        sections.append("<h2>Activation memory against depth</h2>"
                        f"<p class='note'>{html.escape(mem_note)}</p>"
                        f"<img alt='memory against depth' src='data:image/png;base64,{_plot_memory(mem_rows)}'>"
                        + _table(["variant", "depth", "retained MiB per sample", "peak MiB per sample"],
                                 mem_table))
    else:
        sections.append(f"<h2>Activation memory against depth</h2><p class='note'>{html.escape(mem_note)}</p>")

    e_rows = []
    for a in costs.activities.values():
        e_rows.append([a.label, _num(a.spikes), _num(a.synops), _num(a.details.get("relay_synops_total", 0.0)),
                       _num(a.total_macs), f"{a.energy_pj / 1e3:,.2f}"])
    overhead = ""
    if "chain" in costs.activities and "quantised" in costs.activities:
        q_sops, c_sops = costs.activities["quantised"].synops, costs.activities["chain"].synops
        overhead = (f"<p>Relay overhead: the chain spends {_num(c_sops - q_sops)} more SOPs per inference than the "
                    f"quantised reference ({(c_sops - q_sops) / max(q_sops, 1):+.2%}): the relays' identity hops. "
                    "(The relays' own column also holds the last hop into each reader, which the model pays "
                    "anyway.)</p>")
    sections.append("<h2>Activity and energy per inference</h2>"
                    f"<p class='note'>Mean over {costs.samples} test samples, T = {costs.time_steps}. SOPs: spikes × "
                    "fan-out (the input's spikes included when it is rate-coded); MACs: the real-valued first "
                    f"layer of direct-encoded input. Energy: {html.escape(ENERGY_SOURCE)}.</p>"
                    + _table(["run", "spikes", "SOPs", "SOPs sent by relays", "MACs", "energy (nJ)"], e_rows)
                    + overhead
                    + f"<img alt='per population' src='data:image/png;base64,{_plot_layers(costs)}'>"
                    + f"<img alt='per step' src='data:image/png;base64,{_plot_steps(costs)}'>")
    float_act = costs.activities["float"]
    pop_rows = [[p.name, p.neurons, p.synapses, _num(p.spikes.sum()), f"{p.rate:.3f}", _num(p.synops.sum()),
                 " ".join(_num(v) for v in p.synops)] for p in float_act.populations]
    sections.append("<h3>Per population (float graph)</h3>"
                    + _table(["population", "neurons", "synapses", "spikes", "rate", "SOPs", "SOPs per step"], pop_rows))

    if costs.resources is not None:
        r = costs.resources
        l_rows = [[layer.index, "readout" if layer.readout else layer.kind, "×".join(map(str, layer.shape)),
                   f"{layer.neurons:,}", f"{layer.relay_neurons:,}", f"{layer.synapses:,}", f"{layer.relay_synapses:,}",
                   layer.weight_bits, f"{layer.synaptic_bytes:,}", f"{layer.fan_in_max:,}", f"{layer.fan_out_max:,}",
                   layer.cores] for layer in r.layers]
        l_rows.append(["total", "", "", f"{r.total('neurons'):,}", f"{r.total('relay_neurons'):,}",
                       f"{r.total('synapses'):,}", f"{r.total('relay_synapses'):,}", "",
                       f"{r.total('synaptic_bytes'):,}", "", "", r.cores])
        limits = "; ".join(f"{k} = {v:,}" for k, v in r.limits.items())
        sources = "; ".join(f"{k}: {v}" for k, v in LIMIT_SOURCES.items())
        problems = r.violations()
        sections.append("<h2>Loihi 2 resources</h2>"
                        f"<p>{r.cores} neuro-cores, {r.chips} chip(s). {html.escape(costs.loihi_note)}</p>"
                        + ("<p><b>Does not fit:</b> " + html.escape(problems[0]) + "</p>" if problems else "")
                        + _table(["layer", "type", "shape", "neurons", "relays", "synapses", "relay synapses",
                                  "weight bits", "synaptic bytes (est.)", "max fan-in", "max fan-out", "cores"], l_rows)
                        + f"<p class='note'>Limits: {html.escape(limits)}. Sources: {html.escape(sources)}. Synaptic "
                          "bytes are an estimate (weights only, no index overhead or kernel sharing).</p>")
    else:
        sections.append(f"<h2>Loihi 2 resources</h2><p>No Loihi figures: {html.escape(costs.loihi_note)}</p>")
    sections.append(f"<p class='note'>Written by revsnn in {time.perf_counter() - t0:.0f} s from {html.escape(str(checkpoint))}.</p>")

    images = sum(s.count("<img ") for s in sections)
    page = _PAGE.format(title=html.escape(f"revsnn report: {config.get('name')}"), body="\n".join(sections),
                        images=images)
    data = {"model": config.get("name"), "verify": report.as_json(), "costs": costs.as_json(),
            "memory": mem_rows, "memory_note": mem_note, "images": images}
    out.mkdir(exist_ok=True)
    atomic_write(out / "report.json", lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n"))
    atomic_write(out / "report.html", lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return data


def _jsonable(v):
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def _memory(config: dict, time_steps: int, depths: tuple[int, ...]) -> tuple[list[dict], str]:
    """Activation memory per sample against depth, for the checkpoint's own configuration (its widths) with
    1, 2, 4 ... blocks per stage (``revsnn.bench``'s depth rule and meter)."""
    from . import bench

    family = config.get("family")
    if family == "scnn":
        return [], "scnn is a fixed-depth plain baseline; there is no depth sweep."
    if not depths:
        return [], "not measured (no depths asked for)."
    rows = []
    for scale in depths:
        cfg = bench._with_depth(dict(config), scale)
        # The torch.utils.checkpoint variant is left to `revsnn bench memory`: its first call alone takes
        # longer than the whole sweep here; so is the chunked backward (issue 18), a memory-for-time option.
        for variant in (v for v in bench.variants_of(family) if v not in ("checkpoint", "reversible-chunked")):
            rows.append(bench._measure(cfg, variant, time_steps, 2, "cpu"))
    return rows, (f"{config.get('name')} at its own widths with depth scales {', '.join(map(str, depths))} "
                  "(fresh weights: memory does not depend on them), by the allocator (CPU profiler memory events, "
                  "per sample between batch 2 and 4); the "
                  "torch.utils.checkpoint variant is in `revsnn bench memory`.")
