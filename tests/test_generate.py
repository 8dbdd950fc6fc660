"""generate.py end to end on the toy world: a position-free map trained here, swept over strengths and beside an
instruction, judged by VADER, both models' perplexity and distinct-2, the strength chosen on validation prompts and
the test prompts read once; and the one-line refusals."""

import json
from pathlib import Path

import pytest
from conftest import missing

import generate
import train
from loading import sentiment_data
from running.errors import UserError

TOY = str(Path(__file__).resolve().parents[1] / "models" / "toyworld")
PROMPTS = ["The capital of Nepal is", "Mary and John went to the", "Q: What is the capital of Chad? A:",
           "The weather in Lima is", "John gave a ball to", "Alice lives in", "Then Mary and John", "Bob said that"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    try:
        sentiment_data.archive()          # VADER's analyser comes from it (data/, fetched once)
    except UserError as e:
        missing(str(e))
    tmp = tmp_path_factory.mktemp("gen")
    for positions in ("shared", "tied"):
        assert train.main(["--model", TOY, "--task", "ccc", "--positions", positions, "--sites", "head,mlp_out",
                           "--steps", "3", "--refit-steps", "1", "--out", str(tmp / positions)]) == 0
    (tmp / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return tmp


def test_the_sweep_runs_end_to_end_on_the_toy_world(runs, capsys):
    out = runs / "out"
    assert generate.main(["--model", TOY, "--judge", TOY, "--run", str(runs / "shared"), "--betas", "0,3",
                          "--instruction", "I love it.", "--prompts", str(runs / "prompts.txt"), "--n-prompts", "4",
                          "--tokens", "5", "--samples", "2", "--max-rise", "100", "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    assert set(r["validation"]) == {"unsteered", "activscalar", "prompting"}
    assert set(r["validation"]["activscalar"]) == {"0", "3"} and r["chosen"]["prompting"] == "I love it."
    assert set(r["prompts"]["validation"]).isdisjoint(r["prompts"]["test"]) and len(r["prompts"]["test"]) == 4
    zero = r["validation"]["activscalar"]["0"]              # beta 0 is the unsteered model, drawn with the same seed
    assert zero["delta_compound"] == 0 and zero["rise/toyworld"] == pytest.approx(0, abs=1e-6)
    assert r["validation"]["unsteered"]["-"]["delta_compound"] == 0
    rows = [json.loads(line) for line in (out / "continuations.jsonl").read_text().splitlines()]
    assert len([x for x in rows if x["split"] == "validation"]) == 4 * 4 * 2   # 4 ways x 4 prompts x 2 samples
    assert {x["way"] for x in rows if x["split"] == "test"} == {"unsteered", *r["chosen"]}
    for way, strength in [("unsteered", "-"), ("activscalar", "3"), ("prompting", "I love it.")]:
        c = [x["compound"] for x in rows if x["split"] == "validation" and (x["way"], x["strength"]) == (way, strength)]
        assert r["validation"][way][strength]["compound"] == pytest.approx(sum(c) / len(c))
    m = r["validation"]["activscalar"]["3"]
    assert m["delta_compound_ci"][0] <= m["delta_compound"] <= m["delta_compound_ci"][1] and m["prompts"] == 4
    assert (out / "frontier.png").stat().st_size > 0
    assert "chosen on the validation prompts" in capsys.readouterr().out


def test_a_position_tied_run_or_nothing_to_compare_is_one_line(runs, capsys):
    args = ["--model", TOY, "--prompts", str(runs / "prompts.txt"), "--out", str(runs / "no")]
    assert generate.main([*args, "--run", str(runs / "tied")]) == 2
    assert "is position-tied" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        generate.main(args)
    assert "nothing to compare" in capsys.readouterr().err
