"""PMMRec components: one file per type, all registered under stable type names."""

from pmmrec.components.base import (
    FORMAT_VERSION,
    Component,
    ComponentConfig,
    component_class,
    register_component,
    registered_types,
)
from pmmrec.components.fusion_merge_attention import MergeAttentionConfig, MergeAttentionFusion
from pmmrec.components.fusion_text_only import TextOnlyConfig, TextOnlyFusion
from pmmrec.components.fusion_vision_only import VisionOnlyConfig, VisionOnlyFusion
from pmmrec.components.item_tower_id import IdItemTower, IdItemTowerConfig
from pmmrec.components.kinds import Fusion, ItemTower, TextEncoder, UserEncoder, VisionEncoder
from pmmrec.components.text_encoder import HFTextEncoder, HFTextEncoderConfig
from pmmrec.components.user_sasrec import SASRecConfig, SASRecUserEncoder
from pmmrec.components.vision_clip import CLIPVisionEncoder, CLIPVisionEncoderConfig
from pmmrec.components.vision_efficientnet import EfficientNetEncoder, EfficientNetEncoderConfig

__all__ = [
    "FORMAT_VERSION",
    "CLIPVisionEncoder",
    "CLIPVisionEncoderConfig",
    "Component",
    "ComponentConfig",
    "EfficientNetEncoder",
    "EfficientNetEncoderConfig",
    "Fusion",
    "HFTextEncoder",
    "HFTextEncoderConfig",
    "IdItemTower",
    "IdItemTowerConfig",
    "ItemTower",
    "MergeAttentionConfig",
    "MergeAttentionFusion",
    "SASRecConfig",
    "SASRecUserEncoder",
    "TextEncoder",
    "TextOnlyConfig",
    "TextOnlyFusion",
    "UserEncoder",
    "VisionEncoder",
    "VisionOnlyConfig",
    "VisionOnlyFusion",
    "component_class",
    "load_component",
    "register_component",
    "registered_types",
]


def load_component(reference: str, revision: str | None = None, *, unverified: bool = False) -> Component:
    """Load any component (its type is read from config.json) from a folder or hub reference.

    Its files are verified against its checksums.json unless `unverified=True` (see pmmrec.integrity).
    """
    return Component.from_pretrained(reference, revision=revision, unverified=unverified)
