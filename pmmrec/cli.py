"""Command-line interface: a table from command names to the functions of `pmmrec.api` with the same names.

Each command parses its options, calls its library function and prints the result; nothing else happens here. The
options of `pretrain` and `finetune` are generated from one table (`TRAIN_OPTIONS`), their help texts from the
training config's own field descriptions; those of `serve` from `ServeOptions` (`SERVE_FLAGS`) the same way.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from pmmrec import api
from pmmrec import cli_options as opt

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
            "(PMMREC_MAX_MEMORY); configurations estimated above it are refused before anything is allocated.",
        ),
    ] = None,
) -> None:
    """Transferable, ID-free sequential recommendation (PMMRec) with per-component artefacts."""
    ctx.call_on_close(opt.apply_global_options(debug=debug, max_memory=max_memory))


# ---- shared option types ---------------------------------------------------------------------------------------

@app.command("version")
def version() -> None:
    """Print the pmmrec version."""
    typer.echo(api.version())


# ---- components and models -----------------------------------------------------------------------------------


@app.command("init")
@opt.reports_errors
def init(
    kind: Annotated[opt.KindChoice, typer.Argument(help="Which component to create.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the component to.")],
    variant: Annotated[
        str | None,
        typer.Option("--type", help="Type within the kind: fusion merge_attention|text_only|vision_only; vision clip|efficientnet."),
    ] = None,
    backbone: Annotated[str | None, opt.create_option("backbone")] = None,
    dim: Annotated[int | None, opt.create_option("dim")] = None,
    trainable_layers: Annotated[int, opt.create_option("trainable_layers")] = 2,
    max_tokens: Annotated[int, opt.create_option("max_tokens")] = 50,
    heads: Annotated[int | None, opt.create_option("heads")] = None,
    layers: Annotated[int, opt.create_option("layers")] = 2,
    max_length: Annotated[int, opt.create_option("max_length")] = 20,
    dropout: Annotated[float, opt.create_option("dropout")] = 0.1,
    overwrite: opt.Overwrite = False,
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
@opt.reports_errors
def assemble(
    out: Annotated[Path, typer.Option("--out", help="Folder for the assembled model.")],
    text: opt.TextRef = None,
    vision: opt.VisionRef = None,
    fusion: opt.FusionRef = None,
    user: opt.UserRef = None,
    overwrite: opt.Overwrite = False,
) -> None:
    """Combine components into one model; missing parts are created where the method needs them."""
    path, notes = api.assemble(out, text=text, vision=vision, fusion=fusion, user=user, overwrite=overwrite)
    for note in notes:
        typer.echo(f"note: {note}")
    typer.echo(f"wrote assembled model to {path}")


@app.command("inspect")
@opt.reports_errors
def inspect_command(
    reference: Annotated[str, typer.Argument(help="Component or model: folder, hub:ORG/NAME[@REV] or hf://...")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Print each component's type, key config, parameter counts and provenance."""
    from pmmrec.inspection import format_inspection

    report = api.inspect(reference)
    typer.echo(json.dumps(report, indent=2) if as_json else format_inspection(report))


@app.command("push")
@opt.reports_errors
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


app.command("pretrain")(
    opt.training_command(
        "pretrain",
        "Pre-train on a source dataset with next-item prediction, NICL, NID and RCL; writes RUN/components/*.",
        lambda out: f"components written to {out / 'components'} (publish each with `pmmrec push`)",
    )
)
app.command("finetune")(
    opt.training_command(
        "finetune",
        "Fine-tune any combination of components (or train from scratch) on a target dataset; writes RUN/model.",
        lambda out: f"best model written to {out / 'model'}",
    )
)


# ---- using a model -------------------------------------------------------------------------------------------


