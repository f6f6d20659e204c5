"""What a training run is built from: the data it trains on and the training module with its batch collator."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pmmrec.data import (
    BatchCollator,
    Dataset,
    LeaveOneOutSplit,
    RaggedArray,
    TrainSequences,
    known_items,
    leave_one_out,
    user_share_rows,
)
from pmmrec.errors import ConfigError
from pmmrec.inference import make_collator
from pmmrec.model import PMMRec
from pmmrec.objectives import log_popularity_from_counts
from pmmrec.prefix_cache import FrozenPrefixCache
from pmmrec.training.config import TrainConfig
from pmmrec.training.module import TrainingModule


@dataclass(frozen=True)
class RunData:
    """The split, the users and items training may see, and every epoch's windows."""

    split: LeaveOneOutSplit
    train_rows: np.ndarray  # split rows of the users whose sequences train (all of them unless a learning curve)
    known_items: np.ndarray  # catalogue indices known at training time
    train_set: TrainSequences
    log_popularity: torch.Tensor  # of the items the windows train on (the popularity correction)


def run_data(dataset: Dataset, config: TrainConfig, *, valid_targets: bool = False) -> RunData:
    """Split the users' sequences and choose what training sees (a clear error when no user is left).

    `valid_targets`: train on each user's sequence but its test target (a refit: the validation target, already
    used to choose the epoch, is trained on too), not on the sequence before its validation target.
    """
    split = leave_one_out(dataset.sequences, config.min_length, config.max_history)
    if split.num_users == 0:
        raise ConfigError(f"{dataset.root}: no user has at least {config.min_length} interactions")
    # Training knows only the items of its time (issue 24): those of the training sequences and config.known_items.
    # They are the full softmax's only candidates, and an ID tower trains only their rows (the others are zeroed).
    # A learning curve trains on a share of the users (nested samples); every user is still evaluated.
    train_rows = user_share_rows(split.num_users, config.train_user_share, config.train_user_seed)
    known = known_items(split, dataset.item_ids, config.known_items, rows=train_rows)
    if valid_targets:  # a refit trains on them: they are known to it
        known = np.union1d(known, split.valid_target[train_rows]).astype(np.int64)
    # Every epoch's windows; the popularity correction counts exactly the interactions these windows train on.
    sequences = split.test_history if valid_targets else RaggedArray.from_rows(split.train)
    train_sequences = sequences.take(train_rows)
    train_set = TrainSequences(train_sequences, config.max_length, config.window, config.seed)
    counts = torch.from_numpy(train_set.item_counts(dataset.num_items))
    return RunData(split, train_rows, known, train_set, log_popularity_from_counts(counts))


def freeze_and_check(model: PMMRec, config: TrainConfig) -> None:
    """Freeze the slots of `config.freeze`; a clear error for a slot the model lacks or a too short user encoder."""
    if model.max_length < config.max_length:
        raise ConfigError(f"--max-length {config.max_length} exceeds the user encoder's max_length {model.max_length}")
    for slot in config.freeze:
        component = getattr(model, slot, None)
        if component is None:
            raise ConfigError(f"--freeze {slot}: the model has no {slot} component")
        component.requires_grad_(False)


def training_module(
    model: PMMRec,
    dataset: Dataset,
    config: TrainConfig,
    data: RunData,
    device: torch.device,
    *,
    distributed: bool,
) -> tuple[TrainingModule, BatchCollator]:
    """The training module (frozen-prefix cache, gathered negatives) and the batch collator it trains on, each
    built with its settings: batches list every item under the full softmax, and carry no images when the
    cache holds every image's frozen prefix."""
    inputs = make_collator(model, dataset)
    cache = FrozenPrefixCache.for_model(model, inputs, device) if config.cache_frozen else None
    module = TrainingModule(
        model,
        config,
        data.log_popularity,
        prefix_cache=cache,
        gather_negatives=config.gather_negatives and distributed,
    ).to(device)
    collator = inputs.with_options(
        all_items_as_candidates=module.full_softmax,
        cached=cache.skipped_inputs if cache is not None else (),
        known_items=data.known_items,
    )
    return module, collator
