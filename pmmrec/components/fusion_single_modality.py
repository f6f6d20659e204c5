"""`fusion/text_only` and `fusion/vision_only`: the single-modality item tower, the mean of one encoder's
projected tokens (no weights).

One implementation; the two registered types only name the modality they read, so artefacts of either type load
as they always have (config.json holds the type name and d, nothing else).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from pmmrec.components import _backbones
from pmmrec.components.base import ComponentConfig, register_component
from pmmrec.components.kinds import Fusion, masked_mean
from pmmrec.components.options import CreateOptions


class SingleModalityConfig(ComponentConfig):
    """A single-modality tower has no weights; it records d so assembly can check widths."""

    dim: int = Field(ge=1, le=_backbones.MAX_HIDDEN, description="Item embedding width d.")


class SingleModalityFusion(Fusion):
    """Item embedding = mean of the valid projected tokens of the one modality the type reads."""

    config_class: ClassVar[type[ComponentConfig]] = SingleModalityConfig
    summary: ClassVar[str]  # the model card's description

    @classmethod
    def create(cls, options: CreateOptions) -> SingleModalityFusion:
        """The weight-free tower at width d."""
        return cls(SingleModalityConfig(dim=options.width))

    def card_summary(self) -> str:
        return self.summary

    def forward(
        self,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        image_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        (modality,) = self.modalities
        inputs = {"text": (text_tokens, text_mask, "text tokens"), "vision": (image_tokens, None, "image tokens")}
        tokens, mask, what = inputs[modality]
        if tokens is None:
            raise ValueError(f"{self.type_name} needs {what}")
        return masked_mean(tokens, mask)


@register_component
class TextOnlyFusion(SingleModalityFusion):
    """Item embedding = mean of the valid projected text tokens."""

    type_name: ClassVar[str] = "fusion/text_only"
    modalities: ClassVar[frozenset[str]] = frozenset({"text"})
    summary: ClassVar[str] = (
        "Text-only item tower: the masked mean of the text encoder's projected token states (no weights)."
    )


@register_component
class VisionOnlyFusion(SingleModalityFusion):
    """Item embedding = mean of the projected image tokens."""

    type_name: ClassVar[str] = "fusion/vision_only"
    modalities: ClassVar[frozenset[str]] = frozenset({"vision"})
    summary: ClassVar[str] = "Vision-only item tower: the mean of the vision encoder's projected image tokens (no weights)."


# The config classes of the two types before they shared one (the same fields: config.json is unchanged).
TextOnlyConfig = VisionOnlyConfig = SingleModalityConfig
