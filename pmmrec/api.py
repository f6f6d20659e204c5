"""The function behind every command, with the command's name (`data movielens` -> `data_movielens`).

Each function is declared a command with `@command` and its parameters carry their command-line help
(`pmmrec.commands`); `pmmrec.cli` builds the commands from them, so a new command is one function here. The
commands that use a model (`pmmrec.api_use`) and the dataset commands (`pmmrec.api_data`) live in their own modules
and are re-exported here, so every command is `pmmrec.api.NAME`. From Python they are the same operations with the
same defaults. Each one loads what it is given, calls the library, and writes what the command writes. This module
imports nothing heavy at the top: `pmmrec --help` reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pmmrec._version import __version__
from pmmrec.commands import COMMANDS, Arg, DataDir, Opt, Overwrite, PathLike, command, lazy
from pmmrec.slots import INIT_KINDS

_WHERE = "hub:ORG/NAME[@REV], hf://... or a folder"
TextRef = Annotated[str | None, Opt(f"Text encoder: {_WHERE} (default: none).")]
VisionRef = Annotated[str | None, Opt(f"Vision encoder: {_WHERE} (default: none).")]
FusionRef = Annotated[str | None, Opt(f"Fusion: {_WHERE} (default: created fresh).")]
UserRef = Annotated[str | None, Opt(f"User encoder: {_WHERE} (default: created fresh).")]


# ---- about pmmrec ---------------------------------------------------------------------------------------------


@command(show="{result}")
def version() -> str:
    """Print the pmmrec version."""
    return __version__


@command(show=lambda report, _: lazy("pmmrec.environment", "format_environment")(report), json=True)
def env() -> dict[str, Any]:
    """Versions, devices, threads, platform and Hub settings, to paste into a bug report."""
    from pmmrec.environment import environment_report

    return environment_report()


# ---- components and models -----------------------------------------------------------------------------------


@command(show="wrote {kind} component to {result}", options="create")
def init(
    kind: Annotated[str, Arg("Which component to create.", metavar="KIND", cli=Literal[INIT_KINDS])],
    out: Annotated[PathLike, Opt("Folder to write the component to.", cli=Path)],
    *,
    variant: Annotated[
        str | None,
        Opt(
            "Type within the kind: fusion merge_attention|text_only|vision_only; vision clip|efficientnet (default: "
            "merge_attention for a fusion, by the backbone's name for a vision encoder).",
            flag="--type",
        ),
    ] = None,
    overwrite: Overwrite = False,
    **options: Any,
) -> Path:
    """Create a fresh component (pretrained backbone where named, the rest initialised).

    `options` are the fields of `pmmrec.components.CreateOptions` (dim, backbone, trainable_layers, ...).
    """
    from pmmrec.components import CreateOptions, create_component
    from pmmrec.errors import ConfigError, describe_validation_error

    try:
        create_options = CreateOptions(**options)
    except ValueError as exc:
        raise ConfigError(f"pmmrec init {kind}: {describe_validation_error(exc)}") from None
    return create_component(kind, create_options, variant).save_pretrained(out, overwrite=overwrite)


def _show_assemble(result: tuple[Path, list[str]], _: dict[str, Any]) -> str:
    path, notes = result
    return "\n".join([*(f"note: {note}" for note in notes), f"wrote assembled model to {path}"])


@command(show=_show_assemble)
def assemble(
    out: Annotated[PathLike, Opt("Folder for the assembled model.", cli=Path)],
    *,
    text: TextRef = None,
    vision: VisionRef = None,
    fusion: FusionRef = None,
    user: UserRef = None,
    overwrite: Overwrite = False,
) -> tuple[Path, list[str]]:
    """Combine components into one model; missing parts are created where the method needs them.

    Returns the model folder and notes on what was created.
    """
    from pmmrec.errors import ArtefactError
    from pmmrec.model import PMMRec

    if Path(out).exists() and not overwrite:
        raise ArtefactError(f"{out} already exists; pass --overwrite to replace it")
    model = PMMRec.assemble(text=text, vision=vision, fusion=fusion, user=user)
    return model.save_pretrained(out, overwrite=overwrite), model.assembly_notes


@command(show=lambda report, _: lazy("pmmrec.inspection", "format_inspection")(report), json=True)
def inspect(
    reference: Annotated[str, Arg("Component or model: folder, hub:ORG/NAME[@REV] or hf://...", metavar="REFERENCE")],
    revision: str | None = None,
) -> dict[str, Any]:
    """Print each component's type, key config, parameter counts and provenance."""
    from pmmrec.inspection import inspect_reference

    return inspect_reference(reference, revision)


