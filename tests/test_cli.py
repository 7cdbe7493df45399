"""The command line as a user sees it: help, version, the installation check."""

from typer.testing import CliRunner

import revsnn
from revsnn.cli.main import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"revsnn {revsnn.__version__}"


def test_help_on_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in app.registered_commands:
        name = command.name or command.callback.__name__
        sub = runner.invoke(app, [name, "--help"])
        assert sub.exit_code == 0, name
        assert "Usage" in sub.output


def test_help_keeps_bracketed_defaults():
    # rich reads "[default: ...]" as a markup tag; the sentences must reach the user as written
    for args, phrase in ((["bench", "cifar-digits", "--help"], "[default: the model's]"),
                         (["export", "nir", "--help"], "[default: the file's own"),
                         (["train", "--help"], "[default: the preset's, else the model's]")):
        result = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 0, args
        assert phrase in " ".join(result.output.split()), (args, result.output)


def test_check_passes_without_lava():
    result = runner.invoke(app, ["check", "--no-lava"])
    assert result.exit_code == 0, result.output
    assert "All checks passed." in result.output
    assert "reversible (bytes)" in result.output


def test_unknown_option_is_one_clear_error():
    result = runner.invoke(app, ["check", "--frobnicate"])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
