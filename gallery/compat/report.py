"""The compatibility report: one JSON document, versioned (docs/report-schema.md).

The rollout (`gallery upgrade --report`) reads `passed`, `models` and `thresholds`;
`load_report` checks the version and those keys so a stale or foreign file is
refused with one clear line.
"""

from __future__ import annotations

import datetime as _dt
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from gallery.compat.gates import headline_value
from gallery.errors import BadInput

SCHEMA_VERSION = "gallery.compat-report/1"
REQUIRED = ("schema_version", "passed", "gates", "failed_gates", "models", "data", "protocol",
            "headline", "comparisons", "criterion", "thresholds", "config")
THRESHOLD_KEYS = ("query", "gallery", "query_sha256", "gallery_sha256", "threshold", "far")


def _version() -> str:
    try:
        return version("gallery")
    except PackageNotFoundError:  # not installed (running from a checkout)
        return "unknown"


def build_report(*, models: dict, data: dict, protocol: dict, comparisons: dict, headline: dict,
                 summary: dict, gates: list[dict], thresholds: list[dict], config: dict) -> dict:
    headline = dict(headline)
    headline["values"] = {}
    report = {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tool": {"name": "gallery", "version": _version()},
        "passed": all(g["passed"] for g in gates),
        "gates": gates,
        "failed_gates": [g["name"] for g in gates if not g["passed"]],
        "models": models,
        "data": data,
        "protocol": protocol,
        "headline": headline,
        "comparisons": comparisons,
        "criterion": summary["criterion"],
        "old_to_new_criterion": summary.get("old_to_new_criterion"),
        "gain": summary.get("gain"),
        "new_drop": summary["new_drop"],
        "thresholds": thresholds,
        "config": config,
    }
    for name, comparison in comparisons.items():
        headline["values"][name] = headline_value(headline, comparison)
    validate_report(report)
    return report


def validate_report(report: dict) -> dict:
    """Raise BadInput naming the first problem; return the report when it is well formed."""
    if not isinstance(report, dict):
        raise BadInput("compat report must be a JSON object")
    if report.get("schema_version") != SCHEMA_VERSION:
        raise BadInput(f"compat report schema {report.get('schema_version')!r} is not {SCHEMA_VERSION!r}")
    missing = [k for k in REQUIRED if k not in report]
    if missing:
        raise BadInput(f"compat report lacks {', '.join(missing)}")
    if not isinstance(report["passed"], bool):
        raise BadInput("compat report: 'passed' must be true or false")
    models = report["models"]
    if not isinstance(models, dict) or not all(isinstance(m, dict) for m in models.values()):
        raise BadInput("compat report: 'models' must be an object of model identities")
    for role in ("old", "new"):
        if not isinstance(models.get(role, {}).get("sha256"), (str, type(None))) or \
                "sha256" not in models.get(role, {}):
            raise BadInput(f"compat report: models.{role}.sha256 missing")
    for key, kind in (("thresholds", list), ("gates", list), ("failed_gates", list)):
        if not isinstance(report[key], kind):
            raise BadInput(f"compat report: '{key}' must be a list")
    for entry in report["thresholds"]:
        if not isinstance(entry, dict):
            raise BadInput("compat report: a threshold entry is not an object")
        lacking = [k for k in THRESHOLD_KEYS if k not in entry]
        if lacking:
            raise BadInput(f"compat report: a threshold entry lacks {', '.join(lacking)}")
    return report


def load_report(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"compat report not found: {path}")
    try:
        report = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise BadInput(f"{path} is not JSON") from None
    return validate_report(report)


def write_report(report: dict, path: str | Path) -> None:
    """Write atomically: a crash never leaves half a report for the rollout to read."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True, default=_jsonable) + "\n")
    tmp.replace(path)


def as_json_values(report: dict) -> dict:
    """The report exactly as a reader will load it back from its JSON file (numpy values
    as Python numbers, tuples as lists): what a signature must cover."""
    return json.loads(json.dumps(report, default=_jsonable))


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
