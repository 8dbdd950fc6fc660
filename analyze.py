"""
Check and explore learned interventions: is the heatmap right about where the behaviour is, what
does minimality cost, and what does the strength dial do?

    python analyze.py knockout runs/ccc-toyworld-activscalar/intervention.safetensors
    python analyze.py lambda --model models/toyworld --task ccc
    python analyze.py beta runs/ccc-toyworld-activscalar/intervention.safetensors
    python analyze.py parts runs/ccc-toyworld-scaleshift/intervention.safetensors
    python analyze.py compare runs/ccc-toyworld-activscalar runs/ccc-toyworld-steervec
    python analyze.py agree runs/A/intervention.safetensors runs/B/intervention.safetensors

knockout  A reference map that does not depend on the objective: every location (site, layer,
          position[, head]) is switched off in turn (α = -1 there, nothing else) over the training
          prompts (as many as knockout.KNOCKOUT_FLOPS affords, evenly spread), and the change of the
          mean ℓ(A) - ℓ(B) is recorded, answer A against answer B on every prompt (knockout.knockout),
          over all of them and over each side's (the prompts whose original model preferred A, the others).
          Compared with the intervention's β·α: Spearman of |β·α| and |effect|, the share of large-effect
          locations that are active, and sign agreement toward the answer most of the prompts target
          (knockout.agreement), overall and against each side's map ("per_side").
          Writes knockout.png beside the heatmap and a "knockout" entry into the run's metrics.json.
          `train.py --knockout` does the same right after training. --knockout-mode mean: mean ablation,
          each activation replaced by its mean over the training prompts there (knockout-mean.png; no
          sign agreement: a scalar moves h toward 0, not toward the mean).
lambda    The paper's trade-off: each method trained at several λM, flip rate and KL against active
          locations. Writes runs/<task>-<model>-lambda/: one run folder per (method, λM), sweep.json
          and tradeoff.png.
beta      The strength dial: a saved intervention evaluated at several β (0 is the original model,
          1 as trained, -1 reversed), flip rate and KL against β. Writes beta.json and beta.png
          beside the intervention file.
parts     For a ScaleShift, h·(1 + α) + v: does it scale or turn? At each kept location, the mean ‖h‖
          over the training prompts, the change's size as a share of ‖h‖ and the share of the change
          that is orthogonal to h; then the test flip rate with v set to 0 and with α set to 0.
compare   Runs evaluated on the same test prompts, each against the first, from their per-prompt test
          outcomes (metrics.json test.per_prompt, see per_prompt): the difference of flip rate, balanced
          flip rate (where the runs record each prompt's side) and KL with paired-bootstrap intervals (over
          groups of prompts where recorded), McNemar's exact test of the paired flips (all prompts and
          each side), Holm's adjustment over the table (docs/method.md, "Intervals and comparisons").
          Runs on different prompts are refused. Writes nothing unless --json FILE.
agree     Two saved maps of one model, method and sites, from other seeds or splits (e.g. two `--runs 5`
          stable maps): the units each moves noticeably (effect >= the method's floor, as `active`), how many
          both do, Jaccard and the overlap share |A∩B| / min(|A|, |B|) beside random sets of the same sizes
          (selection.chance), and on the shared units how many have the same sign. Writes nothing.
slots     A saved position-tied map on a template task (sentiment: prefix · text · suffix, the answer read at
          the last slot): its parameters set to 0 in one group of slots at a time (the prefix's, the text's,
          the suffix's but the last, the last), the test rates of what is left (flip, balanced flip, each
          side) and McNemar's exact test of its flips against the whole map's. Writes nothing.
"""

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

import ascale
import evaluate
import metrics
import selection
import tasks
import train
from cli import script, setup
from figures import report
from gpt2 import UserError
from running import runfolder, stats

# ----------------------------------------------------------------------------- knockout


