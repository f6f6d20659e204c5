"""NICL: next-item enhanced cross-modal contrastive learning (method.md, section 3.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from pmmrec.objectives.base import Objective, register_objective
from pmmrec.objectives.next_item import check_slot_batch, user_item_membership
from pmmrec.slots import PAPER_MODALITIES

if TYPE_CHECKING:
    from pmmrec.model import PMMRec
    from pmmrec.objectives.step import TrainingStep


class NICLConfig(BaseModel):
    """Settings of the NICL loss."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.1, gt=0.0, le=100.0, description="tau dividing the cosine similarities.")
    projection_dim: int | None = Field(
        None, ge=1, le=65536, description="Output size of the projection heads; None keeps the model size d."
    )


def _at_least_float32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def nicl_masks(slot_index: Tensor, seq_mask: Tensor, num_unique: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Candidate sets of every NICL anchor as masks over the 2U columns [T; V].

    Returns (anchor_items [A], text_positives [A,2U], image_positives [A,2U], negatives [A,2U]), one row
    per valid slot in row-major (b,l) order. text_positives: v(i), t(n), v(n) minus the anchor's own t(i);
    image_positives: t(i), t(n), v(n) minus v(i); negatives (shared by both directions): t(j), v(j) for
    items j in another user's sequence, except j = i and j = n (items equal to a positive). An item of user b's
    own sequence that another user also has is a negative: method.md excludes only items equal to a positive.
    """
    check_slot_batch(slot_index, seq_mask)
    batch, slots = slot_index.shape
    device = slot_index.device
    anchor = slot_index[seq_mask]  # [A] unique index of each anchor's item
    user = torch.arange(batch, device=device).unsqueeze(1).expand(batch, slots)[seq_mask]
    next_valid = torch.zeros_like(seq_mask)
    next_valid[:, :-1] = seq_mask[:, :-1] & seq_mask[:, 1:]
    next_item = torch.zeros_like(slot_index)
    next_item[:, :-1] = slot_index[:, 1:]
    has_next = next_valid[seq_mask]  # [A]
    nxt = next_item[seq_mask]  # [A]

    rows = torch.arange(anchor.shape[0], device=device)
    next_pos = torch.zeros(anchor.shape[0], 2 * num_unique, dtype=torch.bool, device=device)
    next_pos[rows[has_next], nxt[has_next]] = True
    next_pos[rows[has_next], nxt[has_next] + num_unique] = True

    text_positives = next_pos.clone()
    text_positives[rows, anchor + num_unique] = True
    text_positives[rows, anchor] = False
    image_positives = next_pos
    image_positives[rows, anchor] = True
    image_positives[rows, anchor + num_unique] = False

    membership = user_item_membership(slot_index, seq_mask, num_unique)  # [B,U]
    in_others = (membership.sum(0, keepdim=True) - membership.long()) > 0  # [B,U]
    negatives = in_others.repeat(1, 2)[user]  # [A,2U]
    # Only items equal to a positive (the anchor's item i and its next item n) are excluded (method.md 3.2).
    negatives[rows, anchor] = False
    negatives[rows, anchor + num_unique] = False
    negatives[rows[has_next], nxt[has_next]] = False
    negatives[rows[has_next], nxt[has_next] + num_unique] = False
    return anchor, text_positives, image_positives, negatives


class ProjectionHead(nn.Module):
    """Linear(d,d) - GELU - Linear(d,p), a SimCLR-style head.

    A non-linear head lets the contrastive geometry be learned apart from the recommendation space that the
    item representations themselves live in.
    """

    def __init__(self, hidden_dim: int, projection_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, projection_dim))

    def forward(self, x: Tensor) -> Tensor:
        """Project [..., d] to [..., p]."""
        return self.net(x)


@register_objective
class NICLLoss(Objective):
    """Multi-positive, symmetric text<->image InfoNCE over the items of a batch, with next-item positives.

    Anchors are every valid slot (b,l), once with the text representation t(i) of its item i and once
    with the image representation v(i). Columns are the 2U projected, L2-normalised representations
    [T; V] of the batch's distinct items; the similarity is cosine / temperature.

    - positives of t(i): v(i), and t(n), v(n) of the next item n when slot (b,l+1) is valid;
      of v(i): t(i), and t(n), v(n) likewise;
    - negatives: t(j), v(j) for every item j occurring in another user's sequence, except j = i and j = n
      (items equal to a positive are never negatives; other items of b's own sequence can be);
    - the anchor's own column (t(i) for a text anchor, v(i) for an image anchor) is neither positive
      nor negative, also when the next item equals i.

    Per anchor: -log(sum_pos exp(s) / sum_{pos u neg} exp(s)); the loss is the mean over all anchors of
    both directions (0 when the batch has no valid slot).
    """

    name: ClassVar[str] = "nicl"
    options_key: ClassVar[str] = "nicl"
    config_class: ClassVar[type[BaseModel]] = NICLConfig
    pretrain_weight: ClassVar[float] = 0.4
    weight_description: ClassVar[str] = "Weight of NICL (cross-modal contrastive loss)."
    options_description: ClassVar[str] = "NICL options."
    needs_modalities: ClassVar[frozenset[str]] = frozenset(PAPER_MODALITIES)  # contrasts text with image states
    skip_notice: ClassVar[str] = (
        "NICL skipped: it needs both a text and a vision encoder (train with --modality text --modality vision "
        "on a dataset with images.lmdb, e.g. one built by `pmmrec data movielens --images synthetic`)"
    )
    reads_item_states: ClassVar[bool] = True

    def __init__(self, hidden_dim: int, config: NICLConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else NICLConfig()
        out_dim = self.config.projection_dim if self.config.projection_dim is not None else hidden_dim
        self.text_head = ProjectionHead(hidden_dim, out_dim)
        self.image_head = ProjectionHead(hidden_dim, out_dim)

    @classmethod
    def build(cls, model: PMMRec, options: NICLConfig) -> NICLLoss:
        return cls(model.dim, options)

    def step_loss(self, step: TrainingStep) -> Tensor:
        items = step.items
        assert items.text_pooled is not None and items.image_pooled is not None
        return self(items.text_pooled, items.image_pooled, step.batch.slot_index, step.batch.seq_mask)

    def forward(self, text_repr: Tensor, image_repr: Tensor, slot_index: Tensor, seq_mask: Tensor) -> Tensor:
        """Scalar loss from per-item pooled text [U,d] and image [U,d] representations of the batch."""
        check_slot_batch(slot_index, seq_mask)
        if text_repr.dim() != 2 or image_repr.shape != text_repr.shape:
            raise ValueError(
                f"text_repr and image_repr must both be [U,d], got {tuple(text_repr.shape)} and "
                f"{tuple(image_repr.shape)}"
            )
        num_unique = text_repr.shape[0]

        t = F.normalize(_at_least_float32(self.text_head(text_repr)), dim=-1)
        v = F.normalize(_at_least_float32(self.image_head(image_repr)), dim=-1)
        columns = torch.cat([t, v], dim=0)  # [2U,p]
        if not bool(seq_mask.any()):
            return columns.sum() * 0.0
        sim_text = t @ columns.t() / self.config.temperature  # [U,2U], rows = text anchors per item
        sim_image = v @ columns.t() / self.config.temperature  # [U,2U], rows = image anchors per item

        anchor, text_positives, image_positives, negatives = nicl_masks(slot_index, seq_mask, num_unique)
        losses = []
        for sims, positives in ((sim_text, text_positives), (sim_image, image_positives)):
            logits = sims[anchor]  # [A,2U]
            pos_lse = torch.logsumexp(logits.masked_fill(~positives, float("-inf")), dim=1)
            all_lse = torch.logsumexp(logits.masked_fill(~(positives | negatives), float("-inf")), dim=1)
            losses.append(all_lse - pos_lse)
        return torch.cat(losses).mean()
