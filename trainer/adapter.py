"""`gallery train-adapter`: learn h: old-model space -> new-model space from images both embed.

For two encoders that were never trained to be compatible (dlib -> SFace, our v1 -> any
v2), h lets v2 queries search a v1 gallery whose images are gone: the gallery's v1
vectors become h(v1) in v2 space. Training needs only images (both models embed each
one); identity labels may add a term that pulls h(old) towards the new model's class
layout.

Model: x -> z = x/|x| -> y = A z + b (+ residual MLP(z)) -> y/|y|. A and b start at the
ridge-regression solution (closed form), the MLP's last layer at zero, so training
starts from the best linear map and the MLP only adds what the linear map misses.
Loss: mean(1 - cos(h(x_old), new)) [+ label_weight * label term].

This is feature regression over precomputed (N x d) arrays, not a classification
training of an image backbone, so it has its own small loop (minibatches of vectors,
AdamW, the shared lr schedule, best epoch by held-out retrieval) rather than trainer.fit's
image loop (data loader, augmentation, DDP, checkpoints per epoch), none of which applies.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gallery.adapter import ADAPTER_FORMAT, adapter_metadata, load_adapter
from gallery.errors import BadInput, GalleryError, GateFailed
from gallery.fingerprint import file_sha256, strings_sha256
from gallery.limits import MAX_DIM

from trainer.checkpoint import weights_fingerprint
from trainer.export import staged_onnx, torch_to_onnx
from trainer.report import plot_loss, write_metrics
from trainer.schedule import lr_at
from trainer.threads import cpu_threads

log = logging.getLogger(__name__)
ARCHS = ("residual", "linear")
LABEL_LOSSES = ("prototype", "contrastive")
PARITY_ATOL = 1e-4


@dataclass
class AdapterConfig:
    old: str = ""
    new: str = ""
    data: str = ""
    out: str = "adapter.onnx"
    arch: str = "residual"       # residual (linear + MLP) | linear
    hidden: int = 512            # MLP width
    depth: int = 2               # MLP hidden layers
    labels: bool = False         # add the label term (identity folders needed)
    label_loss: str = "prototype"  # prototype: CE against new-space class means; contrastive
    label_weight: float = 0.1
    temperature: float = 0.05
    epochs: int = 40
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    ridge: float = 1e-3          # ridge penalty of the linear initialisation (x trace/d)
    val_fraction: float = 0.1    # held-out images: best epoch (retrieval top-1, then cosine)
    fraction: float = 1.0        # train on this seeded share of the (non-held-out) images
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise BadInput(f"unknown adapter arch {self.arch!r}; valid: {', '.join(ARCHS)}")
        if self.label_loss not in LABEL_LOSSES:
            raise BadInput(f"unknown label loss {self.label_loss!r}; valid: {', '.join(LABEL_LOSSES)}")
        for name in ("hidden", "depth", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise BadInput(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if int(self.hidden) > MAX_DIM.value():  # a layer of that width is allocated up front
            raise BadInput(f"--hidden must be <= {MAX_DIM.value():,} (set {MAX_DIM.env} to allow more), "
                           f"got {self.hidden:,}")
        for name in ("lr", "temperature"):
            if not float(getattr(self, name)) > 0:
                raise BadInput(f"--{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "ridge", "label_weight"):
            if float(getattr(self, name)) < 0:
                raise BadInput(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.val_fraction < 0.9:
            raise BadInput(f"--val-fraction must be in [0, 0.9), got {self.val_fraction}")
        if not 0.0 < self.fraction <= 1.0:
            raise BadInput(f"--fraction must be in (0, 1], got {self.fraction}")
        if not str(self.out).endswith(".onnx"):
            raise BadInput(f"--out must name a .onnx file, got {self.out}")

    @property
    def out_path(self) -> Path:
        return Path(self.out)

    def sibling(self, suffix: str) -> Path:
        return self.out_path.with_name(self.out_path.stem + suffix)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AdapterConfig":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise BadInput(f"unknown adapter option(s): {', '.join(unknown)}")
        return cls(**data)


class ResidualAdapter(nn.Module):
    """normalise -> linear (+ residual MLP) -> normalise; the ONNX graph is exactly this."""

    def __init__(self, in_dim: int, out_dim: int, arch: str = "residual", hidden: int = 512,
                 depth: int = 2) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.mlp: nn.Module | None = None
        if arch == "residual":
            layers: list[nn.Module] = []
            width = in_dim
            for _ in range(depth):
                layers += [nn.Linear(width, hidden), nn.GELU()]
                width = hidden
            last = nn.Linear(width, out_dim)
            nn.init.zeros_(last.weight)  # start as the linear map; the MLP adds a correction
            nn.init.zeros_(last.bias)
            self.mlp = nn.Sequential(*layers, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        y = self.linear(z)
        if self.mlp is not None:
            y = y + self.mlp(z)
        return y / y.norm(dim=1, keepdim=True).clamp_min(1e-12)


@dataclass
class PairedFeatures:
    old: np.ndarray            # (N, d_old) raw
    new: np.ndarray            # (N, d_new) raw
    labels: np.ndarray         # (N,) identity labels (index per image when unlabelled)
    has_identities: bool
    fingerprint: str           # listing fingerprint + labels
    old_identity: dict
    new_identity: dict


@dataclass
class AdapterResult:
    onnx: str
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        keys = ("num_train", "num_val", "best_epoch", "linear_init_val_cos", "val_cos", "val_top1",
                "linear_init_val_top1",
                "train_cos", "max_abs_diff", "model_id")
        return {"onnx": self.onnx, **{k: self.metrics.get(k) for k in keys},
                "epochs": self.metrics.get("epochs", [])}


Events = Callable[[dict[str, Any]], None] | None
Progress = Callable[[int], None] | None


def train_adapter(config: AdapterConfig, progress: Progress = None,
                  on_log: Events = None) -> AdapterResult:
    """Embed `config.data` with both models (cached), train h, export ONNX + metrics + plot.

    `on_log` gets {"phase": "embed"|"train", "total": n} at the start of each phase,
    then {"epoch", "loss", "val_cos"} after every epoch; `progress(n)` counts images.
    """
    config.validate()
    with cpu_threads(config.threads):
        config.out_path.parent.mkdir(parents=True, exist_ok=True)
        pairs = embed_pairs(config, progress, on_log)
        if config.labels and not pairs.has_identities:
            raise BadInput(f"--labels needs identity folders ({config.data}/<identity>/<image>)")
        torch.manual_seed(config.seed)
        split = split_indices(len(pairs.old), config.val_fraction, config.fraction, config.seed)
        model, metrics = fit_adapter(config, pairs, split, progress, on_log)
        metrics.update(num_images=len(pairs.old), data_fingerprint=pairs.fingerprint,
                       old_model=_identity(pairs.old_identity), new_model=_identity(pairs.new_identity))
        exported = export_adapter(model, config, pairs, metrics)
        metrics.update(exported)
        write_metrics(config.sibling(".metrics.json"), metrics)
        plot_loss(config.sibling(".loss.png"), metrics,
                  f"adapter {config.arch}{' + ' + config.label_loss if config.labels else ''}")
        config.sibling(".config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
        return AdapterResult(str(config.out_path), metrics)


def _identity(identity: dict) -> dict:
    return {k: identity.get(k) for k in ("sha256", "model_id", "path", "format")}


def embed_pairs(config: AdapterConfig, progress: Progress = None, on_log: Events = None) -> PairedFeatures:
    """Both models' raw embeddings of every image, each with its own preprocessing (cached)."""
    from trainer.methods.base import MethodContext
    from trainer.old_features import resolve_old_features
    from trainer.old_model import load_old_model, summary

    encoders = {role: load_old_model(path) for role, path in (("old", config.old), ("new", config.new))}
    datasets = {role: open_images(config.data, enc.spec) for role, enc in encoders.items()}
    if on_log is not None:
        on_log({"phase": "embed", "total": sum(len(d) for d in datasets.values())})
    features = {}
    for role, dataset in datasets.items():
        # the old-feature cache (keyed by model sha256 + data listing) serves either model
        context = MethodContext(dataset=dataset, num_classes=dataset.num_classes, embedding_dim=0,
                                device=torch.device("cpu"), head=None, old_model=getattr(config, role),
                                cache_dir=config.out_path.parent)
        features[role] = resolve_old_features(context, progress).features
    old_ds = datasets["old"]
    labels = np.asarray(old_ds.labels, np.int64)
    has_ids = not getattr(old_ds, "unlabelled", False)
    fingerprint = strings_sha256([old_ds.listing_fingerprint(), old_ds.label_map_sha256()])
    return PairedFeatures(features["old"], features["new"], labels, has_ids, fingerprint,
                          summary(encoders["old"].identity) | {"dim": encoders["old"].dim},
                          summary(encoders["new"].identity) | {"dim": encoders["new"].dim})


