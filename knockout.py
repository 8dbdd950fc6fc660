"""
Checking where an intervention acts, independently of the objective that trained it (the paper's open
question 2: how do learned scalars compare with activation patching?). A heatmap says where an
intervention acts; these say where the behaviour *is*, so the two can be compared.

    knockout      switch one location off (α = -1 there only; or, mean ablation, replace its activation by
                  its mean over the prompts) and record the change of ℓ(A) - ℓ(B), answer A against answer B
                  (the fixed roles of metrics.py), the same way round on every prompt
    knockout_sides  the same pass, also per side: over the prompts whose original model preferred A, and the others
    attribution   its first-order estimate: ∂/∂α of ℓ(A) - ℓ(B) at α = 0, one backward pass
    agreement     how an intervention's map agrees with the knockout map (rank, large effects, signs)

The knockout reuses what a location cannot change (the layers below it, the positions before it):
see `knockout`. Its prompts are capped by a FLOP budget (`knockout_prompts`).
"""

import torch

from ascale import ACTIVE, ActivScalar, Batch, at_slots, check_sites
from gpt2 import UserError
from metrics import a_over_b, prefers_a
from running import parallel

MODES = ("zero", "mean")  # what a knocked-out activation becomes: 0, or its mean over the prompts there
KNOCKOUT_FLOPS = 2.5e13  # the knockout map's default budget, which caps its prompts: ~4.5 min at 95 GFLOP/s (1 core)
ORIENTATIONS = ("a", "target")  # the difference measured: ℓ(A) - ℓ(B) on every prompt, or each prompt's ℓ(t) - ℓ(o)
SLOT_CHUNK = 8  # prompts of many lengths (a slot map) go through a knockout pass this many at a time, by length


def _location_shape(model, site: str, T: int) -> tuple[int, ...]:
    """Shape of one site's map of locations: (L, T), or (L, T, nh) for `head`."""
    cfg = model.config
    return (cfg.n_layer, T, cfg.n_head) if site == "head" else (cfg.n_layer, T)


def span(batch: Batch) -> float:
    """The positions one prompt's knockout map recomputes, summed over its locations of one layer and site: location p
    recomputes positions p ... T-1, Σ_p (T - p) = T(T+1)/2 for prompts of T tokens; with a slot map, slot s from its
    first token to the prompt's end (knockout takes prompts of about one length together), the mean over the prompts
    of Σ_s (length - first token of s)."""
    T = batch.ids.shape[1]
    if batch.slots is None:
        return T * (T + 1) / 2
    idx = torch.arange(T, device=batch.ids.device).expand_as(batch.slots)
    real = idx <= batch.answer_pos[:, None]
    first = [torch.where(real & (batch.slots == s), idx, T).min(1).values for s in range(int(batch.slots.max()) + 1)]
    return float(sum((batch.answer_pos + 1 - f).clamp(min=0) for f in first).double().mean())


