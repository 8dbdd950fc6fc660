"""
Check and explore learned interventions: is the heatmap right about where the behaviour is, what
does minimality cost, and what does the strength dial do?

    python analyze.py knockout runs/ccc-toyworld-activscalar/intervention.safetensors
    python analyze.py lambda --model models/toyworld --task ccc
    python analyze.py beta runs/ccc-toyworld-activscalar/intervention.safetensors
    python analyze.py parts runs/ccc-toyworld-scaleshift/intervention.safetensors

knockout  A reference map that does not depend on the objective: every location (site, layer,
          position[, head]) is switched off in turn (α = -1 there, nothing else) over the training
          prompts (as many as knockout.KNOCKOUT_FLOPS affords, evenly spread), and the change of the
          mean logit difference toward the target is recorded (knockout.knockout). Compared with the
          intervention's β·α: Spearman of |β·α| and |effect|, the share of large-effect locations
          that are active, and sign agreement (knockout.agreement).
          Writes knockout.png beside the heatmap and a "knockout" entry into the run's metrics.json.
          `train.py --knockout` does the same right after training. --knockout-mode mean: mean ablation,
          each activation replaced by its mean over the training prompts there (knockout-mean.png).
lambda    The paper's trade-off: each method trained at several λM, flip rate and KL against active
          locations. Writes runs/<task>-<model>-lambda/: one run folder per (method, λM), sweep.json
          and tradeoff.png.
beta      The strength dial: a saved intervention evaluated at several β (0 is the original model,
          1 as trained, -1 reversed), flip rate and KL against β. Writes beta.json and beta.png
          beside the intervention file.
parts     For a ScaleShift, h·(1 + α) + v: does it scale or turn? At each kept location, the mean ‖h‖
          over the training prompts, the change's size as a share of ‖h‖ and the share of the change
          that is orthogonal to h; then the test flip rate with v set to 0 and with α set to 0.
"""

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import torch

import ascale
import evaluate
import tasks
import train
from figures import report
from gpt2 import UserError
from loading import setup
from running import runfolder, script

# ----------------------------------------------------------------------------- knockout


def run_knockout(args) -> None:
    ascale.read_metadata(args.file)          # an intervention file, before its folder is locked
    folder = Path(args.file).parent
    with runfolder.RunFolder(folder) as writing:   # knockout.png and the new metrics.json go in together
        targs = evaluate.parse_args([args.file, *(["--model", args.model] if args.model else [])])
        model, _, iv, task, batches = setup.open_saved(targs)
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
            m = {s: ascale.evaluate(model, iv, batches[s], targs.eval_batch_size) for s in ("train", "test")}
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
        ev = ascale.evaluate(model, only, batches["test"], targs.eval_batch_size)
        low, high = ev["flip_rate_ci"]
        print(f"{part} = 0: test flip {ev['flip_rate']:.2f} [{low:.2f}, {high:.2f}] of {ev['n_prompts']}, KL"
              f" {ev['kl']:.2f}")


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
    args, rest = p.parse_known_args(argv)
    if rest and args.command != "lambda":
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    args.train_args = rest
    return script.run({"knockout": run_knockout, "lambda": run_lambda, "beta": run_beta,
                       "parts": run_parts}[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
