"""
What a run shows besides its numbers: the heatmap of where an intervention acts, the knockout check
of that heatmap, and the curves of a sweep. train.py and analyze.py both write them; every figure is
a PNG written atomically (rendered to memory first, then ascale.write_atomically), into the folder
it is given (train.py and analyze.py give it a run folder's staging folder, see runfolder.RunFolder).
Each plot function returns its matplotlib Figure (path None: nothing is written), so a notebook shows it and
a script can save it anywhere. None sets a backend: the scripts choose Agg in their main, a notebook its own.

    heatmap         one panel per site: layers x positions (or heads), β·α or ‖β·v‖ per location
    plot_locations  the locations path of the selection: flip rate and KL against K (locations.png)
    stability       each location's selection frequency over --runs fits (stability.png)
    knockout_check  the knockout map (change of ℓ(A) − ℓ(B)), over all prompts and per side, and its linear
                    estimate, compared with an intervention (knockout.knockout_sides, knockout.attribution,
                    knockout.agreement): knockout.png and a "knockout" entry in the run's metrics.json
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

PALETTE = ("tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:red", "tab:brown")  # one colour per method
EVERY = "every position"  # the one column of a position-free (shared) map
SITE_NAMES = {"head": "attention heads", "attn_out": "attention output", "mlp_out": "MLP output",
              "resid": "residual stream after the block"}


def write_json(path: Path, obj) -> None:
    ascale.write_atomically(path, json.dumps(obj, indent=1).encode())


def save_figure(fig, path: Path | None, dpi: int = 110):
    """Take a finished figure out of pyplot's list of open figures (a long run makes many; a notebook shows the
    returned figure once, not twice), and if path is given, render it to PNG in memory and write it atomically.
    Returns the figure, which still draws and saves (fig.savefig)."""
    import matplotlib.pyplot as plt
    plt.close(fig)
    if path is not None:
        png = io.BytesIO()
        fig.savefig(png, dpi=dpi, format="png")
        ascale.write_atomically(path, png.getvalue())
    return fig


# ----------------------------------------------------------------------------- heatmap


def heatmap(model, iv, task, path: Path | None, title: str, metrics: dict):
    """One panel per site: layers x positions (the prompt's tokens on the axis), or layers x heads.
    A signed map (iv.signed: β·α) on a diverging colour map, white = no change; a size (‖β·v‖) white to red,
    white = 0; the colour bar says which (iv.map_label). metrics: metrics.measure's (flip rates, parameters,
    active locations: the title). Returns the Figure."""
    import matplotlib.pyplot as plt

    if getattr(iv, "shared", False):  # position-free: one column, read by every position
        maps, tokens, which = iv.location_map(), [EVERY], "any prompt: one value shared by every position"
    elif not iv.tied_to_positions:  # DynScalar: its scalars on one test prompt, which may have any length
        T = int(task.test.answer_pos[0]) + 1
        maps, tokens, which = iv.location_map(model, task.test.ids[:1, :T]), task.test.tokens[0], "test prompt 1"
    else:
        maps, tokens, which = iv.location_map(), task.train.labels, "training prompt 1"
    scalar = iv.signed                                               # β·α: signed; ‖β·v‖: a size
    panels = []
    for site, m in maps.items():
        m = m.float().cpu()                                          # (L, T) or (L, T, nh)
        if m.dim() == 3:  # heads: each head's value at the position where it is largest in size
            m = m.gather(1, m.abs().argmax(1, keepdim=True))[:, 0]   # (L, nh)
            panels.append((site, m, [str(h) for h in range(m.shape[1])], "head (its value where it is largest)"))
        else:
            where = f"position (tokens of {which})" if task.train.slots is None or not iv.tied_to_positions else \
                "slot (the template's tokens; <text>: all of the text's)"
            panels.append((site, m, [t.replace("\n", "\\n") for t in tokens], where))
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
    cbar = fig.colorbar(im, ax=axes[:, 0].tolist(), orientation="horizontal", aspect=50, shrink=0.8)
    cbar.set_label(iv.map_label, fontsize=9)
    fig.suptitle(f"{title}\nflip rate {metrics['train']['flip_rate']:.0%} train, {metrics['test']['flip_rate']:.0%}"
                 f" test · {metrics['n_params']:,} parameters · {metrics['n_active']:.0f} active locations",
                 fontsize=11)
    return save_figure(fig, path, dpi=120)


# ----------------------------------------------------------------------------- selection (selection.py)


def plot_locations(path: Path | None, sel: dict, title: str):
    """The locations path of selection.choose: flip rate and KL after the refit against K, the number of
    locations kept, on the path's selection prompts (training prompts: drawn as "train"; the path reads no
    test prompt, so there is no test line). Returns the Figure."""
    nan = float("nan")
    rows = [{"flip_rate_test": nan, "kl_test": nan, "flip_rate_train": r["flip_rate_select"],
             "kl_train": r["kl_select"], "K": r["K"], "method": f"refit of {r['steps']} steps"} for r in sel["path"]]
    return plot_curves(path, rows, "K", "K, locations kept (log scale)", None,
                f"{title}: K = {sel['K']}\n(ℓ1 fit: {sel['unpruned']['units']} active units, flip"
                f" {sel['unpruned']['select_flip_rate']:.2f} on the {sel['selection_prompts']} selection prompts)",
                log_x=True)


def stability(model, iv, task, path: Path | None, runs: dict, title: str):
    """One panel per site: each location's selection frequency over the --runs fits (layers x positions;
    heads: each head's largest over positions; DynScalar: layers x heads or one column), the
    final set outlined by the threshold in the colour bar's label. Returns the Figure."""
    import matplotlib.pyplot as plt

    panels = []
    for site, f in runs["frequencies"].items():
        f = torch.tensor(f)
        if f.dim() == 1:                                              # a DynScalar probe per layer
            f, labels, xname = f[:, None], ["probe"], "one probe per layer"
        elif getattr(iv, "shared", False) and f.dim() == 2:               # position-free: one column
            labels, xname = [EVERY], "position"
        elif not iv.tied_to_positions or f.dim() == 3:                    # heads (DynScalar's, or ActivScalar's)
            f = f.amax(1) if f.dim() == 3 else f
            labels, xname = [str(h) for h in range(f.shape[1])], "head"
        else:
            labels, xname = [t.replace("\n", "\\n") for t in task.train.labels], "position"
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
    return save_figure(fig, path, dpi=120)


