"""
The prompts that interventions are trained and tested on: CCC, IOI, and users' own JSONL tasks.

Every task item is a prompt and two single answer tokens (docs/method.md, "Tasks"):

    prompt   "The capital of Germany is Paris. Q: What is the capital of Germany? A:"
    correct  " Berlin"   c, the memorised fact (IOI: the indirect object)
    wrong    " Paris"    w, the in-context city (IOI: the subject)

Answers carry their leading space, and each must be exactly one token for the model's
tokenizer (GPT-2's and Pythia's differ), so CCC and IOI drop the items whose answers are not.

A built-in task is one builder function (ccc_items, ioi_items) and one row of TASKS, the table that
load_task, train.py's --task and its help read. load_task(...) is the one entry point. It returns a
Task with a train and a test PromptSet:
token ids right-padded with the end-of-text token, the answer position per prompt (its last
token), the correct and wrong token ids, and each prompt's token strings (for heatmap axes).
Everything is deterministic given the seed (random.Random(seed), never global state).

Two shapes of data, by the method that uses them:
    fixed_length=True   ActivScalar and SteerVec tie one parameter to each position, so all
                        prompts (train and test) use one template and have the same token
                        length: the most common length is kept and the rest dropped.
    fixed_length=False  DynScalar works at any length: a mix of templates and lengths. With
                        unseen_lengths=True the test prompts have token lengths that no train
                        prompt has (see hold_out_lengths).

Splits keep test entities unseen: CCC splits by country (a test country's name and capital
never appear in a train prompt), IOI by first name, a JSONL file by line (seeded shuffle).

Run `python tasks.py --task ccc --model gpt2` to see a few prompts, the counts, and how often
the unchanged model prefers the correct answer.
"""

import argparse
import json
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpt2 import UserError
from loading import sentiment_data
from loading.prompts import Item, PromptSet, first_token, n_tokens, single_token, token_str, tokenize
from world.tables import COUNTRIES, NAMES, OBJECTS, PLACES

ANSWERS = ("first-token", "one-token")  # how CCC's answers are tokens (load_task)
N_TRAIN, N_TEST = 300, 100  # default caps on the number of prompts per split (CCC, IOI)
# Real text is varied: its default caps are larger (movies has 7,079 clear cases; a pass over 1,300 prompts of
# about 30 tokens costs SmolLM2 about a minute on 2 CPU cores).
SPLIT_CAPS = {"sentiment": (1000, 300)}
TEST_FRAC = 0.25  # share of countries / names / JSONL lines that go to the test split

# ----------------------------------------------------------------------------- data structures


@dataclass
class Options:
    """What load_task was asked for, as a task's builder reads it (load_task says what each one means)."""
    seed: int = 0
    fixed_length: bool = True
    unseen_lengths: bool = False
    template: int = 0
    n_train: int = N_TRAIN
    n_test: int = N_TEST
    test_frac: float = TEST_FRAC
    wrongs_per_country: int = 5
    answers: str = "first-token"
    domain: str = "movies"      # sentiment: whose texts
    data: str | None = None     # sentiment: the folder holding the download (None: data/)
    max_tokens: int | None = None  # sentiment: the longest prompt kept (None: SENTIMENT_TOKENS)


@dataclass
class Task:
    """A task's train and test prompts, and how they were made."""
    name: str                  # "ccc", "ioi", or the JSONL file's name
    train: PromptSet
    test: PromptSet
    fixed_length: bool         # True: one template, one token length across train and test
    templates: list[str]       # the templates used (empty for a JSONL task)
    notes: list[str]           # human-readable counts: what was kept, what was dropped and why
    labels: dict[str, str] = field(default_factory=dict)  # a task whose answers are labels: --target word -> answer
    val: PromptSet | None = None  # validation: training groups held out for the choices a run makes (load_task)


def count_str(counter: Counter) -> str:
    """Counter({21: 80, 23: 5}) -> '21 tokens: 80, 23 tokens: 5' (by length)."""
    return ", ".join(f"{k} tokens: {v}" for k, v in sorted(counter.items()))


# ----------------------------------------------------------------------------- shared steps


def split_groups(groups: list, test_frac: float, rng: random.Random, what: str) -> tuple[set, set]:
    """Shuffle the distinct groups (countries, names) and cut off test_frac of them for test:
    test_frac * n rounded, but at least one group on each side."""
    groups = sorted(set(groups))
    if len(groups) < 2:
        raise UserError(f"only {len(groups)} {what} left after filtering; need at least 2 to split train/test")
    rng.shuffle(groups)
    n_test = min(max(1, int(test_frac * len(groups) + 0.5)), len(groups) - 1)  # rounded half up
    return set(groups[n_test:]), set(groups[:n_test])


