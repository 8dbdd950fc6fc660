"""
The compiled programs of models/tracr/ (built by world/tracrbuild.py) as tasks, with their ground truth.

    PROGRAMS            the committed programs, by name
    load_task(name)     a tasks.Task of token-id prompts: each input x with correct = the program's output on x,
                        wrong = its output on the contrast x' (x changed at the contrast position only); split
                        by input into train, val (for the choices a run makes) and test
    truth(name, model)  the ground truth as maps of 0/1, {site: (L, T) or (L, T, nh)}, in the layout of the maps
                        that ascale's interventions draw (location_map)

Reading these needs neither tracr nor jax: the files hold the model, tracr's reference logits, the task and the
ground truth (docs/results-groundtruth.md says how it is read from the program).
"""

import json
import random
from pathlib import Path

import torch

from loading.prompts import PromptSet
from running.errors import UserError

FOLDER = Path(__file__).resolve().parent.parent / "models" / "tracr"
PROGRAMS = ("prev_token", "prev_sum", "hist", "prev_plus_hist", "two_hops", "first_plus_prev")
SITES = ("head", "mlp_out")      # the locations of a compiled model: each head, and each MLP, at each position
TEST_FRAC = 0.25                 # the share of inputs (with all their pairs) held out for test
VAL_FRAC = 0.2                   # the share of the other inputs (with all their pairs) held out for validation


def folder(name: str) -> Path:
    if name not in PROGRAMS:
        raise UserError(f"unknown compiled program {name!r}; choose from {', '.join(PROGRAMS)}")
    return FOLDER / name


def read(name: str, file: str) -> dict:
    return json.loads((folder(name) / file).read_text())


def prompt_set(pairs: list[dict], config: dict) -> PromptSet:
    """Pairs (task.json's) -> a PromptSet of token ids; groups number the inputs (one input, one group)."""
    ids = torch.tensor([p["ids"] for p in pairs], dtype=torch.long)              # (N, T): BOS, then the tokens
    tokens, outputs = config["tokens"], config["outputs"]
    names = [["BOS" if t == ids[0, 0] else tokens[t] for t in row] for row in ids.tolist()]
    inputs = sorted({tuple(p["input"]) for p in pairs})
    return PromptSet(
        prompts=[" ".join(n[1:]) for n in names], ids=ids, answer_pos=torch.full((len(ids),), ids.shape[1] - 1),
        correct=torch.tensor([p["correct"] for p in pairs]), wrong=torch.tensor([p["wrong"] for p in pairs]),
        tokens=names, correct_str=[outputs[p["correct"]] for p in pairs],
        wrong_str=[outputs[p["wrong"]] for p in pairs],
        groups=torch.tensor([inputs.index(tuple(p["input"])) for p in pairs]))


def load_task(name: str, seed: int = 0):
    """The program's contrast task, split by input (every pair of an input on one side), seeded. One shuffle of the
    inputs: test is its first TEST_FRAC (so it does not depend on VAL_FRAC), val the next VAL_FRAC of the rest (the
    prompts the choices a run makes read: selection's K), train the others (what every fit and map reads)."""
    import tasks
    config, task = read(name, "config.json"), read(name, "task.json")
    inputs = sorted({tuple(p["input"]) for p in task["pairs"]})
    random.Random(seed).shuffle(inputs)
    n_test = max(1, round(TEST_FRAC * len(inputs)))
    n_val = max(1, round(VAL_FRAC * (len(inputs) - n_test)))
    side = {x: "test" if i < n_test else "val" if i < n_test + n_val else "train" for i, x in enumerate(inputs)}
    split = {k: [p for p in task["pairs"] if side[tuple(p["input"])] == k] for k in ("train", "val", "test")}
    return tasks.Task(name=name, train=prompt_set(split["train"], config), test=prompt_set(split["test"], config),
                      val=prompt_set(split["val"], config), fixed_length=True, templates=[],
                      notes=[f"{name}: {len(task['pairs'])} pairs of inputs that differ at position"
                             f" {task['contrast_position']} only, split by input: {len(inputs) - n_test - n_val}"
                             f" train, {n_val} validation (of the training inputs), {n_test} test inputs"])


def truth(name: str, cfg) -> dict[str, torch.Tensor]:
    """The ground truth as {site: (L, T) or (L, T, nh)} of 0/1, for a model of config cfg."""
    T = cfg.n_ctx
    maps = {"head": torch.zeros(cfg.n_layer, T, cfg.n_head), "mlp_out": torch.zeros(cfg.n_layer, T)}
    for site, *where in read(name, "task.json")["truth"]:
        maps[site][tuple(where)] = 1.0
    return maps
