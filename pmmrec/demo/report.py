"""Results of the transfer comparison: rows with confidence intervals, paired tests, tables and matplotlib plots.

Every row is a list of per-user test ranks per seed (same users in the same order). Intervals resample users and
seeds (pmmrec.stats), so each is about the model over its training seeds, and every comparison carries the exact
(or Monte-Carlo) sign-flip test with users as clusters, the seed x user bootstrap, the number of users whose
difference is not zero, and Holm's correction within its table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pmmrec.demo import wording
from pmmrec.fileio import atomic_file
from pmmrec.stats import compare, per_user_metric, seed_mean, summarise, with_holm

REPORT_K = 10
ALPHA = 0.05
SIGNIFICANCE_RULE = (
    f"two-sided paired tests on per-user NDCG@{REPORT_K}: the sign-flip test with users as clusters of their "
    "per-seed differences (exact when at most 30 users differ, else 100,000 Monte-Carlo sign vectors, seed 0) and "
    "the seed x user bootstrap (users and each model's seeds resampled, 10,000 times); significant = the larger of "
    f"the two p-values, Holm-adjusted within this table, is below {ALPHA}"
)
# The claims the comparison exists to test: (A, B, users) meaning "A beats B on these users".
TARGET_COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("pmmrec-transfer", "pmmrec-scratch", "all"),
    ("pmmrec-transfer", "sasrec-id", "all"),
    ("pmmrec-transfer", "sasrec-id", "new"),
    ("pmmrec-zero-shot", "content-knn", "all"),
    ("pmmrec-zero-shot", "popularity", "all"),
)


def user_values(per_seed_ranks: Sequence[np.ndarray], metric: str, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-user values of metric@10 averaged over seeds, restricted to `mask` users when given."""
    values = seed_mean([per_user_metric(ranks, metric, REPORT_K) for ranks in per_seed_ranks])
    return values if mask is None else values[mask]


def seed_values(per_seed_ranks: Sequence[np.ndarray], metric: str, mask: np.ndarray | None = None) -> list[np.ndarray]:
    """Per-seed per-user values of metric@10, restricted to `mask` users when given."""
    values = [per_user_metric(ranks, metric, REPORT_K) for ranks in per_seed_ranks]
    return values if mask is None else [v[mask] for v in values]


def row_summary(
    name: str, per_seed_ranks: Sequence[np.ndarray], new_users: np.ndarray, searched: str | None = None
) -> dict[str, Any]:
    """One results row: HR/NDCG/MRR@10 with 95% intervals (users x seeds), over all users and new-item users.

    searched: the row's search budget as the table states it (e.g. "8 on validation").
    """
    row: dict[str, Any] = {"model": name, "seeds": len(per_seed_ranks), "users": len(per_seed_ranks[0])}
    row["searched"] = searched
    for prefix, mask in (("", None), ("new_", new_users)):
        if mask is not None and not mask.any():
            continue
        for metric in ("hr", "ndcg", "mrr"):
            summary = summarise(seed_values(per_seed_ranks, metric, mask))
            key = f"{prefix}{metric}@{REPORT_K}"
            row[key] = summary.mean
            row[f"{key}_ci"] = [summary.ci_low, summary.ci_high]
            if metric == "ndcg":
                row[f"{key}_se"] = summary.stderr
    row["new_users"] = int(new_users.sum())
    per_seed = [float(per_user_metric(ranks, "ndcg", REPORT_K).mean()) for ranks in per_seed_ranks]
    row["ndcg@10_per_seed"] = per_seed
    return row


def comparisons(
    ranks: Mapping[str, Sequence[np.ndarray]],
    new_users: np.ndarray,
    pairs: Sequence[tuple[str, str, str]] = TARGET_COMPARISONS,
) -> list[dict[str, Any]]:
    """Paired tests on per-user NDCG@10 (every seed of each row) for each (A, B, users) pair whose rows exist; the
    pairs given form one table, and Holm's correction runs over them."""
    found = []
    subsets = []
    for a, b, users in pairs:
        if a not in ranks or b not in ranks:
            continue
        mask = new_users if users == "new" else None
        if mask is not None and not mask.any():
            continue
        found.append(compare(a, seed_values(ranks[a], "ndcg", mask), b, seed_values(ranks[b], "ndcg", mask)))
        subsets.append(users)
    # `users` is the count, `subset` all or new
    return [{**c.as_dict(ALPHA), "subset": subset} for c, subset in zip(with_holm(found), subsets, strict=True)]


def _cell(row: Mapping[str, Any], key: str) -> str:
    if row.get(key) is None:
        return "-"
    low, high = row[f"{key}_ci"]
    return f"{row[key]:.4f} [{low:.4f}, {high:.4f}]"


def _p(value: float) -> str:
    """A p-value: 4 decimals, or 2 significant digits below 0.0001 (an exact p can be tiny)."""
    return f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"


def _flip(comparison: Mapping[str, Any]) -> str:
    method = "exact" if comparison["sign_flip"] == "exact" else "MC"
    return f"{_p(comparison['p_sign_flip'])} ({method})"


