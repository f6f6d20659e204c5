"""Training options in layers: a mode's defaults < a resumed run's config.yaml < a YAML file < command-line flags,
validated into a TrainConfig whose errors name the file and the key."""

from __future__ import annotations

import os
from typing import Any

from pydantic import ValidationError

from pmmrec.errors import ConfigError
from pmmrec.slots import SLOTS
from pmmrec.training.config import TrainConfig
from pmmrec.training.config_yaml import read_yaml_mapping


def config_value(config: TrainConfig, path: str) -> Any:
    """The value at a dotted TrainConfig path (e.g. `objectives.weights.rec`)."""
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _problem(error: Any) -> str:
    """One pydantic error as `key: message` (a check of the whole config names no key)."""
    key = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{key}: {message}" if key else message


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` with `update`'s keys set, mappings merged key by key."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_train_config(
    defaults: dict[str, Any],
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    saved: str | os.PathLike[str] | None = None,
) -> TrainConfig:
    """defaults < `saved` (a resumed run's config.yaml) < YAML file < command-line overrides; errors name the file
    and the key. Keys that no layer gives take their item tower's default (TOWER_DEFAULTS)."""
    payload = dict(defaults)
    source = "command line"
    for layer in (saved, path):
        if layer is not None:
            source = str(layer)
            mapping = read_yaml_mapping(layer)
            if layer is saved:
                # a run saved before `recipe` existed trained with the full recipe's defaults: it resumes with them
                mapping.setdefault("recipe", "full")
                mapping.setdefault("refit", False)  # and one saved before `refit` existed trained without one
            payload = deep_merge(payload, mapping)
    payload = deep_merge(payload, {k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        config = TrainConfig.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        raise ConfigError(f"{source}: invalid training config: {problems}") from None
    unknown_slots = set(config.component_lr) | set(config.freeze)
    unknown_slots -= set(SLOTS)
    if unknown_slots:
        raise ConfigError(f"{source}: unknown component(s) {sorted(unknown_slots)}; expected {', '.join(SLOTS)}")
    return config
