"""Fingerprints: which checkpoint a deployed file was exported from, and whether it changed since.

Every writer (``write_nir``, ``write_onnx``, ``write_netx``) can record two strings in the file's metadata
(NIR graph metadata, ONNX ``metadata_props``, the netx file's ``/revsnn`` group attributes):

- ``source_fingerprint``: :func:`model_fingerprint` of the checkpoint it was made from: sha256 over every
  tensor of the state dict (weights and buffers such as BatchNorm statistics: name, dtype, shape, bytes),
  the model config and the export settings that change the graph (``time_steps``, ...), all in a
  canonical order. The caller computes it (``cli/export.py`` does, from the checkpoint) and passes it in;
  :func:`checkpoint_fingerprint` is the one way export and verify compute it, so that they agree.
- ``content_digest``: sha256 over the weights *as they are in the file* (per format: the NIR nodes'
  parameters and edges, the ONNX initializers and nodes, the netx layers' datasets and the relay
  description), computed by the writer. It is recomputed from the file when checked, so any change to
  a weight, a threshold or a connection after export is caught, whoever made it.

:func:`check_file` raises :class:`FingerprintError` (one sentence) when a file carries no fingerprint,
was exported from another checkpoint (or with other settings), or has changed since it was written.

The digests are sha256 (``hashlib``): a standard, collision-resistant hash, nothing of our own. They
guard against mistakes (the wrong file deployed, a file edited by hand or by a tool), not against an
attacker, who could recompute them: nothing here is signed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from revsnn.errors import RevsnnError

__all__ = ["FingerprintError", "model_fingerprint", "checkpoint_fingerprint", "nir_digest", "onnx_digest",
           "netx_digest", "recorded", "check_file", "FINGERPRINT_KEY", "DIGEST_KEY"]

FINGERPRINT_KEY = "source_fingerprint"
DIGEST_KEY = "content_digest"
_PREFIX = "sha256:"


class FingerprintError(RevsnnError):
    """A deployed file that does not belong to the checkpoint it is checked against; one sentence."""


# --------------------------------------------------------------------------------------------------------
# Canonical hashing


def _json(value: Any) -> str:
    """Canonical JSON of plain data (sorted keys, numpy scalars and arrays as Python values)."""
    def plain(v):
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, Path):
            return str(v)
        return v
    return json.dumps(plain(value), sort_keys=True, separators=(",", ":"), default=str)


def _array(h, name: str, value) -> None:
    """Hash one array by value: integers and booleans as int64, floats as float64 (so that the same numbers
    in float32 in memory and read back from a file as float32 or float64 hash alike), C order."""
    a = np.asarray(value)
    if a.dtype.kind in "biu":
        a = a.astype(np.int64)
    elif a.dtype.kind == "f":
        a = a.astype(np.float64)
    elif a.dtype.kind in "SU":
        a = np.char.encode(a.astype(str), "utf8") if a.dtype.kind == "U" else a
        h.update(f"{name}|str|{a.shape}|".encode())
        h.update(b"\x00".join(bytes(x) for x in a.ravel()))
        return
    else:
        raise FingerprintError(f"cannot fingerprint {name!r}: arrays of dtype {a.dtype} are not supported.")
    a = np.ascontiguousarray(a)
    h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())


def model_fingerprint(state_dict: Mapping[str, Any], config: Mapping[str, Any],
                      settings: Mapping[str, Any] | None = None) -> str:
    """sha256 over a checkpoint's tensors (weights and buffers), its model config and the export
    ``settings``: ``"sha256:<hex>"``. Tensors are hashed by name, dtype, shape and raw bytes (exact: a
    weight changed in its last bit changes the fingerprint)."""
    import torch

    h = hashlib.sha256(b"revsnn-model-fingerprint/1\n")
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            h.update(f"{name}|value|{_json(t)}\n".encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(b"config|" + _json(config).encode())
    h.update(b"settings|" + _json(settings or {}).encode())
    return _PREFIX + h.hexdigest()


def checkpoint_fingerprint(model, payload: Mapping[str, Any], time_steps: int | None = None) -> str:
    """The fingerprint of a checkpoint (``load_model``'s two results: the model and the payload) exported at
    ``time_steps`` steps (default: the T it was trained with): what ``revsnn export`` records and what
    ``verify --file`` expects. It hashes the payload's own state dict and config, as stored, so a model
    converted afterwards (``.double()``) fingerprints the same. The format's own options (opset, step or
    unrolled, conv or dense synapses) are not part of it: they change the file, which the content digest
    covers, not the model it was made from."""
    config = payload.get("config") or getattr(model, "config", {})
    if time_steps is None:
        time_steps = payload.get("train", {}).get("time_steps", config.get("train", {}).get("time_steps", 4))
    return model_fingerprint(payload["state_dict"], config, {"time_steps": int(time_steps)})


# --------------------------------------------------------------------------------------------------------
# Content digests, one per format


def nir_digest(graph) -> str:
    """sha256 over a NIR graph's nodes (type and every parameter, by value) and edges; its metadata (where
    the digest itself is kept) is left out. Nested graphs are walked."""
    import nir

    h = hashlib.sha256(b"revsnn-nir-digest/1\n")

    def walk(g, prefix: str) -> None:
        for name in sorted(g.nodes):
            node = g.nodes[name]
            full = prefix + name
            h.update(f"node|{full}|{type(node).__name__}\n".encode())
            if isinstance(node, nir.NIRGraph):
                walk(node, full + ".")
                continue
            for field in sorted(vars(node)):
                # types are derived from the parameters (and re-inferred on read); metadata holds the digest
                if field in ("input_type", "output_type", "metadata"):
                    continue
                value = vars(node)[field]
                if value is None or isinstance(value, str):
                    h.update(f"{full}.{field}|{value!r}\n".encode())
                else:
                    _array(h, f"{full}.{field}", value)
        for src, dst in sorted((str(s), str(d)) for s, d in g.edges):
            h.update(f"edge|{prefix}{src}|{prefix}{dst}\n".encode())

    walk(graph, "")
    return _PREFIX + h.hexdigest()


def onnx_digest(model) -> str:
    """sha256 over an ONNX model's graph: every initializer by value, every node (op, inputs, outputs,
    attributes), the inputs and outputs; the model's ``metadata_props`` (where the digest is kept) are
    left out."""
    from onnx import helper, numpy_helper

    h = hashlib.sha256(b"revsnn-onnx-digest/1\n")
    g = model.graph
    for init in sorted(g.initializer, key=lambda t: t.name):
        _array(h, f"init.{init.name}", numpy_helper.to_array(init))
    for node in g.node:
        attrs = {}
        for a in node.attribute:
            v = helper.get_attribute_value(a)
            if hasattr(v, "SerializeToString"):       # a tensor attribute (ConstantOfShape's value)
                v = numpy_helper.to_array(v).tolist()
            elif isinstance(v, bytes):
                v = v.decode("utf8", "replace")
            elif isinstance(v, list):
                v = [x.decode("utf8", "replace") if isinstance(x, bytes) else x for x in v]
            attrs[a.name] = v
        h.update(f"node|{node.op_type}|{list(node.input)}|{list(node.output)}|{_json(attrs)}\n".encode())
    for kind, values in (("input", g.input), ("output", g.output)):
        for v in values:
            dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            h.update(f"{kind}|{v.name}|{v.type.tensor_type.elem_type}|{dims}\n".encode())
    h.update(f"opset|{[(o.domain, o.version) for o in model.opset_import]}\n".encode())
    return _PREFIX + h.hexdigest()


def netx_digest(f) -> str:
    """sha256 over an open netx HDF5 file (``h5py.File``): every dataset under ``/layer`` by value (weights,
    biases, shapes, neuron settings) and the ``/revsnn`` group's layer description (which populations and
    relays each layer holds); the group's fingerprint attributes are left out."""
    import h5py

    h = hashlib.sha256(b"revsnn-netx-digest/1\n")
    if "layer" not in f:
        raise FingerprintError("the netx file has no /layer group, so it has no weights to check.")

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            _array(h, name, obj[()])

    items: list[tuple[str, Any]] = []
    f["layer"].visititems(lambda name, obj: items.append((name, obj)))
    for name, obj in sorted(items, key=lambda kv: kv[0]):
        visit(name, obj)
    meta = f.get("revsnn")
    if meta is not None and "members" in meta.attrs:
        members = meta.attrs["members"]
        h.update(b"members|" + (members.encode() if isinstance(members, str) else bytes(members)))
    return _PREFIX + h.hexdigest()


