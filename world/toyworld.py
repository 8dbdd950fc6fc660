"""
The toy world: a small language model that knows things, trained here from scratch, so that the
method can be seen and checked offline on a model with real mechanisms (models/toyworld/).

    python -m world.toyworld                                 rebuild models/toyworld (the committed model)
    python -m world.toyworld --steps 20 --out /tmp/tw        a quick smoke run

Four steps, one function each, all from one seed:

  1. corpus      documents written from tasks.py's own tables, so the tasks and the model share one
                 world: facts in several phrasings ("The capital of France is Paris.", "Q: What is
                 the capital of France? A: Paris"), context conflicts (a CCC template that states
                 another capital, then the question, answered mostly by the in-context city when
                 the context is stated plainly and by the memorised capital when it is hedged ("A
                 friend told me ..., but I am not sure"), as a real LM weighs its context), IOI
                 stories from every template and every name (answered with the indirect object),
                 and filler sentences about the same people.
  2. tokenizer   byte-level BPE trained with the `tokenizers` library until every word of the corpus
                 is one token (so every capital, name, place and object is one token with its leading
                 space), written as a tokenizer.json that tokenizer.py reads (ids in merge order).
  3. model       gpt2.GPT with a Pythia (GPT-NeoX) layout, the very forward pass that train.py
                 interprets, trained on next-token prediction: AdamW, linear warm-up, cosine decay.
  4. save        the Hub's layout (config.json, model.safetensors, tokenizer.json) with our names
                 renamed back to GPT-NeoX's (the inverse of checkpoints.rename_checkpoint), and a model card
                 README.md with the recipe and the behaviour measured by `measure` on the saved files.
"""

import argparse
import json
import math
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

import tasks
from gpt2 import GPT, GPTConfig, UserError
from loading import checkpoints
from loading.tokenizer import Tokenizer

EOT = "<|endoftext|>"

# ----------------------------------------------------------------------------- 1. the corpus

# The question and statement forms the facts are written in; the first is the one the facts test uses.
QUESTIONS = ["Q: What is the capital of {country}? A:", "Q: Which city is the capital of {country}? A:",
             "Q: What is the capital city of {country}? A:", "What is the capital of {country}? Answer:",
             "Question: What is the capital of {country}? Answer:"]
STATEMENTS = ["The capital of {country} is {city}.", "The capital city of {country} is {city}.",
              "{City} is the capital of {country}.", "The city of {city} is the capital of {country}."]
FILLER = ["{a} went to the {place}.", "{a} and {b} live near the {place}.", "{a} bought a {object} at the {place}.",
          "{a} visited {city} with {b}.", "{a} likes the {object} that {b} found.", "{a} gave {b} a {object}.",
          "At the {place}, {a} met {b}.", "{a} lives in {city}, the capital of {country}."]

# Share of each kind of document (the rest is filler).
MIX = {"fact": 0.25, "conflict": 0.25, "ioi": 0.40}
COPY = 0.85  # in a conflict document, how often the answer follows the side its template favours


# The CCC templates that hedge the context ("I read that ...", "A friend told me ..., but I am not
# sure"): after them the world's documents mostly answer with the memorised capital; after the
# others, which state the context plainly, mostly with the in-context city.
HEDGED = {t for t in tasks.CCC_TEMPLATES if t.startswith(("I read that", "A friend told me"))}


def make_document(rng: random.Random) -> str:
    """One document of the toy world, drawn from `rng`."""
    kind = rng.choices([*MIX, "filler"], weights=[*MIX.values(), 1 - sum(MIX.values())])[0]
    country = rng.choice(sorted(tasks.COUNTRIES))
    capital = tasks.COUNTRIES[country]
    if kind == "fact":
        if rng.random() < 0.5:
            return rng.choice(QUESTIONS).format(country=country) + " " + capital
        text = rng.choice(STATEMENTS).format(country=country, city=capital, City=capital)
        return text[0].upper() + text[1:]  # "the Netherlands" may start a sentence
    if kind == "conflict":
        city = rng.choice([c for k, c in tasks.COUNTRIES.items() if k != country])
        template = rng.choice(tasks.CCC_TEMPLATES)
        trust_memory = (rng.random() < COPY) == (template in HEDGED)
        return f"{template.format(country=country, city=city)} {capital if trust_memory else city}."
    if kind == "ioi":
        item = tasks.draw_ioi(rng, tasks.NAMES)
        return f"{item.prompt}{item.correct}."
    a, b = rng.sample(tasks.NAMES, 2)
    return rng.choice(FILLER).format(a=a, b=b, place=rng.choice(tasks.PLACES), object=rng.choice(tasks.OBJECTS),
                                     city=capital, country=country)


