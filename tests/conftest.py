"""Shared test fixtures: offline tokenizer files, and tiny random checkpoints in the Hub's layout.

Tests run offline on CPU. GPT-2's BPE files and Pythia's tokenizer.json come from ../shared/data
(never copied into the project); a test that needs them skips where they are absent, except in
CI (env CI set), where a missing file is a failure.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project is a folder of scripts: import gpt2, ascale, ... from here
SHARED_DATA = Path(os.environ.get("ASCALE_SHARED_DATA", ROOT.parent / "shared" / "data"))
os.environ["HF_HUB_OFFLINE"] = "1"  # never reach for the network from a test


def need(path: Path) -> Path:
    """Return path if it exists; otherwise skip (locally) or fail (in CI) with the reason."""
    if not path.exists():
        why = f"{path} is absent (test data from ../shared/data)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return path


@pytest.fixture(scope="session", autouse=True)
def tiktoken_cache(tmp_path_factory):
    """Point tiktoken at a temp copy of GPT-2's cached BPE files so get_encoding("gpt2") works offline."""
    src = SHARED_DATA / "tiktoken-cache"
    if not src.exists():
        yield None
        return
    dst = tmp_path_factory.mktemp("tiktoken") / "cache"
    shutil.copytree(src, dst)
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(dst)
    yield dst
    if old is None:
        os.environ.pop("TIKTOKEN_CACHE_DIR", None)
    else:
        os.environ["TIKTOKEN_CACHE_DIR"] = old


@pytest.fixture
def gpt2_bpe(tiktoken_cache):
    """GPT-2's BPE files are available to tiktoken (skip/fail otherwise)."""
    need(SHARED_DATA / "tiktoken-cache")
    return tiktoken_cache


@pytest.fixture
def pythia_tokenizer_json() -> Path:
    return need(SHARED_DATA / "pythia-tokenizer.json")


# ----------------------------------------------------------------------------- tiny checkpoints

LLAMA_DEFAULTS = {"llama": ("LlamaForCausalLM", "LlamaConfig"), "qwen2": ("Qwen2ForCausalLM", "Qwen2Config"),
                  "qwen3": ("Qwen3ForCausalLM", "Qwen3Config"), "mistral": ("MistralForCausalLM", "MistralConfig")}

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
    elif model_type in LLAMA_DEFAULTS:
        cls, config = LLAMA_DEFAULTS[model_type]
        kw = dict(vocab_size=50304, max_position_embeddings=128, hidden_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, intermediate_size=96, rms_norm_eps=1e-5)
        kw.update(overrides)
        model = getattr(transformers, cls)(getattr(transformers, config)(**kw))
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
    if cfg.model_type in LLAMA_DEFAULTS:
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
    if model.config.model_type == "gpt_neox" and (SHARED_DATA / "pythia-tokenizer.json").exists():
        shutil.copy(SHARED_DATA / "pythia-tokenizer.json", folder / "tokenizer.json")
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
