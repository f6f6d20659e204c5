"""The learning curve's report: rows with intervals and paired tests per share, the issue's targets as met / not met,
a markdown page and a matplotlib plot of NDCG@10 against the share of training users with 95% intervals.

Each share's comparisons form one table (Holm within it); the zero-shot comparison, the same at every share, is a
table of its own. A target is met when its comparison is significant (pmmrec.demo.report.SIGNIFICANCE_RULE) and
goes the claimed way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pmmrec.demo.report import SIGNIFICANCE_RULE, _cell, _p, _pyplot, _save, comparisons, row_summary

CURVE_ORDER = ("popularity", "content-knn", "sasrec-id", "pmmrec-scratch", "pmmrec-transfer", "pmmrec-zero-shot")
TRAINED = ("sasrec-id", "pmmrec-scratch", "pmmrec-transfer")
# One table per share (Holm within it): (A, B, users) meaning "A beats B on these users".
CURVE_COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("pmmrec-transfer", "pmmrec-scratch", "all"),
    ("pmmrec-transfer", "pmmrec-scratch", "new"),
    ("pmmrec-transfer", "sasrec-id", "all"),
    ("pmmrec-transfer", "sasrec-id", "new"),
    ("pmmrec-scratch", "sasrec-id", "new"),
    ("pmmrec-zero-shot", "popularity", "all"),
)
UNTRAINED_COMPARISONS: tuple[tuple[str, str, str], ...] = (("pmmrec-zero-shot", "content-knn", "all"),)
SMALL_SHARE = 0.25  # the "at 25% of the target's training users or less"


def _budget(name: str, search: Mapping[str, Any]) -> str:
    """A row's search budget and selection, as a table cell."""
    if name == "pmmrec-zero-shot":
        return "none"
    if name in ("popularity", "content-knn"):
        return f"{search['budget']} on validation: {search['selected_label']}"
    best = search["selected"]
    cap, patience, passes = search["schedule"]
    return (
        f"{len(search['configs'])} on validation: {search['configs'][best]['label']}, epoch {search['best_epochs'][best]}"
        f" (cap {cap}, patience {patience}, {passes} pass(es) per epoch)"
    )


def summarise_curve(raw: Mapping[str, Any], new_users: np.ndarray) -> dict[str, Any]:
    """The report of a curve (`run_curve`'s payload): per share the rows and the paired tests; the zero-shot table;
    the targets. Ranks stay in the payload (per share, per row, per seed)."""
    points = []
    for point in raw["points"]:
        ranks = {name: [np.asarray(r) for r in point["test_ranks"][name]] for name in CURVE_ORDER}
        rows = [row_summary(name, ranks[name], new_users, _budget(name, point["searches"].get(name, {})))
                for name in CURVE_ORDER]  # fmt: skip
        tests = comparisons(ranks, new_users, CURVE_COMPARISONS)
        points.append({**point, "rows": rows, "comparisons": tests})
    last = raw["points"][-1]["test_ranks"]
    untrained = comparisons(
        {name: [np.asarray(r) for r in last[name]] for name in ("pmmrec-zero-shot", "content-knn")},
        new_users, UNTRAINED_COMPARISONS,
    )  # fmt: skip
    report = {**raw, "points": points, "untrained_comparisons": untrained, "new_users": int(new_users.sum())}
    report["targets"] = curve_targets(report)
    return report


def _find(tests: Sequence[Mapping[str, Any]], a: str, b: str, subset: str) -> Mapping[str, Any] | None:
    return next((t for t in tests if (t["a"], t["b"], t["subset"]) == (a, b, subset)), None)


def _target(claim: str, share: float | None, test: Mapping[str, Any] | None) -> dict[str, Any]:
    if test is None:
        return {"target": claim, "share": share, "met": False, "verdict": "not measured"}
    met = bool(test["significant"] and test["difference"] > 0)
    return {
        "target": claim, "share": share, "met": met, "difference": test["difference"],
        "ci": [test["ci_low"], test["ci_high"]], "p_holm": test["p_holm"], "users": test["users"],
        "differing": test["differing"],
        "verdict": "met" if met else ("NOT MET (significantly worse)" if test["significant"] else
                                      "NOT MET (no significant difference)"),
    }  # fmt: skip


