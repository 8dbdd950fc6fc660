"""tokenizer.py on tokenizer.json files with the structure of Llama 3's and Qwen2's (built by conftest with
the `tokenizers` library), against `tokenizers` itself, id for id; and a task's prompts start with BOS
exactly where the model's own tokenizer adds one."""

import json
import unicodedata
from pathlib import Path

import pytest
from conftest import LLAMA3_PATTERN, LLAMA3_SPECIALS, QWEN2_SPECIALS, save_gguf, tiny_hf_model, training_text
from test_tokenizer import EXAMPLES, fuzz_strings
from tokenizers import Tokenizer as HFTokenizer

import gpt2
import tasks
from loading.tokenizer import Tokenizer, bytes_to_unicode, get_tokenizer

MORE_EXAMPLES = [
    "1 12 123 1234 12345 123456 1234567 3.14159265 1e-10 0x1F 2024-01-01 ٣٤٥ ½",  # digit groups differ
    "DON'T I'LL WE'VE THEY'RE SHE'D IT'S I'M You'Re we'D", "don't'll 's 'S'T",
    "line1\r\nline2\r\n\r\n  \r\n\tx\r", "\r\r\n\n\r", "a  \n  b", "trailing   ", "   ", "\n",
    "def main():\r\n    print('hi')  # comment\n\n\nif __name__ == \"__main__\":\n\tmain()\n",
    "x=1;y=[1,2,3];z={'a':1}", "    return f\"{x!r:>10}\"",
    "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다", "ﾊﾝｶｸ ｶﾀｶﾅ ①②③ ｆｕｌｌ",
    "I love 🍕 and 👍🏽! 👨‍👩‍👧‍👦 🇩🇪🇫🇷 ❤️‍🔥", "e\u0301 \u00e9 \u212b A\u030a",
    *LLAMA3_SPECIALS, *QWEN2_SPECIALS, "<tool_call>", "a<tool_call>b",
    "<|begin_of_text|>Hello<|end_of_text|>", "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>", "<|begin_of_text|", "<|im_end",
]
TEXTS = EXAMPLES + MORE_EXAMPLES


@pytest.fixture(scope="module", params=["llama3", "qwen2"])
def pair(request, llama_tokenizer_files):
    """(kind, ours, `tokenizers`') for one of the two files."""
    path = llama_tokenizer_files[request.param]
    return request.param, Tokenizer.from_tokenizer_json(path), HFTokenizer.from_file(str(path))


def test_matches_tokenizers_without_and_with_special_tokens(pair):
    kind, ours, hf = pair
    texts = TEXTS + fuzz_strings() + fuzz_strings(200, seed=7)
    plain = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    assert [ours.encode(t) for t in texts] == plain
    bos = [] if ours.bos_token is None else [ours.bos_token]
    assert [bos + ours.encode(t) for t in texts] == [e.ids for e in hf.encode_batch(texts)]  # the post-processor's


def test_every_vocabulary_entry(pair):
    kind, ours, hf = pair
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    texts = []
    for token in hf.get_vocab(with_added_tokens=False):
        try:
            texts.append(bytes(byte_of[c] for c in token).decode("utf-8"))
        except UnicodeDecodeError:  # part of a character
            pass
    assert len(texts) > 1500
    assert [ours.encode(t) for t in texts] == [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]


def test_bos_eot_and_added_tokens(pair):
    kind, ours, hf = pair
    vocab = hf.get_vocab_size(with_added_tokens=False)
    if kind == "llama3":
        assert ours.bos_token == hf.token_to_id("<|begin_of_text|>") == vocab  # numbered after the vocabulary
        assert ours.eot_token == hf.token_to_id("<|end_of_text|>")
        assert ours.token_str(ours.bos_token) == "<|begin_of_text|>"
    else:
        assert ours.bos_token is None
        assert ours.eot_token == hf.token_to_id("<|endoftext|>") == vocab
        assert ours.encode("<tool_call>") == [hf.token_to_id("<tool_call>")]  # added, not special
    assert ours.n_vocab == hf.get_vocab_size(with_added_tokens=True)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False)


def test_digits_are_split_by_the_files_own_regex(llama_tokenizer_files):
    llama3 = Tokenizer.from_tokenizer_json(llama_tokenizer_files["llama3"])
    qwen2 = Tokenizer.from_tokenizer_json(llama_tokenizer_files["qwen2"])
    assert llama3.encoding._pat_str == LLAMA3_PATTERN
    assert [llama3.token_str(i) for i in llama3.encode("1234567")][0] == "123"  # groups of up to three
    assert [qwen2.token_str(i) for i in qwen2.encode("1234567")] == list("1234567")  # single digits


