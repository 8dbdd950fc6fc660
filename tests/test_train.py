"""train.py end to end on a tiny random GPT-2 with a custom JSONL task (offline, CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, gpt2_files, missing, save_checkpoint, tiny_hf_model

import ascale
import diffmean
import metrics
import scaleshift
import tasks
import train
from figures import console
from gpt2 import UserError

CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
            ("Russia", "Moscow"), ("Egypt", "Cairo"), ("Greece", "Athens"), ("Poland", "Warsaw"),
            ("Cuba", "Havana"), ("Peru", "Lima"), ("China", "Beijing")]
TEMPLATE = "The capital of {country} is {city}. Q: What is the capital of {country}? A:"
FLAGS = ["--model", "--revision", "--task", "--method", "--sites", "--target", "--lambda-f", "--lambda-m", "--margin",
         "--answers", "--beta", "--lr", "--steps", "--locations", "--runs", "--refit-steps", "--batch-size", "--seed",
         "--device", "--dtype", "--out", "--overwrite", "--show", "--generate"]


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
        missing(gpt2_files()[1])
    tmp = tmp_path_factory.mktemp("train")
    folder = save_checkpoint(tiny_hf_model("gpt2"), tmp / "tiny-gpt2")
    return str(folder), write_task(tmp / "caps.jsonl", ccc_rows())


def run_script(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # TIKTOKEN_CACHE_DIR is set by conftest's fixture
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def check_run_folder(folder, method):
    m = json.loads((folder / "metrics.json").read_text())
    selected = ["locations.png"] if m.get("selection", {}).get("path") else []   # the path of --locations auto
    assert sorted(p.name for p in folder.iterdir()) == ["heatmap.png", "intervention.safetensors", *selected,
                                                        "metrics.json"]
    for png in ("heatmap.png", *selected):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for split in ("train", "test"):   # every flip rate with its interval and its number of prompts
        lo, hi = m[split]["flip_rate_ci"]
        assert 0 <= lo <= m[split]["flip_rate"] <= hi <= 1 and m[split]["n_prompts"] > 0
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
    proc = run_script("--model", model, "--task", task, "--steps", "3", "--out", str(out), "--show", "2",
                      "--generate", "4")
    return proc, out


def test_one_method_end_to_end(one_run):
    proc, out = one_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    check_run_folder(out, "activscalar")
    assert "original model: prefers the correct answer" in proc.stdout
    assert "flip rate" in proc.stdout and "active locations" in proc.stdout
    assert proc.stdout.count("  before: ") == 2 and proc.stdout.count("  after : ") == 2
    assert proc.stdout.count(" (target, other); logit difference ") == 2   # both answers, before -> after
    assert "greedy continuations of 4 tokens" in proc.stdout  # --generate, for --show's 2 prompts
    assert proc.stdout.count("  without         : '") == 2 and proc.stdout.count("  with activscalar: '") == 2
    assert "L_E=" in proc.stderr  # the progress bar shows the three terms


@pytest.mark.slow
def test_all_methods_end_to_end(setup, tmp_path):
    model, task = setup
    argv = ("--model", model, "--task", task, "--method", "all", "--steps", "2", "--out", str(tmp_path))
    proc = run_script(*argv, "--generate", "3")
    assert proc.returncode == 0, proc.stderr
    for method in ascale.METHODS:
        check_run_folder(tmp_path / method, method)
    header = next(line for line in proc.stdout.splitlines() if line.startswith("(train / test)"))
    assert header.split()[3:] == [*ascale.methods(), "offset", "(control)"]   # every method, DiffMean under flip too
    # --generate: each of 3 test prompts continued once without and once with each method
    for label in ("without", *(f"with {m}" for m in ascale.methods())):
        assert sum(line.startswith("  ") and line.split(":")[0].strip() == label
                   for line in proc.stdout.splitlines()) == 3, label
    # the same command again: refused before any work, the first run kept
    before = {m: (tmp_path / m / "metrics.json").read_bytes() for m in ascale.METHODS}
    again = run_script(*argv)
    assert again.returncode == 2 and again.stdout == ""
    assert "already holds a run" in one_error_line(again.stderr) and "--overwrite" in again.stderr
    assert before == {m: (tmp_path / m / "metrics.json").read_bytes() for m in ascale.METHODS}


@pytest.mark.slow
def test_runs_writes_its_frequency_map_and_the_first_fits_path(setup, tmp_path):
    """--runs 2: stability.png, locations.png (the path of the first fit, which chose K) and metrics.json's runs,
    with both agreement indices."""
    model, task = setup
    proc = run_script("--model", model, "--task", task, "--runs", "2", "--steps", "3", "--refit-steps", "2",
                      "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["heatmap.png", "intervention.safetensors", "locations.png", "metrics.json", "stability.png"]
    for png in ("stability.png", "locations.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = json.loads((tmp_path / "metrics.json").read_text())["runs"]
    assert r["runs"] == 2 and len(r["fits"]) == 2 and r["first_fit_selection"]["K"] == r["K"]
    assert 0 <= r["jaccard_pairs"] <= 1 and 0 <= r["jaccard_halves"] <= 1
    assert "Jaccard of two fits' selections" in proc.stdout


def test_generation_does_not_read_the_padding(setup, capsys):
    """DynScalar's test prompts have mixed lengths, right-padded: each is continued on its own."""
    import torch

    import tasks
    from gpt2 import GPT
    from loading.tokenizer import get_tokenizer
    model_dir, _ = setup
    longer = {"prompt": TEMPLATE.format(country="the United Kingdom", city="Paris"), "correct": " London",
              "wrong": " Paris"}
    model, tok = GPT.from_pretrained(model_dir), get_tokenizer(model_dir)
    ps = tasks.tokenize([tasks.Item(r["prompt"], r["correct"], r["wrong"]) for r in ccc_rows([longer])[-3:]], tok)
    assert ps.lengths.tolist() == [18, 18, 22]  # the first two padded by 4
    iv = ascale.make("dynscalar", model.config, ["mlp_out"])
    console.generations(model, tok, {"dynscalar": iv}, ps, len(ps), 5)
    shown = [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines() if line.startswith("  with ")]
    alone = [repr(tok.decode(model.generate(torch.tensor([tok.encode(p)]), 5)[0, -5:].tolist())) for p in ps.prompts]
    assert shown == alone


