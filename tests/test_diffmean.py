"""diffmean.py, the baseline: the difference of class means at the answer position, one strength, no training."""

import pytest
import torch
from conftest import save_checkpoint, tiny_hf_model
from test_ascale import prompts
from test_slots import slot_prompts

import ascale
import diffmean
import metrics
from gpt2 import GPT, UserError

SITES = ("attn_out", "head")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return GPT.from_pretrained(str(save_checkpoint(tiny_hf_model("gpt2"), tmp_path_factory.mktemp("ckpt") / "gpt2")))


def by_hand(model, batch, site, layer):
    """μ₊ − μ₋ at (site, layer): the mean of h at each prompt's answer position over the prompts whose
    ℓ(t) − ℓ(o) is > 0 before, minus that over the others, from one plain forward pass."""
    acts = {}
    model(batch.ids, intervene=lambda s, lyr, h: acts.setdefault((s, lyr), h))
    h = acts[(site, layer)][torch.arange(len(batch)), batch.answer_pos]      # (N, D) or (N, nh, hs)
    plus = batch.diff_before > 0
    return h[plus].mean(0) - h[~plus].mean(0)


@pytest.mark.parametrize("ps", [prompts(N=10, swap=True), slot_prompts(N=10)], ids=["fixed", "slots"])
def test_the_vector_is_the_difference_of_class_means_times_the_strength(model, ps):
    batch = ascale.prepare(model, ps, "correct")          # the model prefers c on some prompts, w on others
    assert 0 < int((batch.diff_before > 0).sum()) < len(batch)
    iv = ascale.make("diffmean", model.config, SITES, ps.n_slots)
    chosen = diffmean.fit(model, iv, batch, batch_size=3)   # chunks: the means add up over them
    s = chosen["strength"]
    assert s in diffmean.STRENGTHS and [r["strength"] for r in chosen["path"]] == list(diffmean.STRENGTHS)
    assert min(chosen["path"], key=lambda r: r["loss"])["strength"] == s
    for site in SITES:
        for layer in range(model.config.n_layer):
            torch.testing.assert_close(iv.v[site][layer], s * by_hand(model, batch, site, layer), atol=1e-5, rtol=1e-4)
    assert not any(p.requires_grad for p in iv.parameters())
    # the chosen strength's loss is the objective without l1, L_E + λF·L_F, at that strength
    loss, flip = diffmean.loss(model, iv, batch, 1.0, ascale.MARGIN)
    terms = ascale.objective(model, iv, batch, lambda_m=0.0)[1]
    assert loss == pytest.approx((terms["L_E"] + terms["L_F"]).item(), rel=1e-4, abs=1e-5)
    assert flip == metrics.evaluate(model, iv, batch)["flip_rate"]


def test_it_acts_at_the_answer_position_only(model):
    ps = slot_prompts(N=6)
    iv = ascale.make("diffmean", model.config, ["mlp_out"], ps.n_slots)
    assert torch.equal(model(ps.ids, intervene=ascale.at_slots(iv, ps.slots)), model(ps.ids))   # v = 0: nothing
    with torch.no_grad():
        iv.v["mlp_out"].normal_()
    bound, seen = ascale.at_slots(iv, ps.slots), {}

    def record(site, layer, h):
        out = bound(site, layer, h)
        if (site, layer) == ("mlp_out", 0):
            seen["moved"] = (out - h).norm(dim=-1) > 0                        # (N, T)
        return out
    model(ps.ids, intervene=record)
    t = torch.arange(ps.ids.shape[1])
    assert torch.equal(seen["moved"] & (t <= ps.answer_pos[:, None]), t == ps.answer_pos[:, None])  # the prompt
    m = iv.location_map()["mlp_out"]
    assert m.shape == (2, ps.n_slots) and (m[:, :-1] == 0).all() and (m[:, -1] > 0).all()


def test_flip_has_no_second_class(model):
    batch = ascale.prepare(model, prompts(swap=True), "flip")
    iv = ascale.make("diffmean", model.config, ["mlp_out"], 8)
    with pytest.raises(UserError, match="one-sided --target"):
        diffmean.fit(model, iv, batch)


def test_save_and_load(model, tmp_path):
    batch = ascale.prepare(model, prompts(N=10, swap=True), "correct")
    iv = ascale.make("diffmean", model.config, SITES, 8)
    diffmean.fit(model, iv, batch)
    ascale.save(tmp_path / "iv.safetensors", iv, model=model, target="correct")
    loaded, meta = ascale.load(tmp_path / "iv.safetensors", GPT.from_pretrained(model.name_or_path))
    assert type(loaded) is diffmean.DiffMean and meta["method"] == "diffmean"
    assert metrics.evaluate(model, loaded, batch) == metrics.evaluate(model, iv, batch)
