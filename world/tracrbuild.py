"""
Compiled transformers with a circuit known by construction (docs/results-groundtruth.md): RASP programs compiled
to weights by tracr (Lindner et al. 2023, "Tracr: Compiled Transformers as a Laboratory for Interpretability"),
written as checkpoints that gpt2.GPT loads (the `tracr` family: no norms, ReLU MLPs), in models/tracr/NAME/.

    python -m world.tracrbuild                  rebuild every program in models/tracr/ (the committed files)
    python -m world.tracrbuild --only hist --out /tmp/tracr     one program, elsewhere
(tests/test_tracrbuild.py rebuilds each in memory and compares it with the committed files.)

tracr, jax and dm-haiku are an optional dependency of this script alone (`pip install tracr-pypi==1.0.0 jax
dm-haiku`); nothing else in the project imports it. Each program is compiled causal (tracr's `causal=True`), over
a vocabulary of 3 tokens and LENGTH tokens after tracr's BOS. What a folder holds:

    config.json        our GPTConfig fields ("gpt"), the program (its RASP source, or tracr's lib function),
                       the vocabulary, the length, the token and output names in id order
    model.safetensors  the weights in our names; lm_head is the projection of the residual onto the output space
    reference.json     every input of the domain (3^LENGTH sequences) and tracr's own logits for it, at every
                       position: the parity test (tests/test_compiled.py) needs no jax
    task.json          the contrast task and its ground truth (below)

The task. Prompts are inputs x; each is paired with every x' that differs from it at the program's contrast
position only and whose output at the last position differs (and passes the program's filter, if it has one).
correct = the program's output on x, wrong = its output on x': steering x to `wrong` is steering it as the
contrast does. The ground truth of a pair: every component (a head, or an MLP, at a position) that computes a RASP
expression whose value at that position (a) differs between x and x' and (b) is read on the way to the output at
the last position, on x or on x' (`needed`: back from the output, a Map reads its own position, an Aggregate or a
SelectorWidth the positions its selector selects, and its queries at its own). Which block computes which
expression is read from tracr's graph (`components`). A location is true when it is on the path of at least half
of the pairs (the share of each is kept, `share`).
"""

import argparse
import inspect
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "models" / "tracr"
VOCAB = (0, 1, 2)
LENGTH = 5           # tokens after BOS: 3^5 = 243 inputs, 6 positions
TOLERANCE = 1e-5     # parity: our logits within this of tracr's


# ----------------------------------------------------------------------------- the programs


def prev_token():
    """The token before each position: a Map (MLP) makes i - 1, a head reads the token there."""
    from tracr.rasp import rasp
    prev = rasp.categorical(rasp.Map(lambda i: i - 1, rasp.indices)).named("prev_index")
    return rasp.categorical(rasp.Aggregate(rasp.Select(rasp.indices, prev, rasp.Comparison.EQ),
                                           rasp.tokens)).named("prev_token")


def prev_sum():
    """Two branches: the token 1 back and the token 2 back (two heads of one layer), added mod 3 (an MLP)."""
    from tracr.rasp import rasp
    back1 = rasp.categorical(rasp.Map(lambda i: i - 1, rasp.indices)).named("index_1_back")
    back2 = rasp.categorical(rasp.Map(lambda i: i - 2, rasp.indices)).named("index_2_back")
    one = rasp.categorical(rasp.Aggregate(rasp.Select(rasp.indices, back1, rasp.Comparison.EQ),
                                          rasp.tokens)).named("token_1_back")
    two = rasp.categorical(rasp.Aggregate(rasp.Select(rasp.indices, back2, rasp.Comparison.EQ),
                                          rasp.tokens)).named("token_2_back")
    return rasp.categorical(rasp.SequenceMap(lambda a, b: (a + b) % 3, one, two)).named("sum_mod_3")


def hist():
    """tracr's lib.make_hist(): how often each position's token occurs (up to it: causal)."""
    from tracr.compiler import lib
    return lib.make_hist()


