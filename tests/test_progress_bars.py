"""Progress on the long store commands (issue 16, item 4): reindex, export and migrate report
their rows through callbacks (`on_total(rows)`, then `progress(n)` per block: the library)
and a Rich bar on a terminal (the CLI; none with --json or when stderr is not a terminal).
The counts are checked against the store's own live/committed rows."""

from __future__ import annotations

import gzip
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import cli.common
import gallery
from cli_helpers import ok
from gallery.store import ModelInfo, Store, ranges
from gallery.store import migrations

ROWS, REMOVED, BLOCK = 50, 7, 16


def _store(tmp_path: Path) -> Path:
    path = tmp_path / "g"
    with Store.create(path, ModelInfo(version="v1", dim=4, model_id="m")) as st:
        st.enroll(np.random.default_rng(0).normal(size=(ROWS, 4)).astype(np.float32), [f"i{n}" for n in range(ROWS)])
        st.remove([f"i{n}" for n in range(0, 3 * REMOVED, 3)])
    return path


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(ranges, "BLOCK_ROWS", BLOCK)  # several blocks from a small store
    monkeypatch.setattr(migrations, "BLOCK", 3)


def test_reindex_and_export_count_every_live_row(tmp_path, small_blocks):
    store = _store(tmp_path)
    live = ROWS - REMOVED
    with gallery.open(store) as g:
        totals, steps = [], []
        meta = g.reindex(index="flat", progress=steps.append, on_total=totals.append)
        assert totals == [live] == [meta["count"]] and sum(steps) == live
        assert len(steps) == -(-ROWS // BLOCK)  # one step per block of the file holding live rows
        totals, steps = [], []
        g.export(tmp_path / "out.npz", progress=steps.append, on_total=totals.append)
        assert totals == [live] and sum(steps) == live and len(steps) == -(-ROWS // BLOCK)
    with Store.open(store) as st:  # the blocks were assembled in order: the rows as read at once
        expected = st.embeddings(np.flatnonzero(~st.tombstones()))
    np.testing.assert_array_equal(np.load(tmp_path / "out.npz")["embeddings"], expected)


def _legacy(tmp_path: Path) -> Path:
    path = tmp_path / "old.h5"
    with gzip.open(Path(__file__).parent / "data" / "store_v1.h5.gz") as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return path


def test_migrate_counts_every_committed_row(tmp_path, small_blocks):
    totals, steps = [], []
    result = migrations.migrate_path(_legacy(tmp_path), progress=steps.append, on_total=totals.append)
    assert totals == [result["rows"]] == [7] and steps == [3, 3, 1]


@pytest.mark.parametrize("command", ["reindex", "export", "migrate"])
def test_the_cli_draws_a_bar_on_a_terminal_only(tmp_path, small_blocks, monkeypatch, command):
    store = _legacy(tmp_path) if command == "migrate" else _store(tmp_path)
    rows = 7 if command == "migrate" else ROWS - REMOVED
    args = {"reindex": [store, "--index", "flat"], "export": [store, "--out", tmp_path / "o.npz"],
            "migrate": [store]}[command]
    screen = io.StringIO()
    monkeypatch.setattr(cli.common, "err_console", Console(file=screen, force_terminal=True, width=120))
    ok(command, *args)
    assert f"{rows}/{rows}" in screen.getvalue()  # the bar's final M of N
    quiet = io.StringIO()
    monkeypatch.setattr(cli.common, "err_console", Console(file=quiet, force_terminal=True, width=120))
    ok(command, *args, "--json")
    assert quiet.getvalue() == ""


def test_image_search_counts_every_query_image_and_draws_a_bar(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from tiny_models import make_onnx_encoder, write_digit_folder

    make_onnx_encoder(tmp_path / "enc.onnx", seed=0)
    write_digit_folder(tmp_path / "photos", n_per_class=1, seed=0)
    store = tmp_path / "g"
    ok("init", store, "--model", tmp_path / "enc.onnx")
    ok("enroll", store, "--images", tmp_path / "photos")
    (tmp_path / "photos" / "digit1" / "broken.png").write_text("not a png")  # an item error is counted too
    images = sorted(p for p in (tmp_path / "photos").rglob("*.png"))
    with gallery.open(store) as g:
        totals, steps = [], []
        result = g.search([tmp_path / "photos"], k=1, progress=steps.append, on_total=totals.append)
    assert totals == [len(images)] == [11] and steps == [1] * len(images)
    assert len(result.names) == 10 and [e["item"] for e in result.errors] == [str(tmp_path / "photos" / "digit1" / "broken.png")]
    screen = io.StringIO()
    monkeypatch.setattr(cli.common, "err_console", Console(file=screen, force_terminal=True, width=120))
    ok("search", store, "--image", tmp_path / "photos", "-k", "1")
    assert "11/11" in screen.getvalue()
    quiet = io.StringIO()
    monkeypatch.setattr(cli.common, "err_console", Console(file=quiet, force_terminal=True, width=120))
    ok("search", store, "--image", tmp_path / "photos", "-k", "1", "--json")
    assert quiet.getvalue() == ""
