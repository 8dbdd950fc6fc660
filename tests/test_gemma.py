"""gpt2.py's Gemma 2 and Gemma 3 path against transformers, on tiny random checkpoints in the Hub's layout
(config.json as transformers 5 writes it and as the Hub's repos do) and as GGUF files written as llama.cpp's
converter lays them out (norm weights plus 1). Prompts are longer than the sliding window, and Gemma 2's
soft-capping of scores and logits is in play."""

import json

import pytest
import torch
from conftest import (
    assert_knockout_matches_hook,
    assert_matches_transformers,
    save_checkpoint,
    save_gguf,
    tiny_hf_model,
    zero_head_pre_hook,
    zero_output,
)

import gpt2
from gpt2 import GPT, UserError
from loading import checkpoints

WINDOW = 8  # keys a local layer's query sees; the prompts have 24 tokens, the greedy check reaches 25
# name -> (model_type, config overrides). The tiny defaults (conftest) have 4 query heads and 2 key/value heads.
VARIANTS = {
    # small caps, so that both soft-cappings change the result; layers local, global, local (pattern 2)
    "gemma2-softcap": ("gemma2", dict(
        num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=24, sliding_window=WINDOW, attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0, tie_word_embeddings=True)),
    # q/k norms, a local rope base of its own, linear rope scaling on the global layer, an untied unembedding
    "gemma3-rope-local-global": ("gemma3_text", dict(
        num_hidden_layers=4, head_dim=16, query_pre_attn_scalar=24, sliding_window=WINDOW, tie_word_embeddings=False,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}})),
}


def hub_keys(config: dict) -> dict:
    """A transformers-5 config.json rewritten as the Hub's Gemma repos write it: rope_theta (and Gemma 3's
    rope_local_base_freq, rope_scaling) instead of rope_parameters, a sliding_window_pattern, no layer_types."""
    config = dict(config)
    rope, types = config.pop("rope_parameters"), config.pop("layer_types")
    if config["model_type"] == "gemma3_text":
        full, local = rope["full_attention"], rope["sliding_attention"]
        config.update(rope_theta=full["rope_theta"], rope_local_base_freq=local["rope_theta"],
                      sliding_window_pattern=types.index("full_attention") + 1,
                      rope_scaling={"rope_type": "linear", "factor": full["factor"]})
    else:
        config["rope_theta"] = rope["rope_theta"]
    return config


def load_pair(tmp_path, name, legacy=False):
    model_type, overrides = VARIANTS[name]
    hf = tiny_hf_model(model_type, **overrides)
    folder = save_checkpoint(hf, tmp_path / name)
    if legacy:
        (folder / "config.json").write_text(json.dumps(hub_keys(json.loads((folder / "config.json").read_text()))))
    return GPT.from_pretrained(str(folder)), hf