def keep_modal_length(train: list[Item], test: list[Item], tokenizer, what: str,
                      notes: list[str]) -> tuple[list, list]:
    """Keep the items whose prompt has the most common token length over both splits (ties: the
    shorter length), so that train and test share one length. `what` names the items in the note."""
    lengths = {id(it): n_tokens(tokenizer, it.prompt) for it in train + test}
    counts = Counter(lengths.values())
    if not counts:
        return train, test
    T = max(sorted(counts), key=lambda n: counts[n])
    dropped = Counter(n for n in lengths.values() if n != T)
    msg = f"fixed length: kept the {counts[T]} {what} whose prompt is {T} tokens"
    if dropped:
        msg += f"; dropped {sum(dropped.values())} of other lengths ({count_str(dropped)})"
    notes.append(msg)
    return [it for it in train if lengths[id(it)] == T], [it for it in test if lengths[id(it)] == T]


def hold_out_lengths(train: list[Item], test: list[Item], tokenizer, notes: list[str]) -> tuple[list, list]:
    """For testing DynScalar on unseen lengths: sort the distinct prompt lengths of all items and
    give every second one (the 2nd, 4th, ...) to test only, the others to train only. Test lengths
    thus lie between train lengths, and no test prompt has a length seen in training."""
    length = {id(it): n_tokens(tokenizer, it.prompt) for it in train + test}
    distinct = sorted(set(length.values()))
    if len(distinct) < 2:
        raise UserError(f"all prompts have {distinct[0] if distinct else 0} tokens, so no length can be held "
                        "out for test; drop --unseen-lengths or add prompts of other lengths")
    test_lengths = set(distinct[1::2])
    train = [it for it in train if length[id(it)] not in test_lengths]
    test = [it for it in test if length[id(it)] in test_lengths]
    notes.append(f"unseen lengths: train uses {sorted(set(distinct) - test_lengths)} tokens, "
                 f"test {sorted(test_lengths)}")
    return train, test


def pick_templates(templates: list[str], template: int, fixed_length: bool, task: str) -> list[str]:
    """The one template a fixed-length set uses, or all of them for a mixed-length set."""
    if not fixed_length:
        return list(templates)
    if not 0 <= template < len(templates):
        raise UserError(f"--template {template} does not exist; {task} has templates 0..{len(templates) - 1}")
    return [templates[template]]


def cap(items: list[Item], n: int | None, rng: random.Random) -> list[Item]:
    """At most n items, drawn at random (all of them when n is None), in random order."""
    items = list(items)
    rng.shuffle(items)
    return items if n is None else items[:n]


# ----------------------------------------------------------------------------- CCC
# The table of countries and capitals is in tables.py (COUNTRIES).

# The first is the template of the definition (docs/method.md, "Tasks"); the others differ in length and
# wording (for DynScalar).
# {country} never starts a sentence, so "the Netherlands" reads right.
CCC_TEMPLATES = [
    "The capital of {country} is {city}. Q: What is the capital of {country}? A:",
    "The capital of {country} is {city}. Q: Which city is the capital of {country}? A:",
    "The capital city of {country} is {city}. Q: What is the capital city of {country}? A:",
    "The capital of {country} is {city}. What is the capital of {country}? Answer:",
    "Context: The capital of {country} is {city}. Question: What is the capital of {country}? Answer:",
    "I read that the capital of {country} is {city}. Q: What is the capital of {country}? A:",
    "According to this text, the capital of {country} is {city}. Q: What is the capital of {country}? A:",
    "A friend told me that the capital of {country} is {city}, but I am not sure. "
    "Q: What is the capital of {country}? A:",
    "The capital of {country} is {city}. Q: What is the capital of {country}? Answer with the name of a city. A:",
]


