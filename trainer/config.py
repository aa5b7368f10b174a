"""TrainConfig: every knob of a training run, resolved and written next to the model.

One dataclass serves `gallery train`, `gallery train-compatible`, the benchmark
and TOML configs (e.g. configs/gpu_iresnet50.toml), so the config written next to
a model is enough to rerun it.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from gallery.errors import BadInput
from gallery.preprocess import PreprocessSpec

OPTIMIZERS = ("sgd", "adamw")
CLIP_SCOPES = ("all", "backbone")
# Fields that may differ between an interrupted run and its resumption: they do not
# change what is computed, only where results go or how far this invocation runs.
RUN_ONLY_FIELDS = frozenset({"out", "onnx", "resume", "stop_after", "num_workers", "device",
                             "threads"})


@dataclass
class TrainConfig:
    data: str = ""
    out: str = "model.pt"
    arch: str = "small"
    head: str = "arcface"
    head_params: dict[str, float] = field(default_factory=dict)  # e.g. {"s": 64, "m": 0.5}
    dim: int = 128
    image_size: int = 112
    color_order: str = "RGB"
    mean: float = 127.5
    std: float = 127.5
    dropout: float = 0.0
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    poly_power: float = 2.0
    grad_clip: float = 5.0
    clip_scope: str = "all"     # all: backbone + head (+ method) | backbone: the official repos'
    amp: bool = True            # autocast (fp16) on CUDA only; CPU always runs fp32
    flip: bool = True
    seed: int = 0
    num_workers: int = 0
    threads: int | None = None  # torch CPU threads (None: torch's default)
    device: str = "auto"        # auto | cpu | cuda | cuda:N
    onnx: str | None = None
    resume: bool = False
    stop_after: int | None = None  # stop after this many epochs (checkpoint kept; resume later)
    method: str = "independent"
    method_params: dict[str, Any] = field(default_factory=dict)
    old_model: str | None = None
    old_features: str | None = None
    old_dim: int | None = None  # v1's dim when it differs from dim: train a projection to it

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Reject values that would fail later, deep inside the loop, with one clear line."""
        positive = {"dim": self.dim, "image_size": self.image_size, "epochs": self.epochs,
                    "batch_size": self.batch_size}
        for name, value in positive.items():
            if int(value) < 1:
                raise BadInput(f"--{name.replace('_', '-')} must be >= 1 (got {value})")
        if self.old_dim is not None and int(self.old_dim) < 1:
            raise BadInput(f"old_dim must be >= 1 (got {self.old_dim})")
        if self.lr <= 0:
            raise BadInput(f"--lr must be > 0 (got {self.lr})")
        if self.optimizer not in OPTIMIZERS:
            raise BadInput(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.clip_scope not in CLIP_SCOPES:
            raise BadInput(f"unknown clip scope {self.clip_scope!r}; valid: {', '.join(CLIP_SCOPES)}")
        if not 0.0 <= self.dropout < 1.0:
            raise BadInput(f"dropout must be in [0, 1) (got {self.dropout})")
        if self.stop_after is not None and self.stop_after < 1:
            raise BadInput(f"stop_after must be >= 1 (got {self.stop_after})")
        if Path(self.out).suffix not in (".pt", ".pth"):
            raise BadInput(f"--out must name a .pt (or .pth) model file, got {self.out}")
        if self.onnx and Path(self.onnx).suffix != ".onnx":
            raise BadInput(f"--onnx must name a .onnx file, got {self.onnx}")
        self.preprocess_spec()  # validates colour order

    def preprocess_spec(self) -> PreprocessSpec:
        channels = 1 if self.color_order == "GRAY" else 3
        return PreprocessSpec(
            height=int(self.image_size), width=int(self.image_size),
            color_order=self.color_order,
            mean=(float(self.mean),) * channels, std=(float(self.std),) * channels,
        )

    @property
    def out_path(self) -> Path:
        return Path(self.out)

    def sibling(self, suffix: str) -> Path:
        """A file next to the model: v1.pt -> v1<suffix> (e.g. v1.metrics.json)."""
        path = self.out_path
        return path.with_name(path.stem + suffix)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def signature(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed with this config."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_ONLY_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadInput(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """Load a TOML or JSON config; keyword overrides (not None) win."""
        path = Path(path)
        if not path.is_file():
            raise BadInput(f"config file not found: {path}")
        try:
            if path.suffix == ".toml":
                data = tomllib.loads(path.read_text())
            else:
                data = json.loads(path.read_text())
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise BadInput(f"cannot parse config {path}: {exc}") from None
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
