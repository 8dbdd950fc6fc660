"""
Activation scaling (Stoehr et al., EMNLP Findings 2024): steer a frozen model by rescaling its
activation vectors, and read off where a behaviour lives from which scalars moved.

Read top to bottom (docs/method.md defines every term):
    1. interventions   ActivScalar  h̃ = h·(1 + β·α)         one scalar per location
                       SteerVec     h̃ = h + β·v             one vector per location (the baseline)
                       DynScalar    h̃ = h·(1 + β·α(h))      α(h) = w·ĥ + b, one probe per site and layer
    2. the objective   L = L_E + λF·L_F + λM·L_M            effectiveness, faithfulness, minimality
    3. training        Adam on the intervention's parameters only; the model stays frozen
    4. save / load     safetensors, with what the intervention was trained for in its metadata
The metrics (flip rate, its sides and the offset control, KL, active locations) are in metrics.py; the checks
of where an intervention acts (knockout map, attribution, agreement) in knockout.py.

A location is (site, layer, position[, head]). An intervention is an nn.Module called as `intervene(site, layer, h)`
by gpt2.GPT's forward pass (other sites pass through), whose class attributes say what the rest of the code asks of
it: a new method is one class, here, in a module of BUILT_IN or in a file of one's own (`methods`, `method_class`)."""

import functools
import importlib
import json
import math
import os
from dataclasses import dataclass, fields, replace

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from gpt2 import SITES, GPTConfig, UserError
from loading import method_files
from running import budget, parallel
from running.parallel import by_length  # prompts of about one length at a time (prepare, the metrics, diffmean.py)
from running.runfolder import write_atomically

METHODS: dict[str, type] = {}  # every class by its name (--method), filled as each is defined (all of them: methods())
BASELINES: dict[str, type] = {}  # the same for those computed, not trained by `fit` (learned = False: DiffMean)
SCHEDULES = ("cosine", "constant")
TARGETS = ("flip", "wrong", "correct")
# Training defaults (lr along a cosine), tuned on SmolLM2: docs/results-smollm2.md, "How the defaults were chosen".
STEPS, LR, LAMBDA_M, MARGIN = 100, 0.05, 0.02, 4.0
ACTIVE = 0.05  # a location is active where the intervention changes its activation by >= 5% of its norm
P_REST_BYTES = 256 * 2**20  # prepare keeps p⁻ (N, V) while it takes at most this; otherwise it is recomputed

# ----------------------------------------------------------------------------- 1. interventions


def check_sites(sites) -> tuple[str, ...]:
    sites = tuple(dict.fromkeys(sites))  # unique, in the given order
    unknown = [s for s in sites if s not in SITES]
    if unknown or not sites:
        what = f"unknown site {unknown[0]!r}" if unknown else "no site given"
        raise UserError(f"{what}; choose from {', '.join(SITES)} (comma-separated)")
    return sites


