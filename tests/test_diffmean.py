"""diffmean.py, the baseline: the mean of h_t − h_o at an appended answer (CAA), or the difference of class means,
added at the answer position with one strength, no training."""

from dataclasses import replace

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


def caa_by_hand(model, batch, site, layer):
    """mean(h_t − h_o) at (site, layer): each prompt alone, unpadded, run with t and with o appended, its activation
    read at the appended token (the last position)."""
    diffs = []
    for i in range(len(batch)):
        prompt, h = batch.ids[i, :int(batch.answer_pos[i]) + 1], []
        for answer in batch.answers[i]:
            acts = {}
            ids = torch.cat([prompt, answer[None]])[None]
            model(ids, intervene=lambda s, lyr, x, a=acts: a.setdefault((s, lyr), x))
            h.append(acts[(site, layer)][0, -1])
        diffs.append(h[0] - h[1])
    return torch.stack(diffs).mean(0)


@pytest.mark.parametrize("ps", [prompts(N=3, swap=True), slot_prompts(N=3)], ids=["fixed", "slots"])
@pytest.mark.parametrize("target", ["wrong", "flip"])
def test_the_vector_is_the_mean_difference_at_the_appended_answer(model, ps, target):
    """CAA's contrast, by hand on three prompts (slots: of three lengths, right-padded): under flip t is each
    prompt's lower-ranked answer, and the vector is the mean push toward them."""
    batch = ascale.prepare(model, ps, target)
    iv = ascale.make("diffmean", model.config, SITES, ps.n_slots)
    chosen = diffmean.fit(model, iv, batch, batch_size=2)          # chunks: the sums add up over them
    assert chosen["contrast"] == "caa" and chosen["n_prompts"] == 3 and chosen["strength"] in diffmean.STRENGTHS
    for site in SITES:
        for layer in range(model.config.n_layer):
            torch.testing.assert_close(iv.v[site][layer], chosen["strength"] * caa_by_hand(model, batch, site, layer),
                                       atol=1e-5, rtol=1e-4)


def test_caa_needs_no_second_class(model):
    """The model ranks X above Y on every prompt: steered to Y, no prompt is in the first class, yet CAA runs."""
    batch = ascale.prepare(model, prompts(N=6), "wrong")
    assert (batch.diff_before < 0).all()
    iv = ascale.make("diffmean", model.config, ["mlp_out"], 8)
    assert diffmean.fit(model, iv, batch)["strength"] > 0 and iv.v["mlp_out"].abs().sum() > 0
    with pytest.raises(UserError, match="here 0 and 6"):
        diffmean.fit(model, iv, batch, contrast="classes")


def test_a_prompt_with_no_room_for_the_answer_is_refused(model):
    batch = ascale.prepare(model, prompts(N=2), "wrong")
    diffmean.DiffMean.check(model, {"train": batch}, "wrong")          # 8 tokens: room for one more
    too_long = replace(batch, answer_pos=torch.full((2,), model.config.n_ctx - 1))
    with pytest.raises(UserError, match="appends an answer"):
        diffmean.DiffMean.check(model, {"train": too_long}, "wrong")


def by_hand(model, batch, site, layer):
    """μ₊ − μ₋ at (site, layer): the mean of h at each prompt's answer position over the prompts whose
    ℓ(t) − ℓ(o) is > 0 before, minus that over the others, from one plain forward pass."""
    acts = {}
    model(batch.ids, intervene=lambda s, lyr, h: acts.setdefault((s, lyr), h))
    h = acts[(site, layer)][torch.arange(len(batch)), batch.answer_pos]      # (N, D) or (N, nh, hs)
    plus = batch.diff_before > 0
    return h[plus].mean(0) - h[~plus].mean(0)


@pytest.mark.parametrize("ps", [prompts(N=10, swap=True), slot_prompts(N=10)], ids=["fixed", "slots"])
def test_the_class_contrast_is_the_difference_of_class_means_times_the_strength(model, ps):
    batch = ascale.prepare(model, ps, "correct")          # the model prefers c on some prompts, w on others
    assert 0 < int((batch.diff_before > 0).sum()) < len(batch)
    iv = ascale.make("diffmean", model.config, SITES, ps.n_slots)
    chosen = diffmean.fit(model, iv, batch, batch_size=3, contrast="classes")   # chunks: the means add up over them
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


def test_flip_has_no_second_class_for_the_class_contrast(model):
    batch = ascale.prepare(model, prompts(swap=True), "flip")
    iv = ascale.make("diffmean", model.config, ["mlp_out"], 8)
    with pytest.raises(UserError, match="class contrast needs"):
        diffmean.fit(model, iv, batch, contrast="classes")


def test_save_and_load(model, tmp_path):
    batch = ascale.prepare(model, prompts(N=10, swap=True), "correct")
    iv = ascale.make("diffmean", model.config, SITES, 8)
    diffmean.fit(model, iv, batch)
    ascale.save(tmp_path / "iv.safetensors", iv, model=model, target="correct")
    loaded, meta = ascale.load(tmp_path / "iv.safetensors", GPT.from_pretrained(model.name_or_path))
    assert type(loaded) is diffmean.DiffMean and meta["method"] == "diffmean"
    assert metrics.evaluate(model, loaded, batch) == metrics.evaluate(model, iv, batch)
