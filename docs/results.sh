#!/usr/bin/env bash
# Every result docs/results-toyworld.md shows for the toy world, from scratch: offline, CPU, about 10 minutes
# (step 7, every method with today's defaults, about 10 more).
# Run from the project's root: bash docs/results.sh   (writes runs/toyworld-results/, copies the figures to docs/)
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/toyworld-results
mkdir -p "$out"
model=models/toyworld
# These pages were made before the validation split and the one-standard-error rule became the defaults: their runs
# pass the earlier choices (no validation split: K and strengths read training prompts, never the test split; a
# fixed tolerance of 0.03), so that the numbers on the pages stay reproducible (docs/method.md, "Validation").
earlier="--validation 0 --tolerance 0.03"
# The toy world's results were made with the defaults of their day, before the cosine schedule and the
# retuning on SmolLM2 (docs/results-smollm2.md, "How the defaults were chosen"): a constant lr 0.05 for 300 steps, λM 0.01,
# margin 2. Every run here passes them, so the toy-world numbers of docs/results-toyworld.md stay reproducible.
old="--schedule constant --steps 300 --lambda-m 0.01 --margin 2 --locations all --batch-size 32"

# 1. Every method side by side, each checked against the knockout map (CCC and IOI; the page's table of the ℓ1 fit
#    shows the three there were then; ScaleShift's numbers with today's defaults are step 7's).
for task in ccc ioi; do
  python train.py $earlier --model $model --task $task --method all --knockout --generate 8 --out "$out/$task-all" --overwrite $old
done
# 2. DynScalar on all CCC templates (74% copy the context, 26% trust memory: flip pushes both ways),
#    on prompt lengths it never saw in training, and steered one way (to memory) instead.
python train.py $earlier --model $model --task ccc --method dynscalar --out "$out/ccc-dynscalar" --overwrite $old
python train.py $earlier --model $model --task ccc --method dynscalar --unseen-lengths --out "$out/ccc-dynscalar-unseen" --overwrite $old
python train.py $earlier --model $model --task ccc --method dynscalar --target correct --out "$out/ccc-dynscalar-correct" --overwrite $old
# 3. What minimality costs: the λM sweep, the three methods.
python analyze.py lambda --model $model --task ccc --out "$out/ccc-lambda" --overwrite --schedule constant --steps 300 \
  --margin 2 --methods activscalar,steervec,dynscalar
# 4. The strength dial of the CCC ActivScalar run.
python analyze.py beta "$out/ccc-all/activscalar/intervention.safetensors"
# 5. How the defaults were chosen: learning rate x steps for ActivScalar at margin 2, then the margin
#    at the chosen lr and steps (λM is the sweep above).
for task in ccc ioi; do
  for lr in 0.01 0.02 0.05 0.1; do
    for steps in 100 300 600; do
      python train.py $earlier --model $model --task $task --lr $lr --steps $steps --out "$out/tune/$task-lr$lr-s$steps-m2" \
        --overwrite --schedule constant --lambda-m 0.01 > /dev/null 2>&1
    done
  done
  for margin in 0 1 3; do
    python train.py $earlier --model $model --task $task --margin $margin --out "$out/tune/$task-lr0.05-s300-m$margin" \
      --overwrite --schedule constant --steps 300 --lambda-m 0.01 > /dev/null 2>&1
  done
done
python - "$out/tune" <<'EOF'
import json, sys
from pathlib import Path
runs = [json.loads(f.read_text()) for f in Path(sys.argv[1]).glob("*/metrics.json")]
print("task  margin  lr     steps  flip train / test  KL test  active")
for m in sorted(runs, key=lambda m: (m["config"]["task"], m["config"]["margin"], m["config"]["lr"], m["config"]["steps"])):
    c = m["config"]
    print(f"{c['task']:5} {c['margin']:<7g} {c['lr']:<6g} {c['steps']:<6} {m['train']['flip_rate']:.2f} / "
          f"{m['test']['flip_rate']:.2f}        {m['test']['kl']:.3f}    {m['n_active']:.0f}")
EOF

cp "$out/ccc-all/activscalar/heatmap.png" docs/toyworld-ccc-heatmap.png
cp "$out/ccc-all/activscalar/knockout.png" docs/toyworld-ccc-knockout.png
cp "$out/ccc-lambda/tradeoff.png" docs/toyworld-ccc-tradeoff.png
cp "$out/ccc-all/activscalar/beta.png" docs/toyworld-ccc-beta.png
cp "$out/ioi-all/activscalar/heatmap.png" docs/toyworld-ioi-heatmap.png

# 6. A map you can trust (the first section of docs/results-toyworld.md): today's defaults, selection included,
#    CCC with the knockout check, IOI over five seeds, and seed 3 with 200 steps; one table line per run.
python train.py $earlier --model $model --task ccc --knockout --out "$out/selected/ccc-0" --overwrite
for seed in 0 1 2 3 4; do
  python train.py $earlier --model $model --task ioi --seed $seed --out "$out/selected/ioi-$seed" --overwrite
