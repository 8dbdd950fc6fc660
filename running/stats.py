"""
The intervals every reported rate carries (docs/method.md, "Metrics"): a flip rate is a share of n prompts, so
it comes with a 95 % Wilson interval; a mean over prompts (the KL) with a percentile bootstrap. And the
yardsticks of a comparison (docs/method.md, "Intervals and comparisons"): intervals that resample whole groups
of prompts, paired differences of two runs, McNemar's exact test and Holm's adjustment.
"""

import math

import numpy as np
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


# ----------------------------------------------------------------------------- yardsticks: groups, pairs, many tests
# Prompts are not independent draws: the prompts of one country, one name set or one review share their
# errors, so an interval that resamples prompts is too narrow when they are grouped. group_bootstrap resamples
# whole groups; paired_bootstrap compares two methods on the same prompts (the same draws for both, which
# removes what the prompts share); mcnemar_exact tests two methods' paired 0/1 outcomes; holm adjusts the
# p-values of a table of tests for their number.


def mean(x) -> float:
    """The mean of x, the default statistic (the bootstraps below compute it without a loop)."""
    return float(np.mean(x))


def balanced(sides) -> float:
    """The mean of per-side rates: sides is a list of per-side outcome vectors (the prompts whose unsteered model
    preferred answer 0, then those that preferred answer 1, ...); each side's mean counts once, whatever its size,
    and an empty side is left out (nan when all are). balanced([[1, 1, 1, 0], [0, 1]]) = (0.75 + 0.5) / 2."""
    rates = [float(np.mean(s)) for s in sides if len(s)]
    return sum(rates) / len(rates) if rates else float("nan")


def by_side(values, side) -> list[np.ndarray]:
    """values (N,) split by side (N,) of 0/1 ids: [values where side == 0, values where side == 1]."""
    values, side = np.asarray(values), np.asarray(side)
    return [values[side == s] for s in (0, 1)]


def _factorize(groups, N: int) -> tuple[np.ndarray, int]:
    """(group number of each prompt, number of groups); groups None: each prompt its own group. Ids are any
    hashable (JSON gives strings or integers), numbered in order of first appearance."""
    if groups is None:
        return np.arange(N), N
    groups = list(groups.tolist() if isinstance(groups, np.ndarray | torch.Tensor) else groups)
    if len(groups) != N:
        raise ValueError(f"{len(groups)} group ids for {N} values")
    ids: dict = {}
    return np.array([ids.setdefault(g, len(ids)) for g in groups], dtype=np.int64), len(ids)


def _replicates(columns: list[np.ndarray], groups, stat, n: int, seed: int) -> list[np.ndarray]:
    """stat of each column over n resamples of whole groups: draw r takes len(groups) groups with replacement
    (numpy's default_rng(seed)), the same groups for every column (paired), and all prompts of each. Returns one
    (n,) array per column. The draws depend only on (number of groups, n, seed)."""
    N = len(columns[0])
    if N == 0:
        raise ValueError("no values to resample")
    inv, G = _factorize(groups, N)
    draws = np.random.default_rng(seed).integers(0, G, size=(n, G))
    out = []
    for x in columns:
        if stat is mean and x.ndim == 1:      # sums and sizes of the drawn groups: no loop over draws
            sums, sizes = np.bincount(inv, weights=x, minlength=G), np.bincount(inv, minlength=G)
            out.append(sums[draws].sum(1) / sizes[draws].sum(1))
        elif groups is None:                  # a group is a prompt: the draw is the prompts
            out.append(np.array([stat(x[d]) for d in draws]))
        else:
            members = [np.flatnonzero(inv == g) for g in range(G)]
            out.append(np.array([stat(x[np.concatenate([members[g] for g in d])]) for d in draws]))
    return out


def _percentile(reps: np.ndarray, level: float) -> list[float]:
    lo, hi = np.nanquantile(reps, [(1 - level) / 2, (1 + level) / 2])   # a stat may be undefined on a draw: nan
    return [float(lo), float(hi)]


def standard_error(values, groups=None) -> float:
    """The standard error of the mean of values (N,) when whole groups are the independent draws (the
    cluster-robust one): with group sums S_g of n_g values and the mean m, sqrt(G / (G − 1) · Σ_g (S_g − n_g·m)²) / N.
    One value per group (groups None) gives the usual sqrt(s² / N) of the sample variance s² (divisor N − 1):
    [1, 0, 1, 1] -> sqrt(0.25 / 4) = 0.25. 0 where there is one group or none."""
    x = np.asarray(values, dtype=np.float64)
    inv, G = _factorize(groups, len(x))
    if G < 2:
        return 0.0
    m = x.mean()
    resid = np.bincount(inv, weights=x - m, minlength=G)         # S_g − n_g·m
    return float(math.sqrt(G / (G - 1) * (resid ** 2).sum()) / len(x))


