"""Write and read lava-dl netx HDF5 files (``.net``) for a Loihi chain (``exporters/loihi_chain.py``).

The layout is the one lava-dl 0.6's ``netx.hdf5.Network`` reads (``research/feasibility.md`` §2):

- ``/layer/0``: ``type = "input"`` with only ``shape`` (``[C, H, W]``, or ``[N]`` when the first synapse is
  dense). No neuron group: lava-dl 0.6 never wires an input block's port, and without one ``net.inp`` feeds
  the first synapse directly;
- ``conv`` layers: ``shape [C, H, W]``, ``weight (C_out, C_in, kH, kW)`` in torch's cross-correlation layout
  (netx flips and transposes it for Lava), ``stride``, ``padding``, ``dilation``, ``groups``, optional ``bias``
  (per channel, or per neuron in Lava's (x, y, c) order);
- ``flatten`` between the last conv and the first dense layer (netx then reads torch's (C, H, W) order);
- ``dense`` layers: ``shape [N]``, ``weight (N_out, N_in)``, optional ``bias``;
- every conv / dense layer has ``neuron/`` with ``type = "CUBA"``, ``iDecay``, ``vDecay``, ``vThMant``,
  ``refDelay = 1``, ``gradedSpike = False``.

Weights are integer mantissas. revsnn adds ``/revsnn`` (netx ignores it): a JSON attribute with the model's
metadata and, per layer, which populations and relays it holds, so that a target can read each original
population's spikes and the readout's potential back in float units.
"""

from __future__ import annotations

from revsnn.errors import RevsnnError

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from revsnn.fileio import atomic_write

from .loihi import BIAS_MAX, VTH_MAX
from .loihi_chain import ChainLayer, LoihiChain, Member

__all__ = ["write_netx", "read_netx", "summarize_netx", "describe_chain", "NetxFileError", "FORMAT"]

FORMAT = "revsnn-netx/1"
KNOWN_TYPES = ("input", "conv", "flatten", "dense")


class NetxFileError(RevsnnError):
    """A .net file that cannot be written or read; one sentence."""


def _str(value: str) -> np.ndarray:
    return np.array([value.encode("ascii")], dtype="S10")


def write_netx(chain: LoihiChain, path: str | Path, *, fingerprint: str | None = None) -> Path:
    """Write ``chain`` to ``path`` atomically (a failed write leaves nothing behind). ``fingerprint``
    (``exporters/fingerprint.py``) is recorded as the ``/revsnn`` group's ``source_fingerprint`` attribute,
    beside ``content_digest``, the digest of the layers as written."""
    import h5py

    path = Path(path)
    if not path.parent.is_dir():
        raise NetxFileError(f"the output directory {path.parent} does not exist; create it or choose another path.")
    if path.is_dir():
        raise NetxFileError(f"{path} is a directory; give a file name such as {path / 'model.net'}.")
    # Built in memory and copied with plain I/O (revsnn.fileio): h5py writing to a full disk itself segfaults,
    # and a temp file made outside the write helper escaped its error handling on a read-only destination.
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        layers = f.create_group("layer")
        index = 0

        def group(kind: str):
            nonlocal index
            g = layers.create_group(str(index))
            g["type"] = _str(kind)
            index += 1
            return g

        group("input")["shape"] = np.array(chain.input_shape, dtype=np.int64)
        prev = chain.input_shape
        for layer in chain.layers:
            if layer.kind == "dense" and len(prev) == 3:
                group("flatten")["shape"] = np.array([int(np.prod(prev)), 1, 1], dtype=np.int64)
            g = group(layer.kind)
            _write_layer(g, layer, prev)
            prev = layer.shape
        meta = f.create_group("revsnn")
        meta.attrs["format"] = FORMAT
        meta.attrs["metadata"] = json.dumps(_jsonable(chain.metadata))
        meta.attrs["members"] = json.dumps([[_member_json(m) for m in layer.members] for layer in chain.layers])
        if fingerprint is not None:
            from .fingerprint import DIGEST_KEY, FINGERPRINT_KEY, netx_digest

            f.flush()
            meta.attrs[FINGERPRINT_KEY] = str(fingerprint)
            meta.attrs[DIGEST_KEY] = netx_digest(f)  # read from the file being written: what check_file reads
    atomic_write(path, buffer.getbuffer())
    return path


