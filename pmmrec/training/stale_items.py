"""Trained text layers updated every N steps from item gradients gathered on a table (issue 28.1).

A trained text layer costs every step a forward and a backward pass over the tokens of every distinct item of the
batch; on a CPU that is 12 to 28 times the rest of the step. The text-only tower's item is the mean of the projected
token states, and the projection is affine, so the item is also the projection of the mean token state: with
`tower_update_every` N > 1 the steps read each item's mean backbone state from a table and project it (the
projection trains every step, exactly), and each step's gradient with respect to the rows it read is added up per
item. Every N steps the backbone's top runs once, in training mode, over the items that received gradient; the
product of its mean states with those sums is back-propagated, which gives the trained layers the sum of the N steps'
gradients (each taken at the table's states, up to N steps old), and the optimiser steps them with everything else.
The table is then re-encoded. The user encoder, the projection and the objective heads train every step.

With no trained text layer (a frozen backbone: the CPU recipe) the table is never stale: the steps read it and
project it, which is the per-token path's function exactly (`reads_text_table`), at the cost of one projection per
item instead of one per token, and no layer update ever runs.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from pmmrec.components.kinds import masked_mean
from pmmrec.data import BatchCollator
from pmmrec.errors import ConfigError
from pmmrec.model import PMMRec
from pmmrec.modes import eval_mode
from pmmrec.prefix_cache import FrozenPrefixCache, catalogue_order
from pmmrec.slots import SLOT

ItemEncoder = Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]]  # indices -> (their indices, embeddings)
TEXT_ONLY = "fusion/text_only"
TEXT = SLOT["text"].name  # the text modality's inputs in a batch


class StaleTextLayers:
    """The table of mean backbone states the steps read, their gradient sums, and the layers' update every N steps.

    `encode(indices)` embeds items through the model (from cached frozen prefixes where there are some); under
    `deferred_projection` it yields their mean backbone states instead of their embeddings.
    """

    def __init__(
        self,
        every: int,
        model: PMMRec,
        encode: ItemEncoder,
        order: Sequence[int],
        *,
        steps_per_epoch: int,
        chunk_size: int = 256,
        grad_clip: float | None = None,
        word_pieces: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.encode = encode
        self.order = list(order)
        self.chunk_size = chunk_size
        self.grad_clip = grad_clip
        assert model.text is not None
        self.projection: nn.Module = model.text.projection
        self.word_embeddings = model.text.word_embeddings
        # Every catalogue item's word-piece ids and their mask [N + 1, T], for the word embeddings' mean (trained
        # every step, exactly: it reads no backbone state).
        self.word_pieces = word_pieces
        if self.word_embeddings is not None and word_pieces is None:
            raise ValueError("the text encoder has word-piece embeddings: give word_pieces (catalogue_word_pieces)")
        self.layers = [parameter for parameter in model.text.backbone.parameters() if parameter.requires_grad]
        self.frozen = not self.layers  # a frozen backbone: the table is exact and never updated
        self.update_steps = frozenset() if self.frozen else update_steps(steps_per_epoch, every)
        # Steps per update, for the time left (RunClock.periodic; 1.0 and 0 seconds: none, the step alone counts).
        self.steps_per_update = steps_per_epoch / len(self.update_steps) if self.update_steps else 1.0
        started = time.perf_counter()
        self.table = self._encode_table()
        # One update's seconds, estimated as 3 table encodings (a forward and a backward of about two forwards over
        # the items, then the refresh), for the time left until one is measured (`take_update_seconds`).
        self.update_seconds_estimate = 0.0 if self.frozen else 3 * (time.perf_counter() - started)
        self._unreported_s = 0.0
        # Position of each catalogue index in `order` (items of similar length together, so chunks pad little).
        self.position = torch.empty(self.table.shape[0], dtype=torch.long)
        self.position[torch.as_tensor(self.order, dtype=torch.long)] = torch.arange(len(self.order))
        self.sums = torch.zeros_like(self.table)
        self.steps_gathered = 0
        self._read: list[tuple[torch.Tensor, torch.Tensor]] = []

    def embed(self, items: torch.Tensor) -> torch.Tensor:
        """The items' embeddings: the projection (trained now) of their table rows (gradient gathered by `gather`,
        when layers train)."""
        rows = self.table[items].detach()
        if not self.frozen:
            rows.requires_grad_(True)
            self._read.append((items, rows))
        embeddings = self.projection(rows)
        if self.word_embeddings is None or self.word_pieces is None:  # both or neither (checked at construction)
            return embeddings
        ids, mask = (tensor[items] for tensor in self.word_pieces)
        return embeddings + masked_mean(self.word_embeddings(ids), mask).to(embeddings.dtype)

    def gather(self, step_in_epoch: int) -> bool:
        """Add this step's row gradients to the sums; True when the layers are due for an update: `step_in_epoch`
        (1-based) is one of `update_steps`. Never with a frozen backbone."""
        if self.frozen:
            return False
        for items, leaf in self._read:
            if leaf.grad is not None:
                self.sums.index_add_(0, items.to(self.sums.device), leaf.grad.to(self.sums.dtype))
        self._read.clear()
        self.steps_gathered += 1
        return step_in_epoch in self.update_steps

    def backpropagate(self) -> int:
        """Back-propagate the sums through the trained layers (their .grad, clipped on their own); returns the items
        run. The caller steps the optimiser, then calls `refresh`."""
        started = time.perf_counter()
        touched = torch.nonzero(self.sums.abs().sum(dim=1) > 0).flatten().cpu()
        touched = touched[torch.argsort(self.position[touched])].tolist()
        with deferred_projection(self.model):
            for start in range(0, len(touched), self.chunk_size):
                items, states = self.encode(touched[start : start + self.chunk_size])
                (states.float() * self.sums[items.to(self.sums.device)]).sum().backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.layers, self.grad_clip)
        self.sums.zero_()
        self.steps_gathered = 0
        self._unreported_s += time.perf_counter() - started
        return len(touched)

    def refresh(self) -> None:
        """Re-encode the table from the layers as they are now."""
        started = time.perf_counter()
        self.table = self._encode_table()
        self._unreported_s += time.perf_counter() - started

    def take_update_seconds(self) -> float:
        """Seconds spent updating since the last call (0.0 when no update ran): what a step's time included."""
        seconds, self._unreported_s = self._unreported_s, 0.0
        return seconds

    def flush(self, optimizer: torch.optim.Optimizer) -> None:
        """Step the layers on the gradient gathered since their last update (an epoch's end, a stop): only they
        have gradients, so only they move."""
        if self.steps_gathered == 0:
            return
        optimizer.zero_grad(set_to_none=True)
        self.backpropagate()
        optimizer.step()
        self.refresh()
        self.take_update_seconds()  # outside any step: no step's time to take it from

    @torch.no_grad()
    def _encode_table(self) -> torch.Tensor:
        assert self.model.text is not None
        device = self.projection.weight.device
        table = torch.zeros(len(self.order) + 1, self.projection.in_features, device=device)
        with eval_mode(self.model), deferred_projection(self.model):
            for start in range(0, len(self.order), self.chunk_size):
                items, states = self.encode(self.order[start : start + self.chunk_size])
                table[items.to(device)] = states.float()
        return table


