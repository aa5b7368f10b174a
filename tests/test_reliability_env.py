"""Environment failures (RELIABILITY.md): read-only file system, disk full, file-size
limit, stale or corrupt index, a concurrent writer, a lock file left by a dead writer.

Read-only and disk-full cases run the real `gallery` CLI inside a private mount
namespace (`unshare -rm`: a read-only bind mount, a 8 MiB tmpfs), so the kernel itself
returns EROFS / ENOSPC; they are skipped where unshare is not permitted.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import fault_scenarios
from cli.main import app
from cli_helpers import store_sha256
from gallery.index import sidecar_path
from gallery.store import ModelInfo, Store

DIM = 16
GALLERY = str(Path(sys.executable).with_name("gallery"))
ROOT = str(Path(__file__).resolve().parents[1])


def _vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def _store(path: Path, rows: int = 20) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with Store.create(path, ModelInfo(version="v1", dim=DIM, model_id="synthetic")) as st:
        if rows:
            st.enroll(_vectors(rows, 0), [f"s{i}" for i in range(rows)])
    return path


def _inputs(tmp: Path, n: int, prefix: str, seed: int) -> tuple[Path, Path]:
    np.save(tmp / f"{prefix}.npy", _vectors(n, seed))
    (tmp / f"{prefix}.txt").write_text("".join(f"{prefix}{i}\n" for i in range(n)))
    return tmp / f"{prefix}.npy", tmp / f"{prefix}.txt"


def _namespace_ok() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


needs_ns = pytest.mark.skipif(not _namespace_ok(), reason="unshare -rm (user+mount namespace) not permitted")


def _in_namespace(mount: str, *command: str | Path) -> subprocess.CompletedProcess:
    """Run one gallery command after `mount` (shell) in a private mount namespace."""
    cmd = " ".join(f"'{c}'" for c in (GALLERY, *command))
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run(["unshare", "-rm", "bash", "-c", f"{mount} && exec {cmd}"], capture_output=True,
                          text=True, env=env, timeout=120)


def _one_error_line(proc, code: int, pattern: str) -> None:
    lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("WARNING")]
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(pattern, lines[0]), proc.stderr


@needs_ns
@pytest.mark.parametrize("command,code,pattern", [
    ("enroll", 2, r"cannot write store .*Read-only file system"),
    ("remove", 2, r"cannot write store .*Read-only file system"),
    ("init", 2, r"cannot write store .*Read-only file system"),
], ids=["readonly-fs-enroll", "readonly-fs-remove", "readonly-fs-init"])
def test_readonly_filesystem_writers_refused(tmp_path, command, code, pattern):
    ro = tmp_path / "ro"
    store = _store(ro / "g.h5")
    emb, ids = _inputs(tmp_path, 3, "n", 1)
    before = store_sha256(store)
    args = {"enroll": ("enroll", store, "--embeddings", emb, "--ids", ids), "remove": ("remove", store, "s1"),
            "init": ("init", ro / "new.h5", "--dim", "8", "--model-id", "x")}[command]
    proc = _in_namespace(f"mount --bind '{ro}' '{ro}' && mount -o remount,ro,bind '{ro}'", *args)
    _one_error_line(proc, code, pattern)
    assert store_sha256(store) == before and not (ro / "new.h5").exists()


@needs_ns
def test_readonly_filesystem_search_still_answers(tmp_path):
    """`readonly-fs-search`: readers need no write access; the index cache is skipped with a warning."""
    ro = tmp_path / "ro"
    store = _store(ro / "g.h5")
    np.save(tmp_path / "q.npy", _vectors(20, 0)[:3])
    proc = _in_namespace(f"mount --bind '{ro}' '{ro}' && mount -o remount,ro,bind '{ro}'",
                         "search", store, "--embeddings", tmp_path / "q.npy", "-k", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [r["hits"][0]["item_id"] for r in json.loads(proc.stdout)] == ["s0", "s1", "s2"]
    assert "could not write index sidecar" in proc.stderr and "Read-only file system" in proc.stderr
    assert not list(ro.rglob("*.index*")) and not list(ro.rglob(".*tmp"))


TMPFS = "mount -t tmpfs -o size=8m tmpfs '{d}'"
# One line that changes if any file of the store (but the pid note LOCK) changes.
STATE = "(cd '{d}/g.h5' && ls -a && sha256sum MANIFEST seg-* del-* 2>/dev/null) | sha256sum"


@needs_ns
def test_disk_full_refused_before_writing(tmp_path):
    """`disk-full`: the enrol is refused up front (exit 1); the store is untouched and still usable."""
    d = tmp_path / "small"
    d.mkdir()
    emb, ids = _inputs(tmp_path, 20_000, "big", 1)   # ~9 MiB of rows for an 8 MiB disk
    small, small_ids = _inputs(tmp_path, 5, "ok", 2)
    script = (f"{TMPFS.format(d=d)} && '{GALLERY}' init '{d}/g.h5' --dim {DIM} --model-id m >/dev/null"
              f" && '{GALLERY}' enroll '{d}/g.h5' --embeddings '{small}' --ids '{small_ids}' >/dev/null"
              f" && {STATE.format(d=d)} && ('{GALLERY}' enroll '{d}/g.h5' --embeddings '{emb}' --ids '{ids}';"
              f" echo rc=$?) && {STATE.format(d=d)} && '{GALLERY}' verify '{d}/g.h5' --json")
    proc = subprocess.run(["unshare", "-rm", "bash", "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=180)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert "rc=1" in out and out[0].split()[0] == out[2].split()[0], proc.stdout  # byte-identical
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert len(errors) == 1 and re.search(rf"not enough free disk space for {d}/g.h5: .* nothing was written", errors[0])
    report = json.loads("\n".join(out[3:]))
    assert report["ok"] and report["rows"] == 5 and report["warnings"] == []


@needs_ns
def test_disk_filled_by_another_process_mid_enrol_keeps_the_previous_state(tmp_path):
    """`disk-full-race`: the disk fills *during* an enrol (after the free-space check): the
    segment's write or fsync fails, its file is removed, the manifest is never replaced; the
    store is exactly as before (verify ok, the 0 rows committed before), and enrols work again."""
    d = tmp_path / "small"
    d.mkdir()
    child = (f"import numpy as np; from gallery.store import Store, items; items._check_space = lambda *a: None; "
             f"st = Store.open('{d}/g.h5', 'a'); "
             f"st.enroll(np.random.default_rng(0).normal(size=(20000, {DIM})).astype('float32'), "
             f"[f'z{{i}}' for i in range(20000)], batch_size=4096)")
    small, small_ids = _inputs(tmp_path, 5, "ok", 2)
    script = (f"{TMPFS.format(d=d)} && '{GALLERY}' init '{d}/g.h5' --dim {DIM} --model-id m >/dev/null"
              f" && {STATE.format(d=d)} && ('{sys.executable}' -c \"{child}\"; echo rc=$?)"
              f" && {STATE.format(d=d)} && '{GALLERY}' verify '{d}/g.h5' --json"
              f" && '{GALLERY}' enroll '{d}/g.h5' --embeddings '{small}' --ids '{small_ids}' --json")
    proc = subprocess.run(["unshare", "-rm", "bash", "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout.strip().splitlines()
    assert out[1] == "rc=1" and out[0] == out[2], proc.stdout + proc.stderr  # refused; every file as before
    assert "No space left on device" in proc.stderr and "the previous state is kept" in proc.stderr
    rest = "\n".join(out[3:])
    report = json.loads(rest[: rest.index("\n}") + 2])
    assert report["ok"] and report["rows"] == 0 and report["problems"] == []
    assert '"rows": 5' in rest  # space returned with the removed segment: enrols work again


# Disk full for the other writers that add files or records: backfill (overlay segments and
# a plan), upgrade (a manifest with the new model), compact (merged segments). Each runs on
# a copy of its fault-sweep template (tests/fault_scenarios.py) on a 16 MiB tmpfs filled to
# 32 KiB ("refused": the command's own free-space check says no before writing) or to 0
# bytes with that check skipped ("race": as if another process filled the disk after it
# passed, so the first write itself meets ENOSPC). Either way: exit 1, one line, every file of the store
# byte-identical, `verify` ok; once the filler is removed the same command succeeds and
# the store ends equal to an uninterrupted run.
SKIP_CHECK = ("import sys, gallery.store.manifest as mf; mf.check_space = lambda *a, **k: None; "
              "from cli.main import main; sys.argv = ['gallery', *sys.argv[1:]]; main()")
FILL = "head -c $(( $(df -B1 --output=avail '{d}' | tail -1) - {leave} )) /dev/zero > '{d}/fill' 2>/dev/null; true"
EVERY_FILE = "(cd '{d}/g.h5' && ls -a && find . -type f ! -name LOCK | sort | xargs sha256sum) | sha256sum"


@pytest.fixture(scope="module")
def disk_full_templates(tmp_path_factory):
    """name -> (root, state before, state after an uninterrupted run), built once."""
    built: dict[str, tuple[Path, dict, dict]] = {}

    def get(name: str) -> tuple[Path, dict, dict]:
        if name not in built:
            scenario = fault_scenarios.SCENARIOS[name]
            if scenario.needs_torch and importlib.util.find_spec("torch") is None:
                pytest.skip("needs torch to make the ONNX encoders")
            root = tmp_path_factory.mktemp(f"full-{name}")
            scenario.build(root)
            work = root / "expected"
            shutil.copytree(root / "template", work)
            before = fault_scenarios.content(work / "g.h5")
            argv = scenario.argv(root, work / "g.h5")
            proc = subprocess.run([GALLERY, *argv[1:]], capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": ROOT}, timeout=180)
            assert proc.returncode == 0, proc.stderr
            built[name] = (root, before, fault_scenarios.content(work / "g.h5"))
        return built[name]

    return get


def _full_disk_run(root: Path, name: str, leave: int, skip_check: bool, out: Path) -> subprocess.CompletedProcess:
    """The command on a copy of ROOT/template on a 16 MiB tmpfs with `leave` bytes free; then
    the filler removed and the command run again. The store is copied to OUT/failed after
    the first run and to OUT/rerun after the second."""
    d = out / "mnt"
    d.mkdir(parents=True)
    argv = fault_scenarios.SCENARIOS[name].argv(root, d / "g.h5")[1:]
    first = shlex.join([sys.executable, "-c", SKIP_CHECK, *argv] if skip_check else [GALLERY, *argv])
    script = (f"mount -t tmpfs -o size=16m tmpfs '{d}' && cp -a '{root}/template/g.h5' '{d}/g.h5'"
              f" && {FILL.format(d=d, leave=leave)} && {EVERY_FILE.format(d=d)} && ({first}; echo rc=$?)"
              f" && {EVERY_FILE.format(d=d)} && cp -a '{d}/g.h5' '{out}/failed' && rm '{d}/fill'"
              f" && {shlex.join([GALLERY, *argv])} >/dev/null && cp -a '{d}/g.h5' '{out}/rerun'")
    return subprocess.run(["unshare", "-rm", "bash", "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)


@needs_ns
@pytest.mark.parametrize("skip_check", [False, True], ids=["refused", "race"])
@pytest.mark.parametrize("name", ["backfill", "upgrade", "compact"])
def test_disk_full_writers_keep_the_previous_state(name, skip_check, disk_full_templates, tmp_path):
    """`disk-full-backfill`, `-upgrade`, `-compact` (and their `-race`)."""
    root, before, after = disk_full_templates(name)
    proc = _full_disk_run(root, name, 0 if skip_check else 32 << 10, skip_check, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout.splitlines()
    assert out[1] == "rc=1" and out[0] == out[2], proc.stdout + proc.stderr  # refused; every file as before
    errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith("WARNING")]
    pattern = r"No space left on device; .*the previous state is kept" if skip_check else \
        rf"not enough free disk space for {re.escape(str(tmp_path))}/mnt/g.h5: .* nothing was written"
    assert len(errors) == 1 and re.match(r"error: ", errors[0]) and re.search(pattern, errors[0]), proc.stderr
    assert fault_scenarios.content(tmp_path / "failed") == before  # verify passes (checked inside)
    assert fault_scenarios.content(tmp_path / "rerun") == after    # space back: the command works


@needs_ns
def test_disk_filled_mid_backfill_resumes_from_its_last_commit(disk_full_templates, tmp_path):
    """`disk-full-backfill-mid-run`: 32 KiB free and the free-space check skipped: the run's
    plan and first batches commit, then a write meets ENOSPC. The store stays at the run's
    last commit (a prefix of the finished overlay; no half-written file left), `verify`
    passes, and once space returns the same command resumes and ends equal to an
    uninterrupted run."""
    root, before, after = disk_full_templates("backfill")
    proc = _full_disk_run(root, "backfill", 32 << 10, True, tmp_path)
    assert proc.returncode == 0 and "rc=1" in proc.stdout, proc.stdout + proc.stderr
    assert re.search(r"error: cannot write store .*No space left on device; nothing was committed", proc.stderr)
    failed = fault_scenarios.content(tmp_path / "failed")
    assert failed != before and fault_scenarios._prefix_of(failed, before, after), failed  # its commits so far
    assert failed["plans"]["v2"] is not None and len(failed["overlays"]["v2"]) < len(after["overlays"]["v2"])
    with Store.open(tmp_path / "failed") as st:  # no half-written file left behind
        assert sorted(p.name for p in st.path.iterdir()) == sorted(["MANIFEST", "LOCK", *st.data_files()])
    assert fault_scenarios.content(tmp_path / "rerun") == after


def test_file_size_limit_keeps_the_previous_state(tmp_path):
    """`file-size-limit`: a write past `ulimit -f` (a quota) fails the new segment (EFBIG); it
    is removed and the manifest never replaced: the store is as before and still writable."""
    store = _store(tmp_path / "g.h5", rows=5)
    emb, ids = _inputs(tmp_path, 20_000, "big", 1)
    limit = 400_000  # per file: the 20,000-row segment (~4 MB) cannot be written
    before = store_sha256(store)

    def cap() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([GALLERY, "enroll", str(store), "--embeddings", str(emb), "--ids", str(ids)],
                          preexec_fn=cap, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT},
                          timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "the previous state is kept" in lines[0], proc.stderr
    assert store_sha256(store) == before
    report = json.loads(CliRunner().invoke(app, ["verify", str(store), "--json"]).stdout)
    assert report["ok"] and report["rows"] == 5
    small, small_ids = _inputs(tmp_path, 3, "after", 2)
    assert CliRunner().invoke(app, ["enroll", str(store), "--embeddings", str(small), "--ids",
                                    str(small_ids)]).exit_code == 0


def test_stale_and_corrupt_index_are_rebuilt(tmp_path):
    """`stale-index` and `corrupt-index`: warnings, never wrong answers."""
    store = _store(tmp_path / "g.h5")
    np.save(tmp_path / "q.npy", _vectors(1, 42))
    run = lambda *a: CliRunner().invoke(app, [str(x) for x in a])  # noqa: E731
    assert run("search", store, "--embeddings", tmp_path / "q.npy", "--json").exit_code == 0  # builds the sidecar
    emb, ids = _inputs(tmp_path, 1, "new", 42)  # the query's own vector
    with Store.open(store) as st:
        sidecar = store / sidecar_path(st).name
    meta = store / "sidecar.index.json"
    old = {p: p.read_bytes() for p in (sidecar, meta)}
    assert run("enroll", store, "--embeddings", emb, "--ids", ids).exit_code == 0  # catches the sidecar up
    for path, data in old.items():  # an index from before the enrol (restored from a backup, say)
        path.write_bytes(data)
    report = json.loads(run("verify", store, "--json").stdout)
    assert report["ok"] and report["index"] == "stale" and "index is stale" in report["warnings"][0]
    hits = json.loads(run("search", store, "--embeddings", tmp_path / "q.npy", "--json").stdout)
    assert hits[0]["hits"][0]["item_id"] == "new0"
    assert json.loads(run("verify", store, "--json").stdout)["index"] == "fresh"
    # Garbage in the faiss file: the search rebuilds instead of failing or answering wrong.
    sidecar = store / json.loads(meta.read_text())["file"]  # the faiss file the record names now
    sidecar.write_bytes(b"garbage" * 10)
    damaged = json.loads(run("verify", store, "--json").stdout)
    assert not damaged["ok"] and damaged["index"] == "corrupt" and f"{sidecar.name} does not match" in \
        damaged["problems"][0]
    hits = run("search", store, "--embeddings", tmp_path / "q.npy", "--json")
    assert hits.exit_code == 0 and json.loads(hits.stdout)[0]["hits"][0]["item_id"] == "new0"
    assert json.loads(run("verify", store, "--json").stdout)["ok"]  # rebuilt
    meta.write_text("{not json")
    report = json.loads(run("verify", store, "--json").stdout)
    assert not report["ok"] and report["index"] == "corrupt" and "JSONDecodeError" in report["problems"][0]


def test_concurrent_writer_and_dead_writers_lock(tmp_path):
    """`concurrent-writer` (exit 3) and `stale-lock-file` (a dead writer's lock is no obstacle)."""
    store = _store(tmp_path / "g.h5")
    emb, ids = _inputs(tmp_path, 2, "n", 3)
    with Store.open(store, "a"):
        result = CliRunner().invoke(app, ["enroll", str(store), "--embeddings", str(emb), "--ids", str(ids)])
        assert result.exit_code == 3 and re.search(rf"locked by another writer \(pid {os.getpid()}\)", result.stderr)
    (store / "LOCK").write_text("999999\n")  # what a SIGKILLed writer leaves
    assert CliRunner().invoke(app, ["enroll", str(store), "--embeddings", str(emb), "--ids", str(ids)]).exit_code == 0
