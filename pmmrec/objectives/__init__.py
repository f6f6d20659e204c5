"""Training objectives of PMMRec (method.md, section 3), registered by name, and the weights that combine them.

Each objective is one file (options, loss module, how it reads a `TrainingStep`) registered with
`register_objective`; importing it here, in the order below, is its registration. `ObjectiveWeights`, the
training config's objective options, the `--NAME-weight` flags and the training module are built from the registry.
"""

from __future__ import annotations

from pmmrec.objectives.base import Objective, WeightsBase, register_objective, registered_objectives, weights_model
from pmmrec.objectives.corruption import corrupt_slots
from pmmrec.objectives.next_item import (
    NextItemConfig,
    NextItemLoss,
    check_slot_batch,
    default_softmax,
    log_popularity_from_counts,
    user_item_membership,
)
from pmmrec.objectives.nicl import NICLConfig, NICLLoss, ProjectionHead, nicl_masks
from pmmrec.objectives.nid import NIDConfig, NIDLoss
from pmmrec.objectives.rcl import RCLConfig, RCLLoss
from pmmrec.objectives.step import TrainingStep

ObjectiveWeights = weights_model(
    """Weights of total = rec*L_rec + nicl*L_NICL + nid*L_NID + rcl*L_RCL; a weight of 0 switches a loss off.

    rec and nicl follow the paper's 1 : 0.4 ratio of NICL to the recommendation loss as a pre-training
    default (the released code used 0.6*L_rec + 0.4*L_NICL). The paper gives no weights for NID and RCL:
    0.1 each is this project's own default. For fine-tuning, set nicl = nid = rcl = 0.
    """
)

__all__ = [
    "NICLConfig",
    "NICLLoss",
    "NIDConfig",
    "NIDLoss",
    "NextItemConfig",
    "NextItemLoss",
    "Objective",
    "ObjectiveWeights",
    "ProjectionHead",
    "RCLConfig",
    "RCLLoss",
    "TrainingStep",
    "WeightsBase",
    "check_slot_batch",
    "corrupt_slots",
    "default_softmax",
    "log_popularity_from_counts",
    "nicl_masks",
    "register_objective",
    "registered_objectives",
    "user_item_membership",
    "weights_model",
]