@app.command("evaluate")
@opt.reports_errors
def evaluate(
    data: opt.DataDir,
    model: Annotated[
        str | None, typer.Option("--model", help="Assembled model: folder or hub reference (or give --baseline).")
    ] = None,
    baseline: Annotated[
        opt.BaselineChoice | None,
        typer.Option(help="Evaluate a zero-training baseline instead of a model: popularity or content-knn."),
    ] = None,
    split: Annotated[opt.SplitChoice, typer.Option(help="Which leave-one-out target to rank.")] = opt.SplitChoice.test,
    k: Annotated[list[int] | None, typer.Option("--k", help="Cut-offs: --k 10 20 50 (default) or --k 10 --k 20.")] = None,
    min_length: Annotated[
        int | None,
        typer.Option("--min-length", help="Users with fewer interactions are dropped (default: as the model's run, else 3)."),
    ] = None,
    max_history: Annotated[
        int | None,
        typer.Option("--max-history", help="Keep the last N interactions per user (default: as the model's run, else all)."),
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option(
            "--max-length",
            help="History items the model reads (default: as the model's run, else its maximum; content-knn: 20).",
        ),
    ] = None,
    history: Annotated[
        opt.HistoryChoice,
        typer.Option(help="exclude: history items are not ranked (pmmrec); include: they are (RecBole's protocol)."),
    ] = opt.HistoryChoice.exclude,
    output: Annotated[Path | None, typer.Option("--output", help="Write the metrics and per-user ranks as JSON here.")] = None,
    device: opt.Device = None,
    quiet: opt.Quiet = False,
    resume_dir: Annotated[
        Path | None, typer.Option("--resume-dir", help="Keep finished users' ranks here; a rerun resumes from them.")
    ] = None,
    cache_prefixes: Annotated[
        bool, typer.Option("--cache-prefixes", help="Reuse frozen-prefix files (fp16) across evaluations.")
    ] = False,
    more_k: Annotated[
        list[int] | None, typer.Argument(metavar="[K]...", hidden=True, help="Further cut-offs after --k.")
    ] = None,
) -> None:
    """Full-ranking HR, NDCG and MRR at each K of a model or a baseline (ties count in the user's favour)."""
    from pmmrec.evaluation import format_metrics_table

    if (model is None) == (baseline is None):
        raise typer.BadParameter("give exactly one of --model and --baseline", param_hint="--model / --baseline")
    ks = tuple([*(k or []), *(more_k or [])] or (10, 20, 50))
    metrics = api.evaluate(
        model, data, baseline=baseline.value if baseline is not None else None, split=split.value, ks=ks,
        min_length=min_length, max_history=max_history, max_length=max_length, history=history.value, out=output,
        device=device, progress=not quiet, resume_dir=resume_dir, cache_prefixes=cache_prefixes,
    )  # fmt: skip
    if not opt.is_main_process():
        return
    typer.echo(f"{split.value} split of {data}" + (f" ({baseline.value})" if baseline is not None else "") + ":")
    typer.echo(format_metrics_table(metrics, ks))
    if output is not None:
        typer.echo(f"metrics written to {output}")


@app.command("recommend")
@opt.reports_errors
def recommend(
    model: opt.ModelRef,
    data: opt.DataDir,
    user: Annotated[str | None, typer.Option("--user", help="A user id of users.tsv.")] = None,
    history: Annotated[str | None, typer.Option("--history", help='Item ids, oldest first: "ID ID ...".')] = None,
    k: Annotated[int, typer.Option("--k", help="How many items to return.")] = 10,
    exclude_seen: Annotated[
        bool, typer.Option("--exclude-seen/--keep-seen", help="Leave the history's items out of the ranking.")
    ] = True,
    items: Annotated[
        Path | None, typer.Option("--items", help="Extra candidate items (item_id<TAB>text), never seen in training.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    device: opt.Device = None,
) -> None:
    """Top-k items for a user or a history; new items are recommendable from their content alone."""
    ranked = api.recommend(
        model, data, user=user, history=history.split() if history is not None else None, k=k,
        exclude_seen=exclude_seen, extra_items=items, device=device,
    )  # fmt: skip
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in ranked], indent=2))
        return
    width = max([len("item id"), *(len(entry.item_id) for entry in ranked)])
    typer.echo(f"{'rank':>4}  {'score':>8}  {'item id':<{width}}  text")
    for entry in ranked:
        typer.echo(f"{entry.rank:>4}  {entry.score:8.3f}  {entry.item_id:<{width}}  {entry.text}")


