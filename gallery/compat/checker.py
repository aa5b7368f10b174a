"""The compatibility check: embed an evaluation set with the old, new (and reference)
models, score old/old, new/new, new->old (and old->new), decide the criterion,
the update gain and the gates, and calibrate thresholds per (query, gallery) pair.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from gallery.adapter import load_adapter
from gallery.compat.evalsets import EmbeddingSet, EvalSet, open_evalset, read_embeddings, write_embeddings
from gallery.compat.evalsets.base import Embedded
from gallery.compat.gates import check_same_dim, evaluate_gates, headline_value, pick_headline
from gallery.compat.protocols import PairProtocol, ProtocolConfig, SearchProtocol, pairs_from_search
from gallery.compat.report import build_report
from gallery.compat.plots import plot_curves
from gallery.compat.report import write_report
from gallery.compat.signing import read_key, sign
from gallery.encoder import describe, load_encoder, old_space_view
from gallery.errors import BadInput, GateFailed
from gallery.fingerprint import file_sha256
from gallery.ingest import ON_ERROR
from gallery.metrics.identification import identification_report, mean_identification_report, search_stats
from gallery.metrics.retrieval import mean_average_precision
from gallery.metrics.verification import DEFAULT_FARS, threshold_at_far, verification_report
from gallery.model_identity import model_sha256
from gallery.preprocess import l2_normalize

log = logging.getLogger(__name__)
Progress = Callable[[int], None] | None


@dataclass
class CheckConfig:
    old: str | None = None
    new: str | None = None
    data: str | None = None
    embeddings: str | None = None          # precomputed item embeddings (HDF5)
    reference: str | None = None           # independent new model, for the update gain
    target_far: float = 1e-4
    min_gain: float | None = None
    max_new_drop: float | None = None
    require_criterion: bool = False
    old_to_new: bool = False
    headline: str = "auto"                 # auto | rank1 | tar
    seed: int = 0
    impostor_pairs: int = 100_000
    distractor_fraction: float = 0.2
    gallery_per_identity: int = 1
    batch_size: int = 64
    save_embeddings: str | None = None
    adapter: str | None = None             # h: old space -> new space (gallery train-adapter)
    sign_key: str | None = None            # key file: the report gets an HMAC-SHA256 (compat/signing.py)
    detect: bool | None = None             # photo folders: detect + align faces (None: as the model declares)
    detector: str | None = None            # YuNet ONNX (default $GALLERY_YUNET_MODEL)
    on_error: str = "skip"                 # a photo without a face: left out and reported, or "fail"

    def to_dict(self) -> dict:
        return asdict(self)

    def protocol(self) -> ProtocolConfig:
        return ProtocolConfig(self.seed, self.impostor_pairs, self.distractor_fraction, self.gallery_per_identity)


@dataclass
class CheckResult:
    report: dict
    curves: dict = field(default_factory=dict)  # comparison -> {"genuine", "impostor", "cmc"} arrays

    @property
    def passed(self) -> bool:
        return bool(self.report["passed"])

    def raise_if_failed(self) -> None:
        """GateFailed naming the failed gates (what `gallery check-compat` exits 1 for)."""
        if not self.passed:
            raise GateFailed(f"compatibility gate(s) failed: {', '.join(self.report['failed_gates'])}")


MAX_ERRORS = 100  # item errors listed in a report (their count is data.left_out)
OLD_SPACE = "new_old_space"  # role: a v2's projection into v1's space (train-compatible --dim != v1's)
ADAPTED = "new->h(old)"  # new queries against the old gallery mapped by the adapter
COMPARISONS = {"old/old": ("old", "old"), "new/new": ("new", "new"), "new->old": ("new", "old"),
               "old->new": ("old", "new"), "reference/reference": ("reference", "reference"),
               ADAPTED: ("new", "adapted")}


def _validate(config: CheckConfig) -> None:
    if not config.data and not config.embeddings:
        raise BadInput("give the evaluation data (--data DIR|FILE.bin|IJBC_DIR) or --embeddings FILE.h5")
    if not 0.0 < config.target_far < 1.0:
        raise BadInput(f"--target-far must be in (0, 1), got {config.target_far}")
    if config.min_gain is not None and not config.reference:
        raise BadInput("--min-gain needs --reference (the gain is measured against an independent model)")
    if config.max_new_drop is not None and config.max_new_drop < 0:
        raise BadInput(f"--max-new-drop must be >= 0, got {config.max_new_drop}")
    if config.headline not in ("auto", "rank1", "tar"):
        raise BadInput(f"--headline must be auto, rank1 or tar, got {config.headline!r}")
    if config.batch_size < 1:
        raise BadInput(f"--batch-size must be >= 1, got {config.batch_size}")
    if config.on_error not in ON_ERROR:
        raise BadInput(f"--on-error must be one of {', '.join(ON_ERROR)}, got {config.on_error!r}")
    if config.sign_key is not None:
        read_key(config.sign_key)  # a bad key fails now, not after the embedding


def _file_identity(path: str) -> dict:
    if not Path(path).is_file():
        raise BadInput(f"model file not found: {path}")
    return {"sha256": model_sha256(path), "model_id": None, "path": str(Path(path).resolve()), "format": "unknown"}


def _roles(config: CheckConfig) -> dict[str, str | None]:
    roles = {"old": config.old, "new": config.new}
    if config.reference:
        roles["reference"] = config.reference
    return roles


def _load_models(config, load, pre: dict | None) -> tuple[dict, dict]:
    """Encoders for roles without precomputed features, and every role's identity."""
    encoders, identities = {}, {}
    for role, path in _roles(config).items():
        if pre is not None and role in pre["features"]:
            identities[role] = dict(pre["identities"][role])
            if path:  # the file names the model; its identity wins over the HDF5 attrs
                identities[role].update(_file_identity(path), format="embeddings")
            continue
        if not path:
            raise BadInput(f"--{role} is required (no precomputed {role} embeddings given)")
        encoders[role] = load(path)
        identities[role] = describe(encoders[role])
    view = old_space_view(encoders["new"]) if "new" in encoders else None
    if view is not None:  # v2 of another dim: its queries meet v1 rows through its projection
        encoders[OLD_SPACE], identities[OLD_SPACE] = view, {**identities["new"], "dim": view.dim}
    return encoders, identities


