"""Real data sets in their official formats: the files are written here byte by byte from the published
layouts (struct, pickle of plain dicts, PPM bytes), never with the readers under test, and read back exactly.
Then one epoch of training on each format."""

import json
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from revsnn.cli.main import app
from revsnn.data import (DataError, DataWarning, load_dataset, make_loader, test_samples, to_input)
from revsnn.data_events import Events, events_to_frames, read_aedat2_cifar10dvs, read_aedat31, read_nmnist_bin
from revsnn.data_static import random_crop_flip, resize_center_crop
from revsnn.train import TrainError, TrainOptions, train

runner = CliRunner()
RNG = np.random.default_rng(7)


# ----------------------------------------------------------------------------------------------- writers

def write_cifar(root, name, images, labels, names):
    """The python version's layout: pickled dicts with bytes keys, 'data' uint8 [N, 3072] = R, G, B planes."""
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        n = len(labels)
        train_n = n - n // 6
        parts = np.array_split(np.arange(train_n), 5)
        files = [(f"data_batch_{i + 1}", idx) for i, idx in enumerate(parts)] + [("test_batch", np.arange(train_n, n))]
        for fname, idx in files:
            rows = np.stack([np.concatenate([images[i, 0].ravel(), images[i, 1].ravel(), images[i, 2].ravel()])
                             for i in idx]).astype(np.uint8)
            d = {b"batch_label": fname.encode(), b"labels": [int(labels[i]) for i in idx], b"data": rows,
                 b"filenames": [f"img_{i}.png".encode() for i in idx]}
            (folder / fname).write_bytes(pickle.dumps(d, protocol=2))
        (folder / "batches.meta").write_bytes(pickle.dumps(
            {b"label_names": [s.encode() for s in names], b"num_cases_per_batch": len(parts[0]), b"num_vis": 3072},
            protocol=2))
        return folder, train_n
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    n = len(labels)
    train_n = n - n // 6
    for fname, idx in (("train", np.arange(train_n)), ("test", np.arange(train_n, n))):
        rows = images[idx].reshape(len(idx), 3, 1024).reshape(len(idx), 3072)
        d = {b"filenames": [b"x.png"] * len(idx), b"batch_label": fname.encode(),
             b"fine_labels": [int(labels[i]) for i in idx], b"coarse_labels": [int(labels[i]) // 5 for i in idx],
             b"data": rows}
        (folder / fname).write_bytes(pickle.dumps(d, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [s.encode() for s in names],
                                                b"coarse_label_names": [b"c"] * 20}, protocol=2))
    return folder, train_n


