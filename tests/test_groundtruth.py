"""groundtruth.py: the maps of a compiled program, the yardsticks, and the scores' table. Offline, CPU, fast."""

import torch

import ascale
import groundtruth
from gpt2 import GPT
from world import compiled


def test_the_contrast_batch_holds_each_input_and_its_contrast():
    model = GPT.from_pretrained(str(compiled.folder("prev_token")))
    task = compiled.load_task("prev_token", seed=0)
    both = groundtruth.contrast_batch(model, task)
    n = len(task.train)
    assert len(both) == 2 * n
    assert (both.diff_before[:n] < 0).all() and (both.diff_before[n:] > 0).all()   # x' prefers the target, x not
    assert (both.ids[:n, :4] == both.ids[n:, :4]).all() and (both.ids[:n, 4] != both.ids[n:, 4]).all()


def test_the_active_yardstick_by_hand():
    """prev_token: layer 0 has no attention (its head is all zeros), layer 0's MLP writes i - 1 everywhere, layer 1's
    head reads a token at every position; its MLP is empty."""
    model = GPT.from_pretrained(str(compiled.folder("prev_token")))
    task = compiled.load_task("prev_token", seed=0)
    act = groundtruth.active(model, ascale.prepare(model, task.train))
    assert act["head"][0].sum() == 0 and act["mlp_out"][1].sum() == 0
    assert act["mlp_out"][0].sum() >= 5 and act["head"][1, 5, 0] == 1


def test_every_map_is_scored_on_a_program(monkeypatch):
    records, choose = [], groundtruth.selection.choose

    def recorded(*args, **kwargs):                      # selection.choose, its record kept
        chosen, record = choose(*args, **kwargs)
        records.append(record)
        return chosen, record
    monkeypatch.setattr(groundtruth.selection, "choose", recorded)
    scores, first = groundtruth.run(["prev_token"], [0], steps=5)
    assert [r["selection_split"] for r in records] == ["validation"]      # K reads val, not the training prompts
    row = scores["prev_token"]
    assert row["truth_size"] == 1 and row["locations"] == 2 * 6 * 2
    for m in groundtruth.MAPS:
        assert 0 <= row[m]["auroc"][0] <= 1 and 0 <= row[m]["precision"][0] <= 1
        assert first["prev_token"][m]["head"].shape == (2, 6, 1)
    assert "| knockout-mean |" in groundtruth.table(scores)
    assert torch.equal(first["prev_token"]["truth"]["head"][1, 5], torch.ones(1))


def test_the_ioi_scoring_scores_a_circuit_of_heads():
    """groundtruth.py --ioi runs on GPT-2 with the network; here its scoring runs on the toy world's IOI, against a
    made-up circuit of two of its heads (only that it runs and scores: the circuit is GPT-2's)."""
    from loading.tokenizer import get_tokenizer
    model, tok = GPT.from_pretrained("toyworld"), get_tokenizer("toyworld")
    truth = groundtruth.circuit_map(model.config, {"made up": ("3.1", "2.0")})
    assert truth.sum() == 2 and truth[3, 1] == 1
    assert int(groundtruth.circuit_map(type("GPT2Small", (), {"n_layer": 12, "n_head": 12})).sum()) == 26
    scores = groundtruth.ioi_scores(model, tok, [0], steps=3, circuit={"made up": ("3.1", "2.0")}, n_train=24,
                                    n_test=8)
    assert all(0 <= scores[m]["auroc"][0] <= 1 for m in groundtruth.MAPS)