class Intervention(nn.Module):
    """Base class: parameters per site, `beta` the strength dial (training uses β = 1).

    `positions` is the prompt length that position-tied methods (ActivScalar, SteerVec) were made
    for; DynScalar has none and applies to any length. Position-free (train.py --positions shared): a method that
    can share its parameters (`shareable`), made with positions=None, keeps one parameter per (site, layer[, head])
    for every position, generated ones included: its position axis has size 1 (`n_pos`), `apply` gets no pos and
    that axis broadcasts over any length (`forward`). A subclass names itself in `method` (which
    registers it in METHODS) and says in the attributes below what train.py, selection.py and
    figures/report.py need to know; it defines `apply` (or `scale`), `effect` and `location_map`."""
    method = ""               # its name on the command line and in saved files
    about = ""                # one line for train.py --help
    tied_to_positions = True  # one parameter per position: prompts of one length only (else: any length)
    shareable = False         # made with positions=None, one parameter shared by every position (n_pos = 1)
    signed = True             # its location_map has a sign (drawn red-blue, white = 0); else a size (white-red)
    # the heatmap's colour-bar label; before its first comma, the map's short name (the knockout figure's)
    map_label = "β·α, the activation is scaled by 1 + β·α:  −1 switched off,  0 unchanged (white),  +1 doubled"
    measure = "|alpha|"       # what selection ranks its units by (`effect`), in words for metrics.json
    learned = True            # trained by `fit` (METHODS); else computed from the data (BASELINES: diffmean.py)
    # apply reads pos (where h's rows are, when they are not positions 0 ... T-1): gpt2.GPT may then run the last
    # layer at the answer positions only, and generation may use its KV cache. Left False, every call gets whole
    # prompts from position 0: slower, never wrong.
    takes_positions = False
    # {parameter name: its share of the learning rate} where a step of lr would move it further than one scalar's
    # (DynScalar's probe weights); the others take lr itself (`fit`)
    lr_scale: dict[str, float] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.method:
            (METHODS if cls.learned else BASELINES)[cls.method] = cls

    def __init__(self, cfg: GPTConfig, sites, positions: int | None):
        super().__init__()
        self.sites = check_sites(sites)
        self.n_layer, self.n_head, self.n_embd = cfg.n_layer, cfg.n_head, cfg.n_embd
        self.head_dim = cfg.head_dim  # n_embd // n_head unless the config sets it (Qwen3, Gemma)
        self.positions = positions
        self.shared = positions is None and self.tied_to_positions   # position-free: one slot read by every position
        self.tied_to_positions = positions is not None and self.tied_to_positions
        self.n_pos = positions or 1  # the size of the parameters' position axis: the prompt length, or 1 when shared
        self.beta = 1.0
        self.keep = None  # after `restrict`: {site: bool (units)}, the units that may be non-zero

    @classmethod
    def check(cls, model, batches: dict, target) -> None:
        """Raise a UserError, one line, where this method cannot run on these prepared prompts ({"train", "test"[,
        "val"]}: Batch) and target; train.py asks every method before it trains any. Every built-in one runs on
        any task and target (DiffMean: prompts one token short of the model's context)."""

    # A "unit" is what selection (selection.py) keeps or drops: one location for ActivScalar and SteerVec,
    # one probe (site, layer[, head]) for DynScalar; `effect` and `keep` hold one value per unit.
    def effect(self) -> dict[str, torch.Tensor]:
        """How much each unit can change its activation, per site (the size selection ranks by)."""
        raise NotImplementedError

    def floor(self, effect: dict[str, torch.Tensor]) -> float:
        """The smallest effect of a unit that moves noticeably (selection.n_units): ACTIVE, for effects that
        are shares of the activation's norm."""
        return ACTIVE

    def restrict(self, keep: dict[str, torch.Tensor]) -> None:
        """Keep only the units where keep[site] is True: the others are set to exactly 0, and `fit` keeps
        them there (it masks their gradients and zeroes them again after every step)."""
        self.keep = {s: keep[s].to(self.device) for s in self.sites}
        self.zero_outside_keep()

    @torch.no_grad()
    def zero_outside_keep(self, grads: bool = False) -> None:
        """Set the dropped units' parameters (with grads=True: their gradients) to exactly 0."""
        if self.keep is None:
            return
        for name, p in self.named_parameters():              # e.g. "alpha.attn_out": (L, T) under keep (L, T)
            t = p.grad if grads else p
            if t is not None:
                t.mul_(per_parameter(self.keep[name.split(".")[1]], p))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def site_shape(self, site: str) -> tuple[int, ...]:
        """The shape of one activation vector h at a site: (D,), or (nh, hs) for `head`."""
        return (self.n_head, self.head_dim) if site == "head" else (self.n_embd,)

    def forward(self, site: str, layer: int, h: torch.Tensor, pos=None) -> torch.Tensor:
        """h (B, T, ...) at positions 0 ... T-1, or with pos (B or 1, T): row i of h (of prompt b) is at
        position pos[b, i] (the last layer's read rows, a KV-cached pass)."""
        if site not in self.sites:
            return h
        if pos is not None and not self.takes_positions:
            raise UserError(f"{self.method} was given positions (pos), but its apply ignores them; set"
                            " takes_positions = True once it reads pos")
        if pos is None and self.positions is not None and h.shape[1] != self.positions:
            raise UserError(f"this {self.method} intervention has parameters for the {self.positions} positions of its"
                            f" training prompts; it cannot read a {h.shape[1]}-token prompt"
                            f" ({', '.join(m for m, c in METHODS.items() if not c.tied_to_positions)} can)")
        out = self.apply(site, layer, h, None if self.shared else pos)   # shared: (1, ...) broadcasts over T
        if out.shape != h.shape:                      # a parameter broadcast against h would give a silent wrong number
            raise UserError(f"{self.method}.apply returned shape {tuple(out.shape)} for h of shape {tuple(h.shape)}")
        return out

    def for_generation(self):
        """This intervention as gpt2.GPT.generate uses it (generate calls this itself). Generation reads
        positions beyond a position-tied method's `positions`: ActivScalar and SteerVec then act on the
        first `positions` tokens (the prompt, as in training) and let every later position pass through
        unchanged, whether a pass holds the whole sequence (no cache) or only the new token (pos >= P).
        DynScalar and a position-free (shared) intervention act on every position. Training and evaluation call
        the intervention itself, which still refuses other lengths."""
        if self.positions is None:
            return self
        P = self.positions

        def prompt_only(site, layer, h, pos=None):
            if site not in self.sites:
                return h
            if pos is None:                          # h (B, T, ...) at positions 0 ... T-1
                if h.shape[1] <= P:
                    return self(site, layer, h)      # the prompt alone (a shorter one is refused)
                if not self.takes_positions:         # apply ignores pos: the prompt's rows, then the rest as they are
                    return torch.cat((self(site, layer, h[:, :P]), h[:, P:]), dim=1)
                pos = torch.arange(h.shape[1], device=h.device)[None]
            steered = self(site, layer, h, pos.clamp(max=P - 1))
            prompt = (pos < P).view(*pos.shape, *[1] * (h.dim() - 2))  # (B or 1, T, 1[, 1])
            return torch.where(prompt, steered, h)

        prompt_only.takes_positions = self.takes_positions   # GPT.generate may then use its KV cache
        return prompt_only

    def extra_repr(self) -> str:
        positions = "shared" if self.shared else self.positions
        return f"sites={','.join(self.sites)}, positions={positions}, beta={self.beta}"