def nmnist_bytes(events):
    """N-MNIST: 5 bytes an event: x, y, polarity bit 7 + timestamp bits 22..16, timestamp 15..8, 7..0."""
    out = bytearray()
    for x, y, p, t in events:
        out += bytes([x, y, (p << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF])
    return bytes(out)


def aedat31_bytes(packets):
    """AEDAT 3.1: ASCII header, then packets of a 28-byte header and capacity x size bytes of events."""
    out = bytearray(b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#Start-Time: 2017-01-01\r\n#!END-HEADER\r\n")
    for ptype, overflow, events in packets:
        out += struct.pack("<hhiiiiii", ptype, 1, 8, 4, overflow, len(events), len(events), len(events))
        for word, ts in events:
            out += struct.pack("<Ii", word, ts)
    return bytes(out)


def polarity_word(x, y, p, valid=1):
    return (x << 17) | (y << 2) | (p << 1) | valid


def aedat2_bytes(events):
    """jAER AEDAT 2.0 as CIFAR10-DVS ships it: '#' lines, then big-endian uint32 (address, timestamp)."""
    out = bytearray(b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n# Data format is int32 address, "
                    b"int32 timestamp (8 bytes total)\r\n")
    for x, y, p, t in events:
        out += struct.pack(">II", (y << 8) | (x << 1) | p, t)
    return bytes(out)


def ppm_bytes(img):
    """Binary PPM (P6): an ASCII header, then the RGB bytes row by row."""
    h, w, _ = img.shape
    return f"P6\n{w} {h}\n255\n".encode() + img.astype(np.uint8).tobytes()


def random_events(n, size, t_max):
    t = np.sort(RNG.integers(0, t_max, n))
    return [(int(RNG.integers(0, size)), int(RNG.integers(0, size)), int(RNG.integers(0, 2)), int(ti)) for ti in t]


def frames_by_hand(evs, T, size, out_size=None, by="count"):
    """Events -> [T, 2, H, W] counts, one event at a time (the independent truth for events_to_frames)."""
    o = out_size or size
    f = np.zeros((T, 2, o, o), np.float32)
    n = len(evs)
    for i, (x, y, p, t) in enumerate(evs):
        if by == "count":
            k = min(i // (n // T), T - 1) if n >= T else i
        else:
            t0, t1 = evs[0][3], evs[-1][3]
            k = int((t - t0) * T // (t1 - t0 + 1))
        f[k, p, y * o // size, x * o // size] += 1
    return f


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def cifar_images():
    n = 36
    images = RNG.integers(0, 256, (n, 3, 32, 32)).astype(np.uint8)
    labels = np.arange(n) % 10
    return images, labels


@pytest.fixture(scope="module")
def nmnist_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("nmnist")
    truth = {}
    for part in ("Train", "Test"):
        for d in range(10):
            (root / part / str(d)).mkdir(parents=True)
            for k in range(2 if part == "Train" else 1):
                evs = random_events(40, 34, 300_000)
                path = root / part / str(d) / f"{k:05d}.bin"
                path.write_bytes(nmnist_bytes([(x, y, p, t & 0x7FFFFF) for x, y, p, t in evs]))
                truth[path] = evs
    return root, truth


@pytest.fixture(scope="module")
def gesture_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gesture") / "DvsGesture"
    root.mkdir()
    trials = {"train": ["user01_fluorescent", "user02_lab"], "test": ["user24_led"]}
    truth = {}
    for split, names in trials.items():
        for name in names:
            rows, words = [], []
            for c in range(1, 12):
                start = c * 10_000
                evs = random_events(30, 128, 8_000)
                evs = [(x, y, p, t + start) for x, y, p, t in evs]
                rows.append(f"{c},{start},{start + 8_000}")
                truth[(name, c)] = evs
                words += [(polarity_word(x, y, p), t) for x, y, p, t in evs]
            # an invalid event and a non-polarity packet, both to be skipped
            packets = [(1, 0, words[:150] + [(polarity_word(5, 5, 1, valid=0), 60_000)]),
                       (0, 0, [(0x12345, 61_000)]), (1, 0, words[150:])]
            (root / f"{name}.aedat").write_bytes(aedat31_bytes(packets))
            (root / f"{name}_labels.csv").write_text("class,startTime_usec,endTime_usec\n" + "\n".join(rows) + "\n")
    (root / "trials_to_train.txt").write_text("".join(f"{n}.aedat\n" for n in trials["train"]))
    (root / "trials_to_test.txt").write_text("".join(f"{n}.aedat\n" for n in trials["test"]) + "\n")
    return root, trials, truth


@pytest.fixture(scope="module")
def c10dvs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("c10dvs")
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    truth = {}
    for cls in classes:
        (root / cls).mkdir()
        for k in range(5):
            evs = random_events(30, 128, 1_000_000)
            path = root / cls / f"cifar10_{cls}_{k}.aedat"
            path.write_bytes(aedat2_bytes(evs))
            truth[path] = evs
    return root, truth


# -------------------------------------------------------------------------------------------- read back

@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_batches_read_back_exactly(tmp_path, cifar_images, name):
    images, labels = cifar_images
    names = [f"class{i}" for i in range(10 if name == "cifar10" else 100)]
    folder, train_n = write_cifar(tmp_path, name, images, labels, names)
    with pytest.warns(DataWarning, match="differs from the published file"):
        d = load_dataset(name, tmp_path)
    assert d.input_shape == (3, 32, 32) and d.num_classes == (10 if name == "cifar10" else 100)
    assert torch.equal(d.train.x, torch.from_numpy(images[:train_n])) and torch.equal(d.test.x, torch.from_numpy(images[train_n:]))
    assert d.train.y.tolist() == labels[:train_n].tolist() and d.test.y.tolist() == labels[train_n:].tolist()
    assert d.class_names == names and d.source == str(folder)
    all_md5 = len(d.warnings) == (7 if name == "cifar10" else 3)  # every file differs from the published one
    assert all_md5 and str(folder / ("test_batch" if name == "cifar10" else "test")) in " ".join(d.warnings)
    # per-dataset normalisation comes from the training split
    x = images[:train_n].astype(np.float64) / 255
    assert np.allclose(d.mean, x.mean(axis=(0, 2, 3)), atol=1e-6) and np.allclose(d.std, x.std(axis=(0, 2, 3)), atol=1e-6)


def test_cifar_missing_files_and_hostile_pickle(tmp_path, cifar_images):
    images, labels = cifar_images
    folder, _ = write_cifar(tmp_path, "cifar10", images, labels, [str(i) for i in range(10)])
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"data_batch_3.*https://www.cs.toronto.edu/~kriz/cifar.html"):
        load_dataset("cifar10", tmp_path)

    class Boom:
        def __reduce__(self):
            return (print, ("this must never run",))

    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Boom(), b"labels": []}))
    with warnings.catch_warnings(), pytest.raises(DataError, match="not a CIFAR python batch"):
        warnings.simplefilter("ignore", DataWarning)
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DataError, match="needs --data-dir"):
        load_dataset("cifar10", None)


