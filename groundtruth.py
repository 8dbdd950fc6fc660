"""
Every map the project makes, scored against a circuit known by construction: the compiled programs of
models/tracr/ (world/compiled.py; docs/results-groundtruth.md).

    python groundtruth.py                        every program, 5 seeds: the table, docs/groundtruth.json and
                                                 docs/groundtruth-maps.png (a few minutes on 2 CPU cores)
    python groundtruth.py --seeds 1 --programs prev_token --out /tmp/gt     one program, one seed, quickly

A map gives each location (a head, or an MLP, at a position: world/compiled.SITES) a size; the ground truth says
which locations carry the contrast to the answer. Each map is scored by its AUROC (the chance that a true
location outscores a false one, ties one half) and its precision at k, k the truth's size (running/stats.py).
The maps (MAPS): ActivScalar's ℓ1 fit |α| and its selected refit (selection.choose), SteerVec's ‖v‖, DynScalar's
|mean α(h)| over the training prompts, ScaleShift's |α| + ‖v‖/max ‖v‖, DiffMean's ‖μ(x') − μ(x)‖ (its class
contrast, the contrast inputs as the class that prefers the target), the zero and the mean knockout |Δ|,
attribution |∂/∂α|, and two yardsticks that know nothing of the contrast: `active`, 1 at every location whose
output is not zero, and `active-at-answer`, the same at the answer position (the last) only.
A seed draws the train/test split of the inputs and the minibatch order; each program is fitted at the defaults of
train.py (ascale.STEPS, LR, LAMBDA_M, MARGIN; target flip: toward the contrast's answer).
"""

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import ascale
import knockout
import metrics
import selection
from diffmean import class_means
from gpt2 import GPT
from running.stats import auroc, group_bootstrap, precision_at_k
from scaleshift import ScaleShift
from world import compiled

MAPS = ("activscalar", "activscalar-selected", "steervec", "dynscalar", "scaleshift", "diffmean", "knockout-zero",
        "knockout-mean", "attribution", "active", "active-at-answer")


def fitted(model, cls, batches, seed: int, steps: int, sites) -> ascale.Intervention:
    """An ℓ1 fit of method cls on the training prompts, at train.py's defaults."""
    torch.manual_seed(seed)
    iv = ascale.make(cls, model.config, sites, batches["train"].ids.shape[1])
    ascale.fit(model, iv, batches["train"], steps=steps, seed=seed, progress=False)
    return iv


def contrast_batch(model, task) -> ascale.Batch:
    """The training prompts x and their contrasts x' in one batch, target the contrast's answer on both: x' already
    prefers it (DiffMean's + class), x does not (its − class)."""
    ps = task.train
    pairs = compiled.read(task.name, "task.json")["pairs"]
    of = {(tuple(p["ids"]), p["wrong"]): p["contrast"] for p in pairs}  # one contrast per input and answer
    contrast = torch.tensor([[int(ps.ids[i, 0])] + of[(tuple(ps.ids[i].tolist()), int(ps.wrong[i]))]
                             for i in range(len(ps))])                     # (N, T): tokens 0, 1, 2 are their own ids
    both = replace(ps, ids=torch.cat([ps.ids, contrast]), answer_pos=torch.cat([ps.answer_pos] * 2),
                   correct=torch.cat([ps.wrong] * 2), wrong=torch.cat([ps.correct] * 2), groups=None,
                   prompts=ps.prompts * 2, tokens=ps.tokens * 2, correct_str=ps.wrong_str * 2,
                   wrong_str=ps.correct_str * 2)
    return ascale.prepare(model, both, target="correct")


def active(model, batch, sites=compiled.SITES) -> dict[str, torch.Tensor]:
    """1 where a location's output is not zero on some training prompt (the compiled model's empty heads and MLPs
    are 0)."""
    L, T = model.config.n_layer, batch.ids.shape[1]
    maps = {s: torch.zeros(L, T, model.config.n_head) if s == "head" else torch.zeros(L, T) for s in sites}

    def record(site, layer, h):
        if site in maps:
            maps[site][layer] = torch.maximum(maps[site][layer], h.abs().amax(dim=(0, -1)))
        return h
    with torch.no_grad():
        model(batch.ids, intervene=record)
    return {s: (m > 1e-6).float() for s, m in maps.items()}


def diffmean_map(model, task, sites) -> dict[str, torch.Tensor]:
    """DiffMean's map on a compiled program: ‖μ(x') − μ(x)‖ at the answer position, its class contrast."""
    plus, minus, _, _ = class_means(model, contrast_batch(model, task), sites)
    T = task.train.ids.shape[1]
    out = {s: torch.zeros(model.config.n_layer, T, *plus[s].shape[1:-1]) for s in sites}
    for s in sites:
        out[s][:, T - 1] = (plus[s] - minus[s]).norm(dim=-1)     # DiffMean adds at the answer position only
    return out


