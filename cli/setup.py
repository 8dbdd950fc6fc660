"""
What train.py and evaluate.py do before any training: the device, the model (on one device, or mapped over
several), the task's prompts on it, the target token, the original model's preference, a saved run reopened
(open_saved), and the checks made before the model is loaded or trained (a task's file, --generate's length).

Above the model, the method and the tasks (it imports gpt2, ascale and tasks), below the scripts: nothing but
the scripts imports it.
"""

import dataclasses
from pathlib import Path

import torch

import ascale
import tasks
from gpt2 import GPT
from loading import sentiment_data
from running import parallel
from running.errors import UserError

# What a saved run falls back to where its metadata is silent (files from before a field was written).
DEFAULTS = {"model": "gpt2", "task": "ccc", "target": "flip", "seed": 0, "answers": "one-token"}
LABEL_TARGETS = ("positive", "negative")  # --target for sentiment, whose answers are these labels
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
        untied = [m for m, cls in ascale.methods().items() if not cls.tied_to_positions]
        raise UserError(f"--unseen-lengths is for --method {' or '.join(untied)} (position-tied methods need one"
                        " prompt length)")
    if (args.domain or args.data) and args.task != "sentiment":
        raise UserError(f"--domain and --data are for --task sentiment, not {args.task}")
    device = model.lm_head.weight.device
    task = tasks.load_task(args.task, tok, seed=args.seed, fixed_length=fixed_length,
                           unseen_lengths=args.unseen_lengths, answers=args.answers, domain=args.domain or "movies",
                           data=args.data, max_tokens=min(tasks.SENTIMENT_TOKENS, model.config.n_ctx),
                           val_frac=getattr(args, "validation", 0.0))
    for split in ("train", "test") + (("val",) if task.val is not None else ()):
        ps = getattr(task, split)
        setattr(task, split, dataclasses.replace(ps, ids=ps.ids.to(device), answer_pos=ps.answer_pos.to(device),
                                                 correct=ps.correct.to(device), wrong=ps.wrong.to(device),
                                                 slots=None if ps.slots is None else ps.slots.to(device),
                                                 groups=None if ps.groups is None else ps.groups.to(device)))
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


def prepare(model, task, tok, args) -> dict:
    """Each split prepared (ascale.prepare) for --target: train, test and, with --validation, val. Answer A, whose
    preference makes a prompt's side (metrics.yardsticks), is the correct answer, or for a task of labels its
    first label (sentiment: " positive")."""
    target = target_token(args.target, task, tok)
    role_a = tasks.first_token(tok, next(iter(task.labels.values()))) if task.labels else None
    splits = ("train", "test") + (("val",) if task.val is not None else ())
    return {s: ascale.prepare(model, getattr(task, s), target, args.eval_batch_size, role_a=role_a) for s in splits}


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


def open_saved(args):
    """Load a saved intervention (args.file) onto its model (or --model of the same shape) and rebuild
    the prompts it was trained on; flags left unset come from the file. Returns (model, tokenizer,
    intervention, task, prepared batches per split)."""
    meta = ascale.read_metadata(args.file)
    args.model = args.model or meta["model"] or DEFAULTS["model"]
    args.revision = args.revision or meta["revision"] or None
    args.task = args.task or meta["task"] or DEFAULTS["task"]
    args.target = args.target or meta.get("target") or DEFAULTS["target"]
    args.seed = args.seed if args.seed is not None else int(meta.get("seed") or DEFAULTS["seed"])
    args.unseen_lengths = args.unseen_lengths or meta.get("unseen_lengths") == "1"
    if args.task == meta.get("task"):                # sentiment: the file's texts, unless --domain / --data say
        args.domain, args.data = args.domain or meta.get("domain") or None, args.data or meta.get("data") or None
    args.answers = args.answers or meta.get("answers") or DEFAULTS["answers"]   # files from before first-token
    check_task_file(args.task, args.data)
    model, tok = load_model(args)
    iv, meta = ascale.load(args.file, model)
    if args.model != meta["model"]:
        print(f"note: {args.file} was trained on {meta['model']}; evaluating it on {args.model} (same shape)")
    # the prompts it was trained on: one length for position-tied methods and for `all`
    args.validation = float(meta.get("validation") or 0)          # the run's train split, as it was trained on
    task = load_prompts(args, tok, meta.get("fixed_length", "1") == "1", model)
    if iv.positions and task.train.n_slots != iv.positions:
        what = "slots" if task.train.slots is not None else "tokens"
        raise UserError(f"{args.file} has parameters for {iv.positions} positions, but task {args.task}'s prompts have"
                        f" {task.train.n_slots} {what} for this tokenizer")
    check_generate(args, model, task)
    print(f"{iv.method} on {','.join(iv.sites)}: task {task.name}, {len(task.train)} train and {len(task.test)}"
          f" test prompts, target {args.target}")
    batches = prepare(model, task, tok, args)
    report_preference(task, batches)
    return model, tok, iv, task, batches
