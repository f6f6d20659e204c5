"""The five component kinds and their forward contracts; concrete types live one per file beside this one."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from pmmrec.components.base import Component


class FrozenPrefixMixin(nn.Module):
    """Encoders whose bottom part can be frozen: frozen modules stay in eval mode (a fixed function).

    Keeping frozen layers deterministic (no dropout, no BatchNorm statistics updates) is what makes
    their output cacheable per item.
    """

    def frozen_modules(self) -> list[nn.Module]:
        return []

    def train(self, mode: bool = True) -> FrozenPrefixMixin:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self


class TextEncoder(FrozenPrefixMixin, Component):
    """Token ids of an item's text -> projected token states [N, T, d] and their mask."""

    kind: ClassVar[str] = "text_encoder"


class VisionEncoder(FrozenPrefixMixin, Component):
    """uint8 images [N, 3, H, W] -> projected image tokens [N, P, d]."""

    kind: ClassVar[str] = "vision_encoder"


class Fusion(Component):
    """Modality tokens -> one item embedding [N, d]; declares which modalities it needs."""

    kind: ClassVar[str] = "fusion"
    modalities: ClassVar[frozenset[str]]


class UserEncoder(Component):
    """Item embeddings of a left-padded sequence [B, S, d] -> user state at every position [B, S, d]."""

    kind: ClassVar[str] = "user_encoder"


class ItemTower(Component):
    """Catalogue indices -> item embeddings, for ID-based baselines."""

    kind: ClassVar[str] = "item_tower"


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over valid tokens [N, T, d] -> [N, d]; an all-padding row gives zeros, not NaN."""
    if mask is None:
        return tokens.mean(dim=1)
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
