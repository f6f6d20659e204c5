"""Command-line interface: a thin Typer layer over the library functions of the same names."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from pmmrec import __version__
from pmmrec.errors import PmmrecError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="pmmrec",
    help="Transferable, ID-free sequential recommendation (PMMRec) with per-component artefacts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Build, import and check datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def reports_errors(command: F) -> F:
    """Turn a PmmrecError into a one-line message on stderr and exit status 1, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except PmmrecError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(code=1) from None

    return wrapper  # type: ignore[return-value]


@app.command("version")
def version() -> None:
    """Print the pmmrec version."""
    typer.echo(__version__)


# --- data commands -------------------------------------------------------------------------


def main() -> None:
    """Entry point of the `pmmrec` console script."""
    app()
