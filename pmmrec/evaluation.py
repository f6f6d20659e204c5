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


# Bytes of scoring work memory per (user, item) cell: the float32 score (and two boolean masks, rarely).
CELL_BYTES = 6
# On CPU, item columns are scored in blocks of about this many float32 cells per chunk of users, so a block's
# scores stay in cache while they are compared and counted (the whole row at once on CUDA).
_CPU_BLOCK_CELLS = 1 << 19


def default_block_columns(device: torch.device, chunk_users: int, num_rows: int) -> int:
    """How many catalogue columns `rank_targets` scores at a time for chunks of `chunk_users` users."""
    if device.type == "cuda":
        return num_rows
    return max(1, min(num_rows, max(1024, _CPU_BLOCK_CELLS // max(chunk_users, 1))))


@torch.inference_mode()
def rank_targets(
    user_states: Tensor,
    item_table: Tensor,
    targets: Tensor,
    history_indptr: Tensor,
    history_items: Tensor,
    chunk_size: int = 1024,
    block_columns: int | None = None,
) -> Tensor:
    """1-based rank of each user's target among all items 1..N, history and padding excluded.

    user_states [M,d] and item_table [N+1,d] (row 0 = padding, never ranked) are scored by dot product,
    in float32 so low-precision states do not create artificial ties. Users' histories are a CSR:
    the history of user m is history_items[history_indptr[m]:history_indptr[m+1]]. Those items and the
    padding column never count; the target itself is ranked even when it also occurs in the history. Only items
    scoring strictly higher than the target count (ties in the user's favour; see the module docstring).

    Users go chunk_size at a time and items `block_columns` at a time (default: cache-sized blocks on CPU, the
    whole catalogue on CUDA), so memory is ~6 bytes x chunk x block whatever the catalogue size. Each block's
    scores are compared with the target's score as the same matrix multiply computes it: an estimate with a
    rigorous rounding bound decides every item outside the bound at once, and the few inside it are kept and
    compared with the exact value once the target's block has been scored. Returns Long [M].
    """
    _check_rank_inputs(user_states, item_table, targets, history_indptr, history_items, chunk_size)
    device = user_states.device
    items = item_table.to(device=device, dtype=torch.float32)
    targets = targets.to(device)
    indptr = history_indptr.to(device)
    history = history_items.to(device)
    num_users, num_rows = user_states.shape[0], items.shape[0]
    chunk = min(chunk_size, max(num_users, 1))
    block = block_columns or default_block_columns(device, chunk, num_rows)
    ranks = torch.empty(num_users, dtype=torch.long, device=device)
    buffers = _Buffers(chunk, min(block, num_rows), device)
    for start in range(0, num_users, chunk_size):
        stop = min(start + chunk_size, num_users)
        states = user_states[start:stop].to(torch.float32)
        ranks[start:stop] = 1 + _count_better(
            states, items, targets[start:stop], indptr[start : stop + 1], history, block, buffers
        )
    return ranks


@torch.inference_mode()
def rank_targets_with_unscored(
    user_states: Tensor,
    item_table: Tensor,
    targets: Tensor,
    history_indptr: Tensor,
    history_items: Tensor,
    unscored: Tensor | None,
    chunk_size: int = 1024,
    block_columns: int | None = None,
) -> Tensor:
    """`rank_targets`, where the `unscored` items (an ID tower's never-trained rows) score below every other item.

    They never outrank another item, and an unscored target's rank is 1 + the number of scored items outside the
    user's history (ties among unscored items count in the user's favour, as every tie does). Without unscored
    items this is `rank_targets` itself.
    """
    if unscored is None or unscored.numel() == 0:
        return rank_targets(user_states, item_table, targets, history_indptr, history_items, chunk_size, block_columns)
    device = history_items.device
    unscored = unscored.to(device=device, dtype=torch.long)
    users = targets.shape[0]
    lengths = history_indptr[1:] - history_indptr[:-1]
    owners = torch.cat([torch.repeat_interleave(torch.arange(users, device=device), lengths),
                        torch.arange(users, device=device).repeat_interleave(unscored.numel())])  # fmt: skip
    items = torch.cat([history_items[int(history_indptr[0]) : int(history_indptr[-1])], unscored.repeat(users)])
    order = torch.argsort(owners, stable=True)
    indptr = torch.zeros(users + 1, dtype=torch.long, device=device)
    indptr[1:] = torch.cumsum(lengths + unscored.numel(), 0)
    ranks = rank_targets(user_states, item_table, targets, indptr, items[order], chunk_size, block_columns)
    num_rows = item_table.shape[0]
    is_unscored = torch.zeros(num_rows, dtype=torch.bool, device=device)
    is_unscored[unscored] = True
    history = history_items[int(history_indptr[0]) : int(history_indptr[-1])]
    holders = torch.repeat_interleave(torch.arange(users, device=device), lengths)
    scored = (history > 0) & ~is_unscored[history]
    pairs = torch.unique(holders[scored] * num_rows + history[scored])  # distinct (user, scored item) pairs
    seen_scored = torch.bincount(pairs // num_rows, minlength=users)
    candidates = (num_rows - 1 - int(is_unscored[1:].sum())) - seen_scored
    last = (1 + candidates).to(ranks.device)
    return torch.where(is_unscored[targets.to(device)].to(ranks.device), last, ranks)


class _Buffers:
    """Score and mask buffers reused by every chunk and block (no allocation per block; masks only if needed)."""

    def __init__(self, rows: int, columns: int, device: torch.device) -> None:
        self.rows, self.columns, self.device = rows, columns, device
        self.scores = torch.empty(rows, columns, dtype=torch.float32, device=device)
        self._masks: tuple[Tensor, Tensor] | None = None

    def _mask_pair(self) -> tuple[Tensor, Tensor]:
        if self._masks is None:
            shape = (self.rows, self.columns)
            self._masks = (
                torch.empty(shape, dtype=torch.bool, device=self.device),
                torch.empty(shape, dtype=torch.bool, device=self.device),
            )
        return self._masks

    @property
    def above_high(self) -> Tensor:
        return self._mask_pair()[0]

    @property
    def above_low(self) -> Tensor:
        return self._mask_pair()[1]


def _count_better(
    states: Tensor, items: Tensor, targets: Tensor, indptr: Tensor, history: Tensor, block: int, buffers: _Buffers
) -> Tensor:
    """Per user of the chunk, how many non-excluded items score strictly higher than the target.

    Fast path: the target scores from one small matrix multiply, every block compared with them. The target's
    score inside its own block is checked against that value; if a kernel rounded them differently (it can for
    small chunks), the chunk is counted again against a rounding band, which is exact whatever the kernels do.
    """
    exact = torch.mm(states, items[targets].t()).diagonal().contiguous()
    counts, seen = _count_blocks(
        states, items, targets, indptr, history, block=block, buffers=buffers, threshold=exact, band=None
    )
    if torch.equal(seen, exact):
        return counts
    target_rows = items[targets]
    # |exact - estimate| <= 2 * gamma_d * sum_k |s_k e_k| for any summation order (both are float32 dot products).
    slack = 2.2 * (states.shape[1] + 2) * torch.finfo(torch.float32).eps * (states.abs() * target_rows.abs()).sum(1)
    band = slack + torch.finfo(torch.float32).tiny
    counts, _ = _count_blocks(
        states, items, targets, indptr, history, block=block, buffers=buffers, threshold=exact, band=band
    )
    return counts


def _count_blocks(
    states: Tensor,
    items: Tensor,
    targets: Tensor,
    indptr: Tensor,
    history: Tensor,
    *,
    block: int,
    buffers: _Buffers,
    threshold: Tensor,
    band: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Counts of items above `threshold` block by block, and each target's score as its block computed it.

    With `band`, items within +-band of the threshold are set aside and compared with the targets' own block
    scores at the end (exact counts whatever the rounding of the threshold).
    """
    users = states.shape[0]
    device = states.device
    local = torch.arange(users, device=device)
    # Cells that never count: the history, the padding column and the target's own column; sorted by column.
    lengths = indptr[1:] - indptr[:-1]
    rows = torch.cat([torch.repeat_interleave(local, lengths), local, local])
    cols = torch.cat([history[int(indptr[0]) : int(indptr[-1])], torch.zeros_like(targets), targets])
    order = torch.argsort(cols)
    rows, cols = rows[order], cols[order]
    target_order = torch.argsort(targets)
    num_rows = items.shape[0]
    edges = torch.arange(0, num_rows + block, block, device=device).clamp_max(num_rows)
    excluded_at = torch.searchsorted(cols, edges).tolist()
    targets_at = torch.searchsorted(targets[target_order], edges).tolist()
    high = (threshold if band is None else threshold + band).unsqueeze(1)
    low = None if band is None else (threshold - band).unsqueeze(1)
    counts = torch.zeros(users, dtype=torch.long, device=device)
    seen = torch.empty(users, dtype=torch.float32, device=device)
    band_rows: list[Tensor] = []
    band_values: list[Tensor] = []
    for index, first in enumerate(range(0, num_rows, block)):
        width = min(block, num_rows - first)
        scores = torch.mm(states, items[first : first + width].t(), out=buffers.scores[:users, :width])
        hit = target_order[targets_at[index] : targets_at[index + 1]]
        if hit.numel():
            seen[hit] = scores[hit, targets[hit] - first]
        begin, end = excluded_at[index], excluded_at[index + 1]
        if end > begin:
            scores[rows[begin:end], cols[begin:end] - first] = float("-inf")
        if low is None:  # in place: 0/1 floats summed (exact below 2^24 columns; a block is far narrower)
            counts += scores.gt_(high).sum(dim=1).long()
            continue
        above_high = torch.gt(scores, high, out=buffers.above_high[:users, :width])
        counts += above_high.sum(dim=1)
        inside = torch.gt(scores, low, out=buffers.above_low[:users, :width]).logical_xor_(above_high)
        if bool(inside.any()):
            band_row, band_column = inside.nonzero(as_tuple=True)
            band_rows.append(band_row)
            band_values.append(scores[band_row, band_column])
    if band_rows:
        row = torch.cat(band_rows)
        counts += torch.bincount(row, weights=(torch.cat(band_values) > seen[row]).float(), minlength=users).long()
    return counts, seen


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
