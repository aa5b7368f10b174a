"""Shared CLI plumbing: error -> exit-code mapping and result rendering."""

from __future__ import annotations

import functools
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from gallery.errors import GalleryError
from gallery.index import FLAT_MAX, IVF_MAX, IVFSQ8_MAX, KINDS

KIND_CHOICES = " | ".join(KINDS)  # --index choices come from the index module
DEFAULTS_HELP = f"flat to {FLAT_MAX:,} rows, ivf to {IVF_MAX:,}, ivfsq8 to {IVFSQ8_MAX:,}, ivfpq beyond"

# Every command that takes a store takes it as its first positional argument, defaulting to
# $GALLERY_STORE when omitted (tests/test_cli_vocabulary.py checks every registered command).
STORE_ARG = typer.Argument(..., envvar="GALLERY_STORE", show_envvar=False, help="Store file (default: $GALLERY_STORE).")
JSON_FLAG = typer.Option(False, "--json", help="Print the result as JSON.")
# Face photos (gallery.faces via gallery.ingest): detect + align with YuNet.
DETECT = typer.Option(None, "--detect/--no-detect", help="Face photos: detect and align faces with YuNet "
                      "(\\[faces] extra). Default: on when the model declares aligned face input.")
DETECTOR = typer.Option(None, "--detector", help="YuNet ONNX for face detection (default: $GALLERY_YUNET_MODEL).")

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Turn library errors into one clear line on stderr and the error's exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GalleryError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def emit_json(data: Any, path: Path | None = None) -> None:
    """Write JSON to a file, or to stdout when path is None or '-'."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    if path is None or str(path) == "-":
        sys.stdout.write(text + "\n")
    else:
        Path(path).write_text(text + "\n")


def render_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    console.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def providers_list(providers: str | None) -> list[str] | None:
    """--providers "A,B" -> ["A", "B"] (None when not given)."""
    return [p.strip() for p in providers.split(",") if p.strip()] if providers else None


def emit(as_json: bool, result: Any, message: Any) -> None:
    """Render a command's result: the JSON document, or a one-line human summary."""
    if as_json:
        emit_json(result)
    else:
        console.print(message)


@contextmanager
def progress_bar(label: str, quiet: bool) -> Iterator[tuple[Any, Any]]:
    """(on_total, advance) callbacks driving one transient Rich bar on stderr; (None, None) when
    quiet or stderr is not a terminal (logs and pipes get no bar residue)."""
    if quiet or not err_console.is_terminal:
        yield None, None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield (lambda n: bar.update(task, total=n)), (lambda n: bar.advance(task, n))


STORE_OPTION = typer.Option(None, "--store", help="Store file (the older spelling of the positional STORE).")


def split_store(args: Sequence[str], store_option: Path | None, names: Sequence[str]) -> tuple[Path, list[str]]:
    """`STORE NAME...`, or `NAME... --store STORE` (older spelling), or `NAME...` with
    $GALLERY_STORE: the store and the remaining positional values, named by `names`."""
    import os

    args = list(args)
    if store_option is not None and len(args) == len(names):
        return Path(store_option), args
    if store_option is None and len(args) == len(names) + 1:
        return Path(args[0]), args[1:]
    if store_option is None and len(args) == len(names) and os.environ.get("GALLERY_STORE"):
        return Path(os.environ["GALLERY_STORE"]), args
    from gallery.errors import BadInput

    usage = " ".join(["STORE", *names])
    raise BadInput(f"expected {usage} (STORE may come from --store or $GALLERY_STORE), got {len(args)} value(s)")
