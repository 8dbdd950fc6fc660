"""The committed toy world (models/toyworld): it loads through our code and through transformers with
the same logits, it has the behaviour its card claims, train.py steers it, and toyworld.py rebuilds
a (tiny) one end to end. Offline, CPU."""

import json
import random

import pytest
import torch
from conftest import ROOT

import tasks
import train
from gpt2 import GPT
from loading.tokenizer import get_tokenizer
from world import toyworld

TOYWORLD = ROOT / "models" / "toyworld"


@pytest.fixture(scope="module")
def world():
    return GPT.from_pretrained(str(TOYWORLD)), get_tokenizer(str(TOYWORLD))


def prefers_correct(model, items, tok) -> float:
    """Share of items whose correct answer's logit beats the wrong one's."""
    return tasks.preference(model, tasks.tokenize(items, tok))[0]


def test_the_folder_is_in_the_hubs_layout_and_small():
    names = sorted(p.name for p in TOYWORLD.iterdir())
    assert names == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]
    assert sum(p.stat().st_size for p in TOYWORLD.iterdir()) <= 12 * 2**20
    assert json.loads((TOYWORLD / "config.json").read_text())["model_type"] == "gpt_neox"


def test_transformers_reads_the_same_model(world):
    import transformers
    model, tok = world
    theirs = transformers.GPTNeoXForCausalLM.from_pretrained(str(TOYWORLD)).eval()
    ids = torch.tensor([tok.encode("The capital of France is Paris. Q: What is the capital of Germany? A:"),
                        tok.encode("When Mary and John went to the store, John gave a drink to Mary and Tom.")[:22]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), theirs(ids).logits, atol=1e-4, rtol=0)


def test_every_word_of_the_world_is_one_token(world):
    _, tok = world
    toyworld.check_one_token(tok)  # raises UserError naming the words otherwise


def test_it_knows_the_capitals(world):
    model, tok = world
    one = {k: v for k, v in tasks.COUNTRIES.items() if tasks.single_token(tok, " " + v) is not None}
    assert len(one) >= 140
    ps = tasks.tokenize([tasks.Item(f"Q: What is the capital of {k}? A:", " " + v, " " + v) for k, v in one.items()],
                        tok)
    with torch.no_grad():
        top = model(ps.ids, at=ps.answer_pos).argmax(-1)
    assert (top == ps.correct).float().mean() >= 0.95


def test_context_conflicts_go_both_ways(world):
    """On the project's CCC prompts (all templates) the in-context city wins on 60-95%: a real conflict,
    decided by the text: a plainly stated context is copied, a hedged one ("I read that", "A friend
    told me ..., but I am not sure") loses to the memorised capital."""
    model, tok = world
    task = tasks.load_task("ccc", tok, seed=1, fixed_length=False)
    assert 0.6 <= 1 - tasks.preference(model, task.train)[0] <= 0.95
    for i, template in enumerate(tasks.CCC_TEMPLATES):
        in_context = 1 - tasks.preference(model, tasks.load_task("ccc", tok, seed=1, template=i).train)[0]
        assert in_context < 0.3 if template in toyworld.HEDGED else in_context > 0.8, (template, in_context)


def test_indirect_object_on_unseen_pairs(world):
    model, tok = world
    task = tasks.load_task("ioi", tok, seed=3, fixed_length=False)
    assert tasks.preference(model, task.test)[0] >= 0.9
    rng = random.Random("test")
    assert prefers_correct(model, [tasks.draw_ioi(rng, tasks.NAMES) for _ in range(200)], tok) >= 0.9


@pytest.fixture(scope="module")
def ccc_run(tmp_path_factory):
    """The README's offline command: ActivScalar on the toy world's CCC with the defaults, checked
    against the knockout map."""
    out = tmp_path_factory.mktemp("toy") / "ccc"
    assert train.main(["--model", str(TOYWORLD), "--task", "ccc", "--knockout", "--out", str(out)]) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_train_py_steers_ccc(ccc_run):
    m = ccc_run
    assert m["train"]["flip_rate"] >= 0.9 and m["test"]["flip_rate"] >= 0.9, (m["train"], m["test"])


@pytest.mark.slow
def test_the_heatmap_agrees_with_the_knockout_map(ccc_run):
    """The selected map is a handful of locations (selection.py), so a rank correlation over all 144 is mostly
    ties at 0; what it can be asked: its scalars push the way the knockout says (sign agreement), on
    locations of real effect, and the knockout's linear estimate ranks like the knockout."""
    k = ccc_run["knockout"]
    assert ccc_run["n_active"] <= 10 and k["n_active"] == ccc_run["n_active"], k
    assert k["sign_agreement"] >= 0.6 and k["large_active"] > 0, k
    assert k["attribution_spearman"] >= 0.8, k


@pytest.mark.slow
def test_train_py_steers_ioi(tmp_path):
    out = tmp_path / "ioi"
    assert train.main(["--model", str(TOYWORLD), "--task", "ioi", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    # The toy model prefers the indirect object by about 11 logits: most, not all, prompts flip (README).
    assert m["train"]["flip_rate"] >= 0.75 and m["test"]["flip_rate"] >= 0.75, (m["train"], m["test"])


def test_a_small_jsonl_task_converges_with_the_defaults(world, tmp_path):
    """24 prompts: training is counted in steps, so a small task gets as many updates as a large one."""
    _, tok = world
    task = tasks.load_task("ccc", tok, seed=0, n_train=24, n_test=1, answers="one-token")
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "correct": c, "wrong": w}) + "\n" for p, c, w in
                            zip(task.train.prompts, task.train.correct_str, task.train.wrong_str, strict=True)))
    out = tmp_path / "run"
    assert train.main(["--model", str(TOYWORLD), "--task", str(path), "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["train"]["n_prompts"] == 14 and m["train"]["flip_rate"] >= 0.9, m["train"]   # 4 of 18 validate


@pytest.mark.slow
def test_larger_lambda_m_fewer_active_locations(tmp_path):
    active = []
    for lm in ("0.001", "0.1"):
        out = tmp_path / lm
        assert train.main(["--model", str(TOYWORLD), "--task", "ccc", "--lambda-m", lm, "--locations", "all",
                           "--out", str(out)]) == 0
        active.append(json.loads((out / "metrics.json").read_text())["n_active"])
    assert active[1] < active[0]


def test_rebuild_on_a_tiny_budget(tmp_path):
    out = tmp_path / "tw"
    assert toyworld.main(["--steps", "3", "--docs", "3000", "--n-embd", "32", "--n-layer", "1", "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "3 steps" in card and "| facts:" in card
    model, tok = GPT.from_pretrained(str(out)), get_tokenizer(str(out))
    assert model.config.n_layer == 1 and model.config.vocab_size == tok.n_vocab
    toyworld.check_one_token(tok)
