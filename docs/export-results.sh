#!/usr/bin/env bash
# The numbers in docs/export.md, "Does llama.cpp run it as we do?": short position-free maps on sentiment for
# SmolLM2-135M-Instruct and Gemma 3 270M (an ActivScalar at attn_out,mlp_out folded into a copy of the model's GGUF
# file; a SteerVec at resid written as a control vector), each run by llama.cpp (llama-cpp-python==0.3.36) beside
# our forward on 10 held-out prompts. CPU, 2 cores, OMP_NUM_THREADS=1. Needs llama_cpp importable
# (docs/export.md says how to build it).
# Run from the project's root: bash docs/export-results.sh   (writes runs/export-results/)
# bash docs/export-results.sh STEP runs one step only (1 ... 5); MODELS=smollm2 bash ... one model only.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/export-results
mkdir -p "$out"
step() { [ -z "${only:-}" ] || [ "$only" = "$1" ]; }
only=${1:-}
short="--task sentiment --positions shared --target positive --steps 50"

for model in ${MODELS:-smollm2 gemma3-270m}; do
  if step 1; then   # 1. the maps: 50 Adam steps each
    keep=""; [ $model = smollm2 ] || keep="--locations all"   # Gemma: no location selection, to keep it short
    python train.py $short --model $model --sites attn_out,mlp_out $keep --out "$out/$model-activscalar"
    # --layers 1-: llama.cpp's control vectors have no layer 0 (docs/export.md); unrestricted, both keep layer 0 only
    python train.py $short --model $model --method steervec --sites resid --layers 1- --out "$out/$model-steervec"
  fi
  if step 2; then   # 2. the files
    python export.py "$out/$model-activscalar" "$out/$model-activscalar.gguf"
    rm -f "$out/$model-steervec-cv.gguf" "$out/$model-steervec"*.json   # no stale numbers where export fails
    python export.py "$out/$model-steervec" "$out/$model-steervec-cv.gguf"
  fi
  if step 3; then   # 3. llama.cpp against our forward, the unexported file and the exported one
    python -m benchmarks.llamacpp "$out/$model-activscalar" "$out/$model-activscalar.gguf" \
      --json "$out/$model-activscalar.json" > /dev/null
    [ ! -f "$out/$model-steervec-cv.gguf" ] || python -m benchmarks.llamacpp "$out/$model-steervec" \
      "$out/$model-steervec-cv.gguf" --json "$out/$model-steervec.json" > /dev/null
  fi
  if step 4; then   # 4. the same on an F32 copy of the model's file, where llama.cpp quantises no activations
    python -c "from loading import checkpoints as c, export_gguf as e; e.dequantized(c.resolve('$model'), '$out/$model-f32.gguf')"
    python export.py "$out/$model-activscalar" "$out/$model-activscalar-f32.gguf" --model "$out/$model-f32.gguf"
    python -m benchmarks.llamacpp "$out/$model-activscalar" "$out/$model-activscalar-f32.gguf" \
      --model "$out/$model-f32.gguf" --json "$out/$model-activscalar-f32.json" > /dev/null
    [ ! -f "$out/$model-steervec-cv.gguf" ] || python -m benchmarks.llamacpp "$out/$model-steervec" \
      "$out/$model-steervec-cv.gguf" --model "$out/$model-f32.gguf" --json "$out/$model-steervec-f32.json" > /dev/null
    rm "$out/$model-f32.gguf" "$out/$model-activscalar-f32.gguf"                     # 0.5 and 1 GB
  fi
  if step 5 && [ $model = smollm2 ]; then   # 5. the quantised file's gap: the folded tensors in F32, no map
    # β = 1e-9 makes every factor 1 + 1e-9·α ≠ 1, so the 10 tensors are written in F32, but rounds to 1 in F32:
    # the file is the shipped model with those tensors unquantised. (Gemma's folded tensors are its norms, F32
    # in the shipped file already: there, the exported file differs from the shipped one in values only.)
    python export.py "$out/$model-activscalar" "$out/$model-retyped.gguf" --beta 1e-9
    python -m benchmarks.llamacpp "$out/$model-activscalar" "$out/$model-retyped.gguf" --beta 1e-9 \
      --json "$out/$model-retyped.json" > /dev/null
    rm "$out/$model-retyped.gguf"
    for beta in 0.5 2; do     # the map at half and twice its strength: does the gap grow with it?
      python export.py "$out/$model-activscalar" "$out/$model-beta$beta.gguf" --beta $beta
      python -m benchmarks.llamacpp "$out/$model-activscalar" "$out/$model-beta$beta.gguf" --beta $beta \
        --json "$out/$model-beta$beta.json" > /dev/null
      rm "$out/$model-beta$beta.gguf"
    done
    python -c "from loading import checkpoints as c, export_gguf as e; e.dequantized(c.resolve('$model'), '$out/$model-f32.gguf')"
    python export.py "$out/$model-activscalar" "$out/$model-beta2-f32.gguf" --beta 2 --model "$out/$model-f32.gguf"
    python -m benchmarks.llamacpp "$out/$model-activscalar" "$out/$model-beta2-f32.gguf" --beta 2 \
      --model "$out/$model-f32.gguf" --json "$out/$model-beta2-f32.json" > /dev/null     # twice the map, no rounding
    rm "$out/$model-f32.gguf" "$out/$model-beta2-f32.gguf"
  fi
done

# the table: per file, max |Δ logit| at the last position (median, max over prompts), top token and greedy agreement;
# then the logits' scale and near ties: median std of our logits over the vocabulary, |Δ|/std (median, max), our
# greedy steps within 1 logit of a tie (of prompts x tokens), our margin at each prompt's first split
python - "$out"/*.json <<'PY'
import json, sys
for f in sys.argv[1:]:
    r = json.load(open(f))
    for name in ("unexported", "exported_file"):
        a = r[name]
        print(f"{f.rsplit('/', 1)[-1][:-5]:24} {name:13} max|Δ logit| median {a['max_abs_dlogit_median']:.2f}"
              f" max {a['max_abs_dlogit_max']:.2f}  top token {a['top_token_agree']}/{a['n_prompts']}"
              f"  greedy {a['tokens']} tokens {a['greedy_same']}/{a['n_prompts']}")
        print(f"{'':38} std {a['logit_std_median']:.2f}  |Δ|/std {a['dlogit_over_std_median']:.3f}"
              f" / {a['dlogit_over_std_max']:.3f}  ties < {a['tie']:g}: {a['near_tie_steps']}"
              f"/{a['n_prompts'] * a['tokens']}  margin at split {a['margin_at_split']}")
PY
