"""Training defaults that depend on the item tower and, for a text run, on the device (issue 28.1).

An ID table and its user encoder need neither a text backbone's width (d = 384 for MiniLM) nor 32-window batches:
the ID tower gets its own width, batch size, learning rate, epoch cap and patience (chosen on validation with time
as a criterion: docs/benchmarks.md, "The defaults check"). A key that a run's options leave out
(defaults of the mode < a resumed run's config.yaml < YAML file < flags) takes its tower's value here; a value
given, null included, always wins. `model.dim` is filled only when no user encoder is given:
a given component decides the width. RUN/config.yaml records the resolved values, so a run resumes with them even
after these defaults change.

A fine-tuning run with a text encoder on a CPU takes the CPU recipe (`--recipe auto`, the default): the text backbone
frozen and word-piece embeddings trained in its place, minutes where the full recipe's trained text layers take
hours there (docs/training.md, "A text run on a CPU"). Its keys fill what the options leave out, before the tower's.
"""

from __future__ import annotations

from typing import Any, Literal

from pmmrec.slots import MODALITY_SLOTS, REFERENCE_SLOTS

TOWER_DEFAULTS: dict[str, dict[str, Any]] = {
    "id": {"batch_size": 256, "fresh_lr": 3e-3, "max_epochs": 30, "patience": 3, "model.dim": 64},
    "content": {"batch_size": 32, "fresh_lr": 1e-3, "max_epochs": 50, "patience": 5},
}
DEFAULT_TOWER = "content"  # the tower of a run that does not name one; its values are the fields' own defaults
# Dotted TrainConfig paths whose default depends on the tower (the table lists only those): their help states each
# tower's default, and no single "[default: ...]" can stand for them.
TOWER_DEPENDENT = tuple(dict.fromkeys(path for defaults in TOWER_DEFAULTS.values() for path in defaults))


Recipe = Literal["auto", "full", "cpu"]
# The CPU recipe: the best on validation among the settings that fit about 20 minutes on 2 cores (docs/benchmarks.md,
# "Word-piece embeddings, and four other changes of the table recipe", and "Longer histories for the CPU recipe"):
# 30 epochs run in full (the best one kept), since its validation dips for several epochs mid-run, which patience 5
# would take for the end. Then a refit on every interaction but the test target: "Training on the validation targets
# too" there.
CPU_RECIPE: dict[str, Any] = {
    "model.text_trainable_layers": 0,
    "model.dim": 128,
    "max_length": 50,
    "model.text_word_embeddings": True,
    "pretrained_lr": 1e-3,
    "fresh_lr": 3e-3,
    "epochs": 30,
    "patience": 30,
    "refit": True,
}
RECIPE_DEPENDENT = tuple(CPU_RECIPE)  # dotted paths whose help states the CPU recipe's value beside the default
# Recipe keys that a given component decides instead (its width; a given user encoder's learned positions).
DECIDED_BY_GIVEN: dict[str, tuple[str, ...]] = {"model.dim": REFERENCE_SLOTS, "max_length": ("user",)}
# Recipe keys only fine-tuning has (a refit is fine-tuning's: pre-training keeps its components' last state).
FINETUNE_ONLY: tuple[str, ...] = ("refit",)


def cpu_recipe_text(path: str) -> str:
    """`path`'s value under the CPU recipe, as its help text states it."""
    return f"under --recipe cpu: {_shown(CPU_RECIPE[path])}"


def tower_default_text(path: str) -> str:
    """`path`'s default per tower, as its help text states it."""
    return f"{_shown(TOWER_DEFAULTS['id'][path])} for ID towers, {_shown(TOWER_DEFAULTS['content'][path])} for content towers"


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def with_recipe_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """`data` (TrainConfig input) with `recipe` resolved and, under the CPU recipe, each recipe key it leaves out set.

    auto is cpu for a fine-tuning run of a content tower with a text encoder on a CPU (`device`, else CUDA's
    absence), else full. An explicit cpu on a run without a text encoder, or with an ID tower, is refused. The
    recipe's width is filled only when no component is given (a given one decides the width), its sequence length
    only when no user encoder is given (its learned positions decide it).
    """
    recipe = data.get("recipe", "auto")
    if recipe not in ("auto", "cpu"):
        return data  # full, or a value validation refuses
    model = data.get("model")
    fields = _given_fields(model)
    applies = fields.get("item_tower", DEFAULT_TOWER) == "content" and _has_text(fields)
    if recipe == "cpu" and not applies:
        raise ValueError("recipe cpu trains a text encoder's word pieces: it needs a content tower with a text encoder")
    if recipe == "auto":
        on_cpu = applies and data.get("mode", "finetune") == "finetune" and _on_cpu(data.get("device"))
        recipe = "cpu" if on_cpu else "full"
    filled = {**data, "recipe": recipe}
    if recipe == "full":
        return filled
    model_update = {}
    fine_tuning = data.get("mode", "finetune") == "finetune"
    for path, value in CPU_RECIPE.items():
        if any(fields.get(slot) for slot in DECIDED_BY_GIVEN.get(path, ())) or (path in FINETUNE_ONLY and not fine_tuning):
            continue
        top, _, key = path.partition(".")
        if not key and top not in filled:
            filled[top] = value
        elif key and key not in fields:
            model_update[key] = value
    filled["model"] = _updated(model, model_update)
    return filled


def _has_text(fields: dict[str, Any]) -> bool:
    """Whether a model with these ModelConfig fields has a text encoder: its modalities', else its given encoders'
    (else text, the default)."""
    modalities = fields.get("modalities")
    if modalities is not None:
        return "text" in modalities
    given = [slot for slot in MODALITY_SLOTS if fields.get(slot)]
    return not given or "text" in given


def _on_cpu(device: Any) -> bool:
    """Whether a run with this `device` option trains on the CPU (no device: CUDA's absence, as choose_device)."""
    if device:
        return str(device) == "cpu"
    import torch  # here, not at import: only resolving `auto` without a device needs it

    return not torch.cuda.is_available()


def with_tower_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """`data` (TrainConfig input) with each tower-dependent key it leaves out set to its item tower's default.

    `model` may be a mapping or a ModelConfig (whose fields set at construction count as given). An unknown tower
    is left unchanged for validation to refuse.
    """
    model = data.get("model")
    fields = _given_fields(model)
    tower = fields.get("item_tower", DEFAULT_TOWER)
    defaults = TOWER_DEFAULTS.get(tower) if isinstance(tower, str) else None
    if defaults is None:
        return data
    filled = dict(data)
    for path, value in defaults.items():
        if "." not in path and path not in filled:
            filled[path] = value
    dim = defaults.get("model.dim")
    if dim is not None and "dim" not in fields and fields.get("user") is None:
        filled["model"] = _updated(model, {"dim": dim})
    return filled


def _given_fields(model: Any) -> dict[str, Any]:
    """The model fields given: a mapping's keys, or those a ModelConfig was constructed with (its other fields hold
    their defaults); none for no model."""
    if model is None or isinstance(model, dict):
        return model or {}
    return {name: getattr(model, name) for name in getattr(model, "model_fields_set", ())}


def _updated(model: Any, update: dict[str, Any]) -> Any:
    """`model` (a mapping, a ModelConfig or None) with `update`'s fields set."""
    if model is None or isinstance(model, dict):
        return {**(model or {}), **update}
    return model.model_copy(update=update)