# ----------------------------------------------------------------------------- knockout check


KNOCKOUT_NAMES = {"zero": "zero ablation", "mean": "mean ablation"}


def knockout_check(model, batch: ascale.Batch, tokens: list[str], runs: dict, title: str,
                   max_prompts: int | None = None, mode: str = "zero") -> dict:
    """Compute the knockout map (per side too) and the attribution once for the sites of `runs` ({method: (iv,
    run folder)}, interventions on these prompts), compare each intervention with it, and write its
    knockout.png and the "knockout" entry of its metrics.json. Returns {method: agreement numbers}.
    The maps are changes of ℓ(A) − ℓ(B) ("effect" says so); the sign agreement is read toward the answer most
    of the prompts target ("sign_toward"), and is not reported for mean ablation (knockout.agreement).
    "per_side": the same numbers against the map of side a (the prompts whose original model preferred A) and
    of side b, each with its number of prompts (under `flip`, side a's prompts all target B, side b's all A).
    All of it on at most max_prompts of the prompts, evenly spread (None: as many as the knockout map
    affords within knockout.KNOCKOUT_FLOPS); the figure and the entry (n_prompts) say how many.
    mode "mean": mean ablation (knockout.knockout), each location's mean taken over all of `batch`; its
    figure is knockout-mean.png, its entry "knockout_mean". With a slot map the locations are slots, and
    DynScalar, whose map is not one per slot, is left out."""
    if batch.slots is not None and (left := [m for m, (iv, _) in runs.items() if not iv.tied_to_positions]):
        print(f"knockout map: {', '.join(left)} left out (its scalars are not one per slot)")
        runs = {m: r for m, r in runs.items() if m not in left}
    if not runs:
        return {}
    sites = list(dict.fromkeys(s for iv, _ in runs.values() for s in iv.sites))
    if max_prompts is None:
        max_prompts = knockout.knockout_prompts(model, batch, sites)
    n_all, full, batch = len(batch), batch, knockout.spread(batch, max_prompts)
    used = f"{len(batch)} of {n_all} training prompts"
    means = knockout.location_means(model, full, sites) if mode == "mean" else None    # over all the prompts
    S = len(tokens)
    print(f"knockout map ({KNOCKOUT_NAMES[mode]}): {len(sites)} site(s) x {model.config.n_layer} layers x {S}"
          f" {'positions' if batch.slots is None else 'slots'}, {used}")
    maps = knockout.knockout_sides(model, batch, sites, max_prompts=len(batch), mode=mode, means=means)
    effects, side_of = maps["all"], knockout.sides(batch)
    side_batch = {k: batch[m.nonzero()[:, 0]] for k, m in side_of.items()}
    estimate = {s: -g for s, g in knockout.attribution(model, batch, sites).items()}  # linear estimate of knockout
    out = {}
    for method, (iv, folder) in runs.items():
        acts = location_map(model, iv, batch)

        def agree_with(m, b, iv=iv, acts=acts):   # the agreement with map m of the prompts b
            toward = knockout.majority_target(b) if mode == "zero" and len(b) else None
            a = knockout.agreement(acts, {s: m[s] for s in iv.sites}, sign_toward=toward)
            if not iv.signed and "sign_agreement" in a:              # ‖β·v‖ has no sign
                a["sign_agreement"] = float("nan")
            return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in a.items()}  # JSON: null

        agree = agree_with(effects, batch)
        attribution = knockout.agreement(estimate, effects, sign_toward=None)["spearman"]
        agree["attribution_spearman"] = None if math.isnan(attribution) else attribution
        agree["n_prompts"], agree["mode"], agree["effect"] = len(batch), mode, "l(A) - l(B)"
        agree["per_side"] = {k: {"n_prompts": len(b), **(agree_with(maps[k], b) if len(b) else {})}
                             for k, b in side_batch.items()}
        out[method] = agree
        name = "knockout" if mode == "zero" else f"knockout_{mode}"
        plot_knockout(folder / f"{name.replace('_', '-')}.png", tokens, effects, estimate, acts, agree,
                      f"{method} · {title} · knockout ({KNOCKOUT_NAMES[mode]}) over {used}",
                      iv.map_label.split(",")[0], sides={k: maps[k] for k, b in side_batch.items() if len(b)})
        metrics_file = folder / "metrics.json"
        if metrics_file.exists():
            metrics = json.loads(metrics_file.read_text())
            metrics[name] = agree
            write_json(metrics_file, metrics)
        print(f"{method}: {summary(agree)}")
    return out