# --------------------------------------------------------------------------------------------------------
# Reading back and checking


def recorded(path: str | Path) -> tuple[str | None, str | None, str]:
    """``(recorded fingerprint, recorded content digest, digest recomputed from the file)`` of a ``.nir``,
    ``.onnx`` or ``.net`` file (``None`` where the file records none). Unreadable files raise their reader's
    error (a :class:`RevsnnError`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".nir":
        from .nir_file import read_nir

        graph = read_nir(path)
        meta = graph.metadata or {}
        return _str(meta.get(FINGERPRINT_KEY)), _str(meta.get(DIGEST_KEY)), nir_digest(graph)
    if suffix == ".onnx":
        from .onnx_file import read_onnx

        model = read_onnx(path)
        props = {p.key: p.value for p in model.metadata_props}
        return props.get(FINGERPRINT_KEY), props.get(DIGEST_KEY), onnx_digest(model)
    if suffix == ".net":
        import h5py

        from .netx_file import read_netx

        read_netx(path)  # the file's structure first, with its one-sentence errors
        with h5py.File(path, "r") as f:
            meta = f.get("revsnn")
            attrs = dict(meta.attrs) if meta is not None else {}
            return _str(attrs.get(FINGERPRINT_KEY)), _str(attrs.get(DIGEST_KEY)), netx_digest(f)
    raise FingerprintError(f"{path}: fingerprints are checked in .nir, .onnx and .net files, not "
                           f"{path.suffix or 'files without a suffix'}.")


def _str(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _str(value[()])
    if isinstance(value, np.generic):
        return _str(value.item())
    return str(value)


def _short(fp: str) -> str:
    return fp[len(_PREFIX):][:12] if fp.startswith(_PREFIX) else fp[:12]


def check_file(path: str | Path, expected_fingerprint: str) -> None:
    """Raise :class:`FingerprintError` unless ``path`` was exported from the checkpoint whose fingerprint is
    ``expected_fingerprint`` and is unchanged since: one sentence for a file with no fingerprint, one
    changed after export (its content no longer matches the digest it records), and one exported from
    another checkpoint or with other settings."""
    path = Path(path)
    fingerprint, digest, actual = recorded(path)
    if fingerprint is None or digest is None:
        raise FingerprintError(f"{path} carries no source fingerprint, so it cannot be tied to a checkpoint "
                               "(written by another tool or an older revsnn); export it again with `revsnn "
                               "export`.")
    if digest != actual:
        raise FingerprintError(f"{path} has changed since it was exported: its weights no longer match the "
                               f"content digest it records ({_short(digest)}, now {_short(actual)}); export "
                               "it again from the checkpoint.")
    if fingerprint != expected_fingerprint:
        raise FingerprintError(f"{path} was exported from another checkpoint or with other settings (source "
                               f"fingerprint {_short(fingerprint)}, this checkpoint's {_short(expected_fingerprint)}); "
                               "export it again from this checkpoint.")
