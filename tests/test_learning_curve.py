"""The learning curve of issue 24.5: nested samples of training users with every user evaluated, passes per epoch,
popularity on a share, and the curve's JSON, tables, targets and plot on tiny settings."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
from PIL import Image

from pmmrec.baselines import popularity_table
from pmmrec.data import TrainSequences, leave_one_out, load_dataset, new_target_mask, user_share_rows
from pmmrec.demo.curve import CurveInputs, CurvePlan, curve_grid, run_curve, share_passes
from pmmrec.demo.curve_report import CURVE_ORDER, curve_markdown, plot_curve, summarise_curve
from pmmrec.demo.rows import DEMO_ROWS, DemoSettings, settings_for
from pmmrec.distributed import DistributedContext
from pmmrec.errors import ConfigError
from pmmrec.training.control import epoch_order
from pmmrec.training.jobs import train


def test_user_shares_are_nested_seeded_samples() -> None:
    """5% inside 10% inside 25% ...; counts round half up; another sample seed gives another sample."""
    shares = (0.05, 0.10, 0.25, 0.50, 1.0)
    samples = [user_share_rows(494, share, seed=0) for share in shares]
    assert [len(rows) for rows in samples] == [25, 49, 124, 247, 494]
    for smaller, larger in itertools.pairwise(samples):
        assert set(smaller.tolist()) < set(larger.tolist())
    assert all(np.all(np.diff(rows) > 0) for rows in samples)  # sorted, no repeats
    assert samples[-1].tolist() == list(range(494))
    assert user_share_rows(494, 0.05, seed=0).tolist() == samples[0].tolist()  # deterministic
    assert user_share_rows(494, 0.05, seed=1).tolist() != samples[0].tolist()
    assert len(user_share_rows(3, 0.01)) == 1  # at least one user
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="share of training users"):
            user_share_rows(10, bad)


def test_passes_per_epoch_repeat_every_window_and_keep_the_first_order() -> None:
    single = DistributedContext(0, 0, 1, torch.device("cpu"))
    once = epoch_order(7, 3, 5, single)
    thrice = epoch_order(7, 3, 5, single, passes=3)
    assert thrice[:7] == once and sorted(thrice) == sorted(list(range(7)) * 3)
    assert thrice[7:14] != once  # each pass in its own order
    assert share_passes(700, 35) == 20 and share_passes(700, 700) == 1 and share_passes(700, 0) == 700


def test_a_run_on_a_share_trains_only_its_users_and_evaluates_every_user(
    tiny_dataset: Path, tmp_path: Path, isolated: Path
) -> None:
    """Training windows, known items and the popularity counts come from the sampled users only; the validation
    and test splits still rank every user (with their whole history as input)."""
    dataset = load_dataset(tiny_dataset)
    split = leave_one_out(dataset.sequences)
    rows = user_share_rows(split.num_users, 0.4, seed=0)
    train_sequences = split.train.take(rows)
    overrides = {"model": {"item_tower": "id", "dim": 16}, "max_length": 5, "batch_size": 4, "epochs": 1,
                 "train_user_share": 0.4, "passes_per_epoch": 2, "save_checkpoints": False}  # fmt: skip
    result = train("finetune", tiny_dataset, tmp_path / "run", overrides=overrides, progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    windows = len(TrainSequences(train_sequences, 5))
    assert summary["train_users"] == len(rows) == 6 and summary["train_windows"] == windows
    assert summary["steps"] == -(-2 * windows // 4)  # two passes per epoch, batches of 4
    assert summary["known_items"] == len(np.unique(np.concatenate(list(train_sequences))))
    assert summary["known_items"] < len(np.unique(np.concatenate(list(split.train))))  # a smaller share knows less
    assert result.test_ranks is not None and len(result.test_ranks) == split.num_users
    counts = np.ceil(popularity_table(split, dataset.num_items, train_rows=rows).squeeze(1).numpy())  # tie-breaks < 1
    expected = np.bincount(np.concatenate(list(train_sequences)), minlength=dataset.num_items + 1)
    assert counts[1:].tolist() == expected[1:].tolist()


def test_every_trained_row_gets_the_same_search_budget() -> None:
    settings = settings_for("quick")
    grids = {row: curve_grid(row, settings) for row in DEMO_ROWS}
    assert {len(grid) for grid in grids.values()} == {3}
    assert all(config.softmax == "full" for grid in grids.values() for config in grid)
    assert len({(c.fresh_lr, c.pretrained_lr) for c in grids["pmmrec-transfer"]}) == 3


def test_the_curve_writes_ranks_tables_targets_and_a_plot(tmp_path: Path, isolated: Path) -> None:
    """A whole curve on tiny settings (two shares, two seeds, the search): every row has one list of per-user test
    ranks per seed at every share, each share has its paired tests, every target is met or not met with numbers."""
    source = tiny.write_tiny_dataset(tmp_path / "source", seed=1)
    target = tiny.write_tiny_dataset(tmp_path / "target", seed=2)
    settings = DemoSettings("tiny", dim=16, batch_size=8, max_length=5, pretrain_epochs=1, finetune_epochs=1,
                            patience=1, text_trainable_layers=0, seed=0)  # fmt: skip
    plan = CurvePlan(shares=(0.5, 1.0), seeds=(0, 1), search=True)
    raw = run_curve(CurveInputs(tmp_path / "curve", source, target, settings, {}), plan, say=lambda _m: None)
    dataset = load_dataset(target)
    split = leave_one_out(dataset.sequences)
    report = summarise_curve(raw, new_target_mask(split, "test"))
    json.dumps(report)  # JSON as it is
    assert [p["share"] for p in report["points"]] == [0.5, 1.0]
    assert [p["train_users"] for p in report["points"]] == [8, 15]
    for point in report["points"]:
        for name in CURVE_ORDER:
            seeds = 2 if name in (*DEMO_ROWS, "pmmrec-zero-shot") else 1
            assert len(point["test_ranks"][name]) == seeds
            assert all(len(ranks) == split.num_users for ranks in point["test_ranks"][name])
        for row in DEMO_ROWS:
            search = point["searches"][row]
            assert len(search["valid_ndcg@10"]) == 3 and search["selected"] == int(np.argmax(search["valid_ndcg@10"]))
        assert {(t["a"], t["b"]) for t in point["comparisons"]} >= {("pmmrec-transfer", "pmmrec-scratch")}
    assert report["points"][0]["test_ranks"]["content-knn"] == report["points"][1]["test_ranks"]["content-knn"]
    for target_row in report["targets"]:
        assert target_row["verdict"].startswith(("met", "NOT MET", "not measured"))
    text = curve_markdown(report, "tiny curve")
    assert "| pmmrec-transfer |" in text and "50% (8 users" in text and "Targets (issue 24)" in text
    plot_curve(report, tmp_path / "curve.png", "tiny curve")
    with Image.open(tmp_path / "curve.png") as image:
        assert image.format == "PNG" and image.size[0] > 800
    again = run_curve(CurveInputs(tmp_path / "curve", source, target, settings, {}), plan, say=lambda _m: None)
    assert again["points"][0]["test_ranks"] == raw["points"][0]["test_ranks"]  # cached runs are reused
