"""CliRunner helpers shared by the CLI tests."""

from __future__ import annotations

import json
from pathlib import Path
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


def upgraded_store(root, name: str, per_class: int, eval_per_class: int, impostor_pairs: int):
    """A store enrolled with v1 (ROOT/images) and upgraded to v2 through a real
    check-compat report: the starting point of every backfill test. Needs torch."""
    from tiny_models import make_onnx_encoder, write_digit_folder

    make_onnx_encoder(root / "v1.onnx", seed=0)
    make_onnx_encoder(root / "v2.onnx", seed=1)
    write_digit_folder(root / "images", n_per_class=per_class, seed=0)
    write_digit_folder(root / "eval", n_per_class=eval_per_class, seed=2)
    store = root / "stores" / name  # models outside its folder: recorded absolute, copies find them
    store.parent.mkdir(exist_ok=True)
    ok("init", store, "--model", root / "v1.onnx")
    ok("enroll", store, "--images", root / "images")
    ok("check-compat", "--old", root / "v1.onnx", "--new", root / "v2.onnx", "--data", root / "eval",
       "--json", root / "report.json", "--max-new-drop", "1", "--impostor-pairs", str(impostor_pairs))
    ok("upgrade", store, "--model", root / "v2.onnx", "--report", root / "report.json")
    return store


def report(root: Path, old: str, new: str, name: str, *gates: str) -> Path:
    """`gallery check-compat` of ROOT/old vs ROOT/new on ROOT/eval, written to ROOT/name."""
    out = root / name
    result = run("check-compat", "--old", root / old, "--new", root / new, "--data", root / "eval",
                 "--json", out, "--impostor-pairs", "2000", *gates)
    assert out.is_file(), result.stdout + result.stderr
    return out


def store_sha256(path) -> str:
    """sha256 of a store's state, to check a refused command changed nothing: a file's bytes,
    or for a store directory every file's name and bytes (MANIFEST, segments, deletions...),
    except the writer's pid note (LOCK) and the index sidecar (derived data readers rewrite)."""
    import hashlib
    from pathlib import Path

    from gallery.fingerprint import file_sha256

    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    digest = hashlib.sha256()
    for child in sorted(path.iterdir()):
        if child.name == "LOCK" or child.name.startswith("sidecar.index"):
            continue
        digest.update(child.name.encode() + b"\0" + child.read_bytes())
    return digest.hexdigest()
