"""The `ivf` approximate backend: a 4-bit quantised scan whose best candidates are re-scored exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pmmrec.data import load_dataset
from pmmrec.errors import ConfigError
from pmmrec.ranking import csr, top_k
from pmmrec.serving import AnnConfig, AnnIndex, RecommenderService, ServeOptions, build_service
from pmmrec.serving.ivf import code_count, list_count

faiss = pytest.importorskip("faiss", reason="faiss-cpu (the serve extra) is not installed")


def clustered_table(items: int, dim: int, clusters: int, seed: int = 0) -> torch.Tensor:
    """[items + 1, dim], row 0 padding: cluster centres plus noise, norms between 5 and 15 (as serve_ann.py)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=generator)
    rows = centres[torch.randint(0, clusters, (items,), generator=generator)] + 0.7 * torch.randn(items, dim, generator=generator)
    rows = rows / rows.norm(dim=1, keepdim=True) * (5.0 + 10.0 * torch.rand(items, 1, generator=generator))
    return torch.cat([torch.zeros(1, dim), rows])


def queries(table: torch.Tensor, count: int, seed: int = 1) -> tuple[dict[str, torch.Tensor], list[list[int]]]:
    """`near` (one history item plus noise) and `mix` (the mean of 5 plus noise) states, and the 5-item histories."""
    rng = np.random.default_rng(seed)
    histories = [rng.choice(np.arange(1, table.shape[0]), 5, replace=False).tolist() for _ in range(count)]
    noise = torch.from_numpy(rng.standard_normal((count, table.shape[1])).astype(np.float32))
    near = torch.stack([table[h[-1]] for h in histories]) + 0.3 * noise
    mix = torch.stack([table[h].mean(0) for h in histories]) + noise
    return {"near": near, "mix": mix}, histories


@pytest.fixture(scope="module")
def table() -> torch.Tensor:
    return clustered_table(4000, 32, 40)


@pytest.fixture(scope="module")
def index(table: torch.Tensor) -> AnnIndex:
    return AnnIndex.build(AnnConfig(backend="ivf"), table)


def test_the_defaults_pick_lists_and_codes_by_size() -> None:
    assert [list_count(n) for n in (1, 4000, 200_000, 1_000_000, 10**12)] == [16, 128, 1024, 2048, 65_536]
    assert code_count(384, 2) == 192 and code_count(32, 2) == 16 and code_count(30, 2) == 10
    assert code_count(10, 4) == 2 and code_count(7, 2) == 7  # no even divisor: one code per dimension


def test_ivf_recall_against_exact_search_for_both_query_kinds(index: AnnIndex, table: torch.Tensor) -> None:
    states, histories = queries(table, 60)
    assert len(index) == 4000 and index.description == "faiss IVF-PQ 4-bit scan, exact re-scoring"
    for kind, state in states.items():
        _, approximate = index.search(state, table, 10, histories)
        _, exact = top_k(state, table, 10, *csr(histories))
        hits = sum(len(set(a) & set(e)) for a, e in zip(approximate.tolist(), exact.tolist(), strict=True))
        assert hits / exact.numel() >= 0.95, kind


def test_every_returned_score_is_the_exact_score_and_a_full_scan_is_exact_search(index: AnnIndex, table: torch.Tensor) -> None:
    states, histories = queries(table, 8, seed=2)
    scores, indices = index.search(states["mix"], table, 10, histories)
    for row in range(8):
        torch.testing.assert_close(scores[row], table[indices[row]] @ states["mix"][row])  # float32 rounding
        assert torch.all(scores[row, :-1] >= scores[row, 1:])
    everything = AnnIndex(index.config.model_copy(update={"ivf_probe_share": 1.0, "rescore": 4000}), 32, index._index, index.count)
    got_scores, got = everything.search(states["mix"], table, 10, histories)
    want_scores, want = top_k(states["mix"], table, 10, *csr(histories))
    assert got.tolist() == want.tolist()
    torch.testing.assert_close(got_scores, want_scores)


def test_exclusions_are_honoured_and_the_scan_widens_until_enough_items_remain(index: AnnIndex, table: torch.Tensor) -> None:
    states, _ = queries(table, 4, seed=3)
    _, best = top_k(states["near"], table, 10)
    excluded = [best[0].tolist(), [], list(range(1, 3996)), list(range(1, 4001))]
    narrow = AnnIndex(index.config.model_copy(update={"ivf_probe_share": 1 / 128, "rescore": 20}), 32, index._index, index.count)
    _, indices = narrow.search(states["near"], table, 10, excluded)
    for row in range(4):
        got = [i for i in indices[row].tolist() if i != -1]
        assert not set(got) & set(excluded[row]) and 0 not in got
    assert sorted(i for i in indices[2].tolist() if i != -1) == [3996, 3997, 3998, 3999, 4000]
    assert indices[3].tolist() == [-1] * 10
    assert len(set(indices[1].tolist())) == 10


def test_a_saved_ivf_index_loads_and_added_items_are_found(index: AnnIndex, table: torch.Tensor, tmp_path: Path) -> None:
    path = tmp_path / "ivf.index"
    index.save(path)
    loaded = AnnIndex.load(AnnConfig(backend="ivf"), 32, path, 4000)
    states, histories = queries(table, 5, seed=4)
    assert loaded.search(states["near"], table, 10, histories)[1].tolist() == index.search(states["near"], table, 10, histories)[1].tolist()
    newcomer = 40.0 * states["near"][0] / states["near"][0].norm()  # the best item for the first state, by far
    grown = torch.cat([table, newcomer[None]])
    loaded.add(np.array([4001]), newcomer[None])
    assert len(loaded) == 4001 and loaded.search(states["near"][:1], grown, 1, [[]])[1].tolist() == [[4001]]
    with pytest.raises(ConfigError, match="holds 4000 ivf items, expected 3999"):
        AnnIndex.load(AnnConfig(backend="ivf"), 32, path, 3999)


def test_ivf_needs_enough_items_to_train_its_codes() -> None:
    with pytest.raises(ConfigError, match="at least 16 items"):
        AnnIndex.build(AnnConfig(backend="ivf"), clustered_table(10, 8, 2))
    with pytest.raises(ConfigError, match="trained on the catalogue"):
        AnnIndex(AnnConfig(backend="ivf"), 8)


def test_the_server_ranks_through_the_ivf_index(encoded: RecommenderService, data_dir: Path, tmp_path: Path) -> None:
    options = ServeOptions(state_dir=tmp_path / "state", ann="ivf", ann_min_items=10, poll_interval=0)
    served = build_service(encoded.model, load_dataset(data_dir), options=options)
    assert served.catalogue.ann is not None and served.catalogue.ann.config.backend == "ivf"  # type: ignore[union-attr]
    searches: list[int] = []
    search = served.catalogue.ann.search
    served.catalogue.ann.search = lambda *args, **kwargs: searches.append(1) or search(*args, **kwargs)  # type: ignore[method-assign]
    approximate = served.recommend(history=[encoded.item_ids[0]], k=5)["items"]
    exact = encoded.recommend(history=[encoded.item_ids[0]], k=5)["items"]
    assert searches == [1]
    assert [item["item_id"] for item in approximate] == [item["item_id"] for item in exact]  # 300 re-scored: all
    assert [item["score"] for item in approximate] == pytest.approx([item["score"] for item in exact], abs=1e-5)
    served.close()
    assert len(list((tmp_path / "state" / "ann").glob("*ivf*.index"))) == 1