class Scaling(Intervention):
    """The multiplicative methods: h̃ = h·(1 + β·α), with α from `scale` (a parameter or a probe)."""

    def apply(self, site, layer, h, pos=None):
        # h (B, T, D) · (T | B,T, 1)  or  h (B, T, nh, hs) · (T | B,T, nh, 1): one broadcast multiply
        return h * (1 + self.beta * self.scale(site, layer, h, pos)).unsqueeze(-1).to(h.dtype)


class ActivScalar(Scaling):
    """h̃ = h·(1 + β·α): one scalar α per (layer, position) of each site, and per head for `head`.
    α = 0 changes nothing (the initial state), α = -1 switches a location off, α = -2 reverses it."""
    method, about = "activscalar", "one scalar per location, h*(1+a)"
    takes_positions = shareable = True

    def __init__(self, cfg: GPTConfig, sites, positions: int | None):
        super().__init__(cfg, sites, positions)
        self.alpha = nn.ParameterDict({s: nn.Parameter(torch.zeros(self.n_layer, self.n_pos, *self.site_shape(s)[:-1]))
                                       for s in self.sites})       # (L, T) or (L, T, nh) for head

    def scale(self, site: str, layer: int, h: torch.Tensor, pos=None) -> torch.Tensor:
        """α of every location of this site and layer: (T,) or (T, nh), shared by the batch;
        with pos (B or 1, T): (B or 1, T) or (B or 1, T, nh), the α of each row's position."""
        alpha = self.alpha[site][layer].to(h.device)                # a device map: on this layer's device
        return alpha if pos is None else alpha[pos]

    def location_map(self, model=None, ids=None) -> dict[str, torch.Tensor]:
        """What each location does, for the heatmap: β·α, (L, T) or (L, T, nh) per site."""
        return {s: self.beta * a.detach() for s, a in self.alpha.items()}

    def effect(self) -> dict[str, torch.Tensor]:
        """|α| per location: the activation changes by |α| of its norm."""
        return {s: a.detach().abs() for s, a in self.alpha.items()}


class SteerVec(Intervention):
    """h̃ = h + β·v: one vector v per location (the additive steering baseline)."""
    method, about = "steervec", "one vector per location, h+v"
    signed, measure, takes_positions, shareable = False, "||v||", True, True
    map_label = "‖β·v‖, the norm of the vector added to the activation (white: nothing added)"

    def __init__(self, cfg: GPTConfig, sites, positions: int | None):
        super().__init__(cfg, sites, positions)
        self.v = nn.ParameterDict({s: nn.Parameter(torch.zeros(self.n_layer, self.n_pos, *self.site_shape(s)))
                                   for s in self.sites})           # (L, T, D) or (L, T, nh, hs) for head

    def apply(self, site, layer, h, pos=None):
        v = self.v[site][layer].to(h.device)                        # (T, ...), on this layer's device
        if pos is not None:
            v = v[pos]                                              # (B or 1, T, ...): each row's position
        return h + (self.beta * v).to(h.dtype)                      # (B, T, ...) + (T, ...)

    def location_map(self, model=None, ids=None) -> dict[str, torch.Tensor]:
        """‖β·v‖ per location: (L, T) or (L, T, nh) per site."""
        return {s: (self.beta * v.detach()).norm(dim=-1) for s, v in self.v.items()}

    def effect(self) -> dict[str, torch.Tensor]:
        """‖v‖ per location: how far the activation is moved."""
        return {s: v.detach().norm(dim=-1) for s, v in self.v.items()}

    def floor(self, effect):
        """‖v‖ is in the activation's units, not a share of it: at least 1 % of the largest ‖v‖."""
        return 0.01 * max(float(e.max()) for e in effect.values())


