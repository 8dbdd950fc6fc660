#!/usr/bin/env bash
# Every result docs/results-gemma3.md shows for Gemma 3 270M (the base model, Q4_K_M GGUF), the second real
# pretrained model that runs offline, from scratch: CPU. The model file is fetched into data/ on first use (or installed)
# (the weights are under Google's Gemma Terms of Use). Run from the project's root: bash docs/gemma-results.sh
# (writes runs/gemma3-results/, copies figures to docs/gemma3-*.png, and prints one line per run).
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/gemma3-results
mkdir -p "$out"
model=gemma3-270m
# These pages were made before the validation split and the one-standard-error rule became the defaults: their runs
# pass the earlier choices (no validation split: K and strengths read training prompts, never the test split; a
# fixed tolerance of 0.03), so that the numbers on the pages stay reproducible (docs/method.md, "Validation").
earlier="--validation 0 --tolerance 0.03"

# bash docs/gemma-results.sh methods: IOI with ActivScalar, SteerVec, DynScalar and DiffMean on the same prompts,
# today's defaults but shortened as step 3 is (20 steps of 16 prompts; selection and DiffMean's strength read on
# validation), each beside the offset control, its sides and balanced flip, compared paired with ActivScalar
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

# bash docs/gemma-results.sh today: the two default runs with today's defaults (a validation split that every choice
# reads, the one-standard-error rule; no $earlier), CCC and IOI with its knockout check, each beside the offset
# control, its sides and balanced flip (docs/results-gemma3.md, "Against a push"; the front page).
if [ "${1:-}" = today ]; then
  python train.py --task ccc --model $model --out "$out/today/ccc-activscalar" --overwrite
  python train.py --task ioi --model $model --knockout --out "$out/today/ioi-activscalar" --overwrite
  python analyze.py yardsticks "$out"/today/{ccc,ioi}-activscalar
  exit 0
fi

# 1. IOI at the defaults (ActivScalar, the l1 fit and selection), with the knockout check of its map: about
#    15 minutes on 2 cores (a default step takes about 3 s).
start=$(date +%s)
python train.py $earlier --task ioi --model $model --knockout --out "$out/ioi-activscalar" --overwrite
echo "IOI ActivScalar and knockout: $(( $(date +%s) - start )) s" | tee "$out/ioi-activscalar.seconds"
# 2. CCC at the defaults: how often the model already prefers the memorised capital (the conflict), then ActivScalar.
start=$(date +%s)
python train.py $earlier --task ccc --model $model --out "$out/ccc-activscalar" --overwrite
echo "CCC ActivScalar: $(( $(date +%s) - start )) s" | tee "$out/ccc-activscalar.seconds"
python analyze.py knockout "$out/ccc-activscalar/intervention.safetensors"
# 3. IOI with the three methods on the same prompts, shortened (20 steps of 16 prompts, the l1 fit alone), as in
#    the page's table from a loaded machine.
python train.py $earlier --task ioi --model $model --method all --steps 20 --batch-size 16 --locations all \
  --out "$out/ioi-all-20steps" --overwrite

cp "$out/ioi-activscalar/heatmap.png" docs/gemma3-ioi-heatmap.png
cp "$out/ioi-activscalar/knockout.png" docs/gemma3-ioi-knockout.png
cp "$out/ccc-activscalar/heatmap.png" docs/gemma3-ccc-heatmap.png
cp "$out/ccc-activscalar/knockout.png" docs/gemma3-ccc-knockout.png

python - "$out" <<'PY'
import json, sys
from pathlib import Path
print("run                         flip train / test  diff test before -> after  KL test  active  params")
for f in sorted(Path(sys.argv[1]).glob("**/metrics.json")):
    m = json.loads(f.read_text())
    t = m["test"]
    print(f"{str(f.parent.relative_to(sys.argv[1])):27} {m['train']['flip_rate']:.2f} / {t['flip_rate']:.2f}"
          f"        {t.get('diff_before', float('nan')):+.2f} -> {t.get('diff_after', float('nan')):+.2f}"
          f"            {t['kl']:.3f}   {m['n_active']:5.0f}  {m.get('n_params', 0)}")
PY

# The CCC run of step 2 beside its offset control, sides and balanced flip, as one markdown row (docs/results-gemma3.md,
# "Against a push").
python analyze.py yardsticks "$out/ccc-activscalar"
