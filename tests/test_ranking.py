"""`pmmrec.ranking`: `rank_histories`, the one path from histories to top-k that `PMMRec.recommend`, `pmmrec recommend`
and the server share, and its exact top-k.

Tables with only negative scores guard the padding row's mask (its zero score would otherwise win), and every
result is checked against a brute-force ranking in plain Python.
"""

from __future__ import annotations

import numpy as np
import pytest
import tiny
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pmmrec.ranking import NO_ITEM, RankQuery, csr, rank_histories, top_k


def brute_force(state: list[float], table: list[list[float]], k: int, exclude: set[int]) -> list[int]:
    scores = [(sum(a * b for a, b in zip(state, row, strict=True)), index) for index, row in enumerate(table)]
    eligible = [(score, index) for score, index in scores if index != 0 and index not in exclude]
    return [index for _, index in sorted(eligible, key=lambda pair: (-pair[0], pair[1]))[:k]]


def test_padding_row_is_never_returned_even_when_every_score_is_negative() -> None:
    table = torch.tensor([[0.0, 0.0], [-1.0, -2.0], [-3.0, -1.0], [-0.5, -0.5]])
    states = torch.tensor([[1.0, 1.0], [2.0, 0.5]])
    scores, indices = top_k(states, table, k=3)
    assert (indices != 0).all()
    assert indices.tolist() == [[3, 1, 2], [3, 1, 2]]
    assert (scores < 0).all()


def test_excluded_items_are_never_returned_and_rows_run_out_with_no_item() -> None:
    table = torch.tensor([[0.0], [-1.0], [-2.0], [-3.0], [-4.0]])
    states = torch.tensor([[1.0], [1.0], [1.0]])
    indptr, items = csr([[1, 2], [], [1, 2, 3, 4]])
    scores, indices = top_k(states, table, k=3, exclude_indptr=indptr, exclude_items=items)
    assert indices[0].tolist() == [3, 4, NO_ITEM] and torch.isneginf(scores[0, 2])
    assert indices[1].tolist() == [1, 2, 3]
    assert indices[2].tolist() == [NO_ITEM] * 3 and torch.isneginf(scores[2]).all()


def test_k_past_the_catalogue_is_cut_to_its_size() -> None:
    table = torch.randn(6, 4)
    _, indices = top_k(torch.randn(2, 4), table, k=50)
    assert indices.shape == (2, 5)
    assert sorted(indices[0].tolist()) == [1, 2, 3, 4, 5]


def test_a_transposed_column_major_table_gives_the_same_ranking() -> None:
    generator = torch.Generator().manual_seed(0)
    table = -torch.rand(100, 8, generator=generator)  # all scores negative for positive states
    states = torch.rand(3, 8, generator=generator)
    columns = table.T.contiguous()
    expected = top_k(states, table, 7)
    got = top_k(states, columns.T, 7)
    torch.testing.assert_close(got[0], expected[0])
    assert torch.equal(got[1], expected[1])


@pytest.mark.parametrize(
    ("states", "table", "message"),
    [
        (torch.zeros(2, 3), torch.zeros(4, 5), "must be"),
        (torch.zeros(3), torch.zeros(4, 3), "must be"),
    ],
)
def test_shapes_are_checked(states: torch.Tensor, table: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        top_k(states, table, 1)


def test_k_and_the_exclusion_layout_are_checked() -> None:
    with pytest.raises(ValueError, match="k must be positive"):
        top_k(torch.zeros(1, 2), torch.zeros(3, 2), 0)
    with pytest.raises(ValueError, match="give both"):
        top_k(torch.zeros(1, 2), torch.zeros(3, 2), 1, exclude_indptr=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="2 entries"):
        top_k(torch.zeros(1, 2), torch.zeros(3, 2), 1, torch.tensor([0, 1, 1]), torch.tensor([1]))


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    items=st.integers(1, 12),
    batch=st.integers(1, 4),
    k=st.integers(1, 15),
)
def test_matches_a_brute_force_ranking(data: st.DataObject, items: int, batch: int, k: int) -> None:
    values = st.integers(-20, 5)  # mostly negative scores, integers so that there are no float ties to argue about
    table = [[0, 0]] + [[data.draw(values), data.draw(values)] for _ in range(items)]
    states = [[data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3))] for _ in range(batch)]
    excludes = [data.draw(st.lists(st.integers(1, items), max_size=items)) for _ in range(batch)]
    indptr, flat = csr(excludes)
    scores, indices = top_k(torch.tensor(states, dtype=torch.float64), torch.tensor(table, dtype=torch.float64), k, indptr, flat)
    for row in range(batch):
        got = [index for index in indices[row].tolist() if index != NO_ITEM]
        expected = brute_force(states[row], table, k, set(excludes[row]))
        assert 0 not in got and not set(got) & set(excludes[row])
        assert len(got) == len(expected)
        expected_scores = sorted((sum(a * b for a, b in zip(states[row], table[i], strict=True)) for i in expected), reverse=True)
        assert [float(s) for s in scores[row, : len(got)]] == [float(s) for s in expected_scores]


