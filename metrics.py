"""
The metrics of an intervention (docs/method.md, "Metrics"), each rate with its interval and the number of prompts
behind it, and the yardsticks a rate is read against:

    effectiveness   flip rate: the share of prompts on which the target t now beats the other answer o
    the sides       the flip rate on the prompts whose original model preferred answer A, and on the others; the
                    balanced flip, their mean: a one-way push scores at most 0.5 on it
    the offset      the trivial baseline: one constant added to ℓ(A) − ℓ(B) on every prompt, KL 0 by construction;
                    a method's result is its gain over it (paired interval, McNemar)
    faithfulness    KL(p⁻ ‖ p̃⁻) of the other tokens, mean over the prompts
    minimality      parameters, ℓ1, and the active locations
Intervals: Wilson's for a rate, a bootstrap over the prompts, and one over the task's groups (countries, name
pairs, texts), since prompts of one group are not independent draws (running/stats.py).
"""

import hashlib

import numpy as np
import torch

from ascale import ACTIVE, Batch, Intervention, answer_stats, at_slots, l1, n_params, with_original
from running import parallel, stats
from running.parallel import by_length


@torch.no_grad()
def evaluate(model, iv: Intervention, batch: Batch, batch_size: int = 64) -> dict:
    """Effectiveness and faithfulness (docs/method.md, "Metrics") on a prepared prompt set, at iv's current β:
    flip rate (share of prompts with ℓ̃(t) > ℓ̃(o)) with its 95 % Wilson interval, mean ℓ(t) - ℓ(o)
    before and after, mean KL (nats) with a 95 % bootstrap interval over the prompts; and the yardsticks."""
    diff, kl = torch.zeros(len(batch), device=batch.ids.device), torch.zeros(len(batch), device=batch.ids.device)
    for rows in by_length(batch, batch_size):                         # data parallel: this process's chunks
        mb = with_original(model, batch[rows])
        logits = model(mb.ids, intervene=at_slots(iv, mb.slots), at=mb.answer_pos).float()  # (B, V)
        diff[rows], kl[rows] = answer_stats(logits, mb)
    diff, kl = parallel.total(diff), parallel.total(kl)              # every process's chunks
    flips = int((diff > 0).sum())
    return {"flip_rate": flips / len(batch), "flip_rate_ci": stats.wilson(flips, len(batch)), "kl": kl.mean().item(),
            "kl_ci": stats.bootstrap_mean(kl), "logit_diff_before": batch.diff_before.mean().item(),
            "logit_diff_after": diff.mean().item(), "n_prompts": len(batch), **yardsticks(diff > 0, kl, batch)}


def balanced(rows: np.ndarray) -> float:
    """The balanced flip of rows (n, 2) of (flipped, side): the mean of the two sides' flip rates; nan where a side
    has no prompt (the resamples of a bootstrap without one are left out of its interval)."""
    sides = stats.by_side(rows[:, 0], rows[:, 1])
    return stats.balanced(sides) if all(len(x) for x in sides) else float("nan")


def a_over_b(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) bool: the target t is answer A (batch.role_a); (N,) ℓ(A) − ℓ(B) of the original model."""
    t_is_a = batch.answers[:, 0] == batch.role_a
    return t_is_a, torch.where(t_is_a, batch.diff_before, -batch.diff_before)


def prefers_a(batch: Batch) -> torch.Tensor:
    """(N,) bool: the original model ranked answer A (batch.role_a) above the other answer, B: the prompt's side."""
    return a_over_b(batch)[1] > 0


