"""Every file revsnn writes goes through :func:`atomic_write`: whole or not at all, and never a traceback.

What it guarantees, and why each part is here:

- The bytes are produced in memory first (``torch.save`` into a buffer, h5py's in-memory ``core`` driver,
  ``onnx`` serialisation, ``savefig`` into a buffer) and copied to disk with plain Python I/O. Libraries
  that write files themselves fail badly on a full disk (h5py segfaults, torch's zip writer raises a
  RuntimeError about "unexpected pos"); a plain ``write`` fails with ``OSError(ENOSPC)``, which we turn
  into one sentence.
- The temporary file sits beside the destination (so the rename is atomic) under a recognisable name,
  ``.NAME.PID.RANDOM.revsnn-tmp``. It is removed on any error and on SIGTERM; a ``kill -9`` leaves it, and
  the next write to the same destination removes every such file whose process is gone (the PID in the
  name says which: a concurrent writer's temp file is left alone).
- The file gets the user's usual permissions: ``0666 & ~umask`` when new, the existing file's mode when it
  replaces one (``mkstemp`` alone would leave every output 0600).
- ``OSError`` (no space, read-only file system, permission denied, ...) becomes a :class:`WriteError` with
  one sentence naming the file and what to do.

Standard library only: no well-kept package does all of this (``atomicwrites`` is unmaintained and keeps
neither the mode nor cleans stale files), and the rules are short.
"""

from __future__ import annotations

import errno
import io
import os
import re
import secrets
import signal
import stat
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Union

from revsnn.errors import RevsnnError

__all__ = ["WriteError", "TEMP_SUFFIX", "atomic_write", "os_error_sentence", "remove_stale_temps",
           "check_writable_dir", "check_free_space", "user_mode"]

TEMP_SUFFIX = ".revsnn-tmp"
_LEGACY_RE = re.compile(r"^\.(?P<name>.+?)\.?[A-Za-z0-9_]{8}(\.net)?\.tmp$")
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}" + re.escape(TEMP_SUFFIX) + "$")

# Temp files this process is writing now; the SIGTERM handler removes them.
_LIVE: set[str] = set()
_LOCK = threading.Lock()
_PREVIOUS_HANDLER = None
_INSTALLED = False


class WriteError(RevsnnError):
    """A file that could not be written (no space, read-only, no permission); nothing was left behind."""


def _reason(exc: OSError, directory: Path) -> str:
    """What went wrong writing into ``directory``, and what to do: "REASON; FIX"."""
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on its file system; free some space or choose another path"
    if code == errno.EROFS:
        return "its file system is read-only; choose a writable path"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied; choose a path you can write to"
    if code == errno.ENOENT:
        if directory.is_dir():  # /proc and friends: the folder exists but takes no new files
            return f"{directory} does not take new files; choose another path"
        return f"its directory {directory} does not exist; create it first"
    if code == errno.EISDIR:
        return "it is a directory; give a file name"
    if code == errno.ENOTDIR:
        return "a part of the path is not a directory; choose another path"
    reason = (exc.strerror or type(exc).__name__).rstrip(".").lower()
    return f"{reason}; check the path, its permissions and free space"


def os_error_sentence(exc: OSError, path: Union[str, Path], doing: str = "write") -> str:
    """One sentence for an ``OSError`` met while writing ``path``: what happened and what to do."""
    path = Path(path)
    return f"cannot {doing} {path}: {_reason(exc, path.parent)}."


