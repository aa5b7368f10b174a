"""Old features of the new training set: extracted once, cached, reused only when valid.

DESIGN §2 step 1. phi_old runs over every training image once (eval order, no
augmentation) with the old model's own preprocessing. The HDF5 cache is keyed by a
fingerprint of (old model file sha256, dataset listing), so a retrained old model or an
edited dataset never reuses stale features. `--old-features FILE.h5` (a file this module
wrote) is checked against the dataset the same way.

Also holds OldFeatureMethod, the base of every method that constrains the new model
with old features (l2, bct, mixbct).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import torch

from gallery.errors import BadInput
from gallery.fingerprint import strings_sha256
from gallery.h5safe import open_input
from trainer.methods.base import CompatMethod, MethodContext
from trainer.old_model import load_old_model, old_model_id, summary

log = logging.getLogger(__name__)

FORMAT = "gallery.old_features/1"
Progress = Callable[[int], None]


@dataclass
class OldFeatures:
    features: np.ndarray        # (N, d) float32, raw (not normalised), dataset order
    labels: np.ndarray          # (N,) int64
    old_model: dict[str, Any]   # old_model.summary() of the encoder that made them
    dataset_fingerprint: str
    source: str = "extracted"   # extracted | cache | file


def cache_key(old_sha256: str, dataset_fingerprint: str) -> str:
    return strings_sha256([FORMAT, old_sha256, dataset_fingerprint])


def extract_old_features(encoder: Any, dataset: Any, batch_size: int = 64,
                         progress: Progress | None = None) -> np.ndarray:
    """Run the old encoder over the dataset in order, with the old model's preprocessing."""
    mine, theirs = dataset.spec, encoder.spec
    if (mine.height, mine.width, mine.color_order) == (theirs.height, theirs.width,
                                                      theirs.color_order):
        # same decoded pixels; to_tensor applies the old model's own mean/std
        features = _extract_from_arrays(encoder, dataset, batch_size, progress)
    else:
        paths = _source_paths(dataset)
        if paths is None:
            raise BadInput(
                f"the old model expects {theirs.height}x{theirs.width} {theirs.color_order} "
                f"input but the dataset was decoded as {mine.height}x{mine.width} "
                f"{mine.color_order} and its files cannot be re-read; use the old model's "
                "--image-size/--color-order or pass --old-features"
            )
        from gallery.encoder import embed_paths

        features = embed_paths(encoder, paths, batch_size=batch_size, progress=progress)
    features = np.asarray(features, dtype=np.float32)
    if features.shape != (len(dataset), encoder.dim):
        raise BadInput(f"old model gave {features.shape} features for {len(dataset)} images")
    return features


def _extract_from_arrays(encoder: Any, dataset: Any, batch_size: int,
                         progress: Progress | None) -> np.ndarray:
    from gallery.encoder import embed_images

    chunks = []
    for start in range(0, len(dataset), batch_size):
        batch = np.arange(start, min(start + batch_size, len(dataset)))
        chunks.append(embed_images(encoder, dataset.images_uint8(batch)))
        if progress is not None:
            progress(len(batch))
    return np.concatenate(chunks) if chunks else np.zeros((0, encoder.dim), np.float32)


def _source_paths(dataset: Any) -> list[str] | None:
    """The image files behind an ImageFolder dataset, if they still match its listing."""
    from gallery.imagefolder import list_image_folder

    source = Path(str(getattr(dataset, "source", "")))
    if not source.is_dir():
        return None
    listing = list_image_folder(source)
    if listing.fingerprint() != dataset.listing_fingerprint():
        return None
    return [str(p) for p in listing.paths]