class DynScalar(Scaling):
    """h̃ = h·(1 + β·α(h)) with α(h) = w·ĥ + b, ĥ = h/‖h‖: the scalar is a linear probe of the
    activation's direction. One (w, b) per site and layer, shared by all positions, so it applies to
    prompts of any length. (ĥ is unit-length so that α does not grow with the activation's norm,
    which differs a lot between sites and layers; docs/method.md, "Choices that are ours".)"""
    method, about = "dynscalar", "the scalar is a probe of h, for prompts of any length"
    tied_to_positions, measure, takes_positions = False, "||w|| + |b| per probe", True   # α(h) needs no pos

    def __init__(self, cfg: GPTConfig, sites, positions=None):
        super().__init__(cfg, sites, None)
        self.w = nn.ParameterDict({s: nn.Parameter(torch.zeros(self.n_layer, *self.site_shape(s)))
                                   for s in self.sites})           # (L, D) or (L, nh, hs) for head
        self.b = nn.ParameterDict({s: nn.Parameter(torch.zeros(self.n_layer, *self.site_shape(s)[:-1]))
                                   for s in self.sites})           # (L,) or (L, nh) for head
        # w at lr/√D (our choice): Adam moves every weight by about lr a step, which moves α(h) = w·ĥ by up to
        # lr·‖ĥ‖₁ = lr·√D where ĥ is spread evenly; at lr/√D a step moves α about as far as one scalar's
        self.lr_scale = {f"w.{s}": self.site_shape(s)[-1] ** -0.5 for s in self.sites}

    def scale(self, site, layer, h, pos=None):
        """α(h) for every location of the batch: (B, T) or (B, T, nh) for head (pos: not needed)."""
        h = h.float()
        h_hat = h / h.norm(dim=-1, keepdim=True).clamp(min=1e-6)   # (B, T, [nh,] hs|D), unit length
        return (h_hat * self.w[site][layer].to(h.device)).sum(-1) + self.b[site][layer].to(h.device)

    def effect(self) -> dict[str, torch.Tensor]:
        """‖w‖ + |b| per probe (site, layer[, head]), (L,) or (L, nh): ĥ has unit length, so this is the
        largest |α(h)| the probe gives any activation (Cauchy-Schwarz), reached where ĥ points along w."""
        return {s: self.w[s].detach().norm(dim=-1) + self.b[s].detach().abs() for s in self.sites}

    def location_map(self, model, ids, batch_size: int = 64) -> dict[str, torch.Tensor]:
        """β·α(h) on prompts ids (N, T) of one length, averaged over them: (L, T) or (L, T, nh) per site."""
        maps = {s: torch.zeros(self.n_layer, ids.shape[1], *self.site_shape(s)[:-1], device=ids.device)
                for s in self.sites}                                # (L, T) or (L, T, nh), summed into in place

        def record(site, layer, h):
            if site in self.sites:
                maps[site][layer] += (self.beta * self.scale(site, layer, h).sum(0) / len(ids)).to(ids.device)
            return self(site, layer, h)

        with torch.no_grad():
            for i in range(0, len(ids), batch_size):
                chunk = ids[i:i + batch_size]
                model(chunk, intervene=record, at=torch.full((len(chunk),), ids.shape[1] - 1, device=ids.device))
        return maps


