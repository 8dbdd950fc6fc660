"""spm_tokenizer.py against `tokenizers` on SentencePiece-style tokenizer.json files it trains itself, one per
way of writing spaces as "▁" (Gemma, Llama 2, Mistral, Metaspace with split), byte fallback exercised by
characters the vocabulary never saw; the same vocabulary as a GGUF file (scores instead of merges); bad files."""

import json

import pytest
from conftest import training_text

from gpt2 import UserError
from loading import checkpoints
from loading.spm_tokenizer import SentencePieceBPE
from loading.tokenizer import Tokenizer, get_tokenizer

TEXTS = ["The capital of France is Paris.", "When Mary and John went to the store, John gave a drink to",
         " leading space", "  two  spaces\tand\ttabs\r\n", "In 2024, 1,234,567 people paid $3.50 each.",
         "def f(x):\n    return x ** 2  # square", "café naïve Zürich; Ærøskøbing ß Ω ≈ √",
         "I love 🍕 and 🦀! 😀", "東京は日本の首都です。한국어", "", " ", "a", "▁literal▁marks",
         "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n", "<s>x</s> y<s>"]
SPECIALS = {"gemma": ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]}
BYTES = [f"<0x{b:02X}>" for b in range(256)]


def write_spm_tokenizer_json(kind: str, path, vocab_size: int = 1500):
    """A SentencePiece-style tokenizer.json as the Hub's files are laid out, its BPE trained by `tokenizers`:
      gemma     normalizer Replace(" ", "▁"), no prefix; <bos> put first by the post-processor; chat tokens
      llama2    normalizer Sequence[Prepend("▁"), Replace(" ", "▁")]; <s> first
      mistral   pre_tokenizer Metaspace(prepend_scheme first, split false); <s> first
      metaspace pre_tokenizer Metaspace(prepend_scheme always, split true); no BOS
    Byte tokens <0x00> ... <0xFF> are in the vocabulary (not added tokens), as in the real files."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE
    tok = HFTokenizer(BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    replace = normalizers.Replace(" ", "▁")
    if kind == "gemma":
        tok.normalizer = replace
    elif kind == "llama2":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), replace])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first" if kind == "mistral" else "always",
                                                     split=kind == "metaspace")
    specials = SPECIALS.get(kind, ["<unk>", "<s>", "</s>"])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials + BYTES, show_progress=False)
    tok.train_from_iterator([line for line in training_text() if "🍕" not in line and "東京" not in line], trainer)
    bos = {"gemma": "<bos>", "llama2": "<s>", "mistral": "<s>"}.get(kind)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    tok.save(str(path))
    spec = json.loads(path.read_text())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] not in BYTES]  # plain vocabulary
    path.write_text(json.dumps(spec, ensure_ascii=False))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spm")
    return {kind: write_spm_tokenizer_json(kind, folder / f"{kind}.json")
            for kind in ("gemma", "llama2", "mistral", "metaspace")}


@pytest.mark.parametrize("kind", ["gemma", "llama2", "mistral", "metaspace"])
def test_ids_equal_tokenizers(files, kind):
    from tokenizers import Tokenizer as HFTokenizer
    theirs = HFTokenizer.from_file(str(files[kind]))
    ours = Tokenizer.from_tokenizer_json(files[kind])
    assert isinstance(ours, SentencePieceBPE)
    for text in TEXTS:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False).ids, (kind, text)
    bos = theirs.encode("x").ids[0] if kind != "metaspace" else None
    assert ours.bos_token == bos and ours.eot_token == theirs.token_to_id("</s>" if kind != "gemma" else "<eos>")


def test_byte_fallback_and_decoding(files):
    ours = Tokenizer.from_tokenizer_json(files["gemma"])
    ids = ours.encode("I love 🦀!")
    crab = [ours.vocab[f"<0x{b:02X}>"] for b in "🦀".encode()]
    assert crab == ids[ids.index(crab[0]):][:4]                    # four byte tokens, the crab's UTF-8
    assert [ours.token_str(i) for i in crab] == ["�"] * 4
    for text in TEXTS:  # Gemma's tokenizer loses nothing but a literal "▁", which reads back as a space
        assert ours.decode(ours.encode(text)) == text.replace("▁", " ")
    llama2 = Tokenizer.from_tokenizer_json(files["llama2"])
    assert llama2.decode(llama2.encode(" x")) == " x"             # "▁▁x": the prefix's "▁" is dropped again
    assert ours.encode("<start_of_turn>") == [ours.added["<start_of_turn>"]]
    piece = next(p for p in ours.vocab if p.startswith("▁") and p.count("▁") == 1 and len(p) > 3)
    assert ours.token_str(ours.vocab[piece]) == " " + piece[1:] and ours.encode(" " + piece[1:]) == [ours.vocab[piece]]


def spm_gguf(path, tokenizer_json, **meta):
    """A GGUF file holding only the vocabulary of a trained tokenizer.json, as llama.cpp's converter writes a
    SentencePiece one: tokens by id, each scored minus its id (the trainer numbers merges in their order),
    specials as control (3) and byte tokens as byte (6) tokens."""
    import gguf
    spec = json.loads(tokenizer_json.read_text())
    vocab = spec["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    specials = {t["content"] for t in spec["added_tokens"]}
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([-float(vocab[t]) for t in tokens])
    w.add_token_types([3 if t in specials else 6 if t in BYTES else 1 for t in tokens])
    w.add_bos_token_id(vocab["<bos>"])
    w.add_eos_token_id(vocab["<eos>"])
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    for key, value in meta.items():
        getattr(w, f"add_{key}")(value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_the_same_vocabulary_from_gguf_scores(tmp_path, files):
    """Scores (highest merged token first) instead of merges: the same ids as `tokenizers` on the json."""
    from tokenizers import Tokenizer as HFTokenizer
    theirs = HFTokenizer.from_file(str(files["gemma"]))
    ours = get_tokenizer(str(spm_gguf(tmp_path / "t.gguf", files["gemma"])))
    assert isinstance(ours, SentencePieceBPE) and ours.bos_token == theirs.token_to_id("<bos>")
    for text in TEXTS:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False).ids, text


def test_a_gemma_hub_folder_reads_its_tokenizer_json(tmp_path, files):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    (tmp_path / "tokenizer.json").write_bytes(files["gemma"].read_bytes())
    tok = get_tokenizer(str(tmp_path))
    assert isinstance(tok, SentencePieceBPE) and tok.bos_token == tok.added["<bos>"]


def test_encoding_is_fast(files):
    import time
    ours = Tokenizer.from_tokenizer_json(files["gemma"])
    prompts = [f"When {a} and {b} went to the store, {b} gave a drink to" for a in TEXTS for b in TEXTS[:4]] * 20
    start = time.perf_counter()
    for p in prompts:
        ours.encode(p)
    assert (time.perf_counter() - start) / len(prompts) < 0.005   # seconds a prompt (about 0.1 ms measured)


def test_bad_files_give_one_line(tmp_path, files):
    def one_line(path, match):
        checkpoints.gguf_file.cache_clear()
        with pytest.raises(UserError, match=match) as e:
            folder = tmp_path / "m"
            folder.mkdir(exist_ok=True)
            (folder / "config.json").write_text(json.dumps({"model_type": "gemma2"}))
            if path is not None:
                (folder / "tokenizer.json").write_bytes(path.read_bytes())
            get_tokenizer(str(folder))
        assert "\n" not in str(e.value)

    spec = json.loads(files["gemma"].read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**spec, "normalizer": {"type": "NFKC"}}))
    one_line(bad, "none of Gemma's, Llama 2's and Mistral's")
    bad.write_text(json.dumps({**spec, "added_tokens": [{**t, "lstrip": True} for t in spec["added_tokens"]]}))
    one_line(bad, "added tokens with single_word, lstrip or rstrip")
    bad.write_text(json.dumps(spec)[:1000])
    one_line(bad, "not a readable tokenizer.json")
    bad.write_text(json.dumps({**spec, "model": {**spec["model"], "type": "Unigram"}}))
    one_line(bad, "model type 'Unigram' is not BPE")
    checkpoints.gguf_file.cache_clear()
    with pytest.raises(UserError, match="needs tokenizer.ggml.tokens, scores and token_type") as e:
        import gguf
        w = gguf.GGUFWriter(str(tmp_path / "noscores.gguf"), "gemma3")
        w.add_tokenizer_model("llama")
        w.add_token_list(["<pad>", "<eos>", "<bos>"])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        get_tokenizer(str(tmp_path / "noscores.gguf"))
    assert "\n" not in str(e.value)
