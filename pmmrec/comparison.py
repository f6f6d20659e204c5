"""`pmmrec compare`: several evaluations side by side, with a paired test for every pair of models.

An evaluation is a list of per-user ranks of one split: an `evaluate --json` document, a training run's
RUN/test_ranks.json (the same document, written when the run tests its best model) or the rows of a demo's
results.json. Runs given the same name are one model's seeds. Every model must rank the same users on the same
split; their per-user values are compared with `pmmrec.stats` (the sign-flip test with users as clusters and the
seed x user bootstrap, Holm-adjusted over the pairs).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pmmrec.errors import ConfigError
from pmmrec.jsonfile import read_json_file
from pmmrec.stats import METRICS, compare, per_user_metric, summarise, with_holm

RUN_RANKS = "test_ranks.json"  # what a training run writes when it tests its best model
DEMO_RESULTS = "results.json"
MAX_BYTES = 512 << 20


@dataclass(frozen=True)
class RankedRun:
    """One evaluation: whose it is, where it came from, and each user's rank of their target."""

    name: str
    source: str
    split: str | None
    users: tuple[str, ...] | None  # None: users by position (a demo's rows)
    ranks: np.ndarray
    dataset: dict[str, Any] | None = None


def load_runs(arguments: Sequence[str]) -> list[RankedRun]:
    """Every evaluation named on the command line (`PATH` or `NAME=PATH`; a demo gives one per row)."""
    runs: list[RankedRun] = []
    for argument in arguments:
        name, path = None, Path(argument)
        if "=" in argument and not path.exists():
            given, _, rest = argument.partition("=")
            name, path = given or None, Path(rest)
        runs += _runs_at(path, name)
    if not runs:
        raise ConfigError("give the evaluations to compare")
    return runs


def _runs_at(path: Path, name: str | None) -> list[RankedRun]:
    if path.is_dir():
        if (path / RUN_RANKS).is_file():
            return [_evaluation(path / RUN_RANKS, name or path.name)]
        if (path / DEMO_RESULTS).is_file():
            return _demo_rows(path / DEMO_RESULTS, name)
        raise ConfigError(f"{path}: holds neither {RUN_RANKS} (a training run) nor {DEMO_RESULTS} (a demo)")
    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder")
    document = read_json_file(path, error=ConfigError, max_bytes=MAX_BYTES)
    if isinstance(document, dict) and isinstance(document.get("test_ranks"), dict):
        return _demo_rows(path, name, document)
    return [_evaluation(path, name or path.stem, document)]


def _ranks(values: Any, where: str) -> np.ndarray:
    if not isinstance(values, list) or not values or not all(isinstance(v, int) and v >= 1 for v in values):
        raise ConfigError(f"{where}: expected a non-empty list of ranks (integers >= 1)")
    return np.asarray(values, dtype=np.int64)


def _evaluation(path: Path, name: str, document: Any = None) -> RankedRun:
    if document is None:
        document = read_json_file(path, error=ConfigError, max_bytes=MAX_BYTES)
    if not isinstance(document, dict) or "ranks" not in document or "users" not in document:
        raise ConfigError(f"{path}: not an evaluation (no users and ranks; write one with `pmmrec evaluate --json`)")
    users = document["users"]
    ranks = _ranks(document["ranks"], f"{path}: ranks")
    if not isinstance(users, list) or len(users) != len(ranks) or not all(isinstance(u, str) for u in users):
        raise ConfigError(f"{path}: users must be a list of user ids, one per rank")
    dataset = document.get("dataset") if isinstance(document.get("dataset"), dict) else None
    return RankedRun(name, str(path), document.get("split"), tuple(users), ranks, dataset)


def _demo_rows(path: Path, name: str | None, document: Any = None) -> list[RankedRun]:
    if document is None:
        document = read_json_file(path, error=ConfigError, max_bytes=MAX_BYTES)
    rows = document.get("test_ranks") if isinstance(document, dict) else None
    if not isinstance(rows, dict) or not rows:
        raise ConfigError(f"{path}: no test_ranks (not a demo's results.json)")
    prefix = f"{name}/" if name else ""
    return [
        RankedRun(f"{prefix}{row}", str(path), "test", None, _ranks(ranks, f"{path}: test_ranks.{row}"))
        for row, ranks in rows.items()
    ]


