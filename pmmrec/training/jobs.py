"""The jobs behind `pmmrec pretrain`, `finetune`, `evaluate` and `recommend`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ValidationError

from pmmrec.data import Dataset, leave_one_out, load_dataset, read_items_tsv
from pmmrec.errors import ConfigError, describe_validation_error
from pmmrec.factory import init_component
from pmmrec.fileio import write_json
from pmmrec.inference import Recommendation, encode_catalogue, evaluate_split, make_collator, top_k
from pmmrec.model import PMMRec, load_slot
from pmmrec.training.config import TrainConfig, finetune_defaults, load_train_config, pretrain_defaults
from pmmrec.training.determinism import deterministic_mode
from pmmrec.training.distributed import setup_distributed
from pmmrec.training.loop import Trainer, TrainResult

Modality = Literal["text", "vision"]


@dataclass
class ModelSpec:
    """Which components to load (references) and how to create the ones that are missing."""

    text: str | None = None
    vision: str | None = None
    fusion: str | None = None
    user: str | None = None
    modalities: list[str] | None = None  # item modalities; default: those of the given encoders, else text
    item_tower: Literal["content", "id"] = "content"
    text_backbone: str | None = None
    vision_backbone: str | None = None
    dim: int | None = None
    trainable_layers: dict[str, int] = field(default_factory=dict)  # per encoder: top-N layers trained
    user_layers: int = 2
    user_heads: int | None = None
    dropout: float = 0.1


def build_model(spec: ModelSpec, dataset: Dataset, max_length: int, seed: int) -> PMMRec:
    """Load the given references, create the missing parts fresh (seeded), and assemble."""
    torch.manual_seed(seed)
    loaded = {slot: load_slot(slot, getattr(spec, slot))[0] for slot in ("text", "vision", "fusion", "user")}
    given_dims = {c.dim for c in loaded.values() if c is not None}
    if len(given_dims) > 1:
        raise ConfigError(f"the given components disagree on d: {sorted(given_dims)}")
    dim = spec.dim or (given_dims.pop() if given_dims else None)
    if spec.item_tower == "id":
        if spec.text or spec.vision or spec.fusion:
            raise ConfigError("--item-tower id replaces the content tower: drop --text/--vision/--fusion")
        item_tower = init_component("id", dim=dim or 64, item_ids=dataset.item_ids)
        return PMMRec.assemble(user=loaded["user"] or _fresh_user(spec, dim or 64, max_length), item_tower=item_tower)
    for modality in ("text", "vision"):
        if loaded[modality] is not None and modality in spec.trainable_layers:
            loaded[modality] = with_trainable_layers(loaded[modality], spec.trainable_layers[modality])
    modalities = set(spec.modalities or [m for m in ("text", "vision") if loaded[m] is not None] or ["text"])
    unknown = modalities - {"text", "vision"}
    if unknown:
        raise ConfigError(f"--modalities: unknown {sorted(unknown)} (text, vision)")
    for modality in ("text", "vision"):
        if loaded[modality] is not None and modality not in modalities:
            raise ConfigError(f"--{modality} was given but --modalities excludes {modality}")
        if loaded[modality] is None and modality in modalities:
            backbone = spec.text_backbone if modality == "text" else spec.vision_backbone
            loaded[modality] = init_component(
                modality,  # type: ignore[arg-type]
                dim=dim,
                backbone=backbone,
                trainable_layers=spec.trainable_layers.get(modality, 2),
            )
            dim = dim or loaded[modality].dim  # type: ignore[union-attr]
    if loaded["user"] is None:
        loaded["user"] = _fresh_user(spec, dim or 384, max_length)
    return PMMRec.assemble(text=loaded["text"], vision=loaded["vision"], fusion=loaded["fusion"], user=loaded["user"])


def with_trainable_layers(encoder: Any, layers: int) -> Any:
    """The same encoder with its top `layers` layers (blocks) trainable and the rest frozen."""
    field_name = "trainable_blocks" if "trainable_blocks" in type(encoder.config).model_fields else "trainable_layers"
    try:
        encoder.config = type(encoder.config).model_validate({**encoder.config.model_dump(), field_name: layers})
    except ValidationError as exc:
        raise ConfigError(f"--{encoder.kind.split('_')[0]}-trainable-layers: {describe_validation_error(exc)}") from None
    encoder.apply_freezing()
    return encoder


def _fresh_user(spec: ModelSpec, dim: int, max_length: int) -> Any:
    heads = spec.user_heads or max(h for h in (1, 2) if dim % h == 0)
    return init_component(
        "user", dim=dim, heads=heads, layers=spec.user_layers, max_length=max_length, dropout=spec.dropout
    )


def _record_sources(model: PMMRec, spec: ModelSpec) -> None:
    """Keep the references that initialised each component (the weights then changed by training)."""
    from pmmrec.model import ComponentSource

    for slot in ("text", "vision", "fusion", "user"):
        reference = getattr(spec, slot)
        if reference is not None and slot in model.components():
            previous = model.sources.get(slot)
            model.sources[slot] = ComponentSource(
                requested=reference, resolved_commit=previous.resolved_commit if previous else None, created=False
            )


def _training_card(result: TrainResult, dataset: Dataset, config: TrainConfig, objectives: list[str]) -> dict[str, Any]:
    return {
        "datasets": [dataset.name],
        "metrics": {f"{dataset.name} valid": result.best_valid, f"{dataset.name} test": result.test},
        "training": {
            "mode": config.mode,
            "data": f"{dataset.name} ({dataset.num_items} items, {len(dataset.user_ids)} users, images: {dataset.image_kind})",
            "objectives": ", ".join(f"{name} x {getattr(config.objectives.weights, name)}" for name in objectives),
            "epochs": config.epochs,
            "best_epoch": result.best_epoch,
            "lr": config.lr,
            "batch_size": config.batch_size,
        },
    }


def _run(
    mode: Literal["pretrain", "finetune"],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    spec: ModelSpec,
    config_path: str | os.PathLike[str] | None,
    overrides: dict[str, Any] | None,
    resume: bool,
    progress: bool,
) -> tuple[TrainResult, Trainer, TrainConfig, Dataset]:
    defaults = pretrain_defaults() if mode == "pretrain" else finetune_defaults()
    config = load_train_config(defaults, config_path, overrides)
    if config.mode != mode:
        raise ConfigError(f"{config_path}: mode is {config.mode!r} but this is `pmmrec {mode}`")
    dataset = load_dataset(data)
    if (
        mode == "pretrain"
        and spec.modalities is None
        and dataset.images_path is not None
        and not (spec.text or spec.vision)
    ):
        spec.modalities = ["text", "vision"]
    model = build_model(spec, dataset, config.max_length, config.seed)
    _record_sources(model, spec)
    with deterministic_mode(config.deterministic):  # before the Trainer: it already computes cached prefixes
        trainer = Trainer(model, dataset, config, Path(out), resume=resume, progress=progress)
        result = trainer.run()
    return result, trainer, config, dataset


def pretrain(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    spec: ModelSpec | None = None,
    *,
    config_path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Pre-train on a source dataset; RUN/components/<slot> then holds each component as its own artefact."""
    result, trainer, config, dataset = _run(
        "pretrain", data, out, spec or ModelSpec(), config_path, overrides, resume, progress
    )
    if trainer.context.is_main and result.model is not None:
        card = _training_card(result, dataset, config, trainer.module.active_losses())
        for slot, component in result.model.components().items():
            component.save_pretrained(
                Path(out) / "components" / slot, overwrite=True, card=card | {"name": f"pmmrec {slot} ({dataset.name})"}
            )
    return result


