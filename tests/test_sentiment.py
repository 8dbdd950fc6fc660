"""The sentiment task: the reader of VADER's rated texts (on a tiny archive written here, laid out as the
vaderSentiment sdist), the task, train.py on it (slots, --domain, evaluate.py on another domain, the knockout),
and one check of the real download."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import ROOT

import ascale
import evaluate
import tasks
import train
from cli import setup
from gpt2 import UserError
from loading import sentiment_data
from loading.tokenizer import get_tokenizer

TOY = str(ROOT / "models" / "toyworld")

GOOD = ["the city is great", "I love the capital", "a good friend", "the best place", "he is happy at the park",
        "she gave a great gift", "what a good day", "the garden is lovely", "I like it", "a nice school",
        "the station is great and big", "they love the market", "a happy family", "good food", "the best friend"]
BAD = ["the city is bad", "I hate the capital", "a bad friend", "the worst place", "he is sad at the park",
       "she gave a terrible gift", "what a bad day", "the garden is ugly", "I do not like it", "a poor school",
       "the station is bad and small", "they hate the market", "a sad family", "bad food", "the worst friend"]


def ground_truth(rows) -> bytes:
    """A ground-truth file as VADER's: id, mean rating, text; tab-separated, CRLF, UTF-8."""
    return "\r\n".join(f"{i}\t{r}\t{t}" for i, (r, t) in enumerate(rows, start=1)).encode("utf-8")


def write_sdist(folder: Path, domains: dict) -> Path:
    """data/vaderSentiment-3.3.2.tar.gz with the inner hutto_ICWSM_2014.tar.gz holding `domains`
    ({domain: [(rating, text), ...]})."""
    def tar(files: dict[str, bytes]) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w:gz") as t:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return out.getvalue()
    inner = tar({f"hutto_ICWSM_2014/{sentiment_data.DOMAINS[d]}_GroundTruth.txt": ground_truth(rows)
                 for d, rows in domains.items()})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / sentiment_data.SDIST).write_bytes(tar({sentiment_data.INNER: inner}))
    return folder


