"""
How fast is one training step of ActivScalar here, against the way most steering code does it
(transformers plus forward hooks), and against what the hardware can do?

    python -m benchmarks.bench                         # CPU, float32: GPT-2-small and Pythia-160m sizes, batch 32
    python -m benchmarks.bench --models qwen2.5-0.5b   # a Llama-family row (also llama-3.2-1b, smollm2-135m)
    python -m benchmarks.bench --device cuda           # a GPU, bfloat16
    python -m benchmarks.bench --tiny --steps 2        # tiny sizes, seconds (the smoke test)
    python -m benchmarks.bench --run                   # the whole default run, load to run folder, by phase

For each model size, both implementations get the same random weights (a transformers model is
built from a seeded config of the real sizes, written to a temp folder in the Hub's layout, and
loaded from there by gpt2.GPT) and the same batch: random prompts of CCC length (20 tokens), two
distinct random answer tokens c and w per prompt, the answer at the last position.

One step, timed from start to end (both sides do the same four things):
    ours      ascale.objective(model, ActivScalar(attn_out, mlp_out), batch) -> loss.backward() -> Adam
              step; the original distribution is cached once by ascale.prepare.
    baseline  the same intervention and objective written the straightforward way on transformers'
              GPT2LMHeadModel / GPTNeoXForCausalLM / Qwen2ForCausalLM / LlamaForCausalLM: forward hooks
              on every attention and MLP module
              multiply their output by (1 + α[layer]) per position, `model(ids).logits[:, -1]` (all
              positions unembedded, then the answer position taken), the three-term loss, backward,
              Adam. Weights frozen, use_cache=False, the original distribution cached once too.
The two are alternated step by step (who goes first swaps each round) after --warmup steps each;
the first two steps double as a check that both compute the same numbers: same loss and terms, same
gradients of every α on step 1, same loss on step 2 (when all three terms are live).

FLOPs per step are counted from the shapes (`step_flops`): matmuls only, a multiply-add = 2 FLOPs.
    forward   per layer and token 2·(4D² + 2·D·F)  (q,k,v 3D², output projection D², MLP 2·D·F)
              per layer 4·B·T²·D                   (QKᵀ and AV, the full T×T square)
              Llama family: q,k,v D·(Q + 2K), output projection Q·D, SwiGLU MLP 3·D·F, attention
              4·B·T²·Q, with Q = n_head·head_dim and K = n_kv_head·head_dim (grouped-query attention)
              unembedding 2·B·R·D·V                (R positions: 1 for ours, T for the baseline)
    backward  the weights are frozen, so each linear needs only its input gradient (one matmul of
              the forward's size) and attention needs four (dP, dV, dQ, dK: twice its forward); layer
              0's work below its first site needs none (GPT-2: its attention; Pythia, parallel: all
              of layer 0).
Achieved rate = FLOPs / median step time, reported as a share of a plain square matmul in the step's
dtype (n = 2048 on CPU, 8192 on a GPU), timed before and after each model: the best of all those
timings, i.e. the most the hardware gave in this run.

Peak memory: bytes of tensors allocated during one extra (untimed) step above what was allocated
when it began, i.e. activations kept for backward, logits, gradients, optimizer state. On CUDA from
torch.cuda.max_memory_allocated; on CPU by replaying the allocation and free events that the torch
profiler records (profile_memory=True). The weights themselves are listed apart (equal for both).
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.nn import functional as F

import ascale
from gpt2 import GPT

SITES = ("attn_out", "mlp_out")
T_CCC = 20                     # "The capital of Germany is Paris. Q: What is the capital of Germany? A:" ~ 18-20 tokens
LAMBDA_F, LAMBDA_M, MARGIN, LR = 1.0, 0.01, 1.0, 0.02   # train.py's defaults

# name -> (transformers model_type, config keyword arguments): the real sizes, and a tiny one of each
SIZES = {
    "gpt2": ("gpt2", dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)),
    "pythia-160m": ("gpt_neox", dict(vocab_size=50304, max_position_embeddings=2048, hidden_size=768,
                                     num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                                     use_parallel_residual=True, tie_word_embeddings=False,
                                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                      "partial_rotary_factor": 0.25})),
    "qwen2.5-0.5b": ("qwen2", dict(vocab_size=151936, max_position_embeddings=32768, hidden_size=896,
                                   num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                   intermediate_size=4864, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                   rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    "llama-3.2-1b": ("llama", dict(vocab_size=128256, max_position_embeddings=131072, hidden_size=2048,
                                   num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                                   intermediate_size=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                   rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                    "original_max_position_embeddings": 8192})),
    "smollm2-135m": ("llama", dict(vocab_size=49152, max_position_embeddings=8192, hidden_size=576,
                                   num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                   intermediate_size=1536, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                   rope_parameters={"rope_type": "default", "rope_theta": 100000.0})),
}
TINY = {
    "gpt2": dict(vocab_size=512, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0),
    "pythia-160m": dict(vocab_size=512, max_position_embeddings=64, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=256, bos_token_id=0, eos_token_id=0),
    "qwen2.5-0.5b": dict(vocab_size=512, max_position_embeddings=64, hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=128),
    "llama-3.2-1b": dict(vocab_size=512, max_position_embeddings=64, hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 32}),
    "smollm2-135m": dict(vocab_size=512, max_position_embeddings=64, hidden_size=72, num_hidden_layers=2,
                         num_attention_heads=9, num_key_value_heads=3, intermediate_size=128),  # heads 9 / 3 still
}
HF_CLASSES = {"gpt2": ("GPT2LMHeadModel", "GPT2Config"), "gpt_neox": ("GPTNeoXForCausalLM", "GPTNeoXConfig"),
              "qwen2": ("Qwen2ForCausalLM", "Qwen2Config"), "llama": ("LlamaForCausalLM", "LlamaConfig")}


# ----------------------------------------------------------------------------- the same random model, twice

def make_checkpoint(name: str, tiny: bool, folder: Path, seed: int = 0):
    """Build a randomly initialised transformers model of `name`'s size, write it to `folder` in the
    Hub's layout (config.json + model.safetensors) and return it (eval mode, frozen)."""
    import transformers
    from safetensors.torch import save_file
    model_type, kw = SIZES[name]
    kw = {**kw, **(TINY[name] if tiny else {})}
    torch.manual_seed(seed)
    model_class, config_class = HF_CLASSES[model_type]
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**kw))
    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(folder / "config.json")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied to the input embedding, as on the Hub
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return model.eval().requires_grad_(False)


