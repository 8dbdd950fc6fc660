"""
What the selection costs against the ℓ1 fit it prunes, and what each of its levers buys: one ℓ1 fit of the
default run, then `selection.choose` on that same fit under several settings, each timed and evaluated.

    python -m benchmarks.selection                                   # SmolLM2 CCC, the default run's fit
    python -m benchmarks.selection --settings 5,10,100 3,5,100       # refit steps, finishing steps, prompts
    python -m benchmarks.selection --model models/toyworld --task ioi

A setting is R,F,P: every refit on the path trains R steps (selection.REFIT_STEPS), the chosen K's refit F
steps more (FINISH_STEPS), and the path reads its flip rates on P training prompts (SELECTION_PROMPTS).
Each row: the selection's wall seconds and their share of the fit's, the K chosen, the flip rates with
their 95 % intervals, the test KL and the active locations of the result. Run it on a quiet machine
(`OMP_NUM_THREADS=2` on our 2 cores): the shares are ratios of wall-clock times.
"""

import argparse
import copy
import time

import torch

import ascale
import metrics
import selection
import tasks
from gpt2 import GPT
from loading.tokenizer import get_tokenizer

SITES = ("attn_out", "mlp_out")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="a model train.py takes (default: smollm2)")
    p.add_argument("--task", default="ccc", help="a built-in task (default: ccc)")
    p.add_argument("--seed", type=int, default=0, help="the fit's seed (default: 0)")
    p.add_argument("--settings", nargs="+", default=[f"{selection.REFIT_STEPS},{selection.FINISH_STEPS},"
                                                      f"{selection.SELECTION_PROMPTS}"],
                   help="R,F,P settings to compare: refit steps, finishing steps, selection prompts (default:"
                        " today's)")
    args = p.parse_args(argv)
    settings = [tuple(int(x) for x in s.split(",")) for s in args.settings]
    model, tok = GPT.from_pretrained(args.model), get_tokenizer(args.model)
    task = tasks.load_task(args.task, tok, seed=args.seed)
    batches = {s: ascale.prepare(model, getattr(task, s)) for s in ("train", "test")}
    torch.manual_seed(args.seed)
    fit = ascale.make("activscalar", model.config, SITES, task.train.n_slots)
    start = time.time()
    ascale.fit(model, fit, batches["train"], seed=args.seed, progress=False)
    fit_s = time.time() - start
    print(f"{args.model} {args.task}: the l1 fit took {fit_s:.1f} s")
    print("R,F,P      selection s  share of fit  K    train flip          test flip           test KL  active")
    for R, F, P in settings:
        start = time.time()
        iv, record = selection.choose(model, copy.deepcopy(fit), batches, refit_steps=R, finish_steps=F,
                                      select_prompts=P, seed=args.seed, progress=False)
        sel_s = time.time() - start
        m = metrics.measure(model, iv, batches)
        tr, te = m["train"], m["test"]
        print(f"{R},{F},{P:<8} {sel_s:10.1f}  {sel_s / fit_s:12.2f}  {record['K']:<4} "
              f"{tr['flip_rate']:.2f} [{tr['flip_rate_ci'][0]:.2f}, {tr['flip_rate_ci'][1]:.2f}]  "
              f"{te['flip_rate']:.2f} [{te['flip_rate_ci'][0]:.2f}, {te['flip_rate_ci'][1]:.2f}]  "
              f"{te['kl']:.3f}   {m['n_active']:.0f}", flush=True)


if __name__ == "__main__":
    main()