@contextmanager
def deferred_projection(model: PMMRec) -> Iterator[None]:
    """The text-only tower yields mean backbone states (the projection is applied later: it commutes with the mean;
    the word-piece embeddings, which read no backbone state, are left out and added by `StaleTextLayers.embed`)."""
    text = model.text
    assert text is not None
    projection, words = text.projection, text.word_embeddings
    text.projection = nn.Identity()
    if words is not None:
        text.word_embeddings = None
    try:
        yield
    finally:
        text.projection = projection
        if words is not None:
            text.word_embeddings = words


def reads_text_table(model: PMMRec, every: int, *, processes: int, scaled: bool, reads_item_states: bool) -> bool:
    """Whether the steps read the text-only tower's items from a table of mean backbone states: its layers updated
    every `every` > 1 steps (`check_stale_layers` refuses what cannot apply), or a frozen backbone, where the table
    is exact. The frozen case needs a trained projection or word pieces (with none trained, the whole item tower is
    encoded once per epoch instead), a linear projection, one process, no loss scaler and no objective reading
    per-modality states (the conditions of `tower_update_every`, whose table this is)."""
    if every > 1:
        return True
    text = model.text
    if not _text_only_linear(model) or text is None or _backbone_trains(model):
        return False
    trained = any(parameter.requires_grad for parameter in text.parameters())
    return trained and processes == 1 and not scaled and not reads_item_states


