#!/usr/bin/env bash
# Every result docs/results-smollm2.md (and the front page) shows for SmolLM2-135M-Instruct, the real pretrained model that runs offline,
# from scratch, with today's defaults (a validation split that every choice reads, the one-standard-error rule): CPU,
# about 70 minutes on 2 cores (40 of them for the two stable maps of step 2); `methods` and `tune` below are the
# page's other two tables. The model file is fetched into data/ on first use.
# Run from the project's root: bash docs/smollm2-results.sh   (writes runs/smollm2-results/, copies figures to docs/)
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/smollm2-results
mkdir -p "$out"
model=smollm2

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
  cp "$out/methods/ioi-activscalar/heatmap.png" docs/smollm2-ioi-heatmap.png
  exit 0
fi

# 1. The main command as a newcomer runs it (ActivScalar, CCC, the defaults), timed from start to run folder,
#    then its map against the knockout map.
start=$(date +%s)
python train.py --task ccc --model $model --out "$out/ccc" --overwrite
echo "whole run: $(( $(date +%s) - start )) s" | tee "$out/ccc.seconds"
start=$(date +%s)
python analyze.py knockout "$out/ccc/intervention.safetensors"
echo "knockout check: $(( $(date +%s) - start )) s" | tee "$out/ccc.knockout-seconds"
# 2. The stable maps (docs/results-smollm2.md, "The same map from another seed"; the front page): five bootstrap
#    fits on each of two splits of the countries (--seed 1 and 2), and how far the two maps agree.
for seed in 1 2; do
  python train.py --task ccc --model $model --runs 5 --seed $seed --out "$out/ccc-runs5-seed$seed" --overwrite
done
python analyze.py agree "$out"/ccc-runs5-seed{1,2}/intervention.safetensors
# 3. ScaleShift beside the default run (docs/results-smollm2.md, "ScaleShift beside it"), timed; then its kept
#    locations, how much of their change turns h, and the test flip rate with its shift or its scale part set to 0.
start=$(date +%s)
python train.py --task ccc --model $model --method scaleshift --out "$out/ccc-scaleshift" --overwrite
echo "whole run: $(( $(date +%s) - start )) s" | tee "$out/ccc-scaleshift.seconds"
python analyze.py parts "$out/ccc-scaleshift/intervention.safetensors"
# 4. Steering you can read: the instruct model answers "… A:" with a newline, so on CCC's own prompts the
#    flip stays below the greedy text. In its chat format, with the answer begun for it ("… assistant\nThe
#    capital of X is"), the next token is the city, and the steering shows in the generated text.
python - "$out/ccc-chat.jsonl" <<'PY'
import json, random, sys
from collections import Counter
import tasks
from loading.tokenizer import get_tokenizer
tok = get_tokenizer("smollm2")
chat = ("<|im_start|>user\nThe capital of {country} is {city}. What is the capital of {country}?<|im_end|>\n"
        "<|im_start|>assistant\nThe capital of {country} is")
one = {k: v for k, v in tasks.COUNTRIES.items() if tasks.single_token(tok, " " + v) is not None}
rng = random.Random(0)
rows = [{"prompt": chat.format(country=k, city=w), "correct": " " + v, "wrong": " " + w, "group": k}   # split by country
        for k, v in one.items() for w in rng.sample([c for j, c in one.items() if j != k], 4)]
length = Counter(len(tok.encode(r["prompt"])) for r in rows).most_common(1)[0][0]   # one length: position-tied
with open(sys.argv[1], "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows if len(tok.encode(r["prompt"])) == length)
PY
python train.py --model $model --task "$out/ccc-chat.jsonl" --show 3 --generate 6 --out "$out/ccc-chat" --overwrite
# 5. Every run beside its offset control, sides and balanced flip (one markdown row each), ScaleShift paired with
#    the default run on the same test prompts.
python analyze.py yardsticks "$out/ccc" "$out"/ccc-runs5-seed{1,2} "$out/ccc-scaleshift" "$out/ccc-chat"
python analyze.py compare "$out/ccc" "$out/ccc-scaleshift"

cp "$out/ccc/heatmap.png" docs/smollm2-ccc-selected-heatmap.png
cp "$out/ccc/locations.png" docs/smollm2-ccc-locations.png
cp "$out/ccc/knockout.png" docs/smollm2-ccc-selected-knockout.png
cp "$out/ccc-runs5-seed1/heatmap.png" docs/smollm2-ccc-today-heatmap.png      # the front page's map
cp "$out/ccc-runs5-seed1/stability.png" docs/smollm2-ccc-today-stability.png
