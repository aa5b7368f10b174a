"""`gallery export`: a store -> plain .h5/.npz of its live rows; a .pt model -> ONNX.

Aliases `export-store` and `export-model` name the two cases explicitly.
"""

from __future__ import annotations

from pathlib import Path

import typer

import gallery
from cli.common import JSON_FLAG, console, emit_json, handle_errors, progress_bar
from gallery.errors import BadInput

JSON = JSON_FLAG
TORCH_SUFFIXES = (".pt", ".pth", ".ts")  # model files trainer.export turns into ONNX


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
    app.command("export-store")(export_store_cmd)
    app.command("export-model")(export_model_cmd)


def _export_store(source: Path, out: Path, as_json: bool) -> dict:
    with gallery.open(source) as g, progress_bar("export rows", as_json) as (on_total, advance):
        return {"kind": "store", **g.export(out, progress=advance, on_total=on_total)}


def _export_model(source: Path, out: Path) -> dict:
    if out.suffix.lower() != ".onnx":
        raise BadInput(f"model export target must end in .onnx: {out}")
    try:
        from trainer.export import export_onnx
    except ImportError as exc:
        raise BadInput(f"exporting a .pt model needs the [train] extra (torch, onnx): {exc}") from None
    return {"kind": "model", "source": str(source), **export_onnx(source, out)}


def _render(result: dict, as_json: bool) -> None:
    if as_json:
        emit_json(result)
    elif result["kind"] == "store":
        console.print(f"exported {result['rows']} live rows (dim {result['dim']}) to {result['out']}")
    else:
        console.print(f"exported {result['source']} to ONNX")


@handle_errors
def export_cmd(
    source: Path = typer.Argument(..., envvar="GALLERY_STORE", show_envvar=False,
                                  help="A gallery store (directory) or a .pt model (default: $GALLERY_STORE)."),
    out: Path = typer.Option(..., "--out", help="Store: FILE.h5 or FILE.npz. Model: FILE.onnx."),
    as_json: bool = JSON,
) -> None:
    """Export a store's live rows, or a trained .pt model to ONNX (chosen by the input)."""
    if not source.exists():
        raise BadInput(f"not found: {source}")
    if source.suffix.lower() in TORCH_SUFFIXES:
        _render(_export_model(source, out), as_json)
    else:
        _render(_export_store(source, out, as_json), as_json)


@handle_errors
def export_store_cmd(
    source: Path = typer.Argument(..., envvar="GALLERY_STORE", show_envvar=False,
                                  help="Gallery store (default: $GALLERY_STORE)."),
    out: Path = typer.Option(..., "--out", help="FILE.h5 or FILE.npz."),
    as_json: bool = JSON,
) -> None:
    """Export a store's live rows (embeddings, ids, identities, model versions)."""
    _render(_export_store(source, out, as_json), as_json)


@handle_errors
def export_model_cmd(
    source: Path = typer.Argument(..., help="Trained .pt model."),
    out: Path = typer.Option(..., "--out", help="FILE.onnx."),
    as_json: bool = JSON,
) -> None:
    """Export a trained .pt model to ONNX (needs torch)."""
    if not source.is_file():
        raise BadInput(f"not found: {source}")
    _render(_export_model(source, out), as_json)
