"""Benchmarks of issue 14: ``revsnn bench precision`` and ``revsnn bench distributed``.

- precision: for each family, under bf16 (or fp16) autocast against float32, the error of the inputs that
  reversal reconstructs (what backward recomputes from) and of the parameter gradient; and, beside it, the
  gradient error of the plain-autograd twin under the same autocast (what half precision costs without any
  reversal), and the reconstruction error with the streams left in half precision (what the float32
  stream policy of ``revsnn.precision`` avoids).
- distributed: training samples per second with 1 and with N processes (gloo, CPU; nccl on CUDA), as a
  ratio, and the per-rank activation memory per sample at several depths (allocator, as ``bench memory``).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor, nn

from .data import encode, load_digits
from .models import build_model, get_config
from .neurons import reset_states
from .reversible import ReversibleSequence, plain_twin

__all__ = ["PRECISION_MODELS", "precision_rows", "distributed_rows"]

PRECISION_MODELS = ("revsresnet-digits", "pararevsnn-digits", "revsformer-digits", "trevsnn-digits",
                    "revnode-digits", "scnn-digits")


def _digits_batch(batch: int, time_steps: int) -> tuple[Tensor, Tensor]:
    d = load_digits()
    return encode(d.x_test[:batch], time_steps, "direct"), d.y_test[:batch]


def _grads(model: nn.Module, x: Tensor, y: Tensor, dtype: Optional[torch.dtype]) -> Tensor:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        loss = nn.functional.cross_entropy(model(x).float(), y)
    loss.backward()
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _capture_inputs(model: nn.Module, kinds: tuple[type, ...], x: Tensor, dtype) -> list[tuple[nn.Module, Tensor, Any]]:
    """Run a training-mode forward under autocast, recording each ``kinds`` module's input and output."""
    seen = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append((mod, inp[0].detach(), out)))
             for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _reconstruction_error(model: nn.Module, x: Tensor, dtype, half_streams: bool = False) -> Optional[float]:
    """Largest relative error of what reversal rebuilds, over the model's reversible parts (None: none)."""
    from .models.revnode import RevLIFNode
    from .models.trev import TRevColumns

    errors = []
    for seq, inp, out in _capture_inputs(model, (ReversibleSequence,), x, dtype):
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            reset_states(seq)
            if half_streams:  # the counterfactual: the coupling halves in half precision, forward and back
                x1, x2 = seq.split(inp.to(dtype))
                for block in seq.blocks:
                    x1, x2 = block(x1, x2)
                    x1, x2 = x1.to(dtype), x2.to(dtype)
                out = torch.cat((x1, x2), seq.split_dim)
                y1, y2 = seq.split(out)
                for block in reversed(seq.blocks):
                    reset_states(block)
                    y1, y2 = block.inverse(y1, y2)
                    y1, y2 = y1.to(dtype), y2.to(dtype)
                rec = torch.cat((y1, y2), seq.split_dim)
            else:
                rec = seq.inverse(out)
        errors.append(_rel(rec, inp.float()))
    if half_streams:  # only the coupling halves have a half-precision counterfactual
        return max(errors) if errors else None
    for body, inp, out in _capture_inputs(model, (TRevColumns,), x, dtype):
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            reset_states(body)
            states = body.column_states(inp)
            rec = list(states[-1])
            for t in range(body.time_steps - 1, 0, -1):  # chained, column by column, as backward walks
                reset_states(body)
                rec = body.inverse_column(t, inp, rec)
        errors.append(max(_rel(r, s) for r, s in zip(rec, states[0])))
    for node, inp, out in _capture_inputs(model, (RevLIFNode,), x, dtype):
        with torch.no_grad():
            xs = inp.float()
            v = torch.zeros_like(xs[0])
            ys, spikes = [], []
            for t in range(xs.shape[0]):
                y, v, s, _ = node.step_full(xs[t], v)
                ys.append(y)
                spikes.append(s)
            rec = []
            for t in reversed(range(xs.shape[0])):
                x_t, v = node.inverse_step(ys[t], v, spikes[t])
                rec.append(x_t)
        errors.append(_rel(torch.stack(rec[::-1]), xs))
    return max(errors) if errors else None


