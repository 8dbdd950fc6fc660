#!/usr/bin/env bash
# Every result docs/results-toyworld.md shows for the toy world, from scratch, with today's defaults (a validation
# split that every choice reads, the one-standard-error rule): offline, CPU, about an hour on one thread
# (measured with OMP_NUM_THREADS=1 beside one other job: step 1 about 37 minutes, 2 under 1, 3 about 2, 4 about 19).
# Run from the project's root: bash docs/results.sh   (writes runs/toyworld-results/, copies the figures to docs/)
# bash docs/results.sh STEP runs one step only (1 ... 4); steps 2 and 3 read step 1's runs.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/toyworld-results
mkdir -p "$out"
model=models/toyworld
step() { [ -z "${only:-}" ] || [ "$only" = "$1" ]; }
only=${1:-}
# A saved map's active locations (its value at each, beside the knockout's effect there) and the knockout map's large
# effects (the change of l(A) - l(B) when one location is switched off, over the training prompts), with token names.
where() {
  python - "$1" <<'PY'
import sys
import evaluate, knockout
from cli import setup
from figures import report
model, _, iv, task, batches = setup.open_saved(evaluate.parse_args([sys.argv[1]]))
batch, tokens = batches["train"], task.train.labels
acts = report.location_map(model, iv, batch)
effects = knockout.knockout(model, batch, iv.sites, progress=False)
at = lambda s, l, p: f"{s} layer {l} at {tokens[p]!r} (position {p})"
cells = sorted((s, l, p) for s in iv.sites for l in range(acts[s].shape[0]) for p in range(acts[s].shape[1]))
print(f"{iv.method}: {sum(abs(float(acts[s][l, p])) >= knockout.ACTIVE for s, l, p in cells)} active locations"
      f" of {len(cells)}, by size:")
for s, l, p in sorted(cells, key=lambda c: -abs(float(acts[c[0]][c[1], c[2]]))):
    if abs(float(acts[s][l, p])) >= knockout.ACTIVE:
        print(f"  {at(s, l, p)}: map {float(acts[s][l, p]):+.2f}, knockout {float(effects[s][l, p]):+.2f}")
print("knockout's large effects (|effect| >= 1), by size:")
for s, l, p in sorted(cells, key=lambda c: -abs(float(effects[c[0]][c[1], c[2]]))):
    if abs(float(effects[s][l, p])) >= 1:
        print(f"  {at(s, l, p)}: knockout {float(effects[s][l, p]):+.2f}, map {float(acts[s][l, p]):+.2f}")
PY
}

# 1. Against a push (docs/results-toyworld.md, "Against a push"): ten seeds of CCC and IOI, each run beside its
#    offset control (one constant on the two answer logits), its sides and its balanced flip; then every method on
#    CCC seed 0 the same way. One markdown row per run (analyze.py yardsticks).
if step 1; then
for task in ccc ioi; do
  for seed in 0 1 2 3 4 5 6 7 8 9; do
    python train.py --model $model --task $task --seed $seed --out "$out/seeds/$task-$seed" --overwrite
  done
  python analyze.py yardsticks "$out"/seeds/$task-{0,1,2,3,4,5,6,7,8,9}
done
# The stable maps of two splits (--runs 5, seeds 1 and 2) and how far they agree.
for seed in 1 2; do
  python train.py --model $model --task ccc --runs 5 --seed $seed --out "$out/seeds/ccc-runs5-seed$seed" --overwrite
done
python analyze.py yardsticks "$out"/seeds/ccc-runs5-seed{1,2}
python analyze.py agree "$out"/seeds/ccc-runs5-seed{1,2}/intervention.safetensors
python train.py --model $model --task ccc --method all --out "$out/seeds/ccc-all" --overwrite
python analyze.py yardsticks "$out"/seeds/ccc-all/{activscalar,steervec,dynscalar,scaleshift,diffmean}
python analyze.py compare "$out"/seeds/ccc-all/{activscalar,steervec,dynscalar,scaleshift,diffmean}   # paired
# The IOI seeds whose ℓ1 fit stops short, with three times the steps and with half the minimality weight.
for seed in 5 7 8 9; do
  python train.py --model $model --task ioi --seed $seed --steps 300 --out "$out/ioi-frontier/steps300-$seed" --overwrite
  python train.py --model $model --task ioi --seed $seed --lambda-m 0.01 --out "$out/ioi-frontier/lm0.01-$seed" --overwrite
done
python analyze.py yardsticks "$out"/ioi-frontier/steps300-{5,7,8,9} "$out"/ioi-frontier/lm0.01-{5,7,8,9}
fi

# 2. A map you can trust (docs/results-toyworld.md, "A map you can trust"): what the selection did on each of step 1's
#    seeds (K, the units the ℓ1 fit moved, its flip on the validation prompts), CCC seed 0's map against the knockout
#    map, and the stable maps of step 1 (their fits' agreement; analyze.py agree is in step 1).
if step 2; then
python - "$out/seeds" <<'PY'
import json, sys
from pathlib import Path
for task in ("ccc", "ioi"):
    for s in range(10):
        m = json.loads((Path(sys.argv[1]) / f"{task}-{s}" / "metrics.json").read_text())
        sel = m["selection"]
        print(f"{task}-{s}: K {sel['K']} of {sel['unpruned']['units']} active units; the l1 fit's validation flip"
              f" {sel['unpruned']['select_flip_rate']:.2f}, tolerance {sel['tolerance']:.3f} on {sel['selection_prompts']}"
              f" prompts; test flip {m['test']['flip_rate']:.2f}, KL {m['test']['kl']:.2f}")
