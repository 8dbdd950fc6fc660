"""bench.py runs end to end at tiny sizes, and ours and the transformers-with-hooks baseline compute
the same numbers (no timing assertions: timings depend on the machine)."""

import json

from benchmarks import bench
from gpt2 import GPTConfig


def test_bench_runs_tiny_and_both_sides_agree(tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = bench.main(["--tiny", "--device", "cpu", "--batch-size", "4", "--steps", "1", "--warmup", "2",
                          "--json", str(out)])
    assert [r["model"] for r in results] == ["gpt2", "pythia-160m"]
    for r in results:  # bench.main already asserted loss, terms and gradients close; check it reported them
        first, second = r["first_step_loss"], r["second_step_loss"]
        assert abs(first["ours"] - first["baseline"]) < 1e-4 and abs(second["ours"] - second["baseline"]) < 1e-4
        assert first["ours"] > 0
        for impl in ("ours", "baseline"):
            assert r[impl]["median_s"] > 0 and r[impl]["flops"] > 0
            assert r[impl]["peak_step_bytes"] is None or r[impl]["peak_step_bytes"] > 0
        assert r["ours"]["flops"] < r["baseline"]["flops"]  # ours unembeds the answer position only
    table = capsys.readouterr().out
    assert "| gpt2 | ours |" in table and "| pythia-160m | baseline |" in table
    assert json.loads(out.read_text())["results"][0]["model"] == "gpt2"


def test_flop_count_by_hand():
    """One layer, D=2, F=4, V=10, B=1, T=3, read 1: every matmul counted once in the forward and
    once (input gradient only; attention twice) in the backward, minus layer 0 below its sites."""
    cfg = GPTConfig(n_layer=1, n_embd=2, n_inner=4, vocab_size=10, n_head=1)
    f = bench.step_flops(cfg, B=1, T=3, read=1)
    linear = 2 * 3 * (4 * 2 * 2 + 2 * 2 * 4)      # q,k,v + output projection + MLP, 3 tokens
    scores = 4 * 3 * 3 * 2                       # QKᵀ and AV
    unembed = 2 * 1 * 2 * 10
    assert f["forward"] == linear + scores + unembed
    mlp = 2 * 3 * 2 * 2 * 4
    assert f["backward"] == mlp + unembed        # GPT-2 (sequential): layer 0's attention needs no gradient


def test_bench_llama_family_rows_tiny(capsys):
    """The Llama-shaped rows (grouped-query attention, SwiGLU, tied; Llama 3's rotary scaling; SmolLM2's 9 / 3 heads)
    agree too."""
    results = bench.main(["--tiny", "--device", "cpu", "--batch-size", "4", "--steps", "1", "--warmup", "2",
                          "--models", "qwen2.5-0.5b,llama-3.2-1b,smollm2-135m"])
    assert [r["model"] for r in results] == ["qwen2.5-0.5b", "llama-3.2-1b", "smollm2-135m"]
    for r in results:
        assert abs(r["first_step_loss"]["ours"] - r["first_step_loss"]["baseline"]) < 1e-4
        assert r["ours"]["flops"] < r["baseline"]["flops"]
    assert "| qwen2.5-0.5b | ours |" in capsys.readouterr().out


def test_flop_count_grouped_query_swiglu():
    """One layer with 2 query heads of size 3 sharing 1 key/value head, SwiGLU: q 6 wide, k and v 3 each."""
    cfg = GPTConfig(n_layer=1, n_embd=4, n_inner=5, vocab_size=10, n_head=2, n_kv_head=1, head_dim=3, swiglu=True)
    f = bench.step_flops(cfg, B=1, T=2, read=2)
    linear = 2 * 2 * (4 * (6 + 2 * 3) + 6 * 4 + 3 * 4 * 5)    # q,k,v + output projection + gate, up, down
    assert f["forward"] == linear + 4 * 2 * 2 * 6 + 2 * 2 * 4 * 10


def test_the_whole_run_row_times_each_phase(tmp_path, capsys):
    """--run: train.py end to end (here the toy world, few steps), its phases from metrics.json in a table."""
    out = tmp_path / "run.json"
    [r] = bench.main(["--run", "--run-args", "--model models/toyworld --steps 3 --refit-steps 2", "--json", str(out)])
    assert {"load", "prepare", "fit", "selection", "evaluation", "figures"} <= set(r["timings"])
    assert sum(t["wall"] for t in r["timings"].values()) <= r["wall_s"] and r["cpu_s"] > 0
    assert 0 <= r["test_flip_rate"] <= 1 and r["n_test"] == 100
    assert "| fit |" in capsys.readouterr().out and json.loads(out.read_text())["command"].endswith("--refit-steps 2")
