"""`gallery train-compatible`: train v2 so its queries match the v1 gallery.

Same options as `gallery train` (aliases shared from cli/commands/train.py) plus the
old model and the method's hyperparameters. Old features are extracted first, under
their own progress bar, into the cache fit() reads; then the one fit loop runs.
"""

from __future__ import annotations

import importlib.util
import inspect
import pkgutil
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cli.commands.train import (ArchOpt, BatchSizeOpt, ConfigOpt, DataOpt, DeviceOpt, DimOpt,
                                EpochsOpt, HeadOpt, ImageSizeOpt, JsonOpt, LrOpt, MarginOpt,
                                OnnxOpt, OptimizerOpt, OutOpt, ResumeOpt, ScaleOpt, SeedOpt, ThreadsOpt,
                                WarmupOpt, WorkersOpt, build_config, run_fit)
from cli.common import console, handle_errors


def _method_names() -> list[str]:
    """Method files in trainer/methods (one per registered method), found without torch."""
    spec = importlib.util.find_spec("trainer")
    roots = [str(Path(p) / "methods") for p in (spec.submodule_search_locations or [])] if spec else []
    return sorted(m.name for m in pkgutil.iter_modules(roots) if m.name != "base")


OldOpt = Annotated[Optional[Path], typer.Option(
    "--old", help="The old (v1) model: our .pt, a TorchScript .ts, or an ONNX image encoder.")]
OldFeaturesOpt = Annotated[Optional[Path], typer.Option(
    "--old-features", help="Precomputed old features (HDF5 written by a previous run).")]
MethodOpt = Annotated[Optional[str], typer.Option(
    "--method", help=f"Compatibility method: {' | '.join(_method_names())} | auto "
                     "(auto: try a grid of methods on held-out identities, retrain the "
                     "winner; default: mixbct, or the --config file's method).")]
ClipScopeOpt = Annotated[Optional[str], typer.Option(
    "--clip-scope", help="Gradient-norm clipping over all parameters (default) or the "
                         "backbone only (backbone: as the official MixBCT code).")]
AutoBudgetOpt = Annotated[str, typer.Option(
    "--auto-budget", help="auto: training per candidate, in epochs (3) or minutes for the "
                          "whole search (20m).")]
L2WeightOpt = Annotated[Optional[float], typer.Option(
    "--l2-weight", help="l2: weight of the distance term (default 10).")]
TauOpt = Annotated[Optional[float], typer.Option(
    "--tau", help="l2: hinge margin (0 = L2, 0.2 = weakened L2).")]
BctScaleOpt = Annotated[Optional[float], typer.Option(
    "--bct-scale", help="bct: scale of the influence logits (default: the head's scale).")]
BctVariantOpt = Annotated[Optional[str], typer.Option(
    "--bct-variant", help="bct: official (class means of raw old features, plain cosine "
                          "influence logits, as the MixBCT authors' repo) | scaled (default: "
                          "the head's margin and scale).")]
MixRatioOpt = Annotated[Optional[float], typer.Option(
    "--mix-ratio", help="mixbct: share of each batch replaced by old features (default 0.3).")]
CredibleTOpt = Annotated[Optional[float], typer.Option(
    "--credible-t", help="mixbct: share of each class's old features kept credible (0.9).")]

# CLI option -> method constructor parameter
METHOD_OPTIONS = {"--l2-weight": "l2_weight", "--tau": "tau", "--bct-scale": "bct_scale",
                  "--bct-variant": "bct_variant", "--mix-ratio": "mix_ratio",
                  "--credible-t": "credible_t"}


