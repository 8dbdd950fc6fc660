"""gpt2.py against transformers (the numerical oracle) on tiny random checkpoints in the Hub's layout."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import (
    ROOT,
    assert_knockout_matches_hook,
    assert_matches_transformers,
    save_checkpoint,
    tiny_hf_model,
    zero_head_pre_hook,
    zero_output,
)

import gpt2
from gpt2 import GPT, UserError

GPT2_VARIANTS = {
    "gpt2": {},
    "gpt2-n_inner-5heads": {"n_inner": 70, "n_head": 5, "n_embd": 40},
}
NEOX_VARIANTS = {
    "neox-rot0.25-parallel": {},
    "neox-rot1.0-sequential": {"use_parallel_residual": False, "rope_parameters":
                               {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0}},
    "neox-rot0.5-base500-5heads": {"num_attention_heads": 5, "hidden_size": 40, "rope_parameters":
                                   {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5}},
    "neox-tied": {"tie_word_embeddings": True},
}
VARIANTS = [("gpt2", k, v) for k, v in GPT2_VARIANTS.items()] + [("gpt_neox", k, v) for k, v in NEOX_VARIANTS.items()]


def load_pair(tmp_path, model_type, overrides, **layout):
    hf = tiny_hf_model(model_type, **overrides)
    folder = save_checkpoint(hf, tmp_path / "ckpt", **layout)
    return GPT.from_pretrained(str(folder)), hf


def random_ids(B=2, T=17, seed=0):
    return torch.randint(0, 50000, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("model_type,name,overrides", VARIANTS, ids=[v[1] for v in VARIANTS])
def test_logits_and_greedy_tokens_match_transformers(tmp_path, model_type, name, overrides):
    ours, hf = load_pair(tmp_path, model_type, overrides)
    assert_matches_transformers(ours, hf, random_ids())


def test_old_style_neox_config_keys(tmp_path):
    """Pythia's Hub config.json says rotary_pct / rotary_emb_base, not rope_parameters."""
    ours, hf = load_pair(tmp_path, "gpt_neox", NEOX_VARIANTS["neox-rot0.5-base500-5heads"])
    path = tmp_path / "ckpt" / "config.json"
    cfg = json.loads(path.read_text())
    del cfg["rope_parameters"]
    cfg.update(rotary_pct=0.5, rotary_emb_base=500)
    path.write_text(json.dumps(cfg))
    again = GPT.from_pretrained(str(tmp_path / "ckpt"))
    assert again.config.rotary_dim == 4 and again.config.rotary_base == 500
    idx = random_ids()
    torch.testing.assert_close(again(idx), hf(idx).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("layout", [{"hub_quirks": True}, {"shards": True}, {"bin_only": True}],
                         ids=["hub-quirks", "sharded", "pytorch_model.bin"])
@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neox"])
def test_checkpoint_layouts(tmp_path, model_type, layout):
    ours, hf = load_pair(tmp_path, model_type, {}, **layout)
    idx = random_ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-4, rtol=0)


def test_loaded_model_is_frozen_fp32_eval(tiny_gpt2):
    model = GPT.from_pretrained(str(tiny_gpt2[0]))
    assert not model.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())
    assert model.lm_head.weight is model.wte.weight


def test_logits_at_chosen_positions(tiny_pythia):
    model = GPT.from_pretrained(str(tiny_pythia[0]))
    idx, at = random_ids(B=3), torch.tensor([16, 3, 9])
    full = model(idx)
    torch.testing.assert_close(model(idx, at=at), full[torch.arange(3), at])


