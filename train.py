"""
Train an activation-scaling intervention, evaluate it, and show where it acts.

    python train.py --task ccc                      ActivScalar on GPT-2 small, country-capital conflicts
    python train.py --task ccc --model toyworld --knockout  offline, on the toy world, checked
    python train.py --task ioi --method all         every built-in method (ascale.methods()) side by side
    python train.py --task sentiment --model smollm2 --target positive --method all    real text, DiffMean too
    python train.py --task ccc --model toyworld --method mine.py   a method of your own, one class in a file
    python evaluate.py runs/ccc-gpt2-activscalar/intervention.safetensors --beta -1 --generate 20   a saved run

What a run does: load the model and tokenizer -> build the task's train and test prompts -> report how often
the original model prefers the correct answer -> train (the progress bar shows the three loss terms) ->
evaluate on train and test -> print a table -> write the run folder (default runs/<task>-<model>-<method>/):
metrics.json, intervention.safetensors, heatmap.png (and with --knockout, knockout.png). A folder that holds a
run, or that another run is writing, is refused before any work; the files are staged and put in place together
at the end (running/runfolder.py). Ctrl-C or SIGTERM stops training; what was learned is still evaluated and
saved. Many devices: torchrun or --device-map (docs/distributed.md). Every flag in full: docs/method.md.
"""

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

import torch

import ascale
import knockout
import metrics
import selection
import tasks
from cli import script, setup
from figures import console, report
from gpt2 import UserError
from loading import sentiment_data
from running import parallel, runfolder
from running.phases import Phases

# What a run folder holds (analyze.py adds beta.json and beta.png): a new run replaces all of them.
RUN_FILES = ("metrics.json", "intervention.safetensors", "heatmap.png", "locations.png", "stability.png",
             "knockout.png", "knockout-mean.png", "beta.json", "beta.png")
# The share of the training groups held out as the validation split, which every choice of a run reads (K, DiffMean's
# strength, the offset control): the test split is read once, at the end (docs/method.md, "Validation").
VALIDATION = 0.2


