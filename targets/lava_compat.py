"""Import-time compatibility layer that lets lava-nc 0.10 / lava-dl 0.6 import on Python 3.11.

The lava wheels declare ``python < 3.11``; scripts/setup.sh installs them anyway with
``--no-deps --ignore-requires-python``. Two things then break at import time, and this module repairs them
without editing site-packages: a ``sys.meta_path`` finder hands a handful of named lava modules to a loader
that reads the original source, rewrites its AST in memory and compiles it. Nothing is written to disk (no
``__pycache__`` for the rewritten modules), and every other module is loaded by the normal machinery.

(a) ``lava.magma.compiler.var_model`` declares dataclass fields such as ``x: ByteEncoder = ByteEncoder()``,
    where ``ByteEncoder`` is itself a (non-frozen, hence unhashable) dataclass. Python 3.11 rejects such
    mutable defaults with ``ValueError: mutable default ... use default_factory``, and about 84 lava modules
    import var_model. The rewrite turns each such default into ``dataclasses.field(default_factory=C)``,
    which is what the authors meant: every instance gets its own ``C()`` instead of one shared object.

(b) ``lava.lib.dl.slayer`` imports its object-detection sub-package eagerly, and three of its modules do
    ``from torchvision import ...`` at import time. torchvision is not installed here (the only wheels on
    offer are CUDA builds that fail beside a CPU torch with ``RuntimeError: operator torchvision::nms does
    not exist``), and revsnn never uses those utilities. The rewrite wraps those imports in ``try``; on any
    failure the names are bound to a placeholder that raises a clear ImportError when used. No fake
    ``torchvision`` is ever put in ``sys.modules``: other libraries still see the truth.

(c) numpy >= 2.4: nothing is done. Both wheels declare ``numpy < 2`` and this project pins numpy 1.26; the only
    removed numpy API found in lava's source (``np.trapz`` in slayer's object-detection metrics) is used at
    call time, not import time.

(d) ``lava.magma.runtime.message_infrastructure.multiprocessing`` calls ``mp.set_start_method('fork')`` when it
    is imported, which raises ``RuntimeError: context has already been set`` if anything in the process fixed
    the start method first (``multiprocessing.get_start_method()`` does, and so do launchers). Lava needs
    fork either way, so the rewrite passes ``force=True``: the same choice, without the order dependence.

Call ``install()`` before the first ``import lava...``.
"""

import ast
import importlib.abc
import importlib.machinery
import importlib.util
import sys

_DATACLASSES_ALIAS = "_revsnn_compat_dataclasses"
_TORCHVISION_GUARD = "_revsnn_compat_torchvision_unavailable"
_TORCHVISION_MESSAGE = "torchvision is not available; lava-dl's object-detection utilities need it; revsnn does not"


# --- rewrite (a): mutable dataclass defaults ---------------------------------------------------------------

def _is_dataclass_decorator(node: ast.expr) -> bool:
    """True for ``@dataclass``, ``@dataclasses.dataclass`` and their called forms ``@dataclass(...)``."""
    if isinstance(node, ast.Call):
        node = node.func
    return (isinstance(node, ast.Name) and node.id == "dataclass") or (
        isinstance(node, ast.Attribute) and node.attr == "dataclass")


def _fix_mutable_dataclass_defaults(tree: ast.Module) -> ast.Module:
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)
               and any(_is_dataclass_decorator(d) for d in node.decorator_list)]
    names = {cls.name for cls in classes}
    changed = False
    for cls in classes:
        for stmt in cls.body:
            value = stmt.value if isinstance(stmt, ast.AnnAssign) else None
            if not (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                    and value.func.id in names and not value.args and not value.keywords):
                continue
            # A ClassVar is not a field; dataclasses does not check its default, so leave it alone.
            if "ClassVar" in ast.unparse(stmt.annotation):
                continue
            stmt.value = ast.copy_location(ast.Call(
                func=ast.Attribute(ast.Name(_DATACLASSES_ALIAS, ast.Load()), "field", ast.Load()),
                args=[], keywords=[ast.keyword("default_factory", ast.Name(value.func.id, ast.Load()))]), value)
            changed = True
    if changed:
        # Under a private alias so the module's own namespace is unchanged apart from this one name.
        _insert_after_preamble(tree, ast.Import([ast.alias("dataclasses", _DATACLASSES_ALIAS)]))
    return tree


def _insert_after_preamble(tree: ast.Module, stmt: ast.stmt) -> None:
    """Insert ``stmt`` after the docstring and any ``from __future__`` imports, which must stay first."""
    body, index = tree.body, 0
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        index = 1
    while index < len(body) and isinstance(body[index], ast.ImportFrom) and body[index].module == "__future__":
        index += 1
    tree.body.insert(index, stmt)


# --- rewrite (b): optional torchvision ---------------------------------------------------------------------

class _TorchvisionUnavailable:
    """Stands in for a torchvision object that could not be imported; using it raises ImportError."""

    def __init__(self, name: str, cause: BaseException):
        self._name, self._cause = name, cause

    def _fail(self):
        raise ImportError(f"{_TORCHVISION_MESSAGE} (needed {self._name!r}; import failed with "
                          f"{type(self._cause).__name__}: {self._cause})") from self._cause

    def __getattr__(self, attr):
        # Dunder probes (copy, pickle, inspect, hasattr) must see a plain AttributeError, not an ImportError.
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        self._fail()

    def __call__(self, *args, **kwargs):
        self._fail()

    def __repr__(self):
        return f"<unavailable torchvision object {self._name!r}>"


