"""
Every map the project makes, scored against a circuit known by construction: the compiled programs of
models/tracr/ (world/compiled.py; docs/results-groundtruth.md); with --ioi, against the circuit the literature gives
for GPT-2 small's IOI.

    python groundtruth.py                        every program, 5 seeds: the table, docs/groundtruth.json and
                                                 docs/groundtruth-maps.png (a few minutes on 2 CPU cores)
    python groundtruth.py --seeds 1 --programs prev_token --out /tmp/gt     one program, one seed, quickly
    python groundtruth.py --ioi                  GPT-2 small's IOI, 3 seeds: the table and runs/groundtruth-ioi.json
                                                 (needs the network once for GPT-2's weights; about an hour on 2
                                                 CPU cores; not run in CI)

A map gives each location (a head, or an MLP, at a position: world/compiled.SITES) a size; the ground truth says
which locations carry the contrast to the answer. Each map is scored by its AUROC (the chance that a true
location outscores a false one, ties one half) and its precision at k, k the truth's size (running/stats.py).
The maps (MAPS): ActivScalar's ℓ1 fit |α| and its selected refit (selection.choose), SteerVec's ‖v‖, DynScalar's
|mean α(h)| over the training prompts, ScaleShift's |α| + ‖v‖/max ‖v‖, DiffMean's ‖μ(x') − μ(x)‖ (its class
contrast, the contrast inputs as the class that prefers the target), the zero and the mean knockout |Δ|,
attribution |∂/∂α|, and two yardsticks that know nothing of the contrast: `active`, 1 at every location whose
output is not zero, and `active-at-answer`, the same at the answer position (the last) only.
A seed draws the train/validation/test split of the inputs (world/compiled.load_task) and the minibatch order; each
program is fitted at the defaults of train.py (ascale.STEPS, LR, LAMBDA_M, MARGIN; target flip: toward the
contrast's answer). Every map reads the training inputs; the selected map's K reads the validation inputs.

--ioi: the locations are GPT-2's 144 heads (the `head` site); each map is summed over the prompt's positions (a head
is on the circuit wherever in the prompt it acts), DiffMean with its own contrast (CAA). The truth is every head of
IOI_CIRCUIT (Wang et al. 2023, "Interpretability in the Wild"), all classes together. That circuit was found with
path patching on one template family and mean ablation, not by construction; its heads differ in how much they
carry, and heads outside it matter too (the paper's own faithfulness falls short of 100 %). A low score says how far
a map is from that reading of the model, not that it is wrong.
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
import tasks
from diffmean import DiffMean, class_means
from gpt2 import GPT
from loading.tokenizer import get_tokenizer
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
    rates of ActivScalar's ℓ1 fit and of its selected refit. diffmean: DiffMean's map, made by the caller.
    batches: {"train", "test"[, "val"]}; the maps read train, the selected map's K reads val where there is one."""
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
            batches = {k: ascale.prepare(model, getattr(task, k)) for k in ("train", "val", "test")}  # val: K only
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


# ----------------------------------------------------------------------------- --ioi: GPT-2 small's IOI circuit

# Wang et al. 2023, Figure 2 and section 3: layer.head
IOI_CIRCUIT = {
    "name mover": ("9.6", "9.9", "10.0"),
    "backup name mover": ("9.0", "9.7", "10.1", "10.2", "10.6", "10.10", "11.2", "11.9"),
    "negative name mover": ("10.7", "11.10"),
    "S-inhibition": ("7.3", "7.9", "8.6", "8.10"),
    "induction": ("5.5", "5.8", "5.9", "6.9"),
    "duplicate token": ("0.1", "0.10", "3.0"),
    "previous token": ("2.2", "4.11"),
}


def circuit_map(cfg, circuit: dict = IOI_CIRCUIT) -> torch.Tensor:
    """(L, nh): 1 at every head of the circuit."""
    truth = torch.zeros(cfg.n_layer, cfg.n_head)
    for heads in circuit.values():
        for head in heads:
            layer, h = map(int, head.split("."))
            truth[layer, h] = 1.0
    return truth


def per_head(maps: dict[str, torch.Tensor]) -> torch.Tensor:
    """A head-site map (L, T, nh) -> (L, nh), summed over the positions."""
    return maps["head"].sum(1)


def ioi_scores(model, tok, seeds, steps: int, circuit: dict = IOI_CIRCUIT, n_train: int = 300,
               n_test: int = 100) -> dict:
    """AUROC and precision@k of every map on the IOI task against a circuit of heads, per seed: {map: {"auroc":
    [...], "precision": [...]}}."""
    truth = circuit_map(model.config, circuit).flatten().numpy()
    out = {m: {"auroc": [], "precision": []} for m in MAPS}
    for seed in seeds:
        task = tasks.load_task("ioi", tok, seed=seed, n_train=n_train, n_test=n_test, val_frac=compiled.VAL_FRAC)
        batches = {k: ascale.prepare(model, getattr(task, k)) for k in ("train", "val", "test")}  # val: K only
        dm = ascale.make(DiffMean, model.config, ("head",), task.train.n_slots)
        dm.compute(model, batches["train"])                  # its default contrast (CAA), its strength
        maps, _ = make_maps(model, batches, seed, steps, ("head",), dm.effect())
        for m in MAPS:
            s = per_head(maps[m]).flatten().numpy()
            out[m]["auroc"].append(auroc(s, truth))
            out[m]["precision"].append(precision_at_k(s, truth))
        print(f"seed {seed}: " + ", ".join(f"{m} {out[m]['auroc'][-1]:.2f}" for m in MAPS), flush=True)
    return out


def main_ioi(args) -> int:
    model, tok = GPT.from_pretrained(args.model), get_tokenizer(args.model)
    seeds = args.seeds or 3
    scores = ioi_scores(model, tok, list(range(seeds)), args.steps)
    k = int(circuit_map(model.config).sum())
    print(f"| map | IOI on {args.model}: AUROC [interval over seeds] · precision at k = {k} of 144 heads |\n|---|---|")
    for m in MAPS:
        a, pr = interval(scores[m]["auroc"]), interval(scores[m]["precision"])
        print(f"| {m} | {a[0]:.2f} [{a[1]:.2f}, {a[2]:.2f}] · {pr[0]:.2f} |")
    out = Path(args.out or "runs")
    out.mkdir(parents=True, exist_ok=True)
    (out / "groundtruth-ioi.json").write_text(json.dumps({"seeds": seeds, "steps": args.steps,
                                                          "circuit": IOI_CIRCUIT, "scores": scores}, indent=1) + "\n")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--programs", nargs="*", default=list(compiled.PROGRAMS), choices=list(compiled.PROGRAMS))
    p.add_argument("--seeds", type=int, help="seeds 0 ... N-1 (default 5; with --ioi 3)")
    p.add_argument("--steps", type=int, default=ascale.STEPS, help="Adam steps of each ℓ1 fit")
    p.add_argument("--out", help="folder of groundtruth.json and groundtruth-maps.png (default docs); with --ioi,"
                                 " of groundtruth-ioi.json (default runs)")
    p.add_argument("--ioi", action="store_true", help="GPT-2 small's IOI against Wang et al.'s circuit (network)")
    p.add_argument("--model", default="gpt2", help="with --ioi: the model (the circuit's heads are GPT-2 small's)")
    args = p.parse_args(argv)
    if args.ioi:
        return main_ioi(args)
    args.seeds, args.out = args.seeds or 5, args.out or "docs"
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
