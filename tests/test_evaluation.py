"""Full-ranking evaluation against a naive per-user computation, with ties, history masking and chunking."""

from __future__ import annotations

import math

import pytest
import torch

from pmmrec.evaluation import format_metrics_table, metrics_from_ranks, rank_targets


def make_case(seed: int, num_users: int = 13, num_items: int = 25, dim: int = 3) -> dict[str, torch.Tensor]:
    """Small-integer embeddings so that many scores tie; random histories, some containing the target."""
    gen = torch.Generator().manual_seed(seed)
    states = torch.randint(-1, 2, (num_users, dim), generator=gen).float()
    table = torch.randint(-1, 2, (num_items + 1, dim), generator=gen).float()
    table[0] = 10.0  # padding row scores high: it must never be ranked
    targets = torch.randint(1, num_items + 1, (num_users,), generator=gen)
    histories = []
    for user in range(num_users):
        length = int(torch.randint(0, 8, (1,), generator=gen))
        items = torch.randint(0, num_items + 1, (length,), generator=gen).tolist()  # may repeat, may hold 0
        if user % 4 == 0:
            items.append(int(targets[user]))  # target also in the history
        histories.append(items)
    indptr = torch.tensor([0, *torch.tensor([len(h) for h in histories]).cumsum(0).tolist()], dtype=torch.long)
    flat = torch.tensor([i for h in histories for i in h], dtype=torch.long)
    return {"states": states, "table": table, "targets": targets, "indptr": indptr, "items": flat}


def naive_ranks(case: dict[str, torch.Tensor]) -> list[int]:
    ranks = []
    indptr = case["indptr"].tolist()
    for user in range(case["states"].shape[0]):
        target = int(case["targets"][user])
        history = set(case["items"][indptr[user] : indptr[user + 1]].tolist()) - {target}
        scores = {item: float(case["states"][user] @ case["table"][item]) for item in range(1, case["table"].shape[0])}
        better = sum(1 for item, s in scores.items() if item not in history and s > scores[target])
        ranks.append(1 + better)
    return ranks


def ranks_of(case: dict[str, torch.Tensor], chunk_size: int = 1024) -> torch.Tensor:
    return rank_targets(case["states"], case["table"], case["targets"], case["indptr"], case["items"], chunk_size)


@pytest.mark.parametrize("seed", range(6))
def test_rank_targets_matches_naive_with_ties(seed: int) -> None:
    case = make_case(seed)
    scores = case["states"] @ case["table"][1:].t()
    assert (scores.unsqueeze(2) == scores.unsqueeze(1)).sum() > scores.numel()  # ties really occur
    ranks = ranks_of(case)
    assert ranks.dtype == torch.long
    assert ranks.tolist() == naive_ranks(case)


@pytest.mark.parametrize("chunk_size", [1, 3, 13, 1000])
def test_rank_targets_chunk_size_independent(chunk_size: int) -> None:
    case = make_case(7)
    assert torch.equal(ranks_of(case, chunk_size), ranks_of(case, 10_000))


def test_history_masking_and_target_in_history() -> None:
    table = torch.tensor([[9.0], [5.0], [4.0], [3.0], [2.0], [1.0]])  # scores equal item order for state [1]
    states = torch.ones(3, 1)
    targets = torch.tensor([3, 3, 1])
    # user 0: no history -> items 1, 2 beat 3; user 1: 1 and 3 in history -> only 2 beats 3;
    # user 2: target 1 in its own history -> still ranked, first.
    indptr = torch.tensor([0, 0, 2, 3])
    items = torch.tensor([1, 3, 1])
    assert rank_targets(states, table, targets, indptr, items).tolist() == [3, 2, 1]


def test_ties_count_in_users_favour() -> None:
    table = torch.zeros(6, 2)
    table[0] = 100.0
    ranks = rank_targets(torch.ones(2, 2), table, torch.tensor([4, 5]), torch.tensor([0, 0, 0]), torch.empty(0).long())
    assert ranks.tolist() == [1, 1]


def test_rank_targets_low_precision_and_inference_mode() -> None:
    case = make_case(8)
    ranks = rank_targets(
        case["states"].half(), case["table"].bfloat16(), case["targets"], case["indptr"], case["items"], 4
    )
    assert ranks.tolist() == naive_ranks(case)
    assert not ranks.requires_grad


def test_rank_targets_rejects_bad_input() -> None:
    case = make_case(9)
    bad_targets = case["targets"].clone()
    bad_targets[0] = 0
    with pytest.raises(ValueError, match="targets"):
        rank_targets(case["states"], case["table"], bad_targets, case["indptr"], case["items"])
    with pytest.raises(ValueError, match="history_indptr"):
        rank_targets(case["states"], case["table"], case["targets"], case["indptr"][:-1], case["items"])
    with pytest.raises(ValueError, match="history_items"):
        rank_targets(case["states"], case["table"], case["targets"], case["indptr"], case["items"] + 100)
    with pytest.raises(ValueError, match="chunk_size"):
        rank_targets(case["states"], case["table"], case["targets"], case["indptr"], case["items"], 0)


