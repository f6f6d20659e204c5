"""The demo's building blocks: new-item hold-out, popularity and content-knn baselines, result rows with
intervals and paired tests, the matplotlib plots."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pmmrec.baselines import (
    BaselineConfig,
    baseline_grid,
    baseline_ranks,
    content_knn_states,
    popularity_table,
    tune_baseline,
)
from pmmrec.data import (
    hashed_items,
    hold_out_new_items,
    leave_one_out,
    load_dataset,
    new_target_mask,
    newest_items,
    write_dataset,
)
from pmmrec.data.new_items import new_item_count, new_items_record
from pmmrec.demo import prepare_output
from pmmrec.demo.report import (
    comparisons,
    ndcg_bar_figure,
    plot_test_ndcg,
    plot_validation_curves,
    results_markdown,
    results_text,
    row_summary,
)
from pmmrec.demo.wording import significance_cell, verdict_sentence
from pmmrec.errors import PmmrecError
from pmmrec.stats import holm


def _dataset(root: Path, held_out: float = 0.0) -> Path:
    items = [f"i{n}" for n in range(1, 11)]
    users = [[items[(n + k) % 10] for k in range(6)] for n in range(8)]
    if held_out:
        users = hold_out_new_items(users, hashed_items(items, held_out))
    return write_dataset(
        root,
        name="toy",
        item_ids=items,
        item_texts=[f"title {n}" for n in range(1, 11)],
        user_ids=[f"u{n}" for n in range(8)],
        user_items=users,
        provenance={"source": "test"},
        preprocessing={},
    )


def test_new_items_occur_only_as_validation_or_test_targets(tmp_path: Path) -> None:
    """Guards the valid/test disagreement: new items are held out of validation histories too, not only test."""
    items = [f"i{n}" for n in range(1, 11)]
    original = [[items[(n + k) % 10] for k in range(6)] for n in range(8)]
    new = hashed_items(items, 0.4)
    held = hold_out_new_items(original, new)
    assert new and len(new) < len(items)
    for before, after in zip(original, held, strict=True):
        assert after[-2:] == before[-2:]
        assert not set(after[:-2]) & set(new)
    dataset = load_dataset(_dataset(tmp_path / "held", 0.4))
    split = leave_one_out(dataset.sequences)
    seen = set(np.concatenate(split.train).tolist())
    for which, targets in (("valid", split.valid_target), ("test", split.test_target)):
        assert new_target_mask(split, which).tolist() == [int(t) not in seen for t in targets]
    assert new_target_mask(split, "valid").any() and new_target_mask(split, "test").any()


def test_new_items_are_the_last_first_seen_and_the_record_counts_them_exactly() -> None:
    """Issue 24: cold start in time. Hand-computed: first seen a@1 b@2 c@3 d@4 e@5, share 0.4 -> d and e (2 of 5)."""
    first_seen = {"c": (3, 0), "a": (1, 0), "e": (5, 0), "b": (2, 0), "d": (4, 0)}
    assert newest_items(first_seen, 0.4) == ["d", "e"] and newest_items(first_seen, 0.0) == []
    assert new_item_count(5, 0.3) == 2 and new_item_count(5, 0.29) == 1  # 1.5 rounds up, 1.45 down
    before = [["a", "d", "b", "e"], ["b", "c", "a", "d"], ["a", "e", "c", "b"], ["c", "d", "e", "a"]]
    after = hold_out_new_items(before, ["d", "e"])
    assert after == [["a", "b", "e"], ["b", "c", "a", "d"], ["a", "c", "b"], ["c", "e", "a"]]
    record = new_items_record("first-seen", 0.4, ["d", "e"], before, after, cut="t4")
    assert (record["held_out"], record["items"], record["left_catalogue"]) == (2, 2, [])
    assert record["dropped_interactions"] == 1 + 0 + 1 + 1 and record["users_below_min_length"] == 0
    assert record["valid_target_users"] == 1 and record["test_target_users"] == 2  # valid: user 3; test: users 0, 1
    # counts before: a 4, b 3, c 3, d 3, e 3 -> ranks a 1, b 2, c 3, d 4, e 5 (ties by id)
    popularity = record["test_target_popularity"]
    assert popularity["interactions_before_hold_out"] == {"min": 3, "median": 3.0, "max": 3}
    assert popularity["most_popular"] == [
        {"item_id": "d", "interactions": 3, "popularity_rank": 4, "users": 1},
        {"item_id": "e", "interactions": 3, "popularity_rank": 5, "users": 1},
    ]
    assert record["never_in_training"] == 2  # d and e: no training prefix ([:-2]) holds them


def test_popularity_ranks_match_a_direct_count(tmp_path: Path) -> None:
    dataset = load_dataset(_dataset(tmp_path / "toy"))
    split = leave_one_out(dataset.sequences)
    ranks = baseline_ranks("popularity", dataset, split, "test")
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
    included = baseline_ranks("popularity", dataset, split, "test", exclude_seen=False)
    assert (included >= ranks).all() and (included > ranks).any()


def test_content_knn_scores_by_cosine_to_the_mean_of_the_history() -> None:
    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    normalised, users = content_knn_states(table, [np.array([1, 2]), np.array([1, 2, 2])], max_length=1)
    assert torch.allclose(users[0], torch.tensor([0.0, 1.0]))  # only the last item with max_length=1
    _, whole = content_knn_states(table, [np.array([1, 2])])
    mean = torch.tensor([0.5, 1.0])
    assert torch.allclose(whole[0], mean / mean.norm())
    assert torch.allclose(normalised[3], torch.tensor([1.0, 1.0]) / 2**0.5)


def test_content_knn_can_average_normalised_vectors() -> None:
    table = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 1.0]])
    _, raw = content_knn_states(table, [np.array([1, 2])])
    _, normalised = content_knn_states(table, [np.array([1, 2])], normalise=True)
    assert torch.allclose(raw[0], torch.tensor([2.0, 0.5]) / torch.tensor([2.0, 0.5]).norm())  # the long vector wins
    assert torch.allclose(normalised[0], torch.tensor([1.0, 1.0]) / 2**0.5)  # each item weighs the same


def test_popularity_can_count_a_recency_window() -> None:
    split = leave_one_out([np.array([1, 1, 2, 3, 9, 9]), np.array([2, 3, 3, 9, 9])])  # train: [1,1,2,3], [2,3,3]
    counts = popularity_table(split, 9).squeeze(1).round().tolist()
    assert counts[1:4] == [2, 2, 3]
    recent = popularity_table(split, 9, window=2).squeeze(1).round().tolist()
    assert recent[1:4] == [0, 1, 3]  # last two of each: [2, 3] and [3, 3]


def test_baselines_are_searched_on_validation_with_the_stated_budget(tmp_path: Path) -> None:
    """Issue 24: windows {1, 2, 3, 5, 10, 20, all} (x raw/normalised for content-knn), selected on validation,
    the test split ranked once at the selected configuration."""
    assert [c.window for c in baseline_grid("popularity")] == [1, 2, 3, 5, 10, 20, None]
    assert len(baseline_grid("content-knn")) == 14 and BaselineConfig(2, True) in baseline_grid("content-knn")
    dataset = load_dataset(_dataset(tmp_path / "toy"))
    split = leave_one_out(dataset.sequences)
    search = tune_baseline("popularity", dataset, split)
    assert search.valid_ndcg[search.selected] == max(search.valid_ndcg) and len(search.valid_ndcg) == 7
    window = search.config.window
    assert search.test_ranks.tolist() == baseline_ranks("popularity", dataset, split, "test", popularity_window=window).tolist()
    assert search.as_dict()["budget"] == 7
    table = torch.randn(dataset.num_items + 1, 6, generator=torch.Generator().manual_seed(0))
    knn = tune_baseline("content-knn", dataset, split, text_table=table)
    expected = baseline_ranks("content-knn", dataset, split, "valid", max_length=knn.config.window,
                              normalise=knn.config.normalise, text_table=table)  # fmt: skip
    assert knn.valid_ranks.tolist() == expected.tolist() and len(knn.valid_ndcg) == 14


def test_rows_carry_intervals_and_comparisons_carry_p_values() -> None:
    rng = np.random.default_rng(0)
    strong = [rng.integers(1, 6, size=300) for _ in range(3)]
    weak = [rng.integers(5, 60, size=300) for _ in range(3)]
    new = np.zeros(300, dtype=bool)
    new[:40] = True
    row = row_summary("strong", strong, new, searched="8 on validation")
    low, high = row["ndcg@10_ci"]
    assert low < row["ndcg@10"] < high and row["new_users"] == 40 and len(row["ndcg@10_per_seed"]) == 3
    assert row["new_ndcg@10_ci"][0] < row["new_ndcg@10"] < row["new_ndcg@10_ci"][1]
    tests = comparisons({"pmmrec-transfer": strong, "pmmrec-scratch": weak}, new)
    assert tests[0]["a"] == "pmmrec-transfer" and tests[0]["significant"] and tests[0]["p_bootstrap"] < 0.01
    assert tests[0]["subset"] == "all" and tests[0]["users"] == 300  # the subset label survives the user count
    assert tests[0]["seeds_a"] == 3 and 0 < tests[0]["differing"] <= 300 and tests[0]["sign_flip"] == "monte-carlo"
    pairs = [("pmmrec-transfer", "pmmrec-scratch", "all"), ("pmmrec-transfer", "pmmrec-scratch", "new")]
    table = comparisons({"pmmrec-transfer": strong, "pmmrec-scratch": weak}, new, pairs)
    assert [t["subset"] for t in table] == ["all", "new"] and table[1]["users"] == 40
    assert [t["p_holm"] for t in table] == pytest.approx(holm([t["p"] for t in table]))  # Holm within the table
    text = results_markdown([row], tests, ["a note"])
    assert "users that differ" in text and "Holm-adjusted within this table" in text and "a note" in text
    assert "| strong | 8 on validation |" in text


def test_plots_are_pngs(tmp_path: Path) -> None:
    plot_validation_curves({"a": [0.1, 0.2, 0.15], "b": [0.05, 0.08]}, {"popularity": 0.12}, tmp_path / "v.png", "t")
    row = {"model": "m", "ndcg@10": 0.2, "ndcg@10_ci": [0.1, 0.3], "new_ndcg@10": None}
    plot_test_ndcg([row], tmp_path / "t.png", "t")
    for name in ("v.png", "t.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.size[0] > 400


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


# ---- the report's words (issue 26) ------------------------------------------------------------------------------

SNAPSHOT = Path(__file__).parent / "golden" / "results_md_structure.txt"
DEMO_ROW_NAMES = ("popularity", "content-knn", "sasrec-id", "pmmrec-scratch", "pmmrec-transfer", "pmmrec-zero-shot")


def _report_inputs() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The demo's six rows over 300 seeded users (40 with a new-item target) and its five comparisons."""
    rng = np.random.default_rng(7)
    base = rng.integers(1, 40, size=300)
    new = np.zeros(300, dtype=bool)
    new[:40] = True
    ranks = {
        "popularity": [np.where(new, 300, base + 3)],
        "content-knn": [base + 9],
        "sasrec-id": [np.where(new, 300, np.maximum(base - 2, 1))],
        "pmmrec-scratch": [base],
        "pmmrec-transfer": [np.where(np.arange(300) < 3, 1, base)],  # 3 users differ from scratch: cannot be shown
        "pmmrec-zero-shot": [base + 8],
    }
    rows = [row_summary(name, ranks[name], new, "8 on validation") for name in DEMO_ROW_NAMES]
    return rows, comparisons(ranks, new)


