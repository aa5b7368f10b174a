"""Glyph builder speed: render + write time per format, images per second.

    .venv/bin/python bench/glyphs.py --identities 1000 --per-identity 24 --out bench_glyphs.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from gallery.datasets.glyphs import GlyphConfig, build_glyphs


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--identities", type=int, default=1000)
    parser.add_argument("--per-identity", type=int, default=24)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="Write the rows as JSON here.")
    args = parser.parse_args()
    rows = []
    for formats in (("hdf5",), ("imagefolder", "hdf5")):
        with tempfile.TemporaryDirectory() as tmp:
            config = GlyphConfig(out=str(Path(tmp) / "d"), identities=args.identities,
                                 per_identity=args.per_identity, image_size=args.image_size,
                                 scenarios=("open-class",), formats=formats)
            wall, cpu = time.perf_counter(), _cpu()
            manifest = build_glyphs(config)
            wall, cpu = time.perf_counter() - wall, _cpu() - cpu
        images = sum(p["images"] for p in manifest["splits"]["open-class"].values())
        rows.append({"formats": "+".join(formats), "images": images, "wall_s": round(wall, 1),
                     "cpu_s": round(cpu, 1), "img_per_cpu_s": round(images / cpu)})
    print(f"glyphs {args.identities} ids x {args.per_identity} at {args.image_size}px, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'formats':<18}{'images':>8}{'wall s':>8}{'cpu s':>8}{'img/cpu-s':>11}")
    for r in rows:
        print(f"{r['formats']:<18}{r['images']:>8}{r['wall_s']:>8}{r['cpu_s']:>8}{r['img_per_cpu_s']:>11}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