def per_parameter(units: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """A map over units (a keep mask, a count) shaped to multiply parameter p: (L, T) -> (L, T, 1) for v."""
    return units.view(*units.shape, *[1] * (p.dim() - units.dim())).to(p.dtype)


def make(method: str | type, cfg: GPTConfig, sites, positions: int | None = None) -> Intervention:
    """A fresh intervention (all parameters 0: the unchanged model) of `method`, a name (method_class finds its
    class) or a class (a method file's, from method_class). positions: the prompt length of a position-tied
    method; None makes it position-free (one parameter per (site, layer[, head]) for every position) where it
    is `shareable`."""
    cls = method if isinstance(method, type) else method_class(method)
    if cls.tied_to_positions and not positions and not cls.shareable:
        raise UserError(f"{cls.method} has parameters per position and cannot share them: it needs the prompt"
                        " length (positions)")
    return cls(cfg, sites, positions)


def l1(iv: Intervention) -> torch.Tensor:
    """‖θ‖₁: the sum of absolute values of all intervention parameters (docs/method.md, "The objective": minimality)."""
    return sum(p.abs().sum() for p in iv.parameters())


def n_params(iv: Intervention) -> int:
    return sum(p.numel() for p in iv.parameters())



def at_slots(iv: Intervention, slots: torch.Tensor | None):
    """iv as the model calls it on prompts whose tokens map to slots (B, T) (tasks.tokenize; a template around
    texts of any length): a position-tied method's parameter "position" p is slot p, so each token gets its
    slot's α or v, given as pos. Positions past T (tokens generated after the prompt) pass through unchanged.
    With no slot map (slot = position) or a method not tied to positions: iv itself."""
    if slots is None or iv.positions is None:
        return iv
    if not iv.takes_positions:
        raise UserError(f"{iv.method} reads prompts of many lengths through slots, which needs its apply to read pos;"
                        " set takes_positions = True in its class once it does")
    T = slots.shape[1]

    def intervene(site, layer, h, pos=None):
        if site not in iv.sites:
            return h
        if pos is None:                                              # h's rows are positions 0 ... h.shape[1]-1
            pos = torch.arange(h.shape[1], device=slots.device)[None]
        pos = pos.to(slots.device).expand(len(slots), -1)           # (B, T'): the position of each row of h
        out = iv(site, layer, h, slots.gather(1, pos.clamp(max=T - 1)))   # each row's slot, (B, T')
        prompt = (pos < T).view(*pos.shape, *[1] * (h.dim() - 2)).to(h.device)
        return out if bool(prompt.all()) else torch.where(prompt, out, h)

    intervene.takes_positions = True
    return intervene

# ----------------------------------------------------------------------------- 2. the objective


@dataclass
class Batch:
    """A prompt set with what the objective needs about the original model there, computed once
    (no gradients) by `prepare` and reused at every step. Index it to take a minibatch, cut after its longest
    prompt: the padding is never read (attention is causal) and would cost time. p⁻ is N·V floats (12 GB for
    20,000 prompts of Qwen's 151,936 tokens): beyond P_REST_BYTES it is None (see with_original)."""
    ids: torch.Tensor          # (N, T) prompt tokens, right-padded
    answer_pos: torch.Tensor   # (N,) position of the last prompt token, where logits are read
    answers: torch.Tensor      # (N, 2) target token t and other token o: (c, w) or (w, c)
    diff_before: torch.Tensor  # (N,) original ℓ(t) - ℓ(o)
    p_rest: torch.Tensor | None = None       # (N, V) original p⁻: next-token distribution without c and w
    neg_entropy: torch.Tensor | None = None  # (N,) Σ p⁻ log p⁻, the constant part of KL(p⁻ ‖ p̃⁻)
    slots: torch.Tensor | None = None        # (N, T) each token's slot (tasks.tokenize); None: slot = position
    top: torch.Tensor | None = None          # (N,) the original model's top token (for train.py's report)
    role_a: torch.Tensor | None = None       # (N,) answer A's token (c; sentiment: " positive"): sides, offset control
    groups: torch.Tensor | None = None       # (N,) each prompt's group (country, names, text): grouped intervals

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index) -> "Batch":
        mb = Batch(*(None if (v := getattr(self, f.name)) is None else v[index] for f in fields(self)))
        T = int(mb.answer_pos.max()) + 1 if len(mb) else mb.ids.shape[1]    # an empty share keeps its shape
        return replace(mb, ids=mb.ids[:, :T], slots=None if mb.slots is None else mb.slots[:, :T])