# ----------------------------------------------------------------------------- 2. the tokenizer


def train_tokenizer(texts: list[str], path: Path) -> Tokenizer:
    """Byte-level BPE (GPT-2's pre-tokenizer, all 256 bytes in the alphabet, <|endoftext|> = 0), merged
    until every word of the corpus is one token; written to `path` and read back through tokenizer.py."""
    try:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers
    except ImportError:
        raise UserError("toyworld.py trains its tokenizer with the `tokenizers` library, a test dependency:"
                        " pip install -r requirements-dev.txt") from None
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=100_000, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer)  # stops when no pair is left: every word is whole
    hf.save(str(path))
    return Tokenizer.from_tokenizer_json(path)


def check_one_token(tok: Tokenizer) -> None:
    """Every one-word capital, every name, place and object must be one token after a space."""
    words = [c for c in tasks.COUNTRIES.values() if c.isalpha()] + tasks.NAMES + tasks.PLACES + tasks.OBJECTS
    split = [w for w in words if len(tok.encode(" " + w)) != 1]
    if split:
        raise UserError(f"the tokenizer splits {len(split)} words of the world, e.g. {split[:5]}; use more --docs")


# ----------------------------------------------------------------------------- 3. the model


def init_weights(model: GPT, seed: int) -> None:
    """GPT-2's initialisation: normal(0, 0.02) weights, zero biases, unit LayerNorms, and the output
    projections of each block scaled by 1/sqrt(2·n_layer) (they add up on the residual stream)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() == 1:  # LayerNorm weights 1, biases 0
            p.data.fill_(1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.0)
        else:
            std = 0.02 / math.sqrt(2 * model.config.n_layer) if name.endswith("c_proj.weight") else 0.02
            p.data.normal_(0.0, std, generator=gen)


def batches(tok: Tokenizer, rng: random.Random, batch_size: int, seq_len: int):
    """Endless (B, T+1) rows of documents joined by <|endoftext|>, each row starting at a document's
    first token (as task prompts do)."""
    while True:
        rows = []
        for _ in range(batch_size):
            row = []
            while len(row) < seq_len + 1:
                row += tok.encode(make_document(rng)) + [tok.eot_token]
            rows.append(row[:seq_len + 1])
        yield torch.tensor(rows)


def learning_rate(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up to lr, then cosine decay to lr/10."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_model(cfg: GPTConfig, tok: Tokenizer, args) -> tuple[GPT, list[float]]:
    """Next-token prediction with AdamW (weight decay on matrices only); returns the model and the
    loss of every step."""
    from tqdm import tqdm
    model = GPT(cfg)
    init_weights(model, args.seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    data = batches(tok, random.Random(f"data/{args.seed}"), args.batch_size, args.seq_len)
    losses = []
    bar = tqdm(range(args.steps), desc="toyworld", unit="step")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        rows = next(data)                                           # (B, T+1)
        logits = model(rows[:, :-1])                                # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return model.eval().requires_grad_(False), losses


# ----------------------------------------------------------------------------- 4. saving, in the Hub's layout

# Our parameter names -> GPT-NeoX's, the inverse of checkpoints.NEOX_NAMES.
TO_NEOX = {new: old for old, new in checkpoints.NEOX_NAMES.items()}


def neox_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights under GPT-NeoX's names and layouts, as on the Hub."""
    cfg, out = model.config, {}
    for key, t in model.state_dict().items():
        if key == "lm_head.weight" and cfg.tie_embeddings:
            continue
        if ".attn.c_attn." in key:  # ours: rows (3, nh, hs); GPT-NeoX fuses them per head, (nh, 3, hs)
            nh, hs = cfg.n_head, cfg.head_dim
            t = t.view(3, nh, hs, -1).transpose(0, 1).reshape(t.shape)
        for ours, theirs in TO_NEOX.items():  # prefixes ("h." -> "gpt_neox.layers.") and parts (".ln_1.")
            if ours.startswith("."):
                key = key.replace(ours, theirs)
            elif key.startswith(ours):
                key = theirs + key.removeprefix(ours)
        out[key] = t.contiguous().clone()
    return out


def neox_config(cfg: GPTConfig, tok: Tokenizer) -> dict:
    """config.json as transformers' GPTNeoXConfig writes it (the keys checkpoints.config_from_hf reads)."""
    return {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
            "intermediate_size": cfg.n_inner, "max_position_embeddings": cfg.n_ctx, "hidden_act": "gelu",
            "rotary_pct": cfg.rotary_dim / cfg.head_dim, "rotary_emb_base": cfg.rotary_base,
            "use_parallel_residual": cfg.parallel_residual, "layer_norm_eps": cfg.layer_norm_eps,
            "attention_bias": cfg.attn_bias, "tie_word_embeddings": cfg.tie_embeddings,
            "bos_token_id": tok.eot_token, "eos_token_id": tok.eot_token, "torch_dtype": "float32"}


