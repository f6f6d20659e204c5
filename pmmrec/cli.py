"""Command-line interface: a table from command names to the functions of `pmmrec.api` with the same names.

Each command parses its options, calls its library function and prints the result; nothing else happens here. The
options of `pretrain` and `finetune` are generated from one table (`TRAIN_OPTIONS`), their help texts from the
training config's own field descriptions.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from pmmrec import api
from pmmrec.cli_options import (
    AllowMissing,
    DataDir,
    Device,
    DomainChoice,
    FusionRef,
    ImagePayload,
    ImagesChoice,
    ImageSize,
    KindChoice,
    ModelRef,
    Overwrite,
    PayloadChoice,
    Quiet,
    SplitChoice,
    TextRef,
    UserRef,
    VisionRef,
    create_option,
    is_main_process,
    plain,
    reports_errors,
    training_parameters,
)

app = typer.Typer(
    name="pmmrec",
    help="Transferable, ID-free sequential recommendation (PMMRec) with per-component artefacts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: flags read as flags, every default shown, brackets printed as written
)
data_app = typer.Typer(help="Build, import and check datasets.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(data_app, name="data")


# ---- shared option types ---------------------------------------------------------------------------------------

@app.command("version")
def version() -> None:
    """Print the pmmrec version."""
    typer.echo(api.version())


# ---- components and models -----------------------------------------------------------------------------------


@app.command("init")
@reports_errors
def init(
    kind: Annotated[KindChoice, typer.Argument(help="Which component to create.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the component to.")],
    variant: Annotated[
        str | None,
        typer.Option("--type", help="Type within the kind: fusion merge_attention|text_only|vision_only; vision clip|efficientnet."),
    ] = None,
    backbone: Annotated[str | None, create_option("backbone")] = None,
    dim: Annotated[int | None, create_option("dim")] = None,
    trainable_layers: Annotated[int, create_option("trainable_layers")] = 2,
    max_tokens: Annotated[int, create_option("max_tokens")] = 50,
    heads: Annotated[int | None, create_option("heads")] = None,
    layers: Annotated[int, create_option("layers")] = 2,
    max_length: Annotated[int, create_option("max_length")] = 20,
    dropout: Annotated[float, create_option("dropout")] = 0.1,
    overwrite: Overwrite = False,
) -> None:
    """Create a fresh component (pretrained backbone where named, the rest initialised)."""
    path = api.init(
        kind.value,
        out,
        variant=variant,
        overwrite=overwrite,
        backbone=backbone,
        dim=dim,
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
    path, notes = api.assemble(out, text=text, vision=vision, fusion=fusion, user=user, overwrite=overwrite)
    for note in notes:
        typer.echo(f"note: {note}")
    typer.echo(f"wrote assembled model to {path}")


@app.command("inspect")
@reports_errors
def inspect_command(
    reference: Annotated[str, typer.Argument(help="Component or model: folder, hub:ORG/NAME[@REV] or hf://...")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Print each component's type, key config, parameter counts and provenance."""
    from pmmrec.inspection import format_inspection

    report = api.inspect(reference)
    typer.echo(json.dumps(report, indent=2) if as_json else format_inspection(report))


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
    commit = api.push(folder, repo, tag=tag, token=token, private=private)
    typer.echo(f"pushed {folder} to {repo} at commit {commit}" + (f" (tag {tag})" if tag else ""))


# ---- training: one option group for pretrain and finetune --------------------------------------------------------


def _training_command(mode: Literal["pretrain", "finetune"], summary: str, done: Callable[[Path], str]) -> Any:
    """The `pmmrec pretrain` / `pmmrec finetune` command: fixed options plus the shared training option group."""

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
    parameters = [*fixed, *training_parameters()]
    command.__dict__["__signature__"] = inspect.Signature(parameters)  # what Typer reads the options from
    command.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    command.__doc__ = summary
    command.__name__ = mode
    return command


app.command("pretrain")(
    _training_command(
        "pretrain",
        "Pre-train on a source dataset with next-item prediction, NICL, NID and RCL; writes RUN/components/*.",
        lambda out: f"components written to {out / 'components'} (publish each with `pmmrec push`)",
    )
)
app.command("finetune")(
    _training_command(
        "finetune",
        "Fine-tune any combination of components (or train from scratch) on a target dataset; writes RUN/model.",
        lambda out: f"best model written to {out / 'model'}",
    )
)


