"""The report of benchmarks/quality.py: rows over seeds with intervals and search budgets, paired tests (sign-flip,
seed x user bootstrap, users that differ, Holm within each table), searches, curves, defaults."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from quality_ml100k import ML100K_CONFIGS, WINDOWS, best_config

from pmmrec.data import leave_one_out, load_dataset, new_target_mask
from pmmrec.demo.report import TARGET_COMPARISONS, comparisons, results_markdown, row_summary
from pmmrec.demo.rows import search_grid, settings_for
from pmmrec.demo.run import target_statistics

ABLATION_COMPARISONS = (
    ("pmmrec-transfer", "transfer-no-nid", "all"),
    ("pmmrec-transfer", "transfer-no-rcl", "all"),
    ("pmmrec-transfer", "transfer-text-only", "all"),
    ("pmmrec-transfer", "transfer-user-only", "all"),
    ("mm-transfer", "mm-transfer-no-nicl", "all"),
    ("mm-transfer", "pmmrec-transfer", "all"),
    ("mm-transfer", "mm-zero-shot", "all"),
)
UNTRAINED = ("popularity", "content-knn", "pmmrec-zero-shot", "mm-zero-shot")


def _get(results: dict[str, Any], key: str) -> dict[str, Any] | None:
    return results.get(key)


def setting_report(results: dict[str, Any], setting: str, seeds: list[int], root: Path) -> dict[str, Any]:
    """Rows, paired tests, searches and curves of one setting (rows with any missing seed are left out and listed)."""
    target = load_dataset(root / "data" / "target")
    new_users = new_target_mask(leave_one_out(target.sequences), "test")
    ranks: dict[str, list[np.ndarray]] = {}
    missing: list[str] = []
    searches: dict[str, Any] = {}
    curves: dict[str, list[list[float]]] = {}
    trained = sorted({key.split(":")[2] for key in results if key.startswith(f"search:{setting}:")})
    for row in trained:
        grid = search_grid(row)
        scores = [(_get(results, f"search:{setting}:{row}:{i}") or {}).get("valid_ndcg@10") for i in range(len(grid))]
        if any(score is None for score in scores):
            missing.append(row)
            continue
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        searches[row] = {
            "configs": [{**asdict(config), "label": config.label(), "valid_ndcg@10": score,
                         "best_epoch": results[f"search:{setting}:{row}:{i}"]["best_epoch"]}
                        for i, (config, score) in enumerate(zip(grid, scores, strict=True))],
            "selected": best,
        }  # fmt: skip
        runs = [_get(results, f"test:{setting}:{row}:{seeds[0]}")]
        runs += [_get(results, f"final:{setting}:{row}:{seed}") for seed in seeds[1:]]
        if any(run is None or run.get("test_ranks") is None for run in runs):
            missing.append(row)
            continue
        ranks[row] = [np.asarray(run["test_ranks"]) for run in runs]  # type: ignore[index]
        curves[row] = [run["curve"] for run in runs]  # type: ignore[index]
    for row in UNTRAINED:
        if row in ("popularity", "content-knn"):
            run = _get(results, f"untrained:{setting}:{row}")
            if run is not None:
                ranks[row] = [np.asarray(run["test_ranks"])] * len(seeds)
            continue
        runs = [_get(results, f"untrained:{setting}:{row}:{seed}") for seed in seeds]
        if all(run is not None for run in runs):
            ranks[row] = [np.asarray(run["test_ranks"]) for run in runs]  # type: ignore[index]
    order = ["popularity", "content-knn", "sasrec-id", "pmmrec-scratch", "pmmrec-transfer", "pmmrec-zero-shot"]
    order += sorted(name for name in ranks if name not in order)
    baselines = {name: results[f"untrained:{setting}:{name}"]["search"]
                 for name in ("popularity", "content-knn") if f"untrained:{setting}:{name}" in results}  # fmt: skip
    budgets = {row: f"{len(search_grid(row))} on validation" for row in searches}
    budgets |= {name: f"{search['budget']} on validation: {search['selected_label']}" for name, search in baselines.items()}
    budgets |= {name: "none (nothing trained on the target)" for name in ("pmmrec-zero-shot", "mm-zero-shot")}
    rows = [row_summary(name, ranks[name], new_users, budgets.get(name)) for name in order if name in ranks]
    tests = comparisons(ranks, new_users, TARGET_COMPARISONS + ABLATION_COMPARISONS)
    pretraining = {key: {k: v for k, v in value.items() if k != "components"}
                   for key, value in results.items() if key.startswith(f"pre:{setting}:")}  # fmt: skip
    windows = {key: value["valid_ndcg@10"] for key, value in results.items() if key.startswith(f"window:{setting}:")}
    settings = settings_for(setting)
    notes = [
        f"setting {setting}: d = {settings.dim}, pre-training cap {settings.pretrain_epochs} epochs, fine-tuning cap "
        f"{settings.finetune_epochs}, patience {settings.patience}, top {settings.text_trainable_layers} text layer(s) "
        f"trained; seeds {seeds} (search seed {seeds[0]}); intervals: 95% seed x user bootstrap (users and each "
        "row's seeds resampled); zero-training baselines are deterministic (one seed repeated)",
    ]
    return {
        "target": target_statistics(target),
        "rows": rows,
        "comparisons": tests,
        "searches": searches,
        "baseline_searches": baselines,
        "validation_curves": curves,
        "pretraining": pretraining,
        "window_study_valid_ndcg@10": windows,
        "missing_rows": missing,
        "test_ranks": {name: [r.tolist() for r in values] for name, values in ranks.items()},
        "markdown": results_markdown(rows, tests, notes),
    }


def ml100k_report(results: dict[str, Any]) -> dict[str, Any]:
    """The defaults check: each tower's default (c0) and best tuned recipe, valid and test."""
    report: dict[str, Any] = {}
    for tower, configs in ML100K_CONFIGS.items():
        runs = [results.get(f"ml100k:{tower}:{i}") for i in range(len(configs))]
        if any(run is None for run in runs):
            report[tower] = {"missing": [i for i, run in enumerate(runs) if run is None]}
            continue
        best = best_config(results, tower)
        default = results.get(f"ml100k-test:{tower}:default") or {}
        tuned = results.get(f"ml100k-test:{tower}:best") or {}
        report[tower] = {
            "configs": [{"overrides": config, "valid_ndcg@10": run["valid_ndcg@10"], "valid": run["valid"],
                         "best_epoch": run["best_epoch"], "epochs": len(run["curve"]), "seconds": run["seconds"]}
                        for config, run in zip(configs, runs, strict=True)],  # type: ignore[union-attr]
            "selected": best,
            "default_test": default.get("test"),
            "best_test": tuned.get("test"),
            "best_test_history_included": tuned.get("test_include"),
        }  # fmt: skip
        if default.get("test") and tuned.get("test"):
            report[tower]["default_hr@10_over_best"] = default["test"]["hr@10"] / tuned["test"]["hr@10"]
    report["window_study_valid_ndcg@10"] = {
        "tiles": (results.get("ml100k:id:0") or {}).get("valid_ndcg@10"),
        **{w: (results.get(f"window:ml100k:id:{w}") or {}).get("valid_ndcg@10") for w in WINDOWS[1:]},
    }
    return report


def report(results: dict[str, Any], settings: list[str], seeds: list[int], images: bool, ml100k: bool,
           root: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """The whole benchmark's results (what --json writes)."""
    payload: dict[str, Any] = {"seeds": seeds, "images": images, "settings": {}}
    markdown = []
    for setting in settings:
        assert root is not None
        payload["settings"][setting] = setting_report(results, setting, seeds, root)
        markdown.append(f"## {setting}\n\n" + payload["settings"][setting]["markdown"])
    if ml100k:
        payload["ml100k"] = ml100k_report(results)
    payload["markdown"] = "\n".join(markdown)
    return payload
