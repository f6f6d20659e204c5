"""`fusion/merge_attention`: one Transformer layer over text and image tokens, then a masked mean."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, model_validator
from torch import nn

from pmmrec.components import _backbones
from pmmrec.components.base import NOMINAL_BATCH, ComponentConfig, register_component
from pmmrec.components.kinds import Fusion, masked_mean
from pmmrec.components.options import CreateOptions, default_heads
from pmmrec.slots import MODALITY_SLOTS

TEXT_TYPE, IMAGE_TYPE = 0, 1


class MergeAttentionConfig(ComponentConfig):
    """Architecture of the merge-attention fusion (paper: 12 heads, FFN 4d, GELU, dropout 0.1, post-LN)."""

    dim: int = Field(ge=1, le=_backbones.MAX_HIDDEN, description="Token and item embedding width d.")
    heads: int = Field(default=12, ge=1, le=256, description="Attention heads; must divide dim.")
    ffn_multiplier: int = Field(default=4, ge=1, le=16, description="Feed-forward width as a multiple of d.")
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="Dropout in the fusion layer.")

    def parameter_estimate(self) -> int:
        d, m = self.dim, self.ffn_multiplier
        return 2 * d + (4 + 2 * m) * d * d + (m + 9) * d

    def activation_estimate(self) -> int:
        tokens = 128  # text tokens + image tokens of an item, typically
        return NOMINAL_BATCH * (2 * self.heads * tokens * tokens + tokens * (self.ffn_multiplier + 6) * self.dim)

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> MergeAttentionConfig:
        if self.dim % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide dim ({self.dim})")
        return self


@register_component
class MergeAttentionFusion(Fusion):
    """Adds a modality-type embedding to each token (the reference code forgot to), attends, then pools."""

    type_name: ClassVar[str] = "fusion/merge_attention"
    config_class: ClassVar[type[ComponentConfig]] = MergeAttentionConfig
    modalities: ClassVar[frozenset[str]] = frozenset(MODALITY_SLOTS)  # text and vision tokens
    config: MergeAttentionConfig

    def __init__(self, config: MergeAttentionConfig) -> None:
        super().__init__(config)
        self.type_embeddings = nn.Embedding(2, config.dim)
        self.layer = nn.TransformerEncoderLayer(
            d_model=config.dim,
            nhead=config.heads,
            dim_feedforward=config.ffn_multiplier * config.dim,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=False,
        )
        nn.init.normal_(self.type_embeddings.weight, std=0.02)

    @classmethod
    def create(cls, options: CreateOptions) -> MergeAttentionFusion:
        """A fresh fusion layer at width d; heads default to the largest divisor of d up to 12 (paper: 12)."""
        dim = options.width
        return cls(MergeAttentionConfig(dim=dim, heads=options.heads or default_heads(dim, 12), dropout=options.dropout))

    def card_summary(self) -> str:
        return (
            f"Merge-attention fusion: one post-LN Transformer layer ({self.config.heads} heads, d = {self.config.dim}) "
            "over text and image tokens with modality-type embeddings, then a masked mean: one embedding per item."
        )

    def forward(
        self,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        image_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if text_tokens is None or text_mask is None or image_tokens is None:
            raise ValueError("fusion/merge_attention needs text tokens, their mask and image tokens")
        text = text_tokens + self.type_embeddings.weight[TEXT_TYPE]
        image = image_tokens + self.type_embeddings.weight[IMAGE_TYPE]
        tokens = torch.cat([text, image], dim=1)
        image_mask = torch.ones(image_tokens.shape[:2], dtype=torch.bool, device=image_tokens.device)
        valid = torch.cat([text_mask.to(torch.bool), image_mask], dim=1)
        fused = self.layer(tokens, src_key_padding_mask=~valid)
        return masked_mean(fused, valid)
