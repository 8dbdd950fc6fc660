"""
Write a position-free run as a GGUF file that llama.cpp and ollama run (docs/export.md).

    python export.py runs/sentiment-movies-smollm2-activscalar-shared smollm2-positive.gguf
    python export.py runs/sentiment-movies-smollm2-steervec-shared positive-cv.gguf     (sites resid)

An ActivScalar trained with --positions shared at head, attn_out or mlp_out becomes a copy of the model's GGUF file
with its scalars folded into the weights (loading/export_gguf.py says which): run it as the model itself. A SteerVec
or DiffMean trained with --positions shared at resid (or mlp_out, whose vector joins the same residual) becomes a
llama.cpp control vector: pass it with --control-vector beside the unchanged model. Any other run is refused in one
line, and nothing is written: a position-tied run (its parameters belong to the positions of its training prompts),
a scalar on the residual stream (no weight carries it alone), a vector at head or attn_out, a vector at layer 0.
"""

import argparse
import math
import sys
from pathlib import Path

import ascale
import diffmean
from cli import script
from gpt2 import GPT, UserError
from loading import checkpoints, export_gguf

VECTOR_SITES = ("resid", "mlp_out")  # a vector added here is added to the residual stream after the layer


def parse_args(argv=None) -> argparse.Namespace:
    p = script.Parser(description=__doc__.split("\n\n")[0].strip(), formatter_class=script.HelpFormatter)
    p.add_argument("run", help="a run folder (or its intervention.safetensors) trained with --positions shared")
    p.add_argument("out", help="the .gguf file to write")
    p.add_argument("--model", help="the GGUF file to fold into (unset: the run's model, which must be a GGUF file)")
    p.add_argument("--beta", type=float, default=1.0, help="strength written into the file: 0 the original model")
    p.add_argument("--dtype", default="F32", choices=["F32", "F16"], help="the type of the changed tensors")
    args = p.parse_args(argv)
    if not math.isfinite(args.beta):
        p.error("--beta must be a finite number")
    return args


def kind(iv) -> str:
    """"scalars" for ActivScalar's h·(1 + β·α) (a method file's subclass too, if it keeps its apply), "vectors" for
    SteerVec's and DiffMean's h + β·v, else UserError: what export writes is what these compute."""
    cls = type(iv)
    if cls.apply is ascale.Scaling.apply and cls.scale is ascale.ActivScalar.scale:
        return "scalars"
    if cls.apply in (ascale.SteerVec.apply, diffmean.DiffMean.apply):
        return "vectors"
    raise UserError(f"export writes activscalar (head, attn_out, mlp_out) and steervec or diffmean (resid); this run"
                    f" is {iv.method}")


def factors(iv) -> dict:
    """{(site, layer): 1 + β·α}, a number, or one per head for `head`."""
    if "resid" in iv.sites:
        raise UserError("a scalar on the residual stream (resid) does not fold into any weight: the stream is a sum"
                        f" no one matrix makes; train at {', '.join(export_gguf.FOLDS)}")
    return {(s, layer): 1 + iv.beta * iv.alpha[s][layer, 0].detach().double() for s in iv.sites
            for layer in range(iv.n_layer)}


def directions(iv) -> dict:
    """{layer: β·v} summed over the sites, the layers where it is not 0 (llama.cpp numbers them as we do)."""
    if other := [s for s in iv.sites if s not in VECTOR_SITES]:
        raise UserError(f"a vector at {other[0]} is not a control vector: llama.cpp adds those to the residual stream"
                        f" after a layer; train at {' or '.join(VECTOR_SITES)}")
    out = {}
    for layer in range(iv.n_layer):
        v = sum(iv.v[s][layer].detach().double().reshape(-1) for s in iv.sites) * iv.beta
        if bool(v.any()):
            out[layer] = v
    if 0 in out:
        raise UserError("this map adds a vector after layer 0, which llama.cpp's control vectors cannot (they start"
                        " at layer 1); retrain without it")
    return out


def export(args) -> None:
    file = Path(args.run) / ascale.FILE if Path(args.run).is_dir() else Path(args.run)
    meta = ascale.read_metadata(file)
    if meta["positions"]:
        raise UserError(f"{file} is tied to positions (one parameter per position of its {meta['positions']}-token"
                        " prompts), which llama.cpp has no place for; train it with --positions shared")
    if not args.out.endswith(".gguf"):
        raise UserError(f"{args.out}: the file to write must end in .gguf")
    src = checkpoints.resolve(args.model or meta["model"])
    if not checkpoints.is_gguf(src):
        raise UserError(f"{src} is not a GGUF file; pass the run's model as one with --model FILE.gguf")
    iv, _ = ascale.load(file, GPT.from_pretrained(src))
    iv.beta = args.beta
    if kind(iv) == "scalars":
        changed = export_gguf.fold(src, args.out, factors(iv), args.dtype)
        print(f"wrote {args.out}: {src} with {len(changed)} tensors rescaled ({args.dtype}), the rest as they were")
    else:
        dirs = directions(iv)
        export_gguf.control_vector(args.out, dirs, meta.get("model_type", ""))
        print(f"wrote {args.out}: a control vector for {src}, layers {', '.join(map(str, dirs)) or 'none'}"
              f" (llama.cpp: --control-vector {args.out})")


def main(argv=None) -> int:
    return script.run(export, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
