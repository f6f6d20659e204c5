"""The training module: the model plus the objective heads; forward(batch) returns every active loss (what DDP wraps)."""

from __future__ import annotations

import torch
from torch import nn

from pmmrec.data import SequenceBatch
from pmmrec.model import ItemEncoding, PMMRec
from pmmrec.objectives import NextItemLoss, NICLLoss, NIDLoss, RCLLoss, corrupt_slots
from pmmrec.prefix_cache import FrozenPrefixCache
from pmmrec.training.config import TrainConfig


class TrainingModule(nn.Module):
    """The model plus the objective heads; forward(batch) returns every active loss (what DDP wraps)."""

    def __init__(self, model: PMMRec, config: TrainConfig, log_popularity: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        objectives = config.objectives
        weights = objectives.weights
        both = model.modalities == frozenset({"text", "vision"})
        if weights.nicl > 0 and not both:  # NICL is skipped (the Trainer prints a notice): drop its weight
            weights = weights.model_copy(update={"nicl": 0.0})
        self.weights = weights
        next_item = objectives.next_item
        if next_item.softmax == "auto":
            next_item = next_item.model_copy(update={"softmax": default_softmax(model)})
        self.next_item = NextItemLoss(next_item)
        # Full softmax: the collator lists every catalogue item as a candidate of every batch.
        self.full_softmax = next_item.softmax == "full"
        self.nicl = NICLLoss(model.dim, objectives.nicl) if weights.nicl > 0 and both else None
        self.nid = NIDLoss(model.dim, objectives.nid) if weights.nid > 0 else None
        self.rcl = RCLLoss(objectives.rcl) if weights.rcl > 0 else None
        self.corruption_rate = objectives.nid.corruption_rate
        self.register_buffer("log_popularity", log_popularity, persistent=False)
        self.gather_negatives = False
        self.prefix_cache: FrozenPrefixCache | None = None
        # Catalogue embedding table [N+1, d] used instead of encoding, when the whole item tower is frozen.
        self.item_table: torch.Tensor | None = None

    def active_losses(self) -> list[str]:
        names = ["rec"] if self.weights.rec > 0 else []
        names += [name for name in ("nicl", "nid", "rcl") if getattr(self, name) is not None]
        return names

    def forward(self, batch: SequenceBatch, corruption_seed: int) -> dict[str, torch.Tensor]:
        model = self.model
        if self.item_table is not None:  # frozen item tower: rows of this epoch's table, nothing to encode
            encoded = ItemEncoding(embeddings=self.item_table[batch.unique_items])
        else:
            text_prefix = image_prefix = None
            if self.prefix_cache is not None:
                text_prefix, image_prefix = self.prefix_cache.lookup(batch)
            encoded = model.embed_items(
                batch.text_ids,
                batch.text_mask,
                batch.pixel_values,
                item_indices=batch.unique_items,
                text_prefix=text_prefix,
                image_prefix=image_prefix,
            )
        items = encoded.embeddings
        slot_embeddings = items[batch.slot_index] * batch.seq_mask.unsqueeze(-1).to(items.dtype)
        input_mask = batch.seq_mask[:, :-1]
        states = model.encode_users(slot_embeddings[:, :-1], input_mask)
        # State l predicts slot l + 1; the target slot has no successor, so its state is a zero column.
        padded_states = torch.cat([states, states.new_zeros(states.shape[0], 1, states.shape[2])], dim=1)
        losses: dict[str, torch.Tensor] = {}
        candidates, candidate_ids = items, batch.unique_items
        if self.gather_negatives and not self.full_softmax:
            candidates, candidate_ids = gather_candidates(items, batch.unique_items)
        if self.weights.rec > 0:
            losses["rec"] = self.next_item(
                padded_states, candidates, batch.slot_index, batch.seq_mask, candidate_ids, self.log_popularity
            )
        if self.nicl is not None:
            losses["nicl"] = self.nicl(encoded.text_pooled, encoded.image_pooled, batch.slot_index, batch.seq_mask)
        if self.nid is not None or self.rcl is not None:
            generator = torch.Generator(device=batch.slot_index.device).manual_seed(corruption_seed)
            inputs = batch.slot_index[:, :-1]
            corrupted, noise = corrupt_slots(inputs, input_mask, self.corruption_rate, generator)
            corrupted_embeddings = items[corrupted] * input_mask.unsqueeze(-1).to(items.dtype)
            corrupted_states = model.encode_users(corrupted_embeddings, input_mask)
            if self.nid is not None:
                losses["nid"] = self.nid(corrupted_states, noise, input_mask)
            if self.rcl is not None:
                valid = input_mask[:, -1]
                losses["rcl"] = self.rcl(states[valid, -1], corrupted_states[valid, -1])
        return losses


def default_softmax(model: PMMRec) -> str:
    """The next-item softmax of `softmax: auto`: full for an ID item tower, in-batch for content towers.

    SASRec-ID gains from scoring every known item at every step (docs/benchmarks.md), and its table costs nothing to
    score. A content tower with the full softmax encodes every known item at every step. (Before issue 24 the full
    softmax also took never-trained items as negatives, which taught content towers to rank new items last; it now
    scores only the items known at training time.)
    """
    return "full" if model.item_tower is not None else "in_batch"


def item_tower_frozen(model: PMMRec) -> bool:
    """True when no parameter of the item tower (text, vision, fusion or ID tower) is trained."""
    slots = ("text", "vision", "fusion", "item_tower")
    components = [getattr(model, slot) for slot in slots if getattr(model, slot) is not None]
    return not any(parameter.requires_grad for component in components for parameter in component.parameters())


def gather_candidates(items: torch.Tensor, unique_items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Local batch items first, then other processes' items not in this batch (gradients flow back to them)."""
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn

    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=items.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([items.shape[0]], device=items.device))
    longest = int(max(s.item() for s in sizes))
    padded_items = torch.cat([items, items.new_zeros(longest - items.shape[0], items.shape[1])])
    padded_ids = torch.cat([unique_items, unique_items.new_zeros(longest - unique_items.shape[0])])
    all_items = dist_fn.all_gather(padded_items)
    all_ids = [torch.zeros_like(padded_ids) for _ in range(world)]
    dist.all_gather(all_ids, padded_ids)
    rank = dist.get_rank()
    extra_items, extra_ids = [], []
    seen = unique_items
    for other in range(world):
        if other == rank:
            continue
        count = int(sizes[other].item())
        ids = all_ids[other][:count]
        keep = ~torch.isin(ids, seen)
        extra_items.append(all_items[other][:count][keep])
        extra_ids.append(ids[keep])
        seen = torch.cat([seen, ids[keep]])
    return torch.cat([items, *extra_items]), torch.cat([unique_items, *extra_ids])
