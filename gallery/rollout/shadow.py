"""Shadow queries: the same query images through the old and the new query path.

Each path embeds the queries with its own model and searches the gallery as that
model sees it (rows backfilled for a later model are only seen by that model's
lineage) with exact inner-product search, applying that model's threshold for each
(query model, row model) pair. The report is what an operator wants before (or
right after) a cut-over: top-k overlap, rank changes of items found by both, and the
open-set decisions that flip at the thresholds.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from gallery.encoder import load_registered
from gallery.ingest import embed_items, image_loader
from gallery.errors import BadInput
from gallery.imagefolder import expand_image_args, list_image_folder
from gallery.index.core import faiss_module
from gallery.preprocess import l2_normalize
from gallery.rollout import state
from gallery.search import SearchResult
from gallery.store import Store, overlays
from gallery.store.columns import stored_models
from gallery.store.reads import embeddings

log = logging.getLogger(__name__)


@dataclass
class ShadowConfig:
    store: str
    queries: str
    old: str | None = None          # default: the model the query model replaced (the query model when staged)
    new: str | None = None          # default: the staged model, else the query model
    k: int = 10
    old_model: str | None = None    # where the old model's file is now
    new_model: str | None = None
    batch_size: int = 64
    max_examples: int = 20
    detect: bool | None = None      # None: detect + align when a model declares aligned faces
    detector: str | None = None     # YuNet ONNX (default $GALLERY_YUNET_MODEL)

    def validate(self) -> None:
        if self.k < 1:
            raise BadInput(f"k must be >= 1, got {self.k}")
        if not Path(self.queries).exists():
            raise BadInput(f"queries not found: {self.queries}")


@dataclass
class PathResult:
    version: str
    scores: np.ndarray      # (nq, k)
    rows: np.ndarray        # (nq, k), -1 = no hit
    accepted: np.ndarray    # (nq,) some hit at or above its own pair threshold
    identity: np.ndarray    # (nq,) the matched identity; the top hit's when rejected ("" if none)


def list_queries(root: Path) -> tuple[list[Path], list[str] | None]:
    """ROOT/<identity>/<image> gives labels; a flat folder or one file gives none."""
    if root.is_dir() and any(p.is_dir() for p in root.iterdir()):
        listing = list_image_folder(root)
        return list(listing.paths), list(listing.identities)
    return expand_image_args([root]), None


def gallery_view(store: Store, version: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(live row numbers, their embeddings, their model versions) as `version`'s queries see them."""
    n = store.committed
    emb = embeddings(store, None, version)  # the store's one "vectors as `version` sees them"
    names, codes = stored_models(store, n)
    models = np.asarray(names, dtype=object)[codes] if n else np.empty(0, object)
    view = overlays.view(store, version)
    if view is not None and len(view.rows):
        models[view.rows] = view.versions
    live = np.flatnonzero(~store.tombstones())
    return live, emb[live], models[live].astype(str)


def search_path(store: Store, version: str, queries: np.ndarray, k: int) -> PathResult:
    faiss = faiss_module()  # imported on first use (gallery.index.core)
    live, emb, models = gallery_view(store, version)
    index = faiss.IndexFlatIP(store.dim)
    index.add(np.ascontiguousarray(emb))
    scores, pos = index.search(np.ascontiguousarray(l2_normalize(queries), np.float32), k)
    rows = np.where(pos >= 0, live[np.maximum(pos, 0)], -1) if len(live) else np.full_like(pos, -1)
    table = store.model(version).thresholds
    hit = pos >= 0
    hit_models = np.where(hit, models[np.maximum(pos, 0)], "") if len(live) else np.full(pos.shape, "")
    hit_identities = np.full(pos.shape, "", dtype=object)
    hit_identities[hit] = store.values_at("identity", rows[hit])  # the hits' rows only
    limits = np.vectorize(lambda m: table.get(str(m), np.nan), otypes=[np.float32])(hit_models)
    # The same decision rule as `gallery search` (SearchResult.best), so shadow flips mean real flips.
    best = SearchResult(version, scores, rows, hit_identities, hit_identities, hit_models, limits).best
    accepted = best >= 0
    decided = np.where(accepted, best, 0)
    top_identity = hit_identities[np.arange(len(rows)), decided] if rows.shape[1] else np.full(len(rows), "")
    return PathResult(version, scores, rows, accepted, top_identity)


