"""CliRunner helpers shared by the CLI tests."""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from cli.main import app


def run(*args: Any):
    """Invoke `gallery ARGS...` in-process; returns the click Result."""
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args: Any):
    """Invoke and assert exit 0; parsed JSON when `--json` is given as a flag (not `--json FILE`)."""
    result = run(*args)
    assert result.exit_code == 0, result.stdout + result.stderr
    return json.loads(result.stdout) if _json_flag(args) else result


def _json_flag(args: tuple) -> bool:
    if "--json" not in args:
        return False
    following = args[args.index("--json") + 1:][:1]
    return not following or str(following[0]).startswith("-")
