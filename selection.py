"""
Minimal by construction, and the same map from another seed (ours): prune the ℓ1 fit to K units and refit.

The rule is defined once, in docs/method.md, "The selection rule"; this module is its code, and the constants
below are its numbers. A unit is one location, or for DynScalar one probe (site, layer[, head]). The functions,
in the order they are used:

    n_units            how many units the ℓ1 fit makes active (Intervention.floor): the largest K worth trying
    top_k              the K largest units over all sites (Intervention.effect), as masks for Intervention.restrict
    refit              a copy restricted to the kept units, trained again without ℓ1 (REFIT_STEPS at REFIT_LR)
    selection_prompts  the training prompts (at most SELECTION_PROMPTS) on which the path reads its flip rates
    choose             K from --locations, or the smallest on PATH whose refit stays within one standard error
                       of the reference (bisection); its refit, FINISH_STEPS more, is the result

and, for --runs N, stability selection (Meinshausen and Bühlmann, 2010):

    stable             N ℓ1 fits on bootstrap resamples, each pruned to one K; the refit of the units that at
                       least FREQUENCY of them keep
    jaccard            |A ∩ B| / |A ∪ B| of two selections
    frequencies        the share of the fits that keep each unit (stability.png)
    agreement          the two Jaccard indices metrics.json reports: two fits', and the two halves' majority sets
    describe_agreement those two in one line, as train.py prints them
"""

import copy
import re

import torch

import ascale
import metrics
from running import stats
from running.errors import UserError

PATH = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
TOLERANCE = None     # the chosen K's flip rate may be this far below the reference (choose); None: one standard
                     # error of the reference's rate on the selection prompts (the one-standard-error rule)
FREQUENCY = 0.5      # --runs: the final set is the locations kept by at least this share of the fits
REFIT_STEPS = 3      # a refit: short, from the ℓ1 fit's values (near where it ends), at a constant rate
REFIT_LR = 0.06      # of 0.06: 3 Adam steps move a scalar by up to 0.18
FINISH_STEPS = 5     # the chosen K's refit then goes on for this many steps more (the result's, alone)
SELECTION_PROMPTS = 100  # the path reads its flip rates on this many training prompts (selection_prompts)


def active_units(iv: ascale.Intervention) -> dict[str, torch.Tensor]:
    """The units iv moves noticeably, {site: bool mask}: those of effect >= iv.floor, which is ascale.ACTIVE for
    the scalar methods (the definition of active), for SteerVec (‖v‖ is in the activation's units) 1 % of its
    largest ‖v‖."""
    effect = iv.effect()
    floor = max(iv.floor(effect), 1e-12)
    return {s: (e >= floor).cpu() for s, e in effect.items()}


def n_units(iv: ascale.Intervention) -> int:
    """How many units iv moves noticeably (active_units), the largest K worth trying."""
    return count(active_units(iv))


def top_k(effect: dict[str, torch.Tensor], K: int) -> dict[str, torch.Tensor]:
    """The K largest units over all sites: {site: bool mask of the effect's shape}. Ties are broken by
    position in the flattened maps (stable sort), so the same effect gives the same set."""
    flat = torch.cat([e.flatten().float().cpu() for e in effect.values()])
    chosen = torch.zeros(len(flat), dtype=torch.bool)
    chosen[flat.argsort(descending=True, stable=True)[:K]] = True
    keep, i = {}, 0
    for site, e in effect.items():
        keep[site] = chosen[i:i + e.numel()].view(e.shape)
        i += e.numel()
    return keep


def refit(model, iv, batch, keep, *, steps: int = REFIT_STEPS, lr: float = REFIT_LR, seed: int = 0,
          progress: bool = True, **objective) -> tuple[ascale.Intervention, dict]:
    """A copy of iv restricted to `keep` (and to iv.keep: --at, --layers) and trained again for `steps` steps at a
    constant lr, without ℓ1 (objective: lambda_f, margin; lambda_m, if given, is ignored). Returns (iv, curve)."""
    iv = copy.deepcopy(iv)
    iv.restrict(keep if iv.keep is None else {s: keep[s].to(iv.device) & iv.keep[s] for s in iv.sites})
    objective = {k: v for k, v in objective.items() if k != "lambda_m"}
    curve = ascale.fit(model, iv, batch, steps=steps, lr=lr, seed=seed, schedule="constant", lambda_m=0.0,
                       progress=progress, **objective)
    return iv, curve


