"""tokenizer.py against the reference implementations: tiktoken for GPT-2, the `tokenizers` library
(Hugging Face) for Pythia's tokenizer.json. Fixtures (tiktoken cache, data files) are in conftest.py."""

import json
import random
import string
import unicodedata

import pytest
import tiktoken
import torch
from tokenizers import Tokenizer as HFTokenizer

import gpt2
from loading import checkpoints
from loading.tokenizer import GPT_SPLIT_PATTERN, Tokenizer, bytes_to_unicode, get_tokenizer

EXAMPLES = [
    "Hello world",
    "The capital of Germany is Paris. Q: What is the capital of Germany? A:",
    "When Mary and John went to the store, John gave a drink to",
    *[" " * n + "x" for n in range(1, 31)],
    *["a" + " " * n + "b" for n in range(1, 31)],
    *["end" + " " * n for n in range(1, 31)],
    *[" " * n for n in (1, 2, 3, 24, 25, 30)],
    "\ttab\tseparated\t", "line1\nline2\n\n\nline3\n", " \n \t \r\n  x", "\n\n\n\n\n", "a \n b", "x\r\ny",
    "a\u00a0b\u3000c\u2009d\u200be",  # no-break, ideographic, thin and zero-width spaces
    "1234567890 3.14159 1,000,000 2024-01-01 42nd",
    "Hello!!! What?? (yes) [no] {maybe} <tag> @user #hash $5 %d ^&* ~/path/to/file.txt",
    "don't I'll we've they're she'd it's 'quoted' IT'S",
    "def f(x):\n    return x ** 2  # square\n",
    "if (a && b) {\n\treturn c[i];\n}\n\t\tfoo();",
    "for i in range(10):\n        print(f\"{i:>4}\")  \n",
    "café naïve résumé Zürich Ångström",
    "cafe\u0301 nai\u0308ve re\u0301sume\u0301 Zu\u0308rich",  # decomposed: NFC composes these
    "\u00c5 A\u030a \u212b",  # three spellings of Å
    "q\u0307\u0323 a\u0323\u0302",  # marks out of canonical order
    "\u1100\u1161\u11a8 한국어 텍스트",  # conjoining jamo compose to a Hangul syllable
    "東京は日本の首都です。北京是中国的首都",
    "I love 🍕 and 👍🏽! 👨‍👩‍👧‍👦 🇩🇪🇫🇷",
    "<|endoftext|>", "a<|endoftext|>b", " <|endoftext|> ", "<|endoftext|><|endoftext|>The",
    "<|endoftext|", "<|padding|>x", "endoftext", "The end.<|endoftext|>  Next",
]


def fuzz_strings(n=300, seed=0):
    """Random strings mixing the character classes that trip tokenizers up."""
    rng = random.Random(seed)
    snippets = ["def f(x):", "    return", "x = [1, 2]", "{\n\t}", "a->b", "i++;", "//", "/* */", "'''", "==="]
    emoji = ["🍕", "👍🏽", "👨‍👩‍👧", "🇫🇷", "😀", "❤️", "✨"]
    parts = [
        lambda: "".join(rng.choices(string.ascii_letters, k=rng.randint(1, 8))),
        lambda: " " * rng.randint(1, 30),
        lambda: "".join(rng.choices(" \t\n\r\u00a0", k=rng.randint(1, 6))),
        lambda: "".join(rng.choices(string.digits, k=rng.randint(1, 8))),
        lambda: "".join(rng.choices(string.punctuation, k=rng.randint(1, 4))),
        lambda: rng.choice(snippets),
        lambda: rng.choice("éèêëàâäôöûüçñÅ"),
        lambda: rng.choice("aeiouAEnc") + "".join(chr(rng.randint(0x300, 0x36F)) for _ in range(rng.randint(1, 2))),
        lambda: "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(rng.randint(1, 5))),
        lambda: chr(rng.randint(0x1100, 0x1112)) + chr(rng.randint(0x1161, 0x1175)),
        lambda: rng.choice(emoji),
        lambda: rng.choice(["<|endoftext|>", "<|padding|>", "<|endoftext|", "endoftext"]),
        lambda: rng.choice(["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S"]),
    ]
    return ["".join(rng.choice(parts)() + rng.choice(["", "", " "]) for _ in range(rng.randint(1, 10)))
            for _ in range(n)]