def test_metrics_match_naive() -> None:
    ranks = torch.tensor([1, 2, 5, 10, 11, 20, 21, 50, 51, 1000])
    metrics = metrics_from_ranks(ranks, ks=(1, 10, 20, 50))
    values = ranks.tolist()
    for k in (1, 10, 20, 50):
        assert metrics[f"hr@{k}"] == pytest.approx(sum(r <= k for r in values) / len(values))
        assert metrics[f"ndcg@{k}"] == pytest.approx(sum(1 / math.log2(r + 1) for r in values if r <= k) / len(values))
        assert metrics[f"mrr@{k}"] == pytest.approx(sum(1 / r for r in values if r <= k) / len(values))
    assert metrics["num_users"] == 10 and isinstance(metrics["num_users"], int)  # a count stays an integer in JSON
    assert metrics["ndcg@1"] == metrics["hr@1"] == metrics["mrr@1"] == pytest.approx(0.1)
    assert list(metrics_from_ranks(ranks)) == [
        *(f"{name}@{k}" for k in (10, 20, 50) for name in ("hr", "ndcg", "mrr")),
        "num_users",
    ]


def test_metrics_reject_bad_input() -> None:
    for bad in (torch.tensor([], dtype=torch.long), torch.tensor([0, 1]), torch.tensor([[1]])):
        with pytest.raises(ValueError):
            metrics_from_ranks(bad)
    with pytest.raises(ValueError, match="ks"):
        metrics_from_ranks(torch.tensor([1]), ks=(0,))


def test_format_metrics_table() -> None:
    metrics = metrics_from_ranks(torch.tensor([1, 3, 30]), ks=(10, 50))
    table = format_metrics_table(metrics, ks=(10, 50))
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "@10", "@50"]
    assert lines[1].split() == ["hr", f"{2 / 3:.4f}", "1.0000"]
    assert [line.split()[0] for line in lines[1:4]] == ["hr", "ndcg", "mrr"]
    assert lines[-1] == "users: 3"
    assert len({len(line) for line in lines[:4]}) == 1  # aligned columns
    assert "-" in format_metrics_table(metrics, ks=(10, 20)).splitlines()[1].split()


# ---- input checks and edges, each named by the mistake it catches (found by mutation testing, docs/testing.md) ----


def test_a_one_item_catalogue_is_ranked() -> None:
    """Guards against refusing a table of exactly two rows (padding + one item)."""
    table = torch.tensor([[0.0], [1.0]])
    ranks = rank_targets(torch.ones(1, 1), table, torch.tensor([1]), torch.tensor([0, 0]), torch.empty(0, dtype=torch.long))
    assert ranks.tolist() == [1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(states=c["states"][:, 0]), r"user_states must be \[M,d\], got shape \(13,\)"),
        (lambda c: c.update(table=c["table"][:, :2]), r"item_table must be \[N\+1,3\] with N >= 1, got shape \(26, 2\)"),
        (lambda c: c.update(table=c["table"][:1]), r"item_table must be \[N\+1,3\] with N >= 1, got shape \(1, 3\)"),
        (lambda c: c.update(targets=c["targets"].int()), r"targets must be a LongTensor \[13\], got \(13,\) torch\.int32"),
        (lambda c: c.update(targets=c["targets"][:5]), r"targets must be a LongTensor \[13\], got \(5,\) torch\.int64"),
        (lambda c: c["targets"].__setitem__(2, 26), r"targets must lie in 1\.\.25 \(0 is padding\)"),
        (lambda c: c.update(indptr=c["indptr"].int()), r"history_indptr must be a LongTensor \[14\], got \(14,\) torch\.int32"),
        (lambda c: c.update(items=c["items"].reshape(1, -1)), r"history_items must be a 1-D LongTensor, got \(1, \d+\) torch\.int64"),
        (lambda c: c.update(items=c["items"].int()), r"history_items must be a 1-D LongTensor, got \(\d+,\) torch\.int32"),
        (lambda c: c.update(indptr=c["indptr"] + 1), r"history_indptr must start at 0 and end at len\(history_items\) = \d+, got 1 and \d+"),
        (lambda c: c["items"].__setitem__(0, 26), r"history_items must lie in 0\.\.25$"),
        (lambda c: c["items"].__setitem__(0, -1), r"history_items must lie in 0\.\.25$"),
    ],
)
def test_bad_inputs_are_refused_with_a_message_that_names_them(change: object, message: str) -> None:
    """Guards against input checks joined with `and` instead of `or`, off-by-one bounds, and messages that lose
    the offending shape, dtype or value."""
    case = make_case(9)
    change(case)  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        ranks_of(case)


