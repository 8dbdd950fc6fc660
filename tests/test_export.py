"""export.py and loading/export_gguf.py: a position-free ActivScalar folded into a GGUF file gives the logits the
scalars give at run time; a control vector is laid out as llama.cpp's reader takes it; a run that cannot be
exported is one line and writes nothing. With --slow and llama_cpp importable: llama.cpp itself reads the files."""

import gguf
import numpy as np
import pytest
import torch
from conftest import save_gguf, tiny_hf_model

import ascale
import export
from gpt2 import GPT
from loading.gguf_format import GGUFFile

# (transformers model type, overrides): biases on the output projections (llama), Gemma 3's post-norms
MODELS = {"llama-biases": ("llama", {"attention_bias": True, "mlp_bias": True}),
          "qwen2": ("qwen2", {}), "gemma3": ("gemma3_text", {"layer_types": None})}


def gguf_model(tmp_path, name, qtype="Q8_0"):
    model_type, overrides = MODELS[name]
    path = save_gguf(tiny_hf_model(model_type, **overrides), tmp_path / f"{name}.gguf", qtype)
    return str(path), GPT.from_pretrained(str(path))


def shared_run(tmp_path, model, method, sites, seed=0, zero_layers=()):
    """A random position-free intervention saved as a run folder; the layers in zero_layers left at 0."""
    iv = ascale.make(method, model.config, sites, None)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in iv.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
            p[list(zero_layers)] = 0
    folder = tmp_path / f"run-{method}-{seed}"
    folder.mkdir()
    ascale.save(folder / ascale.FILE, iv, model=model)
    return folder, iv


