"""``revsnn bench infer``: inference speed of the reference executor (torch) against onnxruntime.

Like ``verify``, this is a place where the training core, the exporters and the targets meet; nothing in
the training core imports it. Both run the same collapsed graph in float32, one time step at a time:

- latency: the median wall time of one step at batch 1;
- throughput: samples per second of whole T-step runs at a large batch (64 by default).

Each figure is the median of several repetitions, measured interleaved so that drifts of the machine hit
both runtimes alike. Numbers only; no test asserts them.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

__all__ = ["infer_rows"]


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def infer_rows(model_name: str, checkpoint: Optional[Path] = None, batch_size: int = 64, repeats: int = 7,
               time_steps: Optional[int] = None) -> list[dict[str, Any]]:
    from revsnn.checkpoint import load_model
    from revsnn.exporters.collapse import collapse
    from revsnn.exporters.onnx_file import write_onnx
    from revsnn.models import build_model
    from revsnn.targets.onnxruntime import OnnxRuntimeTarget
    from revsnn.targets.reference import ReferenceExecutor

    if checkpoint is not None:
        model, payload = load_model(checkpoint)
        T = time_steps or int(payload.get("train", {}).get("time_steps", 4))
    else:
        torch.manual_seed(0)
        model = build_model(model_name).eval()
        T = time_steps or int(model.config.get("time_steps") or model.config["train"]["time_steps"])
    from revsnn.limits import check_infer_bench

    check_infer_bench(model, T, batch_size)  # before any graph or input is made
    graph = collapse(model, T).graph
    shape = tuple(model.config["input_shape"])
    reference = ReferenceExecutor(graph, dtype=torch.float32)
    with tempfile.TemporaryDirectory(prefix="revsnn-bench-") as tmp:
        path = Path(tmp) / "model.onnx"
        write_onnx(graph, path)
        ort = OnnxRuntimeTarget.load(path)

    rows = []
    for label, batch in (("step latency, B = 1", 1), (f"throughput, B = {batch_size}", batch_size)):
        x = torch.rand(T, batch, *shape)
        timings: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
        for target in (reference, ort):  # warm-up
            target.run(x)
        for _ in range(repeats):
            for name, target in (("torch", reference), ("onnxruntime", ort)):
                if batch == 1:
                    target.reset()
                    timings[name].append(_median_time(lambda: target.step(x[0]), T))
                else:
                    timings[name].append(_median_time(lambda: target.run(x), 1))
        med = {k: statistics.median(v) for k, v in timings.items()}
        if batch == 1:
            row = {"measure": label, "unit": "ms", "torch": 1e3 * med["torch"], "onnxruntime": 1e3 * med["onnxruntime"]}
        else:
            row = {"measure": label, "unit": "samples/s", "torch": batch / med["torch"],
                   "onnxruntime": batch / med["onnxruntime"]}
        row.update({"model": model.config.get("name"), "time_steps": T, "batch_size": batch, "repeats": repeats,
                    "onnxruntime_speedup": med["torch"] / med["onnxruntime"]})
        rows.append(row)
    return rows
