"""The pieces of the command line that commands share: one-line error reporting, option types and choices, and
the option groups generated from configs (help texts from their fields): `pretrain` / `finetune` from the training
config, `serve` from `ServeOptions`."""

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

from pmmrec.errors import PmmrecError
from pmmrec.slots import INIT_KINDS

F = TypeVar("F", bound=Callable[..., Any])


DEBUG_ENV = "PMMREC_DEBUG"


def reports_errors(command: F) -> F:
    """Turn bad input (PmmrecError) and OS errors (missing file, full disk) into one line and exit status 1.

    A safety net, not a substitute for checks: any other exception is a case pmmrec does not handle yet; it is
    reported in one line too, with the path of a file holding its traceback, and exit status 1. Set PMMREC_DEBUG=1
    (or pass `pmmrec --debug`) to see the traceback instead.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (PmmrecError, OSError) as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            message = str(exc) if isinstance(exc, PmmrecError) else _describe_os_error(exc)
            _fail(message)
        except (typer.Exit, typer.Abort, TyperException):  # exit statuses and usage errors are the CLI's own
            raise
        except Exception as exc:  # the safety net: one line and a saved traceback, never a traceback on screen
            if os.environ.get(DEBUG_ENV):
                raise
            saved = save_traceback(exc)
            kind = "out of memory" if isinstance(exc, MemoryError) else f"unexpected {type(exc).__name__}"
            _fail(f"{kind}: {exc} (pmmrec did not handle this case; traceback saved in {saved}; pmmrec --debug prints it)")

    return wrapper  # type: ignore[return-value]


def _fail(message: str) -> None:
    """Print `error: message` on one line (a message is never allowed to span lines) and exit with status 1."""
    typer.secho(f"error: {' '.join(message.split())}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=1) from None


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


TextRef = Annotated[str | None, typer.Option("--text", help="Text encoder: hub:ORG/NAME[@REV], hf://... or a folder.")]


VisionRef = Annotated[str | None, typer.Option("--vision", help="Vision encoder reference.")]


FusionRef = Annotated[str | None, typer.Option("--fusion", help="Fusion reference (created fresh when absent).")]


UserRef = Annotated[str | None, typer.Option("--user", help="User encoder reference (created fresh when absent).")]


Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")]


DataDir = Annotated[Path, typer.Option("--data", help="Dataset folder (users.tsv, items.tsv, dataset.json).")]


ModelRef = Annotated[str, typer.Option("--model", help="Assembled model: folder or hub reference.")]


Device = Annotated[
    str | None, typer.Option(help="cpu, cuda or cuda:N (when omitted: cuda:LOCAL_RANK if CUDA is available, else cpu).")
]


Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]


KindChoice = _choices("KindChoice", list(INIT_KINDS))  # the kinds `pmmrec init` creates


class SplitChoice(str, Enum):
    valid = "valid"
    test = "test"


class BaselineChoice(str, Enum):
    popularity = "popularity"
    content_knn = "content-knn"


class HistoryChoice(str, Enum):
    exclude = "exclude"
    include = "include"


class DomainChoice(str, Enum):
    all = "all"
    source = "source"
    target = "target"


class NewItemRuleChoice(str, Enum):
    first_seen = "first-seen"
    hash = "hash"


class ImagesChoice(str, Enum):
    none = "none"
    synthetic = "synthetic"


class PayloadChoice(str, Enum):
    png = "png"
    jpeg = "jpeg"
    raw = "raw"


ImageSize = Annotated[int, typer.Option("--size", help="Side of the stored square images (resize + centre crop).")]


ImagePayload = Annotated[
    PayloadChoice, typer.Option("--format", help="Stored image payload: png (lossless), jpeg or raw pixels.")
]


AllowMissing = Annotated[
    bool, typer.Option("--allow-missing", help="Record items without a usable image instead of failing.")
]


def create_option(name: str, **extra: Any) -> Any:
    from pmmrec.components.options import CreateOptions

    return typer.Option(help=CreateOptions.model_fields[name].description, **extra)


def training_parameters() -> list[inspect.Parameter]:
    """One CLI option per entry of TRAIN_OPTIONS, typed and described by its config field."""
    from pmmrec.training.config import TRAIN_OPTIONS, config_field

    parameters = []
    for name, path in TRAIN_OPTIONS.items():
        field = config_field(path)
        flag = "--" + name.replace("_", "-")
        annotation, decls = _cli_type(name, field.annotation), [flag]
        if annotation is bool:
            decls = [f"{flag}/--no-{name.replace('_', '-')}"]
        extra: dict[str, Any] = {"metavar": "SLOT=LR", "callback": _check_component_lr} if name == "lr_component" else {}
        option = typer.Option(*decls, help=field.description, **extra)
        parameters.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[annotation | None, option]
            )
        )
    return parameters


def _check_component_lr(value: list[str] | None) -> list[str] | None:
    """A malformed `--lr-component` is a usage error (exit 2), like any malformed option."""
    from pmmrec.training.config import parse_component_lr

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


def training_command(mode: Literal["pretrain", "finetune"], summary: str, done: Callable[[Path], str]) -> Any:
    """The `pmmrec pretrain` / `pmmrec finetune` command: fixed options plus the shared training option group."""

    from pmmrec import api

    @reports_errors
    def command(
        data: Path, out: Path, config: Path | None = None, resume: bool = False, quiet: bool = False, **options: Any
    ) -> None:
        from pmmrec.training.trainer import TrainingInterrupted

        values = {key: plain(value) for key, value in options.items()}
        try:
            getattr(api, mode)(data, out, config=config, resume=resume, progress=not quiet, **values)
        except TrainingInterrupted as exc:
            typer.secho(f"interrupted: {exc}", err=True, fg=typer.colors.YELLOW)
            raise typer.Exit(code=130) from None
        if is_main_process():
            typer.echo(done(out))

    fixed = [
        inspect.Parameter("data", inspect.Parameter.KEYWORD_ONLY, annotation=DataDir),
        inspect.Parameter(
            "out",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[Path, typer.Option("--out", help="Run folder (checkpoints, logs, outputs).")],
        ),
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                Path | None, typer.Option("--config", help="YAML file of training options; flags override it.")
            ],
        ),
        inspect.Parameter(
            "resume",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[bool, typer.Option("--resume", help="Continue from RUN/checkpoints/last.")],
        ),
        inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Quiet),
    ]
    return _with_parameters(command, [*fixed, *training_parameters()], summary, mode)


def _with_parameters(command: Any, parameters: list[inspect.Parameter], summary: str, name: str) -> Any:
    """`command` with the options Typer reads from its signature, its help summary and its name."""
    command.__dict__["__signature__"] = inspect.Signature(parameters)  # what Typer reads the options from
    command.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    command.__doc__ = summary
    command.__name__ = name
    return command


def serve_parameters() -> list[inspect.Parameter]:
    """One CLI option per entry of SERVE_FLAGS, typed, defaulted and described by its ServeOptions field.

    Values are checked by `ServeOptions` (not by Typer), so a bad one is a one-line error naming the flag.
    """
    from pmmrec.serving.options import SERVE_FLAGS, ServeOptions

    parameters = []
    for name, field_name in SERVE_FLAGS.items():
        field = ServeOptions.model_fields[field_name]
        annotation = _flag_type(field.annotation)
        if name == "quiet":  # the --quiet flag every command has
            annotation = Quiet
        elif annotation is bool:
            annotation = Annotated[bool, typer.Option(help=field.description)]
        else:
            annotation = Annotated[annotation, typer.Option(help=field.description)]
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=field.default, annotation=annotation))
    return parameters


def _flag_type(annotation: Any) -> Any:
    """The command-line type of a ServeOptions field: X | None stays optional; a Literal is a string (checked by
    the model)."""
    optional = get_origin(annotation) in (Union, UnionType) and type(None) in get_args(annotation)
    base = next(arg for arg in get_args(annotation) if arg is not type(None)) if optional else annotation
    if get_origin(base) is Literal:
        base = str
    return base | None if optional else base


def serve_command(summary: str) -> Any:
    """The `pmmrec serve` command: --model, --data and the options generated from ServeOptions."""

    from pmmrec import api

    @reports_errors
    def command(model: str, data: Path, **options: Any) -> None:
        api.serve(model, data, **options)

    fixed = [
        inspect.Parameter("model", inspect.Parameter.KEYWORD_ONLY, annotation=ModelRef),
        inspect.Parameter("data", inspect.Parameter.KEYWORD_ONLY, annotation=DataDir),
    ]
    return _with_parameters(command, [*fixed, *serve_parameters()], summary, "serve")
