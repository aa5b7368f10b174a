"""Reports bound to what they judged (issue 15): forged verdicts and thresholds are refused,
signatures are checked, history records which checks ran. Real check-compat reports from
real (tiny) ONNX encoders on real digit images; every refusal leaves the store byte-identical."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli_helpers import ok, run, store_sha256
from gallery.compat import signing
from gallery.compat.verdicts import check_report
from gallery.errors import BadInput
from gallery.model_identity import model_sha256
from gallery.store import Store

pytest.importorskip("torch")
from tiny_models import make_onnx_encoder, write_digit_folder  # noqa: E402

KEY = b"0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A v1 gallery, a failing report (criterion gate) and a passing signed report for v1 -> v2."""
    root = tmp_path_factory.mktemp("trust_reports")
    for seed, name in enumerate(("v1", "v2")):
        make_onnx_encoder(root / f"{name}.onnx", seed=seed)
    write_digit_folder(root / "gallery", n_per_class=2, seed=0)
    write_digit_folder(root / "eval", n_per_class=5, seed=2)
    (root / "key").write_bytes(KEY + b"\n")
    store = root / "base.h5"
    ok("init", store, "--model", root / "v1.onnx")
    ok("enroll", store, "--images", root / "gallery")
    common = ("check-compat", "--old", root / "v1.onnx", "--new", root / "v2.onnx", "--data", root / "eval",
              "--impostor-pairs", "500")
    failing = run(*common, "--json", root / "fail.json", "--require-criterion")
    assert failing.exit_code == 1, failing.stderr  # independent random nets: new->old < old/old
    ok(*common, "--json", root / "signed.json", "--max-new-drop", "1", "--sign-key", root / "key")
    return root, store


@pytest.fixture
def work(base, tmp_path):
    root, store = base
    shutil.copytree(store, tmp_path / "g.h5")
    return root, tmp_path / "g.h5"


def _edit(root: Path, name: str, out: Path, change) -> Path:
    report = json.loads((root / name).read_text())
    change(report)
    out.write_text(json.dumps(report))
    return out


