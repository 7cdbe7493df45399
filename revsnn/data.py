"""Data: the embedded digits, the registry of real data sets, and the one way batches become model input.

The default is scikit-learn's digits (8x8 grey images, 10 classes; no download: the images ship inside
scikit-learn). The split is deterministic (stratified, 20% test, ``random_state=0``), so every command that
says "test samples" means the same 360 images.

Real data sets are read from a copy the user points at (``load_dataset(name, data_dir)``; nothing is ever
downloaded): CIFAR-10/100 python batches and ImageNet-style folders (``revsnn.data_static``), N-MNIST,
DVS128 Gesture and CIFAR10-DVS event files (``revsnn.data_events``). Every data set comes back as one
``DataSplits``: a train and a test ``torch.utils.data.Dataset`` whose items are ``(x, label)``, static images
as ``[C, H, W]`` (uint8 or float in [0, 1]) or event frames as ``[T, 2, H, W]`` counts. ``to_input`` turns a
batch into the time-first ``[T, B, C, H, W]`` model input (augmentation, normalisation, spike encoding).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import RevsnnError

__all__ = ["ImageData", "load_digits", "encode", "ENCODINGS", "EVENT_ENCODINGS", "SPIKE_ENCODINGS", "DATASETS",
           "DataError", "DataWarning", "DataSplits", "load_dataset", "to_input", "make_loader", "test_samples",
           "as_splits", "dataset_record"]

ENCODINGS = ("direct", "rate")          # static images
EVENT_ENCODINGS = ("events", "counts")  # event frames: binary spikes (what Loihi receives) or event counts
SPIKE_ENCODINGS = ("rate", "events")    # the encodings whose input is spikes only


@dataclass
class ImageData:
    name: str
    x_train: Tensor  # [N, C, H, W], float32 in [0, 1]
    y_train: Tensor  # [N], int64
    x_test: Tensor
    y_test: Tensor

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def load_digits(test_fraction: float = 0.2) -> ImageData:
    """scikit-learn's digits as ``[N, 1, 8, 8]`` images scaled to [0, 1], split 80/20 (1437 / 360)."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    digits = sk_load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=test_fraction, random_state=0, stratify=y.numpy())
    idx_train, idx_test = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    return ImageData("digits", x[idx_train], y[idx_train], x[idx_test], y[idx_test])


def encode(x: Tensor, time_steps: int, encoding: str, generator: Optional[torch.Generator] = None) -> Tensor:
    """Images ``[B, C, H, W]`` in [0, 1] -> time-first input ``[T, B, C, H, W]``.

    - ``direct``: the same real-valued image every step (the first layer sees a constant current);
    - ``rate``: Bernoulli spikes with the pixel value as the probability per step, what spike-only
      hardware such as Loihi needs. ``generator`` makes the draw reproducible.
    """
    if time_steps < 1:
        raise ValueError(f"time_steps must be at least 1, got {time_steps}.")
    if encoding == "direct":
        return x.unsqueeze(0).expand(time_steps, *x.shape).contiguous()
    if encoding == "rate":
        p = x.clamp(0.0, 1.0).unsqueeze(0).expand(time_steps, *x.shape)
        return torch.bernoulli(p, generator=generator)
    raise ValueError(f"Unknown encoding {encoding!r}; use one of: {', '.join(ENCODINGS)}.")


# ---------------------------------------------------------------------------------------------------------
# The registry of real data sets.


class DataError(RevsnnError):
    """A data directory that is missing, incomplete or in the wrong format; one sentence naming the fix."""


class DataWarning(UserWarning):
    """Something a user should know about the data that does not stop training (an md5 mismatch)."""


