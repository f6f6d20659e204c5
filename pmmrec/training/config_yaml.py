"""Training configs as YAML files: read (bounded, errors naming the file) and written (what --resume compares)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import yaml

from pmmrec.errors import ConfigError
from pmmrec.fileio import open_regular_file

if TYPE_CHECKING:
    from pmmrec.training.config import TrainConfig

MAX_CONFIG_BYTES = 1 << 20


def read_yaml_mapping(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The options of a YAML config file (at most MAX_CONFIG_BYTES, a regular file); errors name the file."""
    if not os.path.lexists(path):
        raise ConfigError(f"{path}: no such config file")
    try:
        with open_regular_file(path, ConfigError) as handle:  # a FIFO is refused, never read forever
            raw = handle.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES:,} bytes")
        loaded = yaml.safe_load(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of options at the top level")
    return loaded


# Options added after runs existed, written only when not at their default: --resume compares RUN/config.yaml as text,
# so a run started before an option existed still resumes.
WRITTEN_WHEN_SET: dict[str, Any] = {
    "deterministic": False, "tower_update_every": 1, "model.single_modality_fusion": "mean",
}  # fmt: skip


def dump_train_config(config: TrainConfig) -> str:
    """YAML text of a resolved config (the options of WRITTEN_WHEN_SET only where they are set)."""
    document = config.model_dump(mode="json")
    for path, default in WRITTEN_WHEN_SET.items():
        *parents, name = path.split(".")
        holder = document
        for part in parents:
            holder = holder[part]
        if holder.get(name) == default:
            del holder[name]
    return yaml.safe_dump(document, sort_keys=False)
