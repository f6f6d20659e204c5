"""How a `pmmrec.api` function appears on the command line, declared on the function itself.

`@command` registers an api function as the command of its name (`data_movielens` -> `pmmrec data movielens`) and
says how its result is shown; `Annotated[type, Opt(...)]` / `Arg(...)` on a parameter make it an option or an
argument with its help text. `pmmrec.cli` builds every command from this table, so a new command is one function in
`pmmrec/api.py` (or `api_use.py`, `api_data.py`) and nothing else. Plain data and no heavy import (no torch, typer or
pydantic): `pmmrec --help` reads the table in a few milliseconds.

Conventions the builder applies to every command:
- a parameter without `Opt` or `Arg` is Python-only (not on the command line);
- a parameter `progress: bool = True` is the `--quiet` flag (no progress bars);
- a parameter `device` is `--device`, with one help text (`DEVICE_HELP`);
- `json=True` adds `--json` (print the result as JSON instead of text); `json="PARAMETER"` passes "-" (standard
  output) to that parameter instead, for a function that writes a richer document than its return value;
- `options="training" | "serve" | "create"`: the function's `**options` are the option group generated from that
  config (training: `TRAIN_OPTIONS`; serve: `SERVE_FLAGS`; create: `CreateOptions`);
- a parameter declared `hidden=True` is an old spelling kept for one release; the function itself maps it onto the
  new one and says so (`renamed`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda:LOCAL_RANK when CUDA is available, else cpu)."
QUIET_HELP = "No progress bars."
JSON_HELP = "Print the result as JSON (on standard output, nothing else there) instead of text."


@dataclass(frozen=True)
class Opt:
    """A command-line option. help: what it does and, when its default is None, what decides the value
    ("default: ..."); flag: its spelling (default `--name-with-dashes`; `--a/--b` for a switch); cli: its
    command-line type where the Python annotation is wider (a path-or-object parameter is `str`); convert: the
    command-line value to the Python one; metavar: the value's placeholder in help; hidden: an old spelling."""

    help: str
    flag: str | None = None
    cli: Any = None
    convert: Callable[[Any], Any] | None = None
    metavar: str | None = None
    hidden: bool = False
    takes_following: bool = False  # `--k 10 20 50`: plain values after the option are more of its values


@dataclass(frozen=True)
class Arg:
    """A positional command-line argument (metavar: its name in the usage line)."""

    help: str
    metavar: str
    cli: Any = None
    variadic: bool = False  # one or more values


@dataclass(frozen=True)
class CommandSpec:
    """One command: its words (`("data", "movielens")`), its api function and how its result is shown."""

    words: tuple[str, ...]
    function: Callable[..., Any]
    show: str | Callable[[Any, dict[str, Any]], str | None] | None
    json: bool | str
    options: str | None

    @property
    def name(self) -> str:
        return " ".join(self.words)

    @property
    def summary(self) -> str:
        """The first paragraph of the function's docstring, on one line (the command's help)."""
        doc = (self.function.__doc__ or "").strip().split("\n\n")[0]
        return " ".join(doc.split())


# Words that group commands, with their help; an api function `GROUP_rest` is the command `pmmrec GROUP rest`.
GROUPS: dict[str, str] = {"data": "Build, import and check datasets."}
COMMANDS: dict[str, CommandSpec] = {}  # by api function name, in definition order


def command(
    *,
    show: str | Callable[[Any, dict[str, Any]], str | None] | None = None,
    json: bool | str = False,
    options: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register an api function as the command of its name. show: a format string (the arguments by name and
    `result`) or a function (result, arguments) -> text; None prints nothing."""

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        group, _, rest = function.__name__.partition("_")
        words = (group, rest.replace("_", "-")) if group in GROUPS and rest else (function.__name__.replace("_", "-"),)
        COMMANDS[function.__name__] = CommandSpec(words, function, show, json, options)
        return function

    return register


class RenamedWarning(FutureWarning):
    """An old spelling of an option or parameter was used; it keeps working for one release."""


def renamed(old: str, new: str) -> None:
    """Say once, in one line, that `old` is now `new` (the command line shows it as a `note:`)."""
    warnings.warn(f"{old} is renamed {new}; the old name goes in the next release", RenamedWarning, stacklevel=3)


PathLike = str | os.PathLike[str]
# Parameters many commands share, with one help text each.
DataDir = Annotated[PathLike, Opt("Dataset folder (users.tsv, items.tsv, dataset.json).", cli=Path)]
ModelRef = Annotated[
    Any, Opt("Assembled model: folder or hub:ORG/NAME[@REV] (a component: `pmmrec assemble` it).", cli=str)
]
Overwrite = Annotated[bool, Opt("Replace an existing output folder.")]
Device = Annotated[str | None, Opt(DEVICE_HELP)]


def lazy(module: str, name: str) -> Any:
    """`module.name`, imported when a command's result is shown (so that the api modules stay light to import)."""
    import importlib

    return getattr(importlib.import_module(module), name)
