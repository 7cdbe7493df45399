"""The one root of every error revsnn raises on bad input (a file, an option, a model it cannot express).

Each subclass's message is one sentence that names the problem and the fix; the CLI catches ``RevsnnError``
in one place and prints that sentence (exit code 2). It derives from ``ValueError`` so that callers that
caught the older per-module errors as ``ValueError`` keep working.
"""

from __future__ import annotations

__all__ = ["RevsnnError"]


class RevsnnError(ValueError):
    """Bad input to revsnn; ``str(exc)`` is one sentence for the user."""