def test_csr_layout_of_per_user_lists() -> None:
    """Guards against an indptr that does not start at 0 or does not accumulate the lists' lengths."""
    indptr, items = csr([[4, 2], [], [7]])
    assert indptr.tolist() == [0, 2, 2, 3] and items.tolist() == [4, 2, 7]
    assert indptr.dtype == items.dtype == torch.long


def test_top_k_of_a_catalogue_without_items_is_empty() -> None:
    """A table holding only the padding row: no item to recommend, an empty [B, 0] answer (not an error)."""
    scores, indices = top_k(torch.randn(3, 4), torch.zeros(1, 4), k=5)
    assert scores.shape == indices.shape == (3, 0) and indices.dtype == torch.long


# ---- rank_histories: the one path from histories to top-k --------------------------------------------------------


def _alone(user: torch.nn.Module, table: torch.Tensor, history: list[int], max_length: int) -> list[float]:
    """The state after one history, encoded on its own (no padding in the batch), as a plain list."""
    window = torch.tensor([history[-max_length:]])
    with torch.inference_mode():
        return user(table[window], torch.ones_like(window, dtype=torch.bool))[0, -1].tolist()


def test_rank_histories_ranks_each_query_as_a_loop_over_users_would() -> None:
    """Guards the left padding and its mask, the max_length window, the exclusions and each query's own k: a batch
    of histories of different lengths gives each user the ranking of their own state against the table."""
    user = tiny.tiny_user_encoder(seed=3, max_length=4)
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(13, user.dim, generator=generator)
    table[0] = 0.0
    queries = [
        RankQuery([5], 3),
        RankQuery([1, 2, 3, 4, 5, 6, 7], 12, exclude=[7, 6]),  # longer than max_length: its last 4 items are read
        RankQuery([9, 9, 2], 20, exclude=list(range(1, 11))),  # only items 11 and 12 are eligible
    ]
    rankings = rank_histories(user, table, queries, max_length=4)
    for query, ranking in zip(queries, rankings, strict=True):
        state = _alone(user, table, list(query.history), 4)
        expected = brute_force(state, table.tolist(), query.k, set(query.exclude))
        assert ranking.indices.tolist() == expected
        naive = [sum(a * b for a, b in zip(state, table[i].tolist(), strict=True)) for i in expected]
        np.testing.assert_allclose(ranking.scores.numpy(), naive, rtol=1e-4, atol=1e-5)
    assert [len(r.indices) for r in rankings] == [3, 10, 2]


def test_rank_histories_takes_catalogue_indices_only() -> None:
    """Index convention: 1..N; row 0 is padding and N+1 is past the table (a 0-based caller must add 1 first)."""
    user = tiny.tiny_user_encoder(max_length=4)
    table = torch.randn(6, user.dim)
    for history in ([], [0, 1], [1, 6]):
        with pytest.raises(ValueError, match=r"empty|catalogue indices 1\.\.5"):
            rank_histories(user, table, [RankQuery(history, 2)], max_length=4)
    assert rank_histories(user, table, [], max_length=4) == []