def compare(old: PathResult, new: PathResult, k: int, labels: list[str] | None, names: list[str],
            max_examples: int) -> dict:
    """Overlap, rank shifts and decision flips between two paths' results."""
    overlaps, shifts, examples = [], [], []
    for q in range(len(old.rows)):
        a = [r for r in old.rows[q] if r >= 0]
        b = [r for r in new.rows[q] if r >= 0]
        common = set(a) & set(b)
        overlaps.append(len(common) / k)
        shifts.extend(abs(a.index(r) - b.index(r)) for r in common)
    old_dec = np.where(old.accepted, old.identity, None)
    new_dec = np.where(new.accepted, new.identity, None)
    flips = {
        "accept_to_reject": int((old.accepted & ~new.accepted).sum()),
        "reject_to_accept": int((~old.accepted & new.accepted).sum()),
        "identity_changed": int((old.accepted & new.accepted & (old.identity != new.identity)).sum()),
    }
    for q in np.flatnonzero(old_dec != new_dec)[:max_examples]:
        examples.append({"query": names[q], "label": labels[q] if labels else None,
                         "old": {"decision": old_dec[q], "top_identity": str(old.identity[q]),
                                 "score": float(old.scores[q, 0])},
                         "new": {"decision": new_dec[q], "top_identity": str(new.identity[q]),
                                 "score": float(new.scores[q, 0])}})
    overlaps_arr = np.asarray(overlaps)
    report = {
        "queries": len(old.rows), "k": k,
        "topk_overlap": {"mean": float(overlaps_arr.mean()), "min": float(overlaps_arr.min()),
                         "full": int((overlaps_arr == 1).sum())},
        "top1_same_item": float((old.rows[:, 0] == new.rows[:, 0]).mean()),
        "rank_shift": {"mean": float(np.mean(shifts)) if shifts else 0.0,
                       "max": int(max(shifts)) if shifts else 0, "items_in_both": len(shifts)},
        "decisions": {"old_accepted": int(old.accepted.sum()), "new_accepted": int(new.accepted.sum()),
                      "flips": flips, "changed": int(sum(flips.values()))},
        "examples": examples,
    }
    report["per_query"] = [{"query": names[q], "label": labels[q] if labels else None,
                            "old": old_dec[q], "new": new_dec[q]} for q in range(len(names))]
    if labels is not None:
        truth = np.asarray(labels)
        report["accuracy"] = {"old_rank1": float((old.identity == truth).mean()),
                              "new_rank1": float((new.identity == truth).mean()),
                              "old_accepted_correct": float((old.accepted & (old.identity == truth)).mean()),
                              "new_accepted_correct": float((new.accepted & (new.identity == truth)).mean())}
        report["outcomes"] = {"old": outcomes(old_dec, truth), "new": outcomes(new_dec, truth)}
        # Flips that make an answer worse: a correct match lost, or a wrong match made.
        old_ok, new_ok = old_dec == truth, new_dec == truth
        old_wrong = np.array([d is not None for d in old_dec]) & ~old_ok
        new_wrong = np.array([d is not None for d in new_dec]) & ~new_ok
        report["decisions"]["regressed"] = int((old_ok & ~new_ok).sum() + (new_wrong & ~old_wrong & ~old_ok).sum())
        report["decisions"]["improved"] = int((new_ok & ~old_ok).sum())
    return report


def outcomes(decisions: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    """Open-set outcome counts of one query path: correct match, wrong match, rejected."""
    rejected = np.array([d is None for d in decisions])
    correct = ~rejected & (decisions == truth)
    return {"correct": int(correct.sum()), "wrong": int((~rejected & ~correct).sum()), "rejected": int(rejected.sum())}


def shadow(config: ShadowConfig, progress: Callable[[int], None] | None = None) -> dict:
    """Run the queries through both paths (reads only) and compare them."""
    config.validate()
    paths, labels = list_queries(Path(config.queries))
    with Store.open(config.store, "r") as st:
        # Right after `upgrade --stage` the staged model is the new path and the query model the old one.
        staged = state.staged_model(st) if config.new is None else None
        new = st.resolve_version(config.new or staged or st.active_model)
        if config.old:
            old = st.resolve_version(config.old)
        elif staged:
            old = st.active_model
        elif len(state.lineage(st, new)) < 2:  # not rollback's "nothing to roll back to"
            raise BadInput(f"nothing to shadow in {st.path}: no model is staged and {new} replaced no other "
                           "query model (run `gallery upgrade --stage` first, or pass --old and --new)")
        else:
            old = state.previous_model(st, new)
        if old == new:
            raise BadInput(f"old and new query models are both {old}: nothing to compare")
        results = {}
        for version, model_path in ((old, config.old_model), (new, config.new_model)):
            encoder = load_registered(st.model(version), st.path, model_path)
            load = image_loader(encoder, config.detect, config.detector)  # face models: aligned crops
            queries = embed_items(encoder, paths, load, "fail", config.batch_size, progress).embeddings
            results[version] = search_path(st, version, queries, config.k)
    report = compare(results[old], results[new], config.k, labels, [str(p) for p in paths],
                     config.max_examples)
    return {"old": old, "new": new, **report, "config": asdict(config)}
