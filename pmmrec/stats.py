"""Statistics over users for ranking metrics: per-user values, bootstrap confidence intervals, paired tests.

A test set of a few hundred users is a sample: two models' means differ by chance. Every figure pmmrec reports
carries a 95% bootstrap interval over users, and every "A beats B" a paired test over the same users (the paired
bootstrap and the Wilcoxon signed-rank test on per-user values). Several seeds of a model are averaged per user
first, so the interval and the test see the model, not one seed's luck; the users are what is resampled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pmmrec.errors import ConfigError

METRICS = ("hr", "ndcg", "mrr")
DEFAULT_RESAMPLES = 10_000


def per_user_metric(ranks: np.ndarray | Sequence[int], metric: str = "ndcg", k: int = 10) -> np.ndarray:
    """Per-user values of HR@k, NDCG@k or MRR@k from 1-based ranks (the same formulas as the evaluation)."""
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    values = np.asarray(ranks, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or bool((values < 1).any()):
        raise ConfigError("ranks must be a non-empty 1-D array of ranks >= 1")
    hit = (values <= k).astype(np.float64)
    if metric == "hr":
        return hit
    if metric == "ndcg":
        return hit / np.log2(values + 1.0)
    return hit / values


def seed_mean(per_seed: Sequence[np.ndarray]) -> np.ndarray:
    """Per-user mean over seeds (every seed must hold the same users in the same order)."""
    arrays = [np.asarray(values, dtype=np.float64) for values in per_seed]
    if not arrays or len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1:
        raise ConfigError("per-seed values must be non-empty 1-D arrays of equal length (the same users)")
    return np.mean(np.stack(arrays), axis=0)


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean over users (sample standard deviation / sqrt(n))."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return float("nan")
    return float(values.std(ddof=1) / math.sqrt(values.size))


def _resample_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of `resamples` bootstrap samples of the users (rows drawn with replacement), in blocks."""
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    means = np.empty(resamples, dtype=np.float64)
    block = max(1, min(resamples, 2_000_000 // max(n, 1)))
    for start in range(0, resamples, block):
        stop = min(start + block, resamples)
        indices = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[indices].mean(axis=1)
    return means


def bootstrap_ci(
    values: np.ndarray, *, level: float = 0.95, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over users."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ConfigError("bootstrap_ci needs a non-empty 1-D array of per-user values")
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level must be in (0, 1), got {level}")
    means = _resample_means(values, resamples, seed)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def paired_bootstrap_p(a: np.ndarray, b: np.ndarray, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> float:
    """Two-sided p-value of mean(a - b) = 0 by the paired bootstrap over users.

    The bootstrap distribution of the mean difference is shifted to mean 0 (the null), and p is the share of
    resampled differences at least as far from 0 as the observed one (+1 smoothing, so p is never exactly 0).
    """
    diff = _paired(a, b)
    observed = float(diff.mean())
    means = _resample_means(diff, resamples, seed) - observed
    extreme = int(np.sum(np.abs(means) >= abs(observed) - 1e-15))
    return (extreme + 1) / (resamples + 1)


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test on per-user differences (zero differences dropped)."""
    from scipy.stats import wilcoxon

    diff = _paired(a, b)
    if not np.any(diff != 0.0):
        return 1.0
    return float(wilcoxon(diff, zero_method="wilcox", alternative="two-sided").pvalue)


def _paired(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ConfigError(f"paired tests need per-user values of the same users, got shapes {a.shape} and {b.shape}")
    return a - b


@dataclass(frozen=True)
class Summary:
    """Mean of a per-user metric with its 95% bootstrap interval and standard error."""

    mean: float
    ci_low: float
    ci_high: float
    stderr: float
    users: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(values: np.ndarray, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Summary:
    """Mean, 95% bootstrap interval and standard error of per-user values."""
    values = np.asarray(values, dtype=np.float64)
    low, high = bootstrap_ci(values, resamples=resamples, seed=seed)
    return Summary(float(values.mean()), low, high, standard_error(values), int(values.size))


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of model A with model B on the same users."""

    a: str
    b: str
    mean_a: float
    mean_b: float
    difference: float
    ci_low: float
    ci_high: float
    p_bootstrap: float
    p_wilcoxon: float
    users: int

    def significant(self, alpha: float = 0.05) -> bool:
        """Both tests reject equality at `alpha` (two-sided)."""
        return self.p_bootstrap < alpha and self.p_wilcoxon < alpha

    def verdict(self, alpha: float = 0.05) -> str:
        """'A > B', 'A < B' (both significant) or 'A ~ B' (not significant)."""
        if not self.significant(alpha):
            return f"{self.a} ~ {self.b}"
        return f"{self.a} > {self.b}" if self.difference > 0 else f"{self.a} < {self.b}"

    def as_dict(self, alpha: float = 0.05) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant(alpha), "verdict": self.verdict(alpha)}


def compare(
    name_a: str,
    a: np.ndarray,
    name_b: str,
    b: np.ndarray,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Comparison:
    """Paired comparison of per-user values of A and B: difference, its 95% interval, both tests' p-values."""
    diff = _paired(a, b)
    low, high = bootstrap_ci(diff, resamples=resamples, seed=seed)
    return Comparison(
        a=name_a,
        b=name_b,
        mean_a=float(np.mean(a)),
        mean_b=float(np.mean(b)),
        difference=float(diff.mean()),
        ci_low=low,
        ci_high=high,
        p_bootstrap=paired_bootstrap_p(a, b, resamples=resamples, seed=seed),
        p_wilcoxon=wilcoxon_p(a, b),
        users=int(diff.size),
    )
