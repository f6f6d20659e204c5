"""Using a model: item inputs for a dataset, the catalogue embedding table, full-ranking evaluation, top-k."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pmmrec.data import (
    BatchCollator,
    Dataset,
    EvalBatch,
    EvalSequences,
    LeaveOneOutSplit,
    RaggedArray,
    reader_class,
)
from pmmrec.distributed import DistributedContext, gather_objects
from pmmrec.errors import ConfigError
from pmmrec.eval_store import PartWriter, ResultStore, evaluation_key
from pmmrec.evaluation import CELL_BYTES, default_block_columns, metrics_from_ranks, rank_targets_with_unscored
from pmmrec.model import PMMRec
from pmmrec.modes import eval_mode
from pmmrec.prefix_cache import FrozenPrefixCache, catalogue_order
from pmmrec.progress import bar_disable
from pmmrec.ranking import RankQuery, rank_histories, user_states


def make_collator(model: PMMRec, dataset: Dataset) -> BatchCollator:
    """Inputs of the model's modalities for this dataset's catalogue: one reader per encoder (tokens once, images
    from the LMDB; `pmmrec.data.readers`), each preparing items with that encoder's own preprocessor.

    Changes nothing in the model: an ID model reads this catalogue once `model.bind_catalogue(dataset.item_ids)`
    has mapped its item ids onto the tower's rows.
    """
    readers = {
        modality: reader_class(modality).from_dataset(dataset, encoder) for modality, encoder in model.encoders().items()
    }
    return BatchCollator(dataset.item_ids, inputs=readers)


@torch.inference_mode()
def encode_catalogue(
    model: PMMRec,
    collator: BatchCollator,
    num_items: int,
    device: torch.device,
    batch_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """Item embedding table [N+1, d] (row 0 = padding, zeros), each item encoded once in large batches."""
    table = torch.zeros(num_items + 1, model.dim, device=device)
    order = catalogue_order(collator, num_items)
    starts = range(0, num_items, batch_size)
    with eval_mode(model):
        for start in tqdm(starts, desc="encoding items", disable=bar_disable(progress), leave=False, unit="batch"):
            batch = collator.collate_items(order[start : start + batch_size]).to(device)
            encoded = model.embed_items(inputs=batch.inputs, item_indices=batch.items)
            table[batch.items] = encoded.embeddings.float()
    return table


def unscored_items(model: PMMRec, num_items: int) -> torch.Tensor | None:
    """Catalogue indices the model has no trained representation of: an ID tower's never-trained rows (issue 24;
    they score below every trained item), None for content towers, which encode every item from its content."""
    if model.item_tower is None:
        return None
    untrained = model.item_tower.untrained_indices(num_items)
    return untrained if untrained.numel() else None


@dataclass
class EvaluationResult:
    """Per-user ranks (in split order), the metrics computed from them, and where this process spent its time."""

    ranks: np.ndarray
    metrics: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)


# Most bytes of scores ranking holds at once (users x item block x CELL_BYTES; fewer users per chunk if needed).
DEFAULT_SCORE_BUDGET = 256 * 1024**2


def evaluate_split(
    model: PMMRec,
    split: LeaveOneOutSplit,
    which: str,
    collator: BatchCollator,
    num_items: int,
    device: torch.device,
    context: DistributedContext | None = None,
    *,
    ks: Sequence[int] = (10, 20, 50),
    batch_size: int = 256,
    item_batch_size: int = 256,
    item_table: torch.Tensor | None = None,
    progress: bool = False,
    max_length: int | None = None,
    exclude_seen: bool = True,
    resume_dir: Path | None = None,
    cache_prefixes: bool = False,
    score_budget: int = DEFAULT_SCORE_BUDGET,
    flush_seconds: float = 30.0,
) -> EvaluationResult:
    """Full ranking for the valid or test targets; users are sharded over processes and their ranks gathered.

    max_length: items of history the user encoder reads (default: the model's maximum; a run evaluates with the
    window length it trained with); exclude_seen=False ranks the history items too (RecBole's protocol).
    Streams: users go `batch_size` at a time and scores at most `score_budget` bytes at a time. With
    `resume_dir`, finished users' ranks (and the catalogue table) are written there as they are computed, and a
    later call with the same folder ranks only the users still missing. `cache_prefixes` encodes the catalogue
    through the frozen-prefix cache's fp16 files (reused by later evaluations with the same frozen bottom).
    `progress` shows users ranked, users/s and the ETA (main process).
    """
    if which not in ("valid", "test"):
        raise ConfigError(f"--split must be valid or test, got {which!r}")
    histories = split.valid_history if which == "valid" else split.test_history
    targets = split.valid_target if which == "valid" else split.test_target
    rank_id, world = (context.rank, context.world_size) if context is not None else (0, 1)
    show = progress and (context is None or context.is_main)
    started = time.perf_counter()
    window = max_length or model.max_length
    store = None
    if resume_dir is not None:
        store = _result_store(Path(resume_dir), model, collator, (histories, targets), which, exclude_seen, window)
    if item_table is None:
        item_table = _catalogue_table(
            model, collator, num_items, device, item_batch_size, store, cache_prefixes=cache_prefixes, show=show,
            writes=rank_id == 0,
        )  # fmt: skip
    item_table = item_table.to(device)
    encoded = time.perf_counter()
    done, shard, pending = _pending_users(store, len(targets), rank_id, world)
    rows = histories.take(pending) if isinstance(histories, RaggedArray) else [histories[i] for i in pending]
    samples = EvalSequences(rows, targets[pending], window)
    writer = PartWriter(store, flush_seconds)
    with tqdm(
        total=len(shard), initial=len(shard) - len(pending), desc=f"ranking {which}", unit="user",
        disable=bar_disable(show), leave=False, smoothing=0.1,
    ) as bar:  # fmt: skip

        def ranked_batch(start: int, ranks: np.ndarray) -> None:
            writer.add(pending[start : start + len(ranks)], ranks)
            bar.update(len(ranks))

        local_ranks = _rank_samples(
            model, collator, samples, item_table, num_items, device, batch_size=batch_size,
            score_budget=score_budget, exclude_seen=exclude_seen, on_ranked=ranked_batch,
        )  # fmt: skip
    writer.flush()
    ranks_all = _all_ranks(len(targets), done, (pending, local_ranks), context)
    ranked = time.perf_counter()
    timings = {
        "encode_s": encoded - started,
        "rank_s": ranked - encoded,
        "users_ranked": float(len(pending)),
        "users_resumed": float(len(shard) - len(pending)),
        "users_per_s": len(pending) / max(ranked - encoded, 1e-9),
    }
    return EvaluationResult(
        ranks=ranks_all, metrics=metrics_from_ranks(torch.from_numpy(ranks_all), ks), timings=timings
    )


def _pending_users(
    store: ResultStore | None, count: int, rank_id: int, world: int
) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]:
    """((users, ranks) already in `store`, this process's shard of the `count` users, the shard's users still to
    rank)."""
    done = store.finished() if store is not None else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    finished = np.zeros(count, dtype=bool)
    finished[done[0]] = True
    shard = np.arange(rank_id, count, world)
    return done, shard, shard[~finished[shard]]


def _all_ranks(
    count: int,
    done: tuple[np.ndarray, np.ndarray],
    mine: tuple[np.ndarray, np.ndarray],
    context: DistributedContext | None,
) -> np.ndarray:
    """Every user's rank [count]: those resumed from the store, then every process's (users, ranks) gathered."""
    ranks = np.zeros(count, dtype=np.int64)
    ranks[done[0]] = done[1]
    for indices, values in gather_objects(context, mine) if context is not None else [mine]:
        ranks[indices] = values
    return ranks


def _result_store(
    folder: Path,
    model: PMMRec,
    collator: BatchCollator,
    users: tuple[Sequence[np.ndarray], np.ndarray],
    which: str,
    exclude_seen: bool,
    window: int,
) -> ResultStore:
    """Where a resumable evaluation keeps finished users' ranks, keyed by everything that decides them (`users`:
    the split's histories and targets)."""
    histories, targets = users
    # the key's old wording is kept, so that resume folders written before still match
    protocol = f"{which}:{'exclude' if exclude_seen else 'include'}-history"
    return ResultStore(
        folder, evaluation_key(model, collator.input_tables(), histories, targets, protocol, window), len(targets)
    )


def _rank_samples(
    model: PMMRec,
    collator: BatchCollator,
    samples: EvalSequences,
    item_table: torch.Tensor,
    num_items: int,
    device: torch.device,
    *,
    batch_size: int,
    score_budget: int,
    exclude_seen: bool,
    on_ranked: Callable[[int, np.ndarray], None],
) -> np.ndarray:
    """Each sample's target rank against the table, `batch_size` users at a time and at most `score_budget` bytes
    of scores at once; `on_ranked(start, ranks)` hears of each batch as it is ranked (a resume store, a bar)."""
    block = default_block_columns(device, batch_size, num_items + 1)
    chunk = max(1, min(batch_size, score_budget // (CELL_BYTES * block)))
    unscored = unscored_items(model, num_items)
    ranks_out = np.zeros(len(samples), dtype=np.int64)  # filled in place: no small object kept per batch
    with eval_mode(model):
        for start in range(0, len(samples), batch_size):
            batch = _eval_batch(collator, samples, start, batch_size).to(device)
            states = user_states(model.user, item_table, batch.item_seq, batch.seq_mask)
            indptr, history = batch.history_indptr, batch.history_items
            if not exclude_seen:
                indptr, history = torch.zeros_like(indptr), history[:0]
            ranks = rank_targets_with_unscored(
                states, item_table, batch.targets, indptr, history, unscored, chunk, block
            )
            stop = start + ranks.shape[0]
            ranks_out[start:stop] = ranks.cpu().numpy()
            on_ranked(start, ranks_out[start:stop])
    return ranks_out


def _catalogue_table(
    model: PMMRec,
    collator: BatchCollator,
    num_items: int,
    device: torch.device,
    item_batch_size: int,
    store: ResultStore | None,
    *,
    cache_prefixes: bool,
    show: bool,
    writes: bool,
) -> torch.Tensor:
    """The catalogue embedding table an evaluation ranks against: a resumed evaluation's saved one, else encoded
    (through the frozen-prefix cache's files with `cache_prefixes`) and saved for a resume when this process
    `writes`."""
    table = store.load_table() if store is not None else None
    if table is not None:
        return table
    if cache_prefixes and (cache := FrozenPrefixCache.for_model(model, collator, device, memory_budget=0)):
        table = cache.item_table(model, batch_size=item_batch_size)
    else:
        table = encode_catalogue(model, collator, num_items, device, item_batch_size, show)
    if store is not None and writes:
        store.save_table(table)
    return table


def _eval_batch(collator: BatchCollator, samples: EvalSequences, start: int, batch_size: int) -> EvalBatch:
    """An evaluation batch without item features (the catalogue table already holds every embedding)."""
    chunk = [samples[i] for i in range(start, min(start + batch_size, len(samples)))]
    batch = collator.sequences_only(chunk)
    assert isinstance(batch, EvalBatch)
    return batch


@dataclass
class Recommendation:
    """One recommended item."""

    rank: int
    item_id: str
    score: float
    text: str


def top_k(
    model: PMMRec,
    item_table: torch.Tensor,
    item_ids: Sequence[str],
    item_texts: Sequence[str],
    history: Sequence[int],
    k: int = 10,
    exclude: Sequence[int] = (),
) -> list[Recommendation]:
    """Top-k catalogue items after a history of catalogue indices (1-based, most recent last), named by id and text.

    Ranked by `pmmrec.ranking.rank_histories`; catalogue index i is `item_ids[i - 1]`. An ID tower's never-trained
    rows are never recommended (they score below every trained item).
    """
    if not history:
        raise ConfigError("the history is empty: give at least one known item")
    if k < 1:
        raise ConfigError(f"--k must be positive, got {k}")
    unscored = unscored_items(model, len(item_ids))
    never = set(unscored.tolist()) if unscored is not None else set()
    query = RankQuery(list(history), k, exclude=sorted({int(i) for i in exclude} | never))
    (ranking,) = rank_histories(model.user, item_table.float(), [query], max_length=model.max_length)
    return [
        Recommendation(rank=r + 1, item_id=item_ids[i - 1], score=v, text=item_texts[i - 1])
        for r, (v, i) in enumerate(zip(ranking.scores.tolist(), ranking.indices.tolist(), strict=True))
    ]