def _check_dims(encoders: dict, pre: dict | None, adapter, config: CheckConfig) -> None:
    dims = {r: e.dim for r, e in encoders.items()}
    if pre is not None:
        dims.update({r: a.shape[1] for r, a in pre["features"].items() if r not in dims})
    if adapter is not None and (adapter.from_dim, adapter.to_dim) != (dims["old"], dims["new"]):
        raise BadInput(f"adapter {Path(config.adapter).name} maps {adapter.from_dim}-d -> {adapter.to_dim}-d "
                       f"but the old model gives {dims['old']}-d and the new one {dims['new']}-d")
    if adapter is None and dims.get(OLD_SPACE) != dims["old"]:
        check_same_dim(dims["old"], dims["new"])
    if config.old_to_new and dims["old"] != dims["new"]:
        raise BadInput("--old-to-new needs old and new models of one dimension")


def _load_adapter(config: CheckConfig, identities: dict):
    """The adapter, checked against both models' identities (file sha256 or model_id)."""
    if not config.adapter:
        return None
    adapter = load_adapter(config.adapter)
    adapter.check_models(identities["old"], identities["new"])
    identities["adapted"] = adapter.describe()
    return adapter


def _names(config: CheckConfig, items: dict) -> list[str]:
    comparable = items["old"].shape[1] in (items["new"].shape[1], items.get(OLD_SPACE, items["new"]).shape[1])
    names = ["old/old", "new/new"] + (["new->old"] if comparable else [])
    names += [ADAPTED] if config.adapter else []
    names += ["old->new"] if config.old_to_new else []
    return names + (["reference/reference"] if config.reference else [])


def _embed(evalset, encoders, pre, config, progress, on_total) -> Embedded:
    """Every role's item embeddings; items a face model found no face in are left out of all."""
    if on_total is not None:
        on_total(evalset.num_items * len(encoders))
    log.info("embedding %d items with the %s model(s)", evalset.num_items, ", ".join(encoders))
    done = evalset.embed_roles(encoders, config.batch_size, progress, config.detect, config.detector,
                               config.on_error)
    if pre is not None:
        for role, array in pre["features"].items():
            if role in _roles(config) and role not in done.items:
                done.items[role] = array if done.kept is None else array[done.kept]
    if done.errors:
        log.warning("%d of %d evaluation items left out (first: %s: %s)", len(done.errors), evalset.num_items,
                    done.errors[0]["item"], done.errors[0]["error"])
    return done


def _pair_scores(q: np.ndarray, g: np.ndarray, pairs: PairProtocol, chunk: int = 32_768) -> np.ndarray:
    """Cosine score of each pair: query model on the left item, gallery model on the right.

    Cache-sized chunks: gathering 32k rows at a time is ~2x faster than 200k."""
    out = np.empty(len(pairs.left), np.float32)
    for s in range(0, len(out), chunk):
        out[s : s + chunk] = np.einsum("ij,ij->i", q[pairs.left[s : s + chunk]], g[pairs.right[s : s + chunk]])
    return out


