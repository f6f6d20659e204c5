"""PMMRec components: one file per type, all registered under stable type names.

Importing this package registers every built-in type: every file of the package not named `_private` is imported
(`_import_type_files`), so a new type is its own file and nothing else. `create_component` makes a fresh one through
the registry; `load_component` loads any saved one (its type is read from config.json).
"""

import importlib
import pkgutil
from typing import Literal

from pydantic import ValidationError

from pmmrec.components.base import (
    FORMAT_VERSION,
    Component,
    ComponentConfig,
    component_class,
    register_component,
    registered_types,
)
from pmmrec.components.fusion_merge_attention import MergeAttentionConfig, MergeAttentionFusion
from pmmrec.components.fusion_single_modality import (
    SingleModalityConfig,
    SingleModalityFusion,
    TextOnlyConfig,
    TextOnlyFusion,
    VisionOnlyConfig,
    VisionOnlyFusion,
)
from pmmrec.components.inputs import ImagePreprocessor, TextPreprocessor
from pmmrec.components.item_tower_id import IdItemTower, IdItemTowerConfig
from pmmrec.components.kinds import (
    Fusion,
    ItemEncoder,
    ItemTower,
    ModalityInputs,
    ModalityTokens,
    TextEncoder,
    UserEncoder,
    VisionEncoder,
    kind_classes,
    register_kind,
)
from pmmrec.components.options import CreateOptions, default_heads
from pmmrec.components.text_encoder import HFTextEncoder, HFTextEncoderConfig
from pmmrec.components.user_sasrec import SASRecConfig, SASRecUserEncoder
from pmmrec.components.vision_clip import CLIPVisionEncoder, CLIPVisionEncoderConfig
from pmmrec.components.vision_efficientnet import EfficientNetEncoder, EfficientNetEncoderConfig
from pmmrec.errors import ConfigError, describe_validation_error
from pmmrec.slots import KIND_NAMES, SLOT_TABLE

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "SLOT_KINDS",
    "CLIPVisionEncoder",
    "CLIPVisionEncoderConfig",
    "Component",
    "ComponentConfig",
    "ComponentKind",
    "CreateOptions",
    "EfficientNetEncoder",
    "EfficientNetEncoderConfig",
    "Fusion",
    "HFTextEncoder",
    "HFTextEncoderConfig",
    "IdItemTower",
    "IdItemTowerConfig",
    "ImagePreprocessor",
    "ItemEncoder",
    "ItemTower",
    "MergeAttentionConfig",
    "MergeAttentionFusion",
    "ModalityInputs",
    "ModalityTokens",
    "SASRecConfig",
    "SASRecUserEncoder",
    "SingleModalityConfig",
    "SingleModalityFusion",
    "TextEncoder",
    "TextOnlyConfig",
    "TextOnlyFusion",
    "TextPreprocessor",
    "UserEncoder",
    "VisionEncoder",
    "VisionOnlyConfig",
    "VisionOnlyFusion",
    "component_class",
    "create_component",
    "default_heads",
    "load_component",
    "register_component",
    "register_kind",
    "registered_types",
]


def _import_type_files() -> None:
    """Import every public module of this package, registering the types it defines."""
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_import_type_files()

ComponentKind = Literal[KIND_NAMES]
# The short kind names of `pmmrec init` (pmmrec.slots) -> the kind classes that declare their contracts.
KINDS: dict[str, type[Component]] = kind_classes()
# The model's slots -> the kind class a component must be to fill it.
SLOT_KINDS: dict[str, type[Component]] = {slot.name: KINDS[slot.kind] for slot in SLOT_TABLE}


def create_component(kind: str, options: CreateOptions | None = None, variant: str | None = None) -> Component:
    """A fresh component of `kind` (text, vision, fusion, user, id), created by its registered type's `create`.

    `variant` names the type within the kind (`text_only` for `fusion/text_only`, `clip` for
    `vision_encoder/clip`); by default the kind picks it (the vision kind from the backbone's name).
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown component kind {kind!r} ({', '.join(KINDS)})")
    options = options or CreateOptions()
    type_name = KINDS[kind].type_for(options, variant)
    cls = registered_types().get(type_name)
    if cls is None or not issubclass(cls, KINDS[kind]):
        known = sorted(name for name, known_cls in registered_types().items() if issubclass(known_cls, KINDS[kind]))
        raise ConfigError(f"pmmrec init {kind}: unknown type {type_name!r} (known: {', '.join(known)})")
    try:
        return cls.create(options)
    except ValidationError as exc:
        raise ConfigError(f"pmmrec init {kind}: {describe_validation_error(exc)}") from None
    except (ValueError, OSError) as exc:
        raise ConfigError(f"pmmrec init {kind}: {' '.join(str(exc).split())}") from None


def load_component(reference: str, revision: str | None = None, *, unverified: bool = False) -> Component:
    """Load any component (its type is read from config.json) from a folder or hub reference.

    Its files are verified against its checksums.json unless `unverified=True` (see pmmrec.integrity).
    """
    return Component.from_pretrained(reference, revision=revision, unverified=unverified)
