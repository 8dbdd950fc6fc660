"""gpt2.py's Llama-family path (Llama 3, Qwen2, Qwen3) against transformers on tiny random checkpoints
in the Hub's layout, with config.json written both as the Hub's repos write it (rope_theta,
rope_scaling) and as transformers 5 does (rope_parameters)."""

import json
import math

import pytest
import torch
from conftest import (
    LLAMA3_ROPE,
    assert_knockout_matches_hook,
    assert_matches_transformers,
    save_checkpoint,
    tiny_hf_model,
    zero_head_pre_hook,
    zero_output,
)

import ascale
import gpt2
from gpt2 import GPT, UserError
from loading import checkpoints

# name -> (model_type, config overrides). The tiny defaults (conftest) have 4 query heads and 2 key/value heads.
VARIANTS = {
    "llama3-gqa-rope-scaling-tied": ("llama", {"head_dim": 16, "tie_word_embeddings": True,
                                               "rope_parameters": LLAMA3_ROPE}),
    "llama-no-gqa-untied": ("llama", {"num_key_value_heads": 4, "tie_word_embeddings": False,
                                      "rope_parameters": {"rope_type": "default", "rope_theta": 500.0}}),
    "qwen2-qkv-bias-tied": ("qwen2", {"tie_word_embeddings": True,
                                      "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}),
    "qwen3-qk-norm-head-dim": ("qwen3", {"hidden_size": 48, "head_dim": 16, "tie_word_embeddings": False}),
}


def load_pair(tmp_path, name, legacy=True, **layout):
    model_type, overrides = VARIANTS[name]
    hf = tiny_hf_model(model_type, **overrides)
    folder = save_checkpoint(hf, tmp_path / name, legacy=legacy, **layout)
    return GPT.from_pretrained(str(folder)), hf


def random_ids(B=2, T=40, seed=0):
    return torch.randint(0, 50000, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("legacy", [True, False], ids=["hub-keys", "transformers5-keys"])
@pytest.mark.parametrize("name", VARIANTS)
def test_logits_and_greedy_tokens_match_transformers(tmp_path, name, legacy):
    ours, hf = load_pair(tmp_path, name, legacy)
    config = json.loads((tmp_path / name / "config.json").read_text())
    assert ("rope_scaling" in config) == legacy and ("rope_parameters" in config) != legacy
    assert_matches_transformers(ours, hf, random_ids())


def test_config_switches(tmp_path):
    """What each variant turns on, read from its config.json."""
    cfgs = {name: load_pair(tmp_path, name)[0].config for name in VARIANTS}
    llama3, llama, qwen2, qwen3 = cfgs.values()
    assert llama3.rope_llama3 == (8.0, 1.0, 4.0, 64) and llama3.n_kv_head == 2 and llama3.tie_embeddings
    assert llama.rope_llama3 == () and llama.n_kv_head == 4 and not llama.tie_embeddings and llama.rotary_base == 500
    assert qwen2.attn_bias and not qwen2.proj_bias and not qwen2.qk_norm and qwen2.rotary_base == 1e6
    assert qwen3.qk_norm and qwen3.head_dim == 16 != qwen3.n_embd // qwen3.n_head and not qwen3.attn_bias
    assert all(c.rms_norm and c.swiglu and not c.mlp_bias and c.rotary_dim == c.head_dim for c in cfgs.values())
    assert all(c.sliding_window == 0 for c in cfgs.values())  # Qwen's use_sliding_window is false


def test_llama3_rope_scaling_meets_all_three_bands():
    """The tiny Llama 3 has rotary frequencies kept, blended and divided (see conftest.LLAMA3_ROPE),
    and ours equal transformers' own computation of them."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    hf = LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16, max_position_embeddings=128,
                     rope_parameters=dict(LLAMA3_ROPE))
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    ours = gpt2.rope_frequencies(gpt2.GPTConfig(**checkpoints.config_from_hf(hf.to_dict())), "cpu")
    torch.testing.assert_close(ours, expected, atol=0, rtol=1e-6)
    base = 1.0 / 10000.0 ** (torch.arange(0, 16, 2).float() / 16)
    wavelength = 2 * math.pi / base
    kept, divided = wavelength < 64 / 4, wavelength > 64 / 1
    blended = ~kept & ~divided
    assert kept.any() and divided.any() and blended.any()
    assert torch.equal(ours[kept], base[kept]) and torch.allclose(ours[divided], base[divided] / 8)
    assert ((ours[blended] < base[blended]) & (ours[blended] > base[blended] / 8)).all()


@pytest.mark.parametrize("layout", [{"hub_quirks": True}, {"shards": True}], ids=["inv-freq-buffers", "sharded"])
def test_checkpoint_layouts(tmp_path, layout):
    ours, hf = load_pair(tmp_path, "qwen2-qkv-bias-tied", **layout)
    idx = random_ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-4, rtol=0)


def test_logits_at_chosen_positions(tmp_path):
    ours, _ = load_pair(tmp_path, "qwen3-qk-norm-head-dim")
    idx, at = random_ids(B=3), torch.tensor([39, 3, 20])
    torch.testing.assert_close(ours(idx, at=at), ours(idx)[torch.arange(3), at], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- sites

@pytest.mark.parametrize("name", ["llama3-gqa-rope-scaling-tied", "qwen2-qkv-bias-tied", "qwen3-qk-norm-head-dim"])
@pytest.mark.parametrize("site", ["attn_out", "mlp_out", "head", "resid"])
def test_zeroing_a_site_matches_a_transformers_hook(tmp_path, name, site):
    """Each site knocked out in ours = the same module's output zeroed in transformers (a forward hook
    on self_attn, mlp or the decoder layer; for one head, a pre-hook on o_proj zeroing its slice)."""
    ours, hf = load_pair(tmp_path, name)
    layer, head, hs = 1, 3, ours.config.head_dim   # head 3 reads key/value head 1 (of 2)
    block = hf.model.layers[layer]

    if site == "head":
        handle = block.self_attn.o_proj.register_forward_pre_hook(zero_head_pre_hook(head, hs))
    else:
        handle = {"attn_out": block.self_attn, "mlp_out": block.mlp, "resid": block}[site].register_forward_hook(
            zero_output)
    idx = random_ids()
    assert_knockout_matches_hook(ours, hf, handle, idx, site, layer, head)


def test_sites_have_their_shapes_and_gradients_reach_only_the_scalars(tmp_path):
    ours, _ = load_pair(tmp_path, "qwen3-qk-norm-head-dim")
    cfg = ours.config
    seen = []
    ours(random_ids(B=2, T=7), intervene=lambda s, l, h: seen.append((s, l, tuple(h.shape))) or h)
    shape = {"head": (2, 7, 4, 16), "attn_out": (2, 7, 48), "mlp_out": (2, 7, 48), "resid": (2, 7, 48)}
    assert seen == [(s, l, shape[s]) for l in range(cfg.n_layer) for s in gpt2.SITES]

    scalars = {s: torch.ones(cfg.n_layer, requires_grad=True) for s in gpt2.SITES}
    idx = random_ids()
    out = ours(idx, intervene=lambda s, l, h: h * scalars[s][l])
    torch.testing.assert_close(out, ours(idx), atol=1e-5, rtol=0)
    out[:, -1].logsumexp(-1).sum().backward()
    for s, a in scalars.items():
        assert a.grad is not None and (a.grad != 0).all(), s
    assert all(p.grad is None for p in ours.parameters())


def test_interventions_on_head_dim_other_than_width_over_heads(tmp_path):
    """ascale's interventions take the head site's shape from head_dim (Qwen3: 16, not 48 / 4), train through
    the last-layer shortcut, and save and load with it."""
    ours, _ = load_pair(tmp_path, "qwen3-qk-norm-head-dim")
    idx, at = random_ids(B=3, T=9), torch.tensor([8, 8, 8])
    for method in ("activscalar", "steervec", "dynscalar"):
        iv = ascale.make(method, ours.config, ["head", "mlp_out"], 9 if method != "dynscalar" else None)
        for p in iv.parameters():
            torch.nn.init.normal_(p, std=0.1)
        full = ours(idx, intervene=lambda s, l, h, iv=iv: iv(s, l, h))[torch.arange(3), at]  # every position
        torch.testing.assert_close(ours(idx, intervene=iv, at=at), full, atol=1e-5, rtol=0)
    assert iv.w["head"].shape == (2, 4, 16)
    iv = ascale.make("activscalar", ours.config, ["head"], 9)
    ascale.save(tmp_path / "iv.safetensors", iv, model=ours)
    assert ascale.read_metadata(tmp_path / "iv.safetensors")["head_dim"] == "16"
    assert ascale.load(tmp_path / "iv.safetensors", ours)[0].alpha["head"].shape == (2, 9, 4)


# ----------------------------------------------------------------------------- refused configs

def write_config(tmp_path, **changes):
    """A tiny Llama 3's config.json (legacy keys), changed; no weights: the config is refused first."""
    hf = tiny_hf_model("llama", num_hidden_layers=1, vocab_size=64)
    save_checkpoint(hf, tmp_path, legacy=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(changes)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


@pytest.mark.parametrize("rope_scaling", [{"type": "linear", "factor": 2.0}, {"rope_type": "dynamic", "factor": 2.0},
                                          {"rope_type": "yarn", "factor": 4.0}])
def test_other_rope_scaling_is_refused(tmp_path, rope_scaling):
    with pytest.raises(UserError, match="rotary scaling '(linear|dynamic|yarn)' is not supported; only default"):
        GPT.from_pretrained(write_config(tmp_path, rope_scaling=rope_scaling))


def test_transformers5_rope_parameters_are_read_too(tmp_path):
    folder = write_config(tmp_path, rope_scaling=None, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4})
    with pytest.raises(UserError, match="'yarn' is not supported"):
        GPT.from_pretrained(folder)


@pytest.mark.parametrize("model_type", ["gemma", "phi3", "olmo", "mixtral"])
def test_unknown_model_type_names_the_supported_ones(tmp_path, model_type):
    with pytest.raises(UserError, match=f"model_type '{model_type}' is not supported; use gpt2, .*llama.*qwen3"):
        GPT.from_pretrained(write_config(tmp_path, model_type=model_type))


def test_other_activation_is_refused(tmp_path):
    with pytest.raises(UserError, match="activation 'gelu' is not supported for llama"):
        GPT.from_pretrained(write_config(tmp_path, hidden_act="gelu"))


def test_sliding_window_on_prompts_longer_than_the_window(tmp_path):
    """Mistral's sliding window (and Qwen's, where use_sliding_window is on) is computed: a prompt longer than
    the window gives transformers' logits, in one pass and through the KV cache."""
    hf = tiny_hf_model("mistral", sliding_window=16, num_hidden_layers=2)
    folder = save_checkpoint(hf, tmp_path / "mistral", legacy=True)
    ours = GPT.from_pretrained(str(folder))
    assert ours.config.sliding_window == 16 and ours.config.local_layers == (True, True)
    assert_matches_transformers(ours, hf, random_ids(T=40))
    qwen = checkpoints.config_from_hf({**json.loads((folder / "config.json").read_text()), "model_type": "qwen2",
                                       "use_sliding_window": True})
    assert qwen["sliding_window"] == 16
