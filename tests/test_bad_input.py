"""The bad-input corpus (issue 17): damaged, hostile and absurd inputs to every command that reads them.

Every case is generated here from one small trained checkpoint and its exports (made once per module), run
through the command line in-process (typer's CliRunner), and must end the same way: a non-zero exit code,
exactly one line on stderr that starts with ``error:``, no exception escaping (no traceback), and the
destination folder exactly as it was. Full and read-only file systems are real tmpfs mounts (root only);
SIGTERM and kill -9 run in a child process.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from revsnn.cli.main import app
from revsnn.data import ImageData, load_digits

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------------
# helpers


def snapshot(folder: Path) -> dict:
    """Every path under ``folder`` with its size, mtime and mode: what "unchanged" means."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode)
            for p in sorted(folder.rglob("*"))}


def refused(args: list[str], watch: Path | None = None, contains: str | None = None) -> str:
    """Run ``revsnn ARGS``; assert a clean refusal and an unchanged ``watch`` folder; return the sentence."""
    before = snapshot(watch) if watch is not None else None
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{args}: {type(result.exception).__name__}: {result.exception}"
    assert result.exit_code not in (0, None), f"{args} exited 0: {result.output}"
    err = result.stderr.strip()
    assert "Traceback" not in result.output
    assert len(err.splitlines()) == 1 and err.startswith("error:"), f"{args}: stderr {err!r}"
    if contains is not None:
        assert contains in err, err
    if watch is not None:
        assert snapshot(watch) == before, f"{args} changed {watch}"
    return err


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """One tiny rate-coded checkpoint (scnn-digits, 1 epoch on 64 digits) and its NIR, ONNX and netx exports."""
    from revsnn.pipeline import export_lava
    from revsnn.cli.export import export_nir_file
    from revsnn.exporters.onnx_file import write_onnx
    from revsnn.pipeline import load_source
    from revsnn.train import TrainOptions, train

    root = tmp_path_factory.mktemp("bad-input")
    d = load_digits()
    data = ImageData("digits", d.x_train[:64], d.y_train[:64], d.x_test[:16], d.y_test[:16])
    train(TrainOptions(model="scnn-digits", out=root / "run", epochs=1, time_steps=2, batch_size=32,
                       lr=0.01, encoding="rate", seed=3), data=data)
    ckpt = root / "run" / "model.pt"
    export_nir_file(ckpt, root / "model.nir")
    source = load_source(ckpt)
    write_onnx(source.graph, root / "model.onnx", fingerprint=source.fingerprint)
    export_lava(ckpt, root / "model.net", "dense")
    return {"root": root, "ckpt": ckpt, "payload": torch.load(ckpt, weights_only=True),
            "nir": root / "model.nir", "onnx": root / "model.onnx", "net": root / "model.net"}


def _set(d: dict, keys: tuple, value) -> dict:
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value


def _first_weight(sd: dict) -> str:
    return next(k for k, v in sd.items() if v.is_floating_point() and v.dim() >= 2)


def _bn_var(sd: dict) -> str:
    return next(k for k in sd if k.endswith("running_var"))


# Each: name -> a function that damages a copy of the payload in place.
CHECKPOINT_CASES = {
    "no-train": lambda p: p.pop("train"),
    "no-rng": lambda p: p.pop("rng"),
    "no-optimizer": lambda p: p.pop("optimizer"),
    "bad-rng": lambda p: _set(p, ("rng", "generator"), torch.zeros(3)),
    "bad-epoch": lambda p: _set(p, ("epoch",), "one"),
    "epoch-vs-history": lambda p: _set(p, ("epoch",), 7),
    "bad-history": lambda p: _set(p, ("history",), [{"epoch": 1, "test_accuracy": "high"}]),
    "history-no-accuracy": lambda p: _set(p, ("history",), [{"epoch": 1, "loss": 1.0}]),
    "config-string": lambda p: _set(p, ("config",), "revsresnet-digits"),
    "state-list": lambda p: _set(p, ("state_dict",), list(p["state_dict"].values())),
    "wrong-shape": lambda p: _set(p, ("state_dict", _first_weight(p["state_dict"])), torch.zeros(3, 3)),
    "extra-key": lambda p: _set(p, ("state_dict", "stowaway.weight"), torch.zeros(2)),
    "other-model": lambda p: _set(p, ("config",), {**p["config"], "channels": [8, 16]}),
    "optimizer-mismatch": lambda p: _set(p, ("optimizer", "param_groups"), [{"params": [0, 1], "lr": 0.1}]),
    "time-steps-negative": lambda p: _set(p, ("train", "time_steps"), -1),
    "time-steps-zero": lambda p: _set(p, ("train", "time_steps"), 0),
    "time-steps-string": lambda p: _set(p, ("train", "time_steps"), "4"),
    "time-steps-huge": lambda p: _set(p, ("train", "time_steps"), 10**9),
    "unknown-encoding": lambda p: _set(p, ("train", "encoding"), "morse"),
    "nan-weight": lambda p: p["state_dict"][_first_weight(p["state_dict"])].view(-1).__setitem__(0, math.nan),
    "inf-bn-stat": lambda p: p["state_dict"][_bn_var(p["state_dict"])].view(-1).__setitem__(0, math.inf),
    "nan-threshold": lambda p: _set(p, ("config", "neuron", "v_threshold"), math.nan),
    "negative-threshold": lambda p: _set(p, ("config", "neuron", "v_threshold"), -1.0),
}
# Cases that only `train --resume` reads (the other commands need neither optimizer nor RNG state).
RESUME_ONLY = {"no-train", "no-rng", "no-optimizer", "bad-rng", "optimizer-mismatch"}


