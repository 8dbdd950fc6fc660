"""docs/walkthrough.ipynb runs, offline on the toy world: all of it as Jupyter starts it (in docs/), its setup
from the repository's root too, and the committed copy carries its outputs (figures inline, no errors) so that
it reads on a code host."""
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="requirements-dev.txt: nbformat, nbclient, ipykernel")
nbclient = pytest.importorskip("nbclient", reason="requirements-dev.txt: nbformat, nbclient, ipykernel")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "docs" / "walkthrough.ipynb"


def execute(nb, folder: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the notebook finds the modules itself (installed or not)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(folder)}}).execute()
    return nb


def text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_walkthrough_runs_from_docs(monkeypatch):
    nb = execute(nbformat.read(NOTEBOOK, as_version=4), ROOT / "docs", monkeypatch)
    out = "\n".join(filter(None, (text(c) for c in nb.cells if c.cell_type == "code")))
    assert out.startswith("toyworld: 4 layers")
    # the three terms by hand and by ascale.objective, printed side by side, are the same numbers
    terms = re.findall(r"(L_E|L_F|L_M): by hand (\S+)   ascale.objective (\S+)", out)
    assert [t for t, _, _ in terms] == ["L_E", "L_F", "L_M"]
    assert all(abs(float(a) - float(b)) <= 1e-5 * max(1.0, abs(float(a))) for _, a, b in terms)
    assert re.search(r"test: flip rate \d\.\d\d \[\d\.\d\d, \d\.\d\d\] of 100 prompts", out)
    assert re.search(r"chosen: K = \d+", out)
    # the paper's central comparison beside the trivial baseline, on the same test prompts
    assert all(re.search(rf"^{name}\s+\d\.\d\d \[", out, flags=re.M) for name in
               ("activscalar", "steervec", "dynscalar", r"offset \(control\)"))
    assert images(nb) >= 6   # the α sweep, the loss curves, two heatmaps, the knockout check, the locations path


def test_walkthrough_setup_from_the_root(monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells = [c for c in nb.cells if c.cell_type == "code"][:2]   # the setup: modules, model, tokenizer
    nb = execute(nb, ROOT, monkeypatch)
    assert text(nb.cells[1]).startswith("toyworld: 4 layers")


def test_committed_walkthrough_has_its_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "run it top to bottom, then commit"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert images(nb) >= 6
