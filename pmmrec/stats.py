"""Statistics over users and seeds for ranking metrics: per-user values, intervals, paired tests, Holm's correction.

A test set of a few hundred users is a sample, and a trained model is one draw of its training seed: two models'
means differ by chance on both counts. Every figure pmmrec reports carries a 95% interval, and every "A beats B"
two paired tests on per-user values (issue 24):

- the **sign-flip test** with users as clusters: each user's differences over seeds are averaged (the cluster), and
  under "no difference" every user's sign is equally likely to be flipped. p is the share of the 2^n sign
  assignments of the n users with a non-zero difference whose |sum| is at least the observed one: **exact** (every
  assignment counted, meet in the middle) when n <= EXACT_USERS, else Monte-Carlo with a fixed seed. It is exact
  where the normal approximation (Wilcoxon's, in scipy) and the percentile bootstrap break down: with 1, 3 or 4
  users that differ, p cannot go below 1.0, 0.25 and 0.125;
- the **seed x user bootstrap**: each resample draws the users with replacement and, independently, each model's
  seeds with replacement (a two-way bootstrap of the crossed user x seed design), so the training seed's variance
  is inside the interval and the test, not averaged away. p is null-centred, two-sided, +1 smoothed.

A difference is significant when the larger of the two p-values, Holm-adjusted within its table, is below alpha.
The number of users with a non-zero difference is reported beside every comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from pmmrec.errors import ConfigError

METRICS = ("hr", "ndcg", "mrr")
DEFAULT_RESAMPLES = 10_000
EXACT_USERS = 30  # sign-flip p by full enumeration up to this many non-zero differences (2^15 sums per half)
SIGN_FLIP_DRAWS = 100_000  # Monte-Carlo sign vectors beyond EXACT_USERS
_BLOCK_CELLS = 2_000_000  # resamples x users per block of work


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


def per_seed(values: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Per-user values as a [seeds, users] array: a 1-D array is one seed; every seed must hold the same users."""
    if isinstance(values, np.ndarray) and values.ndim == 1:
        values = [values]
    arrays = [np.asarray(v, dtype=np.float64) for v in values]
    if not arrays or len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1 or arrays[0].size == 0:
        raise ConfigError("per-seed values must be non-empty 1-D arrays of equal length (the same users)")
    return np.stack(arrays)


def seed_mean(values: Sequence[np.ndarray]) -> np.ndarray:
    """Per-user mean over seeds (every seed must hold the same users in the same order)."""
    return per_seed(values).mean(axis=0)


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean over users (sample standard deviation / sqrt(n))."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return float("nan")
    return float(values.std(ddof=1) / math.sqrt(values.size))


# ---- resampling -----------------------------------------------------------------------------------------------