def open_images(path: str | Path, spec: Any) -> Any:
    """A training dataset (identity folders, .rec, .h5/.npz) or a flat folder of images."""
    from gallery.imagefolder import IMAGE_SUFFIXES
    from gallery.preprocess import load_image
    from trainer.data import open_dataset
    from trainer.data.base import ArrayDataset

    path = Path(path)
    if not str(path) or str(path) == ".":
        raise BadInput("--data is required (a folder of images)")
    flat = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) \
        if path.is_dir() else []
    if not flat or any(p.is_dir() for p in path.iterdir()):
        return open_dataset(path, spec)
    # unlabelled images: each image is its own "identity" (labels are never used then)
    images = np.stack([load_image(p, spec) for p in flat])
    names = [p.name for p in flat]
    # content, not just names: an image rewritten under its name must not reuse a cache
    fingerprint = strings_sha256(f"{name}:{file_sha256(p)}" for name, p in zip(names, flat))
    dataset = ArrayDataset(images, np.arange(len(flat)), names, spec, source=str(path),
                           fingerprint=fingerprint)
    dataset.unlabelled = True
    return dataset


@dataclass
class Split:
    train: np.ndarray
    val: np.ndarray


def split_indices(n: int, val_fraction: float, fraction: float, seed: int) -> Split:
    """Seeded held-out images first, then `fraction` of the rest: the same val set for every fraction."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_fraction * n)) if n >= 10 else 0
    val, rest = order[:n_val], order[n_val:]
    keep = max(2, int(round(fraction * len(rest))))
    if len(rest) < 2:
        raise BadInput(f"need at least 2 training images, have {len(rest)}")
    return Split(np.sort(rest[:keep]), np.sort(val))


def ridge_init(z_old: np.ndarray, y_new: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ridge regression y ~ A z + b on unit vectors: (A (d_new x d_old), b)."""
    z = np.asarray(z_old, np.float64)
    y = np.asarray(y_new, np.float64)
    z_mean, y_mean = z.mean(0), y.mean(0)
    zc, yc = z - z_mean, y - y_mean
    gram = zc.T @ zc
    penalty = ridge * max(np.trace(gram) / gram.shape[0], 1e-12)
    a = np.linalg.solve(gram + penalty * np.eye(gram.shape[0]), zc.T @ yc).T
    return a.astype(np.float32), (y_mean - a @ z_mean).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"--device {name} requested but torch sees no CUDA device")
    return torch.device(name)


