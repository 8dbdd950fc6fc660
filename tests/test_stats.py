"""stats.py: the intervals of reported rates."""

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
