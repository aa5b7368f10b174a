"""Issue 15's bad inputs through the real CLI (RELIABILITY.md, "Trust boundaries").

Same harness as tests/test_bad_input_matrix.py: each case builds one hostile input, runs
one `gallery` command, and checks the exit code, exactly one `error: ...` line naming the
problem, and every store file byte-identical afterwards. `python tests/test_trust_matrix.py`
prints the observed rows for RELIABILITY.md. Report forgeries are in
tests/test_trust_reports.py, ONNX external data in tests/test_trust_identity.py, the
fuzzing of every command in tests/test_trust_fuzz.py.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest

from gallery.search import search
from matrix_helpers import (DIM, Ctx, base_store, check_case, enrol_args, model_store, print_rows, run_case,
                            undocumented)


def _secret(ctx: Ctx) -> Path:
    (ctx.tmp / "secret.txt").write_bytes(b"root:x:0:0:root:/root:/bin/bash\n".ljust(64, b"#"))
    return ctx.tmp / "secret.txt"


def _h5_external_ids(ctx: Ctx) -> Path:
    """The issue's case: `ids` stored with HDF5 external storage pointing at another file."""
    path = ctx.tmp / "ext.h5"
    with h5py.File(path, "w") as h5:
        h5["embeddings"] = ctx.good(2)
        h5.create_dataset("ids", shape=(2,), dtype="S32", external=[(str(_secret(ctx)), 0, 64)])
    return path


def _h5_link(ctx: Ctx) -> Path:
    with h5py.File(ctx.tmp / "other.h5", "w") as h5:
        h5["x"] = ctx.good(2)
    with h5py.File(ctx.tmp / "link.h5", "w") as h5:
        h5["embeddings"] = h5py.ExternalLink(str(ctx.tmp / "other.h5"), "/x")
        h5["ids"] = np.array([b"a", b"b"])
    return ctx.tmp / "link.h5"


def _h5_virtual(ctx: Ctx) -> Path:
    with h5py.File(ctx.tmp / "src.h5", "w") as h5:
        h5["x"] = ctx.good(2)
    layout = h5py.VirtualLayout(shape=(2, DIM), dtype="f4")
    layout[:] = h5py.VirtualSource(str(ctx.tmp / "src.h5"), "x", shape=(2, DIM))
    with h5py.File(ctx.tmp / "vds.h5", "w") as h5:
        h5.create_virtual_dataset("embeddings", layout)
        h5["ids"] = np.array([b"a", b"b"])
    return ctx.tmp / "vds.h5"


def _compat_embeddings_external(ctx: Ctx) -> Path:
    path = ctx.tmp / "eval.h5"
    with h5py.File(path, "w") as h5:
        h5["old"] = ctx.good(20)
        h5.create_dataset("new", shape=(20, DIM), dtype="f4", external=[(str(_secret(ctx)), 0, 20 * DIM * 4)])
        h5["labels"] = np.repeat(np.arange(10), 2)
    return path


def _store_with_link(ctx: Ctx) -> Path:
    segment = sorted(ctx.store.glob("seg-*.h5"))[0]  # a store is a directory: its row segment
    with h5py.File(segment, "a", locking=False) as h5:
        h5["leak"] = h5py.ExternalLink(str(_secret(ctx)), "/")
    return ctx.store


def _h5_ids(ctx: Ctx, ids: list[str]) -> Path:
    """Ids the CSV reader cannot carry (newlines): an .h5 with variable-length strings."""
    path = ctx.tmp / "ids.h5"
    with h5py.File(path, "w") as h5:
        h5["embeddings"] = ctx.good(len(ids))
        h5.create_dataset("ids", data=ids, dtype=h5py.string_dtype())
    return path


def _scaled(ctx: Ctx, scale: float) -> np.ndarray:
    x = ctx.good().astype(np.float64)
    x[1] *= scale
    return x


def _onnx_huge_input(ctx: Ctx) -> Path:
    import onnx

    model = onnx.load(str(ctx.models() / "enc.onnx"))
    for entry in model.metadata_props:
        if entry.key == "gallery.input_size":
            entry.value = "100000,100000"
    onnx.save(model, str(ctx.tmp / "huge.onnx"))
    return ctx.tmp / "huge.onnx"


def _pt_with_arch(ctx: Ctx, dim) -> Path:
    torch = pytest.importorskip("torch")
    path = ctx.tmp / "m.pt"
    torch.save({"format": "gallery.model/1", "state_dict": {}, "model_id": "x",
                "arch": {"name": "small", "dim": dim, "image_size": 32, "in_channels": 1},
                "preprocess": {"height": 32, "width": 32, "color_order": "GRAY", "mean": [0.0], "std": [1.0]}}, path)
    return path