def make_maps(model, batches, seed: int, steps: int, sites, diffmean) -> tuple[dict, list]:
    """Every map of MAPS on one split: {name: {site: (L, T) or (L, T, nh)}}, each a size (≥ 0); and the test flip
    rates of ActivScalar's ℓ1 fit and of its selected refit. diffmean: DiffMean's map, made by the caller."""
    train, T = batches["train"], batches["train"].ids.shape[1]
    out = {}
    iv = fitted(model, ascale.ActivScalar, batches, seed, steps, sites)
    out["activscalar"] = iv.effect()
    chosen, _ = selection.choose(model, iv, batches, seed=seed, progress=False)
    out["activscalar-selected"] = chosen.effect()
    flips = [metrics.evaluate(model, x, batches["test"])["flip_rate"] for x in (iv, chosen)]  # steering, for the record
    out["steervec"] = fitted(model, ascale.SteerVec, batches, seed, steps, sites).effect()
    dyn = fitted(model, ascale.DynScalar, batches, seed, steps, sites)
    out["dynscalar"] = {s: m.abs() for s, m in dyn.location_map(model, train.ids).items()}
    out["scaleshift"] = fitted(model, ScaleShift, batches, seed, steps, sites).effect()
    out["diffmean"] = diffmean
    for mode in knockout.MODES:
        out[f"knockout-{mode}"] = {s: m.abs() for s, m in knockout.knockout(model, train, sites, mode=mode,
                                                                              progress=False).items()}
    out["attribution"] = {s: m.abs() for s, m in knockout.attribution(model, train, sites).items()}
    out["active"] = active(model, train, sites)
    out["active-at-answer"] = {s: m * (torch.arange(T) == T - 1).view(1, T, *[1] * (m.dim() - 2))
                               for s, m in out["active"].items()}
    out = {name: {s: m.detach().float().cpu() for s, m in maps.items()} for name, maps in out.items()}
    return out, flips


def flat(maps: dict[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate([maps[s].flatten().numpy() for s in compiled.SITES])


def run(programs, seeds, steps: int) -> tuple[dict, dict]:
    """Scores {program: {map: {"auroc": [per seed], "precision": [...]}}, plus the facts of each program}, and the
    first seed's maps, for the figure."""
    scores, first = {}, {}
    for name in programs:
        model = GPT.from_pretrained(str(compiled.folder(name)))
        truth = compiled.truth(name, model.config)
        t = flat(truth)
        scores[name] = {"truth_size": int(t.sum()), "locations": len(t), "flip": [], **{m: {"auroc": [],
                        "precision": []} for m in MAPS}}
        for seed in seeds:
            start = time.time()
            task = compiled.load_task(name, seed)
            batches = {k: ascale.prepare(model, getattr(task, k)) for k in ("train", "test")}
            maps, flips = make_maps(model, batches, seed, steps, compiled.SITES,
                                    diffmean_map(model, task, compiled.SITES))
            scores[name]["flip"].append(flips)
            for m, mp in maps.items():
                scores[name][m]["auroc"].append(auroc(flat(mp), t))
                scores[name][m]["precision"].append(precision_at_k(flat(mp), t))
            act = flat(maps["active"]).astype(bool)
            scores[name]["active_off_path"] = int((act & ~t.astype(bool)).sum())
            scores[name]["active_locations"] = int(act.sum())
            if seed == seeds[0]:
                first[name] = {"truth": truth, **maps}
            print(f"{name} seed {seed}: " + ", ".join(f"{m} {scores[name][m]['auroc'][-1]:.2f}" for m in MAPS)
                  + f" ({time.time() - start:.0f} s)", flush=True)
    return scores, first


def interval(xs: list[float]) -> list[float]:
    """The mean over seeds and its 95 % percentile bootstrap over the seeds."""
    xs = [x for x in xs if x == x]
    return [float(np.mean(xs)), *group_bootstrap(np.array(xs), seed=0)] if xs else [float("nan")] * 3


def table(scores: dict) -> str:
    """The markdown table: one row per map, one column per program, AUROC mean [interval] and precision@k."""
    names = list(scores)
    head = "| map | " + " | ".join(f"{n} (k = {scores[n]['truth_size']} of {scores[n]['locations']})" for n in names)
    lines = [head + " |", "|---|" + "---|" * len(names)]
    for m in MAPS:
        cells = []
        for n in names:
            a, p = interval(scores[n][m]["auroc"]), interval(scores[n][m]["precision"])
            cells.append(f"{a[0]:.2f} [{a[1]:.2f}, {a[2]:.2f}] · {p[0]:.2f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--programs", nargs="*", default=list(compiled.PROGRAMS), choices=list(compiled.PROGRAMS))
    p.add_argument("--seeds", type=int, default=5, help="seeds 0 ... N-1 (default 5)")
    p.add_argument("--steps", type=int, default=ascale.STEPS, help="Adam steps of each ℓ1 fit")
    p.add_argument("--out", default="docs", help="folder of groundtruth.json and groundtruth-maps.png")
    args = p.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    from figures.groundtruth import plot_maps
    scores, first = run(args.programs, list(range(args.seeds)), args.steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "groundtruth.json").write_text(json.dumps({"seeds": args.seeds, "steps": args.steps, "scores": scores},
                                                     indent=1) + "\n")
    plot_maps(first, MAPS, out / "groundtruth-maps.png")
    print(table(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
