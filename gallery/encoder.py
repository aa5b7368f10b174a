"""Encoder runtime: image files -> embeddings, with no torch.

An encoder is anything with `spec` (PreprocessSpec), `dim`, `identity` and
`embed(batch)`. ONNX models run in onnxruntime with explicit providers; their
preprocessing is read from `metadata_props` and never guessed.

Formats are plugins: a loader per file suffix. ONNX is built in; every other format
comes from an entry point in the group `gallery.encoders` (name = the suffix without
its dot, value = `module:loader`). This package declares `pt`, `pth` and `ts`
(trainer.torch_encoder), so `load_encoder("m.pt")` works wherever torch is installed
and this module stays importable on a serving machine without it; a third party adds
a format by declaring its own entry point.
"""

from __future__ import annotations

import json
import logging
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from gallery.errors import BadInput
from gallery.limits import batch_rows, check_dim
from gallery.model_identity import model_sha256
from gallery.preprocess import META_PREFIX, PreprocessSpec, load_image, to_tensor
from gallery.registry import Registry

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class Encoder(Protocol):
    """What the store, search and compatibility checker need from a model."""

    spec: PreprocessSpec
    dim: int
    identity: dict  # sha256, model_id, path, format, metadata

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """NCHW float32 (already preprocessed) -> (N, dim) float32, not normalised."""
        ...


ENCODER_LOADERS: Registry[Callable[..., Encoder]] = Registry("encoder format")
PLUGIN_GROUP = "gallery.encoders"
_unavailable: dict[str, str] = {}  # suffix -> why its plugin could not be loaded
_plugins_loaded = False


class OnnxEncoder:
    """An onnxruntime session over an image encoder declared by gallery.* metadata."""

    def __init__(
        self, path: str | Path, providers: Sequence[str] | None = None, require_gpu: bool = False
    ) -> None:
        import onnxruntime as ort  # CLI start-up: only commands that run a model pay its import

        self.path = Path(path)
        # Explicit providers: onnxruntime otherwise picks silently, and a CPU fallback
        # on a GPU box is a 50x slowdown nobody notices.
        wanted = list(providers) if providers else ([CUDA, CPU] if require_gpu else [CPU])
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadInput(f"cannot load ONNX model {path}: {first[:200]}") from None
        active = self.session.get_providers()
        if require_gpu and (not active or active[0] != CUDA):
            raise BadInput(
                f"--require-gpu: CUDA is not the active onnxruntime provider for {path} "
                f"(active: {', '.join(active)}; available: {', '.join(ort.get_available_providers())})"
            )
        self.providers = active
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self._check_io(meta)
        self.spec = _spec_or_error(meta, path)
        self.dim = self._declared_dim(meta)
        self.old_space_dim, self._old_space_output = self._old_space(meta)
        self._check_input_matches_spec()
        self.identity = {
            "sha256": model_sha256(path),  # the .onnx and its external data files
            "model_id": meta.get(META_PREFIX + "model_id"),
            "path": str(Path(path).resolve()),
            "format": "onnx",
            "metadata": meta,
        }

    def _check_io(self, meta: dict) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            shapes = [i.shape for i in inputs]
            raise BadInput(f"{self.path} is not an image encoder: expects one NCHW input, has {shapes}")
        if not outputs or len(outputs[0].shape) != 2:
            raise BadInput(f"{self.path} is not an image encoder: first output is not (N, dim)")
        if "float" not in inputs[0].type:
            raise BadInput(f"{self.path} is not an image encoder: input type {inputs[0].type}")
        self._input = inputs[0]
        self._output = outputs[0].name

    def _declared_dim(self, meta: dict) -> int:
        out_dim = self.session.get_outputs()[0].shape[1]
        declared = meta.get(META_PREFIX + "dim")
        if declared is not None:
            dim = check_dim(declared, f"gallery.dim of {self.path}")
            if isinstance(out_dim, int) and out_dim != dim:
                raise BadInput(f"{self.path}: gallery.dim={dim} but the output has {out_dim} columns")
            return dim
        if isinstance(out_dim, int):
            return check_dim(out_dim, f"output width of {self.path}")
        raise BadInput(f"{self.path}: output width is dynamic and gallery.dim is not declared")

    def _old_space(self, meta: dict) -> tuple[int | None, str | None]:
        """A v2 trained with a change of dimension also outputs its projection into v1's space."""
        name = meta.get(META_PREFIX + "old_space_output")
        if not name:
            return None, None
        outputs = {o.name: o for o in self.session.get_outputs()}
        dim = int(meta.get(META_PREFIX + "old_space_dim", 0))
        width = outputs[name].shape[-1] if name in outputs else None
        if name not in outputs or dim < 1 or (isinstance(width, int) and width != dim):
            raise BadInput(f"{self.path}: declares an old-space output {name!r} ({dim}-d) it does not have")
        return dim, name

    def embed_old_space(self, batch: np.ndarray) -> np.ndarray:
        """The projected (old-space) output; only for models with `old_space_dim`."""
        if self._old_space_output is None:
            raise BadInput(f"{self.path} has no old-space output")
        return self.embed(batch, output=self._old_space_output)

    def _check_input_matches_spec(self) -> None:
        _, channels, height, width = self._input.shape
        expected = (self.spec.channels, self.spec.height, self.spec.width)
        for got, want, name in zip((channels, height, width), expected, ("channels", "height", "width")):
            if isinstance(got, int) and got != want:
                raise BadInput(f"{self.path}: input {name} is {got} but its metadata declares {want}")
        batch = self._input.shape[0]
        # A model exported with a fixed batch still works, one fixed-size chunk at a time.
        self._fixed_batch = batch if isinstance(batch, int) and batch > 0 else None

    def embed(self, batch: np.ndarray, output: str | None = None) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self._fixed_batch is None:
            return self._run(batch, output)
        step = self._fixed_batch
        parts = []
        for start in range(0, len(batch), step):
            chunk = batch[start : start + step]
            pad = step - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
            parts.append(self._run(chunk, output)[: step - pad])
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def _run(self, batch: np.ndarray, output: str | None = None) -> np.ndarray:
        out = self.session.run([output or self._output], {self._input.name: batch})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(batch), -1)