def rest_log_likelihood(p_rest: torch.Tensor, logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """Σ_v p⁻(v) log q⁻(v) for q⁻ = softmax(logits) without c and w: (B,).
    Since Σ p⁻ = 1 and log q⁻ = ℓ - logsumexp(ℓ over the rest), this is Σ p⁻ℓ - logsumexp_rest(ℓ);
    written so, nothing multiplies the -inf of the removed tokens."""
    rest = logits.scatter(1, answers, float("-inf"))                # (B, V): c and w removed
    return (p_rest * logits).sum(1) - rest.logsumexp(1)


def rest_distribution(logits: torch.Tensor, answers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Original logits ℓ (B, V) -> (p⁻ (B, V), 0 at c and w; Σ p⁻ log p⁻ (B,))."""
    p_rest = logits.scatter(1, answers, float("-inf")).softmax(1)
    return p_rest, rest_log_likelihood(p_rest, logits, answers)


def with_original(model, batch: Batch) -> Batch:
    """The batch with p⁻ and Σ p⁻ log p⁻: kept by prepare, or recomputed by one forward pass of the original
    model without gradients. The same numbers, to float rounding (logits differ in the last bits by batch)."""
    if batch.p_rest is not None:
        return batch
    with torch.no_grad():
        p_rest, neg_entropy = rest_distribution(model(batch.ids, at=batch.answer_pos).float(), batch.answers)
    return replace(batch, p_rest=p_rest, neg_entropy=neg_entropy)


def answer_stats(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Intervened logits ℓ̃ (B, V) at the answer positions -> (ℓ̃(t) - ℓ̃(o), KL(p⁻ ‖ p̃⁻)), each (B,);
    the batch must hold p⁻ (with_original)."""
    lt, lo = logits.gather(1, batch.answers).unbind(1)              # (B,), (B,)
    kl = batch.neg_entropy - rest_log_likelihood(batch.p_rest, logits, batch.answers)
    return lt - lo, kl


@torch.no_grad()
def answer_logits(model, ids, answer_pos, intervene=None, batch_size: int = 64) -> torch.Tensor:
    """Logits (N, V) at the answer positions only, float32, batch_size prompts at a time (for a few prompts)."""
    return torch.cat([model(ids[i:i + batch_size], intervene=intervene, at=answer_pos[i:i + batch_size]).float()
                      for i in range(0, len(ids), batch_size)])


def check_target(target, prompts) -> None:
    """A target prepare can take: flip, wrong, correct, or a token that is c or w of every prompt."""
    if isinstance(target, int):
        if not ((prompts.correct == target) | (prompts.wrong == target)).all():
            raise UserError(f"target token {target} is not an answer of every prompt")
    elif target not in TARGETS:
        raise UserError(f"unknown target {target!r}; choose {', '.join(TARGETS)}")


@torch.no_grad()
def prepare(model, prompts, target: str = "flip", batch_size: int = 64, p_rest_bytes: int | None = None,
            role_a=None) -> Batch:
    """Run the original model once on a prompt set (tasks.PromptSet: ids, answer_pos, correct,
    wrong) and keep what the objective and the metrics compare against, batch_size prompts at a
    time: O(N) numbers, and p⁻ (N, V) only while it fits p_rest_bytes (default P_REST_BYTES).

    target (docs/method.md, "Targets"): flip -> t is whichever of c, w the original model ranks lower, so every
    prediction is flipped; wrong -> t = w; correct -> t = c; a token id (one-sided, for tasks whose
    answers are labels: sentiment's " positive") -> t = that token on every prompt. o is the other one.
    role_a: the token of answer A, one per prompt or one for all (default c): the sides of `sides` are the
    prompts whose original model preferred A, and the others; the offset control moves ℓ(A) − ℓ(B)."""
    check_target(target, prompts)
    device = model.lm_head.weight.device
    ids, pos = prompts.ids.to(device), prompts.answer_pos.to(device)
    c, w = prompts.correct.to(device), prompts.wrong.to(device)
    if (c == w).any():
        raise UserError(f"prompt {int((c == w).nonzero()[0])} has the same token as correct and wrong answer")
    N, V = len(ids), model.lm_head.out_features
    keep = N * V * 4 <= (P_REST_BYTES if p_rest_bytes is None else p_rest_bytes)
    # Filled in place, chunk by chunk: small tensors kept between large ones would fragment the heap.
    out = Batch(ids, pos, torch.zeros(N, 2, dtype=c.dtype, device=device), torch.zeros(N, device=device),
                *((torch.zeros(N, V, device=device), torch.zeros(N, device=device)) if keep else (None, None)),
                slots=None if getattr(prompts, "slots", None) is None else prompts.slots.to(device),
                top=torch.zeros(N, dtype=c.dtype, device=device),
                role_a=(c if role_a is None else torch.as_tensor(role_a, device=device).expand(N)).clone(),
                groups=None if getattr(prompts, "groups", None) is None else prompts.groups.to(device))
    if not ((out.role_a == c) | (out.role_a == w)).all():
        raise UserError("answer A (role_a) must be one of the two answers of every prompt")
    for rows in by_length(out, batch_size):                           # data parallel: this process's chunks
        logits = model(ids[rows, :int(pos[rows].max()) + 1], at=pos[rows]).float()   # (B, V) ℓ, padding cut
        ci, wi = c[rows], w[rows]
        lc, lw = logits.gather(1, ci[:, None])[:, 0], logits.gather(1, wi[:, None])[:, 0]
        t = torch.full_like(ci, target) if isinstance(target, int) else \
            {"flip": torch.where(lc > lw, wi, ci), "wrong": wi, "correct": ci}[target]
        out.answers[rows] = answers = torch.stack([t, ci + wi - t], 1)  # (B, 2): o is the one t is not
        lt, lo = logits.gather(1, answers).unbind(1)
        out.diff_before[rows], out.top[rows] = lt - lo, logits.argmax(1)
        if keep:
            out.p_rest[rows], out.neg_entropy[rows] = rest_distribution(logits, answers)
    return parallel.summed(out, "answers", "diff_before", "p_rest", "neg_entropy", "top")  # every process's chunks


def objective(model, iv: Intervention, batch: Batch, *, lambda_f: float = 1.0, lambda_m: float = LAMBDA_M,
              margin: float = MARGIN) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One step's loss L = L_E + λF·L_F + λM·L_M (the paper's three-term objective; docs/method.md) and its terms:
        L_E = mean over prompts of max(0, m - (ℓ̃(t) - ℓ̃(o)))   effectiveness: hinge with margin m
        L_F = mean over prompts of KL(p⁻ ‖ p̃⁻)                faithfulness: the other tokens keep their odds
        L_M = ‖θ‖₁                                           minimality"""
    batch = with_original(model, batch)                                   # p⁻: kept, or one more forward pass
    intervene = iv if batch.slots is None else at_slots(iv, batch.slots)  # a template's slots: tasks.tokenize
    logits = model(batch.ids, intervene=intervene, at=batch.answer_pos).float()  # (B, V) ℓ̃ at the answers
    diff, kl = answer_stats(logits, batch)
    terms = {"L_E": (margin - diff).clamp(min=0).mean(), "L_F": kl.mean(), "L_M": l1(iv)}
    return terms["L_E"] + lambda_f * terms["L_F"] + lambda_m * terms["L_M"], terms


# ----------------------------------------------------------------------------- 3. training


def minibatches(n: int, batch_size: int, seed: int, device):
    """Endless minibatches of prompt indices: shuffled passes over the n prompts, batch_size at a time, drawn by
    a torch.Generator seeded with `seed`; the whole set, in order, when it is no larger."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.arange(n) if batch_size >= n else torch.randperm(n, generator=gen)
        yield from order.to(device).split(batch_size)


def cosine_lr(lr: float, step: int, steps: int) -> float:
    """lr·(1 + cos(π·(step-1)/steps))/2, from lr toward 0 (our choice): at a constant rate Adam keeps the scalars
    that minimality pushes to 0 hovering at ±lr around it, active; a rate that decays lets them settle."""
    return lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / steps))


