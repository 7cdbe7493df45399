"""One interface for every target, and the registry that finds them (DESIGN §3, §7).

A target is one file in ``targets/`` that declares, as literals, the names it provides::

    TARGET_INFO = {"onnx-reference": "the one-step .onnx file in onnx's own ReferenceEvaluator"}

and a function ``target(name) -> Target``. The registry reads ``TARGET_INFO`` from every file without
importing it (``ast``), so listing the targets (``revsnn verify --help``) costs nothing, and imports a target's
file only when it is used. A new target is one new file: nothing else changes.

A ``Target`` says what it is compared with (``compare_with``: ``"model"``, the training model itself;
``"float"``, the float reference executor; ``"loihi"``, the Loihi-quantised reference executor), its tolerance
on the per-step outputs, the kind of file it runs (``suffix``; ``None`` for the in-memory graph), how to write
that file from a graph (``export``), whether it can run here (``unavailable``), and ``run``, which runs a graph
or a file on a batch ``[T, B, ...]`` one step at a time and returns a ``Trace``.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from revsnn.errors import RevsnnError

__all__ = ["Trace", "Target", "TargetError", "target_names", "target_info", "get_target"]


class TargetError(RevsnnError):
    """An unknown target, or one that cannot run here; one sentence."""


@dataclass
class Trace:
    """What a target shows of a run: the per-step outputs ``[T, B, ...]``, the spikes of every population it
    exposes ``{node: [T, B, ...]}``, the membrane potentials where it has them, and anything else it reports
    (``info``: timings, the chain's relay overhead, ...)."""

    outputs: torch.Tensor
    spikes: dict[str, torch.Tensor] = field(default_factory=dict)
    potentials: Optional[dict[str, torch.Tensor]] = None
    info: dict[str, Any] = field(default_factory=dict)
    # a chain target (lava): every chain layer's spikes [T, B, *layer], relays included, for SOP counts
    layer_spikes: Optional[list] = None


class Target:
    name: str = ""
    compare_with: str = "float"       # "model", "float" or "loihi"
    tolerance: float = 1e-5           # on max |Δ| of the per-step outputs (spikes must match exactly)
    suffix: Optional[str] = None      # the file it runs: ".nir", ".onnx", ".net"; None: the in-memory graph
    description: str = ""

    def unavailable(self) -> Optional[str]:
        """None when the target can run here, else the sentence that says why not."""
        return None

    def accepts(self, path: Path) -> bool:
        """Whether ``path`` is a file this target runs (``verify --file``)."""
        return self.suffix is not None and Path(path).suffix == self.suffix

    def export(self, graph, folder: Path, **options) -> Path:
        """Write the file this target runs, made from ``graph``, into ``folder``; return its path."""
        raise NotImplementedError

    def run(self, source, x: torch.Tensor, **options) -> Trace:
        """Run ``source`` (the path ``export`` wrote, a file the user gives, or the graph when ``suffix`` is
        None) on ``x`` ``[T, B, ...]`` from rest."""
        raise NotImplementedError


_FOLDER = Path(__file__).resolve().parent
_INFO: Optional[dict[str, tuple[str, str]]] = None   # name -> (module, description)


def _scan() -> dict[str, tuple[str, str]]:
    global _INFO
    if _INFO is None:
        found: dict[str, tuple[str, str]] = {}
        for path in sorted(_FOLDER.glob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in tree.body:
                if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "TARGET_INFO"
                                                        for t in node.targets):
                    for name, text in ast.literal_eval(node.value).items():
                        found[name] = (f"revsnn.targets.{path.stem}", text)
        _INFO = found
    return _INFO


# The order people think of them in; targets from new files follow, by name.
_ORDER = ("torch", "torch-cuda", "norse", "onnxruntime", "onnxruntime-unrolled", "onnx-reference", "lava")


def target_names() -> list[str]:
    names = list(_scan())
    return [n for n in _ORDER if n in names] + sorted(n for n in names if n not in _ORDER)


def target_info() -> dict[str, str]:
    """Every target's name and one-line description, without importing any."""
    return {n: _scan()[n][1] for n in target_names()}


def get_target(name: str) -> Target:
    info = _scan()
    if name not in info:
        raise TargetError(f"unknown target {name!r}; known: {', '.join(target_names())}.")
    module = importlib.import_module(info[name][0])
    return module.target(name)
