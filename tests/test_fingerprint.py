"""Fingerprints in every exported file: which checkpoint it came from, and whether it changed since."""

import copy
import json

import h5py
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner

from revsnn.checkpoint import load_model, save_checkpoint
from revsnn.cli.main import app
from revsnn.exporters.collapse import collapse
from revsnn.exporters.fingerprint import (FingerprintError, check_file, checkpoint_fingerprint, model_fingerprint,
                                          recorded)
from revsnn.exporters.loihi import quantize
from revsnn.exporters.loihi_chain import build_chain
from revsnn.exporters.netx_file import read_netx, summarize_netx, write_netx
from revsnn.exporters.nir_file import read_nir, summarize, write_nir
from revsnn.exporters.onnx_file import ONNXFileError, read_onnx, summarize_onnx, write_onnx
from revsnn.testing import trained_like

T = 2
runner = CliRunner()


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Two checkpoints of the same small model (scnn: it deploys to every format), different weights."""
    root = tmp_path_factory.mktemp("fp")
    out = {}
    for seed in (0, 1):
        model = trained_like("scnn-digits", seed=seed).float()
        path = root / f"ckpt{seed}" / "model.pt"
        path.parent.mkdir()
        save_checkpoint(path, model, train={"time_steps": T, "encoding": "rate"})
        loaded, payload = load_model(path)
        assert checkpoint_fingerprint(loaded, payload) == checkpoint_fingerprint(loaded.double(), payload, T)
        out[seed] = (path, collapse(model, T).graph, checkpoint_fingerprint(loaded, payload, T))
    return out


def test_model_fingerprint_is_exact_and_covers_buffers_config_and_settings():
    model = trained_like("scnn-digits")
    sd, config = model.state_dict(), model.config
    fp = model_fingerprint(sd, config, {"time_steps": 4})
    assert fp.startswith("sha256:") and len(fp) == len("sha256:") + 64
    assert model_fingerprint(copy.deepcopy(sd), copy.deepcopy(config), {"time_steps": 4}) == fp
    assert model_fingerprint(dict(reversed(list(sd.items()))), config, {"time_steps": 4}) == fp  # order-free
    weight = next(k for k in sd if k.endswith("weight"))
    bumped = {**sd, weight: sd[weight].clone()}
    flat = bumped[weight].view(-1)
    flat[0] = torch.nextafter(flat[0], torch.tensor(np.inf, dtype=flat.dtype))  # one weight, its last bit
    assert model_fingerprint(bumped, config, {"time_steps": 4}) != fp
    buffer = next(k for k in sd if k.endswith("running_mean"))
    assert model_fingerprint({**sd, buffer: sd[buffer] + 1e-3}, config, {"time_steps": 4}) != fp
    assert model_fingerprint(sd, {**config, "num_classes": 11}, {"time_steps": 4}) != fp
    assert model_fingerprint(sd, config, {"time_steps": 5}) != fp


def _bump_nir(path):
    with h5py.File(path, "r+") as f:
        nodes = f["node/nodes"]
        name = next(n for n in sorted(nodes) if "weight" in nodes[n])
        w = nodes[name]["weight"]
        value = w[()]
        value.flat[0] += 0.5
        w[...] = value


def _bump_onnx(path):
    model = onnx.load(str(path))
    init = next(t for t in model.graph.initializer if t.name.endswith(".weight"))
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] += 0.5
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(path))


def _bump_netx(path):
    with h5py.File(path, "r+") as f:
        w = f["layer/1/weight"]
        value = w[()]
        value.flat[np.flatnonzero(value)[0]] += 1
        w[...] = value


def _write(kind, graph, path, fingerprint=None):
    if kind == "nir":
        return write_nir(graph, path, fingerprint=fingerprint)
    if kind == "onnx":
        return write_onnx(graph, path, fingerprint=fingerprint)
    return write_netx(build_chain(quantize(graph), "dense"), path, fingerprint=fingerprint)


@pytest.mark.parametrize("kind, bump, reader", [("nir", _bump_nir, read_nir), ("onnx", _bump_onnx, read_onnx),
                                                ("net", _bump_netx, read_netx)])
def test_each_format_match_other_checkpoint_and_one_weight_changed(two, tmp_path, kind, bump, reader):
    _, graph, fp = two[0]
    fp_other = two[1][2]
    path = _write(kind, graph, tmp_path / f"model.{kind}", fp)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"model.{kind}"]   # no temporary file left
    fingerprint, digest, actual = recorded(path)
    assert fingerprint == fp and digest == actual and digest.startswith("sha256:")
    check_file(path, fp)                                         # the file of this checkpoint: passes
    with pytest.raises(FingerprintError, match="exported from another checkpoint"):
        check_file(path, fp_other)
    # the other checkpoint's file has other weights, hence another content digest, and its own fingerprint
    other = _write(kind, two[1][1], tmp_path / f"other.{kind}", fp_other)
    assert recorded(other)[1] != digest
    check_file(other, fp_other)

    bump(path)
    reader(path)   # still a well-formed file: only the digest tells
    with pytest.raises(FingerprintError, match="has changed since it was exported") as info:
        check_file(path, fp)
    assert "\n" not in str(info.value)

    plain = _write(kind, graph, tmp_path / f"plain.{kind}")
    with pytest.raises(FingerprintError, match="carries no source fingerprint"):
        check_file(plain, fp)


def test_writers_leave_the_callers_graph_unchanged(two, tmp_path):
    _, graph, fp = two[0]
    before = dict(graph.metadata)
    write_nir(graph, tmp_path / "m.nir", fingerprint=fp)
    assert graph.metadata == before
    model = onnx.ModelProto()
    with pytest.raises(ONNXFileError, match="nothing was written"):
        write_onnx(model, tmp_path / "bad.onnx", fingerprint=fp)
    assert len(model.metadata_props) == 0
    with pytest.raises(FingerprintError, match="not .txt"):
        check_file(tmp_path / "m.txt", fp)


@pytest.mark.parametrize("fmt, suffix, extra", [("nir", "nir", []), ("onnx", "onnx", []),
                                                ("onnx", "onnx", ["--mode", "unrolled"]), ("lava", "net", [])])
def test_cli_export_records_the_checkpoint_fingerprint(two, tmp_path, fmt, suffix, extra):
    ckpt, _, fp = two[0]
    out = tmp_path / f"model.{suffix}"
    result = runner.invoke(app, ["export", fmt, str(ckpt), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    check_file(out, fp)
    with pytest.raises(FingerprintError, match="another checkpoint"):
        check_file(out, two[1][2])
    # `revsnn info` shows what the file records, from the summary beside its reader (plain data)
    if suffix == "nir":
        summary = summarize(read_nir(out))
    elif suffix == "onnx":
        summary = summarize_onnx(read_onnx(out))
    else:
        summary = summarize_netx(read_netx(out), out)
    assert summary["metadata"]["source_fingerprint"] == fp
    json.dumps(summary)
    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and "source_fingerprint" in info.output, info.output


@pytest.mark.parametrize("fmt, suffix, extra, runs", [
    ("nir", "nir", [], {"norse"}), ("onnx", "onnx", [], {"onnxruntime", "onnx-reference"}),
    ("onnx", "onnx", ["--mode", "unrolled"], {"onnxruntime-unrolled"}), ("lava", "net", ["--synapses", "dense"], {"lava"})])
def test_verify_file_runs_that_very_file_and_refuses_another_or_a_changed_one(two, tmp_path, fmt, suffix, extra, runs):
    """`revsnn verify CKPT --file F`: every target that runs F's kind runs F itself; a file of another
    checkpoint, or one with a weight changed since export, is refused with one sentence (exit 2)."""
    ckpt, _, _ = two[0]
    out = tmp_path / f"model.{suffix}"
    assert runner.invoke(app, ["export", fmt, str(ckpt), "--out", str(out), *extra]).exit_code == 0
    changed = tmp_path / f"changed.{suffix}"   # a copy: lava-dl's netx keeps the file it ran open in this process
    changed.write_bytes(out.read_bytes())
    result = runner.invoke(app, ["verify", str(ckpt), "--file", str(out), "--samples", "3", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] and set(report["targets"]) == runs
    result = runner.invoke(app, ["verify", str(two[1][0]), "--file", str(out), "--samples", "3"])
    assert result.exit_code == 2 and "another checkpoint" in result.output and "Traceback" not in result.output
    bump = {"nir": _bump_nir, "onnx": _bump_onnx, "net": _bump_netx}[suffix]
    bump(changed)
    result = runner.invoke(app, ["verify", str(ckpt), "--file", str(changed), "--samples", "3"])
    assert result.exit_code == 2 and "has changed since it was exported" in result.output
