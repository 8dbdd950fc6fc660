"""evaluate.py: a saved run evaluated again (its numbers, generation, bad input), and ascale.load of saved runs
with nothing imported first: the built-in methods, and a method of one's own trained from a file
(train.py --method FILE). Offline, CPU."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, gpt2_files, missing, save_checkpoint, tiny_hf_model
from test_train import bad, ccc_rows, write_task

import evaluate
import train

TOYWORLD = str(ROOT / "models" / "toyworld")

# A method of one's own, in a file: a scalar per residual location, under its own name.
MINE = '''
import torch
from torch import nn

import ascale


class ResidScalar(ascale.Intervention):
    """h·(1 + β·α) on the residual stream, one α per (layer, position)."""
    method, about = "residscalar", "one scalar per residual location"

    def __init__(self, cfg, sites, positions):
        super().__init__(cfg, ["resid"], positions)
        self.alpha = nn.ParameterDict({"resid": nn.Parameter(torch.zeros(self.n_layer, positions))})

    def apply(self, site, layer, h, pos=None):
        alpha = self.alpha[site][layer].to(h.device)
        return h * (1 + self.beta * (alpha if pos is None else alpha[pos])).unsqueeze(-1).to(h.dtype)

    def location_map(self, model=None, ids=None):
        return {s: self.beta * a.detach() for s, a in self.alpha.items()}

    def effect(self):
        return {s: a.detach().abs() for s, a in self.alpha.items()}
'''

# Loads a run in a fresh interpreter that has imported nothing but ascale: prints the method and its class's module.
LOAD = """
import sys
import ascale
from gpt2 import GPT
iv, meta = ascale.load(sys.argv[1], GPT.from_pretrained(sys.argv[2]))
print(iv.method, type(iv).__module__, meta["method_file"] or "-")
"""


def load_fresh(path, model=TOYWORLD) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", LOAD, str(path), model], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiktoken_cache):
    """A run of ActivScalar on a tiny random GPT-2 and a JSONL task, as test_train's."""
    if tiktoken_cache is None:
        missing(gpt2_files()[1])
    tmp = tmp_path_factory.mktemp("evaluate")
    model = save_checkpoint(tiny_hf_model("gpt2"), tmp / "tiny-gpt2")
    task = write_task(tmp / "caps.jsonl", ccc_rows())
    assert train.main(["--model", str(model), "--task", task, "--steps", "3", "--out", str(tmp / "run")]) == 0
    return tmp / "run"


def test_prints_the_saved_runs_numbers(run, capsys):
    m = json.loads((run / "metrics.json").read_text())
    capsys.readouterr()
    assert evaluate.main([str(run / "intervention.safetensors")]) == 0
    printed = capsys.readouterr().out
    flips = next(line for line in printed.splitlines() if line.startswith("flip rate"))
    assert flips.split()[2:5] == [f"{m['train']['flip_rate']:.2f}", "/", f"{m['test']['flip_rate']:.2f}"]
    assert "offset (control)" in printed   # the trivial baseline beside it


def test_reads_the_validation_split_in_place_of_test(run, capsys):
    m = json.loads((run / "metrics.json").read_text())
    assert m["n_val_prompts"] > 0 and m["n_val_prompts"] != m["test"]["n_prompts"]
    capsys.readouterr()
    assert evaluate.main([str(run / "intervention.safetensors"), "--split", "validation"]) == 0
    printed = capsys.readouterr().out
    assert "(train / validation)" in printed
    prompts = next(line for line in printed.splitlines() if line.startswith("prompts"))
    assert prompts.split()[1:4] == [str(m["train"]["n_prompts"]), "/", str(m["n_val_prompts"])]
    flips = next(line for line in printed.splitlines() if line.startswith("flip rate"))
    assert m["validation"]["n_prompts"] == m["n_val_prompts"]    # train.py measured the final map there too
    assert flips.split()[4] == f"{m['validation']['flip_rate']:.2f}"


def test_a_run_without_validation_refuses_the_split(tmp_path, capsys, tiktoken_cache):
    if tiktoken_cache is None:
        missing(gpt2_files()[1])
    model = save_checkpoint(tiny_hf_model("gpt2"), tmp_path / "tiny-gpt2")
    task = write_task(tmp_path / "caps.jsonl", ccc_rows())
    assert train.main(["--model", str(model), "--task", task, "--steps", "2", "--validation", "0",
                       "--locations", "all", "--out", str(tmp_path / "run")]) == 0
    err = bad([str(tmp_path / "run" / "intervention.safetensors"), "--split", "validation"], capsys, evaluate)
    assert "trained without a validation split (--validation 0); use --split test" in err