def finetune(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    spec: ModelSpec | None = None,
    *,
    config_path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune (or train from scratch) on a target dataset; the best checkpoint ends up in RUN/model."""
    result, trainer, config, dataset = _run(
        "finetune", data, out, spec or ModelSpec(), config_path, overrides, resume, progress
    )
    if trainer.context.is_main and result.model is not None:
        card = _training_card(result, dataset, config, trainer.module.active_losses())
        result.model.save_pretrained(
            Path(out) / "model", overwrite=True, card=card | {"name": f"pmmrec model ({dataset.name})"}
        )
    return result


def evaluate(
    model: str | os.PathLike[str] | PMMRec,
    data: str | os.PathLike[str],
    *,
    split: str = "test",
    ks: tuple[int, ...] = (10, 20, 50),
    min_length: int = 3,
    max_history: int | None = None,
    out: str | os.PathLike[str] | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Full-ranking HR/NDCG/MRR@K of a model on a dataset's valid or test targets (written as JSON to `out`)."""
    context = setup_distributed(device)
    loaded = model if isinstance(model, PMMRec) else PMMRec.from_pretrained(str(model))
    loaded.to(context.device)
    dataset = load_dataset(data)
    split_data = leave_one_out(dataset.sequences, min_length, max_history)
    collator = make_collator(loaded, dataset)
    result = evaluate_split(
        loaded, split_data, split, collator, dataset.num_items, context.device, context, ks=ks, progress=progress
    )
    if out is not None and context.is_main:
        write_json(
            out,
            {
                "model": str(model) if not isinstance(model, PMMRec) else None,
                "data": str(data),
                "split": split,
                **result.metrics,
            },
        )
    return result.metrics


def recommend(
    model: str | os.PathLike[str] | PMMRec,
    data: str | os.PathLike[str],
    *,
    user: str | None = None,
    history: list[str] | None = None,
    k: int = 10,
    exclude_seen: bool = False,
    extra_items: str | os.PathLike[str] | None = None,
    device: str | None = None,
) -> list[Recommendation]:
    """Top-k items for a known user or an explicit history; `extra_items` adds candidates by content alone."""
    if (user is None) == (history is None):
        raise ConfigError("give exactly one of --user and --history")
    loaded = model if isinstance(model, PMMRec) else PMMRec.from_pretrained(str(model))
    target_device = torch.device(device) if device else torch.device("cpu")
    loaded.to(target_device)
    dataset = load_dataset(data)
    if extra_items is not None:
        if loaded.item_tower is not None:
            raise ConfigError("--items: an ID-based model cannot score items it was not trained on")
        if loaded.vision is not None:
            raise ConfigError(
                "--items: this model reads images; extra items need images (add them to the dataset instead)"
            )
        extra_ids, extra_texts = read_items_tsv(extra_items)
        clashes = sorted(set(extra_ids) & set(dataset.item_ids))
        if clashes:
            raise ConfigError(f"{extra_items}: item ids already in the dataset: {clashes[:5]}")
        dataset.item_ids = dataset.item_ids + extra_ids
        dataset.item_texts = dataset.item_texts + extra_texts
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
    collator = make_collator(loaded, dataset)
    table = encode_catalogue(loaded, collator, len(dataset.item_ids), target_device)
    return top_k(
        loaded, table, dataset.item_ids, dataset.item_texts, sequence, k=k, exclude=sequence if exclude_seen else ()
    )
