"""Every write command as a fault-injection scenario (tests/test_fault_syscalls.py runs a
sample of kill points in CI, bench/fault_sweep.py every one).

A scenario builds a template folder once (a store at template/g.h5 and the inputs the
command needs), then each kill point runs on a fresh copy: the command is SIGKILLed before
its N-th write/rename/fsync/unlink in the store (tests/faultshim.c), and then
  - the store opens and `verify` passes (checked inside `content`);
  - its content is the state before the command or after it: nothing half-applied
    (a backfill may also stop at one of its commits: a prefix of the finished run);
  - rerunning the command (when the kill left it undone) succeeds and gives the same
    content as an uninterrupted run.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

import syscall_faults
from cli_helpers import ok

DIM = 16


@dataclass
class Scenario:
    name: str
    build: Callable[[Path], None]                 # ROOT -> ROOT/template/g.h5 (+ inputs in ROOT)
    argv: Callable[[Path, Path], list[str]]       # (ROOT, store) -> the command
    needs_torch: bool = False
    steps: bool = False                           # commits several times (a resumable run)
    rerun_when_done: bool = False                 # idempotent: rerun even if it had finished
    notes: list[str] = field(default_factory=list)
    prefix: Callable[[dict, dict, dict], bool] | None = None  # a step's state (default: _prefix_of)


# ---- templates --------------------------------------------------------------------------------
def _vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def _embedding_store(root: Path, rows: int = 40, extra_model: bool = False, removals: int = 0,
                     enrols: int = 1) -> None:
    from gallery.store import ModelInfo, Store

    path = root / "template" / "g.h5"
    path.parent.mkdir(parents=True)
    with Store.create(path, ModelInfo(version="v1", dim=DIM, model_id="m1")) as st:
        per = rows // enrols
        for i in range(enrols):
            st.enroll(_vectors(per, i), [f"s{j}" for j in range(i * per, (i + 1) * per)])
        for i in range(removals):
            st.remove([f"s{i}"])
        if extra_model:
            st.add_model(ModelInfo(version="v2", dim=DIM, model_id="m2"))
    np.save(root / "new.npy", _vectors(30, 99))
    (root / "new.txt").write_text("".join(f"n{i}\n" for i in range(30)))


def _onnx_store(root: Path, upgraded: bool, adapter: bool = False) -> None:
    """v1 ONNX encoder, digit images enrolled, a passing check-compat report for v2. `adapter`
    (issue 20, `upgrade --adapter`): v1 16-d, v2 24-d and an adapter v1 -> v2 the report scored."""
    from tiny_models import make_onnx_adapter, make_onnx_encoder, write_digit_folder  # needs torch: only the ONNX scenarios

    make_onnx_encoder(root / "v1.onnx", seed=0, **({"dim": 16} if adapter else {}))
    make_onnx_encoder(root / "v2.onnx", seed=1, **({"dim": 24} if adapter else {}))
    scored = []
    if adapter:
        make_onnx_adapter(root / "a.onnx", root / "v1.onnx", root / "v2.onnx")
        scored = ["--adapter", root / "a.onnx"]
    write_digit_folder(root / "images", n_per_class=3, seed=0)
    write_digit_folder(root / "eval", n_per_class=3, seed=2)
    store = root / "template" / "g.h5"
    store.parent.mkdir(parents=True)
    ok("init", store, "--model", root / "v1.onnx")
    ok("enroll", store, "--images", root / "images")
    ok("check-compat", "--old", root / "v1.onnx", "--new", root / "v2.onnx", *scored, "--data", root / "eval",
       "--json", root / "report.json", "--max-new-drop", "1", "--impostor-pairs", "200")
    if upgraded:
        ok("upgrade", store, "--model", root / "v2.onnx", "--report", root / "report.json")


def _adapter_prefix(state: dict, before: dict, after: dict) -> bool:
    """An adapter run stopped at one of its commits: the new model registered with its
    thresholds (as after), not yet the query model (as before), its adapter overlay a prefix
    of the finished run's, the rows unchanged."""
    if any(state[k] != before[k] for k in ("ids", "deleted", "active", "aliases", "parents")):
        return False
    done, got = after["overlays"].get("v2", []), state["overlays"].get("v2", [])
    return state["models"] == after["models"] and got == done[: len(got)]


def _hand_thresholds(root: Path) -> None:
    """An upgraded ONNX store whose v2->v1 threshold was then set by hand (calibrate changes it)."""
    _onnx_store(root, upgraded=True)
    ok("threshold", "set", root / "template" / "g.h5", "v2", "v1", "0.5")


