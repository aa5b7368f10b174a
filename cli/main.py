"""Entry point of the `gallery` console script.

Every module in cli/commands defines `register(app)`; they are discovered here so
a new command group never edits this file. Modules import torch-based code
(`trainer`) lazily inside commands, so serving commands work without torch.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

import typer

from cli import commands
from cli.common import OneLineErrors

app = typer.Typer(
    name="gallery",
    help="Upgrade an embedding model without re-encoding the gallery.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion
    pretty_exceptions_enable=False,
    cls=OneLineErrors,
)

# `gallery --help` groups commands in these panels, in this order; every registered command
# must name one (tests/test_cli_vocabulary.py), so a new command is placed on purpose.
PANELS: dict[str, tuple[str, ...]] = {
    "Store": ("init", "enroll", "remove", "search", "info", "verify", "migrate", "compact", "reindex", "export",
              "export-store", "model"),
    "Train": ("data", "train", "train-compatible", "train-adapter", "export-model"),
    "Check": ("check-compat", "threshold"),
    "Rollout": ("upgrade", "shadow", "backfill", "rollback", "history", "alias", "prune"),
    "Faces": ("import-encoder", "import-dlib"),
    "Scale": ("serve", "sync", "search-shards", "search-gpu", "export-serving"),
}
PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}


def _version(value: bool) -> None:
    if value:
        from gallery import __version__

        typer.echo(f"gallery {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    no_fsync: bool = typer.Option(False, "--no-fsync", help="Benchmarks only: skip fsync (a power loss can "
                                  "lose acknowledged commits)."),
) -> None:
    if no_fsync:
        import os
        os.environ["GALLERY_NO_FSYNC"] = "1"  # read by gallery.store.manifest.durable_default
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


for _module in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
    importlib.import_module(f"{commands.__name__}.{_module.name}").register(app)

_ORDER = {name: n for n, name in enumerate(name for names in PANELS.values() for name in names)}
for _info in (*app.registered_commands, *app.registered_groups):
    _info.rich_help_panel = PANEL_OF.get(_info.name or "", "Other")
app.registered_commands.sort(key=lambda c: _ORDER.get(c.name or "", len(_ORDER)))
app.registered_groups.sort(key=lambda g: _ORDER.get(g.name or "", len(_ORDER)))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