def run_knockout(args) -> None:
    ascale.read_metadata(args.file)          # an intervention file, before its folder is locked
    folder = Path(args.file).parent
    with runfolder.RunFolder(folder) as writing:   # knockout.png and the new metrics.json go in together
        targs = evaluate.parse_args([args.file, *(["--model", args.model] if args.model else [])])
        model, _, iv, task, batches = setup.open_saved(targs)
        if iv.shared:
            raise UserError(f"{args.file} is position-free (--positions shared): one parameter for every position,"
                            " so there is no map over positions to check against a knockout map")
        if not iv.tied_to_positions and not task.train.fixed_length:
            raise UserError(f"{args.file} is a {iv.method} trained on prompts of several lengths; the knockout map"
                            f" needs one length or a slot map (train it with --method all, or use"
                            f" {'/'.join(train.tied())})")
        name = f"{task.name} · {Path(targs.model).name}"
        staged = writing.staged(folder)
        if (folder / "metrics.json").is_file():  # knockout_check adds its entry to the staged copy
            runfolder.write_atomically(staged / "metrics.json", (folder / "metrics.json").read_bytes())
        report.knockout_check(model, batches["train"], task.train.labels, {iv.method: (iv, staged)}, name,
                              mode=args.knockout_mode)
    what = "knockout" if args.knockout_mode == "zero" else f"knockout_{args.knockout_mode}"
    print(f"wrote {folder / what.replace('_', '-')}.png" + (f" and the {what} entry of metrics.json"
                                               if (folder / "metrics.json").is_file() else ""))


# ----------------------------------------------------------------------------- λM sweep


def run_lambda(args) -> None:
    values = parse_floats(args.lambda_m, "--lambda-m")
    if any(v < 0 for v in values):
        raise UserError("--lambda-m values must be >= 0")
    methods = [m.strip() for m in args.methods.split(",")]
    if unknown := [m for m in methods if m not in learned()]:
        raise UserError(f"unknown method {unknown[0]!r}; choose from {', '.join(learned())}")
    out = Path(args.out or f"runs/{Path(args.task).stem}-{Path(args.model).name}-lambda")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; name a folder for the sweep (it is created if missing)")
    rows = []
    # Locked: one sweep at a time in a folder; each run locks its own subfolder (train.py).
    with runfolder.RunFolder(out, replaces=("sweep.json", "tradeoff.png"), overwrite=args.overwrite,
                             what="a sweep") as writing:
        for method, value in ((m, v) for m in methods for v in values):
            folder = out / f"{method}-lm{value:g}"
            argv = ["--model", args.model, "--task", args.task, "--method", method, "--lambda-m", str(value),
                    "--seed", str(args.seed), "--out", str(folder), *args.train_args]
            print(f"\n== {method}, lambda_m {value:g}")
            if code := train.main(argv + (["--overwrite"] if args.overwrite else [])):
                raise SystemExit(code)  # train.py has printed its one-line error
            m = json.loads((folder / "metrics.json").read_text())
            rows.append({"method": method, "lambda_m": value, "n_active": m["n_active"], "n_params": m["n_params"],
                         "l1": m["l1"], **per_split(m, ("flip_rate", "kl"))})
            if m["interrupted"]:  # Ctrl-C or SIGTERM stopped that run: the sweep stops with it
                print(f"stopped by {m.get('stopped_by') or 'Ctrl-C'}: the sweep keeps the {len(rows)} runs so far")
                break
        staged = writing.staged(out)
        report.write_json(staged / "sweep.json", {"rows": rows, "command": " ".join(sys.argv)})
        report.plot_curves(staged / "tradeoff.png", rows, "n_active", "active locations (log scale); points labelled"
                           " with λM", "lambda_m", f"What minimality costs · {Path(args.task).stem} ·"
                           f" {Path(args.model).name}", log_x=True)
    print_rows(rows, ["method", "lambda_m", "n_params", "n_active", "flip_rate_train", "flip_rate_test", "kl_test"])
    print(f"wrote {out}/sweep.json and {out}/tradeoff.png")


# ----------------------------------------------------------------------------- β dial


