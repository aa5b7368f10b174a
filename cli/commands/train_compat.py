"""`gallery train-compatible`: train v2 so its queries match the v1 gallery.

Same options as `gallery train` (aliases shared from cli/commands/train.py) plus the
old model and the method's hyperparameters. Old features are extracted first, under
their own progress bar, into the cache fit() reads; then the one fit loop runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cli.commands.train import (ArchOpt, BatchSizeOpt, ConfigOpt, DataOpt, DeviceOpt, DimOpt,
                                EpochsOpt, HeadOpt, ImageSizeOpt, JsonOpt, LrOpt, MarginOpt,
                                OnnxOpt, OptimizerOpt, OutOpt, ResumeOpt, ScaleOpt, SeedOpt, ThreadsOpt,
                                WarmupOpt, WorkersOpt, run_fit)
from cli.common import console, emit_json, handle_errors, render_table
from trainer.api import method_names


OldOpt = Annotated[Optional[Path], typer.Option(
    "--old", help="The old (v1) model: our .pt, a TorchScript .ts, or an ONNX image encoder.")]
OldFeaturesOpt = Annotated[Optional[Path], typer.Option(
    "--old-features", help="Precomputed old features (HDF5 written by a previous run).")]
MethodOpt = Annotated[Optional[str], typer.Option(
    "--method", help=f"Compatibility method: {' | '.join(method_names())} | auto "
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

def render_auto(result: Any, as_json: bool) -> None:
    """--method auto: the leaderboard of the candidates and the winner retrained."""
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


def _train_compatible(**kwargs: Any) -> Any:
    # trainer's torch modules load only when training: the serving commands start without them.
    from trainer import train_compatible

    return train_compatible(**kwargs)


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
        options = dict(config=config, old=old, old_features=old_features, method=method, l2_weight=l2_weight,
                       tau=tau, bct_scale=bct_scale, bct_variant=bct_variant, mix_ratio=mix_ratio,
                       credible_t=credible_t, data=data, arch=arch, head=head, dim=dim, image_size=image_size,
                       epochs=epochs, seed=seed, out=out, onnx=onnx, batch_size=batch_size, lr=lr,
                       optimizer=optimizer, warmup_epochs=warmup_epochs, scale=scale, margin=margin,
                       num_workers=workers, threads=threads, device=device, resume=resume, clip_scope=clip_scope)
        if method == "auto":
            on_candidate = None if json else (lambda name: console.print(f"auto: training candidate {name}",
                                                                         highlight=False))
            return render_auto(_train_compatible(auto_budget=auto_budget, on_candidate=on_candidate, **options),
                               json)
        result = run_fit(_train_compatible, json, with_old=True, **options)
        info = result.metrics.get("method", {})
        if not json and info.get("compatible_with"):
            params = {k: v for k, v in info.items() if k not in ("method", "compatible_with", "old_model")}
            console.print(f"compatible with old model {info['compatible_with'][:16]} "
                          f"({info['method']}: {params})", highlight=False)
