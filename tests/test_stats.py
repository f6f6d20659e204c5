"""pmmrec.stats: per-user metrics, bootstrap intervals over users, paired tests (issue 12: every claim carries its
significance)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pmmrec.errors import ConfigError
from pmmrec.stats import (
    bootstrap_ci,
    compare,
    paired_bootstrap_p,
    per_user_metric,
    seed_mean,
    standard_error,
    summarise,
    wilcoxon_p,
)


def test_per_user_metrics_follow_the_evaluation_formulas() -> None:
    ranks = np.array([1, 3, 10, 11])
    assert per_user_metric(ranks, "hr", 10).tolist() == [1, 1, 1, 0]
    assert per_user_metric(ranks, "ndcg", 10).tolist() == pytest.approx([1, 0.5, 1 / math.log2(11), 0])
    assert per_user_metric(ranks, "mrr", 10).tolist() == pytest.approx([1, 1 / 3, 0.1, 0])
    with pytest.raises(ConfigError):
        per_user_metric(np.array([0, 1]))


def test_bootstrap_interval_brackets_the_mean_and_matches_the_normal_width() -> None:
    """Guards against intervals that ignore the spread over users (the issue's standard-error concern)."""
    values = np.random.default_rng(0).random(2000)
    low, high = bootstrap_ci(values, resamples=4000)
    se = standard_error(values)
    assert low < values.mean() < high
    assert (high - low) == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert bootstrap_ci(np.full(50, 0.3), resamples=200) == pytest.approx((0.3, 0.3))
    summary = summarise(values, resamples=1000)
    assert summary.users == 2000 and summary.stderr == pytest.approx(se)


def test_paired_tests_separate_a_real_difference_from_noise() -> None:
    rng = np.random.default_rng(1)
    base = rng.random(400)
    better = base + 0.05 + rng.normal(0, 0.02, size=400)
    assert paired_bootstrap_p(better, base, resamples=2000) < 0.001
    assert wilcoxon_p(better, base) < 0.001
    same = base + rng.normal(0, 0.02, size=400)
    assert paired_bootstrap_p(same, base, resamples=2000) > 0.01
    assert paired_bootstrap_p(base, base, resamples=500) == 1.0 and wilcoxon_p(base, base) == 1.0


def test_the_paired_test_uses_the_pairing() -> None:
    """Two models with a large per-user spread but a constant small gain: only a paired test sees the gain."""
    rng = np.random.default_rng(2)
    spread = rng.random(300) * 10
    comparison = compare("a", spread + 0.01, "b", spread, resamples=2000)
    assert comparison.significant() and comparison.verdict() == "a > b"
    assert comparison.ci_low == pytest.approx(0.01) and comparison.difference == pytest.approx(0.01)
    reversed_ = compare("b", spread, "a", spread + 0.01, resamples=2000)
    assert reversed_.verdict() == "b < a"


def test_seed_mean_needs_the_same_users() -> None:
    assert seed_mean([np.array([1.0, 0.0]), np.array([0.0, 0.0])]).tolist() == [0.5, 0.0]
    with pytest.raises(ConfigError):
        seed_mean([np.array([1.0]), np.array([1.0, 2.0])])
    with pytest.raises(ConfigError):
        compare("a", np.ones(3), "b", np.ones(4))
