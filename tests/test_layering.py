"""The one-way import graph (DESIGN §3, README "Layout"): the training core imports no exporter and no target,
exporters import no target, targets import no model of the zoo; only the named meeting places import all."""

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Where the training core, the exporters and the targets meet (README, "Layout"). Nothing else may.
# revsnn/__init__.py: the public revsnn.collapse, which imports the exporter lazily (only when called)
MEETING_PLACES = {"revsnn/verify.py", "revsnn/pipeline.py", "revsnn/bench_infer.py", "revsnn/__init__.py",
                  "revsnn/report.py",   # revsnn report: verify, activity on every target, Loihi resources
                  "revsnn/finetune.py"}  # Loihi-aware training: asks the quantiser for the grid of every forward
# folder -> the package its files belong to (pyproject's package-dir mapping)
PACKAGES = {"revsnn": "revsnn", "exporters": "revsnn.exporters", "targets": "revsnn.targets", "cli": "revsnn.cli"}


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:-1]]
    return ".".join(parts + ([] if rel.stem == "__init__" else [rel.stem]))


def _imports(path: Path, source: str | None = None) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (lazy imports inside functions included), with
    relative imports resolved to absolute names."""
    module = _module_of(path)
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level \
                else node.module
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from revsnn import exporters`
    return found


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _violations(files, forbidden, source: str | None = None) -> list[str]:
    out = []
    for f in files:
        for name in sorted(_imports(f, source)):
            if any(_within(name, p) for p in forbidden):
                out.append(f"{f.relative_to(ROOT)} imports {name}")
    return out


def _core_files() -> list[Path]:
    return [f for f in _files("revsnn") if str(f.relative_to(ROOT)) not in MEETING_PLACES]


def test_the_meeting_places_exist_and_are_the_only_core_files_that_reach_out():
    for place in MEETING_PLACES:
        assert (ROOT / place).is_file(), place
        assert any(_within(n, "revsnn.exporters") or _within(n, "revsnn.targets") for n in _imports(ROOT / place))


def test_training_core_imports_no_exporter_target_or_cli():
    assert _core_files() and any("models" in f.parts for f in _core_files())
    assert _violations(_core_files(), ["revsnn.exporters", "revsnn.targets", "revsnn.cli"]) == []


def test_exporters_import_no_target_meeting_place_or_cli():
    assert _violations(_files("exporters"), ["revsnn.targets", "revsnn.cli", "revsnn.verify", "revsnn.pipeline",
                                             "revsnn.bench_infer"]) == []


def test_targets_import_no_zoo_model_meeting_place_or_cli():
    assert _violations(_files("targets"), ["revsnn.models", "revsnn.cli", "revsnn.verify", "revsnn.pipeline",
                                           "revsnn.bench_infer", "revsnn.train"]) == []


def test_the_checker_sees_relative_and_lazy_imports():
    probe = ROOT / "targets" / "probe.py"   # not on disk: resolved as revsnn.targets.probe
    source = "def f():\n    from ..models import resnet\n    import revsnn.exporters.graph\n"
    names = _imports(probe, source)
    assert {"revsnn.models", "revsnn.models.resnet", "revsnn.exporters.graph"} <= names
    assert _violations([probe], ["revsnn.models"], source) == ["targets/probe.py imports revsnn.models",
                                                               "targets/probe.py imports revsnn.models.resnet"]


_PROBE = """
import importlib, json, sys
mods = sys.argv[1:]
for m in mods:
    importlib.import_module(m)
print(json.dumps(sorted(n for n in sys.modules if n.startswith("revsnn"))))
"""


def _loaded(modules: list[str]) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE, *modules], check=True, capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layer, forbidden", [
    ("core", ["revsnn.exporters", "revsnn.targets", "revsnn.cli"]),
    ("exporters", ["revsnn.targets", "revsnn.cli", "revsnn.verify", "revsnn.pipeline"]),
])
def test_importing_a_layer_loads_nothing_above_it(layer, forbidden):
    """The same in a fresh interpreter, transitively: importing every module of the core (or of the
    exporters) loads no module of a layer above it."""
    files = _core_files() if layer == "core" else _files("exporters")
    modules = [_module_of(f) for f in files]
    loaded = _loaded(modules)
    assert set(modules) <= set(loaded)
    assert [n for n in loaded if any(_within(n, p) for p in forbidden)] == []