def test_nmnist_read_back_and_overflow(tmp_path, nmnist_dir):
    root, truth = nmnist_dir
    path = next(iter(truth))
    ev = read_nmnist_bin(path)
    want = truth[path]
    assert ev.x.tolist() == [e[0] for e in want] and ev.y.tolist() == [e[1] for e in want]
    assert ev.p.tolist() == [e[2] for e in want] and ev.t.tolist() == [e[3] for e in want]
    # an overflow event (y = 240) adds 2**13 µs to every later timestamp and is itself dropped
    f = tmp_path / "o.bin"
    f.write_bytes(nmnist_bytes([(1, 2, 1, 100), (0, 240, 0, 0), (3, 4, 0, 50)]))
    ev = read_nmnist_bin(f)
    assert ev.t.tolist() == [100, 50 + 8192] and ev.x.tolist() == [1, 3] and ev.p.tolist() == [1, 0]
    f.write_bytes(b"\x01\x02\x03")
    with pytest.raises(DataError, match="truncated"):
        read_nmnist_bin(f)

    d = load_dataset("nmnist", root, time_steps=4)
    assert d.input_shape == (2, 34, 34) and len(d.train) == 20 and len(d.test) == 10
    i = d.train.items.index(path)
    assert torch.equal(d.train[i][0], torch.from_numpy(frames_by_hand(want, 4, 34)))
    assert d.train[i][1].item() == int(path.parent.name)


def test_gesture_aedat31_labels_and_trials(gesture_dir):
    root, trials, truth = gesture_dir
    ev = read_aedat31(root / "user01_fluorescent.aedat")
    want = [e for c in range(1, 12) for e in truth[("user01_fluorescent", c)]]
    assert len(ev) == len(want)  # the invalid event and the special-event packet are gone
    assert ev.x.tolist() == [e[0] for e in want] and ev.y.tolist() == [e[1] for e in want]
    assert ev.p.tolist() == [e[2] for e in want] and ev.t.tolist() == [e[3] for e in want]

    d = load_dataset("dvs128-gesture", root.parent, time_steps=3, frames_by="time", frame_size=32)
    assert d.input_shape == (2, 32, 32) and d.num_classes == 11
    assert len(d.train) == 22 and len(d.test) == 11
    x, y = d.test[4]
    assert y.item() == 4  # class 5 in the CSV, numbered from 0
    assert torch.equal(x, torch.from_numpy(frames_by_hand(truth[("user24_led", 5)], 3, 128, 32, by="time")))

    # the timestamp overflow of a packet header adds 2**31 µs
    big = root.parent / "big.aedat"
    big.write_bytes(aedat31_bytes([(1, 1, [(polarity_word(127, 0, 1), 5)])]))
    ev = read_aedat31(big)
    assert ev.t.tolist() == [5 + 2**31] and ev.x.tolist() == [127] and ev.y.tolist() == [0]
    big.write_bytes(aedat31_bytes([(1, 0, [(polarity_word(1, 1, 1), 5)])])[:-3])
    with pytest.raises(DataError, match="truncated"):
        read_aedat31(big)


