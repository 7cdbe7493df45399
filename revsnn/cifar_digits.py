"""The CIFAR pipeline checked against the digits: the digits written as official CIFAR-10 batches.

Each 8x8 digit becomes a 32x32 RGB image (every pixel a 4x4 block, the same value in R, G and B, scaled to
0..255), in the same order and split as ``load_digits()``: 1437 training images over ``data_batch_1`` ...
``data_batch_5`` and 360 in ``test_batch``. Read back through ``load_dataset("cifar10", ...)`` they give the
digits exactly (``round(u * 16 / 255) / 16``), so training on them tests every step of the CIFAR path:
reader, normalisation, DataLoader and the model built for 3x32x32.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .checkpoint import atomic_write
from .data import load_digits

__all__ = ["write_digits_as_cifar", "compare_cifar_digits"]


def write_digits_as_cifar(folder: Path | str) -> Path:
    """Write ``folder/cifar-10-batches-py/`` (the official layout) from the digits; returns that folder."""
    root = Path(folder) / "cifar-10-batches-py"
    root.mkdir(parents=True, exist_ok=True)
    d = load_digits()

    def rows(x) -> np.ndarray:
        k = np.rint(x.numpy()[:, 0] * 16).astype(np.int64)             # the digits' own 0..16 levels
        img = np.rint(k * 255 / 16).astype(np.uint8).repeat(4, 1).repeat(4, 2)  # [N, 32, 32]
        return np.stack([img, img, img], 1).reshape(len(img), 3072)      # R, G, B planes

    train_rows, test_rows = rows(d.x_train), rows(d.x_test)
    parts = np.array_split(np.arange(len(train_rows)), 5)
    files = [(f"data_batch_{i + 1}", train_rows[idx], d.y_train.numpy()[idx]) for i, idx in enumerate(parts)]
    files.append(("test_batch", test_rows, d.y_test.numpy()))
    for name, data, labels in files:
        payload = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": data,
                   b"filenames": [f"digit_{name}_{i}.png".encode() for i in range(len(labels))]}
        atomic_write(root / name, lambda tmp, p=payload: tmp.write_bytes(pickle.dumps(p, protocol=2)))
    meta = {b"label_names": [str(i).encode() for i in range(10)], b"num_cases_per_batch": len(parts[0]),
            b"num_vis": 3072}
    atomic_write(root / "batches.meta", lambda tmp: tmp.write_bytes(pickle.dumps(meta, protocol=2)))
    return root


def compare_cifar_digits(model: str, out: Path | str, epochs: Optional[int] = None, seed: int = 0,
                         reporter=None, **train_kw: Any) -> dict[str, Any]:
    """Train ``model`` on the digits directly and on the digits as CIFAR-10 files; both accuracies.

    ``train_kw`` goes to both runs (``time_steps``, ``batch_size``, ``lr``, ``augment`` ...).
    """
    import warnings

    from .data import DataWarning
    from .train import TrainOptions, train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folder = write_digits_as_cifar(out / "data")
    train_kw = {**train_kw, "overwrite": True}  # the benchmark's own runs: a rerun replaces them
    digits = train(TrainOptions(model=model, out=out / "digits", epochs=epochs, seed=seed, **train_kw), reporter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # our files are, by design, not the published ones
        cifar = train(TrainOptions(model=model, out=out / "cifar10", epochs=epochs, seed=seed, data="cifar10",
                                   data_dir=folder.parent, **train_kw), reporter)
    return {"model": model, "epochs": digits["epochs"], "digits_accuracy": digits["test_accuracy"],
            "cifar_accuracy": cifar["test_accuracy"], "digits_seconds": digits["train_seconds"],
            "cifar_seconds": cifar["train_seconds"], "data_dir": str(folder)}
