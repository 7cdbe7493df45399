"""The ``revsnn`` command line. It parses options, calls one function, and prints: no logic lives here."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import time

import typer
from rich.console import Console
from rich.table import Table

import revsnn

app = typer.Typer(
    name="revsnn",
    help="Train reversible spiking neural networks and deploy them to NIR, ONNX and Lava (Loihi 2).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

# Distribution names of what the toolchain runs on, in the order a user thinks of them.
_PACKAGES = ["torch", "numpy", "nir", "nirtorch", "norse", "onnx", "onnxruntime", "lava-nc", "lava-dl", "h5py",
             "scikit-learn", "matplotlib", "typer", "rich"]


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"revsnn {revsnn.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.",
                                 callback=_version_callback, is_eager=True),
) -> None:
    """Train reversible spiking neural networks and deploy them to NIR, ONNX and Lava (Loihi 2)."""


def _installed_versions() -> list[tuple[str, str]]:
    rows = []
    for name in _PACKAGES:
        try:
            rows.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            rows.append((name, "missing"))
    return rows


@app.command()
def check(
    lava: bool = typer.Option(True, help="Also import Lava through revsnn's compatibility layer."),
) -> None:
    """Check the installation: print versions, import Lava, and train a tiny reversible network one step.

    The tiny network (4 reversible blocks, LIF and IF neurons, both couplings) runs forward and backward beside its plain-autograd twin: outputs and gradients must agree, and its retained activation memory must stay flat as blocks are added while the twin's grows.
    """
    versions = Table(title="Installed", show_header=True, header_style="bold")
    versions.add_column("package")
    versions.add_column("version")
    missing = []
    for name, ver in _installed_versions():
        versions.add_row(name, ver if ver != "missing" else "[red]missing[/red]")
        if ver == "missing":
            missing.append(name)
    console.print(f"revsnn {revsnn.__version__}")
    console.print(versions)

    ok = not missing
    if lava:
        t0 = time.perf_counter()
        try:
            # lava-dl prints a notice about an optional dataset toolbox on import; it is not ours to show.
            with contextlib.redirect_stdout(io.StringIO()):
                from revsnn.targets import lava as lava_target  # noqa: F401  (installs the compat layer)
                import lava.lib.dl.netx  # noqa: F401
            console.print(f"Lava imports through the compatibility layer ({time.perf_counter() - t0:.1f} s).")
        except Exception as exc:  # report any import failure as one sentence, never a traceback
            err.print(f"[red]Lava does not import: {type(exc).__name__}: {exc}. Re-run scripts/setup.sh.[/red]")
            ok = False

    from revsnn.selfcheck import run_selfcheck

    with console.status("Running a tiny reversible network beside its plain twin..."):
        result = run_selfcheck()
    console.print(f"Tiny reversible network: outputs equal the twin's: {result.outputs_equal}; "
                  f"max |gradient difference| {result.max_grad_diff:.1e}; {result.spikes} spikes.")
    mem = Table(title="Activation memory retained for backward (float64, T=4, batch 2)", header_style="bold")
    mem.add_column("blocks", justify="right")
    mem.add_column("reversible (bytes)", justify="right")
    mem.add_column("plain twin (bytes)", justify="right")
    for row in result.memory:
        mem.add_row(str(row.blocks), f"{row.reversible_bytes:,}", f"{row.plain_bytes:,}")
    console.print(mem)
    ok = ok and result.ok
    if missing:
        err.print(f"[red]Missing packages: {', '.join(missing)}. Run scripts/setup.sh.[/red]")
    if not ok:
        err.print("[red]The check failed.[/red]")
        raise typer.Exit(1)
    console.print("[green]All checks passed.[/green]")


if __name__ == "__main__":
    app()