def user_mode(path: Path) -> int:
    """The mode a file written to ``path`` gets: the existing file's, else what ``open()`` would give."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        pass
    # The umask can only be read by setting it; set it straight back (the window is a few instructions).
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # a write of ours in another thread, or one in progress
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True   # someone else's live process
    return True


def remove_stale_temps(path: Union[str, Path]) -> list[Path]:
    """Remove the temporary files that earlier, killed writes to ``path`` left beside it; returns them."""
    path = Path(path)
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if m is None:
            # revsnn before this module named its temp files after mkstemp (no PID): one of those is removed
            # once it has not changed for an hour, when no writer can still be using it.
            legacy = _LEGACY_RE.match(entry.name)
            if legacy is None or legacy.group("name") not in (path.name, "revsnn-" if path.suffix == ".net" else None):
                continue
            try:
                if now - entry.stat().st_mtime < 3600:
                    continue
            except OSError:
                continue
        elif m.group("name") != path.name or _pid_alive(int(m.group("pid"))):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


def _on_sigterm(signum, frame):
    with _LOCK:
        live = list(_LIVE)
    for tmp in live:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    previous = _PREVIOUS_HANDLER
    if callable(previous):
        previous(signum, frame)
        return
    # Default action: die of SIGTERM as the sender asked (exit status 143 in a shell).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_sigterm_handler() -> None:
    global _INSTALLED, _PREVIOUS_HANDLER
    if _INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is _on_sigterm:
        _INSTALLED = True
        return
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main interpreter thread
        return
    _PREVIOUS_HANDLER = previous if previous not in (signal.SIG_DFL, signal.SIG_IGN, None) else None
    _INSTALLED = True


Content = Union[bytes, bytearray, memoryview, Callable[[], bytes], Callable[[io.BufferedWriter], None]]


def atomic_write(path: Union[str, Path], content, *, check: Optional[Callable[[Path], None]] = None,
                 mode: Optional[int] = None) -> Path:
    """Write ``content`` to ``path`` whole, or leave ``path`` (and its folder) as it was; returns ``path``.

    ``content``: the bytes; or a function of no argument returning them; or (the older form) a function of
    one argument, the temporary file's ``Path``, that writes it. Prefer bytes: only then does a full disk
    surface as a clean ``OSError`` whatever the library. ``check(tmp)`` runs on the written temporary file
    before it takes the name (a read-back test); what it raises propagates and nothing is left.
    Raises :class:`WriteError` (one sentence) for every ``OSError``.
    """
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"cannot write {path}: it is a directory; give a file name.")
    if not path.parent.is_dir():
        raise WriteError(f"cannot write {path}: its directory {path.parent} does not exist; create it first.")
    _install_sigterm_handler()
    remove_stale_temps(path)
    final_mode = user_mode(path) if mode is None else mode
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    created = False
    try:
        data = None
        if isinstance(content, (bytes, bytearray, memoryview)):
            data = bytes(content)
        elif callable(content) and _arity(content) == 0:
            data = content()
        with _LOCK:
            _LIVE.add(str(tmp))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        created = True
        if data is not None:
            with os.fdopen(fd, "wb") as f:
                view = memoryview(data)
                while view:
                    view = view[f.write(view):]
                f.flush()
                os.fsync(f.fileno())  # a full disk can surface only here on file systems that allocate late
        else:
            os.close(fd)
            content(tmp)
        os.chmod(tmp, final_mode)
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
        created = False
    except OSError as exc:
        raise WriteError(os_error_sentence(exc, path)) from exc
    finally:
        if created:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        with _LOCK:
            _LIVE.discard(str(tmp))
    return path


def _arity(fn) -> int:
    import inspect

    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return 1
    return len(params)


def check_writable_dir(directory: Union[str, Path], option: str = "--out") -> None:
    """Refuse, in one sentence, a folder revsnn could not write into (read-only, no permission, not a
    folder), before any expensive work starts; leaves nothing behind."""
    directory = Path(directory)
    probe = directory / f".probe.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise WriteError(f"{option} {directory}: cannot write into it: {_reason(exc, directory)}.") from exc


def check_free_space(directory: Union[str, Path], needed: int, what: str, option: str = "--out") -> None:
    """Refuse when the file system of ``directory`` has fewer than ``needed`` bytes free."""
    import shutil

    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return
    if free < needed:
        raise WriteError(f"{option} {directory}: {what} needs about {_size(needed)} but its file system has "
                         f"{_size(free)} free; free some space or choose another path.")


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def png_bytes(fig, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes, for :func:`atomic_write` (drawn in memory, written with plain I/O)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
