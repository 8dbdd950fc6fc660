#!/usr/bin/env bash
# Every result docs/results-gemma3.md shows for Gemma 3 270M (the base model, Q4_K_M GGUF), the second real
# pretrained model that runs offline, from scratch: CPU. The model file is fetched into data/ on first use (or installed)
# (the weights are under Google's Gemma Terms of Use). Run from the project's root: bash docs/gemma-results.sh
# (writes runs/gemma3-results/today/, copies figures to docs/gemma3-*.png, prints the runs' rows).
# Every run uses today's defaults (a validation split that K and the offset control read, selection's
# one-standard-error rule). Time: each run's metrics.json records its phases ("timings"); single-threaded beside
# another job, the IOI run took 266 s before its knockout check and the CCC run 427 s. The knockout checks' time is
# not recorded.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/gemma3-results
mkdir -p "$out"
model=gemma3-270m

# bash docs/gemma-results.sh methods: IOI with ActivScalar, SteerVec, DynScalar and DiffMean on the same prompts,
# today's defaults but shortened (20 steps of 16 prompts; selection and DiffMean's strength read on validation),
# each beside the offset control, its sides and balanced flip, compared paired with ActivScalar
# (docs/results-gemma3.md, "IOI, the methods").
if [ "${1:-}" = methods ]; then
  for method in activscalar steervec dynscalar diffmean; do
    python train.py --task ioi --model $model --method $method --steps 20 --batch-size 16 --out "$out/methods/ioi-$method" \
      --overwrite
  done
  python analyze.py yardsticks "$out"/methods/ioi-{activscalar,steervec,dynscalar,diffmean}
  python analyze.py compare "$out"/methods/ioi-{activscalar,steervec,diffmean}   # DynScalar reads all lengths: other prompts
  exit 0
fi

# 1. IOI at the defaults (ActivScalar, the l1 fit and selection), with the knockout check of its map
#    (docs/results-gemma3.md, "IOI at the defaults").
python train.py --task ioi --model $model --knockout --out "$out/today/ioi-activscalar" --overwrite
# 2. CCC at the defaults, then the knockout check of its map ("CCC at the defaults").
python train.py --task ccc --model $model --out "$out/today/ccc-activscalar" --overwrite
python analyze.py knockout "$out/today/ccc-activscalar/intervention.safetensors"
# 3. Both runs beside the offset control, their sides and balanced flip, one markdown row each ("Against a push");
#    the figures the page shows.
python analyze.py yardsticks "$out"/today/{ccc,ioi}-activscalar
for task in ioi ccc; do
  cp "$out/today/$task-activscalar/heatmap.png" "docs/gemma3-$task-heatmap.png"
  cp "$out/today/$task-activscalar/knockout.png" "docs/gemma3-$task-knockout.png"
done