done
python train.py $earlier --model $model --task ioi --seed 3 --steps 200 --out "$out/selected/ioi-3-steps200" --overwrite
python - "$out/selected" <<'PY'
import json, sys
from pathlib import Path
for f in sorted(Path(sys.argv[1]).glob("*/metrics.json")):
    m = json.loads(f.read_text())
    if "selection" not in m:          # the --runs folders below
        continue
    tr, te, sel = m["train"], m["test"], m["selection"]
    print(f"{f.parent.name:15} flip {tr['flip_rate']:.2f} [{tr['flip_rate_ci'][0]:.2f}, {tr['flip_rate_ci'][1]:.2f}] /"
          f" {te['flip_rate']:.2f} [{te['flip_rate_ci'][0]:.2f}, {te['flip_rate_ci'][1]:.2f}]  KL {te['kl']:.2f}"
          f" [{te['kl_ci'][0]:.2f}, {te['kl_ci'][1]:.2f}]  active {m['n_active']:.0f} (before: {sel['unpruned']['units']},"
          f" l1 fit's flip on the selection prompts {sel['unpruned']['select_flip_rate']:.2f})")
PY
cp "$out/selected/ccc-0/heatmap.png" docs/toyworld-ccc-selected-heatmap.png
# Stability selection on CCC, two seeds (two splits of the countries), and the Jaccard index of their final sets.
for seed in 1 2; do
  python train.py $earlier --model $model --task ccc --runs 5 --seed $seed --out "$out/selected/ccc-runs5-seed$seed" --overwrite
done
python - "$out/selected" <<'PY'
import sys
from safetensors.torch import load_file
sets = [{(k, i) for k, v in load_file(f"{sys.argv[1]}/ccc-runs5-seed{s}/intervention.safetensors").items()
         for i in (v.abs() >= 0.05).flatten().nonzero()[:, 0].tolist()} for s in (1, 2)]
print(f"final sets: {len(sets[0])} and {len(sets[1])} locations, Jaccard {len(sets[0] & sets[1]) / len(sets[0] | sets[1]):.2f}")
PY
cp "$out/selected/ccc-runs5-seed1/stability.png" docs/toyworld-ccc-stability.png

# 7. ScaleShift beside the other methods (docs/results-toyworld.md, "ScaleShift beside the other methods"): today's
#    defaults, selection included, every method on CCC and IOI; one table line per run. Then ScaleShift's kept
#    locations, how much of their change turns h, and the test flip rate with its shift or its scale part set to 0.
for task in ccc ioi; do
  python train.py $earlier --task $task --model $model --method all --out "$out/methods/$task-all" --overwrite
done
python - "$out/methods" <<'PY'
import json, sys
from pathlib import Path
for f in sorted(Path(sys.argv[1]).glob("*/*/metrics.json")):
    m = json.loads(f.read_text())
    tr, te, sel = m["train"], m["test"], m.get("selection", {})
    ci = lambda s: f"{s['flip_rate']:.2f} [{s['flip_rate_ci'][0]:.2f}, {s['flip_rate_ci'][1]:.2f}]"
    print(f"{m['config']['task']:4} {m['method']:12} flip {ci(tr)} / {ci(te)}  KL {te['kl']:.2f} [{te['kl_ci'][0]:.2f},"
          f" {te['kl_ci'][1]:.2f}]  active {m['n_active']:.1f}  parameters {m['n_params']:,}  K {sel.get('K')}"
          f" of {sel.get('unpruned', {}).get('units')}")
PY
for task in ccc ioi; do
  echo "$task:"
  python analyze.py parts "$out/methods/$task-all/scaleshift/intervention.safetensors"
done
cp "$out/methods/ioi-all/scaleshift/heatmap.png" docs/toyworld-ioi-scaleshift-heatmap.png

# 8. Against a push (docs/results-toyworld.md, "Against a push"): today's defaults (no $earlier) over ten seeds of CCC and IOI, each
#    run beside its offset control (one constant on the two answer logits), its sides and its balanced flip; then
#    every method on CCC seed 0 the same way. One markdown row per run (analyze.py yardsticks).
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
python analyze.py compare "$out"/seeds/ccc-all/{activscalar,steervec,scaleshift,diffmean}   # paired (DynScalar: other prompts)
# The IOI seeds whose ℓ1 fit stops short, with three times the steps and with half the minimality weight.
for seed in 5 7 8 9; do
  python train.py --model $model --task ioi --seed $seed --steps 300 --out "$out/ioi-frontier/steps300-$seed" --overwrite
  python train.py --model $model --task ioi --seed $seed --lambda-m 0.01 --out "$out/ioi-frontier/lm0.01-$seed" --overwrite
done
python analyze.py yardsticks "$out"/ioi-frontier/steps300-{5,7,8,9} "$out"/ioi-frontier/lm0.01-{5,7,8,9}
