"""
The intervals every reported rate carries (docs/method.md, "Metrics"): a flip rate is a share of n prompts, so
it comes with a 95 % Wilson interval; a mean over prompts (the KL) with a percentile bootstrap.
"""

import math

import torch


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """The 95 % Wilson score interval of a rate k/n (it stays inside [0, 1] and is honest at 0 and n,
    where k/n ± z·sqrt(p(1-p)/n) collapses to a point): [lo, hi]. 8 of 10 -> [0.49, 0.94]."""
    if n == 0:
        return [0.0, 1.0]
    p, z2 = k / n, z * z
    centre, half = (p + z2 / (2 * n)) / (1 + z2 / n), z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return [max(0.0, centre - half), min(1.0, centre + half)]


def bootstrap_mean(x: torch.Tensor, n_boot: int = 1000, seed: int = 0) -> list[float]:
    """The 95 % percentile-bootstrap interval of the mean of x (N,): [lo, hi], over n_boot resamples
    of the prompts (seeded, so the same numbers every time)."""
    x = x.double().cpu()
    idx = torch.randint(0, len(x), (n_boot, len(x)), generator=torch.Generator().manual_seed(seed))
    lo, hi = torch.quantile(x[idx].mean(1), torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return [lo, hi]