def random_ids(B=2, T=24, seed=0):
    return torch.randint(0, 50000, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("legacy", [False, True], ids=["transformers5-keys", "hub-keys"])
@pytest.mark.parametrize("name", VARIANTS)
def test_logits_and_greedy_tokens_match_transformers(tmp_path, name, legacy):
    """Logits on 24 tokens (window 8), and 20 greedy tokens through the KV cache, equal transformers'."""
    ours, hf = load_pair(tmp_path, name, legacy)
    assert_matches_transformers(ours, hf, random_ids())


def test_config_switches(tmp_path):
    g2, g3 = (load_pair(tmp_path, name)[0].config for name in VARIANTS)
    for c in (g2, g3):
        assert c.norm_plus_one and c.post_norms and c.scale_embeddings and c.geglu and c.rms_norm and not c.swiglu
        assert c.attn_scale == 24 and c.head_dim == 16 and c.sliding_window == WINDOW and c.n_kv_head == 2
    assert g2.local_layers == (True, False, True) and (g2.attn_softcap, g2.final_softcap) == (2.0, 3.0)
    assert not g2.qk_norm and g2.rotary_base_local == 0 and g2.tie_embeddings
    assert g3.local_layers == (True, True, False, True) and (g3.attn_softcap, g3.final_softcap) == (0, 0)
    assert g3.qk_norm and g3.rotary_base_local == 100 and g3.rope_linear == 4 and not g3.tie_embeddings


def test_what_the_tests_rely_on_is_in_play(tmp_path):
    """Soft-capping changes Gemma 2's logits, the window changes both models', the local rope base Gemma 3's."""
    import dataclasses
    idx = random_ids()
    for name, switches in (("gemma2-softcap", ("attn_softcap", "final_softcap", "sliding_window")),
                           ("gemma3-rope-local-global", ("sliding_window", "rotary_base_local", "rope_linear"))):
        ours, _ = load_pair(tmp_path, name)
        for switch in switches:
            off = GPT(dataclasses.replace(ours.config, **{switch: 1.0 if switch == "rope_linear" else 0}))
            off.load_state_dict(ours.state_dict())
            assert (off(idx) - ours(idx)).abs().max() > 1e-3, (name, switch)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("site", ["attn_out", "mlp_out", "head", "resid"])
def test_zeroing_a_site_matches_a_transformers_hook(tmp_path, name, site):
    """attn_out and mlp_out are read after the post-norms (what is added to the residual): a hook zeroes
    post_attention_layernorm / post_feedforward_layernorm; head: a pre-hook on o_proj zeroes one head's slice."""
    ours, hf = load_pair(tmp_path, name)
    layer, head, hs = 1, 3, ours.config.head_dim
    block = hf.model.layers[layer]
    if site == "head":
        handle = block.self_attn.o_proj.register_forward_pre_hook(zero_head_pre_hook(head, hs))
    else:
        module = {"attn_out": block.post_attention_layernorm, "mlp_out": block.post_feedforward_layernorm,
                  "resid": block}[site]
        handle = module.register_forward_hook(zero_output)
    assert_knockout_matches_hook(ours, hf, handle, random_ids(), site, layer, head)


def test_scaling_attn_out_is_not_undone_by_the_post_norm(tmp_path):
    """ActivScalar's h·(1 + α) at attn_out changes the output; the same scale before the post-norm would not."""
    ours, _ = load_pair(tmp_path, "gemma3-rope-local-global")
    idx = random_ids()
    scaled = ours(idx, intervene=lambda s, l, h: h * 1.5 if (s, l) == ("attn_out", 1) else h)
    assert (scaled - ours(idx)).abs().max() > 1e-3
    handle = ours.h[1].attn.c_proj.register_forward_hook(lambda module, inputs, out: out * 1.5)  # before ln_1_post
    try:
        before_the_norm = ours(idx)
    finally:
        handle.remove()
    torch.testing.assert_close(before_the_norm, ours(idx), atol=1e-4, rtol=0)


def test_logits_at_chosen_positions(tmp_path):
    ours, _ = load_pair(tmp_path, "gemma2-softcap")
    idx, at = random_ids(B=3), torch.tensor([23, 3, 12])
    torch.testing.assert_close(ours(idx, at=at), ours(idx)[torch.arange(3), at], atol=1e-5, rtol=0)


def test_a_multimodal_gemma3_checkpoint_is_refused_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": {}}))
    with pytest.raises(UserError, match="multimodal Gemma 3 checkpoint") as e:
        GPT.from_pretrained(str(tmp_path))
    assert "\n" not in str(e.value)


def test_unsupported_activation_and_rope_scaling_are_refused(tmp_path):
    hf = tiny_hf_model("gemma3_text", head_dim=16)
    config = hf.config.to_dict()
    with pytest.raises(UserError, match="activation 'gelu' is not supported for gemma3_text"):
        checkpoints.config_from_hf({**config, "hidden_activation": "gelu"})
    with pytest.raises(UserError, match="rotary scaling 'yarn' is not supported for gemma3_text"):
        checkpoints.config_from_hf({**config, "rope_parameters": {"full_attention": {"rope_type": "yarn"}}})


# ----------------------------------------------------------------------------- GGUF

# transformers' GGUF reader takes query_pre_attn_scalar 256, Gemma 2's soft-caps 50 and 30 and the layer
# patterns (2, 6) from its defaults, as llama.cpp does; so do these models.
GGUF_VARIANTS = {
    "gemma2": ("gemma2", dict(head_dim=256, sliding_window=WINDOW)),
    "gemma3": ("gemma3_text", dict(head_dim=256, sliding_window=WINDOW, num_hidden_layers=6, tie_word_embeddings=True,
                                   rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                                    "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})),
}


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
@pytest.mark.parametrize("name", GGUF_VARIANTS)
def test_gguf_logits_match_transformers(tmp_path, name, qtype):
    import transformers
    model_type, overrides = GGUF_VARIANTS[name]
    hf = tiny_hf_model(model_type, **overrides)
    path = save_gguf(hf, tmp_path / f"{name}.gguf", qtype)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name,
                                                               dtype=torch.float32).eval()
    ours = GPT.from_pretrained(str(path))
    idx = random_ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), theirs(idx).logits, atol=1e-4, rtol=0)
    cfg = ours.config
    assert cfg.model_type == model_type and cfg.sliding_window == WINDOW and cfg.attn_scale == 256
    if name == "gemma2":
        assert cfg.local_layers == (True, False) and (cfg.attn_softcap, cfg.final_softcap) == (50, 30)
    else:
        assert cfg.local_layers == (True,) * 5 + (False,) and cfg.qk_norm and cfg.rotary_base_local == 1e4


def test_gguf_equals_the_hub_checkpoint_it_came_from(tmp_path):
    """The same model from its GGUF file (norm weights stored plus 1) and from its Hub files: the same
    config and, up to float32 rounding of w + 1 - 1, the same tensors."""
    model_type, overrides = GGUF_VARIANTS["gemma3"]
    hf = tiny_hf_model(model_type, **overrides, query_pre_attn_scalar=256)
    from_gguf = GPT.from_pretrained(str(save_gguf(hf, tmp_path / "m.gguf")))
    from_hub = GPT.from_pretrained(str(save_checkpoint(hf, tmp_path / "hub")))
    a, b = from_gguf.state_dict(), from_hub.state_dict()
    assert set(a) == set(b) and any(k.endswith("ln_2_post.weight") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    fields = {f: getattr(from_gguf.config, f) for f in ("local_layers", "attn_scale", "rotary_base_local", "head_dim")}
    assert fields == {f: getattr(from_hub.config, f) for f in fields}


def test_gguf_rope_scaling_it_does_not_know_is_refused(tmp_path):
    meta = {"general.architecture": "gemma3", "gemma3.rope.scaling.type": "yarn", "gemma3.embedding_length": 64,
            "gemma3.attention.head_count": 4, "gemma3.block_count": 2}
    with pytest.raises(UserError, match="rotary scaling 'yarn' is not supported"):
        checkpoints.config_from_gguf(meta, type("R", (), {"tensors": []})(), "x.gguf")


def test_rope_frequencies_of_local_and_global_layers():
    cfg = gpt2.GPTConfig(n_embd=64, n_head=4, rotary_dim=16, rotary_base=1e4, rotary_base_local=100.0, rope_linear=4.0)
    base = torch.arange(0, 16, 2).float() / 16
    torch.testing.assert_close(gpt2.rope_frequencies(cfg, "cpu"), 1e4 ** -base / 4)
    torch.testing.assert_close(gpt2.rope_frequencies(cfg, "cpu", local=True), 100.0 ** -base)