def make_prompts(vocab: int, B: int, T: int, seed: int = 0) -> SimpleNamespace:
    """B random prompts of T tokens with two distinct random answer tokens each; answer = last position."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    c = torch.randint(0, vocab, (B,), generator=g)
    w = (c + torch.randint(1, vocab, (B,), generator=g)) % vocab   # != c
    return SimpleNamespace(ids=ids, answer_pos=torch.full((B,), T - 1), correct=c, wrong=w)


# ----------------------------------------------------------------------------- the two implementations

class Ours:
    """gpt2.GPT + ascale: the training step of ascale.fit."""
    name = "ours"

    def __init__(self, folder, prompts, device, dtype):
        self.model = GPT.from_pretrained(str(folder)).to(device, dtype)
        self.batch = ascale.prepare(self.model, prompts, target="flip")   # the cached original
        self.iv = ascale.ActivScalar(self.model.config, SITES, prompts.ids.shape[1]).to(device)
        self.opt = torch.optim.Adam(self.iv.parameters(), lr=LR)

    def step(self):
        loss, terms = ascale.objective(self.model, self.iv, self.batch, lambda_f=LAMBDA_F, lambda_m=LAMBDA_M,
                                       margin=MARGIN)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach(), {k: v.detach() for k, v in terms.items()}

    def grads(self) -> dict:
        return {s: self.iv.alpha[s].grad for s in SITES}


class Baseline:
    """transformers + forward hooks, written the straightforward way."""
    name = "baseline"

    def __init__(self, hf, prompts, device, dtype):
        self.model = hf.to(device, dtype)
        cfg = hf.config
        if cfg.model_type == "gpt2":
            blocks, attn_name = hf.transformer.h, "attn"
        elif cfg.model_type == "gpt_neox":
            blocks, attn_name = hf.gpt_neox.layers, "attention"
        else:  # Llama family
            blocks, attn_name = hf.model.layers, "self_attn"
        B, T = prompts.ids.shape
        self.ids = prompts.ids.to(device)
        self.alpha = {s: torch.zeros(len(blocks), T, device=device, requires_grad=True) for s in SITES}
        for layer, block in enumerate(blocks):
            attn = getattr(block, attn_name)
            attn.register_forward_hook(self.scale_hook("attn_out", layer))
            block.mlp.register_forward_hook(self.scale_hook("mlp_out", layer))
        with torch.no_grad():   # the original model's distribution at the answer, cached once
            self.alpha_on = False
            logits = self.model(self.ids, use_cache=False).logits[:, -1].float()   # (B, V)
            self.alpha_on = True
        c, w = prompts.correct.to(device), prompts.wrong.to(device)
        lc, lw = logits[torch.arange(B), c], logits[torch.arange(B), w]
        t = torch.where(lc > lw, w, c)                       # flip: the one the model ranks lower
        self.to = torch.stack([t, torch.where(t == c, w, c)], 1)             # (B, 2): t, o
        self.rest = torch.ones_like(logits, dtype=torch.bool).scatter(1, self.to, False)   # (B, V)
        self.logp_rest = logits.masked_fill(~self.rest, -math.inf).log_softmax(-1).masked_fill(~self.rest, 0)
        self.opt = torch.optim.Adam(self.alpha.values(), lr=LR)

    def scale_hook(self, site, layer):
        def hook(module, inputs, output):
            if not self.alpha_on:
                return output
            h = output[0] if isinstance(output, tuple) else output            # (B, T, D)
            h = h * (1 + self.alpha[site][layer]).to(h.dtype)[:, None]        # one scalar per position
            return (h, *output[1:]) if isinstance(output, tuple) else h
        return hook

    def step(self):
        logits = self.model(self.ids, use_cache=False).logits[:, -1].float()  # (B, V) at the answer
        lt, lo = logits.gather(1, self.to).unbind(1)
        L_E = F.relu(MARGIN - (lt - lo)).mean()
        logq_rest = logits.masked_fill(~self.rest, -math.inf).log_softmax(-1).masked_fill(~self.rest, 0)
        L_F = F.kl_div(logq_rest, self.logp_rest, log_target=True, reduction="batchmean")
        L_M = sum(a.abs().sum() for a in self.alpha.values())
        loss = L_E + LAMBDA_F * L_F + LAMBDA_M * L_M
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach(), {"L_E": L_E.detach(), "L_F": L_F.detach(), "L_M": L_M.detach()}

    def grads(self) -> dict:
        return {s: a.grad for s, a in self.alpha.items()}


# ----------------------------------------------------------------------------- measuring

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_same_numbers(ours, base, tol: float):
    """Steps 1 and 2 of both: the losses (and step 1's terms and α gradients) must agree."""
    seen = []
    for step in (1, 2):
        (lo, to), (lb, tb) = ours.step(), base.step()
        if step == 1:
            for k in to:
                torch.testing.assert_close(to[k].float(), tb[k].float(), rtol=tol, atol=tol, msg=lambda m, k=k:
                                           f"step 1, {k}: ours and the baseline disagree\n{m}")
            go, gb = ours.grads(), base.grads()
            for s in SITES:
                scale = gb[s].abs().max().item() + 1e-12
                torch.testing.assert_close(go[s].float() / scale, gb[s].float() / scale, rtol=tol, atol=tol,
                                           msg=lambda m, s=s: f"step 1, gradient of α[{s}] differs\n{m}")
        torch.testing.assert_close(lo.float(), lb.float(), rtol=tol, atol=tol,
                                   msg=lambda m, step=step: f"step {step}: losses differ\n{m}")
        seen.append((lo.item(), lb.item()))
    return seen


def time_steps(impls, device, warmup: int, steps: int) -> dict:
    """Alternate the implementations step by step; seconds per step of each after warm-up."""
    times = {impl.name: [] for impl in impls}
    for i in range(warmup + steps):
        for impl in (impls if i % 2 == 0 else impls[::-1]):
            sync(device)
            t0 = time.perf_counter()
            impl.step()
            sync(device)
            if i >= warmup:
                times[impl.name].append(time.perf_counter() - t0)
    return times


def peak_step_memory(impl, device) -> int | None:
    """Peak bytes allocated by one step above what was allocated when it began (see the docstring)."""
    if device.type == "cuda":
        sync(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        impl.step()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - start
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        impl.step()
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except AttributeError:   # a torch whose profiler keeps its raw events elsewhere
        return None
    now = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        now += e.nbytes()
        peak = max(peak, now)
    return peak


def matmul_rate(device, dtype, n: int, reps: int = 5) -> float:
    """FLOP/s of a plain n x n matmul, the best of reps: what the hardware gives at its best."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times)


def step_flops(cfg, B: int, T: int, read: int, last_layer_rows: bool = False) -> dict[str, float]:
    """Matmul FLOPs of one training step (the formula is in the module docstring). read: positions
    per prompt that are unembedded (1 for ours, T for the baseline). last_layer_rows: the last layer
    runs its queries, output projection and MLP at the `read` positions only (q, k, v at all)."""
    D, F_, L, V = cfg.n_embd, cfg.n_inner, cfg.n_layer, cfg.vocab_size
    Q, K = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim   # widths of all q heads, of all k (or v) heads
    mlp_matrices = 3 if cfg.swiglu else 2                             # gate, up, down; or in, out

    def layer(rows):  # (q,k,v projection, output projection + MLP, attention) FLOPs at `rows` query rows
        return 2 * B * T * D * (Q + 2 * K), 2 * B * rows * (Q * D + mlp_matrices * D * F_), 4 * B * rows * T * Q

    qkv, rest, scores = layer(T)
    last = layer(read) if last_layer_rows else (qkv, rest, scores)
    unembed = 2 * B * read * D * V
    forward = (L - 1) * (qkv + rest + scores) + sum(last) + unembed
    mlp = 2 * B * T * mlp_matrices * D * F_
    no_grad_needed = qkv + (rest - mlp) + 2 * scores + (mlp if cfg.parallel_residual else 0)  # layer 0, below its sites
    backward = (L - 1) * (qkv + rest + 2 * scores) + last[0] + last[1] + 2 * last[2] + unembed - no_grad_needed
    return {"forward": forward, "backward": backward, "total": forward + backward}


def machine(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


# ----------------------------------------------------------------------------- one model size, then the table

def bench_model(name: str, args, device, dtype) -> dict:
    import transformers
    with tempfile.TemporaryDirectory() as tmp:
        hf = make_checkpoint(name, args.tiny, Path(tmp) / name, seed=args.seed)
        prompts = make_prompts(hf.config.vocab_size, args.batch_size, args.seq_len, seed=args.seed)
        ours = Ours(Path(tmp) / name, prompts, device, dtype)
    base = Baseline(hf, prompts, device, dtype)
    tol = 1e-4 if dtype == torch.float32 else 5e-2   # bf16: ~0.2% apart on the loss, ~2% on gradients
    losses = check_same_numbers(ours, base, tol)
    times = time_steps([ours, base], device, max(0, args.warmup - 2), args.steps)
    memory = {impl.name: peak_step_memory(impl, device) for impl in (ours, base)}
    weights = {"ours": sum(p.numel() * p.element_size() for p in ours.model.parameters()),
               "baseline": sum(p.numel() * p.element_size() for p in base.model.parameters())}
    B, T = prompts.ids.shape
    rows = getattr(ascale.Intervention, "takes_positions", False)  # gpt2 then skips the last layer's other rows
    flops = {"ours": step_flops(ours.model.config, B, T, read=1, last_layer_rows=rows)["total"],
             "baseline": step_flops(ours.model.config, B, T, read=T)["total"]}
    out = {"model": name, "B": B, "T": T, "transformers": transformers.__version__,
           "first_step_loss": {"ours": losses[0][0], "baseline": losses[0][1]},
           "second_step_loss": {"ours": losses[1][0], "baseline": losses[1][1]}}
    for impl in ("ours", "baseline"):
        med = statistics.median(times[impl])
        out[impl] = {"times_s": times[impl], "median_s": med, "min_s": min(times[impl]), "max_s": max(times[impl]),
                     "tokens_per_s": B * T / med, "flops": flops[impl], "flop_rate": flops[impl] / med,
                     "peak_step_bytes": memory[impl], "weight_bytes": weights[impl]}
    out["ratio"] = out["ours"]["median_s"] / out["baseline"]["median_s"]
    return out


def mib(n):
    return "n/a" if n is None else f"{n / 2**20:,.0f}"


def table(results: list[dict], peak: float) -> str:
    rows = ["| model | impl | step ms, median [min–max] | time vs baseline | tokens/s | GFLOP/step | GFLOP/s"
            " | % of matmul | peak step MiB | weights MiB |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for impl in ("ours", "baseline"):
            m = r[impl]
            vs = f"{r['ratio']:.2f} ({1 / r['ratio']:.2f}x faster)" if impl == "ours" else "1"
            rows.append(f"| {r['model']} | {impl} | {m['median_s'] * 1e3:,.0f} [{m['min_s'] * 1e3:,.0f}–"
                        f"{m['max_s'] * 1e3:,.0f}] | {vs} | {m['tokens_per_s']:,.0f} | {m['flops'] / 1e9:,.1f} |"
                        f" {m['flop_rate'] / 1e9:,.1f} | {100 * m['flop_rate'] / peak:.0f}% |"
                        f" {mib(m['peak_step_bytes'])} | {mib(m['weight_bytes'])} |")
    return "\n".join(rows)


RUN = ("--task", "ccc", "--model", "smollm2")  # the default run of the README: SmolLM2-135M, CCC


def whole_run(extra: list[str]) -> dict:
    """`python train.py --task ccc --model smollm2 EXTRA` into a temporary folder, timed from start to run
    folder: wall and CPU seconds (user + system of the child), and train.py's per-phase timings from its
    metrics.json, with the result (test flip rate, its interval, active locations). Prints a table."""
    import resource
    import subprocess
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(root / "train.py"), *RUN, *extra, "--out", tmp, "--overwrite"]
        before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        subprocess.run(cmd, check=True, cwd=root, stdout=subprocess.DEVNULL)
        wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
        m = json.loads((Path(tmp) / "metrics.json").read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = {"command": " ".join(["python train.py", *RUN, *extra]), "wall_s": wall, "cpu_s": cpu,
           "timings": m["timings"], "test_flip_rate": m["test"]["flip_rate"],
           "test_flip_rate_ci": m["test"]["flip_rate_ci"],
           "n_test": m["test"]["n_prompts"], "n_active": m["n_active"], "threads": torch.get_num_threads()}
    print(f"\n`{out['command']}` on {machine(torch.device('cpu'))}, {out['threads']} threads\n")
    print("| phase | wall s | CPU s | share of wall |\n|---|---|---|---|")
    for phase, t in m["timings"].items():
        print(f"| {phase} | {t['wall']:.1f} | {t['cpu']:.1f} | {t['wall'] / wall:.0%} |")
    print(f"| **whole run** (process start to run folder) | **{wall:.1f}** | **{cpu:.1f}** | 100% |")
    lo, hi = out["test_flip_rate_ci"]
    print(f"\ntest flip {out['test_flip_rate']:.2f} [{lo:.2f}, {hi:.2f}] ({out['n_test']} prompts),"
          f" {out['n_active']:.0f} active locations")
    return out


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description="Time one ActivScalar training step: ours vs transformers with hooks.")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda if available")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--models", default="gpt2,pythia-160m", help=f"comma-separated, from {', '.join(SIZES)}")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=T_CCC, help=f"prompt length in tokens (default {T_CCC}, CCC's)")
    p.add_argument("--steps", type=int, default=5, help="timed steps of each implementation (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each first (default 2)")
    p.add_argument("--tiny", action="store_true", help="tiny model sizes (a smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--run", action="store_true", help="instead of the steps: time the whole default run,"
                   f" python train.py {' '.join(RUN)}, by phase (train.py's metrics.json)")
    p.add_argument("--run-args", default="", metavar="FLAGS", help="--run: train.py flags added to the command,"
                   ' e.g. "--model models/toyworld" for the toy world or "--runs 5 --seed 1"')
    args = p.parse_args(argv)
    if args.run:
        import shlex
        out = whole_run(shlex.split(args.run_args))
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
        return [out]
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no GPU")
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32,
             "float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    names = [n for n in args.models.split(",") if n]
    if unknown := [n for n in names if n not in SIZES]:
        raise SystemExit(f"error: unknown model size {unknown[0]!r}; choose from {', '.join(SIZES)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    n = 256 if args.tiny else 8192 if device.type == "cuda" else 2048
    peaks = [matmul_rate(device, dtype, n)]
    results = []
    for name in names:
        results.append(bench_model(name, args, device, dtype))
        peaks.append(matmul_rate(device, dtype, n))
        r = results[-1]
        print(f"{name}: same numbers: loss on step 1 ours {r['first_step_loss']['ours']:.6f}, baseline"
              f" {r['first_step_loss']['baseline']:.6f}; step 2 ours {r['second_step_loss']['ours']:.6f},"
              f" baseline {r['second_step_loss']['baseline']:.6f}", file=sys.stderr)
    peak = max(peaks)

    print(f"\n{machine(device)}, {str(dtype).removeprefix('torch.')}, batch {args.batch_size} x {args.seq_len}"
          f" tokens, ActivScalar on {','.join(SITES)}; timed steps: {args.steps} of each after {args.warmup} warm-up\n")
    print(table(results, peak))
    print(f"\nplain {n}x{n} matmul, {str(dtype).removeprefix('torch.')}: {peak / 1e9:,.1f} GFLOP/s, the best of"
          f" {', '.join(f'{x / 1e9:,.1f}' for x in peaks)} (measured before and after each model)")
    for r in results:
        print(f"{r['model']}: ours/baseline time {r['ratio']:.2f} ({1 / r['ratio']:.2f}x faster), peak step memory"
              f" {mib(r['ours']['peak_step_bytes'])} vs {mib(r['baseline']['peak_step_bytes'])} MiB;"
              f" first-step loss {r['first_step_loss']['ours']:.6f} vs {r['first_step_loss']['baseline']:.6f}")
    if args.json:
        report = {"machine": machine(device), "dtype": str(dtype), "matmul_flop_rate": peak, "matmul_flop_rates": peaks,
                  "args": vars(args), "results": results}
        Path(args.json).write_text(json.dumps(report, indent=1))
    return results


if __name__ == "__main__":
    main()
