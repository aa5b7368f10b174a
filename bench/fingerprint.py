"""Cost of the content fingerprint of an image folder and a RecordIO-sized file.

    .venv/bin/python bench/fingerprint.py [--files 1000000] [--bytes 1037] [--big-gib 2]
        [--workdir DIR] [--out bench/results/fingerprint.json]

Writes --files small files (32x32 binary PGM: 1037 bytes each) under 1000 identity
folders of --workdir (reused when present), then times, in one process: listing the folder
(what the names-only fingerprint cost), the names-only fingerprint, and the content
fingerprint (every file read + sha256). A second pass shows the page-cache-warm cost;
the first pass after writing is warm too unless the OS evicted the files (a cold disk is
not measured). Also times sha256 of one --big-gib file (the RecordIO .rec case).
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from gallery.fingerprint import file_sha256, strings_sha256
from gallery.imagefolder import list_image_folder

IDENTITIES = 1000


def write_files(root: Path, files: int, size: int) -> None:
    marker = root / f".complete-{files}-{size}"
    if marker.exists():
        return
    rng = np.random.default_rng(0)
    header = b"P5\n32 32\n255\n"
    body = rng.integers(0, 256, size - len(header), dtype=np.uint8).tobytes()
    per = files // IDENTITIES
    for c in range(IDENTITIES):
        folder = root / f"id{c:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per):
            # distinct bytes per file: the counter overwrites the first 8 body bytes
            (folder / f"{j:05d}.pgm").write_bytes(header + (c * per + j).to_bytes(8, "little")
                                                  + body[8:])
    marker.write_text("ok")


def timed(fn):
    start, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, round(time.perf_counter() - start, 2), round(time.process_time() - cpu, 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--bytes", type=int, default=1037)
    parser.add_argument("--big-gib", type=float, default=2.0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fingerprint-bench"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/fingerprint.json"))
    args = parser.parse_args()
    root = args.workdir / "folder"
    _, write_s, _ = timed(lambda: write_files(root, args.files, args.bytes))
    listing, list_s, list_cpu = timed(lambda: list_image_folder(root))
    _, names_s, names_cpu = timed(
        lambda: strings_sha256(str(p.relative_to(root)) for p in listing.paths))
    rows = {"files": len(listing.paths), "bytes_each": args.bytes, "write_s": write_s,
            "list_s": list_s, "list_cpu_s": list_cpu, "names_only_s": names_s,
            "names_only_cpu_s": names_cpu}
    for n in (1, 2):
        _, wall, cpu = timed(listing.fingerprint)
        rows[f"content_pass{n}_s"], rows[f"content_pass{n}_cpu_s"] = wall, cpu
    big = args.workdir / "big.bin"
    size = int(args.big_gib * (1 << 30))
    if not big.exists() or big.stat().st_size != size:
        with open(big, "wb") as handle:
            block = os.urandom(1 << 24)
            for _ in range(size // len(block)):
                handle.write(block)
    _, wall, cpu = timed(lambda: file_sha256(big))
    rows.update(big_gib=args.big_gib, big_sha256_s=wall, big_sha256_cpu_s=cpu,
                big_gib_per_s=round(args.big_gib / max(wall, 1e-9), 2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print("| measure | value |\n|---|---|")
    for key, value in rows.items():
        print(f"| {key} | {value} |")


if __name__ == "__main__":
    main()
