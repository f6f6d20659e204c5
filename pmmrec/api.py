"""The function behind every command, with the command's name (`data movielens` -> `data_movielens`).

`pmmrec.cli` is a table over these functions; from Python they are the same operations with the same defaults.
Each one loads what it is given, calls the library, and writes what the command writes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pmmrec._version import __version__

__all__ = [
    "assemble",
    "data_build_lmdb",
    "data_check",
    "data_import_reference",
    "data_movielens",
    "demo",
    "evaluate",
    "finetune",
    "init",
    "inspect",
    "pretrain",
    "push",
    "recommend",
    "serve",
    "version",
]

PathLike = str | os.PathLike[str]


def version() -> str:
    """The installed pmmrec version."""
    return __version__


# ---- components and models -----------------------------------------------------------------------------------


def init(kind: str, out: PathLike, *, variant: str | None = None, overwrite: bool = False, **options: Any) -> Path:
    """Create a fresh component of `kind` (pretrained backbone where named) and save it as an artefact.

    `options` are the fields of `pmmrec.components.CreateOptions` (dim, backbone, trainable_layers, ...).
    """
    from pmmrec.components import CreateOptions, create_component
    from pmmrec.errors import ConfigError, describe_validation_error

    try:
        create_options = CreateOptions(**options)
    except ValueError as exc:
        raise ConfigError(f"pmmrec init {kind}: {describe_validation_error(exc)}") from None
    return create_component(kind, create_options, variant).save_pretrained(out, overwrite=overwrite)


def assemble(
    out: PathLike,
    *,
    text: str | None = None,
    vision: str | None = None,
    fusion: str | None = None,
    user: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, list[str]]:
    """Assemble components given by reference into a model folder; returns it and notes on what was created."""
    from pmmrec.errors import ArtefactError
    from pmmrec.model import PMMRec

    if Path(out).exists() and not overwrite:
        raise ArtefactError(f"{out} already exists; pass --overwrite to replace it")
    model = PMMRec.assemble(text=text, vision=vision, fusion=fusion, user=user)
    return model.save_pretrained(out, overwrite=overwrite), model.assembly_notes


def inspect(reference: str, revision: str | None = None) -> dict[str, Any]:
    """Type, key config, parameter counts and provenance of a component or an assembled model."""
    from pmmrec.inspection import inspect_reference

    return inspect_reference(reference, revision)


def push(
    folder: PathLike,
    repo: str,
    *,
    tag: str | None = None,
    token: str | None = None,
    private: bool = False,
    api: Any = None,
) -> str:
    """Publish a component or assembled-model folder to the Hub (refused unless it loads); returns the commit id."""
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


def pretrain(
    data: PathLike,
    out: PathLike,
    *,
    config: PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    **options: Any,
) -> Any:
    """Pre-train on a source dataset (next-item prediction, NICL, NID, RCL); RUN/components/<slot> holds each part.

    `options` are the flat training options (`pmmrec.training.config.TRAIN_OPTIONS`: epochs, lr, text, ...); they
    override the YAML file `config`, which overrides the defaults.
    """
    return _train("pretrain", data, out, config, resume, progress, options)


def finetune(
    data: PathLike,
    out: PathLike,
    *,
    config: PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    **options: Any,
) -> Any:
    """Fine-tune any combination of components (or train from scratch) on a target dataset; RUN/model is the best."""
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
    from pmmrec.training.config import overrides_from_options
    from pmmrec.training.jobs import train

    overrides = overrides_from_options(options)
    return train(mode, data, out, config_path=config, overrides=overrides, resume=resume, progress=progress)


# ---- using a model -------------------------------------------------------------------------------------------


def evaluate(
    model: PathLike | Any | None,
    data: PathLike,
    *,
    baseline: str | None = None,
    split: str = "test",
    ks: Sequence[int] = (10, 20, 50),
    min_length: int | None = None,
    max_history: int | None = None,
    max_length: int | None = None,
    history: str = "exclude",
    out: PathLike | None = None,
    device: str | None = None,
    progress: bool = True,
    resume_dir: PathLike | None = None,
    cache_prefixes: bool = False,
) -> dict[str, float]:
    """Full-ranking HR/NDCG/MRR@K of a model (or of a zero-training `baseline`) on a dataset's valid or test targets.

    The data is split as the model's training run recorded (RUN/model/data_split.json: min_length, max_history,
    max_length); given arguments override it, and without a record the defaults are min_length 3, every
    interaction, and the model's own maximum length. history: exclude (pmmrec's protocol: a user's history items
    are not ranked) or include (RecBole's sequential protocol). `out` receives the metrics and per-user ranks.
    `resume_dir` keeps finished users' ranks as they are computed, so an interrupted evaluation resumes there;
    `cache_prefixes` reuses frozen-prefix files across evaluations of models with the same frozen bottom. A model
    object given without `device` is evaluated where it is.
    """
    from pmmrec.arguments import check_arguments
    from pmmrec.data import leave_one_out, load_dataset
    from pmmrec.distributed import setup_distributed
    from pmmrec.errors import ConfigError
    from pmmrec.fileio import write_json
    from pmmrec.model import read_model_split_record

    check_arguments(ks=ks, min_length=min_length, max_history=max_history, max_length=max_length)
    if history not in ("exclude", "include"):
        raise ConfigError(f"--history must be exclude or include, got {history!r}")
    if (model is None) == (baseline is None):
        raise ConfigError("give exactly one of --model and --baseline")
    record = None
    needed = min_length is None or max_history is None or max_length is None  # all given: the record is not read
    if needed and isinstance(model, str | os.PathLike) and Path(model).is_dir():
        record = read_model_split_record(model)
    record = record or {}
    min_length = min_length if min_length is not None else record.get("min_length") or 3
    max_history = max_history if max_history is not None else record.get("max_history")
    max_length = max_length if max_length is not None else record.get("max_length")
    context = setup_distributed(_requested_device(model, device))
    loaded = None
    if model is not None:
        from pmmrec.model import PMMRec

        loaded = model if isinstance(model, PMMRec) else PMMRec.from_pretrained(str(model))
        loaded.to(context.device)
    dataset = load_dataset(data)
    split_data = leave_one_out(dataset.sequences, min_length, max_history)
    if split_data.num_users == 0:
        raise ConfigError(
            f"{data}: no user has the {min_length} interactions a leave-one-out split needs, so there is nothing to "
            "evaluate (lower --min-length, or use a dataset with longer sequences)"
        )
    if loaded is not None and max_length is not None and max_length > loaded.max_length:
        raise ConfigError(
            f"--max-length {max_length} (or data_split.json's max_length) is longer than the {loaded.max_length} items "
            "the model's user encoder reads"
        )
    if baseline is not None:
        import torch

        from pmmrec.baselines import KNN_HISTORY, baseline_ranks
        from pmmrec.evaluation import metrics_from_ranks

        window = max_length if max_length is not None else KNN_HISTORY
        ranks = baseline_ranks(baseline, dataset, split_data, split, exclude_history=history == "exclude", max_length=window)
        metrics = metrics_from_ranks(torch.as_tensor(ranks), tuple(ks))
        timing = None
    else:
        from pmmrec.inference import evaluate_split, make_collator

        assert loaded is not None
        loaded.bind_catalogue(dataset.item_ids)
        result = evaluate_split(
            loaded, split_data, split, make_collator(loaded, dataset), dataset.num_items, context.device, context,
            ks=tuple(ks), progress=progress, max_length=max_length, exclude_history=history == "exclude",
            resume_dir=Path(resume_dir) if resume_dir is not None else None, cache_prefixes=cache_prefixes,
        )  # fmt: skip
        ranks, metrics, timing = result.ranks, result.metrics, result.timings
    if out is not None and context.is_main:
        source = baseline if baseline is not None else None if not isinstance(model, str | os.PathLike) else str(model)
        settings = {"min_length": min_length, "max_history": max_history, "max_length": max_length, "history": history}
        users = [dataset.user_ids[row] for row in split_data.user_rows]
        write_json(
            out,
            {"model": source, "data": str(data), "split": split, **settings, **metrics, "users": users,
             "ranks": [int(rank) for rank in ranks], **({"timing": timing} if timing else {})},
        )  # fmt: skip
    return metrics


def recommend(
    model: PathLike | Any,
    data: PathLike,
    *,
    user: str | None = None,
    history: list[str] | None = None,
    k: int = 10,
    exclude_seen: bool = True,
    extra_items: PathLike | None = None,
    device: str | None = None,
) -> list[Any]:
    """Top-k items for a known user or an explicit history; `extra_items` adds candidates by content alone.

    A model object given without `device` stays where it is; with `device` it is moved there (in place).
    """
    from pmmrec.arguments import check_arguments
    from pmmrec.data import load_dataset, read_items_tsv
    from pmmrec.distributed import choose_device
    from pmmrec.errors import ConfigError
    from pmmrec.inference import encode_catalogue, make_collator, top_k
    from pmmrec.model import PMMRec

    check_arguments(k=k)
    if (user is None) == (history is None):
        raise ConfigError("give exactly one of --user and --history")
    target_device = choose_device(_requested_device(model, device))
    loaded = model if isinstance(model, PMMRec) else PMMRec.from_pretrained(str(model))
    loaded.to(target_device)
    dataset = load_dataset(data)
    if extra_items is not None:
        if loaded.item_tower is not None:
            raise ConfigError("--items: an ID-based model cannot score items it was not trained on")
        if loaded.vision is not None:
            raise ConfigError("--items: this model reads images; extra items need images (add them to the dataset instead)")
        extra_ids, extra_texts = read_items_tsv(extra_items)
        dataset = dataset.with_extra_items(extra_ids, extra_texts, source=str(extra_items))
    loaded.bind_catalogue(dataset.item_ids)
    index = dataset.item_index()
    if user is not None:
        try:
            row = dataset.user_ids.index(user)
        except ValueError:
            raise ConfigError(f"--user {user!r}: not in {dataset.root / 'users.tsv'}") from None
        sequence = [int(i) for i in dataset.sequences[row]]
    else:
        unknown = [item for item in history or [] if item not in index]
        if unknown:
            raise ConfigError(f"--history: unknown item ids {unknown[:5]} (not in items.tsv or --items)")
        sequence = [index[item] for item in history or []]
    table = encode_catalogue(loaded, make_collator(loaded, dataset), len(dataset.item_ids), target_device)
    exclude = sequence if exclude_seen else ()
    return top_k(loaded, table, dataset.item_ids, dataset.item_texts, sequence, k=k, exclude=exclude)


def _requested_device(model: Any, device: str | None) -> str | None:
    """`device`, or for a model object given without one, where that model is (it is not moved)."""
    from pmmrec.model import PMMRec

    return str(model.device) if device is None and isinstance(model, PMMRec) else device


def serve(model: str, data: PathLike, **options: Any) -> None:
    """Serve recommendations over HTTP until SIGTERM (needs the `serve` extra); live items are stored in `state`.

    `options` are `pmmrec serve`'s flags by name (`pmmrec.serving.options.SERVE_FLAGS`: host, port, state, store,
    batching, ...), validated by `ServeOptions`; a bad value is one error naming its flag.
    """
    from pmmrec.errors import ConfigError
    from pmmrec.serving.options import options_from_flags

    serve_options = options_from_flags(options)
    try:
        from pmmrec.serving import serve as run_server
    except ImportError as exc:
        raise ConfigError(str(exc)) from None
    run_server(str(model), data, serve_options)


def demo(
    out: PathLike = "demo_out",
    *,
    quick: bool = False,
    seed: int = 42,
    device: str | None = None,
    progress: bool = True,
    curve: bool = False,
) -> dict[str, Any]:
    """Pre-train on MovieLens source, publish, assemble, transfer to the target domain; returns results.json.

    `curve`: the whole learning curve (5 shares of the target's users, 3 seeds, every trained row searched on
    validation at every share) instead of the demo's small one.
    """
    from pmmrec.demo import demo as run_demo

    return run_demo(out, quick=quick, seed=seed, device=device, progress=progress, curve=curve)


# ---- datasets ------------------------------------------------------------------------------------------------


def data_movielens(
    out: PathLike,
    *,
    domain: str = "all",
    images: str = "none",
    size: int = 224,
    new_items: float = 0.0,
    new_items_rule: str = "first-seen",
    overwrite: bool = False,
) -> Path:
    """Build MovieLens-100K (or its source/target domain) from the installed recbole==1.2.1 wheel.

    new_items: share of items held out as new items (only ever a validation or test target), as the demo does;
    new_items_rule: first-seen (the items that appear last in the domain's time line) or hash (pre-issue-24 rule).
    """
    from pmmrec.arguments import check_arguments
    from pmmrec.data import build_movielens

    check_arguments(size=size, new_items=new_items)
    return build_movielens(
        out, domain=domain, images=images, image_size=size, overwrite=overwrite, new_items=new_items,
        new_items_rule=new_items_rule,
    )  # fmt: skip


def data_build_lmdb(
    items: PathLike,
    images: PathLike,
    out: PathLike,
    *,
    size: int = 224,
    payload: str = "png",
    allow_missing: bool = False,
    overwrite: bool = False,
) -> Any:
    """Resize item images once and store them in an LMDB keyed by item id (no pickle); returns the build report."""
    from pmmrec.arguments import check_arguments
    from pmmrec.data import build_image_lmdb

    check_arguments(size=size)
    return build_image_lmdb(
        Path(items), Path(images), Path(out), size=size, payload_format=payload, allow_missing=allow_missing,
        overwrite=overwrite,
    )  # fmt: skip


def data_import_reference(
    users: PathLike,
    items: PathLike,
    out: PathLike,
    *,
    lmdb: PathLike | None = None,
    trust_pickle: bool = False,
    name: str | None = None,
    size: int = 224,
    payload: str = "png",
    allow_missing: bool = False,
    overwrite: bool = False,
) -> Path:
    """Convert the reference family's users/items files (and image LMDB) into a dataset folder."""
    from pmmrec.arguments import check_arguments
    from pmmrec.data import import_reference

    check_arguments(size=size)
    return import_reference(
        users, items, out, lmdb_path=lmdb, trust_pickle=trust_pickle, image_size=size, payload_format=payload,
        allow_missing=allow_missing, overwrite=overwrite, name=name,
    )  # fmt: skip


def data_check(folder: PathLike) -> dict[str, Any]:
    """Validate a dataset folder (hashes, lines, ids, texts, images); returns its statistics."""
    from pmmrec.data import check_dataset

    return check_dataset(folder)
