#!/usr/bin/env bash
# Every result docs/results-smollm2.md (and the front page) shows for SmolLM2-135M-Instruct, the real pretrained model that runs offline,
# from scratch: CPU, about 30 minutes on 2 cores (and about 15 more for step 6's ScaleShift run). The model file is fetched into data/ on first use
# Run from the project's root: bash docs/smollm2-results.sh   (writes runs/smollm2-results/, copies figures to docs/)
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/smollm2-results
mkdir -p "$out"
model=smollm2
# These pages were made before the validation split and the one-standard-error rule became the defaults: their runs
# pass the earlier choices (no validation split: K and strengths read training prompts, never the test split; a
# fixed tolerance of 0.03), so that the numbers on the pages stay reproducible (docs/method.md, "Validation").
earlier="--validation 0 --tolerance 0.03"
# Steps 0-4 and the grid are the ℓ1 fit as it was before selection.py: one-token answers, no pruning. They pass
# that, so the numbers of docs/results-smollm2.md stay reproducible; step 5 is the selected, seed-checked map.
before="--answers one-token --locations all"

# bash docs/smollm2-results.sh tune [smollm2|toyworld|table]: the grid behind the defaults (docs/results-smollm2.md,
# "How the defaults were chosen"), read on the validation split, never on test: ActivScalar at each margin and λM,
# every other setting today's default (100 steps, cosine lr 0.05, selection on validation), on SmolLM2's CCC (seeds 0
# and 1; about 40 minutes of one thread) and the toy world's CCC and IOI (seeds 0, 1, 2; about 25); then per setting
# the final map's validation flip, balanced flip and KL (metrics.json's `validation`), the mean over the seeds.
if [ "${1:-}" = tune ]; then
  grid="2,0.01 2,0.03 4,0.01 4,0.02 4,0.03 6,0.02"
  part=${2:-all}
  if [ $part = all ] || [ $part = smollm2 ]; then
    for seed in ${SEEDS:-0 1}; do for cfg in $grid; do   # SEEDS=1 runs one seed's share
      m=${cfg%,*}; lm=${cfg#*,}
      python train.py --model $model --task ccc --margin $m --lambda-m $lm --seed $seed \
        --out "$out/tune/smollm2-ccc-m$m-lm$lm-seed$seed" --overwrite > /dev/null 2>&1
    done; done
  fi
  if [ $part = all ] || [ $part = toyworld ]; then
    for seed in 0 1 2; do for cfg in $grid; do for task in ccc ioi; do
      m=${cfg%,*}; lm=${cfg#*,}
      python train.py --model models/toyworld --task $task --margin $m --lambda-m $lm --seed $seed \
        --out "$out/tune/toyworld-$task-m$m-lm$lm-seed$seed" --overwrite > /dev/null 2>&1
    done; done; done
  fi
  python - "$out/tune" <<'PY'
import json, sys
from collections import defaultdict
from pathlib import Path
rows = defaultdict(list)
for f in sorted(Path(sys.argv[1]).glob("*-seed*/metrics.json")):
    m = json.loads(f.read_text())
    rows[f.parent.name.rsplit("-seed", 1)[0]].append(m)
print("| run | seeds | validation flip (per seed) | mean | balanced flip, mean | KL, mean | K kept, per seed |")
print("|---|---|---|---|---|---|---|")
for name, ms in rows.items():
    v = [m["validation"] for m in ms]
    def mean(key):   # over the seeds where it is defined (a balanced flip needs prompts on both sides)
        xs = [x[key] for x in v if x[key] is not None]
        return f"{sum(xs) / len(xs):.2f}" if xs else "-"
    flips = " / ".join(f"{x['flip_rate']:.2f}" for x in v)
    print(f"| {name} | {len(ms)} | {flips} of {v[0]['n_prompts']}"
          f" | {mean('flip_rate')} | {mean('balanced_flip')} | {mean('kl')}"
          f" | {' / '.join(str(m['selection']['K']) for m in ms)} |")
PY
  exit 0
fi

# bash docs/smollm2-results.sh methods: the methods side by side with today's defaults (docs/results-smollm2.md, "The
# methods, and IOI"): CCC with ActivScalar, SteerVec, DynScalar and DiffMean (every K and DiffMean's strength read
# on validation; ScaleShift is step 6), IOI with ActivScalar; each beside the offset control, its sides and balanced
# flip; the methods on the same prompts compared paired with ActivScalar (McNemar, Holm; DynScalar, not tied to
# positions, reads every template length, so other test prompts). About 40 minutes of one thread.
if [ "${1:-}" = methods ]; then
  for method in activscalar steervec dynscalar diffmean; do
    python train.py --task ccc --model $model --method $method --out "$out/methods/ccc-$method" --overwrite
  done
  python train.py --task ioi --model $model --out "$out/methods/ioi-activscalar" --overwrite
  python analyze.py yardsticks "$out"/methods/ccc-{activscalar,steervec,dynscalar,diffmean} "$out/methods/ioi-activscalar"
  python analyze.py compare "$out"/methods/ccc-{activscalar,steervec,diffmean}   # DynScalar reads all lengths: other prompts
  exit 0
fi

# 0. The main command as a newcomer runs it (ActivScalar, CCC, the defaults), timed from start to run folder,
#    then checked against the knockout map.
start=$(date +%s)
python train.py $earlier --task ccc --model $model --out "$out/ccc-activscalar" --overwrite $before
echo "whole run: $(( $(date +%s) - start )) s" | tee "$out/ccc-activscalar.seconds"
start=$(date +%s)
python analyze.py knockout "$out/ccc-activscalar/intervention.safetensors"
echo "knockout check: $(( $(date +%s) - start )) s" | tee "$out/ccc-activscalar.knockout-seconds"
# 1. CCC: the other two methods (SteerVec on the same prompts; DynScalar, not tied to positions, on all templates).
for method in steervec dynscalar; do
  python train.py $earlier --model $model --task ccc --method $method --out "$out/ccc-$method" --overwrite $before
done
# 2. IOI: ActivScalar.
python train.py $earlier --model $model --task ioi --out "$out/ioi-activscalar" --overwrite --locations all
# 3. What minimality costs: ActivScalar at λM 0.01 and 0.03, beside the default 0.02 of step 0.
python analyze.py lambda --model $model --task ccc --methods activscalar --lambda-m 0.01,0.03 \
  --out "$out/ccc-lambda" --overwrite $before
# 4. Steering you can read: the instruct model answers "… A:" with a newline, so on CCC's own prompts the
#    flip stays below the greedy text. In its chat format, with the answer begun for it ("… assistant\nThe
#    capital of X is"), the next token is the city, and the steering shows in the generated text.
python - "$out/ccc-chat.jsonl" <<'PY'
import json, random, sys
from collections import Counter
import tasks
from tokenizer import get_tokenizer
tok = get_tokenizer("smollm2")
chat = ("<|im_start|>user\nThe capital of {country} is {city}. What is the capital of {country}?<|im_end|>\n"
        "<|im_start|>assistant\nThe capital of {country} is")
one = {k: v for k, v in tasks.COUNTRIES.items() if tasks.single_token(tok, " " + v) is not None}
rng = random.Random(0)
rows = [{"prompt": chat.format(country=k, city=w), "correct": " " + v, "wrong": " " + w}
        for k, v in one.items() for w in rng.sample([c for j, c in one.items() if j != k], 4)]
length = Counter(len(tok.encode(r["prompt"])) for r in rows).most_common(1)[0][0]   # one length: position-tied
with open(sys.argv[1], "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows if len(tok.encode(r["prompt"])) == length)
PY
python train.py $earlier --model $model --task "$out/ccc-chat.jsonl" --show 3 --generate 6 --out "$out/ccc-chat" --overwrite --locations all
# 5. A map you can trust (docs/results-smollm2.md, "A map you can trust"): today's defaults (first-token answers,
#    300 / 100 prompts; the ℓ1 fit pruned and refit), timed, checked against the knockout map; then stability
#    selection over 5 bootstrap fits on two splits of the countries (--seed 1 and 2), and the Jaccard index of
#    their final sets (|α| >= 0.05 in intervention.safetensors).
start=$(date +%s)
python train.py $earlier --task ccc --model $model --out "$out/ccc-selected" --overwrite
echo "whole run: $(( $(date +%s) - start )) s" | tee "$out/ccc-selected.seconds"
python analyze.py knockout "$out/ccc-selected/intervention.safetensors"
for seed in 1 2; do
  start=$(date +%s)
  python train.py $earlier --task ccc --model $model --runs 5 --seed $seed --out "$out/ccc-runs5-seed$seed" --overwrite
  echo "whole run: $(( $(date +%s) - start )) s" | tee "$out/ccc-runs5-seed$seed.seconds"
done
python - "$out" <<'PY'
import json, sys
from safetensors.torch import load_file
sets = []
for seed in (1, 2):
    a = load_file(f"{sys.argv[1]}/ccc-runs5-seed{seed}/intervention.safetensors")
    sets.append({(k, i) for k, v in a.items() for i in (v.abs() >= 0.05).flatten().nonzero()[:, 0].tolist()})
print(f"final sets: {len(sets[0])} and {len(sets[1])} locations, Jaccard {len(sets[0] & sets[1]) / len(sets[0] | sets[1]):.2f}")
for seed in (1, 2):
    m = json.load(open(f"{sys.argv[1]}/ccc-runs5-seed{seed}/metrics.json"))
    t, r = m["test"], m["runs"]
    print(f"seed {seed}: test flip {t['flip_rate']:.2f} [{t['flip_rate_ci'][0]:.2f}, {t['flip_rate_ci'][1]:.2f}],"
          f" {m['n_active']:.0f} active, {r['selected']} kept; two fits' Jaccard {r['jaccard_pairs']:.2f} (mean)")
PY

# 6. ScaleShift beside the default run (docs/results-smollm2.md, "ScaleShift beside it"), timed; then its kept
#    locations, how much of their change turns h, and the test flip rate with its shift or its scale part set to 0
#    (the same reading as docs/results.sh step 7).
start=$(date +%s)
python train.py $earlier --task ccc --model $model --method scaleshift --out "$out/ccc-scaleshift" --overwrite
echo "whole run: $(( $(date +%s) - start )) s" | tee "$out/ccc-scaleshift.seconds"
python analyze.py parts "$out/ccc-scaleshift/intervention.safetensors"

cp "$out/ccc-selected/heatmap.png" docs/smollm2-ccc-selected-heatmap.png
cp "$out/ccc-selected/locations.png" docs/smollm2-ccc-locations.png
cp "$out/ccc-selected/knockout.png" docs/smollm2-ccc-selected-knockout.png
cp "$out/ccc-runs5-seed1/stability.png" docs/smollm2-ccc-stability.png
cp "$out/ccc-runs5-seed1/heatmap.png" docs/smollm2-ccc-stable-heatmap.png
cp "$out/ccc-activscalar/heatmap.png" docs/smollm2-ccc-heatmap.png
cp "$out/ccc-activscalar/knockout.png" docs/smollm2-ccc-knockout.png
cp "$out/ioi-activscalar/heatmap.png" docs/smollm2-ioi-heatmap.png

# 7. Against a push (docs/results-smollm2.md, "Against a push"; the front page): today's defaults (no $earlier), the
#    default run and the stable maps of two splits (--runs 5 --seed 1 and 2) beside their offset control, sides and
#    balanced flip; then how far the two stable maps agree.
python train.py --task ccc --model $model --out "$out/yardsticks/ccc" --overwrite
python analyze.py knockout "$out/yardsticks/ccc/intervention.safetensors"     # its map against the knockout's
python train.py --task ccc --model $model --runs 5 --seed 1 --out "$out/yardsticks/ccc-runs5-seed1" --overwrite
python train.py --task ccc --model $model --runs 5 --seed 2 --out "$out/yardsticks/ccc-runs5-seed2" --overwrite
python analyze.py yardsticks "$out/yardsticks/ccc" "$out/yardsticks/ccc-runs5-seed1" "$out/yardsticks/ccc-runs5-seed2"
python analyze.py agree "$out"/yardsticks/ccc-runs5-seed{1,2}/intervention.safetensors   # the map from another seed
cp "$out/yardsticks/ccc-runs5-seed1/heatmap.png" docs/smollm2-ccc-today-heatmap.png      # the front page's map
cp "$out/yardsticks/ccc-runs5-seed1/stability.png" docs/smollm2-ccc-today-stability.png
