"""Bounds on options by what the machine can hold, checked before anything large is allocated.

An option such as ``--time-steps 1000000000`` is a valid number but asks for a tensor no machine holds; torch
then fails deep inside with an allocation traceback, or the process grows until the kernel kills it. Each
check here estimates the bytes a run needs from the sizes involved (a lower bound: what must exist at
once, such as the encoded input ``[T, B, C, H, W]``), compares it with the memory available now, and refuses
in one sentence that carries the estimate. The checkpoint and training checks that must run before the
first expensive step of ``train`` live here as well (:func:`check_train_start`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Optional

from revsnn.errors import RevsnnError

__all__ = ["LimitError", "available_bytes", "human_bytes", "require_memory", "require_tensor", "check_seed",
           "check_count", "check_train_start", "SEED_LIMIT"]

SEED_LIMIT = 2**63  # torch.manual_seed takes seeds below 2**64; numpy below 2**128; 2**63 keeps int64 safe


class LimitError(RevsnnError):
    """An option this machine cannot honour (too much memory, a seed out of range); one sentence."""


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(n) < 1024 or unit == "EiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} EiB"


def _cgroup_room() -> Optional[int]:
    """Bytes the cgroup (a container's memory limit) still allows, where one is set."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def available_bytes(device: str = "cpu") -> int:
    """Memory available now: the GPU's free memory for ``cuda``, else MemAvailable (or the cgroup's room)."""
    if str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        import os

        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            avail = 1 << 62  # unknown: never refuse on a guess
    room = _cgroup_room()
    return min(avail, room) if room is not None else avail


def require_memory(needed: float, what: str, fix: str, device: str = "cpu") -> None:
    """Refuse when ``needed`` bytes exceed what is available: "WHAT needs at least X of memory, ..., FIX"."""
    avail = available_bytes(device)
    if needed > avail:
        where = "GPU memory" if str(device).startswith("cuda") else "memory"
        raise LimitError(f"{what} needs at least {human_bytes(needed)} of {where}, but this machine has "
                         f"{human_bytes(avail)} available; {fix}.")


def require_tensor(shape: Iterable[int], what: str, fix: str, bytes_per: int = 4, device: str = "cpu") -> None:
    """Refuse a tensor of ``shape`` (elements of ``bytes_per`` bytes) that cannot be held."""
    require_memory(math.prod(int(s) for s in shape) * bytes_per, what, fix, device)


def check_seed(seed: Any, option: str = "--seed") -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise LimitError(f"{option} must be a whole number from 0 to 2**63 - 1, got {seed}.")


def check_count(value: Any, option: str, low: int = 1, high: Optional[int] = None, why: str = "") -> None:
    """A whole-number option within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"from {low:,} to {high:,}" if high is not None else f"of at least {low:,}"
        raise LimitError(f"{option} must be a whole number {bound}{why}, got {value}.")


# --------------------------------------------------------------------------------------------------------
# train: checked before the data is read and before anything is written


_RESUME_OPTIONS = (("lr", "--lr"), ("time_steps", "--time-steps"), ("batch_size", "--batch-size"),
                   ("encoding", "--encoding"), ("seed", "--seed"),
                   ("val_fraction", "--val-fraction"))   # issue 15: the held-out split is the run's


def check_train_start(opts, settings: dict[str, Any]) -> None:
    """What ``revsnn train`` checks after its options resolve and before it reads data or writes a file:

    - the seed and the memory the encoded batch needs (``--time-steps``, ``--batch-size``);
    - an existing run at ``--out`` is neither overwritten without ``--overwrite`` nor resumed from a damaged
      checkpoint, and ``--resume`` with options that differ from the run's is refused (resuming continues
      the same run; the checkpoint's values would silently win);
    - the folder can be written, and has room for the checkpoint.
    """
    from .checkpoint import CheckpointError, load_checkpoint
    from .fileio import check_free_space, check_writable_dir

    if opts.seed is not None:
        check_seed(opts.seed)
    T, B = int(settings["time_steps"]), int(settings["batch_size"])
    shape = settings["config"]["input_shape"]
    # The encoded input of one batch must exist at once (float32); a lower bound of what training holds.
    require_tensor([T, B, *shape], f"--time-steps {T} with --batch-size {B} (input {'x'.join(map(str, shape))})",
                   "lower --time-steps or --batch-size", device=opts.device)
    out = Path(opts.out)
    ckpt = out / "model.pt"
    overwrite = bool(getattr(opts, "overwrite", False))
    if opts.resume and overwrite:
        raise LimitError("--resume and --overwrite contradict each other; give one of them.")
    if not opts.resume and not overwrite and ckpt.exists():
        raise LimitError(f"--out {out} already holds a training run ({ckpt}); add --resume to continue it, "
                         "--overwrite to replace it, or choose another --out.")
    if opts.resume and ckpt.exists():
        try:
            payload = load_checkpoint(ckpt, resume=True)
        except CheckpointError as exc:
            raise LimitError(f"--resume: {exc}") from exc
        was = payload["train"]
        for key, option in _RESUME_OPTIONS:
            given = getattr(opts, key, None)
            if given is not None and given != was.get(key):
                raise LimitError(f"--resume: {option} {given} differs from the run's {was.get(key)} in {ckpt} "
                                 f"(resuming continues that run); drop {option}, or start a new run with another "
                                 "--out or --overwrite.")
    if out.exists():
        if not out.is_dir():
            return  # resolve_options says so
        check_writable_dir(out)
        directory = out
    else:
        directory = out.parent
        if directory.is_dir():
            check_writable_dir(directory, f"--out {out}: its parent folder")
    if directory.is_dir():
        from .models import build_model

        try:
            params = sum(p.numel() for p in build_model(settings["config"]).parameters())
        except Exception:  # the trainer reports a model that does not build, in its own words
            return
        # weights, up to two optimizer moments and the EMA copy, float32, plus the config and history
        check_free_space(directory, params * 4 * 4 + (1 << 16), "the checkpoint")


# --------------------------------------------------------------------------------------------------------
# runs of a built model: verify, bench infer


def activation_elements(model, input_shape) -> int:
    """Elements every leaf module outputs for one sample and one time step (a forward at batch 1 with hooks):
    what recording or holding one step's activations costs per sample."""
    import torch

    t = int(getattr(model, "config", {}).get("time_steps") or 1)  # families whose architecture fixes T
    total = [0]

    def hook(module, args, output):
        outs = output if isinstance(output, (tuple, list)) else (output,)
        total[0] += sum(o.numel() for o in outs if isinstance(o, torch.Tensor))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(t, 1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return max(1, total[0] // t) + math.prod(input_shape)


def require_run_memory(model, time_steps: int, batch: int, what: str, fix: str, bytes_per: int = 8,
                       device: str = "cpu") -> None:
    """Refuse a T-step run of ``model`` at ``batch`` whose recorded activations (every layer's output at
    every step, float64 as the reference executor keeps them) cannot be held."""
    shape = list(model.config["input_shape"])
    require_memory(int(time_steps) * int(batch) * activation_elements(model, shape) * bytes_per, what, fix, device)


# --------------------------------------------------------------------------------------------------------
# benchmarks: checked before the first measurement


def check_bench_memory(sweep, time_steps: int, batch_size: int, device: str = "cpu",
                       command: str = "bench memory") -> None:
    """``bench memory``: each (model, depth) measured at batch 2B over T steps needs at least its weights,
    gradients and optimizer-free copies (float32) and one step's activations for every step (the plain twin
    keeps them all). Depths are extrapolated from depth 1 and 2, so a depth of 100000 is refused without
    building it."""
    from .bench import _with_depth
    from .models import build_model, get_config

    for name, scales in sweep:   # a zoo name, or a checkpoint's own config (``revsnn report``)
        base = get_config(name) if isinstance(name, str) else dict(name)
        name = base.get("name", "the model")
        if scales and base["family"] != "scnn":
            deepest = max(scales)
            sizes = []
            for s in (1, 2):
                m = build_model(_with_depth(base, s))
                sizes.append((sum(p.numel() for p in m.parameters()),
                              activation_elements(m, list(base["input_shape"]))))
            (p1, a1), (p2, a2) = sizes
            params = p1 + (deepest - 1) * max(0, p2 - p1)
            acts = a1 + (deepest - 1) * max(0, a2 - a1)
            label = f"{name} at depth scale {deepest:,}"
        else:
            m = build_model(base)
            params = sum(p.numel() for p in m.parameters())
            acts = activation_elements(m, list(base["input_shape"]))
            label = name
        needed = 4 * (3 * params + int(time_steps) * 2 * int(batch_size) * acts)
        fix = {"bench memory": "lower --depths, --time-steps or --batch-size",
               "report": "lower --memory-depths"}.get(command, "lower --time-steps or --batch-size")
        require_memory(needed, f"{command} of {label} with T = {time_steps:,} and batch {2 * batch_size:,}", fix,
                       device)


def check_node_memory(time_steps) -> None:
    """``bench node-memory``: three nodes on a [T, 32, 256] float32 input, each keeping a few floats a neuron
    and step for backward."""
    for T in time_steps:
        require_tensor([T, 32, 256], f"bench node-memory at T = {T:,}", "lower --time-steps", bytes_per=4 * 8)


def check_lava_bench(samples: int, time_steps: int, shape, test_digits: int | None) -> None:
    """``bench lava``: the digits have ``test_digits`` test samples (no more can run); the input
    [T, samples, ...] must fit, float64."""
    if test_digits is not None and samples > test_digits:
        raise LimitError(f"--samples {samples:,} is more than the {test_digits} test digits this network runs on; "
                         f"give at most {test_digits}.")
    require_tensor([time_steps, samples, *shape], f"bench lava with {samples:,} samples x {time_steps:,} steps",
                   "lower --samples or --time-steps", bytes_per=8 * 2)


def check_infer_bench(model, time_steps: int, batch_size: int) -> None:
    """``bench infer``: a T-step run at the batch size, every layer's output at every step (float32)."""
    require_run_memory(model, time_steps, batch_size, f"bench infer of {model.config.get('name')} at batch "
                       f"{batch_size:,} and T = {time_steps:,}", "lower --batch-size", bytes_per=4)
