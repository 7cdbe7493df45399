"""Loihi-aware training: ``revsnn finetune CKPT --for loihi`` and ``revsnn train --loihi-aware`` (issue 15).

The forward pass computes what the Lava export deploys, bit for bit; the backward pass goes straight
through its rounding.

**One source of truth for the grid.** This module is a meeting place (like ``verify.py``): it imports the
exporters, so it asks the quantiser itself for everything: every forward collapses the current model
(``exporters/collapse.py``: BatchNorm folded, reversible blocks as fan-in) and quantises it
(``exporters/loihi.py``: the per-layer scales, integer weights and biases, ``vThMant``, decays in 1/4096),
and the neurons step with ``exporters/nodes.loihi_update``, the same function the quantised reference
executor steps with (24-bit state, shifts rounding toward zero, strict threshold, hard reset). Nothing of
that arithmetic is written twice, so the trained model and the exported ``.net`` cannot drift apart: the
fine-tuned checkpoint's Loihi-aware forward *is* ``quantize(collapse(checkpoint))`` run by the reference
executor (a test checks it, spikes and readout, exactly). Why a meeting place rather than moving the grid
arithmetic into the training core: the scales depend on the folded paths (BatchNorm, pooling, the sums of a
reversible stream), which only the exporter's collapse computes; the core would have had to fold them again.

**Forward.** The model runs its own ``forward`` (so reversible blocks, streams and heads work as written),
with every neuron population replaced by Loihi's integer neuron: the population's synaptic input is the
quantiser's integer matrices applied to the spikes its sources emitted in this forward (the input, or
earlier populations), plus its integer bias, computed in float64 on integer values (exact: every sum is
far below 2^53). Its spikes are what the next populations read. The readout is the quantised graph's
readout population (its potential ``v / 64 / sigma`` per step, then the model's mean over time).

**Backward (straight through).** The model's own layers compute, from the same spikes, the float input
``x`` of each population; the integer drive ``round(sigma g M) s`` is treated as ``sigma g M s``, i.e. as
``sigma g x``, so the gradient reaches the weights through the model's float layers (BatchNorm folded:
frozen in eval mode while fine-tuning, as the exporter folds its running statistics). Through time it is
the float neuron's chain rule on the quantised potentials (``v / 64 / sigma``) with the model's own
surrogate; the readout passes its gradient to the model's float logits unchanged.

**Memory.** The reversible blocks still run their custom Function: the float activations are not kept and
are recomputed in backward, the quantised forward with them. What is kept are the populations' spike
trains (0/1, one byte each), because a Loihi population's integer input is a function of its sources' spikes (which reach
it through the stream sums) and not of the float stream the blocks reconstruct.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from .checkpoint import CheckpointError, load_checkpoint, write_json
from .errors import RevsnnError
from .neurons import IF, LIF, SpikingNeuron

__all__ = ["FinetuneError", "LoihiAware", "finetune", "train_loihi_aware", "loihi_report", "TARGETS"]

TARGETS = ("loihi",)


class FinetuneError(RevsnnError):
    """A checkpoint or option that Loihi-aware training cannot use; one sentence naming the fix."""


@dataclass
class _Population:
    name: str
    shape: tuple[int, ...]
    terms: list[tuple[str, Tensor]]   # (source, integer weight matrix [N, N_src] as float64)
    bias: Tensor                      # int64, already << 6
    keep_u: int
    keep_v: int
    th: int                           # vThMant << 6
    scale: float                      # 64 sigma: the float potential is v / scale
    theta: float                      # the float threshold (vThMant / sigma)
    g: float                          # the float input scale (1 / tau for LIF, 1 for IF)
    surrogate: Any = None
    detach_reset: bool = True


class _Plan:
    """The quantised graph of the current parameters, and the spikes of this forward."""

    def __init__(self, quantized, collapsed, model: nn.Module):
        from revsnn.exporters.loihi import _neuron_constants  # the quantiser's own (theta, g, decays)

        graph = quantized.graph
        self.readout_mode = (collapsed.graph.metadata or {}).get("readout", "mean")
        modules = dict(model.named_modules())
        self.pops: dict[str, _Population] = {}
        self.by_module: dict[str, list[tuple[str, int, int]]] = {}
        for name, srcs in quantized.sources.items():
            node = graph.nodes[name]
            terms = [(s, torch.as_tensor(graph.nodes[f"{s}.to.{name}"].weight, dtype=torch.float64)) for s in srcs]
            pop = _Population(name, quantized.populations[name].shape, terms,
                              torch.as_tensor(node.bias, dtype=torch.int64).reshape(-1) << 6,
                              4096 - int(node.i_decay), 4096 - int(node.v_decay), int(node.v_th_mant) << 6,
                              64.0 * float(node.scale), 0.0, 1.0)
            if name != quantized.readout:
                theta, g, _, i_decay = _neuron_constants(name, collapsed.graph.nodes[name])
                if i_decay != 4096:
                    raise FinetuneError(f"population {name!r} keeps a synaptic current; Loihi-aware training "
                                        "handles LIF and IF neurons only.")
                path, c0, c1 = collapsed.populations[name]
                neuron = modules.get("" if path == "model" else path)
                if not isinstance(neuron, (LIF, IF)):
                    raise FinetuneError(f"population {name!r} comes from {path!r}, which is not a LIF or IF neuron "
                                        "module; Loihi-aware training cannot replace it.")
                pop.theta, pop.g = theta, g
                pop.surrogate, pop.detach_reset = neuron.surrogate, neuron.detach_reset
                ranges = self.by_module.setdefault(path, [])
                if any(not (c1 <= a or b <= c0) for _, a, b in ranges):
                    raise FinetuneError(f"the neuron module {path!r} runs more than once in a forward; Loihi-aware "
                                        "training needs one neuron module per population.")
                ranges.append((name, c0, c1))
            self.pops[name] = pop
        self.readout = quantized.readout
        self.spikes: dict[str, Tensor] = {}
        self.readout_steps: Optional[Tensor] = None

    def drive(self, name: str) -> Tensor:
        """The population's synaptic input ``[T, B, N]``: integer weights times the sources' spikes."""
        pop = self.pops[name]
        total = None
        for src, w in pop.terms:
            if src not in self.spikes:
                raise FinetuneError(f"population {name!r} reads {src!r} before it ran; the model's forward does "
                                    "not follow its collapsed graph.")
            a = self.spikes[src].to(torch.float64) @ w.T   # exact: 0/1 times integers
            total = a if total is None else total + a
        return total


class _LoihiNeuronFn(torch.autograd.Function):
    """Loihi's integer neuron over ``[T, B, N]`` in the forward; the float chain rule in the backward."""

    @staticmethod
    def forward(ctx, x: Tensor, drive: Tensor, pop: _Population):
        a = torch.round(drive).to(torch.int64)
        u = torch.zeros_like(a[0])
        v = torch.zeros_like(a[0])
        spikes, potentials = [], []
        for t in range(a.shape[0]):
            u, v, s = _update(u, v, a[t], pop)
            potentials.append(v.to(torch.float64) / pop.scale)
            spikes.append(s.to(torch.float64))
            v = torch.where(s, torch.zeros_like(v), v)
        h = torch.stack(potentials)
        ctx.save_for_backward(h)
        ctx.pop = pop
        ctx.x_dtype = x.dtype
        return torch.stack(spikes)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, ds: Tensor):
        (h,) = ctx.saved_tensors
        pop = ctx.pop
        leak = pop.keep_v / 4096.0   # p_t = leak p_{t-1} + g x_t in float potentials
        dx = torch.empty_like(h)
        dv = torch.zeros_like(h[0])
        for t in reversed(range(h.shape[0])):
            u = h[t] - pop.theta
            s = (u > 0).to(h.dtype)
            sg = pop.surrogate.grad(u)
            dh = dv * (1.0 - s) + ds[t].to(h.dtype) * sg
            if not pop.detach_reset:
                dh = dh - dv * h[t] * sg   # v = h (1 - s), reset to 0
            dx[t] = dh * pop.g
            dv = dh * leak
        return dx.to(ctx.x_dtype), None, None


