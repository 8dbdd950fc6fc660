"""knockout.py on a tiny random GPT-2: the knockout map, its first-order estimate, agreement with a map."""

import pytest
import torch
from conftest import save_checkpoint, tiny_hf_model
from test_ascale import prompts

import ascale
import knockout
from gpt2 import GPT, UserError


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = save_checkpoint(tiny_hf_model("gpt2"), tmp_path_factory.mktemp("ckpt") / "tiny-gpt2")
    return GPT.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    """A tiny Gemma 2 whose final logits are soft-capped (cap 3), its local layers' window shorter than the prompts."""
    hf = tiny_hf_model("gemma2", vocab_size=50257, head_dim=16, sliding_window=4, final_logit_softcapping=3.0)
    return GPT.from_pretrained(str(save_checkpoint(hf, tmp_path_factory.mktemp("ckpt") / "tiny-gemma2")))



@pytest.mark.parametrize("family", ["gpt2", "gemma2"])
@pytest.mark.parametrize("sites", [("attn_out", "mlp_out"), ("head", "resid")])
def test_knockout_is_the_logit_difference_with_one_activation_zeroed(request, family, sites):
    """By construction: each cell equals a plain run with that one activation multiplied by 0 (also where the
    logits are soft-capped, so that ℓ(t) - ℓ(o) is not linear in the last residual)."""
    model = request.getfixturevalue("model" if family == "gpt2" else family)
    batch = ascale.prepare(model, prompts(N=5, T=6, swap=True), "flip")
    maps = knockout.knockout(model, batch, sites, max_sequences=7, progress=False)  # chunks of locations and prompts
    for site in sites:
        assert maps[site].shape == ((2, 6, model.config.n_head) if site == "head" else (2, 6))
        for loc in [(0, 0), (1, 5), (1, 2)]:
            loc = (*loc, 1) if site == "head" else loc

            def zero(s, l, h, site=site, loc=loc):
                if (s, l) != (site, loc[0]):
                    return h
                h = h.clone()
                h[(slice(None), *loc[1:])] = 0
                return h

            lt, lo = model(batch.ids, intervene=zero, at=batch.answer_pos).gather(1, batch.answers).unbind(1)
            expected = ((lt - lo) - batch.diff_before).mean()
            torch.testing.assert_close(maps[site][loc], expected, atol=1e-5, rtol=1e-4)


def test_knockout_needs_one_length(model):
    ps = prompts(N=4, T=6)
    ps.answer_pos[0] = 3
    with pytest.raises(UserError, match="one length"):
        knockout.knockout(model, ascale.prepare(model, ps), ["mlp_out"], progress=False)


def test_attribution_is_the_derivative_in_alpha(model):
    batch = ascale.prepare(model, prompts(N=6, T=5, swap=True), "flip")
    grads = knockout.attribution(model, batch, ["attn_out", "head"])
    iv = ascale.make("activscalar", model.config, ["attn_out", "head"], 5)
    eps = 1e-3
    for site, loc in [("attn_out", (1, 4)), ("attn_out", (0, 2)), ("head", (0, 3, 2))]:
        diffs = []
        for sign in (1, -1):
            with torch.no_grad():
                iv.alpha[site].zero_()
                iv.alpha[site][loc] = sign * eps
            logits = model(batch.ids, intervene=iv, at=batch.answer_pos)
            diffs.append(ascale.answer_stats(logits, batch)[0].mean().item())
        assert abs(grads[site][loc].item() - (diffs[0] - diffs[1]) / (2 * eps)) < 1e-3 * max(1, abs(diffs[0]))


def test_attribution_is_activscalars_first_step(model):
    """Adam's first step moves each α by -lr·sign(∂L/∂α) = lr·sign(attribution): at α = 0 the KL and ℓ1
    terms have no gradient, and ∂L_E/∂α = -attribution while every prompt is inside the margin."""
    batch = ascale.prepare(model, prompts(N=6, T=5, swap=True), "flip")
    grads = knockout.attribution(model, batch, ["mlp_out"])
    iv = ascale.make("activscalar", model.config, ["mlp_out"], 5)
    ascale.fit(model, iv, batch, steps=1, lr=0.01, batch_size=6, margin=100.0, progress=False)
    torch.testing.assert_close(iv.alpha["mlp_out"].detach(), 0.01 * grads["mlp_out"].sign(), atol=1e-6, rtol=0)


def test_spearman_and_agreement_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert knockout.spearman(x, x * 10) == pytest.approx(1.0)
    assert knockout.spearman(x, -x) == pytest.approx(-1.0)
    ties = knockout.spearman(torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 2.0, 3.0]))
    assert ties == pytest.approx(0.866, abs=1e-3)  # ranks (0.5, 0.5, 2) against (0, 1, 2)
    acts = {"mlp_out": torch.tensor([[0.5, 0.0], [-0.3, 0.01]])}
    effects = {"mlp_out": torch.tensor([[-2.0, 0.1], [1.5, -3.0]])}   # 3 large; 2 active, both of the right sign
    a = knockout.agreement(acts, effects)
    assert a["large_active"] == pytest.approx(2 / 3) and a["sign_agreement"] == 1.0
    assert (a["n_large"], a["n_active"], a["n_locations"]) == (3, 2, 4)
