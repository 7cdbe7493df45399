"""The typer command-line interface (console script `revsnn`)."""
