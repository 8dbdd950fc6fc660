"""
Check and explore learned interventions: is the heatmap right about where the behaviour is, what
does minimality cost, and what does the strength dial do?

    python analyze.py knockout runs/ccc-toyworld-activscalar/intervention.safetensors
    python analyze.py lambda --model models/toyworld --task ccc
    python analyze.py beta runs/ccc-toyworld-activscalar/intervention.safetensors

knockout  A reference map that does not depend on the objective: every location (site, layer,
          position[, head]) is switched off in turn (α = -1 there, nothing else) over the training
          prompts, and the change of the mean logit difference toward the target is recorded
          (ascale.knockout). Compared with the intervention's β·α: Spearman of |β·α| and |effect|,
          the share of large-effect locations that are active, and sign agreement (ascale.agreement).
          Writes knockout.png beside the heatmap and a "knockout" entry into the run's metrics.json.
          `train.py --knockout` does the same right after training.
lambda    The paper's trade-off: each method trained at several λM, flip rate and KL against active
          locations. Writes runs/<task>-<model>-lambda/: one run folder per (method, λM), sweep.json
          and tradeoff.png.
beta      The strength dial: a saved intervention evaluated at several β (0 is the original model,
          1 as trained, -1 reversed), flip rate and KL against β. Writes beta.json and beta.png
          beside the intervention file.
"""

import argparse
import io
import json
import math
import sys
from pathlib import Path

import torch

import ascale
import train
from gpt2 import UserError

# ----------------------------------------------------------------------------- knockout


def knockout_check(model, batch: ascale.Batch, tokens: list[str], runs: dict, title: str) -> dict:
    """Compute the knockout map and the attribution once for the sites of `runs` ({method: (iv, run
    folder)}, interventions on these prompts), compare each intervention with it, and write its
    knockout.png and the "knockout" entry of its metrics.json. Returns {method: agreement numbers}."""
    sites = list(dict.fromkeys(s for iv, _ in runs.values() for s in iv.sites))
    print(f"knockout map: {len(sites)} site(s) x {model.config.n_layer} layers x {batch.ids.shape[1]} positions,"
          f" {len(batch)} training prompts")
    effects = ascale.knockout(model, batch, sites)
    estimate = {s: -g for s, g in ascale.attribution(model, batch, sites).items()}  # linear estimate of knockout
    out = {}
    for method, (iv, folder) in runs.items():
        acts = location_map(model, iv, batch)
        agree = ascale.agreement(acts, {s: effects[s] for s in iv.sites})
        if method == "steervec":       # ‖β·v‖ has no sign
            agree["sign_agreement"] = float("nan")
        agree["attribution_spearman"] = ascale.agreement(estimate, effects)["spearman"]
        agree = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in agree.items()}  # JSON: null
        out[method] = agree
        plot_knockout(folder / "knockout.png", tokens, effects, estimate, acts, agree, f"{method} · {title}")
        metrics_file = folder / "metrics.json"
        if metrics_file.exists():
            metrics = json.loads(metrics_file.read_text())
            metrics["knockout"] = agree
            train.write_json(metrics_file, metrics)
        print(f"{method}: {summary(agree)}  -> {folder / 'knockout.png'}")
    return out


def summary(agree: dict) -> str:
    """The agreement numbers in one line (n/a where a number does not exist)."""
    def num(key, fmt):
        return "n/a" if agree[key] is None else format(agree[key], fmt)
    return (f"Spearman(|β·α|, |knockout|) {num('spearman', '.2f')}; {num('large_active', '.0%')} of {agree['n_large']}"
            f" large-effect locations active; sign agreement {num('sign_agreement', '.0%')}; attribution vs knockout"
            f" {num('attribution_spearman', '.2f')}")


def location_map(model, iv, batch) -> dict[str, torch.Tensor]:
    """What the intervention does per location: β·α (ActivScalar), ‖β·v‖ (SteerVec), β·α(h)
    averaged over the prompts, like the knockout map (DynScalar)."""
    if iv.positions is None:
        return {s: m.cpu() for s, m in iv.location_map(model, batch.ids).items()}
    return {s: m.cpu() for s, m in iv.location_map().items()}


