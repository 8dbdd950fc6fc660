"""tasks.py: CCC, IOI and JSONL tasks with the real GPT-2 and Pythia tokenizers (offline files)."""

import functools
import json
import re

import pytest
import torch

import tasks
from gpt2 import UserError
from loading.tokenizer import Tokenizer


@functools.cache
def _pythia(path):
    return Tokenizer.from_tokenizer_json(path)


@pytest.fixture(params=["gpt2", "pythia"])
def tok(request):
    """Each real tokenizer in turn: GPT-2's (tiktoken cache) and Pythia's tokenizer.json."""
    if request.param == "gpt2":
        request.getfixturevalue("gpt2_bpe")
        return Tokenizer.gpt2()
    return _pythia(str(request.getfixturevalue("pythia_tokenizer_json")))


@pytest.fixture
def gpt2_tok(gpt2_bpe):
    return Tokenizer.gpt2()


def all_sets(task):
    return [task.train, task.test]


SHAPES = [dict(fixed_length=True), dict(fixed_length=False), dict(fixed_length=False, unseen_lengths=True)]


# ----------------------------------------------------------------------------- tables


def test_tables_are_big_enough(tok):
    assert len(tasks.COUNTRIES) >= 150
    assert len(set(tasks.COUNTRIES.values())) == len(tasks.COUNTRIES)  # no two countries share a capital
    assert len(tasks.IOI_TEMPLATES) >= 10
    names = [n for n in tasks.NAMES if tasks.single_token(tok, " " + n) is not None]
    assert len(set(names)) >= 50
    for tpl in tasks.IOI_TEMPLATES:
        assert tpl.count("{X}") == tpl.count("{Y}") == tpl.count("{S}") == 1 and tpl.index("{X}") < tpl.index("{S}")


# ----------------------------------------------------------------------------- CCC and IOI


@pytest.mark.parametrize("shape", SHAPES, ids=["fixed", "dynamic", "unseen-lengths"])
@pytest.mark.parametrize("name, answers", [("ccc", "first-token"), ("ccc", "one-token"), ("ioi", "one-token")])
def test_answers_are_single_tokens_and_ids_match(tok, name, shape, answers):
    task = tasks.load_task(name, tok, **shape, answers=answers)
    for ps in all_sets(task):
        assert len(ps) > 0
        for i in range(len(ps)):
            for s, t in ((ps.correct_str[i], ps.correct[i]), (ps.wrong_str[i], ps.wrong[i])):
                if answers == "first-token":   # the answer's first token (the whole answer where it is one)
                    assert s.startswith(" ") and tok.encode(s)[0] == int(t)
                else:
                    assert s.startswith(" ") and tok.encode(s) == [int(t)]
            assert ps.correct[i] != ps.wrong[i]
            ids = tok.encode(ps.prompts[i])
            n = len(ids)
            assert int(ps.answer_pos[i]) == n - 1
            assert ps.ids[i, :n].tolist() == ids
            assert (ps.ids[i, n:] == tok.eot_token).all()  # right-padded
            assert ps.tokens[i] == [tok.token_str(t) for t in ids]
        assert ps.ids.dtype == ps.answer_pos.dtype == ps.correct.dtype == ps.wrong.dtype == torch.long


@pytest.mark.parametrize("name", ["ccc", "ioi"])
def test_fixed_length_sets_share_one_length(tok, name):
    task = tasks.load_task(name, tok, fixed_length=True)
    assert task.fixed_length and len(task.templates) == 1
    assert task.train.fixed_length and task.test.fixed_length
    assert task.train.ids.shape[1] == task.test.ids.shape[1] == int(task.train.answer_pos[0]) + 1
    assert len(task.train) >= 50 and len(task.test) >= 10


@pytest.mark.parametrize("name", ["ccc", "ioi"])
def test_dynamic_sets_mix_lengths(tok, name):
    task = tasks.load_task(name, tok, fixed_length=False)
    assert len(task.templates) > 1
    assert len(set(task.train.lengths.tolist())) >= 3
    assert len(task.train) == tasks.N_TRAIN and len(task.test) == tasks.N_TEST


