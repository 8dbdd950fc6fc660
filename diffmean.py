"""
DiffMean, the baseline that learns nothing: at each site and layer, add one difference of mean activations.

    v[site, layer] = s · mean over the training prompts of (h_t − h_o)     h̃ = h + β·v at the answer position
                                                                          (the last prompt token), nothing elsewhere

h_t is the activation at the position of the target answer t appended to the prompt (one more token, at the
answer position + 1), h_o the same with the other answer o appended: the contrast of contrastive activation
addition (CAA: Rimsky et al. 2024, who take the difference at the answer letter of multiple-choice pairs and add
it at every position after the prompt). Every task has it, whatever the model prefers: t and o are those
ascale.prepare set. Under --target flip, t is on each prompt the answer the model ranks lower, so v is the mean
push toward whichever answers are the targets: it runs as that push, and the sides, the balanced flip and the
offset control (metrics.py) show what a push does. Ours: adding v at the answer position only, and the strength.

contrast="classes" (train.py --contrast classes; the results pages' DiffMean numbers were made with it) keeps
the earlier contrast: μ₊ − μ₋, the mean activations at the answer position over the training prompts on which
the unchanged model already ranks t above o (ℓ(t) − ℓ(o) > 0 before) and over the others. It needs both
classes, so a task on which the model prefers the same answer everywhere, or --target flip, has none.

One strength s, the same for every site and layer, is chosen on the training prompts only: the s of STRENGTHS with
the lowest L_E + λF·L_F, the objective of the learned methods without its ℓ1 term (ties: the smaller s), read on at
most STRENGTH_PROMPTS of them spread over the set (13 passes over every training prompt would cost more than the
learned methods' fits). No gradient, no ℓ1, no selection.
"""

import torch
from torch import nn

from ascale import Batch, Intervention, answer_stats, at_slots, by_length, with_original
from gpt2 import UserError
from selection import selection_prompts

STRENGTHS = tuple(2.0 ** k for k in range(-8, 5))  # s tried: 1/256 ... 16, each twice the last
STRENGTH_PROMPTS = 300  # the strengths are compared on at most this many training prompts (all of CCC's and IOI's)
CONTRASTS = ("caa", "classes")  # h_t − h_o at an appended answer (the default), or the earlier class means


class DiffMean(Intervention):
    """h̃ = h + β·v at the last position (slot) of a prompt, v one fixed vector per site and layer; position-free
    (positions=None, train.py --positions shared), at every position."""
    method, about = "diffmean", ("the baseline that learns nothing: the mean difference of the activations with"
                                 " the target and the other answer appended (CAA), added with one strength")
    learned, signed, measure = False, False, "||v||"
    map_label = "‖β·v‖, the norm of the vector added at the answer position (white: nothing added)"
    takes_positions = shareable = True   # position-free (shared): v is added at every position, as CAA does

    def __init__(self, cfg, sites, positions: int | None):
        super().__init__(cfg, sites, positions)
        self.v = nn.ParameterDict({s: nn.Parameter(torch.zeros(self.n_layer, *self.site_shape(s)), requires_grad=False)
                                   for s in self.sites})           # (L, D) or (L, nh, hs) for head: never trained

    def apply(self, site, layer, h, pos=None):
        if self.shared:                                             # every position, generated ones included
            return h + (self.beta * self.v[site][layer].to(h.device)).to(h.dtype)
        if pos is None:                                             # h (B, T, ...) at positions 0 ... T-1
            pos = torch.arange(h.shape[1], device=h.device)[None]
        last = (pos.to(h.device) == self.positions - 1).view(*pos.shape, *[1] * (h.dim() - 2))  # (B or 1, T, 1[, 1])
        return h + (self.beta * last * self.v[site][layer].to(h.device)).to(h.dtype)

    def location_map(self, model=None, ids=None) -> dict[str, torch.Tensor]:
        """‖β·v‖ per location, (L, T) or (L, T, nh): all of it at the last position (slot)."""
        maps = {}
        for s, v in self.v.items():
            m = torch.zeros(self.n_layer, self.n_pos, *self.site_shape(s)[:-1], device=v.device)
            m[:, -1] = (self.beta * v).norm(dim=-1)
            maps[s] = m
        return maps

    def effect(self) -> dict[str, torch.Tensor]:
        return {s: m.abs() for s, m in self.location_map().items()}

    @classmethod
    def check(cls, model, batches: dict, target) -> None:
        """The training prompts take one more token (the appended answer) within the model's context."""
        longest = int(batches["train"].answer_pos.max()) + 1
        if longest >= model.config.n_ctx:
            raise UserError(f"diffmean appends an answer to each training prompt, but the longest has {longest}"
                            f" tokens and the model reads at most {model.config.n_ctx}; shorten the prompts")

    def compute(self, model, batch: Batch, **kw) -> dict:
        """Set v from the training prompts `batch` (`fit` below; choose=: the validation prompts that choose the
        strength); what was chosen, for metrics.json."""
        return fit(model, self, batch, **kw)