def prev_plus_hist():
    """Two branches of different depth: the previous token (an MLP, then a head) and the histogram (a head and an
    MLP, tracr's SelectorWidth), added mod 3."""
    from tracr.rasp import rasp
    prev = rasp.categorical(rasp.Map(lambda i: i - 1, rasp.indices)).named("prev_index")
    token = rasp.categorical(rasp.Aggregate(rasp.Select(rasp.indices, prev, rasp.Comparison.EQ),
                                            rasp.tokens)).named("prev_token")
    count = rasp.categorical(rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens,
                                                            rasp.Comparison.EQ))).named("count")
    return rasp.categorical(rasp.SequenceMap(lambda a, c: (a + c) % 3, token, count)).named("prev_plus_count")


def two_hops():
    """A path across three positions: an MLP maps every token (f), a head copies f from the previous position
    (hop1), a second head copies hop1 from the previous position (hop2 = f of the token two back); an MLP adds
    another map of the token at the own position (g), mod 3. The contrast (the token two before the last) reaches
    the answer through layer 0's MLP at its own position, layer 1's head one position later and layer 2's head and
    MLP at the last; the same blocks everywhere else, and g, are active off the path."""
    from tracr.rasp import rasp
    prev = rasp.categorical(rasp.Map(lambda i: i - 1, rasp.indices)).named("prev_index")
    f = rasp.categorical(rasp.Map(lambda t: (t + 1) % 3, rasp.tokens)).named("f")
    g = rasp.categorical(rasp.Map(lambda t: (2 * t) % 3, rasp.tokens)).named("g")
    hop1 = rasp.categorical(rasp.Aggregate(rasp.Select(rasp.indices, prev, rasp.Comparison.EQ), f)).named("hop1")
    hop2 = rasp.categorical(rasp.Aggregate(rasp.Select(rasp.indices, prev, rasp.Comparison.EQ),
                                           hop1)).named("hop2")
    return rasp.categorical(rasp.SequenceMap(lambda a, b: (a + b) % 3, hop2, g)).named("hop2_plus_g")


def first_plus_prev():
    """Two heads of one layer: one copies f of the first token (its query, the constant index 0, an MLP), the other
    g of the previous token; an MLP adds them mod 3. The contrast (the first token) reaches the answer through
    layer 0's MLP at the first position, the first-token head and the MLP at the last; the previous-token head at
    the last position is active off the path, and the first-token head at every other position carries the
    changed value to where nothing reads it."""
    from tracr.rasp import rasp
    zero = rasp.categorical(rasp.Map(lambda i: 0, rasp.indices)).named("zero")
    prev = rasp.categorical(rasp.Map(lambda i: i - 1, rasp.indices)).named("prev_index")
    f = rasp.categorical(rasp.Map(lambda t: (t + 1) % 3, rasp.tokens)).named("f")
    g = rasp.categorical(rasp.Map(lambda t: (2 * t) % 3, rasp.tokens)).named("g")
    first = rasp.categorical(rasp.Aggregate(rasp.Select(rasp.indices, zero, rasp.Comparison.EQ),
                                            f)).named("first_f")
    before = rasp.categorical(rasp.Aggregate(rasp.Select(rasp.indices, prev, rasp.Comparison.EQ),
                                             g)).named("prev_g")
    return rasp.categorical(rasp.SequenceMap(lambda a, b: (a + b) % 3, first, before)).named("first_plus_prev")


def same_count(x, y, program_fn) -> bool:
    """prev_plus_hist's filter: the histogram at the last position is the same on both inputs, so that the
    contrast reaches the output through the previous-token branch only."""
    return hist_at_last(x) == hist_at_last(y)


def hist_at_last(x) -> int:
    return sum(t == x[-1] for t in x)


# name -> (builder, where it comes from, contrast position (RASP index), filter of pairs or None)
PROGRAMS = {
    "prev_token": (prev_token, None, LENGTH - 2, None),
    "prev_sum": (prev_sum, None, LENGTH - 2, None),
    "hist": (hist, {"lib": "make_hist", "args": {}}, 0, None),
    "prev_plus_hist": (prev_plus_hist, None, LENGTH - 2, same_count),
    "two_hops": (two_hops, None, LENGTH - 3, None),
    "first_plus_prev": (first_plus_prev, None, 0, None),
}


# ----------------------------------------------------------------------------- compiling, and which block is which