def check_positions(at: list[int], n: int) -> None:
    """--at: each position must be one of the prompts' n positions (slots), counted from 0 or from the end (-1)."""
    wrong = [p for p in at if not -n <= p < n]
    if wrong or not at:
        raise UserError(f"--at {','.join(map(str, at))}: the prompts have {n} positions (slots); give some of 0 ..."
                        f" {n - 1}, or -1 ... -{n} from the end")


def at_positions(iv: ascale.Intervention, at: list[int]) -> dict[str, torch.Tensor]:
    """The units of a position-tied intervention at the positions (slots) `at`, as masks for Intervention.restrict:
    every layer (and head) there, nothing elsewhere. Its units have the position on their second axis, (L, T[, nh])."""
    check_positions(at, iv.positions or 0)
    keep = {s: torch.zeros(e.shape, dtype=torch.bool) for s, e in iv.effect().items()}
    for m in keep.values():
        m[:, at] = True
    return keep


def parse_layers(spec: str) -> list[tuple[int, int | None]]:
    """--layers: comma-separated layers and ranges, A-B or A- (A to the last layer), as (first, last or None);
    ValueError where it is not that."""
    ranges = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(-(\d*))?", part.strip())
        if not m or (m[3] and int(m[3]) < int(m[1])):
            raise ValueError(part)
        ranges.append((int(m[1]), int(m[1]) if not m[2] else int(m[3]) if m[3] else None))
    return ranges


def check_layers(ranges: list[tuple[int, int | None]], n_layer: int) -> list[int]:
    """--layers: the layers parse_layers' ranges name (sorted), each one of the model's 0 ... n_layer - 1, some."""
    layers = sorted({i for a, b in ranges for i in range(a, n_layer if b is None else b + 1)})
    if not layers or layers[-1] >= n_layer:
        spec = ",".join(f"{a}" if a == b else f"{a}-{'' if b is None else b}" for a, b in ranges)
        raise UserError(f"--layers {spec}: the model has {n_layer} layers; give some of 0 ... {n_layer - 1}")
    return layers


def at_layers(iv: ascale.Intervention, layers: list[int]) -> dict[str, torch.Tensor]:
    """The units of an intervention at `layers`, as masks for Intervention.restrict: every position (and head)
    there, nothing elsewhere. Its units have the layer on their first axis, (L[, T][, nh]), tied or position-free."""
    keep = {}
    for s, e in iv.effect().items():
        if e.dim() == 0 or e.shape[0] != iv.n_layer:
            raise UserError(f"--layers: {iv.method}'s units have no layer axis first (shape {tuple(e.shape)} at {s})")
        keep[s] = torch.zeros(e.shape, dtype=torch.bool)
        keep[s][layers] = True
    return keep


def top_k_kept(iv: ascale.Intervention, K: int) -> dict[str, torch.Tensor]:
    """top_k of iv's effect, within iv.keep where iv is restricted (--at, --layers): a dropped unit is never kept."""
    if iv.keep is None:
        return top_k(iv.effect(), K)
    keep = top_k({s: torch.where(iv.keep[s].to(e.device), e, -1.0) for s, e in iv.effect().items()}, K)
    return {s: k & iv.keep[s].cpu() for s, k in keep.items()}


def count(keep: dict[str, torch.Tensor]) -> int:
    return sum(int(k.sum()) for k in keep.values())


def one_standard_error(flipped, groups=None) -> float:
    """The tolerance of the one-standard-error rule: the standard error of the reference's flip rate over the
    selection prompts' groups (stats.standard_error), at least 1/n of n prompts (ours): a reference that flips every
    prompt has a standard error of 0, and would otherwise refuse every K that misses a single prompt."""
    return max(stats.standard_error(flipped, groups), 1 / len(flipped))


