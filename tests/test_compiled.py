"""The compiled programs of models/tracr/ (world/compiled.py): each loads through our forward pass with tracr's own
logits on every input of its domain (committed reference, no jax needed), its task is what the program says, and
the ground truth of the smallest program is the one found by hand. Offline, CPU, fast."""

import json

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


def test_an_unknown_program_is_one_line():
    with pytest.raises(compiled.UserError, match="unknown compiled program"):
        compiled.load_task("sort")