@pytest.mark.parametrize("name", ["ccc", "ioi"])
def test_unseen_lengths_are_disjoint(tok, name):
    task = tasks.load_task(name, tok, fixed_length=False, unseen_lengths=True)
    assert not set(task.train.lengths.tolist()) & set(task.test.lengths.tolist())
    with pytest.raises(UserError, match="dynscalar"):
        tasks.load_task(name, tok, fixed_length=True, unseen_lengths=True)


def country_of(prompt):
    """The country a CCC prompt's question asks about."""
    return re.search(r"is the capital (?:city )?of ([^?.]+)\?", prompt).group(1)


def countries_in(ps):
    return {country_of(p) for p in ps.prompts}


@pytest.mark.parametrize("fixed_length", [True, False])
def test_ccc_split_by_country(tok, fixed_length):
    task = tasks.load_task("ccc", tok, fixed_length=fixed_length)
    train_c, test_c = countries_in(task.train), countries_in(task.test)
    assert train_c <= set(tasks.COUNTRIES) and test_c <= set(tasks.COUNTRIES)
    assert not train_c & test_c
    # Neither a test country's capital nor any test city appears in a train prompt's answers.
    train_cities = set(task.train.correct_str) | set(task.train.wrong_str)
    test_cities = set(task.test.correct_str) | set(task.test.wrong_str)
    assert not train_cities & test_cities
    for ps in all_sets(task):
        for p, c, w in zip(ps.prompts, ps.correct_str, ps.wrong_str, strict=True):
            assert c == " " + tasks.COUNTRIES[country_of(p)] and c != w
            assert f" is{w}" in p  # the context states the wrong city


def test_first_token_answers_keep_capitals_of_several_tokens(gpt2_tok):
    one = tasks.load_task("ccc", gpt2_tok, answers="one-token")
    first = tasks.load_task("ccc", gpt2_tok, answers="first-token")
    assert len(first.train) + len(first.test) > len(one.train) + len(one.test)   # more prompts, tighter intervals
    multi = [c for ps in all_sets(first) for c in ps.correct_str if len(gpt2_tok.encode(c)) > 1]
    assert " Buenos Aires" in multi                      # two tokens, a first token of its own: kept
    for ps in all_sets(first):                            # fixed length: the in-context city is one token
        assert all(len(gpt2_tok.encode(w)) == 1 for w in ps.wrong_str)


def test_first_token_answers_drop_the_same_first_token_with_a_note(gpt2_tok, monkeypatch):
    """" San Marino" against " San Jose": both begin with " San", so no first token can tell them apart."""
    table = {"Costa Rica": "San Jose", "San Marino": "San Marino", "El Salvador": "San Salvador",
             "Argentina": "Buenos Aires", "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid"}
    monkeypatch.setattr(tasks, "COUNTRIES", table)
    sans = {" San Jose", " San Marino", " San Salvador"}
    dropped_somewhere = False
    for seed in range(6):
        task = tasks.load_task("ccc", gpt2_tok, seed=seed, fixed_length=False, wrongs_per_country=7, test_frac=0.5)
        for ps in all_sets(task):
            assert not any(c in sans and w in sans for c, w in zip(ps.correct_str, ps.wrong_str, strict=True))
            assert bool((ps.correct != ps.wrong).all())
            assert " Buenos Aires" in ps.correct_str or "Argentina" not in " ".join(ps.prompts)
        note = [n for n in task.notes if "begin with the same token" in n]
        dropped_somewhere |= bool(note)
        assert all("' San" in n for n in note)
    assert dropped_somewhere


def test_ccc_first_template_is_the_definitions(gpt2_tok):
    task = tasks.load_task("ccc", gpt2_tok, fixed_length=True, template=0)
    prompts = task.train.prompts + task.test.prompts
    p = next(p for p in prompts if country_of(p) == "Germany")
    assert re.fullmatch(r"The capital of Germany is \w+\. Q: What is the capital of Germany\? A:", p)