def test_help_explains_every_flag(capsys, monkeypatch):
    """Every flag has a help line of its own; the defaults are shown by the formatter, not written into each."""
    from cli import script

    class Built(Exception):
        pass

    def caught(parser, argv=None):   # the parser train.py builds, before it parses
        raise Built(parser)

    with monkeypatch.context() as patch:
        patch.setattr(script.Parser, "parse_args", caught)
        with pytest.raises(Built) as built:
            train.parse_args([])
    actions = [a for a in built.value.args[0]._actions if "--help" not in a.option_strings]
    assert all(a.help and "(default:" not in a.help for a in actions)
    with pytest.raises(SystemExit) as e:
        train.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in FLAGS:
        assert flag in text
    assert "(default: activscalar)" in text and "(default: None)" not in text


def test_same_seed_same_numbers(setup, tmp_path):
    model, task = setup
    for name in ("a", "b"):
        assert train.main(["--model", model, "--task", task, "--steps", "2", "--batch-size", "4", "--seed", "5",
                           "--out", str(tmp_path / name)]) == 0
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("a", "b"))
    assert a["loss_curve"] == b["loss_curve"] and a["test"] == b["test"]


def test_dynscalar_takes_prompts_of_several_lengths(setup, tmp_path):
    model, _ = setup
    longer = {"prompt": TEMPLATE.format(country="the United Kingdom", city="Paris"), "correct": " London",
              "wrong": " Paris"}
    task = write_task(tmp_path / "mixed.jsonl", ccc_rows([longer]))
    assert train.main(["--model", model, "--task", task, "--method", "dynscalar", "--steps", "2",
                       "--out", str(tmp_path / "run")]) == 0
    check_run_folder(tmp_path / "run", "dynscalar")