def summary(agree: dict) -> str:
    """The agreement numbers in one line (n/a where a number does not exist; no sign agreement for mean
    ablation), then each side's."""
    def num(key, fmt, a=agree):
        return "n/a" if a.get(key) is None else format(a[key], fmt)

    def signs(a):
        return f"sign agreement toward {a['sign_toward']} {num('sign_agreement', '.0%', a)}" if "sign_toward" in a \
            else "no sign agreement"
    line = (f"Spearman(|β·α|, |knockout|) {num('spearman', '.2f')}; {num('large_active', '.0%')} of {agree['n_large']}"
            f" large-effect locations active; {signs(agree)}; attribution vs knockout"
            f" {num('attribution_spearman', '.2f')}")
    for k, a in agree.get("per_side", {}).items():
        if a["n_prompts"]:
            line += (f"\n  side {k} ({a['n_prompts']} prompts): Spearman {num('spearman', '.2f', a)};"
                     f" {num('large_active', '.0%', a)} of {a['n_large']} large active; {signs(a)}")
    return line


def location_map(model, iv, batch) -> dict[str, torch.Tensor]:
    """What the intervention does per location: β·α (ActivScalar, ScaleShift), ‖β·v‖ (SteerVec), β·α(h)
    averaged over the prompts, like the knockout map (DynScalar)."""
    if not iv.tied_to_positions:
        return {s: m.cpu() for s, m in iv.location_map(model, batch.ids).items()}
    return {s: m.cpu() for s, m in iv.location_map().items()}


