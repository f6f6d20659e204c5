"""The pieces of the command line that commands share: one-line error reporting, the global options, and the option
groups generated from configs (help texts and defaults from their fields): `pretrain` / `finetune` from the training
config, `serve` from `ServeOptions`, `init` from `CreateOptions`."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import typer
from typer.exceptions import TyperException

from pmmrec.errors import Interrupted, PmmrecError, UsageError

F = TypeVar("F", bound=Callable[..., Any])


DEBUG_ENV = "PMMREC_DEBUG"


def reports_errors(command: F) -> F:
    """Turn bad input (PmmrecError) and OS errors (missing file, full disk) into one line and exit status 1.

    Arguments that contradict each other (UsageError) exit with 2, like any usage error; a run stopped by a signal
    (Interrupted) with 130. A safety net, not a substitute for checks: any other exception is a case pmmrec does not
    handle yet; it is reported in one line too, with the path of a file holding its traceback, and exit status 1.
    Set PMMREC_DEBUG=1 (or pass `pmmrec --debug`) to see the traceback instead.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except Interrupted as exc:
            typer.secho(f"interrupted: {exc}", err=True, fg=typer.colors.YELLOW)
            raise typer.Exit(code=130) from None
        except (PmmrecError, OSError) as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            message = str(exc) if isinstance(exc, PmmrecError) else _describe_os_error(exc)
            _fail(message, 2 if isinstance(exc, UsageError) else 1)
        except (typer.Exit, typer.Abort, TyperException):  # exit statuses and usage errors are the CLI's own
            raise
        except Exception as exc:  # the safety net: one line and a saved traceback, never a traceback on screen
            if os.environ.get(DEBUG_ENV):
                raise
            saved = save_traceback(exc)
            kind = "out of memory" if isinstance(exc, MemoryError) else f"unexpected {type(exc).__name__}"
            _fail(f"{kind}: {exc} (pmmrec did not handle this case; traceback saved in {saved}; pmmrec --debug prints it)")

    return wrapper  # type: ignore[return-value]


