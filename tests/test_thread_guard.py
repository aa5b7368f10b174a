"""The torch thread-count guard (thread_guard.py, loaded by conftest.py) and trainer.threads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from trainer.threads import cpu_threads  # noqa: E402  (needs torch)

TESTS = Path(__file__).parent
# A pytest of its own, started from 3 threads (a count no default gives on the test machine), with
# only the guard plugin loaded: the modules below are written for it.
RUN = ("import sys, pytest, torch; torch.set_num_threads(3); "
       "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-p', 'thread_guard', *sys.argv[1:]]))")


def _pytest(tmp_path: Path, modules: dict[str, str]) -> subprocess.CompletedProcess:
    for name, text in modules.items():
        (tmp_path / name).write_text("import pytest, torch\n" + text)
    return subprocess.run([sys.executable, "-c", RUN, *sorted(modules)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(TESTS), "PATH": "/usr/bin:/bin"})


def test_cpu_threads_sets_the_count_and_restores_it_even_on_error():
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with pytest.raises(RuntimeError):
        with cpu_threads(target):
            assert torch.get_num_threads() == target
            raise RuntimeError("a failed run")
    assert torch.get_num_threads() == before
    with cpu_threads(None):  # None: torch's setting stays as it is
        assert torch.get_num_threads() == before


def test_guard_fails_a_module_that_sets_threads_at_import_or_leaves_them_set(tmp_path):
    result = _pytest(tmp_path, {
        "test_a_import.py": "torch.set_num_threads(1)\ndef test_x():\n    pass\n",
        "test_b_leak.py": "def test_y():\n    torch.set_num_threads(2)\n",
    })
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "test_a_import.py: importing it changed torch's thread count from 3 to 1" in out, out
    # a collection error stops the run: the leaking module is shown on its own below
    result = _pytest(tmp_path, {"test_b_leak.py": "def test_y():\n    torch.set_num_threads(2)\n"})
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "test_b_leak.py left torch's thread count at 2 (it was 3)" in out, out
    assert "1 passed, 1 error" in out, out


def test_one_torch_thread_holds_for_its_module_only(tmp_path):
    result = _pytest(tmp_path, {
        "test_a_one.py": ("pytestmark = pytest.mark.usefixtures('one_torch_thread')\n"
                          "@pytest.fixture(scope='module')\ndef trained():\n    return torch.get_num_threads()\n"
                          "def test_one(trained):\n    assert trained == 1 and torch.get_num_threads() == 1\n"
                          "def test_still_one():\n    assert torch.get_num_threads() == 1\n"),
        "test_b_after.py": "def test_back():\n    assert torch.get_num_threads() == 3\n",
    })
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout, result.stdout