def _black_png(path: Path, side: int) -> None:
    """A valid black side x side 8-bit grey PNG, written without building the image (PIL
    takes seconds and 400 MB for 20000 x 20000): the compressed rows are one block repeated
    (each ends with a full flush, so the next compresses to the same bytes), and the adler32
    of all-zero data is 1 + (length mod 65521) << 16."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = 1000
    assert side % rows == 0
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(bytes((side + 1) * rows)) + deflate.flush(zlib.Z_FULL_FLUSH)  # filter byte + pixels
    length = (side + 1) * side
    stream = b"\x78\xda" + block * (side // rows) + deflate.flush() + struct.pack(">I", (length % 65521) << 16 | 1)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", stream) + chunk(b"IEND", b""))


def test_the_handmade_png_is_a_valid_image(tmp_path):
    from PIL import Image

    _black_png(tmp_path / "b.png", 2000)
    with Image.open(tmp_path / "b.png") as image:
        assert image.size == (2000, 2000) and image.mode == "L"
        assert image.getextrema() == (0, 0)  # decodes to the end: the checksums hold


def _bomb(ctx: Ctx) -> Path:
    root = ctx.tmp / "bomb"
    (root / "digit0").mkdir(parents=True)
    _black_png(root / "digit0" / "big.png", 20000)  # 400 Mpx, ~0.4 MB compressed
    return root


def _npy_bytes(ctx: Ctx, name: str, edit) -> Path:
    """A valid .npy of the right size whose bytes `edit` changes (header forgeries)."""
    np.save(ctx.tmp / name, ctx.good(2))
    (ctx.tmp / name).write_bytes(edit((ctx.tmp / name).read_bytes()))
    return ctx.tmp / name


def _huge_shape(data: bytes) -> bytes:
    # the header is padded text: declare 999,999,999,999 rows (64 TB at dim 16) over a 2-row body
    forged = data.replace(b"'shape': (2, 16), ", b"'shape': (999999999999, 16), ", 1)
    return forged.replace(b" " * 10 + b"\n", b"\n", 1)  # same header length


def _empty_store(ctx: Ctx) -> Path:
    (ctx.tmp / "empty.h5").write_bytes(b"")
    return ctx.tmp / "empty.h5"


def _q(ctx: Ctx, array) -> Path:
    return ctx.npy("q.npy", array)


# name, what is wrong, the command (built in ctx), exit code, what the one line must say
CASES: list[tuple[str, str, Callable[[Ctx], list], int, str]] = [
    ("h5-external-storage", "embeddings .h5 whose `ids` use HDF5 external storage (another file's bytes)",
     lambda c: ["enroll", c.store, "--embeddings", _h5_external_ids(c)], 2,
     r"dataset /ids uses HDF5 external storage .*secret\.txt.*refused"),
    ("h5-external-link", "embeddings .h5 whose `embeddings` is an external link",
     lambda c: ["enroll", c.store, "--embeddings", _h5_link(c)], 2, r"/embeddings is an external link"),
    ("h5-virtual-dataset", "embeddings .h5 whose `embeddings` is a virtual dataset",
     lambda c: ["enroll", c.store, "--embeddings", _h5_virtual(c)], 2, r"is a virtual dataset"),
    ("query-h5-external", "query embeddings .h5 with an external link",
     lambda c: ["search", c.store, "--embeddings", _h5_link(c)], 2, r"is an external link"),
    ("compat-embeddings-external", "check-compat --embeddings whose `new` uses external storage",
     lambda c: ["check-compat", "--embeddings", _compat_embeddings_external(c)], 2, r"dataset /new uses HDF5 external"),
    ("store-external-link", "a store with an external link added to it",
     lambda c: ["info", _store_with_link(c)], 2, r"/leak is an external link"),
    ("search-k-huge", "-k 100000000 on a 20-row store (asked for 24 GB before)",
     lambda c: ["search", c.store, "--embeddings", _q(c, c.good(1)), "-k", "100000000"], 2,
     r"k 100,000,000 is above the limit 10,000.*GALLERY_MAX_K"),
    ("enrol-tiny-norm", "a row of 1e-19 values (no usable direction)",
     lambda c: enrol_args(c, _scaled(c, 1e-19), ["a", "b"]), 2, r"L2 norm below 1e-06 \(first row 1"),
    ("enrol-huge-norm", "a row of 1e19 values (float32's sum of squares overflows)",
     lambda c: enrol_args(c, _scaled(c, 1e19), ["a", "b"]), 2, r"L2 norm above 1e\+12 \(first row 1"),
    ("search-tiny-norm", "a query of 1e-19 values",
     lambda c: ["search", c.store, "--embeddings", _q(c, _scaled(c, 1e-19))], 2, r"queries have 1 row\(s\) with L2 norm below"),
    ("enrol-complex", "a complex .npy (the imaginary part was silently dropped)",
     lambda c: enrol_args(c, c.good().astype(np.complex64), ["a", "b"]), 2, r"real integer or float array, got dtype complex64"),
    ("search-complex", "a complex query .npy",
     lambda c: ["search", c.store, "--embeddings", _q(c, c.good(1).astype(np.complex128))], 2, r"got dtype complex128"),
    ("enrol-nul-id", "an id with a trailing NUL (could never be removed)",
     lambda c: enrol_args(c, c.good(), ["a\x00", "b"]), 2, r"U\+0000"),
    ("enrol-newline-id", "an id with a newline", lambda c: ["enroll", c.store, "--embeddings", _h5_ids(c, ["a\nb", "c"])],
     2, r"U\+000A"),
    ("enrol-bidi-id", "an id with U+202E (right-to-left override)",
     lambda c: enrol_args(c, c.good(), ["abc\u202edcb", "b"]), 2, r"U\+202E \(RIGHT-TO-LEFT OVERRIDE\)"),
    ("init-huge-dim", "init --dim 4000000000", lambda c: ["init", c.tmp / "n.h5", "--dim", "4000000000", "--model-id", "x"],
     2, r"embedding dimension 4,000,000,000 is above the limit 65,536"),
    ("init-dim-not-int", "init --dim 4e9 (not an integer)",
     lambda c: ["init", c.tmp / "n.h5", "--dim", "4e9", "--model-id", "x"], 2, r"Invalid value for '--dim'"),
    ("onnx-huge-input", "an ONNX model declaring a 100000x100000 input",
     lambda c: ["init", c.tmp / "n.h5", "--model", _onnx_huge_input(c)], 2, r"model input side 100,000 is above the limit 4,096"),
    ("pt-huge-dim", "a .pt whose arch.dim is 2^38",
     lambda c: ["init", c.tmp / "n.h5", "--model", _pt_with_arch(c, 2 ** 38)], 2, r"embedding dimension 274,877,906,944"),
    ("pt-string-dim", "a .pt whose arch.dim is a string",
     lambda c: ["init", c.tmp / "n.h5", "--model", _pt_with_arch(c, "abc")], 2, r"embedding dimension must be an integer"),
    ("image-bomb", "a 20000x20000 PNG among the images (DecompressionBombError traceback before)",
     lambda c: ["enroll", model_store(c), "--images", _bomb(c)], 2,
     r"400,000,000 pixels, above the limit 89,478,485.*GALLERY_MAX_IMAGE_PIXELS"),
    ("enrol-empty-npy", "an empty .npy (click printed a bare 'Aborted.' before)",
     lambda c: ["enroll", c.store, "--embeddings", _npy_bytes(c, "e0.npy", lambda b: b""), "--ids",
                c.ids("i.txt", ["a", "b"])], 2, r"cannot read embeddings from .*e0\.npy \(EOFError\)"),
    ("enrol-npy-bad-header", "a .npy whose header text is broken by one byte (a TokenError traceback before)",
     lambda c: ["enroll", c.store, "--embeddings", _npy_bytes(c, "e1.npy", lambda b: b.replace(b"}", b"(", 1)),
                "--ids", c.ids("i.txt", ["a", "b"])], 2, r"cannot read embeddings from .*e1\.npy"),
    ("enrol-npy-huge-shape", "a .npy header declaring 10^12 rows over a 2-row body (memory exhaustion)",
     lambda c: ["enroll", c.store, "--embeddings", _npy_bytes(c, "e2.npy", _huge_shape), "--ids",
                c.ids("i.txt", ["a", "b"])], 2, r"cannot read embeddings from .*e2\.npy \(ValueError\)"),
    ("ids-not-utf8", "an ids file that is not UTF-8 (a UnicodeDecodeError traceback before)",
     lambda c: enrol_args(c, c.good(), ["a", "b"])[:4] + ["--ids", c.ids("ids.txt", ["a", "b"]).write_bytes(b"a\n\xff\n")
                                                      and c.tmp / "ids.txt"],
     2, r"not a UTF-8 CSV text file"),
    ("writer-empty-store", "an empty file given to a writer (HDF5 wrote a superblock into it before)",
     lambda c: ["migrate", _empty_store(c)], 2, r"not a readable HDF5 file \(no HDF5 signature\)"),
    ("unknown-option", "an option no command has", lambda c: ["search", c.store, "--bogus"], 2, r"No such option: --bogus"),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return base_store(tmp_path_factory.mktemp("trust") / "base.h5")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_trust_case(case, tmp_path, base, tmp_path_factory):
    result, unchanged, _ = run_case(case, tmp_path, base, tmp_path_factory.getbasetemp() / "models")
    check_case(case, result, unchanged)
    assert "root:x:0" not in result.stdout + result.stderr  # the pointed-at file is never read back


def test_every_case_is_documented():
    missing = undocumented(CASES)
    assert not missing, f"RELIABILITY.md lacks rows for {missing}"


def test_k_above_the_live_rows_asks_the_index_for_the_live_rows_only(base, tmp_path, monkeypatch):
    """-k 10000 on a 20-row store: 20 real hits (equal to a brute-force ranking), the rest empty
    slots, and the index is never asked for more than the rows the store holds."""
    import shutil

    from gallery.index import GalleryIndex
    from gallery.preprocess import l2_normalize
    from gallery.store import Store

    store = tmp_path / "g.h5"
    shutil.copytree(base, store)
    asked = []
    real = GalleryIndex.search

    def spy(self, q, k):
        asked.append(k)
        return real(self, q, k)
    monkeypatch.setattr(GalleryIndex, "search", spy)
    q = np.random.default_rng(5).normal(size=(3, DIM)).astype(np.float32)
    with Store.open(store) as st:
        result = search(st, q, k=10_000)
        emb = st.embeddings()
    assert asked and max(asked) <= 20
    assert result.rows.shape == (3, 10_000) and (result.rows[:, 20:] == -1).all()
    expected = np.argsort(-(emb @ l2_normalize(q).T).T, axis=1, kind="stable")[:, :20]
    assert (result.rows[:, :20] == expected).all()


def test_limits_are_overridable(base, tmp_path, monkeypatch):
    from gallery.errors import BadInput
    from gallery.store import Store

    q = np.random.default_rng(5).normal(size=(1, DIM)).astype(np.float32)
    with Store.open(base) as st:
        monkeypatch.setenv("GALLERY_MAX_K", "5")
        with pytest.raises(BadInput, match="k 6 is above the limit 5"):
            search(st, q, k=6)
        assert search(st, q, k=5).rows.shape == (1, 5)
        monkeypatch.setenv("GALLERY_MAX_K", "lots")
        with pytest.raises(BadInput, match="GALLERY_MAX_K='lots' is not an integer"):
            search(st, q, k=5)


def test_batch_memory_is_bounded(monkeypatch):
    from gallery import limits

    monkeypatch.setenv("GALLERY_MAX_BATCH_BYTES", str(10 * 32 * 32 * 3 * 5))
    assert limits.batch_rows(64, 32 * 32 * 3 * 5) == 10
    assert limits.batch_rows(4, 32 * 32 * 3 * 5) == 4
    assert limits.batch_rows(64, 10 ** 12) == 1


def test_invalid_utf8_in_a_stored_id_is_damage_that_verify_reports(base, tmp_path):
    """A flipped byte in the id column gave a UnicodeDecodeError traceback in verify (and in
    every reader): now readers decode it as U+FFFD and verify reports the damage, exit 1."""
    import shutil

    from cli_helpers import run

    store = tmp_path / "g.h5"
    shutil.copytree(base, store)
    segment = sorted(store.glob("seg-*.h5"))[0]  # rewritten through HDF5: its chunk checksums still hold
    with h5py.File(segment, "r+", locking=False) as h5:
        ids = h5["id"]
        value = bytearray(ids[3])
        value[0] = 0xFF  # not a UTF-8 start byte
        ids[3] = bytes(value)
    result = run("verify", store)
    assert result.exit_code == 1 and "DAMAGED" in result.stdout and "Traceback" not in result.stdout + result.stderr
    for args in (["info", store], ["search", store, "--embeddings", _q_file(tmp_path), "-k", "20", "--json"]):
        result = run(*args)
        assert result.exit_code == 0 and "Traceback" not in result.stdout + result.stderr, result.stderr


def _q_file(tmp_path: Path) -> Path:
    np.save(tmp_path / "q.npy", np.random.default_rng(7).normal(size=(2, DIM)).astype(np.float32))
    return tmp_path / "q.npy"


if __name__ == "__main__":  # print the RELIABILITY.md rows from what is observed now
    print_rows(CASES)