@command(
    show=lambda commit, a: (
        f"pushed {a['folder']} to {a['repo']} at commit {commit}" + (f" (tag {a['tag']})" if a["tag"] else "")
    )
)
def push(
    folder: Annotated[PathLike, Arg("A component or assembled-model folder.", metavar="FOLDER", cli=Path)],
    repo: Annotated[str, Opt("Hub repo id ORG/NAME.")],
    *,
    tag: Annotated[str | None, Opt("Tag to create on the uploaded commit, e.g. v1 (default: no tag).")] = None,
    token: Annotated[str | None, Opt("Hub token (default: HF_TOKEN, else the saved login).")] = None,
    private: Annotated[bool, Opt("Create the repo as private.")] = False,
    api: Any = None,
) -> str:
    """Publish a component (or an assembled model) to the Hugging Face Hub (refused unless it loads).

    Returns the commit id.
    """
    from pmmrec.components import Component
    from pmmrec.components.base import CONFIG_FILE
    from pmmrec.hub import push_folder
    from pmmrec.model import MANIFEST_FILE, PMMRec

    folder = Path(folder)
    if (folder / CONFIG_FILE).is_file():
        Component.from_folder(folder)
    elif (folder / MANIFEST_FILE).is_file():
        PMMRec.from_pretrained(folder)
    return push_folder(folder, repo, tag=tag, token=token, private=private, api=api)


# ---- training --------------------------------------------------------------------------------------------------

RunFolder = Annotated[PathLike, Opt("Run folder (checkpoints, logs, outputs).", cli=Path)]
TrainConfigFile = Annotated[
    PathLike | None,
    Opt(
        "YAML file of training options, e.g. one of configs/ (the demo's settings); flags override it (default: "
        "none, the command's defaults).",
        cli=Path,
    ),
]
Resume = Annotated[bool, Opt("Continue from RUN/checkpoints/last.")]


@command(show="components written to {out}/components (publish each with `pmmrec push`)", options="training")
def pretrain(
    data: DataDir,
    out: RunFolder,
    *,
    config: TrainConfigFile = None,
    resume: Resume = False,
    progress: bool = True,
    **options: Any,
) -> Any:
    """Pre-train on a source dataset with next-item prediction, NICL, NID and RCL; writes RUN/components/*.

    `options` are the flat training options (`pmmrec.training.flat_options.TRAIN_OPTIONS`: epochs, lr, text, ...); they
    override the YAML file `config`, which overrides the defaults.
    """
    return _train("pretrain", data, out, config, resume, progress, options)


def _show_finetune(result: Any, a: dict[str, Any]) -> str:
    if "refit" in getattr(result, "summary", {}):
        return f"refit model written to {a['out']}/model (the model validation chose: {a['out']}/best)"
    return f"best model written to {a['out']}/model"


@command(show=_show_finetune, options="training")
def finetune(
    data: DataDir,
    out: RunFolder,
    *,
    config: TrainConfigFile = None,
    resume: Resume = False,
    progress: bool = True,
    **options: Any,
) -> Any:
    """Fine-tune any combination of components (or train from scratch) on a target dataset; writes RUN/model."""
    return _train("finetune", data, out, config, resume, progress, options)


def _train(
    mode: Literal["pretrain", "finetune"],
    data: PathLike,
    out: PathLike,
    config: PathLike | None,
    resume: bool,
    progress: bool,
    options: dict[str, Any],
) -> Any:
    from pmmrec.arguments import check_dataset_folder

    check_dataset_folder(data)
    from pmmrec.training.flat_options import overrides_from_options
    from pmmrec.training.jobs import train

    overrides = overrides_from_options(options)
    return train(mode, data, out, config_path=config, overrides=overrides, resume=resume, progress=progress)


# The commands that use a model and the dataset commands (`pmmrec data ...`), defined in their own modules and
# listed after the others, in this order.
from pmmrec.api_use import compare, demo, evaluate, recommend, serve  # noqa: E402, F401

# isort: split
from pmmrec.api_data import data_build_lmdb, data_check, data_import_reference, data_movielens  # noqa: E402, F401

__all__ = list(COMMANDS)
