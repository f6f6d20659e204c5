"""The CPU paths of the default ID step (issue 28.1): the chunked full-softmax cross-entropy gives the plain path's
loss and gradients, and `UniformDropout` is `nn.Dropout`'s distribution."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pmmrec.components import SASRecUserEncoder
from pmmrec.components._dropout import UniformDropout, use_uniform_dropout
from pmmrec.components.user_sasrec import SASRecConfig
from pmmrec.objectives import chunked_softmax, next_item
from pmmrec.objectives.next_item import NextItemConfig, NextItemLoss, log_popularity_from_counts


def _batch(gen: torch.Generator, batch: int = 9, slots: int = 7, items: int = 23) -> dict[str, torch.Tensor]:
    """Left-padded sequences over a small catalogue (repeats and targets in the history), all items candidates."""
    slot_index = torch.randint(0, items, (batch, slots), generator=gen)
    lengths = torch.randint(1, slots + 1, (batch,), generator=gen)
    seq_mask = torch.arange(slots).unsqueeze(0) >= (slots - lengths).unsqueeze(1)
    return {"slot_index": slot_index * seq_mask, "seq_mask": seq_mask, "unique": torch.arange(items)}


def _loss_and_grads(
    b: dict[str, torch.Tensor], states: torch.Tensor, items: torch.Tensor, config: NextItemConfig, log_pop: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    s, e = states.clone().requires_grad_(), items.clone().requires_grad_()
    loss = NextItemLoss(config)(s, e, b["slot_index"], b["seq_mask"], b["unique"], log_pop)
    (3.0 * loss).backward()  # the backward pass scales by the incoming gradient
    assert s.grad is not None and e.grad is not None
    return loss.detach(), s.grad, e.grad


@pytest.mark.parametrize("chunk_rows", [1, 5, 1000])  # one row per chunk, a partial last chunk, one chunk
@pytest.mark.parametrize(("softmax", "correction", "temperature"), [("full", False, 1.0), ("in_batch", True, 0.7)])
def test_chunked_cross_entropy_equals_the_plain_path(
    monkeypatch: pytest.MonkeyPatch, chunk_rows: int, softmax: str, correction: bool, temperature: float
) -> None:
    gen = torch.Generator().manual_seed(chunk_rows)
    b = _batch(gen)
    states = torch.randn(9, 7, 8, generator=gen)
    items = torch.randn(23, 8, generator=gen)
    log_pop = log_popularity_from_counts(torch.randint(0, 6, (23,), generator=gen))
    config = NextItemConfig(softmax=softmax, popularity_correction=correction, temperature=temperature)
    monkeypatch.setattr(chunked_softmax, "CHUNK_LOGITS", chunk_rows * 23)
    calls = []
    original = chunked_softmax.chunked_cross_entropy
    monkeypatch.setattr(next_item, "chunked_cross_entropy", lambda *a: calls.append(1) or original(*a))
    fast = _loss_and_grads(b, states, items, config, log_pop)
    assert calls, "the chunked path was not taken"
    monkeypatch.setattr(next_item, "_chunked", lambda s, e: False)
    plain = _loss_and_grads(b, states, items, config, log_pop)
    for got, want in zip(fast, plain, strict=True):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert bool(plain[2].abs().sum() > 0)


def test_chunked_path_only_for_float32_cpu_training() -> None:
    states = torch.randn(4, 3, requires_grad=True)
    items = torch.randn(5, 3)
    assert next_item._chunked(states, items)
    assert not next_item._chunked(states.detach(), items)  # nothing to differentiate
    with torch.no_grad():
        assert not next_item._chunked(states, items)
    assert not next_item._chunked(states.double(), items.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not next_item._chunked(states, items)


@pytest.mark.parametrize("chunked", [True, False])
def test_own_items_as_negatives_is_the_unmasked_cross_entropy(monkeypatch: pytest.MonkeyPatch, chunked: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    b = _batch(gen)
    states = torch.randn(9, 7, 8, generator=gen)
    items = torch.randn(23, 8, generator=gen)
    log_pop = log_popularity_from_counts(torch.ones(23, dtype=torch.long))
    if not chunked:
        monkeypatch.setattr(next_item, "_chunked", lambda s, e: False)
    negatives = _loss_and_grads(b, states, items, NextItemConfig(softmax="full", own_items="negatives"), log_pop)
    valid = b["seq_mask"][:, :-1] & b["seq_mask"][:, 1:]
    s, e = states.clone().requires_grad_(), items.clone().requires_grad_()
    want = nn.functional.cross_entropy(s[:, :-1][valid] @ e.t(), b["slot_index"][:, 1:][valid])
    (3.0 * want).backward()
    for got, expected in zip(negatives, (want.detach(), s.grad, e.grad), strict=True):
        assert expected is not None and torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    masked = _loss_and_grads(b, states, items, NextItemConfig(softmax="full"), log_pop)
    assert masked[0] < negatives[0]  # the batch repeats items within users: the mask removes competitors


def test_uniform_dropout_keeps_one_minus_p_and_scales() -> None:
    torch.manual_seed(0)
    dropout = UniformDropout(0.3)
    x = torch.ones(1_000_000, requires_grad=True)
    y = dropout(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.003
    keep_probability = 1 - round(0.3 * 32768) / 32768  # p rounded to 1/32768: within 1.5e-5 of 0.7
    assert abs(keep_probability - 0.7) < 1.6e-5
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / keep_probability))
    lanes = kept[: 4 * 250_000].view(-1, 4).float()  # the four elements drawn from one 64-bit word
    assert (lanes.mean(0) - 0.7).abs().max().item() < 0.005  # the top lane too (its word's sign bit is unused)
    assert torch.corrcoef(lanes.T).triu(1).abs().max().item() < 0.01  # and independent of each other
    y.sum().backward()
    assert x.grad is not None and torch.equal(x.grad, y.detach())  # gradient = the same scaled mask
    dropout.eval()
    assert torch.equal(dropout(x), x)
    assert torch.equal(UniformDropout(0.0)(x), x)


def test_uniform_dropout_is_seeded() -> None:
    x = torch.randn(64, 8)
    torch.manual_seed(5)
    first = UniformDropout(0.5)(x)
    torch.manual_seed(5)
    assert torch.equal(UniformDropout(0.5)(x), first)


def test_user_encoder_has_only_uniform_dropout_and_the_same_weights() -> None:
    encoder = SASRecUserEncoder(SASRecConfig(dim=8, heads=2, dropout=0.2))
    dropouts = [m for m in encoder.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 1 + 3 * encoder.config.layers  # input + each block's dropout, dropout1, dropout2
    assert all(type(m) is UniformDropout and m.p == 0.2 for m in dropouts)
    plain = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1))
    keys = set(plain.state_dict())
    use_uniform_dropout(plain)
    assert type(plain[1]) is UniformDropout and set(plain.state_dict()) == keys  # no weights: artefacts unchanged
