"""One CLI vocabulary (issue 16, item 7), asserted over every registered command: the store is
the first positional (after `sync`'s engine; default $GALLERY_STORE, also for `[STORE] VALUE...` commands such
as `remove`, `threshold set`, `model set-path`; `--store` kept where it existed), `--json` is a
flag, a model version is chosen with `--model-version` (older names are aliases of it), `-k`
is `--top-k`, every command sits in a help panel, `gallery --version` and completion exist."""

from __future__ import annotations

import json

import typer
from typer.core import TyperArgument as Argument, TyperGroup as Group, TyperOption as Option

from cli.main import PANELS, app
from cli_helpers import ok, run

VERSION_ALIASES = {"--version", "--query-model", "--to"}


def _commands():
    """(path, click command) for every leaf command."""
    root = typer.main.get_command(app)
    out = []

    def walk(cmd, path: tuple[str, ...]) -> None:
        if isinstance(cmd, Group):
            for name, sub in cmd.commands.items():
                walk(sub, (*path, name))
        else:
            out.append((" ".join(path), cmd))

    walk(root, ())
    return out


def test_the_vocabulary_over_every_registered_command():
    problems = []
    commands = _commands()
    assert len(commands) > 30
    for path, cmd in commands:
        params = {p.name: p for p in cmd.params}
        positional = [p for p in cmd.params if isinstance(p, Argument)]
        for p in cmd.params:
            opts = set(getattr(p, "opts", [])) | set(getattr(p, "secondary_opts", []))
            if isinstance(p, Option) and "--json" in opts and not p.is_flag:
                problems.append(f"{path}: --json takes a value")
            if isinstance(p, Option) and opts & VERSION_ALIASES and "--model-version" not in opts:
                problems.append(f"{path}: {sorted(opts & VERSION_ALIASES)} without --model-version")
            if isinstance(p, Option) and "-k" in opts and "--top-k" not in opts:
                problems.append(f"{path}: -k without --top-k")
        takes_store = "store" in params or any("[STORE]" in (a.metavar or "") or _names_one_store(a)
                                               for a in positional)
        if not takes_store:
            continue
        for i, a in enumerate(positional):
            # click fills positionals in order: a $GALLERY_STORE default before another required
            # positional can never be used (`remove ID` would take ID for the store)
            if a.envvar == "GALLERY_STORE" and any(b.required for b in positional[i + 1:]):
                problems.append(f"{path}: {a.name} defaults to $GALLERY_STORE but positionals follow it")
            if _names_one_store(a) and a.name != "store" and a.envvar != "GALLERY_STORE":
                problems.append(f"{path}: the store ({a.name}) does not default to $GALLERY_STORE")
        first = positional[0] if positional else None
        if "store" in params and isinstance(params["store"], Argument):
            # first, or right after a subcommand-like choice (`gallery sync milvus STORE`)
            if params["store"] not in positional[:1] + [a for a in positional[1:2] if first.name == "engine"]:
                problems.append(f"{path}: the store is not the first positional")
            if params["store"].envvar != "GALLERY_STORE":
                problems.append(f"{path}: the store does not default to $GALLERY_STORE")
        elif not (first is not None and (first.metavar or "").startswith("[STORE]")
                  and isinstance(params.get("store"), Option)) and not _names_one_store(first):
            problems.append(f"{path}: the store is neither positional nor [STORE] with --store")
    assert problems == []


def _names_one_store(arg) -> bool:
    """A one-value positional whose help says it is a store (`export SOURCE`, `export-store SOURCE`)."""
    return arg.nargs == 1 and "store" in (arg.help or "").lower()


def test_every_store_then_values_command_takes_its_store_from_the_environment(tmp_path, monkeypatch):
    """Every `[STORE] VALUE...` command: without $GALLERY_STORE, omitting STORE is a usage error
    naming the expected values; with it set, the same words are accepted as the values."""
    checked = []
    for path, cmd in _commands():
        store_list = [p for p in cmd.params if isinstance(p, Argument) and (p.metavar or "").startswith("[STORE]")]
        if not store_list:
            continue
        values = [_dummy(name) for name in store_list[0].metavar.split()[1:]]
        monkeypatch.delenv("GALLERY_STORE", raising=False)
        if values:
            bare = run(*path.split(), *values)
            assert bare.exit_code == 2 and "expected STORE" in bare.stderr, (path, bare.stderr)
        monkeypatch.setenv("GALLERY_STORE", str(tmp_path / "env-store.h5"))
        env = run(*path.split(), *values)
        assert "expected STORE" not in env.stderr, (path, env.stderr)
        checked.append(path)
    assert {"remove", "threshold set", "model set-path", "alias set"} <= set(checked), checked


def _dummy(name: str) -> str:
    return {"VALUE": "0.5", "ENCODINGS": "enc.pkl"}.get(name.rstrip("."), "x")


