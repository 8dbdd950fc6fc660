"""train.py end to end on a tiny random GPT-2 with a custom JSONL task (offline, CPU)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, save_checkpoint, tiny_hf_model

import ascale
import train

CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
            ("Russia", "Moscow"), ("Egypt", "Cairo"), ("Greece", "Athens"), ("Poland", "Warsaw"),
            ("Cuba", "Havana"), ("Peru", "Lima"), ("China", "Beijing")]
TEMPLATE = "The capital of {country} is {city}. Q: What is the capital of {country}? A:"
FLAGS = ["--model", "--revision", "--task", "--method", "--sites", "--target", "--lambda-f", "--lambda-m", "--margin",
         "--beta", "--lr", "--epochs", "--batch-size", "--seed", "--device", "--dtype", "--out", "--show", "--eval"]


def write_task(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def ccc_rows(extra=()):
    """Country-capital conflicts whose prompts are all 18 GPT-2 tokens and whose answers are one token."""
    rows = [{"prompt": TEMPLATE.format(country=country, city=CAPITALS[(i + 1) % len(CAPITALS)][1]),
             "correct": " " + city, "wrong": " " + CAPITALS[(i + 1) % len(CAPITALS)][1]}
            for i, (country, city) in enumerate(CAPITALS)]
    return rows + list(extra)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiktoken_cache):
    """(checkpoint folder, task file) shared by the tests of this module."""
    if tiktoken_cache is None:
        pytest.skip("GPT-2's BPE files (../shared/data/tiktoken-cache) are absent")
    tmp = tmp_path_factory.mktemp("train")
    folder = save_checkpoint(tiny_hf_model("gpt2"), tmp / "tiny-gpt2")
    return str(folder), write_task(tmp / "caps.jsonl", ccc_rows())


def run_script(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # TIKTOKEN_CACHE_DIR is set by conftest's fixture
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def check_run_folder(folder, method):
    assert sorted(p.name for p in folder.iterdir()) == ["heatmap.png", "intervention.safetensors", "metrics.json"]
    assert (folder / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((folder / "metrics.json").read_text())
    for split in ("train", "test"):
        assert {"flip_rate", "kl", "logit_diff_before", "logit_diff_after"} <= set(m[split])
    assert {"n_params", "l1", "n_active", "config", "loss_curve"} <= set(m)
    assert {f[2:].replace("-", "_") for f in FLAGS} <= set(m["config"]) and m["config"]["method"] == method
    assert len(m["loss_curve"]["L_E"]) == m["steps"] > 0
    assert ascale.read_metadata(folder / "intervention.safetensors")["method"] == method
    return m


@pytest.fixture(scope="module")
def one_run(setup, tmp_path_factory):
    model, task = setup
    out = tmp_path_factory.mktemp("run") / "activscalar"
    proc = run_script("--model", model, "--task", task, "--epochs", "3", "--out", str(out), "--show", "2")
    return proc, out


def test_one_method_end_to_end(one_run):
    proc, out = one_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    check_run_folder(out, "activscalar")
    assert "original model: prefers the correct answer" in proc.stdout
    assert "flip rate" in proc.stdout and "active locations" in proc.stdout
    assert proc.stdout.count("  before: ") == 2 and proc.stdout.count("  after : ") == 2
    assert "L_E=" in proc.stderr  # the progress bar shows the three terms


def test_all_methods_end_to_end(setup, tmp_path):
    model, task = setup
    proc = run_script("--model", model, "--task", task, "--method", "all", "--epochs", "2", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    for method in ascale.METHODS:
        check_run_folder(tmp_path / method, method)
    header = next(line for line in proc.stdout.splitlines() if line.startswith("(train / test)"))
    assert header.split()[-3:] == list(ascale.METHODS)


def test_eval_prints_the_saved_runs_numbers(one_run, capsys):
    _, out = one_run
    m = json.loads((out / "metrics.json").read_text())
    assert train.main(["--eval", str(out / "intervention.safetensors")]) == 0
    flips = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("flip rate"))
    assert flips.split()[-3:] == [f"{m['train']['flip_rate']:.2f}", "/", f"{m['test']['flip_rate']:.2f}"]


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in FLAGS:
        assert flag in text


def test_same_seed_same_numbers(setup, tmp_path):
    model, task = setup
    for name in ("a", "b"):
        assert train.main(["--model", model, "--task", task, "--epochs", "2", "--batch-size", "4", "--seed", "5",
                           "--out", str(tmp_path / name)]) == 0
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("a", "b"))
    assert a["loss_curve"] == b["loss_curve"] and a["test"] == b["test"]


def test_dynscalar_takes_prompts_of_several_lengths(setup, tmp_path):
    model, _ = setup
    longer = {"prompt": TEMPLATE.format(country="the United Kingdom", city="Paris"), "correct": " London",
              "wrong": " Paris"}
    task = write_task(tmp_path / "mixed.jsonl", ccc_rows([longer]))
    assert train.main(["--model", model, "--task", task, "--method", "dynscalar", "--epochs", "2",
                       "--out", str(tmp_path / "run")]) == 0
    check_run_folder(tmp_path / "run", "dynscalar")


def test_ctrl_c_evaluates_and_saves_what_was_learned(setup, tmp_path, monkeypatch, capsys):
    model, task = setup
    objective, calls = ascale.objective, []

    def interrupted_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return objective(*args, **kwargs)

    monkeypatch.setattr(ascale, "objective", interrupted_at_step_3)
    assert train.main(["--model", model, "--task", task, "--epochs", "5", "--batch-size", "4",
                       "--out", str(tmp_path)]) == 0
    m = check_run_folder(tmp_path, "activscalar")
    assert m["interrupted"] and m["steps"] == 2
    assert "stopped by Ctrl-C after 2 steps" in capsys.readouterr().out


# ----------------------------------------------------------------------------- bad input


def one_error_line(err: str) -> str:
    """The error line: the last line of stderr (a progress bar may come before it), and the only one."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines[-1].startswith("error: ") and sum(line.startswith("error:") for line in lines) == 1
    return lines[-1]


