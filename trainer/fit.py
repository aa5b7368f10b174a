"""The one training loop: every compat method (independent, L2, BCT, MixBCT...) runs here.

The loop never looks at which method it runs: it asks the method for the loss of
each batch. SGD (or AdamW) with warm-up + polynomial decay, fp16 autocast on
CUDA, gradient-norm clipping, a checkpoint every epoch, seeded data order and
per-epoch RNG so a resumed run reproduces an uninterrupted one, and DDP when
launched with torchrun.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from gallery.errors import BadInput, GalleryError

from trainer import distributed
from trainer.checkpoint import CKPT_FORMAT, atomic_save, model_payload, read_checkpoint
from trainer.config import TrainConfig
from trainer.report import plot_loss, write_metrics
from trainer.run_setup import RunParts, build_run
from trainer.schedule import lr_at
from trainer.threads import cpu_threads

log = logging.getLogger(__name__)
LOG_EVERY = 10  # steps between loss syncs (a .item() per step stalls a GPU)


@dataclass
class TrainResult:
    model: str | None                 # None when the run stopped early (stop_after)
    onnx: str | None
    checkpoint: str
    epochs_completed: int
    steps: int
    finished: bool
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "onnx": self.onnx, "checkpoint": self.checkpoint,
                "epochs_completed": self.epochs_completed, "steps": self.steps,
                "finished": self.finished, "final_loss": self.metrics.get("final_loss"),
                "epochs": self.metrics.get("epochs", [])}


class _Trainable(nn.Module):
    """backbone + head + method in one module, so DDP syncs all of their gradients."""

    def __init__(self, backbone: nn.Module, head: nn.Module, method: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head, self.method = backbone, head, method

    def forward(self, images, labels, indices):
        return self.method.loss(self.backbone(images), labels, indices, self.head)


def fit(config: TrainConfig, progress: Callable[[int], None] | None = None,
        on_log: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train per `config`.

    `progress(n)` is called after each batch with its image count; `on_log` first
    gets {"total": images this invocation will train on}, then {loss, lr, epoch,
    img_s} every LOG_EVERY steps. Both are called on rank 0 only.
    """
    config.validate()
    with cpu_threads(config.threads):
        info = distributed.setup(config.device)
        try:
            return _fit(config, info, progress, on_log)
        finally:
            distributed.cleanup(info)


def _fit(config: TrainConfig, info: distributed.DistInfo, progress, on_log) -> TrainResult:
    config.out_path.parent.mkdir(parents=True, exist_ok=True)  # also the methods' cache dir
    parts = build_run(config, info)
    loop = _Loop(config, info, parts)
    ckpt_path = config.sibling(".ckpt")
    state = {"epoch": 0, "step": 0, "history": {"epochs": [], "step_loss": []}}
    if config.resume:
        state = _resume(ckpt_path, config, parts, loop.model, loop.optimizer, loop.scaler)
    loop.wrap_ddp()
    history, loop.step, epoch = state["history"], state["step"], state["epoch"]
    if on_log is not None and info.is_main:  # lets the CLI size its progress bar
        last = min(config.epochs, config.stop_after or config.epochs)
        images = max(last - epoch, 0) * len(parts.loader) * config.batch_size
        on_log({"total": float(images)})
    while epoch < config.epochs:
        history["epochs"].append(loop.run_epoch(epoch, history["step_loss"], progress, on_log))
        epoch += 1
        if info.is_main:
            atomic_save(_checkpoint(config, parts, loop, epoch, history), ckpt_path)
        distributed.barrier(info)
        if config.stop_after is not None and epoch >= config.stop_after and epoch < config.epochs:
            break
    finished = epoch >= config.epochs
    metrics = _metrics(parts, history, loop.step, epoch, info)
    result = TrainResult(None, None, str(ckpt_path), epoch, loop.step, finished, metrics)
    if info.is_main:
        _write_outputs(config, parts, loop.model, metrics, result)
    distributed.barrier(info)
    return result


