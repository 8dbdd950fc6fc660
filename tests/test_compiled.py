"""The compiled programs of models/tracr/ (world/compiled.py): each loads through our forward pass with tracr's own
logits on every input of its domain (committed reference, no jax needed), its task is what the program says, the
ground truth of two programs is the one found by hand, and activation patching finds the same truth on every
program. Offline, CPU, fast."""

import itertools
import json
import random

import pytest
import torch

from gpt2 import GPT
from world import compiled


@pytest.mark.parametrize("name", compiled.PROGRAMS)
def test_our_forward_pass_gives_tracrs_logits_on_every_input(name):
    model = GPT.from_pretrained(str(compiled.folder(name)))
    ref = compiled.read(name, "reference.json")
    ids, want = torch.tensor(ref["ids"]), torch.tensor(ref["logits"])
    config = compiled.read(name, "config.json")
    assert len(ids) == len(config["vocabulary"]) ** config["length"]          # the whole domain
    assert ids.shape[1] == config["length"] + 1 == model.config.n_ctx          # tracr's BOS, then the tokens
    with torch.no_grad():
        got = model(ids)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-5


def test_the_files_are_small_and_name_their_program():
    for name in compiled.PROGRAMS:
        assert sum(p.stat().st_size for p in compiled.folder(name).iterdir()) < 1_000_000
        config = compiled.read(name, "config.json")
        assert config["program"] and config["vocabulary"] == [0, 1, 2] and config["causal"]


def test_prev_tokens_task_and_ground_truth_by_hand():
    """prev_token: out[i] = x[i-1], read at the last position (5, after BOS). Layer 0's MLP makes i - 1 at every
    position, layer 1's one head reads the token there. Changing x at position 4 changes the answer, and reaches
    it through layer 1's head at position 5 only; layer 0's MLP is active everywhere, but the contrast changes
    nothing it computes (it reads positions, not tokens), so it is off the path."""
    model = GPT.from_pretrained(str(compiled.folder("prev_token")))
    config, task = compiled.read("prev_token", "config.json"), compiled.read("prev_token", "task.json")
    assert sorted(map(tuple, sum(config["components"].values(), []))) == [("head", 1, 0), ("mlp_out", 0)]
    assert task["contrast_position"] == 4 and len(task["pairs"]) == 3 ** 5 * 2   # every input, both other tokens
    pair = task["pairs"][0]
    assert pair["input"][:3] == pair["contrast"][:3] and pair["input"][4] == pair["contrast"][4]
    assert config["outputs"][pair["correct"]] == str(pair["input"][3])         # the token before the last
    assert config["outputs"][pair["wrong"]] == str(pair["contrast"][3])
    assert task["truth"] == [["head", 1, 5, 0]]
    truth = compiled.truth("prev_token", model.config)
    assert truth["head"].sum() == 1 and truth["head"][1, 5, 0] == 1 and truth["mlp_out"].sum() == 0


def test_two_hops_ground_truth_by_hand_reaches_back_two_positions():
    """two_hops: out[i] = (f(x[i-2]) + g(x[i])) mod 3, f(t) = t + 1, g(t) = 2t (mod 3), f(x[i-2]) carried by two
    previous-token heads. Positions count tracr's BOS as 0, so the answer is read at 5 and the contrast token (RASP
    index 2) sits at 3. Its value reaches the answer through layer 0's MLP at 3 (f of it), layer 1's head at 4
    (hop1 = f of the token before), layer 2's head at 5 (hop2 = hop1 of the position before) and layer 2's MLP at
    5 (the sum). Everything else stays, or changes where nothing reads it (hop1 elsewhere reads other tokens; the
    sum at 3 changes, g(x[2]) joins it, but the answer is read at 5)."""
    config, task = compiled.read("two_hops", "config.json"), compiled.read("two_hops", "task.json")
    where = {label.rsplit("_", 1)[0]: locs for label, locs in config["components"].items()}
    assert where["f"] == where["g"] == where["prev_index"] == [["mlp_out", 0]]
    assert where["hop1"] == [["head", 1, 0]] and where["hop2"] == [["head", 2, 0]]
    assert where["hop2_plus_g"] == [["mlp_out", 2]]
    assert task["contrast_position"] == 3 and len(task["pairs"]) == 3 ** 5 * 2   # f is one-to-one: every pair
    for p in task["pairs"]:
        x, y = p["input"], p["contrast"]
        assert [i for i in range(5) if x[i] != y[i]] == [2]
        assert config["outputs"][p["correct"]] == str((x[2] + 1 + 2 * x[4]) % 3)
        assert config["outputs"][p["wrong"]] == str((y[2] + 1 + 2 * y[4]) % 3)
    assert sorted(map(tuple, task["truth"])) == [("head", 1, 4, 0), ("head", 2, 5, 0), ("mlp_out", 0, 3),
                                                 ("mlp_out", 2, 5)]