def toy_rows(shift=0.0):
    """Clear cases (|rating| 2-3) of both signs, and some near neutral (|rating| < 1.5) that the task drops."""
    rows = [(2.0 + i % 3 * 0.5 + shift, t) for i, t in enumerate(GOOD)] + [(-2.5 + shift, t) for t in BAD]
    return rows + [(1.4, "the city"), (-1.45, "a park"), (0.0, "the school")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tweets = [(3.1, "I love it &amp; the park"), (-2.0, "bad day at the station")] + toy_rows(shift=0.2)
    return write_sdist(tmp_path_factory.mktemp("data"), {"movies": toy_rows(), "tweets": tweets})


# ----------------------------------------------------------------------------- the reader


def test_the_reader_parses_ratings_crlf_and_entities(data):
    rows = sentiment_data.read_domain("tweets", data)
    assert len(rows) == 2 + len(toy_rows())
    assert (rows[0].id, rows[0].rating, rows[0].text) == ("1", 3.1, "I love it & the park")   # no \r left, &amp; read
    assert all("\r" not in r.text and "\n" not in r.text for r in rows)
    movies = sentiment_data.read_domain("movies", data)
    assert [r.text for r in movies][:2] == GOOD[:2] and movies[0].rating == 2.0


def test_clear_cases_keep_ratings_at_least_1_5_from_neutral(data):
    rows = sentiment_data.read_domain("movies", data)
    clear = sentiment_data.clear_cases(rows, tasks.CLEAR)
    assert len(clear) == len(GOOD) + len(BAD)
    assert all(abs(r.rating) >= 1.5 for r in clear)
    assert sentiment_data.clear_cases([sentiment_data.Rated("1", -1.5, "x")], 1.5)  # the threshold itself is in


def test_a_domain_absent_from_the_archive_or_unknown(data):
    with pytest.raises(UserError, match="does not hold hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt"):
        sentiment_data.read_domain("amazon", data)
    with pytest.raises(UserError, match="unknown domain 'imdb'; choose movies, tweets, amazon, nyt"):
        sentiment_data.read_domain("imdb", data)


def test_a_missing_download_is_one_line_with_the_command(tmp_path):
    with pytest.raises(UserError) as e:
        sentiment_data.read_domain("movies", tmp_path)
    assert "\n" not in str(e.value)
    assert f"pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d {tmp_path}" in str(e.value)
    r = subprocess.run([sys.executable, "train.py", "--task", "sentiment", "--model", TOY, "--data", str(tmp_path),
                        "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "pip download" in r.stderr, r.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_damaged_line_is_named():
    with pytest.raises(UserError, match="x.txt, line 2: expected 'id <TAB> rating <TAB> text'"):
        sentiment_data.parse("1\t2.0\tgood\r\n2\tnot a number\tbad\r\n", "x.txt")


# ----------------------------------------------------------------------------- the task


def test_the_task_has_slots_both_answers_and_a_split_by_text(data):
    tok = get_tokenizer(TOY)
    task = tasks.load_task("sentiment", tok, data=data, seed=3)
    assert not task.fixed_length and len(task.train) + len(task.test) == len(GOOD) + len(BAD)
    assert not {p for p in task.train.prompts} & {p for p in task.test.prompts}
    for ps in (task.train, task.test):
        assert len(set(ps.lengths.tolist())) > 1                         # many lengths, one slot map
        n_prefix = len(tok.encode("Review:"))
        assert ps.slot_names[:n_prefix + 1] == [tok.token_str(t) for t in tok.encode("Review:")] + ["<text>"]
        assert ps.n_slots == n_prefix + 1 + len(tok.encode("\nSentiment:"))
        for b in range(len(ps)):
            n = int(ps.lengths[b])
            assert ps.prompts[b].startswith("Review: ") and ps.prompts[b].endswith("\nSentiment:")
            assert ps.slots[b, :n].tolist() == sorted(ps.slots[b, :n].tolist())     # slots in template order
            assert int(ps.slots[b, n - 1]) == ps.n_slots - 1                      # the answer: the last slot
            positive = ps.correct_str[b] == " positive"
            assert ps.wrong_str[b] == (" negative" if positive else " positive")
            assert int(ps.correct[b]) == tok.encode(ps.correct_str[b])[0]         # first tokens (" p" / " n")
        assert ps.correct.ne(ps.wrong).all()
    again = tasks.load_task("sentiment", tok, data=data, seed=3)
    assert again.train.prompts == task.train.prompts and torch.equal(again.train.slots, task.train.slots)
    assert tasks.load_task("sentiment", tok, data=data, seed=4).train.prompts != task.train.prompts
    short = tasks.load_task("sentiment", tok, data=data, max_tokens=16)
    assert int(short.train.lengths.max()) <= 16 and any("longer than 16 tokens dropped" in n for n in short.notes)


# ----------------------------------------------------------------------------- train.py


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "sentiment"
    argv = ["--task", "sentiment", "--model", TOY, "--data", str(data), "--steps", "20", "--locations", "all",
            "--out", str(out), "--device", "cpu", "--knockout", "--knockout-mode", "mean"]
    assert train.main(argv) == 0
    return out


def test_a_map_without_each_group_of_slots(run, capsys):
    import analyze
    assert analyze.slot_groups(["Review", ":", "<text>", "\n", "Sent", ":"]) == {
        "prefix": [0, 1], "text": [2], "suffix": [3, 4], "answer": [5]}
    assert analyze.main(["slots", str(run / "intervention.safetensors")]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split("'")[1].split()[0]: line for line in out if line.startswith("'")}
    assert list(rows) == ["none", "prefix", "text", "suffix", "answer"]
    m = json.loads((run / "metrics.json").read_text())
    assert rows["none"].split("'")[2].split()[0] == f"{m['test']['flip_rate']:.2f}"   # nothing zeroed: the map's
    assert rows["none"].rstrip().endswith(" 1")                                       # McNemar against itself


def test_train_on_sentiment_with_slots_and_a_mean_knockout(run):
    m = json.loads((run / "metrics.json").read_text())
    assert m["train"]["n_prompts"] == 18 and m["test"]["n_prompts"] == 8   # 30 clear texts, a quarter to test,
    assert m["n_val_prompts"] == 4 and m["choices_read"] == "validation"  # a fifth of the other 22 to validate
    assert m["config"]["domain"] is None and m["knockout_mean"]["mode"] == "mean"
    assert (run / "knockout-mean.png").is_file() and (run / "heatmap.png").is_file()
    meta = ascale.read_metadata(run / "intervention.safetensors")
    assert meta["domain"] == "movies" and int(meta["positions"]) == len(json.loads(meta["tokens"]))


def test_analyze_knockout_of_a_slot_run_in_both_modes(run, data):
    import analyze
    assert analyze.main(["knockout", str(run / "intervention.safetensors")]) == 0    # the zero knockout, after the mean
    m = json.loads((run / "metrics.json").read_text())
    assert m["knockout"]["mode"] == "zero" and m["knockout_mean"]["mode"] == "mean"
    assert m["knockout"]["n_locations"] == 2 * 4 * len(json.loads(
        ascale.read_metadata(run / "intervention.safetensors")["tokens"]))     # sites x layers x slots
    assert (run / "knockout.png").is_file() and (run / "knockout-mean.png").is_file()


def test_eval_on_another_domain_names_it(run, data, capsys):
    assert evaluate.main([str(run / "intervention.safetensors"), "--domain", "tweets", "--data", str(data),
                       "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "sentiment (tweets) at beta 1.0" in out and "task sentiment (tweets):\n(train / test)" in out


def test_a_one_sided_target_and_diffmean_beside_the_learned_methods(data, tmp_path, capsys):
    """--target positive: every review steered to " positive"; --method all then includes diffmean, in one table."""
    out = tmp_path / "all"
    assert train.main(["--task", "sentiment", "--model", TOY, "--data", str(data), "--steps", "3", "--locations", "all",
                       "--method", "all", "--target", "positive", "--out", str(out), "--device", "cpu"]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("(train / test)"))
    assert header.split()[3:] == [*ascale.METHODS, "diffmean", "offset", "(control)"]   # and the trivial baseline
    m = json.loads((out / "diffmean" / "metrics.json").read_text())
    assert m["steps"] == 0 and m["diffmean"]["strength"] > 0 and m["diffmean"]["n_prompts"] == 18
    assert {"load", "prepare", "fit", "evaluation", "figures"} <= set(m["timings"])   # fit: its means and strength
    tok = get_tokenizer(TOY)
    batch = ascale.prepare(setup.load_model(train.parse_args(["--model", TOY, "--device", "cpu"]))[0],
                           tasks.load_task("sentiment", tok, data=data).train, tok.encode(" positive")[0])
    assert (batch.answers[:, 0] == tok.encode(" positive")[0]).all()


def test_diffmean_runs_under_flip_through_slots_and_labels_elsewhere_are_one_line(data, tmp_path, capsys):
    """Under flip DiffMean adds the mean push toward each review's lower-ranked reading, at the last slot."""
    assert train.main(["--task", "sentiment", "--model", TOY, "--data", str(data), "--method", "diffmean",
                       "--out", str(tmp_path / "a"), "--device", "cpu"]) == 0
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["diffmean"]["contrast"] == "caa" and m["diffmean"]["n_prompts"] == 18 and "balanced_flip" in m["test"]
    assert train.main(["--task", "ccc", "--model", TOY, "--target", "positive", "--out", str(tmp_path / "b")]) == 2
    assert "--target positive is for tasks whose answers are labels" in capsys.readouterr().err


def test_domain_is_for_sentiment_only(tmp_path, capsys):
    code = train.main(["--task", "ccc", "--model", TOY, "--domain", "tweets", "--out", str(tmp_path / "r")])
    assert code == 2 and "--domain and --data are for --task sentiment" in capsys.readouterr().err


def test_the_default_folder_is_filled_on_first_use(tmp_path, monkeypatch, capsys):
    """Without --data the sdist is fetched into data/ by `pip download` (faked here: it writes a tiny one), once,
    saying so in one line; a failed pip is one line with the command to run by hand."""
    calls = []

    def pip(command, **kw):
        calls.append(command)
        write_sdist(Path(command[command.index("-d") + 1]), {"movies": toy_rows()})
        return subprocess.CompletedProcess(command, 0, "", "")
    monkeypatch.setattr(sentiment_data, "DATA", tmp_path / "data")
    monkeypatch.setattr(subprocess, "run", pip)
    assert len(sentiment_data.read_domain("movies")) == len(toy_rows())
    assert {"--no-deps", "--no-binary", ":all:", "vaderSentiment==3.3.2"} <= set(calls[0])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sentiment: fetching" in err and str(tmp_path / "data") in err
    assert sentiment_data.read_domain("movies") and len(calls) == 1 and capsys.readouterr().err == ""
    assert sorted(os.listdir(tmp_path / "data")) == [sentiment_data.SDIST]
    monkeypatch.setattr(sentiment_data, "DATA", tmp_path / "offline")
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(
        command, 1, "", "ERROR: Could not find a version that satisfies the requirement vaderSentiment==3.3.2\n"))
    with pytest.raises(UserError, match=r"^cannot download vaderSentiment==3\.3\.2 with pip \(ERROR: .*\); download"
                                        r" it by hand: pip download --no-deps --no-binary :all: vaderSentiment==3\.3\.2"
                                        r" -d \S+offline$"):
        sentiment_data.archive()
    assert os.listdir(tmp_path / "offline") == []


# ----------------------------------------------------------------------------- the real download


@pytest.fixture(scope="session")
def vader_sdist():
    """data/ holding the real sdist: fetched with pip where absent (sentiment_data.archive); skipped with the
    reason where that fails (offline), a failure in CI."""
    try:
        sentiment_data.archive()
    except UserError as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))
    return sentiment_data.DATA


def test_the_real_data_has_the_papers_counts(vader_sdist):
    counts = {d: len(sentiment_data.read_domain(d, vader_sdist)) for d in sentiment_data.DOMAINS}
    assert counts == {"movies": 10605, "tweets": 4200, "amazon": 3708, "nyt": 5190}
    clear = sentiment_data.clear_cases(sentiment_data.read_domain("movies", vader_sdist), tasks.CLEAR)
    assert len(clear) == 7079 and sum(r.rating > 0 for r in clear) == 3628