# ---- using a model -------------------------------------------------------------------------------------------


@app.command("evaluate")
@reports_errors
def evaluate(
    model: ModelRef,
    data: DataDir,
    split: Annotated[SplitChoice, typer.Option(help="Which leave-one-out target to rank.")] = SplitChoice.test,
    k: Annotated[list[int] | None, typer.Option("--k", help="Cut-offs: --k 10 20 50 (default) or --k 10 --k 20.")] = None,
    min_length: Annotated[int, typer.Option("--min-length", help="Users with fewer interactions are dropped.")] = 3,
    max_history: Annotated[int | None, typer.Option("--max-history", help="Keep the last N interactions per user.")] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Write the metrics as JSON here.")] = None,
    device: Device = None,
    quiet: Quiet = False,
    resume_dir: Annotated[
        Path | None, typer.Option("--resume-dir", help="Keep finished users' ranks here; a rerun resumes from them.")
    ] = None,
    cache_prefixes: Annotated[
        bool, typer.Option("--cache-prefixes", help="Reuse frozen-prefix files (fp16) across evaluations.")
    ] = False,
    more_k: Annotated[
        list[int] | None, typer.Argument(hidden=True, help="Further cut-offs after --k (--k 10 20 50).")
    ] = None,
) -> None:
    """Full-ranking HR, NDCG and MRR at each K (history excluded; ties count in the user's favour)."""
    from pmmrec.evaluation import format_metrics_table

    ks = tuple([*(k or []), *(more_k or [])] or (10, 20, 50))
    metrics = api.evaluate(
        model, data, split=split.value, ks=ks, min_length=min_length, max_history=max_history, out=output,
        device=device, progress=not quiet, resume_dir=resume_dir, cache_prefixes=cache_prefixes,
    )  # fmt: skip
    if not is_main_process():
        return
    typer.echo(f"{split.value} split of {data}:")
    typer.echo(format_metrics_table(metrics, ks))
    if output is not None:
        typer.echo(f"metrics written to {output}")


@app.command("recommend")
@reports_errors
def recommend(
    model: ModelRef,
    data: DataDir,
    user: Annotated[str | None, typer.Option("--user", help="A user id of users.tsv.")] = None,
    history: Annotated[str | None, typer.Option("--history", help='Item ids, oldest first: "ID ID ...".')] = None,
    k: Annotated[int, typer.Option("--k", help="How many items to return.")] = 10,
    exclude_seen: Annotated[bool, typer.Option("--exclude-seen", help="Never return items of the history.")] = False,
    items: Annotated[
        Path | None, typer.Option("--items", help="Extra candidate items (item_id<TAB>text), never seen in training.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    device: Device = None,
) -> None:
    """Top-k items for a user or a history; new items are recommendable from their content alone."""
    ranked = api.recommend(
        model, data, user=user, history=history.split() if history is not None else None, k=k,
        exclude_seen=exclude_seen, extra_items=items, device=device,
    )  # fmt: skip
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in ranked], indent=2))
        return
    for entry in ranked:
        typer.echo(f"{entry.rank:>3}  {entry.score:8.3f}  {entry.item_id}\t{entry.text}")


