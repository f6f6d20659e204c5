"""Sequence corruption shared by NID and RCL: replace some items by other users' items, shuffle others."""

from __future__ import annotations

import torch
from torch import Tensor

from pmmrec.objectives.next_item import check_slot_batch, user_item_membership


def corrupt_slots(
    slot_index: Tensor, seq_mask: Tensor, rate: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Corrupt a copy of a batch of sequences given as unique-item indices; return (corrupted [B,S], noise Bool [B,S]).

    Each valid slot is chosen independently with probability `rate`. Of the k chosen slots of a sequence,
    ceil(k/2) picked at random are replaced by an item drawn uniformly from the distinct items that occur in
    OTHER users' sequences of the batch (left unchanged if there is none, e.g. B = 1); the other floor(k/2)
    exchange their items by a uniform random permutation among themselves. A slot is labelled noise iff its
    item changed, so an item shuffled back onto its own position, or replaced by an equal item, is not
    noise. Padding slots are never touched. The result depends only on the inputs and `generator` (the
    global RNG when None); random numbers are drawn on the device of `slot_index`, where a given generator
    must live too.
    """
    check_slot_batch(slot_index, seq_mask)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    batch, slots = slot_index.shape
    device = slot_index.device
    if batch == 0 or slots == 0 or rate == 0.0 or not bool(seq_mask.any()):
        return slot_index.clone(), torch.zeros_like(seq_mask)

    def uniform() -> Tensor:
        return torch.rand(batch, slots, generator=generator, device=device)

    chosen = seq_mask & (uniform() < rate)

    # Random split of each sequence's chosen slots: the first ceil(k/2) in a random order are replaced.
    split_keys = uniform().masked_fill(~chosen, 2.0)
    rank = split_keys.argsort(dim=1, stable=True).argsort(dim=1, stable=True)
    num_chosen = chosen.sum(dim=1, keepdim=True)
    replace = chosen & (rank < (num_chosen + 1) // 2)
    shuffle = chosen & ~replace

    # Replacement: the (r+1)-th candidate of the row, r uniform in [0, candidates), found by searchsorted.
    num_unique = int(slot_index[seq_mask].max()) + 1
    membership = user_item_membership(slot_index, seq_mask, num_unique)
    in_others = (membership.sum(dim=0, keepdim=True) - membership.long()) > 0  # [B,U]
    num_candidates = in_others.sum(dim=1, keepdim=True)  # [B,1]
    draw = (uniform() * num_candidates).long().clamp_max((num_candidates - 1).clamp_min(0))
    cumulative = in_others.long().cumsum(dim=1).contiguous()
    drawn = torch.searchsorted(cumulative, (draw + 1).contiguous()).clamp_max(num_unique - 1)
    replace = replace & (num_candidates > 0)

    # Shuffle: the shuffled slots in position order receive the shuffled slots' items in random-key order;
    # every other slot maps to itself because both sort orders list them last, by position.
    positions = torch.arange(slots, device=device).unsqueeze(0).expand(batch, slots)
    target_order = torch.where(shuffle, positions, positions + slots).argsort(dim=1, stable=True)
    source_order = torch.where(shuffle, uniform(), positions.to(torch.float32) + 2.0).argsort(dim=1, stable=True)
    shuffled = slot_index.clone().scatter_(1, target_order, slot_index.gather(1, source_order))

    corrupted = torch.where(replace, drawn, shuffled)
    noise = seq_mask & (corrupted != slot_index)
    return corrupted, noise
