"""The learning curve of issue 24.5: nested samples of training users with every user evaluated, passes per epoch,
popularity on a share, and the curve's JSON, tables, targets and plot on tiny settings."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
from PIL import Image

from pmmrec.baselines import popularity_table
from pmmrec.data import TrainSequences, leave_one_out, load_dataset, new_target_mask, user_share_rows
from pmmrec.demo import curve as curve_module
from pmmrec.demo.curve import CURVE_SHARES, CurveInputs, CurvePlan, curve_grid, run_curve, share_label, share_passes
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


def _fake_jobs(monkeypatch: pytest.MonkeyPatch, users: int) -> list[dict]:
    """Training replaced by bookkeeping: each fine-tuning run's validation score is a known function of its learning
    rates and share, its test ranks a function of the same, so the search's choices can be checked."""
    calls: list[dict] = []

    def score(overrides: dict) -> float:
        return overrides["pretrained_lr"] * 100 + overrides["train_user_share"] + overrides["seed"] / 1000

    def finetune(folder: str, target: str, overrides: dict, threads: int | None = None) -> dict:
        calls.append({"folder": folder, **overrides})
        ranks = [1 + (user + int(score(overrides) * 10)) % 7 for user in range(users)]
        return {"valid_ndcg@10": score(overrides), "best_epoch": 1, "epochs": 1, "steps": 1, "train_users": 0,
                "curve": [score(overrides)], "test_ranks": ranks if overrides["evaluate_test"] else None,
                "seconds": 0.0, "cpu_seconds": 0.0}  # fmt: skip

    def test(folder: str, target: str, max_length: int, device: str | None, threads: int | None = None) -> dict:
        search = next(c for c in calls if c["folder"] == folder)
        result = finetune(folder, target, search | {"evaluate_test": True})
        calls[-1] = {"folder": folder, "tested": True}  # a test is not a training run
        return result

    monkeypatch.setattr(curve_module, "finetune_job", finetune)
    monkeypatch.setattr(curve_module, "test_job", test)
    monkeypatch.setattr(curve_module, "pretrain_job", lambda folder, source, overrides, threads=None: {
        "components": {"text": f"{folder}/text", "user": f"{folder}/user", "fusion": f"{folder}/fusion"}})
    monkeypatch.setattr(curve_module, "zero_shot_job", lambda folder, target, components, length, device, threads=None: {
        "valid_ranks": [1 + u % 5 for u in range(users)], "test_ranks": [1 + u % 3 for u in range(users)]})
    return calls


