"""metrics.py: the sides, the balanced flip, the offset control and a method's gain over it, grouped intervals;
and that every choice a run makes reads the training or validation prompts, never the test split."""

import random

import numpy as np
import pytest
import torch
from conftest import ROOT

import ascale
import metrics
import selection
import tasks
from gpt2 import GPT
from loading.tokenizer import get_tokenizer
from running import stats

TOY = str(ROOT / "models" / "toyworld")


def batch_by_hand(d_a, t_is_a, groups=None) -> ascale.Batch:
    """A prepared batch without a model: answer A is token 1, B token 2; d_a = ℓ(A) − ℓ(B) before, t_is_a: the
    target is A (else B)."""
    d_a, t_is_a = torch.tensor(d_a, dtype=torch.float), torch.tensor(t_is_a)
    N = len(d_a)
    answers = torch.stack([torch.where(t_is_a, 1, 2), torch.where(t_is_a, 2, 1)], 1)
    return ascale.Batch(torch.zeros(N, 3, dtype=torch.long), torch.full((N,), 2), answers,
                        torch.where(t_is_a, d_a, -d_a), role_a=torch.ones(N, dtype=torch.long),
                        groups=None if groups is None else torch.tensor(groups))


def test_sides_and_the_balanced_flip_by_hand():
    # prompts 0-3 prefer A before (d_a > 0), 4-5 prefer B; flipped: 3 of side a, 1 of side b
    b = batch_by_hand([1.0, 2.0, 0.5, 3.0, -1.0, -2.0], [False] * 4 + [True] * 2)
    flipped = torch.tensor([True, True, True, False, True, False])
    out = metrics.yardsticks(flipped, torch.zeros(6), b)
    assert out["sides"]["a"]["flip_rate"] == 0.75 and out["sides"]["a"]["n_prompts"] == 4
    assert out["sides"]["b"]["flip_rate"] == 0.5 and out["sides"]["b"]["n_prompts"] == 2
    assert out["balanced_flip"] == pytest.approx((0.75 + 0.5) / 2)
    assert out["per_prompt"]["side"] == [1, 1, 1, 1, 0, 0] and out["per_prompt"]["flipped"] == [1, 1, 1, 0, 1, 0]


def test_a_one_way_push_scores_at_most_half_on_the_balanced_flip():
    rng = np.random.default_rng(0)
    d_a = rng.normal(1.0, 2.0, 200).tolist()
    b = batch_by_hand(d_a, [x < 0 for x in d_a])          # flip: t is the answer each prompt ranks lower
    push = metrics.offset_flips(b, -100.0)                 # every prompt pushed toward B
    out = metrics.yardsticks(push, torch.zeros(200), b)
    assert out["sides"]["a"]["flip_rate"] == 1.0 and out["sides"]["b"]["flip_rate"] == 0.0
    assert out["balanced_flip"] == 0.5 and out["flip_rate_ci_groups"][0] > 0.5


def test_the_offset_control_is_the_best_constant_by_hand():
    """The offset chosen on `choose` flips as many of its prompts as any constant can (brute force over a fine
    grid), the smallest |b| among those; its test rates are those of that constant, with KL 0."""
    rng = np.random.default_rng(1)
    d_choose, d_test = rng.normal(0.5, 2, 60).tolist(), rng.normal(0.5, 2, 40).tolist()
    choose = batch_by_hand(d_choose, rng.random(60) < 0.3)
    test = batch_by_hand(d_test, rng.random(40) < 0.3)
    row = metrics.offset_control(choose, test)
    grid = np.linspace(-10, 10, 20001)
    d, t_a = np.array(d_choose), choose.answers[:, 0].numpy() == 1
    best = max((np.where(t_a, d + g > 0, d + g < 0).sum(), -abs(g)) for g in grid)
    assert int(metrics.offset_flips(choose, row["offset"]).sum()) == best[0]
    assert abs(row["offset"]) <= -best[1] + 2e-3           # the grid's step
    dt, tt = np.array(d_test), test.answers[:, 0].numpy() == 1
    assert row["flip_rate"] == np.where(tt, dt + row["offset"] > 0, dt + row["offset"] < 0).mean()
    assert row["kl"] == 0.0 and row["n_prompts"] == 40


