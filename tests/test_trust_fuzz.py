"""Fuzz every `gallery` command with malformed inputs (issue 15, item 6).

For each command: its file arguments replaced by missing paths, folders, empty, truncated
and bit-flipped copies, a path through a regular file, and (JSON inputs) values of the
wrong type, huge numbers and cut-off text; its numeric options given huge, negative,
non-finite and non-numeric values; a store locked by another writer. Every run must end
with no traceback, exit 0, 2 (bad input), 1 only where a gate or damage check can fail,
3 only for a locked store, exactly one `error: ...` line on stderr for every error
(`verify` reports damage on stdout instead), and every store file byte-identical after
an error.

HDF5 can crash (SIGSEGV) on a corrupted file, which would take pytest down with it, so
the cases run in a worker process (`python tests/test_trust_fuzz.py --worker CASES OUT`)
that writes one JSON line per finished case; a worker that dies is recorded as a crash of
the case it was running and a new worker continues with the next one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DIM = 16
GATES = {"check-compat", "upgrade", "verify", "backfill"}  # may exit 1 (gate failed / damage found)
WRITERS = {"enroll", "remove", "migrate", "compact", "reindex", "rollback", "upgrade", "backfill", "prune", "alias set",
           "model set-path", "threshold calibrate", "threshold set", "sync"}
# writers whose template must take the lock (reindex writes only the sidecar; prune --dry-run
# and backfill --status only read): these get a "locked by another writer" case
LOCKING = {"enroll", "enroll h5", "enroll images", "remove", "migrate", "compact", "rollback", "upgrade", "alias set",
           "model set-path", "threshold calibrate", "threshold set"}
GROUPS = {"alias", "data", "model", "threshold"}  # commands with sub-commands
HUGE = ["99999999999999999999999", "-1", "0", "nan", "inf", "1e400", "abc"]
SEED = 15


# ---------------------------------------------------------------------------- the world
def _world(root: Path) -> dict[str, Path]:
    """Good inputs for every command: stores, models, images, reports, embedding files."""
    import h5py

    from cli_helpers import ok, run
    from gallery.store import ModelInfo, Store
    from tiny_models import make_onnx_encoder, write_digit_folder

    rng = np.random.default_rng(0)
    make_onnx_encoder(root / "v1.onnx", seed=0)
    make_onnx_encoder(root / "v2.onnx", seed=1)
    write_digit_folder(root / "imgs", n_per_class=1, seed=0)
    write_digit_folder(root / "eval", n_per_class=3, seed=2)
    with Store.create(root / "emb.h5", ModelInfo(version="v1", dim=DIM, model_id="m")) as st:
        st.enroll(rng.normal(size=(20, DIM)).astype(np.float32), [f"s{i}" for i in range(20)])
    ok("init", root / "img.h5", "--model", root / "v1.onnx")
    ok("enroll", root / "img.h5", "--images", root / "imgs")
    result = run("check-compat", "--old", root / "v1.onnx", "--new", root / "v2.onnx", "--data", root / "eval",
                 "--json", root / "report.json", "--max-new-drop", "1", "--impostor-pairs", "200")
    assert (root / "report.json").is_file(), result.stderr
    np.save(root / "q.npy", rng.normal(size=(2, DIM)).astype(np.float32))
    np.save(root / "e.npy", rng.normal(size=(2, DIM)).astype(np.float32))
    (root / "ids.csv").write_text("n1\nn2\n")
    with h5py.File(root / "e.h5", "w") as h5:
        h5["embeddings"] = rng.normal(size=(2, DIM)).astype(np.float32)
        h5["ids"] = np.array([b"h1", b"h2"])
    with h5py.File(root / "evalemb.h5", "w") as h5:
        h5["old"] = rng.normal(size=(20, DIM)).astype(np.float32)
        h5["new"] = rng.normal(size=(20, DIM)).astype(np.float32)
        h5["labels"] = np.repeat(np.arange(10), 2)
    (root / "dlib.csv").write_text("".join(f"d{i},p{i % 3},{','.join(['0.1'] * 128)}\n" for i in range(4)))
    (root / "key").write_bytes(b"k" * 32)
    return {p.name: p for p in root.iterdir()}


# name, argument template ({file} slots are mutated), files the template reads
COMMANDS: list[tuple[str, list[str]]] = [
    ("info", ["info", "{emb.h5}"]),
    ("verify", ["verify", "{emb.h5}"]),
    ("history", ["history", "{emb.h5}"]),
    ("migrate", ["migrate", "{emb.h5}"]),
    ("compact", ["compact", "{emb.h5}"]),
    ("reindex", ["reindex", "{emb.h5}", "--index", "flat", "--nlist", "#4"]),
    ("remove", ["remove", "{emb.h5}", "s1"]),
    ("prune", ["prune", "{img.h5}", "--dry-run"]),
    ("rollback", ["rollback", "{img.h5}"]),
    ("alias set", ["alias", "set", "prod", "v1", "--store", "{emb.h5}"]),
    ("alias list", ["alias", "list", "--store", "{emb.h5}"]),
    ("export", ["export", "{emb.h5}", "--out", "@out.npz"]),
    ("export-serving", ["export-serving", "{emb.h5}", "--milvus", "@milvus"]),
    ("search", ["search", "{emb.h5}", "--embeddings", "{q.npy}", "-k", "#", "--threshold", "#"]),
    ("search images", ["search", "{img.h5}", "--image", "{imgs}", "-k", "#"]),
    ("search-gpu", ["search-gpu", "{emb.h5}", "--embeddings", "{q.npy}", "-k", "#", "--device", "cpu"]),
    ("search-shards", ["search-shards", "{emb.h5}", "{img.h5}", "--embeddings", "{q.npy}", "-k", "#"]),
    ("enroll", ["enroll", "{emb.h5}", "--embeddings", "{e.npy}", "--ids", "{ids.csv}", "--batch-size", "#"]),
    ("enroll h5", ["enroll", "{emb.h5}", "--embeddings", "{e.h5}"]),
    ("enroll images", ["enroll", "{img.h5}", "--images", "{imgs}", "--batch-size", "#"]),
    ("init", ["init", "@new.h5", "--model", "{v1.onnx}"]),
    ("init dim", ["init", "@new.h5", "--dim", "#", "--model-id", "x"]),
    ("upgrade", ["upgrade", "{img.h5}", "--model", "{v2.onnx}", "--report", "{report.json}"]),
    ("upgrade signed", ["upgrade", "{img.h5}", "--model", "{v2.onnx}", "--report", "{report.json}",
                        "--require-signed", "--sign-key", "{key}"]),
    ("check-compat", ["check-compat", "--embeddings", "{evalemb.h5}", "--target-far", "#", "--impostor-pairs", "#",
                      "--sign-key", "{key}"]),
    ("shadow", ["shadow", "{img.h5}", "--queries", "{imgs}", "--old", "v1", "--new", "v1", "-k", "#"]),
    ("backfill", ["backfill", "{img.h5}", "--status"]),
    ("import-encoder", ["import-encoder", "{v1.onnx}", "--preset", "arcface", "--out", "@imp.onnx", "--size", "#"]),
    ("import-dlib", ["import-dlib", "{dlib.csv}", "--store", "@dl.h5"]),
    ("export-model", ["export-model", "{v1.onnx}", "--out", "@m.onnx"]),
    ("export-store", ["export-store", "{emb.h5}", "--out", "@o.npz"]),
    ("train", ["train", "--data", "{imgs}", "--arch", "small", "--epochs", "1", "--dim", "#16",
               "--image-size", "#32", "--out", "@t.pt", "--threads", "1"]),
    ("train-adapter", ["train-adapter", "--old", "{v1.onnx}", "--new", "{v2.onnx}", "--data", "{imgs}",
                       "--out", "@a.onnx", "--epochs", "1", "--hidden", "#8", "--threads", "1"]),
    # (--epochs is not fuzzed: 10^23 epochs is a request to train that long, not a malformed input)
    ("train-compatible", ["train-compatible", "--old", "{v1.onnx}", "--data", "{imgs}", "--arch", "small",
                          "--dim", "#16", "--image-size", "#32", "--epochs", "1", "--out", "@tc.pt", "--threads", "1"]),
    # the output folder is the (non-empty, shared) image folder: refused before anything is built
    ("model set-path", ["model", "set-path", "{img.h5}", "v1", "{v1.onnx}"]),
    ("threshold calibrate", ["threshold", "calibrate", "{img.h5}", "--report", "{report.json}"]),
    ("threshold show", ["threshold", "show", "{emb.h5}"]),
    ("threshold set", ["threshold", "set", "{emb.h5}", "v1", "v1", "#0.5"]),
    ("sync", ["sync", "qdrant", "{emb.h5}", "--uri", "@qdrant", "--batch", "#100"]),
    ("data glyphs", ["data", "glyphs", "--out", "%imgs", "--identities", "#8", "--image-size", "#32"]),
    ("data fashion-mnist", ["data", "fashion-mnist", "--out", "@fm", "--root", "{imgs}", "--per-class", "#2"]),
]
FILE_MUTATIONS = ("missing", "folder", "empty", "truncated", "bitflip0", "bitflip1", "through-file")
CASE_SECONDS = 300  # a case still running then is a hang: recorded as a failure, the rest go on
JSON_MUTATIONS = 12  # wrong-type edits of a report, plus cut-off and non-UTF-8 text


def _slots(template: list[str]) -> list[str]:
    return [a[1:-1] for a in template if a.startswith("{") and a.endswith("}")]


def _mutate_file(src: Path, dst: Path, kind: str, rng: random.Random) -> Path:
    if kind == "missing":
        return dst.with_name("absent-" + dst.name)
    if kind == "folder":
        dst.mkdir()
        return dst
    if kind == "through-file":
        (dst.parent / "plain").write_text("x")
        return dst.parent / "plain" / dst.name
    if (src / "MANIFEST").is_file():  # a store (a directory): mutate its first row segment in a copy
        shutil.copytree(src, dst)
        _mutate_file(sorted(dst.glob("seg-*.h5"))[0], sorted(dst.glob("seg-*.h5"))[0], kind, rng)
        return dst
    if src.is_dir():  # image folders: mutate one image inside a copy
        shutil.copytree(src, dst)
        image = sorted(dst.rglob("*.png"))[0]
        _mutate_file(image, image, kind, rng)
        return dst
    data = bytearray(src.read_bytes())
    if kind == "empty":
        data = bytearray()
    elif kind == "truncated":
        data = data[: len(data) // 2]
    elif kind.startswith("bitflip"):
        for _ in range(8):
            pos = rng.randrange(len(data))
            data[pos] ^= 1 << rng.randrange(8)
    dst.write_bytes(bytes(data))
    return dst


def _mutate_json(src: Path, dst: Path, i: int, rng: random.Random) -> Path:
    text = src.read_text()
    if i == 0:
        dst.write_text(text[: len(text) // 3])
    elif i == 1:
        dst.write_bytes(b"\xff\xfe" + text.encode()[:100])
    else:
        report = json.loads(text)
        path = [rng.choice(sorted(report))]
        target = report
        while isinstance(target[path[-1]], dict) and target[path[-1]] and rng.random() < 0.6:
            target = target[path[-1]]
            path.append(rng.choice(sorted(target)))
        target[path[-1]] = rng.choice([None, [], {}, "x", 1e308, -1, True, [None], {"a": None}])
        dst.write_text(json.dumps(report))
    return dst


def build_cases(world: dict[str, Path], root: Path) -> list[dict]:
    """Every case: its own folder with fresh copies of the files its command reads."""
    rng = random.Random(SEED)
    cases = []

    def new_case(name: str, template: list[str], mutate: str | None, how, number: str | None,
                 under: Path = root) -> None:
        folder = under / f"c{len(cases):04d}"
        folder.mkdir(parents=True)
        args = []
        for arg in template:
            if arg.startswith("{"):
                slot = arg[1:-1]
                dst = folder / slot
                if slot == mutate:
                    args.append(str(how(world[slot], dst)))
                elif (world[slot] / "MANIFEST").is_file():  # a store: every case writes its own copy
                    shutil.copytree(world[slot], dst)
                    args.append(str(dst))
                elif world[slot].is_dir():
                    args.append(str(world[slot]))  # read-only inputs are shared, not copied
                else:
                    shutil.copy(world[slot], dst)
                    args.append(str(dst))
            elif arg.startswith("@"):
                args.append(str(folder / arg[1:]))
            elif arg.startswith("%"):
                args.append(str(world[arg[1:]]))
            elif arg.startswith("#"):
                args.append(number if number is not None else (arg[1:] or "2"))
            else:
                args.append(arg)
        cases.append({"name": name, "command": " ".join(template[:2]) if template[0] in GROUPS else template[0],
                      "mutation": mutate and f"{mutate}:{getattr(how, 'kind', '')}" or f"number {number}",
                      "args": args, "folder": str(folder), "lock": False, "readonly": under != root})

    for name, template in COMMANDS:
        for slot in _slots(template):
            for kind in FILE_MUTATIONS:
                how = (lambda k: (lambda s, d: _mutate_file(s, d, k, rng)))(kind)
                how.kind = kind
                new_case(name, template, slot, how, None)
            if slot.endswith(".json"):
                for i in range(JSON_MUTATIONS):
                    how = (lambda j: (lambda s, d: _mutate_json(s, d, j, rng)))(i)
                    how.kind = f"json{i}"
                    new_case(name, template, slot, how, None)
        if any(a.startswith("#") for a in template):
            for number in HUGE:
                new_case(name, template, None, None, number)
    for name, template in COMMANDS:  # a writer on a locked store: exit 3
        if name in LOCKING:
            new_case(name, template, None, None, None)
            cases[-1].update(lock=True, mutation="store locked by another writer")
    if readonly_ok():  # every command on a store in a read-only bind mount (EROFS from the kernel)
        for name, template in COMMANDS:
            if {"emb.h5", "img.h5"} & set(_slots(template)):
                new_case(name, template, None, None, None, under=root / "ro")
                cases[-1]["mutation"] = "store on a read-only file system"
    return cases


def readonly_ok() -> bool:
    """A user + mount namespace (as tests/test_reliability_env.py uses) can be made here."""
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True).returncode == 0


# ---------------------------------------------------------------------------- the worker
def _sha(path: Path) -> str:
    from cli_helpers import store_sha256

    return store_sha256(path) if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()


def _stores(case: dict) -> dict[str, str]:
    folder = Path(case["folder"])
    return {str(p): _sha(p) for p in folder.rglob("*.h5") if p.is_file() or (p / "MANIFEST").is_file()}


class _Hang(Exception):
    pass


def _hang(*_) -> None:
    raise _Hang(f"still running after {CASE_SECONDS} s")


def worker(cases_path: str, out_path: str, start: int) -> None:
    from typer.testing import CliRunner

    from cli.main import app
    from gallery.store.locking import WriterLock

    cases = json.loads(Path(cases_path).read_text())
    signal.signal(signal.SIGALRM, _hang)
    with open(out_path, "a") as out:
        for index in range(start, len(cases)):
            case = cases[index]
            out.write(json.dumps({"index": index, "started": True}) + "\n")
            out.flush()
            before = _stores(case)
            lock = None
            if case["lock"]:
                store = next(a for a in case["args"] if a.endswith((".h5",)) and Path(a).exists())
                lock = WriterLock(Path(store)).acquire()
            logging.root.handlers.clear()  # the CLI's basicConfig binds the stderr of this run
            began = time.monotonic()
            signal.alarm(CASE_SECONDS)  # raises _Hang inside the command: CliRunner records it
            try:
                result = CliRunner().invoke(app, case["args"])
            finally:
                signal.alarm(0)
                if lock is not None:
                    lock.release()
            exception = result.exception
            out.write(json.dumps({
                "index": index, "exit": result.exit_code, "stdout": result.stdout[-2000:],
                "traceback": any(t in result.stdout + result.stderr for t in ("Traceback", "Logging error")),
                "stderr": result.stderr[-2000:],
                "exception": None if exception is None or isinstance(exception, SystemExit) else repr(exception)[:200],
                "unchanged": _stores(case) == before, "seconds": round(time.monotonic() - began, 3),
            }) + "\n")
            out.flush()


def run_all(cases: list[dict], root: Path) -> list[dict]:
    (root / "cases.json").write_text(json.dumps(cases))
    out = root / "results.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    start, results = 0, {}
    while start < len(cases):
        command = [sys.executable, __file__, "--worker", str(root / "cases.json"), str(out), str(start)]
        ro = root / "cases" / "ro"
        if ro.is_dir():  # the worker sees that folder read-only; everything else as usual
            command = ["unshare", "-rm", "bash", "-c", f"mount --bind '{ro}' '{ro}' && "
                       f"mount -o remount,ro,bind '{ro}' && exec \"$@\"", "worker", *command]
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        for line in lines:
            if "exit" in line:
                results[line["index"]] = line
        started = max((line["index"] for line in lines), default=start - 1)
        if proc.returncode != 0 and started not in results:  # the worker died inside this case
            results[started] = {"index": started, "crash": proc.returncode, "stderr": proc.stderr[-2000:]}
        start = max(results) + 1 if results else len(cases)
    return [results[i] for i in range(len(cases))]


def problems(case: dict, result: dict) -> list[str]:
    if "crash" in result:
        return [f"worker died with {result['crash']}: {result['stderr'][-300:]}"]
    out = []
    code, command = result["exit"], case["command"]
    allowed = {0, 2} | ({1} if command in GATES else set()) | ({3} if command in WRITERS else set())
    if case["lock"]:
        allowed = {3} if command != "rollback" else {2, 3}
    if code not in allowed:
        out.append(f"exit {code}, allowed {sorted(allowed)}")
    if result["exception"]:
        out.append(f"exception {result['exception']}")
    if result["traceback"]:
        out.append("traceback printed")
    lines = result["stderr"].strip().splitlines()
    damage_report = command in ("verify", "backfill") and code == 1 and not lines
    if code != 0 and not damage_report and not (len(lines) == 1 and lines[0].startswith("error: ")):
        out.append(f"stderr is not one error line: {result['stderr'][:300]!r}")
    if (code != 0 or case.get("readonly")) and not result["unchanged"]:
        out.append("a store file changed")
    return out


@pytest.fixture(scope="module")
def fuzz_results(tmp_path_factory):
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("fuzz")
    (root / "world").mkdir()
    world = _world(root / "world")
    (root / "cases").mkdir()
    cases = build_cases(world, root / "cases")
    return cases, run_all(cases, root)


def test_every_command_is_fuzzed():
    import typer.main

    from cli.main import app

    group = typer.main.get_command(app)
    names = set()
    for name, command in group.commands.items():
        subs = getattr(command, "commands", None)
        names.update(f"{name} {s}" for s in subs) if subs else names.add(name)
    fuzzed = {" ".join(template[:2]) if template[0] in GROUPS else template[0] for _, template in COMMANDS}
    # alias remove: alias set's code path; serve: a long-running server whose request
    # validation is tests/test_serve.py's
    missing = sorted(names - fuzzed - {"alias remove", "serve"})
    assert not missing, f"commands without fuzz cases: {missing}"


def test_fuzz_every_command(fuzz_results):
    cases, results = fuzz_results
    failures = [f"{c['name']} [{c['mutation']}] {' '.join(c['args'][:6])}: {'; '.join(p)}"
                for c, r in zip(cases, results) if (p := problems(c, r))]
    assert len(results) == len(cases) > 250
    assert not failures, f"{len(failures)} of {len(cases)} fuzz cases failed:\n" + "\n".join(failures[:40])


if __name__ == "__main__":
    if sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))


# ---------------------------------------------------------------------------- the index sidecar
SIDECAR_EDITS = [("dead", -15), ("dead", 10 ** 9), ("count", "many"), ("rows", None), ("checksum", 7),
                 ("excluded", -1), ("kind", "lsh"), ("params", [])]


def _sidecar_store(root: Path, rows: int) -> Path:
    from cli_helpers import ok
    from gallery.store import ModelInfo, Store

    path = root / f"s{rows}.h5"
    with Store.create(path, ModelInfo(version="v1", dim=DIM, model_id="m")) as st:
        st.enroll(np.random.default_rng(rows).normal(size=(rows, DIM)).astype(np.float32),
                  [f"r{i}" for i in range(rows)])
    ok("reindex", path, "--index", "flat")
    return path


@pytest.mark.parametrize("key, value", SIDECAR_EDITS, ids=[f"{k}={v!r}" for k, v in SIDECAR_EDITS])
def test_edited_sidecar_record_is_rebuilt_not_trusted(tmp_path, key, value):
    """`dead: -15` in the sidecar JSON gave a traceback: every edited record is a rebuild."""
    from cli_helpers import run
    from gallery.store import Store

    store = _sidecar_store(tmp_path, 20)
    meta_path = store / "sidecar.index.json"
    meta = json.loads(meta_path.read_text())
    meta[key] = value
    meta_path.write_text(json.dumps(meta))
    np.save(tmp_path / "q.npy", np.random.default_rng(1).normal(size=(3, DIM)).astype(np.float32))
    result = run("search", store, "--embeddings", tmp_path / "q.npy", "-k", "5", "--json")
    assert result.exit_code == 0 and "Traceback" not in result.stdout + result.stderr, result.stderr
    with Store.open(store) as st:
        emb = st.embeddings()
    q = np.load(tmp_path / "q.npy")
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    expected = np.argsort(-(q @ emb.T), axis=1, kind="stable")[:, :5]
    hits = [[h["row"] for h in r["hits"]] for r in json.loads(result.stdout)]
    assert hits == expected.tolist()


def test_sidecar_of_a_bigger_store_never_returns_rows_past_the_store(tmp_path):
    """A sidecar copied from a 40-row store, its record forged to match a 20-row store:
    rows 20..39 are dropped as not this store's, never looked up (an IndexError before)."""
    from cli_helpers import run

    small, big = _sidecar_store(tmp_path, 20), _sidecar_store(tmp_path, 40)
    small_meta = json.loads((small / "sidecar.index.json").read_text())
    big_meta = json.loads((big / "sidecar.index.json").read_text())
    shutil.copy(big / big_meta["file"], small / big_meta["file"])  # the record names it, checksum and all
    (small / "sidecar.index.json").write_text(json.dumps({**big_meta, **{k: small_meta[k] for k in (
        "checksum", "rows", "chain", "excluded") if k in small_meta}}))
    np.save(tmp_path / "q.npy", np.random.default_rng(2).normal(size=(4, DIM)).astype(np.float32))
    result = run("search", small, "--embeddings", tmp_path / "q.npy", "-k", "30", "--json")
    assert result.exit_code == 0 and "Traceback" not in result.stdout + result.stderr, result.stderr
    rows = [h["row"] for r in json.loads(result.stdout) for h in r["hits"]]
    assert rows and max(rows) < 20
