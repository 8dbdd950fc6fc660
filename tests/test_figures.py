"""figures/report.py's plot functions return their Figure, save it only when given a path (atomically, as a
PNG), and leave the backend to whoever calls them: a notebook keeps its own, the scripts choose Agg."""
import matplotlib
import pytest
from matplotlib.figure import Figure

from figures import report

ROWS = [{"method": "activscalar", "beta": b, "flip_rate_train": f, "flip_rate_test": f - 0.1, "kl_train": k,
         "kl_test": k + 0.1} for b, f, k in ((0, 0.1, 0.0), (1, 0.9, 0.4), (2, 1.0, 1.2))]


@pytest.fixture
def other_backend():
    before = matplotlib.get_backend()
    matplotlib.use("template")        # a backend no plot function would choose
    yield
    matplotlib.use(before)


def test_a_plot_returns_its_figure_and_keeps_the_backend(tmp_path, other_backend):
    import matplotlib.pyplot as plt
    fig = report.plot_curves(None, ROWS, "beta", "β", None, "a sweep")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert matplotlib.get_backend() == "template"
    assert not plt.get_fignums()              # taken out of pyplot's open figures: shown once, never leaked
    assert list(tmp_path.iterdir()) == []     # no path, nothing written
    fig = report.plot_curves(tmp_path / "beta.png", ROWS, "beta", "β", None, "a sweep")
    assert isinstance(fig, Figure)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beta.png"]   # written in place, no temporary file left
    assert (tmp_path / "beta.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig.savefig(tmp_path / "again.png")       # the returned figure still draws
    assert (tmp_path / "again.png").stat().st_size > 1000


def test_no_module_sets_a_backend_but_the_scripts_main():
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    setting = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                     if ".venv" not in p.parts and "tests" not in p.parts and 'matplotlib.use("Agg")' in p.read_text())
    assert setting == ["analyze.py", "generate.py", "groundtruth.py", "train.py"]