def compile_program(program):
    """tracr's compile_rasp_to_model, step by step (compiling.py), to keep the graph: (assembled model, graph,
    sink, craft model)."""
    from tracr.compiler import (
        basis_inference,
        compiling,
        craft_graph_to_model,
        craft_model_to_transformer,
        expr_to_craft_graph,
        rasp_to_graph,
    )
    from tracr.craft import bases
    from tracr.rasp import rasp
    extracted = rasp_to_graph.extract_rasp_graph(program)
    graph, sources, sink = extracted.graph, extracted.sources, extracted.sink
    basis_inference.infer_bases(graph, sink, set(VOCAB), LENGTH)
    expr_to_craft_graph.add_craft_components_to_rasp_graph(
        graph, bos_dir=bases.BasisDirection(rasp.tokens.label, compiling.COMPILER_BOS), mlp_exactness=100)
    craft = craft_graph_to_model.craft_graph_to_model(graph, sources)
    model = craft_model_to_transformer.craft_model_to_transformer(
        craft_model=craft, graph=graph, sink=sink, max_seq_len=LENGTH, compiler_bos=compiling.COMPILER_BOS,
        compiler_pad=compiling.COMPILER_PAD, causal=True)
    return model, graph, sink, craft


def components(graph, craft) -> dict[str, list[list]]:
    """Which locations compute each RASP expression: {label: [["head", layer, head] or ["mlp_out", layer], ...]}.
    Blocks take layers as tracr's assemble.py gives them (the next free attention or MLP half-layer, in order);
    heads are found by identity among each attention layer's heads, in the order the model stacks them; an MLP
    block that tracr combined from several is matched by its hidden directions."""
    from tracr.compiler import nodes
    from tracr.craft import transformers
    heads, mlps = {}, []                     # id(head) -> label; (hidden directions, label)
    for label, node in graph.nodes.items():
        block = node.get(nodes.MODEL_BLOCK)
        if block is None:
            continue
        for part in block.blocks if isinstance(block, transformers.SeriesWithResiduals) else [block]:
            if isinstance(part, transformers.MLP):
                mlps.append((set(part.fst.output_space.basis), label))
            else:
                heads.update({id(head): label for head in part.as_multi().heads()})
    out, slots = {}, ((layer, kind) for layer in itertools.count() for kind in ("attn", "mlp"))
    for block in craft.blocks:
        kind = "mlp" if isinstance(block, transformers.MLP) else "attn"
        layer = next(layer for layer, k in slots if k == kind)
        if kind == "mlp":
            hidden = set(block.fst.output_space.basis)
            for label in {label for dirs, label in mlps if dirs and dirs <= hidden}:
                out.setdefault(label, []).append(["mlp_out", layer])
        else:
            for h, head in enumerate(block.as_multi().heads()):
                out.setdefault(heads[id(head)], []).append(["head", layer, h])
    return out


# ----------------------------------------------------------------------------- the ground truth


def evaluate_all(program, xs) -> dict:
    """Every expression of the program on xs, with tracr's causal evaluator: {label: values, or the selector
    matrix [query][key]}."""
    from tracr.rasp import causal_eval
    values, stack = {}, [program]
    while stack:
        expr = stack.pop()
        if expr.label in values:
            continue
        values[expr.label] = causal_eval.evaluate(expr, xs)
        stack.extend(expr.children)
    return values


def needed(program, values, last: int) -> set:
    """The (label, position) pairs the output at `last` reads, back through the graph (the module docstring)."""
    from tracr.rasp import rasp
    seen, stack = set(), [(program, last)]
    while stack:
        expr, p = stack.pop()
        if (expr.label, p) in seen:
            continue
        seen.add((expr.label, p))
        if isinstance(expr, (rasp.Aggregate, rasp.SelectorWidth)):
            sel = expr.selector
            keys = [k for k, on in enumerate(values[sel.label][p]) if on]
            stack.append((sel.queries, p))
            stack.extend((sel.keys, k) for k in keys)
            if isinstance(expr, rasp.Aggregate):
                stack.extend((expr.sop, k) for k in keys)
        elif isinstance(expr, (rasp.Map, rasp.SequenceMap)):
            stack.extend((child, p) for child in expr.children)
    return seen


