"""RCL: robustness-aware contrastive learning (method.md, section 3.4; the paper's description, project defaults)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from pmmrec.objectives.base import Objective, register_objective

if TYPE_CHECKING:
    from pmmrec.objectives.step import TrainingStep


class RCLConfig(BaseModel):
    """Settings of the clean-vs-corrupted user contrastive loss."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.1, gt=0.0, le=100.0, description="tau dividing the cosine similarities.")


@register_objective
class RCLLoss(Objective):
    """Symmetric InfoNCE between the clean and corrupted user representations (last valid position).

    Row b of the similarity matrix is clean user b against every corrupted user; the positive is the
    diagonal, the other users are negatives. The two directions (clean->corrupted, corrupted->clean) are
    averaged. With B = 1 the loss is 0; with B = 0 it is 0 as well.
    """

    name: ClassVar[str] = "rcl"
    options_key: ClassVar[str] = "rcl"
    config_class: ClassVar[type[BaseModel]] = RCLConfig
    pretrain_weight: ClassVar[float] = 0.1
    weight_description: ClassVar[str] = "Weight of RCL (robustness contrastive); project default."
    options_description: ClassVar[str] = "RCL options."

    def __init__(self, config: RCLConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else RCLConfig()

    def step_loss(self, step: TrainingStep) -> Tensor:
        """Clean against corrupted user state after the last input slot, for users whose last slot is real."""
        valid = step.input_mask[:, -1]
        corrupted_states, _ = step.corrupted()
        return self(step.states[valid, -1], corrupted_states[valid, -1])

    def forward(self, clean_user: Tensor, corrupted_user: Tensor) -> Tensor:
        """Scalar loss from clean [B,d] and corrupted [B,d] user vectors."""
        if clean_user.dim() != 2 or corrupted_user.shape != clean_user.shape:
            raise ValueError(
                f"clean_user and corrupted_user must both be [B,d], got {tuple(clean_user.shape)} and "
                f"{tuple(corrupted_user.shape)}"
            )
        if clean_user.shape[0] == 0:
            return clean_user.sum() * 0.0 + corrupted_user.sum() * 0.0
        dtype = torch.promote_types(clean_user.dtype, torch.float32)
        clean = F.normalize(clean_user.to(dtype), dim=-1)
        noisy = F.normalize(corrupted_user.to(dtype), dim=-1)
        logits = clean @ noisy.t() / self.config.temperature
        labels = torch.arange(clean.shape[0], device=clean.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
