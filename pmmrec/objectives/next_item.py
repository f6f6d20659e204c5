"""Next-item prediction (method.md, section 3.1): an in-batch softmax with popularity logit correction, or the
full-catalogue softmax cross-entropy that standard SASRec implementations train with."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from pmmrec.objectives.base import Objective, register_objective
from pmmrec.objectives.chunked_softmax import chunked_cross_entropy

if TYPE_CHECKING:
    from pmmrec.model import PMMRec
    from pmmrec.objectives.step import TrainingStep


class NextItemConfig(BaseModel):
    """Settings of the next-item (recommendation) loss."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(
        1.0, gt=0.0, le=100.0, description="Divides the dot-product score h.e before the popularity correction."
    )
    popularity_correction: bool = Field(
        True,
        description="In-batch softmax: subtract log p(item) from every logit (p from training-set counts), as in the "
        "paper. The full softmax samples nothing, so it has no sampling bias to correct and never applies it.",
    )
    softmax: Literal["auto", "in_batch", "full"] = Field(
        "auto",
        description="Candidates of each prediction: in_batch = the distinct items of the batch (the paper's); full = "
        "every item known at training time at every step (standard SASRec cross-entropy over the items of the "
        "training sequences and known_items, never future items; each step encodes all of them, affordable for ID "
        "towers, frozen towers and small catalogues); auto = full for an ID item tower, in_batch for content towers.",
    )
    own_items: Literal["mask", "negatives"] = Field(
        "mask",
        description="The other items of a row's own training sequence: mask = never negatives (the paper's; they "
        "are no false negatives then); negatives = scored like any other item (standard SASRec cross-entropy, "
        "which teaches the model to rank items the user already has below new ones).",
    )


def check_slot_batch(slot_index: Tensor, seq_mask: Tensor) -> None:
    """Raise ValueError unless slot_index is a Long [B,S] tensor and seq_mask a Bool tensor of the same shape."""
    if slot_index.dim() != 2 or slot_index.dtype != torch.long:
        raise ValueError(f"slot_index must be a LongTensor [B,S], got {tuple(slot_index.shape)} {slot_index.dtype}")
    if seq_mask.shape != slot_index.shape or seq_mask.dtype != torch.bool:
        raise ValueError(
            f"seq_mask must be a BoolTensor of shape {tuple(slot_index.shape)}, got {tuple(seq_mask.shape)} "
            f"{seq_mask.dtype}"
        )


def user_item_membership(slot_index: Tensor, seq_mask: Tensor, num_unique: int) -> Tensor:
    """Bool [B,U]: entry (b,u) is True when distinct batch item u occurs at a valid slot of user b's sequence.

    Padding slots are ignored through `seq_mask` (their slot_index value, 0, is a real item index).
    """
    check_slot_batch(slot_index, seq_mask)
    batch = slot_index.shape[0]
    membership = torch.zeros(batch, num_unique, dtype=torch.bool, device=slot_index.device)
    rows = torch.arange(batch, device=slot_index.device).unsqueeze(1).expand_as(slot_index)
    membership[rows[seq_mask], slot_index[seq_mask]] = True
    return membership


def log_popularity_from_counts(counts: Tensor, eps: float = 1e-8) -> Tensor:
    """log p(item) per catalogue index from training interaction counts [N+1] (index 0 = padding).

    p = count / total over items 1..N, clamped below at `eps` so unseen items get a finite value; the
    padding entry is returned as 0 (it is never a column of the loss).
    """
    if counts.dim() != 1 or counts.numel() < 2:
        raise ValueError(f"counts must be a 1-D tensor [N+1] with N >= 1, got shape {tuple(counts.shape)}")
    if not eps > 0.0:
        raise ValueError(f"eps must be > 0, got {eps}")
    counts = counts.to(torch.float64)
    if bool((counts < 0).any()) or not bool(torch.isfinite(counts).all()):
        raise ValueError("counts must be finite and non-negative")
    total = counts[1:].sum()
    if not total > 0:
        raise ValueError("counts of items 1..N sum to zero: no training interactions to estimate popularity from")
    log_p = torch.log((counts / total).clamp_min(eps))
    log_p[0] = 0.0
    return log_p.to(torch.float32)