def knockout_prompts(model, batch: Batch, sites, flops: float = KNOCKOUT_FLOPS) -> int:
    """How many of these prompts the knockout map of these sites affords within `flops`. Location (l, p)
    recomputes layers l ... L-1 at positions p ... T-1 (see knockout), at about 2 FLOPs per block parameter per
    layer and position, so one prompt costs (locations per layer and position) x Σ_l (L - l) x `span` x 2 x
    (parameters of a block). SmolLM2-135M, CCC (T = 18), attn_out and mlp_out: 1.1 TFLOP a prompt, so 22
    prompts; the toy world affords all of its 300."""
    L, nh = model.config.n_layer, model.config.n_head
    per_location = 2 * sum(p.numel() for p in model.h[0].parameters()) * L * (L + 1) / 2 * span(batch)
    return max(1, int(flops // (per_location * sum(nh if s == "head" else 1 for s in check_sites(sites)))))


def spread(batch: Batch, n: int | None) -> Batch:
    """At most n of the prompts (all when n is None), evenly spaced over the set, so that a capped set
    still covers the whole of a set sorted by country or name."""
    if n is None or n >= len(batch):
        return batch
    return batch[torch.linspace(0, len(batch) - 1, n, device=batch.ids.device).round().long()]


def _switch_off(layer: int, p: int, off: dict[str, torch.Tensor], slots: torch.Tensor | None = None,
                means: dict | None = None):
    """An intervene function for K stacked copies of a batch of b prompts (copy k: rows k·b ... k·b+b-1):
    copy k multiplies h at (layer, position p) by 0 where off[site][k] (K, 1[, nh], 1) is 1, i.e. at
    its site (and head). pos says where h's rows are (a pass that starts at p; the answer rows).
    With slots (K·b, T), each row's slot map, p is a slot: every token of that slot is switched off.
    With means {site: (L, S, D) or (L, S, nh, hs)}, a switched-off h becomes the mean there instead of 0."""
    def intervene(site, l, h, pos=None):
        if l != layer or site not in off:
            return h
        if pos is None:
            pos = torch.arange(h.shape[1], device=h.device)[None]
        where = pos if slots is None else slots.gather(1, pos.expand(len(slots), -1))   # each row's slot
        at_p = (where == p).view(*where.shape, *[1] * (h.dim() - 2))         # (1 or K·b, T, 1[, 1])
        drop = off[site].to(h.device).repeat_interleave(len(h) // len(off[site]), dim=0)  # (K·b, 1[, nh], 1)
        if means is None:
            return h * (1 - at_p * drop).to(h.dtype)
        m = (at_p * drop).to(h.dtype)
        return h * (1 - m) + m * means[site][layer, p].to(h.device, h.dtype)   # the mean, (D,) or (nh, hs)
    return intervene


@torch.no_grad()
def location_means(model, batch: Batch, sites, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Each location's mean activation over the prompts (mean ablation's replacement): {site: (L, S, D), or
    (L, S, nh, hs) for head}, S the positions (or the slots, averaging all of a slot's tokens); padding
    after the answer is left out."""
    sites = check_sites(sites)
    S = batch.ids.shape[1] if batch.slots is None else int(batch.slots.max()) + 1
    sums, count = {}, torch.zeros(S, dtype=torch.float64)
    for i in range(0, len(batch), batch_size):
        mb = batch[i:i + batch_size]
        T = mb.ids.shape[1]                                          # its padding cut (Batch.__getitem__)
        slot = torch.arange(T, device=mb.ids.device).expand(len(mb), T) if mb.slots is None else mb.slots
        real = (torch.arange(T, device=mb.ids.device) <= mb.answer_pos[:, None]).flatten()   # (b·T,)
        index = slot.flatten()[real].cpu()
        count += torch.bincount(index, minlength=S).double()

        def record(site, layer, h, index=index, real=real):
            if site in sites:
                rows = h.double().flatten(0, 1)[real.to(h.device)].flatten(1).cpu()   # (tokens, D or nh·hs)
                key = (site, layer)
                sums[key] = sums.get(key, 0) + torch.zeros(S, rows.shape[1], dtype=torch.float64).index_add_(
                    0, index, rows)
            return h
        model(mb.ids, intervene=record)
    cfg = model.config
    shape = {s: (cfg.n_head, cfg.head_dim) if s == "head" else (cfg.n_embd,) for s in sites}
    return {s: torch.stack([(sums[(s, l)] / count.clamp(min=1)[:, None]).float().view(S, *shape[s])
                            for l in range(cfg.n_layer)]) for s in sites}


def orientation(batch: Batch, toward: str = "a") -> torch.Tensor:
    """(N,) ±1: what turns each prompt's ℓ(t) - ℓ(o) into the measured difference. toward "a" (the knockout map's
    orientation): ℓ(A) - ℓ(B), +1 where the target t is answer A (batch.role_a), -1 where it is B; "target": ℓ(t) -
    ℓ(o) itself, +1 everywhere (each prompt toward its own target, the objective's direction). A batch without
    roles (role_a None, not made by ascale.prepare) counts each target as its A."""
    if toward not in ORIENTATIONS:
        raise UserError(f"unknown orientation {toward!r}; choose {', '.join(ORIENTATIONS)}")
    if toward == "target" or batch.role_a is None:
        return torch.ones(len(batch), device=batch.ids.device)
    return a_over_b(batch)[0].float() * 2 - 1                    # t is A: +1, t is B: -1


def sides(batch: Batch) -> dict[str, torch.Tensor]:
    """{"a": (N,) bool, "b": (N,) bool}: the prompts on which the original model preferred answer A, and the others
    (metrics.prefers_a; without roles, each target counted as A)."""
    a = prefers_a(batch) if batch.role_a is not None else batch.diff_before > 0
    return {"a": a, "b": ~a}


def majority_target(batch: Batch) -> str:
    """"A" where at least half of these prompts target answer A, else "B": the way the knockout map's sign
    agreement is read (under `flip`, side a's prompts all target B and side b's all target A)."""
    return "A" if 2 * int((orientation(batch) > 0).sum()) >= len(batch) else "B"


@torch.no_grad()
def knockout(model, batch: Batch, sites, max_sequences: int = 256, max_prompts: int | None = None,
             progress: bool = True, mode: str = "zero", means: dict | None = None,
             toward: str = "a", per_side: bool = False) -> dict:
    """The knockout map: for every location (site, layer, position[, head]), switch that one activation
    off (α = -1 there, nothing else) and record the change of the mean logit difference of answer A over
    answer B (the fixed roles of metrics.py, whatever each prompt's target): mean over prompts of ℓ̃(A) - ℓ̃(B)
    minus the original ℓ(A) - ℓ(B). Returns {site: (L, T) or (L, T, nh)}: negative where the location
    supports A, positive where it supports B. One orientation for every prompt, so that what a location does on
    prompts of both sides adds up (measured toward each prompt's target, as toward="target" still does, the two
    sides of a `flip` set pull opposite ways and cancel). per_side: {"all": that map, "a": the map over the
    prompts whose original model preferred A, "b": over the others}, from the same passes, each the mean over its
    own prompts (a side without prompts: zeros), so that "all" = (n_a·"a" + n_b·"b") / n (`knockout_sides`).
    mode "mean" (mean ablation): the activation is replaced by its mean over the prompts at that location
    instead (`means`, default location_means of these prompts), so that what is measured is what this
    prompt's activation carries beyond the typical one, not what any activation at all does there.

    The prompts must share one length (positions are locations), or have a slot map (batch.slots: a
    template around texts of any length), whose slots are then the locations: switching a slot off
    switches off all of its tokens. At most max_prompts of them are used, evenly spread (None: as many
    as KNOCKOUT_FLOPS affords, `knockout_prompts`).

    Switching off (layer l, position p) changes nothing below layer l and, as attention is causal,
    nothing before position p. So one clean pass keeps every layer's input and its keys and values,
    and each location recomputes only layers l ... L-1 at positions p ... T-1, the clean keys and
    values of positions < p serving as their past (gpt2.GPT.blocks): on average about a quarter of a
    full pass. ℓ̃(t) - ℓ̃(o) is one dot product with the difference of the two unembedding rows.
    Batched: all locations at one (layer, position), every site and head, go through at once as K
    copies of a chunk of prompts (at most max_sequences sequences a pass); layers x positions passes.
    Data parallel (torchrun, parallel.py): the (layer, position) jobs are dealt out, the maps summed."""
    from tqdm import tqdm
    T = batch.ids.shape[1]
    if batch.slots is None and not bool((batch.answer_pos == T - 1).all()):
        raise UserError("the knockout map needs prompts of one length (positions are locations) or a slot map; "
                        "use the fixed-length prompts of activscalar or steervec")
    if mode not in MODES:
        raise UserError(f"unknown knockout mode {mode!r}; choose {', '.join(MODES)}")
    sites, cfg = check_sites(sites), model.config
    if mode == "mean" and means is None:
        means = location_means(model, batch, sites)
    batch = spread(batch, knockout_prompts(model, batch, sites) if max_prompts is None else max_prompts)
    if batch.slots is not None:                 # many lengths: shortest first, so that a pass pads little
        batch = batch[batch.answer_pos.argsort(stable=True)]
    n, device, T = len(batch), batch.ids.device, batch.ids.shape[1]      # indexing cut the padding past the longest
    groups = {"all": torch.ones(n, dtype=torch.bool, device=device), **(sides(batch) if per_side else {})}
    sign = orientation(batch, toward)                    # (n,) ±1: each prompt's ℓ(t) - ℓ(o) -> the difference measured
    weights = torch.stack([sign * g / max(1, int(g.sum())) for g in groups.values()])   # (G, n): each group's mean
    slots = batch.slots
    S = T if slots is None else int(slots.max()) + 1
    real = torch.arange(T, device=device) <= batch.answer_pos[:, None]                      # (n, T)

    def first(rows) -> list[int]:  # where each slot's tokens start in these prompts: positions before see no change
        return list(range(T)) if slots is None else [int(torch.where(real[rows] & (slots[rows] == s), torch.arange(
            T, device=device), T).min()) for s in range(S)]
    read = {T - 1} if slots is None else set(slots.gather(1, batch.answer_pos[:, None])[:, 0].tolist())
    maps = {s: torch.zeros(len(weights), *_location_shape(model, s, S)) for s in sites}
    variants = [(s, h) for s in sites for h in (range(cfg.n_head) if s == "head" else [None])]
    off = {s: torch.zeros(len(variants), 1, *((cfg.n_head,) if s == "head" else ()), 1, device=device) for s in sites}
    for k, (s, h) in enumerate(variants):
        off[s][k, 0, ..., 0] = 1 if h is None else torch.arange(cfg.n_head, device=device) == h

    inputs = [model.embed(batch.ids)]   # inputs[l]: the clean residual stream entering layer l, (n, T, D)

    def keep(site, layer, h):           # the stream after layer l is the input of layer l + 1
        if site == "resid":
            inputs.append(h)
        return h

    _, kv = model.blocks(inputs[0], intervene=keep)                       # kv[l]: layer l's clean (k, v)
    W = model.lm_head.weight
    w_t, w_o = W[batch.answers[:, 0]], W[batch.answers[:, 1]]            # (n, D) each: ℓ(t) = ln_f(x) · w_t

    def logit_diff(x, rows, K=1):  # x (K·b, D) after the last layer -> ℓ(t) - ℓ(o) (K·b,), soft-capped (Gemma 2)
        h, cap = model.ln_f(x).to(w_t.device), cfg.final_softcap            # a device map: the unembedding's device
        if not cap:
            return (h * (w_t[rows] - w_o[rows]).repeat(K, 1)).sum(-1)
        t, o = (h * w_t[rows].repeat(K, 1)).sum(-1), (h * w_o[rows].repeat(K, 1)).sum(-1)
        return cap * (torch.tanh(t / cap) - torch.tanh(o / cap))

    clean = logit_diff(inputs[-1][torch.arange(n, device=device), batch.answer_pos], slice(None))   # (n,)
    b = max(1, min(n, max_sequences, SLOT_CHUNK if slots is not None else n))    # prompts a pass
    K_max = max(1, max_sequences // b)                                    # locations a pass
    chunks = [(slice(i, i + b), first(slice(i, i + b)), int(batch.answer_pos[i:i + b].max()) + 1)
              for i in range(0, n, b)]
    L, anywhere = cfg.n_layer, first(slice(None))
    # the last layer's outputs before the answer reach nothing read: their effect is exactly 0
    jobs = parallel.deal([(l, p) for l in range(L) for p in range(S) if (l < L - 1 or p in read) and anywhere[p] < T])
    for layer, p in tqdm(jobs, desc="knockout", unit="layer-position", disable=not progress or not parallel.is_main()):
        for k0 in range(0, len(variants), K_max):
            K = min(K_max, len(variants) - k0)
            for rows, starts, Tc in chunks:                               # Tc: the chunk's longest prompt
                start = starts[p]                                         # p: a position, or a slot
                if start >= Tc:                                           # not in these prompts: no change
                    continue
                stop = _switch_off(layer, p, {s: o[k0:k0 + K] for s, o in off.items()},
                                   None if slots is None else slots[rows, :Tc].repeat(K, 1), means)
                x = inputs[layer][rows, start:Tc].repeat(K, 1, 1)                     # (K·b, Tc-start, D)
                past = [(k[rows, :, :start].repeat(K, 1, 1, 1), v[rows, :, :start].repeat(K, 1, 1, 1))
                        for k, v in kv[layer:]]
                at = batch.answer_pos[rows].repeat(K)
                out, _ = model.blocks(x, layer, past, stop, at)                      # (K·b, 1, D)
                diff = logit_diff(out[:, 0], rows, K)                                 # (K·b,) ℓ̃(t) - ℓ̃(o)
                effect = ((diff.view(K, -1) - clean[rows]).float() @ weights[:, rows].T.to(diff.device)).cpu()  # (K, G)
                for (s, h), e in zip(variants[k0:k0 + K], effect, strict=True):
                    maps[s][(slice(None), layer, p) if h is None else (slice(None), layer, p, h)] += e
    maps = {s: parallel.total(m) for s, m in maps.items()}   # data parallel: each process filled its jobs
    out = {g: {s: m[i] for s, m in maps.items()} for i, g in enumerate(groups)}
    return out if per_side else out["all"]


def knockout_sides(model, batch: Batch, sites, **kwargs) -> dict[str, dict[str, torch.Tensor]]:
    """The knockout map of all the prompts and of each side, from one set of passes: knockout(per_side=True)."""
    return knockout(model, batch, sites, per_side=True, **kwargs)


def attribution(model, batch: Batch, sites, batch_size: int = 64, toward: str = "a") -> dict[str, torch.Tensor]:
    """The first-order estimate of the knockout map: ∂/∂α of the mean logit difference of answer A over
    answer B (the knockout map's orientation; toward="target": each prompt's ℓ(t) - ℓ(o)), at α = 0 (one
    backward pass). Knocking a location out is α = -1, so its linear estimate is minus this. Toward the
    target it is also ActivScalar's first step: at α = 0 the KL and ℓ1 terms have zero gradient, so while
    every prompt is inside the margin ∂L/∂α = -attribution, and Adam's first step moves each α by
    lr·sign(attribution). Returns {site: (L, T) or (L, T, nh)}; prompts of one length (or a slot
    map: then per slot), batch_size of them at a time (the gradients add up). It estimates the zero
    knockout; mean ablation moves an activation elsewhere than along its own direction."""
    S = batch.ids.shape[1] if batch.slots is None else int(batch.slots.max()) + 1
    iv = ActivScalar(model.config, sites, S).to(batch.ids.device)
    for i in range(0, len(batch), batch_size):
        mb = batch[i:i + batch_size]
        logits = model(mb.ids, intervene=at_slots(iv, mb.slots), at=mb.answer_pos).float()
        lt, lo = logits.gather(1, mb.answers).unbind(1)
        ((orientation(mb, toward).to(lt.device) * (lt - lo)).sum() / len(batch)).backward()
    return {s: a.grad.detach().cpu() for s, a in iv.alpha.items()}


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors (ties get their average rank)."""
    def ranks(v):
        order = v.double().argsort()
        r = torch.empty_like(order, dtype=torch.float64)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        _, inverse = v.unique(return_inverse=True)                  # average the ranks of equal values
        return (torch.zeros(int(inverse.max()) + 1, dtype=torch.float64).index_add_(0, inverse, r)
                / torch.bincount(inverse).double())[inverse]
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = (rx.norm() * ry.norm()).item()
    return (rx @ ry).item() / denom if denom > 0 else float("nan")


def agreement(acts: dict[str, torch.Tensor], effects: dict[str, torch.Tensor], threshold: float = ACTIVE,
              large: float = 1.0, sign_toward: str | None = "A") -> dict[str, float]:
    """How well an intervention's map (β·α per location, e.g. ActivScalar.location_map) agrees with the
    knockout map (changes of ℓ(A) - ℓ(B)), over all locations of all sites:
        spearman        rank correlation of |β·α| and |knockout effect|
        large_active    share of the large-effect locations (|effect| >= `large` logits) that are active
        sign_agreement  share of the active locations where α pushes toward answer `sign_toward` ("A" or "B"):
                        amplifies what supports it and damps what opposes it, sign(α) = -sign(effect) toward A,
                        sign(α) = sign(effect) toward B. None: not reported (mean ablation: a scalar moves h
                        toward 0, not toward the mean, so its sign says nothing about that effect)
    (n_large and n_active count the locations behind the two shares.)"""
    a = torch.cat([acts[s].float().cpu().flatten() for s in effects])
    e = torch.cat([effects[s].float().cpu().flatten() for s in effects])
    active, big = a.abs() >= threshold, e.abs() >= large
    out = {"spearman": spearman(a.abs(), e.abs()),
           "large_active": active[big].float().mean().item() if big.any() else float("nan")}
    if sign_toward is not None:
        if sign_toward not in ("A", "B"):
            raise ValueError(f"sign_toward must be 'A', 'B' or None, not {sign_toward!r}")
        toward = -e.sign() if sign_toward == "A" else e.sign()
        out["sign_agreement"] = (a.sign() == toward)[active].float().mean().item() if active.any() else float("nan")
        out["sign_toward"] = sign_toward
    return {**out, "n_large": int(big.sum()), "n_active": int(active.sum()), "n_locations": len(a),
            "large_effect": large}
