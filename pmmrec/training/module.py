"""The training module: the model plus the objective heads; forward(batch) returns every active loss (what DDP wraps).

The objectives come from their registry (`pmmrec.objectives`): each active one is built for the model and reads
what it needs of the step (`TrainingStep`); this module only computes what they share.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pmmrec.data import SequenceBatch
from pmmrec.model import ItemEncoding, PMMRec
from pmmrec.objectives import Objective, TrainingStep, registered_objectives
from pmmrec.prefix_cache import FrozenPrefixCache
from pmmrec.slots import ITEM_SIDE_SLOTS
from pmmrec.training.config import TrainConfig
from pmmrec.training.stale_items import StaleTextLayers


class TrainingModule(nn.Module):
    """The model plus the objective heads; forward(batch) returns every active loss (what DDP wraps).

    `prefix_cache`: frozen-prefix outputs used instead of running the encoders' frozen bottoms; `gather_negatives`:
    other processes' batch items join the next-item softmax. An active objective is an attribute under its options
    key (`module.nicl`), an inactive one None there.
    """

    def __init__(
        self,
        model: PMMRec,
        config: TrainConfig,
        log_popularity: torch.Tensor,
        *,
        prefix_cache: FrozenPrefixCache | None = None,
        gather_negatives: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        objectives = config.objectives
        weights = objectives.weights
        # Objectives skipped because the model lacks what they need: (name, notice, whether its weight was given).
        self.skipped: list[tuple[str, str, bool]] = []
        self.options: dict[str, Any] = {}  # each objective's options as this model trains with them
        self.active: dict[str, Objective] = {}
        for name, objective in registered_objectives().items():
            options = objective.resolve_options(getattr(objectives, objective.options_key), model)
            self.options[objective.options_key] = options
            if getattr(weights, name) > 0 and not objective.needs_modalities <= model.modalities:
                weights = weights.model_copy(update={name: 0.0})  # skipped (the Trainer prints the notice)
                self.skipped.append((name, objective.skip_notice, name in objectives.weights.model_fields_set))
            built = objective.build(model, options) if getattr(weights, name) > 0 else None
            setattr(self, objective.options_key, built)  # registered as a submodule: its state dict keys
            if built is not None:
                self.active[name] = built
        self.weights = weights
        # Full softmax: the collator lists every catalogue item as a candidate of every batch.
        self.full_softmax = any(
            objective.lists_every_item(self.options[objective.options_key])
            for objective in registered_objectives().values()
        )
        # The per-modality item states of every step are read (no per-epoch item table can stand in for them).
        self.reads_item_states = any(type(objective).reads_item_states for objective in self.active.values())
        self.corruption_rate = objectives.nid.corruption_rate  # NID's option, which RCL's corruption shares
        self.register_buffer("log_popularity", log_popularity, persistent=False)
        self.gather_negatives = gather_negatives
        self.prefix_cache = prefix_cache
        # Catalogue embedding table [N+1, d] used instead of encoding, when the whole item tower is frozen.
        self.item_table: torch.Tensor | None = None
        # Trained text layers read from a table between their updates (`tower_update_every`; set by the Trainer).
        self.stale: StaleTextLayers | None = None

    def active_losses(self) -> list[str]:
        """Names of the objectives this module trains, in registration order."""
        return list(self.active)

    def forward(self, batch: SequenceBatch, corruption_seed: int) -> dict[str, torch.Tensor]:
        encoded = self._encode_items(batch)
        items = encoded.embeddings
        slot_embeddings = items[batch.slot_index] * batch.seq_mask.unsqueeze(-1).to(items.dtype)
        states = self.model.encode_users(slot_embeddings[:, :-1], batch.seq_mask[:, :-1])
        candidates, candidate_ids = items, batch.unique_items
        if self.gather_negatives and not self.full_softmax:
            candidates, candidate_ids = gather_candidates(items, batch.unique_items)
        step = TrainingStep(
            batch=batch,
            items=encoded,
            states=states,
            candidates=candidates,
            candidate_ids=candidate_ids,
            log_popularity=self.log_popularity,
            encode_users=self.model.encode_users,
            corruption_rate=self.corruption_rate,
            corruption_seed=corruption_seed,
        )
        return {name: objective.step_loss(step) for name, objective in self.active.items()}

    def _encode_items(self, batch: SequenceBatch) -> ItemEncoding:
        """The batch's distinct items: rows of this epoch's table when the item tower is frozen, else encoded
        (from cached frozen prefixes where there are some)."""
        if self.item_table is not None:
            return ItemEncoding(embeddings=self.item_table[batch.unique_items])
        if self.stale is not None:
            return ItemEncoding(embeddings=self.stale.embed(batch.unique_items))
        prefixes = self.prefix_cache.lookup(batch) if self.prefix_cache is not None else {}
        return self.model.embed_items(inputs=batch.inputs, prefixes=prefixes, item_indices=batch.unique_items)


def item_tower_frozen(model: PMMRec) -> bool:
    """True when no parameter of the item tower (text, vision, fusion or ID tower) is trained."""
    components = [getattr(model, slot) for slot in ITEM_SIDE_SLOTS if getattr(model, slot) is not None]
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