def _hand_made(tmp_path, ignore_merges: bool, extra=()):
    """bytes, then bc, ab, cd, abcd, then `extra` entries that no merge makes: the word "abcd" merges b c
    first and is stuck at a|bc|d, unless ignore_merges takes it whole from the vocabulary."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    split = {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False}
    merges = ["b c", "a b", "c d", "ab cd"]
    vocab = {c: b for b, c in bytes_to_unicode().items()} | {m.replace(" ", ""): 256 + i for i, m in enumerate(merges)}
    vocab |= {t: 260 + i for i, t in enumerate(extra)}
    eot = {"id": len(vocab), "content": "<|end_of_text|>", "single_word": False, "lstrip": False, "rstrip": False,
           "normalized": False, "special": True}
    spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [eot], "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, byte_level]}, "post_processor": None,
            "decoder": byte_level, "model": {"type": "BPE", "dropout": None, "unk_token": None,
                                             "continuing_subword_prefix": None, "end_of_word_suffix": None,
                                             "fuse_unk": False, "byte_fallback": False,
                                             "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges}}
    path = tmp_path / f"ignore-{ignore_merges}-{len(extra)}.json"
    path.write_text(json.dumps(spec))
    return path


def test_ignore_merges(tmp_path):
    """A word that is in the vocabulary is that one token under ignore_merges (Llama 3), as tiktoken does."""
    path = _hand_made(tmp_path, ignore_merges=True)
    ours, hf = Tokenizer.from_tokenizer_json(path), HFTokenizer.from_file(str(path))
    for text in ["abcd", " abcd", "abcd abcd", "bcd", "abc", "cd ab"]:
        assert ours.encode(text) == hf.encode(text).ids, text
    assert ours.encode("abcd") == [259]
    assert HFTokenizer.from_file(str(_hand_made(tmp_path, ignore_merges=False))).encode("abcd").ids == [97, 256, 100]


def test_ignore_merges_with_entries_no_merge_makes(tmp_path):
    """A vocabulary entry that no merge makes is still a whole word under ignore_merges; one that two tokens
    could be merged into (tiktoken would, `tokenizers` would not) is refused."""
    path = _hand_made(tmp_path, ignore_merges=True, extra=["xyz"])  # xy, yz are not tokens
    ours, hf = Tokenizer.from_tokenizer_json(path), HFTokenizer.from_file(str(path))
    for text in ["xyz", " xyz", "xyzx", "xyz abcd", "axyz"]:
        assert ours.encode(text) == hf.encode(text).ids, text
    assert ours.encode("xyz") == [260] and ours.eot_token == 261
    with pytest.raises(ValueError, match="'bcd' is two tokens joined, but no merge makes it"):
        Tokenizer.from_tokenizer_json(_hand_made(tmp_path, ignore_merges=True, extra=["bcd"]))


def test_files_we_would_read_differently_are_refused(tmp_path, llama_tokenizer_files):
    spec = json.loads(llama_tokenizer_files["llama3"].read_text())

    def refused(match, **changes):
        path = tmp_path / "t.json"
        path.write_text(json.dumps({**spec, **changes}))
        with pytest.raises(ValueError, match=match):
            Tokenizer.from_tokenizer_json(path)

    post = spec["post_processor"]
    eos_after = {**post["processors"][1], "single": post["processors"][1]["single"] + [
        {"SpecialToken": {"id": "<|end_of_text|>", "type_id": 0}}]}
    refused("adds more than one token", post_processor={**post, "processors": [post["processors"][0], eos_after]})
    split = spec["pre_tokenizer"]["pretokenizers"][0]
    refused("pre_tokenizer", pre_tokenizer={**spec["pre_tokenizer"], "pretokenizers": [
        {**split, "behavior": "Removed"}, spec["pre_tokenizer"]["pretokenizers"][1]]})
    refused("no end-of-text token", added_tokens=[{**t, "content": t["content"].replace("end_of_text", "eot")}
                                                  for t in spec["added_tokens"]])
    model = spec["model"]
    # SentencePiece-style BPE goes to spm_tokenizer.py, which refuses what is none of Gemma's, Llama 2's, Mistral's
    refused("none of Gemma's, Llama 2's and Mistral's", model={**model, "byte_fallback": True}, pre_tokenizer=None,
            normalizer={"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Replace", "pattern": {
                "String": " "}, "content": "▁"}]})


# ----------------------------------------------------------------------------- get_tokenizer and tasks

def model_folder(tmp_path, model_type, tokenizer_json=None):
    folder = tmp_path / model_type
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    if tokenizer_json:
        (folder / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    return str(folder)


def test_get_tokenizer_reads_the_folders_tokenizer_json(tmp_path, llama_tokenizer_files):
    for model_type, kind in [("llama", "llama3"), ("mistral", "llama3"), ("qwen2", "qwen2"), ("qwen3", "qwen2")]:
        tok = get_tokenizer(model_folder(tmp_path, model_type, llama_tokenizer_files[kind]))
        assert (tok.bos_token is not None) == (kind == "llama3")


def test_get_tokenizer_without_tokenizer_json(tmp_path):
    folder = model_folder(tmp_path, "llama")
    (tmp_path / "llama" / "tokenizer.model").write_bytes(b"sentencepiece")
    with pytest.raises(gpt2.UserError, match="no tokenizer.json .*SentencePiece tokenizer.model alone"):
        get_tokenizer(folder)


def test_get_tokenizer_unknown_model_type(tmp_path):
    with pytest.raises(gpt2.UserError, match="model_type 'gemma' .* is not supported; use gpt2, .*qwen3"):
        get_tokenizer(model_folder(tmp_path, "gemma"))


@pytest.mark.parametrize("kind", ["llama3", "qwen2"])
def test_task_prompts_start_with_bos_exactly_where_the_model_adds_one(kind, llama_tokenizer_files):
    ours = Tokenizer.from_tokenizer_json(llama_tokenizer_files[kind])
    hf = HFTokenizer.from_file(str(llama_tokenizer_files[kind]))
    task = tasks.load_task("ccc", ours, seed=0)
    ps = task.train
    assert len(ps) > 20
    for i in range(3):
        n = int(ps.answer_pos[i]) + 1
        assert ps.ids[i, :n].tolist() == hf.encode(ps.prompts[i]).ids  # what the model's own tokenizer gives
        assert (ps.ids[i, n:] == ours.eot_token).all()
        assert ps.tokens[i][0] == ("<|begin_of_text|>" if kind == "llama3" else "The")
    assert ps.correct[0].item() == hf.encode(ps.correct_str[0], add_special_tokens=False).ids[0]  # no BOS in answers
    assert tasks.single_token(ours, " Paris") is not None
    assert any(f"whose prompt is {ps.ids.shape[1]} tokens" in note for note in task.notes)  # BOS counted


# ----------------------------------------------------------------------------- SmolLM2's digits, and GGUF vocabularies

def smollm_tokenizer_json(path: Path) -> Path:
    """A tokenizer.json with SmolLM2's structure: Sequence[Digits(individual_digits), ByteLevel(GPT-2's
    regex)], its BPE trained by `tokenizers` on varied text, <|endoftext|> first among the added tokens."""
    from tokenizers import Tokenizer as HF
    from tokenizers import decoders, pre_tokenizers, trainers
    from tokenizers.models import BPE
    tok = HF(BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False)
    tok.train_from_iterator(training_text(), trainer)
    tok.save(str(path))
    return path


DIGIT_TEXTS = ["2024-01-01", "a1b22c333", "x 12 y", "a   1", "a\n1", "  42  ", "3.14159", "½ ² Ⅻ ٣", "1\n\n2 ",
               "v1.2.3rc4", "₁₂ 🍕1", "10,000 and 7", "abc123def"]


def test_smollm2_tokenizer_json_digits_first(tmp_path):
    """SmolLM2's Hub tokenizer.json (Digits, then ByteLevel) reads, and gives `tokenizers`' ids."""
    path = smollm_tokenizer_json(tmp_path / "smollm.json")
    ours, hf = Tokenizer.from_tokenizer_json(path), HFTokenizer.from_file(str(path))
    assert ours.digits and ours.eot_token == 0
    for text in [*EXAMPLES, *DIGIT_TEXTS, *fuzz_strings(200)]:
        assert ours.encode(text) == hf.encode(text).ids, repr(text)
    assert [ours.token_str(i) for i in ours.encode(" 2024")] == [" ", "2", "0", "2", "4"]


@pytest.mark.parametrize("kind,pre", [("llama3", "llama-bpe"), ("qwen2", "qwen2"), ("smollm", "smollm")])
def test_gguf_vocabulary_gives_the_ids_of_its_tokenizer_json(tmp_path, llama_tokenizer_files, kind, pre):
    """A GGUF file's tokenizer.ggml.* (as llama.cpp's converter writes them from a tokenizer.json) gives
    the tokenizer.json's ids under the pre-tokenizer that tokenizer.ggml.pre names. (Qwen2's file
    normalises to NFC and llama.cpp does not, so the texts are NFC already.)"""
    json_path = smollm_tokenizer_json(tmp_path / "s.json") if kind == "smollm" else llama_tokenizer_files[kind]
    hf = HFTokenizer.from_file(str(json_path))
    bos = hf.token_to_id("<|begin_of_text|>")
    gguf_path = save_gguf(tiny_hf_model("llama", vocab_size=hf.get_vocab_size()), tmp_path / "m.gguf",
                          pre=pre, tokenizer_json=json_path, bos=bos, eos=hf.token_to_id("<|end_of_text|>"))
    ours = get_tokenizer(str(gguf_path))
    assert ours.bos_token == bos and ours.digits == (kind == "smollm")
    texts = [t for t in [*EXAMPLES, *DIGIT_TEXTS, *fuzz_strings(200)] if unicodedata.is_normalized("NFC", t)]
    for text in texts:
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids, repr(text)
    assert ours.decode(ours.encode("The capital of France is Paris.")) == "The capital of France is Paris."


def test_unknown_gguf_pre_tokenizer_is_refused(tmp_path, llama_tokenizer_files):
    path = save_gguf(tiny_hf_model("llama"), tmp_path / "m.gguf", pre="deepseek-llm",
                     tokenizer_json=llama_tokenizer_files["llama3"])
    with pytest.raises(gpt2.UserError, match="pre-tokenizer 'deepseek-llm' .* supported: gpt2, smollm, llama-bpe"):
        get_tokenizer(str(path))
