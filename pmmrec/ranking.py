"""Exact top-k over an item table, batched: the one ranking function that `pmmrec recommend` and the server share.

A table has one row per catalogue item plus the padding row 0. Row 0 and each user's excluded items are masked
with -inf before `torch.topk`, so they are never returned, even when every real score is negative (the padding
row's zero score would otherwise beat them). So are scores that are not finite (NaN sorts above every number in
`torch.topk`): an item whose score is NaN or infinite is never recommended.
"""

from __future__ import annotations

import torch

NO_ITEM = -1  # index of a result slot left empty (a user with fewer than k eligible items)


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
    `exclude_items[exclude_indptr[b]:exclude_indptr[b+1]]`. k' = min(k, N). Where a user has fewer than k'
    eligible items, the trailing slots hold score -inf and index NO_ITEM (-1).
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