def _spec_or_error(meta: dict, path: str | Path) -> PreprocessSpec:
    try:
        spec = PreprocessSpec.from_metadata(meta)
        declared = meta.get(META_PREFIX + "channels")
        if declared is not None and int(declared) != spec.channels:
            raise BadInput(f"{path}: gallery.channels={declared} contradicts colour order {spec.color_order}")
        return spec
    except BadInput as exc:
        if str(path) in str(exc):
            raise
        raise BadInput(f"{path} is not a gallery image encoder: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise BadInput(f"{path}: malformed preprocessing metadata ({exc})") from None


@ENCODER_LOADERS.register(".onnx")
def _load_onnx(path: str | Path, providers: Sequence[str] | None = None, require_gpu: bool = False) -> Encoder:
    return OnnxEncoder(path, providers=providers, require_gpu=require_gpu)


def load_plugins() -> None:
    """Register the loaders declared in the `gallery.encoders` entry point group (once).

    A plugin whose module cannot be imported (torch missing for `.pt`) is remembered
    with the reason, so asking for its suffix says what to install."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for point in entry_points(group=PLUGIN_GROUP):
        suffix = "." + point.name.lstrip(".").lower()
        if suffix in ENCODER_LOADERS:
            continue
        try:
            ENCODER_LOADERS.register(suffix)(point.load())
        except ImportError as exc:
            _unavailable[suffix] = f"its loader {point.value} needs {exc.name or exc} ({exc})"


def loader_for(suffix: str) -> Callable[..., Encoder]:
    """The loader of a file suffix (".onnx", ".pt", ...); BadInput names the valid ones."""
    suffix = suffix.lower()
    if suffix not in ENCODER_LOADERS:
        load_plugins()
    if suffix in _unavailable:
        raise BadInput(f"cannot load {suffix} models here: {_unavailable[suffix]}; "
                       "install gallery[train] for .pt/.pth/.ts")
    return ENCODER_LOADERS.get(suffix)


def load_encoder(
    path: str | Path, providers: Sequence[str] | None = None, require_gpu: bool = False
) -> Encoder:
    """Load a model file as an Encoder, choosing the loader by file suffix."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"model file not found: {path}")
    return loader_for(path.suffix)(path, providers=providers, require_gpu=require_gpu)


def load_registered(info: Any, store_path: str | Path, model: str | Path | None = None,
                    **load_kwargs: Any) -> Encoder:
    """The encoder of a store's model record (`info`: a gallery.store.ModelInfo), from
    `model` (where its file is now) or its recorded path; another file is refused by sha256."""
    if not info.has_encoder:
        raise BadInput(f"model {info.version} of {store_path} is embedding-only (no encoder file); "
                       "use embeddings, not images")
    path = Path(model) if model else (Path(info.path) if info.path else None)
    if path is None or not path.is_file():
        raise BadInput(f"the file of model {info.version} is missing: {path or '(none recorded)'} "
                       f"(gallery model set-path {store_path} {info.version} PATH, or pass --model PATH)")
    digest = model_sha256(path)  # covers an ONNX model's external weights files
    if digest != info.sha256:
        raise BadInput(f"{path} is not model {info.version} of {store_path} "
                       f"(sha256 {digest[:12]}..., expected {info.sha256[:12]}...)")
    return load_encoder(path, **load_kwargs)


def embed_images(encoder: Encoder, images_uint8_nhwc: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """HxWxC uint8 images in the encoder's colour order -> (N, dim) raw embeddings."""
    if len(images_uint8_nhwc) == 0:
        return np.zeros((0, encoder.dim), np.float32)
    # optional capability: upload uint8 pixels and normalise on the encoder's device
    # (4x less to copy, and no float passes over the batch on one host core)
    batch = _uint8_batch(images_uint8_nhwc, encoder.spec) if hasattr(encoder, "embed_uint8") else None
    if batch is not None:
        out = encoder.embed_uint8(batch)
    else:
        out = encoder.embed(to_tensor(images_uint8_nhwc, encoder.spec))
    if out.shape != (len(images_uint8_nhwc), encoder.dim):
        raise BadInput(f"encoder returned shape {out.shape}, expected ({len(images_uint8_nhwc)}, {encoder.dim})")
    if not np.isfinite(out).all():
        raise BadInput("encoder produced NaN or inf embeddings")
    return out


def _uint8_batch(images: np.ndarray | Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray | None:
    """The images as one contiguous NHWC uint8 array of the spec's shape, else None."""
    try:
        batch = np.asarray(images)
    except ValueError:  # ragged: to_tensor names the bad shape
        return None
    if batch.dtype != np.uint8 or batch.shape[1:] != (spec.height, spec.width, spec.channels):
        return None
    return np.ascontiguousarray(batch)


def embed_paths(
    encoder: Encoder,
    paths: Sequence[str | Path],
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Decode and embed image files in batches; a bad file raises BadInput naming it."""
    if batch_size < 1:
        raise BadInput(f"batch size must be >= 1, got {batch_size}")
    spec = encoder.spec  # decoded uint8 pixels + their float32 tensor, per image
    batch_size = batch_rows(batch_size, spec.height * spec.width * spec.channels * 5)
    parts = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        parts.append(embed_images(encoder, [load_image(p, encoder.spec) for p in chunk]))
        if progress is not None:
            progress(len(chunk))
    return np.concatenate(parts) if parts else np.zeros((0, encoder.dim), np.float32)


class OldSpaceView:
    """The old-space output of a v2 trained with a change of dimension, as an Encoder:
    what its queries compare with v1 rows (the full embedding serves v2 rows)."""

    def __init__(self, encoder: Any) -> None:
        self.encoder, self.spec, self.identity = encoder, encoder.spec, encoder.identity
        self.dim = int(encoder.old_space_dim)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self.encoder.embed_old_space(batch)


def old_space_view(encoder: Encoder) -> OldSpaceView | None:
    """The encoder's old-space view, or None when it has a single output."""
    return OldSpaceView(encoder) if getattr(encoder, "old_space_dim", None) else None


def describe(encoder: Encoder) -> dict[str, Any]:
    """JSON-ready summary of an encoder (identity without the bulky metadata + spec)."""
    summary = {k: v for k, v in encoder.identity.items() if k != "metadata"}
    summary.update(dim=encoder.dim, preprocess=encoder.spec.to_dict())
    method = encoder.identity.get("metadata", {}).get(META_PREFIX + "method")
    if method:
        try:
            summary["method"] = json.loads(method)
        except ValueError:
            summary["method"] = method
    return summary
