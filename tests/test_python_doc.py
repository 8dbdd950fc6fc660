"""docs/python.md is a script: its ```python blocks, joined in order, run offline from a folder outside the
repository (the modules come from `pip install -e .`, or else from PYTHONPATH set to the repository's root)."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(page: Path) -> str:
    return "\n".join(re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.M | re.S))


def outside_env(tmp_path: Path) -> dict:
    """The environment of a user in another folder: offline, no display; the repository on PYTHONPATH only
    where the package is not installed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    installed = subprocess.run([sys.executable, "-c", "import ascale, figures.report"], cwd=tmp_path, env=env,
                               capture_output=True).returncode == 0
    if not installed:
        env["PYTHONPATH"] = str(ROOT)
    return env


def test_python_page_runs_as_one_script(tmp_path):
    code = python_blocks(ROOT / "docs" / "python.md")
    assert code.count("\n") >= 20 and "tasks.from_list(" in code and "report.heatmap(" in code
    (tmp_path / "page.py").write_text(code)
    proc = subprocess.run([sys.executable, "page.py"], cwd=tmp_path, env=outside_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = proc.stdout.strip().splitlines()[-2:]
    assert re.fullmatch(r"K = \d+: test flip \d\.\d\d \[\d\.\d\d, \d\.\d\d\] of 100 prompts, KL \d+\.\d{3}", first)
    result = eval(second, {"nan": float("nan")})   # metrics.evaluate's dict, printed
    assert result["n_prompts"] == 5 and 0 <= result["flip_rate"] <= 1
    assert (tmp_path / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