def _update(u, v, a, pop: _Population):
    from revsnn.exporters.nodes import loihi_update

    return loihi_update(u, v, a, pop.keep_u, pop.keep_v, pop.bias, pop.th)


class _StraightThrough(torch.autograd.Function):
    """Forward ``exact``; backward the gradient to ``approx`` unchanged."""

    @staticmethod
    def forward(ctx, approx: Tensor, exact: Tensor):
        return exact.to(approx.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


class LoihiAware(nn.Module):
    """Wraps a model: its forward is the Loihi 2 fixed-point network the exporter makes of it (module
    docstring). ``model`` keeps its float parameters (what the optimizer trains and the checkpoint stores);
    dropout stays in eval mode (the exporter drops it), and so does BatchNorm with ``fold_batchnorm`` (the
    exporter folds its running statistics, so the gradient sees what the forward computes).

    ``fold_batchnorm=False`` (training from scratch) lets BatchNorm train on batch statistics and update its
    running ones, which every forward folds: a fresh model's statistics (mean 0, variance 1) would fold into
    layers so weak that the quantised network never fires and nothing learns."""

    def __init__(self, model: nn.Module, time_steps: int, fold_batchnorm: bool = True):
        super().__init__()
        self.model = model
        self.time_steps = int(time_steps)
        self.fold_batchnorm = fold_batchnorm
        self._plan: Optional[_Plan] = None
        for path, m in model.named_modules():
            if isinstance(m, SpikingNeuron):
                m.forward = self._hook(path or "model", m, m.forward)

    def _hook(self, path: str, module: SpikingNeuron, original):
        def forward(x_seq: Tensor) -> Tensor:
            plan = self._plan
            if plan is None:
                return original(x_seq)
            outs = []
            for name, c0, c1 in plan.by_module.get(path, []):
                pop = plan.pops[name]
                xs = x_seq[:, :, c0:c1]
                if tuple(xs.shape[2:]) != tuple(pop.shape):
                    raise FinetuneError(f"{path}: population {name!r} has shape {pop.shape}, the module got "
                                        f"{tuple(xs.shape[2:])}.")
                T, B = xs.shape[:2]
                flat = xs.reshape(T, B, -1)
                s = _LoihiNeuronFn.apply(flat, plan.drive(name).reshape(T, B, -1), pop)
                plan.spikes[name] = s.detach().to(torch.bool)   # kept until backward: 1 byte a spike
                outs.append(s.reshape(xs.shape).to(x_seq.dtype))
            if not outs:
                raise FinetuneError(f"{path} runs in the forward but has no population in the collapsed graph.")
            return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        return forward

    def train(self, mode: bool = True) -> "LoihiAware":
        super().train(mode)
        frozen = (nn.Dropout, nn.Dropout1d, nn.Dropout2d) + \
            ((nn.modules.batchnorm._BatchNorm,) if self.fold_batchnorm else ())
        for m in self.model.modules():
            if isinstance(m, frozen):
                m.eval()
        return self

    def quantized(self):
        """``(Quantized, Collapsed)`` of the current parameters: what the Lava export deploys."""
        from revsnn.exporters.collapse import CollapseError, collapse
        from revsnn.exporters.loihi import LoihiExportError, quantize

        try:
            collapsed = collapse(self.model, self.time_steps)
            return quantize(collapsed.graph), collapsed
        except (CollapseError, LoihiExportError) as exc:
            raise FinetuneError(f"this model cannot be trained for Loihi: {exc}") from exc

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] != self.time_steps:
            raise FinetuneError(f"the Loihi-aware forward was set up for T = {self.time_steps}, got {x.shape[0]}.")
        quantized, collapsed = self.quantized()
        plan = _Plan(quantized, collapsed, self.model)
        T, B = x.shape[:2]
        plan.spikes["input"] = x.detach().reshape(T, B, -1).to(torch.float64)
        self._plan = plan   # kept for the backward, whose reversible recompute runs the neurons again
        logits = self.model(x)
        readout = plan.pops[plan.readout]
        a = torch.round(plan.drive(plan.readout)).to(torch.int64)
        u = torch.zeros_like(a[0])
        v = torch.zeros_like(a[0])
        steps = []
        for t in range(T):   # the readout population, as the reference executor steps it
            u, v, s = _update(u, v, a[t], readout)
            steps.append(v.to(torch.float64) / readout.scale)
            v = torch.where(s, torch.zeros_like(v), v)
        plan.readout_steps = torch.stack(steps)
        exact = plan.readout_steps[-1] if plan.readout_mode == "last" else plan.readout_steps.mean(0)
        return _StraightThrough.apply(logits, exact)

    def release(self) -> None:
        """Back to the float model (after backward): the neurons run their own forward again."""
        self._plan = None

    @property
    def last_spikes(self) -> dict[str, Tensor]:
        return {} if self._plan is None else {k: v.to(torch.float64) for k, v in self._plan.spikes.items()
                                              if k != "input"}

    @property
    def last_readout(self) -> Optional[Tensor]:
        return None if self._plan is None else self._plan.readout_steps

    @torch.no_grad()
    def evaluate(self, splits, settings: dict) -> dict[str, float]:
        """The quantised test accuracy (the trainer's epoch record gets it beside the float one)."""
        from .data import make_loader, to_input

        was = self.training
        self.eval()
        generator = torch.Generator().manual_seed(1234)   # the same draws as revsnn.train.evaluate
        n = len(splits.test)
        loader = make_loader(splits.test, list(torch.arange(n).split(256)), 0)
        correct = 0
        try:
            for xb, yb in loader:
                x = to_input(xb, splits, settings["time_steps"], settings["encoding"], generator)
                correct += int((self(x).argmax(1) == yb).sum())
        finally:
            self.release()
            self.train(was)
        return {"quantized_test_accuracy": correct / max(1, n)}