def test_the_curve_searches_on_validation_tests_once_and_writes_json_tables_and_a_plot(
    tiny_dataset: Path, tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiny settings, training replaced by bookkeeping: at every share each trained row runs its three
    configurations with the first seed and the test split off, the best on validation is tested once, and only it
    is trained with the other seeds; the JSON holds per-user ranks per share, row and seed; every target gets a
    verdict with numbers; the markdown and the plot are made."""
    split = leave_one_out(load_dataset(tiny_dataset).sequences)
    calls = _fake_jobs(monkeypatch, split.num_users)
    settings = replace(settings_for("quick", 0), max_length=5)
    plan = CurvePlan(shares=(0.2, 0.5, 1.0), seeds=(7, 8, 9), search=True)
    raw = run_curve(CurveInputs(tmp_path, tiny_dataset, tiny_dataset, settings, {7: {"text": "t", "user": "u"}}),
                    plan, say=lambda _m: None)  # fmt: skip
    searches = [c for c in calls if "seed" in c and not c["evaluate_test"]]
    assert len(searches) == 3 * 3 * 3 and {c["seed"] for c in searches} == {7}  # shares x rows x configurations
    for share, users in ((0.2, 3), (0.5, 8), (1.0, 15)):
        point = next(p for p in raw["points"] if p["share"] == share)
        assert point["train_users"] == users
        for row in DEMO_ROWS:
            mine = [c for c in calls if f"/{share_label(share)}/{row}/" in c["folder"]]
            search = point["searches"][row]
            best = search["configs"][search["selected"]]
            assert search["selected"] == int(np.argmax(search["valid_ndcg@10"])) == 2  # the highest pretrained rate
            assert sum(1 for c in mine if c.get("tested")) == 1  # the test split of the search: once, the selected
            finals = [c for c in mine if c.get("evaluate_test")]
            assert sorted(c["seed"] for c in finals) == [8, 9]
            assert all(c["pretrained_lr"] == best["pretrained_lr"] and c["train_user_share"] == share for c in finals)
            assert all(c["passes_per_epoch"] == point["passes_per_epoch"] and c["train_user_seed"] == 0 for c in mine
                       if "seed" in c)  # fmt: skip
            assert len(point["test_ranks"][row]) == 3
    assert raw["points"][0]["passes_per_epoch"] > raw["points"][-1]["passes_per_epoch"] == 1
    report = summarise_curve(raw, new_target_mask(split, "test") | (np.arange(split.num_users) < 3))
    json.dumps(report)
    for point in report["points"]:
        assert [row["model"] for row in point["rows"]] == list(CURVE_ORDER)
        assert {(t["a"], t["b"], t["subset"]) for t in point["comparisons"]} >= {
            ("pmmrec-transfer", "pmmrec-scratch", "all"), ("pmmrec-scratch", "sasrec-id", "new")}
        assert all(len(ranks) == split.num_users for name in CURVE_ORDER for ranks in point["test_ranks"][name])
    shares_of = [t["share"] for t in report["targets"] if t["target"].startswith("pmmrec-transfer beats pmmrec-scratch")]
    assert shares_of == [0.2]  # "at 25% of the training users or less"
    assert all(t["verdict"].startswith(("met", "NOT MET")) and "difference" in t for t in report["targets"])
    text = curve_markdown(report, "tiny curve")
    assert "| pmmrec-transfer |" in text and "20% (3 users" in text and "Targets (issue 24)" in text
    plot_curve(report, tmp_path / "curve.png", "tiny curve")
    with Image.open(tmp_path / "curve.png") as image:
        assert image.format == "PNG" and image.size[0] > 800


def test_a_tiny_curve_trains_for_real(tmp_path: Path, isolated: Path) -> None:
    """The jobs themselves on tiny settings (two shares, one seed, no search): ranks of every user, cached runs reused."""
    source = tiny.write_tiny_dataset(tmp_path / "source", seed=1)
    target = tiny.write_tiny_dataset(tmp_path / "target", seed=2)
    settings = DemoSettings("tiny", dim=16, batch_size=8, max_length=5, pretrain_epochs=1, finetune_epochs=1,
                            patience=1, text_trainable_layers=0, seed=0)  # fmt: skip
    plan = CurvePlan(shares=(0.5, 1.0), seeds=(0,), search=False)
    raw = run_curve(CurveInputs(tmp_path / "curve", source, target, settings, {}), plan, say=lambda _m: None)
    users = leave_one_out(load_dataset(target).sequences).num_users
    for point in raw["points"]:
        assert all(len(point["test_ranks"][name]) == 1 and len(point["test_ranks"][name][0]) == users
                   for name in CURVE_ORDER)  # fmt: skip
        assert all(point["searches"][row]["epochs"] == [1] for row in DEMO_ROWS)  # one configuration, one epoch
    assert [p["train_users"] for p in raw["points"]] == [8, 15]
    assert not list((tmp_path / "curve" / "runs").rglob("model.safetensors"))  # no model folder is left behind
    again = run_curve(CurveInputs(tmp_path / "curve", source, target, settings, {}), plan, say=lambda _m: None)
    assert again["points"][0]["test_ranks"] == raw["points"][0]["test_ranks"]  # cached runs are reused


@pytest.mark.parametrize(("flags", "curve"), [([], False), (["--curve"], True)])
def test_the_demo_command_asks_for_the_whole_curve_only_with_curve(
    flags: list[str], curve: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pmmrec demo --curve` reaches the library as curve=True; the plan it gives is the issue's whole curve, the
    default plan a small one (one seed, no search, 100% included: the demo's main table)."""
    from typer.testing import CliRunner

    import pmmrec.demo
    from pmmrec.cli import app
    from pmmrec.demo.run import demo_plan

    seen: dict = {}
    monkeypatch.setattr(pmmrec.demo, "demo", lambda out, **options: seen.update(options, out=out) or {})
    result = CliRunner().invoke(app, ["demo", "--quick", "--quiet", "--out", str(tmp_path / "d"), *flags])
    assert result.exit_code == 0, result.output
    assert seen["curve"] is curve and seen["quick"] is True and seen["progress"] is False
    plan = demo_plan(quick=True, curve=seen["curve"], seed=5)
    if curve:
        assert plan.shares == CURVE_SHARES and plan.seeds == (5, 6, 7) and plan.search
    else:
        assert plan.shares[-1] == 1.0 and len(plan.shares) > 1 and plan.seeds == (5,) and not plan.search
