"""Event-camera data sets in their original file formats, and events -> T frames.

Readers (our own, numpy only; see the README for why not tonic):

- N-MNIST ``.bin``: 5 bytes an event, ``x``, ``y``, then 1 bit of polarity and 23 bits of timestamp (µs,
  big-endian); an event with ``y == 240`` marks a timestamp overflow, after which every timestamp grows by
  2**13 (the convention of the publishers' own reader). 34 x 34 sensor.
- AEDAT 3.1 (DVS128 Gesture): an ASCII header that ends with ``#!END-HEADER\\r\\n``, then packets, each a
  28-byte little-endian header (type, source, event size, timestamp offset, timestamp overflow, capacity,
  number, valid) and ``capacity * size`` bytes of events. Polarity events (type 1) are 8 bytes: a uint32
  whose bit 0 is the validity mark, bit 1 the polarity, bits 2..16 ``y`` and bits 17..31 ``x``, then an
  int32 timestamp (µs) to which ``overflow << 31`` is added. Events marked invalid are dropped.
- AEDAT 2.0 / jAER (CIFAR10-DVS): ``#`` header lines, then big-endian uint32 pairs (address, timestamp);
  ``x = (a & 0xFE) >> 1``, ``y = (a & 0x7F00) >> 8``, polarity = bit 0. The files hold the sensor rotated
  and polarity inverted against the images; like spikingjelly and events-tfds we return
  ``x' = 127 - y``, ``y' = 127 - x``, ``p' = 1 - p``.

Every reader returns an ``Events`` record of equal-length numpy arrays in file order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .data import DataError

__all__ = ["Events", "EventFileError", "read_nmnist_bin", "read_aedat31", "read_aedat2_cifar10dvs",
           "events_to_frames", "FRAME_MODES"]

FRAME_MODES = ("count", "time")


class EventFileError(DataError):
    """An event file that cannot be read; the message names the file and what is wrong with it."""


@dataclass
class Events:
    x: np.ndarray  # int64
    y: np.ndarray
    p: np.ndarray  # 0 (OFF) or 1 (ON)
    t: np.ndarray  # µs, int64

    def __len__(self) -> int:
        return len(self.t)

    def select(self, mask: np.ndarray) -> "Events":
        return Events(self.x[mask], self.y[mask], self.p[mask], self.t[mask])


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise EventFileError(f"{path} cannot be read ({exc.strerror}).") from exc


def read_nmnist_bin(path: Path | str) -> Events:
    """One N-MNIST ``.bin`` file (overflow events removed, their 2**13 µs added to what follows)."""
    raw = _read(Path(path))
    if len(raw) % 5:
        raise EventFileError(f"{path} is {len(raw)} bytes long, not a whole number of 5-byte N-MNIST events; "
                             "the file is truncated: copy it again from the published Train.zip / Test.zip.")
    a = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 5).astype(np.int64)
    x, y = a[:, 0], a[:, 1]
    p = a[:, 2] >> 7
    t = ((a[:, 2] & 0x7F) << 16) | (a[:, 3] << 8) | a[:, 4]
    overflow = y == 240
    t = t + (np.cumsum(overflow) << 13)
    keep = ~overflow
    return Events(x[keep], y[keep], p[keep], t[keep])


_AEDAT31_MAGIC = b"#!AER-DAT3.1"
_END_HEADER = b"#!END-HEADER\r\n"


def read_aedat31(path: Path | str) -> Events:
    """The polarity events of one AEDAT 3.1 file (other packet types are skipped)."""
    raw = _read(Path(path))
    if not raw.startswith(_AEDAT31_MAGIC):
        raise EventFileError(f"{path} is not an AEDAT 3.1 file (it does not start with '#!AER-DAT3.1'); "
                             "DVS128 Gesture's original .aedat files are expected.")
    end = raw.find(_END_HEADER)
    if end < 0:
        raise EventFileError(f"{path} has no '#!END-HEADER' line; the file is truncated.")
    pos = end + len(_END_HEADER)
    chunks, overflows = [], []
    header = np.dtype([("type", "<i2"), ("source", "<i2"), ("size", "<i4"), ("ts_offset", "<i4"),
                       ("ts_overflow", "<i4"), ("capacity", "<i4"), ("number", "<i4"), ("valid", "<i4")])
    # A Python loop over packets (a gesture recording has a few thousand), numpy within each packet.
    while pos < len(raw):
        if pos + 28 > len(raw):
            raise EventFileError(f"{path}: a packet header at byte {pos} is cut short; the file is truncated.")
        h = np.frombuffer(raw, dtype=header, count=1, offset=pos)[0]
        size, capacity, number = int(h["size"]), int(h["capacity"]), int(h["number"])
        length = size * capacity
        if size < 1 or capacity < 0 or number > capacity:
            raise EventFileError(f"{path}: the packet header at byte {pos} is damaged (event size {size}, "
                                 f"capacity {capacity}, number {number}).")
        pos += 28
        if pos + length > len(raw):
            raise EventFileError(f"{path}: the packet at byte {pos - 28} needs {length} bytes of events, the file "
                                 f"has {len(raw) - pos}; the file is truncated.")
        if int(h["type"]) == 1 and number:
            if size < 8:
                raise EventFileError(f"{path}: polarity events of {size} bytes; AEDAT 3.1 writes 8.")
            block = np.frombuffer(raw, dtype=np.uint8, count=length, offset=pos).reshape(capacity, size)[:number]
            chunks.append(np.ascontiguousarray(block[:, :8]).view("<u4").reshape(number, 2))
            overflows.append(np.full(number, int(h["ts_overflow"]), dtype=np.int64))
        pos += length
    if not chunks:
        return Events(*(np.zeros(0, dtype=np.int64) for _ in range(4)))
    d = np.concatenate(chunks).astype(np.int64)
    ovf = np.concatenate(overflows)
    data, ts = d[:, 0], d[:, 1]
    valid = (data & 1) == 1
    ev = Events(x=(data >> 17) & 0x7FFF, y=(data >> 2) & 0x7FFF, p=(data >> 1) & 1, t=ts | (ovf << 31))
    return ev.select(valid)


def read_aedat2_cifar10dvs(path: Path | str) -> Events:
    """One original CIFAR10-DVS file (jAER AEDAT 2.0), oriented as the images (see the module docstring)."""
    raw = _read(Path(path))
    pos = 0
    while pos < len(raw) and raw[pos:pos + 1] == b"#":  # header lines start with '#'
        nl = raw.find(b"\n", pos)
        if nl < 0:
            raise EventFileError(f"{path}: the '#' header never ends; the file is truncated.")
        pos = nl + 1
    body = raw[pos:]
    if len(body) % 8:
        raise EventFileError(f"{path}: {len(body)} bytes of events is not a whole number of 8-byte "
                             "(address, timestamp) pairs; the file is truncated.")
    d = np.frombuffer(body, dtype=">u4").reshape(-1, 2).astype(np.int64)
    a, t = d[:, 0], d[:, 1]
    x_raw, y_raw, p_raw = (a & 0xFE) >> 1, (a & 0x7F00) >> 8, a & 1
    return Events(x=127 - y_raw, y=127 - x_raw, p=1 - p_raw, t=t)


def events_to_frames(ev: Events, time_steps: int, sensor: tuple[int, int], by: str = "count",
                     size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """Events -> ``[T, 2, H, W]`` float32 counts (channel 0: OFF events, channel 1: ON events).

    ``by="count"``: T slices of equal event number in file order, the last one taking the remainder
    (spikingjelly's ``split_by='number'``, what the seeds use). ``by="time"``: T equal time windows from the
    first to the last event. ``size``: bin the sensor's ``(H, W)`` down to ``size`` (``x' = x * W' // W``).
    """
    H, W = sensor
    oh, ow = size or sensor
    frames = np.zeros(time_steps * 2 * oh * ow, dtype=np.float32)
    n = len(ev)
    if n:
        inside = (ev.x >= 0) & (ev.x < W) & (ev.y >= 0) & (ev.y < H)
        if by == "count":
            step = n // time_steps
            if step == 0:  # fewer events than frames: one event a frame, the rest empty
                frame = np.arange(n)
            else:
                frame = np.minimum(np.arange(n) // step, time_steps - 1)
        elif by == "time":
            t0, span = ev.t.min(), ev.t.max() - ev.t.min() + 1
            frame = ((ev.t - t0) * time_steps) // span
        else:
            raise ValueError(f"frames by {by!r}; use one of {', '.join(FRAME_MODES)}.")
        xs, ys = ev.x * ow // W, ev.y * oh // H
        flat = ((frame * 2 + ev.p) * oh + ys) * ow + xs
        frames += np.bincount(flat[inside], minlength=frames.size).astype(np.float32)
    return frames.reshape(time_steps, 2, oh, ow)


_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def trailing_number(name: str) -> int:
    """The last integer in a file name (``cifar10_cat_12.aedat`` -> 12); -1 if it has none."""
    m = _NUMBER.search(name)
    return int(m.group(1)) if m else -1
