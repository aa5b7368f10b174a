"""Installed CJK font faces and the characters each one really covers.

Faces are found with fontconfig (`fc-list`) and, when it is missing, by scanning
/usr/share/fonts. `GALLERY_FONT_DIRS` (directories joined with ':') replaces both: only
the fonts found there are used (a machine without the Debian packages, e.g. a GPU host
given fonts subset by bench/gpu_fonts.py). Region variants of one design (Noto Sans CJK SC/TC/JP/...,
AR PL UKai CN/TW, the Mono and proportional twins) draw nearly identical
ideographs, so they are grouped into one *design* and only one face per design is
used: holding a face out of training must hold out its look, not just its name.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from fontTools.ttLib import TTCollection, TTFont
from PIL import ImageFont

from gallery.errors import BadInput

log = logging.getLogger(__name__)

FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
FONT_DIRS_ENV = "GALLERY_FONT_DIRS"
FONT_SUFFIXES = {".ttf", ".ttc", ".otf", ".otc"}
# Suffixes that only name a region or a spacing variant of the same design.
_VARIANT = re.compile(r"(\s+(SC|TC|JP|KR|HK|CN|TW|TW MBE|Mono))+$")
_REGION_PREFERENCE = ("SC", "CN", "", "JP", "TC", "HK", "TW", "KR")


@dataclass(frozen=True)
class Face:
    """One face inside a font file (a .ttc holds several, addressed by index)."""

    path: str
    index: int
    family: str
    style: str

    @property
    def design(self) -> str:
        """Design name shared by region/spacing variants, e.g. 'Noto Sans CJK Bold'."""
        family = _VARIANT.sub("", self.family)
        family = family.replace("Sans Mono CJK", "Sans CJK")
        family = re.sub(r"^IPAP", "IPA", family)  # proportional twin, same glyphs
        style = "" if self.style in ("Regular", "Book", "Light", "Medium") else " " + self.style
        return family + style

    def to_dict(self) -> dict:
        return {**asdict(self), "design": self.design}


def discover_faces(lang: tuple[str, ...] = ("zh", "ja")) -> list[Face]:
    """Every installed face supporting one of the languages, deduplicated by real file."""
    override = os.environ.get(FONT_DIRS_ENV)
    if override:
        faces = _faces_from_scan(tuple(Path(d) for d in override.split(":") if d))
    else:
        faces = _faces_from_fc_list(lang) if shutil.which("fc-list") else _faces_from_scan()
    unique: dict[tuple[str, int], Face] = {}
    for face in faces:
        key = (os.path.realpath(face.path), face.index)
        if key not in unique or face.path < unique[key].path:
            unique[key] = face
    return sorted(unique.values(), key=lambda f: (f.design, f.family, f.path, f.index))


def one_face_per_design(faces: list[Face]) -> list[Face]:
    """Keep a single representative face per design (simplified-Chinese variant first)."""
    by_design: dict[str, list[Face]] = {}
    for face in faces:
        by_design.setdefault(face.design, []).append(face)
    chosen = []
    for design in sorted(by_design):
        chosen.append(min(by_design[design], key=_region_rank))
    return chosen


def _region_rank(face: Face) -> tuple[int, str, int]:
    match = re.search(r"\s(SC|TC|JP|KR|HK|CN|TW)(\s+MBE)?$", face.family)
    region = match.group(1) if match else ""
    mono = 1 if "Mono" in face.family or face.family.startswith("IPAP") else 0
    rank = _REGION_PREFERENCE.index(region) if region in _REGION_PREFERENCE else 99
    return (mono * 100 + rank, face.family, face.index)


def _faces_from_fc_list(lang: tuple[str, ...]) -> list[Face]:
    faces = []
    for code in lang:
        out = subprocess.run(
            ["fc-list", "--format", "%{file}|%{index}|%{family[0]}|%{style[0]}\n", f":lang={code}"],
            capture_output=True, text=True, check=False,
        ).stdout
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) == 4 and Path(parts[0]).suffix.lower() in FONT_SUFFIXES:
                faces.append(Face(parts[0], int(parts[1]), parts[2], parts[3]))
    return faces


def _faces_from_scan(dirs: tuple[Path, ...] = FONT_DIRS) -> list[Face]:
    """Without fontconfig: read names from the files (CJK-looking cmaps only)."""
    faces = []
    for root in dirs:
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            if path.suffix.lower() not in FONT_SUFFIXES:
                continue
            try:
                count = len(TTCollection(str(path)).fonts) if path.suffix.lower() in (".ttc", ".otc") else 1
                for index in range(count):
                    font = TTFont(str(path), fontNumber=index, lazy=True)
                    if ord("的") in (font.getBestCmap() or {}):
                        name = font["name"]
                        faces.append(Face(str(path), index, str(name.getDebugName(1)), str(name.getDebugName(2))))
            except Exception:  # a broken font file is skipped, not fatal
                log.warning("skipping unreadable font %s", path)
    return faces


@lru_cache(maxsize=None)
def face_codepoints(path: str, index: int) -> frozenset[int]:
    """Code points the face's cmap maps to a glyph (not .notdef)."""
    font = TTFont(path, fontNumber=index, lazy=True)
    cmap = font.getBestCmap() or {}
    return frozenset(cp for cp, glyph in cmap.items() if glyph != ".notdef")


def gb2312_level1() -> list[str]:
    """The 3,755 GB2312 level-1 hanzi, in GB2312 (pinyin) order."""
    chars = []
    for high in range(0xB0, 0xD8):
        for low in range(0xA1, 0xFF):
            try:
                chars.append(bytes([high, low]).decode("gb2312"))
            except UnicodeDecodeError:  # 0xD7FA..0xD7FE are unassigned
                continue
    return chars


def covered_pool(faces: list[Face]) -> list[str]:
    """Level-1 characters that every face covers and draws with visible ink."""
    return list(_covered_pool(tuple(faces)))


@lru_cache(maxsize=8)
def _covered_pool(faces: tuple[Face, ...]) -> tuple[str, ...]:
    pool = gb2312_level1()
    for face in faces:
        cps = face_codepoints(face.path, face.index)
        font = ImageFont.truetype(face.path, size=24, index=face.index)
        pool = [ch for ch in pool if ord(ch) in cps and _has_ink(font, ch)]
    return tuple(pool)


def _has_ink(font, ch: str) -> bool:
    left, top, right, bottom = font.getbbox(ch)
    return right > left and bottom > top


def select_faces(designs: list[str] | None = None) -> list[Face]:
    """One face per installed design, optionally restricted to the named designs."""
    faces = one_face_per_design(discover_faces())
    if not faces:
        raise BadInput("no CJK fonts found; install fonts-noto-cjk etc. (see setup.sh)")
    if designs:
        known = {f.design: f for f in faces}
        missing = [d for d in designs if d not in known]
        if missing:
            raise BadInput(f"font design(s) not installed: {', '.join(missing)}; installed: {', '.join(known)}")
        faces = [known[d] for d in designs]
    return faces