def default_softmax(model: PMMRec) -> str:
    """The next-item softmax of `softmax: auto`: full for an ID item tower, in-batch for content towers.

    SASRec-ID gains from scoring every known item at every step (docs/benchmarks.md), and its table costs nothing to
    score. A content tower with the full softmax encodes every known item at every step. (Before issue 24 the full
    softmax also took never-trained items as negatives, which taught content towers to rank new items last; it now
    scores only the items known at training time.)
    """
    return "full" if model.item_tower is not None else "in_batch"


@register_objective
class NextItemLoss(Objective):
    """Softmax cross-entropy of the next item over the batch's candidate items, with history masking.

    The candidates are the batch's distinct items (in-batch softmax, with the popularity correction when enabled)
    or, when the collator lists every known item (NextItemConfig.softmax = full), every item known at training time
    (never an item of no training sequence: issue 24); the module is the same, only `full` switches the correction
    off.

    Rows: every position l of user b such that slots l and l+1 are both valid; the user state at l is
    scored against the U distinct items of the batch (the columns) and the target is the item at slot l+1.
    logit(b,l,c) = h(b,l).e(c) / temperature - log p(item c) (the correction only when enabled).

    Because the columns are the batch's DISTINCT non-padding items, there is no padding column and no
    duplicate column of the target to mask. A column is masked to -inf when its item occurs anywhere in
    user b's own sequence and is not the row's target (a user's own items are never negatives).
    (`own_items: negatives` lifts that mask: only the target is positive.)
    The loss is the cross-entropy averaged over all valid rows; with no valid row it is 0 (still
    attached to the graph).
    """

    name: ClassVar[str] = "rec"
    options_key: ClassVar[str] = "next_item"
    config_class: ClassVar[type[BaseModel]] = NextItemConfig
    pretrain_weight: ClassVar[float] = 1.0
    finetune_weight: ClassVar[float] = 1.0
    weight_description: ClassVar[str] = "Weight of the next-item (recommendation) loss."
    options_description: ClassVar[str] = "Next-item prediction options."

    def __init__(self, config: NextItemConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else NextItemConfig()

    @classmethod
    def resolve_options(cls, options: NextItemConfig, model: PMMRec) -> NextItemConfig:
        """`softmax: auto` decided for this model (`default_softmax`)."""
        if options.softmax != "auto":
            return options
        return options.model_copy(update={"softmax": default_softmax(model)})

    @classmethod
    def lists_every_item(cls, options: NextItemConfig) -> bool:
        return options.softmax == "full"

    def step_loss(self, step: TrainingStep) -> Tensor:
        # State l predicts slot l + 1; the target slot has no successor, so its state is a zero column.
        states = step.states
        padded = torch.cat([states, states.new_zeros(states.shape[0], 1, states.shape[2])], dim=1)
        batch = step.batch
        return self(padded, step.candidates, batch.slot_index, batch.seq_mask, step.candidate_ids, step.log_popularity)

    def forward(
        self,
        user_states: Tensor,
        item_embeddings: Tensor,
        slot_index: Tensor,
        seq_mask: Tensor,
        unique_items: Tensor,
        log_popularity: Tensor | None = None,
    ) -> Tensor:
        """Scalar loss; `log_popularity` [N+1] is indexed by catalogue id and required iff correction is on."""
        check_slot_batch(slot_index, seq_mask)
        batch, slots = slot_index.shape
        num_unique = item_embeddings.shape[0]
        if user_states.dim() != 3 or user_states.shape[:2] != (batch, slots):
            raise ValueError(f"user_states must be [B,S,d] = [{batch},{slots},d], got {tuple(user_states.shape)}")
        if item_embeddings.dim() != 2 or item_embeddings.shape[1] != user_states.shape[2]:
            raise ValueError(f"item_embeddings must be [U,{user_states.shape[2]}], got {tuple(item_embeddings.shape)}")
        if unique_items.shape != (num_unique,):
            raise ValueError(f"unique_items must be [U] = [{num_unique}], got {tuple(unique_items.shape)}")
        correct = self.config.popularity_correction and self.config.softmax != "full"
        if correct and log_popularity is None:
            raise ValueError("log_popularity is required when NextItemConfig.popularity_correction is true")

        row_valid = seq_mask[:, :-1] & seq_mask[:, 1:]  # [B,S-1]
        if not bool(row_valid.any()):
            return user_states.sum() * 0.0 + item_embeddings.sum() * 0.0

        states = user_states[:, :-1][row_valid]  # [R,d]
        targets = slot_index[:, 1:][row_valid]  # [R]
        row_user = torch.arange(batch, device=slot_index.device).unsqueeze(1).expand(batch, slots - 1)[row_valid]

        masked = self.config.own_items == "mask"
        if _chunked(states, item_embeddings):
            columns = own_item_columns(slot_index, seq_mask, row_user, targets) if masked else targets.unsqueeze(1)
            correction = (
                log_popularity.to(device=states.device, dtype=states.dtype)[unique_items]
                if correct and log_popularity is not None
                else None
            )
            return chunked_cross_entropy(states, item_embeddings, targets, columns, self.config.temperature, correction)
        # Scores in float32 from here: under bf16 autocast the popularity correction would otherwise be rounded to
        # bf16's steps (about 1/32 near log p = -7) before the cross-entropy.
        scores = states @ item_embeddings.t()  # [R,U]
        logits = scores.to(torch.promote_types(scores.dtype, torch.float32))
        if self.config.temperature != 1.0:  # two passes over [R,U] saved in the default case
            logits = logits / self.config.temperature
        if correct:
            assert log_popularity is not None
            logits = logits - log_popularity.to(device=logits.device, dtype=logits.dtype)[unique_items].unsqueeze(0)
        if masked:
            logits = mask_own_items(logits, slot_index, seq_mask, row_user, targets)
        return F.cross_entropy(logits, targets)


def _chunked(states: Tensor, items: Tensor) -> bool:
    """Whether the loss takes the cache-sized row chunks of `chunked_cross_entropy`: float32 training on a CPU,
    where the [R, U] logits' memory traffic costs more than their multiply-adds. Elsewhere (a GPU, autocast,
    no gradient wanted) the plain product and `F.cross_entropy`."""
    return (
        states.device.type == "cpu"
        and states.dtype == items.dtype == torch.float32
        and torch.is_grad_enabled()
        and (states.requires_grad or items.requires_grad)
        and not torch.is_autocast_enabled("cpu")
    )


def own_item_columns(slot_index: Tensor, seq_mask: Tensor, row_user: Tensor, targets: Tensor) -> Tensor:
    """[R,S]: the columns of row r's user's own items, padding slots pointing at the row's target column."""
    return torch.where(seq_mask[row_user], slot_index[row_user], targets.unsqueeze(1))


def mask_own_items(logits: Tensor, slot_index: Tensor, seq_mask: Tensor, row_user: Tensor, targets: Tensor) -> Tensor:
    """A copy of `logits` [R,U] with -inf at every column of row r's user's own items except the row's target.

    One scatter over each row's S slots (O(R*S)) into one copy, instead of a dense [R,U] membership mask, its
    per-row gather and a masked copy (a fifth of a full-softmax step on CPU); values and gradients are the same.
    Padding slots point at the target column, whose logit is put back afterwards.
    """
    rows = torch.arange(targets.shape[0], device=targets.device).unsqueeze(1)
    columns = own_item_columns(slot_index, seq_mask, row_user, targets)
    masked = logits.index_put((rows, columns), logits.new_full((), float("-inf")))
    target_column = targets.unsqueeze(1)
    return masked.scatter_(1, target_column, logits.gather(1, target_column))
