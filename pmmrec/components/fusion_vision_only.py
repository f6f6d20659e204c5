"""`fusion/vision_only`: the vision-only item tower (mean of projected image tokens)."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from pmmrec.components import _backbones
from pmmrec.components.base import ComponentConfig, register_component
from pmmrec.components.kinds import Fusion, masked_mean
from pmmrec.components.options import CreateOptions


class VisionOnlyConfig(ComponentConfig):
    """The vision-only tower has no weights; it records d so assembly can check widths."""

    dim: int = Field(ge=1, le=_backbones.MAX_HIDDEN, description="Item embedding width d.")


@register_component
class VisionOnlyFusion(Fusion):
    """Item embedding = mean of the projected image tokens."""

    type_name: ClassVar[str] = "fusion/vision_only"
    config_class: ClassVar[type[ComponentConfig]] = VisionOnlyConfig
    modalities: ClassVar[frozenset[str]] = frozenset({"vision"})

    @classmethod
    def create(cls, options: CreateOptions) -> VisionOnlyFusion:
        """The weight-free tower at width d."""
        return cls(VisionOnlyConfig(dim=options.width))

    def card_summary(self) -> str:
        return "Vision-only item tower: the mean of the vision encoder's projected image tokens (no weights)."

    def forward(
        self,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        image_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if image_tokens is None:
            raise ValueError("fusion/vision_only needs image tokens")
        return masked_mean(image_tokens, None)
