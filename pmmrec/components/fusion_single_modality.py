"""`fusion/text_only` and `fusion/vision_only`: the single-modality item tower, the mean of one encoder's
projected tokens (no weights).

One implementation; the registered types only name the modality they read, so artefacts of either type load as
they always have (config.json holds the type name and d, nothing else). Every other modality of pmmrec.slots' table
gets its `fusion/<modality>_only` type here too, with nothing to write.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from pydantic import Field

from pmmrec.components import _backbones
from pmmrec.components.base import ComponentConfig, register_component
from pmmrec.components.kinds import Fusion, ModalityTokens, masked_mean
from pmmrec.components.options import CreateOptions
from pmmrec.slots import MODALITY_SLOTS, SLOT


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

    def forward(self, tokens: Mapping[str, ModalityTokens]) -> torch.Tensor:
        (modality,) = self.modalities
        if modality not in tokens:
            raise ValueError(f"{self.type_name} needs {modality} tokens")
        return masked_mean(*tokens[modality])


@register_component
class TextOnlyFusion(SingleModalityFusion):
    """Item embedding = mean of the valid projected text tokens."""

    type_name: ClassVar[str] = "fusion/text_only"
    modalities: ClassVar[frozenset[str]] = frozenset({SLOT["text"].name})
    summary: ClassVar[str] = (
        "Text-only item tower: the masked mean of the text encoder's projected token states (no weights)."
    )


@register_component
class VisionOnlyFusion(SingleModalityFusion):
    """Item embedding = mean of the projected image tokens."""

    type_name: ClassVar[str] = "fusion/vision_only"
    modalities: ClassVar[frozenset[str]] = frozenset({SLOT["vision"].name})
    summary: ClassVar[str] = "Vision-only item tower: the mean of the vision encoder's projected image tokens (no weights)."


# The config classes of the two types before they shared one (the same fields: config.json is unchanged).
TextOnlyConfig = VisionOnlyConfig = SingleModalityConfig


# The types registered below (none for the slot table of text and images): the same implementation as the two
# above, whose golden cases cover it (tests/test_components.py asks none of its own).
GENERATED_TYPES: list[str] = []


def _register_other_modalities() -> None:
    """`fusion/<modality>_only` for every modality of the slot table that has no single-modality type yet."""
    served = {modality for cls in (TextOnlyFusion, VisionOnlyFusion) for modality in cls.modalities}
    for modality in MODALITY_SLOTS:
        if modality in served:
            continue
        title = SLOT[modality].title
        summary = f"{title.split()[0]}-only item tower: the masked mean of the {title.lower()}'s projected tokens"
        attributes = {
            "__doc__": f"Item embedding = mean of the valid projected {modality} tokens.",
            "__module__": __name__,
            "type_name": f"fusion/{modality}_only",
            "modalities": frozenset({modality}),
            "summary": summary + " (no weights).",
        }
        register_component(type(f"{modality.title()}OnlyFusion", (SingleModalityFusion,), attributes))
        GENERATED_TYPES.append(attributes["type_name"])


_register_other_modalities()
