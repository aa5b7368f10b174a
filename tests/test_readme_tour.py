"""README's quick tour is exactly what the demo runs (issue 16, item 8): the gallery and
rollout.sh command lines of examples/demo.sh, with its variables spelled out, in order."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _joined(text: str) -> list[str]:
    """Shell lines with `\\` continuations joined and comments dropped."""
    out, current = [], ""
    for raw in text.splitlines():
        line = re.sub(r"\s+#\s.*$", "", raw).rstrip()
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        out.append((current + line.strip()).strip())
        current = ""
    return [line for line in out if line]


def _normal(line: str) -> str:
    line = re.sub(r"\s*\|\|.*$", "", line)  # the demo's `|| true` / `|| echo ...` guards
    line = line.replace('"${COMMON[@]}"', "$COMMON").replace('"$G"', "gallery").replace("$G ", "gallery ")
    line = line.replace('"$D', '"runs/demo').replace("$D", "runs/demo").replace('"', "")
    return re.sub(r"\s+", " ", line).strip()


def _commands(lines: list[str]) -> list[str]:
    return [_normal(line) for line in lines
            if re.match(r"^(\$G|gallery|GALLERY=)", line.strip()) and "--help" not in line]


def test_quick_tour_is_the_demo():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick tour", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    demo = (ROOT / "examples" / "demo.sh").read_text()
    tour, ran = _commands(_joined(block)), _commands(_joined(demo))
    assert len(ran) >= 12
    assert tour == ran