def _compare(q, g, pairs, search, fars) -> tuple[dict, dict]:
    result, curves = {}, {}
    if pairs is not None:
        scores = _pair_scores(q, g, pairs)
        genuine, impostor = scores[pairs.issame], scores[~pairs.issame]
        result["verification"] = verification_report(genuine, impostor, fars)
        curves["genuine"], curves["impostor"] = genuine, impostor  # ROC is drawn only on --plot
    if search is not None:
        probes = q[search.probes]
        result["identification"] = _identify(probes, g, search)
        curves["cmc"] = np.asarray(result["identification"]["cmc"])
        if search.galleries:  # IJB-C: G1 and G2 searched separately, the decision uses their mean
            per = {name: _identify(probes, g, search.part(name)) for name in search.galleries}
            result["identification_by_gallery"] = {"galleries": per, "mean": mean_identification_report(per)}
            curves["cmc"] = np.asarray(result["identification_by_gallery"]["mean"]["cmc"])
        value, count = mean_average_precision(probes, g[search.gallery], search.probe_labels, search.gallery_labels)
        result["retrieval"] = {"map": value, "num_queries": count}
    return result, curves


def _identify(probes: np.ndarray, g: np.ndarray, search: SearchProtocol) -> dict:
    return identification_report(search_stats(probes, g[search.gallery], search.probe_labels, search.gallery_labels))


def _thresholds(name_roles, curves, identities, target_far) -> list[dict]:
    entries = []
    for name, (q, g) in name_roles.items():
        entries.append({
            "query": q, "gallery": g, "comparison": name,
            "query_sha256": identities[q].get("sha256"), "gallery_sha256": identities[g].get("sha256"),
            "query_model_id": identities[q].get("model_id"), "gallery_model_id": identities[g].get("model_id"),
            **threshold_entry(curves[name]["impostor"], target_far),
        })
    return entries


def threshold_entry(impostor: np.ndarray, far: float) -> dict:
    """The calibrated threshold at `far` from impostor scores, and whether their count supports it."""
    threshold, achieved = threshold_at_far(impostor, far)
    return {"threshold": threshold, "far": far, "achieved_far": achieved,
            "supported": bool(far * impostor.size >= 1.0 - 1e-9), "num_impostor": int(impostor.size)}


def pair_threshold(q_units: np.ndarray, g_units: np.ndarray, pairs: PairProtocol, far: float) -> dict:
    """Calibrate one (query model, gallery model) pair on the check's impostor pairs: the
    same threshold check-compat reports for that pair (`gallery threshold calibrate`)."""
    return threshold_entry(_pair_scores(q_units, g_units, pairs)[~pairs.issame], far)


def open_protocols(data: str, protocol_config: ProtocolConfig) -> tuple[EvalSet, PairProtocol]:
    """An evaluation set and its 1:1 pairs, exactly as check-compat builds them."""
    evalset = open_evalset(data)
    return evalset, _protocols(evalset, protocol_config)[0]


def _save(path: str, evalset: EvalSet, items: dict, identities: dict, pairs: PairProtocol) -> None:
    """Write item embeddings plus whatever makes the file a standalone evaluation set."""
    if evalset.kind == "ijbc":  # pairs are over templates: reuse the file with --data
        write_embeddings(path, items, identities)
    elif evalset.unit_labels() is not None:
        write_embeddings(path, items, identities, labels=evalset.unit_labels())
    else:
        write_embeddings(path, items, identities, pairs=pairs)


def _open(config: CheckConfig) -> tuple[EvalSet, dict | None]:
    pre = read_embeddings(config.embeddings) if config.embeddings else None
    if pre is not None and not config.adapter:  # fail before protocols, as model widths do
        check_same_dim(pre["features"]["old"].shape[1], pre["features"]["new"].shape[1])
    evalset = open_evalset(config.data) if config.data else EmbeddingSet(config.embeddings, pre)
    return evalset, pre


