"""Write and read ``.nir`` files (NIR 1.0.8's HDF5 format), with clear errors (DESIGN §3, §8).

- :func:`write_nir` refuses what NIR cannot hold (a node that is not a NIR primitive, such as our own
  spiking self-attention node; non-finite parameters; metadata values HDF5 cannot store), writes through a
  temporary file beside the target, reads that file back with NIR's type check, and only then renames it
  into place: no partial or unreadable file is ever left behind.
- :func:`read_nir` wraps ``nir.read(path, type_check=True)`` and turns every failure (missing file, not
  HDF5, truncated, HDF5 without NIR structure, a node type NIR cannot parse, a graph that fails the type
  check) into :class:`NIRFileError` with one sentence naming the problem and the fix.
- :func:`summarize` counts what a graph holds, for ``revsnn info``.

Graph metadata (``dt``, ``reset``, ``readout``, ``time_steps``, ``model``, ``revsnn_version``, ...) is
stored under ``/node/metadata``; it reads back with the same values (strings as ``str``, numbers as numpy
scalars).
"""

from __future__ import annotations

import io

from revsnn.errors import RevsnnError

from collections import Counter
from pathlib import Path
from typing import Any

import nir
import numpy as np

from revsnn.fileio import atomic_write

__all__ = ["NIRFileError", "write_nir", "read_nir", "summarize", "NIR_PRIMITIVES", "NEURON_NODE_TYPES",
           "SYNAPSE_NODE_TYPES"]

# The node classes NIR 1.0.8 can serialize (``nir.ir.__all_ir``); exact types, since NIR writes the
# class name as the node's type and reads back only these names.
NIR_PRIMITIVES: tuple[type, ...] = (
    nir.Conv1d, nir.Conv2d, nir.Delay, nir.Flatten, nir.Input, nir.NIRGraph, nir.Output, nir.Affine,
    nir.Linear, nir.Scale, nir.CubaLI, nir.CubaLIF, nir.I, nir.IF, nir.LI, nir.LIF, nir.AvgPool2d,
    nir.SumPool2d, nir.Threshold,
)
_PRIMITIVE_NAMES = {cls.__name__ for cls in NIR_PRIMITIVES}

NEURON_NODE_TYPES: tuple[type, ...] = (nir.LIF, nir.IF, nir.Threshold, nir.LI, nir.CubaLIF)
SYNAPSE_NODE_TYPES: tuple[type, ...] = (nir.Affine, nir.Linear, nir.Conv2d)


class NIRFileError(RevsnnError):
    """A ``.nir`` file that cannot be written or read; the message names the problem and the fix."""


# --------------------------------------------------------------------------------------------------------
# Writing


def _check_nodes(graph: nir.NIRGraph, prefix: str = "") -> None:
    for name, node in graph.nodes.items():
        full = f"{prefix}{name}"
        if type(node) not in NIR_PRIMITIVES:
            raise NIRFileError(f"node {full!r} is a {type(node).__name__}, which is not a NIR primitive and "
                               "cannot be written to a .nir file; export this model to ONNX instead.")
        if isinstance(node, nir.NIRGraph):
            _check_nodes(node, prefix=f"{full}.")
            continue
        for field, value in vars(node).items():
            if field in ("input_type", "output_type", "metadata") or value is None or isinstance(value, str):
                continue
            arr = np.asarray(value)
            if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
                raise NIRFileError(f"node {full!r} has non-finite values (NaN or inf) in {field!r}; retrain or "
                                   "repair the checkpoint before exporting.")


def _check_metadata(metadata: dict, where: str = "metadata") -> None:
    for key, value in metadata.items():
        if isinstance(value, dict):
            _check_metadata(value, f"{where}.{key}")
        elif not isinstance(value, (str, bool, int, float, np.generic, np.ndarray, list, tuple)):
            raise NIRFileError(f"{where}[{key!r}] is a {type(value).__name__}, which a .nir file cannot store; "
                               "use a string or a number.")


