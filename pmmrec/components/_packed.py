"""Token layouts for Transformer layers over item texts: only real tokens go through the matrix multiplies.

Item texts are short and of uneven length (MovieLens titles: 15 tokens on average, up to 34, in 50 columns), so a
padded batch spends most of its work on padding. Three layouts run the same layers on the same tokens:

- ``packed``: the real tokens of all items are packed into one [total, hidden] matrix; every linear layer,
  LayerNorm and activation runs on that matrix, and only the attention core sees the item boundaries
  (variable-length attention: a per-batch padded core by default, or nested jagged tensors, see `AttentionCore`).
  Works for BERT-family layers (BERT, RoBERTa, XLM-R, MiniLM...), whose blocks this module drives directly.
- ``bucketed``: items sorted by length and run through the layer's own forward in a few buckets, each only as
  wide as its longest item. Works for any layer that takes an additive mask; the fallback for other layer types.
- ``padded``: the whole batch as wide as its longest item (the previous behaviour; kept for measurement).

Padding positions of the returned [N, T, hidden] tensors are zeros (packed) or unspecified (others): every consumer
masks them, so results on real tokens are equal across layouts within floating-point rounding (tested).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

TokenLayout = Literal["packed", "bucketed", "padded"]
AttentionCore = Literal["auto", "padded", "nested"]
TOKEN_LAYOUTS: tuple[str, ...] = ("packed", "bucketed", "padded")
ATTENTION_CORES: tuple[str, ...] = ("auto", "padded", "nested")
# Bucketed layout: a new bucket starts when the padded area would grow beyond this share of real tokens.
_BUCKET_SLACK = 1.15


@dataclass(frozen=True)
class Packing:
    """Where the real tokens of a padded [N, T] batch are, as packed rows [total] and per-item lengths.

    `flat_index` selects the real positions of the flattened [N * T] batch in row-major order, so the tokens of an
    item are contiguous and in their original order; `core_index` places packed row r of item i at position
    (i, r - offset_i) of an [N, max_length] grid, the layout the padded attention core uses.
    """

    batch: int
    width: int
    flat_index: torch.Tensor
    lengths: torch.Tensor
    offsets: torch.Tensor
    max_length: int
    core_index: torch.Tensor

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> Packing:
        """The packing of a boolean (or 0/1) mask [N, T]."""
        mask = mask.to(torch.bool)
        batch, width = mask.shape
        flat_index = mask.reshape(-1).nonzero().squeeze(1)
        lengths = mask.sum(dim=1)
        offsets = torch.zeros(batch + 1, dtype=torch.long, device=mask.device)
        offsets[1:] = torch.cumsum(lengths, dim=0)
        max_length = max(int(lengths.max()), 1) if batch else 1
        item_of_row = torch.repeat_interleave(torch.arange(batch, device=mask.device), lengths)
        within = torch.arange(flat_index.numel(), device=mask.device) - offsets[:-1][item_of_row]
        core_index = item_of_row * max_length + within
        return cls(batch, width, flat_index, lengths, offsets, max_length, core_index)

    @property
    def total(self) -> int:
        """Number of real tokens."""
        return int(self.flat_index.numel())

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """[N, T, H] -> [total, H]: the real positions only."""
        return padded.reshape(self.batch * self.width, -1).index_select(0, self.flat_index)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """[total, H] -> [N, T, H] with zeros at padding positions."""
        out = packed.new_zeros(self.batch * self.width, packed.shape[-1])
        return out.index_copy(0, self.flat_index, packed).view(self.batch, self.width, -1)


def is_bert_like(layer: nn.Module) -> bool:
    """Whether `layer` is a post-LN BERT-family encoder block this module can run packed."""
    attention = getattr(layer, "attention", None)
    self_attention = getattr(attention, "self", None)
    return (
        self_attention is not None
        and all(hasattr(self_attention, name) for name in ("query", "key", "value", "num_attention_heads"))
        and hasattr(attention, "output")
        and hasattr(layer, "intermediate")
        and hasattr(layer, "output")
        and not getattr(layer, "is_decoder", False)
        and not getattr(layer, "add_cross_attention", False)
        and not getattr(layer, "chunk_size_feed_forward", 0)
        and not hasattr(self_attention, "distance_embedding")  # relative position attention is not supported
    )


def _padded_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing, dropout: float, scale: float):
    """Attention of packed [total, heads, dh] rows within each item, through one dense [N, max_length] grid.

    Only the attention core is padded (its cost is tiny beside the linear layers at text lengths); every row of
    the grid keeps position 0 visible so no softmax row is empty.
    """
    heads, head_dim = q.shape[1], q.shape[2]
    cells = packing.batch * packing.max_length

    def grid(x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(cells, heads, head_dim).index_copy(0, packing.core_index, x)
        return out.view(packing.batch, packing.max_length, heads, head_dim).transpose(1, 2)

    positions = torch.arange(packing.max_length, device=q.device)
    keys = (positions[None, :] < packing.lengths[:, None]) | (positions[None, :] == 0)
    out = F.scaled_dot_product_attention(
        grid(q), grid(k), grid(v), attn_mask=keys[:, None, None, :], dropout_p=dropout, scale=scale
    )
    return out.transpose(1, 2).reshape(cells, heads, head_dim).index_select(0, packing.core_index)


def _nested_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing, dropout: float, scale: float):
    """Attention of packed rows within each item via nested jagged tensors (flash/efficient varlen kernels on CUDA)."""
    offsets = packing.offsets

    def nested(x: torch.Tensor) -> torch.Tensor:
        return torch.nested.nested_tensor_from_jagged(x, offsets, max_seqlen=packing.max_length).transpose(1, 2)

    out = F.scaled_dot_product_attention(nested(q), nested(k), nested(v), dropout_p=dropout, scale=scale)
    return out.transpose(1, 2).values()


def resolve_core(core: str, device: torch.device) -> str:
    """`auto` is the padded core on every device (measured: docs/benchmarks.md). On CPU PyTorch runs jagged SDPA
    as a loop over items; on CUDA nested jagged tensors dispatch every operator through a Python tensor subclass,
    which made a training step host-bound on an H200 (30-50 ms of Python per step)."""
    if core == "auto":
        return "padded"
    return core


def variable_shape_attention() -> contextlib.AbstractContextManager[None]:
    """SDPA restricted to kernels that need no per-shape setup: flash, memory-efficient, math (never cuDNN).

    Item batches change shape every step (distinct items, longest text); cuDNN attention builds an execution plan
    for each new shape, which cost about 0.7 s per training step on an H200 (docs/benchmarks.md). A no-op on CPU.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def packed_bert_layer(layer: nn.Module, x: torch.Tensor, packing: Packing, core: str = "auto") -> torch.Tensor:
    """One BERT-family block on packed tokens [total, hidden]; the same function as `layer(padded, mask)`."""
    attention = layer.attention
    self_attention = attention.self
    heads = int(self_attention.num_attention_heads)
    head_dim = int(self_attention.attention_head_size)
    scale = float(getattr(self_attention, "scaling", head_dim**-0.5))
    dropout = float(self_attention.dropout.p) if self_attention.training else 0.0
    q = self_attention.query(x).view(-1, heads, head_dim)
    k = self_attention.key(x).view(-1, heads, head_dim)
    v = self_attention.value(x).view(-1, heads, head_dim)
    run = _nested_core if resolve_core(core, x.device) == "nested" and packing.total else _padded_core
    context = run(q, k, v, packing, dropout, scale).reshape(-1, heads * head_dim)
    attended = attention.output(context, x)  # dense, dropout, LayerNorm(+ residual): row-wise
    return layer.output(layer.intermediate(attended), attended)