def seed_user_means(
    models: Sequence[np.ndarray], signs: Sequence[float], resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> np.ndarray:
    """Two-way bootstrap means of sum_k sign_k * model_k over users (models: [seeds_k, users] arrays).

    Each resample draws the users with replacement (the same users for every model: the pairing) and each model's
    seeds with replacement, independently. With one seed per model this is the paired bootstrap over users.
    """
    rng = np.random.default_rng(seed)
    users = models[0].shape[1]
    means = np.empty(resamples, dtype=np.float64)
    block = max(1, min(resamples, _BLOCK_CELLS // max(users, 1)))
    for start in range(0, resamples, block):
        size = min(block, resamples - start)
        picked = rng.integers(0, users, size=(size, users))
        total = np.zeros((size, users), dtype=np.float64)
        for values, sign in zip(models, signs, strict=True):
            seeds = values.shape[0]
            weights = rng.multinomial(seeds, np.full(seeds, 1.0 / seeds), size=size) / seeds if seeds > 1 else None
            per_user = values[0][None, :] if weights is None else weights @ values
            total += sign * np.take_along_axis(np.broadcast_to(per_user, (size, users)), picked, axis=1)
        means[start : start + size] = total.mean(axis=1)
    return means


def bootstrap_ci(
    values: np.ndarray | Sequence[np.ndarray],
    *,
    level: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: over users (1-D values) or over seeds x users ([seeds, users])."""
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level must be in (0, 1), got {level}")
    means = seed_user_means([per_seed(values)], [1.0], resamples, seed)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def _paired(
    a: np.ndarray | Sequence[np.ndarray], b: np.ndarray | Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    a_seeds, b_seeds = per_seed(a), per_seed(b)
    if a_seeds.shape[1] != b_seeds.shape[1]:
        raise ConfigError(
            f"paired tests need per-user values of the same users, got {a_seeds.shape[1]} and {b_seeds.shape[1]} users"
        )
    return a_seeds, b_seeds


def seed_user_bootstrap(
    a: np.ndarray | Sequence[np.ndarray],
    b: np.ndarray | Sequence[np.ndarray],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(interval low, interval high, two-sided p) of mean(A) - mean(B) by the seed x user bootstrap.

    p: the bootstrap distribution is shifted to mean 0 (the null) and p is the share of resampled differences at
    least as far from 0 as the observed one, +1 smoothed (never exactly 0).
    """
    a_seeds, b_seeds = _paired(a, b)
    observed = float(a_seeds.mean() - b_seeds.mean())
    means = seed_user_means([a_seeds, b_seeds], [1.0, -1.0], resamples, seed)
    tail = (1.0 - level) / 2.0
    extreme = int(np.sum(np.abs(means - observed) >= abs(observed) - 1e-15))
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail)), (extreme + 1) / (resamples + 1)


# ---- the sign-flip test ---------------------------------------------------------------------------------------


def _signed_sums(values: np.ndarray) -> np.ndarray:
    """The 2^len sums of +-values (every sign assignment)."""
    sums = np.zeros(1, dtype=np.float64)
    for value in values:
        sums = np.concatenate([sums + value, sums - value])
    return sums


def sign_flip_p(
    differences: np.ndarray, *, draws: int = SIGN_FLIP_DRAWS, seed: int = 0, exact_users: int = EXACT_USERS
) -> tuple[float, str]:
    """Two-sided sign-flip test of mean(differences) = 0 over users; returns (p, 'exact' or 'monte-carlo').

    Zero differences cannot change sign and are left out (they change no sum). With n non-zero differences, p is
    the share of the 2^n sign assignments whose |sum| is at least the observed |sum| (a relative tolerance of 1e-9
    absorbs rounding): counted exactly by meet in the middle when n <= exact_users, else estimated from `draws`
    random assignments with a fixed seed, p = (1 + hits) / (1 + draws).
    """
    values = np.asarray(differences, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ConfigError("sign_flip_p needs a non-empty 1-D array of per-user differences")
    values = values[values != 0.0]
    if values.size == 0:
        return 1.0, "exact"
    threshold = abs(float(values.sum())) - 1e-9 * float(np.abs(values).sum())
    if threshold <= 0.0:  # an observed sum of 0: every assignment is at least as extreme
        return 1.0, "exact"
    if values.size <= exact_users:
        half = values.size // 2
        left = _signed_sums(values[:half])
        right = np.sort(_signed_sums(values[half:]))
        at_least = right.size - np.searchsorted(right, threshold - left, side="left")  # l + r >= threshold
        at_most = np.searchsorted(right, -threshold - left, side="right")  # l + r <= -threshold
        return float((at_least + at_most).sum()) / 2.0**values.size, "exact"
    rng = np.random.default_rng(seed)
    hits = 0
    block = max(1, _BLOCK_CELLS // values.size)
    total = float(values.sum())
    for start in range(0, draws, block):
        size = min(block, draws - start)
        bits = np.unpackbits(rng.integers(0, 256, size=(size, (values.size + 7) // 8), dtype=np.uint8), axis=1)
        sums = 2.0 * (bits[:, : values.size].astype(np.float64) @ values) - total  # sum of (2 bit - 1) x value
        hits += int(np.sum(np.abs(sums) >= threshold))
    return (hits + 1) / (draws + 1), "monte-carlo"


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error over the given tests), in the given order."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = p.size
    adjusted = np.empty(m, dtype=np.float64)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p[index])))
        adjusted[index] = running
    return adjusted.tolist()


# ---- summaries and comparisons --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Mean of a per-user metric with its 95% interval (seeds x users bootstrap) and standard error."""

    mean: float
    ci_low: float
    ci_high: float
    stderr: float
    users: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(
    values: np.ndarray | Sequence[np.ndarray], *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> Summary:
    """Mean, 95% interval and standard error of per-user values (1-D) or per-seed per-user values ([seeds, users]).

    stderr: over users of the seed-averaged values with one seed; with several, the standard deviation of the
    seed x user bootstrap means (so it carries the seed's variance too).
    """
    seeds = per_seed(values)
    means = seed_user_means([seeds], [1.0], resamples, seed)
    low, high = float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))
    stderr = standard_error(seeds[0]) if seeds.shape[0] == 1 else float(means.std(ddof=1))
    return Summary(float(seeds.mean()), low, high, stderr, int(seeds.shape[1]))


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of model A with model B on the same users (see the module docstring for the tests).

    differing: users whose seed-averaged difference is not zero; p: the larger of the two p-values; p_holm: p
    adjusted by Holm within its table (equal to p until `with_holm` sets it).
    """

    a: str
    b: str
    mean_a: float
    mean_b: float
    difference: float
    ci_low: float
    ci_high: float
    p_sign_flip: float
    sign_flip: str
    p_bootstrap: float
    p: float
    p_holm: float
    users: int
    differing: int
    seeds_a: int
    seeds_b: int

    def significant(self, alpha: float = 0.05) -> bool:
        """The Holm-adjusted larger p-value is below `alpha` (two-sided)."""
        return self.p_holm < alpha

    def verdict(self, alpha: float = 0.05) -> str:
        """'A > B', 'A < B' (significant) or 'A ~ B' (not significant)."""
        if not self.significant(alpha):
            return f"{self.a} ~ {self.b}"
        return f"{self.a} > {self.b}" if self.difference > 0 else f"{self.a} < {self.b}"

    def as_dict(self, alpha: float = 0.05) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant(alpha), "verdict": self.verdict(alpha)}


def compare(
    name_a: str,
    a: np.ndarray | Sequence[np.ndarray],
    name_b: str,
    b: np.ndarray | Sequence[np.ndarray],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Comparison:
    """Paired comparison of A and B: per-user values (1-D) or per-seed per-user values ([seeds, users]) each."""
    a_seeds, b_seeds = _paired(a, b)
    clusters = a_seeds.mean(axis=0) - b_seeds.mean(axis=0)  # users as clusters of their (user, seed) differences
    low, high, p_boot = seed_user_bootstrap(a_seeds, b_seeds, resamples=resamples, seed=seed)
    p_flip, method = sign_flip_p(clusters, seed=seed)
    p = max(p_flip, p_boot)
    return Comparison(
        a=name_a, b=name_b, mean_a=float(a_seeds.mean()), mean_b=float(b_seeds.mean()),
        difference=float(clusters.mean()), ci_low=low, ci_high=high, p_sign_flip=p_flip, sign_flip=method,
        p_bootstrap=p_boot, p=p, p_holm=p, users=int(clusters.size), differing=int(np.count_nonzero(clusters)),
        seeds_a=int(a_seeds.shape[0]), seeds_b=int(b_seeds.shape[0]),
    )  # fmt: skip


def with_holm(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The comparisons of one table with p_holm set: Holm's correction over their p (the larger p-value each)."""
    adjusted = holm([c.p for c in comparisons]) if comparisons else []
    return [replace(c, p_holm=value) for c, value in zip(comparisons, adjusted, strict=True)]