def run_beta(args) -> None:
    values = parse_floats(args.betas, "--betas")
    ascale.read_metadata(args.file)          # an intervention file, before its folder is locked
    folder = Path(args.file).parent
    with runfolder.RunFolder(folder) as writing:   # beta.json and beta.png go in together
        targs = evaluate.parse_args([args.file, *(["--model", args.model] if args.model else [])])
        model, _, iv, task, batches = setup.open_saved(targs)
        rows = []
        for beta in values:
            iv.beta = beta
            m = {s: metrics.evaluate(model, iv, batches[s], targs.eval_batch_size) for s in ("train", "test")}
            rows.append({"method": iv.method, "beta": beta, **per_split(m, ("flip_rate", "kl", "logit_diff_after"))})
        staged = writing.staged(folder)
        report.write_json(staged / "beta.json", {"rows": rows, "command": " ".join(sys.argv)})
        report.plot_curves(staged / "beta.png", rows, "beta", "β (0: the original model, 1: as trained)", None,
                           f"The strength dial · {iv.method} · {task.name} · {Path(targs.model).name}")
    print_rows(rows, ["beta", "flip_rate_train", "flip_rate_test", "kl_train", "kl_test"])
    print(f"wrote {folder}/beta.json and {folder}/beta.png")


# ----------------------------------------------------------------------------- the parts of a ScaleShift


@torch.no_grad()
def part_shares(model, iv, batch) -> dict[tuple, list[float]]:
    """{(site, layer, position): [mean ‖h‖, mean ‖Δ‖/‖h‖, mean ‖Δ⊥‖/‖Δ‖]} over the prompts' tokens at each kept
    location of a ScaleShift iv, Δ = β·(α·h + v) its change and Δ⊥ the part of Δ orthogonal to h."""
    units = [(s, l, p) for s in iv.sites for l, p in (iv.effect()[s] > 0).nonzero().tolist()]
    rows = {u: [] for u in units}
    for i in range(0, len(batch), 64):
        mb = batch[i:i + 64]
        T = mb.ids.shape[1]
        where = mb.slots if mb.slots is not None else torch.arange(T, device=mb.ids.device).expand(len(mb), T)
        real = torch.arange(T, device=mb.ids.device) <= mb.answer_pos[:, None]          # (B, T): not padding
        bound = ascale.at_slots(iv, mb.slots)

        def record(site, layer, h, where=where, real=real, bound=bound):
            for s, l, p in units:
                if (s, l) == (site, layer):
                    x = h[(where == p) & real].float()                                   # (tokens, D)
                    d = iv.beta * (iv.alpha[s][l, p] * x + iv.v[s][l, p])
                    x_hat = x / x.norm(dim=-1, keepdim=True)
                    across = d - (d * x_hat).sum(-1, keepdim=True) * x_hat
                    rows[(s, l, p)].append(torch.stack([x.norm(dim=-1), d.norm(dim=-1) / x.norm(dim=-1),
                                                        across.norm(dim=-1) / d.norm(dim=-1)], 1))
            return bound(site, layer, h)
        model(mb.ids, intervene=record, at=mb.answer_pos)
    return {u: torch.cat(r).mean(0).tolist() for u, r in rows.items()}


def run_parts(args) -> None:
    targs = evaluate.parse_args([args.file, *(["--model", args.model] if args.model else [])])
    model, _, iv, task, batches = setup.open_saved(targs)
    if not hasattr(iv, "v") or not hasattr(iv, "alpha"):
        raise UserError(f"{args.file} is a {iv.method}; parts reads an intervention with a scale and a shift"
                        " (scaleshift)")
    for (s, l, p), (n, change, across) in part_shares(model, iv, batches["train"]).items():
        print(f"{s} layer {l} at {task.train.labels[p]!r}: alpha {iv.alpha[s][l, p].item():+.2f}, ||v||"
              f" {iv.v[s][l, p].norm().item():.2f}, mean ||h|| {n:.1f}, change {change:.2f} of ||h||, {across:.2f}"
              " of it across h")
    for part in ("v", "alpha"):
        only = copy.deepcopy(iv)
        with torch.no_grad():
            for t in getattr(only, part).values():
                t.zero_()
        ev = metrics.evaluate(model, only, batches["test"], targs.eval_batch_size)
        low, high = ev["flip_rate_ci"]
        print(f"{part} = 0: test flip {ev['flip_rate']:.2f} [{low:.2f}, {high:.2f}] of {ev['n_prompts']}, KL"
              f" {ev['kl']:.2f}")