def test_cifar10dvs_orientation_and_split(c10dvs_dir):
    root, truth = c10dvs_dir
    path = root / "cat" / "cifar10_cat_3.aedat"
    ev = read_aedat2_cifar10dvs(path)
    want = truth[path]
    # written as raw (x, y, p); read in the images' orientation: x' = 127 - y, y' = 127 - x, p' = 1 - p
    assert ev.x.tolist() == [127 - e[1] for e in want] and ev.y.tolist() == [127 - e[0] for e in want]
    assert ev.p.tolist() == [1 - e[2] for e in want] and ev.t.tolist() == [e[3] for e in want]
    d = load_dataset("cifar10-dvs", root, time_steps=2, frame_size=16)
    assert len(d.train) == 40 and len(d.test) == 10  # int(0.9 * 5) = 4 of each class's 5 files train
    assert [p.name for p in d.test.items if p.parent.name == "cat"] == ["cifar10_cat_4.aedat"]
    oriented = [(127 - y, 127 - x, 1 - p, t) for x, y, p, t in truth[root / "dog" / "cifar10_dog_4.aedat"]]
    j = [p.name for p in d.test.items].index("cifar10_dog_4.aedat")
    assert torch.equal(d.test[j][0], torch.from_numpy(frames_by_hand(oriented, 2, 128, 16)))
    assert d.test[j][1].item() == 5


def test_image_folder_ppm_exact_and_resize(tmp_path):
    root = tmp_path / "imgs"
    truth = {}
    for split, n in (("train", 3), ("val", 1)):
        for c in ("ant", "bee"):
            (root / split / c).mkdir(parents=True)
            for k in range(n):
                img = RNG.integers(0, 256, (24, 24, 3)).astype(np.uint8)
                (root / split / c / f"{k}.ppm").write_bytes(ppm_bytes(img))
                truth[(split, c, k)] = img
    d = load_dataset("imagefolder", root, image_size=24)
    assert d.input_shape == (3, 24, 24) and d.num_classes == 2 and d.class_names == ["ant", "bee"]
    x, y = d.test[1]
    assert y.item() == 1 and torch.equal(x, torch.from_numpy(truth[("val", "bee", 0)]).permute(2, 0, 1))
    # a 3 x 40 x 24 image at size 24: no resizing, the centre rows 8..31
    img = torch.arange(3 * 40 * 24).reshape(3, 40, 24).to(torch.uint8)
    assert torch.equal(resize_center_crop(img, 24), img[:, 8:32])
    assert resize_center_crop(torch.zeros(3, 50, 70, dtype=torch.uint8), 16).shape == (3, 16, 16)
    with pytest.raises(DataError, match=r"train/<class>/<image>.*image-net.org"):
        load_dataset("imagefolder", tmp_path)


def test_frames_by_count_time_and_downsampling():
    evs = random_events(103, 34, 10_000)
    ev = Events(*(np.array([e[i] for e in evs]) for i in range(4)))
    for by in ("count", "time"):
        for size in (None, 17):
            got = events_to_frames(ev, 5, (34, 34), by, (size, size) if size else None)
            assert np.array_equal(got, frames_by_hand(evs, 5, 34, size, by))
            assert got.sum() == 103
    few = events_to_frames(ev.select(np.arange(103) < 3), 5, (34, 34))
    assert few.sum() == 3 and few[3:].sum() == 0