def _fail(message: str, code: int = 1) -> None:
    """Print `error: message` on one line (a message is never allowed to span lines) and exit with `code`."""
    typer.secho(f"error: {' '.join(message.split())}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=code) from None


def save_traceback(exc: BaseException) -> Path | str:
    """Write the traceback of `exc` to a new file under the pmmrec cache (else the temporary folder); its path."""
    import tempfile
    import traceback

    from pmmrec.paths import cache_root

    text = "".join(traceback.format_exception(exc))
    for folder in (cache_root() / "tracebacks", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(prefix="pmmrec-traceback-", suffix=".txt", dir=folder)
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
            return Path(name)
        except OSError:
            continue
    return "nowhere (no writable folder)"


def apply_global_options(*, debug: bool, max_memory: str | None) -> Callable[[], None]:
    """`pmmrec --debug` and `pmmrec --max-memory` hold for the command that follows, as their variables would;
    returns what puts the environment back once the command is done (an in-process caller runs more commands)."""
    from pmmrec.budget import MAX_MEMORY_ENV, parse_size

    if max_memory is not None:
        try:
            parse_size(max_memory, "--max-memory")
        except PmmrecError as exc:
            raise typer.BadParameter(str(exc).removeprefix("--max-memory: "), param_hint="--max-memory") from None
    changes = {DEBUG_ENV: "1" if debug else None, MAX_MEMORY_ENV: max_memory}
    previous = {name: os.environ.get(name) for name, value in changes.items() if value is not None}
    for name, value in changes.items():
        if value is not None:
            os.environ[name] = value

    def restore() -> None:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    return restore


def _describe_os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def is_main_process() -> bool:
    """Under torchrun only rank 0 prints results."""
    return os.environ.get("RANK", "0") == "0"


def _choices(name: str, values: list[str]) -> type[Enum]:
    """A str Enum for Typer's choice validation and help."""
    return Enum(name, {value: value for value in values}, type=str)  # type: ignore[return-value]


def shown_default(value: Any) -> str:
    """A default as help shows it (`[default: 64]`); None, empty lists and mappings read `none`."""
    if value is None or value == [] or value == {}:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{key}={item}" for key, item in value.items())
    return str(value)


def _keyword(name: str, annotation: Any, default: Any = None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


# ---- generated option groups -----------------------------------------------------------------------------------


def option_group(kind: str, command: str) -> list[inspect.Parameter]:
    """The generated options of a command whose api function takes `**options` (commands.py: `options=`)."""
    groups = {"training": training_parameters, "serve": lambda _: serve_parameters(), "create": create_parameters}
    return groups[kind](command)


def training_parameters(mode: str = "finetune") -> list[inspect.Parameter]:
    """One CLI option per entry of TRAIN_OPTIONS, typed and described by its config field; the help ends with the
    value this command trains with when the option is not given (`mode`'s defaults), since the option itself
    defaults to None (not given: a YAML file's value stays)."""
    from pmmrec.training.config import RECIPE_DEPENDENT, TOWER_DEPENDENT
    from pmmrec.training.flat_options import TRAIN_OPTIONS, config_field, mode_default_values

    defaults = mode_default_values(mode)
    parameters = []
    for name, path in TRAIN_OPTIONS.items():
        field = config_field(path)
        flag = "--" + name.replace("_", "-")
        annotation, decls = _cli_type(name, field.annotation), [flag]
        if annotation is bool:
            decls = [f"{flag}/--no-{name.replace('_', '-')}"]
        extra: dict[str, Any] = {"metavar": "SLOT=LR", "callback": _check_component_lr} if name == "lr_component" else {}
        # a default that depends on the item tower or the recipe is stated by the description itself
        stated = path in TOWER_DEPENDENT or path in RECIPE_DEPENDENT
        text = field.description if stated else _with_default(field.description, defaults[name], flag)
        option = typer.Option(*decls, help=text, show_default=False, **extra)
        parameters.append(_keyword(name, Annotated[annotation | None, option]))
    return parameters


def _with_default(description: str, default: Any, flag: str) -> str:
    """A help text ending with the value used when the option is not given; a None default is explained by the
    description itself ("default: ..."), else it reads `none`."""
    if default is None and "default" in description:
        return description
    shown = flag[2:] if default is True else f"no-{flag[2:]}" if default is False else shown_default(default)
    return f"{description}  [default: {shown}]"


def _check_component_lr(value: list[str] | None) -> list[str] | None:
    """A malformed `--lr-component` is a usage error (exit 2), like any malformed option."""
    from pmmrec.training.flat_options import parse_component_lr

    try:
        parse_component_lr(value or [])
    except PmmrecError as exc:
        raise typer.BadParameter(str(exc).removeprefix("--lr-component ")) from None
    return value


def _cli_type(name: str, annotation: Any) -> Any:
    """The command-line type of a config field: Literal -> choice, list -> repeatable, dict -> SLOT=VALUE strings."""
    base = annotation
    if get_origin(annotation) in (Union, UnionType):  # X | None: the option itself is optional
        base = next(arg for arg in get_args(annotation) if arg is not type(None))
    origin = get_origin(base)
    if origin is dict:
        return list[str]
    if origin is list:
        (item,) = get_args(base)
        if get_origin(item) is Literal:
            return list[_choices(f"{name}_choice", list(get_args(item)))]  # type: ignore[misc]
        return list[item]  # type: ignore[valid-type]
    if origin is Literal:
        return _choices(f"{name}_choice", list(get_args(base)))
    return base


def plain(value: Any) -> Any:
    """Enum members (Typer's choices) as their values, also inside lists."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def serve_parameters() -> list[inspect.Parameter]:
    """One CLI option per entry of SERVE_FLAGS, typed, defaulted and described by its ServeOptions field.

    Values are checked by `ServeOptions` (not by Typer), so a bad one is a one-line error naming the flag.
    """
    from pmmrec.serving.options import SERVE_FLAGS, ServeOptions

    parameters = []
    for name, field_name in SERVE_FLAGS.items():
        field = ServeOptions.model_fields[field_name]
        annotation = _flag_type(field.annotation)
        if annotation is bool:
            flag = "--" + name.replace("_", "-")
            decls = [flag] if field.default is False else [f"{flag}/--no-{flag[2:]}"]
            annotation = Annotated[bool, typer.Option(*decls, help=field.description)]
        else:
            annotation = Annotated[annotation, typer.Option(help=field.description)]
        parameters.append(_keyword(name, annotation, field.default))
    return parameters


def _flag_type(annotation: Any) -> Any:
    """The command-line type of a ServeOptions field: X | None stays optional; a Literal is a string (checked by
    the model)."""
    optional = get_origin(annotation) in (Union, UnionType) and type(None) in get_args(annotation)
    base = next(arg for arg in get_args(annotation) if arg is not type(None)) if optional else annotation
    if get_origin(base) is Literal:
        base = str
    return base | None if optional else base


CREATE_FIELDS = ("backbone", "dim", "trainable_layers", "max_tokens", "word_embeddings", "heads", "layers", "max_length", "dropout")


def create_parameters(_: str = "init") -> list[inspect.Parameter]:
    """`pmmrec init`'s options: the fields of CreateOptions a user sets, with their defaults and descriptions."""
    from pmmrec.components.options import CreateOptions

    parameters = []
    for name in CREATE_FIELDS:
        field = CreateOptions.model_fields[name]
        annotation = _flag_type(field.annotation)
        parameters.append(_keyword(name, Annotated[annotation, typer.Option(help=field.description)], field.default))
    return parameters
