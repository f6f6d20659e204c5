"""What one training step has computed, for the objectives to read: each takes what it needs, and what two of them
share (the corrupted sequences of NID and RCL) is computed once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from pmmrec.data import SequenceBatch
from pmmrec.model import ItemEncoding
from pmmrec.objectives.corruption import corrupt_slots


@dataclass
class TrainingStep:
    """One step's batch, item encoding and user states.

    states: user states [B, S-1, d] of the clean inputs (state l predicts slot l + 1); candidates / candidate_ids:
    the next-item softmax's columns (the batch's items, other processes' too when negatives are gathered);
    encode_users: the model's user encoder; corruption_rate / corruption_seed: how `corrupted` corrupts the inputs.
    """

    batch: SequenceBatch
    items: ItemEncoding
    states: Tensor
    candidates: Tensor
    candidate_ids: Tensor
    log_popularity: Tensor
    encode_users: Callable[[Tensor, Tensor], Tensor]
    corruption_rate: float
    corruption_seed: int
    _corrupted: tuple[Tensor, Tensor] | None = field(default=None, repr=False)

    @property
    def input_mask(self) -> Tensor:
        """Valid input slots [B, S-1] (the last slot is only ever a target)."""
        return self.batch.seq_mask[:, :-1]

    def corrupted(self) -> tuple[Tensor, Tensor]:
        """(user states of the corrupted inputs [B, S-1, d], which slots were noised [B, S-1]), computed once per
        step from a generator seeded by the step."""
        if self._corrupted is None:
            mask = self.input_mask
            generator = torch.Generator(device=self.batch.slot_index.device).manual_seed(self.corruption_seed)
            corrupted, noise = corrupt_slots(self.batch.slot_index[:, :-1], mask, self.corruption_rate, generator)
            items = self.items.embeddings
            embeddings = items[corrupted] * mask.unsqueeze(-1).to(items.dtype)
            self._corrupted = (self.encode_users(embeddings, mask), noise)
        return self._corrupted
