"""stats.py: the intervals of reported rates and the yardsticks of a comparison."""

import math

import numpy as np
import pytest
import torch

from running import stats


def test_wilson_interval_of_a_known_case():
    lo, hi = stats.wilson(8, 10)
    assert (round(lo, 2), round(hi, 2)) == (0.49, 0.94)
    assert stats.wilson(0, 10)[0] == 0.0 and stats.wilson(10, 10)[1] == 1.0
    assert stats.wilson(0, 10)[1] > 0.2                       # not the empty interval of p ± z·se


def test_bootstrap_interval():
    assert stats.bootstrap_mean(torch.ones(5)) == [1.0, 1.0]
    lo, hi = stats.bootstrap_mean(torch.arange(100.0))
    assert lo < 49.5 < hi and hi - lo < 15
    assert stats.bootstrap_mean(torch.arange(100.0)) == [lo, hi]        # seeded: the same numbers


def test_group_bootstrap_of_groups_that_agree_inside_is_one_prompt_per_group():
    """Ten countries of five prompts each, every prompt of a country with the same outcome: the prompts add no
    information, so the interval is the one of ten prompts (the same draws: the same numbers), and wider than
    the prompt-level bootstrap that takes the fifty prompts as independent."""
    per_group = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1], dtype=float)
    values, groups = np.repeat(per_group, 5), np.repeat([f"country {g}" for g in range(10)], 5)
    grouped = stats.group_bootstrap(values, groups, seed=3)
    assert grouped == pytest.approx(stats.group_bootstrap(per_group, None, seed=3))
    assert grouped == stats.group_bootstrap(values, groups, seed=3)                   # seeded
    lo, hi = stats.group_bootstrap(values, None, seed=3)
    assert grouped[1] - grouped[0] > 1.5 * (hi - lo) and lo <= 0.6 <= hi
    assert stats.group_bootstrap(np.ones(7), [0, 0, 1, 1, 1, 2, 2]) == [1.0, 1.0]


def test_group_bootstrap_of_any_statistic_and_unequal_groups():
    """A statistic given as a function goes through the general path; for the mean it gives what the fast one
    gives, unequal groups included (a draw's mean is over all prompts of the drawn groups)."""
    x, g = np.arange(9.0), [0, 0, 0, 0, 1, 1, 2, 3, 3]
    assert stats.group_bootstrap(x, g, stat=lambda v: float(np.mean(v)), n=200) == pytest.approx(
        stats.group_bootstrap(x, g, n=200))
    rows = np.stack([[1, 1, 1, 0, 0, 1], [0, 0, 0, 0, 1, 1]], 1)                       # [flipped, side]
    lo, hi = stats.group_bootstrap(rows, stat=lambda r: stats.balanced(stats.by_side(r[:, 0], r[:, 1])), n=300)
    assert 0 <= lo <= stats.balanced(stats.by_side(rows[:, 0], rows[:, 1])) <= hi <= 1


def test_paired_bootstrap():
    a = np.array([0.1, 0.5, 0.2, 0.9, 0.4, 0.3])
    assert stats.paired_bootstrap(a + 1, a) == pytest.approx([1.0, 1.0])     # a shift: every prompt agrees
    assert stats.paired_bootstrap(a, a, groups=[0, 0, 1, 1, 2, 2]) == [0.0, 0.0]
    flips_a, flips_b = np.array([1, 1, 0, 0, 1, 0] * 5), np.array([1, 0, 1, 1, 1, 1] * 5)
    lo, hi = stats.paired_bootstrap(flips_b, flips_a)
    assert lo < 2 / 6 < hi and lo > 0
    # pairing: the same draws for both, narrower than two independent intervals would suggest
    assert hi - lo < (stats.group_bootstrap(flips_b)[1] - stats.group_bootstrap(flips_b)[0]) * 2