def _write_layer(g, layer: ChainLayer, prev: tuple[int, ...]) -> None:
    g["shape"] = np.array(layer.shape, dtype=np.int64)
    # gzip: relay blocks and folded pooling leave matrices mostly zero; h5py decompresses for netx.
    # fletcher32: a checksum that h5py verifies on every read, so a damaged file fails instead of loading.
    g.create_dataset("weight", data=layer.weight.astype(np.int32), compression="gzip", fletcher32=True)
    if layer.kind == "conv":
        g["inChannels"] = int(prev[0])
        g["outChannels"] = int(layer.shape[0])
        g["kernelSize"] = np.array(layer.weight.shape[2:], dtype=np.int64)
        g["stride"] = np.array(layer.stride, dtype=np.int64)
        g["padding"] = np.array(layer.padding, dtype=np.int64)
        g["dilation"] = np.array(layer.dilation, dtype=np.int64)
        g["groups"] = 1
        bias = layer.bias.reshape(layer.shape)
        if bias.any():
            per_channel = bias.reshape(bias.shape[0], -1)
            if np.all(per_channel == per_channel[:, :1]):
                g["bias"] = per_channel[:, 0].astype(np.int32)
            else:  # netx takes a per-neuron bias in Lava's (x, y, c) order
                g["bias"] = bias.transpose(2, 1, 0).astype(np.int32)
    else:
        g["inFeatures"] = int(np.prod(prev))
        g["outFeatures"] = int(layer.shape[0])
        if layer.bias.any():
            g["bias"] = layer.bias.astype(np.int32)
    n = g.create_group("neuron")
    n["type"] = _str("CUBA")
    n["iDecay"] = int(layer.i_decay)
    n["vDecay"] = int(layer.v_decay)
    n["vThMant"] = int(layer.v_th_mant)
    n["refDelay"] = 1
    n["gradedSpike"] = False


def _member_json(m: Member) -> list:
    return [m.name, bool(m.relay), int(m.start), int(m.stop), int(m.fold), [int(v) for v in m.shape], float(m.scale)]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    return value


# --------------------------------------------------------------------------------------------------------