def write_old_features(path: str | Path, data: OldFeatures) -> None:
    """Write atomically (temp file + rename) so a crash never leaves a half cache."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as handle:
            handle.create_dataset("features", data=np.asarray(data.features, np.float32))
            handle.create_dataset("labels", data=np.asarray(data.labels, np.int64))
            handle.attrs["format"] = FORMAT
            handle.attrs["dataset_fingerprint"] = data.dataset_fingerprint
            handle.attrs["old_model"] = json.dumps(data.old_model, sort_keys=True)
            handle.attrs["cache_key"] = cache_key(str(data.old_model.get("sha256")),
                                                  data.dataset_fingerprint)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_old_features(path: str | Path, mapped: bool = False) -> OldFeatures:
    """Read a file write_old_features wrote; mapped=True memory-maps the feature matrix."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"old-features file not found: {path}")
    try:
        with open_input(path) as handle:
            if handle.attrs.get("format") != FORMAT:
                raise BadInput(f"{path} is not a gallery old-features file (format {FORMAT})")
            features = handle["features"]
            return OldFeatures(
                features=_mapped(path, features) if mapped else np.asarray(features[...],
                                                                          dtype=np.float32),
                labels=np.asarray(handle["labels"][...], dtype=np.int64),
                old_model=json.loads(handle.attrs["old_model"]),
                dataset_fingerprint=str(handle.attrs["dataset_fingerprint"]),
                source="file",
            )
    except (OSError, KeyError, ValueError) as exc:
        raise BadInput(f"cannot read old-features file {path}: {exc}") from None


def _mapped(path: Path, dataset: Any) -> np.ndarray:
    """A read-only np.memmap of a contiguous, uncompressed float32 HDF5 dataset (what
    write_old_features writes); anything else is read into memory."""
    offset = dataset.id.get_offset()
    if offset is None or dataset.chunks is not None or dataset.dtype != np.float32:
        return np.asarray(dataset[...], dtype=np.float32)
    return np.memmap(path, dtype=np.float32, mode="r", offset=offset, shape=dataset.shape)


def check_matches(data: OldFeatures, dataset: Any, origin: str) -> None:
    """Refuse features that were made for another dataset listing."""
    fingerprint = dataset.listing_fingerprint()
    if data.dataset_fingerprint != fingerprint:
        raise BadInput(f"{origin} was extracted from a different dataset listing "
                       f"({data.dataset_fingerprint[:12]} != {fingerprint[:12]}); re-extract")
    if len(data.features) != len(dataset) or data.features.ndim != 2:
        raise BadInput(f"{origin} has {data.features.shape} features for {len(dataset)} images")
    if not np.array_equal(data.labels, np.asarray(dataset.labels, dtype=np.int64)):
        raise BadInput(f"{origin} labels differ from the dataset's labels")
    if not np.isfinite(data.features).all():
        raise BadInput(f"{origin} contains NaN or infinite features")


def resolve_old_features(context: MethodContext, progress: Progress | None = None,
                         mapped: bool = False) -> OldFeatures:
    """Old features for context.dataset: --old-features, else the cache, else extraction.

    mapped=True memory-maps features read from a file instead of loading them.
    """
    dataset = context.dataset
    if context.old_features:
        data = read_old_features(context.old_features, mapped)
        check_matches(data, dataset, f"old-features file {context.old_features}")
        if context.old_model:
            _check_same_model(data, load_old_model(context.old_model).identity,
                              context.old_features)
        return data
    if not context.old_model:
        raise BadInput("this method needs the old model: pass --old MODEL or --old-features FILE.h5")
    return _extract_cached(context, progress, mapped)


def _check_same_model(data: OldFeatures, identity: dict, origin: str) -> None:
    if data.old_model.get("sha256") != identity.get("sha256"):
        raise BadInput(f"old-features file {origin} was made by another old model "
                       f"({str(data.old_model.get('sha256'))[:12]}), not {identity.get('path')}")


def _extract_cached(context: MethodContext, progress: Progress | None,
                    mapped: bool = False) -> OldFeatures:
    dataset = context.dataset
    encoder = load_old_model(context.old_model)
    if context.embedding_dim and encoder.dim != context.embedding_dim:
        raise dim_mismatch(context.embedding_dim, encoder.dim)  # before a long extraction
    identity = summary(encoder.identity)
    fingerprint = dataset.listing_fingerprint()
    key = cache_key(str(identity["sha256"]), fingerprint)
    cache_dir = Path(context.cache_dir) if context.cache_dir else _default_cache_dir()
    path = cache_dir / f"old_features-{key[:24]}.h5"
    if path.is_file():
        try:
            data = read_old_features(path, mapped)
            check_matches(data, dataset, f"cache {path}")
            _check_same_model(data, identity, str(path))
            log.info("reusing cached old features %s", path)
            data.source = "cache"
            return data
        except BadInput as exc:  # a corrupt or mismatched cache is rebuilt, not trusted
            log.warning("ignoring old-feature cache: %s", exc)
    log.info("extracting old features of %d images with %s", len(dataset), identity["path"])
    features = extract_old_features(encoder, dataset, progress=progress)
    data = OldFeatures(features, np.asarray(dataset.labels, np.int64), identity, fingerprint)
    write_old_features(path, data)
    return data


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gallery" / "old_features"


