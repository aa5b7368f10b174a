"""Subset the installed CJK faces to the characters a glyph run needs, for a machine without them.

    python bench/gpu_fonts.py --chars 800 --out .gpu/fonts
    GALLERY_FONT_DIRS=.gpu/fonts gallery data glyphs ...   # on the other machine

The lent GPU host has no Debian font packages and no network; the installed faces are
164 MiB. Each face used by the glyph builder (one per design) is written as its own
font file holding only the first `--chars` characters of the level-1 pool every face
covers, without hinting: the outlines, and so the rendered images, are the same as the
full font's for those characters. Names are kept, so designs and hold-out faces match.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gallery.datasets.fonts import covered_pool, one_face_per_design, discover_faces


def subset_faces(chars: int, out: Path) -> list[dict]:
    from fontTools import subset
    from fontTools.ttLib import TTFont

    faces = one_face_per_design(discover_faces())
    text = "".join(covered_pool(faces)[:chars])
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for n, face in enumerate(faces):
        font = TTFont(face.path, fontNumber=face.index)
        options = subset.Options()
        options.hinting = False
        options.name_IDs = ["*"]  # family/style names decide the design
        options.notdef_outline = True
        subsetter = subset.Subsetter(options)
        subsetter.populate(text=text)
        subsetter.subset(font)
        suffix = ".otf" if "CFF " in font else ".ttf"
        path = out / f"face{n:02d}{suffix}"
        font.save(str(path))
        written.append({"design": face.design, "file": path.name, "bytes": path.stat().st_size})
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chars", type=int, default=800, help="characters kept (>= identities)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    for row in subset_faces(args.chars, args.out):
        print(f"{row['design']:28s} {row['file']:12s} {row['bytes'] / 1024:8.0f} KiB")


if __name__ == "__main__":
    main()