def results_markdown(
    rows: Sequence[Mapping[str, Any]],
    tests: Sequence[Mapping[str, Any]],
    notes: Sequence[str],
    *,
    title: str | None = None,
    intro: str | None = None,
) -> str:
    """Markdown: a title and what is compared (when given), the rows and columns in words, the verdicts, then the
    table (means with 95% intervals, search budgets), the paired tests and their rule, the notes."""
    lines = [f"# {title}", ""] if title else []
    if intro:
        lines += [intro, ""]
    lines += ["**The rows**", "", *(f"- {wording.row_line(row['model'])}" for row in rows), ""]
    lines += [f"**The columns**: {wording.COLUMNS}", ""]
    lines += ["**What the table shows**", "", *(f"- {line}" for line in wording.best_rows(rows))]
    lines += [*(f"- {sentence}" for sentence in wording.verdicts(tests, ALPHA)), ""]
    lines += [
        "| model | configurations searched | HR@10 | NDCG@10 | MRR@10 | new-item users: NDCG@10 |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [_cell(row, key) for key in ("hr@10", "ndcg@10", "mrr@10", "new_ndcg@10")]
        lines.append(f"| {row['model']} | {row.get('searched') or '-'} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Paired tests ({SIGNIFICANCE_RULE}):",
        "",
        "| claim | users | users that differ | difference [95% CI] | p sign-flip | p seed x user bootstrap | p Holm | "
        "significant |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for test in tests:
        lines.append(
            f"| {test['a']} vs {test['b']} | {test['subset']} ({test['users']}) | {test['differing']} | "
            f"{test['difference']:+.4f} [{test['ci_low']:+.4f}, {test['ci_high']:+.4f}] | {_flip(test)} | "
            f"{_p(test['p_bootstrap'])} | {_p(test['p_holm'])} | "
            f"{wording.significance_cell(test, ALPHA, len(tests))} ({test['verdict']}) |"
        )
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def results_text(
    rows: Sequence[Mapping[str, Any]], tests: Sequence[Mapping[str, Any]], *, title: str | None = None
) -> str:
    """Plain text for the terminal: the title, the rows in words, the table and one verdict sentence per
    comparison; * marks a row significantly better than the row it is tested against."""
    winners = {t["a"] for t in tests if t["significant"] and t["difference"] > 0 and t["subset"] == "all"}
    lines = [title, "=" * len(title), ""] if title else []
    lines += [f"  {wording.row_line(row['model'])}" for row in rows] + [""]
    header = f"{'model':<20}{'NDCG@10 [95% CI]':>28}{'HR@10':>9}  {'new-item NDCG@10':>17}  searched"
    lines += [header, "-" * len(header)]
    for row in rows:
        low, high = row["ndcg@10_ci"]
        new = "-" if row.get("new_ndcg@10") is None else f"{row['new_ndcg@10']:.4f}"
        mark = "*" if row["model"] in winners else " "
        lines.append(
            f"{row['model']:<20}{row['ndcg@10']:>9.4f} [{low:.4f}, {high:.4f}]{mark}{row['hr@10']:>8.4f}  {new:>17}"
            f"  {row.get('searched') or '-'}"
        )
    lines += ["", "What the table shows:", *(f"  {line}" for line in wording.best_rows(rows))]
    lines += [f"  {sentence}" for sentence in wording.verdicts(tests, ALPHA)]
    lines += ["", f"significance: {SIGNIFICANCE_RULE}"]
    return "\n".join(lines)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_validation_curves(
    curves: Mapping[str, Sequence[float]], references: Mapping[str, float], path: Path, title: str
) -> None:
    """Validation NDCG@10 per epoch per trained model; untrained rows (baselines, zero-shot) as dashed lines."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for name, series in curves.items():
        axes.plot(range(1, len(series) + 1), series, marker="o", label=name)
    for index, (name, value) in enumerate(references.items()):
        axes.axhline(value, linestyle="--", linewidth=1, color=f"C{len(curves) + index}", label=f"{name} (no training)")
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("validation NDCG@10")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)


def plot_test_ndcg(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> None:
    """Test NDCG@10 per model with 95% interval error bars, for all users and for users with a new-item target."""
    plt = _pyplot()
    figure = ndcg_bar_figure(rows, title)
    _save(figure, path)
    plt.close(figure)


def ndcg_bar_figure(rows: Sequence[Mapping[str, Any]], title: str) -> Any:
    """The figure of `plot_test_ndcg`. A mean of exactly 0 is labelled "0" at the bar's foot (a zero-height bar
    looks like a missing one) and a value the row does not have is labelled "n/a"."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=120)
    positions = np.arange(len(rows))
    width = 0.38
    for index, (offset, (prefix, label)) in enumerate(
        zip((-width / 2, width / 2), (("", "all test users"), ("new_", "new-item users")), strict=True)
    ):
        values = [row.get(f"{prefix}ndcg@10") for row in rows]
        means = np.array([value or 0.0 for value in values])
        lows = np.array([(row.get(f"{prefix}ndcg@10_ci") or [0.0, 0.0])[0] for row in rows])
        highs = np.array([(row.get(f"{prefix}ndcg@10_ci") or [0.0, 0.0])[1] for row in rows])
        errors = np.vstack([np.maximum(means - lows, 0.0), np.maximum(highs - means, 0.0)])
        color = f"C{index}"
        axes.bar(positions + offset, means, width, yerr=errors, capsize=3, label=label, color=color)
        for position, value in zip(positions + offset, values, strict=True):
            if value is None or value == 0.0:
                axes.plot([position - width / 2, position + width / 2], [0.0, 0.0], color=color, linewidth=2.5)
                axes.annotate("n/a" if value is None else "0", (position, 0.0), xytext=(0, 3),
                              textcoords="offset points", ha="center", va="bottom", fontsize=8, color=color)  # fmt: skip
    axes.set_xticks(positions)
    axes.set_xticklabels([row["model"] for row in rows], rotation=20, ha="right")
    axes.set_xlabel("model")
    axes.set_ylabel("test NDCG@10 (95% bootstrap CI over users)")
    axes.set_ylim(bottom=0.0)
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _save(figure: Any, path: Path) -> None:
    with atomic_file(path, mode="wb") as handle:
        figure.savefig(handle, format="png")


def write_markdown(path: Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_file(path) as handle:
        handle.write(text)
