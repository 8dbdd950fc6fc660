"""
Steered generation judged from outside: held-out prompts continued without and with each position-free map at
several strengths, and with an instruction in the prompt, judged by VADER (sentiment), the unchanged model's and
another model's perplexity (fluency) and distinct-2 (repetition).

    python generate.py --model smollm2 --judge gemma3-270m --run runs/gen-activscalar --run runs/gen-steervec \\
        --betas 0.5,1,2 --instruction "Write a positive movie review." --out runs/generation-smollm2

Every strength of every way is tried on the validation prompts; each way's strength is chosen there (the one that
moves VADER's compound score furthest toward --target at a perplexity rise of at most --max-rise under the
unchanged model); the test prompts are then read once, at the chosen strengths. docs/generation.md says what each
number means; the run folder holds results.json, continuations.jsonl and frontier.png.
"""

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import ascale
import tasks
from cli import script, setup
from judging import compare, distinct, perplexity, vader
from loading import sentiment_data
from running import runfolder
from running.errors import UserError

NEUTRAL = ["I went to the cinema last night and", "The film begins with", "My friend told me about this movie, so",
           "This afternoon I watched", "The story is about a family that", "I have seen many films, and this one",
           "The director's new film", "We rented a movie for the weekend:", "The actors in this picture",
           "After the credits rolled, I"]   # openers that say nothing of a sentiment; half to each split
SIGN = {"positive": 1, "negative": -1}