def yardsticks(flipped: torch.Tensor, kl: torch.Tensor, batch: Batch) -> dict:
    """What a flip rate is read against (docs/method.md, "Metrics"): the flip rate on each side (side "a": the prompts
    on which the original model preferred answer A, "b": the others) with Wilson intervals, and the balanced flip,
    the mean of the two, with a bootstrap interval: a one-way push flips one side at most, so it scores at most 0.5
    there. The flip rate's and the KL's intervals by a bootstrap over the task's groups (countries, name pairs, texts;
    prompts where there are none) beside the prompt-level ones, and each prompt's outcome (analyze.py compare)."""
    f, a = flipped.cpu().numpy().astype(float), prefers_a(batch).cpu().numpy()
    groups = None if batch.groups is None else batch.groups.cpu().numpy()
    sides = {}
    for name, on_side in (("a", a), ("b", ~a)):
        k, n = int(f[on_side].sum()), int(on_side.sum())
        sides[name] = {"flip_rate": k / n if n else None, "flip_rate_ci": stats.wilson(k, n), "n_prompts": n}

    rows = np.stack([f, a.astype(float)], 1)
    per_prompt = {"flipped": f.astype(int).tolist(), "kl": [round(x, 6) for x in kl.cpu().tolist()],
                  "side": a.astype(int).tolist(), **({} if groups is None else {"group": groups.tolist()})}
    digest = hashlib.sha256(batch.ids.cpu().numpy().tobytes() + batch.answers.cpu().numpy().tobytes()).hexdigest()
    value = balanced(rows)                                          # None where a side has no prompt
    return {"sides": sides, "balanced_flip": None if np.isnan(value) else value,
            "balanced_flip_ci": None if np.isnan(value) else stats.group_bootstrap(rows, groups, stat=balanced, n=1000),
            "flip_rate_ci_groups": stats.group_bootstrap(f, groups), "kl_ci_groups": stats.group_bootstrap(
                kl.cpu().numpy(), groups), "n_groups": len(f) if groups is None else len(set(groups.tolist())),
            "per_prompt": per_prompt, "prompt_hash": digest[:16]}


def offset_flips(batch: Batch, b: float) -> torch.Tensor:
    """(N,) bool: whether t wins once the constant b is added to ℓ(A) − ℓ(B) on every prompt (no activation touched)."""
    t_is_a, d_a = a_over_b(batch)
    return torch.where(t_is_a, d_a + b > 0, d_a + b < 0)


def choose_offset(choose: Batch) -> float:
    """The offset control's constant b: the one that flips the most prompts of `choose` (a validation split, or the
    training prompts), the smallest |b| among ties. Only where b crosses some prompt's −(ℓ(A) − ℓ(B)) does the count
    change, so just either side of each of those, and 0, are tried (a sorted count, no pass per b)."""
    t_is_a, d_a = (x.cpu() for x in a_over_b(choose))
    d_a = d_a.double()
    up, down = d_a[t_is_a].sort().values, d_a[~t_is_a].sort().values   # targets A: flip where d + b > 0; B: < 0
    candidates = torch.cat([torch.zeros(1, dtype=d_a.dtype), -d_a - 1e-4, -d_a + 1e-4])
    flips = (len(up) - torch.searchsorted(up, -candidates, right=True)) + torch.searchsorted(down, -candidates)
    pairs = zip(flips.tolist(), candidates.tolist(), strict=True)
    return min(pairs, key=lambda fb: (-fb[0], abs(fb[1]), fb[1]))[1]      # the most flips, then the smallest |b|


def offset_rates(b: float, batch: Batch) -> dict:
    """The offset control's rates on `batch`, as evaluate's (KL 0: no other token moves)."""
    flipped, (t_is_a, _) = offset_flips(batch, b), a_over_b(batch)
    k = int(flipped.sum())
    after = batch.diff_before + torch.where(t_is_a, b, -b)              # ℓ(t) − ℓ(o) after
    return {"offset": b, "flip_rate": k / len(batch), "flip_rate_ci": stats.wilson(k, len(batch)), "kl": 0.0,
            "kl_ci": [0.0, 0.0], "logit_diff_before": batch.diff_before.mean().item(),
            "logit_diff_after": after.mean().item(), "n_prompts": len(batch),
            **yardsticks(flipped, torch.zeros(len(batch)), batch)}


def offset_control(choose: Batch, test: Batch) -> dict:
    """The trivial baseline beside every result: one constant b added to the logit of answer A against answer B,
    the same for every prompt, chosen on `choose` (choose_offset). It touches no activation and no other token,
    so its KL is 0 by construction; a one-way push, so its balanced flip is at most 0.5. Its rates on `test`."""
    return offset_rates(choose_offset(choose), test)


