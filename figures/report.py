"""
What a run shows besides its numbers: the heatmap of where an intervention acts, the knockout check
of that heatmap, and the curves of a sweep. train.py and analyze.py both write them; every figure is
a PNG written atomically (rendered to memory first, then ascale.write_atomically), into the folder
it is given (train.py and analyze.py give it a run folder's staging folder, see runfolder.RunFolder).

    heatmap         one panel per site: layers x positions (or heads), β·α or ‖β·v‖ per location
    plot_locations  the locations path of the selection: flip rate and KL against K (locations.png)
    stability       each location's selection frequency over --runs fits (stability.png)
    knockout_check  the knockout map and its linear estimate, compared with an intervention
                    (knockout.knockout, knockout.attribution, knockout.agreement): knockout.png and a
                    "knockout" entry in the run's metrics.json
    plot_curves     flip rate and KL against λM (analyze.py lambda) or β (analyze.py beta)
"""

import io
import json
import math
from pathlib import Path

import torch

import ascale
import knockout
import selection

SITE_NAMES = {"head": "attention heads", "attn_out": "attention output", "mlp_out": "MLP output",
              "resid": "residual stream after the block"}


def write_json(path: Path, obj) -> None:
    ascale.write_atomically(path, json.dumps(obj, indent=1).encode())


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Render a matplotlib figure to PNG in memory, then write it atomically, and close it."""
    import matplotlib.pyplot as plt
    png = io.BytesIO()
    fig.savefig(png, dpi=dpi, format="png")
    plt.close(fig)
    ascale.write_atomically(path, png.getvalue())


# ----------------------------------------------------------------------------- heatmap


def heatmap(model, iv, task, path: Path, title: str, metrics: dict) -> None:
    """One panel per site: layers x positions (the prompt's tokens on the axis), or layers x heads.
    Scalar methods: β·α on a diverging colour map, white = no change. SteerVec: ‖β·v‖, white = 0."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if iv.positions is None:  # DynScalar: its scalars on one test prompt, which may have any length
        T = int(task.test.answer_pos[0]) + 1
        maps, tokens, which = iv.location_map(model, task.test.ids[:1, :T]), task.test.tokens[0], "test prompt 1"
    else:
        maps, tokens, which = iv.location_map(), task.train.tokens[0], "training prompt 1"
    scalar = iv.method != "steervec"
    panels = []
    for site, m in maps.items():
        m = m.float().cpu()                                          # (L, T) or (L, T, nh)
        if m.dim() == 3:  # heads: each head's value at the position where it is largest in size
            m = m.gather(1, m.abs().argmax(1, keepdim=True))[:, 0]   # (L, nh)
            panels.append((site, m, [str(h) for h in range(m.shape[1])], "head (its value where it is largest)"))
        else:
            panels.append((site, m, [t.replace("\n", "\\n") for t in tokens], f"position (tokens of {which})"))
    vmax = max(max(float(m.abs().max()) for _, m, _, _ in panels), 2 * ascale.ACTIVE)
    n_cols = max(m.shape[1] for _, m, _, _ in panels)
    n_layer = iv.n_layer
    fig, axes = plt.subplots(len(panels), 1, squeeze=False, constrained_layout=True,
                             figsize=(max(6.0, 0.5 * n_cols + 1.5), len(panels) * (0.32 * n_layer + 1.6) + 1.6))
    for ax, (site, m, labels, xname) in zip(axes[:, 0], panels, strict=True):
        im = ax.imshow(m.numpy(), cmap="RdBu_r" if scalar else "Reds", vmin=-vmax if scalar else 0, vmax=vmax,
                       aspect="auto")
        ax.set_title(f"{site}: {SITE_NAMES[site]}", loc="left", fontsize=11)
        if xname.startswith("head"):
            ax.set_xticks(range(len(labels)), labels, fontsize=8)
        else:
            ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set_yticks(range(0, n_layer, max(1, n_layer // 16)))
        ax.set_ylabel("layer")
        ax.set_xlabel(xname, fontsize=9)
        if m.numel() <= 1200:  # write the value into each active cell
            for (y, x), v in zip(torch.cartesian_prod(torch.arange(m.shape[0]), torch.arange(m.shape[1])).tolist(),
                                 m.flatten().tolist(), strict=True):
                if abs(v) >= (ascale.ACTIVE if scalar else 0.25 * vmax):
                    ax.text(x, y, f"{v:.2g}", ha="center", va="center", fontsize=7,
                            color="white" if abs(v) > 0.6 * vmax else "black")
    label = ("β·α, the activation is scaled by 1 + β·α:  −1 switched off,  0 unchanged (white),  +1 doubled" if scalar
             else "‖β·v‖, the norm of the vector added to the activation (white: nothing added)")
    cbar = fig.colorbar(im, ax=axes[:, 0].tolist(), orientation="horizontal", aspect=50, shrink=0.8)
    cbar.set_label(label, fontsize=9)
    fig.suptitle(f"{title}\nflip rate {metrics['train']['flip_rate']:.0%} train, {metrics['test']['flip_rate']:.0%}"
                 f" test · {metrics['n_params']:,} parameters · {metrics['n_active']:.0f} active locations",
                 fontsize=11)
    save_figure(fig, path, dpi=120)


# ----------------------------------------------------------------------------- selection (selection.py)


def plot_locations(path: Path, sel: dict, title: str) -> None:
    """The locations path of selection.choose: flip rate and KL after the refit against K, the number of
    locations kept, on the path's selection prompts (training prompts: drawn as "train"; the path reads no
    test prompt, so there is no test line)."""
    nan = float("nan")
    rows = [{"flip_rate_test": nan, "kl_test": nan, "flip_rate_train": r["flip_rate_select"],
             "kl_train": r["kl_select"], "K": r["K"], "method": f"refit of {r['steps']} steps"} for r in sel["path"]]
    plot_curves(path, rows, "K", "K, locations kept (log scale)", None,
                f"{title}: K = {sel['K']}\n(ℓ1 fit: {sel['unpruned']['units']} active units, flip"
                f" {sel['unpruned']['select_flip_rate']:.2f} on the {sel['selection_prompts']} selection prompts)",
                log_x=True)


def stability(model, iv, task, path: Path, runs: dict, title: str) -> None:
    """One panel per site: each location's selection frequency over the --runs fits (layers x positions;
    heads: each head's largest over positions; DynScalar: layers x heads or one column), the
    final set outlined by the threshold in the colour bar's label."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for site, f in runs["frequencies"].items():
        f = torch.tensor(f)
        if f.dim() == 1:                                              # a DynScalar probe per layer
            f, labels, xname = f[:, None], ["probe"], "one probe per layer"
        elif iv.positions is None or f.dim() == 3:                    # heads (DynScalar's, or ActivScalar's)
            f = f.amax(1) if f.dim() == 3 else f
            labels, xname = [str(h) for h in range(f.shape[1])], "head"
        else:
            labels, xname = [t.replace("\n", "\\n") for t in task.train.tokens[0]], "position"
        panels.append((site, f, labels, xname))
    n_cols = max(f.shape[1] for _, f, _, _ in panels)
    fig, axes = plt.subplots(len(panels), 1, squeeze=False, constrained_layout=True,
                             figsize=(max(6.0, 0.5 * n_cols + 1.5), len(panels) * (0.32 * iv.n_layer + 1.6) + 1.6))
    for ax, (site, f, labels, xname) in zip(axes[:, 0], panels, strict=True):
        im = ax.imshow(f.numpy(), cmap="Greens", vmin=0, vmax=1, aspect="auto")
        ax.set_title(f"{site}: {SITE_NAMES[site]}", loc="left", fontsize=11)
        ax.set_xticks(range(len(labels)), labels, rotation=60 if xname == "position" else 0,
                      ha="right" if xname == "position" else "center", rotation_mode="anchor", fontsize=8)
        ax.set_yticks(range(0, iv.n_layer, max(1, iv.n_layer // 16)))
        ax.set_ylabel("layer")
        ax.set_xlabel(xname, fontsize=9)
        for (y, x), v in zip(torch.cartesian_prod(torch.arange(f.shape[0]), torch.arange(f.shape[1])).tolist(),
                             f.flatten().tolist(), strict=True):
            if v > 0:
                ax.text(x, y, f"{v:.1f}", ha="center", va="center", fontsize=7,
                        color="white" if v >= runs["threshold"] else "black")
    cbar = fig.colorbar(im, ax=axes[:, 0].tolist(), orientation="horizontal", aspect=50, shrink=0.8)
    cbar.set_label(f"share of the {runs['runs']} fits that keep the location (each fit its K = {runs['K']} largest);"
                   f" kept in the end: >= {runs['threshold']:g} (white numbers)", fontsize=9)
    fig.suptitle(f"{title}\n{runs['selected']} locations kept · {selection.describe_agreement(runs)}", fontsize=11)
    save_figure(fig, path, dpi=120)


# ----------------------------------------------------------------------------- knockout check


def knockout_check(model, batch: ascale.Batch, tokens: list[str], runs: dict, title: str,
                   max_prompts: int | None = None) -> dict:
    """Compute the knockout map and the attribution once for the sites of `runs` ({method: (iv, run
    folder)}, interventions on these prompts), compare each intervention with it, and write its
    knockout.png and the "knockout" entry of its metrics.json. Returns {method: agreement numbers}.
    All of it on at most max_prompts of the prompts, evenly spread (None: as many as the knockout map
    affords within knockout.KNOCKOUT_FLOPS); the figure and the entry (n_prompts) say how many."""
    sites = list(dict.fromkeys(s for iv, _ in runs.values() for s in iv.sites))
    if max_prompts is None:
        max_prompts = knockout.knockout_prompts(model, batch.ids.shape[1], sites)
    n_all, batch = len(batch), knockout.spread(batch, max_prompts)
    used = f"{len(batch)} of {n_all} training prompts"
    print(f"knockout map: {len(sites)} site(s) x {model.config.n_layer} layers x {batch.ids.shape[1]} positions,"
          f" {used}")
    effects = knockout.knockout(model, batch, sites, max_prompts=len(batch))
    estimate = {s: -g for s, g in knockout.attribution(model, batch, sites).items()}  # linear estimate of knockout
    out = {}
    for method, (iv, folder) in runs.items():
        acts = location_map(model, iv, batch)
        agree = knockout.agreement(acts, {s: effects[s] for s in iv.sites})
        if method == "steervec":       # ‖β·v‖ has no sign
            agree["sign_agreement"] = float("nan")
        agree["attribution_spearman"] = knockout.agreement(estimate, effects)["spearman"]
        agree = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in agree.items()}  # JSON: null
        agree["n_prompts"] = len(batch)
        out[method] = agree
        plot_knockout(folder / "knockout.png", tokens, effects, estimate, acts, agree,
                      f"{method} · {title} · knockout over {used}")
        metrics_file = folder / "metrics.json"
        if metrics_file.exists():
            metrics = json.loads(metrics_file.read_text())
            metrics["knockout"] = agree
            write_json(metrics_file, metrics)
        print(f"{method}: {summary(agree)}")
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


# ----------------------------------------------------------------------------- sweeps


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
