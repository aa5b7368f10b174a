"""Face commands: declare a third-party encoder's preprocessing, import a dlib gallery."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from cli.common import STORE_OPTION, console, emit_json, handle_errors, render_table, split_store
from gallery.errors import BadInput


def register(app: typer.Typer) -> None:
    app.command("import-encoder")(import_encoder_cmd)
    app.command("import-dlib")(import_dlib_cmd)


def _floats(text: Optional[str], what: str) -> Optional[tuple[float, ...]]:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise BadInput(f"{what} must be comma-separated numbers, got {text!r}") from None


def _size(text: Optional[str]) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        height, width = (int(p) for p in parts) if len(parts) == 2 else (int(parts[0]),) * 2
    except ValueError:
        raise BadInput(f"--size must be HxW or N, got {text!r}") from None
    if height <= 0 or width <= 0:
        raise BadInput(f"--size must be positive, got {text!r}")
    return height, width


@handle_errors
def import_encoder_cmd(
    model: Path = typer.Argument(..., help="Third-party ONNX image encoder (left untouched)."),
    preset: str = typer.Option(..., "--preset", help="arcface | sface | raw"),
    out: Path = typer.Option(..., "--out", help="Where to write the declared copy (.onnx)."),
    name: Optional[str] = typer.Option(None, "--name", help="Architecture name to record."),
    size: Optional[str] = typer.Option(None, "--size", help="Input HxW (raw preset, dynamic sizes)."),
    color_order: Optional[str] = typer.Option(None, "--color-order", help="RGB | BGR | GRAY override."),
    mean: Optional[str] = typer.Option(None, "--mean", help="Per-channel mean override, e.g. 127.5,127.5,127.5"),
    std: Optional[str] = typer.Option(None, "--std", help="Per-channel std override."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Record an ONNX face encoder's input size, colour order, mean/std and dim in its metadata."""
    from gallery.faces.presets import import_encoder

    overrides: dict[str, Any] = {}
    for key, value in (("size", _size(size)), ("color_order", color_order),
                       ("mean", _floats(mean, "--mean")), ("std", _floats(std, "--std"))):
        if value is not None:
            overrides[key] = value
    result = import_encoder(model, preset, out, name=name, overrides=overrides, overwrite=force)
    if as_json:
        emit_json(result)
        return
    spec = result["preprocess"]
    render_table(f"imported {model.name} as {preset}", ["field", "value"], [
        ("out", result["out"]), ("dim", result["dim"]),
        ("input", f"{spec['height']}x{spec['width']} {spec['color_order']}"),
        ("mean / std", f"{spec['mean']} / {spec['std']}"), ("alignment", result["alignment"]),
        ("batch", result["batch"]), ("model_id", result["model_id"][:16]), ("sha256", result["sha256"][:16]),
    ])


@handle_errors
def import_dlib_cmd(
    args: List[str] = typer.Argument(..., metavar="[STORE] ENCODINGS",
                                     help="Store to create (default: $GALLERY_STORE); dlib/face_recognition "
                                          "128-d encodings: .npy, .csv or .h5"),
    store: Optional[Path] = STORE_OPTION,
    ids: Optional[Path] = typer.Option(None, "--ids", help="For .npy: CSV with id,label per row."),
    version: str = typer.Option("dlib-v1", "--model-version", "--version", help="Model version name in the store."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Create a store from a face_recognition/dlib gallery, recorded as model dlib-resnet-v1."""
    from gallery.faces.dlib import import_dlib

    path, (encodings,) = split_store(args, store, ("ENCODINGS",))
    result = import_dlib(Path(encodings), path, ids=ids, version=version)
    if as_json:
        emit_json(result)
        return
    console.print(f"imported {result['items']} dlib encodings of {result['identities']} identities "
                  f"into {result['store']} as version {result['version']} ({result['model_id']})")