# ----------------------------------------------------------------------------- two maps from other seeds


def agree(a, b) -> dict:
    """Two maps of one method and shape: sizes, shared units, Jaccard and overlap share with their chance levels,
    and for one scalar per unit (α) how many of the shared units have the same sign."""
    keep_a, keep_b = selection.active_units(a), selection.active_units(b)
    if a.method != b.method or keep_a.keys() != keep_b.keys() or \
            any(keep_a[s].shape != keep_b[s].shape for s in keep_a):
        raise UserError(f"the two maps differ in sites or shape ({a.method} on {','.join(a.sites)}, {b.method} on"
                        f" {','.join(b.sites)}): train both with the same method, sites and prompt length")
    units, size_a, size_b = sum(m.numel() for m in keep_a.values()), selection.count(keep_a), selection.count(keep_b)
    out = {"units": units, "size_a": size_a, "size_b": size_b,
           "shared": sum(int((keep_a[s] & keep_b[s]).sum()) for s in keep_a),
           "jaccard": selection.jaccard(keep_a, keep_b), "overlap": selection.overlap(keep_a, keep_b),
           "chance": selection.chance(size_a, size_b, units)}
    if a.signed and hasattr(a, "alpha"):                    # a scalar per unit: its sign is the direction
        out["same_sign"] = sum(int(((a.alpha[s].detach().cpu() * b.alpha[s].detach().cpu()) > 0)
                                    [keep_a[s] & keep_b[s]].sum()) for s in keep_a)
    return out


def run_agree(args) -> None:
    meta = ascale.read_metadata(args.files[0])
    targs = evaluate.parse_args([args.files[0], *(["--model", args.model] if args.model else [])])
    targs.model = targs.model or meta["model"]
    targs.revision = targs.revision or meta.get("revision") or None
    model, _ = setup.load_model(targs)
    (a, _), (b, _) = (ascale.load(f, model) for f in args.files)
    r = agree(a, b)
    ch = r["chance"]
    print(f"{r['size_a']} and {r['size_b']} of {r['units']:,} units active, {r['shared']} in both"
          + (f" ({r['same_sign']} of them with the same sign)" if "same_sign" in r else ""))
    print(f"Jaccard {r['jaccard']:.2f} (random sets of these sizes: {ch['jaccard']:.3f}); overlap share"
          f" {r['overlap']:.2f} ({ch['overlap']:.3f})")


# ----------------------------------------------------------------------------- a map without one group of slots


def slot_groups(names: list[str]) -> dict[str, list[int]]:
    """A template's slots by part: the prefix's tokens, the text's slot ("<text>"), the suffix's tokens before
    the last, and the last (where the answer is read). ["Review", ":", "<text>", "\\n", "Sent", ":"] ->
    prefix [0, 1], text [2], suffix [3, 4], answer [5]."""
    text = names.index("<text>")
    groups = {"prefix": list(range(text)), "text": [text], "suffix": list(range(text + 1, len(names) - 1)),
              "answer": [len(names) - 1]}
    return {g: i for g, i in groups.items() if i}


def run_slots(args) -> None:
    targs = evaluate.parse_args([args.file, *(["--model", args.model] if args.model else []),
                                 *(["--domain", args.domain] if args.domain else [])])
    model, _, iv, task, batches = setup.open_saved(targs)
    names = task.test.slot_names
    if not iv.positions or names is None or "<text>" not in names:
        raise UserError(f"{args.file}: slots reads a position-tied map (activscalar, steervec, scaleshift) trained on"
                        " a template task with a text slot (sentiment)")
    test = batches["test"]
    whole = metrics.evaluate(model, iv, test, targs.eval_batch_size)
    print(f"{iv.method} on {task.name}, {whole['n_prompts']} test prompts; slots {names}")
    print(f"{'zeroed':<30}flip                balanced flip        side a         side b         McNemar p")
    for group, at in {"none": [], **slot_groups(names)}.items():
        part = copy.deepcopy(iv)
        with torch.no_grad():
            for t in part.parameters():
                t[:, at] = 0                       # (L, T, ...): every layer (and head) at these slots
        ev = whole if not at else metrics.evaluate(model, part, test, targs.eval_batch_size)
        p = stats.mcnemar_exact(whole["per_prompt"]["flipped"], ev["per_prompt"]["flipped"])["p"]
        sides = "  ".join(f"{x['flip_rate'] or 0:.2f} of {x['n_prompts']:<4}" for x in ev["sides"].values())
        bal = "-" if ev["balanced_flip"] is None else \
            f"{ev['balanced_flip']:.2f} [{ev['balanced_flip_ci'][0]:.2f}, {ev['balanced_flip_ci'][1]:.2f}]"
        print(f"{group + ' ' + ','.join(names[i] for i in at)!r:<30}{ev['flip_rate']:.2f} [{ev['flip_rate_ci'][0]:.2f},"
              f" {ev['flip_rate_ci'][1]:.2f}]   {bal:<20} {sides}   {p:.2g}")


