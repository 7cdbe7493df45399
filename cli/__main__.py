"""``python -m revsnn.cli``: the ``revsnn`` command (what torchrun runs with ``-m revsnn.cli``)."""

from revsnn.cli.main import app

if __name__ == "__main__":
    app(prog_name="revsnn")
