"""parallel.py: two processes under torchrun (gloo, loopback) give one process's numbers, write one run folder,
stop together; a device map on the CPU gives the undispatched model's logits and gradients. Offline, CPU,
on the toy world (models/toyworld)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import ROOT

import ascale
import knockout
import metrics
import train
from gpt2 import GPT, UserError
from running import parallel

TOY = str(ROOT / "models" / "toyworld")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
# A minibatch of 7 prompts splits 4 + 3: the shares are weighted, the l1 term counted once.
RUN = ["--model", TOY, "--steps", "6", "--batch-size", "7", "--sites", "mlp_out", "--seed", "3"]


def torchrun(*args, timeout=300, **popen):
    """`torchrun --standalone --nproc_per_node 2 ARGS`, from the project's folder."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *map(str, args)]
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=ENV, text=True, **popen)
    return subprocess.run(cmd, cwd=ROOT, env=ENV, text=True, capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def toy_task(tmp_path_factory):
    """48 of the toy world's CCC prompts (18 tokens each) as a JSONL task, with the tokens the task reads as
    answers (a city's first): a short run."""
    import tasks
    from loading.tokenizer import get_tokenizer
    tok = get_tokenizer(TOY)
    ps = tasks.load_task("ccc", tok, seed=0, fixed_length=True).train
    rows = [{"prompt": ps.prompts[i], "correct": tok.token_str(int(ps.correct[i])),   # the answer tokens read
             "wrong": tok.token_str(int(ps.wrong[i]))} for i in range(48)]
    path = tmp_path_factory.mktemp("task") / "ccc48.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, toy_task):
    """The same training run (with --knockout) by one process and by two under torchrun."""
    tmp = tmp_path_factory.mktemp("parallel")
    assert train.main([*RUN, "--task", toy_task, "--knockout", "--out", str(tmp / "one")]) == 0
    proc = torchrun(ROOT / "train.py", *RUN, "--task", toy_task, "--knockout", "--out", tmp / "two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "one", tmp / "two", proc


@pytest.mark.slow
def test_two_processes_give_one_process_numbers(runs):
    from safetensors.torch import load_file
    one, two, _ = runs
    a, b = load_file(one / "intervention.safetensors"), load_file(two / "intervention.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3       # measured: 2.4e-7
    m1, m2 = (json.loads((f / "metrics.json").read_text()) for f in (one, two))
    assert m1["world_size"] == 1 and m2["world_size"] == 2
    for split in ("train", "test"):
        assert m1[split]["flip_rate"] == m2[split]["flip_rate"] and m1[split]["n_prompts"] == m2[split]["n_prompts"]
        for key in ("kl", "logit_diff_before", "logit_diff_after"):
            assert m1[split][key] == pytest.approx(m2[split][key], abs=1e-4), (split, key)
    assert m1["n_active"] == m2["n_active"] and m1["l1"] == pytest.approx(m2["l1"], abs=1e-3)
    for key, curve in m1["loss_curve"].items():
        assert curve == pytest.approx(m2["loss_curve"][key], abs=1e-4), key
    k1, k2 = ({**{k: v for k, v in m.items() if k != "per_side"}, **{f"{side}.{k}": v for side, e in
               m["per_side"].items() for k, v in e.items()}} for m in (m1["knockout"], m2["knockout"]))  # per side too
    assert k1.keys() == k2.keys() and "a.n_prompts" in k1
    for key, value in k1.items():                               # from the same maps
        assert value == pytest.approx(k2[key], abs=1e-6), key


@pytest.mark.slow
def test_one_run_folder_written_once(runs):
    one, two, proc = runs
    files = sorted(p.name for p in two.iterdir())
    assert files == sorted(p.name for p in one.iterdir()) and "knockout.png" in files   # no .lock, no .staging
    assert sorted(p.name for p in two.parent.iterdir()) == ["one", "two"]
    # rank 0 alone prints: every line of the run once
    for line in ("original model: prefers", "flip rate", "knockout map (zero ablation):", f"wrote {two}/"):
        assert proc.stdout.count(line) == 1, line


# Under torchrun: prepare, evaluate, count and map on the prompts, saved by rank 0; then a training run
# (train.main, argv after the first three) in which rank 1 runs out of memory as training begins.
WORKER = """
import os, sys
import torch
import ascale, knockout, metrics, tasks, train
from gpt2 import GPT
from loading.tokenizer import get_tokenizer
model_dir, task_file, out = sys.argv[1:4]
train.parallel.start()
model, tok = GPT.from_pretrained(model_dir), get_tokenizer(model_dir)
task = tasks.load_task(task_file, tok, seed=0, fixed_length=True)
batch = ascale.prepare(model, task.train, "flip", batch_size=16)
iv = ascale.make("activscalar", model.config, ["attn_out", "head"], batch.ids.shape[1])
torch.manual_seed(1)
with torch.no_grad():
    for p in iv.parameters():
        p.normal_(0, 0.3)
found = {"batch": batch, "eval": metrics.evaluate(model, iv, batch, batch_size=8),
         "active": metrics.active_locations(model, iv, batch, batch_size=8),
         "knockout": knockout.knockout_sides(model, batch, ["attn_out", "head"], progress=False)}
if train.parallel.is_main():
    torch.save(found, out)
if os.environ["RANK"] == "1":
    def fit(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    ascale.fit = fit
sys.exit(train.main(sys.argv[4:]))
"""


@pytest.fixture(scope="module")
def worker(tmp_path_factory, toy_task):
    """WORKER's results and its torchrun's outcome."""
    tmp = tmp_path_factory.mktemp("worker")
    (tmp / "worker.py").write_text(WORKER)
    proc = torchrun(tmp / "worker.py", TOY, toy_task, tmp / "two.pt", *RUN, "--task", toy_task, "--out", tmp / "run")
    assert (tmp / "two.pt").exists(), proc.stderr[-3000:]
    return torch.load(tmp / "two.pt", weights_only=False), proc, tmp / "run"


def test_prepare_evaluation_and_knockout_map_shared_out(worker, toy_task):
    """The prepared batch, the evaluation, the active locations and the knockout map of two processes (each
    its share of the prompts or of the (layer, position) jobs) are those of one."""
    import tasks
    from loading.tokenizer import get_tokenizer
    two = worker[0]
    model, tok = GPT.from_pretrained(TOY), get_tokenizer(TOY)
    task = tasks.load_task(toy_task, tok, seed=0, fixed_length=True)
    batch = ascale.prepare(model, task.train, "flip", batch_size=16)
    assert torch.equal(batch.ids, two["batch"].ids) and torch.equal(batch.answers, two["batch"].answers)
    for name in ("diff_before", "p_rest", "neg_entropy"):
        assert torch.allclose(getattr(batch, name), getattr(two["batch"], name), atol=1e-5), name
    iv = ascale.make("activscalar", model.config, ["attn_out", "head"], batch.ids.shape[1])
    torch.manual_seed(1)
    with torch.no_grad():
        for p in iv.parameters():
            p.normal_(0, 0.3)
    one = metrics.evaluate(model, iv, batch, batch_size=8)
    assert one["flip_rate"] == two["eval"]["flip_rate"] and one["n_prompts"] == two["eval"]["n_prompts"] == len(batch)
    assert one["kl"] == pytest.approx(two["eval"]["kl"], abs=1e-5)
    assert metrics.active_locations(model, iv, batch, batch_size=8) == two["active"]
    maps = knockout.knockout_sides(model, batch, ["attn_out", "head"], progress=False)   # and per side
    assert maps.keys() == two["knockout"].keys() == {"all", "a", "b"}
    for group, site in [(g, s) for g in maps for s in maps[g]]:
        assert (maps[group][site] - two["knockout"][group][site]).abs().max() < 1e-5, (group, site)


def test_a_failing_process_stops_the_others(worker):
    _, proc, out = worker
    assert proc.returncode != 0
    assert "error: out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB)" in proc.stderr
    assert "(rank 1)" in proc.stderr and "another process of this torchrun failed" in proc.stderr
    assert not out.exists()   # nothing written: rank 0 stopped before training


@pytest.mark.slow
def test_sigterm_under_torchrun_stops_both_and_saves(tmp_path, toy_task):
    """A scheduler's SIGTERM to torchrun, which passes it on: both processes stop after the same step, rank 0
    evaluates and saves what was learned, as one process does."""
    out = tmp_path / "run"
    run = torchrun(ROOT / "train.py", *RUN[:2], "--task", toy_task, "--steps", "100000", "--batch-size", "4",
                   "--out", out, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = []
    threading.Thread(target=lambda: err.extend(iter(lambda: run.stderr.read(1), "")), daemon=True).start()
    deadline = time.time() + 180
    while "L_E=" not in "".join(err):   # training has begun
        assert run.poll() is None and time.time() < deadline, "".join(err)
        time.sleep(0.2)
    run.send_signal(signal.SIGTERM)
    stdout, _ = run.communicate(timeout=120)
    assert "stopped by SIGTERM after" in stdout, "".join(err)[-3000:]
    files = {p.name for p in out.iterdir()}
    assert {"heatmap.png", "intervention.safetensors", "metrics.json"} <= files and not any(
        name.startswith(".") for name in files)   # no .lock, no .staging-<pid>
    m = json.loads((out / "metrics.json").read_text())
    assert m["interrupted"] and m["stopped_by"] == "SIGTERM" and 0 < m["steps"] < 100000 and m["world_size"] == 2
    assert stdout.count("stopped by SIGTERM after") == 1


# ----------------------------------------------------------------------------- device map


def test_a_device_map_gives_the_undispatched_logits_and_gradients(tmp_path):
    """No second device here: accelerate's hooks with layers on the CPU and offloaded to disk (brought in when
    they run). Logits, the intervention's gradients, generation with its KV cache and the knockout map are
    those of the undispatched model."""
    ref = GPT.from_pretrained(TOY)
    placed = {"wte": "cpu", "h.0": "cpu", "h.1": "disk", "h.2": "cpu", "h.3": "disk", "ln_f": "cpu", "lm_head": "cpu"}
    model = parallel.dispatch(GPT.from_pretrained(TOY), parallel.check_map(ref, placed, "test"), tmp_path)
    assert model.h[1].attn.c_attn.weight.device.type == "meta"   # on disk until it runs
    torch.manual_seed(0)
    ids, at = torch.randint(0, ref.config.vocab_size, (3, 12)), torch.tensor([11, 7, 11])
    for iv in (ascale.make("activscalar", ref.config, ["attn_out", "head"], 12),
               ascale.make("dynscalar", ref.config, ["mlp_out"])):
        with torch.no_grad():
            for p in iv.parameters():
                p.normal_(0, 0.1)
        found = []
        for m in (ref, model):
            iv.zero_grad()
            logits = m(ids, intervene=iv, at=at)
            logits.logsumexp(-1).sum().backward()
            found.append((logits.detach(), [p.grad.clone() for p in iv.parameters()], m.generate(ids, 4, intervene=iv)))
        (l1, g1, gen1), (l2, g2, gen2) = found
        assert torch.allclose(l1, l2, atol=1e-6) and torch.equal(gen1, gen2)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2, strict=True))
    batch = ascale.Batch(ids, torch.full((3,), 11), torch.tensor([[5, 9], [7, 2], [3, 4]]), torch.zeros(3))
    k1, k2 = (knockout.knockout(m, batch, ["mlp_out"], progress=False)["mlp_out"] for m in (ref, model))
    assert torch.allclose(k1, k2, atol=1e-5)


def test_bad_device_maps_are_one_line(tmp_path):
    model = GPT.from_pretrained(TOY)
    cases = {"nope.json": None, "bad.json": "{", "unknown.json": {"wte": "cpu", "h.9": "cpu"},
             "missing.json": {"wte": "cpu", "lm_head": "cpu"},
             "gpu.json": {"": 7}}
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(UserError) as e:
            parallel.device_map(model, str(tmp_path / name))
        assert "\n" not in str(e.value) and "--device-map" in str(e.value), name
    everything = {k: "cpu" for k in ("wte", "h.0", "h.1", "h.2", "h.3", "ln_f")}
    with pytest.raises(UserError, match="lm_head"):
        parallel.dispatch(model, {**everything, "lm_head": "disk"})


def test_help_explains_the_device_map(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--device-map auto|balanced|FILE" in text and "torchrun" in text
