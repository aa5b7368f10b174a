"""`gallery data ...`: build the real benchmark datasets (glyph identities, Fashion-MNIST)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from cli.common import console, emit_json, handle_errors, render_table
from gallery.errors import BadInput

data_app = typer.Typer(help="Build benchmark datasets (ImageFolder + HDF5, old/new/eval splits).",
                       no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


def _names(text: Optional[str]) -> Optional[list[str]]:
    return None if text is None else [s.strip() for s in text.split(",") if s.strip()]


def _run_with_progress(build, config, total: int, quiet: bool) -> dict:
    if quiet:
        return build(config)
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("rendering + writing", total=total)
        return build(config, progress=lambda n: bar.advance(task, n))


def _render_result(manifest: dict, out: Path, as_json: bool) -> None:
    if as_json:
        emit_json({"out": str(out), **manifest})
        return
    rows = [(scenario, part, e["identities"], e["images"], e.get("imagefolder", ""), e.get("hdf5", ""))
            for scenario, parts in sorted(manifest["splits"].items()) for part, e in parts.items()]
    render_table(f"{manifest['builder']} dataset in {out}",
                 ("scenario", "part", "identities", "images", "imagefolder", "hdf5"), rows)


@data_app.command("glyphs")
@handle_errors
def glyphs_cmd(
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (must be empty unless --overwrite)."),
    identities: int = typer.Option(1000, "--identities", help="Total identities (characters), old+new+eval."),
    per_identity: int = typer.Option(24, "--per-identity", help="Training images per identity."),
    eval_per_identity: int = typer.Option(10, "--eval-per-identity", help="Images per eval identity."),
    image_size: int = typer.Option(32, "--image-size", help="Square image size (32 for CPU, 112 for GPU)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the identity split and every rendering."),
    eval_fraction: float = typer.Option(0.2, "--eval-fraction", help="Share of identities kept for eval."),
    old_fraction: float = typer.Option(0.3, "--old-fraction", help="open-class: share of training identities for the old model."),
    open_data_old_fraction: float = typer.Option(0.3, "--open-data-old-fraction", help="open-data: share of each identity's images for the old model."),
    faces: Optional[str] = typer.Option(None, "--faces", help="Comma-separated font designs to use (default: all installed)."),
    holdout_faces: Optional[str] = typer.Option(None, "--holdout-faces", help="Designs used only in eval (default: AR PL UKai,IPAMincho; '' for none)."),
    scenarios: str = typer.Option("open-class,open-data", "--scenarios", help="open-class and/or open-data."),
    formats: str = typer.Option("imagefolder,hdf5", "--formats", help="imagefolder and/or hdf5."),
    workers: int = typer.Option(1, "--workers", help="Rendering processes (output is identical for any count)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    list_faces: bool = typer.Option(False, "--list-faces", help="Only list the installed font designs and exit."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Characters as identities, rendered from the installed CJK fonts with appearance variation."""
    from gallery.datasets.glyphs import GlyphConfig, build_glyphs
    from gallery.datasets.splits import parse_scenarios

    if list_faces:
        return _list_faces(as_json)
    if out is None:
        raise BadInput("--out is required (the folder to write the dataset to)")
    config = GlyphConfig(
        out=str(out), identities=identities, per_identity=per_identity, eval_per_identity=eval_per_identity,
        image_size=image_size, seed=seed, eval_fraction=eval_fraction, old_fraction=old_fraction,
        open_data_old_fraction=open_data_old_fraction, faces=_names(faces), holdout_faces=_names(holdout_faces),
        scenarios=parse_scenarios(scenarios), formats=tuple(_names(formats) or ()), workers=workers,
        overwrite=overwrite,
    )
    n_eval = round(eval_fraction * identities)
    total = (identities - n_eval) * per_identity + n_eval * eval_per_identity
    total += sum(identities * per_identity for _ in config.scenarios) if "imagefolder" in formats else 0
    manifest = _run_with_progress(build_glyphs, config, total, quiet or as_json)
    _render_result(manifest, out, as_json)


def _list_faces(as_json: bool) -> None:
    from gallery.datasets.fonts import discover_faces, one_face_per_design

    faces = one_face_per_design(discover_faces())
    if as_json:
        emit_json([f.to_dict() for f in faces])
    else:
        render_table("installed CJK font designs (one face each)", ("design", "family", "file", "index"),
                     [(f.design, f.family, f.path, f.index) for f in faces])


@data_app.command("fashion-mnist")
@handle_errors
def fashion_cmd(
    out: Path = typer.Option(..., "--out", help="Output folder (must be empty unless --overwrite)."),
    root: Path = typer.Option(Path("/usr/share/datasets/fashion-mnist"), "--root", help="Folder with the IDX files."),
    image_size: int = typer.Option(32, "--image-size", help="Square image size (native 28)."),
    per_class: Optional[int] = typer.Option(None, "--per-class", help="Cap training images per class (default all)."),
    eval_per_class: Optional[int] = typer.Option(None, "--eval-per-class", help="Cap t10k images per class (default all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the splits and caps."),
    old_fraction: float = typer.Option(0.3, "--old-fraction", help="Share of images (open-data) or classes (open-class) for old."),
    eval_classes: int = typer.Option(2, "--eval-classes", help="open-class: classes kept for eval."),
    scenarios: str = typer.Option("open-data", "--scenarios", help="open-data and/or open-class."),
    formats: str = typer.Option("imagefolder,hdf5", "--formats", help="imagefolder and/or hdf5."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Fashion-MNIST (Debian dataset-fashion-mnist) in the same old/new/eval layout."""
    from gallery.datasets.fashion_mnist import FashionConfig, build_fashion_mnist
    from gallery.datasets.splits import parse_scenarios

    config = FashionConfig(
        out=str(out), root=str(root), image_size=image_size, per_class=per_class,
        eval_per_class=eval_per_class, seed=seed, old_fraction=old_fraction, eval_classes=eval_classes,
        scenarios=parse_scenarios(scenarios), formats=tuple(_names(formats) or ()), overwrite=overwrite,
    )
    n_sc = len(config.scenarios)
    total = n_sc * (10 * (per_class or 6000) + 10 * (eval_per_class or 1000)) if "imagefolder" in formats else 0
    manifest = _run_with_progress(build_fashion_mnist, config, max(total, 1), quiet or as_json)
    _render_result(manifest, out, as_json)
