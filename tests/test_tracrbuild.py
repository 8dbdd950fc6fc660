"""world/tracrbuild.py rebuilds the committed programs with tracr: the same weights and the same reference logits.
Needs tracr, jax and dm-haiku (an optional dependency): skipped in one line without them."""

import pytest
import torch
from safetensors.torch import load_file

from world import compiled

tracrbuild = pytest.importorskip("world.tracrbuild")
pytest.importorskip("tracr", reason="tracr (pip install tracr-pypi==1.0.0 jax dm-haiku) is not installed")


@pytest.mark.parametrize("name", compiled.PROGRAMS)
def test_a_rebuild_gives_the_committed_files(name):
    files = tracrbuild.build(name)
    committed = load_file(str(compiled.folder(name) / "model.safetensors"))
    assert sorted(files["model.safetensors"]) == sorted(committed)
    for key, t in files["model.safetensors"].items():
        assert torch.equal(t, committed[key]), key
    ref = compiled.read(name, "reference.json")
    assert files["reference.json"]["ids"] == ref["ids"]
    assert (torch.tensor(files["reference.json"]["logits"]) - torch.tensor(ref["logits"])).abs().max() < 1e-6
    task = compiled.read(name, "task.json")
    assert files["task.json"]["truth"] == task["truth"] and len(files["task.json"]["pairs"]) == len(task["pairs"])
