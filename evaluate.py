"""
Evaluate a saved intervention on the prompts it was trained on, and print; nothing is written.

    python evaluate.py runs/ccc-gpt2-activscalar/intervention.safetensors
    python evaluate.py runs/ccc-gpt2-activscalar/intervention.safetensors --beta -1 --generate 20
    python evaluate.py runs/sentiment-movies-smollm2-activscalar/intervention.safetensors --domain tweets

Its method and sites are the file's, and so are the model, task, target, seed and answers unless a flag says
otherwise (a model of the same shape; another sentiment domain: the same slots). A method of one's own, trained
from a file (train.py --method mine.py), is imported again from the path its run saved, with nothing imported
first. The table is train.py's (metrics.measure); --show and --generate print as train.py does. To check or
sweep a saved run and write figures beside it: analyze.py knockout, beta, parts.
"""

import argparse
import math
import sys

import ascale
import metrics
from cli import script, setup
from figures import console
from loading import sentiment_data
from running.errors import UserError


def parse_args(argv=None) -> argparse.Namespace:
    p = script.Parser(description=__doc__.split("\n\n")[0].strip(), formatter_class=script.HelpFormatter,
                      epilog="Unset flags take the file's value. The flags in full: train.py --help, docs/method.md.")
    p.add_argument("file", help="a run's intervention.safetensors")
    p.add_argument("--beta", type=float, default=1.0, help="strength: 0 is the original model, -1 reverses it")
    p.add_argument("--show", type=int, default=0, metavar="N", help="print N test prompts' top tokens before and after")
    p.add_argument("--generate", type=int, default=0, metavar="N", help="continue test prompts by N tokens, without"
                   " and with the intervention")
    p.add_argument("--model", help="a model of the same shape instead of the file's")
    p.add_argument("--revision", help="Hub revision of --model")
    p.add_argument("--task", help="another task whose prompts have the same positions")
    p.add_argument("--domain", choices=list(sentiment_data.DOMAINS), help="sentiment: evaluate on these texts")
    p.add_argument("--data", metavar="DIR", help=f"sentiment: the folder holding {sentiment_data.SDIST}")
    p.add_argument("--answers", choices=["first-token", "one-token"], help="ccc: how the answers are compared")
    p.add_argument("--target", choices=[*ascale.TARGETS, *setup.LABEL_TARGETS], help="the answer to steer to")
    p.add_argument("--seed", type=int, help="seed of the train/test split")
    p.add_argument("--unseen-lengths", action="store_true", help="test prompts of lengths no training prompt has")
    p.add_argument("--split", choices=["test", "validation"], default="test", help="the held-out prompts to read:"
                   " the test split, or the run's validation split (for choices, such as a grid of settings)")
    p.add_argument("--batch-size", type=int, help="prompts per evaluation pass (unset: 32)")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, then cpu), cpu, cuda, cuda:1 or mps")
    p.add_argument("--device-map", metavar="auto|balanced|FILE", help="split the model's layers over several devices")
    p.add_argument("--dtype", default="float32", choices=list(setup.DTYPES), help="the model's dtype")
    args = p.parse_args(argv)
    for name in ("show", "generate"):
        if getattr(args, name) < 0:
            p.error(f"--{name} must be >= 0")
    if args.batch_size is not None and args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if not math.isfinite(args.beta):
        p.error("--beta must be a finite number")
    args.eval_batch_size = args.batch_size or 32
    return args


def evaluate(args) -> None:
    """The saved intervention at --beta on the prompts it was trained on: the table (and --show, --generate)."""
    model, tok, iv, task, batches = setup.open_saved(args)
    iv.beta = args.beta
    if args.split == "validation":       # the validation prompts in the test column: a choice never reads test
        if batches.get("val") is None:
            raise UserError(f"{args.file} was trained without a validation split (--validation 0); use --split test")
        batches = {**batches, "test": batches["val"]}
    print(f"{task.name} at beta {args.beta}, train / {args.split} prompts:")
    result = {iv.method: metrics.measure(model, iv, batches, args.eval_batch_size)}
    control = metrics.offset_row(batches)                 # the trivial baseline, as train.py prints it
    result[iv.method]["gain_over_offset"] = metrics.gain(result[iv.method]["test"], control["test"])
    console.print_table({**result, "offset (control)": control}, task.name, held_out=args.split)
    console.print_gains(result)
    if args.show:
        console.show(model, tok, iv, task.test, batches["test"], args.show)
    if args.generate:
        console.generations(model, tok, {iv.method: iv}, task.test, args.show or 3, args.generate)


def main(argv=None) -> int:
    return script.run(evaluate, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
