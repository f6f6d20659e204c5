"""Objectives against slow, loop-based reference computations; masks, padding, corruption and gradients."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from pmmrec.objectives import (
    NextItemConfig,
    NextItemLoss,
    NICLConfig,
    NICLLoss,
    NIDConfig,
    NIDLoss,
    ObjectiveWeights,
    RCLConfig,
    RCLLoss,
    corrupt_slots,
    log_popularity_from_counts,
    nicl_masks,
    user_item_membership,
)
from pmmrec.objectives.next_item import mask_own_items

DIM = 6


def make_batch(item_seq: list[list[int]]) -> dict[str, torch.Tensor]:
    """Batch tensors as the data layer builds them: left-padded ids, mask, sorted unique items, slot_index."""
    seq = torch.tensor(item_seq, dtype=torch.long)
    mask = seq > 0
    unique = torch.unique(seq[mask])
    slot = torch.searchsorted(unique, seq).clamp_max(unique.numel() - 1)
    slot = torch.where(mask, slot, torch.zeros_like(slot))
    return {"item_seq": seq, "seq_mask": mask, "unique_items": unique, "slot_index": slot}


def random_batch(gen: torch.Generator, batch: int = 5, slots: int = 7, num_items: int = 9) -> dict[str, torch.Tensor]:
    """Random left-padded sequences over a tiny catalogue (forces repeats and shared items), lengths 0..slots."""
    rows = []
    lengths = [slots, 0, 1, 2, *torch.randint(0, slots + 1, (batch,), generator=gen).tolist()][:batch]
    for length in lengths:
        items = torch.randint(1, num_items + 1, (length,), generator=gen).tolist()
        rows.append([0] * (slots - length) + items)
    return make_batch(rows)


def logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


# --- next-item ------------------------------------------------------------------------------------------------


def reference_next_item(
    states: torch.Tensor,
    emb: torch.Tensor,
    b: dict[str, torch.Tensor],
    log_pop: torch.Tensor | None,
    temperature: float,
) -> float:
    seq, mask, unique = b["item_seq"].tolist(), b["seq_mask"].tolist(), b["unique_items"].tolist()
    total, rows = 0.0, 0
    for user in range(len(seq)):
        own = {seq[user][s] for s in range(len(seq[user])) if mask[user][s]}
        for pos in range(len(seq[user]) - 1):
            if not (mask[user][pos] and mask[user][pos + 1]):
                continue
            target = seq[user][pos + 1]
            logits, target_logit = [], None
            for col, item in enumerate(unique):
                if item in own and item != target:
                    continue
                value = float(states[user, pos] @ emb[col]) / temperature
                if log_pop is not None:
                    value -= float(log_pop[item])
                logits.append(value)
                if item == target:
                    target_logit = value
            assert target_logit is not None
            total += logsumexp(logits) - target_logit
            rows += 1
    return total / rows


@pytest.mark.parametrize("correction", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_next_item_matches_reference(seed: int, correction: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    b = random_batch(gen)
    bsz, slots = b["item_seq"].shape
    states = torch.randn(bsz, slots, DIM, generator=gen, dtype=torch.float64)
    emb = torch.randn(b["unique_items"].numel(), DIM, generator=gen, dtype=torch.float64)
    counts = torch.randint(0, 5, (10,), generator=gen)
    log_pop = log_popularity_from_counts(counts).double()
    loss_fn = NextItemLoss(NextItemConfig(temperature=0.7, popularity_correction=correction))
    loss = loss_fn(states, emb, b["slot_index"], b["seq_mask"], b["unique_items"], log_pop if correction else None)
    expected = reference_next_item(states, emb, b, log_pop if correction else None, 0.7)
    assert loss.item() == pytest.approx(expected, abs=1e-5, rel=1e-5)


def test_next_item_popularity_correction_is_not_rounded_under_bf16_autocast() -> None:
    """Bug guarded: under bf16 autocast, -log p was cast to bf16 (steps of 1/32 near -7) before the cross-entropy."""
    gen = torch.Generator().manual_seed(3)
    b = random_batch(gen)
    bsz, slots = b["item_seq"].shape
    # Small scores: their own bf16 rounding (the matmul's) is far below the correction's rounding being tested.
    states = 0.05 * torch.randn(bsz, slots, DIM, generator=gen)
    emb = 0.05 * torch.randn(b["unique_items"].numel(), DIM, generator=gen)
    log_pop = -6.0 - (2 * torch.arange(10) + 1) / 64  # each halfway between two bf16 values (1/32 apart)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = NextItemLoss(NextItemConfig(popularity_correction=True))(
            states, emb, b["slot_index"], b["seq_mask"], b["unique_items"], log_pop
        )
    states64, emb64 = states.bfloat16().double(), emb.bfloat16().double()
    exact = reference_next_item(states64, emb64, b, log_pop.double(), 1.0)
    rounded = reference_next_item(states64, emb64, b, log_pop.bfloat16().double(), 1.0)
    assert abs(rounded - exact) > 5e-3  # what the old code computed was this far off
    assert loss.item() == pytest.approx(exact, abs=1e-3)


def test_next_item_own_non_target_item_is_never_a_negative() -> None:
    # Item 7 starts both users' sequences and is never a target: its column is masked in every row.
    b = make_batch([[0, 7, 2, 3, 2], [7, 4, 5, 4, 6]])
    gen = torch.Generator().manual_seed(3)
    states = torch.randn(2, 5, DIM, generator=gen, dtype=torch.float64)
    emb = torch.randn(b["unique_items"].numel(), DIM, generator=gen, dtype=torch.float64)
    loss_fn = NextItemLoss(NextItemConfig(popularity_correction=False))
    args = (b["slot_index"], b["seq_mask"], b["unique_items"])
    base = loss_fn(states, emb, *args)
    col7 = int((b["unique_items"] == 7).nonzero())
    changed = emb.clone()
    changed[col7] = 50.0 * torch.randn(DIM, generator=gen, dtype=torch.float64)
    assert loss_fn(states, changed, *args).item() == pytest.approx(base.item(), abs=1e-12)
    # Positive control: item 3 belongs to user 0 only, so it is a real negative for user 1.
    col3 = int((b["unique_items"] == 3).nonzero())
    changed = emb.clone()
    changed[col3] += 5.0
    assert abs(loss_fn(states, changed, *args).item() - base.item()) > 1e-6


def test_next_item_target_repeated_in_history_is_kept() -> None:
    # The target 2 also occurs earlier in the sequence: the row must still score it (finite loss = reference).
    b = make_batch([[2, 3, 2]])
    gen = torch.Generator().manual_seed(4)
    states = torch.randn(1, 3, DIM, generator=gen, dtype=torch.float64)
    emb = torch.randn(2, DIM, generator=gen, dtype=torch.float64)
    loss = NextItemLoss(NextItemConfig(popularity_correction=False))(
        states, emb, b["slot_index"], b["seq_mask"], b["unique_items"]
    )
    # Every row has a single unmasked column (its target), so each cross-entropy is exactly 0.
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert loss.item() == pytest.approx(reference_next_item(states, emb, b, None, 1.0), abs=1e-12)


def test_next_item_ignores_padding_and_last_state() -> None:
    gen = torch.Generator().manual_seed(5)
    b = random_batch(gen)
    bsz, slots = b["item_seq"].shape
    states = torch.randn(bsz, slots, DIM, generator=gen, dtype=torch.float64)
    emb = torch.randn(b["unique_items"].numel(), DIM, generator=gen, dtype=torch.float64)
    loss_fn = NextItemLoss(NextItemConfig(popularity_correction=False))
    base = loss_fn(states, emb, b["slot_index"], b["seq_mask"], b["unique_items"])
    noisy_states = states.clone()
    noisy_states[~b["seq_mask"]] = 99.0
    noisy_states[:, -1] = -99.0  # the last position has no next slot
    noisy_slots = b["slot_index"].clone()
    noisy_slots[~b["seq_mask"]] = b["unique_items"].numel() - 1
    again = loss_fn(noisy_states, emb, noisy_slots, b["seq_mask"], b["unique_items"])
    assert again.item() == pytest.approx(base.item(), abs=1e-12)


def test_next_item_gradients_and_empty_batch() -> None:
    gen = torch.Generator().manual_seed(6)
    b = random_batch(gen)
    states = torch.randn(*b["item_seq"].shape, DIM, generator=gen, requires_grad=True)
    emb = torch.randn(b["unique_items"].numel(), DIM, generator=gen, requires_grad=True)
    log_pop = log_popularity_from_counts(torch.arange(10))
    loss = NextItemLoss()(states, emb, b["slot_index"], b["seq_mask"], b["unique_items"], log_pop)
    loss.backward()
    assert torch.isfinite(loss)
    assert states.grad is not None and emb.grad is not None
    assert torch.isfinite(states.grad).all() and torch.isfinite(emb.grad).all()
    assert emb.grad.abs().sum() > 0

    single = make_batch([[0, 0, 4], [0, 0, 0]])  # no user has two valid consecutive slots
    states = torch.randn(2, 3, DIM, requires_grad=True)
    emb = torch.randn(1, DIM, requires_grad=True)
    empty = NextItemLoss()(states, emb, single["slot_index"], single["seq_mask"], single["unique_items"], log_pop)
    assert empty.item() == 0.0
    empty.backward()


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_next_item_mask_scatter_equals_the_dense_mask_with_gradients(seed: int) -> None:
    """The O(R*S) own-item mask gives the values and gradients of the dense [R,U] membership mask it replaced."""
    gen = torch.Generator().manual_seed(seed)
    b = random_batch(gen, batch=6, slots=8, num_items=7)  # a tiny catalogue: repeats, targets in history, padding
    seq_mask, slot_index = b["seq_mask"], b["slot_index"]
    row_valid = seq_mask[:, :-1] & seq_mask[:, 1:]
    targets = slot_index[:, 1:][row_valid]
    row_user = torch.arange(seq_mask.shape[0]).unsqueeze(1).expand(-1, seq_mask.shape[1] - 1)[row_valid]
    logits = torch.randn(targets.shape[0], b["unique_items"].numel(), generator=gen, dtype=torch.float64)
    fast_input, dense_input = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    fast = mask_own_items(fast_input, slot_index, seq_mask, row_user, targets)
    own = user_item_membership(slot_index, seq_mask, logits.shape[1])[row_user]
    own[torch.arange(targets.shape[0]), targets] = False
    dense = dense_input.masked_fill(own, float("-inf"))
    assert torch.equal(fast, dense)
    assert bool(torch.isinf(dense).any())  # the case is not trivial: some own items are masked
    weights = torch.randn(targets.shape[0], generator=gen, dtype=torch.float64)
    (torch.nn.functional.cross_entropy(fast, targets, reduction="none") * weights).sum().backward()
    (torch.nn.functional.cross_entropy(dense, targets, reduction="none") * weights).sum().backward()
    assert fast_input.grad is not None and dense_input.grad is not None
    assert torch.allclose(fast_input.grad, dense_input.grad, atol=1e-12)


def test_next_item_argument_checks() -> None:
    b = make_batch([[1, 2, 3]])
    with pytest.raises(ValueError, match="log_popularity"):
        NextItemLoss()(torch.randn(1, 3, DIM), torch.randn(3, DIM), b["slot_index"], b["seq_mask"], b["unique_items"])
    with pytest.raises(ValueError, match="user_states"):
        NextItemLoss(NextItemConfig(popularity_correction=False))(
            torch.randn(1, 2, DIM), torch.randn(3, DIM), b["slot_index"], b["seq_mask"], b["unique_items"]
        )
    with pytest.raises(ValidationError):
        NextItemConfig(temperature=0.0)
    with pytest.raises(ValidationError):
        NextItemConfig(unknown=1)  # type: ignore[call-arg]


def test_log_popularity_from_counts() -> None:
    counts = torch.tensor([5, 3, 0, 1])
    log_p = log_popularity_from_counts(counts, eps=1e-6)
    assert log_p[0].item() == 0.0
    assert log_p[1].item() == pytest.approx(math.log(3 / 4), abs=1e-6)
    assert log_p[2].item() == pytest.approx(math.log(1e-6), abs=1e-4)
    assert log_p[3].item() == pytest.approx(math.log(1 / 4), abs=1e-6)
    for bad in (torch.tensor([1, 0, 0]), torch.tensor([0, -1, 2]), torch.tensor([[1, 2]])):
        with pytest.raises(ValueError):
            log_popularity_from_counts(bad)


def test_user_item_membership() -> None:
    gen = torch.Generator().manual_seed(7)
    b = random_batch(gen)
    member = user_item_membership(b["slot_index"], b["seq_mask"], b["unique_items"].numel())
    unique = b["unique_items"].tolist()
    for user, row in enumerate(b["item_seq"].tolist()):
        own = {item for item in row if item > 0}
        assert {unique[u] for u in range(len(unique)) if member[user, u]} == own


# --- NICL -------------------------------------------------------------------------------------------------------


def reference_nicl(t: torch.Tensor, v: torch.Tensor, b: dict[str, torch.Tensor], tau: float) -> float:
    """Explicit candidate sets over (modality, item id); t, v are already projected and normalised [U,p]."""
    seq, mask = b["item_seq"].tolist(), b["seq_mask"].tolist()
    col = {item: u for u, item in enumerate(b["unique_items"].tolist())}
    rep = {"t": t, "v": v}
    items_of = [{item for item, ok in zip(row, m, strict=True) if ok} for row, m in zip(seq, mask, strict=True)]
    losses = []
    for anchor_mod, other_mod in (("t", "v"), ("v", "t")):
        for user in range(len(seq)):
            others = set().union(*(items_of[o] for o in range(len(seq)) if o != user))
            for pos in range(len(seq[user])):
                if not mask[user][pos]:
                    continue
                item = seq[user][pos]
                positives = {(other_mod, item)}
                if pos + 1 < len(seq[user]) and mask[user][pos + 1]:
                    nxt = seq[user][pos + 1]
                    positives |= {("t", nxt), ("v", nxt)}
                positives.discard((anchor_mod, item))
                # method.md 3.2: items of other users, excluding only item ids equal to a positive (i and n).
                equal_to_positive = {item} | {j for (_m, j) in positives}
                negatives = {(m, j) for j in others - equal_to_positive for m in ("t", "v")}
                anchor_vec = rep[anchor_mod][col[item]]

                def sim(key: tuple[str, int], anchor_vec: torch.Tensor = anchor_vec) -> float:
                    return float(anchor_vec @ rep[key[0]][col[key[1]]]) / tau

                pos_vals = [sim(k) for k in positives]
                all_vals = pos_vals + [sim(k) for k in negatives]
                losses.append(logsumexp(all_vals) - logsumexp(pos_vals))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nicl_matches_reference(seed: int) -> None:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    b = random_batch(gen, batch=6)
    num_unique = b["unique_items"].numel()
    loss_fn = NICLLoss(DIM, NICLConfig(temperature=0.3, projection_dim=4)).double()
    text = torch.randn(num_unique, DIM, generator=gen, dtype=torch.float64)
    image = torch.randn(num_unique, DIM, generator=gen, dtype=torch.float64)
    loss = loss_fn(text, image, b["slot_index"], b["seq_mask"])
    with torch.no_grad():
        t = torch.nn.functional.normalize(loss_fn.text_head(text), dim=-1)
        v = torch.nn.functional.normalize(loss_fn.image_head(image), dim=-1)
    assert loss.item() == pytest.approx(reference_nicl(t, v, b, 0.3), abs=1e-5, rel=1e-5)


def test_nicl_negatives_exclude_only_items_equal_to_a_positive() -> None:
    """Guards against the old rule that also dropped every other item of the anchor user's own sequence."""
    gen = torch.Generator().manual_seed(8)
    b = random_batch(gen, batch=6)
    num_unique = b["unique_items"].numel()
    anchor, text_pos, image_pos, negatives = nicl_masks(b["slot_index"], b["seq_mask"], num_unique)
    member = user_item_membership(b["slot_index"], b["seq_mask"], num_unique)
    users = torch.arange(b["item_seq"].shape[0]).unsqueeze(1).expand_as(b["seq_mask"])[b["seq_mask"]]
    for row in range(anchor.numel()):
        in_others = (member.sum(0) - member[users[row]].long()) > 0
        expected = in_others.clone()
        expected[anchor[row]] = False
        next_items = text_pos[row, :num_unique] | text_pos[row, num_unique:]
        expected[next_items] = False
        assert negatives[row, :num_unique].tolist() == expected.tolist()
        assert negatives[row, num_unique:].tolist() == expected.tolist()
        assert not (text_pos[row] & negatives[row]).any() and not (image_pos[row] & negatives[row]).any()
        assert not text_pos[row, anchor[row]] and text_pos[row, num_unique + anchor[row]]
        assert image_pos[row, anchor[row]] and not image_pos[row, num_unique + anchor[row]]
    # User 0 holds items 1, 2, 3 and user 1 holds 2, 3: for user 0's anchor 1 (next 2), item 3 is in user 0's own
    # sequence and in user 1's, so it is a negative; item 2 (the next item) is not.
    b = make_batch([[1, 2, 3], [0, 2, 3]])
    _anchor, _text, _image, negatives = nicl_masks(b["slot_index"], b["seq_mask"], 3)
    assert negatives[0].tolist() == [False, False, True, False, False, True]


