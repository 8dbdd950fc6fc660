"""
groundtruth.py's scoring on a real model: GPT-2 small's IOI against the circuit the literature gives (Wang et al.
2023, "Interpretability in the Wild"). Needs the network once (GPT-2's weights from the Hub); not run in CI.

    python groundtruth_ioi.py                      3 seeds of the IOI task on gpt2: the table, and
                                                   runs/groundtruth-ioi.json (about an hour on 2 CPU cores)
    python groundtruth_ioi.py --seeds 1 --steps 20 a quick look

The locations are GPT-2's 144 heads (the `head` site); each map is summed over the prompt's positions
(|size| per head: a head is on the circuit wherever in the prompt it acts). The truth is every head of CIRCUIT,
all classes together; the score, as on the compiled programs, AUROC and precision at k = the circuit's size.
Caveats (docs/results-groundtruth.md): the circuit was found with path patching on one template family and mean
ablation over the ABC distribution, not by construction; its heads differ in how much they carry, and heads
outside it matter too (the paper's own faithfulness falls short of 100 %). A low score is not a proof that a map is
wrong; it says how far it is from that reading of the model.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

import ascale
import tasks
from diffmean import DiffMean
from gpt2 import GPT
from groundtruth import MAPS, interval, make_maps
from loading.tokenizer import get_tokenizer
from running.stats import auroc, precision_at_k

# Wang et al. 2023, Figure 2 and section 3: layer.head
CIRCUIT = {
    "name mover": ("9.6", "9.9", "10.0"),
    "backup name mover": ("9.0", "9.7", "10.1", "10.2", "10.6", "10.10", "11.2", "11.9"),
    "negative name mover": ("10.7", "11.10"),
    "S-inhibition": ("7.3", "7.9", "8.6", "8.10"),
    "induction": ("5.5", "5.8", "5.9", "6.9"),
    "duplicate token": ("0.1", "0.10", "3.0"),
    "previous token": ("2.2", "4.11"),
}


def circuit_map(cfg, circuit: dict = CIRCUIT) -> torch.Tensor:
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


def score(model, tok, seeds, steps: int, circuit: dict = CIRCUIT, n_train: int = 300, n_test: int = 100) -> dict:
    """AUROC and precision@k of every map, per seed: {map: {"auroc": [...], "precision": [...]}}."""
    truth = circuit_map(model.config, circuit).flatten().numpy()
    out = {m: {"auroc": [], "precision": []} for m in MAPS}
    for seed in seeds:
        task = tasks.load_task("ioi", tok, seed=seed, n_train=n_train, n_test=n_test)
        batches = {k: ascale.prepare(model, getattr(task, k)) for k in ("train", "test")}
        dm = ascale.make(DiffMean, model.config, ("head",), task.train.n_slots)
        dm.compute(model, batches["train"])                  # its default contrast (CAA), its strength
        maps, _ = make_maps(model, batches, seed, steps, ("head",), dm.effect())
        for m in MAPS:
            s = per_head(maps[m]).flatten().numpy()
            out[m]["auroc"].append(auroc(s, truth))
            out[m]["precision"].append(precision_at_k(s, truth))
        print(f"seed {seed}: " + ", ".join(f"{m} {out[m]['auroc'][-1]:.2f}" for m in MAPS), flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--model", default="gpt2", help="GPT-2 small (the circuit's heads are its heads)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=ascale.STEPS)
    p.add_argument("--out", default="runs/groundtruth-ioi.json")
    args = p.parse_args(argv)
    model, tok = GPT.from_pretrained(args.model), get_tokenizer(args.model)
    scores = score(model, tok, list(range(args.seeds)), args.steps)
    k = int(circuit_map(model.config).sum())
    print(f"| map | IOI on {args.model}: AUROC [interval over seeds] · precision at k = {k} of 144 heads |\n|---|---|")
    for m in MAPS:
        a, pr = interval(scores[m]["auroc"]), interval(scores[m]["precision"])
        print(f"| {m} | {a[0]:.2f} [{a[1]:.2f}, {a[2]:.2f}] · {pr[0]:.2f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"seeds": args.seeds, "steps": args.steps, "circuit": CIRCUIT,
                                          "scores": scores}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
