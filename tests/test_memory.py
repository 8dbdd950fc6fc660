"""memory.py, the command behind the README's peak-memory figure: its task and a tiny run of it."""

import json

from benchmarks import memory
from loading.tokenizer import get_tokenizer


def test_the_task_has_20000_distinct_prompts_of_one_length(tmp_path):
    memory.write_task(tmp_path / "task.jsonl", 20000)
    rows = [json.loads(line) for line in (tmp_path / "task.jsonl").read_text().splitlines()]
    assert len(rows) == 20000 and len({(r["prompt"], r["wrong"]) for r in rows}) == 20000
    tok = get_tokenizer(str(memory.TOYWORLD))
    assert {len(tok.encode(r["prompt"])) for r in rows[::997]} == {23}
    assert all(len(tok.encode(r[k])) == 1 for r in rows[::997] for k in ("correct", "wrong"))


def test_a_small_run(capsys):
    assert memory.main(["--prompts", "40", "--vocab", "4000", "--steps", "2"]) == 0
    assert "40 prompts (30 train), vocabulary 4,000: train.py's peak memory" in capsys.readouterr().out
