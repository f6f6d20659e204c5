"""`pmmrec.serving.int8_scan`: the int8 first pass with float32 re-scoring returns the float32 ranking.

What is proved in the module's docstring is checked here: the kernel's scores stay within the bound of the exact
scores (float64), and `search` returns what `pmmrec.ranking.top_k` returns: the same items in the same order where
scores are apart, the same scores to float32 precision, never an excluded or padding item. Tables include the
hard cases: very different row norms, clusters of near-duplicates (near-ties), all-negative scores, rows appended
after the int8 copy was made, and states for which the bound is no help (zero, or too many candidates).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pmmrec.ranking import NO_ITEM, csr, top_k
from pmmrec.serving import AnnConfig, AnnIndex, int8_scan
from pmmrec.serving.catalogue import Catalogue
from pmmrec.serving.int8_scan import Int8Table

pytestmark = pytest.mark.skipif(not int8_scan.available(), reason="this torch has no usable int8 kernel")


def make_table(kind: str, items: int, dim: int, seed: int) -> torch.Tensor:
    """A float32 table [items + 1, dim] with row 0 = padding, of one of several hard shapes."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(items + 1, dim, generator=generator)
    if kind == "norms":  # row norms from 0.01 to 100
        table *= torch.logspace(-2, 2, items + 1)[torch.randperm(items + 1, generator=generator)][:, None]
    elif kind == "clusters":  # groups of near-duplicates: many near-ties
        centres = torch.randn(max(1, items // 20), dim, generator=generator) * 5
        table = centres[torch.randint(0, centres.shape[0], (items + 1,), generator=generator)]
        table = table + 1e-3 * torch.randn(items + 1, dim, generator=generator)
    elif kind == "negative":  # every score negative for positive states
        table = -table.abs()
    table[0] = 0.0
    return table


def check_same_ranking(
    states: torch.Tensor, table: torch.Tensor, k: int, exclude: list[list[int]], got: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """`got` is top_k's ranking: per state, the float64 scores of its items equal its scores, its scores are the
    best k eligible ones (to float32 precision), its items are distinct, eligible, and in order; where neighbouring
    reference scores are apart, the very same items."""
    scores, indices = got
    want_scores, want_indices = top_k(states, table, k, *csr(exclude))
    assert scores.shape == indices.shape == want_scores.shape
    exact = states.double() @ table.double().T
    for row in range(states.shape[0]):
        found = [int(i) for i in indices[row] if int(i) != NO_ITEM]
        wanted = [int(i) for i in want_indices[row] if int(i) != NO_ITEM]
        assert len(found) == len(wanted), (found, wanted)
        assert len(set(found)) == len(found) and 0 not in found and not set(found) & set(exclude[row])
        tolerance = 1e-5 * float(states[row].double().norm() * table.double().norm(dim=1).max()) + 1e-12
        np.testing.assert_allclose(scores[row, : len(found)].double().numpy(), exact[row, found].numpy(), atol=tolerance)
        np.testing.assert_allclose(
            scores[row, : len(found)].numpy(), want_scores[row, : len(wanted)].numpy(), atol=tolerance
        )
        assert torch.isneginf(scores[row, len(found) :]).all() and (indices[row, len(found) :] == NO_ITEM).all()
        reference = exact[row, wanted].numpy()
        for position, item in enumerate(wanted):
            gaps = [abs(reference[position] - reference[other]) for other in (position - 1, position + 1) if 0 <= other < len(wanted)]
            if all(gap > 2 * tolerance for gap in gaps) and (position < len(wanted) - 1 or len(wanted) < k):
                assert found[position] == item, (row, position, found, wanted)


@pytest.mark.parametrize("kind", ["gaussian", "norms", "clusters", "negative"])
def test_the_kernel_scores_stay_within_the_bound(kind: str) -> None:
    table = make_table(kind, 3000, 64, seed=1)
    scan = Int8Table.build(table)
    states = torch.randn(6, 64, generator=torch.Generator().manual_seed(2)) * torch.tensor([1e-3, 0.1, 1, 10, 100, 1e4])[:, None]
    approx, bound, usable = scan._approximate(states)
    assert usable.all()
    scaled = states.double() / states.double().abs().amax(dim=1, keepdim=True)
    error = (approx.double()[:, 1:] - scaled @ table.double()[1:].T).abs().amax(dim=1)
    assert (error <= bound).all(), (error, bound)
    assert (error > 0).all()  # the kernel is approximate: the bound is what makes the answer exact


@pytest.mark.parametrize("kind", ["gaussian", "norms", "clusters", "negative"])
@pytest.mark.parametrize("k", [1, 10, 200])
def test_search_returns_the_float32_ranking(kind: str, k: int) -> None:
    table = make_table(kind, 5000, 48, seed=3)
    scan = Int8Table.build(table)
    generator = torch.Generator().manual_seed(4)
    states = torch.randn(5, 48, generator=generator)
    if kind == "negative":
        states = states.abs()
    exclude = [torch.randint(1, 5001, (n,), generator=generator).tolist() for n in (0, 1, 30, 300, 7)]
    check_same_ranking(states, table, k, exclude, scan.search(states, table, k, exclude))


def test_non_tied_rankings_are_identical_to_top_k() -> None:
    table = make_table("gaussian", 20000, 96, seed=5)
    scan = Int8Table.build(table)
    states = torch.randn(8, 96, generator=torch.Generator().manual_seed(6))
    exclude = [list(range(1, 50 * row + 2)) for row in range(8)]
    scores, indices = scan.search(states, table, 10, exclude)
    want_scores, want_indices = top_k(states, table, 10, *csr(exclude))
    assert torch.equal(indices, want_indices)
    torch.testing.assert_close(scores, want_scores, rtol=1e-5, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(
    items=st.integers(1, 400),
    dim=st.integers(2, 40),
    batch=st.integers(1, 5),
    k=st.integers(1, 420),
    kind=st.sampled_from(["gaussian", "norms", "clusters", "negative"]),
    seed=st.integers(0, 10_000),
    data=st.data(),
)
def test_search_matches_top_k_on_any_table(
    items: int, dim: int, batch: int, k: int, kind: str, seed: int, data: st.DataObject
) -> None:
    table = make_table(kind, items, dim, seed)
    scan = Int8Table.build(table)
    states = torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed + 1))
    exclude = [data.draw(st.lists(st.integers(1, items), max_size=items)) for _ in range(batch)]
    check_same_ranking(states, table, k, exclude, scan.search(states, table, k, exclude))


def test_rows_appended_after_the_copy_are_ranked_exactly() -> None:
    table = make_table("gaussian", 4000, 32, seed=7)
    scan = Int8Table.build(table[:3001])  # items 3001..4000 come later
    assert scan.covered == 3000
    states = torch.randn(4, 32, generator=torch.Generator().manual_seed(8))
    exclude = [[3001, 3500], [], [1, 2, 3], list(range(3001, 4001))]
    check_same_ranking(states, table, 25, exclude, scan.search(states, table, 25, exclude))
    assert scan.extended(table, block_rows=1001) is scan  # 1000 new rows: not yet a block
    grown = scan.extended(table, block_rows=1000)
    assert grown.covered == 4000 and len(grown.blocks) == 2
    check_same_ranking(states, table, 25, exclude, grown.search(states, table, 25, exclude))
    with pytest.raises(ValueError, match="int8 copy holds 4000"):
        grown.search(states, table[:3001], 5, [[]] * 4)


def test_states_the_bound_cannot_help_are_ranked_by_the_float32_product() -> None:
    table = make_table("gaussian", 2000, 16, seed=9)
    states = torch.randn(3, 16, generator=torch.Generator().manual_seed(10))
    states[1] = 0.0  # every score 0: no floor to prune by
    exclude: list[list[int]] = [[5], [], [7, 8]]
    scan = Int8Table.build(table)
    scores, indices = scan.search(states, table, 10, exclude)
    assert (scores[1] == 0).all() and len(set(indices[1].tolist())) == 10 and 0 not in indices[1].tolist()
    check_same_ranking(states[[0, 2]], table, 10, [exclude[0], exclude[2]], (scores[[0, 2]], indices[[0, 2]]))
    few_candidates = Int8Table(scan.blocks, max_candidates=0)  # every state falls back
    assert torch.equal(few_candidates.search(states, table, 10, exclude)[1], top_k(states, table, 10, *csr(exclude))[1])
    large_batch = Int8Table(scan.blocks, max_batch=2)  # 3 states: the float32 product for the batch
    assert torch.equal(large_batch.search(states, table, 10, exclude)[1], top_k(states, table, 10, *csr(exclude))[1])


def test_k_past_the_catalogue_and_tiny_catalogues() -> None:
    table = make_table("gaussian", 3, 8, seed=11)
    scan = Int8Table.build(table)
    states = torch.randn(2, 8, generator=torch.Generator().manual_seed(12))
    scores, indices = scan.search(states, table, 10, [[2], [1, 2, 3]])
    assert indices.shape == scores.shape == (2, 3) and torch.isneginf(scores[0, 2:]).all()
    assert sorted(i for i in indices[0].tolist() if i != NO_ITEM) == [1, 3] and (indices[1] == NO_ITEM).all()
    empty = Int8Table.build(torch.zeros(1, 8))
    assert empty.search(states, torch.zeros(1, 8), 5, [[], []])[1].shape == (2, 0)
    with pytest.raises(ValueError, match="not finite"):
        Int8Table.build(torch.full((3, 8), float("nan")))


def test_a_catalogue_with_the_int8_scan_ranks_as_the_float32_one_through_appends() -> None:
    table = make_table("norms", 600, 24, seed=13)
    ids = [f"item-{i}" for i in range(1, 601)]
    fast = Catalogue(ids, ids, table, spare=4, scan="int8", int8_min_items=0, int8_block=50)
    plain = Catalogue(ids, ids, table, spare=4, scan="fp32")
    assert fast.rows and fast.snapshot().int8 is not None and not plain.rows and plain.snapshot().int8 is None
    first = fast.snapshot()
    generator = torch.Generator().manual_seed(14)
    for batch in range(6):  # 6 x 20 appends: past the spare rows (the buffer grows) and past the 50-row block
        vectors = torch.randn(20, 24, generator=generator)
        names = [f"new-{batch}-{n}" for n in range(20)]
        with fast.lock, plain.lock:
            fast.extend(names, names, vectors)
            plain.extend(names, names, vectors)
    snapshot = fast.snapshot()
    assert snapshot.count == 720 and snapshot.int8 is not None and snapshot.int8.covered >= 700
    assert torch.equal(snapshot.table, plain.snapshot().table)
    states = torch.randn(3, 24, generator=generator)
    exclude = [[1, 700], [], list(range(600, 721))]
    check_same_ranking(states, snapshot.table, 30, exclude, fast.index_for(snapshot).search(states, snapshot.table, 30, exclude))  # type: ignore[union-attr]
    # an older snapshot still ranks its own catalogue
    assert first.count == 600 and first.int8 is not None and first.int8.covered == 600
    check_same_ranking(states, first.table, 30, [[], [], []], first.int8.search(states, first.table, 30, [[], [], []]))


def test_small_catalogues_and_the_fp32_option_keep_the_column_major_float32_table() -> None:
    table = make_table("gaussian", 100, 8, seed=15)
    ids = [str(i) for i in range(1, 101)]
    assert not Catalogue(ids, ids, table, scan="int8", int8_min_items=101).rows  # below the threshold
    assert Catalogue(ids, ids, table, scan="int8", int8_min_items=100).rows
    assert not Catalogue(ids, ids, table, scan="fp32", int8_min_items=0).rows


def test_no_int8_copy_when_the_approximate_index_ranks_from_the_start() -> None:
    table = make_table("gaussian", 100, 8, seed=16)
    ids = [str(i) for i in range(1, 101)]
    applies = Catalogue(ids, ids, table, scan="int8", int8_min_items=0, ann=AnnIndex(AnnConfig(min_items=100), 8))
    assert not applies.rows and applies.snapshot().int8 is None
    assert applies.index_for(applies.snapshot()) is applies.ann
    later = Catalogue(ids, ids, table, scan="int8", int8_min_items=0, ann=AnnIndex(AnnConfig(min_items=101), 8))
    assert later.rows and later.snapshot().int8 is not None  # exact int8 search until the catalogue reaches 101
    assert later.index_for(later.snapshot()) is later.snapshot().int8


def test_the_int8_copy_built_in_the_background_covers_items_appended_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server builds the copy in a thread: until it is published requests are ranked in float32, and items
    appended while it is built are ranked exactly once it is (scored in float32 as rows past the copy)."""
    import threading

    table = make_table("gaussian", 300, 16, seed=16)
    ids = [f"item-{i}" for i in range(1, 301)]
    release, building = threading.Event(), threading.Event()
    build = Int8Table.build

    def slow_build(rows: torch.Tensor, *args: object) -> Int8Table:
        building.set()
        release.wait(30)
        return build(rows)

    monkeypatch.setattr(Int8Table, "build", staticmethod(slow_build))
    catalogue = Catalogue(ids, ids, table, scan="int8", int8_min_items=0, int8_in_background=True)
    assert building.wait(30) and not catalogue.int8_ready.is_set()
    assert catalogue.index_for(catalogue.snapshot()) is None  # float32 until the copy is ready
    vectors = torch.randn(5, 16, generator=torch.Generator().manual_seed(17))
    with catalogue.lock:
        catalogue.extend([f"new-{n}" for n in range(5)], [f"new-{n}" for n in range(5)], vectors)
    release.set()
    assert catalogue.int8_ready.wait(30)
    snapshot = catalogue.snapshot()
    assert snapshot.count == 305 and snapshot.int8 is not None and snapshot.int8.covered == 300
    states = torch.randn(2, 16, generator=torch.Generator().manual_seed(18))
    exclude: list[list[int]] = [[301], []]
    check_same_ranking(states, snapshot.table, 12, exclude, snapshot.int8.search(states, snapshot.table, 12, exclude))
    ranked = snapshot.int8.search(states, snapshot.table, 305, [[], []])[1]
    assert {301, 302, 303, 304, 305} <= set(ranked[0].tolist())  # appended items are ranked, by the copy's search