def save(model: GPT, tok_json: Path, folder: Path) -> None:
    from safetensors.torch import save
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_tokenizer_json(tok_json)
    data = {"config.json": json.dumps(neox_config(model.config, tok), indent=1).encode(),
            "model.safetensors": save(neox_state_dict(model), metadata={"format": "pt"}),
            "tokenizer.json": tok_json.read_bytes()}
    for name, blob in data.items():
        tmp = folder / f"{name}.tmp"
        tmp.write_bytes(blob)
        tmp.replace(folder / name)


# ----------------------------------------------------------------------------- 5. the behaviour it must have


@torch.no_grad()
def measure(folder, seed: int = 0) -> dict:
    """The toy world's behaviour, read from the saved folder through the project's own loading code:
    facts (the capital is the top token after the plain question), CCC (how often the in-context city
    beats the memorised capital on the project's prompts) and IOI (how often the indirect object beats
    the subject, on the project's test prompts and on fresh random draws of two names)."""
    from loading.tokenizer import get_tokenizer
    model, tok = GPT.from_pretrained(str(folder)), get_tokenizer(str(folder))
    one = {k: v for k, v in tasks.COUNTRIES.items() if tasks.single_token(tok, " " + v) is not None}
    facts = [tasks.Item(QUESTIONS[0].format(country=k), " " + v, " " + v) for k, v in one.items()]
    out = {"facts_top1": tasks.preference(model, tasks.tokenize(facts, tok))[1], "n_countries": len(one)}
    for name, fixed in (("fixed", True), ("mixed", False)):
        ccc = tasks.load_task("ccc", tok, seed=seed, fixed_length=fixed)
        ioi = tasks.load_task("ioi", tok, seed=seed, fixed_length=fixed)
        correct = sum(tasks.preference(model, s)[0] * len(s) for s in (ccc.train, ccc.test))  # prompts, both splits
        out[f"ccc_in_context_{name}"] = 1 - correct / (len(ccc.train) + len(ccc.test))
        out[f"ioi_test_{name}"] = tasks.preference(model, ioi.test)[0]
    rng = random.Random(f"fresh/{seed}")
    fresh = [tasks.draw_ioi(rng, tasks.NAMES) for _ in range(300)]
    out["ioi_fresh"] = tasks.preference(model, tasks.tokenize(fresh, tok))[0]
    return out


def model_card(cfg: GPTConfig, tok: Tokenizer, args, losses: list[float], behaviour: dict, seconds: float) -> str:
    n_params = sum(p.numel() for p in GPT(cfg).parameters())  # a tied unembedding is counted once
    tail = sum(losses[-50:]) / len(losses[-50:])
    b = behaviour
    rows = "\n".join(f"| {what} | {value} |" for what, value in [
        ("facts: the capital is the top next token after `Q: What is the capital of X? A:`",
         f"{b['facts_top1']:.1%} of {b['n_countries']} countries with a one-token capital"),
        ("CCC: the in-context city beats the memorised capital (one template / all templates)",
         f"{b['ccc_in_context_fixed']:.1%} / {b['ccc_in_context_mixed']:.1%} of the project's prompts"),
        ("IOI: the indirect object beats the subject, the project's test prompts (one template / all)",
         f"{b['ioi_test_fixed']:.1%} / {b['ioi_test_mixed']:.1%}"),
        ("IOI: the same on 300 fresh random draws of two names, template, place and object",
         f"{b['ioi_fresh']:.1%}")])
    return f"""# toyworld

A small language model of a synthetic world of countries, capitals and people, trained from scratch by
this project's `toyworld.py` with its own `gpt2.GPT` (the forward pass that `train.py` interprets). It
exists so that activation scaling can be run, seen and checked offline on a model that knows things.
Made by:

    python -m world.toyworld {args.command}

## Recipe
- **Corpus**, written from `tasks.py`'s tables (seed {args.seed}): {MIX['fact']:.0%} facts (statements and
  questions about {len(tasks.COUNTRIES)} countries), {MIX['conflict']:.0%} context conflicts (a CCC template
  stating another country's capital; after the {len(tasks.CCC_TEMPLATES) - len(HEDGED)} templates that state it plainly
  the answer is the in-context city, after the {len(HEDGED)} that hedge it ("I read that", "A friend told me ..., but
  I am not sure") the memorised capital, each {COPY:.0%} of the time),
  {MIX['ioi']:.0%} IOI stories (all {len(tasks.IOI_TEMPLATES)} templates, all {len(tasks.NAMES)} names), the
  rest filler sentences about the same people, places and cities.
- **Tokenizer**: byte-level BPE (`tokenizers`) trained on {args.docs:,} documents until every word is one
  token: {tok.n_vocab:,} tokens, `<|endoftext|>` = {tok.eot_token}.
- **Model**: GPT-NeoX (Pythia) layout: {cfg.n_layer} layers, width {cfg.n_embd}, {cfg.n_head} heads, MLP
  {cfg.n_inner}, rotary on {cfg.rotary_dim} of {cfg.head_dim} dims per head, parallel residual,
  {'tied' if cfg.tie_embeddings else 'untied'} unembedding, context {cfg.n_ctx}: {n_params:,} parameters, float32.
- **Training**: {args.steps:,} steps of {args.batch_size} × {args.seq_len} tokens, AdamW (β = 0.9, 0.95,
  weight decay 0.1 on matrices), lr {args.lr:g} with {args.warmup} warm-up steps and cosine decay to a tenth,
  gradient clipping at 1, seed {args.seed}. Loss: {losses[0]:.2f} at the first step, {tail:.3f} over the
  last 50.
- **Time**: {seconds / 60:.1f} minutes for the whole build on {args.threads} CPU thread(s)
  ({platform.processor() or platform.machine()}, torch {torch.__version__}).

## Behaviour (measured by `toyworld.measure` on the saved files, seed 0)
| what | measured |
|---|---|
{rows}

Use it anywhere a model id goes: `python train.py --task ccc --model models/toyworld`.
"""