class _Loop:
    """Optimizer, scaler and schedule around the model; one epoch / one step at a time."""

    def __init__(self, config: TrainConfig, info: distributed.DistInfo, parts: RunParts) -> None:
        self.config, self.info, self.parts = config, info, parts
        self.model = _Trainable(parts.backbone, parts.head, parts.method).to(info.device)
        # NHWC convolutions: ~17% faster on CPU (oneDNN) for `small`, and the layout
        # tensor cores want under fp16; the saved weights are the same numbers
        parts.backbone.to(memory_format=torch.channels_last)
        self.runner: nn.Module = self.model
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # clip_scope "backbone": the official MixBCT/insightface loops clip the backbone only
        self.clipped = self.params if config.clip_scope == "all" else [
            p for p in parts.backbone.parameters() if p.requires_grad]
        self.optimizer = _optimizer(config, self.params)
        self.scaler = torch.amp.GradScaler("cuda", enabled=parts.use_amp)
        self.steps_per_epoch = len(parts.loader)
        self.total = config.epochs * self.steps_per_epoch
        self.warmup = int(round(config.warmup_epochs * self.steps_per_epoch))
        self.step = 0

    def wrap_ddp(self) -> None:
        if self.info.enabled:
            ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            # no buffer broadcast (as insightface/the MixBCT repo): BatchNorm statistics
            # stay per rank and method state (NCCL's queue, prototypes) is never re-sent
            self.runner = nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                              broadcast_buffers=False)

    def run_epoch(self, epoch: int, step_loss: list, progress, on_log) -> dict[str, Any]:
        self.parts.loader.set_epoch(epoch)
        torch.manual_seed(self.config.seed * 1_000_003 + epoch)  # dropout / method sampling
        self.parts.method.start_epoch(epoch, self.config.epochs, self.parts.backbone)
        self.model.train()
        started, images_seen, sums, count = time.perf_counter(), 0, {}, 0
        cpu_started = time.process_time()  # CPU seconds: comparable on a shared machine
        window, window_n, epoch_loss = torch.zeros((), device=self.info.device), 0, 0.0
        lr = 0.0
        for images, labels, indices in self.parts.loader:
            lr = lr_at(self.step, self.total, self.config.lr, self.warmup, self.config.poly_power)
            loss, logs = self.train_step(images, labels, indices, lr)
            count, images_seen = count + 1, images_seen + len(labels)
            window, window_n = window + loss, window_n + 1
            for key, value in logs.items():  # device tensors: no host sync per step
                sums[key] = sums.get(key, 0.0) + value
            if self.step % LOG_EVERY == 0 or count == self.steps_per_epoch:
                # one host sync per LOG_EVERY steps, not per step
                total_loss = float(window)
                mean, epoch_loss = total_loss / window_n, epoch_loss + total_loss
                window, window_n = torch.zeros_like(window), 0
                if not math.isfinite(mean):
                    raise GalleryError(f"training diverged: loss is {mean} at step "
                                       f"{self.step}; lower --lr or check the data")
                step_loss.append([self.step, mean])
                if on_log is not None and self.info.is_main:
                    on_log({"loss": mean, "lr": lr, "epoch": epoch + 1,
                            "img_s": images_seen / (time.perf_counter() - started)})
            if progress is not None and self.info.is_main:
                progress(len(labels))
        seconds = time.perf_counter() - started
        record = _epoch_record(epoch, self.step, lr, sums, count, images_seen, seconds,
                               epoch_loss, self.info)
        record["cpu_seconds"] = time.process_time() - cpu_started
        return record

    def train_step(self, images, labels, indices, lr: float) -> tuple[torch.Tensor, dict]:
        device = self.info.device
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images = images.to(device, non_blocking=True).contiguous(
            memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        indices = indices.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=self.parts.use_amp):
            loss, logs = self.runner(images, labels, indices)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.clipped, self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return loss.detach().float(), logs


def _optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def _epoch_record(epoch, step, lr, sums, count, images, seconds, loss_sum, info) -> dict:
    record = {"epoch": epoch + 1, "end_step": step, "steps": count, "lr": lr,
              "loss": loss_sum / max(count, 1), "seconds": seconds,
              "img_per_s": images * info.world_size / max(seconds, 1e-9)}
    record.update({k: float(v) / max(count, 1) for k, v in sums.items()})
    return record


def _checkpoint(config, parts: RunParts, loop: _Loop, epoch: int, history: dict) -> dict:
    return {"format": CKPT_FORMAT, "signature": config.signature(),
            "data_fingerprint": parts.dataset.listing_fingerprint(), "epoch": epoch,
            "step": loop.step, "model": loop.model.state_dict(),
            "optimizer": loop.optimizer.state_dict(), "scaler": loop.scaler.state_dict(),
            "history": history}


def _resume(path: Path, config, parts: RunParts, model, optimizer, scaler) -> dict:
    if not path.is_file():
        raise BadInput(f"--resume given but no checkpoint {path} exists")
    ckpt = read_checkpoint(path)
    saved, now = ckpt["signature"], config.signature()
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:
        raise BadInput(f"cannot resume {path}: config differs in {', '.join(changed)}")
    if ckpt["data_fingerprint"] != parts.dataset.listing_fingerprint():
        raise BadInput(f"cannot resume {path}: the dataset changed since the checkpoint")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    log.info("resumed %s at epoch %d, step %d", path, ckpt["epoch"], ckpt["step"])
    return {"epoch": int(ckpt["epoch"]), "step": int(ckpt["step"]), "history": ckpt["history"]}


def _metrics(parts: RunParts, history, step, epoch, info) -> dict:
    losses = history["step_loss"]
    return {"epochs": history["epochs"], "step_loss": losses, "total_steps": step,
            "epochs_completed": epoch, "final_loss": losses[-1][1] if losses else None,
            "first_loss": losses[0][1] if losses else None, "device": str(info.device),
            "world_size": info.world_size, "num_images": len(parts.dataset),
            "num_classes": parts.dataset.num_classes,
            "label_map_sha256": parts.dataset.label_map_sha256(),
            "data_fingerprint": parts.dataset.listing_fingerprint(),
            "method": parts.method.describe(), "head": parts.head.describe()}


def _write_outputs(config: TrainConfig, parts: RunParts, model, metrics, result) -> None:
    # the config to rerun this model from scratch: invocation-only switches reset
    resolved = TrainConfig.from_dict({**config.to_dict(), "device": str(parts.device_name),
                                      "resume": False, "stop_after": None})
    resolved.write(config.sibling(".config.json"))
    write_metrics(config.sibling(".metrics.json"), metrics)
    plot_loss(config.sibling(".loss.png"), metrics, f"{config.arch} / {config.method}")
    if not result.finished:
        return
    payload = model_payload(model.backbone, parts.arch, parts.spec, parts.dataset.classes,
                            parts.dataset.label_map_sha256(), parts.method.describe(),
                            parts.head.describe(), parts.parity_images, config.to_dict())
    atomic_save(payload, config.out_path)
    result.model = str(config.out_path)
    if config.onnx:
        from trainer.export import export_onnx

        export_onnx(config.out_path, config.onnx)
        result.onnx = str(config.onnx)