def test_nicl_repeated_next_item_and_padding() -> None:
    # User 0 repeats item 3 (next item == anchor item); padding values must not matter.
    b = make_batch([[0, 3, 3, 5], [0, 0, 6, 5], [2, 4, 1, 6]])
    gen = torch.Generator().manual_seed(9)
    num_unique = b["unique_items"].numel()
    loss_fn = NICLLoss(DIM).double()
    text = torch.randn(num_unique, DIM, generator=gen, dtype=torch.float64)
    image = torch.randn(num_unique, DIM, generator=gen, dtype=torch.float64)
    loss = loss_fn(text, image, b["slot_index"], b["seq_mask"])
    with torch.no_grad():
        t = torch.nn.functional.normalize(loss_fn.text_head(text), dim=-1)
        v = torch.nn.functional.normalize(loss_fn.image_head(image), dim=-1)
    assert loss.item() == pytest.approx(reference_nicl(t, v, b, 0.1), abs=1e-5, rel=1e-5)
    garbage = b["slot_index"].clone()
    garbage[~b["seq_mask"]] = num_unique - 1
    assert loss_fn(text, image, garbage, b["seq_mask"]).item() == pytest.approx(loss.item(), abs=1e-12)


def test_nicl_gradients_reach_heads_and_inputs() -> None:
    gen = torch.Generator().manual_seed(10)
    b = random_batch(gen)
    num_unique = b["unique_items"].numel()
    loss_fn = NICLLoss(DIM)
    text = torch.randn(num_unique, DIM, generator=gen, requires_grad=True)
    image = torch.randn(num_unique, DIM, generator=gen, requires_grad=True)
    loss = loss_fn(text, image, b["slot_index"], b["seq_mask"])
    loss.backward()
    assert torch.isfinite(loss)
    for grad in (text.grad, image.grad, *(p.grad for p in loss_fn.parameters())):
        assert grad is not None and torch.isfinite(grad).all()
    assert loss_fn.text_head.net[0].weight.grad.abs().sum() > 0  # type: ignore[union-attr]
    empty = make_batch([[0, 0, 0]])
    assert loss_fn(text[:1], image[:1], empty["slot_index"], empty["seq_mask"]).item() == 0.0