@pytest.fixture(scope="module")
def pythia(pythia_tokenizer_json):
    """(ours, the `tokenizers` library's) for Pythia's tokenizer.json, built once for this file."""
    path = pythia_tokenizer_json
    return Tokenizer.from_tokenizer_json(path), HFTokenizer.from_file(str(path))


@pytest.fixture
def gpt2_tok(gpt2_bpe):
    return Tokenizer.gpt2()


def test_bytes_to_unicode():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"
    assert all(c.isprintable() and not c.isspace() for c in table.values())


# ----------------------------------------------------------------------------- Pythia

@pytest.mark.parametrize("text", EXAMPLES)
def test_pythia_matches_tokenizers(pythia, text):
    ours, hf = pythia
    assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids


def test_pythia_matches_tokenizers_fuzz(pythia):
    ours, hf = pythia
    texts = fuzz_strings()
    expected = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    assert [ours.encode(t) for t in texts] == expected


def test_pythia_every_vocabulary_entry(pythia):
    """Each token's own text (where it is whole UTF-8) encodes as `tokenizers` does: this checks the
    ranks (tiktoken merges by the merged token's id, `tokenizers` by the pair's place in the merges)."""
    ours, hf = pythia
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    texts = []
    for token in hf.get_vocab(with_added_tokens=False):
        try:
            texts.append(bytes(byte_of[c] for c in token).decode("utf-8"))
        except (KeyError, UnicodeDecodeError):  # <|endoftext|> (an added token), or part of a character
            pass
    assert len(texts) > 45000
    expected = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    assert [ours.encode(t) for t in texts] == expected


def test_pythia_added_tokens(pythia):
    ours, _ = pythia
    assert ours.eot_token == 0 and ours.encode("x<|endoftext|>y") == [89, 0, 90]
    # Space runs of 2..24 are added tokens, matched longest first: 30 spaces = 24 + 6.
    assert ours.encode("a" + " " * 30 + "b") == [66, 50254, 50272, 67]
    assert ours.n_vocab == pythia[1].get_vocab_size()


def test_pythia_decode(pythia):
    ours, hf = pythia
    for text in EXAMPLES + fuzz_strings(100, seed=1):
        ids = ours.encode(text)
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False)
        assert ours.decode(ids) == unicodedata.normalize("NFC", text)
    assert ours.decode(torch.tensor(ours.encode("café"))) == "café"
    # Only the text between added tokens is normalised: ">" + combining long solidus stays apart.
    assert ours.decode(ours.encode("<|endoftext|>\u0338")) == "<|endoftext|>\u0338"


