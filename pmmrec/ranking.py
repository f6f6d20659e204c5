"""Ranking: histories of catalogue items -> user states -> the top k items, exact or approximate, with exclusions.

The one path from a history to recommendations. `rank_histories` is what `PMMRec.recommend`, `pmmrec recommend`
(`inference.top_k`) and the server's batches call; full-ranking evaluation shares its first half, `user_states`
(it then counts each target's rank instead of taking a top k), and `top_k` is its exact second half.

**Index convention.** Every index here is a *catalogue index*, 1-based: item i is row i of the item table
[N+1, d], whose row 0 is padding (zeros). Left-padded windows point their padding at row 0, and row 0 is never
returned. Callers holding 0-based rows (`PMMRec.recommend`'s candidates) add 1 on the way in and subtract it on
the way out, at their own edge and nowhere else.

A table has one row per catalogue item plus the padding row 0. Row 0 and each user's excluded items are masked
with -inf before `torch.topk`, so they are never returned, even when every real score is negative (the padding
row's zero score would otherwise beat them). So are scores that are not finite (NaN sorts above every number in
`torch.topk`): an item whose score is NaN or infinite is never recommended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

NO_ITEM = -1  # index of a result slot left empty (a user with fewer than k eligible items)


@dataclass(frozen=True)
class RankQuery:
    """One user to rank for: a history of catalogue indices (oldest first), how many items, which never to return."""

    history: Sequence[int]
    k: int
    exclude: Sequence[int] = ()


@dataclass(frozen=True)
class Ranking:
    """The best items of one query, best first: catalogue indices [k'] and their scores [k'] (k' <= k: fewer when
    fewer items are eligible)."""

    indices: torch.Tensor
    scores: torch.Tensor


class ApproximateIndex(Protocol):
    """An approximate search over a table's rows 1..N (`pmmrec.serving.ann.AnnIndex` is one)."""

    def search(
        self, states: torch.Tensor, table: torch.Tensor, k: int, exclude: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As `top_k` with exclusion lists: (scores [B, k'], indices [B, k']), -inf / NO_ITEM in empty slots."""
        ...


def left_pad(windows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of catalogue indices as one left-padded batch: indices [B, S] (0 = padding) and their mask [B, S],
    S the longest window."""
    length = max(len(window) for window in windows)
    indices = torch.zeros(len(windows), length, dtype=torch.long)
    mask = torch.zeros(len(windows), length, dtype=torch.bool)
    for row, window in enumerate(windows):
        if window:
            indices[row, length - len(window) :] = torch.as_tensor(list(window), dtype=torch.long)
            mask[row, length - len(window) :] = True
    return indices, mask


@torch.inference_mode()
def user_states(user: nn.Module, table: torch.Tensor, windows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The user state after each left-padded window [B, S] of catalogue indices: [B, d], float32, on the table's
    device.

    `user` is a user encoder (`pmmrec.components.UserEncoder`: item embeddings [B, S, d] and mask -> states
    [B, S, d]); it runs where its weights are, which may differ from where the table is held (a CPU table cache
    and a GPU model).
    """
    windows, mask = windows.to(table.device), mask.to(table.device)
    # index_select, not table[windows]: several times faster for a row-major table, and far faster (one strided
    # read per element instead of a row) for a transposed column-major one.
    embeddings = table.index_select(0, windows.reshape(-1)).view(*windows.shape, table.shape[1])
    embeddings = embeddings * mask.unsqueeze(-1).to(table.dtype)
    device = next(user.parameters()).device
    embeddings, mask = embeddings.to(device), mask.to(device)
    final = getattr(user, "final_states", None)  # `UserEncoder.final_states`: forward's last column, maybe cheaper
    states = final(embeddings, mask) if final is not None else user(embeddings, mask)[:, -1]
    return states.float().to(table.device)


@torch.inference_mode()
def rank_histories(
    user: nn.Module,
    table: torch.Tensor,
    queries: Sequence[RankQuery],
    *,
    max_length: int,
    index: ApproximateIndex | None = None,
) -> list[Ranking]:
    """The top k items after each history: one user-encoder pass and one scoring pass for all the queries.

    Index convention: histories, exclusions and the returned indices are all catalogue indices, 1..N, where item i
    is row i of `table` [N+1, d] and row 0 is padding (a caller with 0-based rows adds 1 before and subtracts it
    after, at its edge). A transposed view of a [d, N+1] matrix is the fastest table. Of each history, oldest
    first, the last `max_length` items are read; its `exclude` items are never returned. `index` searches
    approximately instead of scoring every item (exclusions stay exact; scores are exact dot products either way).
    """
    if not queries:
        return []
    rows = table.shape[0]
    windows = [list(query.history)[-max_length:] for query in queries]
    for window in windows:
        if not window:
            raise ValueError("a history is empty: ranking needs at least one item")
        if min(window) < 1 or max(window) >= rows:
            raise ValueError(f"history items must be catalogue indices 1..{rows - 1} (row 0 is padding)")
    states = user_states(user, table, *left_pad(windows))
    k = max(query.k for query in queries)
    exclusions = [list(query.exclude) for query in queries]
    if index is not None:
        scores, indices = index.search(states, table, k, exclusions)
    else:
        scores, indices = top_k(states, table, k, *csr(exclusions))
    rankings = []
    for row, query in enumerate(queries):
        chosen, values = indices[row, : query.k], scores[row, : query.k]
        keep = chosen != NO_ITEM
        rankings.append(Ranking(indices=chosen[keep], scores=values[keep]))
    return rankings


@torch.inference_mode()
def top_k(
    states: torch.Tensor,
    table: torch.Tensor,
    k: int,
    exclude_indptr: torch.Tensor | None = None,
    exclude_items: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best items for each user state: (scores [B, k'], catalogue indices [B, k']), best first.

    `states` [B, d]; `table` [N+1, d] (row 0 = padding; a transposed view of a [d, N+1] matrix is fastest);
    `exclude_indptr` [B+1] and `exclude_items` (CSR layout) list the catalogue indices user b must not get:
    `exclude_items[exclude_indptr[b]:exclude_indptr[b+1]]`. k' = min(k, N). Row 0 and the excluded items are
    masked with -inf before `torch.topk`, so they are never returned, even when every real score is negative (the
    padding row's zero score would otherwise beat them). Where a user has fewer than k' eligible items, the
    trailing slots hold score -inf and index NO_ITEM (-1).
    """
    if states.ndim != 2 or table.ndim != 2 or states.shape[1] != table.shape[1]:
        raise ValueError(f"states {tuple(states.shape)} and table {tuple(table.shape)} must be [B, d] and [N+1, d]")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    if (exclude_indptr is None) != (exclude_items is None):
        raise ValueError("give both exclude_indptr and exclude_items, or neither")
    batch = states.shape[0]
    scores = states.to(table.dtype) @ table.T  # [B, N+1]
    scores.masked_fill_(~torch.isfinite(scores), float("-inf"))  # a NaN or infinite score is never a recommendation
    scores[:, 0] = float("-inf")
    if exclude_indptr is not None and exclude_items is not None and exclude_items.numel():
        if exclude_indptr.shape != (batch + 1,):
            raise ValueError(f"exclude_indptr must have {batch + 1} entries, got {tuple(exclude_indptr.shape)}")
        counts = (exclude_indptr[1:] - exclude_indptr[:-1]).to(scores.device)
        rows = torch.repeat_interleave(torch.arange(batch, device=scores.device), counts)
        scores[rows, exclude_items.to(device=scores.device, dtype=torch.long)] = float("-inf")
    count = min(k, table.shape[0] - 1)
    if count < 1:
        empty = torch.empty(batch, 0)
        return empty.to(scores.dtype), empty.to(torch.long)
    values, indices = torch.topk(scores, count, dim=1)
    indices = indices.masked_fill(torch.isneginf(values), NO_ITEM)
    return values, indices


def csr(lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(indptr [B+1], items) of per-user index lists, the layout `top_k` takes for exclusions."""
    lengths = torch.tensor([0] + [len(entry) for entry in lists], dtype=torch.long)
    items = torch.tensor([index for entry in lists for index in entry], dtype=torch.long)
    return torch.cumsum(lengths, 0), items
