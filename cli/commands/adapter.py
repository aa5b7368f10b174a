"""`gallery train-adapter`: learn h: v1 space -> v2 space for two encoders never trained together."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cli.common import console, emit_json, handle_errors, render_table


def _run(config: Any, as_json: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from trainer.adapter import train_adapter

    columns = [TextColumn("[bold]{task.fields[phase]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[stats]}"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=as_json, disable=as_json) as bar:
        task = bar.add_task("adapter", total=None, phase="embed", stats="")

        def on_log(values: dict) -> None:
            if "phase" in values:
                bar.reset(task, total=values["total"], phase=values["phase"], stats="")
                return
            val = values.get("val_cos")
            bar.update(task, stats=f"ep {values['epoch']} loss {values['loss']:.4f}"
                                   + ("" if val is None else f" val cos {val:.4f}"))

        return train_adapter(config, progress=lambda n: bar.advance(task, n), on_log=on_log)


def register(app: typer.Typer) -> None:
    @app.command("train-adapter")
    @handle_errors
    def train_adapter_command(
        old: Annotated[Optional[Path], typer.Option("--old", help="Old (v1) encoder: .onnx, .pt or .ts.")] = None,
        new: Annotated[Optional[Path], typer.Option("--new", help="New (v2) encoder: .onnx, .pt or .ts.")] = None,
        data: Annotated[Optional[Path], typer.Option(
            "--data", help="Images both models embed: a folder (flat or ROOT/<identity>/<image>), .h5/.npz, .rec.")] = None,
        out: Annotated[Optional[Path], typer.Option("--out", help="Adapter to write (.onnx).")] = None,
        labels: Annotated[bool, typer.Option(
            "--labels", help="Add a label term (identity folders): see --label-loss.")] = False,
        label_loss: Annotated[str, typer.Option(
            "--label-loss", help="prototype (CE against the new model's class means) | contrastive.")] = "prototype",
        label_weight: Annotated[float, typer.Option("--label-weight", help="Weight of the label term.")] = 0.1,
        arch: Annotated[str, typer.Option("--arch", help="residual (linear + MLP) | linear.")] = "residual",
        hidden: Annotated[int, typer.Option("--hidden", help="MLP width.")] = 512,
        depth: Annotated[int, typer.Option("--depth", help="MLP hidden layers.")] = 2,
        epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training vectors.")] = 40,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Vectors per step.")] = 256,
        lr: Annotated[float, typer.Option("--lr", help="Peak AdamW learning rate (linear decay).")] = 1e-3,
        val_fraction: Annotated[float, typer.Option(
            "--val-fraction", help="Held-out images: picks the best epoch, reported cosine.")] = 0.1,
        fraction: Annotated[float, typer.Option(
            "--fraction", help="Train on this seeded share of the other images (data-size studies).")] = 1.0,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the split, init and order.")] = 0,
        threads: Annotated[Optional[int], typer.Option("--threads", help="torch CPU threads.")] = None,
        device: Annotated[str, typer.Option("--device", help="cpu | cuda | auto.")] = "cpu",
        json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    ) -> None:
        """Train an adapter h: old-model space -> new-model space and export it to ONNX."""
        from gallery.errors import BadInput
        from trainer.adapter import AdapterConfig

        missing = [name for name, value in (("--old", old), ("--new", new), ("--data", data), ("--out", out))
                   if value is None]
        if missing:
            raise BadInput(f"{', '.join(missing)} required")
        config = AdapterConfig(
            old=str(old), new=str(new), data=str(data), out=str(out), labels=labels, label_loss=label_loss,
            label_weight=label_weight, arch=arch, hidden=hidden, depth=depth, epochs=epochs,
            batch_size=batch_size, lr=lr, val_fraction=val_fraction, fraction=fraction, seed=seed,
            threads=threads, device=device)
        result = _run(config, json)
        if json:
            emit_json(result.to_dict())
            return
        m = result.metrics
        render_table(f"adapter {result.onnx} (best epoch {m['best_epoch']})",
                     ["images", "train", "held out", "cos (ridge init)", "cos (adapter)", "onnx |diff|"],
                     [(m["num_images"], m["num_train"], m["num_val"], _f(m["linear_init_val_cos"]),
                       _f(m["val_cos"] if m["val_cos"] is not None else m["train_cos"]),
                       f"{m['max_abs_diff']:.1e}")])


def _f(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"
