"""No work on padding (issue 16): the text encoder's token layouts compute the same thing on real tokens.

`packed` (real tokens only, variable-length attention), `bucketed` (length buckets) and `padded` (the batch as wide
as its longest item, the old way) must give the same token states, gradients, losses and item embeddings; the
frozen-prefix store holds real tokens only and gives back what the uncached encoder computes.
"""

from __future__ import annotations

from pathlib import Path

import batches
import numpy as np
import pytest
import tiny
import torch
from torch import nn

from pmmrec.components import HFTextEncoder
from pmmrec.components._packed import Packing, is_bert_like, length_buckets, resolve_core
from pmmrec.inference import encode_catalogue
from pmmrec.prefix_cache import FrozenPrefixCache, jagged_offsets, jagged_rows

LAYOUTS = [("padded", "auto"), ("bucketed", "auto"), ("packed", "padded"), ("packed", "nested")]
TEXTS = ["a", "a much longer item title with quite a few tokens in it", "short one", "medium length title", "x y"]


def _no_dropout(module: nn.Module) -> None:
    for child in module.modules():
        if isinstance(child, nn.Dropout):
            child.p = 0.0


def _run(encoder: HFTextEncoder, layout: str, core: str) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Token states on real positions, the mask, and every trainable parameter's gradient of a fixed loss."""
    encoder.token_layout, encoder.attention_core = layout, core  # type: ignore[assignment]
    encoder.zero_grad(set_to_none=True)
    ids, mask = encoder.tokenize(TEXTS)
    device = next(encoder.parameters()).device
    tokens, mask = encoder(ids.to(device), mask.to(device))
    (tokens[mask] ** 2).sum().backward()
    grads = [p.grad.clone() for p in encoder.parameters() if p.requires_grad and p.grad is not None]
    return tokens[mask].detach(), mask, grads


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")),
]


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model_type", ["bert", "xlm-roberta"])
def test_layouts_give_the_same_tokens_and_gradients(model_type: str, device: str) -> None:
    """Guards against packed attention leaking across items or onto padding, and a lost residual or scale.

    On CUDA the packed layout's "auto" core is the nested-jagged one (flash / memory-efficient varlen kernels)."""
    encoder = tiny.tiny_text_encoder(model_type=model_type).train().to(device)  # type: ignore[arg-type]
    tolerance = 1e-5 if device == "cpu" else 2e-4  # CUDA kernels sum in other orders
    _no_dropout(encoder)  # train-mode code paths, deterministic
    assert encoder.layout_for(list(encoder.layers)) == "packed"
    reference_tokens, reference_mask, reference_grads = _run(encoder, "padded", "auto")
    assert not bool(reference_mask.all()), "the texts must leave padding"
    for layout, core in [*LAYOUTS[1:], ("packed", "auto")]:
        tokens, mask, grads = _run(encoder, layout, core)
        assert torch.equal(mask, reference_mask)
        torch.testing.assert_close(tokens, reference_tokens, atol=tolerance, rtol=tolerance)
        assert len(grads) == len(reference_grads) > 0
        for grad, expected in zip(grads, reference_grads, strict=True):
            torch.testing.assert_close(grad, expected, atol=10 * tolerance, rtol=10 * tolerance)


def test_packed_layout_zeroes_padding_and_survives_an_empty_row() -> None:
    """Guards against NaN from a softmax over no keys when a row has no real token."""
    encoder = tiny.tiny_text_encoder()
    ids, mask = encoder.tokenize(TEXTS[:2])
    mask[0] = False
    with torch.no_grad():
        tokens, _ = encoder(ids, mask)
    assert bool(torch.isfinite(tokens).all())
    assert bool((tokens[~mask] == 0).all())


