"""Command-line interface: every command is built from the `pmmrec.api` function of the same name.

The api functions declare themselves commands (`pmmrec.commands`: `@command`, `Opt`, `Arg`); this module turns a
declaration into a Typer command that parses the options, calls the function and prints its result, and nothing
else happens here. Commands are built only when one is run or its help is asked for: `pmmrec --help` lists them from
the table (names and first docstring lines) without importing torch. Option groups that a config describes are
generated from it (`pmmrec.cli_options`): `pretrain` / `finetune` from the training config, `serve` from
`ServeOptions`, `init` from `CreateOptions`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
import sys
import typing
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from typer.core import TyperCommand, TyperGroup

from pmmrec import api
from pmmrec import cli_options as opt
from pmmrec.commands import (
    COMMANDS,
    DEVICE_HELP,
    GROUPS,
    JSON_HELP,
    QUIET_HELP,
    Arg,
    CommandSpec,
    Opt,
    RenamedWarning,
)
from pmmrec.errors import PmmrecWarning

CONTEXT = "pmmrec_context"  # the Typer context parameter of every built command
AS_JSON = "pmmrec_as_json"  # the generated --json flag
QUIET = "pmmrec_quiet"  # the --quiet flag standing for `progress=False`


class Command(TyperCommand):
    """A built command: its usage line names arguments as written (`KIND`, not `{KIND}`)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [re.sub(r"^\{(.*)\}((?:\.\.\.)?)$", r"\1\2", piece) for piece in super().collect_usage_pieces(ctx)]


class LazyGroup(TyperGroup):
    """A group whose commands are built from the table only when one is run or its help shown (click's lazy-group
    pattern); its own help lists the table's names and one-line summaries."""

    def __init__(self, *, words: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.words = words
        self._built: dict[str, Any] = {}

    def _entries(self) -> dict[str, str]:
        """Name -> summary of this group's commands and subgroups, in the table's order."""
        depth = len(self.words)
        entries: dict[str, str] = {}
        for spec in COMMANDS.values():
            if spec.words[:depth] != self.words or len(spec.words) <= depth:
                continue
            word = spec.words[depth]
            if word not in entries:
                entries[word] = GROUPS[word] if len(spec.words) > depth + 1 else spec.summary
        return entries

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self._entries())

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self._built and cmd_name in self._entries():
            words = (*self.words, cmd_name)
            spec = next((spec for spec in COMMANDS.values() if spec.words == words), None)
            self._built[cmd_name] = build_command(spec) if spec is not None else self._subgroup(words)
        return self._built.get(cmd_name)

    def _subgroup(self, words: tuple[str, ...]) -> LazyGroup:
        return LazyGroup(
            words=words, name=words[-1], help=GROUPS[words[-1]], no_args_is_help=True, rich_markup_mode=None
        )

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = list(self._entries().items())
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


app = typer.Typer(
    name="pmmrec",
    cls=LazyGroup,
    help="Transferable, ID-free sequential recommendation (PMMRec) with per-component artefacts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: flags read as flags, every default shown, brackets printed as written
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(api.version())
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the pmmrec version and exit."),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an error instead of one line (PMMREC_DEBUG=1).")
    ] = False,
    max_memory: Annotated[
        str | None,
        typer.Option(
            "--max-memory",
            help="Memory pmmrec may plan to use (e.g. 8G), instead of what the machine has available "
            "(PMMREC_MAX_MEMORY); configurations estimated above it are refused before anything is allocated "
            "(default: what the machine has available).",
        ),
    ] = None,
) -> None:
    """Transferable, ID-free sequential recommendation (PMMRec) with per-component artefacts."""
    ctx.call_on_close(opt.apply_global_options(debug=debug, max_memory=max_memory))


# ---- building a command from its api function -------------------------------------------------------------------


def build_command(spec: CommandSpec) -> Any:
    """The Typer (click) command of one api function: its options, arguments and the call."""
    parameters, following = command_parameters(spec)
    function = spec.function
    accepted = inspect.signature(function).parameters

    @opt.reports_errors
    def callback(**values: Any) -> None:
        ctx = values.pop(CONTEXT)
        as_json = values.pop(AS_JSON, False)
        arguments = _python_arguments(spec, values, accepted)
        if following is not None:
            arguments[following] = [*arguments[following], *_following_values(ctx, following)]
        elif ctx.args:
            ctx.fail(f"unexpected extra argument(s): {' '.join(ctx.args)}")
        if as_json and isinstance(spec.json, str):
            arguments[spec.json] = "-"
        with _warnings_as_lines():
            result = function(**arguments)
        if opt.is_main_process():
            _show(spec, result, arguments, as_json)

    callback.__dict__["__signature__"] = inspect.Signature(parameters)  # what Typer reads the options from
    callback.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    one = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)
    help_text = spec.summary
    context = {"allow_extra_args": True, "allow_interspersed_args": True}
    one.command(spec.words[-1], help=help_text, short_help=help_text, cls=Command, context_settings=context)(callback)
    return typer.main.get_command(one)