def selection_prompts(train: ascale.Batch, n: int = SELECTION_PROMPTS) -> ascale.Batch:
    """Every k-th training prompt, at most n of them (all when there are no more): where the path reads its flip
    rates. Spread over the set (its countries, templates), the same prompts for every K, no random draw."""
    return train[::-(-len(train) // n)] if len(train) > n else train


def choose(model, iv, batches, *, locations: int | None = None, tolerance: float | None = TOLERANCE,
           refit_steps: int = REFIT_STEPS, finish_steps: int = FINISH_STEPS, select_prompts: int = SELECTION_PROMPTS,
           seed: int = 0, progress: bool = True, **objective):
    """Prune the ℓ1 fit iv to K units and refit (docs/method.md, "The selection rule"). K = `locations`, or the smallest
    K on PATH whose refit (`refit`: refit_steps steps at REFIT_LR, from the ℓ1 fit's values) reaches the
    reference flip rate minus `tolerance` (None: the reference's standard error over the selection prompts'
    groups, at least one prompt's share: one_standard_error), found by bisection (the flip rate grows with K,
    near enough). Flip rates are read on the validation split where batches has one ("val"), else on
    `selection_prompts` (training prompts); the refits train on all the training prompts. batches: {"train",
    "test"[, "val"]} (the test set is not read here).
    Returns (the chosen K's refit, trained finish_steps more, record): record["path"] lists each K tried
    with its flip rate and KL on the selection prompts (after its refit_steps, what the rule compares)."""
    train = batches["train"]
    split = "validation" if batches.get("val") is not None else "train"   # never the test split
    select = batches["val"] if split == "validation" else selection_prompts(train, select_prompts)
    before = metrics.evaluate(model, iv, select)
    most = n_units(iv)
    path, made, flips = [], {}, {}

    def trial(K: int):
        out, curve = refit(model, iv, train, top_k(iv.effect(), K), steps=refit_steps, seed=seed, progress=progress,
                           **objective)
        if curve["interrupted"]:
            raise KeyboardInterrupt(curve["stopped_by"])
        ev = metrics.evaluate(model, out, select)
        path.append({"K": K, "steps": refit_steps, "flip_rate_select": ev["flip_rate"], "kl_select": ev["kl"]})
        made[K], flips[K] = out, ev["per_prompt"]["flipped"]
        return ev["flip_rate"]

    record = {"measure": iv.measure, "tolerance": tolerance, "refit_steps": refit_steps, "refit_lr": REFIT_LR,
              "finish_steps": finish_steps if refit_steps else 0, "selection_prompts": len(select),
              "selection_split": split, "unpruned": {"units": most, "select_flip_rate": before["flip_rate"]},
              "path": path, "stopped_by": None}
    try:
        if locations is not None:
            K, record["rule"] = max(1, min(locations, most or locations)), f"--locations {locations}"
        else:
            Ks = [k for k in PATH if k < most] + [max(most, 1)]
            # The reference: the ℓ1 fit, or the refit of all its active units where that does better (an ℓ1 fit
            # that has not converged is no yardstick); the tolerance: its standard error over the groups.
            reference = max(before["flip_rate"], trial(Ks[-1]) if len(Ks) > 1 else 0.0)
            if tolerance is None:
                ref = flips[Ks[-1]] if Ks[-1] in flips and reference > before["flip_rate"] else \
                    before["per_prompt"]["flipped"]
                tolerance = one_standard_error(ref, None if select.groups is None else select.groups.cpu().numpy())
                record["tolerance_rule"] = ("one standard error of the reference (over the selection prompts' groups),"
                                            " at least one prompt's share")
            record["unpruned"]["reference_flip_rate"], record["tolerance"] = reference, tolerance
            record["rule"] = (f"smallest K on the path with flip >= best of unpruned and its refit - {tolerance:.3g},"
                              f" on {len(select)} {'validation' if split == 'validation' else 'training'} prompts")
            lo, hi = 0, len(Ks) - 1                   # invariant: Ks[hi] is good enough
            while lo < hi:
                mid = (lo + hi) // 2
                if trial(Ks[mid]) >= reference - tolerance - 1e-12:   # k/n on the bound passes, float or not
                    hi = mid
                else:
                    lo = mid + 1
            K = Ks[hi]
        if K not in made:                             # --locations K, or a fit with one unit: not refit yet
            trial(K)
        if refit_steps and finish_steps:              # the chosen refit, on from where it is
            made[K], curve = refit(model, made[K], train, made[K].keep, steps=finish_steps, seed=seed,
                                   progress=progress, **objective)
            if curve["interrupted"]:
                raise KeyboardInterrupt(curve["stopped_by"])
    except KeyboardInterrupt as e:                    # Ctrl-C or SIGTERM: what was learned is the unpruned fit
        record.update(K=None, stopped_by=str(e) or "Ctrl-C")
        return iv, record
    path.sort(key=lambda r: r["K"])
    record["K"] = K
    return made[K], record


# ----------------------------------------------------------------------------- --runs: stability selection


def jaccard(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """|A ∩ B| / |A ∪ B| of two selections ({site: bool mask}); 1 when both are empty."""
    inter = sum(int((a[s] & b[s]).sum()) for s in a)
    union = sum(int((a[s] | b[s]).sum()) for s in a)
    return inter / union if union else 1.0


def overlap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """|A ∩ B| / min(|A|, |B|) of two selections, the overlap coefficient: the share of the smaller set that the
    other also keeps (1 when one contains the other, whatever their sizes, where Jaccard is held down by the
    difference of sizes); 1 when both are empty, 0 when only one is."""
    inter = sum(int((a[s] & b[s]).sum()) for s in a)
    smaller = min(count(a), count(b))
    return inter / smaller if smaller else float(count(a) == count(b))


def chance(size_a: int, size_b: int, units: int) -> dict[str, float]:
    """What two selections agree by chance: the expected overlap share and Jaccard index of two independent
    uniformly random sets of size_a and size_b units out of `units` (the selections' sizes, drawn from all the
    locations of the maps). The intersection k is hypergeometric, P(k) = C(a, k)·C(N - a, b - k) / C(N, b), of
    mean a·b/N, so the overlap share's expectation is a·b/N / min(a, b) = max(a, b)/N; Jaccard's is the exact
    sum of P(k)·k / (a + b - k) over k (no sampling). With an empty set, the values of
    jaccard and overlap (both 1 when both are empty, 0 when one is). Returns {"overlap", "jaccard"}."""
    from math import comb  # here, not at the top: the README's line ranges of this file stay as they are
    a, b, N = size_a, size_b, units
    if not 0 <= a <= N or not 0 <= b <= N:
        raise ValueError(f"sets of {a} and {b} units out of {N}")
    if not a or not b:
        value = float(a == b)
        return {"overlap": value, "jaccard": value}
    ways = comb(N, b)      # P(k) as a ratio of integers, rounded once (Python divides big integers exactly)
    jac = sum(comb(a, k) * comb(N - a, b - k) / ways * k / (a + b - k)
              for k in range(max(0, a + b - N), min(a, b) + 1))
    return {"overlap": max(a, b) / N, "jaccard": jac}


def frequencies(selections: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The share of the selections that keep each unit: {site: float map in [0, 1]}."""
    return {s: torch.stack([sel[s] for sel in selections]).float().mean(0) for s in selections[0]}


def stable(model, make_iv, batches, *, runs: int, steps: int, lr: float, batch_size: int, schedule: str,
           locations: int | None = None, refit_steps: int = REFIT_STEPS, seed: int = 0,
           threshold: float = FREQUENCY, tolerance: float | None = TOLERANCE, progress: bool = True, **objective):
    """--runs N: N ℓ1 fits on bootstrap resamples of the training prompts (fit r: resample and minibatch
    order from seed·1000 + r), each pruned to K units (fit 0 chooses K as `choose` does, unless
    `locations`), selection frequencies, and the refit of the units kept by >= threshold of the fits,
    started from the mean of the values of the fits that kept them. Returns (intervention, record, frequencies).
    Ctrl-C or SIGTERM during fit r >= 1 goes on with the r finished fits; during fit 0 returns that fit."""
    train = batches["train"]
    fits, selections, states, K, path0, stopped_by = [], [], [], locations, None, None
    for r in range(runs):
        g = torch.Generator().manual_seed(seed * 1000 + r)
        sample = train[torch.randint(0, len(train), (len(train),), generator=g).to(train.ids.device)]
        iv = make_iv()
        curve = ascale.fit(model, iv, sample, steps=steps, lr=lr, batch_size=batch_size, schedule=schedule,
                           seed=seed * 1000 + r, progress=progress, **objective)
        if not curve["interrupted"] and K is None:       # the first fit's path sets K for all of them
            _, path0 = choose(model, iv, {**batches, "train": sample}, refit_steps=refit_steps, tolerance=tolerance,
                              seed=seed, progress=progress, **objective)   # K read on validation, where there is one
            K, stopped_by = path0["K"], path0["stopped_by"]
        if curve["interrupted"] or stopped_by:
            stopped_by = stopped_by or curve["stopped_by"]
            if not fits:
                return iv, {"runs": runs, "stopped_by": stopped_by, "fits": []}, None
            break
        ev = {s: metrics.evaluate(model, iv, batches[s]) for s in ("train", "test")}
        fits.append({"train_flip_rate": ev["train"]["flip_rate"], "test_flip_rate": ev["test"]["flip_rate"],
                     "kl_test": ev["test"]["kl"], "units": n_units(iv)})
        selections.append(top_k_kept(iv, K))
        iv.restrict(selections[-1])
        states.append({k: v.detach().clone() for k, v in iv.state_dict().items()})
    freq = frequencies(selections)
    keep = {s: f >= threshold for s, f in freq.items()}
    if count(keep) == 0:                                 # no unit reaches the threshold: keep the most frequent
        keep = top_k(freq, 1)
    start = make_iv()                                    # each unit: the mean of the fits that kept it
    kept_by = {s: torch.stack([sel[s] for sel in selections]).sum(0).clamp(min=1) for s in freq}
    start.load_state_dict({k: torch.stack([st[k] for st in states]).sum(0)
                           / ascale.per_parameter(kept_by[k.split(".")[1]], states[0][k]).to(states[0][k].device)
                           for k in states[0]})
    final, curve = refit(model, start, train, keep, steps=refit_steps + FINISH_STEPS if refit_steps else 0, seed=seed,
                         progress=progress, **objective)
    stopped_by = stopped_by or curve["stopped_by"]
    record = {"runs": len(fits), "runs_asked": runs, "K": K, "threshold": threshold, "selected": count(keep),
              **agreement(selections, threshold), "fits": fits,
              "mean_sd": {k: _mean_sd([f[k] for f in fits]) for k in ("train_flip_rate", "test_flip_rate", "kl_test")},
              "frequencies": {s: f.tolist() for s, f in freq.items()}, "first_fit_selection": path0,
              "stopped_by": stopped_by}
    return final, record, freq


def agreement(selections: list[dict[str, torch.Tensor]], threshold: float = FREQUENCY) -> dict:
    """How much the fits agree, and how much random selections of the same sizes would (chance):
        jaccard_halves   the Jaccard index of the two halves' majority sets: the first and the second n // 2 fits
                         (with an odd n the last fit sits out), so that both are held to the same rule: halves of 2
                         and 3 fits would compare the union of two selections (kept by 1 of 2 >= threshold) with
                         what 2 of 3 keep, which differ by construction
        jaccard_pairs    the mean Jaccard index of two fits' own selections, over all pairs
        overlap_halves, overlap_pairs   the same with the overlap share |A ∩ B| / min(|A|, |B|) (overlap)
        *_chance         each one's chance level (chance): the expectation for random sets of the same sizes out of
                         the same `units`, for the pairs the mean over the pairs
        units            how many units the selections are drawn from: every location of the maps
    Each is None where there are too few fits (halves: fewer than 2, pairs: fewer than 2)."""
    units = sum(m.numel() for m in selections[0].values()) if selections else 0
    out = {f"{m}_{w}{c}": None for m in ("jaccard", "overlap") for w in ("halves", "pairs") for c in ("", "_chance")}
    out["units"] = units
    n = len(selections) // 2
    if n:
        fa, fb = frequencies(selections[:n]), frequencies(selections[n:2 * n])
        a, b = {s: f >= threshold for s, f in fa.items()}, {s: f >= threshold for s, f in fb.items()}
        odds = chance(count(a), count(b), units)
        out.update(jaccard_halves=jaccard(a, b), overlap_halves=overlap(a, b), jaccard_halves_chance=odds["jaccard"],
                   overlap_halves_chance=odds["overlap"])
    pairs = [(x, y) for i, x in enumerate(selections) for y in selections[i + 1:]]
    if pairs:
        odds = [chance(count(x), count(y), units) for x, y in pairs]
        out.update({f"{m}_pairs": sum(f(x, y) for x, y in pairs) / len(pairs)
                    for m, f in (("jaccard", jaccard), ("overlap", overlap))})
        out.update({f"{m}_pairs_chance": sum(o[m] for o in odds) / len(odds) for m in ("jaccard", "overlap")})
    return out


def describe_agreement(runs: dict) -> str:
    """The two agreement indices of a runs record, as train.py prints them and stability.png titles them (with
    the pairs' chance level, where the record has it)."""
    f = {k: "-" if runs.get(k) is None else f"{runs[k]:.2f}" for k in ("jaccard_pairs", "jaccard_halves",
                                                                        "jaccard_pairs_chance")}
    return (f"Jaccard of two fits' selections {f['jaccard_pairs']} (mean), of the two halves' {f['jaccard_halves']}"
            + (f"; random sets {f['jaccard_pairs_chance']}" if runs.get("jaccard_pairs_chance") is not None else ""))


def _mean_sd(xs: list[float]) -> list[float]:
    t = torch.tensor(xs, dtype=torch.float64)
    return [t.mean().item(), t.std().item() if len(t) > 1 else 0.0]
