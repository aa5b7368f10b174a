"""The bad-input harness shared by test_bad_input_matrix.py and test_trust_matrix.py.

A case is (name, what is wrong, command built from a Ctx, exit code, what the one line must
say). `run_case` copies a small base store, builds the case's input, runs one `gallery`
command in-process, and reports whether every .h5 store named on the command line is
unchanged (all files of its directory); `check_case` asserts the harness's promises;
`print_rows` prints the observed RELIABILITY.md rows.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from cli_helpers import store_sha256
from gallery.store import ModelInfo, Store

DIM = 16
RELIABILITY = Path(__file__).resolve().parents[1] / "RELIABILITY.md"


@dataclass
class Ctx:
    tmp: Path
    store: Path                      # embedding-only store, 20 rows, dim 16
    models: Callable[[], Path]       # folder with a model store + ONNX files (needs torch)

    def npy(self, name: str, array) -> Path:
        np.save(self.tmp / name, np.asarray(array))
        return self.tmp / name

    def ids(self, name: str, ids: list[str]) -> Path:
        (self.tmp / name).write_text("".join(f"{i}\n" for i in ids))
        return self.tmp / name

    def good(self, rows: int = 2) -> np.ndarray:
        return np.random.default_rng(9).normal(size=(rows, DIM)).astype(np.float32)

    def truncated(self, src: Path, name: str) -> Path:
        data = src.read_bytes()
        (self.tmp / name).write_bytes(data[: len(data) // 2])
        return self.tmp / name

    def truncated_segment(self, name: str) -> Path:
        """A copy of the store with its first segment file cut in half."""
        shutil.copytree(self.store, self.tmp / name)
        segment = sorted((self.tmp / name).glob("seg-*.h5"))[0]
        os.truncate(segment, segment.stat().st_size // 2)
        return self.tmp / name

    def legacy(self, name: str) -> Path:
        """A single-file (schema v1) store, as the old code wrote it."""
        import gzip

        with gzip.open(Path(__file__).parent / "data" / "store_v1.h5.gz") as src:
            (self.tmp / name).write_bytes(src.read())
        return self.tmp / name


def enrol_args(ctx: Ctx, emb, ids) -> list:
    """`gallery enroll` of the base store with these embeddings and ids."""
    return ["enroll", ctx.store, "--embeddings", ctx.npy("e.npy", emb), "--ids", ctx.ids("ids.txt", ids)]


def model_store(ctx: Ctx) -> Path:
    """A store made with a tiny ONNX encoder (built on first use; needs torch)."""
    return ctx.models() / "m.h5"


def base_store(path: Path) -> Path:
    with Store.create(path, ModelInfo(version="v1", dim=DIM, model_id="synthetic")) as st:
        st.enroll(np.random.default_rng(0).normal(size=(20, DIM)).astype(np.float32), [f"s{i}" for i in range(20)])
    return path


def _build_models(root: Path) -> Path:
    """Two tiny ONNX encoders, a store made with the first, real digit images."""
    pytest.importorskip("torch")
    from tiny_models import make_onnx_encoder, write_digit_folder  # needs torch: only for the cases that use it

    root.mkdir(exist_ok=True)
    if not (root / "m.h5").exists():
        make_onnx_encoder(root / "enc.onnx", seed=0)
        make_onnx_encoder(root / "other.onnx", seed=1)
        write_digit_folder(root / "digits", n_per_class=1)
        assert CliRunner().invoke(app, ["init", str(root / "m.h5"), "--model", str(root / "enc.onnx")]).exit_code == 0
    return root


def run_case(case, tmp: Path, base: Path, models_root: Path):
    """Run one case; returns (click result, store files unchanged?, the command's args)."""
    store = tmp / "g.h5"
    shutil.copytree(base, store)
    ctx = Ctx(tmp=tmp, store=store, models=lambda: _build_models(models_root))
    args = [str(a) for a in case[2](ctx)]
    watched = [Path(a) for a in args if a.endswith(".h5") and Path(a).exists()]
    before = {p: store_sha256(p) for p in watched}
    result = CliRunner().invoke(app, args)
    return result, {p: store_sha256(p) for p in watched} == before, args


def check_case(case, result, unchanged: bool) -> list[str]:
    """The harness's promises: the exit code, one `error:` line matching the case's pattern,
    every store file unchanged. Returns the stderr lines (for case-specific checks)."""
    name, _, _, code, pattern = case
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, result.stdout + result.stderr + repr(result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert unchanged, f"{name}: a store file changed"
    return lines


def undocumented(cases: list) -> list[str]:
    """Names of cases without a row in RELIABILITY.md."""
    doc = RELIABILITY.read_text()
    return [c[0] for c in cases if f"`{c[0]}`" not in doc]


def print_rows(cases: list) -> None:
    """Print the RELIABILITY.md rows from what is observed now."""
    with tempfile.TemporaryDirectory() as tmp:
        base = base_store(Path(tmp) / "base.h5")
        for i, case in enumerate(cases):
            (Path(tmp) / str(i)).mkdir()
            result, unchanged, args = run_case(case, Path(tmp) / str(i), base, Path(tmp) / "models")
            message = " ".join(result.stderr.split()).replace(tmp, "…").replace("|", "\\|")
            print(f"| `{case[0]}` | {case[1]} | `gallery {args[0]}` | {result.exit_code} | "
                  f"{message} | {'yes' if unchanged else 'NO'} |")
