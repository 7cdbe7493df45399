"""Training-step memory per sample of Loihi-aware training (issue 15), reversible against the plain twin, as
the blocks per stage grow: ``python scripts/loihi_aware_memory.py``. The allocator's figures
(``revsnn.memory.memory_per_sample``: retained when backward starts, peak), CPU, float32, T = 4, rate-coded."""

from __future__ import annotations

import torch

from revsnn.finetune import LoihiAware
from revsnn.memory import memory_per_sample
from revsnn.models import build_model, get_config
from revsnn.reversible import ReversibleModule


def main() -> None:
    torch.manual_seed(0)
    print("| blocks per stage | forward | reversible retained / peak (KiB) | plain twin retained / peak (KiB) |")
    print("|---|---|---:|---:|")
    for blocks in ([1, 1], [2, 2], [4, 4]):
        config = {**get_config("revsresnet-digits"), "blocks": blocks}
        for loihi in (False, True):
            cells = []
            for reversible in (True, False):
                model = build_model(config)
                for m in model.modules():
                    if isinstance(m, ReversibleModule):
                        m.reversible = reversible
                runner = LoihiAware(model, 4).train() if loihi else model.train()
                make = lambda b: (torch.rand(4, b, 1, 8, 8) < 0.5).float()  # noqa: E731
                per = memory_per_sample(runner, make, (4, 8))
                # The Loihi-aware peak is the per-step quantisation's (batch-independent, so its slope says
                # nothing): only the retained bytes are shown for it.
                peak = "-" if loihi else f"{per['peak'] / 1024:.0f}"
                cells.append(f"{per['retained'] / 1024:.0f} / {peak}")
                if loihi:
                    runner.release()
            print(f"| {blocks} | {'Loihi-aware' if loihi else 'float'} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