def _tiny_tokenizer_json(tmp_path, merges: dict[str, int], eot_id=None, **changes):
    """A minimal byte-level BPE tokenizer.json: the 256 bytes (ids 0..255), merges, then <|endoftext|>."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    vocab = {c: b for b, c in bytes_to_unicode().items()} | {m.replace(" ", ""): i for m, i in merges.items()}
    eot = {"id": len(vocab) if eot_id is None else eot_id, "content": "<|endoftext|>", "single_word": False,
           "lstrip": False, "rstrip": False, "normalized": False, "special": True}
    spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [eot],
            "normalizer": {"type": "NFC"}, "pre_tokenizer": byte_level, "post_processor": None,
            "decoder": byte_level,
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "vocab": vocab, "merges": list(merges)}}
    spec.update(changes)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    return path


def test_tiny_tokenizer_json(tmp_path):
    path = _tiny_tokenizer_json(tmp_path, {"a b": 256, "ab c": 257, "Ġ ab": 258})
    ours, hf = Tokenizer.from_tokenizer_json(path), HFTokenizer.from_file(str(path))
    for text in ["abc", " abc ab", "cab<|endoftext|>abca", "ab abc"]:
        assert ours.encode(text) == hf.encode(text).ids
    assert ours.encode("abc ab<|endoftext|>") == [257, 258, 259]


def test_tokenizer_json_refused(tmp_path):
    """Files we would read differently from `tokenizers` are refused, not half-supported."""
    with pytest.raises(ValueError, match="merge order"):
        Tokenizer.from_tokenizer_json(_tiny_tokenizer_json(tmp_path, {"a b": 257, "ab c": 256}))
    with pytest.raises(ValueError, match="would give it 257"):
        Tokenizer.from_tokenizer_json(_tiny_tokenizer_json(tmp_path, {"a b": 256}, eot_id=0))
    with pytest.raises(ValueError, match="normalizer"):
        Tokenizer.from_tokenizer_json(_tiny_tokenizer_json(tmp_path, {"a b": 256}, normalizer={"type": "NFD"}))


# ----------------------------------------------------------------------------- GPT-2

def test_gpt2_matches_tiktoken(gpt2_tok):
    enc = tiktoken.get_encoding("gpt2")
    assert enc._pat_str == GPT_SPLIT_PATTERN
    for text in EXAMPLES + fuzz_strings():
        assert gpt2_tok.encode(text) == enc.encode(text, allowed_special="all")
        if "<|endoftext|>" not in text:
            assert gpt2_tok.encode(text) == enc.encode_ordinary(text)
    assert gpt2_tok.encode("a<|endoftext|>b") == [64, 50256, 65]
    assert (gpt2_tok.eot_token, gpt2_tok.n_vocab) == (50256, 50257)


def test_gpt2_matches_tokenizers(gpt2_tok):
    """The `tokenizers` library, given GPT-2's original vocab (encoder.json) and merges (vocab.bpe)."""
    from tiktoken.load import read_file_cached
    from tokenizers import models, pre_tokenizers
    url = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    vocab = json.loads(read_file_cached(url + "encoder.json"))
    merges = [tuple(line.split()) for line in read_file_cached(url + "vocab.bpe").decode().split("\n")[1:] if line]
    hf = HFTokenizer(models.BPE(vocab, merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.add_special_tokens(["<|endoftext|>"])
    texts = EXAMPLES + fuzz_strings()
    assert [gpt2_tok.encode(t) for t in texts] == [e.ids for e in hf.encode_batch(texts)]


def test_gpt2_decode_and_token_str(gpt2_tok):
    for text in EXAMPLES:
        assert gpt2_tok.decode(gpt2_tok.encode(text)) == text  # GPT-2 does not normalise
    (paris,) = gpt2_tok.encode(" Paris")
    assert gpt2_tok.token_str(paris) == " Paris"
    assert gpt2_tok.token_str(gpt2_tok.encode("🍕")[0]) == "\ufffd"  # part of a character


# ----------------------------------------------------------------------------- get_tokenizer

def test_get_tokenizer_from_folders(tmp_path, gpt2_bpe, pythia_tokenizer_json):
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "config.json").write_text('{"model_type": "gpt2"}')
    assert get_tokenizer(str(tmp_path / "g")).eot_token == 50256
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "config.json").write_text('{"model_type": "gpt_neox"}')
    with pytest.raises(gpt2.UserError, match="no tokenizer.json"):
        get_tokenizer(str(tmp_path / "p"))
    (tmp_path / "p" / "tokenizer.json").write_bytes(pythia_tokenizer_json.read_bytes())
    assert get_tokenizer(str(tmp_path / "p")).encode("a  b") == [66, 50276, 67]


def test_get_tokenizer_unknown_model_type(monkeypatch):
    monkeypatch.setattr(checkpoints, "read_config", lambda name, revision=None: {"model_type": "gemma"})
    with pytest.raises(gpt2.UserError, match="'gemma'.*gpt2.*gpt_neox.*llama.*qwen2"):
        get_tokenizer("some/gemma")


def test_get_tokenizer_gpt2_offline(monkeypatch):
    def offline(name):
        raise ConnectionError("Max retries exceeded with url: ...\nmore")
    monkeypatch.setattr(checkpoints, "read_config", lambda name, revision=None: {"model_type": "gpt2"})
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(gpt2.UserError, match="TIKTOKEN_CACHE_DIR") as err:
        get_tokenizer("gpt2")
    assert "\n" not in str(err.value)