# --- NID and RCL ------------------------------------------------------------------------------------------------


def test_nid_matches_reference_and_ignores_padding() -> None:
    gen = torch.Generator().manual_seed(11)
    b = random_batch(gen)
    bsz, slots = b["item_seq"].shape
    loss_fn = NIDLoss(DIM, NIDConfig(corruption_rate=0.2)).double()
    states = torch.randn(bsz, slots, DIM, generator=gen, dtype=torch.float64)
    labels = torch.rand(bsz, slots, generator=gen) < 0.4
    loss = loss_fn(states, labels, b["seq_mask"])
    weight, bias = loss_fn.head.weight[0].detach(), float(loss_fn.head.bias.detach()[0])
    total, count = 0.0, 0
    for user in range(bsz):
        for pos in range(slots):
            if not b["seq_mask"][user, pos]:
                continue
            z = float(states[user, pos] @ weight) + bias
            p = 1.0 / (1.0 + math.exp(-z))
            total += -math.log(p) if labels[user, pos] else -math.log(1.0 - p)
            count += 1
    assert loss.item() == pytest.approx(total / count, abs=1e-5, rel=1e-5)
    states2, labels2 = states.clone(), labels.clone()
    states2[~b["seq_mask"]] = 1e3
    labels2[~b["seq_mask"]] = ~labels2[~b["seq_mask"]]
    assert loss_fn(states2, labels2, b["seq_mask"]).item() == pytest.approx(loss.item(), abs=1e-12)
    with pytest.raises(ValidationError):
        NIDConfig(corruption_rate=1.5)