def test_hub_id_from_a_prepopulated_cache(tmp_path, tiny_gpt2):
    """A user's second run: the files sit in the Hugging Face cache and HF_HUB_OFFLINE=1."""
    folder, hf = tiny_gpt2
    hub = tmp_path / "hf_home" / "hub"
    commit = "0" * 40
    repo = hub / "models--tiny-org--tiny-gpt2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    code = ("import torch, gpt2; m = gpt2.GPT.from_pretrained('tiny-org/tiny-gpt2');"
            "print(m(torch.arange(10)[None])[0, -1, :5].tolist())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    expected = hf(torch.arange(10)[None]).logits[0, -1, :5]
    torch.testing.assert_close(torch.tensor(json.loads(out.stdout)), expected, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- sites

def hf_blocks(hf):
    return hf.transformer.h if hf.config.model_type == "gpt2" else hf.gpt_neox.layers


@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neox"])
@pytest.mark.parametrize("site", ["attn_out", "mlp_out", "head", "resid"])
def test_zeroing_a_site_matches_a_transformers_hook(tmp_path, model_type, site):
    ours, hf = load_pair(tmp_path, model_type, {})
    layer, head, hs = 1, 1, ours.config.n_embd // ours.config.n_head
    block = hf_blocks(hf)[layer]

    if site == "head":  # zero that head's slice of the output projection's input
        proj = block.attn.c_proj if model_type == "gpt2" else block.attention.dense
        handle = proj.register_forward_pre_hook(zero_head_pre_hook(head, hs))
    else:
        module = {"attn_out": block.attn if model_type == "gpt2" else block.attention,
                  "mlp_out": block.mlp, "resid": block}[site]
        handle = module.register_forward_hook(zero_output)
    idx = random_ids()
    assert_knockout_matches_hook(ours, hf, handle, idx, site, layer, head)


@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neox"])
def test_sites_are_called_in_forward_order_with_their_shapes(tmp_path, model_type):
    ours, _ = load_pair(tmp_path, model_type, {})
    seen = []
    ours(random_ids(B=2, T=7), intervene=lambda s, l, h: seen.append((s, l, tuple(h.shape))) or h)
    D, nh = ours.config.n_embd, ours.config.n_head
    shape = {"head": (2, 7, nh, D // nh), "attn_out": (2, 7, D), "mlp_out": (2, 7, D), "resid": (2, 7, D)}
    assert seen == [(s, l, shape[s]) for l in range(ours.config.n_layer) for s in gpt2.SITES]


def test_scaling_by_one_changes_nothing_and_gradients_reach_only_the_scalars(tiny_pythia):
    model = GPT.from_pretrained(str(tiny_pythia[0]))
    n = model.config.n_layer
    scalars = {s: torch.ones(n, requires_grad=True) for s in gpt2.SITES}
    idx = random_ids()
    out = model(idx, intervene=lambda s, l, h: h * scalars[s][l])
    torch.testing.assert_close(out, model(idx), atol=1e-6, rtol=0)
    out[:, -1].logsumexp(-1).sum().backward()
    for s, a in scalars.items():
        assert a.grad is not None and (a.grad != 0).all(), s
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- bad input

def test_unknown_model_offline_names_the_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="not in the Hugging Face cache .*empty-cache.*run once with network"
                                        ".*offline: --model smollm2.*--model toyworld"):
        GPT.from_pretrained("EleutherAI/pythia-70m", revision="step1000")


def test_invalid_model_name():
    with pytest.raises(UserError, match="unknown model"):
        GPT.from_pretrained("not a/valid//name")


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma"}))
    with pytest.raises(UserError, match="model_type 'gemma' is not supported"):
        GPT.from_pretrained(str(tmp_path))


def test_folder_without_config(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        GPT.from_pretrained(str(tmp_path))


def test_prompt_longer_than_context(tiny_gpt2):
    model = GPT.from_pretrained(str(tiny_gpt2[0]))
    with pytest.raises(UserError, match="65 tokens but the model reads at most 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_missing_tensor_is_named(tmp_path, tiny_gpt2):
    from safetensors.torch import load_file, save_file
    folder = tiny_gpt2[0]
    state = load_file(folder / "model.safetensors")
    del state["transformer.h.1.mlp.c_fc.bias"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(UserError, match="missing tensor 'h.1.mlp.c_fc.bias'"):
        GPT.from_pretrained(str(folder))


def test_no_weights(tmp_path, tiny_gpt2):
    (tiny_gpt2[0] / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no weights we can read"):
        GPT.from_pretrained(str(tiny_gpt2[0]))


def test_pickled_objects_are_refused(tmp_path, tiny_gpt2):
    folder = tiny_gpt2[0]
    (folder / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1), "evil": print}, folder / "pytorch_model.bin")
    with pytest.raises(UserError, match="will not be unpickled"):
        GPT.from_pretrained(str(folder))


@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neox"])
def test_last_layer_at_read_positions_only(tmp_path, model_type):
    """With `at` and a position-aware intervention, the last layer runs at the read rows only:
    same logits and same gradients as the full pass, for per-row positions and every site."""
    ours, _ = load_pair(tmp_path, model_type, {})
    idx, at = random_ids(B=3), torch.tensor([16, 3, 9])
    n, T, nh = ours.config.n_layer, idx.shape[1], ours.config.n_head
    scalars = {s: torch.randn(n, T, *((nh,) if s == "head" else ()), requires_grad=True) for s in gpt2.SITES}

    def full(s, l, h):  # a plain function: the model shows it every position
        return h * (1 + scalars[s][l]).unsqueeze(-1)

    class Rows:
        takes_positions = True
        seen = []

        def __call__(self, s, l, h, pos=None):
            self.seen.append((s, l, h.shape[1]))
            a = scalars[s][l] if pos is None else scalars[s][l][pos]  # pos (B, 1): row b at pos[b, 0]
            return h * (1 + a).unsqueeze(-1)

    rows = Rows()
    expected = ours(idx, intervene=full, at=at)
    grads = torch.autograd.grad(expected.logsumexp(-1).sum(), list(scalars.values()))
    got = ours(idx, intervene=rows, at=at)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    for g, e in zip(torch.autograd.grad(got.logsumexp(-1).sum(), list(scalars.values())), grads, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=0)
    assert {t for s, l, t in rows.seen if l == n - 1} == {1} and {t for s, l, t in rows.seen if l < n - 1} == {T}
    torch.testing.assert_close(ours(idx, at=at), ours(idx)[torch.arange(3), at], atol=1e-5, rtol=0)