def curve_targets(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets at every share where they apply, each met or not met with its numbers."""
    targets = []
    for point in report["points"]:
        share, tests = point["share"], point["comparisons"]
        for row in ("pmmrec-transfer", "pmmrec-scratch"):
            targets.append(_target(f"{row} beats sasrec-id on new-item users", share, _find(tests, row, "sasrec-id", "new")))
        if share <= SMALL_SHARE + 1e-9:
            claim = "pmmrec-transfer beats pmmrec-scratch (all users)"
            targets.append(_target(claim, share, _find(tests, "pmmrec-transfer", "pmmrec-scratch", "all")))
    claim = "pmmrec-zero-shot beats the tuned content-knn (all users)"
    targets.append(_target(claim, None, _find(report["untrained_comparisons"], "pmmrec-zero-shot", "content-knn", "all")))
    return targets


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:g}%"



def _test_line(test: Mapping[str, Any], share: str) -> str:
    method = "exact" if test["sign_flip"] == "exact" else "MC"
    return (
        f"| {test['a']} vs {test['b']} | {share} | {test['subset']} ({test['users']}) | {test['differing']} | "
        f"{test['difference']:+.4f} [{test['ci_low']:+.4f}, {test['ci_high']:+.4f}] | {_p(test['p_sign_flip'])} "
        f"({method}) | {_p(test['p_bootstrap'])} | {_p(test['p_holm'])} | {test['verdict']} |"
    )


def curve_markdown(report: Mapping[str, Any], title: str) -> str:
    """The curve as markdown: NDCG@10 per row and share (all users, new-item users), the paired tests of every
    share, the zero-shot table, the targets, and every row's search at every share."""
    points = report["points"]
    head = " | ".join(f"{_pct(p['share'])} ({p['train_users']} users, {p['train_interactions']:,} interactions)"
                      for p in points)  # fmt: skip
    lines = [f"## {title}", ""]
    for key, label in (("ndcg@10", "all test users"), ("new_ndcg@10", f"new-item users ({report['new_users']})")):
        lines += [f"Test NDCG@10 [95% CI], {label}, by share of training users:", "",
                  f"| model | {head} |", "|---|" + "---|" * len(points)]  # fmt: skip
        for index, name in enumerate(CURVE_ORDER):
            lines.append(f"| {name} | " + " | ".join(_cell(p["rows"][index], key) for p in points) + " |")
        lines.append("")
    lines += [f"Paired tests ({SIGNIFICANCE_RULE}; one table per share):", "",
              "| claim | share | users | users that differ | difference [95% CI] | p sign-flip | p bootstrap | p Holm | "
              "verdict |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for point in points:
        lines += [_test_line(test, _pct(point["share"])) for test in point["comparisons"]]
    lines += [_test_line(test, "any (no training on the target)") for test in report["untrained_comparisons"]]
    lines += ["", "Targets (issue 24):", "", "| target | share | difference [95% CI] | p Holm | verdict |",
              "|---|---|---|---|---|"]  # fmt: skip
    for target in report["targets"]:
        numbers = (f"{target['difference']:+.4f} [{target['ci'][0]:+.4f}, {target['ci'][1]:+.4f}] | "
                   f"{_p(target['p_holm'])}" if "difference" in target else "- | -")  # fmt: skip
        lines.append(f"| {target['target']} | {_pct(target['share'])} | {numbers} | {target['verdict']} |")
    lines += ["", "Searches (validation NDCG@10 of each configuration, seed of the search; selected in bold):", "",
              "| row | share | configurations | epochs run (cap, patience, passes per epoch) |",
              "|---|---|---|---|"]  # fmt: skip
    for point in points:
        for row in TRAINED:
            search = point["searches"][row]
            cells = [
                (f"**{c['label']}: {v:.4f}**" if i == search["selected"] else f"{c['label']}: {v:.4f}")
                for i, (c, v) in enumerate(zip(search["configs"], search["valid_ndcg@10"], strict=True))
            ]
            cap, patience, passes = search["schedule"]
            epochs = ", ".join(str(e) for e in search["epochs"])
            lines.append(f"| {row} | {_pct(point['share'])} | {'; '.join(cells)} | {epochs} ({cap}, {patience}, {passes}) |")
    return "\n".join(lines) + "\n"


def curve_text(report: Mapping[str, Any]) -> str:
    """The curve for the terminal: test NDCG@10 per row and share (all users / new-item users), then the targets."""
    points = report["points"]
    header = f"{'learning curve: NDCG@10 (all / new-item users)':<48}" + "".join(
        f"{_pct(p['share']) + ' (' + str(p['train_users']) + ' users)':>22}" for p in points
    )
    lines = [header, "-" * len(header)]
    for index, name in enumerate(CURVE_ORDER):
        cells = []
        for point in points:
            row = point["rows"][index]
            new = "-" if row.get("new_ndcg@10") is None else f"{row['new_ndcg@10']:.4f}"
            cells.append(f"{row['ndcg@10']:.4f} / {new}")
        lines.append(f"{name:<48}" + "".join(f"{cell:>22}" for cell in cells))
    lines.append("")
    for target in report["targets"]:
        numbers = (f"{target['difference']:+.4f}, p Holm {_p(target['p_holm'])}" if "difference" in target else "")
        lines.append(f"{target['target']} at {_pct(target['share'])}: {numbers} -> {target['verdict']}")
    return "\n".join(lines)


def plot_curve(report: Mapping[str, Any], path: Path, title: str) -> None:
    """NDCG@10 against the share of training users (log axis), one line per row with 95% interval bars: all test
    users on the left, new-item users on the right."""
    plt = _pyplot()
    shares = np.array([p["share"] * 100 for p in report["points"]])
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120, sharex=True)
    for panel, (key, label) in zip(axes, (("ndcg@10", "all test users"), ("new_ndcg@10", "new-item users")), strict=True):
        for index, name in enumerate(CURVE_ORDER):
            rows = [p["rows"][index] for p in report["points"]]
            means = np.array([row.get(key) or 0.0 for row in rows])
            lows = np.array([(row.get(f"{key}_ci") or [0.0, 0.0])[0] for row in rows])
            highs = np.array([(row.get(f"{key}_ci") or [0.0, 0.0])[1] for row in rows])
            style = "--" if name in ("popularity", "content-knn", "pmmrec-zero-shot") else "-"
            panel.errorbar(shares * (1 + 0.015 * (index - 2.5)), means, yerr=[means - lows, highs - means], fmt="o",
                           linestyle=style, capsize=3, label=name, markersize=4)  # fmt: skip
        panel.set_xscale("log")
        panel.set_xticks(shares)
        panel.set_xticklabels([f"{s:g}%" for s in shares])
        panel.minorticks_off()
        panel.set_xlabel("share of the target's users whose sequences train")
        panel.set_ylabel(f"test NDCG@10, {label} (95% CI)")
        panel.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)