def test_the_gain_over_the_offset_is_paired():
    b = batch_by_hand([1.0, -1.0] * 10, [False, True] * 10, groups=[i // 2 for i in range(20)])
    method = metrics.yardsticks(torch.ones(20, dtype=torch.bool), torch.full((20,), 0.1), b)
    method["flip_rate"] = 1.0
    control = metrics.offset_control(b, b)
    g = metrics.gain(method, control)
    assert g["flip"] == pytest.approx(1.0 - control["flip_rate"])
    assert g["flip_ci"][0] <= g["flip"] <= g["flip_ci"][1]
    assert g["mcnemar_p"] == stats.mcnemar_exact(method["per_prompt"]["flipped"],
                                                 control["per_prompt"]["flipped"])["p"]


def test_grouped_intervals_follow_the_groups():
    """Prompts of a group that agree inside are one draw: the grouped interval of the flip rate is that of one
    prompt per group, and wider than the prompt-level one."""
    per_group = [1, 0, 1, 1, 0, 1, 1, 1, 0, 1]
    b = batch_by_hand([1.0] * 50, [False] * 50, groups=[g for g in range(10) for _ in range(5)])
    flipped = torch.tensor([per_group[g] for g in range(10) for _ in range(5)], dtype=torch.bool)
    out = metrics.yardsticks(flipped, torch.zeros(50), b)
    assert out["n_groups"] == 10
    assert out["flip_rate_ci_groups"] == stats.group_bootstrap(np.array(per_group, dtype=float))
    lo, hi = out["flip_rate_ci_groups"]
    wilson = stats.wilson(int(flipped.sum()), 50)
    assert hi - lo > wilson[1] - wilson[0]


# ----------------------------------------------------------------------------- choices never read the test split


@pytest.fixture(scope="module")
def toy():
    model, tok = GPT.from_pretrained(TOY), get_tokenizer(TOY)
    task = tasks.load_task("ccc", tok, seed=0, fixed_length=True, n_train=60, val_frac=0.25)
    batches = {s: ascale.prepare(model, getattr(task, s)) for s in ("train", "val", "test")}
    return model, task, batches


def test_the_validation_split_holds_whole_groups_and_leaves_test_as_it_was(toy):
    _, task, _ = toy
    tok = get_tokenizer(TOY)
    plain = tasks.load_task("ccc", tok, seed=0, fixed_length=True, n_train=60)
    assert task.test.prompts == plain.test.prompts                     # the test split does not move
    country = {ps_name: {p.split(" is ")[0] for p in getattr(task, ps_name).prompts} for ps_name in
               ("train", "val", "test")}
    assert not country["val"] & country["train"] and not country["val"] & country["test"]


def test_a_run_with_other_test_prompts_makes_the_same_choices(toy):
    """Selection's K and path, DiffMean's strength and the offset: the same when the test prompts are others."""
    model, task, batches = toy
    other = dict(batches, test=ascale.prepare(model, task.test.subset(list(range(5))), "flip"))
    iv = ascale.make("activscalar", model.config, ["attn_out", "mlp_out"], task.train.n_slots)
    ascale.fit(model, iv, batches["train"], steps=20, progress=False)
    chosen = [selection.choose(model, iv, b, refit_steps=3, finish_steps=2, progress=False)[1] for b in
              (batches, other)]
    assert chosen[0]["K"] == chosen[1]["K"] and chosen[0]["path"] == chosen[1]["path"]
    assert chosen[0]["selection_split"] == "validation"
    assert metrics.offset_control(batches["val"], batches["test"])["offset"] == \
        metrics.offset_control(batches["val"], other["test"])["offset"]
    wrong = {s: ascale.prepare(model, getattr(task, s), "wrong") for s in ("train", "val")}
    strengths = []
    for _ in range(2):
        dm = ascale.make("diffmean", model.config, ["mlp_out"], task.train.n_slots)
        strengths.append(dm.compute(model, wrong["train"], choose=wrong["val"])["strength"])
    assert strengths[0] == strengths[1]
    random.seed(0)