def parse_args(argv=None) -> argparse.Namespace:
    p = script.Parser(description=__doc__.split("\n\n")[0].strip(), formatter_class=script.HelpFormatter,
                      epilog="The flags in full: docs/method.md (method, outputs, generation), docs/tasks.md,"
                      " docs/models.md, docs/reliability.md (memory, run folders). The training defaults were tuned"
                      " on SmolLM2-135M (CCC), checked on the toy world. A saved run: evaluate.py --help.")
    p.add_argument("--model", default="gpt2", help="Hub id, local folder, .gguf file, toyworld, smollm2 or"
                   " gemma3-270m (docs/models.md)")
    p.add_argument("--revision", help="Hub revision, e.g. step1000 for a Pythia training checkpoint")
    p.add_argument("--task", default="ccc", help="; ".join(f"{name}: {about}" for name, (_, about) in
                                                           tasks.TASKS.items()) + "; or a .jsonl file (docs/tasks.md)")
    p.add_argument("--domain", choices=list(sentiment_data.DOMAINS), help="sentiment: whose texts (unset: movies)")
    p.add_argument("--data", metavar="DIR", help=f"sentiment: the folder holding {sentiment_data.SDIST} (unset: data/)")
    p.add_argument("--answers", default="first-token", choices=["first-token", "one-token"],
                   help="ccc: compare capitals by their first tokens, or keep one-token capitals only")
    p.add_argument("--method", default="activscalar", help=f"{', '.join(ascale.methods())}; all: each built-in one"
                   " into its own subfolder; or a .py file that defines one (docs/method.md)")
    p.add_argument("--positions", default="tied", choices=["tied", "shared"], help="tied: one parameter per"
                   " position, prompts of one length; shared: one per (site, layer[, head]) for every position, any"
                   " length, generated tokens included (export.py writes these into llama.cpp files)")
    p.add_argument("--sites", default="attn_out,mlp_out", help=f"comma-separated, from {', '.join(report.SITE_NAMES)}")
    p.add_argument("--contrast", default="caa", choices=["caa", "classes"], help="a baseline's (diffmean's) direction:"
                   " the answers appended (CAA), or the earlier class means (docs/method.md)")
    p.add_argument("--target", default="flip", choices=[*ascale.TARGETS, *setup.LABEL_TARGETS],
                   help="the answer to steer to: flip (the one the model ranks lower), wrong, correct, or a label")
    p.add_argument("--lambda-f", type=float, default=1.0, help="weight of faithfulness (KL of the other tokens)")
    p.add_argument("--lambda-m", type=float, default=ascale.LAMBDA_M, help="weight of minimality (l1 norm)")
    p.add_argument("--margin", type=float, default=ascale.MARGIN, help="effectiveness hinge on the logit difference")
    p.add_argument("--beta", type=float, default=1.0, help="strength at evaluation: 0 original, -1 reversed")
    p.add_argument("--lr", type=float, default=ascale.LR, help="Adam learning rate")
    p.add_argument("--schedule", default="cosine", choices=ascale.SCHEDULES, help="cosine: lr falls to 0 over the"
                   " steps; constant: lr throughout")
    p.add_argument("--steps", type=int, default=ascale.STEPS, help="Adam steps of the l1 fit")
    p.add_argument("--locations", default="auto", help="after the l1 fit keep K locations and refit them: a number,"
                   " auto (the smallest K that keeps the flip rate) or all (no selection)")
    p.add_argument("--refit-steps", type=int, default=selection.REFIT_STEPS, help="Adam steps of each refit (0:"
                   " prune without refitting)")
    p.add_argument("--runs", type=int, default=1, metavar="N", help="stability selection over N bootstrap fits")
    p.add_argument("--tolerance", type=float, metavar="T", help="--locations auto: how far below the reference flip"
                   " rate the chosen K may be (unset: one standard error of the reference, over the prompts' groups,"
                   " at least one prompt's share)")
    p.add_argument("--batch-size", type=int, help="prompts per step and per evaluation pass (unset: chosen for the"
                   " task; docs/reliability.md)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split and the minibatch order")
    p.add_argument("--validation", type=float, default=VALIDATION, metavar="FRAC", help="hold out this share of the"
                   " training groups for the run's choices (K, strengths, the offset), so the test split is read once")
    p.add_argument("--at", metavar="SLOTS", help=f"{', '.join(tied())} only: train at these positions only (the"
                   " slots, where the task has them), comma-separated, from 0 or from the end: --at=-2,-1 the last two")
    p.add_argument("--layers", metavar="LAYERS", type=layer_spec, help="train these layers only, the others held at 0:"
                   " 1-29, 1- (1 to the last), 3,7,12; with --at, at those layers and positions")
    p.add_argument("--unseen-lengths", action="store_true", help=f"{', '.join(tied(False))} only: test prompts of"
                   " lengths no training prompt has")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, then cpu), cpu, cuda, cuda:1 or mps")
    p.add_argument("--device-map", metavar="auto|balanced|FILE", help="split the model's layers over several devices"
                   " (for speed, torchrun instead; docs/distributed.md)")
    p.add_argument("--dtype", default="float32", choices=list(setup.DTYPES), help="the model's dtype")
    p.add_argument("--out", help="run folder (unset: runs/<task>-<model>-<method>/)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in the run folder")
    p.add_argument("--show", type=int, default=0, metavar="N", help="print N test prompts' top tokens before and after")
    p.add_argument("--generate", type=int, default=0, metavar="N", help="continue test prompts by N tokens, without"
                   " and with the intervention")
    p.add_argument("--knockout", action="store_true", help="check the heatmap against a knockout map")
    p.add_argument("--knockout-mode", default="zero", choices=knockout.MODES, help="what a knocked-out activation"
                   " becomes: zero, or its mean (mean ablation)")
    args = p.parse_args(argv)
    check_numbers(p, args)
    if args.locations not in ("auto", "all") and not (args.locations.isdigit() and int(args.locations) >= 1):
        p.error(f"--locations must be auto, all, or a number >= 1, not {args.locations!r}")
    if args.locations == "all" and args.runs > 1:
        p.error("--runs selects locations; it cannot go with --locations all")
    if args.method not in (*ascale.methods(), "all") and not args.method.endswith(".py"):
        p.error(f"argument --method: invalid choice: {args.method!r} (choose from {', '.join(ascale.methods())},"
                " all, or a .py file)")
    return args


def check_numbers(p, args) -> None:
    for name in ("lambda_f", "lambda_m", "margin"):
        if not 0 <= getattr(args, name) < float("inf"):
            p.error(f"--{name.replace('_', '-')} must be a number >= 0")
    if not 0 < args.lr < 1e30:
        p.error("--lr must be a positive number")
    for name in ("steps", "show", "generate", "refit_steps"):
        if getattr(args, name) < 0:
            p.error(f"--{name} must be >= 0")
    if args.batch_size is not None and args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    args.eval_batch_size = args.batch_size or 32
    if args.runs < 1:
        p.error("--runs must be >= 1")
    if args.tolerance is not None and not 0 <= args.tolerance < 1:
        p.error("--tolerance must be at least 0 and below 1")
    if not 0 <= args.validation < 1:
        p.error("--validation must be at least 0 and below 1")
    if args.at is not None:
        try:
            args.at = [int(x) for x in args.at.split(",") if x.strip()]
        except ValueError:
            p.error(f"--at takes positions as whole numbers, comma-separated (e.g. -4,-3,-2,-1), not {args.at!r}")
    if not math.isfinite(args.beta):
        p.error("--beta must be a finite number")