def label_term(kind: str, out: torch.Tensor, new_unit: torch.Tensor, labels: torch.Tensor,
               prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """prototype: CE of h(old) against the new model's class means (a fixed classifier);
    contrastive: supervised InfoNCE of h(old_i) against the batch's new embeddings."""
    if kind == "prototype":
        return F.cross_entropy(out @ prototypes.T / temperature, labels)
    logits = out @ new_unit.T / temperature
    positive = (labels[:, None] == labels[None, :]).float()
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -((log_prob * positive).sum(1) / positive.sum(1)).mean()


def class_means(new_unit: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(normalised per-class means of the training images' new embeddings, dense labels)."""
    classes, dense = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(classes), new_unit.shape[1]), np.float64)
    np.add.at(sums, dense, new_unit)
    return _unit(sums), dense.astype(np.int64)


def held_out_top1(new_unit: torch.Tensor, adapted: torch.Tensor, labels: torch.Tensor | None) -> float:
    """Share of held-out new-model queries whose nearest adapted old vector is right: the same
    image (no labels), or another image of the same identity (labels; queries whose identity
    has no other held-out image are skipped, and all of them at once falls back to images)."""
    scores = new_unit @ adapted.T
    if labels is not None:
        same = labels[:, None] == labels[None, :]
        same.fill_diagonal_(False)
        eligible = same.any(1)
        if bool(eligible.any()):
            scores = scores.clone()
            scores.fill_diagonal_(float("-inf"))
            hits = same[torch.arange(len(scores)), scores.argmax(1)]
            return float(hits[eligible].float().mean())
    return float((scores.argmax(1) == torch.arange(len(scores), device=scores.device)).float().mean())


def fit_adapter(config: AdapterConfig, pairs: PairedFeatures, split: Split, progress: Progress = None,
                on_log: Events = None) -> tuple[ResidualAdapter, dict[str, Any]]:
    device = _device(config.device)
    z_old, y_new = _unit(pairs.old), _unit(pairs.new)
    model = ResidualAdapter(pairs.old.shape[1], pairs.new.shape[1], config.arch, config.hidden,
                            config.depth)
    a, b = ridge_init(z_old[split.train], y_new[split.train], config.ridge)
    with torch.no_grad():
        model.linear.weight.copy_(torch.from_numpy(a))
        model.linear.bias.copy_(torch.from_numpy(b))
    model.to(device)
    x_train = torch.from_numpy(pairs.old[split.train].astype(np.float32)).to(device)
    y_train = torch.from_numpy(y_new[split.train]).to(device)
    prototypes, dense = class_means(y_new[split.train], pairs.labels[split.train])
    protos = torch.from_numpy(prototypes).to(device)
    labels_train = torch.from_numpy(dense).to(device)
    x_val = torch.from_numpy(pairs.old[split.val].astype(np.float32)).to(device)
    y_val = torch.from_numpy(y_new[split.val]).to(device)

    # identities (folders) pick the epoch whenever the data has them, with or without --labels,
    # so runs with and without the label term are selected alike
    val_labels = torch.from_numpy(pairs.labels[split.val]).to(device) if pairs.has_identities else None

    def cosines() -> tuple[float, float | None]:
        model.eval()
        with torch.no_grad():
            train = float((model(x_train) * y_train).sum(1).mean())
            val = float((model(x_val) * y_val).sum(1).mean()) if len(split.val) else None
        return train, val

    def top1() -> float | None:
        model.eval()
        with torch.no_grad():
            return held_out_top1(y_val, model(x_val), val_labels) if len(split.val) > 1 else None

    def selection(train_cos: float, val_cos: float | None, val_top1: float | None) -> tuple:
        return (val_top1 or 0.0, val_cos if val_cos is not None else train_cos)

    linear_train, linear_val = cosines()
    linear_top1 = top1()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n = len(split.train)
    batch = min(config.batch_size, n)
    steps_per_epoch = max(n // batch, 1)  # drop the ragged tail: every step sees a full batch
    total = config.epochs * steps_per_epoch
    generator = torch.Generator().manual_seed(config.seed)
    if on_log is not None:
        on_log({"phase": "train", "total": config.epochs * steps_per_epoch * batch})
    best = {"score": selection(linear_train, linear_val, linear_top1), "epoch": 0,
            "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    epochs, step_loss, step = [], [], 0
    for epoch in range(config.epochs):
        model.train()
        started, sums = time.perf_counter(), {"loss": 0.0, "cos_loss": 0.0, "label_loss": 0.0}
        order = torch.randperm(n, generator=generator).to(device)
        lr = config.lr
        for s in range(steps_per_epoch):
            rows = order[s * batch : (s + 1) * batch]
            lr = lr_at(step, total, config.lr, 0, 1.0)
            for group in optimizer.param_groups:
                group["lr"] = lr
            out = model(x_train[rows])
            cos_loss = (1.0 - (out * y_train[rows]).sum(1)).mean()
            loss = cos_loss
            if config.labels:
                extra = label_term(config.label_loss, out, y_train[rows], labels_train[rows], protos,
                                   config.temperature)
                loss = loss + config.label_weight * extra
                sums["label_loss"] += float(extra.detach())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            if not np.isfinite(value):
                raise GalleryError(f"adapter training diverged (loss {value}); lower --lr")
            sums["loss"] += value
            sums["cos_loss"] += float(cos_loss.detach())
            step += 1
            step_loss.append([step, value])
            if progress is not None:
                progress(len(rows))
        train_cos, val_cos = cosines()
        val_top1 = top1()
        record = {"epoch": epoch + 1, "end_step": step, "lr": lr, "train_cos": train_cos,
                  "val_cos": val_cos, "val_top1": val_top1, "seconds": time.perf_counter() - started,
                  **{k: v / steps_per_epoch for k, v in sums.items()}}
        epochs.append(record)
        score = selection(train_cos, val_cos, val_top1)
        if score > best["score"]:
            best = {"score": score, "epoch": epoch + 1,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        if on_log is not None:
            on_log({"epoch": epoch + 1, "loss": record["loss"], "val_cos": val_cos})
    # the epoch with the best held-out retrieval (0 = the ridge solution) is what ships
    model.load_state_dict(best["state"])
    train_cos, val_cos = cosines()
    val_top1 = top1()
    metrics = {"epochs": epochs, "step_loss": step_loss, "total_steps": step,
               "best_epoch": best["epoch"], "num_train": n, "num_val": int(len(split.val)),
               "linear_init_train_cos": linear_train, "linear_init_val_cos": linear_val,
               "train_cos": train_cos, "val_cos": val_cos, "device": str(device),
               "linear_init_val_top1": linear_top1, "val_top1": val_top1,
               "selection": "identity top-1" if val_labels is not None else "image top-1",
               "final_loss": step_loss[-1][1] if step_loss else None}
    return model.cpu().eval(), metrics


def export_adapter(model: ResidualAdapter, config: AdapterConfig, pairs: PairedFeatures,
                   metrics: dict[str, Any]) -> dict[str, Any]:
    """ONNX with gallery.adapter.* metadata; refused unless onnxruntime matches torch."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    values = {
        "format": ADAPTER_FORMAT,
        "from_sha256": pairs.old_identity.get("sha256"), "from_model_id": pairs.old_identity.get("model_id"),
        "from_dim": pairs.old.shape[1],
        "to_sha256": pairs.new_identity.get("sha256"), "to_model_id": pairs.new_identity.get("model_id"),
        "to_dim": pairs.new.shape[1], "data_fingerprint": pairs.fingerprint, "num_images": len(pairs.old),
        "arch": {"name": config.arch, "hidden": config.hidden if config.arch == "residual" else 0,
                 "depth": config.depth if config.arch == "residual" else 0},
        "model_id": weights_fingerprint(state),
        "training": {"labels": config.labels, "label_loss": config.label_loss if config.labels else None,
                     "label_weight": config.label_weight if config.labels else 0.0,
                     "epochs": config.epochs, "best_epoch": metrics["best_epoch"],
                     "fraction": config.fraction, "num_train": metrics["num_train"],
                     "val_cos": metrics["val_cos"], "seed": config.seed},
    }
    # parity inputs: real old embeddings (all of them up to 4096) at two batch sizes
    sample = pairs.old[: min(len(pairs.old), 4096)].astype(np.float32)
    out_path = config.out_path
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        torch_to_onnx(model, torch.from_numpy(sample[:2]), raw, "embedding", ["adapted"])
        with torch.no_grad():
            expected = model(torch.from_numpy(sample)).numpy()
        staged = staged_onnx(raw, adapter_metadata(values))
        adapter = load_adapter(staged)
        diff = float(max(np.abs(adapter.apply(sample) - expected).max(),
                         np.abs(adapter.apply(sample[:1]) - expected[:1]).max()))
        if not diff <= PARITY_ATOL:
            raise GateFailed(f"ONNX export of the adapter disagrees with torch: max |diff| {diff:.3g} "
                             f"> {PARITY_ATOL:g}; nothing written")
        os.replace(staged, out_path)
    log.info("adapter %s written (max |onnx - torch| %.2e)", out_path, diff)
    return {"max_abs_diff": diff, "parity_vectors": int(len(sample)), "model_id": values["model_id"],
            "metadata": adapter_metadata(values)}