def _torchvision_unavailable(name: str, cause: BaseException) -> _TorchvisionUnavailable:
    # A torchvision whose __init__ raised is removed from sys.modules by Python, but submodules it had already
    # imported stay behind, orphaned; drop them so later importers see "not installed", not half a package.
    if "torchvision" not in sys.modules:
        for key in [k for k in sys.modules if k.startswith("torchvision.")]:
            del sys.modules[key]
    return _TorchvisionUnavailable(name, cause)


class _GuardTorchvisionImports(ast.NodeTransformer):
    """``import torchvision...`` / ``from torchvision... import a`` -> try/except binding placeholders."""

    def _guard(self, node, bound):
        exc = "_revsnn_compat_exc"
        fallback = [ast.Assign([ast.Name(alias, ast.Store())], ast.Call(
            ast.Name(_TORCHVISION_GUARD, ast.Load()), [ast.Constant(full), ast.Name(exc, ast.Load())], []))
            for alias, full in bound]
        handler = ast.ExceptHandler(ast.Name("Exception", ast.Load()), exc, fallback or [ast.Pass()])
        return ast.copy_location(ast.Try([node], [handler], [], []), node)

    def visit_Import(self, node):
        if not any(a.name.split(".")[0] == "torchvision" for a in node.names):
            return node
        # ``import torchvision.ops`` binds ``torchvision``; ``import torchvision.ops as o`` binds ``o``.
        return self._guard(node, [(a.asname or a.name.split(".")[0], a.name) for a in node.names])

    def visit_ImportFrom(self, node):
        if node.level or (node.module or "").split(".")[0] != "torchvision":
            return node
        bound = [(a.asname or a.name, f"{node.module}.{a.name}") for a in node.names if a.name != "*"]
        return self._guard(node, bound)


def _guard_torchvision_imports(tree: ast.Module) -> ast.Module:
    return _GuardTorchvisionImports().visit(tree)


# --- rewrite (d): lava's start-method call, forced ---------------------------------------------------------

class _ForceStartMethod(ast.NodeTransformer):
    def visit_Call(self, node: ast.Call) -> ast.Call:
        self.generic_visit(node)
        if (isinstance(node.func, ast.Attribute) and node.func.attr == "set_start_method"
                and not any(k.arg == "force" for k in node.keywords)):
            node.keywords.append(ast.keyword(arg="force", value=ast.Constant(True)))
        return node


def _force_start_method(tree: ast.Module) -> ast.Module:
    return _ForceStartMethod().visit(tree)


# --- the finder and loader ---------------------------------------------------------------------------------

_OBJECT_DETECTION = "lava.lib.dl.slayer.object_detection"
_REWRITES = {
    "lava.magma.compiler.var_model": _fix_mutable_dataclass_defaults,
    "lava.magma.runtime.message_infrastructure.multiprocessing": _force_start_method,
    f"{_OBJECT_DETECTION}.boundingbox.utils": _guard_torchvision_imports,
    f"{_OBJECT_DETECTION}.dataset.bdd100k": _guard_torchvision_imports,
    f"{_OBJECT_DETECTION}.dataset.prophesee_automotive": _guard_torchvision_imports,
}


class _RewritingLoader(importlib.machinery.SourceFileLoader):
    """Loads a module from its original .py file through an AST rewrite, bypassing the bytecode cache."""

    def __init__(self, fullname, path, rewrite):
        super().__init__(fullname, path)
        self._rewrite = rewrite

    def get_code(self, fullname):
        # SourceLoader.get_code would read a cached .pyc of the *unrewritten* source, and write one back.
        return self.source_to_code(self.get_data(self.path), self.path)

    def source_to_code(self, data, path, *, _optimize=-1):
        tree = ast.fix_missing_locations(self._rewrite(ast.parse(data, filename=path)))
        return compile(tree, path, "exec", dont_inherit=True, optimize=_optimize)

    def set_data(self, path, data, *, _mode=0o666):
        pass  # never write bytecode for a rewritten module

    def exec_module(self, module):
        module.__cached__ = None  # the .pyc beside the source holds the unrewritten code; do not point at it
        if self._rewrite is _guard_torchvision_imports:
            module.__dict__[_TORCHVISION_GUARD] = _torchvision_unavailable
        super().exec_module(module)


class _LavaCompatFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        rewrite = _REWRITES.get(fullname)
        if rewrite is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return None  # not a plain .py file (absent, or a different lava layout): leave it to the others
        loader = _RewritingLoader(fullname, spec.origin, rewrite)
        return importlib.util.spec_from_file_location(fullname, spec.origin, loader=loader)


_FINDER = _LavaCompatFinder()


def is_installed() -> bool:
    return any(isinstance(f, _LavaCompatFinder) for f in sys.meta_path)


def install() -> None:
    """Put the finder at the front of ``sys.meta_path``. Idempotent; call before the first lava import.

    A listed module that is already in ``sys.modules`` imported fine without the layer (a failed import
    removes it again), so it is left as it is; only later imports go through the rewrite.
    """
    if not is_installed():
        sys.meta_path.insert(0, _FINDER)