def methods_of(method: str) -> dict[str, type]:
    """--method's classes by name: a built-in one, or a method file's (ascale.method_class); for `all`, every
    built-in one, the baselines (diffmean) included."""
    if method.endswith(".py"):
        cls = ascale.method_class("", method)
        return {cls.method: cls}
    if method != "all":
        return {method: ascale.method_class(method)}
    return dict(ascale.methods())


def fixed_length(classes: dict[str, type], positions: str = "tied") -> bool:
    """Whether the methods need prompts of one length: one of them is tied to positions (`all` compares the
    methods on the same prompts); with --positions shared none is. UserError where one cannot share."""
    if positions == "shared" and (cannot := [m for m, c in classes.items() if c.tied_to_positions and not c.shareable]):
        raise UserError(f"{', '.join(cannot)} cannot share its parameters over positions (--positions shared);"
                        f" {', '.join(m for m, c in ascale.methods().items() if c.shareable)} can")
    return positions == "tied" and any(cls.tied_to_positions for cls in classes.values())


def tied(yes: bool = True) -> list[str]:
    """The methods tied to positions (with yes=False: those that read prompts of any length)."""
    return [m for m, cls in ascale.methods().items() if cls.learned and cls.tied_to_positions == yes]


def main(argv=None) -> int:
    import matplotlib
    matplotlib.use("Agg")  # a script writes its figures to files (figures/report.py sets no backend)
    return script.run(train, parse_args(argv))


# ----------------------------------------------------------------------------- training


def train(args) -> None:
    sites = ascale.check_sites(s.strip() for s in args.sites.split(",") if s.strip())
    classes = methods_of(args.method)                           # a method file is imported here
    one_length = fixed_length(classes, args.positions)
    if args.knockout and not one_length:
        raise UserError(f"--knockout needs prompts of one length; use it with {', '.join(tied())} or all, and"
                        " --positions tied")
    if args.at and (args.positions == "shared" or not all(c.tied_to_positions and c.learned for c in classes.values())):
        raise UserError(f"--at keeps some positions' parameters: use it with {', '.join(tied())} and --positions tied")
    task_stem = Path(args.task).stem + (f"-{args.domain or 'movies'}" if args.task == "sentiment" else "")
    name = "all" if args.method == "all" else next(iter(classes))
    shared = "-shared" if args.positions == "shared" else ""
    out = Path(args.out or f"runs/{task_stem}-{Path(args.model).name}-{name}{shared}")
    folders = {method: out / method if args.method == "all" else out for method in classes}
    runfolder.check_writable(out, list(folders.values()), RUN_FILES)   # before any work: nothing is lost after it
    # Locked before any work; every file is written to writing.staged(folder) and put in place when the block ends.
    with runfolder.RunFolder(out, list(folders.values()), RUN_FILES, args.overwrite) as writing:
        setup.check_task_file(args.task, args.data)
        phases = Phases()
        with phases("load"):
            model, tok = setup.load_model(args)
            args.layers = layers_of(args, classes, model.config.n_layer)   # a list from here on (metrics.json)
            device = model.lm_head.weight.device
            task = setup.load_prompts(args, tok, one_length, model)
        setup.check_generate(args, model, task)
        for note in task.notes:
            print(f"  {note}")
        print(f"task {task.name}: {len(task.train)} train and {len(task.test)} test prompts;"
              f" model {args.model} ({model.config.n_layer} layers) on {device}")
        with phases("prepare"):
            # What the objective compares against, computed once per prompt set and shared by all methods.
            batches = setup.prepare(model, task, tok, args)
            pref = setup.report_preference(task, batches)
            control = metrics.offset_row(batches)              # the trivial baseline every result stands beside
        for cls in classes.values():                           # a method that cannot run says so before any trains
            cls.check(model, batches, args.target)
        if args.at:
            selection.check_positions(args.at, task.train.n_slots)
        results, ivs = {}, {}
        for method, cls in classes.items():
            try:
                results[method], ivs[method] = train_one(cls, sites, model, tok, task, batches, args, writing,
                                                         folders[method], pref, phases, one_length, control)
            except Exception as e:                             # not Ctrl-C or SIGTERM: RunFolder puts all in place
                keep_finished(writing, [folders[m] for m in results], folders[method], e)
                raise
            if results[method]["interrupted"]:
                break
        console.print_table({**results, "offset (control)": control}, task.name)
        console.print_gains(results)
        if args.knockout:
            runs = {m: (ivs[m], writing.staged(folders[m])) for m in results if not results[m]["interrupted"]}
            title = f"{task.name} · {Path(args.model).name}"
            report.knockout_check(model, batches["train"], task.train.labels, runs, title, mode=args.knockout_mode)
    print(f"wrote {out}/" + ("{" + ",".join(results) + "}/" if args.method == "all" else ""))
    if args.generate:
        console.generations(model, tok, ivs, task.test, args.show or 3, args.generate)


