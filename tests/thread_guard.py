"""torch's CPU thread count is process-wide, so a test module that changes it leaks into every
module run after it in the same process (a seeded demo model once failed its gate in the full
suite only, because modules imported before it had set one thread at import time).

conftest.py loads this file's hooks and fixtures: `one_torch_thread` is the way to ask for one
thread; a module whose import changes the count fails collection, and a module that leaves it
changed after its tests and fixtures are done fails at teardown. It is a plain module, not part
of conftest.py, so that a test can load it with `-p thread_guard` into a pytest of its own."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator

import pytest


def torch_threads() -> int | None:
    """torch's thread count, or None where torch is not installed.

    torch is imported here when it is not yet: a module that imports torch and then sets the
    count at import could not be told apart from torch's default otherwise."""
    if "torch" not in sys.modules and importlib.util.find_spec("torch") is None:
        return None
    import torch  # installed: imported once per session, before the first test module

    return torch.get_num_threads()


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module's tests and fixtures (a shared 2-core machine: contending
    threads run much slower), the previous count again after the module."""
    before = torch_threads()
    if before is None:
        pytest.skip("torch is not installed")
    _set_threads(1)
    yield
    _set_threads(before)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """Fail the collection of a test module whose import changed torch's thread count."""
    if not isinstance(collector, pytest.Module):
        yield
        return
    before = torch_threads()
    outcome = yield
    after = torch_threads()
    if after != before:
        _set_threads(before)  # the modules collected after it see the count they would have
        report = outcome.get_result()
        report.outcome = "failed"
        report.longrepr = (f"{collector.nodeid}: importing it changed torch's thread count from "
                           f"{before} to {after}; use the one_torch_thread fixture (tests/thread_guard.py), "
                           "which restores the count after the module")


@pytest.fixture(scope="module", autouse=True)
def torch_threads_unchanged(request: pytest.FixtureRequest) -> Iterator[None]:
    """Autouse, so set up before and torn down after every other module-scoped fixture: the
    count after the module's teardown must be the count before it."""
    before = torch_threads()
    yield
    after = torch_threads()
    if after != before:
        _set_threads(before)
        pytest.fail(f"{request.node.nodeid} left torch's thread count at {after} (it was {before}); "
                    "restore it (the one_torch_thread fixture, trainer.threads.cpu_threads)", pytrace=False)