class OldFeatureMethod(CompatMethod):
    """Base of methods constrained by old features: holds them (raw float32) in host memory.

    The N x d matrix is never a module buffer: it stays out of DDP's buffer broadcast and
    off the GPU, and when it comes from an HDF5 file (the cache or --old-features) it is a
    read-only memory map, so the ranks of one machine share one copy in the page cache.
    Each step gathers only the batch's rows and moves them to the device.
    """

    requires_old_model = True

    def __init__(self, **hyperparameters: Any) -> None:
        super().__init__(**hyperparameters)
        self.old_identity: dict[str, Any] | None = None
        self.old_features: np.ndarray = np.zeros((0, 0), np.float32)

    def prepare_old_features(self, context: MethodContext) -> None:
        progress = context.extras.get("old_features_progress")
        if int(context.extras.get("world_size", 1)) > 1 and torch.distributed.is_initialized():
            # DDP: rank 0 extracts into the shared cache, the other ranks then map it
            if int(context.extras.get("rank", 0)) == 0:
                resolve_old_features(context, progress)
            torch.distributed.barrier()
        data = resolve_old_features(context, progress, mapped=True)
        self.set_old_features(data.features, np.asarray(context.dataset.labels), data.old_model,
                              context.embedding_dim, context.device)

    def set_old_features(self, features: np.ndarray, labels: np.ndarray, identity: dict,
                         embedding_dim: int, device: torch.device | str = "cpu") -> None:
        """Install old features (N x d, dataset order); subclasses derive masks/prototypes."""
        if not isinstance(features, np.memmap):
            features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != embedding_dim:
            raise dim_mismatch(embedding_dim, features.shape[-1])
        self.old_features = features
        self.old_identity = dict(identity)
        self.on_old_features(features, np.asarray(labels, dtype=np.int64), device)

    def on_old_features(self, features: np.ndarray, labels: np.ndarray,
                        device: torch.device | str) -> None:
        """Hook for subclasses (credible mask, prototypes)."""

    def old_rows(self, indices: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Normalised old features of the batch rows, in the embeddings' dtype/device."""
        if self.old_features.size == 0:
            raise RuntimeError(f"{self.name}: prepare() was not called before loss()")
        picked = np.asarray(self.old_features[indices.cpu().numpy()], dtype=np.float32)
        # normalised per batch in the embeddings' dtype, so float64 training stays exact
        rows = torch.from_numpy(picked).to(device=like.device, dtype=like.dtype)
        return torch.nn.functional.normalize(rows, dim=1)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.old_identity is not None:
            info["compatible_with"] = old_model_id(self.old_identity)
            info["old_model"] = {k: v for k, v in self.old_identity.items() if k != "path"}
        return info


def precompute_old_features(config: Any, progress: Progress | None = None,
                            start: Callable[[int], None] | None = None) -> OldFeatures | None:
    """Fill the cache fit() will read (cache_dir = the model's folder) before training.

    Lets `gallery train-compatible` show an extraction progress bar and fail fast on a
    dim mismatch before any training starts. `start(n)` gets the number of images.
    Returns None when the method needs no old features.
    """
    from trainer.data import open_dataset
    from trainer.methods import load_all

    if not load_all().get(config.method).requires_old_model:
        return None
    dataset = open_dataset(config.data, config.preprocess_spec())
    if start is not None:
        start(len(dataset))
    old_dim = config.old_dim or config.dim  # a v2 of another dim compares through its projection
    context = MethodContext(dataset=dataset, num_classes=dataset.num_classes,
                            embedding_dim=old_dim, device=torch.device("cpu"), head=None,
                            old_model=config.old_model, old_features=config.old_features,
                            cache_dir=config.out_path.parent)
    data = resolve_old_features(context, progress)
    if data.features.shape[1] != old_dim:
        raise dim_mismatch(old_dim, data.features.shape[1])
    return data


def dim_mismatch(new_dim: int, old_dim: int) -> BadInput:
    return BadInput(f"new embedding dim {new_dim} != old model dim {old_dim}: backward-"
                    f"compatible training compares new and old embeddings directly; "
                    f"train with --dim {old_dim}")