def _by_head(m: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """(L, T, nh) -> (L, nh): each head's value at the position `where` (L, 1, nh) picks."""
    return m.gather(1, where)[:, 0]


def plot_knockout(path: Path | None, tokens, effects, estimate, acts, agree, title, map_name: str = "β·α",
                  sides: dict | None = None):
    """One row per site: knockout effect (change of ℓ(A) − ℓ(B)) | the same over side a's and side b's prompts
    (`sides`: {"a": maps, "b": maps}, those there are) | its linear estimate (attribution) | the intervention's
    map (`map_name`: β·α, ‖β·v‖); then a scatter of |map| against |knockout effect| over all locations.
    Returns the Figure."""
    import matplotlib.pyplot as plt

    sides = sides or {}
    rows = []
    for site in acts:  # each: site, [(map, what, vmax key, colour map)], labels, xname
        e, x = effects[site], acts[site].float()
        panels = [(e, "knockout: Δ(ℓ(A) − ℓ(B)), switched off", "logit", "PuOr")]
        panels += [(m[site], f"the same, side {k} (preferred {k.upper()})", "logit", "PuOr")
                   for k, m in sides.items()]
        panels += [(estimate[site], "attribution's estimate of it, −∂Δ/∂α", "logit", "PuOr"),
                   (x, f"the intervention, {map_name}", "act", "RdBu_r")]
        if e.dim() == 3:  # heads: each head at the position where its knockout effect is largest
            where = e.abs().argmax(1, keepdim=True)
            panels = [(_by_head(m, where), *rest) for m, *rest in panels]
            labels, xname = [str(h) for h in range(e.shape[1])], "head (at its largest-effect position)"
        else:
            labels, xname = [t.replace("\n", "\\n") for t in tokens], "position"
        rows.append((site, panels, labels, xname))
    L = rows[0][1][0][0].shape[0]
    vmax = {k: max(float(torch.cat([m.flatten() for r in rows for m, _, key, _ in r[1] if key == k]).abs().max()),
                   1e-6 if k == "logit" else 2 * ascale.ACTIVE) for k in ("logit", "act")}
    cols = len(rows[0][1])
    width = max(12.0, cols * (0.35 * max(len(r[2]) for r in rows) + 1.5))
    fig = plt.figure(figsize=(width, len(rows) * (0.3 * L + 1.8) + 3.6), constrained_layout=True)
    grid = fig.add_gridspec(len(rows) + 1, cols, height_ratios=[0.3 * L + 1.8] * len(rows) + [3.2])
    for r, (site, panels, labels, xname) in enumerate(rows):
        for c, (m, what, key, cmap) in enumerate(panels):
            ax = fig.add_subplot(grid[r, c])
            im = ax.imshow(m.numpy(), cmap=cmap, vmin=-vmax[key], vmax=vmax[key], aspect="auto")
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
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- sweeps


def plot_curves(path: Path | None, rows: list[dict], x: str, xlabel: str, label: str | None, title: str,
                log_x: bool = False):
    """Two panels, flip rate and KL (test solid, train dotted) against `x`, one colour per method;
    points joined in the order of `label` (and annotated with it) or of `x`. Returns the Figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for ax, (key, name) in zip(axes, [("flip_rate", "flip rate"), ("kl", "KL of the other tokens, nats")],
                               strict=True):
        for i, method in enumerate(methods):
            color = PALETTE[i % len(PALETTE)]
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
    return save_figure(fig, path)
