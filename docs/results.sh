#!/usr/bin/env bash
# Every result the README shows for the toy world, from scratch: offline, CPU, about 10 minutes.
# Run from the project's root: bash docs/results.sh   (writes runs/toyworld-results/, copies the figures to docs/)
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/toyworld-results
mkdir -p "$out"
model=models/toyworld

# 1. The three methods side by side, each checked against the knockout map (CCC and IOI).
for task in ccc ioi; do
  python train.py --model $model --task $task --method all --knockout --generate 8 --out "$out/$task-all" --overwrite
done
# 2. DynScalar on all CCC templates (74% copy the context, 26% trust memory: flip pushes both ways),
#    on prompt lengths it never saw in training, and steered one way (to memory) instead.
python train.py --model $model --task ccc --method dynscalar --out "$out/ccc-dynscalar" --overwrite
python train.py --model $model --task ccc --method dynscalar --unseen-lengths --out "$out/ccc-dynscalar-unseen" --overwrite
python train.py --model $model --task ccc --method dynscalar --target correct --out "$out/ccc-dynscalar-correct" --overwrite
# 3. What minimality costs: the λM sweep, the three methods.
python analyze.py lambda --model $model --task ccc --out "$out/ccc-lambda" --overwrite
# 4. The strength dial of the CCC ActivScalar run.
python analyze.py beta "$out/ccc-all/activscalar/intervention.safetensors"
# 5. How the defaults were chosen: learning rate x steps for ActivScalar (λM is the sweep above).
for task in ccc ioi; do
  for lr in 0.01 0.02 0.05; do
    for steps in 50 100 200 400; do
      python train.py --model $model --task $task --lr $lr --steps $steps --out "$out/tune/$task-lr$lr-s$steps" \
        --overwrite > /dev/null 2>&1
    done
  done
done
python - "$out/tune" <<'EOF'
import json, sys
from pathlib import Path
print("task  lr     steps  flip train / test  KL test  active")
for f in sorted(Path(sys.argv[1]).glob("*/metrics.json"), key=lambda p: (p.parent.name.split("-")[0],
                float(p.parent.name.split("-lr")[1].split("-s")[0]), int(p.parent.name.split("-s")[-1]))):
    m, c = json.loads(f.read_text()), json.loads(f.read_text())["config"]
    print(f"{c['task']:5} {c['lr']:<6} {c['steps']:<6} {m['train']['flip_rate']:.2f} / {m['test']['flip_rate']:.2f}"
          f"        {m['test']['kl']:.3f}    {m['n_active']:.0f}")
EOF

cp "$out/ccc-all/activscalar/heatmap.png" docs/toyworld-ccc-heatmap.png
cp "$out/ccc-all/activscalar/knockout.png" docs/toyworld-ccc-knockout.png
cp "$out/ccc-lambda/tradeoff.png" docs/toyworld-ccc-tradeoff.png
cp "$out/ccc-all/activscalar/beta.png" docs/toyworld-ccc-beta.png
cp "$out/ioi-all/activscalar/heatmap.png" docs/toyworld-ioi-heatmap.png