@pytest.fixture(scope="module")
def bad_checkpoints(base) -> dict:
    import copy

    folder = base["root"] / "bad"
    folder.mkdir()
    paths = {}
    for name, damage in CHECKPOINT_CASES.items():
        payload = copy.deepcopy(base["payload"])
        damage(payload)
        (folder / name).mkdir()
        torch.save(payload, folder / name / "model.pt")
        paths[name] = folder / name / "model.pt"
    raw = base["ckpt"].read_bytes()
    for name, data in (("truncated", raw[: len(raw) // 2]), ("random", os.urandom(4096)), ("empty", b"")):
        (folder / name).mkdir()
        (folder / name / "model.pt").write_bytes(data)
        paths[name] = folder / name / "model.pt"

    class Evil:  # a pickle that would run a command when unpickled without weights_only
        def __reduce__(self):
            return (os.system, ("touch " + str(folder / "PWNED"),))

    (folder / "malicious").mkdir()
    with open(folder / "malicious" / "model.pt", "wb") as f:
        torch.save({"format": "revsnn.checkpoint/1", "config": Evil()}, f)
    paths["malicious"] = folder / "malicious" / "model.pt"
    return paths


COMMANDS = {
    "info": lambda ckpt, out: ["info", ckpt],
    "verify": lambda ckpt, out: ["verify", ckpt, "--targets", "torch", "--samples", "2", "--plot", out],
    "export-nir": lambda ckpt, out: ["export", "nir", ckpt, "--out", out / "m.nir"],
    "export-onnx": lambda ckpt, out: ["export", "onnx", ckpt, "--out", out / "m.onnx"],
    "export-lava": lambda ckpt, out: ["export", "lava", ckpt, "--out", out / "m.net"],
    "bench-infer": lambda ckpt, out: ["bench", "infer", "--checkpoint", ckpt, "--repeats", "1"],
}


def test_bad_checkpoints_every_command(bad_checkpoints, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for case, ckpt in bad_checkpoints.items():
        if case in RESUME_ONLY:
            continue
        for command, args in COMMANDS.items():
            sentence = refused(args(ckpt, out), watch=out)
            assert str(ckpt) in sentence or "--" in sentence, (case, command, sentence)
    assert not (bad_checkpoints["malicious"].parents[1] / "PWNED").exists()


def test_bad_checkpoints_resume(bad_checkpoints):
    for case, ckpt in bad_checkpoints.items():
        run = ckpt.parent
        refused(["train", "--model", "scnn-digits", "--out", run, "--resume", "--epochs", "2"], watch=run,
                contains="--resume")


def test_good_checkpoint_still_loads(base):
    from revsnn.checkpoint import load_checkpoint, load_model

    load_model(base["ckpt"])
    load_checkpoint(base["ckpt"], resume=True)


def test_info_on_things_that_are_not_files(tmp_path):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    for path, words in ((tmp_path, "not a regular file"), (fifo, "not a regular file"),
                        (Path("/dev/zero"), "not a regular file"), (tmp_path / "absent.pt", "does not exist")):
        refused(["info", path], contains=words)


# --------------------------------------------------------------------------------------------------------
# exported files: values, not only structure


def _copy(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst)
    return dst


def _edit_net(path: Path, layer: str, key: str, value) -> None:
    with h5py.File(path, "r+") as f:
        del f[f"layer/{layer}/{key}"]
        f[f"layer/{layer}/{key}"] = value


def test_bad_netx_files(base, tmp_path):
    with h5py.File(base["net"], "r") as f:
        w = np.asarray(f["layer/1/weight"][()])
    cases = {
        "float": ("weight", w.astype(np.float64)),
        "fractional": ("weight", w.astype(np.float64) + 0.5),
        "complex": ("weight", w.astype(np.complex128)),
        "nan": ("weight", np.where(w == w.max(), np.nan, w.astype(np.float64))),
        "scaled-2^40": ("weight", w.astype(np.int64) * 2**40),
        "threshold-2^40": ("neuron/vThMant", np.int64(2**40)),
        "threshold-negative": ("neuron/vThMant", np.int64(-5)),
        "vdecay-1e6": ("neuron/vDecay", np.int64(10**6)),
    }
    for name, (key, value) in cases.items():
        path = _copy(base["net"], tmp_path / f"{name}.net")
        _edit_net(path, "1", key, value)
        refused(["info", path], watch=tmp_path, contains=str(path))
        refused(["bench", "lava", path, "--samples", "1", "--time-steps", "1"], watch=tmp_path)
    for name, data in (("truncated", base["net"].read_bytes()[:2000]), ("random", os.urandom(2000))):
        path = tmp_path / f"{name}.net"
        path.write_bytes(data)
        refused(["info", path], watch=tmp_path)


def test_bad_nir_files(base, tmp_path):
    import nir

    graph = nir.read(base["nir"])
    name, node = next((k, v) for k, v in graph.nodes.items() if hasattr(v, "weight"))
    node.weight = np.array(node.weight, dtype=np.float32)
    node.weight.flat[0] = np.nan
    bad = tmp_path / "nan.nir"
    nir.write(bad, graph)
    trunc = tmp_path / "truncated.nir"
    trunc.write_bytes(base["nir"].read_bytes()[:3000])
    rand = tmp_path / "random.nir"
    rand.write_bytes(os.urandom(3000))
    out = tmp_path / "out"
    out.mkdir()
    for path in (bad, trunc, rand):
        refused(["info", path], watch=tmp_path, contains=str(path))
        refused(["export", "onnx", path, "--out", out / "m.onnx"], watch=tmp_path)
        refused(["export", "lava", path, "--out", out / "m.net"], watch=tmp_path)
        refused(["verify", path, "--targets", "torch", "--samples", "1"], watch=tmp_path)


def test_bad_onnx_files(base, tmp_path):
    from onnx import numpy_helper

    model = onnx.load(str(base["onnx"]))
    no_inputs = onnx.ModelProto.FromString(model.SerializeToString())
    del no_inputs.graph.input[:]
    (tmp_path / "no-inputs.onnx").write_bytes(no_inputs.SerializeToString())
    nan = onnx.ModelProto.FromString(model.SerializeToString())
    init = next(i for i in nan.graph.initializer if numpy_helper.to_array(i).dtype.kind == "f"
                and numpy_helper.to_array(i).size > 1)
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] = np.nan
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    (tmp_path / "nan.onnx").write_bytes(nan.SerializeToString())
    (tmp_path / "truncated.onnx").write_bytes(base["onnx"].read_bytes()[:500])
    for name in ("no-inputs", "nan", "truncated"):
        refused(["info", tmp_path / f"{name}.onnx"], watch=tmp_path)


# --------------------------------------------------------------------------------------------------------
# options: huge values, conflicts, overwriting, checked before the expensive step


def test_huge_options_are_refused_with_an_estimate(base, tmp_path):
    out = tmp_path / "run"
    big = "1000000000"
    for args in (["train", "--model", "revsresnet-digits", "--out", out, "--time-steps", big],
                 ["bench", "memory", "--models", "revsresnet-digits", "--time-steps", big],
                 ["bench", "memory", "--models", "revsresnet-digits", "--depths", "100000"],
                 ["bench", "node-memory", "--time-steps", big],
                 ["bench", "train-speed", "--time-steps", big],
                 ["bench", "peers", "--batch-size", big],
                 ["bench", "lava", base["net"], "--time-steps", big],
                 ["bench", "infer", "--batch-size", big, "--repeats", "1"],
                 ["export", "onnx", base["ckpt"], "--out", tmp_path / "m.onnx", "--mode", "unrolled",
                  "--time-steps", big],
                 ["verify", base["nir"], "--time-steps", big, "--targets", "torch"]):
        sentence = refused(args, watch=tmp_path)
        assert "needs at least" in sentence or "would be about" in sentence, sentence
    refused(["train", "--model", "revsresnet-digits", "--out", out, "--seed", str(10**23)], watch=tmp_path,
            contains="--seed")
    refused(["bench", "lava", base["net"], "--samples", big], contains="test digits")


def test_train_refuses_to_overwrite_and_resume_conflicts(base, tmp_path):
    run = base["ckpt"].parent
    refused(["train", "--model", "scnn-digits", "--out", run, "--epochs", "1"], watch=run,
            contains="--overwrite")
    for option, value in (("--lr", "0.5"), ("--time-steps", "3"), ("--batch-size", "7"), ("--encoding", "direct"),
                          ("--seed", "9"), ("--seed", "0")):   # 0 given is not the default (the run's is 3)
        refused(["train", "--model", "scnn-digits", "--out", run, "--resume", option, value], watch=run,
                contains=option)
    refused(["train", "--model", "scnn-digits", "--out", run, "--resume", "--overwrite"], watch=run)


def test_demo_checks_options_before_training(tmp_path):
    out = tmp_path / "demo"
    refused(["demo", "--out", out, "--samples", "0"], watch=tmp_path, contains="--samples")
    refused(["demo", "--out", out, "--model", "revsformer-digits", "--no-lava"], watch=tmp_path,
            contains="NIR")
    refused(["demo", "--out", out, "--epochs", "0"], watch=tmp_path, contains="--epochs")


def test_usage_errors_are_one_line():
    refused(["train", "--frobnicate"], contains="--help")
    refused(["--frobnicate"], contains="--help")
    refused(["export", "onnx"], contains="--help")


# --------------------------------------------------------------------------------------------------------
# writing: permissions, interrupted writes, full and read-only file systems


def test_files_get_the_users_permissions(tmp_path):
    from revsnn.fileio import atomic_write

    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "new.bin", b"x")
        assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == 0o640
        existing = tmp_path / "existing.bin"
        existing.write_bytes(b"old")
        os.chmod(existing, 0o604)
        atomic_write(existing, b"new")
        assert stat.S_IMODE(existing.stat().st_mode) == 0o604 and existing.read_bytes() == b"new"
    finally:
        os.umask(old)


_SLOW_WRITER = """
import sys, time
from pathlib import Path
from revsnn.fileio import atomic_write
def slow(tmp):
    tmp.write_bytes(b"partial")
    print("writing", flush=True)
    time.sleep(60)
atomic_write(Path(sys.argv[1]), slow)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_interrupted_write_leaves_nothing_the_next_write_keeps(tmp_path, sig):
    from revsnn.fileio import TEMP_SUFFIX, atomic_write

    dest = tmp_path / "model.pt"
    child = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(dest)], stdout=subprocess.PIPE, cwd=ROOT)
    assert child.stdout.readline().strip() == b"writing"
    temps = [p for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    assert len(temps) == 1 and temps[0].name.startswith(".model.pt.")
    child.send_signal(sig)
    assert child.wait(timeout=30) == -sig
    left = [p for p in tmp_path.iterdir()]
    if sig == signal.SIGTERM:
        assert left == []          # the handler removed its temp file
    else:
        assert left == temps       # kill -9 cannot be caught: the temp stays, under its recognisable name
    atomic_write(dest, b"whole")   # the next write to the same destination removes it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"] and dest.read_bytes() == b"whole"


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture()
def small_fs(tmp_path):
    """A 32 KiB tmpfs (root only: mount needs it)."""
    if not _is_root():
        pytest.skip("mounting a tmpfs needs root; the full- and read-only-filesystem cases run as root in CI")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs failed here ({done.stderr.decode().strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder: Path) -> None:
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 1024):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


_EXPORTS_TO = """
import sys
from typer.testing import CliRunner
from revsnn.cli.main import app
ckpt, folder = sys.argv[1:]
for kind, ext in (("nir", "nir"), ("lava", "net"), ("onnx", "onnx")):
    r = CliRunner().invoke(app, ["export", kind, ckpt, "--out", f"{folder}/m.{ext}"])
    err = r.stderr.strip()
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert len(err.splitlines()) == 1, err
    print(kind, r.exit_code, err, sep="\\t")
"""


def test_full_filesystem(base, small_fs):
    _fill(small_fs)
    # The h5py writers once segfaulted here: run the three exports in a child process (one import), so that a
    # segfault shows as its exit status instead of killing the suite.
    done = subprocess.run([sys.executable, "-c", _EXPORTS_TO, str(base["ckpt"]), str(small_fs)], capture_output=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    for line in done.stdout.decode().strip().splitlines():
        kind, code, err = line.split("\t")
        assert code == "2" and err.startswith("error:") and "no space left" in err, (kind, code, err)
    assert len(done.stdout.decode().strip().splitlines()) == 3
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler"]
    before = snapshot(small_fs)
    refused(["train", "--model", "revsresnet-digits", "--out", small_fs / "run", "--epochs", "1"], watch=small_fs,
            contains="free")
    refused(["verify", base["ckpt"], "--targets", "torch", "--samples", "2", "--plot", small_fs], watch=small_fs,
            contains="no space left")
    from revsnn.fileio import WriteError, atomic_write

    with pytest.raises(WriteError, match="no space left"):
        atomic_write(small_fs / "big.bin", b"x" * 100_000)
    assert snapshot(small_fs) == before


def test_read_only_destination(base, small_fs, tmp_path):
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    for args in (["export", "lava", base["ckpt"], "--out", small_fs / "m.net"],
                 ["export", "nir", base["ckpt"], "--out", small_fs / "m.nir"],
                 ["export", "onnx", base["ckpt"], "--out", small_fs / "m.onnx"],
                 ["train", "--model", "revsresnet-digits", "--out", small_fs / "run", "--epochs", "1"],
                 ["verify", base["ckpt"], "--targets", "torch", "--samples", "2", "--plot", small_fs],
                 ["bench", "memory", "--models", "revsresnet-digits", "--depths", "1", "--plot", small_fs / "m.png"],
                 ["demo", "--out", small_fs / "demo", "--model", "scnn-digits", "--no-lava", "--epochs", "1"]):
        refused(args, watch=small_fs, contains="read-only")
    assert list(small_fs.iterdir()) == []


def test_stale_temps_of_earlier_versions_are_removed(tmp_path):
    from revsnn.fileio import atomic_write

    old = [tmp_path / ".m.nir.abcd1234.tmp", tmp_path / ".revsnn-ab_d1234.net.tmp"]
    fresh = tmp_path / ".m.nir.zzzz9999.tmp"   # could still be an old writer's: left alone
    for p in old + [fresh]:
        p.write_bytes(b"partial")
    for p in old:
        os.utime(p, (time.time() - 7200, time.time() - 7200))
    atomic_write(tmp_path / "m.nir", b"nir")
    atomic_write(tmp_path / "m.net", b"net")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, "m.nir", "m.net"])


def test_a_train_that_fails_before_its_first_checkpoint_leaves_no_folder(tmp_path):
    from revsnn.train import TrainOptions, train

    class Interrupt:  # Ctrl-C at the first batch
        def start_epoch(self, epoch, epochs, batches):
            pass

        def batch(self, loss, accuracy):
            raise KeyboardInterrupt

        def end_epoch(self, record):
            pass

    d = load_digits()
    data = ImageData("digits", d.x_train[:32], d.y_train[:32], d.x_test[:8], d.y_test[:8])
    with pytest.raises(KeyboardInterrupt):
        train(TrainOptions(model="scnn-digits", out=tmp_path / "run", epochs=1, time_steps=1, batch_size=32),
              Interrupt(), data=data)
    assert list(tmp_path.iterdir()) == []


def test_an_allocation_past_the_estimates_is_still_one_sentence():
    import typer

    from revsnn.cli.common import RevsnnGroup

    probe = typer.Typer(cls=RevsnnGroup)

    @probe.command()
    def huge():
        torch.empty(10**15)  # 4 PB: torch's allocator refuses with a RuntimeError

    @probe.command()
    def bug():
        raise RuntimeError("a real bug")

    result = runner.invoke(probe, ["huge"])
    assert result.exit_code == 2 and result.stderr.strip().startswith("error: ran out of memory")
    assert isinstance(runner.invoke(probe, ["bug"]).exception, RuntimeError)  # a bug keeps its traceback