def group_bootstrap(values, groups=None, stat=mean, n: int = 2000, seed: int = 0, level: float = 0.95) -> list[float]:
    """The percentile-bootstrap interval [lo, hi] of stat(values) that resamples whole groups with replacement.
    values: per-prompt outcomes, (N,) 0/1 or real, or (N, k) rows (a stat of several columns, such as a balanced
    rate of [flipped, side]); groups: (N,) ids (country, name set, review), None for one group per prompt (the
    ordinary bootstrap). Each draw takes as many groups as there are, with all their prompts; stat maps the drawn
    values to a number (mean by default). Deterministic for a seed; with equal-sized groups whose prompts agree
    it gives the same interval as one prompt per group."""
    x = np.asarray(values, dtype=np.float64)
    return _percentile(_replicates([x], groups, stat, n, seed)[0], level)


def paired_bootstrap(a, b, groups=None, stat=mean, n: int = 2000, seed: int = 0,
                     level: float = 0.95) -> list[float]:
    """The percentile-bootstrap interval [lo, hi] of stat(a) - stat(b), two methods' outcomes on the same prompts
    (row i of a and of b is prompt i): each draw takes the same prompts for both, or the same whole groups when
    groups are given (as group_bootstrap)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes of different shapes: {a.shape} and {b.shape}")
    ra, rb = _replicates([a, b], groups, stat, n, seed)
    return _percentile(ra - rb, level)


def mcnemar_exact(a, b) -> dict:
    """McNemar's exact test of two methods' paired 0/1 outcomes a, b on the same prompts: only the discordant
    prompts count, n01 (a 0, b 1) and n10 (a 1, b 0); under "the methods are as good" each is a fair coin, so the
    two-sided p-value is 2·P(X <= min(n01, n10)) for X ~ Binomial(n01 + n10, 1/2), capped at 1 (1 when there is
    no discordant prompt). Exact integer arithmetic. Returns {"p", "n01", "n10"}."""
    a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes of different shapes: {a.shape} and {b.shape}")
    n01, n10 = int((~a & b).sum()), int((a & ~b).sum())
    m = n01 + n10
    tail = sum(math.comb(m, k) for k in range(min(n01, n10) + 1))
    return {"p": min(1.0, 2 * tail / 2 ** m), "n01": n01, "n10": n10}


def holm(pvalues) -> list:
    """Holm's step-down adjustment of m p-values (one table's tests): the i-th smallest (i = 1 ... m) becomes
    max over j <= i of min(1, (m - j + 1)·p_(j)), so the adjusted values keep the order of the raw ones and
    are capped at 1. Returned in the input's order; None entries (rows with no test) stay None and do not count
    in m. holm([0.01, 0.04, 0.03]) = [0.03, 0.06, 0.06]."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    out, m, running = [None] * len(pvalues), len(tested), 0.0
    for j, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - j) * p))
        out[i] = running
    return out


# ----------------------------------------------------------------------------- a map against a ground truth
# A map scores each location; the ground truth says which locations are on the circuit. Both are read with ties
# counted fairly: a map that scores many locations the same (zeros) is not helped by the order they are listed in.


def auroc(scores, truth) -> float:
    """The area under the ROC curve of scores (N,) against truth (N,) of 0/1: the chance that a true location
    scores above a false one, ties counting one half (Mann-Whitney's U / (n_true · n_false)). 1: every true
    location first; 0.5: no better than chance (or a constant map). nan without both kinds."""
    s, t = np.asarray(scores, dtype=float), np.asarray(truth).astype(bool)
    pos, neg = s[t], s[~t]
    if not len(pos) or not len(neg):
        return float("nan")
    above = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(above / (len(pos) * len(neg)))


def precision_at_k(scores, truth, k: int | None = None) -> float:
    """The share of true locations among the k highest scores (k: the truth's size), ties at the k-th score
    taken at random: the expected share, those above it counting fully and the tied ones by their share."""
    s, t = np.asarray(scores, dtype=float), np.asarray(truth).astype(bool)
    k = int(t.sum()) if k is None else k
    if k <= 0:
        return float("nan")
    kth = np.sort(s)[::-1][k - 1]
    above, tied = s > kth, s == kth
    fill = k - int(above.sum())                          # places left for the tied locations
    return float((t[above].sum() + fill * t[tied].sum() / tied.sum()) / k)
