"""`gallery model set-path`: where a store's model file is now (checked by sha256, remembered)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

import gallery
from cli.common import JSON_FLAG, STORE_OPTION, emit, handle_errors, split_store

model_app = typer.Typer(help="The model files a store's versions were made with.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")


@model_app.command("set-path")
@handle_errors
def set_path_cmd(
    args: List[str] = typer.Argument(..., metavar="[STORE] VERSION PATH",
                                     help="Store (default: $GALLERY_STORE), model version (or alias), "
                                          "where that model's file is now."),
    store: Optional[Path] = STORE_OPTION,
    as_json: bool = JSON_FLAG,
) -> None:
    """Record where VERSION's file is now (refused unless it is that model by sha256)."""
    target, (version, path) = split_store(args, store, ("VERSION", "PATH"))
    with gallery.open(target) as g:
        result = g.set_model_path(version, Path(path))
    emit(as_json, result, f"model {result['model']} of {target}: {result['path']}")