def ids(T=20, seed=0):
    return torch.randint(0, 50000, (2, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(MODELS))
def test_the_folded_file_gives_the_logits_of_the_scalars_at_run_time(name, tmp_path, capsys):
    src, model = gguf_model(tmp_path, name)
    folder, iv = shared_run(tmp_path, model, "activscalar", ["head", "attn_out", "mlp_out"])
    out = tmp_path / "folded.gguf"
    assert export.main([str(folder), str(out)]) == 0
    folded = GPT.from_pretrained(str(out))
    with torch.no_grad():
        want, got, plain = model(ids(), intervene=iv), folded(ids()), model(ids())
    assert (want - plain).abs().max() > 0.1                              # the map does something
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
    a, b = GGUFFile(src), GGUFFile(str(out))
    assert a.metadata == b.metadata and [t.name for t in a.tensors] == [t.name for t in b.tensors]
    changed = {t.name for t, u in zip(a.tensors, b.tensors, strict=True)
               if t.tensor_type != u.tensor_type or not np.array_equal(t.data, u.data)}
    assert "wrote" in capsys.readouterr().out
    where = ("attn_output.weight", "post_attention_norm", "post_ffw_norm") if name == "gemma3" else \
        ("attn_output", "ffn_down")                                      # Gemma: its post-norms, not ffn_down
    assert {n.split(".", 2)[2].split(".")[0] for n in changed} == {w.split(".")[0] for w in where}
    for t, u in zip(a.tensors, b.tensors, strict=True):                  # the rest byte for byte, as it was
        assert u.tensor_type == (gguf.GGMLQuantizationType.F32 if t.name in changed else t.tensor_type)


def test_a_scalar_of_1_changes_no_tensor_and_f16_is_close(tmp_path):
    src, model = gguf_model(tmp_path, "qwen2")
    folder, iv = shared_run(tmp_path, model, "activscalar", ["mlp_out"], zero_layers=[0])
    assert export.main([str(folder), str(tmp_path / "f16.gguf"), "--dtype", "F16"]) == 0
    b = GGUFFile(str(tmp_path / "f16.gguf"))
    changed = [t.name for t in b.tensors if t.tensor_type == gguf.GGMLQuantizationType.F16]
    assert changed == ["blk.1.ffn_down.weight"]                          # layer 0's α is 0: untouched
    with torch.no_grad():
        torch.testing.assert_close(GPT.from_pretrained(str(tmp_path / "f16.gguf"))(ids()),
                                   model(ids(), intervene=iv), atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("method,sites", [("steervec", ["resid"]), ("steervec", ["resid", "mlp_out"]),
                                          ("diffmean", ["resid"])])
def test_the_control_vector_holds_what_llama_cpp_reads(method, sites, tmp_path):
    src, model = gguf_model(tmp_path, "llama-biases", "F32")
    folder, iv = shared_run(tmp_path, model, method, sites, zero_layers=[0])
    out = tmp_path / "cv.gguf"
    assert export.main([str(folder), str(out), "--beta", "2"]) == 0
    r = gguf.GGUFReader(str(out))
    assert bytes(r.fields["general.architecture"].parts[-1]).decode() == "controlvector"
    assert [t.name for t in r.tensors] == ["direction.1"]               # layer 0 has none; n_layer = 2
    t = r.tensors[0]
    assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [model.config.n_embd]
    want = 2 * sum(iv.v[s][1].reshape(-1) for s in sites)
    torch.testing.assert_close(torch.from_numpy(np.array(t.data)), want.detach())
    # llama.cpp adds direction.N to layer N's output: our resid of layer N, shifted by the same vector
    h = torch.randn(1, 5, model.config.n_embd)
    iv.beta = 2.0
    torch.testing.assert_close(sum(iv(s, 1, h) - h for s in sites), want.detach().expand(1, 5, -1))


def test_what_cannot_be_exported_is_one_line_and_writes_nothing(tmp_path, capsys):
    src, model = gguf_model(tmp_path, "qwen2", "F32")
    tied = tmp_path / "tied"
    tied.mkdir()
    ascale.save(tied / ascale.FILE, ascale.make("activscalar", model.config, ["mlp_out"], 8), model=model)
    cases = [(tied, "tied to positions"),
             (shared_run(tmp_path, model, "activscalar", ["resid"])[0], "residual stream (resid) does not fold"),
             (shared_run(tmp_path, model, "steervec", ["attn_out"], seed=1)[0], "a vector at attn_out is not"),
             (shared_run(tmp_path, model, "steervec", ["resid"], seed=2)[0], "after layer 0"),
             (shared_run(tmp_path, model, "scaleshift", ["mlp_out"])[0], "this run is scaleshift"),
             (tmp_path / "nowhere", "does not exist")]
    for folder, why in cases:
        capsys.readouterr()
        assert export.main([str(folder), str(tmp_path / "x.gguf")]) == 2
        err = capsys.readouterr().err
        assert why in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["qwen2.gguf"]   # nothing half-written


@pytest.mark.slow
def test_llama_cpp_runs_the_exported_files_as_we_run_the_map(tmp_path):
    """A random position-free map folded into SmolLM2's GGUF file and a random control vector, run by llama.cpp.
    On the file as it is (Q4_1), where llama.cpp quantises activations and so differs from us by about a logit, the
    exported files' last-position logits are as close to ours under the map as the unexported file's are to ours
    without it, while the map moves them far more than that. On an F32 copy of it, where llama.cpp computes in F32
    as we do, every file agrees with ours to 0.05 logit: the export is exact, not only within the noise."""
    pytest.importorskip("llama_cpp", reason="llama_cpp is not importable (.ci/run builds llama-cpp-python)")
    import os

    from benchmarks.llamacpp import agreement, open_llama
    from loading import checkpoints, export_gguf
    from loading.tokenizer import get_tokenizer
    try:
        path = checkpoints.resolve("smollm2")
    except Exception as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(e).splitlines()[0])
    model, tok = GPT.from_pretrained(path), get_tokenizer("smollm2")
    prompts = [tok.encode(t) for t in ("The capital of France is", "I watched the film last night and it was",
                                       "Q: What is two plus two? A:", "Once upon a time, in a small village,")]
    f32 = tmp_path / "f32.gguf"
    export_gguf.dequantized(path, str(f32))                               # every tensor in F32
    g = torch.Generator().manual_seed(0)
    scalars = ascale.make("activscalar", model.config, ["head", "attn_out", "mlp_out"], None)
    vectors = ascale.make("steervec", model.config, ["resid"], None)
    with torch.no_grad():
        for p in scalars.parameters():
            p[3:20:4] = 0.5 * torch.randn(p[3:20:4].shape, generator=g)        # layers 3, 7, 11, 15, 19
        v = torch.randn(model.config.n_embd, generator=g)
        vectors.v["resid"][[5, 15]] = 20 * v / v.norm()       # |resid| there is about 90 and 170
    for iv, name in ((scalars, "folded"), (vectors, "cv")):
        folder = tmp_path / name
        folder.mkdir()
        ascale.save(folder / ascale.FILE, iv, model=model)
    for src in (path, str(f32)):
        base = agreement(open_llama(src), model, prompts, None, tokens=8)
        for iv, name in ((scalars, "folded"), (vectors, "cv")):
            out = tmp_path / f"{name}.gguf"
            assert export.main([str(tmp_path / name), str(out), "--model", src]) == 0
            llm = open_llama(src, cvec=str(out)) if name == "cv" else open_llama(str(out))
            steered = agreement(llm, model, prompts, iv, tokens=8)
            del llm
            out.unlink()
            why = (src, name, steered, base)
            if src == str(f32):
                assert base["max_abs_dlogit_max"] < 0.05 and steered["max_abs_dlogit_max"] < 0.05, why
                assert steered["top_token_agree"] == len(prompts), why
                assert steered["greedy_same"] >= base["greedy_same"], why
                continue
            with torch.no_grad():
                moved = max(float((model(torch.tensor([p]), intervene=iv)[0, -1] - model(torch.tensor([p]))[0, -1])
                                  .abs().max()) for p in prompts)
            assert moved > 3 * base["max_abs_dlogit_max"], why
            assert steered["max_abs_dlogit_max"] <= 1.5 * base["max_abs_dlogit_max"], why
            assert steered["top_token_agree"] >= base["top_token_agree"] - 1, why
            assert steered["greedy_same"] >= base["greedy_same"] - 1, why
    f32.unlink()                                                          # 540 MB


class FakeLlama:
    """What benchmarks.llamacpp reads of a llama_cpp.Llama (reset, eval, scores, n_tokens), computed by our model
    with `bend` applied to its logits: llama.cpp as some function of ours."""

    def __init__(self, model, bend):
        self.model, self.bend, self.tokens = model, bend, []

    def reset(self):
        self.tokens = []

    def eval(self, ids):
        self.tokens += list(ids)
        with torch.no_grad():
            self.scores = self.bend(self.model(torch.tensor([self.tokens]))[0]).numpy()

    @property
    def n_tokens(self):
        return len(self.tokens)


def test_agreement_tells_scale_and_near_ties_from_error(tmp_path):
    from benchmarks.llamacpp import agreement, margins
    _, model = gguf_model(tmp_path, "qwen2", "F32")
    prompts = [p.tolist() for p in ids(T=6, seed=3)]
    same = agreement(FakeLlama(model, lambda x: x), model, prompts, tokens=6, tie=1e9)
    assert same["max_abs_dlogit_max"] < 1e-4 and same["greedy_same"] == 2 and same["margin_at_split"] == []
    assert same["near_tie_steps"] == 2 * 6                                # every step is within 1e9 logits
    scaled = agreement(FakeLlama(model, lambda x: 3 * x), model, prompts, tokens=6)
    with torch.no_grad():
        last = model(torch.tensor(prompts))[:, -1]
    want = 2 * last.abs().amax(-1) / last.std(-1, correction=0)                       # |3x − x| / std(x), per prompt
    assert scaled["dlogit_over_std_max"] == pytest.approx(float(want.max()), rel=1e-4)
    assert scaled["greedy_same"] == 2                                     # a scale changes no choice
    # llama.cpp picks another token wherever our margin is below 0.5: the first such step is where it leaves us
    flip = agreement(FakeLlama(model, lambda x: torch.where(margins(x)[..., None] < 0.5, -x, x)), model, prompts,
                     tokens=6)
    assert flip["greedy_same"] < 2 and len(flip["margin_at_split"]) == 2 - flip["greedy_same"], flip
    assert all(m < 0.5 for m in flip["margin_at_split"]), flip
    assert torch.equal(margins(torch.tensor([[1.0, 3.0, 2.5]])), torch.tensor([0.5]))
