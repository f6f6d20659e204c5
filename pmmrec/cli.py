"""Command-line interface: a thin Typer layer over the library functions of the same names."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

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


class ComponentKindChoice(str, Enum):
    text = "text"
    vision = "vision"
    fusion = "fusion"
    user = "user"


class FusionTypeChoice(str, Enum):
    merge_attention = "merge_attention"
    text_only = "text_only"
    vision_only = "vision_only"


TextRef = Annotated[str | None, typer.Option("--text", help="Text encoder: hub:ORG/NAME[@REV], hf://... or a folder.")]
VisionRef = Annotated[str | None, typer.Option("--vision", help="Vision encoder reference.")]
FusionRef = Annotated[str | None, typer.Option("--fusion", help="Fusion reference (created fresh when absent).")]
UserRef = Annotated[str | None, typer.Option("--user", help="User encoder reference (created fresh when absent).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")]


@app.command("init")
@reports_errors
def init(
    kind: Annotated[ComponentKindChoice, typer.Argument(help="Which component to create.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the component to.")],
    backbone: Annotated[
        str | None,
        typer.Option(help="Encoders: built-in name (minilm, efficientnet-lite0), local folder or hub:ORG/NAME[@REV]."),
    ] = None,
    dim: Annotated[int | None, typer.Option(help="Embedding width d (encoders default to the backbone's width).")] = None,
    fusion_type: Annotated[FusionTypeChoice, typer.Option("--type", help="Fusion type.")] = FusionTypeChoice.merge_attention,
    trainable_layers: Annotated[int, typer.Option(help="Encoders: top layers/blocks trained (paper: 2).")] = 2,
    max_tokens: Annotated[int, typer.Option(help="Text encoder: tokens per item text.")] = 50,
    heads: Annotated[int | None, typer.Option(help="Fusion/user: attention heads.")] = None,
    layers: Annotated[int, typer.Option(help="User encoder: Transformer blocks.")] = 2,
    max_length: Annotated[int, typer.Option(help="User encoder: longest sequence.")] = 20,
    dropout: Annotated[float, typer.Option(help="Fusion/user: dropout.")] = 0.1,
    overwrite: Overwrite = False,
) -> None:
    """Create a fresh component (pretrained backbone where named, the rest initialised)."""
    from pmmrec import api

    path = api.init(
        kind.value,  # type: ignore[arg-type]
        out,
        overwrite=overwrite,
        backbone=backbone,
        dim=dim,
        fusion_type=fusion_type.value,
        trainable_layers=trainable_layers,
        max_tokens=max_tokens,
        heads=heads,
        layers=layers,
        max_length=max_length,
        dropout=dropout,
    )
    typer.echo(f"wrote {kind.value} component to {path}")


@app.command("assemble")
@reports_errors
def assemble(
    out: Annotated[Path, typer.Option("--out", help="Folder for the assembled model.")],
    text: TextRef = None,
    vision: VisionRef = None,
    fusion: FusionRef = None,
    user: UserRef = None,
    overwrite: Overwrite = False,
) -> None:
    """Combine components into one model; missing parts are created where the method needs them."""
    from pmmrec import api

    path, notes = api.assemble(out, text=text, vision=vision, fusion=fusion, user=user, overwrite=overwrite)
    for note in notes:
        typer.echo(f"note: {note}")
    typer.echo(f"wrote assembled model to {path}")


@app.command("inspect")
@reports_errors
def inspect(
    reference: Annotated[str, typer.Argument(help="Component or model: folder, hub:ORG/NAME[@REV] or hf://...")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Print each component's type, key config, parameter counts and provenance."""
    from pmmrec import api

    report = api.inspect(reference)
    typer.echo(json.dumps(report, indent=2) if as_json else api.format_inspection(report))


@app.command("push")
@reports_errors
def push(
    folder: Annotated[Path, typer.Argument(help="A component or assembled-model folder.")],
    repo: Annotated[str, typer.Option("--repo", help="Hub repo id ORG/NAME.")],
    tag: Annotated[str | None, typer.Option(help="Tag to create on the uploaded commit (e.g. v1).")] = None,
    token: Annotated[str | None, typer.Option(help="Hub token (default: HF_TOKEN / the saved login).")] = None,
    private: Annotated[bool, typer.Option(help="Create the repo as private.")] = False,
) -> None:
    """Publish a component (or an assembled model) to the Hugging Face Hub."""
    from pmmrec import api

    commit = api.push(folder, repo, tag=tag, token=token, private=private)
    typer.echo(f"pushed {folder} to {repo} at commit {commit}" + (f" (tag {tag})" if tag else ""))


# --- data commands -------------------------------------------------------------------------


def main() -> None:
    """Entry point of the `pmmrec` console script."""
    app()
