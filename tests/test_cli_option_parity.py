"""`gallery train-compatible` takes every option of `gallery train` (issue #9's promise)."""

import typer.main

from cli.main import app


def _options(name: str) -> set[str]:
    command = typer.main.get_command(app).commands[name]
    return {opt for param in command.params for opt in param.opts if opt.startswith("--")}


def test_train_compatible_accepts_every_train_option():
    missing = _options("train") - _options("train-compatible")
    assert not missing, f"train-compatible lacks: {sorted(missing)}"


def test_method_options_exist_on_train_compatible():
    assert {"--old", "--old-features", "--method", "--l2-weight", "--tau", "--bct-scale",
            "--bct-variant", "--mix-ratio", "--credible-t"} <= _options("train-compatible")