app.command("serve")(
    opt.serve_command(
        "Serve recommendations over HTTP (OpenAPI at /docs, a page at /); items added live are stored and rankable "
        "at once."
    )
)


@app.command("demo")
@opt.reports_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for data, runs, the local Hub cache and results.")] = Path(
        "demo_out"
    ),
    quick: Annotated[bool, typer.Option("--quick", help="Smaller settings: a few minutes on a laptop CPU.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    device: opt.Device = None,
    quiet: opt.Quiet = False,
    curve: Annotated[
        bool,
        typer.Option(
            "--curve",
            help="The whole learning curve: 5 shares of the target's users (5% to 100%), 3 seeds, every trained row "
            "searched on validation at every share (many times longer than the default small curve).",
        ),
    ] = False,
) -> None:
    """Pre-train on MovieLens source, publish, assemble, transfer to the target domain, print the comparison and a
    learning curve (test NDCG@10 against the share of the target's users that trains)."""
    api.demo(out, quick=quick, seed=seed, device=device, progress=not quiet, curve=curve)


# ---- datasets ------------------------------------------------------------------------------------------------


@data_app.command("movielens")
@opt.reports_errors
def data_movielens(
    out: Annotated[Path, typer.Option("--out", help="Dataset folder to create.")],
    domain: Annotated[
        opt.DomainChoice, typer.Option(help="all = whole MovieLens-100K; source/target = the two transfer domains.")
    ] = opt.DomainChoice.all,
    images: Annotated[
        opt.ImagesChoice, typer.Option(help="none, or synthetic pictures drawn from title and genres.")
    ] = opt.ImagesChoice.none,
    size: opt.ImageSize = 224,
    new_items: Annotated[
        float,
        typer.Option(
            "--new-items",
            help="Share of items held out as new items: they occur only as validation and test targets (the demo: 0.2).",
        ),
    ] = 0.0,
    new_items_rule: Annotated[
        opt.NewItemRuleChoice,
        typer.Option(
            help="first-seen = the items whose first interaction is latest (cold start in time); hash = the rule used "
            "before issue 24, unrelated to time (kept to reproduce older tables).",
        ),
    ] = opt.NewItemRuleChoice.first_seen,
    overwrite: opt.Overwrite = False,
) -> None:
    """Build MovieLens-100K from the installed recbole==1.2.1 wheel (never redistribute the result)."""
    from pmmrec.data import format_statistics
    from pmmrec.data.movielens import LICENCE_NOTE

    path = api.data_movielens(
        out,
        domain=domain.value,
        images=images.value,
        size=size,
        new_items=new_items,
        new_items_rule=new_items_rule.value,
        overwrite=overwrite,
    )
    typer.echo(f"wrote {path}")
    typer.echo(format_statistics(api.data_check(path)))
    typer.echo(f"licence: {LICENCE_NOTE}")


@data_app.command("build-lmdb")
@opt.reports_errors
def data_build_lmdb(
    items: Annotated[Path, typer.Option("--items", help="items.tsv whose item ids name the images.")],
    images: Annotated[Path, typer.Option("--images", help="Folder of <item id>.jpg|jpeg|png|webp files.")],
    out: Annotated[Path, typer.Option("--out", help="LMDB folder to create (e.g. DATASET/images.lmdb).")],
    size: opt.ImageSize = 224,
    payload: opt.ImagePayload = opt.PayloadChoice.png,
    allow_missing: opt.AllowMissing = False,
    overwrite: opt.Overwrite = False,
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
@opt.reports_errors
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
    size: opt.ImageSize = 224,
    payload: opt.ImagePayload = opt.PayloadChoice.png,
    allow_missing: opt.AllowMissing = False,
    overwrite: opt.Overwrite = False,
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
@opt.reports_errors
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