def test_nid_gradients_and_empty() -> None:
    loss_fn = NIDLoss(DIM)
    states = torch.randn(2, 3, DIM, requires_grad=True)
    mask = torch.tensor([[False, True, True], [True, True, True]])
    loss = loss_fn(states, torch.tensor([[False, True, False], [False, False, True]]), mask)
    loss.backward()
    assert states.grad is not None and torch.isfinite(states.grad).all()
    assert loss_fn.head.weight.grad is not None
    empty = loss_fn(states, torch.zeros(2, 3, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.bool))
    assert empty.item() == 0.0


def test_rcl_matches_reference() -> None:
    gen = torch.Generator().manual_seed(12)
    clean = torch.randn(5, DIM, generator=gen, dtype=torch.float64)
    noisy = torch.randn(5, DIM, generator=gen, dtype=torch.float64)
    loss = RCLLoss(RCLConfig(temperature=0.2))(clean, noisy)
    cn = [c / c.norm() for c in clean]
    nn_ = [n / n.norm() for n in noisy]
    total = 0.0
    for i in range(5):
        row = [float(cn[i] @ nn_[j]) / 0.2 for j in range(5)]
        col = [float(nn_[i] @ cn[j]) / 0.2 for j in range(5)]
        total += (logsumexp(row) - row[i]) + (logsumexp(col) - col[i])
    assert loss.item() == pytest.approx(total / 10, abs=1e-5, rel=1e-5)


