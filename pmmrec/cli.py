"""Command-line interface: a thin Typer layer over the library functions of the same names."""

from __future__ import annotations

import functools
import json
import os
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
    """Turn bad input (PmmrecError) and OS errors (missing file, full disk) into one line and exit status 1.

    Set PMMREC_DEBUG=1 to see the traceback instead.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (PmmrecError, OSError) as exc:
            if os.environ.get("PMMREC_DEBUG"):
                raise
            message = str(exc) if isinstance(exc, PmmrecError) else _describe_os_error(exc)
            typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
            raise typer.Exit(code=1) from None

    return wrapper  # type: ignore[return-value]


def _describe_os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
    return f"{where}{exc.strerror or exc}"


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


class ItemTowerChoice(str, Enum):
    content = "content"
    id = "id"


class SplitChoice(str, Enum):
    valid = "valid"
    test = "test"


def _training_options(
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    max_length: int | None,
    seed: int | None,
    device: str | None,
    freeze: list[str] | None,
    lr_component: list[str] | None,
    weights: dict[str, float | None],
    patience: int | None,
    max_steps: int | None,
    num_workers: int | None,
    gather_negatives: bool | None,
    precision: str | None,
) -> dict[str, Any]:
    """Command-line flags as config overrides (None = not given, so the YAML file or default stands)."""
    component_lr = {}
    for entry in lr_component or []:
        slot, sep, value = entry.partition("=")
        try:
            component_lr[slot] = float(value) if sep else float("nan")
        except ValueError:
            raise typer.BadParameter(f"--lr-component {entry!r}: expected SLOT=LR, e.g. text=5e-5") from None
        if not sep:
            raise typer.BadParameter(f"--lr-component {entry!r}: expected SLOT=LR, e.g. text=5e-5")
    overrides: dict[str, Any] = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "max_length": max_length,
        "seed": seed,
        "device": device,
        "freeze": freeze or None,
        "component_lr": component_lr or None,
        "patience": patience,
        "max_steps": max_steps,
        "num_workers": num_workers,
        "gather_negatives": gather_negatives,
        "precision": precision,
    }
    given_weights = {name: value for name, value in weights.items() if value is not None}
    if given_weights:
        overrides["objectives"] = {"weights": given_weights}
    return overrides


def _model_spec(
    text: str | None,
    vision: str | None,
    fusion: str | None,
    user: str | None,
    modalities: list[str] | None,
    item_tower: ItemTowerChoice,
    text_backbone: str | None,
    vision_backbone: str | None,
    dim: int | None,
    text_trainable_layers: int | None,
    vision_trainable_layers: int | None,
) -> Any:
    from pmmrec.training.jobs import ModelSpec

    return ModelSpec(
        text=text,
        vision=vision,
        fusion=fusion,
        user=user,
        modalities=modalities or None,
        item_tower=item_tower.value,  # type: ignore[arg-type]
        text_backbone=text_backbone,
        vision_backbone=vision_backbone,
        dim=dim,
        trainable_layers={
            name: value
            for name, value in (("text", text_trainable_layers), ("vision", vision_trainable_layers))
            if value is not None
        },
    )


DataDir = Annotated[Path, typer.Option("--data", help="Dataset folder (users.tsv, items.tsv, dataset.json).")]
RunDir = Annotated[Path, typer.Option("--out", help="Run folder (checkpoints, logs, outputs).")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="YAML file of training options; flags override it.")]
Modalities = Annotated[
    list[str] | None, typer.Option("--modality", help="Item modality of the model (repeat for text and vision).")
]
Epochs = Annotated[int | None, typer.Option(help="Training epochs.")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help="Users per batch per process.")]
LearningRate = Annotated[float | None, typer.Option("--lr", help="Learning rate of every trained part.")]
LrComponent = Annotated[list[str] | None, typer.Option("--lr-component", help="Per-component lr, SLOT=LR (repeatable).")]
Freeze = Annotated[list[str] | None, typer.Option("--freeze", help="Component not to train (repeatable).")]
MaxLength = Annotated[int | None, typer.Option("--max-length", help="Items per input sequence.")]
Seed = Annotated[int | None, typer.Option(help="Random seed.")]
Device = Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N (default: CUDA if available).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from RUN/checkpoints/last.")]
Patience = Annotated[int | None, typer.Option(help="Early stopping after N epochs without improvement.")]
MaxSteps = Annotated[int | None, typer.Option("--max-steps", help="Stop after N optimiser steps.")]
Workers = Annotated[int | None, typer.Option("--num-workers", help="DataLoader worker processes.")]
Gather = Annotated[bool | None, typer.Option("--gather-negatives/--no-gather-negatives", help="Use other processes' items as negatives.")]
Precision = Annotated[str | None, typer.Option(help="auto, fp32, bf16 or fp16.")]
WeightRec = Annotated[float | None, typer.Option("--rec-weight", help="Weight of next-item prediction.")]
WeightNicl = Annotated[float | None, typer.Option("--nicl-weight", help="Weight of NICL (0 switches it off).")]
WeightNid = Annotated[float | None, typer.Option("--nid-weight", help="Weight of NID (0 switches it off).")]
WeightRcl = Annotated[float | None, typer.Option("--rcl-weight", help="Weight of RCL (0 switches it off).")]
TextBackbone = Annotated[str | None, typer.Option("--text-backbone", help="Backbone of a fresh text encoder (default minilm).")]
VisionBackbone = Annotated[
    str | None, typer.Option("--vision-backbone", help="Backbone of a fresh vision encoder (default efficientnet-lite0).")
]
Dim = Annotated[int | None, typer.Option(help="Embedding width d of fresh components.")]
TextLayers = Annotated[
    int | None, typer.Option("--text-trainable-layers", help="Text encoder: top layers trained (fresh default 2).")
]
VisionLayers = Annotated[
    int | None, typer.Option("--vision-trainable-layers", help="Vision encoder: top blocks trained (fresh default 2).")
]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]


def _is_main_process() -> bool:
    """Under torchrun only rank 0 prints results."""
    return os.environ.get("RANK", "0") == "0"


def _train_command(
    mode: str,
    data: Path,
    out: Path,
    spec: Any,
    config: Path | None,
    overrides: dict[str, Any],
    resume: bool,
    quiet: bool,
) -> Any:
    from pmmrec.training import jobs
    from pmmrec.training.loop import TrainingInterrupted

    job = jobs.pretrain if mode == "pretrain" else jobs.finetune
    try:
        result = job(data, out, spec, config_path=config, overrides=overrides, resume=resume, progress=not quiet)
    except TrainingInterrupted as exc:
        typer.secho(f"interrupted: {exc}", err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(code=130) from None
    return result


@app.command("pretrain")
@reports_errors
def pretrain(
    data: DataDir,
    out: RunDir,
    text: TextRef = None,
    vision: VisionRef = None,
    fusion: FusionRef = None,
    user: UserRef = None,
    modality: Modalities = None,
    config: ConfigFile = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    lr_component: LrComponent = None,
    freeze: Freeze = None,
    max_length: MaxLength = None,
    rec_weight: WeightRec = None,
    nicl_weight: WeightNicl = None,
    nid_weight: WeightNid = None,
    rcl_weight: WeightRcl = None,
    text_backbone: TextBackbone = None,
    vision_backbone: VisionBackbone = None,
    dim: Dim = None,
    text_trainable_layers: TextLayers = None,
    vision_trainable_layers: VisionLayers = None,
    seed: Seed = None,
    device: Device = None,
    precision: Precision = None,
    patience: Patience = None,
    max_steps: MaxSteps = None,
    num_workers: Workers = None,
    gather_negatives: Gather = None,
    resume: Resume = False,
    quiet: Quiet = False,
) -> None:
    """Pre-train on a source dataset with next-item prediction, NICL, NID and RCL; writes RUN/components/*."""
    spec = _model_spec(text, vision, fusion, user, modality, ItemTowerChoice.content, text_backbone, vision_backbone, dim, text_trainable_layers, vision_trainable_layers)
    overrides = _training_options(
        epochs, batch_size, lr, max_length, seed, device, freeze, lr_component,
        {"rec": rec_weight, "nicl": nicl_weight, "nid": nid_weight, "rcl": rcl_weight},
        patience, max_steps, num_workers, gather_negatives, precision,
    )
    _train_command("pretrain", data, out, spec, config, overrides, resume, quiet)
    if _is_main_process():
        typer.echo(f"components written to {out / 'components'} (publish each with `pmmrec push`)")


@app.command("finetune")
@reports_errors
def finetune(
    data: DataDir,
    out: RunDir,
    text: TextRef = None,
    vision: VisionRef = None,
    fusion: FusionRef = None,
    user: UserRef = None,
    modality: Modalities = None,
    item_tower: Annotated[
        ItemTowerChoice, typer.Option("--item-tower", help="content (PMMRec) or id (the SASRec-ID baseline).")
    ] = ItemTowerChoice.content,
    config: ConfigFile = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    lr_component: LrComponent = None,
    freeze: Freeze = None,
    max_length: MaxLength = None,
    rec_weight: WeightRec = None,
    nicl_weight: WeightNicl = None,
    nid_weight: WeightNid = None,
    rcl_weight: WeightRcl = None,
    text_backbone: TextBackbone = None,
    vision_backbone: VisionBackbone = None,
    dim: Dim = None,
    text_trainable_layers: TextLayers = None,
    vision_trainable_layers: VisionLayers = None,
    seed: Seed = None,
    device: Device = None,
    precision: Precision = None,
    patience: Patience = None,
    max_steps: MaxSteps = None,
    num_workers: Workers = None,
    gather_negatives: Gather = None,
    resume: Resume = False,
    quiet: Quiet = False,
) -> None:
    """Fine-tune any combination of components (or train from scratch) on a target dataset; writes RUN/model."""
    spec = _model_spec(text, vision, fusion, user, modality, item_tower, text_backbone, vision_backbone, dim, text_trainable_layers, vision_trainable_layers)
    overrides = _training_options(
        epochs, batch_size, lr, max_length, seed, device, freeze, lr_component,
        {"rec": rec_weight, "nicl": nicl_weight, "nid": nid_weight, "rcl": rcl_weight},
        patience, max_steps, num_workers, gather_negatives, precision,
    )
    _train_command("finetune", data, out, spec, config, overrides, resume, quiet)
    if _is_main_process():
        typer.echo(f"best model written to {out / 'model'}")


@app.command("evaluate")
@reports_errors
def evaluate(
    model: Annotated[str, typer.Option("--model", help="Assembled model: folder or hub reference.")],
    data: DataDir,
    split: Annotated[SplitChoice, typer.Option(help="Which leave-one-out target to rank.")] = SplitChoice.test,
    k: Annotated[list[int] | None, typer.Option("--k", help="Cut-offs: --k 10 20 50 (default) or --k 10 --k 20.")] = None,
    min_length: Annotated[int, typer.Option("--min-length", help="Users with fewer interactions are dropped.")] = 3,
    max_history: Annotated[int | None, typer.Option("--max-history", help="Keep the last N interactions per user.")] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Write the metrics as JSON here.")] = None,
    device: Device = None,
    quiet: Quiet = False,
    more_k: Annotated[
        list[int] | None, typer.Argument(hidden=True, help="Further cut-offs after --k (--k 10 20 50).")
    ] = None,
) -> None:
    """Full-ranking HR, NDCG and MRR at each K (history excluded; ties count in the user's favour)."""
    from pmmrec.evaluation import format_metrics_table
    from pmmrec.training import jobs

    ks = tuple([*(k or []), *(more_k or [])] or (10, 20, 50))
    metrics = jobs.evaluate(
        model, data, split=split.value, ks=ks, min_length=min_length, max_history=max_history, out=output, device=device, progress=not quiet
    )
    if not _is_main_process():
        return
    typer.echo(f"{split.value} split of {data}:")
    typer.echo(format_metrics_table(metrics, ks))
    if output is not None:
        typer.echo(f"metrics written to {output}")


@app.command("recommend")
@reports_errors
def recommend(
    model: Annotated[str, typer.Option("--model", help="Assembled model: folder or hub reference.")],
    data: DataDir,
    user: Annotated[str | None, typer.Option("--user", help="A user id of users.tsv.")] = None,
    history: Annotated[str | None, typer.Option("--history", help='Item ids, oldest first: "ID ID ...".')] = None,
    k: Annotated[int, typer.Option("--k", help="How many items to return.")] = 10,
    exclude_seen: Annotated[bool, typer.Option("--exclude-seen", help="Never return items of the history.")] = False,
    items: Annotated[Path | None, typer.Option("--items", help="Extra candidate items (item_id<TAB>text), never seen in training.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    device: Device = None,
) -> None:
    """Top-k items for a user or a history; new items are recommendable from their content alone."""
    from dataclasses import asdict

    from pmmrec.training import jobs

    ranked = jobs.recommend(
        model, data, user=user, history=history.split() if history is not None else None, k=k,
        exclude_seen=exclude_seen, extra_items=items, device=device,
    )
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in ranked], indent=2))
        return
    for entry in ranked:
        typer.echo(f"{entry.rank:>3}  {entry.score:8.3f}  {entry.item_id}\t{entry.text}")


@app.command("serve")
@reports_errors
def serve(
    model: Annotated[str, typer.Option("--model", help="Assembled model: folder or hub reference.")],
    data: DataDir,
    host: Annotated[str, typer.Option(help="Interface to listen on (the API has no authentication).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    threads: Annotated[int, typer.Option(help="torch threads for ranking (1: the other core serves HTTP).")] = 1,
    device: Device = None,
    quiet: Quiet = False,
    state: Annotated[Path | None, typer.Option(help="State folder: live items (SQLite) and table/index caches; default: $PMMREC_STATE or ~/.local/state/pmmrec/serve/DATASET-HASH.")] = None,
    store: Annotated[str | None, typer.Option(help="postgresql:// URL of a live-item store shared by replicas.")] = None,
    api_key_file: Annotated[Path | None, typer.Option(help="File holding the API key POST /items needs (else $PMMREC_API_KEY; none: no auth).")] = None,
    protect_reads: Annotated[bool, typer.Option(help="Require the API key on every route but /health and /metrics.")] = False,
    batching: Annotated[bool, typer.Option(help="Rank concurrent /recommend requests together.")] = True,
    batch_wait_ms: Annotated[float, typer.Option(help="Longest wait for requests already in flight to join a batch.")] = 2.0,
    ann: Annotated[str | None, typer.Option(help="Approximate search for large catalogues: faiss, usearch or hnswlib.")] = None,
    ann_min_items: Annotated[int, typer.Option(help="Catalogue size from which --ann is used (exact search below).")] = 200_000,
) -> None:
    """Serve recommendations over HTTP (OpenAPI at /docs, a page at /); items added live are stored and rankable at once."""
    from pmmrec.errors import ConfigError

    try:
        from pmmrec.serving import ServeOptions
        from pmmrec.serving import serve as run_server
    except ImportError as exc:
        raise ConfigError(str(exc)) from None
    try:
        options = ServeOptions(
            state_dir=state, store_url=store, batching=batching, batch_wait_ms=batch_wait_ms, ann=ann, ann_min_items=ann_min_items
        )
    except ValueError as exc:  # pydantic names the option's field and the rule
        raise ConfigError(f"serve: {' '.join(str(exc).split())}") from None
    run_server(
        model, data, host=host, port=port, device=device, progress=not quiet, threads=threads, options=options,
        api_key_file=api_key_file, protect_reads=protect_reads,
    )  # fmt: skip


@app.command("demo")
@reports_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for data, runs, the local Hub cache and results.")] = Path("demo_out"),
    quick: Annotated[bool, typer.Option("--quick", help="Smaller settings: a few minutes on a laptop CPU.")] = False,
    seed: Seed = None,
    quiet: Quiet = False,
) -> None:
    """Pre-train on MovieLens source, publish, assemble, transfer to the target domain, print the comparison."""
    from pmmrec.demo import demo as run_demo

    run_demo(out, quick=quick, seed=seed if seed is not None else 42, progress=not quiet)


# --- data commands -------------------------------------------------------------------------


class DataDomainChoice(str, Enum):
    all = "all"
    source = "source"
    target = "target"


class DataImagesChoice(str, Enum):
    none = "none"
    synthetic = "synthetic"


class ImagePayloadChoice(str, Enum):
    png = "png"
    jpeg = "jpeg"
    raw = "raw"


ImageSize = Annotated[int, typer.Option("--size", help="Side of the stored square images (resize + centre crop).")]
ImagePayload = Annotated[
    ImagePayloadChoice, typer.Option("--format", help="Stored image payload: png (lossless), jpeg or raw pixels.")
]
AllowMissing = Annotated[
    bool, typer.Option("--allow-missing", help="Record items without a usable image instead of failing.")
]


@data_app.command("movielens")
@reports_errors
def data_movielens(
    out: Annotated[Path, typer.Option("--out", help="Dataset folder to create.")],
    domain: Annotated[
        DataDomainChoice, typer.Option(help="all = whole MovieLens-100K; source/target = the two transfer domains.")
    ] = DataDomainChoice.all,
    images: Annotated[
        DataImagesChoice, typer.Option(help="none, or synthetic pictures drawn from title and genres.")
    ] = DataImagesChoice.none,
    size: ImageSize = 224,
    overwrite: Overwrite = False,
) -> None:
    """Build MovieLens-100K from the installed recbole==1.2.1 wheel (never redistribute the result)."""
    from pmmrec.data import build_movielens, check_dataset, format_statistics
    from pmmrec.data.movielens import LICENCE_NOTE

    path = build_movielens(out, domain=domain.value, images=images.value, image_size=size, overwrite=overwrite)
    typer.echo(f"wrote {path}")
    typer.echo(format_statistics(check_dataset(path)))
    typer.echo(f"licence: {LICENCE_NOTE}")


@data_app.command("build-lmdb")
@reports_errors
def data_build_lmdb(
    items: Annotated[Path, typer.Option("--items", help="items.tsv whose item ids name the images.")],
    images: Annotated[Path, typer.Option("--images", help="Folder of <item id>.jpg|jpeg|png|webp files.")],
    out: Annotated[Path, typer.Option("--out", help="LMDB folder to create (e.g. DATASET/images.lmdb).")],
    size: ImageSize = 224,
    payload: ImagePayload = ImagePayloadChoice.png,
    allow_missing: AllowMissing = False,
    overwrite: Overwrite = False,
) -> None:
    """Resize item images once and store them in an LMDB keyed by item id (no pickle)."""
    from pmmrec.data import build_image_lmdb

    report = build_image_lmdb(
        items, images, out, size=size, payload_format=payload.value, allow_missing=allow_missing, overwrite=overwrite
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
    payload: ImagePayload = ImagePayloadChoice.png,
    allow_missing: AllowMissing = False,
    overwrite: Overwrite = False,
) -> None:
    """Convert the reference family's users/items files (and image LMDB) into a dataset folder."""
    import warnings

    from pmmrec.data import check_dataset, format_statistics, import_reference
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
        path = import_reference(
            users,
            items,
            out,
            lmdb_path=lmdb,
            trust_pickle=trust_pickle,
            image_size=size,
            payload_format=payload.value,
            allow_missing=allow_missing,
            overwrite=overwrite,
            name=name,
        )
    typer.echo(f"wrote {path}")
    typer.echo(format_statistics(check_dataset(path)))


@data_app.command("check")
@reports_errors
def data_check(
    folder: Annotated[Path, typer.Argument(help="Dataset folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
) -> None:
    """Validate a dataset folder (hashes, lines, ids, texts, images) and print its statistics."""
    from pmmrec.data import check_dataset, format_statistics

    stats = check_dataset(folder)
    typer.echo(json.dumps(stats, indent=2) if as_json else format_statistics(stats))


def main() -> None:
    """Entry point of the `pmmrec` console script."""
    app()
