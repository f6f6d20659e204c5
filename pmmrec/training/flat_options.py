"""The flat training options of `pmmrec pretrain` / `pmmrec finetune` and of `pmmrec.api.pretrain` / `finetune`:
each one a dotted place in `TrainConfig`, its help text that field's description (written once, in the config)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pmmrec.errors import ConfigError
from pmmrec.objectives import registered_objectives
from pmmrec.slots import MODALITY_SLOTS, REFERENCE_SLOTS
from pmmrec.training.config import TrainConfig, mode_defaults
from pmmrec.training.config_loading import config_value, load_train_config

TRAIN_OPTIONS: dict[str, str] = {
    **{slot: f"model.{slot}" for slot in REFERENCE_SLOTS},
    "modality": "model.modalities",
    "item_tower": "model.item_tower",
    **{f"{slot}_backbone": f"model.{slot}_backbone" for slot in MODALITY_SLOTS},
    "dim": "model.dim",
    **{f"{slot}_trainable_layers": f"model.{slot}_trainable_layers" for slot in MODALITY_SLOTS},
    "text_word_embeddings": "model.text_word_embeddings",
    "single_modality_fusion": "model.single_modality_fusion",
    "user_layers": "model.user_layers",
    "epochs": "epochs",
    "max_epochs": "max_epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "lr_component": "component_lr",
    "freeze": "freeze",
    "max_length": "max_length",
    "min_length": "min_length",
    "max_history": "max_history",
    "window": "window",
    "train_user_share": "train_user_share",
    "train_user_seed": "train_user_seed",
    "passes_per_epoch": "passes_per_epoch",
    "softmax": "objectives.next_item.softmax",
    "own_items": "objectives.next_item.own_items",
    "fresh_lr": "fresh_lr",
    "pretrained_lr": "pretrained_lr",
    "dropout": "model.dropout",
    **{f"{name}_weight": f"objectives.weights.{name}" for name in registered_objectives()},
    "seed": "seed",
    "device": "device",
    "recipe": "recipe",
    "precision": "precision",
    "patience": "patience",
    "evaluate_test": "evaluate_test",
    "refit": "refit",
    "max_steps": "max_steps",
    "num_workers": "num_workers",
    "gather_negatives": "gather_negatives",
    "tower_update_every": "tower_update_every",
    "report_to": "report_to",
    "deterministic": "deterministic",
}


def mode_default_values(mode: str) -> dict[str, Any]:
    """Each flat training option (TRAIN_OPTIONS) as `mode` trains it when neither a YAML file nor a flag sets it,
    the same on every machine: under the full recipe (the CPU recipe's values are stated by the help of the options
    it sets, RECIPE_DEPENDENT), with `recipe` itself at auto."""
    config = load_train_config({**mode_defaults(mode), "recipe": "full"})
    return {name: "auto" if path == "recipe" else config_value(config, path) for name, path in TRAIN_OPTIONS.items()}


def config_field(path: str) -> FieldInfo:
    """The pydantic field at a dotted TrainConfig path (e.g. `objectives.weights.rec`)."""
    model: type[BaseModel] = TrainConfig
    *parents, name = path.split(".")
    for part in parents:
        annotation = model.model_fields[part].annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel), path
        model = annotation
    return model.model_fields[name]


def parse_component_lr(entries: list[str]) -> dict[str, float]:
    """`SLOT=LR` strings (the `--lr-component` option) as a per-slot learning-rate mapping."""
    rates = {}
    for entry in entries:
        slot, sep, value = entry.partition("=")
        try:
            rates[slot] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"--lr-component {entry!r}: expected SLOT=LR, e.g. text=5e-5")
    return rates


def overrides_from_options(options: dict[str, Any]) -> dict[str, Any]:
    """Flat options (names of TRAIN_OPTIONS; None = not given) as nested config overrides."""
    unknown = sorted(set(options) - set(TRAIN_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown training option(s) {unknown}; known: {', '.join(TRAIN_OPTIONS)}")
    nested: dict[str, Any] = {}
    for name, value in options.items():
        if value is None or (isinstance(value, list | tuple) and not value):
            continue
        if name == "lr_component" and not isinstance(value, dict):
            value = parse_component_lr(list(value))
        *parents, leaf = TRAIN_OPTIONS[name].split(".")
        target = nested
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = list(value) if isinstance(value, tuple) else value
    return nested