# --------------------------------------------------------------------------------------------------------
# Entry points.


def _factory(time_steps: int, state_dict: Optional[dict] = None, fold_batchnorm: bool = True):
    def make(model: nn.Module) -> LoihiAware:
        if state_dict is not None:
            model.load_state_dict(state_dict)
        return LoihiAware(model, time_steps, fold_batchnorm)
    return make


def train_loihi_aware(opts, reporter=None, data=None) -> dict:
    """``revsnn train --loihi-aware``: train from scratch with the Loihi-aware forward."""
    from .train import resolve_options, train

    s = resolve_options(opts)
    _require_spikes(s["encoding"], opts.model)
    if s["mixup"] > 0:   # a blend of two spike trains is not spikes: Loihi could not receive it
        raise FinetuneError("--loihi-aware trains on the spikes Loihi receives; mixup blends them into real values, "
                            "so drop --mixup (or the preset's).")
    if s.get("precision") in ("bf16", "fp16"):   # the exact readout would be rounded to half precision
        raise FinetuneError("--loihi-aware computes Loihi's integers exactly; train in fp32 or fp64, not "
                            f"{s['precision']}.")
    if s["ema"] is not None:   # the average is a copy of the model that the Loihi-aware forward does not drive
        raise FinetuneError("--loihi-aware does not keep an EMA of the weights; drop --ema (or the preset's).")
    metrics = train(opts, reporter, data, loihi=_factory(s["time_steps"], fold_batchnorm=False))
    return metrics


