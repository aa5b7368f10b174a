"""`gallery check-compat`: may v2 queries search the v1 gallery? Exit 0 pass, 1 gate failed, 2 bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer
from rich.table import Table

import gallery
from cli.common import DETECT, DETECTOR, console, emit_json, err_console, handle_errors, progress_bar
from gallery.errors import BadInput


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


SHORT = {"reference/reference": "ref/ref"}


def _render(report: dict) -> None:
    table = Table(title=f"compatibility (headline: {report['headline']['metric']})")
    for column in ("pair", "TAR@1e-4", "TAR@1e-3", "AUC", "rank-1", "rank-5", "mAP", "headline"):
        table.add_column(column, no_wrap=True)
    for name, comp in report["comparisons"].items():
        ver, ident = comp.get("verification", {}), comp.get("identification", {})
        tars = {p["far"]: p["tar"] for p in ver.get("tar_at_far", [])}
        table.add_row(SHORT.get(name, name), _fmt(tars.get(1e-4)), _fmt(tars.get(1e-3)), _fmt(ver.get("auc")),
                      _fmt(ident.get("rank1")), _fmt(ident.get("rank5")),
                      _fmt(comp.get("retrieval", {}).get("map")), _fmt(report["headline"]["values"][name]))
    if any("identification_by_gallery" in c for c in report["comparisons"].values()):
        table.caption = "rank-1, rank-5 and mAP here enrol every gallery together; per gallery below"
    console.print(table)
    _render_by_gallery(report)
    crit = report["criterion"]
    verdict = "[green]holds[/]" if crit["passed"] else "[red]fails[/]"
    console.print(f"criterion {crit.get('comparison', 'new->old')} > old/old: {verdict} "
                  f"({crit['new_to_old']:.4f} vs {crit['old_old']:.4f})")
    if report.get("gain"):
        gain = report["gain"]
        console.print(f"update gain: {_fmt(gain['value'])}" + (f" ({gain['note']})" if gain["note"] else ""))
    skipped = report["comparisons"]["old/old"].get("verification", {}).get("skipped_far")
    if skipped:
        console.print(f"FARs skipped (too few impostor pairs): {', '.join(f'{f:g}' for f in skipped)}")
    for entry in report["thresholds"]:
        console.print(f"threshold {entry['query']}->{entry['gallery']} at FAR {entry['far']:g}: "
                      f"{entry['threshold']:.4f}" + ("" if entry["supported"] else " (FAR not supported)"))
    for gate in report["gates"]:
        mark = "[green]pass[/]" if gate["passed"] else "[red]FAIL[/]"
        console.print(f"gate {gate['name']}: {mark} - {gate['detail']}")


def _render_by_gallery(report: dict) -> None:
    """IJB-C: each gallery searched separately by the mixed probes, and their mean (the headline)."""
    comparisons = {n: c["identification_by_gallery"] for n, c in report["comparisons"].items()
                   if "identification_by_gallery" in c}
    if not comparisons:
        return
    fpirs = (1e-2, 1e-1)
    table = Table(title="1:N per gallery (the mixed probes search each gallery; the headline is the mean)")
    for column in ("pair", "gallery", "rank-1", "rank-5", "rank-10", *(f"TPIR@FPIR={f:g}" for f in fpirs)):
        table.add_column(column, no_wrap=True)
    for name, by_gallery in comparisons.items():
        for part, ident in [*by_gallery["galleries"].items(), ("mean", by_gallery["mean"])]:
            tpir = {p["fpir"]: p["tpir"] for p in ident["tpir_at_fpir"]}
            table.add_row(SHORT.get(name, name), part, _fmt(ident["rank1"]), _fmt(ident["rank5"]),
                          _fmt(ident["rank10"]), *(_fmt(tpir.get(f)) for f in fpirs))
    console.print(table)


def check_compat(
    old: Annotated[Optional[Path], typer.Option("--old", help="Old (v1) encoder: .onnx or .pt.")] = None,
    new: Annotated[Optional[Path], typer.Option("--new", help="New (v2) encoder: .onnx or .pt.")] = None,
    data: Annotated[Optional[Path], typer.Option(
        "--data", help="Identity folder, insightface FILE.bin, or IJB-C folder.")] = None,
    embeddings: Annotated[Optional[Path], typer.Option(
        "--embeddings", help="Precomputed embeddings of both models (HDF5; see docs/report-schema.md).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON report (instead of the tables).")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the JSON report here ('-' = stdout).")] = None,
    legacy: Annotated[Optional[List[str]], typer.Argument(hidden=True, metavar="")] = None,
    reference: Annotated[Optional[Path], typer.Option(
        "--reference", help="Independent new model: enables the update gain.")] = None,
    target_far: Annotated[float, typer.Option("--target-far", help="FAR of the calibrated thresholds.")] = 1e-4,
    min_gain: Annotated[Optional[float], typer.Option("--min-gain", help="Gate: update gain >= G.")] = None,
    max_new_drop: Annotated[Optional[float], typer.Option(
        "--max-new-drop", help="Gate: (reference or old) - new/new headline <= D.")] = None,
    require_criterion: Annotated[bool, typer.Option(
        "--require-criterion", help="Gate: new->old must beat old/old.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write ROC + CMC curves (PNG).")] = None,
    old_to_new: Annotated[bool, typer.Option("--old-to-new", help="Also score old queries vs new gallery.")] = False,
    headline: Annotated[str, typer.Option("--headline", help="auto | rank1 | tar.")] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Seed of impostor sampling and 1:N split.")] = 0,
    impostor_pairs: Annotated[int, typer.Option("--impostor-pairs", help="Impostor pairs to sample.")] = 100_000,
    distractor_fraction: Annotated[float, typer.Option(
        "--distractor-fraction", help="Share of identities never enrolled (open-set).")] = 0.2,
    gallery_per_identity: Annotated[int, typer.Option(
        "--gallery-per-identity", help="Images enrolled per identity.")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Embedding batch size.")] = 64,
    save_embeddings: Annotated[Optional[Path], typer.Option(
        "--save-embeddings", help="Write the extracted embeddings (HDF5) for later --embeddings runs.")] = None,
    adapter: Annotated[Optional[Path], typer.Option(
        "--adapter", help="Adapter h: old -> new space (gallery train-adapter): scores new->h(old), "
                          "which the criterion and gates then judge.")] = None,
    sign_key: Annotated[Optional[Path], typer.Option(
        "--sign-key", help="Key file: add an HMAC-SHA256 signature (upgrade --require-signed checks it).")] = None,
    detect: Optional[bool] = DETECT,
    detector: Optional[Path] = DETECTOR,
    on_error: Annotated[str, typer.Option(
        "--on-error", help="A photo without a face (face models): skip (left out for every model, listed in "
                           "the report) | fail.")] = "skip",
) -> None:
    """Check that new-model queries can search the old model's gallery; exit 1 when a gate fails."""
    json_out = _report_path(as_json, out, legacy)
    as_json = json_out is not None and str(json_out) == "-"
    with progress_bar("embed", as_json) as (on_total, advance):
        result = gallery.check_compat(
            old, new, data=data, embeddings=embeddings, reference=reference,
            report=None if as_json else json_out, plot=plot, progress=advance, on_total=on_total,
            target_far=target_far, min_gain=min_gain, max_new_drop=max_new_drop,
            require_criterion=require_criterion, old_to_new=old_to_new, headline=headline, seed=seed,
            impostor_pairs=impostor_pairs, distractor_fraction=distractor_fraction,
            gallery_per_identity=gallery_per_identity, batch_size=batch_size,
            save_embeddings=None if save_embeddings is None else str(save_embeddings),
            adapter=None if adapter is None else str(adapter),
            sign_key=None if sign_key is None else str(sign_key), detect=detect,
            detector=None if detector is None else str(detector), on_error=on_error)
    errors, left_out = result.report["data"].get("item_errors", []), result.report["data"].get("left_out", 0)
    if left_out:
        err_console.print(f"[yellow]warning:[/] {left_out} evaluation image(s) left out for every model "
                          f"(first: {errors[0]['item']}: {errors[0]['error']})", highlight=False, soft_wrap=True)
    if as_json:
        emit_json(result.report)
    else:
        _render(result.report)
    result.raise_if_failed()


def _report_path(as_json: bool, out: Optional[Path], legacy: Optional[List[str]]) -> Optional[Path]:
    """--out PATH; --json prints to stdout; `--json PATH` (the older spelling) works with a warning."""
    if legacy:
        if not as_json or len(legacy) != 1 or out is not None:
            raise BadInput(f"unexpected argument {legacy[0]!r} (the report file is given with --out PATH)")
        err_console.print("[yellow]warning:[/] `--json PATH` is deprecated: use `--out PATH` "
                          "(`--json` alone prints the report)", highlight=False, soft_wrap=True)
        return Path(legacy[0])
    if as_json:
        if out is not None and str(out) != "-":
            raise BadInput("give --json (print the report) or --out PATH, not both")
        return Path("-")
    return out


def register(app: typer.Typer) -> None:
    app.command("check-compat")(handle_errors(check_compat))