def ccc_items(tokenizer, opt: Options, notes: list[str]) -> tuple[list, list, list]:
    """CCC items for train and test, and the templates used.

    1. answers "one-token": keep countries whose capital (" Berlin") is one token for this tokenizer;
       "first-token": keep every country (" Buenos Aires" is compared by " Buenos");
    2. fixed length: keep the countries whose prompt has the most common length;
    3. split the countries train/test (seeded);
    4. per country (and template), draw `wrongs_per_country` wrong cities: capitals of other
       countries of the same split, so a test country's capital never appears in training (with a
       fixed length, only one-token cities: the city is in the prompt); "first-token": drop the items
       whose two answers begin with the same token (" San Marino" against " San José")."""
    rng = random.Random(f"ccc/{opt.seed}")
    one = {k: v for k, v in COUNTRIES.items() if single_token(tokenizer, " " + v) is not None}
    multi = [v for k, v in COUNTRIES.items() if k not in one]
    if opt.answers == "first-token":
        capital = dict(COUNTRIES)
        notes.append(f"countries: {len(COUNTRIES)} in the table, {len(one)} with a one-token capital; answers"
                     f" compared by their first token, so the {len(multi)} others are kept too")
    else:
        capital = one
        notes.append(f"countries: {len(COUNTRIES)} in the table, {len(capital)} with a one-token capital "
                     f"({len(multi)} dropped, e.g. {', '.join(repr(' ' + v) for v in multi[:3])})")
    if not one:
        raise UserError("no capital in the table is one token for this tokenizer; CCC needs some")

    templates = pick_templates(CCC_TEMPLATES, opt.template, opt.fixed_length, "CCC")
    if opt.fixed_length:
        # The length depends on the country's name only (the in-context city is one token); measure it
        # with a one-token capital in the city slot.
        city = sorted(one.values())[0]
        probes = [Item(templates[0].format(country=k, city=city), v, v, (k,)) for k, v in capital.items()]
        kept, _ = keep_modal_length(probes, [], tokenizer, "countries", notes)
        capital = {it.group[0]: capital[it.group[0]] for it in kept}

    train_c, test_c = split_groups(list(capital), opt.test_frac, rng, "countries")
    notes.append(f"split by country: {len(train_c)} train, {len(test_c)} test countries")
    splits = []
    same_first = Counter()
    for countries in (train_c, test_c):
        cities = sorted(capital[k] for k in countries if not opt.fixed_length or k in one)  # in-context cities
        items = []
        for country in sorted(countries):
            for tpl in templates:
                others = [c for c in cities if c != capital[country]]
                for city in rng.sample(others, min(opt.wrongs_per_country, len(others))):
                    it = Item(tpl.format(country=country, city=city), " " + capital[country], " " + city, (country,))
                    if opt.answers == "first-token" and first_token(tokenizer, it.correct) == first_token(tokenizer,
                                                                                                     it.wrong):
                        same_first[(it.correct, it.wrong)] += 1
                        continue
                    items.append(it)
        splits.append(items)
    train, test = splits
    if same_first:
        pairs = ", ".join(f"{c!r} / {w!r}" for c, w in list(same_first)[:3])
        notes.append(f"first-token answers: dropped {sum(same_first.values())} prompts whose correct and wrong"
                     f" answers begin with the same token (e.g. {pairs})")
    if opt.fixed_length:  # a wrong city that merges with its neighbours would change the length
        train, test = keep_modal_length(train, test, tokenizer, "prompts", notes)
    elif opt.unseen_lengths:
        train, test = hold_out_lengths(train, test, tokenizer, notes)
    return train, test, templates


# ----------------------------------------------------------------------------- IOI
# Templates in the style of Wang et al. (2022), written for this project. {X} and {Y} are the
# two names in order of first mention; {S} is the subject, who gives; the prompt ends where the
# indirect object (IO) comes next. ABBA: X = IO, Y = S. BABA: X = S, Y = IO.
# c = " IO", w = " S". Objects start with a consonant (they follow "a").

IOI_TEMPLATES = [
    "When {X} and {Y} went to the {place}, {S} gave a {object} to",
    "After {X} and {Y} went to the {place}, {S} gave a {object} to",
    "Then, {X} and {Y} went to the {place}. {S} gave a {object} to",
    "While {X} and {Y} were working at the {place}, {S} gave a {object} to",
    "Then, {X} and {Y} had a lot of fun at the {place}. {S} gave a {object} to",
    "When {X} and {Y} got a {object} at the {place}, {S} decided to give it to",
    "Afterwards, {X} and {Y} went to the {place}. {S} handed a {object} to",
    "Then, {X} and {Y} were thinking about going to the {place}. {S} wanted to give a {object} to",
    "Friends {X} and {Y} found a {object} at the {place}. {S} gave it to",
    "After a long day at the {place}, {X} and {Y} were tired. {S} passed a {object} to",
    "Then, {X} and {Y} had a long argument. Afterwards {S} said to",
    "When {X} and {Y} arrived at the {place}, {S} threw a {object} to",
    "The {place} was busy when {X} and {Y} arrived, so {S} brought a {object} to",
]

# The first names, places and objects are in tables.py (NAMES, PLACES, OBJECTS).


