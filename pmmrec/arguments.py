"""The numeric arguments of pmmrec's commands and API functions: their types and ranges, checked at the edge.

`pmmrec.api` checks what it is given here before any work starts, so the command line and Python callers get the same
one-line refusal ("--k: must be at least 1, got 0"), a boolean is never taken for a number, and no nonsense value
(an image side of 0, a window of a billion items) reaches the code below. One table, one rule per argument.
Path arguments (a dataset folder, a model folder) are checked here too, before any model is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError

from pmmrec.errors import ConfigError

MAX_IMAGE_SIDE = 2048  # the largest image side an encoder reads (components' MAX_IMAGE_SIZE)
MAX_SEQUENCE = 4096  # the longest history a user encoder reads (its max_length bound)

RULES: dict[str, tuple[str, Any]] = {
    "k": ("--k", Annotated[int, Field(ge=1, le=100_000)]),
    "ks": ("--k", Annotated[list[Annotated[int, Field(ge=1, le=100_000)]], Field(min_length=1, max_length=100)]),
    "size": ("--size", Annotated[int, Field(ge=8, le=MAX_IMAGE_SIDE)]),
    "max_length": ("--max-length", Annotated[int, Field(ge=1, le=MAX_SEQUENCE)]),
    "min_length": ("--min-length", Annotated[int, Field(ge=3, le=1_000_000)]),
    "max_history": ("--max-history", Annotated[int, Field(ge=3, le=1_000_000_000)]),
    "new_items": ("--new-items", Annotated[float, Field(ge=0.0, lt=1.0)]),
    "port": ("--port", Annotated[int, Field(ge=1, le=65_535)]),
    "threads": ("--threads", Annotated[int, Field(ge=1, le=1024)]),
}
_ADAPTERS = {name: TypeAdapter(rule) for name, (_, rule) in RULES.items()}


def check_arguments(**values: Any) -> None:
    """Refuse (ConfigError, one line naming the option) any given value outside its rule; None means "not given"."""
    for name, value in values.items():
        if value is None:
            continue
        flag = RULES[name][0]
        try:
            _ADAPTERS[name].validate_python(list(value) if name == "ks" else value, strict=True)
        except ValidationError as exc:
            error = exc.errors()[0]
            message = str(error.get("msg", "invalid")).replace("Input should be", "must be")
            raise ConfigError(f"{flag}: {message}, got {error.get('input', value)!r}") from None
        except TypeError:
            raise ConfigError(f"{flag}: expected a number, got {value!r}") from None


# ---- path arguments: checked before anything is loaded ------------------------------------------------------------

DATASET_FILES = ("users.tsv", "items.tsv", "dataset.json")  # what a dataset folder holds (docs/datasets.md)
MODEL_MANIFEST = "pmmrec.json"  # what makes a folder an assembled model
COMPONENT_CONFIG = "config.json"  # what makes a folder a component


def is_hub_reference(text: str) -> bool:
    """`hub:ORG/NAME[@REV]` or `hf://...`: not a local path."""
    return text.startswith(("hub:", "hf://"))


def check_dataset_folder(path: str | os.PathLike[str], flag: str = "--data") -> None:
    """Refuse, naming the flag and the path, a dataset argument that is missing or not a folder, before any model
    is loaded (the contents are checked when the dataset is read)."""
    where = Path(path)
    if not where.exists():
        raise ConfigError(f"{flag} {where}: no such dataset folder")
    if not where.is_dir():
        raise ConfigError(
            f"{flag} {where}: is a file, not a dataset folder (a folder holding {', '.join(DATASET_FILES)})"
        )


def check_model_folder(reference: str | os.PathLike[str], flag: str = "--model") -> None:
    """Refuse a local model argument that is missing, a file, or a single component (with the command that
    assembles it), before anything is loaded. Hub references are resolved later."""
    text = os.fspath(reference)
    if is_hub_reference(text):
        return
    where = Path(text)
    if not where.exists():
        raise ConfigError(f"{flag} {where}: no such model folder")
    if not where.is_dir():
        raise ConfigError(f"{flag} {where}: is a file, not a model folder")
    if not (where / MODEL_MANIFEST).exists() and (where / COMPONENT_CONFIG).is_file():
        slot = _component_slot(where)
        if slot == "item_tower":  # an ID table is assembled by the run that trains it, not by `pmmrec assemble`
            raise ConfigError(
                f"{flag} {where}: is a single component (item_tower), not an assembled model; give the model folder "
                "of the run that trained it (RUN/model)"
            )
        raise ConfigError(
            f"{flag} {where}: is a single component ({slot or 'unknown type'}), not an assembled model; assemble "
            f"it first: pmmrec assemble --{slot or 'SLOT'} {where} --out MODEL"
        )


def _component_slot(folder: Path) -> str | None:
    """The slot a component folder fills, from its config.json's type (None when unreadable)."""
    from pmmrec.jsonfile import read_json_file
    from pmmrec.slots import SLOT_TABLE

    try:
        config = read_json_file(folder / COMPONENT_CONFIG, error=ConfigError, max_bytes=1 << 20)
    except ConfigError:
        return None
    kind = str(config.get("pmmrec_type", "")).partition("/")[0] if isinstance(config, dict) else ""
    return next((slot.name for slot in SLOT_TABLE if slot.type_prefix == kind), None)
