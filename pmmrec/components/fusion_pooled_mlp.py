"""`fusion/pooled_mlp`: a one-modality item tower that pools first, then refines the pooled vector with a residual MLP.

Why: with a frozen backbone, the single-modality tower's item embedding (the mean of the projected tokens) is a
linear map of fixed features, which cannot place items freely; the merge-attention layer over the tokens can, but it
runs forward and backward over every token of every item of a batch (6.6x the frozen step on a CPU:
docs/benchmarks.md, "A text run on a CPU"). This MLP runs once per item on the pooled vector: item = mean + MLP(mean),
the MLP's last layer starting at zero so a fresh tower is exactly the mean tower.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from pydantic import Field, field_validator
from torch import nn

from pmmrec.components import _backbones
from pmmrec.components.base import NOMINAL_BATCH, ComponentConfig, register_component
from pmmrec.components.kinds import Fusion, ModalityTokens, masked_mean
from pmmrec.components.options import CreateOptions
from pmmrec.slots import MODALITY_SLOTS


class PooledMlpConfig(ComponentConfig):
    """Width, the modality read, and the MLP's shape."""

    dim: int = Field(ge=1, le=_backbones.MAX_HIDDEN, description="Item embedding width d.")
    modality: str = Field(description="The one modality whose tokens are pooled (a slot of pmmrec.slots' table).")
    hidden_multiplier: int = Field(default=4, ge=1, le=16, description="The MLP's hidden width as a multiple of d.")
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="Dropout on the MLP's hidden layer.")

    @field_validator("modality")
    @classmethod
    def _known_modality(cls, value: str) -> str:
        if value not in MODALITY_SLOTS:
            raise ValueError(f"modality must be one of {', '.join(MODALITY_SLOTS)}")
        return value

    def parameter_estimate(self) -> int:
        d, m = self.dim, self.hidden_multiplier
        return 2 * m * d * d + (m + 1) * d

    def activation_estimate(self) -> int:
        return NOMINAL_BATCH * (self.hidden_multiplier + 2) * self.dim


@register_component
class PooledMlpFusion(Fusion):
    """Item embedding = mean of the modality's projected tokens + MLP(that mean)."""

    type_name: ClassVar[str] = "fusion/pooled_mlp"
    config_class: ClassVar[type[ComponentConfig]] = PooledMlpConfig
    config: PooledMlpConfig

    def __init__(self, config: PooledMlpConfig) -> None:
        super().__init__(config)
        hidden = config.hidden_multiplier * config.dim
        self.mlp = nn.Sequential(
            nn.Linear(config.dim, hidden), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(hidden, config.dim)
        )
        nn.init.zeros_(self.mlp[-1].weight)  # a fresh tower is the mean tower exactly
        nn.init.zeros_(self.mlp[-1].bias)

    @classmethod
    def create(cls, options: CreateOptions) -> PooledMlpFusion:
        """A fresh tower at width d over the one modality of `options.modalities` (default: text)."""
        modalities = options.modalities or ("text",)
        if len(modalities) != 1:
            raise ValueError(f"fusion/pooled_mlp reads one modality, not {len(modalities)}")
        return cls(PooledMlpConfig(dim=options.width, modality=modalities[0]))

    @property
    def modalities(self) -> frozenset[str]:  # type: ignore[override]
        """The one modality this tower reads (its config's)."""
        return frozenset({self.config.modality})

    def card_summary(self) -> str:
        return (
            f"Single-modality item tower over {self.config.modality}: the masked mean of its projected tokens plus a "
            f"residual MLP of that mean (hidden {self.config.hidden_multiplier}d, GELU)."
        )

    def forward(self, tokens: Mapping[str, ModalityTokens]) -> torch.Tensor:
        modality = self.config.modality
        if modality not in tokens:
            raise ValueError(f"fusion/pooled_mlp needs {modality} tokens")
        pooled = masked_mean(*tokens[modality])
        return pooled + self.mlp(pooled)
