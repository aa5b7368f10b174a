"""`train` and `train_compatible`: the trainer's front door, as plain functions.

    from trainer import train, train_compatible
    train(data="runs/data/train.h5", arch="small", dim=32, epochs=2, out="v1.pt")
    train_compatible(old="v1.pt", method="mixbct", data="runs/data/train.h5", out="v2.pt")

Options are TrainConfig's fields (trainer/config.py), over an optional TOML/JSON
config file; the resolved config is written next to the model. Importing this module
does not load torch: each function imports the torch-based modules when called.
"""

from __future__ import annotations

import importlib.util
import inspect
import pkgutil
from pathlib import Path
from typing import Any, Callable

from gallery.errors import BadInput
from trainer.config import TrainConfig

Progress = Callable[[int], None] | None
# Hyperparameters of the compatibility methods (constructor parameters), settable by name.
METHOD_OPTIONS = ("l2_weight", "tau", "bct_scale", "bct_variant", "mix_ratio", "credible_t")


def method_names() -> list[str]:
    """Method files in trainer/methods (one per registered method), found without torch."""
    spec = importlib.util.find_spec("trainer")
    roots = [str(Path(p) / "methods") for p in (spec.submodule_search_locations or [])] if spec else []
    return sorted(m.name for m in pkgutil.iter_modules(roots) if m.name != "base")


def build_config(config: TrainConfig | str | Path | None = None, **options: Any) -> TrainConfig:
    """TrainConfig from a config object or file plus options (None = not given).
    `scale` / `margin` set the head's s / m."""
    scale, margin = options.pop("scale", None), options.pop("margin", None)
    given = {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()
             if v is not None and v is not False}
    if isinstance(config, TrainConfig):
        resolved = TrainConfig.from_dict({**config.to_dict(), **given})
    elif config is not None:
        resolved = TrainConfig.from_file(config, **given)
    else:
        resolved = TrainConfig.from_dict(given)
    params = dict(resolved.head_params)
    params.update({k: v for k, v in (("s", scale), ("m", margin)) if v is not None})
    resolved.head_params = params
    if not resolved.data:
        raise BadInput("--data is required (or data = ... in --config)")
    return resolved


def method_params(method: str, given: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The method's resolved hyperparameters: defaults < config file < options given."""
    # trainer.methods imports torch: only when a compatible model is being trained.
    from trainer.methods import load_all

    cls = load_all().get(method)  # unknown names -> BadInput listing the valid ones
    signature = inspect.signature(cls.__init__).parameters
    params = {name: p.default for name, p in signature.items()
              if p.default is not inspect.Parameter.empty}
    params.update(base)
    for name, value in given.items():
        if value is None:
            continue
        if name not in signature:
            raise BadInput(f"--{name.replace('_', '-')} does not apply to method {method!r}")
        params[name] = value
    return params


def train(config: TrainConfig | str | Path | None = None, *, progress: Progress = None,
          on_log: Callable[[dict], None] | None = None, **options: Any) -> Any:
    """Train an encoder with no compatibility constraint (method `independent`) and save
    it as a .pt (+ ONNX with `onnx=PATH`). Returns trainer.fit.TrainResult."""
    # torch loads here, not at import: `from trainer import train` stays cheap.
    from trainer.fit import fit

    cfg = build_config(config, **options)
    cfg.method = "independent"
    cfg.validate()
    return fit(cfg, progress=progress, on_log=on_log)


def train_compatible(config: TrainConfig | str | Path | None = None, *, old: str | Path | None = None,
                     old_features: str | Path | None = None, method: str | None = None,
                     progress: Progress = None, on_log: Callable[[dict], None] | None = None,
                     old_progress: Progress = None, old_start: Progress = None, auto_budget: str = "3",
                     on_candidate: Callable[[str], None] | None = None, **options: Any) -> Any:
    """Train a v2 encoder whose queries stay comparable with `old`'s gallery (method
    default: mixbct, or the config file's). `options`: TrainConfig fields plus the
    method's hyperparameters (l2_weight, tau, bct_scale, bct_variant, mix_ratio,
    credible_t). Old features are extracted first (`old_progress` / `old_start` follow
    it), then the one fit loop runs. Returns trainer.fit.TrainResult; with method "auto",
    a grid of methods is scored on held-out identities within `auto_budget` (epochs, or
    minutes as "20m"), the winner retrained, and trainer.auto.AutoResult returned."""
    # torch loads here, not at import: `from trainer import train_compatible` stays cheap.
    from trainer.fit import fit
    from trainer.methods import load_all
    from trainer.old_features import precompute_old_features
    from trainer.projection import old_space_dim

    given = {name: options.pop(name, None) for name in METHOD_OPTIONS}
    cfg = build_config(config, old_model=old, old_features=old_features, **options)
    method = method or (cfg.method if config is not None else "mixbct")
    if method == "auto":
        from trainer.auto import run_auto  # torch, like the imports above

        return run_auto(cfg, auto_budget, on_candidate=on_candidate)
    base = cfg.method_params if cfg.method == method else {}
    cfg.method = method
    cfg.method_params = method_params(method, given, base)
    if load_all().get(method).requires_old_model and not (cfg.old_model or cfg.old_features):
        raise BadInput(f"method {method!r} needs the old model: pass --old or --old-features")
    cfg.old_dim = old_space_dim(cfg)  # dim != v1's dim: v2 learns a projection to v1's space
    cfg.validate()
    precompute_old_features(cfg, progress=old_progress, start=old_start)
    return fit(cfg, progress=progress, on_log=on_log)
