"""Static-image data sets in their published layouts: CIFAR-10/100 python batches and ImageNet-style folders.

torchvision cannot be installed beside the CPU torch here, so decoding uses Pillow and the transforms
(resize, centre crop, random crop with padding, horizontal flip, normalisation) are written in torch.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .data import DataError

__all__ = ["DataFormatError", "read_cifar_batch", "CIFAR_FILES", "md5_of", "list_image_folder",
           "decode_image", "resize_center_crop", "random_crop_flip", "IMAGE_SUFFIXES"]


class DataFormatError(DataError):
    """A data file that is not in the published format; the message names the file."""


# The published md5 sums of the extracted files (the same values torchvision checks); a mismatch is only a
# warning, since a user may hold a re-packed copy with identical arrays.
CIFAR_FILES = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "label_key": "labels",
        "names_key": "label_names",
        "md5": {"data_batch_1": "c99cafc152244af753f735de768cd75f",
                "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
                "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
                "data_batch_4": "634d18415352ddfa80567beed471001a",
                "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
                "test_batch": "40351d587109b95175f43aff81a1287e",
                "batches.meta": "5ff9c542aee3614f3951f8cda6e48888"},
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "label_key": "fine_labels",
        "names_key": "fine_label_names",
        "md5": {"train": "16019d7e3df5f24257cddd939b257f8d",
                "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
                "meta": "7973b15100ade9c7d40fb424638fde48"},
    },
}


class _ArraysOnly(pickle.Unpickler):
    """The CIFAR batches are pickles; a pickle can run any code it names. This one may name only what a
    pickled numpy array needs, so a doctored file fails instead of running anything."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"),
                ("_codecs", "encode")}  # how Python 3 writes bytes in a protocol-2 pickle (re-packed copies)

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"the file names {module}.{name}, which a CIFAR batch never holds")


def _key(d: dict, name: str):
    """Python 2 pickles (the published files) load with bytes keys; accept str keys of re-packed copies."""
    if name.encode() in d:
        return d[name.encode()]
    if name in d:
        return d[name]
    raise KeyError(name)


def read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One python batch: images ``[N, 3, 32, 32]`` uint8 (the R, G, B planes of each row) and labels."""
    try:
        with open(path, "rb") as f:
            d = _ArraysOnly(f, encoding="bytes").load()
        data = np.asarray(_key(d, "data"), dtype=np.uint8)
        labels = np.asarray(_key(d, label_key), dtype=np.int64)
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise DataFormatError(f"{path} is not a CIFAR python batch ({type(exc).__name__}: {exc}); copy it again "
                              "from the published python version.") from exc
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataFormatError(f"{path}: 'data' is {list(data.shape)} with {len(labels)} labels, not "
                              "[N, 3072] with N labels; copy it again from the published python version.")
    return data.reshape(-1, 3, 32, 32), labels


def read_label_names(path: Path, key: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            d = _ArraysOnly(f, encoding="bytes").load()
        return [n.decode() if isinstance(n, bytes) else str(n) for n in _key(d, key)]
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise DataFormatError(f"{path} is not a CIFAR meta file ({type(exc).__name__}); copy it again from the "
                              "published python version.") from exc


def md5_of(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")


def list_image_folder(root: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """``root/<class>/<image>`` -> sorted file paths, class indices and class names (sorted folder names)."""
    if classes is None:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    paths, labels = [], []
    for i, c in enumerate(classes):
        folder = root / c
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                paths.append(f)
                labels.append(i)
    return paths, labels, classes


def decode_image(path: Path) -> Tensor:
    """An image file -> ``[3, H, W]`` uint8 RGB (Pillow)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataFormatError(f"{path} is not a readable image ({type(exc).__name__}); remove or replace it.") from exc
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def resize_center_crop(img: Tensor, size: int) -> Tensor:
    """``[3, H, W]`` uint8 -> ``[3, size, size]`` uint8: shorter side resized to ``size`` (bilinear, with
    antialiasing), then the centre ``size x size`` crop."""
    _, h, w = img.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        img = torch.nn.functional.interpolate(img.unsqueeze(0).float(), size=(nh, nw), mode="bilinear",
                                              align_corners=False, antialias=True)[0]
        img = img.round().clamp(0, 255).to(torch.uint8)
    top, left = (nh - size) // 2, (nw - size) // 2
    return img[:, top:top + size, left:left + size].contiguous()


def random_crop_flip(x: Tensor, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Per sample of ``[B, C, H, W]``: a random ``H x W`` crop of the zero-padded image (padding on every side)
    and, with ``flip``, a horizontal flip with probability 1/2; the draws come from ``generator``."""
    b, _, h, w = x.shape
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        rows = (dy.view(b, 1) + torch.arange(h).view(1, h))            # [B, H]
        cols = (dx.view(b, 1) + torch.arange(w).view(1, w))            # [B, W]
        bi = torch.arange(b).view(b, 1, 1)
        x = padded.permute(0, 2, 3, 1)[bi, rows.view(b, h, 1), cols.view(b, 1, w)].permute(0, 3, 1, 2)
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        x = torch.where(mask.view(b, 1, 1, 1), x.flip(-1), x)
    return x.contiguous()