def test_mcnemar_exact_by_hand():
    """n01 = 2, n10 = 9: p = 2·P(X <= 2), X ~ Binomial(11, 1/2) = 2·(1 + 11 + 55) / 2048 = 0.0654...;
    the concordant prompts do not count; no discordant prompt: p = 1; a balanced table is capped at 1."""
    a = np.array([0] * 2 + [1] * 9 + [1] * 5 + [0] * 4)
    b = np.array([1] * 2 + [0] * 9 + [1] * 5 + [0] * 4)
    r = stats.mcnemar_exact(a, b)
    assert (r["n01"], r["n10"]) == (2, 9) and r["p"] == pytest.approx(2 * 67 / 2048) and round(r["p"], 4) == 0.0654
    assert stats.mcnemar_exact(b, a) == {"p": r["p"], "n01": 9, "n10": 2}
    assert stats.mcnemar_exact([1, 0, 1], [1, 0, 1])["p"] == 1.0
    assert stats.mcnemar_exact([1, 0], [0, 1])["p"] == 1.0                  # 2·P(X <= 1 | 2) = 1.5, capped


def test_holm_by_hand():
    """m = 4: sorted 0.01, 0.02, 0.03, 0.5 -> 4·0.01, 3·0.02, 2·0.03, 1·0.5; None is no test and does not count.
    0.01, 0.04, 0.03: the largest, 1·0.04, is raised to the one before it, 2·0.03 (the order is kept)."""
    assert stats.holm([0.03, 0.5, None, 0.01, 0.02]) == pytest.approx([0.06, 0.5, None, 0.04, 0.06])
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.6, 0.7]) == [1.0, 1.0]                             # capped at 1
    assert stats.holm([]) == []


def test_balanced():
    assert stats.balanced([[1, 1, 1, 0], [0, 1]]) == pytest.approx(0.625)
    assert stats.balanced([[1, 0], []]) == 0.5
    assert [s.tolist() for s in stats.by_side([5, 6, 7], [1, 0, 1])] == [[6], [5, 7]]


def test_standard_error_by_hand_and_over_groups():
    assert stats.standard_error([1, 0, 1, 1]) == pytest.approx(0.25)                   # sqrt(s² / N), s² = 0.25
    # groups that agree inside: the standard error of one value per group, whatever each group's size
    x, g = [1, 1, 1, 0, 0, 1, 1], ["a", "a", "a", "b", "b", "c", "c"]
    S = np.array([3, 0, 2]) - np.array([3, 2, 2]) * (5 / 7)                             # S_g − n_g·m by hand
    assert stats.standard_error(x, g) == pytest.approx(np.sqrt(3 / 2 * (S ** 2).sum()) / 7)
    assert stats.standard_error([1, 1, 0, 0], [0, 0, 1, 1]) > stats.standard_error([1, 1, 0, 0])  # wider when grouped
    assert stats.standard_error([1, 0, 1], [5, 5, 5]) == 0.0                            # one group: no spread to read


def test_auroc_by_hand():
    from running.stats import auroc
    # true scores 3 and 1, false 2, 0, 0: pairs (3>2, 3>0, 3>0, 1<2, 1>0, 1>0) -> 5 of 6
    assert auroc([3, 2, 1, 0, 0], [1, 0, 1, 0, 0]) == pytest.approx(5 / 6)
    assert auroc([1, 1, 1], [1, 0, 0]) == 0.5                                  # a constant map: ties, one half each
    assert auroc([0, 1, 2], [1, 0, 0]) == 0.0
    assert math.isnan(auroc([1, 2], [1, 1]))


def test_precision_at_k_by_hand():
    from running.stats import precision_at_k
    assert precision_at_k([5, 4, 3, 2], [1, 0, 1, 0]) == 0.5                   # k = 2: 5 (true), 4 (false)
    assert precision_at_k([5, 4, 3, 2], [1, 0, 1, 0], k=3) == pytest.approx(2 / 3)
    # k = 2; 9 is true, then one of the three tied 1s (one of them true): 1 + 1/3, over 2
    assert precision_at_k([9, 1, 1, 1], [1, 1, 0, 0]) == pytest.approx((1 + 1 / 3) / 2)
    assert precision_at_k([0, 0, 0, 0], [1, 0, 0, 0]) == 0.25                  # an empty map: chance