def command_parameters(spec: CommandSpec) -> tuple[list[inspect.Parameter], str | None]:
    """The command-line parameters of an api function, and the option that takes the plain values following it."""
    hints = typing.get_type_hints(spec.function, include_extras=True)
    parameters = [_keyword(CONTEXT, typer.Context)]
    following = None
    for name, parameter in inspect.signature(spec.function).parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            assert spec.options is not None, f"{spec.name}: **{name} needs options= in @command"
            parameters += opt.option_group(spec.options, spec.function.__name__)
            continue
        if name == spec.json:
            continue
        marker = _marker(hints.get(name))
        if name == "progress":
            parameters.append(_keyword(QUIET, Annotated[bool, typer.Option("--quiet", help=QUIET_HELP)], False))
        elif marker is not None:
            parameters.append(_cli_parameter(spec, name, parameter, hints[name], marker))
            if isinstance(marker, Opt) and marker.takes_following:
                following = name
        elif parameter.default is inspect.Parameter.empty:
            raise TypeError(f"{spec.name}: parameter {name} is required but has no Opt or Arg")
    if spec.json:
        parameters.append(_keyword(AS_JSON, Annotated[bool, typer.Option("--json", help=JSON_HELP)], False))
    return parameters, following


def _keyword(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _marker(hint: Any) -> Opt | Arg | None:
    return next((meta for meta in getattr(hint, "__metadata__", ()) if isinstance(meta, Opt | Arg)), None)


def _cli_parameter(spec: CommandSpec, name: str, parameter: inspect.Parameter, hint: Any, marker: Opt | Arg) -> Any:
    """One option or argument: its command-line type, default and help."""
    default = parameter.default
    cli = marker.cli if marker.cli is not None else _command_line_type(spec, name, get_args(hint)[0])
    optional = _is_optional(cli)
    if default is None and not optional:
        cli, optional = cli | None, True
    if default is inspect.Parameter.empty:
        default = None if optional else inspect.Parameter.empty
    elif isinstance(default, tuple):
        default = list(default)
    if isinstance(marker, Arg):
        info = typer.Argument(help=marker.help, metavar=marker.metavar, show_default=False)
        return _keyword(name, Annotated[cli, info], default)
    decls = [marker.flag] if marker.flag else ["--" + name.replace("_", "-")]
    if cli is bool and default is True and "/" not in decls[0]:
        decls = [f"{decls[0]}/--no-{decls[0][2:]}"]
    help_text = DEVICE_HELP if name == "device" else marker.help
    info = typer.Option(*decls, help=help_text, metavar=marker.metavar, hidden=marker.hidden)
    return _keyword(name, Annotated[cli, info], default)


def _is_optional(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, UnionType) and type(None) in get_args(annotation)


def _command_line_type(spec: CommandSpec, name: str, annotation: Any) -> Any:
    """The command-line type of a Python annotation: X | None stays optional, Sequence[X] is list[X]; anything
    Typer cannot parse needs `Opt(cli=...)`."""
    optional = _is_optional(annotation)
    base = annotation
    if optional:
        (base,) = [arg for arg in get_args(annotation) if arg is not type(None)]
    if get_origin(base) in (Sequence, list):
        base = list[get_args(base)[0]]  # type: ignore[misc]
    elif not (base in (str, int, float, bool, Path) or get_origin(base) is Literal):
        raise TypeError(f"{spec.name}: parameter {name}: annotation {annotation} needs Opt(cli=...)")
    return base | None if optional else base


def _python_arguments(spec: CommandSpec, values: dict[str, Any], accepted: Any) -> dict[str, Any]:
    """The api function's keyword arguments from the parsed command line."""
    hints = typing.get_type_hints(spec.function, include_extras=True)
    arguments: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for name, value in values.items():
        if name == QUIET:
            arguments["progress"] = not value
        elif name in accepted and accepted[name].kind is not inspect.Parameter.VAR_KEYWORD:
            marker = _marker(hints.get(name))
            convert = marker.convert if isinstance(marker, Opt) else None
            arguments[name] = convert(value) if convert is not None and value is not None else value
        else:
            options[name] = opt.plain(value)
    return {**arguments, **options}


def _following_values(ctx: Any, name: str) -> list[int]:
    """Plain values after an option that takes them (`--k 10 20 50`); refused unless that option was given."""
    if not ctx.args:
        return []
    source = ctx.get_parameter_source(name)
    if source is None or source.name != "COMMANDLINE" or not all(arg.lstrip("-").isdigit() for arg in ctx.args):
        ctx.fail(f"unexpected extra argument(s): {' '.join(ctx.args)}")
    return [int(arg) for arg in ctx.args]


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """pmmrec's own warnings as one line each on standard error: `note:` for a renamed option, `warning:` else."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", RenamedWarning)
        original = warnings.showwarning

        def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
            if issubclass(category, RenamedWarning):
                typer.echo(f"note: {message}", err=True)
            elif issubclass(category, PmmrecWarning):
                typer.secho(f"warning: {' '.join(str(message).split())}", err=True, fg=typer.colors.YELLOW)
            else:
                original(message, category, *args, **kwargs)

        warnings.showwarning = show
        yield


def _show(spec: CommandSpec, result: Any, arguments: dict[str, Any], as_json: bool) -> None:
    """Print a command's result: JSON with --json, else its text (`warning:` lines on standard error)."""
    if as_json:
        if spec.json is True:
            typer.echo(json.dumps(_jsonable(result), indent=2, ensure_ascii=False))
        return
    if spec.show is None:
        return
    text = spec.show.format(result=result, **arguments) if isinstance(spec.show, str) else spec.show(result, arguments)
    for line in (text or "").splitlines():
        typer.echo(line, err=line.startswith("warning: "))


def _jsonable(value: Any) -> Any:
    """A result as JSON data: dataclasses as objects, paths as strings, numpy scalars as numbers."""
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value.item() if hasattr(value, "item") and callable(value.item) else value


def main() -> None:
    """Entry point of the `pmmrec` console script."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
