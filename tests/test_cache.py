"""What the cost cuts must not change: generation with a KV cache gives the tokens of generation
without one, and the knockout map that reuses the clean run's keys and values equals the brute-force
one (a full forward pass per location). Tiny random GPT-2, Pythia (partial rotary, parallel residual)
and Llama (grouped-query attention) models, CPU."""

from types import SimpleNamespace

import pytest
import torch
from conftest import save_checkpoint, tiny_hf_model

import ascale
import knockout
import scaleshift  # noqa: F401  registers ScaleShift, so that every method is checked
from gpt2 import GPT, SITES

LAYOUTS = {"gpt2": dict(n_layer=3), "gpt_neox": dict(num_hidden_layers=3), "llama": dict(num_hidden_layers=3)}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def model(request, tmp_path_factory):
    kind = request.param
    folder = save_checkpoint(tiny_hf_model(kind, **LAYOUTS[kind]), tmp_path_factory.mktemp("ckpt") / kind)
    return GPT.from_pretrained(str(folder))


def random_prompts(model, N=5, T=6, seed=0) -> SimpleNamespace:
    """N random prompts of T tokens, two distinct random answers each, read at the last position."""
    g = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    c = torch.randint(0, V, (N,), generator=g)
    return SimpleNamespace(ids=torch.randint(0, V, (N, T), generator=g), answer_pos=torch.full((N,), T - 1),
                           correct=c, wrong=(c + torch.randint(1, V, (N,), generator=g)) % V)


def randomised(model, method, T, seed=0):
    """An intervention on every site with random parameters, large enough to change what the model says."""
    iv = ascale.make(method, model.config, SITES, T)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in iv.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return iv


# ----------------------------------------------------------------------------- generation


@torch.no_grad()
def uncached_generate(model, idx, n, intervene=None):
    """Generation as it was before the cache: every new token one full pass over the sequence so far."""
    if intervene is not None:
        intervene = intervene.for_generation()
    for _ in range(n):
        logits = model(idx[:, -model.config.n_ctx:], intervene=intervene)[:, -1]
        idx = torch.cat((idx, logits.argmax(-1, keepdim=True)), dim=1)
    return idx


@pytest.mark.parametrize("method", [None, *ascale.METHODS])
def test_cached_generation_gives_the_uncached_tokens(model, method):
    ids = random_prompts(model, N=3, T=8).ids
    iv = None if method is None else randomised(model, method, T=8)
    cached = model.generate(ids, 20, intervene=iv)
    assert cached.shape == (3, 28)
    assert torch.equal(cached, uncached_generate(model, ids, 20, iv))
    if iv is not None:
        assert not torch.equal(cached, model.generate(ids, 20))   # the intervention changes the tokens


def test_cached_steps_are_one_position_each(model):
    """The prompt is read once; then each pass sees one position, told where it is (pos)."""
    seen = []

    def record(site, layer, h, pos=None):
        seen.append((h.shape[1], None if pos is None else pos.tolist()))
        return h
    record.takes_positions = True

    model.generate(random_prompts(model, N=2, T=8).ids, 4, intervene=record)
    per_pass = len(SITES) * model.config.n_layer
    assert seen[:per_pass] == [(8, None)] * per_pass
    assert seen[per_pass:] == [(1, [[t]]) for t in range(8, 11) for _ in range(per_pass)]


def test_an_intervene_that_takes_no_positions_still_generates(model):
    """A plain function sees the whole sequence at every step, as without a cache."""
    ids = random_prompts(model, N=2, T=8).ids

    def damp(site, layer, h):
        return 0.5 * h if site == "mlp_out" else h

    assert torch.equal(model.generate(ids, 6, intervene=damp), uncached_generate(model, ids, 6, SimpleNamespace(
        for_generation=lambda: damp)))


