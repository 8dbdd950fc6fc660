"""
Peak memory of train.py on a large task: a JSONL file of many prompts (20,000 by default) and a model
with Qwen's vocabulary of 151,936 tokens, in a temporary folder, trained by train.py as a user runs it.

    python -m benchmarks.memory                          20,000 prompts, 151,936 tokens: prints train.py's peak memory
    python -m benchmarks.memory --prompts 2000           the same with fewer prompts: the peak should not change much
    python -m benchmarks.memory -- --method dynscalar    flags after -- go to train.py

The model is random (its answers mean nothing; the run is about memory): the toy world's tokenizer
(models/toyworld/tokenizer.json) and architecture, --layers layers of --width (default 2 and 32: blocks so
small that their FLOPs alone would allow one step on all 15,000 training prompts, some 20 GiB of logits and
their gradients; running.budget.train_batch_size counts the unembedding too, and caps the batch by memory, for
--prompts 2000 at about 240), with an unembedding of --vocab rows, so the tokens the prompts use are in
its vocabulary. The prompts are conflicts of
one token length (`The capital of X is Y, says Z. Q: What is the capital of X? A:`). The peak is
the resident set size of the train.py process (resource.getrusage, ru_maxrss), weights included.
"""

import argparse
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import tasks
from gpt2 import GPT, GPTConfig
from loading import checkpoints
from loading.tokenizer import get_tokenizer
from world import toyworld

ROOT = Path(__file__).resolve().parent.parent
TOYWORLD = ROOT / "models" / "toyworld"


def write_model(folder: Path, vocab: int, layers: int = 2, width: int = 32) -> None:
    """A random model of the toy world's architecture, `layers` deep and `width` wide, with a vocabulary of
    `vocab` tokens, in the Hub's layout."""
    config = {**json.loads((TOYWORLD / "config.json").read_text()), "vocab_size": vocab, "num_hidden_layers": layers,
              "hidden_size": width, "intermediate_size": 4 * width}
    model = GPT(GPTConfig(**checkpoints.config_from_hf(config)))
    toyworld.init_weights(model, seed=0)
    toyworld.save(model, TOYWORLD / "tokenizer.json", folder)


def write_task(path: Path, n: int) -> None:
    """n distinct conflicts of one token length, one JSON object a line."""
    tok = get_tokenizer(str(TOYWORLD))
    one = [c for c, city in tasks.COUNTRIES.items() if len(tok.encode(f" {c}")) == len(tok.encode(f" {city}")) == 1]
    names = [name for name in tasks.NAMES if len(tok.encode(f" {name}")) == 1]
    rows = ((name, country, other) for name in names for country in one for other in one if other != country)
    with open(path, "w") as f:
        for name, country, other in itertools.islice(rows, n):
            prompt = f"The capital of {country} is {tasks.COUNTRIES[other]}, says {name}. Q: What is the capital of" \
                     f" {country}? A:"
            f.write(json.dumps({"prompt": prompt, "correct": f" {tasks.COUNTRIES[country]}",
                                "wrong": f" {tasks.COUNTRIES[other]}"}) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=20000, help="lines of the JSONL task (default: 20000)")
    p.add_argument("--vocab", type=int, default=151936, help="the model's vocabulary (default: 151936, Qwen's)")
    p.add_argument("--steps", type=int, default=300, help="training steps (default: 300)")
    p.add_argument("--layers", type=int, default=2, help="the model's layers (default: 2)")
    p.add_argument("--width", type=int, default=32, help="the model's width (default: 32; 4 heads)")
    p.add_argument("train_args", nargs="*", help="more flags for train.py, after --")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_model(tmp / "model", args.vocab, args.layers, args.width)
        write_task(tmp / "task.jsonl", args.prompts)
        command = [sys.executable, str(ROOT / "train.py"), "--model", str(tmp / "model"), "--task",
                   str(tmp / "task.jsonl"), "--steps", str(args.steps), "--out", str(tmp / "run"), *args.train_args]
        print("$", " ".join(command[1:]), flush=True)
        start = time.time()
        code = subprocess.call(command, cwd=ROOT)
        seconds = time.time() - start
        metrics = tmp / "run" / "metrics.json"
        m = json.loads(metrics.read_text()) if metrics.exists() else {}
        n_train, batch = m.get("train", {}).get("n_prompts", "?"), m.get("train_batch_size", "?")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    kept = args.prompts * args.vocab * 4
    print(f"\n{args.prompts:,} prompts ({n_train:,} train), vocabulary {args.vocab:,}: train.py's peak memory"
          f" {peak / 2**30:.2f} GiB in {seconds:.0f} s (exit code {code}; training batch {batch}); keeping p⁻"
          f" for every prompt would take {kept / 2**30:.1f} GiB more (torch {torch.__version__},"
          f" {torch.get_num_threads()} threads)")
    return code


if __name__ == "__main__":
    sys.exit(main())