def precision_rows(models: Iterable[str] = PRECISION_MODELS, precision: str = "bf16", batch: int = 32,
                   time_steps: int = 4, seed: int = 0,
                   on_row: Optional[Callable[[dict[str, Any]], None]] = None) -> list[dict[str, Any]]:
    """For each model: reconstruction and gradient errors of ``precision`` autocast against float32."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    rows = []
    for name in models:
        config = get_config(name)
        t = config.get("time_steps") or time_steps
        x, y = _digits_batch(batch, t)
        torch.manual_seed(seed)
        model = build_model(config).train()
        twin = plain_twin(model).train()
        # Buffers move during training-mode forwards; every run below starts from the same ones.
        start = {k: v.clone() for k, v in model.state_dict().items()}

        def fresh(m: nn.Module) -> nn.Module:
            m.load_state_dict(start)
            return m

        g32 = _grads(fresh(twin), x, y, None)
        g_rev32 = _grads(fresh(model), x, y, None)
        g_rev = _grads(fresh(model), x, y, dtype)
        g_twin = _grads(fresh(twin), x, y, dtype)
        rec = _reconstruction_error(fresh(model), x, dtype)
        rec_half = _reconstruction_error(fresh(model), x, dtype, half_streams=True)
        rec32 = _reconstruction_error(fresh(model), x, None) if rec is not None else None
        row = {"model": name, "family": config["family"], "precision": precision, "batch": batch, "time_steps": t,
               "reconstruction_error": rec, "reconstruction_error_fp32": rec32,
               "reconstruction_error_half_streams": rec_half,
               "gradient_error": _rel(g_rev, g32), "gradient_error_plain_twin": _rel(g_twin, g32),
               "gradient_cosine": float(nn.functional.cosine_similarity(g_rev.double(), g32.double(), dim=0)),
               "reversal_gradient_error": _rel(g_rev, g_twin),
               "gradient_error_fp32_reversible": _rel(g_rev32, g32)}
        rows.append(row)
        if on_row:
            on_row(row)
    return rows


# --------------------------------------------------------------------------------------------------------
# Samples per second on 1 and N processes, and per-rank memory against depth.


def _rank_bench(model_name: str, batch: int, time_steps: int, steps: int, depths: list[int],
                memory_batch: int, threads: Optional[int]) -> dict[str, Any]:
    """One rank's measurement (run under ``revsnn.distributed.launch``)."""
    import torch.distributed as dist

    from . import distributed as D
    from .bench import _with_depth
    from .memory import memory_per_sample

    ctx, device = D.setup("cpu")
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        config = get_config(model_name)
        t = config.get("time_steps") or time_steps
        classes = config["num_classes"]
        share = batch // ctx.world
        torch.manual_seed(0)
        model = build_model(config).to(device).train()
        net = D.wrap_model(model, ctx, device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(ctx.rank)
        x = torch.rand(t, share, *config["input_shape"], generator=g)
        y = torch.randint(0, classes, (share,), generator=g)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()

        step()  # warm-up
        D.barrier(ctx)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        D.barrier(ctx)
        seconds = time.perf_counter() - t0
        memory = []
        for depth in depths:
            torch.manual_seed(0)
            m = build_model(_with_depth(config, depth)).to(device).train()
            wrapped = D.wrap_model(m, ctx, device)
            make = lambda b: torch.rand(t, b, *config["input_shape"])  # noqa: E731
            loss = lambda out, b: nn.functional.cross_entropy(out, torch.zeros(b, dtype=torch.long))  # noqa: E731
            # Two warm-up steps: DDP rebuilds its gradient buckets (parameter-sized, so growing with depth)
            # at the start of the second step; measured, that allocation would pass for activation memory.
            for _ in range(2):
                loss(wrapped(make(memory_batch)), memory_batch).backward()
            per = memory_per_sample(wrapped, make, (memory_batch, 2 * memory_batch), loss)
            memory.append({"depth": depth, "retained_per_sample": per["retained"], "peak_per_sample": per["peak"]})
            del wrapped, m
        return {"rank": ctx.rank, "world": ctx.world, "seconds": seconds, "memory": memory,
                "threads": torch.get_num_threads(), "backend": ctx.backend or "none"}
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def distributed_rows(model: str = "revsresnet-digits", processes: Iterable[int] = (1, 2), batch: int = 64,
                     time_steps: int = 4, steps: int = 10, depths: Iterable[int] = (1, 2, 4),
                     memory_batch: int = 2, threads: Optional[int] = None) -> dict[str, Any]:
    """Samples per second at each process count (the same global batch, split among the ranks) and the
    per-rank activation memory per sample at each depth, from one call. ``threads``: intra-op threads of
    every process (default: the cores shared out among the processes)."""
    from .distributed import launch

    runs = []
    for n in processes:
        results = launch(n, _rank_bench, model, batch, time_steps, steps, list(depths), memory_batch, threads)
        seconds = max(r["seconds"] for r in results)
        runs.append({"processes": n, "samples_per_second": batch * steps / seconds, "seconds": seconds,
                     "threads_per_process": results[0]["threads"], "memory": [r["memory"] for r in results]})
    base = runs[0]["samples_per_second"]
    for r in runs:
        r["speedup"] = r["samples_per_second"] / base
    return {"model": model, "batch": batch, "time_steps": time_steps, "steps": steps, "runs": runs,
            "cpu_count": os.cpu_count()}