def _by_head(m: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """(L, T, nh) -> (L, nh): each head's value at the position `where` (L, 1, nh) picks."""
    return m.gather(1, where)[:, 0]


def plot_knockout(path: Path, tokens, effects, estimate, acts, agree, title) -> None:
    """One row per site: knockout effect | its linear estimate (attribution) | β·α; then a scatter of
    |β·α| against |knockout effect| over all locations."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for site in acts:
        e, a, x = effects[site], estimate[site], acts[site].float()
        if e.dim() == 3:  # heads: each head at the position where its knockout effect is largest
            where = e.abs().argmax(1, keepdim=True)
            e, a, x = _by_head(e, where), _by_head(a, where), _by_head(x, where)
            labels, xname = [str(h) for h in range(e.shape[1])], "head (at its largest-effect position)"
        else:
            labels, xname = [t.replace("\n", "\\n") for t in tokens], "position"
        rows.append((site, e, a, x, labels, xname))
    L = rows[0][1].shape[0]
    logit_max = max(float(torch.cat([r[1].flatten() for r in rows] + [r[2].flatten() for r in rows]).abs().max()), 1e-6)
    act_max = max(max(float(r[3].abs().max()) for r in rows), 2 * ascale.ACTIVE)
    width = max(12.0, 3 * (0.35 * max(len(r[4]) for r in rows) + 1.5))
    fig = plt.figure(figsize=(width, len(rows) * (0.3 * L + 1.8) + 3.6), constrained_layout=True)
    grid = fig.add_gridspec(len(rows) + 1, 3, height_ratios=[0.3 * L + 1.8] * len(rows) + [3.2])
    for r, (site, e, a, x, labels, xname) in enumerate(rows):
        for c, (m, what, vmax, cmap) in enumerate([
                (e, "knockout: change of ℓ(t) − ℓ(o) when switched off", logit_max, "PuOr"),
                (a, "attribution's estimate of it, −∂Δ/∂α", logit_max, "PuOr"),
                (x, "the intervention, β·α" if x.min() < 0 else "the intervention, ‖β·v‖", act_max, "RdBu_r")]):
            ax = fig.add_subplot(grid[r, c])
            im = ax.imshow(m.numpy(), cmap=cmap, vmin=-vmax, vmax=vmax, aspect="auto")
            ax.set_title(f"{site}: {what}", fontsize=8, loc="left")
            ax.set_xticks(range(len(labels)), labels, rotation=60 if xname == "position" else 0, ha="right"
                          if xname == "position" else "center", rotation_mode="anchor", fontsize=6)
            ax.set_yticks(range(0, L, max(1, L // 12)))
            ax.set_ylabel("layer", fontsize=8)
            fig.colorbar(im, ax=ax, shrink=0.8)
    ax = fig.add_subplot(grid[-1, :])
    for site, *_ in rows:
        ax.scatter(effects[site].abs().flatten(), acts[site].float().abs().flatten(), s=10, alpha=0.6, label=site)
    ax.axhline(ascale.ACTIVE, color="gray", lw=0.8, ls="--")
    ax.axvline(agree["large_effect"], color="gray", lw=0.8, ls=":")
    ax.set_xlabel("|knockout effect| (logits); dotted: large effect")
    ax.set_ylabel("|intervention| at the location; dashed: active")
    ax.legend(fontsize=8)
    ax.set_title(summary(agree), fontsize=9)
    fig.suptitle(title, fontsize=11)
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt
    png = io.BytesIO()
    fig.savefig(png, dpi=110, format="png")
    plt.close(fig)
    ascale.write_atomically(path, png.getvalue())


def run_knockout(args) -> None:
    targs = train.parse_args(["--eval", args.file, *(["--model", args.model] if args.model else [])])
    model, _, iv, task, batches = train.open_saved(targs)
    if iv.positions is None and not task.train.fixed_length:
        raise UserError(f"{args.file} is a dynscalar trained on prompts of several lengths; the knockout map needs"
                        " one length (train it with --method all, or use activscalar/steervec)")
    name = f"{task.name} · {Path(targs.model).name}"
    knockout_check(model, batches["train"], task.train.tokens[0], {iv.method: (iv, Path(args.file).parent)}, name)


# ----------------------------------------------------------------------------- λM sweep


def run_lambda(args) -> None:
    values = parse_floats(args.lambda_m, "--lambda-m")
    if any(v < 0 for v in values):
        raise UserError("--lambda-m values must be >= 0")
    methods = [m.strip() for m in args.methods.split(",")]
    if unknown := [m for m in methods if m not in ascale.METHODS]:
        raise UserError(f"unknown method {unknown[0]!r}; choose from {', '.join(ascale.METHODS)}")
    out = Path(args.out or f"runs/{Path(args.task).stem}-{Path(args.model).name}-lambda")
    if (out / "sweep.json").exists() and not args.overwrite:
        raise UserError(f"{out} already holds a sweep; pass --out NEW_FOLDER, or --overwrite to replace it")
    rows = []
    for method in methods:
        for value in values:
            folder = out / f"{method}-lm{value:g}"
            argv = ["--model", args.model, "--task", args.task, "--method", method, "--lambda-m", str(value),
                    "--seed", str(args.seed), "--out", str(folder), *args.train_args]
            print(f"\n== {method}, lambda_m {value:g}")
            if train.main(argv + (["--overwrite"] if args.overwrite else [])) != 0:
                raise SystemExit(2)  # train.py has printed its one-line error
            m = json.loads((folder / "metrics.json").read_text())
            rows.append({"method": method, "lambda_m": value, "n_active": m["n_active"], "n_params": m["n_params"],
                         "l1": m["l1"], **per_split(m, ("flip_rate", "kl"))})
    train.write_json(out / "sweep.json", {"rows": rows, "command": " ".join(sys.argv)})
    plot_curves(out / "tradeoff.png", rows, "n_active", "active locations (log scale); points labelled with λM",
                "lambda_m", f"What minimality costs · {Path(args.task).stem} · {Path(args.model).name}", log_x=True)
    print_rows(rows, ["method", "lambda_m", "n_params", "n_active", "flip_rate_train", "flip_rate_test", "kl_test"])
    print(f"wrote {out}/sweep.json and {out}/tradeoff.png")


# ----------------------------------------------------------------------------- β dial


def run_beta(args) -> None:
    values = parse_floats(args.betas, "--betas")
    targs = train.parse_args(["--eval", args.file, *(["--model", args.model] if args.model else [])])
    model, _, iv, task, batches = train.open_saved(targs)
    rows = []
    for beta in values:
        iv.beta = beta
        m = {s: ascale.evaluate(model, iv, batches[s]) for s in ("train", "test")}
        rows.append({"method": iv.method, "beta": beta, **per_split(m, ("flip_rate", "kl", "logit_diff_after"))})
    folder = Path(args.file).parent
    train.write_json(folder / "beta.json", {"rows": rows, "command": " ".join(sys.argv)})
    plot_curves(folder / "beta.png", rows, "beta", "β (0: the original model, 1: as trained)", None,
                f"The strength dial · {iv.method} · {task.name} · {Path(targs.model).name}")
    print_rows(rows, ["beta", "flip_rate_train", "flip_rate_test", "kl_train", "kl_test"])
    print(f"wrote {folder}/beta.json and {folder}/beta.png")


# ----------------------------------------------------------------------------- shared output


def plot_curves(path: Path, rows: list[dict], x: str, xlabel: str, label: str | None, title: str,
                log_x: bool = False) -> None:
    """Two panels, flip rate and KL (test solid, train dotted) against `x`, one colour per method;
    points joined in the order of `label` (and annotated with it) or of `x`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for ax, (key, name) in zip(axes, [("flip_rate", "flip rate"), ("kl", "KL of the other tokens, nats")],
                               strict=True):
        for method, color in zip(methods, ("tab:blue", "tab:green", "tab:purple"), strict=False):
            mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r[label or x])  # along λM or β
            xs = [max(r[x], 0.5) if log_x else r[x] for r in mine]
            for split, style in (("test", "-o"), ("train", ":.")):
                ax.plot(xs, [r[f"{key}_{split}"] for r in mine], style, color=color, label=f"{method} ({split})")
            if label:
                for r, xv in zip(mine, xs, strict=True):
                    ax.annotate(f"{r[label]:g}", (xv, r[f"{key}_test"]), fontsize=7, color=color,
                                textcoords="offset points", xytext=(3, 3))
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    save_figure(fig, path)


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
    p = train.Parser(description=__doc__.split("\n\n")[0].strip(), epilog=__doc__.split("\n\n", 2)[2],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=train.Parser)
    k = sub.add_parser("knockout", help="compare a saved intervention with the knockout map")
    k.add_argument("file", help="a run's intervention.safetensors (activscalar or steervec)")
    k.add_argument("--model", help="model to load instead of the file's (same shape)")
    b = sub.add_parser("beta", help="evaluate a saved intervention over several strengths β")
    b.add_argument("file", help="a run's intervention.safetensors")
    b.add_argument("--betas", default="-1,-0.5,0,0.25,0.5,0.75,1,1.5,2", help="comma-separated β values"
                   " (default: -1,-0.5,0,0.25,0.5,0.75,1,1.5,2)")
    b.add_argument("--model", help="model to load instead of the file's (same shape)")
    s = sub.add_parser("lambda", help="train each method at several λM: flip rate and KL against active locations",
                       epilog="Any other flag is passed on to train.py (e.g. --steps 300 --sites head).")
    s.add_argument("--model", default="gpt2", help="Hub id or local folder (default: gpt2)")
    s.add_argument("--task", default="ccc", help="ccc, ioi or a .jsonl file (default: ccc)")
    s.add_argument("--methods", default=",".join(ascale.METHODS), help="comma-separated methods (default: all three)")
    s.add_argument("--lambda-m", default="0.001,0.003,0.01,0.03,0.1", help="comma-separated λM values"
                   " (default: 0.001,0.003,0.01,0.03,0.1)")
    s.add_argument("--seed", type=int, default=0, help="seed of every run (default: 0)")
    s.add_argument("--out", help="sweep folder (default: runs/<task>-<model>-lambda/)")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier sweep in the same folder")
    args, rest = p.parse_known_args(argv)
    if rest and args.command != "lambda":
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    args.train_args = rest
    return train.run({"knockout": run_knockout, "lambda": run_lambda, "beta": run_beta}[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
