"""The front page and docs/: every relative link resolves (files and #anchors), the README stays short."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)


def prose(text: str) -> str:
    """The text outside fenced code blocks, where links and headings are read."""
    return "\n".join(line for i, line in enumerate(re.split(r"^```.*$", text, flags=re.M)) if i % 2 == 0)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: its text without markup, lowercase, punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # a link in a heading keeps its text
    text = re.sub(r"[`*]", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, seen = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose(path.read_text()), flags=re.M):
        a = anchor(heading)
        seen[a] = seen.get(a, -1) + 1
        found.add(a if seen[a] == 0 else f"{a}-{seen[a]}")  # a repeated heading gets -1, -2, ...
    return found


def test_anchor_rules():
    assert anchor("Choices that are ours, not the paper's") == "choices-that-are-ours-not-the-papers"
    assert anchor("Memory: the batch, not the number of prompts") == "memory-the-batch-not-the-number-of-prompts"
    assert anchor("Results on SmolLM2-135M, a real model") == "results-on-smollm2-135m-a-real-model"
    assert anchor("`knockout.py`: the **check**") == "knockoutpy-the-check"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ... are not ours to check
            continue
        file, _, frag = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif frag and dest.suffix == ".md" and frag not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{frag} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text) <= 16_000, f"README.md has {len(text)} characters, the front page at most 16,000"
    assert "python -m pytest" in text  # the test command it promises


# ----------------------------------------------------------------------------- the README's reading path

RANGE = re.compile(r"\[`([\w/]+\.py):(\d+)-(\d+)`\]\(\1#L\2-L\3\) \(((?:`[\w.]+`(?:, )?)+)\)")  # and its link


def definitions(path: Path) -> dict[str, tuple[int, int]]:
    """Top-level functions and classes and their methods ("Class.method") -> (first line, decorators
    included; last line)."""
    import ast
    found = {}

    def add(node, name):
        found[name] = (min([node.lineno] + [d.lineno for d in node.decorator_list]), node.end_lineno)
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            add(node, node.name)
            for inner in node.body if isinstance(node, ast.ClassDef) else ():
                if isinstance(inner, ast.FunctionDef):
                    add(inner, f"{node.name}.{inner.name}")
    return found


def reading_path() -> tuple[str, list]:
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Read the code\n(.*?)(?=^## )", text, flags=re.M | re.S).group(1)
    return section, RANGE.findall(section)


def test_reading_path_ranges_hold_the_functions_they_name():
    """Each `file:a-b` (names) of the README's "Read the code" spans exactly the functions it names (a few blank
    lines of slack), so that an edit which moves them fails here instead of leaving the ranges wrong."""
    section, ranges = reading_path()
    assert len(ranges) == section.count("](") - section.count("](docs/"), "a range whose link is not FILE#La-Lb"
    assert len(ranges) >= 10
    wrong = []
    for file, a, b, names in ranges:
        names = re.findall(r"`([\w.]+)`", names)
        defs = definitions(ROOT / file)
        missing = [n for n in names if n not in defs]
        if missing:
            wrong.append(f"{file}:{a}-{b} names {', '.join(missing)}, which {file} does not define")
            continue
        start, end = min(defs[n][0] for n in names), max(defs[n][1] for n in names)
        if not (start - 3 <= int(a) <= start and end <= int(b) <= end + 3):
            wrong.append(f"{file}:{a}-{b} ({', '.join(names)}): they are now at {file}:{start}-{end}")
    assert not wrong, "README.md, Read the code: " + "; ".join(wrong)


def test_reading_path_to_the_first_training_step_is_short():
    section, _ = reading_path()
    first = section.split("\nThen:")[0]
    ranges = RANGE.findall(first)
    lines = sum(int(b) - int(a) + 1 for _, a, b, _ in ranges)
    assert lines <= 350, f"the reading path of a training step is {lines} lines, at most 350"
    assert len({file for file, *_ in ranges}) <= 3, "the reading path of a training step spans more than 3 files"
    stated = re.search(r"these (\d+) lines", first)
    assert stated and int(stated.group(1)) == lines, \
        f"the README says {stated and stated.group(1)} lines, its ranges add up to {lines}"
    assert "Σ p⁻ log(p⁻ / p̃⁻)" in section and "logsumexp" in section   # the KL in its plain and its stable form


def test_one_training_step_runs_only_the_reading_path():
    """Trace one training step of the toy world's CCC as train.py runs it (ascale.fit, one step, the batch size
    left to its default) and list every line of project code it executes: each must lie inside the README's
    reading path (loading, tokenizing, the task and `prepare` happen before, outside the trace)."""
    import sys

    import ascale
    import tasks
    from gpt2 import GPT
    from loading.tokenizer import get_tokenizer
    model, tok = GPT.from_pretrained("toyworld"), get_tokenizer("toyworld")
    task = tasks.load_task("ccc", tok, seed=0, fixed_length=True)
    batch = ascale.prepare(model, task.train, "flip")
    iv = ascale.make("activscalar", model.config, ["attn_out", "mlp_out"], task.train.n_slots)
    ran = set()

    def trace(frame, event, arg):
        path = Path(frame.f_code.co_filename)
        if ROOT not in path.parents or "tests" in path.relative_to(ROOT).parts or ".venv" in path.parts:
            return None
        if event == "line":
            ran.add((path.relative_to(ROOT).as_posix(), frame.f_lineno))
        return trace

    sys.settrace(trace)
    try:
        curve = ascale.fit(model, iv, batch, steps=1, progress=False)
    finally:
        sys.settrace(None)
    assert curve["steps"] == 1 and len(ran) > 100
    listed = RANGE.findall(reading_path()[0].split("\nThen:")[0])
    outside = sorted((f, n) for f, n in ran if not any(f == file and int(a) <= n <= int(b) for file, a, b, _ in listed))
    assert not outside, "lines a training step runs that the README's reading path leaves out: " + ", ".join(
        f"{f}:{n}" for f, n in outside)


def _script_python(script: Path) -> list[str]:
    """The Python of the `python - ... <<'PY'` (or 'EOF') blocks of a results script."""
    return re.findall(r"<<'(PY|EOF)'\n(.*?)\n\1\n", script.read_text(), re.S)


@pytest.mark.parametrize("script", sorted((ROOT / "docs").glob("*.sh")), ids=lambda p: p.name)
def test_results_scripts_import_what_exists(script):
    # The results scripts run Python inline; a module moved elsewhere breaks them only hours into a run.
    import ast
    import importlib
    import importlib.util
    for _, code in _script_python(script):
        for node in ast.walk(ast.parse(code)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                try:
                    module = importlib.import_module(name)
                except ModuleNotFoundError:
                    pytest.fail(f"{script.name} imports {name}, which no longer exists")
                if isinstance(node, ast.ImportFrom):
                    for a in node.names:
                        assert hasattr(module, a.name) or importlib.util.find_spec(f"{name}.{a.name}"), \
                            f"{script.name}: from {name} import {a.name}"