def test_bad_input_from_the_command_line_is_one_line(setup, tmp_path):
    model, task = setup
    proc = run_script("--model", model, "--task", task, "--sites", "attn_out,mlp", "--out", str(tmp_path))
    assert proc.returncode == 2 and proc.stdout == ""
    assert "unknown site 'mlp'" in one_error_line(proc.stderr)


def bad(argv, capsys) -> str:
    try:
        code = train.main(argv)
    except SystemExit as e:  # argparse's own checks
        code = e.code
    assert code == 2
    return one_error_line(capsys.readouterr().err)


def test_unknown_method_or_site(setup, tmp_path, capsys):
    model, task = setup
    base = ["--model", model, "--task", task, "--out", str(tmp_path)]
    assert "invalid choice: 'scalar'" in bad([*base, "--method", "scalar"], capsys)
    assert "unknown site 'neurons'" in bad([*base, "--sites", "neurons"], capsys)
    assert "--lr must be a positive number" in bad([*base, "--lr", "-1"], capsys)


def test_unequal_prompt_lengths_suggest_dynscalar(setup, tmp_path, capsys):
    model, _ = setup
    longer = {"prompt": TEMPLATE.format(country="the United Kingdom", city="Paris"), "correct": " London",
              "wrong": " Paris"}
    task = write_task(tmp_path / "mixed.jsonl", ccc_rows([longer]))
    assert "--method dynscalar" in bad(["--model", model, "--task", task, "--out", str(tmp_path)], capsys)


def test_answers_must_be_single_tokens(setup, tmp_path, capsys):
    model, _ = setup
    rows = ccc_rows()
    rows[3]["correct"] = " Nairobi"
    task = write_task(tmp_path / "multi.jsonl", rows)
    assert "must be exactly one" in bad(["--model", model, "--task", task, "--out", str(tmp_path)], capsys)


def test_intervention_for_another_model(one_run, tmp_path, capsys):
    _, out = one_run
    deeper = save_checkpoint(tiny_hf_model("gpt2", n_layer=3), tmp_path / "deeper")
    err = bad(["--eval", str(out / "intervention.safetensors"), "--model", str(deeper)], capsys)
    assert "(2 layers" in err and "has 3 layers" in err


def test_a_nan_loss(setup, tmp_path, capsys):
    model, task = setup
    err = bad(["--model", model, "--task", task, "--lr", "1e20", "--epochs", "3", "--out", str(tmp_path)], capsys)
    assert "loss became nan" in err and "lower --lr" in err
    assert not (tmp_path / "metrics.json").exists()