def _require_spikes(encoding: str, model: str) -> None:
    from revsnn.exporters.loihi import LoihiExportError, require_spike_input

    try:
        require_spike_input(encoding, model)
    except LoihiExportError as exc:
        raise FinetuneError(str(exc)) from exc


def finetune(checkpoint: Path | str, target: str = "loihi", epochs: int = 3, out: Path | str = "finetuned",
             lr: Optional[float] = None, batch_size: Optional[int] = None, seed: int = 0, reporter=None,
             data=None, samples: Optional[int] = None) -> dict:
    """``revsnn finetune CKPT --for loihi``: continue training a float checkpoint with the Loihi-aware forward;
    writes ``OUT/model.pt`` and ``OUT/metrics.json`` as ``train`` does, the latter with a ``loihi`` block: test
    accuracy (float and quantised) and prediction / spike agreement of the quantised network with the float
    model, before and after."""
    from .train import TrainOptions, train

    if target not in TARGETS:
        raise FinetuneError(f"--for must be one of {', '.join(TARGETS)}, got {target!r}.")
    if not (isinstance(epochs, int) and epochs >= 1):
        raise FinetuneError(f"--epochs must be at least 1, got {epochs}.")
    if lr is not None and not (lr > 0 and math.isfinite(lr)):
        raise FinetuneError(f"--lr must be a positive number, got {lr}.")
    try:
        payload = load_checkpoint(checkpoint)
    except CheckpointError as exc:
        raise FinetuneError(str(exc)) from exc
    config, settings = payload["config"], dict(payload.get("train") or {})
    name = config.get("name")
    if not name or "builder" in config:
        raise FinetuneError(f"{checkpoint} holds a model of your own; fine-tuning rebuilds zoo models only "
                            "(use `revsnn train --model MODULE:FUNCTION --loihi-aware` to train it for Loihi).")
    encoding = settings.get("encoding", "direct")
    _require_spikes(encoding, name)
    record = payload.get("data") or {}
    out = Path(out)
    if out.resolve() == Path(checkpoint).resolve().parent:
        raise FinetuneError(f"--out {out} is the folder of the checkpoint being fine-tuned; give a new folder.")
    # A tenth of the original rate: the weights are already trained, the grid moves them only a little.
    opts = TrainOptions(model=name, out=out, epochs=epochs, time_steps=settings.get("time_steps"),
                        batch_size=batch_size or settings.get("batch_size"),
                        lr=lr if lr is not None else float(settings.get("lr", 1e-3)) / 10, seed=seed,
                        encoding=encoding, data=record.get("name", "digits"),
                        data_dir=Path(record["folder"]) if record.get("folder") else None,
                        schedule="cosine", warmup_epochs=0, mixup=0.0, ema=None, augment=False)
    from .checkpoint import load_model

    float_model, _ = load_model(checkpoint)
    from .train import _load_data, resolve_options

    resolved = resolve_options(opts)   # every option (and --out) checked before anything runs
    if data is None:
        data = _load_data(opts, resolved, None)
    before = loihi_report(float_model, settings["time_steps"], encoding, data, samples)
    metrics = train(opts, reporter, data, loihi=_factory(int(settings["time_steps"]), payload["state_dict"]))
    tuned, _ = load_model(out / "model.pt")
    after = loihi_report(tuned, settings["time_steps"], encoding, data, samples)
    metrics["loihi"] = {"finetuned_from": str(checkpoint), "for": target, "before": before, "after": after}
    write_json(out / "metrics.json", metrics)
    return metrics


