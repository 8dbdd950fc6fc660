"""selection.py on a tiny random GPT-2: pruning to exactly K units, the refit, the path, --runs; intervals."""

import copy
from pathlib import Path

import pytest
import torch
from conftest import save_checkpoint, tiny_hf_model
from test_ascale import FAST, prompts, trained

import ascale
import metrics
import selection
from gpt2 import GPT
from running import stats
from running.errors import UserError

OBJECTIVE = dict(lambda_f=1.0, margin=1.0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = save_checkpoint(tiny_hf_model("gpt2"), tmp_path_factory.mktemp("ckpt") / "tiny-gpt2")
    return GPT.from_pretrained(str(folder))


def nonzero_units(iv) -> int:
    return sum(int((e > 0).sum()) for e in iv.effect().values())


@pytest.mark.parametrize("method", ascale.METHODS)
def test_refit_keeps_exactly_k_units_and_the_others_stay_zero(model, method):
    iv, batch, _ = trained(model, method, sites=("attn_out", "head"))
    assert nonzero_units(iv) > 3
    keep = selection.top_k(iv.effect(), 3)
    assert selection.count(keep) == 3
    out, curve = selection.refit(model, iv, batch, keep, steps=10, lr=0.05, progress=False, **OBJECTIVE)
    pruned = copy.deepcopy(iv)
    pruned.restrict(keep)
    assert curve["steps"] == 10                                               # it trained from the pruned values
    assert any(not torch.equal(a, b) for a, b in zip(out.parameters(), pruned.parameters(), strict=True))
    assert nonzero_units(out) == 3                                            # exactly the kept ones are non-zero
    for site, e in out.effect().items():
        assert bool((e[~keep[site]] == 0).all())
    for name, p in out.named_parameters():                                    # the parameters themselves
        k = keep[name.split(".")[1]]
        assert bool((p.detach()[~k] == 0).all())
    assert nonzero_units(iv) > 3                                              # iv itself is untouched


def test_top_k_takes_the_largest_over_all_sites():
    effect = {"attn_out": torch.tensor([[0.1, 0.9], [0.0, 0.3]]), "mlp_out": torch.tensor([[0.5, 0.2], [0.8, 0.0]])}
    keep = selection.top_k(effect, 3)
    assert keep["attn_out"].tolist() == [[False, True], [False, False]]
    assert keep["mlp_out"].tolist() == [[True, False], [True, False]]


def test_choose_finds_k_on_the_path_and_records_it(model):
    ps, test = prompts(N=8, swap=True), prompts(N=6, seed=2, swap=True)
    batches = {"train": ascale.prepare(model, ps), "test": ascale.prepare(model, test)}
    iv = ascale.make("activscalar", model.config, ("attn_out", "mlp_out"), ps.ids.shape[1])
    ascale.fit(model, iv, batches["train"], **{**FAST, "margin": 1.0})
    unpruned = metrics.evaluate(model, iv, batches["train"])["flip_rate"]
    out, rec = selection.choose(model, iv, batches, refit_steps=3, progress=False, **OBJECTIVE)
    K = rec["K"]
    assert K in selection.PATH or K == rec["unpruned"]["units"]
    assert nonzero_units(out) <= K
    assert rec["selection_prompts"] == 8 and rec["unpruned"]["select_flip_rate"] == unpruned  # 8 prompts: all
    assert [r["K"] for r in rec["path"]] == sorted({r["K"] for r in rec["path"]})              # each K refit once
    chosen = [r for r in rec["path"] if r["K"] == K]                          # the result: its refit, trained on
    assert len(chosen) == 1 and rec["finish_steps"] == selection.FINISH_STEPS
    reference = rec["unpruned"]["reference_flip_rate"]
    assert reference >= unpruned and chosen[0]["flip_rate_select"] >= reference - rec["tolerance"]
    ref = metrics.evaluate(model, iv, batches["train"])["per_prompt"]["flipped"]   # the one-standard-error rule
    if reference == unpruned:                                  # (the ℓ1 fit is the reference: its flips, by hand)
        assert rec["tolerance"] == pytest.approx(max(stats.standard_error(ref, batches["train"].groups), 1 / 8))
    assert rec["tolerance_rule"].startswith("one standard error")
    good = [r["K"] for r in rec["path"] if r["flip_rate_select"] >= reference - rec["tolerance"]]
    assert all(k >= K for k in good)                          # no smaller tried K was good enough
    assert all(set(r) == {"K", "steps", "flip_rate_select", "kl_select"} for r in rec["path"])  # no test number
    fixed, rec5 = selection.choose(model, iv, batches, locations=5, refit_steps=4, progress=False, **OBJECTIVE)
    assert rec5["K"] == 5 and nonzero_units(fixed) <= 5 and [r["K"] for r in rec5["path"]] == [5]


def test_the_tolerance_is_a_standard_error_and_at_least_one_prompt():
    """A reference that flips every one of 61 prompts has a standard error of 0: the rule then allows one prompt
    (1/61), so that K = 50 at 60 of 61 passes; elsewhere it is the standard error over the groups."""
    assert selection.one_standard_error([1.0] * 61) == pytest.approx(1 / 61)
    assert 60 / 61 >= 1.0 - selection.one_standard_error([1.0] * 61)
    flips, groups = [1, 0, 1, 1, 0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert selection.one_standard_error(flips, groups) == pytest.approx(stats.standard_error(flips, groups))
    assert stats.standard_error(flips, groups) > 1 / 10


def test_runs_give_frequencies_and_keep_those_above_the_threshold(model):
    ps, test = prompts(N=8, swap=True), prompts(N=6, seed=2, swap=True)
    batches = {"train": ascale.prepare(model, ps), "test": ascale.prepare(model, test)}

    def make():
        return ascale.make("activscalar", model.config, ("attn_out", "mlp_out"), ps.ids.shape[1])

    iv, rec, freq = selection.stable(model, make, batches, runs=4, steps=20, lr=0.1, batch_size=4,
                                     schedule="cosine", locations=6, refit_steps=5, progress=False,
                                     lambda_m=1e-3, **OBJECTIVE)
    assert rec["runs"] == 4 and rec["K"] == 6 and len(rec["fits"]) == 4
    for site, f in freq.items():
        assert bool(((f >= 0) & (f <= 1)).all())
        assert torch.allclose(f * 4, (f * 4).round())         # shares of 4 fits
        assert (iv.effect()[site] > 0).tolist() == (f >= rec["threshold"]).tolist()  # the final set, exactly
    assert sum(float(f.sum()) for f in freq.values()) == pytest.approx(4 * 6 / 4)   # each fit kept 6
    assert rec["selected"] == sum(int((f >= 0.5).sum()) for f in freq.values())
    assert 0 <= rec["jaccard_halves"] <= 1
    assert rec["overlap_pairs"] >= rec["jaccard_pairs"] and 0 < rec["jaccard_pairs_chance"] < 1   # agreement's keys
    again, rec2, _ = selection.stable(model, make, batches, runs=4, steps=20, lr=0.1, batch_size=4,
                                      schedule="cosine", locations=6, refit_steps=5, progress=False,
                                      lambda_m=1e-3, **OBJECTIVE)
    assert rec2["frequencies"] == rec["frequencies"]          # the same seed, the same fits
    for a, b in zip(iv.parameters(), again.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_selection_prompts_spread_over_the_training_set(model):
    ps = prompts(N=25, swap=True)
    batch = ascale.prepare(model, ps)
    assert torch.equal(selection.selection_prompts(batch, 10).ids, batch.ids[::3])       # 9 of 25: every third
    assert torch.equal(selection.selection_prompts(batch, 25).ids, batch.ids)            # no more than n: all
    assert len(selection.selection_prompts(batch, 5)) == 5


def test_jaccard():
    a = {"s": torch.tensor([True, True, False, False])}
    b = {"s": torch.tensor([True, False, True, False])}
    assert selection.jaccard(a, b) == pytest.approx(1 / 3)
    assert selection.jaccard(a, a) == 1.0


def test_evaluate_brackets_its_rates(model):
    iv, batch, _ = trained(model)
    ev = metrics.evaluate(model, iv, batch)
    assert ev["flip_rate_ci"][0] <= ev["flip_rate"] <= ev["flip_rate_ci"][1]
    assert ev["kl_ci"][0] <= ev["kl"] <= ev["kl_ci"][1]


def test_agreement_holds_both_halves_to_one_rule():
    """Five fits: halves are fits 0-1 and 2-3 (the fifth sits out), each half's majority set by the same rule; the
    pairs' mean is over all ten pairs of fits."""
    def sel(*units):
        m = torch.zeros(6, dtype=torch.bool)
        m[list(units)] = True
        return {"s": m}
    fits = [sel(0, 1), sel(0, 1), sel(0, 2), sel(0, 2), sel(3, 4)]
    agree = selection.agreement(fits, threshold=0.5)
    assert agree["jaccard_halves"] == pytest.approx(1 / 3)          # {0, 1} against {0, 2}: 1 of 3 units
    assert agree["overlap_halves"] == pytest.approx(1 / 2)          # 1 of the smaller set's 2
    j = selection.jaccard
    expected = sum(j(a, b) for i, a in enumerate(fits) for b in fits[i + 1:]) / 10
    assert agree["jaccard_pairs"] == pytest.approx(expected)
    # every pair is two sets of 2 out of 6 units: overlap at chance 2/6; Jaccard's, by hand from the
    # hypergeometric P(k) = C(2, k)·C(4, 2 - k) / C(6, 2): (8/15)·(1/3) + (1/15)·1 = 11/45
    assert agree["units"] == 6 and agree["overlap_pairs_chance"] == pytest.approx(1 / 3)
    assert agree["jaccard_pairs_chance"] == pytest.approx(11 / 45) == agree["jaccard_halves_chance"]
    one = selection.agreement(fits[:1])
    assert one["jaccard_halves"] is None and one["jaccard_pairs"] is None and one["overlap_pairs_chance"] is None


def test_overlap_and_chance_by_hand():
    """A = {0, 1}, B = {0, 2, 3}: Jaccard 1/4, overlap share 1/2 (of A's 2); a subset has overlap 1. Chance for
    sets of 2 and 2 out of 4: B meets A in 0, 1 or 2 units with probabilities 1/6, 4/6, 1/6, so Jaccard 0·1/6 +
    (1/3)·4/6 + 1·1/6 = 7/18 and overlap share (4/6 + 2/6) / 2 = 1/2 = max(2, 2) / 4; a Monte-Carlo check of a
    larger case."""
    def sel(*units, n=6):
        m = torch.zeros(n, dtype=torch.bool)
        m[list(units)] = True
        return {"s": m}
    a, b = sel(0, 1), sel(0, 2, 3)
    assert selection.jaccard(a, b) == pytest.approx(1 / 4) and selection.overlap(a, b) == pytest.approx(1 / 2)
    assert selection.overlap(a, sel(0, 1, 4)) == 1.0
    assert selection.overlap(sel(), sel()) == 1.0 and selection.overlap(sel(), a) == 0.0
    assert selection.chance(2, 2, 4) == pytest.approx({"overlap": 0.5, "jaccard": 7 / 18})
    assert selection.chance(4, 4, 4) == pytest.approx({"overlap": 1.0, "jaccard": 1.0})
    assert selection.chance(0, 3, 10) == {"overlap": 0.0, "jaccard": 0.0}
    g = torch.Generator().manual_seed(0)
    draws = [(set(torch.randperm(30, generator=g)[:5].tolist()), set(torch.randperm(30, generator=g)[:8].tolist()))
             for _ in range(20000)]
    expected = selection.chance(5, 8, 30)
    assert sum(len(x & y) / len(x | y) for x, y in draws) / len(draws) == pytest.approx(expected["jaccard"], abs=0.005)
    assert sum(len(x & y) / 5 for x, y in draws) / len(draws) == pytest.approx(expected["overlap"], abs=0.01)
    with pytest.raises(ValueError):
        selection.chance(5, 3, 4)


def test_at_positions_keeps_every_layer_there_and_nothing_else(model):
    iv = ascale.make("activscalar", model.config, ("attn_out", "head"), 6)
    keep = selection.at_positions(iv, [0, -1])
    assert keep["attn_out"][:, [0, 5]].all() and not keep["attn_out"][:, 1:5].any()
    assert keep["head"].shape == iv.effect()["head"].shape and keep["head"][:, 5].all() and not keep["head"][:, 2].any()
    with pytest.raises(UserError, match="6 positions"):
        selection.at_positions(iv, [6])


def test_train_at_some_positions_leaves_the_others_at_zero(tmp_path, capsys):
    import train
    toy = str(Path(__file__).parents[1] / "models" / "toyworld")
    out = tmp_path / "at"
    assert train.main(["--model", toy, "--task", "ccc", "--at=-2,-1", "--steps", "5", "--locations", "all",
                       "--out", str(out), "--device", "cpu"]) == 0
    iv, _ = ascale.load(out / "intervention.safetensors", GPT.from_pretrained(toy))
    for a in iv.alpha.values():
        assert a[:, -2:].abs().sum() > 0 and (a[:, :-2] == 0).all()
    for argv, line in ((["--at=-40"], "positions (slots)"), (["--at", "1", "--method", "dynscalar"], "--at keeps"),
                       (["--at", "x"], "whole numbers")):
        try:
            code = train.main(["--model", toy, "--task", "ccc", "--out", str(tmp_path / "b"), *argv])
        except SystemExit as e:
            code = e.code
        assert code == 2 and line in capsys.readouterr().err


@pytest.mark.parametrize("method", ascale.METHODS)
@pytest.mark.parametrize("positions", [6, None])
def test_at_layers_keeps_every_unit_of_those_layers_and_nothing_else(model, method, positions):
    if positions is None and not ascale.METHODS[method].shareable and ascale.METHODS[method].tied_to_positions:
        pytest.skip("not position-free")
    iv = ascale.make(method, model.config, ("attn_out", "head"), positions)
    keep = selection.at_layers(iv, [1])
    for s, e in iv.effect().items():
        assert keep[s].shape == e.shape and keep[s][1].all() and not keep[s][0].any()
    assert selection.parse_layers("1-") == [(1, None)] and selection.parse_layers("3,7-8") == [(3, 3), (7, 8)]
    assert selection.check_layers([(1, None)], 3) == [1, 2]
    for spec in ("x", "3-1", "", "1,", "-1"):
        with pytest.raises(ValueError):
            selection.parse_layers(spec)
    with pytest.raises(UserError, match="has 2 layers"):
        selection.check_layers([(2, None)], 2)
    iv.effect = lambda: {"attn_out": torch.zeros(())}       # a method whose units have no layer axis first
    with pytest.raises(UserError, match="no layer axis"):
        selection.at_layers(iv, [1])


def test_layers_with_at_keeps_the_units_at_both(model):
    import argparse

    import train
    iv = train.restricted(ascale.make("activscalar", model.config, ("attn_out", "head"), 6),
                          argparse.Namespace(at=[-1], layers=[1]))
    assert iv.keep["attn_out"].nonzero().tolist() == [[1, 5]]
    assert iv.keep["head"][1, 5].all() and int(iv.keep["head"].sum()) == iv.n_head


def test_pruning_never_brings_back_a_dropped_layer(model):
    iv, batch, _ = trained(model, sites=("attn_out",))
    assert iv.alpha["attn_out"][0].abs().sum() > 0
    iv.restrict(selection.at_layers(iv, [1]))
    everything = {"attn_out": torch.ones_like(iv.keep["attn_out"]).cpu()}
    assert not selection.top_k_kept(iv, 10 ** 6)["attn_out"][0].any()
    out, _ = selection.refit(model, iv, batch, everything, steps=5, lr=0.05, progress=False, **OBJECTIVE)
    assert (out.alpha["attn_out"][0] == 0).all() and out.alpha["attn_out"][1].abs().sum() > 0


SHARED = ["--positions", "shared", "--method", "steervec", "--sites", "resid"]


@pytest.mark.parametrize("argv", [["--runs", "2"], SHARED])
def test_train_some_layers_leaves_the_others_at_zero(tmp_path, capsys, argv):
    import json

    import train
    toy = str(Path(__file__).parents[1] / "models" / "toyworld")
    out = tmp_path / "layers"                         # the fit and the selection (--locations auto), or --runs
    assert train.main(["--model", toy, "--task", "ccc", "--layers", "1", "--steps", "5", "--out", str(out),
                       "--device", "cpu", *argv]) == 0
    iv, _ = ascale.load(out / "intervention.safetensors", GPT.from_pretrained(toy))
    params = [p for p in iv.parameters()]
    assert all((p[[0, 2, 3]] == 0).all() for p in params) and any(p[1].abs().sum() > 0 for p in params)
    assert json.loads((out / "metrics.json").read_text())["config"]["layers"] == [1]
    for bad, line in ((["--layers", "4"], "has 4 layers"), (["--layers", "2-1"], "argument --layers"),
                      (["--layers", "1", "--method", "diffmean"], "computed baseline")):
        try:
            code = train.main(["--model", toy, "--task", "ccc", "--out", str(tmp_path / "b"), *bad])
        except SystemExit as e:
            code = e.code
        assert code == 2 and line in capsys.readouterr().err
