"""`Gallery`: the library's front door, one object per gallery store.

    import gallery
    g = gallery.open("runs/demo/store.h5")
    result = g.search(["probe.png"], k=5)      # image files or folders, or an (n, d) array
    print(result.match())

A Gallery holds the store's path, one read handle (so the faiss index and query
encoders stay loaded between searches) and what was said about where model files
live now. Writes (enrol, remove, upgrade, rollback, backfill, ...) close the read
handle, take the store's writer lock for the one operation and release it; the next
read opens a fresh handle that sees them. Another process's commits are seen before
every read (`live=True`, the default: a long-lived reader such as a service follows
upgrades and rollbacks): one os.stat of the manifest, and a new handle when another
process committed (an upgrade, a rollback, thresholds, enrolments), so the query model,
its thresholds, the index and the rows are re-read together. `live=False` keeps one
snapshot until `refresh()` (e.g. a batch job that must see one state throughout). Every failure raises a `gallery.errors` type (BadInput, GateFailed,
StoreLocked), the ones the CLI maps to exit codes.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from gallery import engines, ingest
from gallery import index as index_mod
from gallery import rollout
from gallery import search as search_mod
from gallery import thresholds
from gallery.arrayfiles import read_embedding_file
from gallery.encoder import Encoder, load_encoder, load_registered, old_space_view
from gallery.errors import BadInput
from gallery.model_identity import model_sha256
from gallery.modelfiles import to_stored
from gallery.rollout.backfill import status as backfill_status
from gallery.rollout import state as rollout_state
from gallery.store import ModelInfo, Store, spaces
from gallery.store.generation import current, stamp
from gallery.store.migrations import migrate_path

Progress = Callable[[int], None] | None
PathLike = str | Path


class Gallery:
    """A gallery store opened for use. Prefer `gallery.open(path)` / `gallery.create(...)`.

    `model` is where the query model's file is now, when it moved since it was
    registered (checked by sha256); `providers` / `require_gpu` choose onnxruntime's
    execution providers for encoders loaded here. `live`: every read first checks whether
    another process committed, and reads the new state if so (see the module docstring)."""

    def __init__(self, path: PathLike, model: PathLike | None = None,
                 providers: Sequence[str] | None = None, require_gpu: bool = False, live: bool = True) -> None:
        self.path = Path(path)
        self.live = live
        self.generation: str | None = None  # of the read handle (gallery.store.generation)
        self.reloads = 0                    # read handles opened on a newer generation than the last
        self._stamp: tuple | None = None
        self.model_path = None if model is None else Path(model)
        self._load_kwargs: dict[str, Any] = {"providers": list(providers) if providers else None,
                                             "require_gpu": require_gpu}
        self._store: Store | None = None
        self._encoders: dict[tuple[str, str], Encoder] = {}
        self._lock = threading.RLock()
        # Opened lazily: an older schema must still reach migrate() (readers refuse it).
        if not self.path.exists():
            raise BadInput(f"store not found: {self.path}")

    # ---- handles ----------------------------------------------------------------
    @contextmanager
    def _reader(self) -> Iterator[Store]:
        with self._lock:
            if self.live and self._store is not None and stamp(self.path) != self._stamp:
                self.refresh()
            if self._store is None:
                # stamped before opening: a commit in between makes the next check reopen
                seen = stamp(self.path) if self.live else None
                self._store = Store.open(self.path, "r")
                self._stamp, previous = seen, self.generation
                self.generation = current(self._store)
                self.reloads += previous is not None and previous != self.generation
            yield self._store

    @contextmanager
    def _writer(self) -> Iterator[Store]:
        """The writer lock for one operation. HDF5 refuses a second, writable handle on a
        file this process has open, so the read handle is closed first."""
        with self._lock:
            self.refresh()
            with Store.open(self.path, "a") as st:
                yield st

    def refresh(self) -> None:
        """Drop the read handle (and its cached index): the next read sees every commit.
        HDF5 shares one open file between the handles of a process, so the old handle is
        closed before a new one can see another process's commit."""
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def close(self) -> None:
        self.refresh()
        self._encoders.clear()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Gallery({str(self.path)!r})"

    @property
    def store(self) -> Store:
        """The read handle, for the store's own API (columns, models, history)."""
        with self._reader() as st:
            return st

    # ---- reading ----------------------------------------------------------------
    def info(self) -> dict:
        """Models, aliases, row counts."""
        with self._reader() as st:
            return st.info()

    def verify(self, quick: bool = False) -> dict:
        """Integrity report (`ok`, `problems` naming damaged files, `warnings`); damage is
        reported, not raised. `quick`: every listed file present with its size, no reading.
        `index`: the index sidecar's state (a damaged one is a problem, a stale one a warning)."""
        with self._reader() as st:
            return index_mod.check_sidecar(st.verify(quick=quick), st)

    def export(self, out: PathLike, progress: Progress = None, on_total: Progress = None) -> dict:
        """Write the live rows (embeddings, ids, identities, model versions) to a .h5 or .npz
        (`on_total(rows)`, then `progress(n)` per block read)."""
        with self._reader() as st:
            return st.export(out, progress, on_total)

    def history(self, everything: bool = False) -> list[dict]:
        """Upgrades, rollbacks, aliases, backfills, prunes (`everything`: also enrol/remove)."""
        with self._reader() as st:
            return rollout_state.rollout_history(st, everything)

    def uncalibrated(self) -> list[str]:
        """`query->rows` model pairs a search can meet that have no calibrated threshold."""
        with self._reader() as st:
            return thresholds.uncalibrated(st)

    def thresholds(self) -> dict:
        """The query model, every served (query model, row model) pair with its threshold
        (None: uncalibrated; search never accepts such a pair's hits) and the uncalibrated
        pairs by name."""
        with self._reader() as st:
            return thresholds.show(st)

    @property
    def aliases(self) -> dict[str, str]:
        with self._reader() as st:
            return st.aliases

    def search(self, queries: Any = None, k: int = 10, *, embeddings: PathLike | None = None,
               threshold: float | None = None,
               query_model: str | None = None, index: str | None = None, nprobe: int | None = None,
               ef_search: int | None = None, rerank: int | None = None, accept_uncalibrated: bool = False,
               batch_size: int = 64, on_error: str = "skip",
               detect: bool | None = None, detector: PathLike | None = None, landmarks: PathLike | None = None,
               engine: str | None = None, collection: str | None = None,
               progress: Progress = None, on_total: Progress = None) -> search_mod.SearchResult:
        """k nearest live items per query, with open-set rejection.

        `queries`: an (n, d) or (d,) array of embeddings made by `query_model` (default:
        the query model), or image files and folders, encoded with that model's encoder
        (face photos are detected and aligned when the model declares aligned face input,
        or with `detect` / `landmarks`; `detect=False` opts out). An image that cannot be
        used is skipped with its error in `result.errors` (`on_error="fail"` raises).
        Image queries call `on_total(images)`, then `progress(1)` per image.
        Or `embeddings`: a .npy/.h5 file of query embeddings. The result's `names` are the
        image paths, the file's ids, or row numbers. A hit of a (query model, row model)
        pair without a calibrated threshold is never accepted unless `accept_uncalibrated`.
        `engine` ("milvus:URI", "qdrant:URI") searches the serving view a `gallery sync`
        keeps there (alias `collection`, default the store's name) instead."""
        if (queries is None) == (embeddings is None):
            raise BadInput("give either queries (an array, or image files and folders) or an embeddings file")
        if engine is not None and (detect or landmarks):
            raise BadInput("--engine takes --embeddings or --image queries (no --detect/--landmarks)")
        errors: list[dict] = []
        old_space = None
        with self._reader() as st:
            version = st.resolve_version(query_model or st.active_model)
            if embeddings is not None:
                vectors, names, _ = read_embedding_file(embeddings, queries=True)
            elif isinstance(queries, np.ndarray):
                vectors, names = queries, [str(i) for i in range(len(np.atleast_2d(queries)))]
            else:
                vectors, names, errors = ingest.embed_queries(
                    self.encoder(version), [queries] if isinstance(queries, (str, Path)) else list(queries),
                    batch_size, progress, on_error, detect, detector, landmarks, on_total)
                view = old_space_view(self.encoder(version))
                if view is not None and spaces.groups(st, version).old_space.size and names:
                    # older rows of another dimension meet these queries through the projection
                    old_space = ingest.embed_queries(view, names, batch_size, None, "fail", detect, detector,
                                                     landmarks)[0]
            if engine is not None:  # the serving view a `gallery sync` keeps, same decisions
                with engines.connect(*engines.parse_engine(engine, st, collection)) as eng:
                    result = engines.search(eng, collection or engines.default_alias(st), vectors, k=k,
                                            threshold=threshold, store=st, params=eng.knobs(ef_search, nprobe),
                                            accept_uncalibrated=accept_uncalibrated)
            else:
                result = search_mod.search(st, vectors, k=k, threshold=threshold, query_version=version,
                                           kind=index, nprobe=nprobe, ef_search=ef_search, rerank=rerank,
                                           accept_uncalibrated=accept_uncalibrated, old_space_queries=old_space)
        result.names, result.errors = names, errors
        return result

    # ---- encoders ---------------------------------------------------------------
    def encoder(self, version: str | None = None, model: PathLike | None = None) -> Encoder:
        """The encoder of a store model (default: the query model), loaded once and checked
        against the sha256 the store recorded. `model`: where its file is now (default:
        the `model` this Gallery was opened with)."""
        with self._reader() as st:
            info = st.model(version)
        model = model or self.model_path
        key = (info.version, info.sha256, str(model or ""))  # a pruned version's name can come back
        if key not in self._encoders:
            self._encoders[key] = load_registered(info, self.path, model, **self._load_kwargs)
        return self._encoders[key]

    # ---- writing ----------------------------------------------------------------
    def enroll(self, source: Any = None, ids: Sequence[str] | PathLike | None = None,
               identities: Sequence[str] | None = None, *, embeddings: PathLike | None = None,
               labels: PathLike | None = None, model_version: str | None = None, batch_size: int | None = None,
               skip_existing: bool = False, on_error: str = "fail", detect: bool | None = None,
               detector: PathLike | None = None, landmarks: PathLike | None = None,
               progress: Progress = None, on_total: Progress = None) -> dict:
        """Add items from one of:
        - `source`, an image folder ROOT/<identity>/<image> (or any folder with a `labels`
          CSV `path,identity`): encoded with the query model, ids = paths relative to ROOT;
        - `source`, an (n, d) array, with `ids` (and optional `identities`);
        - `embeddings`, a .npy/.h5 file; `ids`: an ids file (`id[,identity]` per line).
        Embeddings are recorded as `model_version`'s (default: the query model). Images:
        face models detect and align (see `search`); `skip_existing` leaves out ids, or
        identical files, already enrolled (checked before any encoding); `on_error="skip"`
        leaves out unusable images and reports them in `errors`. Everything is read and
        encoded before the store is written: bad input changes nothing."""
        if (source is None) == (embeddings is None):
            raise BadInput("give either a source (image folder or array) or an embeddings file")
        if skip_existing and (embeddings is not None or isinstance(source, np.ndarray)):
            raise BadInput("--skip-existing applies to --images")
        if isinstance(source, np.ndarray):
            if ids is None or isinstance(ids, (str, Path)):
                raise BadInput("enrolling an array needs `ids`, one per row")
            return self._enroll_vectors(source, list(ids), identities, model_version, batch_size, progress)
        if embeddings is not None:
            if ids is not None and not isinstance(ids, (str, Path)):
                raise BadInput("with an embeddings file, `ids` is an ids file (or the .h5's `ids`)")
            vectors, file_ids, file_identities = read_embedding_file(embeddings, ids)
            if on_total is not None:
                on_total(len(vectors))
            return self._enroll_vectors(vectors, file_ids, file_identities, model_version, batch_size, progress)
        if model_version is not None:
            raise BadInput("model_version applies to embeddings; images use the query model")
        with self._writer() as st:
            return _caught_up(st, ingest.enroll_images(
                st, source, labels, self.model_path, batch_size or 64, progress, on_total, skip_existing=skip_existing,
                on_error=on_error, detect=detect, detector=detector, landmarks=landmarks, **self._load_kwargs))

    def _enroll_vectors(self, vectors: np.ndarray, ids: list[str], identities: Sequence[str] | None,
                        model_version: str | None, batch_size: int | None, progress: Progress) -> dict:
        with self._writer() as st:
            return _caught_up(st, st.enroll(vectors, ids, identities, model_version=model_version,
                                            progress=progress, batch_size=batch_size or 4096))

    def remove(self, ids: Sequence[str]) -> dict:
        """Tombstone items: never returned by search again; ids are never reused."""
        if isinstance(ids, str):
            ids = [ids]
        with self._writer() as st:
            return _caught_up(st, st.remove(list(ids)))

    def reindex(self, index: str | None = None, nlist: int | None = None, hnsw_m: int | None = None,
                progress: Progress = None, on_total: Progress = None) -> dict:
        """Rebuild the faiss index sidecar now (it is otherwise caught up or rebuilt when stale);
        `on_total(live rows)`, then `progress(n)` per block added."""
        with self._reader() as st:
            return index_mod.store_index(st, kind=index, rebuild=True, progress=progress, on_total=on_total,
                                         nlist=nlist, hnsw_m=hnsw_m).meta

    def set_model_path(self, version: str, path: PathLike) -> dict:
        """Record where `version`'s file is now; refused unless the file is that model (sha256)."""
        path = Path(path)
        if not path.is_file():
            raise BadInput(f"model file not found: {path}")
        digest = model_sha256(path)  # the .onnx and its external data files
        with self._reader() as st:
            info = st.model(version)
            if not info.has_encoder:
                raise BadInput(f"model {info.version} of {self.path} is embedding-only: it has no file")
            if digest != info.sha256:
                raise BadInput(f"{path} is not model {info.version} of {self.path} "
                               f"(sha256 {digest[:12]}..., expected {info.sha256[:12]}...)")
        with self._writer() as st, st.transaction():  # the path and its record: one commit
            info = st.model(version)
            previous = info.path
            info.path = str(path.resolve())
            st.update_model(info)  # stored relative to the store's folder when inside it
            stored = to_stored(st.path, path)
            st.append_history({"event": "model_path", "model": info.version, "path": stored, "previous": previous})
        self._encoders.clear()
        return {"model": info.version, "path": stored, "file": info.path, "previous": previous}

    def migrate(self, progress: Progress = None, on_total: Progress = None) -> dict:
        """The store's schema (a single-file v1/v2 store is converted by
        gallery.store.migrations.migrate_path before any Gallery can open it)."""
        with self._lock:
            self.refresh()
            return migrate_path(self.path, progress=progress, on_total=on_total)

    def calibrate(self, data: PathLike | None = None, report: PathLike | None = None, target_far: float = 1e-4,
                  impostor_pairs: int = 100_000, seed: int = 0, batch_size: int = 64,
                  progress: Progress = None, detect: bool | None = None,
                  detector: PathLike | None = None) -> dict:
        """Calibrate every served pair's threshold at `target_far` on labelled images `data`
        (ROOT/<identity>/<image>, check-compat's protocol; face models: photos detected and
        aligned unless detect=False), or copy them from a check-compat `report` about the
        store's models. Nothing is written when it is refused."""
        with self._lock:
            self.refresh()
            return thresholds.calibrate(self.path, data=data, report=report, target_far=target_far,
                                        batch_size=batch_size, progress=progress, seed=seed,
                                        impostor_pairs=impostor_pairs, detect=detect, detector=detector)

    def set_threshold(self, query: str, rows: str, value: float) -> dict:
        """Set the threshold (a cosine in [-1, 1]) of queries of model `query` against rows of
        model `rows` (versions or aliases) by hand."""
        with self._writer() as st:
            return thresholds.set_threshold(st, query, rows, value)

    def compact(self, dry_run: bool = False) -> dict:
        """Merge small segment, deletion and overlay files in one commit (`dry_run`: say what)."""
        if dry_run:
            with self._reader() as st:
                return st.compact(dry_run=True)
        with self._writer() as st:
            return st.compact()

    # ---- rollout ----------------------------------------------------------------
    def upgrade(self, model: PathLike, report: PathLike, version: str | None = None, force: bool = False,
                stage: bool = False, sign_key: PathLike | None = None, require_signed: bool = False,
                allow_missing_model: bool = False, adapter: PathLike | None = None, batch_size: int = 16_384,
                progress: Progress = None, on_total: Progress = None) -> dict:
        """Make `model` the query model, admitted by a passing check-compat `report`
        (GateFailed otherwise, unless `force`); `stage` registers it without switching.
        An already registered target whose file `model` is missing or another model is
        refused unless `allow_missing_model` (then it serves embedding queries only).
        `adapter` (from `train-adapter`, scored by the report): the query model's rows are
        mapped into the new model's space first, `batch_size` rows per commit (resumable: call
        again after a kill).
        `uncalibrated` in the result: served model pairs still without a threshold."""
        with self._lock:
            self.refresh()
            result = rollout.upgrade(self.path, model, report, version=version, force=force, stage=stage,
                                     sign_key=sign_key, require_signed=require_signed,
                                     allow_missing_model=allow_missing_model, adapter=adapter,
                                     batch_size=batch_size, progress=progress, on_total=on_total)
        return {**result, "uncalibrated": self.uncalibrated()}

    def rollback(self, to: str | None = None, allow_missing_model: bool = False) -> dict:
        """Restore the previous query model (or `to`, an earlier one). Refused while the
        target's model file is missing or changed, unless `allow_missing_model`."""
        with self._lock:
            self.refresh()
            result = rollout.rollback(self.path, to, allow_missing_model=allow_missing_model)
        return {**result, "uncalibrated": self.uncalibrated()}

    def set_alias(self, name: str, version: str | None) -> dict:
        """Point alias `name` at `version` (None removes it); aliases pin models against prune."""
        with self._lock:
            self.refresh()
            return rollout.set_alias(self.path, name, version)

    def prune(self, dry_run: bool = False, drop_rollback: bool = False) -> dict:
        """Remove model versions nothing needs any more."""
        with self._lock:
            self.refresh()
            return rollout.prune(self.path, dry_run=dry_run, drop_rollback=drop_rollback)

    def shadow(self, queries: PathLike, old: str | None = None, new: str | None = None, k: int = 10,
               old_model: PathLike | None = None, new_model: PathLike | None = None, batch_size: int = 64,
               progress: Progress = None, detect: bool | None = None, detector: PathLike | None = None) -> dict:
        """The same query images through the old and the new query path, compared (face models:
        detected + aligned unless detect=False)."""
        config = rollout.ShadowConfig(store=str(self.path), queries=str(queries), old=old, new=new, k=k,
                                      old_model=_opt_str(old_model), new_model=_opt_str(new_model),
                                      batch_size=batch_size, detect=detect, detector=_opt_str(detector))
        with self._lock:
            return rollout.shadow(config, progress=progress)

    def backfill(self, images: PathLike, batch_size: int = 64, model: PathLike | None = None,
                 trust_images: bool = False, publish_every: int = 10_000, progress: Progress = None,
                 on_total: Progress = None, detect: bool | None = None, detector: PathLike | None = None) -> dict:
        """Re-embed older rows whose images ROOT/<item id> exist with the query model
        (resumable; readers keep searching; face models: detected + aligned unless detect=False)."""
        config = rollout.BackfillConfig(store=str(self.path), images=str(images), batch_size=batch_size,
                                        model=_opt_str(model or self.model_path), trust_images=trust_images,
                                        publish_every=publish_every, detect=detect, detector=_opt_str(detector))
        with self._lock:
            self.refresh()
            return rollout.backfill(config, progress=progress, on_total=on_total)

    def backfill_status(self) -> dict:
        """Rows per model version and any unfinished backfill run (`ok` False if damaged)."""
        with self._lock:
            self.refresh()
            return backfill_status(self.path)


