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

app = typer.Typer(
    name="gallery",
    help="Upgrade an embedding model without re-encoding the gallery.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


for _module in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
    importlib.import_module(f"{commands.__name__}.{_module.name}").register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