def test_augmentation_and_encoding():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    out = random_crop_flip(x, 2, True, g)
    # each output is a shifted (and maybe flipped) window of the zero-padded input
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(8):
        hits = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (0, 1)
                if torch.equal(out[i], (lambda w: w.flip(-1) if f else w)(padded[i, :, dy:dy + 8, dx:dx + 8]))]
        assert hits
    a = random_crop_flip(x, 4, True, torch.Generator().manual_seed(1))
    b = random_crop_flip(x, 4, True, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    rec = {"kind": "events"}
    frames = torch.tensor([[[[[0.0, 2.0]], [[1.0, 0.0]]]]])  # [B=1, T=1, 2, 1, 2]
    assert torch.equal(to_input(frames, rec, 1, "events"), torch.tensor([[[[[0.0, 1.0]], [[1.0, 0.0]]]]]))
    assert torch.equal(to_input(frames, rec, 1, "counts"), frames.transpose(0, 1))
    with pytest.raises(DataError, match="event frames take"):
        to_input(frames, rec, 1, "rate")
    # normalisation of direct input, none for rate coding
    img = torch.full((1, 1, 2, 2), 128, dtype=torch.uint8)
    rec = {"kind": "static", "mean": [0.5], "std": [0.25]}
    assert torch.allclose(to_input(img, rec, 2, "direct"), torch.full((2, 1, 1, 2, 2), (128 / 255 - 0.5) / 0.25), atol=1e-6)


# ------------------------------------------------------------------------------------------ one epoch each

def _train(tmp_path, name, data_dir, model, **kw):
    opts = TrainOptions(model=model, out=tmp_path / name, data=name, data_dir=data_dir, epochs=1, batch_size=16,
                        lr=0.01, **kw)
    return train(opts)


def test_one_epoch_on_every_format(tmp_path, cifar_images, nmnist_dir, gesture_dir, c10dvs_dir):
    images, labels = cifar_images
    write_cifar(tmp_path / "c10", "cifar10", images, labels, [str(i) for i in range(10)])
    write_cifar(tmp_path / "c100", "cifar100", images, labels, [str(i) for i in range(100)])
    root = tmp_path / "imgs"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for k in range(3):
                (root / split / c / f"{k}.ppm").write_bytes(ppm_bytes(RNG.integers(0, 256, (20, 28, 3))))
    # Small models and maps: a reversible ResNet at 32 x 32 costs seconds a batch on two shared CPU cores.
    # CIFAR-10 through the command line, as a user runs it: the md5 mismatch is a warning naming the file
    r = runner.invoke(app, ["train", "--model", "scnn-digits", "--out", str(tmp_path / "cifar10"), "--data", "cifar10",
                            "--data-dir", str(tmp_path / "c10"), "--epochs", "1", "--batch-size", "16", "--time-steps",
                            "2", "--augment", "--workers", "1"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "warning:" in text and "data_batch_1 differs from the published file" in text
    assert "input set to 3x32x32 and 10 classes" in text and "scnn-digits on cifar10: test accuracy" in text
    runs = [("cifar100", tmp_path / "c100", "scnn-digits", {"time_steps": 1}),
            ("imagefolder", root, "scnn-digits", {"image_size": 16, "augment": True}),
            ("nmnist", nmnist_dir[0], "scnn-digits", {"time_steps": 3, "event_shift": 2, "frame_size": 32}),
            ("dvs128-gesture", gesture_dir[0], "scnn-digits", {"time_steps": 3, "frame_size": 32, "workers": 2}),
            ("cifar10-dvs", c10dvs_dir[0], "revsresnet24-dvs", {"time_steps": 2, "frame_size": 16})]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        for name, data_dir, model, kw in runs:
            m = _train(tmp_path, name, data_dir, model, **kw)
            assert m["data"] == name
    for name in ("cifar10", "cifar100", "imagefolder", "nmnist", "dvs128-gesture", "cifar10-dvs"):
        payload = torch.load(tmp_path / name / "model.pt", weights_only=True)
        rec = payload["data"]
        assert rec["name"] == name and rec["dir"] is not None
        assert payload["config"]["input_shape"] == rec["input_shape"]
        assert payload["config"]["num_classes"] == {"cifar100": 100, "imagefolder": 2, "dvs128-gesture": 11}.get(name, 10)
        x, y = test_samples(payload, 5)
        assert x.shape[1:] == (5, *rec["input_shape"]) and y.shape == (5,)
        if rec["kind"] == "events":
            assert payload["train"]["encoding"] == "events" and set(x.unique().tolist()) <= {0.0, 1.0}
    # the seeds' DVS ResNet (stride-2 stem with pooling), taken to 2 x 16 x 16 frames, collapses exactly
    r = runner.invoke(app, ["verify", str(tmp_path / "cifar10-dvs" / "model.pt"), "--targets", "torch", "--samples", "3"])
    assert r.exit_code == 0, r.output


def test_same_seed_same_batches_with_workers(nmnist_dir):
    d = load_dataset("nmnist", nmnist_dir[0], time_steps=2)
    batches = list(torch.randperm(len(d.train), generator=torch.Generator().manual_seed(3)).split(6))
    a = [x for x, _ in make_loader(d.train, batches, workers=0)]
    b = [x for x, _ in make_loader(d.train, batches, workers=2)]
    assert len(a) == 4 and all(torch.equal(p, q) for p, q in zip(a, b))


def test_bad_data_options_fail_cleanly(tmp_path, nmnist_dir):
    with pytest.raises(TrainError, match=r"N-MNIST expects Train/<digit>/\*.bin.*garrickorchard"):
        _train(tmp_path, "nmnist", tmp_path, "scnn-digits")
    with pytest.raises(TrainError, match="--encoding must be one of events, counts"):
        _train(tmp_path, "nmnist", nmnist_dir[0], "scnn-digits", encoding="rate")
    with pytest.raises(TrainError, match="scnn-digits cannot take inputs 2x34x34.*multiples of 4"):
        _train(tmp_path, "nmnist", nmnist_dir[0], "scnn-digits", time_steps=2)
    r = runner.invoke(app, ["train", "--model", "scnn-digits", "--out", str(tmp_path / "x"), "--data", "cifar10",
                            "--data-dir", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "Traceback" not in r.output and "cifar-10-batches-py/" in r.output


def test_verify_and_export_lava_on_event_frames(tmp_path, nmnist_dir):
    """A model trained on event frames deploys as it is: the frames are spikes, what Loihi receives."""
    m = _train(tmp_path, "nmnist", nmnist_dir[0], "scnn-digits", time_steps=3, frame_size=8)
    ckpt = tmp_path / "nmnist" / "model.pt"
    assert m["encoding"] == "events"
    r = runner.invoke(app, ["verify", str(ckpt), "--targets", "torch,onnxruntime,lava", "--samples", "4", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["samples"] == 4 and report["encoding"] == "events"
    lava = report["targets"]["lava"]
    assert lava["ok"] and lava["mismatches"] == 0 and lava["max_abs_diff"] == 0.0
    assert all(t["ok"] for t in report["targets"].values())
    net = tmp_path / "model.net"
    r = runner.invoke(app, ["export", "lava", str(ckpt), "--out", str(net)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["info", str(net)])
    assert r.exit_code == 0 and "input 2×8×8" in r.output, r.output
    r = runner.invoke(app, ["bench", "lava", str(net), "--samples", "2", "--time-steps", "3", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["steps"] == 2 * 3 + 3, r.output
    # the data moved: verify says where it looked; --data-dir points at the new place
    moved = tmp_path / "moved"
    nmnist_dir[0].rename(moved)
    try:
        r = runner.invoke(app, ["verify", str(ckpt), "--targets", "torch", "--samples", "2"])
        assert r.exit_code == 2 and "Train/<digit>/*.bin" in r.output and "Traceback" not in r.output
        r = runner.invoke(app, ["verify", str(ckpt), "--targets", "torch", "--samples", "2", "--data-dir", str(moved)])
        assert r.exit_code == 0, r.output
    finally:
        moved.rename(nmnist_dir[0])


def test_digits_as_cifar_read_back_as_the_digits(tmp_path):
    """The CIFAR path loses nothing: the digits written as official batches come back as the digits."""
    from revsnn.cifar_digits import write_digits_as_cifar
    from revsnn.data import load_digits

    folder = write_digits_as_cifar(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["batches.meta"] + [f"data_batch_{i}" for i in range(1, 6)] + \
        ["test_batch"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        c = load_dataset("cifar10", tmp_path)
    d = load_digits()
    for split, x, y in ((c.train, d.x_train, d.y_train), (c.test, d.x_test, d.y_test)):
        u = split.x
        assert u.shape == (len(y), 3, 32, 32) and torch.equal(split.y, y)
        assert torch.equal(u[:, 0], u[:, 1]) and torch.equal(u[:, 0], u[:, 2])
        blocks = u[:, 0].reshape(len(y), 8, 4, 8, 4)
        assert torch.equal(blocks, blocks[:, :, :1, :, :1].expand_as(blocks))  # every pixel a 4 x 4 block
        assert torch.equal(torch.round(u[:, :1, ::4, ::4].double() * 16 / 255) / 16, x.double())


@pytest.mark.parametrize("name", ["revsresnet24-dvs"])
def test_dvs_configs_match_their_plain_twins(name):
    """The seeds' DVS sizes, at 2 x 16 x 16 with 11 classes: outputs and gradients equal the plain twin's."""
    from revsnn.models import build_model, get_config
    from revsnn.reversible import plain_twin

    config = {**get_config(name), "input_shape": [2, 16, 16], "num_classes": 11}
    if name.startswith("revsformer"):
        config.update(dim=32, heads=4)  # the paper width is too slow for a test; the structure is the same
    torch.manual_seed(0)
    model = build_model(config).double().train()
    twin = plain_twin(model)
    x = (torch.rand(3, 2, 2, 16, 16, dtype=torch.float64) < 0.3).double()
    outs = []
    for m in (model, twin):
        m.zero_grad()
        out = m(x)
        (out * torch.arange(11, dtype=torch.float64)).sum().backward()
        outs.append((out.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    assert outs[0][0].shape == (2, 11) and torch.equal(outs[0][0], outs[1][0])
    for n, g in outs[0][1].items():
        assert torch.allclose(g, outs[1][1][n], rtol=1e-9, atol=1e-12), n
