"""SIGKILL every write command at sampled system calls (tests/fault_scenarios.py says what is
checked after each kill). CI runs SAMPLE points per command (the first call, the last, and
evenly spaced ones between); `bench/fault_sweep.py` runs every call of every command and
RELIABILITY.md gives its counts."""

from __future__ import annotations

import importlib.util

import pytest

import fault_scenarios
import syscall_faults

SAMPLE = 4

pytestmark = pytest.mark.skipif(syscall_faults.shim() is None, reason="no C compiler for tests/faultshim.c")


@pytest.mark.parametrize("name", sorted(fault_scenarios.SCENARIOS))
def test_write_command_survives_sigkill(name, tmp_path_factory):
    scenario = fault_scenarios.SCENARIOS[name]
    if scenario.needs_torch and importlib.util.find_spec("torch") is None:
        pytest.skip("needs torch to make the ONNX encoders")
    prepared = fault_scenarios.prepare(scenario, tmp_path_factory.mktemp(name))
    assert prepared.after != prepared.before or name == "reindex"  # reindex changes the sidecar only
    points = syscall_faults.sample(len(prepared.calls), SAMPLE)
    left = [fault_scenarios.kill_point(prepared, at) for at in points]
    # The first call cannot have committed; killed before its last call, it has (the last
    # calls are the directory fsync and the lock note) — except reindex, which changes no content.
    assert left[0] == "before" or name == "reindex"


def test_commit_order_makes_acknowledged_commits_durable(tmp_path_factory):
    """Power loss cannot be simulated here; the order of the calls that make a commit durable
    can be checked: each new file is fsynced before it is renamed to its final name, the
    directory is fsynced before the manifest that lists it is written, the manifest is
    fsynced before it is renamed into place, and the directory is fsynced after that."""
    prepared = fault_scenarios.prepare(fault_scenarios.SCENARIOS["enroll"], tmp_path_factory.mktemp("order"))
    calls = [(c.name, c.target.rsplit("/", 1)[-1] if "/" in c.target else c.target) for c in prepared.calls]
    names = [c[0] for c in calls]
    renames = [i for i, (name, _) in enumerate(calls) if name.startswith("rename")]
    manifest = [i for i in renames if calls[i][1] == "MANIFEST"]
    assert len(manifest) == 1  # one enrol call, one commit
    m = manifest[0]
    for i in renames:
        if i == m:
            continue
        final = calls[i][1]
        assert ("fsync", f"{final}.tmp") in calls[:i], f"{final} renamed before its fsync"
        assert i < m, f"{final} renamed after the manifest that lists it"
    dir_syncs = [i for i, (name, target) in enumerate(calls) if name == "fsync" and target == "g.h5"]
    assert any(max(r for r in renames if r < m) < i < m for i in dir_syncs), "no directory fsync before the manifest"
    assert ("fsync", "MANIFEST.tmp") in calls[:m] and names.index("fsync", max(r for r in renames if r < m)) < m
    assert any(i > m for i in dir_syncs), "no directory fsync after the manifest rename"