@pytest.mark.parametrize("fixed_length", [True, False])
def test_ioi_split_by_names_and_orders(tok, fixed_length):
    task = tasks.load_task("ioi", tok, fixed_length=fixed_length)
    names = [set(ps.correct_str) | set(ps.wrong_str) for ps in all_sets(task)]
    assert not names[0] & names[1]
    orders = set()
    for ps in all_sets(task):
        for p, c, w in zip(ps.prompts, ps.correct_str, ps.wrong_str, strict=True):
            io, s = c[1:], w[1:]
            assert p.count(io) == 1 and p.count(s) == 2  # IO once, subject twice
            orders.add("ABBA" if p.index(io) < p.index(s) else "BABA")
    assert orders == {"ABBA", "BABA"}


@pytest.mark.parametrize("shape", SHAPES, ids=["fixed", "dynamic", "unseen-lengths"])
@pytest.mark.parametrize("name", ["ccc", "ioi"])
def test_same_seed_same_sets(gpt2_tok, name, shape):
    a, b = tasks.load_task(name, gpt2_tok, seed=3, **shape), tasks.load_task(name, gpt2_tok, seed=3, **shape)
    c = tasks.load_task(name, gpt2_tok, seed=4, **shape)
    for x, y in zip(all_sets(a), all_sets(b), strict=True):
        assert x.prompts == y.prompts and torch.equal(x.ids, y.ids) and torch.equal(x.correct, y.correct)
    assert a.train.prompts != c.train.prompts


def test_a_new_task_is_one_builder_and_one_row_of_the_table(gpt2_tok, monkeypatch, capsys):
    """A builder (tokenizer, Options, notes) -> (train, test, templates) and its row in TASKS: load_task,
    train.py's --task and its help take it from there."""
    import train
    seen = []

    def opposites(tokenizer, opt, notes):
        seen.append(opt)
        items = [tasks.Item(f"The opposite of {a} is", " " + b, " " + a, (a,))
                 for a, b in (("hot", "cold"), ("up", "down"), ("big", "small"), ("yes", "no"))]
        notes.append("opposites: 4 pairs")
        return items[:3], items[3:], ["The opposite of {a} is"]

    monkeypatch.setitem(tasks.TASKS, "opposites", (opposites, "say the opposite of a word"))
    task = tasks.load_task("opposites", gpt2_tok, seed=4)
    assert task.name == "opposites" and (len(task.train), len(task.test)) == (3, 1) and task.test.correct_str == [" no"]
    assert seen[0].seed == 4 and seen[0].n_train == tasks.N_TRAIN and "opposites: 4 pairs" in task.notes
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    assert "opposites: say the opposite of a word" in " ".join(capsys.readouterr().out.split())


def test_options_and_errors(gpt2_tok):
    small = tasks.load_task("ioi", gpt2_tok, n_train=7, n_test=5, template=3)
    assert (len(small.train), len(small.test)) == (7, 5)
    assert small.templates == [tasks.IOI_TEMPLATES[3]]
    with pytest.raises(UserError, match="ccc, ioi"):
        tasks.load_task("sst2", gpt2_tok)
    with pytest.raises(UserError, match="template 99"):
        tasks.load_task("ccc", gpt2_tok, template=99)
    with pytest.raises(UserError, match="does not exist"):
        tasks.load_task("nope.jsonl", gpt2_tok)
    with pytest.raises(UserError, match="--n-test must be at least 1"):
        tasks.load_task("ioi", gpt2_tok, n_test=0)


def test_subset_trims_padding(gpt2_tok):
    ps = tasks.load_task("ccc", gpt2_tok, fixed_length=False).train
    short = int(ps.lengths.argmin())
    one = ps.subset([short])
    assert len(one) == 1 and one.ids.shape == (1, int(ps.lengths[short]))
    assert one.prompts == [ps.prompts[short]] and one.correct.tolist() == [int(ps.correct[short])]


# ----------------------------------------------------------------------------- custom JSONL


