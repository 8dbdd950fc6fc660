"""Position-free interventions (train.py --positions shared; ascale.Intervention's `shared`): one parameter per
(site, layer[, head]) read by every position of a prompt of any length, generated tokens included; on a tiny
random GPT-2 and on the toy world."""

import json
from pathlib import Path

import pytest
import torch
from conftest import save_checkpoint, tiny_hf_model

import ascale
import evaluate
import metrics
import train
from gpt2 import GPT, UserError
from tasks import PromptSet

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "models" / "toyworld")
X, Y = 6342, 11307  # two answer tokens of GPT-2's vocabulary


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return GPT.from_pretrained(str(save_checkpoint(tiny_hf_model("gpt2"), tmp_path_factory.mktemp("ckpt") / "gpt2")))


def randomised(model, method, sites=("head", "attn_out", "mlp_out", "resid"), seed=0):
    iv = ascale.make(method, model.config, sites, None)           # positions=None: position-free
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in iv.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return iv


def mixed_prompts(N=12, seed=1) -> PromptSet:
    """N random prompts of 5 to 10 tokens, right-padded, answers X and Y swapped on every second prompt."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 11, (N,), generator=g)
    ids = torch.randint(0, 50257, (N, int(lengths.max())), generator=g)
    c, w = torch.full((N,), X), torch.full((N,), Y)
    c[1::2], w[1::2] = Y, X
    return PromptSet([""] * N, ids, lengths - 1, c, w, [["t"] * int(lengths.max())] * N, [""] * N, [""] * N)


def test_one_parameter_per_site_and_layer_shared_by_every_position(model):
    L, nh = model.config.n_layer, model.config.n_head
    a = ascale.make("activscalar", model.config, ["head", "mlp_out"], None)
    s = ascale.make("steervec", model.config, ["resid"], None)
    assert a.shared and not a.tied_to_positions and a.positions is None and s.shared
    assert a.alpha["head"].shape == (L, 1, nh) and a.alpha["mlp_out"].shape == (L, 1)
    assert s.v["resid"].shape == (L, 1, model.config.n_embd)
    assert not ascale.make("activscalar", model.config, ["mlp_out"], 8).shared   # tied stays the default
    assert not ascale.make("dynscalar", model.config, ["mlp_out"]).shared        # free by nature, not shared


@pytest.mark.parametrize("T", [3, 11])
def test_activscalar_and_steervec_act_the_same_on_every_position_of_any_length(model, T):
    a, s = randomised(model, "activscalar"), randomised(model, "steervec")
    for site, shape in (("mlp_out", (2, T, 48)), ("head", (2, T, 3, 16))):
        h = torch.randn(*shape)
        alpha, v = a.alpha[site][1, 0], s.v[site][1, 0]                  # () or (nh,); (D,) or (nh, hs)
        assert torch.allclose(a(site, 1, h), h * (1 + alpha).unsqueeze(-1))
        assert torch.allclose(s(site, 1, h), h + v)
        pos = torch.arange(T)[None] + 5                                  # a KV-cached pass: pos is not read
        assert torch.equal(a(site, 1, h, pos), a(site, 1, h))
    assert model(torch.randint(0, 50257, (1, T)), intervene=a).shape[1] == T   # no length is refused


@pytest.mark.parametrize("method", ["activscalar", "steervec", "scaleshift", "diffmean"])
def test_a_fresh_one_changes_nothing_and_generation_steers_every_token(model, method):
    ids = torch.randint(0, 50257, (2, 6), generator=torch.Generator().manual_seed(3))
    fresh = ascale.make(method, model.config, ["attn_out", "resid"], None)
    assert torch.equal(model(ids, intervene=fresh), model(ids))
    iv = randomised(model, method, ["attn_out", "resid"])
    out = model.generate(ids, 6, intervene=iv)                      # KV cache: the new token's pass alone
    seq = ids
    for _ in range(6):                                              # greedy, the whole sequence steered each time
        seq = torch.cat([seq, model(seq, intervene=iv)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq) and not torch.equal(out, model.generate(ids, 6))
    assert iv.for_generation() is iv


def test_diffmean_shared_adds_its_vector_at_every_position(model):
    iv = randomised(model, "diffmean", ["resid"])
    h = torch.randn(2, 7, 48)
    assert torch.allclose(iv("resid", 0, h), h + iv.v["resid"][0])


def test_trains_on_prompts_of_many_lengths_and_round_trips(model, tmp_path):
    ps = mixed_prompts()
    batch = ascale.prepare(model, ps, X)                              # one-sided: X on every prompt
    iv = ascale.make("activscalar", model.config, ["attn_out", "mlp_out"], None)
    ascale.fit(model, iv, batch, steps=60, lr=0.1, lambda_m=1e-3, progress=False)
    before = metrics.evaluate(model, iv, batch)
    assert before["flip_rate"] >= 0.75
    ascale.save(tmp_path / ascale.FILE, iv, model=model, task="t.jsonl")
    loaded, meta = ascale.load(tmp_path / ascale.FILE, model)
    assert meta["positions"] == "" and loaded.shared and metrics.evaluate(model, loaded, batch) == before


def test_a_method_that_cannot_share_is_one_line(model):
    class Mine(ascale.Intervention):                                # tied, and not shareable
        def __init__(self, cfg, sites, positions):
            super().__init__(cfg, sites, positions)
    with pytest.raises(UserError, match="cannot share them"):
        ascale.make(Mine, model.config, ["resid"], None)


def test_train_and_evaluate_end_to_end_on_the_toy_world(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(["--model", TOY, "--task", "ccc", "--positions", "shared", "--sites", "head,mlp_out",
                       "--steps", "3", "--refit-steps", "1", "--out", str(out), "--generate", "4"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    meta = ascale.read_metadata(out / ascale.FILE)
    assert meta["positions"] == "" and meta["fixed_length"] == "0" and m["config"]["positions"] == "shared"
    assert m["n_params"] == 4 * 4 + 4                               # head: 4 layers x 4 heads; mlp_out: 4 layers
    assert (out / "heatmap.png").is_file()
    capsys.readouterr()
    assert evaluate.main([str(out / ascale.FILE)]) == 0
    assert f"{m['test']['flip_rate']:.2f}" in capsys.readouterr().out
    assert train.main(["--model", TOY, "--task", "ccc", "--positions", "shared", "--knockout",
                       "--out", str(tmp_path / "k")]) == 2
    assert "--knockout needs prompts of one length" in capsys.readouterr().err
