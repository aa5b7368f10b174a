"""Declare a third-party face encoder's preprocessing: `gallery import-encoder`.

An ONNX file from insightface or OpenCV carries no record of how its input was
normalised; a wrong guess still runs and silently ruins accuracy. A preset
declares it once, and `import_encoder` writes it (plus dim, weights fingerprint
and the alignment the model expects) into the copy's `metadata_props`, which
gallery.encoder, the store, search, `--old` training and check-compat all read.

Needs the `onnx` package (in the `[faces]` and `[train]` extras).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from gallery.errors import BadInput
from gallery.limits import check_dim
from gallery.model_identity import model_sha256
from gallery.preprocess import META_PREFIX, PreprocessSpec
from gallery.registry import Registry

log = logging.getLogger(__name__)

ALIGN_ARCFACE = "arcface-5pt"  # gallery.faces.align template; crops made by crop.FaceCropper
ALIGN_NONE = "none"


@dataclass(frozen=True)
class Preset:
    spec: PreprocessSpec | None   # None: size from the model, RGB, no normalisation (raw)
    alignment: str
    description: str


PRESETS: Registry[Preset] = Registry("encoder preset")
# insightface ArcFace models (buffalo_l w600k_r50, glint360k, ...): aligned RGB, (x-127.5)/127.5.
PRESETS.register("arcface")(Preset(PreprocessSpec(112, 112, "RGB", (127.5,) * 3, (127.5,) * 3),
                                   ALIGN_ARCFACE, "insightface ArcFace: 112x112 aligned RGB, (x-127.5)/127.5"))
# OpenCV SFace: FaceRecognizerSF::feature calls blobFromImage(img, 1.0, (112,112), 0,
# swapRB=true) on a BGR crop, i.e. RGB pixels in 0..255 (checked against cv2 in tests).
PRESETS.register("sface")(Preset(PreprocessSpec(112, 112, "RGB", (0.0,) * 3, (1.0,) * 3),
                                 ALIGN_ARCFACE, "OpenCV SFace: 112x112 aligned RGB, raw 0..255"))
PRESETS.register("raw")(Preset(None, ALIGN_NONE,
                               "any image encoder: model's input size, RGB 0..255 unless overridden"))


def resolve_spec(preset: Preset, input_shape: list, overrides: dict[str, Any]) -> PreprocessSpec:
    """The preset's spec with the model's fixed input size and the user's explicit overrides."""
    height, width = (d if isinstance(d, int) and d > 0 else None for d in input_shape[2:4])
    if preset.spec is None and (height is None or width is None) and "size" not in overrides:
        raise BadInput("model input size is dynamic: give --size HxW with --preset raw")
    spec = preset.spec or PreprocessSpec(height or 1, width or 1, "RGB", (0.0,) * 3, (1.0,) * 3)
    fields: dict[str, Any] = {}
    if height:
        fields["height"] = height
    if width:
        fields["width"] = width
    if "size" in overrides:
        fields.update(height=overrides["size"][0], width=overrides["size"][1])
    for key in ("color_order", "mean", "std"):
        if key in overrides:
            fields[key] = overrides[key]
    if "color_order" in fields and "mean" not in fields:
        channels = 1 if fields["color_order"] == "GRAY" else 3
        fields.update(mean=(spec.mean[0],) * channels, std=(spec.std[0],) * channels)
    spec = replace(spec, **fields)
    for got, fixed in ((spec.height, height), (spec.width, width)):
        if fixed is not None and got != fixed:
            raise BadInput(f"model input is {height}x{width} but --size says {spec.height}x{spec.width}")
    return spec


def weights_fingerprint(model: Any) -> str:
    """sha256 over sorted initializer names + bytes: stable across re-saves and metadata edits."""
    numpy_helper = _onnx().numpy_helper
    digest = hashlib.sha256()
    for init in sorted(model.graph.initializer, key=lambda t: t.name):
        digest.update(init.name.encode() + b"\0")
        digest.update(np.ascontiguousarray(numpy_helper.to_array(init)).tobytes())
    return digest.hexdigest()


