"""`gallery model set-path`: where a store's model file is now (checked by sha256, remembered)."""

from __future__ import annotations

from pathlib import Path

import typer

import gallery
from cli.common import STORE_ARG, emit, handle_errors

model_app = typer.Typer(help="The model files a store's versions were made with.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")


@model_app.command("set-path")
@handle_errors
def set_path_cmd(
    store: Path = STORE_ARG,
    version: str = typer.Argument(..., help="Model version (or alias)."),
    path: Path = typer.Argument(..., help="Where that model's file is now."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Record where VERSION's file is now (refused unless it is that model by sha256)."""
    with gallery.open(store) as g:
        result = g.set_model_path(version, path)
    emit(as_json, result, f"model {result['model']} of {store}: {result['path']}")
