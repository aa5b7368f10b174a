"""Encoding throughput with a torch encoder: old-feature extraction and `gallery enroll`.

    python bench/gpu_encode.py [--arch iresnet50] [--dim 512] [--size 112] [--images 16384]
        [--enrol-images 4096] [--batch 256] [--workdir /tmp/gpu_encode] [--out gpu_encode.json]

An untrained backbone saved as one of our `.pt` files (weights do not change speed) is
loaded through trainer.torch_encoder, as `train-compatible` and `gallery enroll` load it:
  bare       the module's forward on batches already on the device (the ceiling),
  extract    trainer.old_features.extract_old_features over an in-memory array dataset
             (what train-compatible runs before MixBCT/BCT/L2 training),
  enroll     `gallery init` + `gallery enroll --images` on PNG files, end to end in one
             process each (decode, preprocess, encode, store commit).
`--device cpu --arch small --dim 64 --size 32 --images 512 --enrol-images 128` is the CPU smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gallery.fingerprint import strings_sha256
from gallery.preprocess import PreprocessSpec
from trainer.backbones import arch_config, build_backbone
from trainer.checkpoint import atomic_save, model_payload
from trainer.data.arrays import read_arrays
from trainer.old_features import extract_old_features
from trainer.torch_encoder import load_pt_encoder


def save_model(path: Path, arch: str, dim: int, size: int) -> PreprocessSpec:
    torch.manual_seed(0)
    spec = PreprocessSpec(height=size, width=size)  # RGB, (x - 127.5) / 127.5
    net = build_backbone(arch_config(arch, dim, size, 3)).eval()
    classes = ["a", "b"]
    parity = torch.zeros(2, 3, size, size)
    atomic_save(model_payload(net, arch_config(arch, dim, size, 3), spec, classes,
                              strings_sha256(classes), {"name": "independent"}, {"name": "arcface"},
                              parity, {"arch": arch}), path)
    return spec


def images(n: int, size: int) -> np.ndarray:
    base = np.random.default_rng(0).integers(0, 256, (min(n, 256), size, size, 3), np.uint8)
    return np.resize(base, (n, size, size, 3))


def bare_rate(encoder, batch: int, size: int, repeats: int = 10) -> float:
    x = torch.randn(batch, 3, size, size, device=encoder.device)
    sync = torch.cuda.synchronize if encoder.device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        encoder.module(x)
        sync()
        t = time.perf_counter()
        for _ in range(repeats):
            encoder.module(x)
        sync()
    return repeats * batch / (time.perf_counter() - t)


def run_cli(args: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"gallery {args[0]} failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="iresnet50")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--images", type=int, default=16384)
    ap.add_argument("--enrol-images", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--device", default="cuda", help="cuda or cpu (the encoder picks CUDA when present)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("gpu_encode.json"))
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_encode_"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model.pt"
    spec = save_model(model, args.arch, args.dim, args.size)
    encoder = load_pt_encoder(model, providers=["CPUExecutionProvider"] if args.device == "cpu" else None)

    bare = bare_rate(encoder, args.batch, args.size)
    data = work / "data.npz"
    np.savez(data, images=images(args.images, args.size), labels=np.arange(args.images) % 100)
    dataset = read_arrays(data, spec)
    t = time.perf_counter()
    feats = extract_old_features(encoder, dataset, batch_size=args.batch)
    extract_s = time.perf_counter() - t

    folder = work / "photos"
    for i, img in enumerate(images(args.enrol_images, args.size)):
        (folder / f"id{i % 64:03d}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"id{i % 64:03d}" / f"{i:06d}.png")
    store = work / "store.h5"
    init_s = run_cli(["init", str(store), "--model", str(model)])
    enrol_s = run_cli(["enroll", str(store), "--images", str(folder), "--batch-size", str(args.batch)])

    result = {"device": str(encoder.device), "gpu": torch.cuda.get_device_name() if encoder.device.type == "cuda" else None,
              "arch": args.arch, "dim": args.dim, "size": args.size, "batch": args.batch,
              "bare_img_s": round(bare, 1), "extract_images": len(feats),
              "extract_img_s": round(len(feats) / extract_s, 1), "extract_over_bare": round(len(feats) / extract_s / bare, 3),
              "enrol_images": args.enrol_images, "init_wall_s": round(init_s, 2),
              "enrol_wall_s": round(enrol_s, 2), "enrol_img_s_end_to_end": round(args.enrol_images / enrol_s, 1),
              "torch": torch.__version__}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'arch':>10} {'device':>6} {'bare img/s':>10} {'extract img/s':>13} {'extract/bare':>12} "
          f"{'enrol img/s (e2e)':>17}")
    print(f"{args.arch:>10} {encoder.device.type:>6} {bare:>10.0f} {result['extract_img_s']:>13.0f} "
          f"{result['extract_over_bare']:>12.3f} {result['enrol_img_s_end_to_end']:>17.0f}")


if __name__ == "__main__":
    main()
