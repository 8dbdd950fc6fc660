#!/usr/bin/env bash
# Every number docs/results-generation.md shows: SmolLM2-135M-Instruct steered toward positive text, its
# continuations judged by VADER (read from vaderSentiment 3.3.2's sdist), by its own and Gemma 3 270M's perplexity
# and by distinct-2. CPU, 2 cores; the models and the sdist are fetched into data/ on first use.
# Run from the project's root: bash docs/generation-results.sh   (writes runs/generation-results/)
# bash docs/generation-results.sh STEP runs one step only (1, 2, 3, 4).
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/generation-results
mkdir -p "$out"
step() { [ -z "${only:-}" ] || [ "$only" = "$1" ]; }
only=${1:-}
train() { python train.py --task sentiment --model smollm2 --positions shared --target positive --steps 100 "$@"; }

# 1-3. the position-free maps, trained on the sentiment task's training reviews (seed 0; its test reviews are the
# prompts below): ActivScalar (attn_out and mlp_out), SteerVec at resid (a llama.cpp control vector), DiffMean.
if step 1; then train --out "$out/activscalar" --overwrite; fi
if step 2; then train --method steervec --sites resid --out "$out/steervec" --overwrite; fi
if step 3; then train --method diffmean --sites resid --out "$out/diffmean" --overwrite; fi

# 4. the sweep: 20 test-review openings + 5 neutral openers per split (validation, test), 2 samples of 32 tokens at
# temperature 0.8; strengths 0.5 ... 4 of each map and one instruction; chosen on validation, test read once.
if step 4; then
  runs=()
  for m in activscalar steervec diffmean; do [ -f "$out/$m/intervention.safetensors" ] && runs+=(--run "$out/$m"); done
  python generate.py --model smollm2 --judge gemma3-270m "${runs[@]}" --betas 0.5,1,2,4 \
    --instruction "Write a positive movie review." --n-prompts 20 --tokens 32 --samples 2 \
    --out "$out/sweep" --overwrite | tee "$out/sweep.txt"
fi
# 4b. the figure of docs/results-generation.md, from step 4's results.json (figures/frontier.py)
if step 4 || step 4b; then
  python -c "import json, sys, matplotlib; matplotlib.use('Agg'); from figures import frontier, report
r = json.load(open(sys.argv[1])); s = r['settings']
report.save_figure(frontier.plot(r['validation'], r['test'], r['judges'][0], s['max_rise'], s['target']), sys.argv[2])" \
    "$out/sweep/results.json" docs/smollm2-generation-frontier.png
fi

# 5. six validation prompts, the first sample of each way at each strength (the "after" beside the unsteered model's
# "before"; the test prompts' continuations of the ways chosen on validation are in the sweep's continuations.jsonl).
if step 5; then
  python - "$out/sweep/continuations.jsonl" <<'PY' | tee "$out/examples.txt"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
val = [r for r in rows if r["split"] == "validation" and r["sample"] == 0]
prompts = list(dict.fromkeys(r["prompt"] for r in val))[:6]
for p in prompts:
    print(repr(p))
    for r in val:
        if r["prompt"] == p:
            label = r["way"] + ("" if r["way"] in ("unsteered", "prompting") else " " + r["strength"])
            print(f"  {label:<24} {r['compound']:+.2f} {r['continuation'][:110]!r}")
PY
fi