class _Wrapped(nn.Module):
    """A layer of an unknown type (not BERT-like): only its own forward may run it."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.inner(hidden, attention_mask=attention_mask)


def test_unknown_layer_types_fall_back_to_length_buckets() -> None:
    """Guards against the packed path driving a layer whose internals it does not know."""
    encoder = tiny.tiny_text_encoder()
    ids, mask = encoder.tokenize(TEXTS)
    with torch.no_grad():
        expected, _ = encoder(ids, mask)
        stack = encoder.layers
        stack[-1] = _Wrapped(stack[-1])
        assert not is_bert_like(stack[-1])
        assert encoder.layout_for(list(stack)) == "bucketed"
        tokens, _ = encoder(ids, mask)
    torch.testing.assert_close(tokens[mask], expected[mask], atol=1e-5, rtol=1e-5)


def test_length_buckets_cover_every_item_once_with_little_padding() -> None:
    """Guards against a bucketing that drops or repeats items, or pads far beyond the real tokens."""
    lengths = [5, 34, 12, 12, 7, 1, 30, 15, 16, 15]
    buckets = length_buckets(lengths)
    assert sorted(position for bucket in buckets for position in bucket) == list(range(len(lengths)))
    for bucket in buckets:
        real = sum(lengths[p] for p in bucket)
        assert max(lengths[p] for p in bucket) * len(bucket) <= 1.15 * real + 1e-9


def test_packing_round_trip() -> None:
    """Guards against pack/unpack mixing up rows or items (tokens of an item must stay contiguous, in order)."""
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    hidden = torch.arange(12, dtype=torch.float32).view(3, 4, 1)
    packing = Packing.from_mask(mask)
    packed = packing.pack(hidden)
    assert packed.squeeze(1).tolist() == [0, 1, 4, 5, 6, 7, 8]
    assert packing.offsets.tolist() == [0, 2, 6, 7] and packing.max_length == 4
    unpacked = packing.unpack(packed)
    assert torch.equal(unpacked[mask], hidden[mask]) and bool((unpacked[~mask] == 0).all())


@pytest.mark.parametrize("layout", ["padded", "bucketed"])
def test_losses_and_item_embeddings_equal_across_layouts(tmp_path: Path, layout: str) -> None:
    """The issue's equality: training losses (with and without cached prefixes) and the catalogue table."""
    collator = batches.collator(tmp_path)
    batch = batches.batch(collator)
    module = batches.module(batches.model(), nicl=0.4)
    text = module.model.text
    assert isinstance(text, HFTextEncoder)
    results = {}
    for name in (layout, "packed"):
        text.token_layout = name  # type: ignore[assignment]
        module.prefix_cache = None
        uncached = module(batch, corruption_seed=0)
        module.prefix_cache = FrozenPrefixCache.for_model(module.model, collator, batches.CPU)
        cached = module(batch, corruption_seed=0)
        table = encode_catalogue(module.model, collator, batches.NUM_ITEMS, batches.CPU)
        assert module.prefix_cache is not None
        results[name] = (uncached, cached, table, module.prefix_cache.item_table(module.model))
    for before, after in zip(results[layout], results["packed"], strict=True):
        if isinstance(before, dict):
            assert before.keys() == after.keys()
            for key in before:
                torch.testing.assert_close(after[key], before[key], atol=1e-5, rtol=1e-5)
        else:
            torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)


def test_prefix_store_holds_real_tokens_only(tmp_path: Path) -> None:
    """Guards against storing padding (the store's size) and against rows read back for the wrong item."""
    collator = batches.collator(tmp_path, images=False)
    model = batches.model(vision=False)
    cache = FrozenPrefixCache.for_model(model, collator, batches.CPU)
    assert cache is not None and cache.text_offsets is not None and isinstance(cache.text_prefix, torch.Tensor)
    assert collator.text_mask is not None and collator.text_ids is not None
    real = int(collator.text_mask[1:].sum())
    assert cache.text_prefix.shape == (real, 32)
    items = torch.tensor([5, 1, 17, 5])
    mask = collator.text_mask[items].to(torch.bool)
    text = model.text
    assert text is not None
    with torch.no_grad():
        expected = text.frozen_prefix(collator.text_ids[items], mask)
    torch.testing.assert_close(cache.text_rows(items, mask)[mask], expected[mask], atol=1e-5, rtol=1e-5)


def test_jagged_rows_equal_a_per_item_loop() -> None:
    """Guards the vectorised row gather against off-by-one offsets (repeated items included)."""
    mask = torch.zeros(6, 5, dtype=torch.bool)
    for row, length in enumerate([1, 3, 5, 2, 1, 4]):
        mask[row, :length] = True
    offsets = jagged_offsets(mask)
    assert offsets.tolist() == [0, 0, 3, 8, 10, 11, 15]  # row 0 (padding item) stores nothing
    items = np.array([3, 1, 5, 3])
    expected = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in items])
    np.testing.assert_array_equal(jagged_rows(offsets, items), expected)


def test_item_encoders_never_run_cudnn_attention() -> None:
    """Guards against cuDNN SDPA in item encoding: it plans per shape, and item batches change shape every step
    (about 0.7 s per training step on an H200). The flag is read inside the encoder, where the kernel is chosen."""
    model = batches.model(text=True, vision=False)
    seen: list[bool] = []
    original = model.text.forward  # type: ignore[union-attr]

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return original(*args, **kwargs)

    model.text.forward = spy  # type: ignore[method-assign,union-attr]
    ids, mask = model.text.tokenize(TEXTS)  # type: ignore[union-attr]
    assert torch.backends.cuda.cudnn_sdp_enabled()  # PyTorch's default outside
    model.embed_items(ids, mask)
    assert seen == [False] and torch.backends.cuda.cudnn_sdp_enabled()  # restored afterwards
    assert resolve_core("auto", torch.device("cuda")) == "padded"  # no nested jagged tensors by default either