def _caught_up(store: Store, result: dict) -> dict:
    """The writer brings an existing index sidecar up to date after an enrol or a removal
    (rows appended, removals masked; `index` in the result says how), so readers find it
    fresh rather than each catching up on its own."""
    result["index"] = index_mod.refresh_after_write(store)
    return result


def _opt_str(path: PathLike | None) -> str | None:
    return None if path is None else str(path)


def open(path: PathLike, model: PathLike | None = None, providers: Sequence[str] | None = None,
         require_gpu: bool = False, live: bool = True) -> Gallery:
    """Open an existing gallery store (BadInput if missing or not a store). `live` (the
    default): follow other processes' commits before every read; `live=False`: one
    snapshot until `refresh()`."""
    return Gallery(path, model=model, providers=providers, require_gpu=require_gpu, live=live)


def create(path: PathLike, model: PathLike | None = None, *, dim: int | None = None,
           model_id: str | None = None, version: str = "v1", dtype: str = "float32",
           providers: Sequence[str] | None = None) -> Gallery:
    """Create a store with its first model: an encoder file (`model`), or, for a gallery
    of precomputed embeddings, their `dim` and the `model_id` naming what made them."""
    if (model is None) == (dim is None):
        raise BadInput("give either a model file or dim and model_id")
    if model is not None:
        info = ModelInfo.from_encoder(version, load_encoder(model, providers=providers))
    elif not model_id:
        raise BadInput("an embedding-only gallery needs a model_id (how its embeddings' model is identified)")
    else:
        info = ModelInfo(version=version, dim=dim, model_id=model_id)
    Store.create(path, info, dtype=dtype).close()
    return Gallery(path, providers=providers)


__all__ = ["Gallery", "open", "create"]
