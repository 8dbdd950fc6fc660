"""
Our forward pass against llama.cpp's (llama-cpp-python) on the same GGUF file, and an exported file (export.py)
against our forward under its map: does llama.cpp run the map as we do?

    python -m benchmarks.llamacpp RUN_FOLDER EXPORTED.gguf [--model FILE.gguf] [--prompts N] [--tokens 32]
                                  [--beta B] [--json FILE]

On N held-out prompts of the run's task (test split, one per text, the first N) it reports, for the unexported
file (our forward without the map) and for the exported one (with it; a control vector is given to llama.cpp as
llama_set_adapter_cvec, in the layout its own loader builds from the file): the largest |Δ logit| at the last
position over the vocabulary (median and max over prompts), on how many prompts the top token agrees, and on how
many the greedy continuation of --tokens tokens is the same token for token. The target (docs/export.md): the
exported file within the unexported file's agreement. llama.cpp quantises activations in its quantised matmuls
(Q4_1, Q8_0), so the unexported file already differs from us by about 1 logit on SmolLM2. --model names the
unexported file (unset: the run's model), for instance an F32 copy (loading/export_gguf.py's `dequantized`),
on which llama.cpp computes as we do; the exported file must then have been written with export.py --model.
--beta: the strength the exported file was written at (export.py --beta). Beside the agreement, each file's
report says how large our logits are (their std over the vocabulary) and how near its greedy choices are to ties
(agreement's docstring): what a larger |Δ| or fewer same continuations may come from.
"""

import argparse
import ctypes
import json
import sys

import numpy as np
import torch


def open_llama(path: str, n_ctx: int = 512, cvec: str | None = None):
    """A llama_cpp.Llama on `path` with logits at every position (its `scores`); with cvec, that control vector
    set for layers 1 ... n_layer as llama.cpp's --control-vector does."""
    from llama_cpp import Llama, llama_cpp
    llm = Llama(model_path=str(path), logits_all=True, n_ctx=n_ctx, n_threads=1, n_threads_batch=1,
                n_batch=n_ctx, verbose=False)
    if cvec is not None:
        import gguf
        n_layer, n_embd = int(llm.metadata[f"{llm.metadata['general.architecture']}.block_count"]), llm.n_embd()
        data = np.zeros((n_layer - 1) * n_embd, dtype=np.float32)   # layer 1 at [0], as common_control_vector_load
        for t in gguf.GGUFReader(str(cvec)).tensors:
            layer = int(t.name.split(".")[1])
            data[(layer - 1) * n_embd:layer * n_embd] += np.asarray(t.data, dtype=np.float32)
        ptr = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        if llama_cpp.llama_set_adapter_cvec(llm._ctx.ctx, ptr, len(data), n_embd, 1, n_layer) != 0:
            raise RuntimeError("llama.cpp refused the control vector")
        llm._cvec = data                                           # kept alive as long as llm
    return llm


def last_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[len(ids) - 1], dtype=np.float32)


def greedy(llm, ids: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(out[-1:])
    return out


def margins(logits: torch.Tensor) -> torch.Tensor:
    """The top logit minus the second, over the last dimension: how near a tie the greedy choice is."""
    top2 = torch.topk(logits, 2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def agreement(llm, model, prompts: list[list[int]], intervene=None, tokens: int = 32, tie: float = 1.0) -> dict:
    """llama.cpp (llm) against our model (under intervene) on prompts (token ids each): |Δ logit| at the last
    position (per prompt: the max over the vocabulary), top-token and greedy agreement. To tell a larger error
    from a larger scale or a nearer tie: the std of our last-position logits over the vocabulary and |Δ| in those
    units; our margin (top logit minus second) at each step of our greedy continuation, how many of those steps are
    within `tie` logits, and our margin at the first step where llama.cpp's continuation leaves ours."""
    deltas, stds, top, same, near, splits = [], [], 0, 0, 0, []
    for ids in prompts:
        with torch.no_grad():
            ours = model(torch.tensor([ids]), intervene=intervene)[0, -1].float().numpy()
            ours_gen = model.generate(torch.tensor([ids]), tokens, intervene=intervene)[0, len(ids):].tolist()
            steps = model(torch.tensor([ids + ours_gen[:-1]]), intervene=intervene)[0, len(ids) - 1:]
        theirs = last_logits(llm, ids)
        deltas.append(float(np.abs(theirs - ours).max()))
        stds.append(float(ours.std()))
        top += int(theirs.argmax() == ours.argmax())
        theirs_gen = greedy(llm, ids, tokens)
        same += int(theirs_gen == ours_gen)
        m = margins(steps.float())
        near += int((m < tie).sum())
        split = next((k for k, (a, b) in enumerate(zip(theirs_gen, ours_gen, strict=True)) if a != b), None)
        if split is not None:
            splits.append(round(float(m[split]), 3))
    rel = [d / s for d, s in zip(deltas, stds, strict=True)]
    return {"n_prompts": len(prompts), "max_abs_dlogit_median": float(np.median(deltas)),
            "max_abs_dlogit_max": max(deltas), "top_token_agree": top, "greedy_same": same, "tokens": tokens,
            "logit_std_median": float(np.median(stds)), "dlogit_over_std_median": float(np.median(rel)),
            "dlogit_over_std_max": max(rel), "tie": tie, "near_tie_steps": near,
            "margin_at_split": splits}


def main(argv=None) -> int:
    import ascale
    import export
    from cli import setup
    from gpt2 import GPT
    from loading import checkpoints
    from loading.tokenizer import get_tokenizer
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("run")
    p.add_argument("exported")
    p.add_argument("--model", help="the unexported GGUF file (unset: the run's model)")
    p.add_argument("--prompts", type=int, default=10)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--beta", type=float, default=1.0, help="the map's strength in our forward: export.py's --beta")
    p.add_argument("--json")
    args = p.parse_args(argv)
    file = f"{args.run}/{ascale.FILE}"
    meta = ascale.read_metadata(file)
    src = checkpoints.resolve(args.model or meta["model"])
    model, tok = GPT.from_pretrained(src), get_tokenizer(meta["model"])
    iv, _ = ascale.load(file, model)
    iv.beta = args.beta
    targs = argparse.Namespace(task=meta["task"], seed=int(meta["seed"]), unseen_lengths=False, domain=meta.get(
        "domain") or None, data=meta.get("data") or None, answers=meta.get("answers", "first-token"), validation=0.0)
    test = setup.load_prompts(targs, tok, False, model).test
    prompts, seen = [], set()
    for ids, at, group in zip(test.ids.tolist(), test.answer_pos.tolist(), (test.groups.tolist() if test.groups is
                                                                             not None else range(len(test.ids))),
                              strict=True):
        if group not in seen and len(prompts) < args.prompts:
            seen.add(group)
            prompts.append(ids[:at + 1])
    cvec = export.kind(iv) == "vectors"
    n_ctx = max(len(x) for x in prompts) + args.tokens + 8
    result = {"run": args.run, "model": src, "exported": args.exported,
              "unexported": agreement(open_llama(src, n_ctx), model, prompts, None, args.tokens),
              "exported_file": agreement(open_llama(src if cvec else args.exported, n_ctx,
                                                    args.exported if cvec else None), model, prompts, iv, args.tokens)}
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