def write_nir(graph: nir.NIRGraph, path: str | Path, *, fingerprint: str | None = None) -> Path:
    """Write ``graph`` to ``path`` (``nir.write``), atomically; returns the path.

    ``fingerprint`` (``exporters/fingerprint.py``: the checkpoint it comes from) is recorded in the file's
    metadata as ``source_fingerprint``, beside ``content_digest``, the digest of the nodes' parameters and
    edges; the file read back must give the same digest before it takes its name. The caller's graph is
    not changed.

    Raises :class:`NIRFileError` if the output directory does not exist, if a node is not a NIR primitive
    (e.g. spiking self-attention: export to ONNX instead), if a parameter is NaN/inf, or if the written file
    does not read back through ``nir.read`` with its type check (nothing is left at ``path`` then).
    """
    path = Path(path)
    if not isinstance(graph, nir.NIRGraph):
        raise NIRFileError(f"write_nir needs a nir.NIRGraph, got a {type(graph).__name__}; collapse the model "
                           "first (revsnn.exporters.collapse.collapse).")
    if not path.parent.is_dir():
        raise NIRFileError(f"the output directory {path.parent} does not exist; create it or choose another "
                           "path.")
    if path.is_dir():
        raise NIRFileError(f"{path} is a directory; give a file name such as {path / 'model.nir'}.")
    _check_nodes(graph)
    _check_metadata(graph.metadata or {})
    digest = None
    if fingerprint is not None:
        from .fingerprint import DIGEST_KEY, FINGERPRINT_KEY, nir_digest

        digest = nir_digest(graph)
        metadata = {**(graph.metadata or {}), FINGERPRINT_KEY: str(fingerprint), DIGEST_KEY: digest}
    else:
        metadata = graph.metadata

    # Serialised into memory first: h5py writing to a full disk itself segfaults (revsnn.fileio says why).
    original = graph.metadata
    graph.metadata = metadata  # for nir.write only; restored below, the caller's graph stays as it was
    buffer = io.BytesIO()
    try:
        nir.write(buffer, graph)
    except Exception as exc:
        raise NIRFileError(f"NIR could not serialize the graph ({type(exc).__name__}: {exc}); check the "
                           "node parameters and metadata.") from exc
    finally:
        graph.metadata = original

    def check(tmp: Path) -> None:
        try:  # the file must read back, with NIR's type check, before it takes the final name
            back = nir.read(tmp, type_check=True)
        except Exception as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise NIRFileError(f"the graph does not pass NIR's type check when read back ({detail}); fix the "
                               f"graph's shapes and edges before writing {path.name}.") from exc
        if digest is not None and nir_digest(back) != digest:
            raise NIRFileError(f"{path.name} does not read back with the parameters that were written (its "
                               "content digest differs); nothing was written.")

    atomic_write(path, buffer.getbuffer(), check=check)  # a WriteError (one sentence) for a disk that fails
    return path


# --------------------------------------------------------------------------------------------------------
# Reading


