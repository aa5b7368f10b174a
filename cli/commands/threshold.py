"""`gallery threshold calibrate|show|set`: the open-set thresholds of every model pair a store serves."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

import gallery
from cli.common import (DETECT, DETECTOR, JSON_FLAG, STORE_ARG, STORE_OPTION, console, emit_json, err_console,
                        handle_errors, progress_bar, render_table, split_store)
from gallery.errors import BadInput

JSON = JSON_FLAG
STORE = STORE_ARG

threshold_app = typer.Typer(help="Open-set thresholds per (query model, row model) pair.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(threshold_app, name="threshold")


def warn_uncalibrated(pairs: list[str], store: Path | str) -> None:
    """The one line init/upgrade/rollback/search print when a served pair has no threshold."""
    if pairs:
        err_console.print(f"[yellow]warning:[/] uncalibrated model pair(s) {', '.join(pairs)}: search never "
                          f"accepts their hits; run `gallery threshold calibrate {store} --data EVAL`",
                          highlight=False, soft_wrap=True)


@threshold_app.command("calibrate")
@handle_errors
def calibrate_cmd(
    store: Path = STORE,
    data: Optional[Path] = typer.Option(None, "--data", help="Labelled images ROOT/<identity>/<image> (as check-compat)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Take the thresholds from a check-compat report instead."),
    target_far: float = typer.Option(1e-4, "--target-far", help="False accept rate of the thresholds."),
    impostor_pairs: int = typer.Option(100_000, "--impostor-pairs", help="Impostor pairs to sample (as check-compat)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the impostor sampling (as check-compat)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per encoder batch."),
    detect: Optional[bool] = DETECT,
    detector: Optional[Path] = DETECTOR,
    as_json: bool = JSON,
) -> None:
    """Calibrate every (query model, row model) pair the store serves."""
    with gallery.open(store) as g, progress_bar("embedding evaluation images", as_json) as (_, advance):
        result = g.calibrate(data=data, report=report, target_far=target_far, impostor_pairs=impostor_pairs,
                             seed=seed, batch_size=batch_size, progress=advance, detect=detect, detector=detector)
    if as_json:
        emit_json(result)
        return
    for e in result["calibrated"]:
        note = "" if e.get("supported", True) is not False else " (too few impostor pairs for this FAR)"
        console.print(f"threshold {e['query']} queries vs {e['rows']} rows: {e['threshold']:.4f}{note}")
    for line in result["skipped"]:
        console.print(f"  [yellow]skipped:[/] {line}")
    warn_uncalibrated(result["uncalibrated"], store)


@threshold_app.command("show")
@handle_errors
def show_cmd(store: Path = STORE, as_json: bool = JSON) -> None:
    """Every served pair and its threshold (uncalibrated ones too)."""
    with gallery.open(store) as g:
        result = g.thresholds()
    if as_json:
        emit_json(result)
        return
    render_table(f"thresholds of {store} (query model {result['active_model']})",
                 ("query model", "row model", "threshold", "at FAR", "served"),
                 [(p["query"], p["rows"], "uncalibrated" if p["threshold"] is None else p["threshold"],
                   "" if p["far"] is None else f"{p['far']:g}", p["served"]) for p in result["pairs"]])
    warn_uncalibrated(result["uncalibrated"], store)


@threshold_app.command("set")
@handle_errors
def set_cmd(
    args: List[str] = typer.Argument(..., metavar="[STORE] QUERY ROWS VALUE",
                                     help="Store (default: $GALLERY_STORE), query model version (or alias), "
                                          "row model version (or alias), cosine score threshold in [-1, 1]."),
    store: Optional[Path] = STORE_OPTION,
    as_json: bool = JSON,
) -> None:
    """Set the threshold of one (query model, row model) pair by hand."""
    path, (query, rows, text) = split_store(args, store, ("QUERY", "ROWS", "VALUE"))
    try:
        value = float(text)
    except ValueError:
        raise BadInput(f"threshold must be a number (a cosine score in [-1, 1]), got {text!r}") from None
    with gallery.open(path) as g:
        result = g.set_threshold(query, rows, value)
    if as_json:
        emit_json(result)
        return
    console.print(f"threshold {result['query']} queries vs {result['rows']} rows: {result['threshold']:.4f}")
    warn_uncalibrated(result["uncalibrated"], path)
