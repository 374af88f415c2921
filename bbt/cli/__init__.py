"""The ``bbt`` command line. Each sub-command lives in its own module and registers itself."""

from __future__ import annotations

import typer

from bbt._version import __version__
from bbt.cli import _compare, _mock, _pretrain, _registry, _serve, _tune

app = typer.Typer(
    name="bbt",
    help="Black-Box Tuning of soft prompts against a language model served as an API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"bbt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """Black-Box Tuning (Sun et al., ICML 2022) for language models behind an API."""


_tune.register(app)
_serve.register(app)
_mock.register(app)
_compare.register(app)
_pretrain.register(app)
_registry.register(app)


def main() -> None:
    app()