@torch.no_grad()
def loihi_report(model: nn.Module, time_steps: int, encoding: str, data, samples: Optional[int] = None) -> dict:
    """Test accuracy of the float model and of its quantised network (``quantize(collapse(model))`` in the
    reference executor, which Lava runs bit for bit), and their agreement: predictions, and spikes over every
    population, neuron and step (as ``verify`` counts them)."""
    from revsnn.exporters.collapse import collapse
    from revsnn.exporters.loihi import quantize
    from revsnn.targets.reference import ReferenceExecutor

    from .data import ImageData, as_splits, make_loader, to_input

    splits = as_splits(data) if isinstance(data, ImageData) else data
    generator = torch.Generator().manual_seed(1234)   # the draws of revsnn.train.evaluate
    model = model.double().eval()
    collapsed = collapse(model, time_steps)
    qgraph = quantize(collapsed.graph).graph
    readout = (collapsed.graph.metadata or {}).get("readout", "mean")
    pick = (lambda o: o[-1]) if readout == "last" else (lambda o: o.mean(0))  # noqa: E731
    n_float = n_quant = n_same = total = same = count = 0
    n = len(splits.test) if samples is None else min(samples, len(splits.test))
    batches = ((to_input(xb, splits, time_steps, encoding, generator), yb)
               for xb, yb in make_loader(splits.test, list(torch.arange(n).split(256))))
    for x, y in batches:
        x = x.double()
        fo, fs = ReferenceExecutor(collapsed.graph).run(x, record=True)
        qo, qs = ReferenceExecutor(qgraph).run(x, record=True)
        pf, pq = pick(fo).argmax(1), pick(qo).argmax(1)
        n_float += int((pf == y).sum())
        n_quant += int((pq == y).sum())
        n_same += int((pf == pq).sum())
        count += len(y)
        for k, v in qs.items():
            if k in fs:
                total += v.numel()
                same += int((v == fs[k].reshape(v.shape)).sum())
    return {"samples": count, "float_accuracy": n_float / count, "quantized_accuracy": n_quant / count,
            "prediction_agreement": n_same / count, "spike_agreement": same / total if total else None}
