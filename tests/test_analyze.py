"""analyze.py end to end on a tiny random GPT-2 with a small JSONL task: knockout check of a saved
run (and train.py --knockout), the β dial and the λM sweep; plus their bad input. Offline, CPU.
(On the trained toy world, where the numbers mean something: tests/test_toyworld.py.)"""

import json

import pytest
from conftest import gpt2_files, missing, save_checkpoint, tiny_hf_model
from test_train import bad, ccc_rows, full_disk_at, run_files, write_task

import analyze
import train


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiktoken_cache):
    """(model folder, task file, run folder) of one short ActivScalar run."""
    if tiktoken_cache is None:
        missing(gpt2_files()[1])
    tmp = tmp_path_factory.mktemp("analyze")
    model = str(save_checkpoint(tiny_hf_model("gpt2"), tmp / "tiny-gpt2"))
    task = write_task(tmp / "caps.jsonl", ccc_rows())
    out = tmp / "run"
    assert train.main(["--model", model, "--task", task, "--steps", "20", "--lr", "0.1", "--out", str(out)]) == 0
    return model, task, out


def test_knockout_of_a_saved_run(run, capsys):
    _, _, out = run
    assert analyze.main(["knockout", str(out / "intervention.safetensors")]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    agree = metrics["knockout"]
    assert {"spearman", "large_active", "sign_agreement", "attribution_spearman", "n_large"} <= set(agree)
    assert agree["n_prompts"] == metrics["train"]["n_prompts"]  # a tiny model affords them all (and says so)
    assert -1 <= agree["spearman"] <= 1
    assert (out / "knockout.png").read_bytes()[:4] == b"\x89PNG"
    assert "Spearman(|β·α|, |knockout|)" in capsys.readouterr().out


@pytest.mark.slow
def test_train_knockout_flag(run, tmp_path):
    model, task, _ = run
    argv = ["--model", model, "--task", task, "--method", "all", "--steps", "3", "--knockout", "--out", str(tmp_path)]
    assert train.main(argv) == 0
    for method in ("activscalar", "steervec", "dynscalar"):
        assert "knockout" in json.loads((tmp_path / method / "metrics.json").read_text())
        assert (tmp_path / method / "knockout.png").exists()


def test_beta_dial(run):
    _, _, out = run
    assert analyze.main(["beta", str(out / "intervention.safetensors"), "--betas", "0,1,2"]) == 0
    rows = json.loads((out / "beta.json").read_text())["rows"]
    m = json.loads((out / "metrics.json").read_text())
    assert [r["beta"] for r in rows] == [0, 1, 2]
    # β = 0 is the original model exactly; β = 1 is the trained run
    assert rows[0]["logit_diff_after_train"] == m["train"]["logit_diff_before"] and rows[0]["flip_rate_train"] == 0
    assert abs(rows[0]["kl_train"]) < 1e-6
    assert rows[1]["flip_rate_test"] == m["test"]["flip_rate"]
    assert (out / "beta.png").exists()


@pytest.mark.slow
def test_lambda_sweep(run, tmp_path):
    model, task, _ = run
    argv = ["lambda", "--model", model, "--task", task, "--methods", "activscalar,steervec", "--lambda-m", "0,10",
            "--out", str(tmp_path), "--steps", "10", "--lr", "0.1"]   # --steps and --lr are passed on to train.py
    assert analyze.main(argv) == 0
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert [(r["method"], r["lambda_m"]) for r in rows] == [("activscalar", 0), ("activscalar", 10),
                                                           ("steervec", 0), ("steervec", 10)]
    assert all(r["n_params"] > 0 for r in rows) and (tmp_path / "tradeoff.png").exists()
    assert json.loads((tmp_path / "activscalar-lm10" / "metrics.json").read_text())["config"]["steps"] == 10
    assert analyze.main(argv) == 2  # a second sweep into the same folder is refused


def test_parts_of_a_scaleshift(run, tmp_path, capsys):
    """A ScaleShift's parts: a pure scale (v = 0) changes h by |α| of its norm and never across it; the command
    prints a line per kept location and the test flip rate with each part switched off; others are refused."""
    import torch

    import ascale
    import tasks
    from gpt2 import GPT
    from loading.tokenizer import get_tokenizer
    model, task, out = run
    assert train.main(["--model", model, "--task", task, "--method", "scaleshift", "--steps", "10", "--lr", "0.1",
                       "--locations", "3", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert analyze.main(["parts", str(tmp_path / "intervention.safetensors")]) == 0
    printed = capsys.readouterr().out
    assert printed.count(" of it across h") == 3 and "v = 0: test flip" in printed and "alpha = 0: test flip" in printed
    gpt = GPT.from_pretrained(model)
    batch = ascale.prepare(gpt, tasks.load_task(task, get_tokenizer(model)).train)
    iv = ascale.make("scaleshift", gpt.config, ["mlp_out"], batch.ids.shape[1])
    with torch.no_grad():
        iv.alpha["mlp_out"][1, 2] = -0.4
    (n, change, across), = analyze.part_shares(gpt, iv, batch).values()
    assert n > 0 and change == pytest.approx(0.4, abs=1e-5) and across == pytest.approx(0, abs=1e-3)
    assert "parts reads an intervention with a scale and a shift" in bad(
        ["parts", str(out / "intervention.safetensors")], capsys, analyze)


def test_bad_input(run, tmp_path, capsys):
    model, task, out = run
    assert "--lambda-m takes comma-separated numbers" in bad(["lambda", "--lambda-m", "a,b"], capsys, analyze)
    assert "unknown method 'scalar'" in bad(["lambda", "--methods", "scalar"], capsys, analyze)
    assert "does not exist" in bad(["beta", str(tmp_path / "none.safetensors")], capsys, analyze)
    assert "--knockout needs prompts of one length" in bad(
        ["--model", model, "--task", task, "--method", "dynscalar", "--knockout"], capsys)
    assert "unrecognized arguments" in bad(["beta", str(out / "intervention.safetensors"), "--steps", "3"], capsys,
                                           analyze)


@pytest.mark.parametrize("command, name", [("beta", "beta.png"), ("knockout", "knockout.png")])
def test_a_full_disk_is_one_line_and_changes_nothing(run, monkeypatch, capsys, command, name):
    _, _, out = run
    earlier = run_files(out)
    with monkeypatch.context() as patch:
        full_disk_at(name, patch)
        line = bad([command, str(out / "intervention.safetensors")], capsys, analyze)
    assert line == f"error: cannot write {out / name}: No space left on device"
    assert run_files(out) == earlier   # metrics.json without a new knockout entry, no temporary file


def test_a_sweep_into_a_folder_another_is_writing_is_refused(run, tmp_path, capsys):
    from running import runfolder
    model, task, _ = run
    fd = runfolder.lock(tmp_path)      # as another sweep holds it
    try:
        line = bad(["lambda", "--model", model, "--task", task, "--out", str(tmp_path)], capsys, analyze)
    finally:
        runfolder.unlock(tmp_path, fd)
    assert f"{tmp_path} is being written by another run (pid " in line and "choose another --out" in line
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- compare: hand-made run folders

def made_run(folder, flipped, kl, **more):
    """A run folder with only a metrics.json whose test entry has per-prompt outcomes."""
    folder.mkdir(parents=True)
    per = {"flipped": flipped, "kl": kl, **more}
    test = {"flip_rate": sum(flipped) / len(flipped), "kl": sum(kl) / len(kl), "per_prompt": per}
    (folder / "metrics.json").write_text(json.dumps({"method": "activscalar", "test": test}))
    return str(folder)


SIDE = [0] * 6 + [1] * 6
GROUP = [f"g{i // 2}" for i in range(12)]      # six groups of two prompts


def test_compare_two_runs_by_hand(tmp_path, capsys):
    """First run: side 0 flips 2 of 6, side 1 flips 1 of 6; second: 5 of 6 and 3 of 6, every flip of the first
    kept. Flip 3/12 -> 8/12; discordant n01 = 5 (3 on side 0, 2 on side 1), n10 = 0: McNemar p = 2/2^5 = 0.0625,
    on side 0 2/2^3 = 0.25, on side 1 2/2^2 = 0.5; Holm over the three: 0.1875, 0.5, 0.5. Balanced flip
    (2/6 + 1/6)/2 = 0.25 -> (5/6 + 3/6)/2 = 2/3. KL 0.1 -> 0.3 on every prompt: the interval is a point."""
    import numpy as np

    from running import stats
    a = [1, 1, 0, 0, 0, 0] + [1, 0, 0, 0, 0, 0]
    b = [1, 1, 1, 1, 1, 0] + [1, 1, 1, 0, 0, 0]
    first = made_run(tmp_path / "a", a, [0.1] * 12, side=SIDE, group=GROUP)
    second = made_run(tmp_path / "b", b, [0.3] * 12, side=SIDE, group=GROUP)
    before = sorted(tmp_path.rglob("*"))
    assert analyze.main(["compare", first, second]) == 0
    assert sorted(tmp_path.rglob("*")) == before                       # nothing written without --json
    printed = capsys.readouterr().out
    assert "12 test prompts" in printed and "6 groups" in printed and "5/0" in printed
    assert analyze.main(["compare", first, second, "--json", str(tmp_path / "table.json")]) == 0
    rows = json.loads((tmp_path / "table.json").read_text())["rows"]
    by = {r["measure"]: r for r in rows}
    assert list(by) == ["flip", "balanced flip", "flip, side 0", "flip, side 1", "kl"]
    flip = by["flip"]
    assert (flip["first"], flip["this"], flip["difference"]) == pytest.approx((3 / 12, 8 / 12, 5 / 12))
    assert (flip["n01"], flip["n10"], flip["p"], flip["p_holm"]) == (5, 0, pytest.approx(0.0625),
                                                                     pytest.approx(0.1875))
    assert flip["interval"] == pytest.approx(stats.paired_bootstrap(b, a, groups=GROUP))   # grouped, seed 0
    assert flip["interval"][0] <= 5 / 12 <= flip["interval"][1]
    assert (by["flip, side 0"]["p"], by["flip, side 0"]["p_holm"]) == pytest.approx((0.25, 0.5))
    assert (by["flip, side 1"]["p"], by["flip, side 1"]["p_holm"]) == pytest.approx((0.5, 0.5))
    assert by["flip, side 1"]["difference"] == pytest.approx(2 / 6)
    bal = by["balanced flip"]
    assert (bal["first"], bal["this"], bal["p"], bal["p_holm"]) == (pytest.approx(0.25), pytest.approx(2 / 3), None,
                                                                   None)
    assert bal["interval"][0] <= 5 / 12 <= bal["interval"][1]
    assert by["kl"]["difference"] == pytest.approx(0.2) and by["kl"]["interval"] == pytest.approx([0.2, 0.2])
    assert by["kl"]["p"] is None
    # without sides or groups: two rows, prompts resampled; a third run adds its rows, Holm over all of them
    plain = [made_run(tmp_path / n, f, [0.0] * 12) for n, f in (("c", a), ("d", b), ("e", a))]
    rows = analyze.compare([analyze.per_prompt(r) for r in plain])
    assert [(r["run"], r["measure"]) for r in rows] == [(plain[1], "flip"), (plain[1], "kl"),
                                                       (plain[2], "flip"), (plain[2], "kl")]
    assert rows[0]["interval"] == pytest.approx(stats.paired_bootstrap(np.array(b), np.array(a)))
    assert (rows[0]["p_holm"], rows[2]["p"], rows[2]["p_holm"]) == pytest.approx((0.125, 1.0, 1.0))


def test_compare_refuses_runs_on_other_prompts(tmp_path, capsys):
    first = made_run(tmp_path / "a", [1, 0, 1, 0], [0.1] * 4, group=[1, 1, 2, 2], prompt_hash="abc")
    shorter = made_run(tmp_path / "b", [1, 0, 1], [0.1] * 3)
    line = bad(["compare", first, shorter], capsys, analyze)
    assert line == (f"error: {shorter} and {first} were not evaluated on the same test prompts (3 prompts against 4);"
                    " compare needs runs on the same prompts")
    regrouped = made_run(tmp_path / "c", [1, 0, 1, 0], [0.1] * 4, group=[1, 2, 2, 2])
    assert "(their group lists differ)" in bad(["compare", first, regrouped], capsys, analyze)
    rehashed = made_run(tmp_path / "d", [1, 0, 1, 0], [0.1] * 4, prompt_hash="abd")
    assert "(their prompt_hash differs)" in bad(["compare", first, rehashed], capsys, analyze)
    old = tmp_path / "e"
    old.mkdir()
    (old / "metrics.json").write_text(json.dumps({"test": {"flip_rate": 0.5, "kl": 0.1}}))
    assert "has no per-prompt test outcomes" in bad(["compare", first, str(old)], capsys, analyze)
    assert "no metrics.json there" in bad(["compare", first, str(tmp_path / "none")], capsys, analyze)
    assert "at least two runs" in bad(["compare", first], capsys, analyze)
    assert not (tmp_path / "table.json").exists()


def test_yardsticks_table_of_a_run(run, capsys):
    """One markdown row a run: the numbers of its metrics.json, the offset control and the gain over it."""
    run = run[2]
    m = json.loads((run / "metrics.json").read_text())
    assert analyze.main(["yardsticks", str(run)]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith(f"| {run} | {m['test']['flip_rate']:.2f} [")
    assert f"| {m['offset_control']['test']['flip_rate']:.2f}, " in row
    assert f"{m['gain_over_offset']['flip']:+.2f} [" in row
    assert analyze.main(["yardsticks", str(run / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_agree_two_maps_by_hand(run, tmp_path, capsys):
    """A keeps 3 units, B 2 of them (one with the other sign) and 2 others: 2 shared, Jaccard 2/5, overlap share
    2/3, 1 with the same sign; the chance levels are selection.chance's; a map of another method is refused."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    import selection
    with safe_open(str(run[2] / "intervention.safetensors"), "pt") as f:
        meta, shapes = f.metadata(), {k: f.get_tensor(k).shape for k in f.keys()}

    def saved(name, units, method=None):
        t = {k: torch.zeros(s) for k, s in shapes.items()}
        for (k, layer, pos), v in units.items():
            t[k][layer, pos] = v
        t["alpha.mlp_out"][0, 1] = 0.04                    # below the floor (0.05): not active in either
        path = tmp_path / f"{name}.safetensors"
        save_file(t, str(path), metadata={**meta, **({"method": method} if method else {})})
        return str(path)

    a = saved("a", {("alpha.attn_out", 0, 0): -0.5, ("alpha.attn_out", 1, 2): 0.3, ("alpha.mlp_out", 1, 0): 0.2})
    b = saved("b", {("alpha.attn_out", 0, 0): -0.1, ("alpha.attn_out", 1, 2): -0.3, ("alpha.mlp_out", 0, 0): 0.9,
                    ("alpha.mlp_out", 1, 3): 0.06})
    assert analyze.main(["agree", a, b]) == 0
    out = capsys.readouterr().out
    units = sum(s.numel() for s in shapes.values())
    ch = selection.chance(3, 4, units)
    assert f"3 and 4 of {units:,} units active, 2 in both (1 of them with the same sign)" in out
    assert f"Jaccard {2 / 5:.2f} (random sets of these sizes: {ch['jaccard']:.3f}); overlap share {2 / 3:.2f}" in out
    other = saved("c", {("alpha.attn_out", 0, 0): -0.5}, method="scaleshift")
    assert analyze.main(["agree", a, other]) == 2