def draw_ioi(rng: random.Random, names, templates=IOI_TEMPLATES, places=PLACES, objects=OBJECTS) -> Item:
    """One random IOI item: a template, two names (indirect object and subject) in ABBA or BABA
    order, a place and an object. c = " IO", w = " S"."""
    tpl = rng.choice(templates)
    io, s = rng.sample(names, 2)
    x, y = (io, s) if rng.random() < 0.5 else (s, io)  # ABBA or BABA
    prompt = tpl.format(X=x, Y=y, S=s, place=rng.choice(places), object=rng.choice(objects))
    return Item(prompt, " " + io, " " + s, (io, s))


def ioi_items(tokenizer, opt: Options, notes: list[str]) -> tuple[list, list, list]:
    """IOI items for train and test, and the templates used.

    Names, places and objects are kept if one token (with their leading space), so each template
    has one token length. Names are split train/test (seeded): test prompts use only unseen names.
    Prompts are drawn at random (template, ABBA/BABA order, two names, place, object), without
    repeats, until the split has its size or the draws run out."""
    rng = random.Random(f"ioi/{opt.seed}")
    names = [n for n in NAMES if single_token(tokenizer, " " + n) is not None]
    places = [p for p in PLACES if single_token(tokenizer, " " + p) is not None]
    objects = [o for o in OBJECTS if single_token(tokenizer, " " + o) is not None]
    notes.append(f"one-token words kept: {len(names)}/{len(NAMES)} names, {len(places)}/{len(PLACES)} places, "
                 f"{len(objects)}/{len(OBJECTS)} objects")
    templates = pick_templates(IOI_TEMPLATES, opt.template, opt.fixed_length, "IOI")

    train_n, test_n = split_groups(names, opt.test_frac, rng, "names")
    notes.append(f"split by name: {len(train_n)} train, {len(test_n)} test names")

    def draw(pool: set, n: int) -> list[Item]:
        pool, seen, items = sorted(pool), set(), []
        for _ in range(50 * n):  # enough draws to fill any split that can be filled
            if len(items) == n:
                break
            item = draw_ioi(rng, pool, templates, places, objects)
            if item.prompt not in seen:
                seen.add(item.prompt)
                items.append(item)
        return items

    if opt.unseen_lengths and not opt.fixed_length:  # draw plenty, then keep the lengths each side may have
        train, test = hold_out_lengths(draw(train_n, 4 * opt.n_train), draw(test_n, 4 * opt.n_test), tokenizer,
                                       notes)
    else:
        train, test = draw(train_n, opt.n_train), draw(test_n, opt.n_test)
    if opt.fixed_length:
        train, test = keep_modal_length(train, test, tokenizer, "prompts", notes)
    return train, test, templates


# ----------------------------------------------------------------------------- sentiment
# Human-rated texts (loading/sentiment_data.py) in one template; the answer is the raters' sign.

SENTIMENT_PARTS = ("Review:", "\nSentiment:")  # prefix and suffix; the text goes between, after a space
SENTIMENT_ANSWERS = (" positive", " negative")
CLEAR = 1.5              # clear cases only: |mean rating| >= 1.5 of 4 (docs/tasks.md says why)
SENTIMENT_TOKENS = 128   # the longest prompt kept, in tokens (and never past the model's context)


def sentiment_items(tokenizer, opt: Options, notes: list[str]) -> tuple[list, list, list]:
    """Train and test items of one domain's clear cases, and the template: correct is the raters' sign
    (" positive" or " negative"), wrong the other; prompts longer than opt.max_tokens are dropped. Split by
    text (seeded), so that no test text, repeated in the file or not, appears in training. Its prompts have
    many lengths and a slot map (tokenize), for every method: opt.fixed_length does not apply."""
    if opt.unseen_lengths:
        raise UserError("--unseen-lengths is for ccc, ioi and .jsonl tasks; sentiment's prompts have many lengths")
    domain, max_tokens = opt.domain, opt.max_tokens or SENTIMENT_TOKENS
    rows = sentiment_data.read_domain(domain, opt.data)
    clear = sentiment_data.clear_cases(rows, CLEAR)
    pos, neg = SENTIMENT_ANSWERS
    if first_token(tokenizer, pos) == first_token(tokenizer, neg):
        raise UserError(f"{pos!r} and {neg!r} begin with the same token for this tokenizer; sentiment needs two")
    prefix, suffix = SENTIMENT_PARTS
    fixed = n_tokens(tokenizer, prefix) + len(tokenizer.encode(suffix))         # BOS, prefix and suffix
    items = [Item(f"{prefix} {r.text}{suffix}", *((pos, neg) if r.rating > 0 else (neg, pos)), (r.text,),
                  (prefix, " " + r.text, suffix)) for r in clear]
    kept = [it for it in items if fixed + len(tokenizer.encode(it.parts[1])) <= max_tokens]
    n_pos = sum(it.correct == pos for it in kept)
    notes.append(f"sentiment, {domain}: {len(rows)} rated texts, {len(clear)} clear cases (|mean rating| >="
                 f" {CLEAR:g})" + (f", {len(items) - len(kept)} of them longer than {max_tokens} tokens dropped"
                                   if len(kept) < len(items) else "")
                 + f": {n_pos} positive, {len(kept) - n_pos} negative")
    train_t, test_t = split_groups([it.group for it in kept], opt.test_frac, random.Random(f"sentiment/{opt.seed}"),
                                   "texts")
    notes.append(f"split by text: {len(train_t)} train, {len(test_t)} test texts")
    return ([it for it in kept if it.group in train_t], [it for it in kept if it.group in test_t],
            [f"{prefix} {{text}}{suffix}"])