def test_remove_threshold_set_and_model_set_path_from_the_environment(tmp_path, monkeypatch):
    """The three commands with values after STORE act on $GALLERY_STORE when STORE is omitted,
    exactly as with STORE given (the store is inspected after each)."""
    import shutil

    import numpy as np

    store = tmp_path / "g.h5"
    ok("init", store, "--dim", "4", "--model-id", "m", "--model-version", "base")
    np.save(tmp_path / "e.npy", np.eye(4, dtype=np.float32)[:3])
    (tmp_path / "ids.txt").write_text("a\nb\nc\n")
    ok("enroll", store, "--embeddings", tmp_path / "e.npy", "--ids", tmp_path / "ids.txt")
    monkeypatch.setenv("GALLERY_STORE", str(store))
    assert ok("remove", "a", "b", "--json")["removed"] == 2  # both words are ids, not a store
    assert ok("info", "--json")["live"] == 1
    assert ok("remove", store, "c", "--json")["removed"] == 1  # an existing path first: the store
    assert ok("threshold", "set", "base", "base", "0.3", "--json")["threshold"] == 0.3
    shown = ok("threshold", "show", store, "--json")
    assert [p["threshold"] for p in shown["pairs"] if p["query"] == p["rows"] == "base"] == [0.3]
    assert run("threshold", "set", "base", "base", "high").exit_code == 2

    pytest = __import__("pytest")
    pytest.importorskip("torch")
    from tiny_models import make_onnx_encoder

    make_onnx_encoder(tmp_path / "v1.onnx", seed=0)
    model_store = tmp_path / "m" / "g.h5"
    model_store.parent.mkdir()
    ok("init", model_store, "--model", tmp_path / "v1.onnx")
    version = ok("info", model_store, "--json")["active_model"]
    shutil.copy(tmp_path / "v1.onnx", tmp_path / "moved.onnx")
    monkeypatch.setenv("GALLERY_STORE", str(model_store))
    done = ok("model", "set-path", version, tmp_path / "moved.onnx", "--json")
    assert done["path"] == str(tmp_path / "moved.onnx")


def test_every_command_sits_in_a_named_panel():
    placed = {name for names in PANELS.values() for name in names}
    registered = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    assert registered <= placed, sorted(registered - placed)
    assert list(PANELS) == ["Store", "Train", "Check", "Rollout", "Faces", "Scale"]
    text = run("--help").stdout
    for panel in PANELS:
        assert f"─ {panel} " in text


def test_version_completion_and_aliases(tmp_path, monkeypatch):
    from gallery import __version__

    assert run("--version").stdout.strip() == f"gallery {__version__}"
    assert "--install-completion" in run("--help").stdout
    store = tmp_path / "g.h5"
    ok("init", store, "--dim", "4", "--model-id", "m", "--model-version", "base")
    monkeypatch.setenv("GALLERY_STORE", str(store))
    assert ok("info", "--json")["active_model"] == "base"  # the store from $GALLERY_STORE
    ok("alias", "set", "prod", "base")  # [STORE] omitted: $GALLERY_STORE
    monkeypatch.delenv("GALLERY_STORE")
    assert ok("alias", "list", store, "--json") == {"prod": "base"}
    assert ok("alias", "list", "--store", store, "--json") == {"prod": "base"}  # the older spelling
    import numpy as np

    np.save(tmp_path / "q.npy", np.eye(4, dtype=np.float32)[:1])
    ok("enroll", store, "--embeddings", tmp_path / "q.npy", "--ids", _ids(tmp_path))
    for flag in ("--top-k", "-k", "--k"):
        records = ok("search", store, "--embeddings", tmp_path / "q.npy", flag, "1", "--model-version", "prod",
                     "--json")
        assert len(records[0]["hits"]) == 1 and records[0]["query_model"] == "base"
    bad = run("alias", "set", "only-one")
    assert bad.exit_code == 2 and "expected STORE NAME VERSION" in bad.stderr


def _ids(tmp_path):
    (tmp_path / "ids.txt").write_text("a\n")
    return tmp_path / "ids.txt"


def test_check_compat_json_is_a_flag_and_the_old_spelling_warns(tmp_path):
    import pytest

    pytest.importorskip("torch")
    from tiny_models import make_onnx_encoder, write_digit_folder

    make_onnx_encoder(tmp_path / "a.onnx", seed=0)
    make_onnx_encoder(tmp_path / "b.onnx", seed=1)
    write_digit_folder(tmp_path / "eval", n_per_class=2, seed=0)
    args = ["check-compat", "--old", tmp_path / "a.onnx", "--new", tmp_path / "b.onnx", "--data", tmp_path / "eval",
            "--impostor-pairs", "100"]
    printed = run(*args, "--json")
    assert printed.exit_code == 0 and json.loads(printed.stdout)["schema_version"]
    written = run(*args, "--out", tmp_path / "r.json")
    assert written.exit_code == 0 and json.loads((tmp_path / "r.json").read_text())["schema_version"]
    old = run(*args, "--json", tmp_path / "old.json")
    assert old.exit_code == 0 and (tmp_path / "old.json").is_file()
    assert "`--json PATH` is deprecated: use `--out PATH`" in old.stderr
