"""Headline metric, compatibility criterion, update gain and the rollout gates.

One headline metric M drives every decision so the gates never mix units:
1:N rank-1 when the evaluation set has an identification protocol (the
backfill-free deployment is a search of v2 queries against the v1 gallery; for
IJB-C the mean rank-1 over G1 and G2, each searched separately), otherwise TAR
at --target-far (or the lowest FAR the impostor count supports).
"""

from __future__ import annotations

from gallery.errors import BadInput


def check_same_dim(old_dim: int, new_dim: int) -> None:
    """Cross-model comparison needs one embedding space: different widths can never match."""
    if old_dim != new_dim:
        raise BadInput(
            f"old model gives {old_dim}-d embeddings, new model {new_dim}-d: not compatible by "
            "construction (a new query cannot be compared with an old gallery entry); train the new "
            "model with the old model's dimension, or map the old space with --adapter (gallery train-adapter)"
        )


def pick_headline(mode: str, comparisons: dict, target_far: float) -> dict:
    base = comparisons["old/old"]
    if mode == "rank1" or (mode == "auto" and "identification" in base):
        if "identification" not in base:
            raise BadInput("--headline rank1 needs a 1:N protocol (identity labels or IJB-C 1:N files)")
        if "identification_by_gallery" in base:  # IJB-C: mean over the separately searched galleries
            names = base["identification_by_gallery"]["mean"]["galleries"]
            return {"metric": f"rank1@mean({','.join(names)})", "task": "identification", "far": None,
                    "galleries": names}
        return {"metric": "rank1", "task": "identification", "far": None, "galleries": None}
    points = base["verification"]["tar_at_far"]
    fars = [p["far"] for p in points]
    if not fars:
        raise BadInput(
            f"too few impostor pairs ({base['verification']['num_impostor']}) to measure any FAR <= 0.1"
        )
    far = target_far if target_far in fars else min(fars)
    return {"metric": f"tar@far={far:g}", "task": "verification", "far": far, "galleries": None}


def headline_value(headline: dict, comparison: dict) -> float:
    if headline["task"] == "identification" and headline.get("galleries"):
        return float(comparison["identification_by_gallery"]["mean"]["rank1"])
    if headline["task"] == "identification":
        return float(comparison["identification"]["rank1"])
    for point in comparison["verification"]["tar_at_far"]:
        if point["far"] == headline["far"]:
            return float(point["tar"])
    raise BadInput(f"{headline['metric']} was not measured for every comparison")


def _gate(name: str, passed: bool, value, limit, detail: str) -> dict:
    return {"name": name, "passed": bool(passed), "value": value, "limit": limit, "detail": detail}


def evaluate_gates(config, values: dict[str, float], cross: str = "new->old") -> tuple[list[dict], dict]:
    """(gates requested by the config, summary of criterion / gain / new-model drop).

    `cross` names the backfill-free comparison the criterion judges: new->old, or
    new->h(old) when an adapter maps the old gallery into the new space."""
    cross_name = cross
    old, new, cross = values["old/old"], values["new/new"], values[cross_name]
    summary: dict = {
        "criterion": {"new_to_old": cross, "old_old": old, "margin": cross - old, "passed": cross > old,
                      "comparison": cross_name},
    }
    if "old->new" in values:
        summary["old_to_new_criterion"] = {"old_to_new": values["old->new"], "old_old": old,
                                           "passed": values["old->new"] > old}
    gain = None
    if "reference/reference" in values:
        ref = values["reference/reference"]
        denominator = ref - old
        gain = (cross - old) / denominator if denominator > 0 else None
        summary["gain"] = {"value": gain, "reference": ref, "note": None if gain is not None else
                           "reference model is not better than the old model: gain undefined"}
    baseline_name = "reference/reference" if "reference/reference" in values else "old/old"
    drop = values[baseline_name] - new
    summary["new_drop"] = {"value": drop, "baseline": baseline_name, "new_new": new}

    gates = []
    if config.require_criterion:
        gates.append(_gate("require_criterion", cross > old, cross, old,
                           f"{cross_name} {cross:.4f} must exceed old/old {old:.4f}"))
    if config.min_gain is not None:
        ok = gain is not None and gain >= config.min_gain
        gates.append(_gate("min_gain", ok, gain, config.min_gain,
                           "update gain undefined (reference not better than old)" if gain is None
                           else f"gain {gain:.4f} must be >= {config.min_gain:g}"))
    if config.max_new_drop is not None:
        gates.append(_gate("max_new_drop", drop <= config.max_new_drop, drop, config.max_new_drop,
                           f"{baseline_name} - new/new = {drop:.4f} must be <= {config.max_new_drop:g}"))
    return gates, summary