def keep_finished(writing: runfolder.RunFolder, finished: list[Path], failed: Path, error: Exception) -> None:
    """A method failed after others finished (--method all): put the finished methods' folders in place, not the
    failed one's (its earlier run stays as it was), and say so; an error that is not a UserError (nor one that
    script.run prints in a line: memory, OSError) becomes one, naming the method, so the whole is one line."""
    if not finished:
        return
    shutil.rmtree(writing.staged(failed), ignore_errors=True)
    writing.publish(finished)
    print(f"kept the finished methods' folders: {', '.join(str(f) for f in finished)}")
    if not isinstance(error, (UserError, OSError, torch.OutOfMemoryError)) and "can't allocate" not in str(error):
        first = (str(error).splitlines() or [""])[0]
        raise UserError(f"{failed.name} failed ({type(error).__name__}: {first})") from error


def train_one(cls, sites, model, tok, task, batches, args, writing: runfolder.RunFolder, out: Path, pref: dict,
              phases: Phases, one_length: bool, control: dict):
    """Train one method (its class), evaluate it, write its run folder `out` (staged, see train); return its
    metrics and the intervention. metrics.json's "timings" has the seconds of each phase: load and prepare
    (shared by the methods of --method all), and this method's fit, selection, evaluation and figures."""
    torch.manual_seed(args.seed)
    method, positions = cls.method, task.train.n_slots if cls.tied_to_positions and one_length else None
    phases = phases.only("load", "prepare")          # this method's own phases are added to a copy
    start = time.time()
    iv, curve, chosen = fit_and_select(cls, sites, positions, model, batches, args, phases)
    seconds = time.time() - start
    if curve["interrupted"]:
        print(f"stopped by {curve['stopped_by']} after {curve['steps']} steps: evaluating and saving what was learned")
    folder = writing.staged(out)
    tokens = task.train.labels if positions else ()
    # The parameters are saved before the evaluation, so that a Ctrl-C there keeps what was learned (RunFolder
    # puts the staged files in place on Ctrl-C and SIGTERM); once stopped, in place at once (a SIGKILL may follow).
    # A method file's path goes into the metadata (ascale.save), so that ascale.load finds its class again.
    ascale.save(folder / "intervention.safetensors", iv, model=model, tokens=tokens, task=args.task,
                target=args.target, seed=args.seed, fixed_length=int(one_length),
                unseen_lengths=int(args.unseen_lengths), answers=args.answers, validation=args.validation,
                **({"domain": args.domain or "movies", "data": args.data or ""} if args.task == "sentiment" else {}))
    if curve["interrupted"]:
        writing.publish()
    iv.beta = args.beta
    with phases("evaluation"):
        measured = metrics.measure(model, iv, batches, args.eval_batch_size)
        if "val" in batches:   # the final map on the validation prompts: what a grid of settings reads, never test
            measured["validation"] = metrics.evaluate(model, iv, batches["val"], args.eval_batch_size)
    result = {"method": method, **measured, "choices_read": "validation" if "val" in batches else "train",
              "n_val_prompts": len(batches["val"]) if "val" in batches else 0,
              "offset_control": {s: {k: v for k, v in control[s].items() if k != "per_prompt"}
                                 for s in ("train", "test")},
              "gain_over_offset": metrics.gain(measured["test"], control["test"], seed=args.seed),
              "world_size": parallel.world_size(), "original": pref, "beta": args.beta, "steps": curve.pop("steps"),
              "train_batch_size": curve.pop("batch_size", None),
              "interrupted": curve.pop("interrupted"), "stopped_by": curve.pop("stopped_by"),
              "seconds": round(seconds, 2), "loss_curve": curve, **chosen,
              "config": {**vars(args), "method": method}}
    title = f"{method} · {task.name} · {Path(args.model).name}"
    with phases("figures"):
        report.heatmap(model, iv, task, folder / "heatmap.png", title, result)
        sel = chosen.get("selection") or (chosen.get("runs") or {}).get("first_fit_selection")  # --runs: fit 0's K
        if sel and sel.get("path"):
            report.plot_locations(folder / "locations.png", sel, f"{title} · locations kept"
                                  + (" (the first fit's path)" if "runs" in chosen else ""))
        if "runs" in chosen and chosen["runs"].get("frequencies"):
            report.stability(model, iv, task, folder / "stability.png", chosen["runs"],
                             f"{title} · selection frequency")
    result["timings"] = phases.table()              # seconds: {"load": {"wall", "cpu"}, "prepare", "fit", ...}
    report.write_json(folder / "metrics.json", result)
    console.print_selection(method, chosen)
    if args.show:
        console.show(model, tok, iv, task.test, batches["test"], args.show)
    return result, iv