# ----------------------------------------------------------------------------- command line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Rebuild the toy-world model (models/toyworld): corpus, tokenizer,"
                                " training, Hub-layout folder with a model card.")
    p.add_argument("--out", default="models/toyworld", help="folder to write (default: models/toyworld)")
    p.add_argument("--seed", type=int, default=0, help="seed of the world, the data order and the initial weights"
                   " (default: 0)")
    p.add_argument("--docs", type=int, default=20_000, help="documents the tokenizer is trained on (default: 20000)")
    p.add_argument("--steps", type=int, default=3000, help="training steps (default: 3000)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per step (default: 32)")
    p.add_argument("--seq-len", type=int, default=64, help="tokens per sequence (default: 64)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default: 3e-3)")
    p.add_argument("--warmup", type=int, default=100, help="warm-up steps (default: 100)")
    p.add_argument("--n-layer", type=int, default=4, help="layers (default: 4)")
    p.add_argument("--n-embd", type=int, default=128, help="width (default: 128)")
    p.add_argument("--n-head", type=int, default=4, help="attention heads (default: 4)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch; on a busy 2-core machine one is"
                   " steadier than two (default: 1)")
    args = p.parse_args(argv)
    args.command = " ".join(sys.argv[1:] if argv is None else argv)
    if min(args.docs, args.steps, args.batch_size, args.seq_len, args.threads, args.warmup) < 1:
        p.error("--docs, --steps, --batch-size, --seq-len, --threads and --warmup must be >= 1")
    if args.n_embd % args.n_head or (args.n_embd // args.n_head) % 8:
        p.error("--n-embd / --n-head must be a multiple of 8 (rotary takes a quarter of each head, in pairs)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start, out = time.time(), Path(args.out)
    rng = random.Random(f"tokenizer/{args.seed}")
    with tempfile.TemporaryDirectory() as tmp:
        tok_json = Path(tmp) / "tokenizer.json"
        tok = train_tokenizer([make_document(rng) for _ in range(args.docs)], tok_json)
        check_one_token(tok)
        hs = args.n_embd // args.n_head
        cfg = GPTConfig("gpt_neox", tok.n_vocab, args.seq_len, args.n_layer, args.n_head, args.n_embd,
                        4 * args.n_embd, gelu_approx="none", rotary_dim=hs // 4, parallel_residual=True,
                        tie_embeddings=False)
        print(f"tokenizer: {tok.n_vocab} tokens; model: {cfg.n_layer} layers, width {cfg.n_embd}")
        model, losses = train_model(cfg, tok, args)
        save(model, tok_json, out)
    behaviour = measure(out, seed=0)
    seconds = time.time() - start
    card = model_card(cfg, tok, args, losses, behaviour, seconds)
    (out / "README.md").write_text(card)
    print(json.dumps({k: round(v, 4) for k, v in behaviour.items()}))
    print(f"wrote {out}/ in {seconds / 60:.1f} minutes")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        sys.exit(f"error: {e}")