def _text_only_linear(model: PMMRec) -> bool:
    """Whether the model's items are the text-only mean tower over a linearly projected text encoder."""
    fusion = model.fusion.type_name if model.fusion is not None else None
    return fusion == TEXT_ONLY and model.text is not None and isinstance(model.text.projection, nn.Linear)


def _backbone_trains(model: PMMRec) -> bool:
    """Whether some layer of the text backbone trains."""
    return model.text is not None and any(parameter.requires_grad for parameter in model.text.backbone.parameters())


def check_stale_layers(every: int, model: PMMRec, *, processes: int, scaled: bool) -> None:
    """A clear error where `tower_update_every` > 1 cannot apply."""
    if every == 1:
        return
    option = f"--tower-update-every {every}"
    if not _text_only_linear(model):
        tower = "an ID tower" if model.item_tower is not None else model.fusion.type_name if model.fusion else None
        raise ConfigError(f"{option}: needs the text-only mean tower ({TEXT_ONLY}); this model has {tower} (use 1)")
    if not _backbone_trains(model):
        raise ConfigError(f"{option}: no text layer is trained (--text-trainable-layers 0); use 1")
    if processes > 1:
        raise ConfigError(f"{option}: one process only (under torchrun every step runs the layers; use 1)")
    if scaled:
        raise ConfigError(f"{option}: not with fp16's loss scaler (use bf16 or fp32, or 1)")


def encoder_with_gradients(model: PMMRec, collator: BatchCollator, device: torch.device) -> ItemEncoder:
    """Items embedded from their inputs by the whole tower, in the model's current mode, keeping the graph."""

    def encode(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = collator.collate_items(indices).to(device)
        return batch.items, model.embed_items(inputs=batch.inputs, item_indices=batch.items).embeddings

    return encode


def update_steps(steps_per_epoch: int, every: int) -> frozenset[int]:
    """The steps of an epoch (1-based) after which the layers update: the epoch in round(steps / every) equal parts
    (at least one), the last ending with the epoch, so no update is spent on an epoch's few leftover steps."""
    parts = max(1, round(steps_per_epoch / every))
    return frozenset(round(part * steps_per_epoch / parts) for part in range(1, parts + 1))


def stale_text_layers(
    every: int,
    model: PMMRec,
    collator: BatchCollator,
    cache: FrozenPrefixCache | None,
    num_items: int,
    device: torch.device,
    *,
    steps_per_epoch: int,
    chunk_size: int,
    grad_clip: float | None,
) -> StaleTextLayers:
    """The table and gradient sums of a training run's text layers, updated every `every` steps; items are encoded
    from the frozen-prefix cache where there is one."""
    if cache is not None:
        encode = functools.partial(cache.encode_chunk, model)
    else:
        encode = encoder_with_gradients(model, collator, device)
    order = catalogue_order(collator, num_items)
    return StaleTextLayers(
        every,
        model,
        encode,
        order,
        steps_per_epoch=steps_per_epoch,
        chunk_size=chunk_size,
        grad_clip=grad_clip,
        word_pieces=catalogue_word_pieces(collator, num_items, device) if _has_word_embeddings(model) else None,
    )


def _has_word_embeddings(model: PMMRec) -> bool:
    return model.text is not None and model.text.word_embeddings is not None


def catalogue_word_pieces(
    collator: BatchCollator, num_items: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Word-piece ids (int64) and boolean mask [N + 1, T] of every catalogue index (row 0, the padding item: none),
    T the longest text's token count (columns that are padding for every item dropped: less work per step)."""
    text = collator.item_inputs(torch.arange(num_items + 1), only={TEXT})[TEXT]
    mask = text["attention_mask"].to(torch.bool)
    mask[0] = False
    width = max(int(mask.sum(dim=1).max()), 1)
    return text["input_ids"][:, :width].to(device=device, dtype=torch.long), mask[:, :width].to(device)
