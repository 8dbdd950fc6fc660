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
