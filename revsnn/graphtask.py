"""What the running backward was asked for, where torch has no public query."""

from __future__ import annotations

import torch

__all__ = ["keeps_graph"]


def keeps_graph() -> bool:
    """Whether the running backward was asked to keep the graph (``retain_graph=True``, e.g. gradcheck):
    then whatever a backward saved must survive it unchanged. The query is private to torch (no public
    one exists); where it is missing, assume the graph is kept, which only costs a copy or memory."""
    query = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if query is None else bool(query())
