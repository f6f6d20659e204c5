"""The demo's building blocks: new-item hold-out, popularity baseline, result rows, the plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pmmrec.data import leave_one_out, load_dataset, write_dataset
from pmmrec.demo import cold_mask, hold_out_new_items, plot_curves, popularity_ranks, prepare_output, summarise
from pmmrec.errors import PmmrecError


def _dataset(root: Path) -> Path:
    items = [f"i{n}" for n in range(1, 11)]
    users = {f"u{n}": [items[(n + k) % 10] for k in range(6)] for n in range(8)}
    return write_dataset(
        root,
        name="toy",
        item_ids=items,
        item_texts=[f"title {n}" for n in range(1, 11)],
        user_ids=list(users),
        user_items=list(users.values()),
        provenance={"source": "test"},
        preprocessing={},
    )


def test_new_items_only_ever_appear_as_a_last_item(tmp_path: Path) -> None:
    source = load_dataset(_dataset(tmp_path / "toy"))
    folder, count = hold_out_new_items(source, tmp_path / "held", fraction=0.4)
    held = load_dataset(folder)
    cold_ids = {
        item for item in source.item_ids if item not in {held.item_ids[i - 1] for s in held.sequences for i in s[:-1]}
    }
    assert count > 0
    for original, sequence in zip(source.sequences, held.sequences, strict=True):
        assert sequence[-1] == original[-1]
        assert not {held.item_ids[i - 1] for i in sequence[:-1]} & cold_ids
    mask = cold_mask(held)
    split = leave_one_out(held.sequences)
    seen = set(np.concatenate(split.train).tolist())
    assert mask.tolist() == [int(t) not in seen for t in split.test_target]


def test_popularity_ranks_match_a_direct_count(tmp_path: Path) -> None:
    dataset = load_dataset(_dataset(tmp_path / "toy"))
    ranks = popularity_ranks(dataset)
    split = leave_one_out(dataset.sequences)
    counts = np.zeros(dataset.num_items + 1)
    for sequence in split.train:
        for item in sequence:
            counts[item] += 1
    for user, target in enumerate(split.test_target):
        history = set(split.test_history[user].tolist())
        key = (counts[target], -target)
        better = sum(
            1
            for item in range(1, dataset.num_items + 1)
            if item != target and item not in history and (counts[item], -item) > key
        )
        assert ranks[user] == 1 + better


def test_summarise_reports_cold_users_separately() -> None:
    ranks = np.array([1, 2, 20, 5])
    cold = np.array([False, True, True, False])
    row = summarise("m", ranks, cold)
    assert row["hr@10"] == pytest.approx(0.75)
    assert row["cold_hr@10"] == pytest.approx(0.5)
    assert row["cold_users"] == 2
    assert summarise("m", ranks, np.zeros(4, dtype=bool))["cold_ndcg@10"] is None


def test_plot_is_a_png(tmp_path: Path) -> None:
    plot_curves({"a": [0.1, 0.2, 0.15], "b": [0.05, 0.08, 0.12]}, tmp_path / "plot.png")
    with Image.open(tmp_path / "plot.png") as image:
        assert image.format == "PNG" and image.size == (720, 420)


def test_demo_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(PmmrecError, match="not made by `pmmrec demo`"):
        prepare_output(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "user data"
    fresh = prepare_output(tmp_path / "new")
    (fresh / "runs").mkdir()
    prepare_output(fresh)
    assert not (fresh / "runs").exists()


def test_the_demo_publishes_exactly_the_catalogued_repos() -> None:
    from pmmrec.cards import load_catalogue
    from pmmrec.components import component_class
    from pmmrec.demo import PUBLISHED_SLOTS, published_repo

    catalogue = {entry["name"]: entry for entry in load_catalogue()}
    assert set(catalogue) == {published_repo(slot) for slot in PUBLISHED_SLOTS}
    for slot in PUBLISHED_SLOTS:
        entry = catalogue[published_repo(slot)]
        assert entry["slot"] == slot and entry["recommended_revision"] == "v1"
        component_class(entry["type"])
