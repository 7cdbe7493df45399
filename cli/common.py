"""What every command shares: the consoles, the one way a command fails, and the one place where the
library's bad-input errors become that failure."""

from __future__ import annotations

import typer
from rich.console import Console
from typer.core import TyperGroup

from revsnn.errors import RevsnnError

console = Console()
err = Console(stderr=True, soft_wrap=True)  # one sentence stays one line, however narrow the terminal


def fail(message: str, code: int = 2) -> None:
    """One clear sentence on stderr and a non-zero exit code: how every bad input ends."""
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


class RevsnnGroup(TyperGroup):
    """The app's command group. Every command (sub-apps' too: they run inside this ``invoke``) is called
    here, and every :class:`revsnn.errors.RevsnnError` it raises (a bad file, a model a target cannot
    express, a bad option the library checks) ends as its one sentence on stderr and exit code 2, never a
    traceback. Anything else is a bug and keeps its traceback."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _escape_help(self)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RevsnnError as exc:
            fail(str(exc))


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
