"""Training objectives of PMMRec (method.md, section 3) and the weights that combine them."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from pmmrec.objectives.corruption import corrupt_slots
from pmmrec.objectives.next_item import (
    NextItemConfig,
    NextItemLoss,
    check_slot_batch,
    log_popularity_from_counts,
    user_item_membership,
)
from pmmrec.objectives.nicl import NICLConfig, NICLLoss, ProjectionHead, nicl_masks
from pmmrec.objectives.nid import NIDConfig, NIDLoss
from pmmrec.objectives.rcl import RCLConfig, RCLLoss


class ObjectiveWeights(BaseModel):
    """Weights of total = rec*L_rec + nicl*L_NICL + nid*L_NID + rcl*L_RCL; a weight of 0 switches a loss off.

    rec and nicl follow the paper's 1 : 0.4 ratio of NICL to the recommendation loss as a pre-training
    default (the released code used 0.6*L_rec + 0.4*L_NICL). The paper gives no weights for NID and RCL:
    0.1 each is this project's own default. For fine-tuning, set nicl = nid = rcl = 0.
    """

    model_config = ConfigDict(extra="forbid")

    rec: float = Field(1.0, ge=0.0, le=1000.0, description="Weight of the next-item (recommendation) loss.")
    nicl: float = Field(0.4, ge=0.0, le=1000.0, description="Weight of NICL (cross-modal contrastive loss).")
    nid: float = Field(0.1, ge=0.0, le=1000.0, description="Weight of NID (noised item detection); project default.")
    rcl: float = Field(0.1, ge=0.0, le=1000.0, description="Weight of RCL (robustness contrastive); project default.")

    def active(self) -> tuple[str, ...]:
        """Names of the objectives with a non-zero weight, in the order rec, nicl, nid, rcl."""
        return tuple(name for name in ("rec", "nicl", "nid", "rcl") if getattr(self, name) > 0.0)

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        """Weighted sum of the given losses; every active objective must be present, unknown names are refused."""
        unknown = sorted(set(losses) - {"rec", "nicl", "nid", "rcl"})
        if unknown:
            raise ValueError(f"unknown objective name(s) {unknown}; expected rec, nicl, nid, rcl")
        missing = [name for name in self.active() if name not in losses]
        if missing:
            raise ValueError(f"objective(s) {missing} have a non-zero weight but no loss was given")
        if not losses:
            raise ValueError("no loss given to combine")
        terms = [getattr(self, name) * loss for name, loss in losses.items() if getattr(self, name) > 0.0]
        if not terms:
            return next(iter(losses.values())) * 0.0
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return total


__all__ = [
    "NICLConfig",
    "NICLLoss",
    "NIDConfig",
    "NIDLoss",
    "NextItemConfig",
    "NextItemLoss",
    "ObjectiveWeights",
    "ProjectionHead",
    "RCLConfig",
    "RCLLoss",
    "check_slot_batch",
    "corrupt_slots",
    "log_popularity_from_counts",
    "nicl_masks",
    "user_item_membership",
]