def test_indptr_must_not_decrease_and_its_end_is_reported() -> None:
    table, states, targets = torch.zeros(4, 1), torch.ones(2, 1), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"^history_indptr must be non-decreasing$"):
        rank_targets(states, table, targets, torch.tensor([0, 2, 1]), torch.tensor([3]))
    with pytest.raises(ValueError, match=r"= 1, got 0 and 2$"):
        rank_targets(states, table, targets, torch.tensor([0, 1, 2]), torch.tensor([3]))


def test_strict_greater_counts_are_integers_across_blocks() -> None:
    """Guards against counting in float, and against counts lost between item blocks (blocks of 2 columns)."""
    states = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    table = torch.tensor([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [2.0, 5.0], [0.5, 4.0], [4.0, 0.0]])
    targets = torch.tensor([2, 4])
    no_history = torch.zeros(3, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    ranks = rank_targets(states, table, targets, *no_history, 2, 2)
    # user 0 scores 3, 1, 2, 0.5, 4: items 1, 3, 5 beat the target's 1; user 1 scores 0, 0, 5, 4, 0: item 3 beats 4.
    assert ranks.dtype == torch.long and ranks.tolist() == [4, 2]


def test_ranks_reject_zero_with_the_reason() -> None:
    with pytest.raises(ValueError, match=r"^ranks must be finite and >= 1$"):
        metrics_from_ranks(torch.tensor([0, 1]))


def test_a_table_without_cut_offs_has_no_trailing_spaces() -> None:
    """Guards against padding that is stripped on the wrong side (columns are padded on the right)."""
    lines = format_metrics_table(metrics_from_ranks(torch.tensor([1, 2])), ks=()).splitlines()
    assert lines == ["metric", "hr", "ndcg", "mrr", "users: 2"]


def _near_tie_case() -> tuple[torch.Tensor, ...]:
    """Six users over 40 items (row 0 = padding) with an exact tie and near ties (within float32 rounding) of
    targets, and some history."""
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(6, 16, generator=gen)
    items = torch.randn(41, 16, generator=gen)
    items[0] = 0.0
    items[5] = items[3]  # the same scores as user 0's target: never counted (ties in the user's favour)
    items[8] = items[7] * (1 + 2**-17)  # users 1 and 2's target, scaled by 1 +- 7.6e-6: closer to the target's
    items[9] = items[7] * (1 - 2**-17)  # score than the rounding band, far wider apart than float32 rounding
    targets = torch.tensor([3, 7, 7, 12, 30, 40])
    indptr, history = torch.tensor([0, 2, 2, 3, 3, 3, 4]), torch.tensor([1, 9, 2, 11])
    return states, items, targets, indptr, history


def test_the_rounding_band_path_ranks_exactly_like_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against the fallback that counts near ties against a rounding band (taken when a kernel rounds the
    target's score differently in its block): forced for every chunk here, it must give the fast path's ranks."""
    case = _near_tie_case()
    fast = rank_targets(*case, 2, 8)  # chunks of 2 users, blocks of 8 columns
    whole = rank_targets(*case, 6, 41)
    monkeypatch.setattr(torch, "equal", lambda a, b: False)  # the block's and the exact target score "differ"
    banded = rank_targets(*case, 2, 8)
    monkeypatch.undo()
    assert fast.dtype == banded.dtype == torch.long
    assert torch.equal(fast, whole) and torch.equal(banded, fast)
    states, items, targets, indptr, history = case
    scores = states.double() @ items.double().t()  # the reference: float64, one user at a time
    expected = []
    for user in range(len(targets)):
        excluded = {0, int(targets[user]), *history[indptr[user] : indptr[user + 1]].tolist()}
        better = [j for j in range(items.shape[0]) if j not in excluded and scores[user, j] > scores[user, targets[user]]]
        expected.append(1 + len(better))
    assert fast.tolist() == expected


def test_ranking_stays_on_its_inputs_device() -> None:
    """Guards against buffers or counts made on the default device (a CPU tensor beside CUDA inputs): with the
    default device set to "meta" and the inputs on the CPU, any such tensor fails."""
    case = _near_tie_case()
    expected = rank_targets(*case, 2, 8)
    with torch.device("meta"):
        assert torch.equal(rank_targets(*case, 2, 8), expected)


def test_default_block_columns() -> None:
    """Whole rows on CUDA; on CPU about 2 MiB of scores per block, at least 1,024 columns, at most the catalogue."""
    from pmmrec.evaluation import default_block_columns

    cpu = torch.device("cpu")
    assert default_block_columns(torch.device("cuda"), 256, 5_000) == 5_000
    assert default_block_columns(cpu, 1, 10**7) == 1 << 19
    assert default_block_columns(cpu, 0, 10**7) == 1 << 19
    assert default_block_columns(cpu, 256, 10**7) == (1 << 19) // 256
    assert default_block_columns(cpu, 1 << 19, 10**6) == 1024
    assert default_block_columns(cpu, 256, 100) == 100