@torch.no_grad()
def caa_mean(model, batch: Batch, sites, batch_size: int = 64) -> dict:
    """The mean over the prompts of h_t − h_o, {site: (L, D) or (L, nh, hs)}: each prompt is run with its target t
    (batch.answers[:, 0]) and with its other answer o ([:, 1]) appended at answer_pos + 1, and each site's activation
    is read at that position. Prompts are right-padded: the positions after it are padding, which causal attention
    keeps from it."""
    sums = {}
    for idx in by_length(batch, batch_size, shared=False):          # every process: DiffMean is not shared out
        mb = batch[idx]
        rows, at = torch.arange(len(mb), device=mb.ids.device), mb.answer_pos + 1
        for col, sign in ((0, 1.0), (1, -1.0)):
            ids = torch.cat([mb.ids, mb.ids[:, -1:]], 1)                # one more column
            ids[rows, at] = mb.answers[:, col]

            def record(site, layer, h, rows=rows, at=at, sign=sign):
                if site in sites:                                    # (b, D) or (b, nh, hs) at the appended answer
                    sums[(site, layer)] = sums.get((site, layer), 0) + sign * h[rows, at].double().sum(0)
                return h
            model(ids, intervene=record, at=at)
    return {s: torch.stack([sums[(s, layer)] / len(batch) for layer in range(model.config.n_layer)]).float()
            for s in sites}


@torch.no_grad()
def class_means(model, batch: Batch, sites, batch_size: int = 64) -> tuple[dict, dict, int, int]:
    """The mean activation at the answer position of each class, {site: (L, D) or (L, nh, hs)} for μ₊ (prompts
    with ℓ(t) − ℓ(o) > 0 before) and μ₋ (the others), and the two class sizes."""
    plus = batch.diff_before > 0                                     # (N,)
    n_plus, n_minus = int(plus.sum()), int((~plus).sum())
    sums = {}
    for idx in by_length(batch, batch_size, shared=False):          # every process: DiffMean is not shared out
        mb, p = batch[idx], plus[idx].float()
        rows = torch.arange(len(mb), device=mb.ids.device)

        def record(site, layer, h, mb=mb, p=p, rows=rows):
            if site in sites:
                a = h[rows, mb.answer_pos].double()                  # (b, D) or (b, nh, hs): the answer position
                w = p.view(-1, *[1] * (a.dim() - 1)).to(a)
                plus_sum, all_sum = (w * a).sum(0), a.sum(0)
                old = sums.get((site, layer), (0, 0))
                sums[(site, layer)] = (old[0] + plus_sum, old[1] + all_sum)
            return h
        model(mb.ids, intervene=record)
    L = model.config.n_layer
    mu_plus = {s: torch.stack([sums[(s, l)][0] / max(n_plus, 1) for l in range(L)]).float() for s in sites}
    mu_minus = {s: torch.stack([(sums[(s, l)][1] - sums[(s, l)][0]) / max(n_minus, 1) for l in range(L)]).float()
                for s in sites}
    return mu_plus, mu_minus, n_plus, n_minus


@torch.no_grad()
def loss(model, iv: DiffMean, batch: Batch, lambda_f: float, margin: float, batch_size: int = 64) -> tuple:
    """L_E + λF·L_F over all of batch at iv's current v (no ℓ1), and the flip rate."""
    hinge = kl = flips = 0.0
    for idx in by_length(batch, batch_size, shared=False):
        mb = with_original(model, batch[idx])
        diff, k = answer_stats(model(mb.ids, intervene=at_slots(iv, mb.slots), at=mb.answer_pos).float(), mb)
        hinge += (margin - diff).clamp(min=0).sum().item()
        kl, flips = kl + k.sum().item(), flips + int((diff > 0).sum())
    return (hinge + lambda_f * kl) / len(batch), flips / len(batch)


def fit(model, iv: DiffMean, batch: Batch, *, lambda_f: float = 1.0, margin: float = 4.0, batch_size: int = 64,
        choose: Batch | None = None, contrast: str = "caa") -> dict:
    """Set iv.v to s·mean(h_t − h_o) over `batch` (the training prompts; contrast="classes": s·(μ₊ − μ₋), its class
    means), with the best s of STRENGTHS on `choose` (validation prompts; None: some of the training prompts).
    Returns what was chosen and the loss and flip rate of every s tried."""
    if contrast == "caa":
        delta = caa_mean(model, batch, iv.sites, batch_size)
        made = {"contrast": contrast, "n_prompts": len(batch)}
        of = f"h_t − h_o at the appended answer, mean over {len(batch)} training prompts"
    elif contrast == "classes":
        mu_plus, mu_minus, n_plus, n_minus = class_means(model, batch, iv.sites, batch_size)
        if n_plus == 0 or n_minus == 0:
            raise UserError(f"diffmean's class contrast needs training prompts on which the model already prefers the"
                            f" target and prompts on which it does not; here {n_plus} and {n_minus}")
        delta = {s: mu_plus[s] - mu_minus[s] for s in iv.sites}
        made = {"contrast": contrast, "class_sizes": [n_plus, n_minus]}
        of = f"classes of {n_plus} and {n_minus} training prompts"
    else:
        raise UserError(f"unknown diffmean contrast {contrast!r}; choose {', '.join(CONTRASTS)}")
    delta = {s: d.to(iv.device) for s, d in delta.items()}
    path, some = [], selection_prompts(batch, STRENGTH_PROMPTS) if choose is None else choose
    split = "training" if choose is None else "validation"
    for s in STRENGTHS:
        for site in iv.sites:
            iv.v[site].copy_(s * delta[site])
        value, flip = loss(model, iv, some, lambda_f, margin, batch_size)
        path.append({"strength": s, "loss": value, "flip_rate_train": flip})
    best = min(path, key=lambda r: (r["loss"], r["strength"]))
    for site in iv.sites:
        iv.v[site].copy_(best["strength"] * delta[site])
    rule = f"the strength of lowest L_E + λF·L_F on {len(some)} {split} prompts"
    return {"strength": best["strength"], **made, "path": path, "rule": rule, "split": split,
            "summary": f"strength {best['strength']:g} ({rule}; {of})"}