def fit(model, iv: Intervention, batch: Batch, *, steps: int = STEPS, lr: float = LR, batch_size: int | None = None,
        lambda_f: float = 1.0, lambda_m: float = LAMBDA_M, margin: float = MARGIN, seed: int = 0,
        schedule: str = "cosine", progress: bool = True) -> dict:
    """Adam on iv's parameters for `steps` steps, the model frozen; batch_size None: budget.train_batch_size.
    Returns the loss curve and how it ended; Ctrl-C or SIGTERM stops it, keeping what was learned (docs/method.md)."""
    opt = torch.optim.Adam([{"params": [p], "lr_scale": iv.lr_scale.get(name, 1.0)}   # DynScalar's w: lr/√D
                            for name, p in iv.named_parameters()], lr=lr)
    batch_size = batch_size or budget.train_batch_size(model, batch)  # memory grows with the batch, not the prompts
    draws = minibatches(len(batch), batch_size, seed, batch.ids.device)
    loss_fn = functools.partial(objective, model, iv, lambda_f=lambda_f, lambda_m=lambda_m, margin=margin)
    loss_fn = parallel.DataParallel(loss_fn, opt) if dist.is_initialized() else loss_fn  # torchrun: share each batch
    curve, stopped_by = {"loss": [], "L_E": [], "L_F": [], "L_M": []}, None
    try:
        for step in (bar := tqdm(range(1, steps + 1), desc=iv.method, unit="step", disable=not progress)):
            loss, terms = loss_fn(batch[next(draws)])              # forward with the intervention: L, its 3 terms
            values = check_finite({"loss": loss, **terms}, step, lr)
            opt.zero_grad(set_to_none=True)
            loss.backward()                                        # gradients reach iv's parameters only
            if iv.keep is not None:                                # restricted (selection): dropped units stay 0
                iv.zero_outside_keep(grads=True)
            for group in opt.param_groups:
                group["lr"] = group["lr_scale"] * (cosine_lr(lr, step, steps) if schedule == "cosine" else lr)
            opt.step()
            for k, v in values.items():
                curve[k].append(v)
            bar.set_postfix(L_E=f"{values['L_E']:.3f}", L_F=f"{values['L_F']:.4f}", L_M=f"{values['L_M']:.2f}")
    except KeyboardInterrupt as e:
        stopped_by = str(e) or "Ctrl-C"
    if isinstance(loss_fn, parallel.DataParallel):
        loss_fn.close()                                            # the signal handlers as they were
    return {**curve, "steps": len(curve["loss"]), "batch_size": batch_size, "stopped_by": stopped_by,
            "interrupted": stopped_by is not None}