def read_netx(path: str | Path) -> LoihiChain:
    """Read and check a .net file: every layer is one netx loads, and every shape agrees with the next."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise NetxFileError(f"{path} does not exist; export one with `revsnn export lava MODEL.pt --out {path}`.")
    if not path.is_file():
        raise NetxFileError(f"{path} is not a regular file; pass the .net file written by `revsnn export lava`.")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise NetxFileError(f"{path} is not a readable netx file (not HDF5, or damaged or truncated: {exc}); "
                            "export it again.") from exc
    try:
        with f:
            return _read(f, path)
    except NetxFileError:
        raise
    except (KeyError, OSError, ValueError, TypeError, IndexError, RuntimeError) as exc:  # h5py's damaged-file errors
        raise NetxFileError(f"{path} is damaged or truncated ({type(exc).__name__}: {exc}); export it again.") from exc


def _read(f, path: Path) -> LoihiChain:
    if "layer" not in f:
        raise NetxFileError(f"{path} is an HDF5 file but not a netx network (no /layer group).")
    group = f["layer"]
    count = len(group)
    for i in range(count):
        if str(i) not in group:
            raise NetxFileError(f"{path}: the layers are not numbered 0..{count - 1} (no /layer/{i}).")

    def kind(i: int) -> str:
        t = group[str(i)].get("type")
        if t is None:
            raise NetxFileError(f"{path}: /layer/{i} has no type.")
        v = t[()]
        v = v[0] if getattr(v, "shape", ()) else v
        return v.decode("ascii") if isinstance(v, bytes) else str(v)

    kinds = [kind(i) for i in range(count)]
    for i, k in enumerate(kinds):
        if k not in KNOWN_TYPES:
            raise NetxFileError(f"{path}: /layer/{i} has type {k!r}; revsnn runs netx chains of "
                                f"{', '.join(KNOWN_TYPES)} layers only (netx itself cannot load pool, average, "
                                "concat, convT or unpool).")
    if not kinds or kinds[0] != "input":
        raise NetxFileError(f"{path}: the first layer must be an input layer with a shape.")
    g0 = group["0"]
    if "neuron" in g0:
        raise NetxFileError(f"{path}: the input layer has a neuron group; lava-dl 0.6 never connects such an input "
                            "block's port, so write the input layer with only its shape.")
    prev = tuple(int(v) for v in np.asarray(g0["shape"][()]).ravel())
    input_shape = prev
    layers: list[ChainLayer] = []
    flatten_next = False
    for i in range(1, count):
        g = group[str(i)]
        if kinds[i] == "input":
            raise NetxFileError(f"{path}: /layer/{i} is a second input layer.")
        if kinds[i] == "flatten":
            if len(prev) != 3:
                raise NetxFileError(f"{path}: /layer/{i} flattens a layer that is already flat.")
            flatten_next = True
            continue
        shape = tuple(int(v) for v in np.asarray(g["shape"][()]).ravel())
        weight = _integers(g["weight"][()], path, f"/layer/{i}/weight", -_WEIGHT_LIMIT, _WEIGHT_LIMIT,
                           "Loihi's 8-bit weight mantissas")
        if not weight.any():
            raise NetxFileError(f"{path}: /layer/{i} has only zero weights, which netx cannot load.")
        neuron = g.get("neuron")
        if neuron is None:
            raise NetxFileError(f"{path}: /layer/{i} has no neuron group.")
        for key in ("iDecay", "vDecay", "vThMant"):
            if key not in neuron:
                raise NetxFileError(f"{path}: /layer/{i}/neuron has no {key}.")
        n_type = neuron["type"][()]
        n_type = (n_type[0] if getattr(n_type, "shape", ()) else n_type)
        n_type = n_type.decode("ascii") if isinstance(n_type, bytes) else str(n_type)
        if n_type not in ("CUBA", "LOIHI"):
            raise NetxFileError(f"{path}: /layer/{i} has {n_type!r} neurons; revsnn runs CUBA neurons only.")
        config = {k: int(_integers(neuron[k][()], path, f"/layer/{i}/neuron/{k}", low, high, why).ravel()[0])
                  for k, low, high, why in (("iDecay", 0, 4096, "a decay in 1/4096"),
                                            ("vDecay", 0, 4096, "a decay in 1/4096"),
                                            ("vThMant", 1, VTH_MAX, "Loihi's 17-bit threshold register"))}
        if kinds[i] == "conv":
            if len(prev) != 3 or flatten_next:
                raise NetxFileError(f"{path}: /layer/{i} is a convolution after a flat layer of shape {prev}.")
            stride, padding, dilation = (tuple(int(v) for v in np.resize(np.asarray(g[k][()]).ravel(), 2))
                                         for k in ("stride", "padding", "dilation"))
            groups = int(np.asarray(g["groups"][()]).ravel()[0]) if "groups" in g else 1
            if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
                raise NetxFileError(f"{path}: /layer/{i} has stride {stride}, padding {padding}, dilation {dilation}; "
                                    "strides and dilations must be at least 1 and paddings at least 0.")
            if weight.ndim != 4 or weight.shape[0] != shape[0] or weight.shape[1] * groups != prev[0] or groups != 1:
                raise NetxFileError(f"{path}: /layer/{i} has conv weights of shape {weight.shape}, which do not "
                                    f"map {prev[0]} input channels to {shape[0]} (groups 1).")
            expect = tuple((prev[d + 1] + 2 * padding[d] - dilation[d] * (weight.shape[d + 2] - 1) - 1) // stride[d] + 1
                           for d in range(2))
            if len(shape) != 3 or shape[1:] != expect:
                raise NetxFileError(f"{path}: /layer/{i} declares shape {shape}, but its convolution of a {prev} "
                                    f"input gives {(weight.shape[0], *expect)}.")
            bias = _bias(g, shape, path, i)
            layer = ChainLayer("conv", shape, weight, bias, config["iDecay"], config["vDecay"], config["vThMant"],
                               stride=stride, padding=padding, dilation=dilation)
        else:
            n_in = int(np.prod(prev))
            if len(prev) == 3 and not flatten_next:
                raise NetxFileError(f"{path}: /layer/{i} is dense after a conv layer without a flatten layer.")
            if weight.ndim != 2 or weight.shape != (shape[0], n_in) or len(shape) != 1:
                raise NetxFileError(f"{path}: /layer/{i} has dense weights of shape {weight.shape}, but it reads "
                                    f"{n_in} inputs into {shape} neurons.")
            bias = _bias(g, shape, path, i)
            layer = ChainLayer("dense", shape, weight, bias, config["iDecay"], config["vDecay"], config["vThMant"])
        flatten_next = False
        layers.append(layer)
        prev = shape
    if not layers:
        raise NetxFileError(f"{path} has no conv or dense layer.")
    if flatten_next:
        raise NetxFileError(f"{path} ends with a flatten layer.")
    metadata: dict = {}
    meta = f.get("revsnn")
    if meta is not None and meta.attrs.get("format") == FORMAT:
        metadata = json.loads(meta.attrs["metadata"])
        members = json.loads(meta.attrs["members"])
        if len(members) != len(layers):
            raise NetxFileError(f"{path}: its revsnn description names {len(members)} layers, but it has "
                                f"{len(layers)}.")
        for layer, ms in zip(layers, members):
            layer.members = [Member(n, bool(r), int(a), int(b), int(fo), tuple(s), float(sc))
                             for n, r, a, b, fo, s, sc in ms]
    else:  # a foreign netx file: each layer is one population
        for k, layer in enumerate(layers):
            size = layer.shape[0]
            layer.members = [Member(f"layer{k}", False, 0, size, 1, layer.shape, 64.0)]
    layers[-1].readout = True
    return LoihiChain(input_shape, layers, metadata)


# Values are checked, not only shapes: h5py hands back floats, complex numbers or 2**40 as readily as the int32
# mantissas netx expects, and a silent cast would run a different network than the file describes.
_WEIGHT_LIMIT = 255  # 8-bit magnitude: what netx places on Loihi without a weight exponent


def _integers(value, path: Path, where: str, low: int, high: int, why: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu" or arr.size == 0:
        raise NetxFileError(f"{path}: {where} holds {arr.dtype} values where netx needs integers ({why}); "
                            "export the file again with `revsnn export lava`.")
    arr = arr.astype(np.int64)
    if arr.min() < low or arr.max() > high:
        bad = int(arr.max()) if arr.max() > high else int(arr.min())
        raise NetxFileError(f"{path}: {where} holds {bad}, outside [{low}, {high}] ({why}); export the file again "
                            "with `revsnn export lava`.")
    return arr


def _bias(g, shape: tuple[int, ...], path: Path, i: int) -> np.ndarray:
    n = int(np.prod(shape))
    if "bias" not in g:
        return np.zeros(n, dtype=np.int64)
    b = _integers(g["bias"][()], path, f"/layer/{i}/bias", -BIAS_MAX - 1, BIAS_MAX, "Loihi's 13-bit bias mantissas")
    if b.size == n and len(shape) == 3 and b.shape == tuple(shape[::-1]):
        return b.transpose(2, 1, 0).reshape(-1)       # per neuron, Lava's (x, y, c) order
    if b.size == n:
        return b.reshape(-1)
    if len(shape) == 3 and b.size == shape[0]:
        return np.repeat(b.reshape(-1), shape[1] * shape[2])
    if b.size == 1:
        return np.full(n, int(b.ravel()[0]), dtype=np.int64)
    raise NetxFileError(f"{path}: /layer/{i} has a bias of shape {b.shape} for a layer of shape {shape}.")


# --------------------------------------------------------------------------------------------------------
# Summary


def describe_chain(chain: LoihiChain) -> list[str]:
    """What a user needs to know of a written chain: layers, latency, relay overhead, neuron settings."""
    o = chain.overhead()
    kinds = [layer.kind for layer in chain.layers]
    lines = [f"{len(kinds)} layers ({kinds.count('conv')} conv, {kinds.count('dense')} dense, the last the readout); "
             f"latency {chain.depth} steps (one per synapse): output step t + {chain.depth} is model step t.",
             f"neurons: {o['neurons']:,} of the model + {o['relay_neurons']:,} relays (+{o['neuron_overhead']:.0%}); "
             f"synapses: {o['synapses']:,} + {o['relay_synapses']:,} relay (+{o['synapse_overhead']:.1%})."]
    thresholds = sorted({layer.v_th_mant for layer in chain.layers if not layer.readout})
    decays = sorted({layer.v_decay for layer in chain.layers if not layer.readout})
    lines.append(f"CUBA neurons: iDecay 4096, vDecay {', '.join(map(str, decays))}, vThMant "
                 f"{', '.join(map(str, thresholds))}; readout vThMant {chain.layers[-1].v_th_mant} (never fires).")
    return lines


# The chain metadata that `revsnn info` shows (the rest is the graph's own metadata, repeated).
_SHOWN_METADATA = ("model", "time_steps", "readout", "synapses", "revsnn_version", "quantized")


def summarize_netx(chain: LoihiChain, path: str | Path | None = None) -> dict:
    """What ``revsnn info`` shows of a netx chain (as :func:`read_netx` returns it), as plain data:
    ``input_shape``; ``layers``, one dict per conv / dense layer (``index`` from 1, ``type`` (``readout`` for the
    last), ``shape``, ``synapse`` (``kH×kW/s<stride>/p<padding>`` or ``out×in``), ``i_decay``, ``v_decay``,
    ``v_th_mant``, ``populations`` and ``relays`` it holds); ``description`` (:func:`describe_chain`);
    ``metadata`` (model, T, readout, synapse form, version, and the fingerprint, when ``path`` is given and
    the file records one)."""
    layers = []
    for k, layer in enumerate(chain.layers, 1):
        if layer.kind == "conv":
            kh, kw = layer.weight.shape[2:]
            syn = f"{kh}×{kw}/s{layer.stride[0]}/p{layer.padding[0]}"
        else:
            syn = f"{layer.weight.shape[0]}×{layer.weight.shape[1]}"
        layers.append({"index": k, "type": "readout" if layer.readout else layer.kind,
                       "shape": [int(v) for v in layer.shape], "synapse": syn, "i_decay": int(layer.i_decay),
                       "v_decay": int(layer.v_decay), "v_th_mant": int(layer.v_th_mant),
                       "populations": [m.name for m in layer.members if not m.relay],
                       "relays": [m.name for m in layer.members if m.relay]})
    metadata = {key: chain.metadata[key] for key in _SHOWN_METADATA if key in chain.metadata}
    if path is not None:
        import h5py

        from .fingerprint import DIGEST_KEY, FINGERPRINT_KEY

        with h5py.File(path, "r") as f:
            attrs = f["revsnn"].attrs if "revsnn" in f else {}
            for key in (FINGERPRINT_KEY, DIGEST_KEY):
                if key in attrs:
                    metadata[key] = str(attrs[key])
    return {"input_shape": [int(v) for v in chain.input_shape], "layers": layers,
            "description": describe_chain(chain), "metadata": metadata}