for s in (1, 2):
    m = json.loads((Path(sys.argv[1]) / f"ccc-runs5-seed{s}" / "metrics.json").read_text())
    r = m["runs"]
    mean, sd = r["mean_sd"]["test_flip_rate"]
    print(f"ccc-runs5-seed{s}: K {r['K']}, kept by >= 3 of 5 fits {r['selected']}, active {m['n_active']:.0f}; the fits'"
          f" test flip {mean:.2f} ± {sd:.2f}; Jaccard of two fits' selections {r['jaccard_pairs']:.2f} (chance"
          f" {r['jaccard_pairs_chance']:.2f}), of the halves' majority sets {r['jaccard_halves']:.2f}")
PY
python analyze.py knockout "$out/seeds/ccc-0/intervention.safetensors"
for run in ccc-0 ccc-runs5-seed1 ccc-runs5-seed2; do where "$out/seeds/$run/intervention.safetensors"; done
cp "$out/seeds/ccc-0/heatmap.png" docs/toyworld-ccc-selected-heatmap.png
cp "$out/seeds/ccc-runs5-seed1/stability.png" docs/toyworld-ccc-stability.png
fi

# 3. ScaleShift beside the other methods (docs/results-toyworld.md, "ScaleShift beside the other methods"): every
#    method on IOI seed 0 (CCC's is step 1's seeds/ccc-all), their yardsticks and paired comparison; then each
#    ScaleShift's kept locations, how much of their change turns h, and the test flip with its shift or its scale
#    part set to 0.
if step 3; then
python train.py --model $model --task ioi --method all --out "$out/methods/ioi-all" --overwrite
python analyze.py yardsticks "$out"/methods/ioi-all/{activscalar,steervec,dynscalar,scaleshift,diffmean}
python analyze.py compare "$out"/methods/ioi-all/{activscalar,steervec,dynscalar,scaleshift,diffmean}
for run in seeds/ccc-all methods/ioi-all; do
  python analyze.py parts "$out/$run/scaleshift/intervention.safetensors"
  where "$out/$run/scaleshift/intervention.safetensors"
done
cp "$out/methods/ioi-all/scaleshift/heatmap.png" docs/toyworld-ioi-scaleshift-heatmap.png
fi

# 4. The ℓ1 fit before any selection (--locations all: no K to choose), the rest of docs/results-toyworld.md:
#    every method on CCC and IOI with the knockout check and generation; DynScalar on all CCC templates (the model
#    copies the context on most prompts and trusts its memory on about a fifth: flip asks for both), on prompt
#    lengths it never saw, and steered one way (to memory); the λM sweep of three methods; the strength dial of
#    CCC's ActivScalar; where the two ActivScalar maps act, beside the knockout map.
if step 4; then
l1=$out/l1
for task in ccc ioi; do
  python train.py --model $model --task $task --method all --locations all --knockout --generate 8 \
    --out "$l1/$task-all" --overwrite
  python analyze.py yardsticks "$l1"/$task-all/{activscalar,steervec,dynscalar,scaleshift,diffmean}
  python analyze.py compare "$l1"/$task-all/{activscalar,steervec,dynscalar,scaleshift,diffmean}
done
# What the selection changed: step 1's seed-0 runs (the same ℓ1 fit, pruned and refit) against these, paired.
python analyze.py compare "$l1"/ccc-all/activscalar "$out"/seeds/ccc-0
python analyze.py compare "$l1"/ioi-all/activscalar "$out"/seeds/ioi-0
python train.py --model $model --task ccc --method dynscalar --locations all --out "$l1/ccc-dynscalar" --overwrite
python train.py --model $model --task ccc --method dynscalar --locations all --unseen-lengths \
  --out "$l1/ccc-dynscalar-unseen" --overwrite
python train.py --model $model --task ccc --method dynscalar --locations all --target correct \
  --out "$l1/ccc-dynscalar-correct" --overwrite
python analyze.py yardsticks "$l1"/ccc-dynscalar{,-unseen,-correct}
python analyze.py lambda --model $model --task ccc --methods activscalar,steervec,dynscalar --locations all \
  --out "$l1/ccc-lambda" --overwrite
python analyze.py yardsticks "$l1"/ccc-lambda/{activscalar,steervec,dynscalar}-lm{0.001,0.003,0.01,0.03,0.1}
python analyze.py beta "$l1/ccc-all/activscalar/intervention.safetensors"
for task in ccc ioi; do where "$l1/$task-all/activscalar/intervention.safetensors"; done
cp "$l1/ccc-all/activscalar/heatmap.png" docs/toyworld-ccc-heatmap.png
cp "$l1/ccc-all/activscalar/knockout.png" docs/toyworld-ccc-knockout.png
cp "$l1/ccc-lambda/tradeoff.png" docs/toyworld-ccc-tradeoff.png
cp "$l1/ccc-all/activscalar/beta.png" docs/toyworld-ccc-beta.png
cp "$l1/ioi-all/activscalar/heatmap.png" docs/toyworld-ioi-heatmap.png
fi
