"""`fusion/merge_attention`: one Transformer layer over text and image tokens, then a masked mean.

Generic over the modalities it merges: each one's tokens get that modality's type embedding (row i for the i-th of
`modalities`, in pmmrec.slots' table order) before all are concatenated. The paper's fusion, and every one written
before, merges text and images (rows 0 and 1); its config then has no `modalities` key.

A fresh fusion is *gated* (issue 24.6): item = mean of the single-modality towers (each modality's masked mean of
its tokens, as the single-modality fusions pool) + tanh(gate) x the merge-attention output, the gate starting at 0.
The layer's post-LN output is much larger than the towers' (norm about sqrt(d) per token) and, over 49 image tokens
and about 16 text tokens, mostly image: a fresh ungated fusion starts as a random, image-dominated map with a logit
scale several times the text-only model's. Gated, it starts as the plain mean of the towers and lets training open
the attention path. Configs without `gated` (artefacts written before) keep the paper's ungated form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator
from torch import nn

from pmmrec.components import _backbones
from pmmrec.components.base import NOMINAL_BATCH, ComponentConfig, register_component
from pmmrec.components.kinds import Fusion, ModalityTokens, masked_mean
from pmmrec.components.options import CreateOptions, default_heads
from pmmrec.slots import MODALITY_SLOTS, PAPER_MODALITIES

TEXT_TYPE, IMAGE_TYPE = range(len(PAPER_MODALITIES))  # the type-embedding rows of a text + image fusion


class MergeAttentionConfig(ComponentConfig):
    """Architecture of the merge-attention fusion (paper: 12 heads, FFN 4d, GELU, dropout 0.1, post-LN)."""

    dim: int = Field(ge=1, le=_backbones.MAX_HIDDEN, description="Token and item embedding width d.")
    heads: int = Field(default=12, ge=1, le=256, description="Attention heads; must divide dim.")
    ffn_multiplier: int = Field(default=4, ge=1, le=16, description="Feed-forward width as a multiple of d.")
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="Dropout in the fusion layer.")
    gated: bool = Field(
        default=False,
        description="Item = mean of the single-modality towers + tanh(gate) x merge-attention output, gate starting "
        "at 0 (fresh fusions since issue 24.6); false: the merge-attention output alone (the paper's, and every "
        "fusion written before).",
    )
    modalities: tuple[str, ...] | None = Field(
        default=None,
        description="The modalities merged, one type embedding each, in the slot table's order (default: text and "
        "images, the paper's; not written then).",
    )

    @property
    def merged(self) -> tuple[str, ...]:
        """The modalities merged, in type-embedding order."""
        return self.modalities or PAPER_MODALITIES

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
        if self.modalities is not None and (
            not self.modalities or list(self.modalities) != [m for m in MODALITY_SLOTS if m in self.modalities]
        ):
            raise ValueError(f"modalities must be one or more of {', '.join(MODALITY_SLOTS)}, in that order")
        return self

    @model_serializer(mode="wrap")
    def _omit_default_modalities(self, handler: SerializerFunctionWrapHandler) -> Any:
        """config.json of a text + image fusion stays as it always was (no `modalities` key)."""
        fields = handler(self)
        if self.modalities is None:
            fields.pop("modalities", None)
        return fields


@register_component
class MergeAttentionFusion(Fusion):
    """Adds a modality-type embedding to each token (the reference code forgot to), attends, then pools."""

    type_name: ClassVar[str] = "fusion/merge_attention"
    config_class: ClassVar[type[ComponentConfig]] = MergeAttentionConfig
    config: MergeAttentionConfig

    def __init__(self, config: MergeAttentionConfig) -> None:
        super().__init__(config)
        self.type_embeddings = nn.Embedding(len(config.merged), config.dim)
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
        # One scalar; tanh(0) = 0, so a fresh gated fusion is exactly the mean of the single-modality towers.
        self.gate = nn.Parameter(torch.zeros(())) if config.gated else None

    @classmethod
    def create(cls, options: CreateOptions) -> MergeAttentionFusion:
        """A fresh gated fusion layer at width d; heads default to the largest divisor of d up to 12 (paper: 12); it
        merges `options.modalities` (default: text and images)."""
        dim = options.width
        merged = tuple(m for m in MODALITY_SLOTS if m in (options.modalities or PAPER_MODALITIES))
        modalities = None if merged == PAPER_MODALITIES else merged
        heads = options.heads or default_heads(dim, 12)
        config = MergeAttentionConfig(dim=dim, heads=heads, dropout=options.dropout, modalities=modalities, gated=True)
        return cls(config)

    @property
    def modalities(self) -> frozenset[str]:  # type: ignore[override]
        """The modalities this fusion merges (its config's)."""
        return frozenset(self.config.merged)

    def card_summary(self) -> str:
        merged = self.config.merged
        what = "text and image tokens" if merged == PAPER_MODALITIES else f"the tokens of {' and '.join(merged)}"
        gate = (
            " Gated: the item embedding is the mean of the single-modality towers plus tanh(gate) times that, the "
            "gate starting at 0."
            if self.gate is not None
            else ""
        )
        return (
            f"Merge-attention fusion: one post-LN Transformer layer ({self.config.heads} heads, d = {self.config.dim}) "
            f"over {what} with modality-type embeddings, then a masked mean: one embedding per item." + gate
        )

    def forward(self, tokens: Mapping[str, ModalityTokens]) -> torch.Tensor:
        merged = self.config.merged
        missing = [modality for modality in merged if modality not in tokens]
        if missing:
            raise ValueError(f"fusion/merge_attention needs the tokens of {' and '.join(merged)}")
        states, masks = [], []
        for row, modality in enumerate(merged):
            part = tokens[modality]
            states.append(part.tokens + self.type_embeddings.weight[row])
            shape, device = part.tokens.shape[:2], part.tokens.device
            masks.append(part.mask.to(torch.bool) if part.mask is not None else torch.ones(shape, dtype=torch.bool, device=device))
        valid = torch.cat(masks, dim=1)
        fused = masked_mean(self.layer(torch.cat(states, dim=1), src_key_padding_mask=~valid), valid)
        if self.gate is None:
            return fused
        towers = torch.stack([masked_mean(tokens[m].tokens, mask) for m, mask in zip(merged, masks, strict=True)])
        return towers.mean(dim=0) + torch.tanh(self.gate) * fused