@dataclass(frozen=True)
class DatasetInfo:
    title: str
    kind: str                  # "static" or "events"
    layout: str                # what the data directory must hold (used in the error sentence)
    published: str             # where the official copy is published
    reader: str                # which code reads it
    preset: Optional[str]
    num_classes: int
    sensor: Optional[tuple[int, int]] = None  # events: the sensor's (H, W)


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("scikit-learn digits", "static", "nothing (embedded)", "ships inside scikit-learn",
                          "scikit-learn", None, 10),
    "cifar10": DatasetInfo(
        "CIFAR-10", "static",
        "cifar-10-batches-py/ with data_batch_1 ... data_batch_5, test_batch and batches.meta",
        "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-10 python version)",
        "our own (a pickle reader that admits only numpy arrays)", "revsnn-resnet-cifar", 10),
    "cifar100": DatasetInfo(
        "CIFAR-100", "static", "cifar-100-python/ with train, test and meta",
        "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-100 python version)",
        "our own (a pickle reader that admits only numpy arrays)", "revsnn-resnet-cifar", 100),
    "imagefolder": DatasetInfo(
        "ImageNet-style folder", "static", "train/<class>/<image> and val/<class>/<image>",
        "https://image-net.org (ILSVRC 2012, val sorted into class folders), or any folder of that layout",
        "our own listing, Pillow decoding, torch resize and crop", "trevsnn-imagenet", 0),
    "nmnist": DatasetInfo(
        "N-MNIST", "events", "Train/<digit>/*.bin and Test/<digit>/*.bin",
        "https://www.garrickorchard.com/datasets/n-mnist (Train.zip, Test.zip)",
        "our own (numpy)", "revsnn-dvs", 10, (34, 34)),
    "dvs128-gesture": DatasetInfo(
        "DVS128 Gesture", "events",
        "userXX_<lighting>.aedat with userXX_<lighting>_labels.csv, trials_to_train.txt and trials_to_test.txt",
        "https://research.ibm.com/interactive/dvsgesture/ (DvsGesture.tar.gz)",
        "our own (numpy, AEDAT 3.1)", "revsnn-dvs", 11, (128, 128)),
    "cifar10-dvs": DatasetInfo(
        "CIFAR10-DVS", "events", "<class>/*.aedat for the ten CIFAR-10 classes",
        "https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671 (one zip per class)",
        "our own (numpy, jAER AEDAT 2.0)", "revsnn-dvs", 10, (128, 128)),
}