def _moved_model(root: Path) -> None:
    """An ONNX store whose v1 file is now also at ROOT/moved.onnx (for `model set-path`)."""
    _onnx_store(root, upgraded=False)
    shutil.copy(root / "v1.onnx", root / "moved.onnx")


def _legacy_store(root: Path) -> None:
    import gzip

    (root / "template").mkdir(parents=True)
    data = Path(__file__).parent / "data" / "store_v2_backfill.h5.gz"
    with gzip.open(data) as src:
        (root / "template" / "g.h5").write_bytes(src.read())


def _dlib_encodings(root: Path) -> None:
    """A face_recognition gallery as `import-dlib` reads it: 128-d encodings (.npy) and ids.csv."""
    (root / "template").mkdir(parents=True)
    rows = 50
    np.save(root / "enc.npy", np.random.default_rng(7).normal(scale=0.1, size=(rows, 128)))
    (root / "ids.csv").write_text("id,label\n" + "".join(f"f{i},person{i % 9}\n" for i in range(rows)))


def _gallery(*args: object) -> Callable[[Path, Path], list[str]]:
    """argv template: STORE and ROOT/... placeholders."""
    def argv(root: Path, store: Path) -> list[str]:
        return ["gallery", *[str(store) if a == "STORE" else str(root / a[5:]) if str(a).startswith("ROOT/")
                              else str(a) for a in args]]
    return argv


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("init", lambda r: (r / "template").mkdir(parents=True),
             _gallery("init", "STORE", "--dim", DIM, "--model-id", "m1")),
    # creates the store: absent before; the store, its rows and its import_dlib record after
    Scenario("import-dlib", _dlib_encodings, _gallery("import-dlib", "STORE", "ROOT/enc.npy", "--ids", "ROOT/ids.csv")),
    Scenario("enroll", _embedding_store, _gallery("enroll", "STORE", "--embeddings", "ROOT/new.npy",
                                                  "--ids", "ROOT/new.txt", "--batch-size", 7)),
    Scenario("remove", _embedding_store, _gallery("remove", "STORE", "s1", "s5", "s9")),
    Scenario("alias", _embedding_store, _gallery("alias", "set", "prod", "v1", "--store", "STORE"),
             rerun_when_done=True),
    Scenario("threshold", _embedding_store, _gallery("threshold", "set", "STORE", "v1", "v1", 0.42),
             rerun_when_done=True),
    Scenario("prune", lambda r: _embedding_store(r, extra_model=True), _gallery("prune", "STORE"),
             rerun_when_done=True),
    Scenario("compact", lambda r: _embedding_store(r, rows=48, removals=4, enrols=6), _gallery("compact", "STORE"),
             rerun_when_done=True),
    Scenario("reindex", _embedding_store, _gallery("reindex", "STORE"), rerun_when_done=True),
    Scenario("migrate", _legacy_store, _gallery("migrate", "STORE"), rerun_when_done=True),
    Scenario("upgrade", lambda r: _onnx_store(r, upgraded=False),
             _gallery("upgrade", "STORE", "--model", "ROOT/v2.onnx", "--report", "ROOT/report.json"),
             needs_torch=True),
    Scenario("upgrade-adapter", lambda r: _onnx_store(r, upgraded=False, adapter=True),
             _gallery("upgrade", "STORE", "--model", "ROOT/v2.onnx", "--adapter", "ROOT/a.onnx",
                      "--report", "ROOT/report.json", "--batch-size", 8),
             needs_torch=True, steps=True, prefix=_adapter_prefix),
    Scenario("rollback", lambda r: _onnx_store(r, upgraded=True), _gallery("rollback", "STORE"), needs_torch=True),
    Scenario("calibrate", _hand_thresholds,
             _gallery("threshold", "calibrate", "STORE", "--report", "ROOT/report.json"), needs_torch=True,
             rerun_when_done=True),
    Scenario("model-path", _moved_model, _gallery("model", "set-path", "STORE", "v1", "ROOT/moved.onnx"),
             needs_torch=True, rerun_when_done=True),
    Scenario("backfill", lambda r: _onnx_store(r, upgraded=True),
             _gallery("backfill", "STORE", "--images", "ROOT/images", "--batch-size", 4, "--publish-every", 8),
             needs_torch=True, steps=True, rerun_when_done=True),
]}