def fit_and_select(cls, sites, positions, model, batches, args, phases: Phases):
    """The ℓ1 fit (ascale.fit), then the selection of selection.py: prune to --locations and refit, or, with
    --runs N, stability selection over N bootstrap fits (timed as one phase, "runs": fits and selection
    alternate). Returns (intervention, curve, {"selection": ...} or {"runs": ...}); Ctrl-C or SIGTERM stops it
    with what was learned (curve["interrupted"])."""
    def make():                                       # --at, --layers: every other unit's parameters stay 0
        return restricted(ascale.make(cls, model.config, sites, positions).to(model.lm_head.weight.device), args)
    kw = dict(lambda_f=args.lambda_f, lambda_m=args.lambda_m, margin=args.margin)
    if not cls.learned:                               # computed, not trained: no l1, no selection, no --runs
        iv = make()
        with phases("fit"):                           # the class means and the strength's choice
            chosen = iv.compute(model, batches["train"], lambda_f=args.lambda_f, margin=args.margin,
                                batch_size=args.eval_batch_size, choose=batches.get("val"), contrast=args.contrast)
        return iv, {"steps": 0, "interrupted": False, "stopped_by": None}, {cls.method: chosen}
    locations = None if args.locations in ("auto", "all") else int(args.locations)
    if args.runs > 1:
        with phases("runs"):
            iv, runs, _ = selection.stable(model, make, batches, runs=args.runs, steps=args.steps, lr=args.lr,
                                           batch_size=args.batch_size, schedule=args.schedule, locations=locations,
                                           refit_steps=args.refit_steps, seed=args.seed, tolerance=args.tolerance,
                                           **kw)
        stopped = runs["stopped_by"]
        curve = {"steps": args.steps * len(runs["fits"]), "interrupted": stopped is not None, "stopped_by": stopped}
        return iv, curve, {"runs": runs}
    iv = make()
    with phases("fit"):
        curve = ascale.fit(model, iv, batches["train"], steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                           seed=args.seed, schedule=args.schedule, **kw)
    if curve["interrupted"] or args.locations == "all":
        return iv, curve, {}
    with phases("selection"):
        iv, chosen = selection.choose(model, iv, batches, locations=locations, refit_steps=args.refit_steps,
                                      tolerance=args.tolerance, seed=args.seed, **kw)
    if chosen["stopped_by"]:
        curve.update(interrupted=True, stopped_by=chosen["stopped_by"])
    return iv, curve, {"selection": chosen}


def layer_spec(text: str) -> list[tuple[int, int | None]]:
    """--layers' type: selection.parse_layers; its error in one line (argparse's)."""
    try:
        return selection.parse_layers(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give layers and ranges from 0, comma-separated (1-, 1-29 or 3,7,12),"
                                         f" not {text!r}") from None


def layers_of(args, classes: dict[str, type], n_layer: int) -> list[int] | None:
    """--layers as the model's layers (selection.check_layers); a UserError for a method that is not trained."""
    if args.layers is None:
        return None
    if not all(cls.learned for cls in classes.values()):
        raise UserError("--layers holds the other layers' parameters at 0 while training: use it with "
                        f"{', '.join(m for m, c in ascale.methods().items() if c.learned)}, not a computed baseline")
    return selection.check_layers(args.layers, n_layer)


def restricted(iv: ascale.Intervention, args) -> ascale.Intervention:
    """iv restricted to --at's positions and --layers' layers (both: the units at both); unrestricted without them."""
    keep = ([selection.at_positions(iv, args.at)] if args.at else []) + \
        ([selection.at_layers(iv, args.layers)] if args.layers else [])
    if keep:
        iv.restrict({s: torch.stack([k[s] for k in keep]).all(0) for s in iv.sites})
    return iv


if __name__ == "__main__":
    sys.exit(main())
