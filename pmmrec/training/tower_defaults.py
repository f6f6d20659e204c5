"""Training defaults that depend on the item tower (issue 28.1).

An ID table and its user encoder need neither a text backbone's width (d = 384 for MiniLM) nor 32-window batches:
the ID tower gets its own width, batch size, learning rate, epoch cap and patience (chosen on validation with time
as a criterion: docs/benchmarks.md, "The defaults check"). A key that a run's options leave out
(defaults of the mode < a resumed run's config.yaml < YAML file < flags) takes its tower's value here; a value
given, null included, always wins. `model.dim` is filled only when no user encoder is given:
a given component decides the width. RUN/config.yaml records the resolved values, so a run resumes with them even
after these defaults change.
"""

from __future__ import annotations

from typing import Any

TOWER_DEFAULTS: dict[str, dict[str, Any]] = {
    "id": {"batch_size": 256, "fresh_lr": 3e-3, "max_epochs": 30, "patience": 3, "model.dim": 64},
    "content": {"batch_size": 32, "fresh_lr": 1e-3, "max_epochs": 50, "patience": 5},
}
DEFAULT_TOWER = "content"  # the tower of a run that does not name one; its values are the fields' own defaults
# Dotted TrainConfig paths whose default depends on the tower (the table lists only those): their help states each
# tower's default, and no single "[default: ...]" can stand for them.
TOWER_DEPENDENT = tuple(dict.fromkeys(path for defaults in TOWER_DEFAULTS.values() for path in defaults))


def tower_default_text(path: str) -> str:
    """`path`'s default per tower, as its help text states it."""
    return f"{_shown(TOWER_DEFAULTS['id'][path])} for ID towers, {_shown(TOWER_DEFAULTS['content'][path])} for content towers"


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def with_tower_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """`data` (TrainConfig input) with each tower-dependent key it leaves out set to its item tower's default.

    `model` may be a mapping or a ModelConfig (whose fields set at construction count as given). An unknown tower
    is left unchanged for validation to refuse.
    """
    model = data.get("model")
    fields = model if isinstance(model, dict) else {} if model is None else _given_fields(model)
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
        if model is None or isinstance(model, dict):
            filled["model"] = {**(model or {}), "dim": dim}
        else:
            filled["model"] = model.model_copy(update={"dim": dim})
    return filled


def _given_fields(model: Any) -> dict[str, Any]:
    """The fields a pydantic model was constructed with (its other fields hold their defaults)."""
    return {name: getattr(model, name) for name in getattr(model, "model_fields_set", ())}