def parse_args(argv=None) -> argparse.Namespace:
    p = script.Parser(description=__doc__.split("\n\n")[0].strip(), formatter_class=script.HelpFormatter)
    p.add_argument("--model", default="smollm2", help="the model that writes (and the first judge of fluency)")
    p.add_argument("--judge", help="another model that judges fluency, tokenizing the text itself (e.g. gemma3-270m)")
    p.add_argument("--run", action="append", default=[], metavar="FOLDER", help="a position-free run (train.py"
                   " --positions shared) of --model; repeat for several")
    p.add_argument("--betas", default="0.5,1,2", help="the strengths tried for every run, comma-separated")
    p.add_argument("--instruction", action="append", default=[], help="prompting: this line, then the prompt;"
                   " repeat for several (each is one strength of the way 'prompting')")
    p.add_argument("--target", default="positive", choices=list(SIGN), help="the sentiment steered toward")
    p.add_argument("--prompts", default="sentiment", help="sentiment (the first --words words of the sentiment"
                   " task's test reviews, and neutral openers) or a text file, one prompt a line")
    p.add_argument("--domain", default="movies", choices=list(sentiment_data.DOMAINS), help="sentiment: whose texts")
    p.add_argument("--words", type=int, default=6, help="sentiment: how many first words of a review make a prompt")
    p.add_argument("--n-prompts", type=int, default=20, help="prompts per split (validation, test); sentiment adds"
                   f" {len(NEUTRAL) // 2} neutral openers to each")
    p.add_argument("--tokens", type=int, default=32, help="tokens generated per continuation")
    p.add_argument("--samples", type=int, default=2, help="continuations sampled per prompt and way")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    p.add_argument("--max-rise", type=float, default=0.25, help="the choice: the largest perplexity rise allowed")
    p.add_argument("--seed", type=int, default=0, help="the sentiment split's seed (the runs' own) and the draws'")
    p.add_argument("--batch-size", type=int, default=8, help="continuations per pass of a judge")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, then cpu), cpu, cuda, cuda:1 or mps")
    p.add_argument("--out", help="run folder (unset: runs/generation-<model>/)")
    p.add_argument("--overwrite", action="store_true", help="replace the results already in the run folder")
    args = p.parse_args(argv)
    try:
        args.beta_list = [float(b) for b in args.betas.split(",") if b.strip()]
    except ValueError:
        p.error(f"--betas must be comma-separated numbers, got {args.betas!r}")
    for name in ("words", "n_prompts", "tokens", "samples", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not args.temperature > 0:
        p.error("--temperature must be > 0 (sampling)")
    if not args.run and not args.instruction:
        p.error("nothing to compare: pass --run FOLDER or --instruction TEXT")
    args.out = Path(args.out or f"runs/generation-{Path(args.model).name}")
    args.revision, args.device_map, args.dtype = None, None, "float32"
    return args


def load_runs(args, model) -> dict:
    """label -> the run's intervention (position-free), its method the label; UserError for a position-tied one."""
    ivs = {}
    for folder in args.run:
        path = Path(folder) / "intervention.safetensors"
        if not path.is_file():
            raise UserError(f"{folder} holds no intervention.safetensors; train one with train.py --positions shared")
        iv, meta = ascale.load(path, model)
        if not iv.shared:
            raise UserError(f"{folder} is position-tied (trained for its prompts' positions); generation needs a"
                            " position-free run: train.py --positions shared")
        if meta.get("seed") not in (None, "", str(args.seed)) and args.prompts == "sentiment":
            raise UserError(f"{folder} was trained with --seed {meta['seed']}; pass --seed {meta['seed']} so that its"
                            " test reviews are the prompts")
        label = iv.method if iv.method not in ivs else f"{iv.method} ({Path(folder).name})"
        ivs[label] = iv.eval()
    return ivs


def prompt_splits(args, tok) -> dict[str, list[str]]:
    """{"validation": [...], "test": [...]}: --n-prompts each, drawn without overlap."""
    rng = random.Random(f"generation/{args.seed}")
    if args.prompts == "sentiment":
        _, test, _ = tasks.sentiment_items(tok, tasks.Options(seed=args.seed, domain=args.domain), [])
        texts = sorted({" ".join(it.parts[1].split()[:args.words]) for it in test})   # the runs never saw these
        rng.shuffle(texts)
        if len(texts) < 2 * args.n_prompts:
            raise UserError(f"only {len(texts)} distinct test openings; pass --n-prompts {len(texts) // 2} or less")
        half = len(NEUTRAL) // 2
        return {"validation": texts[:args.n_prompts] + NEUTRAL[:half],
                "test": texts[args.n_prompts:2 * args.n_prompts] + NEUTRAL[half:2 * half]}
    path = Path(args.prompts)
    if not path.is_file():
        raise UserError(f"--prompts {args.prompts}: no such file (or pass sentiment)")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(lines) < 2:
        raise UserError(f"{path} holds {len(lines)} prompt(s); it needs at least 2 (one per split)")
    rng.shuffle(lines)
    n = min(args.n_prompts, len(lines) // 2)
    return {"validation": lines[:n], "test": lines[n:2 * n]}


@torch.no_grad()
def continue_prompts(model, tok, prompts: list[str], args, iv=None, instruction: str | None = None,
                     seed: int = 0) -> list[list[str]]:
    """args.samples sampled continuations of each prompt ([P][S] texts, cut at the end-of-text token), the prompt
    preceded by `instruction` and a newline where given, under `iv` where given. Prompts of one token length are
    generated together (no padding); the draws are seeded by (seed, length)."""
    head = [tok.bos_token] if getattr(tok, "bos_token", None) is not None else []
    ids = [head + tok.encode(f"{instruction}\n{p}" if instruction else p) for p in prompts]
    out: list[list[str]] = [[] for _ in prompts]
    device = model.lm_head.weight.device
    for T in sorted({len(x) for x in ids}):
        rows = [i for i, x in enumerate(ids) if len(x) == T]
        batch = torch.tensor([ids[i] for i in rows for _ in range(args.samples)], device=device)
        g = torch.Generator(device=device).manual_seed(seed * 100_003 + T)
        new = model.generate(batch, args.tokens, intervene=iv, temperature=args.temperature, generator=g)[:, T:]
        for r, tokens in enumerate(new.tolist()):
            if tok.eot_token in tokens:
                tokens = tokens[:tokens.index(tok.eot_token)]
            out[rows[r // args.samples]].append(tok.decode(tokens))
    return out


def judge_all(texts: list[list[str]], prompts: list[str], judges: dict, analyser, batch_size: int) -> dict:
    """The judges' verdicts on [P][S] continuations of prompts: compound, distinct2, nll/<judge>, n/<judge> (P, S)."""
    P, S = len(texts), len(texts[0])
    flat = [t for row in texts for t in row]
    flat_prompts = [p for p in prompts for _ in range(S)]
    out = {"compound": np.array(vader.compound(analyser, flat)).reshape(P, S),
           "distinct2": np.array([distinct.distinct_n(t, 2) for t in flat]).reshape(P, S)}
    for name, (model, tok) in judges.items():
        scored = perplexity.continuation_nll(model, tok, flat_prompts, flat, batch_size)
        out[f"nll/{name}"] = np.array([s for s, _ in scored]).reshape(P, S)
        out[f"n/{name}"] = np.array([n for _, n in scored]).reshape(P, S)
    return out


def ways(args, ivs: dict, chosen: dict | None = None) -> list[tuple[str, str, object, float | None, str | None]]:
    """(way, strength, intervention, beta, instruction) of every generation to make: every strength of every way,
    or with `chosen` only the chosen ones; the unsteered model first."""
    todo = [("unsteered", "-", None, None, None)]
    for label, iv in ivs.items():
        todo += [(label, f"{b:g}", iv, b, None) for b in args.beta_list]
    todo += [("prompting", text, None, None, text) for text in args.instruction]
    if chosen is not None:
        todo = [w for w in todo if w[0] == "unsteered" or chosen.get(w[0]) == w[1]]
    return todo


def sweep(model, tok, prompts, todo, judges, analyser, args, split: str, writer) -> dict:
    """Generate and judge every way of `todo` on `prompts`: {way: {strength: summary}} against the unsteered."""
    judged, texts = {}, {}
    for way, strength, iv, beta, instruction in tqdm(todo, desc=f"generation ({split})", unit="way", leave=False):
        if iv is not None:
            iv.beta = beta
        texts[way, strength] = continue_prompts(model, tok, prompts, args, iv, instruction, args.seed)
        judged[way, strength] = judge_all(texts[way, strength], prompts, judges, analyser, args.batch_size)
    base = judged["unsteered", "-"]
    out: dict = {}
    for (way, strength), verdict in judged.items():
        out.setdefault(way, {})[strength] = compare.summarize(verdict, base)
        for i, p in enumerate(prompts):
            for s, text in enumerate(texts[way, strength][i]):
                writer.append({"split": split, "way": way, "strength": strength, "prompt": p, "sample": s,
                               "continuation": text, "compound": float(verdict["compound"][i, s])})
    return out


def print_table(results: dict, judges: list[str], split: str) -> None:
    rows = [(way, s, m) for way, by in results.items() for s, m in by.items()]
    print(f"\n{split}, {rows[0][2]['prompts']} prompts (95 % intervals over prompts):")
    for way, s, m in rows:
        rises = "  ".join(f"ppl {name} {m[f'ppl/{name}']:.1f} ({m[f'rise/{name}']:+.0%}"
                          f" [{m[f'rise_ci/{name}'][0]:+.0%}, {m[f'rise_ci/{name}'][1]:+.0%}])" for name in judges)
        print(f"  {way:<12} {s[:30]:<30} compound {m['compound']:+.3f}  Δ {m['delta_compound']:+.3f}"
              f" [{m['delta_compound_ci'][0]:+.3f}, {m['delta_compound_ci'][1]:+.3f}]  {rises}"
              f"  distinct-2 {m['distinct2']:.2f}")


def show_examples(rows: list[dict], prompts: list[str]) -> list[dict]:
    """The first sample of each of `prompts` (test) under every way, printed one under the other and returned."""
    print(f"\n{len(prompts)} test prompts, the first sample of each way (before: unsteered; after: the chosen"
          " strengths):")
    out = []
    for p in prompts:
        print(f"\n{p!r}")
        for r in rows:
            if r["split"] == "test" and r["prompt"] == p and r["sample"] == 0:
                label = r["way"] + ("" if r["strength"] == "-" else f" at {r['strength'][:24]}")
                print(f"  {label:<36} {r['compound']:+.2f} {r['continuation']!r}")
                out.append({k: r[k] for k in ("prompt", "way", "strength", "continuation", "compound")})
    return out


def generate(args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from figures import frontier, report
    model, tok = setup.load_model(args)
    judges = {Path(args.model).name: (model, tok)}
    if args.judge:
        jargs = argparse.Namespace(**{**vars(args), "model": args.judge})
        judges[Path(args.judge).name] = setup.load_model(jargs)
    ivs = load_runs(args, model)
    analyser = vader.analyzer()
    splits = prompt_splits(args, tok)
    first, sign = Path(args.model).name, SIGN[args.target]
    rows: list[dict] = []
    with runfolder.RunFolder(args.out, replaces=("results.json",), overwrite=args.overwrite,
                             what="generation results") as run:
        validation = sweep(model, tok, splits["validation"], ways(args, ivs), judges, analyser, args, "validation",
                           rows)
        print_table(validation, list(judges), "validation")
        chosen = {way: compare.choose(by, sign, first, args.max_rise) for way, by in validation.items()
                  if way != "unsteered"}
        print("chosen on the validation prompts (largest move toward the target at a perplexity rise of at most"
              f" {args.max_rise:.0%} under {first}): " + ", ".join(f"{w}: {s}" for w, s in chosen.items()))
        test = sweep(model, tok, splits["test"], ways(args, ivs, chosen), judges, analyser, args, "test", rows)
        print_table(test, list(judges), "test")
        examples = show_examples(rows, splits["test"][:6])
        settings = {k: v for k, v in vars(args).items() if k not in ("out", "overwrite", "beta_list")}
        result = {"settings": settings, "prompts": splits, "judges": list(judges), "validation": validation,
                  "chosen": chosen, "test": test, "examples": examples}
        staged = run.staged(args.out)
        runfolder.write_atomically(staged / "results.json", json.dumps(result, indent=1).encode())
        runfolder.write_atomically(staged / "continuations.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
        report.save_figure(frontier.plot(validation, test, first, args.max_rise, args.target), staged / "frontier.png")
    print(f"wrote {args.out}/results.json, continuations.jsonl, frontier.png")


def main(argv=None) -> int:
    return script.run(generate, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
