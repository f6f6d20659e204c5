"""NID: noised item detection (method.md, section 3.3; the paper's description, the project's defaults)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from pmmrec.objectives.base import Objective, register_objective

if TYPE_CHECKING:
    from pmmrec.model import PMMRec
    from pmmrec.objectives.step import TrainingStep


class NIDConfig(BaseModel):
    """Settings of noised item detection; `corruption_rate` is what the trainer passes to `corrupt_slots`."""

    model_config = ConfigDict(extra="forbid")

    corruption_rate: float = Field(
        0.15, ge=0.0, le=1.0, description="Probability that a valid slot is chosen for corruption (rho)."
    )


@register_objective
class NIDLoss(Objective):
    """Per-position binary head Linear(d,1) on the user states of the corrupted sequence.

    The state at position l (which, under the causal mask, has seen the item at l and its history) predicts
    whether the item at l was noised. Binary cross-entropy with logits, averaged over valid positions
    (0 when there are none).
    """

    name: ClassVar[str] = "nid"
    options_key: ClassVar[str] = "nid"
    config_class: ClassVar[type[BaseModel]] = NIDConfig
    pretrain_weight: ClassVar[float] = 0.1
    weight_description: ClassVar[str] = "Weight of NID (noised item detection); project default."
    options_description: ClassVar[str] = "NID options (corruption rate, also used by RCL)."

    def __init__(self, hidden_dim: int, config: NIDConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else NIDConfig()
        self.head = nn.Linear(hidden_dim, 1)

    @classmethod
    def build(cls, model: PMMRec, options: NIDConfig) -> NIDLoss:
        return cls(model.dim, options)

    def step_loss(self, step: TrainingStep) -> Tensor:
        corrupted_states, noise = step.corrupted()
        return self(corrupted_states, noise, step.input_mask)

    def forward(self, corrupted_states: Tensor, noise_labels: Tensor, seq_mask: Tensor) -> Tensor:
        """Scalar loss from states [B,S,d], labels Bool [B,S] and the validity mask Bool [B,S]."""
        if corrupted_states.dim() != 3 or corrupted_states.shape[:2] != seq_mask.shape:
            raise ValueError(
                f"corrupted_states must be [B,S,d] matching seq_mask {tuple(seq_mask.shape)}, "
                f"got {tuple(corrupted_states.shape)}"
            )
        if noise_labels.shape != seq_mask.shape:
            raise ValueError(f"noise_labels must have shape {tuple(seq_mask.shape)}, got {tuple(noise_labels.shape)}")
        logits = self.head(corrupted_states[seq_mask]).squeeze(-1)  # [A]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if logits.numel() == 0:
            return corrupted_states.sum() * 0.0 + sum(p.sum() for p in self.head.parameters()) * 0.0
        return F.binary_cross_entropy_with_logits(logits, noise_labels[seq_mask].to(logits.dtype))
