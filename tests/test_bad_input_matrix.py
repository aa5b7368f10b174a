"""The bad-input matrix (RELIABILITY.md): every bad input through the real CLI.

Each case builds one bad input, runs one `gallery` command, and checks: the exit code
(2 bad input, 3 locked, 1 environment), exactly one stderr line `error: ...` naming
the problem, and the store file byte-identical afterwards (nothing half-written).
Environment cases (read-only file system, disk full, stale index) are in
tests/test_reliability_env.py. `python tests/test_bad_input_matrix.py` prints the
observed messages as the markdown rows of RELIABILITY.md.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest

from gallery.store import Store
from gallery.store import manifest as store_manifest  # hand edits keep its checksum valid
from matrix_helpers import (DIM, Ctx, base_store, check_case, enrol_args, model_store, print_rows, run_case,
                            undocumented)


def _nan(ctx: Ctx, value: float) -> np.ndarray:
    x = ctx.good()
    x[1, 3] = value
    return x


def _overflow(ctx: Ctx) -> np.ndarray:
    x = ctx.good().astype(np.float64)
    x[0, 0] = 1e39  # finite in float64, inf in the store's float32
    return x


def _h5_embeddings(ctx: Ctx) -> Path:
    with h5py.File(ctx.tmp / "in.h5", "w") as h5:
        h5["embeddings"] = ctx.good(2000)
        h5["ids"] = np.array([f"n{i}" for i in range(2000)], dtype="S")
    return ctx.truncated(ctx.tmp / "in.h5", "in_trunc.h5")


def _not_a_store(ctx: Ctx) -> Path:
    with h5py.File(ctx.tmp / "plain.h5", "w") as h5:
        h5["x"] = np.zeros(3)
    return ctx.tmp / "plain.h5"


def _newer_schema(ctx: Ctx) -> Path:
    manifest = store_manifest.load(ctx.store)
    manifest["schema_version"] = 99
    store_manifest.commit(ctx.store, manifest, durable=False)
    return ctx.store


def _removed_then_reused(ctx: Ctx) -> list:
    with Store.open(ctx.store, "a") as st:
        st.remove(["s3"])
    return enrol_args(ctx, ctx.good(1), ["s3"])


def _images_with(ctx: Ctx, name: str, content: bytes) -> Path:
    root = ctx.tmp / "imgs"
    shutil.copytree(ctx.models() / "digits", root)
    (root / "digit0" / name).write_bytes(content)
    return root


def _truncated_png(ctx: Ctx) -> bytes:
    return next((ctx.models() / "digits" / "digit1").glob("*.png")).read_bytes()[:60]


# name, what is wrong, the command (built in ctx), exit code, what the one line must say
CASES: list[tuple[str, str, Callable[[Ctx], list], int, str]] = [
    ("enrol-wrong-dim", "embeddings of dimension 20 into a dim-16 store",
     lambda c: enrol_args(c, np.ones((2, 20)), ["a", "b"]), 2, r"dimension 20, store .* has 16"),
    ("search-wrong-dim", "query embeddings of dimension 20",
     lambda c: ["search", c.store, "--embeddings", c.npy("q.npy", np.ones((1, 20)))], 2, r"dimension 20, store has 16"),
    ("enrol-nan", "a NaN in the embeddings", lambda c: enrol_args(c, _nan(c, np.nan), ["a", "b"]),
     2, r"NaN or inf in 1 row"),
    ("enrol-inf", "an inf in the embeddings", lambda c: enrol_args(c, _nan(c, np.inf), ["a", "b"]), 2, r"NaN or inf"),
    ("enrol-overflow", "float64 1e39 (inf once stored as float32)",
     lambda c: enrol_args(c, _overflow(c), ["a", "b"]), 2, r"NaN or inf"),
    ("enrol-zero-vector", "an all-zero embedding (no direction)",
     lambda c: enrol_args(c, np.zeros((2, DIM)), ["a", "b"]), 2, r"all-zero row"),
    ("search-nan", "a NaN in the query", lambda c: ["search", c.store, "--embeddings", c.npy("q.npy", _nan(c, np.nan))],
     2, r"queries contain NaN or inf"),
    ("enrol-duplicate-ids", "the same id twice in one input",
     lambda c: enrol_args(c, c.good(), ["same", "same"]), 2, r"duplicate ids in input: same"),
    ("enrol-id-in-store", "an id the store already holds", lambda c: enrol_args(c, c.good(), ["s0", "new"]),
     2, r"ids already in store .*: s0"),
    ("enrol-removed-id", "reusing the id of a removed item", _removed_then_reused, 2, r"never reused\): s3"),
    ("enrol-count-mismatch", "3 embeddings, 2 ids", lambda c: enrol_args(c, c.good(3), ["a", "b"]),
     2, r"do not match 2 ids"),
    ("enrol-long-id", "an id longer than 128 bytes", lambda c: enrol_args(c, c.good(1), ["x" * 200]),
     2, r"id longer than 128 bytes"),
    ("enrol-pickled-npy", "an object (pickled) .npy: never unpickled",
     lambda c: ["enroll", c.store, "--embeddings", c.npy("p.npy", np.array([{"a": 1}, None], dtype=object)),
                "--ids", c.ids("i.txt", ["a", "b"])], 2, r"cannot read embeddings .*ValueError"),
    ("enrol-truncated-npy", "a .npy cut in half",
     lambda c: ["enroll", c.store, "--embeddings", c.truncated(c.npy("big.npy", c.good(500)), "t.npy"),
                "--ids", c.ids("i.txt", [f"t{i}" for i in range(500)])], 2, r"cannot read embeddings"),
    ("enrol-truncated-h5", "an embeddings .h5 cut in half",
     lambda c: ["enroll", c.store, "--embeddings", _h5_embeddings(c)], 2, r"cannot read embeddings"),
    ("store-truncated", "a store whose segment file is cut in half",
     lambda c: ["search", c.truncated_segment("half.h5"), "--embeddings", c.npy("q.npy", c.good(1))],
     2, r"store file .*half.h5/seg-\d+\.h5 is damaged .*run `gallery verify`"),
    ("store-truncated-verify", "`verify` of a single-file (v1/v2) store cut in half",
     lambda c: ["verify", c.truncated(c.legacy("old.h5"), "half.h5")], 2, r"not a readable HDF5 file"),
    ("store-single-file", "a single-file (v1/v2) store, before `gallery migrate`",
     lambda c: ["info", c.legacy("old.h5")], 2, r"single-file store \(schema v1\); run `gallery migrate"),
    ("store-not-hdf5", "a text file given as the store",
     lambda c: ["info", c.ids("fake.h5", ["hello"])], 2, r"not a readable HDF5 file"),
    ("store-not-a-gallery", "an HDF5 file that is not a store",
     lambda c: ["info", _not_a_store(c)], 2, r"is not a gallery store"),
    ("store-newer-schema", "a store written by a newer gallery",
     lambda c: ["info", _newer_schema(c)], 2, r"schema v99, newer than this gallery understands"),
    ("store-missing", "a store path that does not exist", lambda c: ["info", c.tmp / "absent.h5"],
     2, r"store not found"),
    ("init-existing", "`init` over an existing store",
     lambda c: ["init", c.store, "--dim", "8", "--model-id", "x"], 2, r"store already exists"),
    ("enrol-unknown-version", "--model-version naming no model",
     lambda c: [*enrol_args(c, c.good(), ["a", "b"]), "--model-version", "v9"],
     2, r"unknown model version 'v9'.*valid: v1"),
    ("search-unknown-version", "--query-model naming no model",
     lambda c: ["search", c.store, "--embeddings", c.npy("q.npy", c.good(1)), "--query-model", "v2"],
     2, r"unknown model version 'v2'"),
    ("search-k-zero", "-k 0", lambda c: ["search", c.store, "--embeddings", c.npy("q.npy", c.good(1)), "-k", "0"],
     2, r"k must be >= 1"),
    ("search-rerank-zero", "--rerank 0", lambda c: ["search", c.store, "--embeddings", c.npy("q.npy", c.good(1)),
                                                    "--rerank", "0"], 2, r"rerank must be >= 1"),
    ("search-bad-index", "--index of an unknown kind",
     lambda c: ["search", c.store, "--embeddings", c.npy("q.npy", c.good(1)), "--index", "lsh"],
     2, r"unknown index kind 'lsh'"),
    ("images-on-embedding-store", "images into a store whose model has no encoder file",
     lambda c: ["enroll", c.store, "--images", c.models() / "digits"], 2, r"embedding-only"),
    ("onnx-truncated", "an ONNX model cut in half",
     lambda c: ["init", c.tmp / "new.h5", "--model", c.truncated(c.models() / "enc.onnx", "cut.onnx")],
     2, r"cannot load ONNX model"),
    ("onnx-not-a-model", "a text file named .onnx",
     lambda c: ["init", c.tmp / "new.h5", "--model", c.ids("x.onnx", ["hello"])], 2, r"cannot load ONNX model"),
    ("model-unknown-format", "a model file with an unknown suffix",
     lambda c: ["init", c.tmp / "new.h5", "--model", c.ids("x.bin", ["hello"])], 2, r"\.onnx"),
    ("model-wrong-file", "--model pointing at a different encoder than the store's",
     lambda c: ["enroll", model_store(c), "--images", c.models() / "digits", "--model", c.models() / "other.onnx"],
     2, r"is not model v1"),
    ("images-non-image", "a text file named .png among the images",
     lambda c: ["enroll", model_store(c), "--images", _images_with(c, "bad.png", b"not an image")],
     2, r"not a readable image: .*bad\.png"),
    ("images-truncated-png", "a PNG cut after 60 bytes",
     lambda c: ["enroll", model_store(c), "--images", _images_with(c, "cut.png", _truncated_png(c))],
     2, r"not a readable image: .*cut\.png"),
    ("query-non-image", "a text file as the query image",
     lambda c: ["search", model_store(c), "--image", c.ids("q.jpg", ["text"]), "--on-error", "fail"], 2,
     r"not a readable image"),  # the default (skip) reports it as the query's error record, exit 0
    ("images-empty-folder", "an image folder with no images",
     lambda c: ["enroll", model_store(c), "--images", (c.tmp / "empty").mkdir() or c.tmp / "empty"],
     2, r"no images"),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return base_store(tmp_path_factory.mktemp("matrix") / "base.h5")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, tmp_path, base, tmp_path_factory):
    result, unchanged, _ = run_case(case, tmp_path, base, tmp_path_factory.getbasetemp() / "models")
    check_case(case, result, unchanged)


def test_every_case_is_documented():
    missing = undocumented(CASES)
    assert not missing, f"RELIABILITY.md lacks rows for {missing}"


if __name__ == "__main__":  # print the RELIABILITY.md rows from what is observed now
    print_rows(CASES)