CIFAR10_DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# ImageNet's published channel statistics, which the seeds normalise ImageNet folders with.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class DataSplits:
    """A data set as train and test ``Dataset``s plus what the model and the checkpoint need to know."""

    name: str
    kind: str                                  # "static" or "events"
    train: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    input_shape: tuple[int, int, int]
    num_classes: int
    source: Optional[str] = None               # the data directory it was read from
    mean: Optional[list[float]] = None         # per-channel normalisation of direct-encoded images
    std: Optional[list[float]] = None
    options: dict[str, Any] = field(default_factory=dict)  # frames_by, frame_size, image_size, time_steps
    class_names: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """What a checkpoint stores so that `verify` can read the same test samples again."""
        return {"name": self.name, "kind": self.kind, "dir": self.source, "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, "mean": self.mean, "std": self.std, **self.options}


class TensorSplit(torch.utils.data.Dataset):
    """Samples held in memory; ``__getitems__`` hands the DataLoader a whole batch in one indexing."""

    def __init__(self, x: Tensor, y: Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return self.x[idx], self.y[idx]


class FileSplit(torch.utils.data.Dataset):
    """Samples read from files on demand (in DataLoader workers): ``load(item) -> tensor``."""

    def __init__(self, items: Sequence[Any], labels: Sequence[int], load: Callable[[Any], Tensor]):
        self.items, self.labels, self.load = list(items), torch.as_tensor(list(labels), dtype=torch.int64), load

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.load(self.items[i]), self.labels[i]


def _collate(batch):
    if isinstance(batch, tuple):  # TensorSplit.__getitems__ already returns the stacked batch
        return batch
    return torch.utils.data.default_collate(batch)


def as_splits(data: ImageData) -> DataSplits:
    """In-memory images (the digits, or any ``ImageData``) as ``DataSplits``."""
    return DataSplits(data.name, "static", TensorSplit(data.x_train, data.y_train),
                      TensorSplit(data.x_test, data.y_test), tuple(data.input_shape), data.num_classes)


def _missing(name: str, data_dir: Path, what: str) -> DataError:
    info = DATASETS[name]
    return DataError(f"--data-dir {data_dir}: {info.title} expects {info.layout} ({what}); the official copy is "
                     f"published at {info.published}.")


def _find(data_dir: Path, marker: str) -> Optional[Path]:
    """``data_dir`` itself or one folder below it that holds ``marker`` (users unpack archives differently)."""
    if (data_dir / marker).exists():
        return data_dir
    for sub in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        if (sub / marker).exists():
            return sub
    return None


def _channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images ``[N, C, H, W]`` scaled to [0, 1]."""
    c = x.shape[1]
    mean = np.zeros(c)
    var = np.zeros(c)
    for k in range(c):  # one channel at a time: 50,000 CIFAR images as float64 would need 1.2 GB at once
        ch = x[:, k].astype(np.float64) / 255.0
        mean[k], var[k] = ch.mean(), ch.var()
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in np.sqrt(var)]


def _load_cifar(name: str, data_dir: Path, **_) -> DataSplits:
    from .data_static import CIFAR_FILES, md5_of, read_cifar_batch, read_label_names

    spec = CIFAR_FILES[name]
    root = data_dir if (data_dir / spec["meta"]).exists() or (data_dir / spec["test"][0]).exists() \
        else data_dir / spec["folder"]
    files = spec["train"] + spec["test"] + [spec["meta"]]
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise _missing(name, data_dir, f"missing: {', '.join(missing)}")
    notes = []
    for f in files:
        if md5_of(root / f) != spec["md5"][f]:
            notes.append(f"{root / f} differs from the published file (md5); reading it anyway, as a re-packed copy.")
    parts = {}
    for split in ("train", "test"):
        xs, ys = zip(*(read_cifar_batch(root / f, spec["label_key"]) for f in spec[split]))
        parts[split] = (np.concatenate(xs), np.concatenate(ys))
    names = read_label_names(root / spec["meta"], spec["names_key"])
    classes = DATASETS[name].num_classes
    for split, (_, y) in parts.items():
        if len(y) and (y.min() < 0 or y.max() >= classes):
            raise DataError(f"{root}: {split} labels run from {y.min()} to {y.max()}, outside 0..{classes - 1}; "
                            f"this is not {DATASETS[name].title}.")
    mean, std = _channel_stats(parts["train"][0])
    return DataSplits(name, "static", TensorSplit(torch.from_numpy(parts["train"][0]), torch.from_numpy(parts["train"][1])),
                      TensorSplit(torch.from_numpy(parts["test"][0]), torch.from_numpy(parts["test"][1])),
                      (3, 32, 32), classes, str(root), mean, std, {}, names, notes)


def _load_image(path: Path, size: int) -> Tensor:
    from .data_static import decode_image, resize_center_crop

    return resize_center_crop(decode_image(path), size)


def _load_imagefolder(name: str, data_dir: Path, image_size: Optional[int] = None, **_) -> DataSplits:
    from .data_static import list_image_folder

    if not (data_dir / "train").is_dir() or not (data_dir / "val").is_dir():
        raise _missing(name, data_dir, "no train/ and val/ folders there")
    size = int(image_size or 224)
    train_paths, train_labels, classes = list_image_folder(data_dir / "train")
    val_paths, val_labels, _ = list_image_folder(data_dir / "val", classes)
    extra = sorted(p.name for p in (data_dir / "val").iterdir() if p.is_dir() and p.name not in classes)
    if extra:
        raise DataError(f"--data-dir {data_dir}: val/ has classes that train/ lacks ({', '.join(extra[:3])}); "
                        "give both folders the same class folders.")
    if not train_paths or not val_paths:
        raise _missing(name, data_dir, f"{len(train_paths)} training and {len(val_paths)} validation images found")
    load = functools.partial(_load_image, size=size)
    return DataSplits(name, "static", FileSplit(train_paths, train_labels, load), FileSplit(val_paths, val_labels, load),
                      (3, size, size), len(classes), str(data_dir), list(IMAGENET_MEAN), list(IMAGENET_STD),
                      {"image_size": size}, classes)


def _event_frames(item, reader: str, time_steps: int, sensor, by: str, size) -> Tensor:
    from . import data_events as de

    if reader == "gesture":
        path, start, end = item
        ev = _cached_aedat31(str(path))
        ev = ev.select((ev.t >= start) & (ev.t < end))
    elif reader == "nmnist":
        ev = de.read_nmnist_bin(item)
    else:
        ev = de.read_aedat2_cifar10dvs(item)
    return torch.from_numpy(de.events_to_frames(ev, time_steps, sensor, by, size))


@functools.lru_cache(maxsize=2)
def _cached_aedat31(path: str):
    """One gesture recording holds a dozen samples; keep the last file of each worker parsed."""
    from .data_events import read_aedat31

    return read_aedat31(path)


def _event_options(info: DatasetInfo, time_steps: Optional[int], frames_by: Optional[str],
                   frame_size: Optional[int]) -> tuple[int, str, tuple[int, int]]:
    from .data_events import FRAME_MODES

    T = int(time_steps or 16)
    by = frames_by or "count"
    if T < 1:
        raise DataError(f"--time-steps must be at least 1 for event frames, got {T}.")
    if by not in FRAME_MODES:
        raise DataError(f"--frames-by must be one of {', '.join(FRAME_MODES)}, got {by!r}.")
    h, w = info.sensor
    if frame_size is None:
        return T, by, (h, w)
    if not 1 <= int(frame_size) <= min(h, w):
        raise DataError(f"--frame-size must be between 1 and the sensor's {min(h, w)} pixels, got {frame_size}.")
    return T, by, (int(frame_size), int(frame_size))


def _event_splits(name, data_dir, train_items, train_labels, test_items, test_labels, reader, T, by, size,
                  classes) -> DataSplits:
    info = DATASETS[name]
    load = functools.partial(_event_frames, reader=reader, time_steps=T, sensor=info.sensor, by=by,
                             size=size)
    return DataSplits(name, "events", FileSplit(train_items, train_labels, load),
                      FileSplit(test_items, test_labels, load), (2, *size), info.num_classes, str(data_dir), None,
                      None, {"time_steps": T, "frames_by": by, "frame_size": list(size)}, classes)


def _load_nmnist(name, data_dir: Path, time_steps=None, frames_by=None, frame_size=None, **_) -> DataSplits:
    root = _find(data_dir, "Train")
    if root is None or not (root / "Test").is_dir():
        raise _missing(name, data_dir, "no Train/ and Test/ folders there")
    T, by, size = _event_options(DATASETS[name], time_steps, frames_by, frame_size)
    split = {}
    for part in ("Train", "Test"):
        items, labels = [], []
        for d in range(10):
            files = sorted((root / part / str(d)).glob("*.bin"))
            items += files
            labels += [d] * len(files)
        if not items:
            raise _missing(name, data_dir, f"no .bin files under {root / part}")
        split[part] = (items, labels)
    return _event_splits(name, root, *split["Train"], *split["Test"], "nmnist", T, by, size,
                         [str(d) for d in range(10)])


def _gesture_items(root: Path, list_file: str, name: str, data_dir: Path):
    items, labels = [], []
    for line in (root / list_file).read_text().splitlines():
        trial = line.strip()
        if not trial:
            continue
        aedat = root / trial
        csv = root / (Path(trial).stem + "_labels.csv")
        if not aedat.is_file() or not csv.is_file():
            raise _missing(name, data_dir, f"{list_file} names {trial}, but {aedat.name} or {csv.name} is missing")
        for row in csv.read_text().splitlines()[1:]:  # header: class,startTime_usec,endTime_usec
            if not row.strip():
                continue
            try:
                cls, start, end = (int(v) for v in row.split(",")[:3])
            except ValueError as exc:
                raise DataError(f"{csv}: the row {row!r} is not 'class,start,end' in whole numbers; copy the file "
                                "again from the published DvsGesture.tar.gz.") from exc
            if not 1 <= cls <= 11:
                raise DataError(f"{csv}: class {cls} is outside 1..11; copy the file again from DvsGesture.tar.gz.")
            items.append((aedat, start, end))
            labels.append(cls - 1)
    return items, labels


def _load_gesture(name, data_dir: Path, time_steps=None, frames_by=None, frame_size=None, **_) -> DataSplits:
    root = _find(data_dir, "trials_to_train.txt")
    if root is None or not (root / "trials_to_test.txt").is_file():
        raise _missing(name, data_dir, "no trials_to_train.txt and trials_to_test.txt there")
    T, by, size = _event_options(DATASETS[name], time_steps, frames_by, frame_size)
    train = _gesture_items(root, "trials_to_train.txt", name, data_dir)
    test = _gesture_items(root, "trials_to_test.txt", name, data_dir)
    if not train[0] or not test[0]:
        raise _missing(name, data_dir, "the trial lists name no labelled gesture")
    return _event_splits(name, root, *train, *test, "gesture", T, by, size, [str(c) for c in range(1, 12)])


def _load_cifar10dvs(name, data_dir: Path, time_steps=None, frames_by=None, frame_size=None, **_) -> DataSplits:
    from .data_events import trailing_number

    root = _find(data_dir, "airplane")
    if root is None:
        raise _missing(name, data_dir, "no airplane/ folder there")
    T, by, size = _event_options(DATASETS[name], time_steps, frames_by, frame_size)
    train_items, train_labels, test_items, test_labels = [], [], [], []
    for k, cls in enumerate(CIFAR10_DVS_CLASSES):
        files = sorted((root / cls).glob("*.aedat"), key=lambda p: (trailing_number(p.name), p.name))
        if len(files) < 2:
            raise _missing(name, data_dir, f"{len(files)} .aedat files in {cls}/, at least 2 needed for a split")
        n_train = max(1, min(len(files) - 1, int(len(files) * 0.9)))  # the seeds' 90/10 split per class
        train_items += files[:n_train]
        train_labels += [k] * n_train
        test_items += files[n_train:]
        test_labels += [k] * (len(files) - n_train)
    return _event_splits(name, root, train_items, train_labels, test_items, test_labels, "cifar10dvs", T, by,
                         size, list(CIFAR10_DVS_CLASSES))


_LOADERS = {"cifar10": _load_cifar, "cifar100": _load_cifar, "imagefolder": _load_imagefolder,
            "nmnist": _load_nmnist, "dvs128-gesture": _load_gesture, "cifar10-dvs": _load_cifar10dvs}


def load_dataset(name: str, data_dir: Optional[Path | str] = None, *, time_steps: Optional[int] = None,
                 frames_by: Optional[str] = None, frame_size: Optional[int] = None,
                 image_size: Optional[int] = None) -> DataSplits:
    """Read a registered data set from ``data_dir``; raise ``DataError`` (one sentence) when it is not there.

    ``time_steps``, ``frames_by`` (``count`` | ``time``) and ``frame_size`` shape event frames;
    ``image_size`` is the side an image folder is resized and centre-cropped to. md5 mismatches of CIFAR
    files are returned in ``.warnings`` and raised as ``DataWarning``.
    """
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}.")
    if name == "digits":
        return as_splits(load_digits())
    if data_dir is None:
        raise DataError(f"--data {name} needs --data-dir: the folder that holds {DATASETS[name].layout} "
                        f"(published at {DATASETS[name].published}); nothing is downloaded.")
    data_dir = Path(data_dir).expanduser().resolve()  # the checkpoint records where the data was read
    if not data_dir.is_dir():
        raise _missing(name, data_dir, "the folder does not exist")
    splits = _LOADERS[name](name, data_dir, time_steps=time_steps, frames_by=frames_by, frame_size=frame_size,
                            image_size=image_size)
    for note in splits.warnings:
        warnings.warn(note, DataWarning, stacklevel=2)
    return splits


# ---------------------------------------------------------------------------------------------------------
# Batches -> model input.


def _event_flip_shift(x: Tensor, flip: bool, shift: int, generator: torch.Generator) -> Tensor:
    """Per sample of ``[B, T, 2, H, W]``: a horizontal flip with probability 1/2 and a shift of up to ``shift``
    pixels in each direction, the vacated pixels empty (the same draw for every frame of a sample)."""
    b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        x = torch.where(mask.view(b, 1, 1, 1, 1), x.flip(-1), x)
    if shift > 0:
        p = shift
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=generator)
        x = torch.stack([padded[i, ..., dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    return x


def to_input(x: Tensor, splits: DataSplits | dict, time_steps: int, encoding: str,
             generator: Optional[torch.Generator] = None, augment: Optional[dict] = None) -> Tensor:
    """A batch of data-set items -> the model's time-first input ``[T, B, C, H, W]`` (float32).

    Static images: augmentation (``augment = {"crop_padding": 4, "flip": True}``), then ``direct``
    (normalised with the data set's mean and std when it has them, the same image every step) or ``rate``
    (Bernoulli spikes of the [0, 1] pixel values). Event frames: augmentation (``{"flip": True,
    "shift": k}``), then ``events`` (a spike where a pixel had at least one event in the frame) or ``counts``.
    """
    from .data_static import random_crop_flip

    meta = splits.record() if isinstance(splits, DataSplits) else splits
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    if meta.get("kind") == "events":
        if encoding not in EVENT_ENCODINGS:
            raise DataError(f"event frames take --encoding {' or '.join(EVENT_ENCODINGS)}, not {encoding!r}.")
        x = x.float()
        if augment:
            x = _event_flip_shift(x, bool(augment.get("flip", True)), int(augment.get("shift", 0)), generator)
        x = x.transpose(0, 1).contiguous()  # [B, T, 2, H, W] -> time-first
        return (x > 0).float() if encoding == "events" else x
    if encoding not in ENCODINGS:
        raise DataError(f"images take --encoding {' or '.join(ENCODINGS)}, not {encoding!r}.")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if augment:
        x = random_crop_flip(x, int(augment.get("crop_padding", 0)), bool(augment.get("flip", False)), generator)
    if encoding == "direct" and meta.get("mean") is not None:
        mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
        x = (x - mean) / std
    return encode(x, time_steps, encoding, generator)


def make_loader(split: torch.utils.data.Dataset, batches: list[Tensor], workers: int = 0,
                pin_memory: bool = False, seed: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over precomputed batches of indices: the order comes from the trainer's generator, so the
    same seed gives the same batches whatever the number of workers (items are read, never drawn, there).
    The loader gets a generator of its own so that it never draws from torch's global one."""
    import multiprocessing

    # An explicit context: the default one, once used, is fixed for the process, and Lava's runtime sets the
    # start method itself later (verify in the same process would then fail).
    context = None
    if workers > 0:
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    return torch.utils.data.DataLoader(split, batch_sampler=[b.tolist() for b in batches], num_workers=workers,
                                       pin_memory=pin_memory, collate_fn=_collate, multiprocessing_context=context,
                                       generator=torch.Generator().manual_seed(seed))


def dataset_record(payload: dict) -> dict:
    """The data-set record of a checkpoint (checkpoints written before data sets existed used the digits)."""
    return payload.get("data") or {"name": "digits", "kind": "static", "dir": None}


def test_samples(payload: dict, n: int, data_dir: Optional[Path | str] = None,
                 seed: int = 1234) -> tuple[Tensor, Tensor]:
    """The first ``n`` test samples of the data a checkpoint was trained on, as the model's input.

    Returns ``(x [T, B, C, H, W] float32, labels [B])``, encoded as in training but without augmentation
    (rate coding draws from ``seed``). ``data_dir`` overrides the directory the checkpoint recorded.
    """
    train = payload.get("train", {})
    config = payload.get("config", {})
    T = int(train.get("time_steps", config.get("train", {}).get("time_steps", 4)))
    encoding = train.get("encoding", "direct")
    rec = dataset_record(payload)
    generator = torch.Generator().manual_seed(seed)
    if rec["name"] == "digits":
        data = load_digits()
        k = min(n, len(data.y_test))
        return encode(data.x_test[:k], T, encoding, generator), data.y_test[:k]
    where = data_dir if data_dir is not None else rec.get("dir")
    size = rec.get("frame_size")
    with warnings.catch_warnings():  # the md5 notes were shown when the model was trained
        warnings.simplefilter("ignore", DataWarning)
        splits = load_dataset(rec["name"], where, time_steps=rec.get("time_steps", T),
                              frames_by=rec.get("frames_by"), frame_size=size[0] if size else None,
                              image_size=rec.get("image_size"))
    if list(splits.input_shape) != list(rec.get("input_shape", splits.input_shape)):
        raise DataError(f"the {rec['name']} data in {where} gives inputs {list(splits.input_shape)}, the model was "
                        f"trained on {rec['input_shape']}; point --data-dir at the copy it was trained on.")
    k = min(n, len(splits.test))
    x, y = next(iter(make_loader(splits.test, [torch.arange(k)])))
    return to_input(x, rec, T, encoding, generator), y


test_samples.__test__ = False  # a library function whose name pytest would otherwise collect from test files
