"""`.pt` -> ONNX with gallery metadata, refused unless onnxruntime matches torch.

The parity check runs the real training images stored in the .pt (plus any the
caller gives) through both runtimes, at two batch sizes to exercise the dynamic
batch axis; nothing is written when max |torch - onnx| exceeds 1e-4 (times the
largest output magnitude when that exceeds 1).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gallery.errors import BadInput, GateFailed
from gallery.preprocess import META_PREFIX, to_tensor

from trainer.checkpoint import load_model

log = logging.getLogger(__name__)
OPSET = 17
OLD_SPACE_OUTPUT = "old_space"


def onnx_metadata(meta: dict[str, Any]) -> dict[str, str]:
    from gallery.preprocess import PreprocessSpec

    arch = meta["arch"]
    props = {
        META_PREFIX + "model_id": meta["model_id"],
        META_PREFIX + "arch": str(arch["name"]),
        META_PREFIX + "arch_config": json.dumps(arch, sort_keys=True),
        META_PREFIX + "dim": str(int(arch["dim"])),
        META_PREFIX + "label_map_sha256": meta["label_map_sha256"],
        META_PREFIX + "num_classes": str(len(meta["classes"])),
        META_PREFIX + "method": json.dumps(meta.get("method", {}), sort_keys=True, default=str),
        META_PREFIX + "head": json.dumps(meta.get("head", {}), sort_keys=True),
        META_PREFIX + "format": meta["format"],
    }
    if meta.get("compatible_with"):
        props[META_PREFIX + "compatible_with"] = str(meta["compatible_with"])
    if arch.get("projection"):  # second output: the embedding projected into v1's space
        props[META_PREFIX + "old_space_dim"] = str(int(arch["projection"]))
        props[META_PREFIX + "old_space_output"] = OLD_SPACE_OUTPUT
    props.update(PreprocessSpec.from_dict(meta["preprocess"]).to_metadata())
    return props


def _export_view(backbone: torch.nn.Module) -> tuple[torch.nn.Module, list[str]]:
    """The module to export and its output names: a projected v2 declares both outputs."""
    if hasattr(backbone, "project"):
        from trainer.projection import BothOutputs

        return BothOutputs(backbone).eval(), ["embedding", OLD_SPACE_OUTPUT]
    return backbone, ["embedding"]


def torch_to_onnx(module: torch.nn.Module, sample: torch.Tensor, path: Path, input_name: str,
                  outputs: list[str]) -> None:
    """Export `module` (traced on `sample`) with a dynamic batch axis on its input and outputs
    (the backbones here, the adapters in trainer/adapter.py)."""
    # the TorchScript-based exporter is fast (no torch.export tracing) and handles every
    # op our nets use; its deprecation notice is not actionable for users
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (sample,), str(path), input_names=[input_name],
                          output_names=outputs, opset_version=OPSET, dynamo=False,
                          dynamic_axes={name: {0: "batch"} for name in (input_name, *outputs)})


def staged_onnx(raw: Path, metadata: dict[str, str]) -> Path:
    """`raw` with `metadata` as its ONNX metadata props, checked by onnx.checker, saved beside
    it as staged.onnx: the caller's parity gate decides whether it is renamed into place."""
    import onnx  # lazy: only an export needs it, not the other users of this module

    graph = onnx.load(str(raw))
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(graph)
    staged = raw.with_name("staged.onnx")
    onnx.save(graph, str(staged))
    return staged


def _torch_export(backbone: torch.nn.Module, sample: torch.Tensor, path: Path) -> None:
    module, outputs = _export_view(backbone)
    torch_to_onnx(module, sample, path, "input", outputs)


def export_onnx(pt_path: str | Path, out_path: str | Path, images: np.ndarray | None = None,
                atol: float = 1e-4) -> dict[str, Any]:
    """Export a gallery .pt to ONNX; `images` (NHWC uint8, the model's spec) add to the check."""
    loaded = load_model(pt_path)
    spec, meta = loaded.spec, loaded.meta
    pixels = meta["parity_images"].numpy()
    if images is not None:
        pixels = np.concatenate([pixels, np.asarray(images, np.uint8)])
    if len(pixels) < 2:
        raise BadInput(f"{pt_path}: need at least 2 real images for the ONNX parity check")
    batch = to_tensor(pixels, spec)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        with torch.no_grad():
            _torch_export(loaded.backbone, torch.from_numpy(batch[:2]), raw)
            module, _ = _export_view(loaded.backbone)
            expected = module(torch.from_numpy(batch))
            expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
        staged = staged_onnx(raw, onnx_metadata(meta))
        diff = _parity(staged, batch, expected)
        # atol holds for embeddings up to unit scale; beyond it the bound grows with the
        # output (float32 rounding is relative: an untrained iresnet emits values ~500)
        scale = max(1.0, max(float(np.abs(e).max()) for e in expected))
        if not diff <= atol * scale:
            raise GateFailed(f"ONNX export of {pt_path} disagrees with torch: max |diff| "
                             f"{diff:.3g} > {atol * scale:.3g}; nothing written")
        os.replace(staged, out_path)
    log.info("exported %s -> %s (max |diff| %.2e)", pt_path, out_path, diff)
    return {"onnx": str(out_path), "model_id": meta["model_id"], "max_abs_diff": diff,
            "output_scale": scale,
            "parity_images": int(len(pixels)), "metadata": onnx_metadata(meta)}


def _parity(path: Path, batch: np.ndarray, expected: list[np.ndarray]) -> float:
    """Max abs difference of every output, over the whole batch and a batch of one (dynamic axis)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    full = session.run(None, {name: batch})
    single = session.run(None, {name: batch[:1]})
    return float(max(max(np.abs(f - e).max(), np.abs(s - e[:1]).max())
                     for f, s, e in zip(full, single, expected, strict=True)))


def export_torchscript(pt_path: str | Path, out_path: str | Path, atol: float = 1e-4) -> dict:
    """Trace a .pt to TorchScript with its metadata in `_extra_files['gallery.json']`."""
    loaded = load_model(pt_path)
    meta = {k: v for k, v in loaded.meta.items() if k not in ("parity_images", "config")}
    meta["dim"] = int(meta["arch"]["dim"])
    batch = torch.from_numpy(to_tensor(loaded.meta["parity_images"].numpy(), loaded.spec))
    with torch.no_grad():
        traced = torch.jit.trace(loaded.backbone, batch[:2])
        diff = float((traced(batch) - loaded.backbone(batch)).abs().max())
    if not diff <= atol:
        raise GateFailed(f"TorchScript trace of {pt_path} disagrees with torch: {diff:.3g}")
    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    torch.jit.save(traced, str(tmp), _extra_files={"gallery.json": json.dumps(meta, default=str)})
    os.replace(tmp, out_path)
    return {"torchscript": str(out_path), "model_id": meta["model_id"], "max_abs_diff": diff}
