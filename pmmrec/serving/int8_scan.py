"""Exact top k through an int8 first pass: the catalogue scanned in int8, then every item that could be in the top k
re-scored in float32, so the answer is the float32 ranking's.

Why: on a CPU the float32 product of user states with a 100,000 x 384 table reads 154 MB per batch and is half of
a ranking's time. An int8 copy is 38 MB, and with fbgemm's uint8 x int8 kernel (torch's quantized linear) the scan
and the re-scoring took 1.3 to 2.9 times less CPU than the float32 product for batches of 1 to 16 states on the
2-core AVX2 machine (docs/benchmarks.md, *Serving under load*).

How it stays exact. Item i (row x_i) is stored as x^_i = s_i q_i, q_i in [-127, 127]^d, s_i = max|x_i| / 127. A user
state u is scaled to v = u / max|u| (one quantisation grid then fits every state of a batch) and rounded to
v^ = round(63 v) / 63, which the kernel reads as uint8 63 v^ + 63, in 0..126: below 128, so fbgemm's 8-bit x 7-bit
multiply-adds never saturate and its int32 sums are exact. The kernel's score a_i (v^ . x^_i, scaled in float32)
differs from the float32 score of v . x_i by at most

    e = ||v - v^|| max||x^_i|| + ||v|| max||x_i - x^_i|| + 1e-6 ||v^|| max||x^_i|| + g_d ||v|| max||x_i||

(Cauchy-Schwarz on v.x - v^.x^ = (v - v^).x^ + v.(x - x^); the third term covers the kernel's float32 scaling, the
last the float32 rounding of the exact score itself, g_d = d 2^-24 / (1 - d 2^-24)). Let a_k be the k-th largest a
among the eligible items. Those k items score at least a_k - e in float32, so the k-th best float32 score is at
least a_k - e, and an item with a_i < a_k - 2e scores below it: it is not in the top k. Every item with
a_i >= a_k - 2e (a few hundred of 100,000 for k = 10) is re-scored in float32 from the table, items appended since
the int8 copy was made are scored in float32 too, and the best k of those are returned.

So the items and scores returned are those of `pmmrec.ranking.top_k`, with one precise exception: a score is a
float32 dot product summed in another order than `top_k`'s matrix product, so it may differ from `top_k`'s by
up to 2 g_d ||u|| ||x_i|| (about 5e-5 of ||u|| ||x_i|| at d = 384; in practice the last bit or two), and two items
whose float32 scores are that close (a tie to float32 precision) may come in the other order. A state for which
the bound proves nothing useful (zero, not finite, or more than `max_candidates` candidates) is ranked by the
plain float32 product.

The kernel is torch's `quantized::linear_with_input_q_dq_qweight_dq_output_fp32` (fbgemm or oneDNN, on CPU).
torch 2.13 deprecates the quantized tensor type it takes (pytorch/pytorch#184982); `available()` checks once per
process that the kernel exists and computes what the bound assumes, and the server falls back to float32 where it
does not.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pmmrec.ranking import NO_ITEM, csr, top_k

LEVELS = 63  # a user state is rounded to (-63..63) / 63 of its largest entry: uint8 0..126 with zero point 63
STEP = 1.0 / LEVELS
WEIGHT_MAX = 127  # item rows as int8 in [-127, 127]
KERNEL_ERROR = 1e-6  # relative error allowed for the kernel's float32 scaling of its exact int32 sums
PACK_CHUNK = 16_384  # rows quantised at a time (bounds the float64 temporaries)
RESCORE_FLOATS = 1 << 22  # candidate rows gathered at a time for re-scoring, in floats (16 MiB)


def _kernel() -> Any:
    return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32


@dataclass(frozen=True)
class _Block:
    """Rows start..stop-1 of a table in int8, packed for the kernel, and the norms the bound needs (float64)."""

    start: int
    stop: int
    packed: Any
    max_quantised: float  # max ||x^_i||
    max_residual: float  # max ||x_i - x^_i||
    max_norm: float  # max ||x_i||

    @classmethod
    def pack(cls, rows: torch.Tensor, start: int) -> _Block:
        """Quantise float32 rows [m, d] (row `start` of the table first) and pack them."""
        quantised = torch.empty(rows.shape, dtype=torch.int8)
        scales = torch.empty(rows.shape[0], dtype=torch.float64)
        max_quantised = max_residual = max_norm = 0.0
        for first in range(0, rows.shape[0], PACK_CHUNK):
            chunk = rows[first : first + PACK_CHUNK].float()
            peak = chunk.abs().amax(dim=1)
            scale = torch.where(peak > 0, peak / WEIGHT_MAX, torch.ones_like(peak))  # float32, as the kernel uses it
            levels = torch.round(chunk / scale[:, None]).clamp_(-WEIGHT_MAX, WEIGHT_MAX)
            quantised[first : first + PACK_CHUNK] = levels.to(torch.int8)
            scales[first : first + PACK_CHUNK] = scale.double()
            exact, approx = chunk.double(), levels.double() * scale.double()[:, None]
            max_quantised = max(max_quantised, float(approx.norm(dim=1).max()))
            max_residual = max(max_residual, float((exact - approx).norm(dim=1).max()))
            max_norm = max(max_norm, float(exact.norm(dim=1).max()))
        zero_points = torch.zeros(rows.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # the quantized tensor type is deprecated (module docstring)
            warnings.simplefilter("ignore")
            weight = torch._make_per_channel_quantized_tensor(quantised, scales, zero_points, 0)
            packed = torch.ops.quantized.linear_prepack(weight, None)
        return cls(start, start + rows.shape[0], packed, max_quantised, max_residual, max_norm)

    def scores(self, levels: torch.Tensor) -> torch.Tensor:
        """The kernel's scores [B, rows] of states given as grid values (levels / 63, float32 [B, d])."""
        return _kernel()(levels, STEP, LEVELS, self.packed)