def _refused(store: Path, args: list, code: int, needle: str) -> None:
    before = store_sha256(store)
    result = run("upgrade", store, *args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, result.stdout + result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert store_sha256(store) == before


def test_report_records_model_hashes_data_fingerprint_and_tool_version(base):
    root, _ = base
    report = json.loads((root / "signed.json").read_text())
    assert report["models"]["old"]["sha256"] == model_sha256(root / "v1.onnx")
    assert report["models"]["new"]["sha256"] == model_sha256(root / "v2.onnx")
    assert len(report["data"]["fingerprint"]) == 64 and report["tool"]["version"]
    assert report["signature"]["algorithm"] == "hmac-sha256"
    assert check_report(report)  # a real report agrees with itself


def _flip_criterion(r):
    r["criterion"]["passed"] = True


def _pass_everything(r):
    r["criterion"]["passed"], r["passed"], r["failed_gates"] = True, True, []
    r["gates"][0]["passed"] = True


def _drop_the_gate(r):  # remove the failed gate from config and gates: the criterion still decides
    r["config"]["require_criterion"], r["gates"], r["failed_gates"], r["passed"] = False, [], [], True


@pytest.mark.parametrize("change, needle", [
    (_flip_criterion, "criterion.passed says True"),
    (_pass_everything, "criterion.passed says True"),
    (lambda r: r["headline"]["values"].update({"new->old": 1.0}), "headline.values['new->old']"),
])
def test_forged_failing_report_is_refused_even_with_force(work, tmp_path, change, needle):
    """Issue 15's case: `criterion.passed: true` in a failing report admitted the model."""
    root, store = work
    forged = _edit(root, "fail.json", tmp_path / "forged.json", change)
    _refused(store, ["--model", root / "v2.onnx", "--report", forged], 2, needle)
    _refused(store, ["--model", root / "v2.onnx", "--report", forged, "--force"], 2, needle)


def test_removing_the_gate_leaves_the_criterion_in_charge(work, tmp_path):
    root, store = work
    forged = _edit(root, "fail.json", tmp_path / "nogate.json", _drop_the_gate)
    _refused(store, ["--model", root / "v2.onnx", "--report", forged], 1, "criterion fails")


@pytest.mark.parametrize("value, needle", [(-1.5, "not a cosine in [-1, 1]"), (2, "not a cosine"),
                                           ("abc", "must be a finite number"), (float("nan"), "finite number"),
                                           (float("inf"), "finite number")])
def test_thresholds_must_be_finite_cosines(work, tmp_path, value, needle):
    root, store = work

    def change(r):
        r["thresholds"][0]["threshold"] = value
        r.pop("signature")
    forged = _edit(root, "signed.json", tmp_path / "t.json", change)
    _refused(store, ["--model", root / "v2.onnx", "--report", forged], 2, needle)


@pytest.mark.parametrize("change, needle", [
    (lambda r: r.update(thresholds=None), "'thresholds' must be a list"),
    (lambda r: r.update(gates=[None]), "gates must be a list of objects"),
    (lambda r: r.update(models=[]), "'models' must be an object"),
    (lambda r: r["comparisons"].pop("new->old"), "comparisons lacks new->old"),
    (lambda r: r["config"].update(max_new_drop="x"), "config.max_new_drop must be a finite number"),
    (lambda r: r["thresholds"][0].update(query_sha256="0" * 64), "query_sha256 is not models"),
])
def test_malformed_reports_are_one_line_refusals(work, tmp_path, change, needle):
    root, store = work

    def edit(r):
        change(r)
        r.pop("signature")
    forged = _edit(root, "signed.json", tmp_path / "m.json", edit)
    _refused(store, ["--model", root / "v2.onnx", "--report", forged], 2, needle)


def test_signed_report_upgrades_and_history_records_the_checks(work):
    root, store = work
    ok("upgrade", store, "--model", root / "v2.onnx", "--report", root / "signed.json",
       "--require-signed", "--sign-key", root / "key")
    event = [e for e in ok("history", store, "--json") if e["event"] == "upgrade"][-1]
    checks = event["report"]["checks"]
    assert checks["signature"] == "verified"
    assert checks["ran"] == ["schema", "headline-values", "criterion", "gain-and-drop", "gates", "thresholds",
                             "model-sha256", "signature"]
    with Store.open(store) as st:
        assert st.active_model == "v2" and st.model("v2").compat_report["checks"]["signature"] == "verified"


def test_unsigned_upgrade_records_that_no_signature_was_checked(work, tmp_path):
    root, store = work
    unsigned = _edit(root, "signed.json", tmp_path / "u.json", lambda r: r.pop("signature"))
    ok("upgrade", store, "--model", root / "v2.onnx", "--report", unsigned)
    event = [e for e in ok("history", store, "--json") if e["event"] == "upgrade"][-1]
    assert event["report"]["checks"]["signature"] == "unsigned" and "signature" not in event["report"]["checks"]["ran"]


def test_require_signed_refuses_unsigned_altered_and_other_key(work, tmp_path):
    root, store = work
    key = ["--require-signed", "--sign-key", root / "key"]
    unsigned = _edit(root, "signed.json", tmp_path / "u.json", lambda r: r.pop("signature"))
    _refused(store, ["--model", root / "v2.onnx", "--report", unsigned, *key], 2, "not signed")
    # an edit that keeps every verdict consistent is still caught by the HMAC
    altered = _edit(root, "signed.json", tmp_path / "a.json", lambda r: r["data"].update(path="/elsewhere"))
    _refused(store, ["--model", root / "v2.onnx", "--report", altered, *key], 2, "altered after signing")
    (tmp_path / "other").write_bytes(b"another key of at least 16 bytes")
    _refused(store, ["--model", root / "v2.onnx", "--report", root / "signed.json", "--require-signed",
                     "--sign-key", tmp_path / "other"], 2, "signed with another key")
    _refused(store, ["--model", root / "v2.onnx", "--report", root / "signed.json", "--require-signed"], 2,
             "needs --sign-key")
    (tmp_path / "short").write_bytes(b"short")
    _refused(store, ["--model", root / "v2.onnx", "--report", root / "signed.json", "--sign-key",
                     tmp_path / "short"], 2, "at least 16")


def test_signature_against_an_independent_hmac(base):
    """The signature is HMAC-SHA256(key, canonical JSON without `signature`), computed here by hand."""
    import hashlib
    import hmac

    root, _ = base
    report = json.loads((root / "signed.json").read_text())
    body = {k: v for k, v in report.items() if k != "signature"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert report["signature"]["hmac"] == hmac.new(KEY, text, hashlib.sha256).hexdigest()
    assert signing.verify(report, KEY, required=True) == "verified"
    with pytest.raises(BadInput, match="altered"):
        signing.verify({**report, "passed": not report["passed"]}, KEY, required=True)