sentiment_items.labels = {a.strip(): a for a in SENTIMENT_ANSWERS}  # --target positive, negative (Task.labels)


# ----------------------------------------------------------------------------- custom JSONL


def read_jsonl(path: Path, tokenizer) -> list[Item]:
    """Read a custom task: one {"prompt": ..., "correct": ..., "wrong": ...} per line (blank lines
    are skipped, other fields ignored; a UTF-8 byte order mark, as some editors write, and CRLF line
    ends are fine). Any problem raises a UserError naming the line."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as e:
        raise UserError(f"cannot read task file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None

    def rows():  # parsed one at a time, so that the first bad line is the one named, whatever is wrong with it
        for n, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}, line {n}: bad JSON ({e.msg}, column {e.colno})") from None
    items = check_rows(rows(), tokenizer, f"{path}, line")
    if not items:
        raise UserError(f"{path} has no items; write one JSON object per line")
    return items


def check_rows(rows, tokenizer, where: str) -> list[Item]:
    """(number, row) pairs -> Items: each row a dict with non-empty strings "prompt", "correct" and "wrong",
    answers of exactly one token and not the same one, no row twice, and optionally a "group" (a string or an
    integer, on every row or none: rows of one group are split and resampled together; else a row is its own).
    Other fields are ignored. A problem raises a UserError naming the row: `where` and its number ("item 3")."""
    items, first_seen = [], {}
    for n, row in rows:
        at = f"{where} {n}"
        if not isinstance(row, dict):
            raise UserError(f'{at}: expected an object {{"prompt": ..., "correct": ..., "wrong": ...}}, '
                            f"got {type(row).__name__}")
        for key in ("prompt", "correct", "wrong"):
            if key not in row:
                raise UserError(f'{at}: missing field "{key}" (need "prompt", "correct" and "wrong")')
            if not isinstance(row[key], str) or not row[key]:
                raise UserError(f'{at}: field "{key}" must be a non-empty string, got {row[key]!r}')
        try:
            for key in ("correct", "wrong"):
                ids = tokenizer.encode(row[key])
                if len(ids) != 1:
                    pieces = [token_str(tokenizer, i) for i in ids]
                    raise UserError(f'{at}: "{key}" {row[key]!r} is {len(ids)} tokens {pieces} for this '
                                    "model's tokenizer; it must be exactly one (answers usually start with a "
                                    'space, e.g. " Paris")')
            tokenizer.encode(row["prompt"])
        except ValueError as e:  # e.g. tiktoken refusing a special token written in the text
            raise UserError(f"{at}: cannot tokenize: {e}") from None
        if tokenizer.encode(row["correct"]) == tokenizer.encode(row["wrong"]):
            raise UserError(f'{at}: "correct" and "wrong" are the same token {row["correct"]!r}')
        key = (row["prompt"], row["correct"], row["wrong"])
        if key in first_seen:
            raise UserError(f"{at}: duplicate of {where.rsplit(' ', 1)[-1]} {first_seen[key]}; remove one of them")
        first_seen[key] = n
        group = row.get("group")
        if isinstance(group, bool) or not isinstance(group, (str, int, type(None))):
            raise UserError(f'{at}: field "group" must be a string or an integer, got {group!r}')
        if items and (group is None) != (items[0].group[0] != "group"):   # a named group is ("group", name)
            raise UserError(f'{at}: give every row a "group" field or none (the first row decides)')
        in_group = (n,) if group is None else ("group", str(group))   # a group of its own, or the one it names
        items.append(Item(row["prompt"], row["correct"], row["wrong"], in_group))
    return items


LIST_NEEDED = 'a task list must be a non-empty list of {"prompt": ..., "correct": ..., "wrong": ...} dicts'


def list_items(rows, tokenizer) -> list[Item]:
    """A task given in Python: a list of {"prompt", "correct", "wrong"} dicts, checked as JSONL lines are
    (check_rows; errors name the item, counted from 1)."""
    if not rows:
        raise UserError(LIST_NEEDED)
    return check_rows(enumerate(rows, start=1), tokenizer, "item")


def jsonl_items(source: Path | list, tokenizer, *, seed: int, fixed_length: bool, unseen_lengths: bool,
                test_frac: float, notes: list[str]) -> tuple[list, list]:
    """Train and test items of a custom task, a JSONL file or a list of dicts (list_items). The items' groups (each
    line, or the "group" it names) are shuffled (seeded) and test_frac of them (rounded) go to test, but at least
    one to each side: a task needs 2 items or more. With unseen_lengths (DynScalar) the split is by prompt length
    instead (see hold_out_lengths)."""
    is_file = isinstance(source, Path)
    items = read_jsonl(source, tokenizer) if is_file else list_items(source, tokenizer)
    where = str(source) if is_file else "the task list"
    rng = random.Random(f"jsonl/{seed}")
    lengths = Counter(n_tokens(tokenizer, it.prompt) for it in items)
    no_space = sum(not (it.correct[0].isspace() and it.wrong[0].isspace()) for it in items)
    notes.append(f"{source.name if is_file else where}: {len(items)} items, prompt lengths {count_str(lengths)}")
    if no_space:
        notes.append(f"note: {no_space} items have an answer without a leading space; after a prompt like "
                     "'... A:' the model's next token usually starts with one (' Paris')")
    if fixed_length and len(lengths) > 1:
        raise UserError(f"{where}: the prompts have {len(lengths)} different token lengths ({count_str(lengths)}); "
                        "activscalar and steervec tie parameters to positions and need one length. "
                        "Use --method dynscalar, or write prompts of equal length")
    if unseen_lengths and not fixed_length:
        return hold_out_lengths(items, items, tokenizer, notes)  # each item goes where its length says
    if len(items) < 2:
        raise UserError(f"{where} has 1 item; it needs at least 2 (one for train, one for test)")
    train_lines, test_lines = split_groups([it.group for it in items], test_frac, rng, "items")
    notes.append(f"split by {'group' if items[0].group[0] == 'group' else 'line'}: {len(train_lines)} train,"
                 f" {len(test_lines)} test")
    return [it for it in items if it.group in train_lines], [it for it in items if it.group in test_lines]


def from_list(rows: list[dict], tokenizer, *, name: str = "list", **options) -> Task:
    """A Task from a Python list of {"prompt": ..., "correct": ..., "wrong": ...} dicts, made as a JSONL file's
    lines are (the same checks, the same seeded split by item): load_task's options (seed, fixed_length,
    unseen_lengths, n_train, n_test, test_frac). `name` names it in notes and figures."""
    if not isinstance(rows, list | tuple):
        raise UserError(f"{LIST_NEEDED}, not a {type(rows).__name__}")
    task = load_task(rows, tokenizer, **options)
    task.name = name
    return task


# ----------------------------------------------------------------------------- entry point

# The built-in tasks: name -> (builder, one line for --help). A builder is called as
# builder(tokenizer, opt: Options, notes) and returns (train items, test items, templates used), adding
# what it kept and dropped to `notes`; load_task caps, tokenises and checks what it returns. A task
# not in the table is a .jsonl file (jsonl_items).
TASKS = {
    "ccc": (ccc_items, "country-capital conflict: the capital from memory against the city stated in the context"),
    "ioi": (ioi_items, "indirect object identification: 'When Mary and John went to the store, John gave a drink"
            " to' -> Mary, not John"),
    "sentiment": (sentiment_items, "real text: a human-rated sentence, is it positive or negative (--domain movies,"
                  " tweets, amazon, nyt; prompts of many lengths)"),
}


def load_task(task: str | list[dict], tokenizer, *, seed: int = 0, fixed_length: bool = True,
              unseen_lengths: bool = False, template: int = 0, n_train: int | None = None, n_test: int | None = None,
              test_frac: float = TEST_FRAC, wrongs_per_country: int = 5, answers: str = "first-token",
              domain: str = "movies", data=None, max_tokens: int = SENTIMENT_TOKENS, val_frac: float = 0.0) -> Task:
    """Load a task's train and test prompts, tokenised for `tokenizer`.

    task            a name in TASKS ("ccc", "ioi", "sentiment"), the path of a .jsonl file ({"prompt",
                    "correct", "wrong"} a line), or a list of such dicts (from_list)
    seed            everything random (splits, wrong cities, names) follows from it
    fixed_length    True for ActivScalar/SteerVec: one template (`template`, CCC/IOI), all prompts
                    one token length. False for DynScalar: all templates, mixed lengths.
    unseen_lengths  with fixed_length=False: test prompts only have lengths no train prompt has
    template        which template a fixed-length CCC/IOI task uses (index into CCC_/IOI_TEMPLATES)
    n_train, n_test caps on the split sizes (default N_TRAIN/N_TEST, 300/100, for CCC and IOI; SPLIT_CAPS for
                    sentiment, 1,000/300; all
                    lines for JSONL)
    test_frac       share of countries / names / lines that go to test
    val_frac        share of the training groups held out as a validation split (Task.val, capped like test), which
                    the choices of a run read (selection's K, strengths, the offset control) so that the test split is
                    read once, at the end; 0: none (the choices read training prompts)
    wrongs_per_country  CCC: prompts per country (and template), each with another wrong city
    answers         CCC: "first-token" (default) compares the two answers by their first tokens, where
                    these differ, so capitals of several tokens count too; "one-token" keeps only the
                    countries whose capital is one token. IOI and JSONL answers are always one token.
    domain, data    sentiment: which texts (movies, tweets, amazon, nyt), and the folder holding the download
                    (default data/ at the project root); its prompts have many lengths and a slot map, for
                    every method (fixed_length does not apply), and are at most max_tokens long
    """
    if answers not in ANSWERS:
        raise UserError(f"unknown answers {answers!r}; choose {', '.join(ANSWERS)}")
    if unseen_lengths and fixed_length:
        raise UserError("unseen lengths need prompts of several lengths; use them with --method dynscalar")
    for flag, n in (("--n-train", n_train), ("--n-test", n_test)):
        if n is not None and n < 1:
            raise UserError(f"{flag} must be at least 1, got {n}")
    if not 0 < test_frac < 1:
        raise UserError(f"test fraction must be between 0 and 1, got {test_frac}")
    notes: list[str] = []
    templates: list[str] = []
    rng = random.Random(f"cap/{seed}")
    if isinstance(task, str) and task in TASKS:
        caps = SPLIT_CAPS.get(task, (N_TRAIN, N_TEST))
        n_train, n_test = n_train or caps[0], n_test or caps[1]
        opt = Options(seed, fixed_length, unseen_lengths, template, n_train, n_test, test_frac, wrongs_per_country,
                      answers, domain, data, max_tokens)
        train, test, templates = TASKS[task][0](tokenizer, opt, notes)
    elif isinstance(task, list | tuple) or task.endswith(".jsonl"):  # a list of dicts (from_list), or a file of them
        source = task if not isinstance(task, str) else Path(task)
        if isinstance(source, Path) and not source.is_file():
            raise UserError(f"task file {task} does not exist")
        train, test = jsonl_items(source, tokenizer, seed=seed, fixed_length=fixed_length,
                                  unseen_lengths=unseen_lengths, test_frac=test_frac, notes=notes)
        task = source.name if isinstance(source, Path) else "list"
    else:
        raise UserError(f"unknown task {task!r}; choose {', '.join(TASKS)}, or the path of a .jsonl file")

    if not 0 <= val_frac < 1:
        raise UserError(f"validation fraction must be at least 0 and below 1, got {val_frac}")
    # The test split is drawn as without validation: its cap's generator is where train's cap leaves it then.
    test_rng = random.Random()
    test_rng.setstate(rng.getstate())
    test_rng.shuffle([None] * len(train))                # what cap(train) draws depends on len(train) alone
    val, val_rng = [], random.Random(f"val/{seed}")
    if val_frac:   # whole training groups, as the test split holds whole groups (seeded draws of their own)
        kept, held = split_groups([it.group for it in train], val_frac, val_rng, "training groups")
        train, val = [it for it in train if it.group in kept], [it for it in train if it.group in held]
        val = cap(val, n_test, val_rng)
    train, test = cap(train, n_train, rng), cap(test, n_test, test_rng)
    for name, items in (("train", train), ("test", test)) + ((("validation", val),) if val_frac else ()):
        if not items:
            raise UserError(f"no {name} prompts are left for task {task} with this tokenizer and these options")
    notes.append(f"prompts: {len(train)} train, {len(test)} test" + (f", {len(val)} validation" if val else ""))
    # Answers of one token (IOI's, a JSONL file's) are the same token under either rule of `answers`.
    train_ps, test_ps = tokenize(train, tokenizer, answers), tokenize(test, tokenizer, answers)
    fixed_length = fixed_length and train_ps.slots is None          # a slot map serves prompts of many lengths
    task_ = Task(task, train_ps, test_ps, fixed_length, templates, notes,
                 getattr(TASKS[task][0], "labels", {}) if task in TASKS else {},
                 tokenize(val, tokenizer, answers) if val else None)
    if fixed_length:  # position-tied methods read the same positions in train and test
        assert task_.train.fixed_length and task_.test.fixed_length
        assert task_.train.ids.shape[1] == task_.test.ids.shape[1]
    return task_


# ----------------------------------------------------------------------------- command line


@torch.no_grad()
def preference(model, ps: PromptSet, batch_size: int = 32) -> tuple[float, float]:
    """Share of prompts where the model's logit for c beats w's, and where c is its top token."""
    above = top1 = 0
    for i in range(0, len(ps), batch_size):
        b = ps.subset(slice(i, i + batch_size))
        logits = model(b.ids, at=b.answer_pos)                             # (B, V)
        lc = logits.gather(1, b.correct[:, None])[:, 0]
        lw = logits.gather(1, b.wrong[:, None])[:, 0]
        above += int((lc > lw).sum())
        top1 += int((logits.argmax(-1) == b.correct).sum())
    return above / len(ps), top1 / len(ps)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Show a task's prompts, its counts, and the unchanged model's preference.")
    p.add_argument("--task", default="ccc", help=f"{', '.join(TASKS)}, or the path of a .jsonl file with one "
                   '{"prompt": ..., "correct": ..., "wrong": ...} per line (default: ccc)')
    p.add_argument("--model", default="gpt2", help="model whose tokenizer (and logits) to use: a Hub id such as "
                   "gpt2 or EleutherAI/pythia-70m, a local folder, a .gguf file, smollm2 or gemma3-270m"
                   " (default: gpt2)")
    p.add_argument("--revision", default=None, help="Hub revision of the model, e.g. step1000 for a Pythia checkpoint")
    p.add_argument("--seed", type=int, default=0, help="seed for the splits and random choices (default: 0)")
    p.add_argument("--dynamic", action="store_true", help="the data DynScalar uses: all templates, mixed lengths "
                   "(default: one template, one length, as for activscalar/steervec)")
    p.add_argument("--unseen-lengths", action="store_true", help="with --dynamic: test prompts have token lengths "
                   "that no train prompt has")
    p.add_argument("--template", type=int, default=0, help="template index for the fixed-length data of a built-in"
                   " task (default: 0)")
    p.add_argument("--n-train", type=int, default=None, help=f"at most this many train prompts (CCC/IOI default: "
                   f"{N_TRAIN}, sentiment {SPLIT_CAPS['sentiment'][0]})")
    p.add_argument("--n-test", type=int, default=None, help=f"at most this many test prompts (CCC/IOI default: "
                   f"{N_TEST}, sentiment {SPLIT_CAPS['sentiment'][1]})")
    p.add_argument("--domain", default="movies", choices=list(sentiment_data.DOMAINS), help="sentiment: whose"
                   " texts (default: movies)")
    p.add_argument("--data", help="sentiment: the folder holding the downloaded vaderSentiment-3.3.2.tar.gz"
                   " (default: data/ at the project root)")
    p.add_argument("--show", type=int, default=3, help="how many prompts of each split to print (default: 3)")
    p.add_argument("--no-model", action="store_true", help="load only the tokenizer: skip the model's preference")
    args = p.parse_args(argv)
    try:
        from loading.tokenizer import get_tokenizer
        tok = get_tokenizer(args.model, revision=args.revision)
        task = load_task(args.task, tok, seed=args.seed, fixed_length=not args.dynamic,
                         unseen_lengths=args.unseen_lengths, template=args.template,
                         n_train=args.n_train, n_test=args.n_test, domain=args.domain, data=args.data)
        shape = ("one length, for position-tied methods" if task.fixed_length else "mixed lengths, for dynscalar"
                 if task.train.slots is None else "many lengths and a slot map, for every method")
        print(f"task {task.name} for {args.model}" + (f"@{args.revision}" if args.revision else "") + f" ({shape})")
        for t in task.templates:
            print(f"  template: {t}".replace("\n", "\\n"))
        for line in task.notes:
            print(f"  {line}")
        for name, ps in (("train", task.train), ("test", task.test)):
            L = ps.lengths
            print(f"{name}: {len(ps)} prompts, {int(L.min())}-{int(L.max())} tokens")
            for i in range(min(args.show, len(ps))):
                print(f"  {ps.prompts[i]!r} -> correct {ps.correct_str[i]!r}, wrong {ps.wrong_str[i]!r}")
        if not args.no_model:
            from gpt2 import GPT
            model = GPT.from_pretrained(args.model, revision=args.revision)
            for name, ps in (("train", task.train), ("test", task.test)):
                above, top1 = preference(model, ps)
                print(f"model on {name}: logit(correct) > logit(wrong) for {above:.1%} of prompts; "
                      f"correct is the top token for {top1:.1%}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
