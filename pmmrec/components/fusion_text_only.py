"""`fusion/text_only`: the text-only item tower (masked mean of projected text tokens)."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from pmmrec.components import _backbones
from pmmrec.components.base import ComponentConfig, register_component
from pmmrec.components.kinds import Fusion, masked_mean
from pmmrec.components.options import CreateOptions


class TextOnlyConfig(ComponentConfig):
    """The text-only tower has no weights; it records d so assembly can check widths."""

    dim: int = Field(ge=1, le=_backbones.MAX_HIDDEN, description="Item embedding width d.")


@register_component
class TextOnlyFusion(Fusion):
    """Item embedding = mean of the valid projected text tokens."""

    type_name: ClassVar[str] = "fusion/text_only"
    config_class: ClassVar[type[ComponentConfig]] = TextOnlyConfig
    modalities: ClassVar[frozenset[str]] = frozenset({"text"})

    @classmethod
    def create(cls, options: CreateOptions) -> TextOnlyFusion:
        """The weight-free tower at width d."""
        return cls(TextOnlyConfig(dim=options.width))

    def card_summary(self) -> str:
        return "Text-only item tower: the masked mean of the text encoder's projected token states (no weights)."

    def forward(
        self,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        image_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if text_tokens is None:
            raise ValueError("fusion/text_only needs text tokens")
        return masked_mean(text_tokens, text_mask)
