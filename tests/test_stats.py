"""pmmrec.stats: per-user metrics, intervals over users and seeds, the exact sign-flip test, the seed x user
bootstrap and Holm's correction (issue 12: every claim carries its significance; issue 24: statistics a reviewer
accepts). Exact reference values are worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pmmrec.errors import ConfigError
from pmmrec.stats import (
    bootstrap_ci,
    compare,
    holm,
    per_user_metric,
    seed_mean,
    seed_user_bootstrap,
    sign_flip_p,
    standard_error,
    summarise,
    with_holm,
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


@pytest.mark.parametrize(
    ("differences", "expected"),
    [
        # +-1+-2+-3: sums 6 4 2 0 0 -2 -4 -6; |s| >= 6 for 2 of 8
        ([1.0, 2.0, 3.0], 0.25),
        # +-1+-2+-3+-0.5: |s| >= 2.5 for 6.5 5.5 4.5 3.5 2.5 and their negatives: 10 of 16
        ([1.0, -2.0, 3.0, 0.5], 0.625),
        # ties: +-2+-1+-1 gives 4 2 2 0 0 -2 -2 -4; |s| >= 4 for 2 of 8
        ([2.0, 1.0, 1.0], 0.25),
        # an observed sum of 0 (in exact arithmetic; 5.6e-17 in floats): every assignment is as extreme
        ([0.1, 0.2, -0.3], 1.0),
        ([1.0, -1.0], 1.0),
        ([0.0, 0.0], 1.0),
    ],
)
def test_the_sign_flip_p_value_is_exact(differences: list[float], expected: float) -> None:
    p, method = sign_flip_p(np.asarray(differences))
    assert method == "exact" and p == pytest.approx(expected, abs=1e-15)


def test_few_users_that_differ_cannot_give_a_small_p() -> None:
    """Issue 24's cases: 1, 3 and 4 of 145 users differ (all the same way): exact p 1.0, 0.25 and 0.125, whatever
    the percentile bootstrap says (0.63, 0.15 and 0.07 were reported)."""
    for differing, expected in ((1, 1.0), (3, 0.25), (4, 0.125)):
        differences = np.zeros(145)
        differences[:differing] = [0.43, 0.1, 0.63, 0.25][:differing]
        assert sign_flip_p(differences) == (expected, "exact")
        comparison = compare("a", differences, "b", np.zeros(145), resamples=2000)
        assert comparison.differing == differing and comparison.p >= expected and not comparison.significant()


def test_monte_carlo_sign_flip_agrees_with_the_exact_count() -> None:
    differences = np.random.default_rng(3).normal(0.05, 0.3, size=31)
    exact, method = sign_flip_p(differences, exact_users=31)
    assert method == "exact"
    estimate, method = sign_flip_p(differences, draws=50_000)
    assert method == "monte-carlo"
    assert abs(estimate - exact) < 4 * math.sqrt(exact * (1 - exact) / 50_000) + 1e-4
    assert sign_flip_p(differences, draws=5_000) == sign_flip_p(differences, draws=5_000)  # fixed seed


def test_holm_adjusts_as_worked_out_by_hand() -> None:
    # sorted 0.01 0.03 0.04 -> 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(0.06, 1 x 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.01]) == pytest.approx([0.5, 0.02])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1, monotone
    assert holm([]) == [] and holm([0.2]) == [0.2]


def test_the_seed_is_a_source_of_variance() -> None:
    """A gain carried by the seeds alone: seed effects +0.03, -0.01, +0.04 (mean +0.02) over a deterministic B. The
    users agree (every user gains the same), so a test over users of seed-averaged values calls it certain; the seed
    x user bootstrap sees three seeds, one of them worse than B, and does not (its p is about 2/27: the seed draws
    whose mean is <= 0 or >= 0.04)."""
    rng = np.random.default_rng(4)
    base = rng.random(400)
    a = [base + shift + rng.normal(0, 1e-4, 400) for shift in (0.03, -0.01, 0.04)]
    low, high, p = seed_user_bootstrap(a, base, resamples=4000)
    assert 0.05 < p < 0.11 and low < 0 < high
    users_only = compare("a", seed_mean(a), "b", base, resamples=4000)
    assert users_only.p_bootstrap < 0.001 and users_only.p_sign_flip < 0.001
    seeds = compare("a", a, "b", base, resamples=4000)
    assert seeds.p_sign_flip < 0.001 and seeds.p == seeds.p_bootstrap and not seeds.significant()
    assert (seeds.seeds_a, seeds.seeds_b, seeds.differing) == (3, 1, 400)
    assert seeds.difference == pytest.approx(0.02, abs=1e-4)


def test_the_paired_test_uses_the_pairing() -> None:
    """Two models with a large per-user spread but a constant small gain: only a paired test sees the gain."""
    rng = np.random.default_rng(2)
    spread = rng.random(300) * 10
    comparison = compare("a", spread + 0.01, "b", spread, resamples=2000)
    assert comparison.significant() and comparison.verdict() == "a > b"
    assert comparison.ci_low == pytest.approx(0.01) and comparison.difference == pytest.approx(0.01)
    reversed_ = compare("b", spread, "a", spread + 0.01, resamples=2000)
    assert reversed_.verdict() == "b < a"


def test_holm_is_applied_within_a_table() -> None:
    rng = np.random.default_rng(5)
    base = rng.random(200)
    strong = compare("a", base + 0.05 + rng.normal(0, 0.02, 200), "b", base, resamples=1000)
    borderline = compare("c", base + rng.normal(0.004, 0.02, 200), "b", base, resamples=1000)
    assert borderline.p < 0.05
    table = with_holm([strong, borderline])
    assert [c.p_holm for c in table] == pytest.approx(holm([strong.p, borderline.p]))
    assert table[0].significant() and table[1].p_holm >= borderline.p


def test_seed_mean_needs_the_same_users() -> None:
    assert seed_mean([np.array([1.0, 0.0]), np.array([0.0, 0.0])]).tolist() == [0.5, 0.0]
    with pytest.raises(ConfigError):
        seed_mean([np.array([1.0]), np.array([1.0, 2.0])])
    with pytest.raises(ConfigError):
        compare("a", np.ones(3), "b", np.ones(4))
