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