def offset_row(batches: dict[str, Batch]) -> dict:
    """The offset control as a run reports it beside the methods: chosen on the validation prompts where there are
    any (else the training prompts), its rates on train and test; one parameter, nothing active."""
    chosen_on = "val" if batches.get("val") is not None else "train"
    b = choose_offset(batches[chosen_on])
    return {**{s: offset_rates(b, batches[s]) for s in ("train", "test")}, "offset": b,
            "chosen_on": "validation" if chosen_on == "val" else "train", "n_params": 1, "l1": abs(b), "n_active": 0.0}


def gain(method: dict, control: dict, seed: int = 0) -> dict:
    """A method's flip and balanced flip minus the offset control's on the same test prompts, with paired bootstrap
    intervals (over the groups where there are any) and McNemar's exact test of the flips."""
    a, b = method["per_prompt"], control["per_prompt"]
    groups = a.get("group")
    rows_a, rows_b = (np.stack([r["flipped"], r["side"]], 1).astype(float) for r in (a, b))
    both = method["balanced_flip"] is not None
    return {"flip": method["flip_rate"] - control["flip_rate"],
            "flip_ci": stats.paired_bootstrap(a["flipped"], b["flipped"], groups, seed=seed),
            "balanced_flip": method["balanced_flip"] - control["balanced_flip"] if both else None,
            "balanced_flip_ci": stats.paired_bootstrap(rows_a, rows_b, groups, stat=balanced, n=1000, seed=seed)
            if both else None,
            "mcnemar_p": stats.mcnemar_exact(a["flipped"], b["flipped"])["p"]}


@torch.no_grad()
def active_locations(model, iv: Intervention, batch: Batch, threshold: float = ACTIVE,
                     batch_size: int = 64) -> float:
    """Number of active locations, averaged over the prompts: locations (site, layer, position
    up to the answer, [head]) where ‖h̃ - h‖ >= threshold·‖h‖. For ActivScalar this is exactly the
    number of scalars with |β·α| >= threshold; for SteerVec and DynScalar it depends on the prompt.
    With a slot map (batch.slots) a location is (site, layer, slot[, head]), active where any of its tokens is."""
    count = torch.zeros((), dtype=torch.long, device=batch.ids.device)   # added to in place (see prepare)
    for rows in by_length(batch, batch_size):                         # data parallel: this process's chunks
        mb = batch[rows]
        real = torch.arange(mb.ids.shape[1], device=mb.ids.device) <= mb.answer_pos[:, None]  # (B, T)
        bound = at_slots(iv, mb.slots)                               # iv itself where there is no slot map

        def record(site, layer, h, real=real, bound=bound, slots=mb.slots):
            out = bound(site, layer, h)
            if site in iv.sites:
                active = (out - h).float().norm(dim=-1) >= threshold * h.float().norm(dim=-1)  # (B, T[, nh])
                active = (active.view(*real.shape, -1) & real[..., None].to(h.device)).byte()   # (B, T, 1 or nh)
                if slots is not None:                             # (B, S, 1 or nh): any token of the slot
                    slot = slots[..., None].expand_as(active).to(h.device)
                    active = active.new_zeros(len(slot), int(slot.max()) + 1, active.shape[-1]).scatter_reduce(
                        1, slot, active, "amax")
                count.add_(active.sum().to(count.device))
            return out

        model(mb.ids, intervene=record, at=mb.answer_pos)
    return parallel.total(count).item() / len(batch)


def measure(model, iv: Intervention, batches: dict[str, Batch], batch_size: int = 64) -> dict:
    """A run's metrics as train.py writes them (docs/method.md, "Metrics"): `evaluate` per split, ℓ1, n_active."""
    splits = {s: evaluate(model, iv, batches[s], batch_size) for s in ("train", "test")}
    return {**splits, "n_params": n_params(iv), "l1": l1(iv).item(), "active_threshold": ACTIVE,
            "n_active": active_locations(model, iv, batches["train"], batch_size=batch_size)}