def path(program, x, y, where: dict) -> set:
    """The locations on the contrast's path for the pair (x, y): ("head", layer, position, head) or ("mlp_out",
    layer, position), positions counted with tracr's BOS at 0."""
    vx, vy = evaluate_all(program, list(x)), evaluate_all(program, list(y))
    reads = needed(program, vx, len(x) - 1) | needed(program, vy, len(x) - 1)
    out = set()
    for label, p in reads:
        if label in where and vx[label][p] != vy[label][p]:
            for loc in where[label]:
                out.add((loc[0], loc[1], p + 1, *loc[2:]))
    return out


def ground_truth(program, outputs: dict, contrast: int, keep) -> tuple[list, dict]:
    """The task's pairs [(x, x')] and each location's share of pairs on whose path it is."""
    pairs = [(x, y) for x in outputs for v in VOCAB if v != x[contrast]
             for y in [x[:contrast] + (v,) + x[contrast + 1:]]
             if outputs[x] != outputs[y] and (keep is None or keep(x, y, program))]
    where = components_of[program.label]
    counts: dict = {}
    for x, y in pairs:
        for loc in path(program, x, y, where):
            counts[loc] = counts.get(loc, 0) + 1
    return pairs, {loc: n / len(pairs) for loc, n in sorted(counts.items())}


components_of: dict = {}  # program label -> components(...), filled by build


# ----------------------------------------------------------------------------- weights in our names


def tracr_logits(model, ids: np.ndarray) -> np.ndarray:
    """tracr's own forward on token ids (N, T), unembedded without the argmax: (N, T, outputs)."""
    import haiku as hk
    import jax.numpy as jnp

    @hk.without_apply_rng
    @hk.transform
    def forward(tokens):
        compiled = model.get_compiled_model()
        out = compiled(tokens, use_dropout=False)
        return compiled.unembed(out.transformer_output.output, use_unembed_argmax=False)
    return np.asarray(forward.apply(model.params, jnp.asarray(ids)), dtype=np.float32)


def state_dict(model, sink_label: str) -> tuple[dict, dict]:
    """(GPTConfig fields, our state dict) of an assembled tracr model. Haiku's Linear computes x·w + b (w is (in,
    out)); ours x·Wᵀ + b: every matrix is transposed; q, k, v are stacked into c_attn as GPT-2 stores them."""
    p, cfg = {k: {n: np.asarray(a, dtype=np.float32) for n, a in v.items()} for k, v in model.params.items()}, \
        model.model_config
    t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32, order="C"))  # noqa: E731  (a writable copy)
    state = {"wte.weight": t(p["token_embed"]["embeddings"]), "wpe.weight": t(p["pos_embed"]["embeddings"])}
    for layer in range(cfg.num_layers):
        a, m = f"transformer/layer_{layer}/attn/", f"transformer/layer_{layer}/mlp/"
        state[f"h.{layer}.attn.c_attn.weight"] = t(np.concatenate([p[a + n]["w"].T for n in ("query", "key", "value")]))
        state[f"h.{layer}.attn.c_attn.bias"] = t(np.concatenate([p[a + n]["b"] for n in ("query", "key", "value")]))
        state[f"h.{layer}.attn.c_proj.weight"], state[f"h.{layer}.attn.c_proj.bias"] = \
            t(p[a + "linear"]["w"].T), t(p[a + "linear"]["b"])
        state[f"h.{layer}.mlp.c_fc.weight"], state[f"h.{layer}.mlp.c_fc.bias"] = \
            t(p[m + "linear_1"]["w"].T), t(p[m + "linear_1"]["b"])
        state[f"h.{layer}.mlp.c_proj.weight"], state[f"h.{layer}.mlp.c_proj.bias"] = \
            t(p[m + "linear_2"]["w"].T), t(p[m + "linear_2"]["b"])
    outputs = sorted(model.output_encoder.encoding_map, key=model.output_encoder.encoding_map.get)
    head = np.zeros((len(outputs), len(model.residual_labels)), dtype=np.float32)   # (outputs, D): a projection
    for j, value in enumerate(outputs):
        head[j, model.residual_labels.index(f"{sink_label}:{value}")] = 1.0
    state["lm_head.weight"] = t(head)
    fields = dict(model_type="tracr", vocab_size=len(model.input_encoder.encoding_map), n_out=len(outputs),
                  n_ctx=LENGTH + 1, n_layer=cfg.num_layers, n_head=cfg.num_heads, n_embd=len(model.residual_labels),
                  head_dim=cfg.key_size, n_inner=cfg.mlp_hidden_size, no_norm=True, relu=True,
                  tie_embeddings=False, attn_bias=True, proj_bias=True, mlp_bias=True)
    return fields, state


