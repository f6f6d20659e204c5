"""Full-ranking evaluation (method.md, section 6): ranks of held-out targets over the whole catalogue, and metrics.

No sampled negatives: every item 1..N is scored. Tie rule: rank = 1 + the number of candidate items whose
score is STRICTLY greater than the target's, so items tied with the target count in the user's favour
(optimistic ranking). Note that a degenerate model giving every item the same score therefore ranks every
target first; check scores are not constant when a result looks too good.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

METRIC_NAMES: tuple[str, ...] = ("hr", "ndcg", "mrr")


def _check_rank_inputs(
    user_states: Tensor,
    item_table: Tensor,
    targets: Tensor,
    history_indptr: Tensor,
    history_items: Tensor,
    chunk_size: int,
) -> None:
    if user_states.dim() != 2:
        raise ValueError(f"user_states must be [M,d], got shape {tuple(user_states.shape)}")
    num_users, dim = user_states.shape
    if item_table.dim() != 2 or item_table.shape[1] != dim or item_table.shape[0] < 2:
        raise ValueError(f"item_table must be [N+1,{dim}] with N >= 1, got shape {tuple(item_table.shape)}")
    num_rows = item_table.shape[0]
    if targets.shape != (num_users,) or targets.dtype != torch.long:
        raise ValueError(f"targets must be a LongTensor [{num_users}], got {tuple(targets.shape)} {targets.dtype}")
    if history_indptr.shape != (num_users + 1,) or history_indptr.dtype != torch.long:
        raise ValueError(
            f"history_indptr must be a LongTensor [{num_users + 1}], got {tuple(history_indptr.shape)} "
            f"{history_indptr.dtype}"
        )
    if history_items.dim() != 1 or history_items.dtype != torch.long:
        raise ValueError(
            f"history_items must be a 1-D LongTensor, got {tuple(history_items.shape)} {history_items.dtype}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if num_users and bool(((targets < 1) | (targets >= num_rows)).any()):
        raise ValueError(f"targets must lie in 1..{num_rows - 1} (0 is padding)")
    if int(history_indptr[0]) != 0 or int(history_indptr[-1]) != history_items.shape[0]:
        raise ValueError(
            f"history_indptr must start at 0 and end at len(history_items) = {history_items.shape[0]}, "
            f"got {int(history_indptr[0])} and {int(history_indptr[-1])}"
        )
    if bool((history_indptr[1:] < history_indptr[:-1]).any()):
        raise ValueError("history_indptr must be non-decreasing")
    if history_items.numel() and bool(((history_items < 0) | (history_items >= num_rows)).any()):
        raise ValueError(f"history_items must lie in 0..{num_rows - 1}")


@torch.inference_mode()
def rank_targets(
    user_states: Tensor,
    item_table: Tensor,
    targets: Tensor,
    history_indptr: Tensor,
    history_items: Tensor,
    chunk_size: int = 1024,
) -> Tensor:
    """1-based rank of each user's target among all items 1..N, history and padding excluded.

    user_states [M,d] and item_table [N+1,d] (row 0 = padding, never ranked) are scored by dot product,
    in float32 so low-precision states do not create artificial ties. Users' histories are a CSR:
    the history of user m is history_items[history_indptr[m]:history_indptr[m+1]]. Those items and the
    padding column are set to -inf before counting, except the target itself: its score is read before
    masking and only items scoring strictly higher are counted, so a target that also occurs in the
    history is still ranked normally. Ties count in the user's favour (see the module docstring).
    Users are processed chunk_size at a time (memory ~ chunk_size x (N+1) scores); returns Long [M].
    """
    _check_rank_inputs(user_states, item_table, targets, history_indptr, history_items, chunk_size)
    device = user_states.device
    items = item_table.to(device=device, dtype=torch.float32)
    targets = targets.to(device)
    indptr = history_indptr.to(device)
    history = history_items.to(device)
    num_users = user_states.shape[0]
    ranks = torch.empty(num_users, dtype=torch.long, device=device)
    # One score buffer reused by every chunk: peak memory = item table + one chunk of scores (+ its bool mask).
    buffer = torch.empty(min(chunk_size, num_users), items.shape[0], dtype=torch.float32, device=device)
    for start in range(0, num_users, chunk_size):
        stop = min(start + chunk_size, num_users)
        scores = torch.mm(user_states[start:stop].to(torch.float32), items.t(), out=buffer[: stop - start])
        local = torch.arange(stop - start, device=device)
        target_scores = scores[local, targets[start:stop]].unsqueeze(1)
        scores[:, 0] = float("-inf")
        lengths = indptr[start + 1 : stop + 1] - indptr[start:stop]
        rows = torch.repeat_interleave(local, lengths)
        cols = history[int(indptr[start]) : int(indptr[stop])]
        scores[rows, cols] = float("-inf")
        ranks[start:stop] = 1 + _count_in_place(scores, target_scores)
    return ranks


# float32 sums of 0/1 values are exact below 2**24; columns are summed in blocks of 2**23.
_EXACT_BLOCK = 1 << 23


def _count_in_place(scores: Tensor, threshold: Tensor) -> Tensor:
    """Per row, how many entries are strictly greater than the row's threshold; overwrites `scores`.

    Comparing in place and summing the 0/1 floats needs no temporary as large as the chunk
    (a boolean mask summed as integers would allocate one).
    """
    scores.gt_(threshold)
    counts = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    for column in range(0, scores.shape[1], _EXACT_BLOCK):
        counts += scores[:, column : column + _EXACT_BLOCK].sum(dim=1).long()
    return counts


def metrics_from_ranks(ranks: Tensor, ks: Sequence[int] = (10, 20, 50)) -> dict[str, float]:
    """Mean HR@K, NDCG@K and MRR@K over users from 1-based ranks, plus `num_users`.

    hr@K = 1[rank <= K]; ndcg@K = 1[rank <= K] / log2(rank + 1); mrr@K = 1[rank <= K] / rank.
    Keys are "hr@10", "ndcg@10", "mrr@10", ... in the order of `ks`, then "num_users".
    """
    if ranks.dim() != 1 or ranks.numel() == 0:
        raise ValueError(f"ranks must be a non-empty 1-D tensor, got shape {tuple(ranks.shape)}")
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {list(ks)}")
    ranks_f = ranks.detach().to(device="cpu", dtype=torch.float64)
    if bool((ranks_f < 1).any()) or not bool(torch.isfinite(ranks_f).all()):
        raise ValueError("ranks must be finite and >= 1")
    result: dict[str, float] = {}
    for k in ks:
        hit = (ranks_f <= k).to(torch.float64)
        result[f"hr@{k}"] = float(hit.mean())
        result[f"ndcg@{k}"] = float((hit / torch.log2(ranks_f + 1.0)).mean())
        result[f"mrr@{k}"] = float((hit / ranks_f).mean())
    result["num_users"] = int(ranks_f.numel())  # a count: an integer in JSON too
    return result


def format_metrics_table(metrics: Mapping[str, float], ks: Sequence[int] = (10, 20, 50)) -> str:
    """Plain text table: one row per metric (hr, ndcg, mrr), one column per K, then the number of users."""
    headers = ["metric", *(f"@{k}" for k in ks)]
    rows = []
    for name in METRIC_NAMES:
        cells = [name]
        for k in ks:
            value = metrics.get(f"{name}@{k}")
            cells.append("-" if value is None or not math.isfinite(value) else f"{value:.4f}")
        rows.append(cells)
    widths = [max(len(line[col]) for line in [headers, *rows]) for col in range(len(headers))]

    def render(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    lines = [render(headers), *(render(cells) for cells in rows)]
    if "num_users" in metrics:
        lines.append(f"users: {int(metrics['num_users'])}")
    return "\n".join(lines)