@pytest.mark.slow  # the quick run stays under 5 minutes; CI runs it
def test_scaleshift_end_to_end_on_the_toy_world(tmp_path):
    """A method that is one class in a file of its own (scaleshift.py) trains, is selected, drawn and checked
    against the knockout map by train.py through its class attributes alone, and its file loads back."""
    out = tmp_path / "run"
    assert train.main(["--model", str(ROOT / "models" / "toyworld"), "--task", "ccc", "--method", "scaleshift",
                       "--steps", "5", "--refit-steps", "2", "--knockout", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["heatmap.png", "intervention.safetensors", "knockout.png",
                                                     "locations.png", "metrics.json"]
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "scaleshift" and m["selection"]["measure"] == scaleshift.ScaleShift.measure
    assert m["n_params"] == 2 * 4 * 18 * (1 + 128)          # attn_out, mlp_out: 4 layers x 18 positions x (α, v)
    assert m["knockout"]["n_prompts"] > 0 and "sign_agreement" in m["knockout"]
    meta = ascale.read_metadata(out / "intervention.safetensors")
    assert meta["method"] == "scaleshift" and meta["positions"] == "18" and meta["fixed_length"] == "1"


TOY = str(ROOT / "models" / "toyworld")


@pytest.fixture(scope="module")
def one_pair(tmp_path_factory):
    """A JSONL task on the toy world whose prompts all share one answer pair, " Paris" and " Berlin": its CCC
    prompts with Paris in the context, on every one of which the toy world prefers Paris."""
    from loading.tokenizer import get_tokenizer
    prompts = tasks.load_task("ccc", get_tokenizer(TOY)).train.prompts
    countries = sorted({p.split()[3] for p in prompts} - {"France", "Germany"})[:30]
    rows = [{"prompt": f"The capital of {c} is Paris. Q: What is the capital of {c}? A:", "correct": " Paris",
             "wrong": " Berlin"} for c in countries]
    return write_task(tmp_path_factory.mktemp("task") / "paris.jsonl", rows)


def test_every_method_runs_where_the_model_prefers_one_answer_everywhere(one_pair, tmp_path, capsys):
    """--target wrong asks every prompt for " Berlin", which the model never prefers: DiffMean's contrast is there
    all the same (CAA's), so --method all runs every method to the end, into one table."""
    out = tmp_path / "all"
    assert train.main(["--model", TOY, "--task", one_pair, "--method", "all", "--target", "wrong", "--steps", "2",
                       "--locations", "all", "--out", str(out), "--device", "cpu"]) == 0
    stdout = capsys.readouterr().out
    assert "prefers the correct answer over the wrong one on 100%" in stdout
    header = next(line for line in stdout.splitlines() if line.startswith("(train / test)"))
    assert header.split()[3:] == [*ascale.methods(), "offset", "(control)"]
    m = json.loads((out / "diffmean" / "metrics.json").read_text())
    assert m["diffmean"]["contrast"] == "caa" and m["diffmean"]["n_prompts"] == m["train"]["n_prompts"]
    assert sorted(p.name for p in out.iterdir()) == sorted(ascale.methods())


def test_diffmean_runs_under_flip_as_a_push(one_pair, tmp_path, capsys):
    out = tmp_path / "dm"
    assert train.main(["--model", TOY, "--task", one_pair, "--method", "diffmean", "--out", str(out),
                       "--device", "cpu"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["target"] == "flip" and m["diffmean"]["strength"] > 0 and "balanced_flip" in m["test"]


@pytest.mark.parametrize("error", [UserError("no room"), RuntimeError("a bug\nits details")], ids=["user", "bug"])
def test_method_all_keeps_the_finished_methods_when_a_later_one_fails(one_pair, tmp_path, monkeypatch, capsys,
                                                                       error):
    fit_and_select, calls = train.fit_and_select, []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise error
        return fit_and_select(*args, **kwargs)

    monkeypatch.setattr(train, "fit_and_select", second_fails)
    out = tmp_path / "all"
    assert train.main(["--model", TOY, "--task", one_pair, "--method", "all", "--steps", "2", "--locations", "all",
                       "--out", str(out), "--device", "cpu"]) == 2
    first, second = list(ascale.methods())[:2]
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    bug = f"error: {second} failed (RuntimeError: a bug)"
    assert line == ("error: no room" if isinstance(error, UserError) else bug)
    assert f"kept the finished methods' folders: {out / first}" in captured.out
    assert sorted(p.name for p in (out / first).iterdir()) == ["heatmap.png", "intervention.safetensors",
                                                              "metrics.json"]
    assert json.loads((out / first / "metrics.json").read_text())["method"] == first
    assert sorted(p.name for p in out.iterdir()) == [first]          # nothing of the failed one, nor of the rest


def test_a_method_that_cannot_run_says_so_before_any_training(one_pair, tmp_path, monkeypatch, capsys):
    def cannot(cls, model, batches, target):
        raise UserError("diffmean cannot run here")

    monkeypatch.setattr(diffmean.DiffMean, "check", classmethod(cannot))
    monkeypatch.setattr(train, "fit_and_select", lambda *a, **k: pytest.fail("trained before the check"))
    line = bad(["--model", TOY, "--task", one_pair, "--method", "all", "--out", str(tmp_path / "r"),
                "--device", "cpu"], capsys)
    assert line == "error: diffmean cannot run here" and not (tmp_path / "r").exists()


def test_ctrl_c_evaluates_and_saves_what_was_learned(setup, tmp_path, monkeypatch, capsys):
    model, task = setup
    objective, calls = ascale.objective, []

    def interrupted_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return objective(*args, **kwargs)

    monkeypatch.setattr(ascale, "objective", interrupted_at_step_3)
    assert train.main(["--model", model, "--task", task, "--steps", "5", "--batch-size", "4",
                       "--out", str(tmp_path)]) == 0
    m = check_run_folder(tmp_path, "activscalar")
    assert m["interrupted"] and m["steps"] == 2
    assert "stopped by Ctrl-C after 2 steps" in capsys.readouterr().out


def test_ctrl_c_during_evaluation_keeps_the_parameters(setup, tmp_path, monkeypatch):
    model, task = setup
    argv = ["--model", model, "--task", task, "--steps", "2", "--out", str(tmp_path)]
    assert train.main([*argv, "--seed", "1"]) == 0   # an earlier run, to be replaced

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(metrics, "measure", interrupted)
    assert train.main([*argv, "--overwrite"]) == 130
    assert ascale.read_metadata(tmp_path / "intervention.safetensors")["seed"] == "0"   # the new one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["intervention.safetensors"]  # none of the earlier run's


# ----------------------------------------------------------------------------- faults: SIGTERM, two runs, a full disk


def run_files(folder) -> dict[str, bytes]:
    """Every file under a run folder (hidden ones included: a lock, a staging folder), with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sigterm_during_training_saves_what_was_learned(setup, tmp_path, monkeypatch, capsys):
    import signal
    model, task = setup
    objective, calls = ascale.objective, []

    def terminated_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)   # as a scheduler's time limit sends it
        return objective(*args, **kwargs)

    measure, in_place = metrics.measure, []

    def measure_and_look(*args):   # the parameters are in place before the evaluation: a SIGKILL may follow
        in_place.append(sorted(p.name for p in tmp_path.iterdir()))
        return measure(*args)

    monkeypatch.setattr(ascale, "objective", terminated_at_step_3)
    monkeypatch.setattr(metrics, "measure", measure_and_look)
    before = signal.getsignal(signal.SIGTERM)
    assert train.main(["--model", model, "--task", task, "--steps", "5", "--batch-size", "4",
                       "--out", str(tmp_path)]) == 0
    m = check_run_folder(tmp_path, "activscalar")
    assert m["interrupted"] and m["stopped_by"] == "SIGTERM" and m["steps"] == 2
    assert "stopped by SIGTERM after 2 steps" in capsys.readouterr().out
    assert in_place[0][-1] == "intervention.safetensors" and not {"metrics.json", "heatmap.png"} & set(in_place[0])
    assert signal.getsignal(signal.SIGTERM) == before   # the handler is put back


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_refuses_and_sigterm_stops_the_first(setup, tmp_path, capsys):
    """Two terminals, one command: the second refuses in one line naming the first, which a SIGTERM
    then stops; it saves what it learned, and leaves neither its lock nor its staging folder."""
    import signal
    import threading
    import time
    model, task = setup
    out = tmp_path / "run"
    argv = ["--model", model, "--task", task, "--steps", "100000", "--batch-size", "4", "--out", str(out)]
    first = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    err = []
    threading.Thread(target=lambda: err.extend(iter(lambda: first.stderr.read(1), "")), daemon=True).start()
    deadline = time.time() + 120
    while "L_E=" not in "".join(err):   # training has begun
        assert first.poll() is None and time.time() < deadline, "".join(err)
        time.sleep(0.2)
    line = bad(argv, capsys)
    assert f"{out} is being written by another run (pid {first.pid} on " in line and "train.py --model" in line
    first.send_signal(signal.SIGTERM)
    stdout, _ = first.communicate(timeout=120)
    assert first.returncode == 0, "".join(err)
    assert "stopped by SIGTERM after" in stdout
    m = check_run_folder(out, "activscalar")   # exactly the three files: no .lock, no .staging-<pid>
    assert m["interrupted"] and m["stopped_by"] == "SIGTERM" and 0 < m["steps"] < 100000


def test_the_lock_of_method_all_covers_its_subfolders(setup, tmp_path, capsys):
    from running import runfolder
    _, task = setup
    (tmp_path / "steervec").mkdir()
    fd = runfolder.lock(tmp_path / "steervec")     # a run of one method into the subfolder
    try:
        line = bad(["--model", str(tmp_path / "no-model"), "--task", task, "--method", "all", "--out", str(tmp_path)],
                   capsys)
    finally:
        runfolder.unlock(tmp_path / "steervec", fd)
    assert f"{tmp_path / 'steervec'} is being written by another run" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["steervec"]   # the others' locks released and removed


def test_what_a_killed_run_leaves_does_not_block_the_next(setup, tmp_path):
    """kill -9 leaves its lock file (the kernel has dropped the lock) and its staging folder."""
    model, task = setup
    (tmp_path / ".lock").write_text("pid 99999 on somewhere, since 00:00:00: train.py")
    (tmp_path / ".staging-99999").mkdir()
    (tmp_path / ".staging-99999" / "metrics.json").write_text("{half")
    assert train.main(["--model", model, "--task", task, "--steps", "1", "--out", str(tmp_path)]) == 0
    check_run_folder(tmp_path, "activscalar")


def full_disk_at(name, monkeypatch):
    """Make the disk full for files called `name` (their fsync fails with ENOSPC, as on a full disk)."""
    import errno
    fsync = os.fsync

    def failing(fd):
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f"{name}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", failing)


def test_a_full_disk_is_one_line_and_keeps_the_earlier_run(setup, tmp_path, monkeypatch, capsys):
    model, task = setup
    argv = ["--model", model, "--task", task, "--steps", "1", "--out", str(tmp_path)]
    assert train.main(argv) == 0
    (tmp_path / "knockout.png").write_bytes(b"an earlier run's knockout check")
    earlier = run_files(tmp_path)
    for name in ("heatmap.png", "metrics.json", "intervention.safetensors"):
        with monkeypatch.context() as patch:
            full_disk_at(name, patch)
            line = bad([*argv, "--steps", "2", "--overwrite"], capsys)
        assert line == f"error: cannot write {tmp_path / name}: No space left on device"
        assert run_files(tmp_path) == earlier         # intact, and no temporary file left
    assert train.main([*argv, "--overwrite"]) == 0
    assert not (tmp_path / "knockout.png").exists()   # the earlier run's, gone with it


FSIZE = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))   # no file may grow past this
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.slow
def test_a_file_size_limit_is_one_line_and_keeps_the_earlier_run(setup, tmp_path):
    """A quota or file-size limit, for real: RLIMIT_FSIZE lets the run write its small files but not its
    heatmap (the write fails with EFBIG; SIGXFSZ is ignored)."""
    model, task = setup
    argv = ["--model", model, "--task", task, "--steps", "1", "--out", str(tmp_path)]
    assert train.main(argv) == 0
    earlier = run_files(tmp_path)
    limit = (len(earlier["metrics.json"]) + len(earlier["heatmap.png"])) // 2
    assert limit > len(earlier["metrics.json"]) + 200    # metrics.json can be written (2 steps: a bit more)
    proc = subprocess.run([sys.executable, "-c", FSIZE.format(limit=limit), *argv, "--steps", "2", "--overwrite"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    assert one_error_line(proc.stderr) == f"error: cannot write {tmp_path / 'heatmap.png'}: File too large"
    assert run_files(tmp_path) == earlier


def test_out_of_gpu_memory_is_one_line(setup, tmp_path, monkeypatch, capsys):
    import torch
    model, task = setup

    def too_big(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0)\nmore details")

    monkeypatch.setattr(ascale, "objective", too_big)
    line = bad(["--model", model, "--task", task, "--out", str(tmp_path / "run")], capsys)
    assert "out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0)); lower --batch-size" in line
    assert not (tmp_path / "run").exists()   # nothing written, the folder it created removed


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


def bad(argv, capsys, script=train) -> str:
    """Run script.main(argv) (train.py's by default): exit code 2 and one error line, returned."""
    try:
        code = script.main(argv)
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


def test_a_nan_loss(setup, tmp_path, capsys):
    model, task = setup
    err = bad(["--model", model, "--task", task, "--lr", "1e20", "--steps", "3", "--out", str(tmp_path)], capsys)
    assert "loss became nan" in err and "lower --lr" in err
    assert not (tmp_path / "metrics.json").exists()


# ----------------------------------------------------------------------------- odd inputs, as a new user makes them


@pytest.mark.slow
def test_out_naming_a_file_is_refused_before_any_work(setup, tmp_path):
    _, task = setup
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    for extra, message in [(("--out", str(notes)), "is a file; name a folder"),
                           (("--out", str(notes), "--method", "all"), "is a file; name a folder"),
                           (("--out", str(notes / "run")), f"{notes} is a file; choose another --out")]:
        # a model that does not exist: the error must come before it is loaded
        proc = run_script("--model", str(tmp_path / "no-model"), "--task", task, *extra)
        assert proc.returncode == 2 and proc.stdout == ""
        assert message in one_error_line(proc.stderr)
    assert notes.read_text() == "keep me"


def test_an_unwritable_out_is_refused_before_any_work(setup, tmp_path, monkeypatch, capsys):
    _, task = setup
    locked = tmp_path / "locked"
    locked.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(locked) else access(p, mode))
    err = bad(["--model", str(tmp_path / "no-model"), "--task", task, "--out", str(locked / "run")], capsys)
    assert f"cannot write into {locked}" in err and "choose another --out" in err


def test_a_rerun_never_replaces_a_finished_run_unasked(setup, tmp_path, capsys):
    model, task = setup
    out = str(tmp_path / "run")
    assert train.main(["--model", model, "--task", task, "--steps", "1", "--out", out]) == 0
    first = (tmp_path / "run" / "metrics.json").read_bytes()
    capsys.readouterr()
    err = bad(["--model", model, "--task", task, "--steps", "1", "--out", out], capsys)
    assert "already holds a run (metrics.json, intervention.safetensors, heatmap.png, locations.png)" in err
    assert "--out NEW_FOLDER" in err and "--overwrite" in err
    assert (tmp_path / "run" / "metrics.json").read_bytes() == first
    assert train.main(["--model", model, "--task", task, "--steps", "2", "--out", out, "--overwrite"]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["steps"] == 2


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_jsonl_with_a_byte_order_mark(setup, tmp_path, newline):
    model, _ = setup
    path = tmp_path / "bom.jsonl"
    path.write_bytes(("\ufeff" + "".join(json.dumps(r) + newline for r in ccc_rows()) + newline).encode())
    assert train.main(["--model", model, "--task", str(path), "--steps", "1", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]["n_prompts"] == 3


def test_generate_checks(setup, tmp_path, capsys):
    model, task = setup
    base = ["--model", model, "--task", task, "--out", str(tmp_path / "run")]
    assert "--generate must be >= 0" in bad([*base, "--generate", "-1"], capsys)
    # 18-token prompts, a 64-token model: refused before training, nothing written
    err = bad([*base, "--generate", "47"], capsys)
    assert "exceed the model's context of 64 tokens; use --generate 46 or fewer" in err
    assert not (tmp_path / "run").exists()


def test_missing_files_are_named_before_any_work(setup, tmp_path, capsys):
    err = bad(["--model", str(tmp_path / "no-model"), "--task", str(tmp_path / "nope.jsonl")], capsys)
    assert f"task file {tmp_path / 'nope.jsonl'} does not exist; pass --task" in err


def test_the_machinery_imports_no_script():
    """Imports run one way (errors, loading, model, method, tasks, then the scripts): running/ and loading/ import
    no module above them (the model, the method, the tasks, the scripts; loading/ may read the model's error and
    running's machinery), the model, the method and the tasks never import the scripts' machinery (cli/) nor a
    script, and loading/method_files.py imports no method."""
    import ast

    def imported(path):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                found |= {node.module or ""} | {f"{node.module}.{a.name}" for a in node.names}
        return {m.split(".")[0] for m in found} | found
    above = {"ascale", "metrics", "tasks", "scaleshift", "diffmean", "selection", "knockout", "figures", "cli", "train",
             "evaluate", "analyze", "generate", "judging"}
    for path in [*(ROOT / "loading").glob("*.py"), *(ROOT / "running").glob("*.py")]:
        assert not imported(path) & above, (path, imported(path) & above)
    for path in (ROOT / "running").glob("*.py"):
        assert not imported(path) & {"gpt2", "loading"}, path
    for path in (ROOT / "judging").glob("*.py"):      # the judges: beside loading, below the model and the method
        assert not imported(path) & ((above - {"judging"}) | {"gpt2"}), path
    for name in ("gpt2", "ascale", "metrics", "tasks", "scaleshift", "diffmean", "selection", "knockout"):
        assert not imported(ROOT / f"{name}.py") & {"cli", "train", "evaluate", "analyze"}, name
    assert not imported(ROOT / "loading" / "method_files.py") & {"ascale", "scaleshift", "diffmean"}