def test_rcl_gradients_and_edge_cases() -> None:
    clean = torch.randn(4, DIM, requires_grad=True)
    noisy = torch.randn(4, DIM, requires_grad=True)
    loss = RCLLoss()(clean, noisy)
    loss.backward()
    assert clean.grad is not None and torch.isfinite(clean.grad).all()
    assert noisy.grad is not None and torch.isfinite(noisy.grad).all()
    assert RCLLoss()(torch.randn(1, DIM), torch.randn(1, DIM)).item() == pytest.approx(0.0, abs=1e-7)
    same = torch.randn(3, DIM)
    assert RCLLoss()(same, same) < RCLLoss()(same, torch.randn(3, DIM))
    with pytest.raises(ValueError):
        RCLLoss()(torch.randn(2, DIM), torch.randn(3, DIM))


# --- corruption -------------------------------------------------------------------------------------------------


def test_corruption_rate_zero_is_identity() -> None:
    b = random_batch(torch.Generator().manual_seed(13))
    corrupted, noise = corrupt_slots(b["slot_index"], b["seq_mask"], 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(corrupted, b["slot_index"]) and not noise.any()


def test_corruption_is_deterministic_given_generator() -> None:
    b = random_batch(torch.Generator().manual_seed(14), batch=8, slots=12)
    first = corrupt_slots(b["slot_index"], b["seq_mask"], 0.5, torch.Generator().manual_seed(42))
    second = corrupt_slots(b["slot_index"], b["seq_mask"], 0.5, torch.Generator().manual_seed(42))
    other = corrupt_slots(b["slot_index"], b["seq_mask"], 0.5, torch.Generator().manual_seed(43))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("seed", range(5))
def test_corruption_labels_replacements_and_shuffles(seed: int) -> None:
    # Disjoint vocabularies per user: a foreign item can only come from replacement, an own item from shuffling.
    gen = torch.Generator().manual_seed(100 + seed)
    rows = []
    for user in range(4):
        length = int(torch.randint(1, 9, (1,), generator=gen))
        items = (10 * user + torch.randint(1, 6, (length,), generator=gen)).tolist()
        rows.append([0] * (8 - length) + items)
    b = make_batch(rows)
    slot, mask = b["slot_index"], b["seq_mask"]
    corrupted, noise = corrupt_slots(slot, mask, 1.0, torch.Generator().manual_seed(seed))
    assert torch.equal(noise, mask & (corrupted != slot))
    assert torch.equal(corrupted[~mask], slot[~mask])
    member = user_item_membership(slot, mask, b["unique_items"].numel())
    for user in range(4):
        valid = mask[user].nonzero().flatten().tolist()
        own = set(slot[user, valid].tolist())
        foreign = [p for p in valid if int(corrupted[user, p]) not in own]
        # rate 1 chooses every valid slot; ceil(k/2) of them are replaced by another user's item.
        assert len(foreign) == (len(valid) + 1) // 2
        for p in foreign:
            donor = int(corrupted[user, p])
            assert member[:, donor].any() and not member[user, donor]
        # The other floor(k/2) slots hold a permutation of their own original items.
        kept = [p for p in valid if p not in foreign]
        assert sorted(corrupted[user, kept].tolist()) == sorted(slot[user, kept].tolist())


def test_corruption_single_user_only_shuffles_and_rate_statistics() -> None:
    b = make_batch([[1, 2, 3, 4, 5, 6, 7, 8]])
    corrupted, noise = corrupt_slots(b["slot_index"], b["seq_mask"], 1.0, torch.Generator().manual_seed(1))
    assert sorted(corrupted[0].tolist()) == sorted(b["slot_index"][0].tolist())  # nothing to replace from
    assert torch.equal(noise, corrupted != b["slot_index"])

    gen = torch.Generator().manual_seed(15)
    big = make_batch([(torch.randperm(200, generator=gen)[:50] + 1).tolist() for _ in range(40)])
    _, noise = corrupt_slots(big["slot_index"], big["seq_mask"], 0.15, torch.Generator().manual_seed(2))
    fraction = noise.float().mean().item()
    assert 0.07 < fraction < 0.17  # at most rate, minus shuffles/replacements that left the item unchanged


def test_corruption_argument_checks() -> None:
    b = make_batch([[1, 2]])
    with pytest.raises(ValueError, match="rate"):
        corrupt_slots(b["slot_index"], b["seq_mask"], 1.5)
    with pytest.raises(ValueError, match="seq_mask"):
        corrupt_slots(b["slot_index"], b["seq_mask"].long(), 0.1)


# --- weights ----------------------------------------------------------------------------------------------------


def test_objective_weights() -> None:
    weights = ObjectiveWeights()
    assert (weights.rec, weights.nicl, weights.nid, weights.rcl) == (1.0, 0.4, 0.1, 0.1)
    losses = {name: torch.tensor(value) for name, value in {"rec": 2.0, "nicl": 1.0, "nid": 3.0, "rcl": 5.0}.items()}
    assert weights.combine(losses).item() == pytest.approx(2.0 + 0.4 + 0.3 + 0.5)
    finetune = ObjectiveWeights(nicl=0.0, nid=0.0, rcl=0.0)
    assert finetune.active() == ("rec",)
    assert finetune.combine({"rec": torch.tensor(2.0)}).item() == 2.0
    with pytest.raises(ValueError, match="nicl"):
        weights.combine({"rec": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="unknown"):
        weights.combine({**losses, "other": torch.tensor(1.0)})
    with pytest.raises(ValidationError):
        ObjectiveWeights(rec=-1.0)


# ---- found by mutation testing (docs/testing.md) -----------------------------------------------------------------


def test_weights_of_zero_give_a_zero_total_that_keeps_the_graph() -> None:
    """Guards against returning an unweighted loss when every given loss has weight 0."""
    off = ObjectiveWeights(rec=0.0, nicl=0.0, nid=0.0, rcl=0.0)
    loss = torch.tensor(3.0, requires_grad=True)
    total = off.combine({"nid": loss})
    assert total.item() == 0.0 and total.requires_grad


def test_a_single_user_is_still_corrupted_by_shuffling() -> None:
    """Guards against skipping corruption for a batch of one user (it can only shuffle its own items)."""
    b = make_batch([[1, 2, 3, 4, 5, 6, 7, 8]])
    corrupted, noise = corrupt_slots(b["slot_index"], b["seq_mask"], 1.0, torch.Generator().manual_seed(1))
    assert noise.any() and not torch.equal(corrupted, b["slot_index"])


def test_nicl_heads_project_to_the_projection_width() -> None:
    """Guards against a projection head that skips its last layer (and so keeps width d)."""
    loss_fn = NICLLoss(DIM, NICLConfig(projection_dim=4))
    assert loss_fn.text_head(torch.randn(3, DIM)).shape == (3, 4)
    assert loss_fn.image_head(torch.randn(3, DIM)).shape == (3, 4)


def test_shape_errors_name_the_shapes() -> None:
    """Guards against refusals that lose the offending shape (or fail with another error on the way)."""
    with pytest.raises(ValueError, match=r"counts must be a 1-D tensor \[N\+1\] with N >= 1, got shape \(1, 2\)"):
        log_popularity_from_counts(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match=r"matching seq_mask \(2, 3\)"):
        NIDLoss(DIM)(torch.randn(2, 4, DIM), torch.zeros(2, 4, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool))


def test_replacements_are_drawn_across_the_other_users_items() -> None:
    """Guards against a draw that always picks the same foreign item (e.g. dividing instead of scaling)."""
    b = make_batch([list(range(1, 13)), [20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31]])
    corrupted, _ = corrupt_slots(b["slot_index"], b["seq_mask"], 1.0, torch.Generator().manual_seed(3))
    own = set(b["slot_index"][0].tolist())
    donors = {int(c) for c in corrupted[0] if int(c) not in own}
    assert len(donors) >= 3  # six replacements from twelve candidates


def test_more_refusals_keep_their_reason() -> None:
    with pytest.raises(ValueError, match=r"^counts must be finite and non-negative$"):
        log_popularity_from_counts(torch.tensor([0.0, -1.0, 2.0]))
    with pytest.raises(ValueError, match=r"^counts of items 1\.\.N sum to zero: no training interactions"):
        log_popularity_from_counts(torch.tensor([3, 0, 0]))
    b = make_batch([[1, 2, 3]])
    with pytest.raises(ValueError, match=rf"item_embeddings must be \[U,{DIM}\], got \(3, 2\)"):
        NextItemLoss(NextItemConfig(popularity_correction=False))(
            torch.randn(1, 3, DIM), torch.randn(3, 2), b["slot_index"], b["seq_mask"], b["unique_items"]
        )


def test_defaults_and_empty_batches() -> None:
    """Guards against a head without its default options, and an empty RCL batch scoring its raw inputs."""
    assert NIDLoss(DIM).config == NIDConfig() and RCLLoss().config == RCLConfig()
    clean = torch.randn(0, DIM, requires_grad=True)
    loss = RCLLoss()(clean, torch.randn(0, DIM))
    assert loss.item() == 0.0 and loss.requires_grad


def test_every_objective_stays_on_its_inputs_device() -> None:
    """Guards against tensors made on the default device inside a loss (an `arange` without `device=`): with the
    default device set to PyTorch's "meta" device and the inputs on the CPU, such a tensor cannot mix with the
    inputs, as a CPU tensor cannot with inputs on a GPU."""
    gen = torch.Generator().manual_seed(3)
    b = random_batch(gen)
    unique = b["unique_items"].numel()
    states = torch.randn(*b["item_seq"].shape, DIM, generator=gen)
    items, image = torch.randn(unique, DIM, generator=gen), torch.randn(unique, DIM, generator=gen)
    clean, noisy = torch.randn(5, DIM, generator=gen), torch.randn(5, DIM, generator=gen)
    log_pop = log_popularity_from_counts(torch.arange(10))
    losses = {}
    nicl = NICLLoss(DIM)
    for default in ("cpu", "meta"):
        with torch.device(default):
            losses[default] = [
                NextItemLoss(NextItemConfig(popularity_correction=correction))(
                    states, items, b["slot_index"], b["seq_mask"], b["unique_items"], log_pop
                )
                for correction in (True, False)
            ] + [nicl(items, image, b["slot_index"], b["seq_mask"]), RCLLoss()(clean, noisy)]
    for on_cpu, with_meta_default in zip(losses["cpu"], losses["meta"], strict=True):
        assert with_meta_default.device.type == "cpu"
        assert torch.equal(on_cpu, with_meta_default)
    # The popularity correction is applied in the scores' precision, whatever the table's dtype.
    wide = NextItemLoss()(states, items, b["slot_index"], b["seq_mask"], b["unique_items"], log_pop.double())
    assert wide.dtype == torch.float32 and torch.allclose(wide, losses["cpu"][0])


def test_an_objective_without_a_step_loss_fails_at_construction() -> None:
    from pmmrec.objectives.base import Objective

    class Lossless(Objective):  # declares nothing it reads a step with
        name = "lossless"

    with pytest.raises(TypeError, match="step_loss"):
        Lossless()