def _structure(markdown: str) -> str:
    """results.md with every number masked: its sections, rows, columns and sentence shapes."""
    return re.sub(r"\d+(?:[.,]\d+)*(?:e-?\d+)?", "N", markdown)


def test_results_md_opens_with_a_title_the_rows_in_words_and_a_verdict_per_comparison() -> None:
    """A snapshot of results.md's structure (numbers masked). After a deliberate change of the report, rewrite it
    with PMMREC_UPDATE_SNAPSHOTS=1 and read the diff."""
    rows, tests = _report_inputs()
    markdown = results_markdown(rows, tests, ["a note"], title="pmmrec demo: a title", intro="What is compared.")
    lines = markdown.splitlines()
    assert lines[0] == "# pmmrec demo: a title" and lines[2] == "What is compared."
    for name in DEMO_ROW_NAMES:  # one line in words per row, before the table
        assert sum(line.startswith(f"- {name}: ") for line in lines) == 1
    sentences = [line for line in lines if " than " in line or "not significantly different" in line]
    assert len(sentences) == len(tests) == 5
    assert markdown.index(sentences[-1]) < markdown.index("| model |")
    if os.environ.get("PMMREC_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(_structure(markdown), encoding="utf-8")
    assert _structure(markdown) == SNAPSHOT.read_text(encoding="utf-8")
    text = results_text(rows, tests, title="pmmrec demo: a title")
    assert text.startswith("pmmrec demo: a title\n====") and all(sentence[2:] in text for sentence in sentences)


def _comparison(**fields: Any) -> dict[str, Any]:
    base = {"a": "A", "b": "B", "difference": 0.05, "ci_low": 0.01, "ci_high": 0.09, "users": 100, "differing": 40,
            "p_sign_flip": 0.01, "p_bootstrap": 0.02, "p_holm": 0.02, "significant": True, "subset": "all",
            "seeds_a": 1, "seeds_b": 1}  # fmt: skip
    return base | fields


def test_each_verdict_sentence_says_why() -> None:
    """Every branch of the verdict: better, worse, the two tests disagreeing (seeds, too few users), Holm, plain."""
    better = verdict_sentence(_comparison(subset="new", p_holm=0.012))
    assert better == ("A is better than B on the 100 new-item users: +0.0500 NDCG@10 [95% CI +0.0100, +0.0900], "
                      "40 of 100 users differ, Holm p = 0.012.")  # fmt: skip
    assert verdict_sentence(_comparison(difference=-0.05)).startswith("A is worse than B on all 100 test users")
    seeds = _comparison(p_sign_flip=0.03, p_bootstrap=0.21, p_holm=0.21, significant=False, seeds_a=3)
    assert verdict_sentence(seeds).endswith(
        "; the sign-flip test says p = 0.030 but the seed-aware bootstrap says p = 0.210: so the difference may come "
        "from the training seeds."
    )
    assert significance_cell(seeds) == "no, tests disagree"
    few = _comparison(differing=3, p_sign_flip=0.25, p_bootstrap=0.01, p_holm=0.25, significant=False)
    assert "only 3 users differ, and with so few the sign-flip test cannot go below p = 0.250" in verdict_sentence(few)
    holm_only = _comparison(p_sign_flip=0.03, p_bootstrap=0.04, p_holm=0.08, significant=False)
    assert "but Holm's correction for the 5 comparisons of this table gives p = 0.080" in verdict_sentence(
        holm_only, family=5
    )
    plain = verdict_sentence(_comparison(p_sign_flip=0.4, p_bootstrap=0.5, p_holm=0.5, significant=False))
    assert plain.startswith("A and B are not significantly different on all 100 test users") and "p = 0.500" in plain
    assert "no user's rank differs" in verdict_sentence(_comparison(differing=0, p_holm=1.0, significant=False))


def test_zero_and_missing_bars_are_labelled() -> None:
    """A zero-height bar looked like a missing one: a mean of 0 is labelled "0", a missing value "n/a"."""
    rows = [
        {"model": "m", "ndcg@10": 0.2, "ndcg@10_ci": [0.1, 0.3], "new_ndcg@10": 0.0, "new_ndcg@10_ci": [0.0, 0.0]},
        {"model": "k", "ndcg@10": 0.1, "ndcg@10_ci": [0.05, 0.15], "new_ndcg@10": None},
    ]
    figure = ndcg_bar_figure(rows, "t")
    labels = [text.get_text() for text in figure.axes[0].texts]
    assert labels == ["0", "n/a"]
    figure = ndcg_bar_figure([rows[0] | {"new_ndcg@10": 0.05, "new_ndcg@10_ci": [0.0, 0.1]}], "t")
    assert [text.get_text() for text in figure.axes[0].texts] == []