def _aligned(runs: list[RankedRun]) -> tuple[dict[str, list[np.ndarray]], int]:
    """Each model's per-seed ranks, every run's users in the first run's order; refuses runs that cannot pair."""
    first = runs[0]
    for run in runs[1:]:
        if run.split != first.split:
            raise ConfigError(f"{run.source}: ranks the {run.split} split, {first.source} the {first.split} split")
        if (run.users is None) != (first.users is None):
            raise ConfigError(f"{run.source} and {first.source}: one names its users, the other does not; cannot pair")
        if run.dataset and first.dataset and run.dataset.get("users_sha256") != first.dataset.get("users_sha256"):
            raise ConfigError(f"{run.source} and {first.source} were evaluated on different datasets")
    grouped: dict[str, list[np.ndarray]] = {}
    for run in runs:
        ranks = run.ranks
        if run.users is not None and first.users is not None and run.users != first.users:
            if set(run.users) != set(first.users) or len(run.users) != len(first.users):
                raise ConfigError(f"{run.source} and {first.source} rank different users; cannot pair them")
            position = {user: index for index, user in enumerate(run.users)}
            ranks = ranks[[position[user] for user in first.users]]
        if len(ranks) != len(first.ranks):
            raise ConfigError(f"{run.source} has {len(ranks)} users, {first.source} {len(first.ranks)}; cannot pair")
        grouped.setdefault(run.name, []).append(ranks)
    return grouped, len(first.ranks)


def compare_runs(arguments: Sequence[str], *, metric: str = "ndcg", k: int = 10, alpha: float = 0.05) -> dict[str, Any]:
    """Summaries (HR, NDCG, MRR at k with 95% intervals) of every model and a paired test of `metric`@k for every
    pair, Holm-adjusted over the pairs; JSON-ready."""
    if metric not in METRICS:
        raise ConfigError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"--alpha must be between 0 and 1, got {alpha}")
    runs = load_runs(arguments)
    grouped, users = _aligned(runs)
    if len(grouped) < 2:
        raise ConfigError(f"only one model ({next(iter(grouped))}); give at least two different names to compare")
    values = {name: {m: [per_user_metric(r, m, k) for r in ranks] for m in METRICS} for name, ranks in grouped.items()}
    models = []
    for name, per_metric in values.items():
        row: dict[str, Any] = {"model": name, "runs": len(grouped[name])}
        for m, seeds in per_metric.items():
            summary = summarise(seeds)
            row[f"{m}@{k}"], row[f"{m}@{k}_ci"] = summary.mean, [summary.ci_low, summary.ci_high]
        models.append(row)
    tests = [compare(a, values[a][metric], b, values[b][metric]) for a, b in itertools.combinations(values, 2)]
    return {
        "split": runs[0].split,
        "users": users,
        "k": k,
        "metric": f"{metric}@{k}",
        "alpha": alpha,
        "sources": {run.source: run.name for run in runs},
        "models": models,
        "comparisons": [test.as_dict(alpha) for test in with_holm(tests)],
    }


def _p(value: float) -> str:
    return f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"


def format_comparison(report: dict[str, Any]) -> str:
    """The models' table and one line per paired test, with its verdict."""
    k = report["k"]
    columns = [f"{m}@{k}" for m in METRICS]
    header = ["model", "runs", *(f"{c.upper()} [95% CI]" for c in columns)]
    rows = [
        [
            row["model"],
            str(row["runs"]),
            *(f"{row[c]:.4f} [{row[c + '_ci'][0]:.4f}, {row[c + '_ci'][1]:.4f}]" for c in columns),
        ]
        for row in report["models"]
    ]
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    lines = [f"{report['split']} split, {report['users']:,} users"]
    lines += [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *rows]
    ]
    lines.append(
        f"paired tests on per-user {report['metric'].upper()} (sign-flip with users as clusters, seed x user "
        f"bootstrap; Holm over {len(report['comparisons'])}; significant below {report['alpha']}):"
    )
    for test in report["comparisons"]:
        lines.append(
            f"  {test['a']} vs {test['b']}: {test['difference']:+.4f} [{test['ci_low']:+.4f}, {test['ci_high']:+.4f}], "
            f"p sign-flip {_p(test['p_sign_flip'])} ({test['sign_flip']}), p bootstrap {_p(test['p_bootstrap'])}, "
            f"p Holm {_p(test['p_holm'])}, {test['differing']} of {test['users']} users differ: {test['verdict']}"
        )
    return "\n".join(lines)