def run_check(
    config: CheckConfig,
    load: Callable[[str], object] | None = None,
    progress: Progress = None,
    on_total: Callable[[int], None] | None = None,
) -> CheckResult:
    """Run the whole check; gates are decided but not raised (the caller exits 1 on failure).
    `load` replaces gallery.encoder.load_encoder (tests pass stand-in encoders)."""
    _validate(config)
    load = load or load_encoder
    evalset, pre = _open(config)
    # protocols and shapes first: bad meta files or dimensions fail before any model runs
    pairs, search = _protocols(evalset, config.protocol())
    encoders, identities = _load_models(config, load, pre)
    adapter = _load_adapter(config, identities)
    _check_dims(encoders, pre, adapter, config)
    _check_rows(evalset, pre, config)
    done = _embed(evalset, encoders, pre, config, progress, on_total)
    items = done.items
    if done.kept is not None:  # the protocols over the items every model embedded
        evalset = evalset.subset(done.kept)
        pairs, search = _protocols(evalset, config.protocol())
    if config.save_embeddings:
        _save(config.save_embeddings, evalset, items, identities, pairs)
    if adapter is not None:  # per item, before any template aggregation, as a store would
        items["adapted"] = adapter.apply(items["old"])
    units = {role: l2_normalize(evalset.to_units(f)) for role, f in items.items()}
    names = _names(config, items)
    name_roles = {n: COMPARISONS[n] for n in names}
    if OLD_SPACE in items and "new->old" in name_roles:
        name_roles["new->old"] = (OLD_SPACE, "old")
    comparisons, curves = {}, {}
    fars = tuple(sorted(set(DEFAULT_FARS) | {config.target_far}))
    for name, (q, g) in name_roles.items():
        comparisons[name], curves[name] = _compare(units[q], units[g], pairs, search, fars)
        comparisons[name].update(query=q, gallery=g)
    headline = pick_headline(config.headline, comparisons, config.target_far)
    gates, summary = evaluate_gates(config, {n: headline_value(headline, c) for n, c in comparisons.items()},
                                    cross=ADAPTED if adapter is not None else "new->old")
    report = build_report(
        models=identities, data={**_data_identity(evalset, pre, config), "item_errors": done.errors[:MAX_ERRORS]},
        protocol=_protocol_summary(config, evalset, pre, pairs, search), comparisons=comparisons,
        headline=headline, summary=summary, gates=gates,
        thresholds=_thresholds(name_roles, curves, identities, config.target_far), config=config.to_dict(),
    )
    if config.sign_key is not None:
        report = sign(report, read_key(config.sign_key))
    return CheckResult(report=report, curves=curves)


def _protocols(evalset: EvalSet, protocol_config: ProtocolConfig) -> tuple[PairProtocol, SearchProtocol | None]:
    search = evalset.search_protocol(protocol_config)
    pairs = evalset.pair_protocol(protocol_config)
    if pairs is None and search is not None:
        pairs = pairs_from_search(search, protocol_config)  # thresholds need 1:1 impostor scores
    if pairs is None:
        raise BadInput(f"{evalset.path}: defines neither 1:1 pairs nor a 1:N split")
    return pairs, search


def _check_rows(evalset: EvalSet, pre: dict | None, config: CheckConfig) -> None:
    if pre is None:
        return
    for role, array in pre["features"].items():
        if array.shape[0] != evalset.num_items:
            raise BadInput(f"{config.embeddings}: /{role} has {array.shape[0]} rows but the evaluation "
                           f"set has {evalset.num_items} items")


def _data_identity(evalset: EvalSet, pre: dict | None, config: CheckConfig) -> dict:
    data = evalset.describe()
    if config.data and pre is not None:
        data["embeddings"] = {"path": config.embeddings, "sha256": file_sha256(config.embeddings)}
    return data


def _protocol_summary(config, evalset, pre, pairs, search) -> dict:
    from_embeddings = pre is not None and pre["pairs"] is not None and not config.data
    return {
        **config.protocol().to_dict(),
        "pairs": pairs.describe(),
        "search": None if search is None else search.describe(),
        "fixed_pairs": evalset.kind in ("insightface-bin", "ijbc") or from_embeddings,
    }


def check_compat(old: str | Path | None = None, new: str | Path | None = None, *,
                 data: str | Path | None = None, embeddings: str | Path | None = None,
                 reference: str | Path | None = None, report: str | Path | None = None,
                 plot: str | Path | None = None, progress: Progress = None,
                 on_total: Callable[[int], None] | None = None, **options: object) -> CheckResult:
    """May `new`'s queries search `old`'s gallery? Embeds `data` (identity folder,
    insightface .bin, IJB-C folder) with both models, or reads precomputed `embeddings`,
    and scores old/old, new/new and new->old. `options` are CheckConfig's fields
    (target_far, min_gain, max_new_drop, require_criterion, seed, ...). Writes the JSON
    report to `report` and ROC + CMC curves to `plot` when given. Failed gates are in
    the result (`passed`, `raise_if_failed()`), not raised."""
    unknown = sorted(set(options) - set(CheckConfig.__dataclass_fields__))
    if unknown:
        raise BadInput(f"unknown check_compat option(s): {', '.join(unknown)}; "
                       f"valid: {', '.join(sorted(CheckConfig.__dataclass_fields__))}")
    paths = {"old": old, "new": new, "data": data, "embeddings": embeddings, "reference": reference}
    config = CheckConfig(**{k: None if v is None else str(v) for k, v in paths.items()}, **options)  # type: ignore[arg-type]
    result = run_check(config, progress=progress, on_total=on_total)
    if report is not None:
        write_report(result.report, report)
    if plot is not None:
        plot_curves(result.curves, plot, title=f"{Path(config.new or 'new').name} vs {Path(config.old or 'old').name}")
    return result
