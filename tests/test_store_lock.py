"""One writer by construction: the lock is an flock on the store directory's inode,
whatever name reaches it.

Two writers through a symlink, a bind mount (the directory's "hard link": a directory
cannot have two hard links), a renamed path, or after the pid file LOCK was deleted: the
second gets the one-line "locked" error (exit 3) and every row the first acknowledged is
there afterwards (the first keeps writing through its open handle on the directory, even
renamed). Also checks the syscall fault shim itself (tests/faultshim.c) counts and kills
where it says it does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import syscall_faults
from gallery.errors import StoreLocked
from gallery.index import check_sidecar
from gallery.store import ModelInfo, Store
from gallery.store.locking import lock_path

DIM = 8
ROOT = Path(__file__).resolve().parents[1]
GALLERY = str(Path(sys.executable).with_name("gallery"))

# A writer in its own process: holds the store open for writing between two enrols, so the
# second writer runs while the first is mid-session with acknowledged rows.
HOLDER = r"""
import sys
import numpy as np
from gallery.store import Store
path = sys.argv[1]
rng = np.random.default_rng(1)
with Store.open(path, "a") as st:
    st.enroll(rng.normal(size=(25, 8)), [f"a{i}" for i in range(25)])
    print("holding", flush=True)
    sys.stdin.readline()
    st.enroll(rng.normal(size=(25, 8)), [f"b{i}" for i in range(25)])
print("done", flush=True)
"""


def _store(path: Path) -> Path:
    with Store.create(path, ModelInfo(version="v1", dim=DIM, model_id="synthetic")) as st:
        st.enroll(np.random.default_rng(0).normal(size=(10, DIM)), [f"s{i}" for i in range(10)])
    return path


def _inputs(tmp: Path) -> tuple[Path, Path]:
    np.save(tmp / "e.npy", np.random.default_rng(2).normal(size=(5, DIM)).astype(np.float32))
    (tmp / "ids.txt").write_text("".join(f"x{i}\n" for i in range(5)))
    return tmp / "e.npy", tmp / "ids.txt"


def _namespace_ok() -> bool:
    return shutil.which("unshare") is not None and \
        subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


def _second_writer(target: Path, emb: Path, ids: Path, bind_from: Path | None = None):
    """`gallery enroll` on `target`; with bind_from, inside a private mount namespace where
    `target` is a bind mount of the store directory (same inode, another path)."""
    argv = [GALLERY, "enroll", str(target), "--embeddings", str(emb), "--ids", str(ids)]
    if bind_from is not None:
        target.mkdir()
        cmd = " ".join(f"'{a}'" for a in argv)
        argv = ["unshare", "-rm", "bash", "-c", f"mount --bind '{bind_from}' '{target}' && exec {cmd}"]
    return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("how", ["symlink", "bind-mount", "info-file-deleted", "renamed"])
def test_second_writer_is_refused_whatever_the_path(tmp_path, how):
    if how == "bind-mount" and not _namespace_ok():
        pytest.skip("unshare -rm (user+mount namespace) not permitted")
    store = _store(tmp_path / "g.h5")
    emb, ids = _inputs(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "holding"
        bind_from = None
        if how == "info-file-deleted":
            lock_path(store).unlink()
            target = store
        elif how == "renamed":
            target = tmp_path / "moved.h5"
            os.rename(store, target)
        elif how == "symlink":
            target = tmp_path / "link.h5"
            target.symlink_to(store)
        else:
            target, bind_from = tmp_path / "mounted.h5", store
        second = _second_writer(target, emb, ids, bind_from)
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 3, second.stderr
        assert len(lines) == 1 and lines[0].startswith("error: ") and "locked by another writer" in lines[0]
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "done"
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    with Store.open(bind_from or target) as st:
        live = set(st.columns()["id"].tolist())
        assert check_sidecar(st.verify(), st)["ok"]
    # Every row the holder acknowledged is there, none of the refused writer's.
    assert live == {f"s{i}" for i in range(10)} | {f"a{i}" for i in range(25)} | {f"b{i}" for i in range(25)}


def test_lock_follows_the_inode_in_process(tmp_path):
    store = _store(tmp_path / "g.h5")
    link = tmp_path / "link.h5"
    link.symlink_to(store)
    with pytest.raises(OSError):
        os.link(store, tmp_path / "hard.h5")  # a directory has no second hard link
    with Store.open(store, "a"):
        with pytest.raises(StoreLocked, match="locked by another writer"):
            Store.open(link, "a")
    with Store.open(link, "a"):  # released on close: any name can take it next
        with pytest.raises(StoreLocked):
            Store.open(store, "a")


@pytest.mark.skipif(syscall_faults.shim() is None, reason="no C compiler for tests/faultshim.c")
def test_fault_shim_counts_and_kills_where_it_says(tmp_path):
    """The harness itself: the same command makes the same counted calls every run, a kill
    at call N stops it there (the calls it reached are exactly the count run's first N; the
    N-th is logged, then killed before it runs), and a kill
    point past the total changes nothing."""
    template = _store(tmp_path / "template")
    store = tmp_path / "s" / "g.h5"
    emb, ids = _inputs(tmp_path)
    command = ["gallery", "enroll", str(store), "--embeddings", str(emb), "--ids", str(ids)]

    def fresh() -> None:
        shutil.rmtree(tmp_path / "s", ignore_errors=True)
        shutil.copytree(template, store)

    fresh()
    first, calls = syscall_faults.count(command, tmp_path / "s")
    assert first.returncode == 0 and calls, first.stderr
    # Every call is in the store: by its path, or through the Store's handle on the directory.
    assert all(str(tmp_path / "s") in call.target or call.target.startswith("/proc/self/fd/") for call in calls)
    assert {"pwrite64"} & {call.name for call in calls}  # HDF5's own writes are seen
    fresh()
    _, again = syscall_faults.count(command, tmp_path / "s")
    assert [(c.name, Path(c.target).name) for c in again] == [(c.name, Path(c.target).name) for c in calls]
    at = len(calls) // 2
    fresh()
    log = tmp_path / "kill.log"
    killed = syscall_faults.run(command, tmp_path / "s", at=at, log=log)
    assert killed.killed and "enrolled" not in killed.stdout
    # Logged before the kill: the calls it reached are exactly the first `at` of the count run.
    reached = [line.split(" ", 2)[1:] for line in log.read_text().splitlines()]
    assert reached == [[c.name, c.target] for c in calls[:at]]
    fresh()
    past = syscall_faults.kill_at(command, tmp_path / "s", len(calls) + 1)
    assert past.returncode == 0 and "enrolled 5 items" in past.stdout
    assert syscall_faults.sample(100, 5) == [1, 26, 50, 75, 100]
    assert syscall_faults.sample(3, 5) == [1, 2, 3]