# ----------------------------------------------------------------------------- one program, written


def build(name: str) -> dict:
    """Compile one program and make everything its folder holds: {file name: contents}."""
    from tracr.compiler import compiling
    from tracr.rasp import causal_eval

    make, source, contrast, keep = PROGRAMS[name]
    program = make()
    model, graph, sink, craft = compile_program(program)
    components_of[program.label] = where = components(graph, craft)
    enc = model.input_encoder.encoding_map
    xs = list(itertools.product(VOCAB, repeat=LENGTH))
    ids = np.array([[enc[compiling.COMPILER_BOS]] + [enc[v] for v in x] for x in xs])          # (N, T)
    logits = tracr_logits(model, ids)                                                           # (N, T, outputs)
    fields, state = state_dict(model, program.label)
    tokens = sorted(enc, key=enc.get)
    outputs = sorted(model.output_encoder.encoding_map, key=model.output_encoder.encoding_map.get)
    answers = {x: causal_eval.evaluate(program, list(x))[-1] for x in xs}
    wrong = [x for i, x in enumerate(xs) if outputs[int(logits[i, -1].argmax())] != answers[x]]
    if wrong:
        raise SystemExit(f"{name}: the compiled model's output differs from the program's on {len(wrong)} inputs,"
                         f" e.g. {wrong[0]}")
    pairs, share = ground_truth(program, answers, contrast, keep)
    out_id = model.output_encoder.encoding_map
    config = {"model_type": "tracr", "gpt": fields, "name": name,
              "program": source or {"source": inspect.getsource(make)}, "output": program.label,
              "vocabulary": list(VOCAB), "length": LENGTH, "causal": True, "mlp_exactness": 100,
              "tokens": [str(t) for t in tokens], "outputs": [str(o) for o in outputs],
              "components": where, "built_with": "tracr-pypi 1.0.0 (world/tracrbuild.py)"}
    reference = {"ids": ids.tolist(), "logits": np.round(logits.astype(np.float64), 7).tolist()}
    task = {"contrast_position": contrast + 1, "filter": inspect.getsource(keep) if keep else None,
            "pairs": [{"ids": ids[xs.index(x)].tolist(), "correct": out_id[answers[x]], "wrong": out_id[answers[y]],
                       "input": list(x), "contrast": list(y)} for x, y in pairs],
            "share": [[*loc, s] for loc, s in share.items()],
            "truth": [list(loc) for loc, s in share.items() if s >= 0.5]}
    return {"config.json": config, "model.safetensors": state, "reference.json": reference, "task.json": task}


def parity(folder: Path) -> float:
    """The largest |our logit - tracr's| over every input of the domain and every position, from the files."""
    sys.path.insert(0, str(ROOT))
    from gpt2 import GPT
    model = GPT.from_pretrained(str(folder))
    ref = json.loads((folder / "reference.json").read_text())
    with torch.no_grad():
        ours = model(torch.tensor(ref["ids"]))
    return float((ours - torch.tensor(ref["logits"])).abs().max())


def write(files: dict, folder: Path) -> None:
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if name.endswith(".safetensors"):
            save_file(content, str(folder / name))
        else:
            (folder / name).write_text(json.dumps(content, indent=1 if name == "config.json" else None) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--out", default=str(OUT), help=f"folder of the programs' folders (default {OUT})")
    p.add_argument("--only", nargs="*", choices=list(PROGRAMS), help="these programs only")
    args = p.parse_args(argv)
    for name in args.only or PROGRAMS:
        files = build(name)
        write(files, Path(args.out) / name)
        err = parity(Path(args.out) / name)
        task = files["task.json"]
        print(f"{name}: {files['config.json']['gpt']['n_layer']} layers, {len(task['pairs'])} pairs, truth"
              f" {task['truth']}; parity {err:.2e}")
        if err > TOLERANCE:
            raise SystemExit(f"{name}: our logits differ from tracr's by {err:.2e} > {TOLERANCE:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