# ---- what a store holds ---------------------------------------------------------------------
def content(store: Path) -> dict | str:
    """The store's logical content (verify must pass), or "absent" / "single-file" / "half-migrated"."""
    from gallery.index import check_sidecar
    from gallery.store import Store, overlays
    from gallery.store.migrations import backup_path

    if not store.exists():
        return "half-migrated" if backup_path(store).exists() else "absent"
    if store.is_file():
        return "single-file"
    with Store.open(store) as st:
        report = check_sidecar(st.verify(), st)
        assert report["ok"], f"verify failed: {report['problems']}"
        emb = st.embeddings()
        return {
            "ids": st.columns()["id"].tolist(), "deleted": st.tombstones().tolist(),
            "embeddings": np.round(emb, 5).tobytes().hex() if len(emb) else "",
            "active": st.active_model, "aliases": st.aliases,
            "models": {m.version: (m.thresholds, m.path) for m in st.models()}, "parents": st.manifest["parents"],
            "overlays": {v: overlays.rows_of(st, v).tolist() for v in overlays.versions(st)},
            "plans": {v: overlays.plan(st, v)[1] if overlays.plan(st, v) else None for v in overlays.versions(st)},
            "events": [e["event"] for e in st.history()],
        }


def _prefix_of(state: dict, before: dict, after: dict) -> bool:
    """A backfill stopped at one of its commits: the same rows, the overlay a prefix of the
    finished run's (an unfinished plan recorded), nothing else changed."""
    same = {k: v for k, v in state.items() if k not in ("overlays", "plans", "embeddings", "events")}
    if same != {k: v for k, v in before.items() if k not in ("overlays", "plans", "embeddings", "events")}:
        return False
    done = after["overlays"].get("v2", [])
    got = state["overlays"].get("v2", [])
    return got == done[: len(got)] and state["events"] == before["events"]


# ---- running ----------------------------------------------------------------------------------
@dataclass
class Prepared:
    scenario: Scenario
    root: Path
    calls: list[syscall_faults.Call]
    before: dict | str
    after: dict | str


def prepare(scenario: Scenario, root: Path) -> Prepared:
    """Build the template, count the command's calls on a copy, record before/after content."""
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "template").exists():
        scenario.build(root)
    work = _fresh(root, "count")
    store = work / "g.h5"
    before = content(store)
    outcome, calls = syscall_faults.count(scenario.argv(root, store), work)
    assert outcome.returncode == 0, f"{scenario.name}: the uninterrupted run failed: {outcome.stderr[-800:]}"
    after = content(store)
    shutil.rmtree(work)
    return Prepared(scenario, root, calls, before, after)


def _fresh(root: Path, name: str) -> Path:
    work = root / name
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(root / "template", work, symlinks=True)
    return work


def kill_point(p: Prepared, at: int) -> str:
    """Kill at call `at`, check, rerun. Returns what the kill left: "before", "after" or
    "step" (a backfill commit). Raises AssertionError naming the call on any failure."""
    where = f"{p.scenario.name} killed at call {at}/{len(p.calls)} ({p.calls[at - 1].name} " \
            f"{Path(p.calls[at - 1].target).name})"
    work = _fresh(p.root, f"k{at}")
    store = work / "g.h5"
    argv = p.scenario.argv(p.root, store)
    outcome = syscall_faults.kill_at(argv, work, at)
    assert outcome.killed, f"{where}: not killed (rc {outcome.returncode}) {outcome.stderr[-500:]}"
    try:
        state = content(store)
    except AssertionError as exc:
        raise AssertionError(f"{where}: {exc}") from None
    if state == p.after:
        left = "after"
    elif state == p.before or (p.scenario.name == "migrate" and state == "half-migrated"):
        left = "before"
    elif p.scenario.steps and isinstance(state, dict) and (p.scenario.prefix or _prefix_of)(state, p.before, p.after):
        left = "step"
    else:
        raise AssertionError(f"{where}: half-applied state {json.dumps(_diff(state, p.before, p.after))[:600]}")
    if left != "after" or p.scenario.rerun_when_done:
        rerun = syscall_faults.run(argv, work)  # the shim counts but never kills here
        assert rerun.returncode == 0, f"{where}: rerun failed: {rerun.stderr[-500:]}"
        again = content(store)
        if left == "after" and isinstance(again, dict):  # a repeated command records itself again
            again = {**again, "events": again["events"][: len(p.after["events"])]}
        assert again == p.after, f"{where}: rerun ended elsewhere: {json.dumps(_diff(again, p.before, p.after))[:600]}"
    # a store is built under a temporary name (Store.create); the rerun removes a killed one's
    builds = sorted(b.name for b in work.glob(".*.creating"))
    assert not builds, f"{where}: build directories left behind: {builds}"
    shutil.rmtree(work)
    return left


def _diff(state, before, after) -> dict:
    if not isinstance(state, dict) or not isinstance(after, dict):
        return {"state": str(state)[:200], "before": str(before)[:100], "after": str(after)[:100]}
    return {k: {"got": str(state.get(k))[:120], "after": str(after.get(k))[:120]}
            for k in set(state) | set(after) if state.get(k) != after.get(k)}