def method_params(method: str, given: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The method's resolved hyperparameters: defaults < config file < options given."""
    from gallery.errors import BadInput
    from trainer.methods import load_all

    cls = load_all().get(method)  # unknown names -> BadInput listing the valid ones
    signature = inspect.signature(cls.__init__).parameters
    params = {name: p.default for name, p in signature.items()
              if p.default is not inspect.Parameter.empty}
    params.update(base)
    for option, value in given.items():
        name = METHOD_OPTIONS[option]
        if value is None:
            continue
        if name not in signature:
            raise BadInput(f"{option} does not apply to method {method!r}")
        params[name] = value
    return params


def prepare_old(cfg: Any, as_json: bool) -> None:
    """Extract (or validate) old features under a progress bar before training."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeRemainingColumn

    from trainer.old_features import precompute_old_features

    columns = [TextColumn("[bold]old features"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True, disable=as_json) as bar:
        task = bar.add_task("old", total=None)
        precompute_old_features(cfg, progress=lambda n: bar.advance(task, n),
                                start=lambda n: bar.update(task, total=n))


def run_auto_search(cfg: Any, budget: str, as_json: bool) -> None:
    """--method auto: the search and the winner's training live in trainer.auto."""
    from cli.common import emit_json, render_table
    from trainer.auto import run_auto

    result = run_auto(cfg, budget, on_candidate=lambda name: None if as_json else console.print(
        f"auto: training candidate {name}", highlight=False))
    if as_json:
        emit_json(result.to_dict())
        return
    rows = [(r["rank"], r["candidate"], f"{r['old_old']:.4f}", f"{r['new_new']:.4f}",
             f"{r['new_old']:.4f}", f"{r['margin']:+.4f}") for r in result.leaderboard]
    render_table(f"--method auto leaderboard ({result.epochs_per_candidate} epoch(s) per "
                 "candidate, validation identities)",
                 ["rank", "candidate", "old/old", "new/new", "new->old", "margin"], rows)
    console.print(f"winner {result.winner} retrained on all identities: {result.final['model']} "
                  f"(leaderboard: {result.files['json']})", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("train-compatible")
    @handle_errors
    def train_compatible(
        old: OldOpt = None, old_features: OldFeaturesOpt = None, method: MethodOpt = None,
        l2_weight: L2WeightOpt = None, tau: TauOpt = None, bct_scale: BctScaleOpt = None,
        bct_variant: BctVariantOpt = None, mix_ratio: MixRatioOpt = None, credible_t: CredibleTOpt = None,
        data: DataOpt = None, arch: ArchOpt = None, head: HeadOpt = None, dim: DimOpt = None,
        image_size: ImageSizeOpt = None, epochs: EpochsOpt = None, seed: SeedOpt = None,
        out: OutOpt = None, onnx: OnnxOpt = None, batch_size: BatchSizeOpt = None,
        lr: LrOpt = None, optimizer: OptimizerOpt = None, warmup_epochs: WarmupOpt = None,
        scale: ScaleOpt = None, margin: MarginOpt = None, workers: WorkersOpt = None,
        threads: ThreadsOpt = None, device: DeviceOpt = None, resume: ResumeOpt = False,
        config: ConfigOpt = None, clip_scope: ClipScopeOpt = None,
        auto_budget: AutoBudgetOpt = "3",
        json: JsonOpt = False,
    ) -> None:
        """Train a v2 encoder whose queries stay comparable with the old model's gallery."""
        from gallery.errors import BadInput
        from trainer.methods import load_all

        cfg = build_config(config, data=data, arch=arch, head=head, dim=dim,
                           image_size=image_size, epochs=epochs, seed=seed, out=out, onnx=onnx,
                           batch_size=batch_size, lr=lr, optimizer=optimizer,
                           warmup_epochs=warmup_epochs, scale=scale, margin=margin,
                           num_workers=workers, threads=threads, device=device,
                           resume=resume, old_model=old, old_features=old_features,
                           clip_scope=clip_scope)
        method = method or (cfg.method if config is not None else "mixbct")
        if method == "auto":
            return run_auto_search(cfg, auto_budget, json)
        base = cfg.method_params if cfg.method == method else {}
        cfg.method = method
        cfg.method_params = method_params(method, {
            "--l2-weight": l2_weight, "--tau": tau, "--bct-scale": bct_scale,
            "--bct-variant": bct_variant, "--mix-ratio": mix_ratio, "--credible-t": credible_t}, base)
        if load_all().get(method).requires_old_model and not (cfg.old_model or cfg.old_features):
            raise BadInput(f"method {method!r} needs the old model: pass --old or --old-features")
        from trainer.projection import old_space_dim

        cfg.old_dim = old_space_dim(cfg)  # --dim != v1's dim: v2 learns a projection to v1's space
        cfg.validate()
        prepare_old(cfg, json)
        result = run_fit(cfg, json)
        info = result.metrics.get("method", {})
        if not json and info.get("compatible_with"):
            console.print(f"compatible with old model {info['compatible_with'][:16]} "
                          f"({method}: {cfg.method_params})", highlight=False)