@pytest.mark.parametrize("name", compiled.PROGRAMS)
def test_patching_one_location_moves_the_answer_exactly_at_the_truth(name):
    """A check of the ground truth that does not read the program: put one location's output on the contrast x'
    into the run on x (activation patching). On these programs no two paths carry the same value, so the answer's
    logits move (on at least half of the pairs) at the true locations and nowhere else."""
    model = GPT.from_pretrained(str(compiled.folder(name)))
    task = compiled.read(name, "task.json")
    x = torch.tensor([p["ids"] for p in task["pairs"]])
    y = torch.tensor([[p["ids"][0]] + p["contrast"] for p in task["pairs"]])
    on_y = {}
    with torch.no_grad():
        model(y, intervene=lambda site, layer, h: on_y.setdefault((site, layer), h))
        base = model(x)[:, -1]
    moved = []
    for (site, layer), hy in on_y.items():
        if site not in compiled.SITES:
            continue
        for where in itertools.product(range(hy.shape[1]), *([range(hy.shape[2])] if site == "head" else [])):
            def patch(s, lay, h, site=site, layer=layer, where=where, hy=hy):
                if (s, lay) != (site, layer):
                    return h
                h = h.clone()
                h[(slice(None), *where)] = hy[(slice(None), *where)]
                return h
            with torch.no_grad():
                out = model(x, intervene=patch)[:, -1]
            if ((out - base).abs().amax(-1) > 1e-3).float().mean() >= 0.5:
                moved.append([site, layer, *where])
    assert sorted(moved) == sorted(task["truth"])


def test_the_task_splits_by_input_and_steers_to_the_contrasts_answer():
    task = compiled.load_task("prev_sum", seed=0)
    model = GPT.from_pretrained(str(compiled.folder("prev_sum")))
    train_inputs = {tuple(r) for r in task.train.ids.tolist()}
    assert not train_inputs & {tuple(r) for r in task.test.ids.tolist()}
    with torch.no_grad():
        logits = model(task.train.ids)[:, -1]
    assert (logits.argmax(-1) == task.train.correct).all()                     # the model computes the program
    assert (task.train.correct != task.train.wrong).all()
    assert json.loads((compiled.folder("prev_sum") / "task.json").read_text())["truth"] == \
        [["head", 1, 5, 0], ["mlp_out", 1, 5]]


@pytest.mark.parametrize("name", ["prev_token", "prev_plus_hist"])
def test_train_val_and_test_are_disjoint_by_input_and_test_keeps_the_one_rule(name):
    """Every pair of an input on one side; test is the first TEST_FRAC of the seeded shuffle of the inputs, whatever
    VAL_FRAC is; val is VAL_FRAC of the other inputs."""
    inputs = sorted({tuple(p["input"]) for p in compiled.read(name, "task.json")["pairs"]})
    for seed in (0, 1):
        task = compiled.load_task(name, seed)
        side = {k: {tuple(r[1:]) for r in getattr(task, k).ids.tolist()} for k in ("train", "val", "test")}
        assert not side["train"] & side["val"] and not side["train"] & side["test"] and not side["val"] & side["test"]
        assert side["train"] | side["val"] | side["test"] == set(inputs)
        shuffled = list(inputs)
        random.Random(seed).shuffle(shuffled)
        assert side["test"] == set(shuffled[:round(compiled.TEST_FRAC * len(inputs))])
        assert len(side["val"]) == round(compiled.VAL_FRAC * (len(inputs) - len(side["test"])))


def test_an_unknown_program_is_one_line():
    with pytest.raises(compiled.UserError, match="unknown compiled program"):
        compiled.load_task("sort")
