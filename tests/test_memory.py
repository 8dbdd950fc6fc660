"""memory.py, the command behind the README's peak-memory figure: its task and a tiny run of it."""

import json
import os

import pytest

from benchmarks import memory
from loading.tokenizer import get_tokenizer
from running import budget


def test_the_task_has_20000_distinct_prompts_of_one_length(tmp_path):
    memory.write_task(tmp_path / "task.jsonl", 20000)
    rows = [json.loads(line) for line in (tmp_path / "task.jsonl").read_text().splitlines()]
    assert len(rows) == 20000 and len({(r["prompt"], r["wrong"]) for r in rows}) == 20000
    tok = get_tokenizer(str(memory.TOYWORLD))
    assert {len(tok.encode(r["prompt"])) for r in rows[::997]} == {23}
    assert all(len(tok.encode(r[k])) == 1 for r in rows[::997] for k in ("correct", "wrong"))


def test_a_small_run(capsys):
    assert memory.main(["--prompts", "40", "--vocab", "4000", "--steps", "2"]) == 0
    assert "40 prompts (24 train), vocabulary 4,000: train.py's peak memory" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the default batch and its memory

def big_vocab_task(n: int, vocab: int = 151936, t: int = 23):
    """A tiny model (2 layers, 32 wide) with Qwen's vocabulary and n random prompts of t tokens, prepared."""
    import torch

    import ascale
    from gpt2 import GPT, GPTConfig
    from tasks import PromptSet
    torch.manual_seed(0)
    model = GPT(GPTConfig("gpt_neox", vocab, 64, 2, 4, 32, 128, rotary_dim=8)).eval().requires_grad_(False)
    ids = torch.randint(0, vocab, (n, t))
    c = torch.randint(0, vocab, (n,))
    prompts = PromptSet([""] * n, ids, torch.full((n,), t - 1), c, (c + 1) % vocab, [], [], [])
    return model, ascale.prepare(model, prompts, "flip", batch_size=64)


def test_the_default_batch_keeps_a_step_under_the_memory_budget():
    """600 prompts of a 151,936-token vocabulary: the FLOPs rule alone would take them all at once (about 2.5 GB
    of logits and their gradients), the memory budget cuts the batch to what fits STEP_BYTES, and fit uses it."""
    import ascale
    model, batch = big_vocab_task(600)
    per_prompt = budget.step_bytes_per_prompt(model.config, batch.ids.shape[1])
    assert 600 * per_prompt > budget.STEP_BYTES  # the full batch would not fit
    flops = 6 * sum(p.numel() for p in model.h.parameters()) * batch.ids.numel() + 600 * 6 * 151936 * 32
    assert flops <= budget.FULL_BATCH_FLOPS  # so the FLOPs rule alone says: all 600 (blocks, and the unembedding)
    size = budget.train_batch_size(model, batch)
    assert size == budget.STEP_BYTES // per_prompt and 200 < size < 300 and size * per_prompt <= budget.STEP_BYTES
    iv = ascale.make("activscalar", model.config, ["mlp_out"], batch.ids.shape[1])
    curve = ascale.fit(model, iv, batch, steps=1, progress=False)
    assert curve["batch_size"] == size


def test_the_toy_worlds_ccc_and_ioi_keep_full_batches():
    """Their results depend on full-batch steps (docs/results-toyworld.md): the memory budget leaves them whole."""
    import ascale
    import tasks
    from gpt2 import GPT
    model, tok = GPT.from_pretrained(str(memory.TOYWORLD)), get_tokenizer(str(memory.TOYWORLD))
    for name in ("ccc", "ioi"):
        train = ascale.prepare(model, tasks.load_task(name, tok).train)
        assert budget.train_batch_size(model, train) == len(train) == 300, name


STEP_PEAK = """
import sys
sys.path.insert(0, {root!r})
import torch
import ascale
from gpt2 import GPT, SITES, GPTConfig
from running import budget
B, V, T, arch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
if arch == "llama":
    cfg = GPTConfig("llama", V, 64, 4, 4, 64, 160, rms_norm=True, swiglu=True, n_kv_head=2, rotary_dim=16,
                    attn_bias=False, proj_bias=False, mlp_bias=False)
else:
    cfg = GPTConfig("gpt_neox", V, 64, 2, 4, 32, 128, rotary_dim=8)
model = GPT(cfg).eval().requires_grad_(False)
batch = ascale.Batch(torch.randint(0, V, (B, T)), torch.full((B,), T - 1), torch.randint(0, V, (B, 2)), torch.zeros(B))
iv = ascale.make("activscalar", cfg, SITES, T)
loss, _ = ascale.objective(model, iv, batch[:2])   # warm up: libraries loaded, small buffers allocated
loss.backward()
def peak():  # this process's peak resident memory (ru_maxrss would count the parent's, inherited at exec)
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
before = peak()
loss, _ = ascale.objective(model, iv, batch)       # p⁻ recomputed (not kept), as for large tasks
loss.backward()
after = peak()
print((after - before) / B, budget.step_bytes_per_prompt(cfg, T))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak from /proc (Linux)")
@pytest.mark.parametrize("arch, vocab, tokens", [("neox", 151936, 23),
                                                 pytest.param("llama", 32000, 60, marks=pytest.mark.slow)])
def test_the_estimate_bounds_a_steps_measured_memory(arch, vocab, tokens):
    """step_bytes_per_prompt against one training step's peak resident memory (a fresh process, one thread):
    a vocabulary-bound shape and an activation-bound one (gated MLP, longer prompts). Never below what a
    step takes (the batch would not keep its bound), and not more than twice it (batches needlessly small)."""
    import subprocess
    import sys

    from conftest import ROOT
    done = subprocess.run([sys.executable, "-c", STEP_PEAK.format(root=str(ROOT)), "160", str(vocab), str(tokens),
                           arch], capture_output=True, text=True, env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    measured, estimate = map(float, done.stdout.split())
    assert measured <= estimate <= 2 * measured, (measured, estimate)


CPU_OOM = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate"
           " 9124618240 bytes. Error code 12 (Cannot allocate memory)")


def test_out_of_cpu_memory_with_a_users_batch_size_is_one_line_naming_the_flag(tmp_path, monkeypatch, capsys):
    import ascale
    import train

    def too_big(*args, **kwargs):
        raise RuntimeError(CPU_OOM)

    monkeypatch.setattr(ascale, "objective", too_big)
    argv = ["--model", str(memory.TOYWORLD), "--task", "ccc", "--batch-size", "4096", "--out", str(tmp_path / "run")]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and [line for line in err.splitlines() if "error" in line] == [err.splitlines()[-1]]
    err = err.splitlines()[-1]  # the one error line, after the progress bar's
    assert err.startswith("error: out of CPU memory ([enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator:")
    assert err.endswith("(Cannot allocate memory)); lower --batch-size (now 4096), or use --dtype bfloat16")

    def a_bug(*args, **kwargs):
        raise RuntimeError("shape mismatch")  # any other RuntimeError is not taken for a lack of memory

    monkeypatch.setattr(ascale, "objective", a_bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        train.main([*argv[:-1], str(tmp_path / "run2")])
