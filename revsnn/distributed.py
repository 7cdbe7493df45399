"""Training on several processes and machines: torchrun (or ``revsnn train --nproc N``) and DDP.

``train`` calls into this module at a few places; with one process (no ``WORLD_SIZE`` above 1 in the
environment) every function here is a no-op and the trainer runs exactly as it always did.

- Process group: from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
  ``MASTER_PORT``); gloo on the CPU, nccl on CUDA (one GPU per local rank).
- Data: every rank draws the same order of global batches from the trainer's seeded generator (the order
  a one-process run draws), and takes its own contiguous slice of each (``shard_batches``). That is a
  distributed sampler whose ``set_epoch`` is the generator's advance from one epoch to the next: the order
  changes every epoch, is the same on every rank, and is what one process would see, so N processes train
  on the one-process run's global batches. Each rank's loss is weighted by its share of the global batch,
  so that DDP's average of the ranks' gradients is the gradient of the global batch's mean loss even when
  the last batch does not split evenly.
- Per-rank seeding: what is drawn per sample (rate coding, augmentation, mixup, dropout) comes from a
  generator seeded by (seed, epoch, rank), fresh every epoch: ranks draw different noise, and an epoch
  re-run after a resume draws what it drew the first time, at any world size.
- Rank 0 alone shows progress, evaluates, and writes the checkpoint (atomically); the epoch's loss and
  accuracy are summed over the ranks first.
- ``--sync-bn``: BatchNorm becomes SyncBatchNorm (torch's on CUDA; ``GlooSyncBatchNorm`` below on the CPU,
  where torch's refuses to run).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from .errors import RevsnnError

__all__ = ["DistContext", "DistributedError", "context_from_env", "setup", "teardown", "is_main_process",
           "shard_batches", "local_weight", "rank_generator", "seed_rank", "wrap_model", "convert_sync_bn",
           "GlooSyncBatchNorm", "all_sum", "broadcast_object", "barrier", "launch", "kill_hook", "KILL_ENV",
           "ddp_settings", "train_on_processes"]

# The test hook for an interrupted run: "RANK:EPOCH:STEP" makes that rank SIGKILL itself when it reaches that
# step (1-based epoch, 0-based step) before the optimizer steps. Deterministic, unlike a timed kill.
KILL_ENV = "REVSNN_KILL_AT"


class DistributedError(RevsnnError):
    """A distributed run that cannot start (bad environment, more ranks than samples); one sentence."""


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    owns_group: bool = False  # whether setup() created the process group (and teardown() destroys it)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise DistributedError(f"the environment variable {name}={text!r} is not a whole number; launch with "
                               "torchrun, which sets it.") from None


def context_from_env() -> DistContext:
    """The rank and world size torchrun put into the environment (one process without it)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise DistributedError(f"RANK={rank} and WORLD_SIZE={world} do not describe a process of the run; launch "
                               "with torchrun, which sets them.")
    return DistContext(rank=rank, world=world, local_rank=local)


def is_main_process() -> bool:
    """Whether this process prints (rank 0, or the only process)."""
    try:
        return context_from_env().main
    except DistributedError:
        return True


def setup(device: str) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun described, if any; returns the context and this rank's device."""
    ctx = context_from_env()
    if not ctx.enabled:
        return ctx, torch.device(device)
    import torch.distributed as dist

    if device.startswith("cuda"):
        # One GPU per process: LOCAL_RANK picks it (an explicit cuda:K is overridden, as every rank would
        # otherwise share GPU K).
        if ctx.local_rank >= torch.cuda.device_count():
            raise DistributedError(f"local rank {ctx.local_rank} has no GPU (this machine has "
                                   f"{torch.cuda.device_count()}); start at most that many processes per node.")
        dev = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    owns = False
    if not dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(name):
                raise DistributedError(f"WORLD_SIZE is {ctx.world} but {name} is not set; launch with torchrun "
                                       "(or revsnn train --nproc N), which sets it.")
        dist.init_process_group(backend, rank=ctx.rank, world_size=ctx.world)
        owns = True
    return DistContext(ctx.rank, ctx.world, ctx.local_rank, backend, owns), dev