def check_finite(values: dict[str, torch.Tensor], step: int, lr: float) -> dict[str, float]:
    """The loss and its terms as numbers (one copy to the host); UserError once the loss is not finite, naming the
    first term that is not."""
    values = dict(zip(values, torch.stack([v.detach().float() for v in values.values()]).tolist(), strict=True))
    if not math.isfinite(values["loss"]):
        bad = next((k for k, v in values.items() if k != "loss" and not math.isfinite(v)), "loss")
        raise UserError(f"the loss became {values['loss']} at step {step} ({bad} is not finite);"
                        f" lower --lr (now {lr:g})")
    return values


# ----------------------------------------------------------------------------- 4. save and load

FORMAT = "ascale-intervention-1"
FILE = "intervention.safetensors"  # its name in a run folder
BUILT_IN = ("scaleshift", "diffmean")  # the modules of the built-in methods defined outside ascale.py


def methods() -> dict[str, type]:
    """Every method by name with nothing imported first: METHODS and BASELINES, once BUILT_IN's modules are."""
    for module in BUILT_IN:
        importlib.import_module(module)
    return {**METHODS, **BASELINES}


def method_class(name: str, file: str = "") -> type:
    """The class of method `name`; with `file`, that of the method a Python file of one's own defines (train.py
    --method FILE, a run's saved method_file), imported by its path. UserError if there is none."""
    return method_files.find(name, file, Intervention, (METHODS, BASELINES), methods())


def save(path, iv: Intervention, *, model, tokens=(), **run) -> None:
    """Write iv's parameters as safetensors, atomically (a temporary file, then os.replace). The
    metadata says what it is and what it was trained for: method (and its file), sites, model id, revision and
    shape, prompt length, the token strings of the positions, and `run` (task, target, seed, ...)."""
    from safetensors.torch import save as to_bytes
    meta = {"format": FORMAT, "method": iv.method, "method_file": method_files.file_of(type(iv)),
            "sites": ",".join(iv.sites), "model": str(getattr(model, "name_or_path", "")),
            "revision": str(getattr(model, "revision", "") or ""), "model_type": model.config.model_type,
            **{k: str(getattr(iv, k)) for k in ("n_layer", "n_head", "n_embd", "head_dim")},
            "positions": str(iv.positions or ""), "tokens": json.dumps(list(tokens)), **{k: str(run[k]) for k in run}}
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in iv.state_dict().items()}
    write_atomically(path, to_bytes(tensors, metadata=meta))


def read_metadata(path) -> dict[str, str]:
    """The metadata of an intervention file; UserError if it is not one."""
    from safetensors import safe_open
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder; pass the intervention file in it, {os.path.join(path, FILE)}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except FileNotFoundError:
        raise UserError(f"intervention file {path} does not exist; pass the {FILE} of a run folder") from None
    except Exception as e:  # safetensors raises its own error types for damaged or foreign files
        raise UserError(f"{path} is not a safetensors file ({type(e).__name__})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is a safetensors file but not an ascale intervention (no {FORMAT!r} metadata)")
    return meta


def load(path, model) -> tuple[Intervention, dict[str, str]]:
    """Read an intervention saved by `save` for `model` (its class: method_class); UserError for another shape."""
    from safetensors.torch import load_file
    meta = read_metadata(path)
    cfg = model.config
    want = (int(meta["n_layer"]), int(meta["n_head"]), int(meta["n_embd"]))
    want += (int(meta.get("head_dim", want[2] // want[1])),)  # files saved before head_dim was
    have = (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.head_dim)
    if want != have:
        raise UserError(f"{path} was trained on {meta['model'] or 'a model'} ({want[0]} layers, {want[1]} heads of"
                        f" size {want[3]}, width {want[2]}); {getattr(model, 'name_or_path', 'this model')} has"
                        f" {have[0]} layers, {have[1]} heads of size {have[3]}, width {have[2]}: train one for it")
    iv = make(method_class(meta["method"], meta.get("method_file", "")), cfg, meta["sites"].split(","),
              int(meta["positions"]) if meta["positions"] else None)
    try:
        iv.load_state_dict(load_file(str(path)))
    except RuntimeError as e:
        raise UserError(f"{path}: its tensors do not match its metadata ({str(e).splitlines()[0]})") from None
    return iv.to(model.lm_head.weight.device), meta

