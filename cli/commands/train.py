"""`gallery train`: train an encoder (the `independent` method) with the one fit loop.

The option aliases below are shared with `gallery train-compatible`
(cli/commands/train_compat.py), which takes the same options plus the method's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cli.common import console, emit_json, handle_errors, render_table

DataOpt = Annotated[Optional[Path], typer.Option(
    "--data", help="Training data: ImageFolder dir, dir with train.rec, FILE.rec, .h5/.npz.")]
ArchOpt = Annotated[Optional[str], typer.Option(
    "--arch", help="Backbone: small, small-wide, iresnet18/34/50/100.")]
HeadOpt = Annotated[Optional[str], typer.Option(
    "--head", help="Classification head: arcface | cosface | softmax.")]
ScaleOpt = Annotated[Optional[float], typer.Option("--scale", help="Margin head scale s.")]
MarginOpt = Annotated[Optional[float], typer.Option("--margin", help="Margin head margin m.")]
DimOpt = Annotated[Optional[int], typer.Option("--dim", help="Embedding dimension.")]
ImageSizeOpt = Annotated[Optional[int], typer.Option(
    "--image-size", help="Square input size in pixels (32/64 small, 112 iresnet).")]
EpochsOpt = Annotated[Optional[int], typer.Option("--epochs", help="Number of epochs.")]
BatchSizeOpt = Annotated[Optional[int], typer.Option("--batch-size", help="Batch per process.")]
LrOpt = Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate.")]
OptimizerOpt = Annotated[Optional[str], typer.Option("--optimizer", help="sgd | adamw.")]
WarmupOpt = Annotated[Optional[float], typer.Option(
    "--warmup-epochs", help="Linear warm-up length in epochs.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Seed for weights and data order.")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="Data-loader processes.")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", help="torch CPU threads (default: torch's choice).")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda.")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Model file to write (.pt).")]
OnnxOpt = Annotated[Optional[Path], typer.Option("--onnx", help="Also export ONNX here.")]
ResumeOpt = Annotated[bool, typer.Option(
    "--resume", help="Continue from the checkpoint next to --out (same config required).")]
ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="TOML/JSON TrainConfig; command-line options override it.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def run_fit(train: Callable[..., Any], as_json: bool, with_old: bool = False, **kwargs: Any) -> Any:
    """Run trainer.train / train_compatible under Rich progress bars (old features first
    when `with_old`; then loss, lr, img/s) and render the result."""
    # under torchrun every rank runs this; only rank 0 draws and prints
    main = int(os.environ.get("RANK", "0")) == 0
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[stats]}"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=as_json,
                  disable=as_json or not main) as bar:
        if with_old:
            old = bar.add_task("old features", total=None, stats="")
            kwargs.update(old_progress=lambda n: bar.advance(old, n),
                          old_start=lambda n: bar.update(old, total=n))
        task = bar.add_task("train", total=None, stats="")

        def on_log(values: dict) -> None:
            if "total" in values:
                bar.update(task, total=values["total"])
                return
            bar.update(task, stats=f"ep {values['epoch']} loss {values['loss']:.4f} "
                                   f"lr {values['lr']:.4g} {values['img_s']:.0f} img/s")

        result = train(progress=lambda n: bar.advance(task, n), on_log=on_log, **kwargs)
    if not main:
        return result
    if as_json:
        emit_json(result.to_dict())
    else:
        rows = [(e["epoch"], e["loss"], e["lr"], round(e["img_per_s"]), round(e["seconds"], 1))
                for e in result.metrics.get("epochs", [])]
        render_table(f"trained {result.model or '(stopped early: ' + result.checkpoint + ')'}",
                     ["epoch", "loss", "lr", "img/s", "seconds"], rows)
    return result


def register(app: typer.Typer) -> None:
    @app.command("train")
    @handle_errors
    def train(data: DataOpt = None, arch: ArchOpt = None, head: HeadOpt = None,
              dim: DimOpt = None, image_size: ImageSizeOpt = None, epochs: EpochsOpt = None,
              seed: SeedOpt = None, out: OutOpt = None, onnx: OnnxOpt = None,
              batch_size: BatchSizeOpt = None, lr: LrOpt = None, optimizer: OptimizerOpt = None,
              warmup_epochs: WarmupOpt = None, scale: ScaleOpt = None, margin: MarginOpt = None,
              workers: WorkersOpt = None, threads: ThreadsOpt = None,
              device: DeviceOpt = None, resume: ResumeOpt = False,
              config: ConfigOpt = None, json: JsonOpt = False) -> None:
        """Train an encoder (no compatibility constraint) and save it as a .pt (+ ONNX)."""
        # trainer (torch) loads only when training: the serving commands start without it.
        from trainer import train as train_fn

        run_fit(train_fn, json, config=config, data=data, arch=arch, head=head, dim=dim,
                image_size=image_size, epochs=epochs, seed=seed, out=out, onnx=onnx,
                batch_size=batch_size, lr=lr, optimizer=optimizer, warmup_epochs=warmup_epochs,
                scale=scale, margin=margin, num_workers=workers, threads=threads, device=device,
                resume=resume)
