"""Template slots: position-tied methods on prompts of many lengths, and the knockout maps (zero and mean
ablation) over positions and over slots, on a tiny random GPT-2."""

import pytest
import torch
from conftest import save_checkpoint, tiny_hf_model
from test_ascale import X, Y, prompts

import ascale
import knockout
import metrics
from gpt2 import GPT
from tasks import PromptSet

SITES = ("attn_out", "mlp_out")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return GPT.from_pretrained(str(save_checkpoint(tiny_hf_model("gpt2"), tmp_path_factory.mktemp("ckpt") / "gpt2")))


def slot_prompts(N=9, lengths=(1, 3, 6), P=2, Q=3, seed=1) -> PromptSet:
    """N prompts: a fixed prefix of P tokens, a random text of one of `lengths` tokens, a fixed suffix of Q
    tokens; right-padded, with their slot map (P + 1 + Q slots). Half of them have the answers swapped."""
    g = torch.Generator().manual_seed(seed)
    prefix, suffix = torch.randint(0, 50257, (P,), generator=g), torch.randint(0, 50257, (Q,), generator=g)
    seqs, rows = [], []
    for i in range(N):
        n = lengths[i % len(lengths)]
        seqs.append(torch.cat([prefix, torch.randint(0, 50257, (n,), generator=g), suffix]))
        rows.append([*range(P), *[P] * n, *range(P + 1, P + 1 + Q)])
    T, S = max(map(len, seqs)), P + 1 + Q
    ids, slots = torch.zeros(N, T, dtype=torch.long), torch.full((N, T), S - 1)
    for i, (s, r) in enumerate(zip(seqs, rows, strict=True)):
        ids[i, :len(s)], slots[i, :len(r)] = s, torch.tensor(r)
    c, w = torch.full((N,), X), torch.full((N,), Y)
    c[N // 2:], w[N // 2:] = Y, X
    names = [f"p{i}" for i in range(P)] + ["<text>"] + [f"s{i}" for i in range(Q)]
    return PromptSet([""] * N, ids, torch.tensor([len(s) - 1 for s in seqs]), c, w, [["t"] * len(s) for s in seqs],
                     [""] * N, [""] * N, slots, names)


def test_right_padding_never_reaches_the_answer(model):
    """Attention is causal: what follows the answer position (the padding) cannot change its logits."""
    ps = slot_prompts()
    other = ps.ids.clone()
    pad = torch.arange(ps.ids.shape[1]) > ps.answer_pos[:, None]
    assert pad.any()
    other[pad] = 1234
    torch.testing.assert_close(model(other, at=ps.answer_pos), model(ps.ids, at=ps.answer_pos), rtol=0, atol=0)


@pytest.mark.parametrize("method", ["activscalar", "steervec"])
def test_each_token_gets_its_slots_parameter(model, method):
    """at_slots feeds the slot map as positions: each token is changed by its slot's α (or v), and the
    padding past the prompt is whatever slot it was given (it is never read)."""
    ps = slot_prompts()
    iv = ascale.make(method, model.config, SITES, ps.n_slots)
    torch.manual_seed(0)
    for p in iv.parameters():
        torch.nn.init.normal_(p, std=0.3)
    bound, seen = ascale.at_slots(iv, ps.slots), []

    def record(site, layer, h):
        out = bound(site, layer, h)
        if site == "mlp_out" and layer == 1:
            seen.append((h, out))
        return out

    model(ps.ids, intervene=record)
    h, out = seen[0]
    for b, t in [(0, 0), (1, 3), (2, 4), (2, 8), (5, 7)]:
        s = int(ps.slots[b, t])
        want = h[b, t] * (1 + iv.alpha["mlp_out"][1, s]) if method == "activscalar" else h[b, t] + iv.v["mlp_out"][1, s]
        torch.testing.assert_close(out[b, t], want)


@pytest.mark.parametrize("method", ["activscalar", "steervec"])
def test_position_tied_methods_train_on_three_lengths(model, method):
    """Prompts of three lengths: trained and evaluated through the slot map; the map keeps its (site, layer,
    slot) reading and stays the same under a KV-cached, last-layer-only call (the `at` shortcut)."""
    ps = slot_prompts()
    assert len(set(ps.lengths.tolist())) == 3
    batch = ascale.prepare(model, ps, "flip")
    iv = ascale.make(method, model.config, SITES, ps.n_slots)
    assert metrics.evaluate(model, iv, batch)["flip_rate"] == 0
    ascale.fit(model, iv, batch, steps=60, lr=0.1, lambda_m=1e-3, progress=False)
    assert metrics.evaluate(model, iv, batch)["flip_rate"] >= 8 / 9
    for m in iv.location_map().values():
        assert m.shape == (model.config.n_layer, ps.n_slots)
    full = model(ps.ids, intervene=ascale.at_slots(iv, ps.slots))[torch.arange(len(ps)), ps.answer_pos]
    short = model(ps.ids, intervene=ascale.at_slots(iv, ps.slots), at=ps.answer_pos)
    torch.testing.assert_close(short, full, atol=1e-4, rtol=1e-4)


def test_active_locations_count_a_slot_once_however_many_tokens_it_has(model):
    """With a slot map a location is (site, layer, slot): one scalar on the text slot is one active location on
    every prompt, whether its text has 1 token or 6; one on a suffix slot, one more."""
    ps = slot_prompts()
    batch = ascale.prepare(model, ps, "flip")
    iv = ascale.make("activscalar", model.config, SITES, ps.n_slots)
    with torch.no_grad():
        iv.alpha["attn_out"][1, 2] = 0.5                            # the text slot (P = 2)
        assert metrics.active_locations(model, iv, batch) == 1
        iv.alpha["mlp_out"][0, 4] = -0.3                            # a suffix slot
        assert metrics.active_locations(model, iv, batch) == 2


def test_the_knockout_budget_counts_what_a_slot_map_recomputes(model):
    """knockout.span: T(T+1)/2 positions a prompt for one length; with slots, each slot from its first token to the
    prompt's end (P = 2 prefix, a text of 1, 3 or 6 tokens, Q = 3 suffix slots), averaged over the prompts."""
    fixed = ascale.prepare(model, prompts(N=4, T=8), "wrong")
    assert knockout.span(fixed) == 36
    batch = ascale.prepare(model, slot_prompts(), "flip")
    def by_hand(n):                      # a prompt of P + n + Q tokens: slot s starts at s, the text's at 2, ...
        length, starts = 2 + n + 3, [0, 1, 2, 2 + n, 3 + n, 4 + n]
        return sum(length - f for f in starts)
    assert knockout.span(batch) == pytest.approx(sum(by_hand(n) for n in (1, 3, 6)) / 3)
    assert knockout.knockout_prompts(model, batch, SITES) >= knockout.knockout_prompts(model, batch[[2]], SITES)


def test_a_slot_map_of_positions_gives_the_same_numbers_bit_for_bit(model):
    """Fixed length: slot = position. The slot map arange(T) gives exactly the numbers of no slot map."""
    ps = prompts(swap=True)
    batch = ascale.prepare(model, ps, "flip")
    slotted = ascale.Batch(**{**vars(batch), "slots": torch.arange(ps.ids.shape[1]).expand(len(ps), -1)})
    iv = ascale.make("activscalar", model.config, SITES, ps.ids.shape[1])
    ascale.fit(model, iv, batch, steps=5, progress=False)
    a, b = metrics.evaluate(model, iv, batch), metrics.evaluate(model, iv, slotted)
    assert (a["flip_rate"], a["kl"], a["logit_diff_after"]) == (b["flip_rate"], b["kl"], b["logit_diff_after"])
    for mode in knockout.MODES:
        k1 = knockout.knockout(model, batch, SITES, progress=False, mode=mode)
        k2 = knockout.knockout(model, slotted, SITES, progress=False, mode=mode)
        for s in SITES:
            assert torch.equal(k1[s], k2[s])


def activation(model, batch, site, layer) -> torch.Tensor:
    """h at (site, layer) of every prompt and position of the clean model: (N, T, ...)."""
    acts = {}
    model(batch.ids, intervene=lambda s, lyr, h: acts.setdefault((s, lyr), h))
    return acts[(site, layer)]


def hand_effect(model, batch, site, layer, where, value, head=None):
    """The change of the mean ℓ(A) - ℓ(B) (the knockout map's orientation) when h at (site, layer[, head]) and the
    tokens `where` (N, T) becomes `value` (0 or a mean vector): a plain forward pass, no shortcut."""
    def edit(s, lyr, h):
        if (s, lyr) != (site, layer):
            return h
        h = h.clone()
        if head is None:
            h[where] = value
        else:
            h[..., head, :][where] = value
        return h
    lt, lo = model(batch.ids, intervene=edit, at=batch.answer_pos).gather(1, batch.answers).unbind(1)
    return (knockout.orientation(batch) * ((lt - lo) - batch.diff_before)).mean()


def test_mean_ablation_of_one_location_by_hand(model):
    """Fixed length (as CCC): the activation at (site, layer, position) replaced by its mean over the prompts."""
    batch = ascale.prepare(model, prompts(N=6, T=6, swap=True), "flip")
    maps = knockout.knockout(model, batch, SITES, max_sequences=5, progress=False, mode="mean")
    for site, layer, p in [("attn_out", 0, 2), ("mlp_out", 1, 5), ("mlp_out", 0, 0)]:
        mean = activation(model, batch, site, layer)[:, p].mean(0)          # (D,): over the prompts
        where = torch.zeros(batch.ids.shape, dtype=torch.bool)
        where[:, p] = True
        expected = hand_effect(model, batch, site, layer, where, mean)
        torch.testing.assert_close(maps[site][layer, p], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", knockout.MODES)
def test_a_slot_knockout_switches_off_all_of_its_tokens(model, mode):
    """Prompts of three lengths: knocking out slot s zeroes (or sets to the slot's mean over all of its real
    tokens) every token of that slot, in each prompt wherever it lies."""
    batch = ascale.prepare(model, slot_prompts(), "flip")
    maps = knockout.knockout(model, batch, ("attn_out", "head"), max_sequences=7, progress=False, mode=mode)
    real = torch.arange(batch.ids.shape[1]) <= batch.answer_pos[:, None]
    for site, layer, s, head in [("attn_out", 0, 2, None), ("attn_out", 1, 5, None), ("attn_out", 0, 0, None),
                                 ("head", 0, 2, 1)]:
        where = real & (batch.slots == s)
        h = activation(model, batch, site, layer)
        h = h if head is None else h[..., head, :]
        value = 0.0 if mode == "zero" else h[where].mean(0)       # the slot's mean over all of its real tokens
        cell = maps[site][layer, s] if head is None else maps[site][layer, s, head]
        torch.testing.assert_close(cell, hand_effect(model, batch, site, layer, where, value, head),
                                   atol=1e-5, rtol=1e-4)
