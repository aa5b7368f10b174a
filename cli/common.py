"""Shared CLI plumbing: error -> exit-code mapping and result rendering."""

from __future__ import annotations

import errno
import functools
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import typer
from typer.core import TyperGroup

try:  # typer >= 0.2x carries its own copy of click
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older typer on the real click
    from click.exceptions import UsageError
from rich.console import Console
from rich.table import Table

from gallery.errors import GalleryError
from gallery.index import FLAT_MAX, IVF_MAX, IVFSQ8_MAX, KINDS

KIND_CHOICES = " | ".join(KINDS)  # --index choices come from the index module
DEFAULTS_HELP = f"flat to {FLAT_MAX:,} rows, ivf to {IVF_MAX:,}, ivfsq8 to {IVFSQ8_MAX:,}, ivfpq beyond"

# Every command that takes a store takes it as its first positional argument, defaulting to
# $GALLERY_STORE when omitted (tests/test_cli_vocabulary.py checks every registered command).
STORE_ARG = typer.Argument(..., envvar="GALLERY_STORE", show_envvar=False, help="Store (a directory; default: $GALLERY_STORE).")
JSON_FLAG = typer.Option(False, "--json", help="Print the result as JSON.")
# Face photos (gallery.faces via gallery.ingest): detect + align with YuNet.
DETECT = typer.Option(None, "--detect/--no-detect", help="Face photos: detect and align faces with YuNet "
                      "(\\[faces] extra). Default: on when the model declares aligned face input.")
DETECTOR = typer.Option(None, "--detector", help="YuNet ONNX for face detection (default: $GALLERY_YUNET_MODEL).")

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


# OS errors a command can meet on its inputs (2: a path the user gave cannot be used) or
# its environment (1: the disk filled or failed during the command).
_OS_EXIT = {errno.EACCES: 2, errno.EPERM: 2, errno.ENOENT: 2, errno.ENOTDIR: 2, errno.EISDIR: 2,
            errno.ELOOP: 2, errno.ENAMETOOLONG: 2, errno.EROFS: 2,
            errno.ENOSPC: 1, errno.EDQUOT: 1, errno.EFBIG: 1, errno.EIO: 1}


def handle_errors(func: F) -> F:
    """Turn library errors into one clear line on stderr and the error's exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GalleryError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            code = _OS_EXIT.get(exc.errno)
            if code is None:
                raise  # not an input or environment condition: a bug, keep its traceback
            where = f": {exc.filename}" if exc.filename else ""
            err_console.print(f"[bold red]error:[/] {exc.strerror or exc}{where}", highlight=False, soft_wrap=True)
            raise typer.Exit(code) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def _usage_errors_as_one_line() -> Iterator[None]:
    try:
        yield
    except UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `gallery CMD` alone: its help, as before
            raise
        message = " ".join(exc.format_message().split())
        command = f"{exc.ctx.command_path}: " if exc.ctx is not None else ""
        err_console.print(f"[bold red]error:[/] {command}{message}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None


class OneLineErrors(TyperGroup):
    """Usage errors (unknown option, `--dim 4e9`, a missing argument) as one `error:` line,
    exit 2, like every other bad input; click's own form is a multi-line box."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _usage_errors_as_one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _usage_errors_as_one_line():
            return super().invoke(ctx)


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
    $GALLERY_STORE: the store and the remaining positional values, named by `names`.

    A last name ending in "..." takes one or more values (`remove [STORE] ID...`). There the
    count cannot tell whether STORE was given, so with $GALLERY_STORE set the first value is the
    store only when it is an existing path; otherwise it is an id like the others."""
    import os

    args = list(args)
    variadic = bool(names) and names[-1].endswith("...")
    env = os.environ.get("GALLERY_STORE")

    def fits(n: int) -> bool:
        return n >= len(names) if variadic else n == len(names)

    if store_option is not None and fits(len(args)):
        return Path(store_option), args
    if store_option is None and fits(len(args) - 1) and not (variadic and env and not Path(args[0]).exists()):
        return Path(args[0]), args[1:]
    if store_option is None and fits(len(args)) and env:
        return Path(env), args
    from gallery.errors import BadInput

    usage = " ".join(["STORE", *names])
    raise BadInput(f"expected {usage} (STORE may come from --store or $GALLERY_STORE), got {len(args)} value(s)")