def test_sampling_is_seeded_and_draws_each_token_from_the_tempered_softmax(model):
    """temperature > 0 samples: the same generator seed gives the same tokens, and the first one is the draw that
    torch.multinomial makes from softmax(logits / temperature) with that seed."""
    ids = random_prompts(model, N=3, T=5).ids

    def draw(seed):
        return model.generate(ids, 4, temperature=0.7, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(draw(1), draw(1)) and not torch.equal(draw(1), draw(2))
    with torch.no_grad():
        probs = torch.softmax(model(ids)[:, -1].float() / 0.7, -1)
    first = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(draw(1)[:, 5:6], first)


def test_past_the_context_the_window_slides_without_the_cache(model):
    ids = random_prompts(model, N=1, T=8).ids
    n = model.config.n_ctx - 8 + 5
    assert torch.equal(model.generate(ids, n), uncached_generate(model, ids, n))


# ----------------------------------------------------------------------------- knockout


def _old_switch_off(site: str, layer: int, keep: torch.Tensor):
    def intervene(s, l, h):
        if (s, l) != (site, layer):
            return h
        return (h.view(keep.shape[0], -1, *h.shape[1:]) * keep.to(h.dtype)).view(h.shape)  # (K·b, T, ...)
    return intervene


@torch.no_grad()
def brute_force_knockout(model, batch, sites, max_sequences: int = 256) -> dict[str, torch.Tensor]:
    """The knockout map as it was computed before the cache: one full forward pass per location (K
    copies of a chunk of prompts at once). The reference of the fast one."""
    N, T = batch.ids.shape
    maps = {s: torch.zeros(knockout._location_shape(model, s, T)) for s in sites}
    for site, layer in [(s, l) for s in sites for l in range(model.config.n_layer)]:
        n_loc = maps[site][layer].numel()
        prompts = max(1, min(N, max_sequences))
        locs = max(1, max_sequences // prompts)
        for k0 in range(0, n_loc, locs):
            K = min(locs, n_loc - k0)
            keep = torch.ones(K, n_loc)
            keep[torch.arange(K), torch.arange(k0, k0 + K)] = 0
            off = _old_switch_off(site, layer, keep.view(K, 1, *maps[site][layer].shape, 1))
            for i in range(0, N, prompts):
                mb = batch[i:i + prompts]
                logits = model(mb.ids.repeat(K, 1), intervene=off, at=mb.answer_pos.repeat(K)).float()
                lt, lo = logits.gather(1, mb.answers.repeat(K, 1)).unbind(1)
                effect = knockout.orientation(mb) * ((lt - lo).view(K, -1) - mb.diff_before)   # of ℓ(A) - ℓ(B)
                maps[site][layer].view(-1)[k0:k0 + K] += effect.sum(1) / N
    return maps


@pytest.mark.parametrize("max_sequences", [256, 7])   # one pass a location; chunks of locations and prompts
def test_knockout_equals_the_brute_force_map(model, max_sequences):
    batch = ascale.prepare(model, random_prompts(model, N=5, T=6))
    fast = knockout.knockout(model, batch, SITES, max_sequences=max_sequences, progress=False)
    slow = brute_force_knockout(model, batch, SITES)
    for site in SITES:
        scale = slow[site].abs().max()
        assert scale > 0.1                                  # the locations matter
        torch.testing.assert_close(fast[site] / scale, slow[site] / scale, atol=1e-4, rtol=0)
        assert (fast[site][-1, :-1] == 0).all()             # the last layer before the answer: nothing reads it


def test_knockout_on_capped_prompts_is_the_map_of_those_prompts(model):
    batch = ascale.prepare(model, random_prompts(model, N=9, T=5, seed=1))
    some = knockout.spread(batch, 4)
    assert some.ids.tolist() == batch.ids[[0, 3, 5, 8]].tolist()   # evenly spaced, first and last included
    fast = knockout.knockout(model, batch, ["attn_out", "head"], max_prompts=4, progress=False)
    slow = brute_force_knockout(model, some, ["attn_out", "head"])
    for site in fast:
        torch.testing.assert_close(fast[site], slow[site], atol=1e-4 * slow[site].abs().max().item(), rtol=0)