def length_buckets(lengths: Sequence[int]) -> list[list[int]]:
    """Item positions grouped by length (shortest first) so that each bucket's padded area stays within
    `_BUCKET_SLACK` x its real tokens."""
    order = sorted(range(len(lengths)), key=lambda position: lengths[position])
    buckets: list[list[int]] = []
    real = 0
    for position in order:
        length = max(int(lengths[position]), 1)
        if buckets and length * (len(buckets[-1]) + 1) <= _BUCKET_SLACK * (real + length):
            buckets[-1].append(position)
            real += length
        else:
            buckets.append([position])
            real = length
    return buckets


def run_bucketed(
    run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], hidden: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """`run(hidden, mask)` per length bucket, each trimmed to the last real column of its items; results in order."""
    mask = mask.to(torch.bool)
    columns = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    extents = (mask * columns).amax(dim=1).tolist() if mask.shape[0] else []
    buckets = length_buckets(extents)
    parts = []
    for bucket in buckets:
        index = torch.as_tensor(bucket, device=hidden.device)
        width = max(max(int(extents[position]) for position in bucket), 1)
        result = run(hidden[index, :width], mask[index, :width])
        parts.append(F.pad(result, (0, 0, 0, hidden.shape[1] - width)))
    if not parts:
        return hidden
    order = torch.as_tensor([position for bucket in buckets for position in bucket], device=hidden.device)
    return torch.cat(parts).index_select(0, torch.argsort(order))