def _inspect_hdf5(path: Path) -> None:
    """Check the HDF5 layout NIR expects, naming what is wrong (NIR itself raises bare KeyErrors and
    AssertionErrors for these)."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        with open(path, "rb") as raw:
            head = raw.read(8)
        if head != b"\x89HDF\r\n\x1a\n":
            raise NIRFileError(f"{path} is not a NIR file (not HDF5); pass a .nir file written by "
                               "`revsnn export` or nir.write.") from exc
        raise NIRFileError(f"{path} is a damaged or truncated HDF5 file ({exc}); export it again.") from exc
    with f:
        try:
            if "node" not in f or not isinstance(f["node"], h5py.Group) or "type" not in f["node"]:
                raise NIRFileError(f"{path} is an HDF5 file but not a NIR graph (no /node group); pass a .nir file "
                                   "written by `revsnn export` or nir.write.")
            _inspect_graph(path, f["node"], "")
        except NIRFileError:
            raise
        except Exception as exc:  # h5py raises OSError/KeyError on damaged datasets
            raise NIRFileError(f"{path} is damaged or truncated ({type(exc).__name__}: {exc}); export it "
                               "again.") from exc


def _inspect_graph(path: Path, group, prefix: str) -> None:
    import h5py

    kind = _as_str(group["type"][()])
    if kind != "NIRGraph":
        raise NIRFileError(f"{path}: the top node is a {kind!r}, not a NIRGraph; pass a .nir file holding a "
                           "graph.")
    for key in ("nodes", "edges"):
        if key not in group:
            raise NIRFileError(f"{path}: the graph {prefix or '/'} has no {key!r} entry, so it is not a complete "
                               "NIR graph; export it again.")
    for name, node in group["nodes"].items():
        if not isinstance(node, h5py.Group) or "type" not in node:
            raise NIRFileError(f"{path}: node {prefix}{name!r} has no type, so it is not a NIR node; export "
                               "the file again.")
        node_type = _as_str(node["type"][()])
        if node_type not in _PRIMITIVE_NAMES:
            raise NIRFileError(f"{path}: node {prefix}{name!r} has type {node_type!r}, which NIR "
                               f"{nir.version} does not define; export that model to ONNX, or use a NIR "
                               "version that knows the node.")
        if node_type == "NIRGraph":
            _inspect_graph(path, node, f"{prefix}{name}.")
        else:
            for key, item in node.items():
                if isinstance(item, h5py.Dataset):
                    item[()]  # reading every dataset surfaces truncated chunks here, with the node's name


def _as_str(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf8", "replace")
    if isinstance(v, np.ndarray) and v.shape == ():
        return _as_str(v[()])
    return str(v)


def read_nir(path: str | Path) -> nir.NIRGraph:
    """Read a ``.nir`` file with ``nir.read(path, type_check=True)``; every failure is a
    :class:`NIRFileError` naming the problem and the fix."""
    path = Path(path)
    if not path.exists():
        raise NIRFileError(f"{path} does not exist; pass the .nir file written by `revsnn export`.")
    if path.is_dir():
        raise NIRFileError(f"{path} is a directory; pass the .nir file inside it.")
    if not path.is_file():
        raise NIRFileError(f"{path} is not a regular file; pass the .nir file written by `revsnn export`.")
    try:
        _inspect_hdf5(path)
    except NIRFileError:
        raise
    except OSError as exc:
        raise NIRFileError(f"could not read {path} ({exc.strerror or exc}); check the path and "
                           "permissions.") from exc
    try:
        graph = nir.read(path, type_check=True)
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NIRFileError(f"{path} is not a valid NIR graph ({detail}); export it again with `revsnn "
                           "export`.") from exc
    if not isinstance(graph, nir.NIRGraph):
        raise NIRFileError(f"{path} holds a single {type(graph).__name__} node, not a graph; export a graph.")
    try:  # values, not only structure: a NaN or inf parameter would run (and summarise) as if it were fine
        _check_nodes(graph)
    except NIRFileError as exc:
        raise NIRFileError(f"{path}: {exc}".replace("retrain or repair the checkpoint before exporting",
                                                    "export the file again from a sound model")) from exc
    return graph


# --------------------------------------------------------------------------------------------------------
# Summary


def _shape(types: dict | None, key: str) -> list[int] | None:
    if not types or types.get(key) is None:
        return None
    return [int(v) for v in np.atleast_1d(np.asarray(types[key]))]


def _conv_positions(node: nir.Conv2d) -> int | None:
    out = _shape(node.output_type, "output")
    if out is None or len(out) != 3:
        if node.input_shape is None or isinstance(node.padding, str):
            return None
        try:
            hw = nir.ir.utils.calculate_conv_output(node.input_shape, node.padding, node.dilation,
                                                    node.weight.shape[2:], node.stride)
        except Exception:
            return None
        return int(np.prod(np.asarray(hw)))
    return int(out[1] * out[2])


def summarize(graph: nir.NIRGraph) -> dict[str, Any]:
    """What ``revsnn info`` prints about a graph (nested graphs are counted node by node).

    - ``neurons``: the summed sizes of LIF/IF/Threshold/LI/CubaLIF nodes;
    - ``synapses``: *connections*: nonzero weights of Affine/Linear nodes, plus, for each Conv2d, its
      nonzero weight entries times its number of output positions (H_out × W_out; connections that fall
      on zero padding are counted too, so this is an upper bound on the physical synapses at the border).
      ``weights`` separately counts the stored nonzero weight entries (a conv kernel counted once);
    - ``input_shape`` / ``output_shape`` (batch-free), ``edges``, ``metadata`` (plain Python values).
    """
    counts: Counter[str] = Counter()
    neurons = synapses = weights = 0
    unknown_conv = []

    def walk(g: nir.NIRGraph, prefix: str) -> None:
        nonlocal neurons, synapses, weights
        for name, node in g.nodes.items():
            counts[type(node).__name__] += 1
            if isinstance(node, nir.NIRGraph):
                walk(node, f"{prefix}{name}.")
            elif isinstance(node, NEURON_NODE_TYPES):
                param = node.threshold if isinstance(node, nir.Threshold) else (
                    node.v_leak if isinstance(node, nir.LI) else node.v_threshold)
                neurons += int(np.asarray(param).size)
            elif isinstance(node, SYNAPSE_NODE_TYPES):
                nz = int(np.count_nonzero(np.asarray(node.weight)))
                weights += nz
                if isinstance(node, nir.Conv2d):
                    positions = _conv_positions(node)
                    if positions is None:
                        unknown_conv.append(prefix + name)
                    else:
                        synapses += nz * positions
                else:
                    synapses += nz

    walk(graph, "")
    inputs = [n for n in graph.nodes.values() if isinstance(n, nir.Input)]
    outputs = [n for n in graph.nodes.values() if isinstance(n, nir.Output)]
    summary = {
        "nodes": sum(counts.values()),
        "node_types": dict(sorted(counts.items())),
        "neurons": neurons,
        "synapses": synapses,
        "weights": weights,
        "input_shape": _shape(inputs[0].input_type, "input") if len(inputs) == 1 else
        [_shape(n.input_type, "input") for n in inputs],
        "output_shape": _shape(outputs[0].output_type, "output") if len(outputs) == 1 else
        [_shape(n.output_type, "output") for n in outputs],
        "edges": len(graph.edges),
        "metadata": {k: _plain(v) for k, v in (graph.metadata or {}).items()},
    }
    if unknown_conv:
        summary["synapses_incomplete"] = unknown_conv  # convs whose output size is unknown (no input shape)
    return summary


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf8", "replace")
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v
