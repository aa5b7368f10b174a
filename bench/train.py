"""Throughput of the fit loop vs a bare forward/backward/step loop on the same net and batch.

The bare loop cycles over 8 pre-made batches of the same data already on the
device: no data loading, no lr schedule, no clipping, no logging. The fit loop is trainer.fit.fit() end
to end on an in-memory dataset of the same size and shape. Target: fit / bare
>= 0.9. Timed epochs exclude the first (warm-up: allocator, oneDNN/cuDNN plans).
The two loops alternate for --rounds rounds and each reports its best timed window
(an epoch of fit, the same number of steps of the bare loop): on a shared machine
the best window is the one least disturbed by other processes.

CPU:  .venv/bin/python bench/train.py --threads 2 --out bench/results/train_cpu.json
GPU:  .venv/bin/python bench/train.py --config configs/gpu_iresnet50.toml --classes 93431 \
          --epochs 2 --rounds 1 --steps 100 --out bench/results/gpu/train_iresnet50.json
With --classes C > steps x batch the fit loop's epoch holds C images (one per class), so
its timed epoch is longer than the bare loop's window of --steps steps.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trainer.backbones import arch_config, build_backbone
from trainer.config import TrainConfig
from trainer.data import make_loader, open_dataset
from trainer.data.samples import fashion_mnist
from trainer.distributed import resolve_device
from trainer.fit import fit
from trainer.heads import build_head


def make_data(path: Path, config: TrainConfig, count: int, classes: int = 1000) -> None:
    """Real Fashion-MNIST at small sizes; at 112 px random pixels (throughput only), one
    label per image up to `classes` (ArcFace over ~93k classes needs >= 93k images: 256
    random images are tiled, since pixel values do not change a GPU's speed)."""
    if config.image_size <= 64:
        images, labels = fashion_mnist(per_class=-(-count // 10))
        images, labels = images[:count], labels[:count]
    else:
        rng = np.random.default_rng(0)
        size = config.image_size
        base = rng.integers(0, 256, (min(count, 256), size, size, 3), np.uint8)
        images = np.resize(base, (count, size, size, 3))
        labels = np.arange(count) % classes
    np.savez(path, images=images, labels=labels)


def bare_loop(config: TrainConfig, data: Path, num_classes: int, steps: int,
              windows: int) -> tuple[float, float]:
    """Best (wall img/s, img per CPU-second) over `windows` timed windows of `steps`."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    channels = 1 if config.color_order == "GRAY" else 3
    net = build_backbone(arch_config(config.arch, config.dim, config.image_size, channels))
    head = build_head(config.head, config.dim, num_classes, **config.head_params)
    net.to(device).train()
    net.to(memory_format=torch.channels_last)  # as fit() does
    head.to(device)
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    amp = bool(config.amp and device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    # the fit loop's own images, pre-batched on the device (CPU conv speed depends on
    # the pixel values: random inputs run ~10% slower than real ones here)
    dataset = open_dataset(data, config.preprocess_spec())
    batches = [(x.to(device).contiguous(memory_format=torch.channels_last), y.to(device))
               for x, y, _ in
               itertools.islice(make_loader(dataset, config.batch_size), 8)]
    rates, cpu_rates = [], []
    for window in range(windows + 1):  # window 0 is warm-up
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        for i in range(steps):
            x, y = batches[i % len(batches)]
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                loss = head(net(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        _sync(device)
        if window:
            rates.append(steps * config.batch_size / (time.perf_counter() - start))
            cpu_rates.append(steps * config.batch_size / (time.process_time() - cpu_start))
    return max(rates), max(cpu_rates)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fit_loop(config: TrainConfig, data: Path, epochs: int) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        run = TrainConfig.from_dict({**config.to_dict(), "data": str(data), "epochs": epochs,
                                     "out": str(Path(tmp) / "m.pt"), "onnx": None})
        result = fit(run)
    timed = result.metrics["epochs"][1:]
    best = max(e["img_per_s"] for e in timed)
    best_cpu = max(e["steps"] * config.batch_size / e["cpu_seconds"] for e in timed)
    return best, best_cpu, result.metrics["num_classes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="TOML/JSON TrainConfig (e.g. the GPU one)")
    parser.add_argument("--steps", type=int, default=40, help="steps per timed epoch")
    parser.add_argument("--epochs", type=int, default=3, help="fit epochs (first is warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating fit/bare rounds")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--classes", type=int, default=1000,
                        help="identities in the synthetic 112 px data (images >= classes)")
    parser.add_argument("--arch", help="override the config's backbone")
    parser.add_argument("--out", type=Path, help="write the result JSON here")
    args = parser.parse_args()
    defaults = dict(arch="small", image_size=32, dim=128, batch_size=128, head="arcface",
                    device="auto", seed=0)
    config = (TrainConfig.from_file(args.config) if args.config
              else TrainConfig.from_dict(defaults))
    if args.arch:
        config = TrainConfig.from_dict({**config.to_dict(), "arch": args.arch})
    if args.threads:
        torch.set_num_threads(args.threads)
    fit_rates, bare_rates, fit_cpu, bare_cpu = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.npz"
        count = max(args.steps * config.batch_size, args.classes)
        make_data(data, config, -(-count // config.batch_size) * config.batch_size, args.classes)
        for _ in range(args.rounds):
            rate, cpu_rate, classes = fit_loop(config, data, args.epochs)
            fit_rates.append(rate)
            fit_cpu.append(cpu_rate)
            rate, cpu_rate = bare_loop(config, data, classes, args.steps, args.epochs - 1)
            bare_rates.append(rate)
            bare_cpu.append(cpu_rate)
    fit_rate, bare_rate = max(fit_rates), max(bare_rates)
    device = resolve_device(config.device)
    result = {
        "arch": config.arch, "image_size": config.image_size, "batch_size": config.batch_size,
        "dim": config.dim, "amp": bool(config.amp and device.type == "cuda"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "fit_img_s": round(fit_rate, 1),
        "bare_img_s": round(bare_rate, 1), "ratio": round(fit_rate / bare_rate, 3),
        "fit_img_per_cpu_s": round(max(fit_cpu), 1),
        "bare_img_per_cpu_s": round(max(bare_cpu), 1),
        "cpu_ratio": round(max(fit_cpu) / max(bare_cpu), 3),
        "fit_rounds": [round(r, 1) for r in fit_rates],
        "bare_rounds": [round(r, 1) for r in bare_rates], "steps": args.steps,
        "num_classes": classes,
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "torch": torch.__version__,
    }
    print(f"{'arch':>10} {'size':>4} {'batch':>5} {'device':>12} {'fit img/s':>10} "
          f"{'bare img/s':>10} {'ratio':>6} {'fit img/cpu-s':>13} {'bare img/cpu-s':>14} "
          f"{'cpu ratio':>9}")
    print(f"{config.arch:>10} {config.image_size:>4} {config.batch_size:>5} "
          f"{result['device'][:12]:>12} {fit_rate:>10.0f} {bare_rate:>10.0f} "
          f"{result['ratio']:>6.3f} {max(fit_cpu):>13.0f} {max(bare_cpu):>14.0f} "
          f"{result['cpu_ratio']:>9.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