@app.command("serve")
@reports_errors
def serve(
    model: ModelRef,
    data: DataDir,
    host: Annotated[str, typer.Option(help="Interface to listen on (the API has no authentication).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    threads: Annotated[
        int, typer.Option(help="torch threads per request (1: concurrent requests use separate cores).")
    ] = 1,
    device: Device = None,
    quiet: Quiet = False,
) -> None:
    """Serve recommendations over HTTP (OpenAPI at /docs, a page at /); items added live are rankable at once."""
    api.serve(model, data, host=host, port=port, threads=threads, device=device, progress=not quiet)


@app.command("demo")
@reports_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for data, runs, the local Hub cache and results.")] = Path(
        "demo_out"
    ),
    quick: Annotated[bool, typer.Option("--quick", help="Smaller settings: a few minutes on a laptop CPU.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    quiet: Quiet = False,
) -> None:
    """Pre-train on MovieLens source, publish, assemble, transfer to the target domain, print the comparison."""
    api.demo(out, quick=quick, seed=seed, progress=not quiet)


# ---- datasets ------------------------------------------------------------------------------------------------


@data_app.command("movielens")
@reports_errors
def data_movielens(
    out: Annotated[Path, typer.Option("--out", help="Dataset folder to create.")],
    domain: Annotated[
        DomainChoice, typer.Option(help="all = whole MovieLens-100K; source/target = the two transfer domains.")
    ] = DomainChoice.all,
    images: Annotated[
        ImagesChoice, typer.Option(help="none, or synthetic pictures drawn from title and genres.")
    ] = ImagesChoice.none,
    size: ImageSize = 224,
    overwrite: Overwrite = False,
) -> None:
    """Build MovieLens-100K from the installed recbole==1.2.1 wheel (never redistribute the result)."""
    from pmmrec.data import format_statistics
    from pmmrec.data.movielens import LICENCE_NOTE

    path = api.data_movielens(out, domain=domain.value, images=images.value, size=size, overwrite=overwrite)
    typer.echo(f"wrote {path}")
    typer.echo(format_statistics(api.data_check(path)))
    typer.echo(f"licence: {LICENCE_NOTE}")


@data_app.command("build-lmdb")
@reports_errors
def data_build_lmdb(
    items: Annotated[Path, typer.Option("--items", help="items.tsv whose item ids name the images.")],
    images: Annotated[Path, typer.Option("--images", help="Folder of <item id>.jpg|jpeg|png|webp files.")],
    out: Annotated[Path, typer.Option("--out", help="LMDB folder to create (e.g. DATASET/images.lmdb).")],
    size: ImageSize = 224,
    payload: ImagePayload = PayloadChoice.png,
    allow_missing: AllowMissing = False,
    overwrite: Overwrite = False,
) -> None:
    """Resize item images once and store them in an LMDB keyed by item id (no pickle)."""
    report = api.data_build_lmdb(
        items, images, out, size=size, payload=payload.value, allow_missing=allow_missing, overwrite=overwrite
    )
    typer.echo(f"stored {len(report.stored):,} images ({size}x{size}, {payload.value}) in {out}")
    if report.failed:
        typer.secho(f"warning: without image: {report.describe_failures()}", err=True, fg=typer.colors.YELLOW)
    if (out.parent / "dataset.json").is_file() and out.name == "images.lmdb":
        typer.echo(f"recorded the images in {out.parent / 'dataset.json'}")


@data_app.command("import-reference")
@reports_errors
def data_import_reference(
    users: Annotated[Path, typer.Option("--users", help="Reference-family X_users.tsv.")],
    items: Annotated[Path, typer.Option("--items", help="Reference-family X_items_texts.tsv.")],
    out: Annotated[Path, typer.Option("--out", help="Dataset folder to create.")],
    lmdb: Annotated[Path | None, typer.Option("--lmdb", help="Reference-family image LMDB (file or folder).")] = None,
    trust_pickle: Annotated[
        bool,
        typer.Option(
            "--trust-pickle",
            help="Read pickled LMDB values. Unpickling can run code chosen by the file's author: trusted files only.",
        ),
    ] = False,
    name: Annotated[str | None, typer.Option(help="Dataset name (default: from the users file name).")] = None,
    size: ImageSize = 224,
    payload: ImagePayload = PayloadChoice.png,
    allow_missing: AllowMissing = False,
    overwrite: Overwrite = False,
) -> None:
    """Convert the reference family's users/items files (and image LMDB) into a dataset folder."""
    import warnings

    from pmmrec.data import format_statistics
    from pmmrec.data.reference_import import PICKLE_RISK

    if trust_pickle and lmdb is not None:
        typer.secho(
            f"warning: --trust-pickle: {PICKLE_RISK}; values are read with a restricted unpickler, "
            "but only use files from authors you trust",
            err=True,
            fg=typer.colors.YELLOW,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the warning above already told the user
        path = api.data_import_reference(
            users, items, out, lmdb=lmdb, trust_pickle=trust_pickle, name=name, size=size, payload=payload.value,
            allow_missing=allow_missing, overwrite=overwrite,
        )  # fmt: skip
    typer.echo(f"wrote {path}")
    typer.echo(format_statistics(api.data_check(path)))


@data_app.command("check")
@reports_errors
def data_check(
    folder: Annotated[Path, typer.Argument(help="Dataset folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
) -> None:
    """Validate a dataset folder (hashes, lines, ids, texts, images) and print its statistics."""
    from pmmrec.data import format_statistics

    stats = api.data_check(folder)
    typer.echo(json.dumps(stats, indent=2) if as_json else format_statistics(stats))


def main() -> None:
    """Entry point of the `pmmrec` console script."""
    app()
