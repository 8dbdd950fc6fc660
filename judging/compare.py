"""
One way of generating (a method at a strength, or a prompt with an instruction) against the unsteered model on the
same prompts: how far VADER's compound score moved, how much the judges' perplexity rose, how repetitive the text
is, each with a 95 % percentile-bootstrap interval that resamples the prompts (running/stats.py), paired where two
ways are compared (the same prompts drawn for both).

Per prompt the S sampled continuations count together: its compound score and distinct-2 are their means (a
continuation with no bigram left out of distinct-2), its negative log-likelihood and token count their sums, so a
set's perplexity exp(Σ nll / Σ n) weights every token alike. The rise of perplexity is ppl / ppl_unsteered − 1;
its interval is that of the paired difference of log-perplexities, exp(·) − 1.
"""

import math

import numpy as np

from running import stats


def pooled(rows: np.ndarray) -> float:
    """Σ nll / Σ n of rows (P, 2) of (nll, n): the log-perplexity of the tokens of those prompts."""
    return float(rows[:, 0].sum() / rows[:, 1].sum())


def per_prompt(judged: dict) -> dict:
    """judged: "compound", "distinct2" (P, S) and "nll/<judge>", "n/<judge>" (P, S) -> per-prompt values."""
    out = {"compound": np.nanmean(np.asarray(judged["compound"], dtype=float), axis=1)}
    d = np.asarray(judged["distinct2"], dtype=float)
    out["distinct2"] = np.array([np.nanmean(r) if np.isfinite(r).any() else np.nan for r in d])
    for key in judged:
        if key.startswith("nll/"):
            name = key[4:]
            out[f"ppl/{name}"] = np.stack([np.asarray(judged[key], float).sum(1),
                                           np.asarray(judged[f"n/{name}"], float).sum(1)], axis=1)
    return out


def summarize(judged: dict, unsteered: dict, n: int = 2000) -> dict:
    """The way `judged` against `unsteered` (per_prompt's input, the same P prompts in the same order): mean
    compound and its change, each judge's perplexity and its rise, mean distinct-2, with intervals."""
    a, b = per_prompt(judged), per_prompt(unsteered)
    P = len(a["compound"])
    out = {"prompts": P, "compound": stats.mean(a["compound"]),
           "compound_ci": stats.group_bootstrap(a["compound"], n=n),
           "delta_compound": stats.mean(a["compound"]) - stats.mean(b["compound"]),
           "delta_compound_ci": stats.paired_bootstrap(a["compound"], b["compound"], n=n)}
    ok = np.isfinite(a["distinct2"])
    out["distinct2"] = float(np.mean(a["distinct2"][ok])) if ok.any() else math.nan
    out["distinct2_ci"] = stats.group_bootstrap(a["distinct2"][ok], n=n) if ok.any() else [math.nan, math.nan]
    for key in a:
        if key.startswith("ppl/"):
            rows, base = a[key], b[key]
            keep = (rows[:, 1] > 0) & (base[:, 1] > 0)           # prompts with a scored token in both
            d = pooled(rows[keep]) - pooled(base[keep])
            lo, hi = stats.paired_bootstrap(rows[keep], base[keep], stat=pooled, n=n)
            name = key[4:]
            out[f"ppl/{name}"] = math.exp(pooled(rows[keep]))
            out[f"rise/{name}"], out[f"rise_ci/{name}"] = math.exp(d) - 1, [math.exp(lo) - 1, math.exp(hi) - 1]
    return out


def choose(sweep: dict, sign: int, judge: str, max_rise: float):
    """Of a method's strengths {strength: summary} (the validation prompts'), the one that moves the compound
    score furthest toward the target (sign · Δ) among those whose perplexity rise under `judge` is at most
    max_rise; None where no strength keeps to it."""
    within = {s: m for s, m in sweep.items() if m[f"rise/{judge}"] <= max_rise}
    return max(within, key=lambda s: sign * within[s]["delta_compound"]) if within else None
