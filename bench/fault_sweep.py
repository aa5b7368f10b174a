"""The full system-call fault sweep: every write command SIGKILLed before each of its
write/rename/fsync/unlink calls in turn (tests/fault_scenarios.py: what is checked).

    .venv/bin/python bench/fault_sweep.py [--only enroll,remove] [--stride N] [--out bench/results/fault_sweep.json]

Prints one row per command (calls, kill points run, what each kill left, failures) and
writes the JSON with every failure's message. CI runs a sample (tests/test_fault_syscalls.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import fault_scenarios  # noqa: E402
import syscall_faults  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated commands (default: all)")
    parser.add_argument("--stride", type=int, default=1, help="every Nth call only (1: every call)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "fault_sweep.json"))
    args = parser.parse_args()
    if syscall_faults.shim() is None:
        print("no C compiler: cannot build tests/faultshim.c", file=sys.stderr)
        return 2
    names = [n for n in args.only.split(",") if n] or sorted(fault_scenarios.SCENARIOS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fault-sweep-") as tmp:
        for name in names:
            started = time.time()
            prepared = fault_scenarios.prepare(fault_scenarios.SCENARIOS[name], Path(tmp) / name)
            total = len(prepared.calls)
            left = {"before": 0, "after": 0, "step": 0}
            failures = []
            for at in range(1, total + 1, args.stride):
                try:
                    left[fault_scenarios.kill_point(prepared, at)] += 1
                except AssertionError as exc:
                    failures.append(str(exc))
            kinds: dict[str, int] = {}
            for call in prepared.calls:
                kinds[call.name] = kinds.get(call.name, 0) + 1
            rows.append({"command": name, "calls": total, "points": sum(left.values()) + len(failures),
                         "left_before": left["before"], "left_after": left["after"], "left_step": left["step"],
                         "failures": len(failures), "failure_messages": failures, "call_kinds": kinds,
                         "seconds": round(time.time() - started, 1)})
            r = rows[-1]
            print(f"{name:10s} calls {total:4d}  killed {r['points']:4d}  before {r['left_before']:4d}  "
                  f"after {r['left_after']:4d}  step {r['left_step']:3d}  failures {r['failures']}  "
                  f"({r['seconds']} s)", flush=True)
            for message in failures[:3]:
                print("   ", message[:300], flush=True)
    total_points = sum(r["points"] for r in rows)
    total_failures = sum(r["failures"] for r in rows)
    print(f"total: {total_points} kill points x {len(rows)} commands, failures: {total_failures}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"stride": args.stride, "commands": rows}, indent=2))
    return 1 if total_failures else 0


if __name__ == "__main__":
    sys.exit(main())