def teardown(ctx: DistContext) -> None:
    if ctx.enabled and ctx.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def shard_batches(batches: list[Tensor], ctx: DistContext) -> tuple[list[Tensor], list[int]]:
    """This rank's slice of every global batch, and each global batch's size.

    A global batch with fewer samples than ranks (only ever the last, short one) is left out on every rank:
    a rank with no sample has nothing to normalise or average.
    """
    if not ctx.enabled:
        return batches, [len(b) for b in batches]
    kept = [b for b in batches if len(b) >= ctx.world]
    return [b.tensor_split(ctx.world)[ctx.rank] for b in kept], [len(b) for b in kept]


def local_weight(local: int, global_size: int, ctx: DistContext) -> float:
    """The factor on this rank's mean loss that makes DDP's gradient average the global batch's mean:
    ``local * world / global`` (exactly 1 when the batch splits evenly)."""
    return 1.0 if not ctx.enabled else local * ctx.world / global_size


def _mixed_seed(*parts: int) -> int:
    # numpy's SeedSequence mixes the parts so that neighbouring (epoch, rank) pairs give unrelated streams.
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0]) >> 1


def rank_generator(seed: int, epoch: int, ctx: DistContext) -> torch.Generator:
    """The generator of what a rank draws per sample in one epoch (rate coding, augmentation, mixup)."""
    return torch.Generator().manual_seed(_mixed_seed(seed, epoch, ctx.rank, 1))


def seed_rank(seed: int, epoch: int, ctx: DistContext) -> None:
    """Seed torch's global generators (dropout) for this rank and epoch."""
    torch.manual_seed(_mixed_seed(seed, epoch, ctx.rank, 2))


def ddp_settings(model: nn.Module) -> dict[str, bool]:
    """``find_unused_parameters`` and ``static_graph`` for a model, chosen per family (see the comments)."""
    family = (getattr(model, "config", None) or {}).get("family")
    # find_unused_parameters=False for every family. Each reversible Function (both couplings, ParaRev,
    # Recompute, the T-RevSNN columns, the RevLIF node) takes the parameters it uses as inputs and returns
    # their summed gradient from backward, once, so every parameter's AccumulateGrad (where DDP's hook
    # sits) runs exactly once per step. The inner recompute differentiates detached aliases
    # (reversible.param_aliases), never the parameters, so no hook fires inside backward. With True, DDP
    # would search the graph after forward for nothing, and the search is what has marked reversible
    # blocks' parameters unused and then ready twice in other libraries.
    settings = {"find_unused_parameters": False, "static_graph": False}
    if family == "trevsnn":
        # T-RevSNN reuses one set of modules in every column (pw2/dw2 shared across levels) and the seed
        # trains it with a static graph. Its graph is the same every step (T is fixed by the columns), so
        # static_graph is safe, and it lets DDP skip the per-step readiness bookkeeping for parameters
        # reached from several columns.
        settings["static_graph"] = True
    # Every other family keeps a dynamic graph: a user's model may branch on its input, and a zoo model
    # gains nothing from static_graph when every parameter is reduced once.
    return settings


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel (or ``model`` itself with one process)."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, **ddp_settings(model))


# --------------------------------------------------------------------------------------------------------
# SyncBatchNorm on the CPU.


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable (its backward sums the gradients over ranks). Ours because torch's
    differentiable all_reduce (``torch.distributed.nn``) is deprecated and its replacement is not
    differentiable."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        import torch.distributed as dist

        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        import torch.distributed as dist

        out = g.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


def _sum_over_ranks(x: Tensor) -> Tensor:
    return _AllReduceSum.apply(x) if torch.is_grad_enabled() and x.requires_grad else _AllReduceSum.forward(None, x)


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the whole global batch on the CPU (gloo).

    torch's SyncBatchNorm refuses CPU tensors, so this one is written with two collectives per call: the
    sum and count (the global mean), then the sum of squared deviations (the global variance, two-pass as
    BatchNorm itself computes it). Both are differentiable sums, so autograd gives the global batch's
    gradient. Running statistics are updated as BatchNorm does (unbiased variance, ``momentum``); in eval
    mode, or with one process, it is plain BatchNorm. Same parameters and buffers as BatchNorm*d, so
    checkpoints load into the plain model.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: Tensor) -> Tensor:
        import torch.distributed as dist

        self._check_input_dim(x)
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        stats = _sum_over_ranks(torch.cat([x.sum(dims), count]))
        n = stats[-1]
        mean = stats[:-1] / n
        centred = x - mean.view(shape)
        var = _sum_over_ranks(centred.pow(2).sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var.detach() * (n / (n - 1)) if float(n) > 1 else var.detach()
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        return y


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``model`` as a SyncBatchNorm: torch's on CUDA, ``GlooSyncBatchNorm`` on the CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_gloo(model)


def _convert_gloo(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlooSyncBatchNorm):
        out = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats, device=None, dtype=None)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        if module.track_running_stats:
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, _convert_gloo(child))
    return out


