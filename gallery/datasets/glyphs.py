"""Glyph identities: each GB2312 level-1 character is an identity, each rendering
(font face, weight, scale, shift, rotation, stroke, blur, noise, contrast) an image.

Every image is a pure function of (seed, role, code point, image index), drawn
with its own numpy generator, so results do not depend on identity count, order
or worker count. Font faces named in `holdout_faces` never appear in old/new
training images; evaluation images use every face.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from gallery.errors import BadInput
from gallery.datasets import layout
from gallery.datasets.fonts import Face, covered_pool, select_faces
from gallery.datasets.splits import open_data_old_count, parse_scenarios, split_identities

log = logging.getLogger(__name__)

# Held out by default when installed: the brush (kai) style and a Japanese mincho
# look nothing like the training faces' strokes, which makes eval a real shift.
DEFAULT_HOLDOUT = ("AR PL UKai", "IPAMincho")
TRAIN, EVAL = 0, 1  # role codes in the per-image seed


@dataclass
class GlyphConfig:
    out: str
    identities: int = 1000
    per_identity: int = 24
    eval_per_identity: int = 10
    image_size: int = 32
    seed: int = 0
    eval_fraction: float = 0.2
    old_fraction: float = 0.3           # open-class: share of training identities for old
    open_data_old_fraction: float = 0.3  # open-data: share of each identity's images for old
    faces: list[str] | None = None       # font designs to use (default: all installed)
    holdout_faces: list[str] | None = None  # designs used only in eval (default DEFAULT_HOLDOUT)
    scenarios: Sequence[str] = ("open-class", "open-data")
    formats: Sequence[str] = ("imagefolder", "hdf5")
    workers: int = 1
    overwrite: bool = False

    def validate(self) -> None:
        if not 8 <= self.image_size <= 512:
            raise BadInput(f"image size must be between 8 and 512, got {self.image_size}")
        if self.per_identity < 2 or self.eval_per_identity < 2:
            raise BadInput("need at least 2 images per identity (train and eval)")
        if self.identities < 6:
            raise BadInput(f"need at least 6 identities, got {self.identities}")
        if self.workers < 1:
            raise BadInput(f"workers must be >= 1, got {self.workers}")


@dataclass
class _Job:
    codepoints: list[int]
    count: int
    role: int
    face_ids: list[int]          # indices into the face list this role may use
    faces: list[Face] = field(repr=False, default_factory=list)
    size: int = 32
    seed: int = 0


def build_glyphs(config: GlyphConfig, progress: Callable[[int], None] | None = None) -> dict:
    """Render, split and write the glyph dataset; return the manifest (also in OUT)."""
    config.validate()
    scenarios = parse_scenarios(config.scenarios)
    formats = layout.parse_formats(",".join(config.formats))
    faces, holdout = _choose_faces(config)
    pool = covered_pool(faces)
    split = split_identities([_name(ch) for ch in pool], config.identities,
                             config.eval_fraction, config.old_fraction, config.seed)
    chars = {_name(ch): ch for ch in pool}
    train_ids = [i for i, f in enumerate(faces) if f.design not in holdout]
    all_ids = list(range(len(faces)))
    staging = layout.begin(config.out, config.overwrite)
    try:
        train = _render(_Job([ord(chars[n]) for n in split.train], config.per_identity, TRAIN,
                             train_ids, faces, config.image_size, config.seed), config.workers, progress)
        evals = _render(_Job([ord(chars[n]) for n in split.eval], config.eval_per_identity, EVAL,
                             all_ids, faces, config.image_size, config.seed), config.workers, progress)
        parts = _assemble(split, train, evals, config)
        attrs = {"builder": "glyphs", "seed": config.seed, "image_size": config.image_size}
        splits: dict = {}
        for scenario in scenarios:
            splits[scenario] = {
                name: layout.write_part(staging, scenario, name, part, formats, attrs, progress)
                for name, part in parts[scenario].items()
            }
        manifest = _manifest(config, faces, holdout, pool, split, chars, splits)
        layout.commit(staging, manifest)
    except BaseException:
        layout.abort(staging)
        raise
    return manifest


def _choose_faces(config: GlyphConfig) -> tuple[list[Face], set[str]]:
    faces = select_faces(config.faces)
    designs = [f.design for f in faces]
    if config.holdout_faces is None:
        holdout = {d for d in DEFAULT_HOLDOUT if d in designs}
    else:
        unknown = [d for d in config.holdout_faces if d not in designs]
        if unknown:
            raise BadInput(f"held-out face(s) not among the chosen faces: {', '.join(unknown)}; chosen: {', '.join(designs)}")
        holdout = set(config.holdout_faces)
    if len(holdout) >= len(faces):
        raise BadInput("every face is held out; leave at least one face for training")
    return faces, holdout


def _name(ch: str) -> str:
    return f"u{ord(ch):04x}"


def _assemble(split, train: dict, evals: dict, config: GlyphConfig) -> dict[str, dict[str, layout.Part]]:
    """Cut the rendered images into the scenario splits (no re-rendering)."""
    k_old = open_data_old_count(config.per_identity, config.open_data_old_fraction)
    everything = range(config.per_identity)
    eval_part = _part(evals, split.eval, range(config.eval_per_identity), config.eval_per_identity)
    return {
        "open-class": {
            "old": _part(train, split.old, everything, config.per_identity),
            "new": _part(train, split.new, everything, config.per_identity),
            "eval": eval_part,
        },
        "open-data": {
            "old": _part(train, split.train, range(k_old), config.per_identity),
            "new": _part(train, split.train, range(k_old, config.per_identity), config.per_identity),
            "eval": eval_part,
        },
    }


def _part(rendered: dict, names: list[str], indices: range, per: int) -> layout.Part:
    position = {n: i for i, n in enumerate(rendered["names"])}
    rows = [position[n] * per + j for n in names for j in indices]
    return layout.Part(
        images=rendered["images"][rows],
        identities=[n for n in names for _ in indices],
        files=[f"{j:03d}.png" for _ in names for j in indices],
        extra={"face": rendered["face"][rows], "index": rendered["index"][rows],
               "codepoint": rendered["codepoint"][rows]},
    )


def _render(job: _Job, workers: int, progress: Callable[[int], None] | None) -> dict:
    """Render job.count images per code point, in code point order."""
    chunks = [job.codepoints[i : i + 64] for i in range(0, len(job.codepoints), 64)]
    jobs = [_Job(c, job.count, job.role, job.face_ids, job.faces, job.size, job.seed) for c in chunks]
    results = []
    if workers > 1 and len(jobs) > 1:
        # imap keeps chunk order, and each image has its own seed: output is identical
        with mp.get_context("fork").Pool(workers) as pool:
            for result in pool.imap(_render_chunk, jobs):
                results.append(result)
                if progress is not None:
                    progress(len(result[0]))
    else:
        for sub in jobs:
            results.append(_render_chunk(sub))
            if progress is not None:
                progress(len(results[-1][0]))
    size = job.size
    images = np.concatenate([r[0] for r in results]) if results else np.zeros((0, size, size, 1), np.uint8)
    faces = np.concatenate([r[1] for r in results]) if results else np.zeros(0, np.int16)
    return {
        "names": [f"u{cp:04x}" for cp in job.codepoints],
        "images": images,
        "face": faces,
        "index": np.tile(np.arange(job.count, dtype=np.int32), len(job.codepoints)),
        "codepoint": np.repeat(np.array(job.codepoints, dtype=np.int32), job.count),
    }


def _render_chunk(job: _Job) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(job.codepoints) * job.count, job.size, job.size, 1), np.uint8)
    face_of = np.empty(len(job.codepoints) * job.count, np.int16)
    row = 0
    for cp in job.codepoints:
        # faces are dealt round-robin from a random start so every identity sees each face
        start = int(np.random.default_rng([job.seed, job.role, cp]).integers(len(job.face_ids)))
        for j in range(job.count):
            face_id = job.face_ids[(start + j) % len(job.face_ids)]
            rng = np.random.default_rng([job.seed, job.role, cp, j])
            images[row, :, :, 0] = render_glyph(chr(cp), job.faces[face_id], job.size, rng)
            face_of[row] = face_id
            row += 1
    return images, face_of


_FONTS: dict[tuple[str, int, int], object] = {}


def _font(face: Face, px: int):
    key = (face.path, face.index, px)
    if key not in _FONTS:
        _FONTS[key] = ImageFont.truetype(face.path, size=px, index=face.index)
    return _FONTS[key]


def render_glyph(ch: str, face: Face, size: int, rng: np.random.Generator) -> np.ndarray:
    """One size x size uint8 grayscale image of `ch` (dark ink on a light background)."""
    canvas = 2 * size  # draw at 2x and box-downsample: smooth edges at 32 px
    scale = rng.uniform(0.72, 0.98)
    px = max(8, int(round(canvas * scale)))
    shift = rng.uniform(-0.07, 0.07, size=2) * canvas
    image = Image.new("L", (canvas, canvas), 0)
    ImageDraw.Draw(image).text((canvas / 2 + shift[0], canvas / 2 + shift[1]), ch,
                               fill=255, font=_font(face, px), anchor="mm")
    image = image.rotate(float(rng.uniform(-12.0, 12.0)), resample=Image.BILINEAR)
    stroke = rng.uniform(-0.6, 1.0)  # < 0 thins strokes, > 0 thickens them (thin faces vanish below -0.6)
    if abs(stroke) > 0.25:
        image = image.filter(ImageFilter.GaussianBlur(canvas / 64))
    image = image.resize((size, size), Image.BOX)
    blur = rng.uniform(0.0, 1.0) * size / 32
    if blur > 0.4:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    ink = np.asarray(image, dtype=np.float32) / 255.0
    # light faces lose contrast when downsampled; restore full ink strength first
    ink /= max(float(ink.max()), 0.3)
    if abs(stroke) > 0.25:
        # a blurred mask re-thresholded low is a bolder stroke, high a thinner one
        centre = 0.5 - 0.25 * stroke
        ink = np.clip((ink - centre) * 3.0 + 0.5, 0.0, 1.0)
    background = rng.uniform(170.0, 255.0)
    colour = rng.uniform(0.0, 90.0)
    pixels = background + (colour - background) * ink
    pixels += rng.normal(0.0, rng.uniform(0.0, 10.0), size=pixels.shape)
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def _manifest(config, faces, holdout, pool, split, chars, splits) -> dict:
    return {
        "builder": "glyphs",
        # out/overwrite/workers do not change the data, so they stay out of the manifest
        "config": {k: v for k, v in asdict(config).items() if k not in ("out", "overwrite", "workers")}
        | {"scenarios": list(config.scenarios), "formats": list(config.formats)},
        "faces": [{**f.to_dict(), "role": "eval-only" if f.design in holdout else "train"} for f in faces],
        "pool_size": len(pool),
        "identities": {"old": split.old, "new": split.new, "eval": split.eval},
        "characters": {n: chars[n] for n in split.old + split.new + split.eval},
        "splits": splits,
        "color_order": "GRAY",
    }
