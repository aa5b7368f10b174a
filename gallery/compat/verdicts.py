"""Recompute a compatibility report's verdicts from its own numbers before trusting them.

A report is a JSON file that anyone can edit: setting `criterion.passed` to true in a
failing report, or a threshold to -1, must not admit a model. `check_report` rebuilds
everything that is derived in the report from what was measured in it:

- the headline value of every comparison (`headline.values`) from `comparisons`,
- the criterion (new->old > old/old) and, when present, the old->new criterion,
- every requested gate from `config` (`require_criterion`, `min_gain`, `max_new_drop`)
  and those values, and `passed` / `failed_gates` from the gates,
- that each threshold is null or a finite number in [-1, 1] (a cosine), with a FAR in
  (0, 1), for models named by the report's own `models` hashes,

and refuses the report (BadInput, exit 2) naming the first disagreement. It cannot tell
an edited *measurement* from a real one: that is what signing is for
(gallery/compat/signing.py). Returns the names of the checks that ran, for history.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

from gallery.compat.checker import ADAPTED
from gallery.compat.gates import evaluate_gates, headline_value
from gallery.errors import BadInput

CHECKS = ("headline-values", "criterion", "gain-and-drop", "gates", "thresholds")
_TOL = 1e-9  # JSON round-trips floats exactly; this only absorbs a reformatting tool's rounding


def _fail(message: str) -> BadInput:
    return BadInput(f"compat report rejected: {message}")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _same(a: Any, b: float, where: str) -> None:
    if abs(_number(a, where) - b) > _TOL:
        raise _fail(f"{where} is {a!r} but the report's own numbers give {b!r}")


def _flag(value: Any, expected: bool, where: str) -> None:
    if value is not expected:
        raise _fail(f"{where} says {value!r} but the report's own numbers give {expected}")


def _values(report: dict) -> dict[str, float]:
    comparisons, headline = report["comparisons"], report["headline"]
    if not isinstance(comparisons, dict) or not isinstance(headline, dict):
        raise _fail("comparisons and headline must be objects")
    for name in ("old/old", "new/new", _cross_name(report)):
        if name not in comparisons:
            raise _fail(f"comparisons lacks {name}")
    values = {}
    for name, comparison in comparisons.items():
        try:
            values[name] = _number(headline_value(headline, comparison), f"headline value of {name}")
        except BadInput:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise _fail(f"comparison {name} lacks the headline metric ({exc.__class__.__name__}: {exc})") from None
    recorded = headline.get("values")
    if not isinstance(recorded, dict) or set(recorded) != set(values):
        raise _fail("headline.values must hold one value per comparison")
    for name, value in values.items():
        _same(recorded[name], value, f"headline.values[{name!r}]")
    return values


def _config(report: dict) -> SimpleNamespace:
    config = report["config"]
    if not isinstance(config, dict):
        raise _fail("config must be an object")
    require = config.get("require_criterion", False)
    if not isinstance(require, bool):
        raise _fail(f"config.require_criterion must be true or false, got {require!r}")
    limits = {}
    for key in ("min_gain", "max_new_drop"):
        value = config.get(key)
        limits[key] = None if value is None else _number(value, f"config.{key}")
    return SimpleNamespace(require_criterion=require, **limits)


def _cross_name(report: dict) -> str:
    """The backfill-free comparison the criterion judges: new->old, or new->h(old) when the
    report's config names an adapter (gallery/compat/checker.py ADAPTED; with models of two
    dimensions there is no raw new->old)."""
    config = report["config"]
    return ADAPTED if isinstance(config, dict) and config.get("adapter") else "new->old"


def _cross(report: dict, values: dict[str, float]) -> str:
    cross = _cross_name(report)
    if cross not in values:
        raise _fail(f"comparisons lacks {cross}")
    return cross


def _check_criterion(report: dict, summary: dict) -> None:
    for key, recomputed in (("criterion", summary["criterion"]),
                            ("old_to_new_criterion", summary.get("old_to_new_criterion"))):
        recorded = report.get(key)
        if recomputed is None:
            if recorded is not None:
                raise _fail(f"{key} is present but the report has no comparison for it")
            continue
        if not isinstance(recorded, dict):
            raise _fail(f"{key} must be an object")
        for field, value in recomputed.items():
            if field == "passed":
                _flag(recorded.get("passed"), value, f"{key}.passed")
            elif isinstance(value, str):  # the comparison the criterion judged
                if recorded.get(field) != value:
                    raise _fail(f"{key}.{field} is {recorded.get(field)!r}, expected {value!r}")
            else:
                _same(recorded.get(field), value, f"{key}.{field}")


def _check_gain_and_drop(report: dict, summary: dict) -> None:
    for key in ("gain", "new_drop"):
        recomputed, recorded = summary.get(key), report.get(key)
        if recomputed is None:
            continue
        if not isinstance(recorded, dict):
            raise _fail(f"{key} must be an object")
        if recomputed["value"] is None:
            if recorded.get("value") is not None:
                raise _fail(f"{key}.value is {recorded.get('value')!r} but the report's own numbers leave it undefined")
        else:
            _same(recorded.get("value"), recomputed["value"], f"{key}.value")


def _check_gates(report: dict, gates: list[dict]) -> None:
    recorded = report["gates"]
    if not isinstance(recorded, list) or not all(isinstance(g, dict) for g in recorded):
        raise _fail("gates must be a list of objects")
    if [g.get("name") for g in recorded] != [g["name"] for g in gates]:
        raise _fail(f"gates {[g.get('name') for g in recorded]} are not the gates its config requests "
                    f"{[g['name'] for g in gates]}")
    for mine, theirs in zip(gates, recorded):
        _flag(theirs.get("passed"), mine["passed"], f"gate {mine['name']}.passed")
    failed = [g["name"] for g in gates if not g["passed"]]
    if report["failed_gates"] != failed:
        raise _fail(f"failed_gates is {report['failed_gates']!r} but the report's own numbers fail {failed}")
    _flag(report["passed"], not failed, "passed")


def _check_thresholds(report: dict) -> None:
    entries = report["thresholds"]
    if not isinstance(entries, list):
        raise _fail("thresholds must be a list")
    models = report["models"]
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _fail(f"thresholds[{i}] must be an object")
        where = f"thresholds[{i}] ({entry.get('query')}->{entry.get('gallery')})"
        value = entry.get("threshold")
        if value is not None:
            value = _number(value, f"{where}.threshold")
            if not -1.0 <= value <= 1.0:
                raise _fail(f"{where}.threshold {value!r} is not a cosine in [-1, 1]")
        far = _number(entry.get("far"), f"{where}.far")
        if not 0.0 < far < 1.0:
            raise _fail(f"{where}.far {far!r} is not in (0, 1)")
        for side in ("query", "gallery"):
            role = entry.get(side)
            if not isinstance(role, str) or role not in models:
                raise _fail(f"{where}.{side} {role!r} names no model of the report")
            if entry.get(f"{side}_sha256") != models[role].get("sha256"):
                raise _fail(f"{where}.{side}_sha256 is not models.{role}.sha256")


def check_report(report: dict) -> list[str]:
    """Refuse a report whose verdicts or thresholds its own numbers do not support."""
    try:
        values = _values(report)
        gates, summary = evaluate_gates(_config(report), values, cross=_cross(report, values))
        _check_criterion(report, summary)
        _check_gain_and_drop(report, summary)
        _check_gates(report, gates)
        _check_thresholds(report)
    except BadInput:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _fail(f"malformed ({exc.__class__.__name__}: {exc})") from None
    return list(CHECKS)