# --------------------------------------------------------------------------------------------------------
# Collectives the trainer needs.


def all_sum(values: list[float], ctx: DistContext) -> list[float]:
    """``values`` summed over ranks (float64)."""
    if not ctx.enabled:
        return values
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if ctx.backend == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu().tolist()


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def kill_hook(ctx: DistContext, epoch: int, step: int) -> None:
    """SIGKILL this process at the step ``REVSNN_KILL_AT=RANK:EPOCH:STEP`` names (tests of resume)."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    try:
        rank, at_epoch, at_step = (int(v) for v in spec.split(":"))
    except ValueError:
        return
    if (rank, at_epoch, at_step) == (ctx.rank, epoch, step):
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------------------------------------
# One machine, N processes, without torchrun: revsnn train --nproc N.


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(index: int, nproc: int, port: int, fn: Callable, args: tuple, errors) -> None:
    # One intra-op thread per core share, as torchrun does (OMP_NUM_THREADS=1): more threads than cores
    # make every rank spin-wait on the others.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    os.environ.update({"RANK": str(index), "LOCAL_RANK": str(index), "WORLD_SIZE": str(nproc),
                       "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    try:
        result = fn(*args)
    except RevsnnError as exc:  # bad input found by a rank: the parent raises it as one sentence
        errors.put((index, "error", str(exc)))
        raise SystemExit(2)
    errors.put((index, "result", result))


def launch(nproc: int, fn: Callable, *args: Any) -> list[Any]:
    """Run ``fn(*args)`` in ``nproc`` spawned processes on this machine, as torchrun would (the same
    environment variables), and return each rank's result in rank order.

    A rank that raises a RevsnnError makes this raise DistributedError with its sentence; a rank that dies
    makes torch terminate the others and this raise DistributedError too.
    """
    import torch.multiprocessing as mp

    if nproc < 1:
        raise DistributedError(f"--nproc must be at least 1, got {nproc}.")
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    port = _free_port()
    try:
        mp.start_processes(_child, args=(nproc, port, fn, args, results), nprocs=nproc, join=True,
                           start_method="spawn")
    except mp.ProcessExitedException as exc:
        messages = _drain(results)
        errors = [m for _, kind, m in messages if kind == "error"]
        if errors:
            raise DistributedError(errors[0]) from None
        raise DistributedError(f"process {exc.error_index} of {nproc} died (exit code {exc.exit_code}); the "
                               "last finished epoch is in the checkpoint: add --resume to go on.") from None
    except mp.ProcessRaisedException as exc:
        raise DistributedError(f"a process of the run failed: {str(exc).strip().splitlines()[-1]}") from None
    by_rank = {i: m for i, kind, m in _drain(results) if kind == "result"}
    return [by_rank.get(i) for i in range(nproc)]


def _drain(queue) -> list:
    out = []
    while not queue.empty():
        out.append(queue.get())
    return out


def train_on_processes(opts, nproc: int, reporter_factory: Optional[Callable[[], Any]] = None) -> dict:
    """``revsnn train --nproc N``: train ``opts`` on ``nproc`` processes of this machine (what torchrun
    --standalone --nproc-per-node N does) and return the metrics. ``reporter_factory`` (a picklable class
    or function) makes rank 0's progress reporter."""
    from .train import resolve_options

    if os.environ.get("WORLD_SIZE") not in (None, "", "1"):
        raise DistributedError("--nproc starts its own processes; under torchrun leave it out (torchrun's "
                               "--nproc-per-node sets the count).")
    resolve_options(opts)  # bad options fail here, in one sentence, before any process starts
    return launch(nproc, _train_rank, opts, reporter_factory)[0]


def _train_rank(opts, reporter_factory) -> dict:
    from .train import train

    reporter = reporter_factory() if reporter_factory is not None and context_from_env().main else None
    try:
        return train(opts, reporter)
    finally:
        stop = getattr(getattr(reporter, "progress", None), "stop", None)
        if stop is not None:
            stop()