def write_jsonl(tmp_path, rows, name="task.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def row(prompt="The capital of France is", correct=" Paris", wrong=" Rome"):
    return {"prompt": prompt, "correct": correct, "wrong": wrong}


def capital_rows(n):
    cities = ["Paris", "Rome", "Berlin", "Madrid", "Vienna", "Oslo", "Tokyo", "London", "Cairo", "Dublin"]
    return [row(f"Q: Name city number {i}. A:", " " + cities[i % 10], " " + cities[(i + 1) % 10]) for i in range(n)]


def test_jsonl_loads_and_splits(tok, tmp_path):
    path = write_jsonl(tmp_path, capital_rows(10) + [""])  # a blank line is skipped
    task = tasks.load_task(path, tok, seed=1, fixed_length=False)
    assert task.name == "task.jsonl" and task.templates == []
    assert (len(task.train), len(task.test)) == (7, 3)  # 0.25 * 10 = 2.5 -> 3 lines for test
    assert not set(task.train.prompts) & set(task.test.prompts)
    assert sorted(task.train.prompts + task.test.prompts) == sorted(r["prompt"] for r in capital_rows(10))
    again = tasks.load_task(path, tok, seed=1, fixed_length=False)
    assert again.test.prompts == task.test.prompts


def test_jsonl_tiny_files(gpt2_tok, tmp_path):
    two = tasks.load_task(write_jsonl(tmp_path, capital_rows(2)), gpt2_tok)
    assert (len(two.train), len(two.test)) == (1, 1)
    with pytest.raises(UserError, match="at least 2"):
        tasks.load_task(write_jsonl(tmp_path, capital_rows(1)), gpt2_tok)
    with pytest.raises(UserError, match="no items"):
        tasks.load_task(write_jsonl(tmp_path, [""]), gpt2_tok)


@pytest.mark.parametrize("rows, message", [
    ([row(), "{not json"], r"line 2: bad JSON"),
    ([row(), '["a", "b"]'], r"line 2: expected an object"),
    ([row(), {"prompt": "x", "correct": " Paris"}], r'line 2: missing field "wrong"'),
    ([{"prompt": "", "correct": " Paris", "wrong": " Rome"}], r'line 1: field "prompt" must be a non-empty string'),
    ([row(), row(correct=" Ouagadougou")], r'line 2: "correct" \' Ouagadougou\' is \d tokens'),
    ([row(), row(wrong=" Buenos Aires")], r'line 2: "wrong" \' Buenos Aires\' is 2 tokens'),
    ([row(), row(wrong=" Paris")], r'line 2: "correct" and "wrong" are the same token'),
    ([row(), row(prompt="other"), row()], r"line 3: duplicate of line 1"),
])
def test_jsonl_errors_name_the_line(tok, tmp_path, rows, message):
    with pytest.raises(UserError, match=message) as e:
        tasks.load_task(write_jsonl(tmp_path, rows), tok)
    assert "task.jsonl" in str(e.value) and "\n" not in str(e.value)


def test_a_list_is_a_task_as_its_jsonl_file_is(tok, tmp_path):
    """from_list: the same items, checks and seeded split as the same rows written as a JSONL file."""
    rows = capital_rows(10)
    listed = tasks.from_list(rows, tok, name="capitals", seed=3)
    filed = tasks.load_task(write_jsonl(tmp_path, rows), tok, seed=3)
    assert listed.name == "capitals"
    for split in ("train", "test"):
        a, b = getattr(listed, split), getattr(filed, split)
        assert a.prompts == b.prompts and torch.equal(a.ids, b.ids) and torch.equal(a.correct, b.correct)


@pytest.mark.parametrize("rows, message", [
    ([row(), '["a", "b"]'], r"^item 2: expected an object"),
    ([row(), {"prompt": "x", "correct": " Paris"}], r'^item 2: missing field "wrong"'),
    ([row(), row(wrong=" Buenos Aires")], r"^item 2: \"wrong\" ' Buenos Aires' is 2 tokens"),
    ([row(), row(prompt="other"), row()], r"^item 3: duplicate of item 1"),
    ([], r"non-empty list"),
    ("not a list", r"non-empty list"),
])
def test_list_errors_name_the_item(gpt2_tok, rows, message):
    rows = [json.loads(r) if isinstance(r, str) else r for r in rows] if isinstance(rows, list) else rows
    with pytest.raises(UserError, match=message) as e:
        tasks.from_list(rows, gpt2_tok)
    assert "\n" not in str(e.value)


def test_jsonl_lengths(gpt2_tok, tmp_path):
    rows = [row(f"The capital of {'really ' * k}old France is") for k in range(6)]
    rows = [dict(r, wrong=w) for r in rows for w in (" Rome", " Oslo")]
    path = write_jsonl(tmp_path, rows)
    with pytest.raises(UserError, match="--method dynscalar"):
        tasks.load_task(path, gpt2_tok, fixed_length=True)
    mixed = tasks.load_task(path, gpt2_tok, fixed_length=False)
    assert len(mixed.train) + len(mixed.test) == 12
    unseen = tasks.load_task(path, gpt2_tok, fixed_length=False, unseen_lengths=True)
    assert not set(unseen.train.lengths.tolist()) & set(unseen.test.lengths.tolist())
    assert len(unseen.train) + len(unseen.test) == 12


def test_jsonl_without_leading_space_is_noted(gpt2_tok, tmp_path):
    task = tasks.load_task(write_jsonl(tmp_path, [row(correct="Paris"), row(prompt="Where?")]), gpt2_tok,
                           fixed_length=False)
    assert any("leading space" in n for n in task.notes)


# ----------------------------------------------------------------------------- command line


def test_cli_prints_prompts_counts_and_preference(tiny_gpt2, gpt2_bpe, capsys):
    folder, _ = tiny_gpt2
    tasks.main(["--task", "ioi", "--model", str(folder), "--n-train", "6", "--n-test", "4", "--show", "2"])
    out = capsys.readouterr().out
    assert "train: 6 prompts" in out and "test: 4 prompts" in out and "split by name" in out
    assert out.count("-> correct") == 4
    assert re.search(r"model on test: logit\(correct\) > logit\(wrong\) for \d+\.\d% of prompts", out)


def test_cli_user_error_is_one_line(tiny_gpt2, gpt2_bpe, capsys):
    folder, _ = tiny_gpt2
    with pytest.raises(SystemExit) as e:
        tasks.main(["--task", "nope", "--model", str(folder), "--no-model"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown task") and err.count("\n") == 1


def test_preference_counts():
    class Fake:  # logits favour token 1 over 2, and token 1 is the top token
        def __call__(self, idx, at):
            logits = torch.zeros(len(idx), 5)
            logits[:, 1] = 2.0
            logits[:, 2] = 1.0
            return logits
    ps = tasks.PromptSet(["a", "b", "c", "d"], torch.zeros(4, 1, dtype=torch.long), torch.zeros(4, dtype=torch.long),
                         torch.tensor([1, 1, 2, 3]), torch.tensor([2, 2, 1, 2]), [["a"]] * 4, [""] * 4, [""] * 4)
    assert tasks.preference(Fake(), ps, batch_size=3) == (0.5, 0.5)


def test_jsonl_groups_split_together(tok, tmp_path):
    """A "group" field keeps its rows on one side of the split (and resampled together in the intervals)."""
    rows = [dict(r, group=f"g{i // 3}") for i, r in enumerate(capital_rows(12))]
    task = tasks.load_task(write_jsonl(tmp_path, rows), tok, seed=0, fixed_length=False)
    side = {r["prompt"]: r["group"] for r in rows}
    train, test = {side[p] for p in task.train.prompts}, {side[p] for p in task.test.prompts}
    assert train and test and not train & test                      # 4 groups of 3: whole groups on each side
    assert len(set(task.test.groups.tolist())) == len(test)
    with pytest.raises(UserError, match=r'line 2: give every row a "group" field or none'):
        tasks.load_task(write_jsonl(tmp_path, [rows[0], row(prompt="other")]), tok)
    with pytest.raises(UserError, match=r'line 1: field "group" must be a string or an integer'):
        tasks.load_task(write_jsonl(tmp_path, [dict(rows[0], group=[1])]), tok)
