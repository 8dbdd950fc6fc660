"""knockout.py on a tiny random GPT-2: the knockout map, its first-order estimate, agreement with a map."""

import pytest
import torch
from conftest import save_checkpoint, tiny_hf_model
from test_ascale import prompts

import ascale
import knockout
import metrics
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
    """By construction: each cell equals a plain run with that one activation multiplied by 0, the change of
    ℓ(A) - ℓ(B) (also where the logits are soft-capped, so that ℓ(t) - ℓ(o) is not linear in the last residual)."""
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

            expected = hand_effect(model, batch, zero).mean()
            torch.testing.assert_close(maps[site][loc], expected, atol=1e-5, rtol=1e-4)


def hand_effect(model, batch, intervene) -> torch.Tensor:
    """(N,): each prompt's change of ℓ(A) - ℓ(B) under `intervene`, by one plain forward pass; A is batch.role_a."""
    logits = model(batch.ids, intervene=intervene, at=batch.answer_pos)
    a_is_t = batch.answers[:, 0] == batch.role_a
    b = torch.where(a_is_t, batch.answers[:, 1], batch.answers[:, 0])
    la, lb = logits.gather(1, batch.role_a[:, None])[:, 0], logits.gather(1, b[:, None])[:, 0]
    before = torch.where(a_is_t, batch.diff_before, -batch.diff_before)          # the original ℓ(A) - ℓ(B)
    return (la - lb) - before


def zero_at(site, layer, p):
    def zero(s, l, h):
        if (s, l) != (site, layer):
            return h
        h = h.clone()
        h[:, p] = 0
        return h
    return zero


def test_knockout_per_side_by_hand(model):
    """Prompts on both sides under `flip` (side a's targets are B, side b's A): the map of each side is the knockout
    map of that side's prompts alone and a plain run's change of ℓ(A) - ℓ(B) there; the map of them all is their
    size-weighted mean, so the two sides' effects add up in it, where toward each prompt's target they cancel."""
    batch = ascale.prepare(model, prompts(N=7, T=5, swap=True), "flip")
    side = metrics.prefers_a(batch)
    n_a, n_b = int(side.sum()), int((~side).sum())
    assert n_a and n_b and (knockout.orientation(batch) == torch.where(side, -1.0, 1.0)).all()   # both sides
    sites = ("attn_out", "mlp_out")
    maps = knockout.knockout_sides(model, batch, sites, max_sequences=5, progress=False)
    alone = {k: knockout.knockout(model, batch[m.nonzero()[:, 0]], sites, progress=False)
             for k, m in (("a", side), ("b", ~side))}
    whole = knockout.knockout(model, batch, sites, progress=False)
    toward_t = knockout.knockout(model, batch, sites, progress=False, toward="target")
    for s in sites:
        for k in ("a", "b"):
            torch.testing.assert_close(maps[k][s], alone[k][s], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(maps["all"][s], whole[s], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(whole[s], (n_a * maps["a"][s] + n_b * maps["b"][s]) / len(batch), atol=1e-5,
                                   rtol=1e-4)
        torch.testing.assert_close(toward_t[s], (-n_a * maps["a"][s] + n_b * maps["b"][s]) / len(batch), atol=1e-5,
                                   rtol=1e-4)   # toward the targets, the sides subtract
    for layer, p in [(0, 1), (1, 4), (0, 4)]:
        e = hand_effect(model, batch, zero_at("mlp_out", layer, p))
        for k, m in (("a", side), ("b", ~side)):
            torch.testing.assert_close(maps[k]["mlp_out"][layer, p], e[m].mean(), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(maps["all"]["mlp_out"][layer, p], e.mean(), atol=1e-5, rtol=1e-4)


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
            diffs.append(hand_effect(model, batch, iv).mean().item())        # the change of ℓ(A) - ℓ(B)
        assert abs(grads[site][loc].item() - (diffs[0] - diffs[1]) / (2 * eps)) < 1e-3 * max(1, abs(diffs[0]))


def test_attribution_is_activscalars_first_step(model):
    """Adam's first step moves each α by -lr·sign(∂L/∂α) = lr·sign(attribution): at α = 0 the KL and ℓ1
    terms have no gradient, and ∂L_E/∂α = -attribution while every prompt is inside the margin."""
    batch = ascale.prepare(model, prompts(N=6, T=5, swap=True), "flip")
    grads = knockout.attribution(model, batch, ["mlp_out"], toward="target")
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
    a = knockout.agreement(acts, effects)      # effects on ℓ(A) - ℓ(B): both active scalars push toward A
    assert a["large_active"] == pytest.approx(2 / 3) and a["sign_agreement"] == 1.0 and a["sign_toward"] == "A"
    assert (a["n_large"], a["n_active"], a["n_locations"]) == (3, 2, 4)
    assert knockout.agreement(acts, effects, sign_toward="B")["sign_agreement"] == 0.0
    none = knockout.agreement(acts, effects, sign_toward=None)      # mean ablation: no sign agreement at all
    assert "sign_agreement" not in none and "sign_toward" not in none
    assert {k: v for k, v in a.items() if k not in ("sign_agreement", "sign_toward")} == none


@pytest.mark.parametrize("mode", knockout.MODES)
def test_knockout_check_entry(model, tmp_path, mode):
    """The entry knockout_check writes: the orientation said (ℓ(A) - ℓ(B)), the agreement per side against that
    side's map, the sign agreement toward the answer most of the prompts target (by hand), none for mean ablation."""
    import json

    from figures import report
    batch = ascale.prepare(model, prompts(N=7, T=5, swap=True), "flip")
    iv = ascale.make("activscalar", model.config, ["mlp_out"], 5)
    with torch.no_grad():
        iv.alpha["mlp_out"].copy_(torch.linspace(-1, 1, 10).view(2, 5))
    (tmp_path / "metrics.json").write_text("{}")
    out = report.knockout_check(model, batch, ["tok"] * 5, {"activscalar": (iv, tmp_path)}, "test", mode=mode)
    name = "knockout" if mode == "zero" else "knockout_mean"
    entry = json.loads((tmp_path / "metrics.json").read_text())[name]
    assert entry == json.loads(json.dumps(out["activscalar"]))
    assert (tmp_path / f"{name.replace('_', '-')}.png").is_file()
    assert entry["effect"] == "l(A) - l(B)" and entry["n_prompts"] == 7
    side = metrics.prefers_a(batch)
    assert {k: e["n_prompts"] for k, e in entry["per_side"].items()} == {"a": int(side.sum()), "b": int((~side).sum())}
    maps = knockout.knockout_sides(model, batch, ["mlp_out"], progress=False, mode=mode)
    acts = iv.location_map()["mlp_out"].detach()
    for k, e in [("all", entry), *entry["per_side"].items()]:
        ranks = knockout.spearman(acts.abs().flatten(), maps[k]["mlp_out"].abs().flatten())
        assert e["spearman"] == pytest.approx(ranks)
        if mode == "mean":
            assert "sign_agreement" not in e and "sign_toward" not in e
            continue
        toward = {"all": knockout.majority_target(batch), "a": "B", "b": "A"}[k]    # flip: side a's targets are B
        assert e["sign_toward"] == toward
        e_sign = maps[k]["mlp_out"].sign()        # toward A: α amplifies where switching off lowers ℓ(A) - ℓ(B)
        pushes = acts.sign() == (-e_sign if toward == "A" else e_sign)   # (no effect at all: neither way)
        expected = pushes[acts.abs() >= ascale.ACTIVE].float().mean().item()
        assert e["sign_agreement"] == pytest.approx(expected)