# ----------------------------------------------------------------------------- compare runs on the same prompts

PER_PROMPT = "per_prompt"    # metrics.json["test"][PER_PROMPT]: the per-prompt test outcomes compare reads


def per_prompt(run) -> dict:
    """The per-prompt test outcomes of a run: run is its folder, or its metrics.json or intervention.safetensors.
    They are metrics.json["test"]["per_prompt"], lists of one entry per test prompt, in the test set's order:

        flipped      0/1: the steered model prefers the target answer (its mean is the run's flip_rate)
        kl           float: the prompt's KL (nats; their mean is the run's kl)
        side         optional, 0/1: which of the two answers the unsteered model preferred
        group        optional, str or int ids: the prompt's group (country, name set, review)
        prompt_hash  optional, a string, the same for the same test prompts (also read from
                     metrics.json["test"]["prompt_hash"])

    Returns {"name", "flipped": int (N,), "kl": float (N,), "side": int (N,) or None, "group": list or None,
    "prompt_hash": str or None}. A run without them (made before they were saved), or with lists of different
    lengths, is a UserError."""
    path = Path(run)
    folder = path.parent if path.suffix in (".json", ".safetensors") else path
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except FileNotFoundError:
        raise UserError(f"{run}: no metrics.json there; name a run folder") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{folder / 'metrics.json'}: cannot read it ({e})") from None
    test = metrics.get("test") if isinstance(metrics, dict) else None
    rows = test.get(PER_PROMPT) if isinstance(test, dict) else None
    if not isinstance(rows, dict) or not {"flipped", "kl"} <= set(rows):
        raise UserError(f"{run} has no per-prompt test outcomes (metrics.json test.{PER_PROMPT} with flipped and kl);"
                        " train it again with this version of train.py, which saves them")
    lengths = {k: len(rows[k]) for k in ("flipped", "kl", "side", "group") if rows.get(k) is not None}
    if len(set(lengths.values())) > 1:
        raise UserError(f"{run}: the per-prompt lists differ in length"
                        f" ({', '.join(f'{k} {n}' for k, n in lengths.items())})")
    flipped = np.asarray(rows["flipped"], dtype=np.int64)
    side = None if rows.get("side") is None else np.asarray(rows["side"], dtype=np.int64)
    if not set(np.unique(flipped)) <= {0, 1} or (side is not None and not set(np.unique(side)) <= {0, 1}):
        raise UserError(f"{run}: per-prompt flipped and side are 0 or 1")
    return {"name": str(run), "flipped": flipped, "kl": np.asarray(rows["kl"], dtype=np.float64), "side": side,
            "group": rows.get("group"), "prompt_hash": rows.get("prompt_hash") or test.get("prompt_hash")}


def same_prompts(first: dict, other: dict) -> None:
    """A UserError, one line, unless the two runs' outcomes are on the same test prompts: as many, and the same
    prompt_hash and group lists where both runs have them."""
    why = None
    if len(other["flipped"]) != len(first["flipped"]):
        why = f"{len(other['flipped'])} prompts against {len(first['flipped'])}"
    elif first["prompt_hash"] and other["prompt_hash"] and first["prompt_hash"] != other["prompt_hash"]:
        why = "their prompt_hash differs"
    elif first["group"] is not None and other["group"] is not None and list(first["group"]) != list(other["group"]):
        why = "their group lists differ"
    if why:
        raise UserError(f"{other['name']} and {first['name']} were not evaluated on the same test prompts ({why});"
                        " compare needs runs on the same prompts")


