"""Fresh components: pretrained backbones where named, everything else initialised from configs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ValidationError

from pmmrec.components import (
    CLIPVisionEncoder,
    Component,
    EfficientNetEncoder,
    HFTextEncoder,
    IdItemTower,
    IdItemTowerConfig,
    MergeAttentionConfig,
    MergeAttentionFusion,
    SASRecConfig,
    SASRecUserEncoder,
    TextOnlyConfig,
    TextOnlyFusion,
    VisionOnlyConfig,
    VisionOnlyFusion,
)
from pmmrec.errors import ConfigError, describe_validation_error
from pmmrec.references import is_hub_reference, parse_reference, resolve_reference

ComponentKind = Literal["text", "vision", "fusion", "user", "id"]
DEFAULT_TEXT_BACKBONE = "minilm"
DEFAULT_VISION_BACKBONE = "efficientnet-lite0"


def _backbone_location(backbone: str) -> str:
    """A `hub:`/`hf://` backbone resolves through the Hub cache; names and paths pass through."""
    if is_hub_reference(backbone):
        return str(resolve_reference(backbone).path)
    return backbone


def _backbone_label(backbone: str) -> str:
    return parse_reference(backbone).repo_id or backbone if is_hub_reference(backbone) else backbone


def init_component(
    kind: ComponentKind,
    *,
    dim: int | None = None,
    backbone: str | None = None,
    fusion_type: Literal["merge_attention", "text_only", "vision_only"] = "merge_attention",
    trainable_layers: int = 2,
    max_tokens: int = 50,
    heads: int | None = None,
    layers: int = 2,
    max_length: int = 20,
    dropout: float = 0.1,
    num_items: int | None = None,
    item_ids: list[str] | None = None,
) -> Component:
    """Create one fresh component of `kind` (text, vision, fusion, user or id)."""
    try:
        return _init(
            kind,
            dim,
            backbone,
            fusion_type,
            trainable_layers,
            max_tokens,
            heads,
            layers,
            max_length,
            dropout,
            num_items,
            item_ids,
        )
    except ValidationError as exc:
        raise ConfigError(f"pmmrec init {kind}: {describe_validation_error(exc)}") from None
    except (ValueError, OSError) as exc:
        raise ConfigError(f"pmmrec init {kind}: {' '.join(str(exc).split())}") from None


def _init(
    kind: str,
    dim: int | None,
    backbone: str | None,
    fusion_type: str,
    trainable_layers: int,
    max_tokens: int,
    heads: int | None,
    layers: int,
    max_length: int,
    dropout: float,
    num_items: int | None,
    item_ids: list[str] | None,
) -> Component:
    if kind == "text":
        name = backbone or DEFAULT_TEXT_BACKBONE
        encoder = HFTextEncoder.from_backbone(
            _backbone_location(name), dim=dim, max_tokens=max_tokens, trainable_layers=trainable_layers
        )
        if is_hub_reference(name):
            encoder.config = encoder.config.model_copy(update={"backbone": _backbone_label(name)})
        return encoder
    if kind == "vision":
        name = backbone or DEFAULT_VISION_BACKBONE
        if name.startswith("efficientnet-"):
            return EfficientNetEncoder.from_backbone(name, dim=dim or 384, trainable_blocks=trainable_layers)
        return CLIPVisionEncoder.from_backbone(_backbone_location(name), dim=dim, trainable_layers=trainable_layers)
    if dim is None:
        raise ValueError("--dim is required")
    if kind == "fusion":
        if fusion_type == "merge_attention":
            return MergeAttentionFusion(MergeAttentionConfig(dim=dim, heads=heads or 12, dropout=dropout))
        if fusion_type == "text_only":
            return TextOnlyFusion(TextOnlyConfig(dim=dim))
        if fusion_type == "vision_only":
            return VisionOnlyFusion(VisionOnlyConfig(dim=dim))
        raise ValueError(f"unknown fusion type {fusion_type!r}")
    if kind == "user":
        return SASRecUserEncoder(
            SASRecConfig(dim=dim, heads=heads or 2, layers=layers, max_length=max_length, dropout=dropout)
        )
    if kind == "id":
        count = num_items if num_items is not None else (len(item_ids) if item_ids else None)
        if count is None:
            raise ValueError("an ID item tower needs num_items or item_ids")
        return IdItemTower(IdItemTowerConfig(dim=dim, num_items=count), item_ids=item_ids)
    raise ValueError(f"unknown component kind {kind!r} (text, vision, fusion, user, id)")


def describe_options(component: Component) -> dict[str, Any]:
    """The key architecture fields of a component, for `pmmrec inspect`."""
    fields = component.config.model_dump(mode="json")
    fields.pop("backbone_config", None)
    if hasattr(component, "num_layers"):
        fields["backbone_layers"] = component.num_layers
    return fields
