"""Lazy backfill: re-embed older rows with the query model where their images still exist.

The run is planned once (the rows to visit, in row order, fixed in the store), then
processed in batches; every `publish_every` rows the buffered batches and the plan cursor
are one commit (see overlay.py). A run killed at any
point resumes from its last committed batch with the same plan and the same batch
boundaries, so it ends with exactly the rows and embeddings of an uninterrupted run.
Readers keep searching throughout: they see whole committed batches only, and rows
without images simply stay as they are (older model, still searchable).

An image is used only if its sha256 equals the row's recorded content hash (what was
enrolled), unless `trust_images` is set (rows enrolled from embeddings have no image hash).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gallery.encoder import load_registered
from gallery.ingest import embed_items, image_loader
from gallery.errors import BadInput
from gallery.fingerprint import file_sha256
from gallery.preprocess import l2_normalize
from gallery.rollout import overlay, state
from gallery.store import Store, overlays
from gallery.store.reads import model_counts

log = logging.getLogger(__name__)

Progress = Callable[[int], None] | None


@dataclass
class BackfillConfig:
    store: str
    images: str
    batch_size: int = 64
    model: str | None = None        # where the query model's file is now (checked by sha256)
    trust_images: bool = False      # skip the content-hash check
    publish_every: int = 10_000     # rows between the points where readers see progress
    detect: bool | None = None      # None: detect + align when the model declares aligned faces
    detector: str | None = None     # YuNet ONNX (default $GALLERY_YUNET_MODEL)

    def validate(self) -> None:
        if self.batch_size < 1:
            raise BadInput(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.publish_every < 1:
            raise BadInput(f"--publish-every must be >= 1, got {self.publish_every}")
        if not Path(self.images).is_dir():
            raise BadInput(f"image folder not found: {self.images}")


def plan_rows(store: Store, root: Path) -> tuple[np.ndarray, int]:
    """Live rows not embedded by the query model whose image ROOT/<item id> exists; and how many lack one."""
    cols = store.columns()
    todo = np.flatnonzero(~cols["deleted"] & (cols["model"] != store.active_model))
    exists = np.array([(root / str(cols["id"][r])).is_file() for r in todo], dtype=bool)
    return todo[exists], int((~exists).sum())


def _usable(cols: dict, rows: np.ndarray, root: Path, trust: bool) -> tuple[np.ndarray, list[str]]:
    """Which rows of a batch have an image that is the one enrolled: (mask, their sha256s)."""
    ok = np.zeros(len(rows), bool)
    hashes: list[str] = []
    for i, r in enumerate(rows):
        path = root / str(cols["id"][r])
        if not path.is_file():
            continue  # deleted since the plan was made
        digest = file_sha256(path)
        if trust or digest == str(cols["content_hash"][r]):
            ok[i] = True
            hashes.append(digest)
    return ok, hashes


def _embed(encoder: Any, paths: list[Path], dtype: str, load: Any) -> np.ndarray:
    # One encoder call per planned batch: the same inputs in the same batch on a resume.
    emb = embed_items(encoder, paths, load, "fail", batch_size=max(1, len(paths))).embeddings
    if not np.isfinite(emb).all() or (np.linalg.norm(emb, axis=1) == 0).any():
        raise BadInput("the query model produced NaN/inf or all-zero embeddings; backfill stopped "
                       "(committed batches are kept)")
    return l2_normalize(emb).astype(dtype)


def _start(st: Store, config: BackfillConfig, root: Path) -> tuple[np.ndarray, int, dict, bool]:
    version = st.active_model
    existing = overlays.plan(st, version)
    if existing is not None:
        rows, cursor, meta = existing
        log.info("resuming backfill of %s at %d/%d", st.path, cursor, len(rows))
        overlays.check_space(st, len(rows) - cursor, overlays.version_dim(st, version))
        return rows, cursor, meta, True
    rows, missing = plan_rows(st, root)
    # the whole run, before its plan is written
    overlays.check_space(st, len(rows), overlays.version_dim(st, version), extra=rows.nbytes)
    base = overlays.count(st, version)
    meta = {"batch_size": config.batch_size, "images": str(root.resolve()), "missing": missing,
            "base": base, "started": time.time(), "trust_images": config.trust_images}
    overlay.start_plan(st, version, rows, meta)
    return rows, 0, meta, False


def backfill(config: BackfillConfig, progress: Progress = None,
             on_total: Callable[[int], None] | None = None) -> dict:
    """Run (or resume) a backfill of the store's query model; returns counts."""
    config.validate()
    root = Path(config.images)
    with Store.open(config.store, "a") as st:
        version = st.active_model
        encoder = load_registered(st.model(), st.path, config.model)
        load = image_loader(encoder, config.detect, config.detector)  # face models: aligned crops
        rows, cursor, meta, resumed = _start(st, config, root)
        batch, trust = int(meta["batch_size"]), bool(meta.get("trust_images", config.trust_images))
        if on_total is not None:
            on_total(len(rows))
        if progress is not None and cursor:
            progress(cursor)
        cols = st.columns()  # read once: each commit invalidates the store's column cache
        ids = cols["id"]
        for lo in range(cursor, len(rows), batch):
            chunk = rows[lo : lo + batch]
            ok, hashes = _usable(cols, chunk, root, trust)
            keep = chunk[ok]
            emb = _embed(encoder, [root / str(ids[r]) for r in keep], st.dtype, load) if keep.size else \
                np.empty((0, encoder.dim), st.dtype)
            unpublished = overlay.pending_rows(st, version) + len(keep)
            overlay.commit_batch(st, version, keep, emb, hashes, cursor=lo + len(chunk),
                                 publish=unpublished >= config.publish_every)
            if progress is not None:
                progress(len(chunk))
        with st.transaction():  # the last rows, the end of the run and its record: one commit
            overlay.finish_plan(st, version)
            committed = overlays.count(st, version)
            result = {"model": version, "batch_size": batch, "planned": int(len(rows)),
                      "embedded": committed - int(meta["base"]),
                      "skipped_no_image": int(meta["missing"]), "resumed": resumed,
                      "remaining_older_rows": _older_rows(st), "config": asdict(config)}
            result["skipped_changed_or_missing"] = result["planned"] - result["embedded"]
            state.record(st, "backfill", **{k: v for k, v in result.items() if k != "config"})
        return result


def _older_rows(store: Store) -> int:
    return sum(count for version, count in model_counts(store).items() if version != store.active_model)


def status(store_path: str | Path) -> dict:
    """Backfill progress of the query model: rows per model version and any unfinished run."""
    with Store.open(store_path, "r") as st:
        pending = overlays.plan(st, st.active_model)
        problems = overlays.check(st)
        return {"model": st.active_model, "rows_per_model": model_counts(st),  # not every row decoded
                "unfinished_run": None if pending is None else {"done": pending[1], "planned": len(pending[0])},
                "ok": not problems, "problems": problems}