def import_encoder(model_path: str | Path, preset: str, out: str | Path, *, name: str | None = None,
                   overrides: dict[str, Any] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write a copy of an ONNX encoder whose metadata declares its preprocessing.

    Returns a JSON-ready summary (spec, dim, model_id, sha256 of the output file).
    """
    onnx = _onnx()
    model_path, out = Path(model_path), Path(out)
    chosen = PRESETS.get(preset)
    if not model_path.is_file():
        raise BadInput(f"model file not found: {model_path}")
    if out.suffix.lower() != ".onnx":
        raise BadInput(f"--out must end in .onnx, got {out.name}")
    if out.resolve() == model_path.resolve():
        raise BadInput("--out must differ from the input model (the original stays untouched)")
    if out.exists() and not overwrite:
        raise BadInput(f"{out} exists; pass --force to replace it")
    try:
        model = onnx.load(str(model_path))
    except Exception as exc:  # onnx raises DecodeError / ValueError / OSError
        raise BadInput(f"not an ONNX model: {model_path} ({exc.__class__.__name__})") from None
    _drop_initializer_inputs(model)
    graph_input = _single_image_input(model, model_path)
    spec = resolve_spec(chosen, _shape(graph_input), overrides or {})
    _check_channels(graph_input, spec, model_path)
    batch_dynamic = _make_batch_dynamic(model)
    dim = check_dim(_probe_dim(model, spec, model_path), f"output of {model_path}")
    if batch_dynamic and not _batch_consistent(model, spec):
        log.info("%s does not batch after freeing the batch axis; keeping its fixed batch", model_path)
        model = onnx.load(str(model_path))
        _drop_initializer_inputs(model)
    meta = dict(spec.to_metadata())
    meta.update({
        META_PREFIX + "dim": str(dim),
        META_PREFIX + "arch": name or f"{preset}:{model_path.stem}",
        META_PREFIX + "model_id": weights_fingerprint(model),
        META_PREFIX + "preset": preset,
        META_PREFIX + "alignment": chosen.alignment,
        META_PREFIX + "source_sha256": model_sha256(model_path),
        META_PREFIX + "source_name": model_path.name,
    })
    kept = [p for p in model.metadata_props if not p.key.startswith(META_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in sorted(meta.items()):
        model.metadata_props.add(key=key, value=value)
    _save_atomic(onnx, model, out)
    return {"out": str(out), "sha256": model_sha256(out), "dim": dim, "preset": preset,
            "alignment": chosen.alignment, "preprocess": spec.to_dict(),
            "model_id": meta[META_PREFIX + "model_id"], "source_sha256": meta[META_PREFIX + "source_sha256"],
            "batch": _shape(model.graph.input[0])[0]}


def _onnx():
    try:
        import onnx  # optional dependency (the [faces] extra): only import-encoder needs it
    except ImportError:
        raise BadInput("import-encoder needs the onnx package: pip install 'gallery[faces]'") from None
    return onnx


def _drop_initializer_inputs(model: Any) -> None:
    # Old exporters (SFace's MXNet converter) list weights as graph inputs; onnxruntime
    # then cannot constant-fold them and warns once per tensor.
    names = {init.name for init in model.graph.initializer}
    if model.ir_version >= 4 and names:
        keep = [i for i in model.graph.input if i.name not in names]
        del model.graph.input[:]
        model.graph.input.extend(keep)


def _single_image_input(model: Any, path: Path) -> Any:
    inputs = list(model.graph.input)
    if len(inputs) != 1 or len(_shape(inputs[0])) != 4:
        raise BadInput(f"{path} is not an image encoder: expects one NCHW input, has {len(inputs)} inputs")
    return inputs[0]


def _shape(value_info: Any) -> list:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]


def _check_channels(graph_input: Any, spec: PreprocessSpec, path: Path) -> None:
    channels = _shape(graph_input)[1]
    if isinstance(channels, int) and channels > 0 and channels != spec.channels:
        raise BadInput(f"{path}: input has {channels} channels but colour order {spec.color_order} "
                       f"gives {spec.channels}")


def _make_batch_dynamic(model: Any) -> bool:
    """Free a fixed batch axis on the input and outputs; True when something changed."""
    changed = False
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            dims[0].dim_param = "N"
            changed = True
    return changed


def _session(model: Any, path: Path | None = None):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors are untyped
        raise BadInput(f"onnxruntime cannot run {path}: {str(exc).strip()[:200]}") from None


def _probe(session: Any, batch: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: batch})[0], dtype=np.float32)


def _probe_dim(model: Any, spec: PreprocessSpec, path: Path) -> int:
    x = np.zeros((1, spec.channels, spec.height, spec.width), np.float32)
    out = _probe(_session(model, path), x)
    if out.ndim != 2 or out.shape[0] != 1:
        raise BadInput(f"{path}: first output has shape {out.shape}; an encoder outputs (N, dim)")
    return int(out.shape[1])


def _batch_consistent(model: Any, spec: PreprocessSpec) -> bool:
    """A batch of 3 must give the rows that 3 single runs give (catches baked-in reshapes)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, spec.channels, spec.height, spec.width)).astype(np.float32)
    try:
        session = _session(model)
        together = _probe(session, x)
        alone = np.concatenate([_probe(session, x[i : i + 1]) for i in range(3)])
    except Exception:  # any failure means: keep the fixed batch
        return False
    return together.shape == alone.shape and np.allclose(together, alone, rtol=1e-3, atol=1e-4)


def _save_atomic(onnx: Any, model: Any, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
