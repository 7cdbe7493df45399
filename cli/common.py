"""What every command shares: the consoles, the one way a command fails, and the one place where the
library's bad-input errors become that failure."""

from __future__ import annotations

import errno

from typer._click.exceptions import UsageError  # typer 0.29 vendors click and exports no UsageError
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from revsnn.errors import RevsnnError

console = Console()
err = Console(stderr=True, soft_wrap=True)  # one sentence stays one line, however narrow the terminal


# A message longer than this is a library's paste (torch's state-dict report runs to 2.6 KB); cut it.
_MAX_MESSAGE = 600


def one_line(message: str) -> str:
    """``message`` as one line: newlines and runs of spaces folded, and cut at ``_MAX_MESSAGE`` characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE - 1].rstrip() + "…"


def fail(message: str, code: int = 2) -> None:
    """One clear sentence on stderr and a non-zero exit code: how every bad input ends."""
    err.print(f"[red]error:[/red] {escape(one_line(message))}", highlight=False)
    raise typer.Exit(code)


def _usage_sentence(exc: UsageError) -> str:
    """click's usage error (typer draws it as a 5-6 line box) as one sentence that says where help is."""
    command = exc.ctx.command_path if exc.ctx is not None else "revsnn"
    return f"{exc.format_message().rstrip('.')}; see `{command} --help`."


class RevsnnGroup(TyperGroup):
    """The app's command group. Every command (sub-apps' too: they run inside this ``invoke``) is called
    here, and every :class:`revsnn.errors.RevsnnError` it raises (a bad file, a model a target cannot
    express, a bad option the library checks) ends as its one sentence on stderr and exit code 2, never a
    traceback. Anything else is a bug and keeps its traceback."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _escape_help(self)

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except UsageError as exc:  # a bad option before the command name
            fail(_usage_sentence(exc), exc.exit_code)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RevsnnError as exc:
            fail(str(exc))
        except UsageError as exc:  # a command's bad option or argument, as parsed by click
            fail(_usage_sentence(exc), exc.exit_code)
        except MemoryError:
            # A safety net: the options' memory estimates (revsnn/limits.py) should refuse first.
            fail("ran out of memory; lower --time-steps, --batch-size or --samples.")
        except RuntimeError as exc:
            # The same net for torch, whose allocators raise RuntimeError (torch.OutOfMemoryError on CUDA).
            text = str(exc)
            if not ("out of memory" in text.lower() or "can't allocate memory" in text):
                raise
            fail("ran out of memory; lower --time-steps, --batch-size or --samples.")
        except OSError as exc:
            # A safety net for a write that bypassed revsnn.fileio: the same one sentence it would give.
            if exc.errno not in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT):
                raise
            from revsnn.fileio import os_error_sentence

            fail(os_error_sentence(exc, exc.filename or "the output"))


def _escape_help(command) -> None:
    """Help texts are plain sentences, but typer renders them as rich markup, where "[default: the model's]"
    reads as a tag and vanishes. Escaping the brackets once here, over every command of every sub-app, keeps
    the sentences as written (rich's own escape, so only what rich would read as a tag changes)."""
    from rich.markup import escape

    for param in getattr(command, "params", []):
        if getattr(param, "help", None):
            param.help = escape(param.help)
    for sub in getattr(command, "commands", {}).values():
        _escape_help(sub)


def parse_list(text: str, option: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        fail(f"{option} needs a comma-separated list, got {text!r}.")
    return items


def parse_ints(text: str, option: str) -> list[int]:
    try:
        values = [int(t) for t in parse_list(text, option)]
    except ValueError:
        fail(f"{option} needs comma-separated whole numbers, got {text!r}.")
    if any(v < 1 for v in values):
        fail(f"{option} needs numbers of at least 1, got {text!r}.")
    return values
