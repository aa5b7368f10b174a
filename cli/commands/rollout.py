"""Rollout commands: upgrade, alias, rollback, history, prune, shadow, backfill.

Each calls one method of gallery.Gallery. Exit codes: 0 done, 1 a gate refused the
upgrade, 2 bad input, 3 store locked.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

import gallery
from cli.commands.threshold import warn_uncalibrated
from cli.common import (DETECT, DETECTOR, JSON_FLAG, STORE_ARG, STORE_OPTION, console, emit, emit_json, handle_errors, progress_bar,
                        render_table, split_store)
from gallery.errors import BadInput

JSON = JSON_FLAG
ALLOW_MISSING_MODEL = typer.Option(False, "--allow-missing-model", help="Switch even if the target model's file is "
                                   "missing or another model (embedding queries only).")

alias_app = typer.Typer(help="Name model versions (aliases pin models against prune).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    for name, func in (("upgrade", upgrade_cmd), ("rollback", rollback_cmd), ("history", history_cmd),
                       ("prune", prune_cmd), ("shadow", shadow_cmd), ("backfill", backfill_cmd)):
        app.command(name)(func)
    app.add_typer(alias_app, name="alias")


@handle_errors
def upgrade_cmd(
    store: Path = STORE_ARG,
    model: Path = typer.Option(..., "--model", help="New encoder (.onnx; .pt/.ts with torch)."),
    report: Path = typer.Option(..., "--report", help="check-compat JSON report for (store's query model, --model)."),
    version: Optional[str] = typer.Option(None, "--model-version", "--version", help="Name of the new version (default v<N>)."),
    force: bool = typer.Option(False, "--force", help="Upgrade despite a failed gate (recorded in history)."),
    stage: bool = typer.Option(False, "--stage", help="Register and calibrate only; switch later (shadow it first)."),
    sign_key: Optional[Path] = typer.Option(None, "--sign-key", help="Key file: check the report's HMAC signature."),
    require_signed: bool = typer.Option(False, "--require-signed", help="Refuse a report not signed with --sign-key."),
    allow_missing_model: bool = ALLOW_MISSING_MODEL,
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="Adapter from train-adapter: map the old rows into "
                                           "--model's space first (killable; rerun to resume)."),
    batch_size: int = typer.Option(16_384, "--batch-size", help="With --adapter: rows mapped per commit."),
    as_json: bool = JSON,
) -> None:
    """Make --model the query model, admitted by a passing compatibility report."""
    with gallery.open(store) as g, progress_bar("adapting", as_json or adapter is None) as (on_total, advance):
        result = g.upgrade(model, report, version=version, force=force, stage=stage,
                           sign_key=sign_key, require_signed=require_signed,
                           allow_missing_model=allow_missing_model, adapter=adapter,
                           batch_size=batch_size, progress=advance, on_total=on_total)
    warn_uncalibrated(result["uncalibrated"], store)
    if as_json:
        emit_json(result)
        return
    forced = f" [red]FORCED over: {'; '.join(result['forced_over'])}[/]" if result["forced"] else ""
    verb = "staged" if stage else "upgraded"
    console.print(f"{verb} {store}: query model {result['from']} -> {result['to']}{forced}")
    if "adapter" in result:
        console.print(f"  {result['adapter']['rows']} {result['from']} rows mapped into {result['to']}'s space by "
                      f"adapter {Path(result['adapter']['path']).name}")
    for t in result["thresholds"]:
        console.print(f"  threshold {t['query']} queries vs {t['gallery']} rows: {t['threshold']:.4f}")
    if result["unsupported_far"]:
        console.print(f"  [yellow]warning:[/] too few impostor pairs in the report for its FAR: "
                      f"{', '.join(result['unsupported_far'])} (thresholds are optimistic)")


@handle_errors
def rollback_cmd(
    store: Path = STORE_ARG,
    to: Optional[str] = typer.Option(None, "--model-version", "--to", help="An earlier query model (default: the one replaced)."),
    allow_missing_model: bool = ALLOW_MISSING_MODEL,
    as_json: bool = JSON,
) -> None:
    """Restore the previous query model (one atomic switch; models and rows are kept)."""
    with gallery.open(store) as g:
        result = g.rollback(to, allow_missing_model=allow_missing_model)
    warn_uncalibrated(result["uncalibrated"], store)
    emit(as_json, result, f"rolled back {store}: query model {result['from']} -> {result['to']}")


@handle_errors
def history_cmd(
    store: Path = STORE_ARG,
    everything: bool = typer.Option(False, "--all", help="Also enrol/remove events."),
    as_json: bool = JSON,
) -> None:
    """Every upgrade, rollback, alias, backfill and prune: when, who, which report, what was forced."""
    with gallery.open(store) as g:
        events = g.history(everything)
    if as_json:
        emit_json(events)
        return
    rows = []
    for e in events:
        detail = {k: v for k, v in e.items() if k not in ("at", "event", "user", "host", "pid", "report",
                                                          "thresholds", "config")}
        if "report" in e:
            detail["report"] = f"{Path(e['report']['path']).name} (passed={e['report']['passed']})"
        rows.append((e.get("at"), e.get("event"), e.get("user", ""),
                     ", ".join(f"{k}={v}" for k, v in detail.items() if v not in (None, [], False))))
    render_table(f"history of {store}", ("at", "event", "who", "detail"), rows)


@handle_errors
def prune_cmd(
    store: Path = STORE_ARG,
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed."),
    drop_rollback: bool = typer.Option(False, "--drop-rollback", help="Also drop rollback targets without rows."),
    as_json: bool = JSON,
) -> None:
    """Remove model versions no row, alias, query model or rollback target needs."""
    with gallery.open(store) as g:
        result = g.prune(dry_run=dry_run, drop_rollback=drop_rollback)
    if as_json:
        emit_json(result)
        return
    verb = "would remove" if dry_run else "removed"
    console.print(f"{verb}: {', '.join(result['removed']) or 'nothing'}")
    for version, why in sorted(result["kept"].items()):
        console.print(f"  kept {version}: {why}")


@alias_app.command("set")
@handle_errors
def alias_set_cmd(
    args: List[str] = typer.Argument(..., metavar="[STORE] NAME VERSION", help="Store (default: $GALLERY_STORE), alias name, model version (or another alias)."),
    store: Optional[Path] = STORE_OPTION,
    as_json: bool = JSON,
) -> None:
    """Point NAME at VERSION."""
    path, (name, version) = split_store(args, store, ("NAME", "VERSION"))
    with gallery.open(path) as g:
        result = g.set_alias(name, version)
    emit_json(result) if as_json else console.print(f"{name} -> {result['model']}")


@alias_app.command("remove")
@handle_errors
def alias_remove_cmd(
    args: List[str] = typer.Argument(..., metavar="[STORE] NAME", help="Store (default: $GALLERY_STORE), alias name."),
    store: Optional[Path] = STORE_OPTION,
    as_json: bool = JSON,
) -> None:
    """Delete an alias."""
    path, (name,) = split_store(args, store, ("NAME",))
    with gallery.open(path) as g:
        result = g.set_alias(name, None)
    emit_json(result) if as_json else console.print(f"removed alias {name}")


@alias_app.command("list")
@handle_errors
def alias_list_cmd(
    args: Optional[List[str]] = typer.Argument(None, metavar="[STORE]", help="Store (default: $GALLERY_STORE)."),
    store: Optional[Path] = STORE_OPTION,
    as_json: bool = JSON,
) -> None:
    """Aliases and the versions they name."""
    path, _ = split_store(args or [], store, ())
    with gallery.open(path) as g:
        aliases = g.aliases
    if as_json:
        emit_json(aliases)
    else:
        render_table(f"aliases of {path}", ("alias", "version"), sorted(aliases.items()))


@handle_errors
def shadow_cmd(
    store: Path = STORE_ARG,
    queries: Path = typer.Option(..., "--queries", help="Query images: ROOT/<identity>/<image> (labelled) or a flat folder."),
    old: Optional[str] = typer.Option(None, "--old", help="Old query model (default: the one the query model replaced)."),
    new: Optional[str] = typer.Option(None, "--new", help="New query model (default: the query model)."),
    k: int = typer.Option(10, "--top-k", "-k", "--k", help="Hits per query."),
    old_model: Optional[Path] = typer.Option(None, "--old-model", help="Where the old model file is now."),
    new_model: Optional[Path] = typer.Option(None, "--new-model", help="Where the new model file is now."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the JSON report (with its config) here."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per encoder batch."),
    show: int = typer.Option(10, "--show", help="Queries listed with both decisions (the JSON has all)."),
    detect: Optional[bool] = DETECT,
    detector: Optional[Path] = DETECTOR,
    as_json: bool = JSON,
) -> None:
    """Same queries through the old and new query path: top-k overlap, rank changes, decision flips."""
    with gallery.open(store) as g, progress_bar("embedding queries", as_json) as (_, advance):
        result = g.shadow(queries, old=old, new=new, k=k, old_model=old_model, new_model=new_model,
                          batch_size=batch_size, progress=advance,
                          detect=detect, detector=detector)
    if out is not None:
        emit_json(result, out)
    if as_json:
        emit_json(result)
        return
    d, o = result["decisions"], result["topk_overlap"]
    console.print(f"shadow {result['old']} vs {result['new']} on {result['queries']} queries (k={result['k']}): "
                  f"top-k overlap {o['mean']:.3f} (min {o['min']:.2f}), same top-1 item "
                  f"{result['top1_same_item']:.3f}, mean rank shift {result['rank_shift']['mean']:.2f}")
    worse = f" (regressed {d['regressed']}, improved {d['improved']})" if "regressed" in d else ""
    console.print(f"accepted: {d['old_accepted']} -> {d['new_accepted']}; decisions changed {d['changed']}{worse}")
    if "accuracy" in result:
        a = result["accuracy"]
        console.print(f"rank-1: {a['old_rank1']:.3f} -> {a['new_rank1']:.3f}")
        o = result["outcomes"]
        render_table("open-set outcomes", ("outcome", result["old"], result["new"]),
                     [(name, o["old"][name], o["new"][name]) for name in ("correct", "wrong", "rejected")])
    shown = result["per_query"][:show]
    render_table(f"decisions side by side (first {len(shown)} of {result['queries']})",
                 ("query", "label", result["old"], result["new"]),
                 [(Path(q["query"]).name, q["label"], q["old"] or "(rejected)", q["new"] or "(rejected)")
                  for q in shown])


@handle_errors
def backfill_cmd(
    store: Path = STORE_ARG,
    images: Optional[Path] = typer.Option(None, "--images", help="ROOT: each row's image is ROOT/<item id>."),
    batch_size: int = typer.Option(64, "--batch-size", help="Rows per committed batch (fixed for a run)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Where the query model file is now."),
    trust_images: bool = typer.Option(False, "--trust-images", help="Skip the check that each image is the one enrolled."),
    publish_every: int = typer.Option(10_000, "--publish-every", help="Rows between the points where readers see progress."),
    show_status: bool = typer.Option(False, "--status", help="Only show backfill progress."),
    detect: Optional[bool] = DETECT,
    detector: Optional[Path] = DETECTOR,
    as_json: bool = JSON,
) -> None:
    """Re-embed older rows whose images exist with the query model (resumable; readers keep searching)."""
    if show_status:
        with gallery.open(store) as g:
            result = g.backfill_status()
        if as_json:
            emit_json(result)
        else:
            run = result["unfinished_run"]
            rows = ", ".join(f"{v}: {n}" for v, n in sorted(result["rows_per_model"].items()))
            console.print(f"{store}: query model {result['model']}; live rows per model {rows}; "
                          + (f"unfinished backfill {run['done']}/{run['planned']} (rerun to resume)" if run
                             else "no unfinished backfill"), highlight=False)
            for line in result["problems"]:
                console.print(f"  [red]problem:[/] {line}")
        if not result["ok"]:
            raise typer.Exit(1)
        return
    if images is None:
        raise BadInput("give --images ROOT (or --status)")
    with gallery.open(store) as g, progress_bar("backfilling", as_json) as (on_total, advance):
        result = g.backfill(images, batch_size=batch_size, model=model, trust_images=trust_images,
                            publish_every=publish_every, progress=advance, on_total=on_total,
                            detect=detect, detector=detector)
    if as_json:
        emit_json(result)
    else:
        console.print(f"backfilled {result['embedded']} of {result['planned']} planned rows with {result['model']} "
                      f"({result['skipped_no_image']} without image stay as they are; "
                      f"{result['remaining_older_rows']} older rows remain)")
