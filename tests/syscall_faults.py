"""System-call-level fault injection for write commands (tests and bench/fault_sweep.py).

A command runs as a real `gallery` process with tests/faultshim.c preloaded, which counts
every write, pwrite, ftruncate, fsync, rename, link, unlink and mkdir that touches the
store's folder (HDF5's own flushes included: it writes through libc's pwrite) and
SIGKILLs the process before the N-th one. `count()` runs a command once to list its calls;
`kill_at()` reruns it from the same starting state with the kill at call N. What a
scenario checks after each kill (the store opens, verify passes, nothing acknowledged is
lost, nothing half-applied is visible, the rerun succeeds) is the caller's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIM_SOURCE = Path(__file__).with_name("faultshim.c")
GALLERY = str(Path(sys.executable).with_name("gallery"))


def shim() -> Path | None:
    """The compiled shim (built once per source version), or None without a C compiler."""
    source = SHIM_SOURCE.read_bytes()
    out = Path(tempfile.gettempdir()) / f"gallery-faultshim-{hashlib.sha256(source).hexdigest()[:12]}.so"
    if out.is_file():
        return out
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    built = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(SHIM_SOURCE), "-ldl"],
                           capture_output=True, text=True)
    if built.returncode != 0:
        raise RuntimeError(f"cannot build {SHIM_SOURCE}: {built.stderr}")
    os.replace(tmp, out)
    return out


@dataclass
class Call:
    number: int
    name: str       # the libc function: pwrite64, fsync, rename, ...
    target: str     # the file it wrote, or the path it renamed/linked/removed to


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str

    @property
    def killed(self) -> bool:
        return self.returncode == -9


def run(command: list[str], fault_dir: Path, at: int | None = None, log: Path | None = None,
        env: dict | None = None, timeout: float = 300) -> Outcome:
    """Run `command` (argv; a leading "gallery" means the CLI) with the shim preloaded."""
    so = shim()
    if so is None:
        raise RuntimeError("no C compiler to build tests/faultshim.c")
    argv = [GALLERY, *command[1:]] if command[0] == "gallery" else command
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {}), "LD_PRELOAD": str(so),
                "GALLERY_FAULT_DIR": str(fault_dir)}
    full_env.pop("GALLERY_FAULT_AT", None)
    full_env.pop("GALLERY_FAULT_LOG", None)
    if at is not None:
        full_env["GALLERY_FAULT_AT"] = str(at)
    if log is not None:
        full_env["GALLERY_FAULT_LOG"] = str(log)
    proc = subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def count(command: list[str], fault_dir: Path, env: dict | None = None) -> tuple[Outcome, list[Call]]:
    """Run once without a kill; (its outcome, every counted call in order)."""
    fd, name = tempfile.mkstemp(suffix=".faultlog")
    os.close(fd)
    log = Path(name)
    try:
        outcome = run(command, fault_dir, log=log, env=env)
        calls = []
        for line in log.read_text().splitlines():
            number, call, *target = line.split(" ", 2)
            calls.append(Call(int(number), call, target[0] if target else ""))
        return outcome, calls
    finally:
        log.unlink(missing_ok=True)


def kill_at(command: list[str], fault_dir: Path, at: int, env: dict | None = None) -> Outcome:
    """Run with SIGKILL before counted call `at` (1-based)."""
    return run(command, fault_dir, at=at, env=env)


def sample(total: int, k: int) -> list[int]:
    """k kill points spread over 1..total: the first, the last, and evenly spaced ones between
    (deterministic, so a CI failure names a point that reproduces)."""
    if total <= k:
        return list(range(1, total + 1))
    import numpy as np

    points = np.unique(np.linspace(1, total, k).round().astype(int))
    return [int(p) for p in points]