def test_generates_without_and_with(run, capsys):
    assert evaluate.main([str(run / "intervention.safetensors"), "--generate", "3", "--beta", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    without = [line.split(": ", 1)[1] for line in lines if line.startswith("  without ")]
    with_ = [line.split(": ", 1)[1] for line in lines if line.startswith("  with activscalar")]
    assert len(without) == len(with_) == 3 and without == with_  # beta 0: the original model


def test_help_names_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("file", "--beta", "--show", "--generate", "--model", "--task", "--domain", "--target", "--seed"):
        assert flag in text
    assert "(default: 1.0)" in text   # --beta's, shown by the formatter


def test_an_intervention_for_another_model(run, tmp_path, capsys):
    deeper = save_checkpoint(tiny_hf_model("gpt2", n_layer=3), tmp_path / "deeper")
    err = bad([str(run / "intervention.safetensors"), "--model", str(deeper)], capsys, evaluate)
    assert "(2 layers" in err and "has 3 layers" in err


def test_missing_files_and_training_flags_are_one_line(run, tmp_path, capsys):
    err = bad([str(tmp_path / "nope.safetensors")], capsys, evaluate)
    assert "does not exist; pass the intervention.safetensors of a run folder" in err
    err = bad([str(run)], capsys, evaluate)
    assert f"is a folder; pass the intervention file in it, {run / 'intervention.safetensors'}" in err
    assert "unrecognized arguments: --out" in bad([str(run / "intervention.safetensors"), "--out", str(tmp_path)],
                                                  capsys, evaluate)


# ----------------------------------------------------------------------------- methods found with nothing imported


def test_the_built_in_methods_load_with_nothing_imported_first(tmp_path):
    """A DiffMean run and a ScaleShift run, read back by `import ascale; ascale.load(...)` in a fresh
    interpreter: their classes are imported on demand (ascale.BUILT_IN)."""
    for method, extra in (("diffmean", ["--target", "wrong"]), ("scaleshift", ["--locations", "all"])):
        argv = ["--model", TOYWORLD, "--task", "ccc", "--method", method, "--steps", "2", *extra]
        assert train.main([*argv, "--out", str(tmp_path / method)]) == 0
        assert load_fresh(tmp_path / method / "intervention.safetensors") == [method, method, "-"]


def test_a_method_of_ones_own_trains_from_its_file_and_loads_back(tmp_path, capsys):
    mine = tmp_path / "methods" / "mine.py"
    mine.parent.mkdir()
    mine.write_text(MINE)
    out = tmp_path / "run"
    assert train.main(["--model", TOYWORLD, "--task", "ccc", "--method", str(mine), "--steps", "3",
                       "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "residscalar" and m["n_params"] == 4 * 18     # 4 layers x 18 positions, resid only
    assert "residscalar" not in train.methods_of("all")                # a file's method is not a built-in one
    # read back in a fresh interpreter, with nothing imported first: from the file its run names
    name, module, file = load_fresh(out / "intervention.safetensors")
    assert name == "residscalar" and module.startswith("_ascale_method_mine") and file == str(mine)
    # and evaluated by evaluate.py, in a process of its own
    proc = subprocess.run([sys.executable, "evaluate.py", str(out / "intervention.safetensors")], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "residscalar on resid" in proc.stdout and "flip rate" in proc.stdout


def test_a_bad_method_file_is_one_line(tmp_path, capsys):
    base = ["--model", TOYWORLD, "--task", "ccc", "--steps", "1"]
    cases = {"missing.py": (None, "does not exist"),
             "empty.py": ("import ascale\n", "defines no subclass of Intervention with a `method` name"),
             "broken.py": ("def (:\n", "fails to import (line 1): SyntaxError"),
             "taken.py": (MINE.replace('"residscalar"', '"activscalar"'), "is a built-in method's"),
             "two.py": (MINE + "\n\nclass Other(ResidScalar):\n    method = 'other'\n",
                        "2 methods (residscalar, other)")}
    for name, (text, message) in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        err = bad([*base, "--method", str(tmp_path / name), "--out", str(tmp_path / f"run-{name}")], capsys)
        assert f"method file {tmp_path / name}" in err and message in err, err
        assert not (tmp_path / f"run-{name}").exists()
    import ascale
    assert ascale.methods()["activscalar"] is ascale.ActivScalar       # the built-in one stays