def test_rank_histories_asks_an_approximate_index_with_the_exclusions() -> None:
    """With an index, its answer is used (empty slots dropped) and it gets every query's exclusion list."""
    asked: list[tuple[int, list[list[int]]]] = []

    class Fake:
        def search(
            self, states: torch.Tensor, table: torch.Tensor, k: int, exclude: list[list[int]]
        ) -> tuple[torch.Tensor, torch.Tensor]:
            asked.append((k, exclude))
            indices = torch.tensor([[4, 2, NO_ITEM], [1, NO_ITEM, NO_ITEM]])
            return torch.tensor([[3.0, 2.0, float("-inf")], [1.0, float("-inf"), float("-inf")]]), indices

    user = tiny.tiny_user_encoder(max_length=4)
    table = torch.randn(6, user.dim)
    queries = [RankQuery([1], 3, exclude=[1]), RankQuery([2, 3], 1)]
    rankings = rank_histories(user, table, queries, max_length=4, index=Fake())
    assert asked == [(3, [[1], []])]
    assert [r.indices.tolist() for r in rankings] == [[4, 2], [1]]
    assert rankings[0].scores.tolist() == [3.0, 2.0]


# ---- the user encoder's final state: what ranking reads ----------------------------------------------------------


@pytest.mark.parametrize(("layers", "heads", "dim"), [(1, 1, 16), (2, 2, 32), (3, 4, 32)])
def test_final_states_equal_the_last_column_of_forward(layers: int, heads: int, dim: int) -> None:
    """SASRec's `final_states` computes its last block for the last position only; it must give `forward`'s last
    column (to float32 rounding) for left-padded windows of every length, and be what `user_states` returns."""
    from pmmrec.components.user_sasrec import SASRecConfig, SASRecUserEncoder

    torch.manual_seed(layers)
    user = SASRecUserEncoder(SASRecConfig(dim=dim, heads=heads, layers=layers, max_length=7)).eval()
    lengths = torch.tensor([7, 1, 3, 6, 2])
    mask = torch.arange(7)[None, :] >= (7 - lengths)[:, None]
    embeddings = torch.randn(5, 7, dim) * mask[:, :, None]
    with torch.inference_mode():
        expected = user(embeddings, mask)[:, -1]
        final = user.final_states(embeddings, mask)
        short = user.final_states(embeddings[:, 4:], mask[:, 4:])  # a window shorter than max_length
    torch.testing.assert_close(final, expected, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(short, user(embeddings[:, 4:], mask[:, 4:])[:, -1], rtol=1e-5, atol=1e-5)
    table = torch.randn(9, dim)
    table[0] = 0.0
    windows = torch.tensor([[0, 0, 3, 4], [5, 6, 7, 8]])
    from pmmrec.ranking import user_states

    with torch.inference_mode():
        full = user(table[windows], windows > 0)[:, -1]
    torch.testing.assert_close(user_states(user, table, windows, windows > 0), full, rtol=1e-5, atol=1e-5)


def test_final_states_outside_eval_or_for_other_blocks_is_forward() -> None:
    """In training mode (dropout) or for a block it does not know (pre-LN here), `final_states` is `forward`'s."""
    from pmmrec.components.user_sasrec import SASRecConfig, SASRecUserEncoder

    user = SASRecUserEncoder(SASRecConfig(dim=16, heads=2, layers=2, max_length=5, dropout=0.5)).train()
    embeddings, mask = torch.randn(3, 5, 16), torch.ones(3, 5, dtype=torch.bool)
    torch.manual_seed(0)
    trained = user.final_states(embeddings, mask)
    torch.manual_seed(0)
    assert torch.equal(trained, user(embeddings, mask)[:, -1])  # same dropout draws: the same path
    user.eval()
    for block in user.blocks:
        block.norm_first = True
    with torch.inference_mode():
        assert torch.equal(user.final_states(embeddings, mask), user(embeddings, mask)[:, -1])