def compare(runs: list[dict], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> list[dict]:
    """Each run after the first against the first (per_prompt's dicts, on the same prompts: same_prompts), a row
    per measure: "flip" (flip rate), "balanced flip" (stats.balanced: the mean of the two sides' flip rates, each
    run with its own sides) and "flip, side s" (the prompts that both runs put on side s) where both runs have
    sides, and "kl" (mean KL). Each row: the first run's value, this run's, this minus first and its paired
    bootstrap interval (stats.paired_bootstrap, n_boot draws, seeded; resampling whole groups where the runs have
    groups); the flip rows of a whole side or of all prompts also McNemar's exact test of the paired flips
    (stats.mcnemar_exact: n01 prompts flipped by this run only, n10 by the first only, p). A balanced rate has no
    paired 0/1 outcome to test: its test is the two sides' rows. "p_holm": Holm's adjustment over all the
    p-values of the table (every run, every row), the family a reader scans."""
    first, rows = runs[0], []
    groups = first["group"] if first["group"] is not None else next((r["group"] for r in runs if r["group"]), None)
    boot = {"groups": groups, "n": n_boot, "seed": seed, "level": level}

    def row(run, measure, a, b, value=stats.mean, paired=None, **test):
        ci = stats.paired_bootstrap(b, a, stat=value, **{**boot, **(paired or {})})
        return {"run": run["name"], "against": first["name"], "measure": measure, "first": value(a), "this": value(b),
                "difference": value(b) - value(a), "interval": ci, **test}

    def balanced_flip(r):
        return stats.balanced(stats.by_side(r[:, 0], r[:, 1]))

    for run in runs[1:]:
        same_prompts(first, run)
        a, b = first["flipped"], run["flipped"]
        rows.append(row(run, "flip", a, b, **stats.mcnemar_exact(a, b)))
        if first["side"] is not None and run["side"] is not None:
            rows.append(row(run, "balanced flip", np.stack([a, first["side"]], 1), np.stack([b, run["side"]], 1),
                            balanced_flip, p=None))
            for s in (0, 1):
                on = (first["side"] == s) & (run["side"] == s)
                if on.any():
                    sub = {"groups": None if groups is None else [g for g, o in zip(groups, on, strict=True) if o]}
                    rows.append(row(run, f"flip, side {s}", a[on], b[on], paired=sub,
                                    **stats.mcnemar_exact(a[on], b[on])))
        rows.append(row(run, "kl", first["kl"], run["kl"], p=None))
    for r, adjusted in zip(rows, stats.holm([r["p"] for r in rows]), strict=True):
        r["p_holm"] = adjusted
    return rows


def run_compare(args) -> None:
    if args.n_boot < 1:
        raise UserError("--n-boot must be >= 1")
    runs = [per_prompt(r) for r in args.runs]
    rows = compare(runs, n_boot=args.n_boot, seed=args.seed)
    n, groups = len(runs[0]["flipped"]), runs[0]["group"] or next((r["group"] for r in runs if r["group"]), None)
    print(f"against {runs[0]['name']}: {n} test prompts; 95 % paired-bootstrap intervals of this minus first over"
          + (f" {len(set(map(str, groups)))} groups of prompts" if groups is not None else " the prompts")
          + f" ({args.n_boot} draws, seed {args.seed});\nMcNemar's exact p of the paired flips, Holm-adjusted over the"
          " table")

    def num(v, fmt=".3f"):
        return "-" if v is None else format(v, fmt)
    print_rows([{"run": r["run"], "measure": r["measure"], "first": num(r["first"]), "this": num(r["this"]),
                 "this - first": num(r["difference"], "+.3f"),
                 "interval": f"[{r['interval'][0]:+.3f}, {r['interval'][1]:+.3f}]",
                 "n01/n10": f"{r['n01']}/{r['n10']}" if "n01" in r else "-", "p": num(r["p"], ".3g"),
                 "p Holm": num(r["p_holm"], ".3g")} for r in rows],
               ["run", "measure", "first", "this", "this - first", "interval", "n01/n10", "p", "p Holm"])
    if args.json:
        report.write_json(Path(args.json), {"first": runs[0]["name"], "runs": [r["name"] for r in runs],
                                            "n_prompts": n, "n_boot": args.n_boot, "seed": args.seed, "rows": rows,
                                            "command": " ".join(sys.argv)})
        print(f"wrote {args.json}")


def run_yardsticks(args) -> None:
    """One markdown row per run folder: the test flip rate with its intervals (Wilson; over groups), each side,
    the balanced flip, the KL, the offset control's flip and balanced flip, and the gain over it (paired interval,
    McNemar), as the results pages show them (docs/method.md, "What a flip rate is read against")."""
    def ci(pair, fmt=".2f"):
        return "-" if pair is None else f"[{pair[0]:{fmt}}, {pair[1]:{fmt}}]"

    def num(v, fmt=".2f"):
        return "-" if v is None else format(v, fmt)
    found = []
    for run in args.runs:
        path = Path(run) / "metrics.json" if Path(run).is_dir() else Path(run)
        try:
            m = json.loads(path.read_text())
            found.append((run, m, m["test"], m["offset_control"]["test"], m["gain_over_offset"]))
        except (OSError, ValueError, KeyError) as e:
            what = "does not exist" if isinstance(e, FileNotFoundError) else f"lacks the offset ({type(e).__name__})"
            raise UserError(f"{path} {what}: pass run folders written by train.py") from None
    print("| run | flip test | over groups | side a | side b | balanced flip | KL test | offset: flip, balanced"
          " | gain over the offset: flip (McNemar p), balanced | active |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run, m, t, o, g in found:
        sides = [f"{num(t['sides'][s]['flip_rate'])} of {t['sides'][s]['n_prompts']}" for s in ("a", "b")]
        print(f"| {run} | {t['flip_rate']:.2f} {ci(t['flip_rate_ci'])} | {ci(t['flip_rate_ci_groups'])} |"
              f" {sides[0]} | {sides[1]} | {num(t['balanced_flip'])} {ci(t['balanced_flip_ci'])} |"
              f" {t['kl']:.2f} {ci(t['kl_ci'])} | {o['flip_rate']:.2f}, {num(o['balanced_flip'])} |"
              f" {g['flip']:+.2f} {ci(g['flip_ci'], '+.2f')} (p {g['mcnemar_p']:.2g}),"
              f" {num(g['balanced_flip'], '+.2f')} {ci(g['balanced_flip_ci'], '+.2f')} | {m['n_active']:.0f} |")


# ----------------------------------------------------------------------------- shared output


def learned() -> list[str]:
    """The methods the λM sweep trains: every built-in one that `fit` trains (ascale.methods())."""
    return [m for m, cls in ascale.methods().items() if cls.learned]


def per_split(metrics: dict, keys) -> dict[str, float]:
    """{"flip_rate_train": ..., "flip_rate_test": ..., ...} from metrics {"train": {...}, "test": {...}}."""
    return {f"{k}_{s}": metrics[s][k] for s in ("train", "test") for k in keys}


def print_rows(rows: list[dict], keys: list[str]) -> None:
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    table = [keys] + [[cell(r[k]) for k in keys] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(keys))]
    print()
    for row in table:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated numbers, e.g. 0.001,0.01,0.1; got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise UserError(f"{flag} takes finite comma-separated numbers; got {text!r}")
    return values


def main(argv=None) -> int:
    import matplotlib
    matplotlib.use("Agg")  # a script writes its figures to files (figures/report.py sets no backend)
    p = script.Parser(description=__doc__.split("\n\n")[0].strip(), epilog=__doc__.split("\n\n", 2)[2],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=script.Parser)
    k = sub.add_parser("knockout", help="compare a saved intervention with the knockout map")
    k.add_argument("file", help="a run's intervention.safetensors, trained on prompts of one length")
    k.add_argument("--model", help="model to load instead of the file's (same shape)")
    k.add_argument("--knockout-mode", default="zero", choices=["zero", "mean"], help="what a knocked-out activation"
                   " becomes: zero, or its mean over the training prompts there (mean ablation; writes"
                   " knockout-mean.png and a knockout_mean entry) (default: zero)")
    b = sub.add_parser("beta", help="evaluate a saved intervention over several strengths β")
    b.add_argument("file", help="a run's intervention.safetensors")
    b.add_argument("--betas", default="-1,-0.5,0,0.25,0.5,0.75,1,1.5,2", help="comma-separated β values"
                   " (default: -1,-0.5,0,0.25,0.5,0.75,1,1.5,2)")
    b.add_argument("--model", help="model to load instead of the file's (same shape)")
    t = sub.add_parser("parts", help="a saved ScaleShift: how much it scales and how much it turns, and each part's"
                       " share of the effect")
    t.add_argument("file", help="a run's intervention.safetensors (scaleshift)")
    t.add_argument("--model", help="model to load instead of the file's (same shape)")
    s = sub.add_parser("lambda", help="train each method at several λM: flip rate and KL against active locations",
                       epilog="Any other flag is passed on to train.py (e.g. --steps 300 --sites head).")
    s.add_argument("--model", default="gpt2", help="Hub id, local folder, .gguf file, smollm2 or gemma3-270m"
                   " (default: gpt2)")
    s.add_argument("--task", default="ccc", help=f"{', '.join(tasks.TASKS)} or a .jsonl file (default: ccc)")
    s.add_argument("--methods", default=",".join(learned()), help="comma-separated methods (default: all of"
                   f" them, {','.join(learned())})")
    s.add_argument("--lambda-m", default="0.001,0.003,0.01,0.03,0.1", help="comma-separated λM values"
                   " (default: 0.001,0.003,0.01,0.03,0.1)")
    s.add_argument("--seed", type=int, default=0, help="seed of every run (default: 0)")
    s.add_argument("--out", help="sweep folder (default: runs/<task>-<model>-lambda/)")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier sweep in the same folder")
    c = sub.add_parser("compare", help="runs on the same test prompts against the first: paired differences, McNemar,"
                       " Holm")
    c.add_argument("runs", nargs="+", metavar="RUN", help="run folders (their metrics.json with test.per_prompt);"
                   " the first is the one the others are compared with")
    c.add_argument("--json", metavar="FILE", help="also write the table to FILE (nothing is written without it)")
    c.add_argument("--n-boot", type=int, default=2000, help="bootstrap draws of each interval (default: 2000)")
    c.add_argument("--seed", type=int, default=0, help="seed of the bootstrap draws (default: 0)")
    y = sub.add_parser("yardsticks", help="a markdown table of runs: test flip, its sides and balanced flip, KL, the"
                       " offset control and the gain over it")
    y.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or their metrics.json)")
    g = sub.add_parser("agree", help="two saved maps from other seeds: shared active units, Jaccard and overlap"
                       " beside chance, signs")
    g.add_argument("files", nargs=2, metavar="FILE", help="two runs' intervention.safetensors (one model, method,"
                   " sites and prompt length)")
    g.add_argument("--model", help="model to load instead of the first file's (same shape)")
    z = sub.add_parser("slots", help="a saved map on a template task with one group of slots set to 0 at a time")
    z.add_argument("file", help="a run's intervention.safetensors (position-tied, on a task with slots: sentiment)")
    z.add_argument("--domain", help="sentiment: evaluate on these texts (the same slots)")
    z.add_argument("--model", help="model to load instead of the file's (same shape)")
    args, rest = p.parse_known_args(argv)
    if rest and args.command != "lambda":
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    args.train_args = rest
    if args.command == "compare" and len(args.runs) < 2:
        p.error("compare needs at least two runs")
    return script.run({"knockout": run_knockout, "lambda": run_lambda, "beta": run_beta,
                       "parts": run_parts, "compare": run_compare, "yardsticks": run_yardsticks,
                       "slots": run_slots, "agree": run_agree}[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