class Int8Table:
    """Rows 0..covered of a catalogue table in int8 (immutable: `extended` returns a new one), and the exact search
    over a float32 table whose first rows they are (`search`, the `pmmrec.ranking.ApproximateIndex` protocol)."""

    def __init__(self, blocks: tuple[_Block, ...], max_candidates: int = 8192, max_batch: int = 32) -> None:
        self.blocks = blocks
        self.max_candidates = max_candidates  # more for a state: that state is ranked by the float32 product
        self.max_batch = max_batch  # larger batches: the float32 product (it is as fast per state there)

    @classmethod
    def build(cls, table: torch.Tensor, max_candidates: int = 8192, max_batch: int = 32) -> Int8Table:
        """The int8 copy of a float32 table [n+1, d] (row 0 = padding)."""
        if not bool(torch.isfinite(table).all()):
            raise ValueError("the item table has values that are not finite: no int8 copy")
        return cls((_Block.pack(table, 0),), max_candidates, max_batch)

    @property
    def covered(self) -> int:
        """The last catalogue index in int8 (rows 0..covered)."""
        return self.blocks[-1].stop - 1

    def extended(self, table: torch.Tensor, block_rows: int) -> Int8Table:
        """This copy, plus the rows of `table` past `covered` as a new block once there are `block_rows` of them
        (until then they are scored in float32 by `search`)."""
        start = self.covered + 1
        fresh = table[start:]
        if fresh.shape[0] < block_rows or not bool(torch.isfinite(fresh).all()):
            return self
        return Int8Table((*self.blocks, _Block.pack(fresh, start)), self.max_candidates, self.max_batch)

    def search(
        self, states: torch.Tensor, table: torch.Tensor, k: int, exclude: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As `pmmrec.ranking.top_k` over `table` [count+1, d] (whose rows 0..covered this copy holds): (scores
        [B, k'], catalogue indices [B, k']), best first, k' = min(k, count), -inf / NO_ITEM in empty slots."""
        batch, count = states.shape[0], table.shape[0] - 1
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        if count < self.covered:
            raise ValueError(f"the table has {count} items but the int8 copy holds {self.covered}")
        width = min(k, count)
        if width < 1 or batch == 0:
            return torch.empty(batch, 0), torch.empty(batch, 0, dtype=torch.long)
        if batch > self.max_batch:
            return top_k(states, table, k, *csr([list(entry) for entry in exclude]))
        states = states.float()
        approx, bound, usable = self._approximate(states)
        tail_scores = states @ table[self.covered + 1 :].T  # items added since the copy: float32 already
        _mask_exclusions(approx, tail_scores, exclude, self.covered)
        candidates = self._candidates(approx, bound, width)
        counts = candidates.sum(dim=1)
        exact = usable & (counts <= self.max_candidates)
        scores = torch.full((batch, width), float("-inf"))
        indices = torch.full((batch, width), NO_ITEM, dtype=torch.long)
        rows = torch.nonzero(exact).flatten()
        if rows.numel():
            chosen = _rescore(states[rows], table, candidates[rows], counts[rows], tail_scores[rows], width)
            scores[rows], indices[rows] = chosen
        plain = torch.nonzero(~exact).flatten().tolist()
        if plain:  # the bound is no help for these states: the float32 product
            values, found = top_k(states[plain], table, k, *csr([list(exclude[row]) for row in plain]))
            scores[plain], indices[plain] = values, found
        return scores, indices

    def _approximate(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The kernel's scores [B, covered+1] of states scaled to max |v| = 1 (padding row at -inf), the bound e
        per state [B] in those units (float64), and which states are usable (finite, not zero)."""
        peak = states.abs().amax(dim=1)
        usable = torch.isfinite(states).all(dim=1) & (peak > 0)
        scaled = torch.where(usable[:, None], states / torch.where(usable, peak, 1.0)[:, None], 0.0)
        grid = torch.round(scaled * LEVELS) / LEVELS
        parts = [block.scores(grid) for block in self.blocks]
        approx = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        approx[:, 0] = float("-inf")
        exact, rounded = scaled.double(), grid.double()
        max_quantised = max(block.max_quantised for block in self.blocks)
        max_residual = max(block.max_residual for block in self.blocks)
        max_norm = max(block.max_norm for block in self.blocks)
        dim = states.shape[1]
        rounding = dim * 2.0**-24 / (1 - dim * 2.0**-24)
        bound = (
            (exact - rounded).norm(dim=1) * max_quantised
            + exact.norm(dim=1) * max_residual
            + KERNEL_ERROR * rounded.norm(dim=1) * max_quantised
            + rounding * exact.norm(dim=1) * max_norm
        ) * (1 + KERNEL_ERROR)
        return approx, bound, usable

    @staticmethod
    def _candidates(approx: torch.Tensor, bound: torch.Tensor, width: int) -> torch.Tensor:
        """Per state, the items that may be in its top `width`: a >= a_k - 2e ([B, covered+1], bool)."""
        kept = min(width, approx.shape[1] - 1)
        if kept < 1:
            return torch.zeros(approx.shape, dtype=torch.bool)
        kth = torch.topk(approx, kept, dim=1, sorted=False).values.amin(dim=1).double()
        floor64 = kth - 2 * bound
        floor64 = floor64 - KERNEL_ERROR * floor64.abs()  # the float32 conversion below may round up by half an ulp
        lowest = torch.finfo(torch.float32).min  # -inf a_k (fewer than k eligible): every eligible item
        floor = torch.nan_to_num(floor64.float(), nan=lowest, neginf=lowest, posinf=lowest)
        return approx >= floor[:, None]


def _rescore(
    states: torch.Tensor,
    table: torch.Tensor,
    candidates: torch.Tensor,
    counts: torch.Tensor,
    tail_scores: torch.Tensor,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best `width` of each state's candidates ([B, covered+1] bool) and of the items past the int8 copy
    (`tail_scores` [B, T]), by float32 score: (scores [B, width], catalogue indices [B, width])."""
    batch, columns = candidates.shape
    flat = torch.from_numpy(np.flatnonzero(candidates.numpy()))  # row by row, items ascending (numpy: ~30x torch)
    rows, items = flat // columns, flat % columns
    gathered = table.index_select(0, items)  # [M, d] (index_select: 4x faster than table[items] here)
    exact = torch.empty(items.shape[0])
    ends = torch.cumsum(counts, 0).tolist()
    starts = [0, *ends[:-1]]
    for row, (first, last) in enumerate(zip(starts, ends, strict=True)):
        if last > first:
            torch.mv(gathered[first:last], states[row], out=exact[first:last])
    slots = max(1, max(counts.tolist(), default=1))
    pooled = torch.full((batch, slots), float("-inf"))
    pooled_items = torch.full((batch, slots), NO_ITEM, dtype=torch.long)
    position = torch.arange(items.shape[0]) - torch.repeat_interleave(torch.tensor(starts), counts)
    pooled[rows, position], pooled_items[rows, position] = exact, items
    tail = torch.arange(columns, columns + tail_scores.shape[1]).expand(batch, -1)
    pooled, pooled_items = torch.cat([pooled, tail_scores], dim=1), torch.cat([pooled_items, tail], dim=1)
    best, order = torch.topk(pooled, min(width, pooled.shape[1]), dim=1)
    found = pooled_items.gather(1, order).masked_fill_(torch.isneginf(best), NO_ITEM)
    if best.shape[1] < width:
        pad = width - best.shape[1]
        best = torch.cat([best, torch.full((batch, pad), float("-inf"))], dim=1)
        found = torch.cat([found, torch.full((batch, pad), NO_ITEM, dtype=torch.long)], dim=1)
    return best, found


def _mask_exclusions(approx: torch.Tensor, tail: torch.Tensor, exclude: Sequence[Sequence[int]], covered: int) -> None:
    """-inf at each state's excluded items: in the kernel's scores (indices 0..covered) or the tail's (after)."""
    indptr, items = csr([list(entry) for entry in exclude])
    if not items.numel():
        return
    rows = torch.repeat_interleave(torch.arange(len(exclude)), indptr[1:] - indptr[:-1])
    early = items <= covered
    approx[rows[early], items[early]] = float("-inf")
    tail[rows[~early], items[~early] - covered - 1] = float("-inf")


@functools.cache
def available() -> bool:
    """Whether this torch has the int8 kernel and it computes what the bound assumes: exact integer sums (also at
    the largest values, where a saturating kernel would be wrong), scaled within `KERNEL_ERROR`."""
    try:
        _kernel()
    except (AttributeError, RuntimeError):
        return False
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(65, 384, generator=generator)
    rows[1] = 1.0  # every entry at its largest: q = 127 everywhere
    try:
        block = _Block.pack(rows, 0)
        grid = torch.round(torch.rand(8, 384, generator=generator) * 2 * LEVELS - LEVELS) / LEVELS
        grid[0] = 1.0  # uint8 126 everywhere: the largest products
        grid[1] = -1.0
        got = block.scores(grid).double()
    except (RuntimeError, NotImplementedError):
        return False
    scale = rows.abs().amax(dim=1) / WEIGHT_MAX  # float32, as `_Block.pack` computes it
    levels = torch.round(rows / scale[:, None]).clamp(-WEIGHT_MAX, WEIGHT_MAX)
    expected = grid.double() @ (levels.double() * scale.double()[:, None]).T
    allowed = 2 * KERNEL_ERROR * grid.double().norm(dim=1)[:, None] * rows.double().norm(dim=1)[None, :] + 1e-12
    return bool(((got - expected).abs() <= allowed).all())
