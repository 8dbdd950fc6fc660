"""ascale.py on a tiny random GPT-2 (and Pythia): interventions, objective, training, metrics, files."""

import pytest
import torch
from conftest import save_checkpoint, tiny_hf_model
from safetensors.torch import load_file

import ascale
import metrics
import scaleshift
import selection
from gpt2 import GPT, GPTConfig, UserError
from tasks import PromptSet

X, Y = 6342, 11307  # " Paris", " Berlin" in GPT-2's vocabulary: the two answers of the test prompts
FAST = dict(steps=50, lr=0.1, batch_size=8, lambda_m=1e-3, progress=False)  # enough for the tiny model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = save_checkpoint(tiny_hf_model("gpt2"), tmp_path_factory.mktemp("ckpt") / "tiny-gpt2")
    return GPT.from_pretrained(str(folder))


def prompts(N=8, T=8, seed=1, swap=False) -> PromptSet:
    """N random prompts of T tokens, all with correct X and wrong Y (swap: the second half the
    other way round, so that `flip` turns some correct answers wrong and some wrong ones correct).
    With seed 1 the tiny model ranks X above Y on every prompt."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50257, (N, T), generator=g)
    c, w = torch.full((N,), X), torch.full((N,), Y)
    if swap:
        c[N // 2:], w[N // 2:] = Y, X
    return PromptSet([""] * N, ids, torch.full((N,), T - 1), c, w, [["tok"] * T] * N, [" Paris"] * N, [" Berlin"] * N)


def trained(model, method="activscalar", target="flip", sites=("attn_out", "mlp_out"), ps=None, **kw):
    ps = ps or prompts(swap=target == "flip")
    batch = ascale.prepare(model, ps, target)
    iv = ascale.make(method, model.config, sites, ps.ids.shape[1])
    curve = ascale.fit(model, iv, batch, **{**FAST, **kw})
    return iv, batch, curve


# ----------------------------------------------------------------------------- interventions


@pytest.mark.parametrize("method", ascale.METHODS)
@pytest.mark.parametrize("sites", [("head",), ("attn_out", "mlp_out"), ("resid",)])
def test_a_fresh_intervention_changes_nothing(model, method, sites):
    ps = prompts()
    iv = ascale.make(method, model.config, sites, ps.ids.shape[1])
    assert torch.equal(model(ps.ids, intervene=iv), model(ps.ids))


def test_parameter_shapes(model):
    L, nh, D, T = 2, 3, 48, 8
    a = ascale.make("activscalar", model.config, ["head", "mlp_out"], T)
    assert a.alpha["head"].shape == (L, T, nh) and a.alpha["mlp_out"].shape == (L, T)
    s = ascale.make("steervec", model.config, ["head", "mlp_out"], T)
    assert s.v["head"].shape == (L, T, nh, D // nh) and s.v["mlp_out"].shape == (L, T, D)
    d = ascale.make("dynscalar", model.config, ["head", "mlp_out"])
    assert d.w["head"].shape == (L, nh, D // nh) and d.b["head"].shape == (L, nh)
    assert d.w["mlp_out"].shape == (L, D) and d.b["mlp_out"].shape == (L,)
    assert ascale.n_params(a) == L * T * (nh + 1)


def by_hand(alpha: dict, beta: float):
    """h·(1 + β·α) written out, one location at a time."""
    def fn(site, layer, h):
        if site not in alpha:
            return h
        h = h.clone()
        for i in range(h.shape[1]):
            h[:, i] = h[:, i] * (1 + beta * alpha[site][layer, i]).unsqueeze(-1)
        return h
    return fn


@pytest.mark.parametrize("beta", [1.0, -1.0, 2.5])
def test_activscalar_is_h_times_one_plus_beta_alpha(model, beta):
    ps = prompts()
    iv = ascale.make("activscalar", model.config, ["head", "mlp_out"], 8)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in iv.parameters():
            p.normal_()
    iv.beta = beta
    want = model(ps.ids, intervene=by_hand({s: a.detach() for s, a in iv.alpha.items()}, beta))
    torch.testing.assert_close(model(ps.ids, intervene=iv), want)


def test_steervec_adds_beta_v_and_dynscalar_probes_the_direction(model):
    h = torch.randn(2, 8, 48)
    sv = ascale.make("steervec", model.config, ["mlp_out"], 8)
    dyn = ascale.make("dynscalar", model.config, ["mlp_out"])
    with torch.no_grad():
        sv.v["mlp_out"].normal_()
        dyn.w["mlp_out"].normal_()
        dyn.b["mlp_out"].fill_(0.5)
    sv.beta = dyn.beta = 0.5
    torch.testing.assert_close(sv("mlp_out", 1, h), h + 0.5 * sv.v["mlp_out"][1])
    alpha = (h / h.norm(dim=-1, keepdim=True)) @ dyn.w["mlp_out"][1] + 0.5   # (2, 8)
    torch.testing.assert_close(dyn("mlp_out", 1, h), h * (1 + 0.5 * alpha)[..., None])
    torch.testing.assert_close(dyn("mlp_out", 1, 3 * h), 3 * dyn("mlp_out", 1, h))  # α ignores the norm
    assert torch.equal(sv("attn_out", 1, h), h)                                     # other sites untouched


def test_scaleshift_scales_and_shifts_its_location_only(model):
    """h̃ = h·(1 + β·α) + β·v where α and v are set, h everywhere else; all zero: the unchanged model."""
    iv = ascale.make("scaleshift", model.config, ["head", "mlp_out"], 8)
    h, hh = torch.randn(2, 8, 48), torch.randn(2, 8, 3, 16)                  # mlp_out (B, T, D), head (B, T, nh, hs)
    assert torch.equal(iv("mlp_out", 1, h), h) and torch.equal(iv("head", 1, hh), hh)   # α = 0, v = 0
    v, vh = torch.randn(48), torch.randn(16)
    with torch.no_grad():
        iv.alpha["mlp_out"][1, 3], iv.v["mlp_out"][1, 3] = 0.7, v
        iv.alpha["head"][0, 2, 1], iv.v["head"][0, 2, 1] = -1.0, vh         # head 1 at position 2 of layer 0
    iv.beta = 0.5
    want = h.clone()
    want[:, 3] = h[:, 3] * (1 + 0.5 * 0.7) + 0.5 * v
    torch.testing.assert_close(iv("mlp_out", 1, h), want)
    want = hh.clone()
    want[:, 2, 1] = hh[:, 2, 1] * 0.5 + 0.5 * vh
    torch.testing.assert_close(iv("head", 0, hh), want)
    assert torch.equal(iv("mlp_out", 0, h), h) and torch.equal(iv("attn_out", 1, h), h)  # other layers and sites
    pos = torch.tensor([[3], [5]])                                          # KV-cached rows: each its position's
    torch.testing.assert_close(iv("mlp_out", 1, h[:, :1], pos)[0, 0], h[0, 0] * 1.35 + 0.5 * v)
    assert torch.equal(iv("mlp_out", 1, h[:, :1], pos)[1], h[1, :1])


def test_scaleshift_gradients_reach_its_parameters_only(model):
    ps = prompts()
    iv = ascale.make("scaleshift", model.config, ["attn_out", "mlp_out"], 8)
    loss, _ = ascale.objective(model, iv, ascale.prepare(model, ps, "wrong"))
    loss.backward()
    assert not any(p.requires_grad or p.grad is not None for p in model.parameters())
    assert [n for n, _ in iv.named_parameters()] == ["alpha.attn_out", "alpha.mlp_out", "v.attn_out", "v.mlp_out"]
    assert all(p.grad.abs().sum() > 0 for p in iv.parameters())             # both α and v learn


def test_scaleshift_ranks_a_location_by_alpha_and_its_share_of_the_largest_shift(model):
    iv = ascale.make("scaleshift", model.config, ["attn_out", "mlp_out"], 8)
    with torch.no_grad():
        iv.alpha["attn_out"][0, 1] = -0.3
        iv.v["mlp_out"][1, 2, 0], iv.v["mlp_out"][1, 4, 0] = 4.0, 0.1      # ‖v‖ 4 (the largest) and 0.1
    effect = iv.effect()
    assert effect["attn_out"][0, 1] == pytest.approx(0.3)
    assert effect["mlp_out"][1, 2] == pytest.approx(1.0) and effect["mlp_out"][1, 4] == pytest.approx(0.025)
    assert selection.n_units(iv) == 2                                      # 0.025 < ACTIVE: not noticeable
    assert iv.signed and iv.tied_to_positions and iv.measure.startswith("|alpha|")


def test_methods_are_registered_by_their_classes():
    classes = (ascale.ActivScalar, ascale.SteerVec, ascale.DynScalar, scaleshift.ScaleShift)
    assert ascale.METHODS == {c.method: c for c in classes}
    assert all(c.about and c.measure and c.map_label for c in classes)


def test_unknown_method_or_site():
    with pytest.raises(UserError, match="unknown method 'scale'.*activscalar"):
        ascale.make("scale", GPTConfig(), ["mlp_out"], 4)
    with pytest.raises(UserError, match="unknown site 'mlp'.*mlp_out"):
        ascale.make("activscalar", GPTConfig(), ["mlp"], 4)


@pytest.mark.parametrize("method", ["activscalar", "steervec", "scaleshift"])
def test_position_tied_methods_refuse_another_length(model, method):
    iv = ascale.make(method, model.config, ["mlp_out"], 8)
    with pytest.raises(UserError, match="8 positions.*6-token.*dynscalar"):
        model(prompts(T=6).ids, intervene=iv)


# ----------------------------------------------------------------------------- generation


def randomised(model, method, sites=("head", "attn_out", "mlp_out"), T=8, seed=0):
    """An intervention with random parameters, large enough to change what the model says."""
    iv = ascale.make(method, model.config, sites, T)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in iv.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return iv


@pytest.mark.parametrize("method", ascale.METHODS)
def test_generation_at_beta_0_is_plain_generation(model, method):
    ids = prompts(N=3).ids                                           # (3, 8)
    iv = randomised(model, method)
    plain = model.generate(ids, 12)
    assert not torch.equal(model.generate(ids, 12, intervene=iv), plain)  # the intervention does something
    iv.beta = 0.0
    assert torch.equal(model.generate(ids, 12, intervene=iv), plain)


class Recorder:
    """Wraps what an intervention gives GPT.generate; records (site, layer, h in, h out, pos) at its sites."""

    def __init__(self, iv):
        self.iv, self.calls = iv, []

    def for_generation(self):
        inner = self.iv.for_generation()

        def record(site, layer, h, pos=None):
            out = inner(site, layer, h, pos)
            if site in self.iv.sites:
                self.calls.append((site, layer, h, out, pos))
            return out
        record.takes_positions = True  # as ascale's own: GPT.generate may use its KV cache
        return record


@pytest.mark.parametrize("method", ["activscalar", "steervec", "scaleshift"])
def test_position_tied_generation_leaves_the_generated_positions_untouched(model, method):
    ids, P = prompts(N=2).ids, 8
    iv = randomised(model, method)
    rec = Recorder(iv)
    out = model.generate(ids, 5, intervene=rec)
    assert out.shape == (2, 13) and torch.equal(out[:, :P], ids)
    prompt = [c for c in rec.calls if c[4] is None]                    # the prompt's pass, then one per new token
    assert prompt and {h.shape[1] for _, _, h, _, _ in prompt} == {P}
    for site, layer, h, h_out, _ in prompt:
        assert torch.equal(h_out, iv(site, layer, h))                  # the prompt is steered as in training
        assert not torch.equal(h_out, h)
    steps = [c for c in rec.calls if c[4] is not None]
    assert {(h.shape[1], int(pos)) for _, _, h, _, pos in steps} == {(1, t) for t in range(P, P + 4)}
    assert all(torch.equal(h_out, h) for _, _, h, h_out, _ in steps)  # generated positions pass through
    h = torch.randn(2, P + 3, model.config.n_embd)                     # without the cache: the whole sequence
    h_out = iv.for_generation()("mlp_out", 1, h)
    assert torch.equal(h_out[:, :P], iv("mlp_out", 1, h[:, :P])) and torch.equal(h_out[:, P:], h[:, P:])
    with pytest.raises(UserError, match="8 positions.*13-token"):    # training and evaluation still refuse
        model(out, intervene=iv)


def test_dynscalar_generation_acts_on_every_position(model):
    ids = prompts(N=2).ids
    rec = Recorder(randomised(model, "dynscalar"))
    model.generate(ids, 4, intervene=rec)
    assert rec.calls and all(not torch.equal(h_out[:, -1], h[:, -1]) for _, _, h, h_out, _ in rec.calls)  # newest too


def test_generation_under_an_intervention_must_fit_the_context(model):
    ids = prompts(N=1).ids                                            # 8 tokens; the tiny model reads 64
    iv = randomised(model, "activscalar")
    assert model.generate(ids, 56, intervene=iv).shape == (1, 64)
    with pytest.raises(UserError, match="8-token prompt and 57 new tokens exceed.*64.*at most 56"):
        model.generate(ids, 57, intervene=iv)
    assert model.generate(ids, 57).shape == (1, 65)                  # without one, the window slides


# ----------------------------------------------------------------------------- objective


def test_prepare_picks_the_flip_target_per_prompt(model):
    ps = prompts(swap=True)
    logits = model(ps.ids, at=ps.answer_pos)
    prefers_c = logits.gather(1, ps.correct[:, None])[:, 0] > logits.gather(1, ps.wrong[:, None])[:, 0]
    batch = ascale.prepare(model, ps, "flip")
    assert torch.equal(batch.answers[:, 0], torch.where(prefers_c, ps.wrong, ps.correct))
    assert prefers_c.any() and not prefers_c.all()  # both kinds of flip occur in these prompts
    assert (batch.diff_before <= 0).all()
    assert torch.equal(ascale.prepare(model, ps, "correct").answers, torch.stack([ps.correct, ps.wrong], 1))
    assert torch.equal(ascale.prepare(model, ps, "wrong").answers, torch.stack([ps.wrong, ps.correct], 1))
    with pytest.raises(UserError, match="unknown target"):
        ascale.prepare(model, ps, "right")


@pytest.mark.parametrize("target", ascale.TARGETS)
def test_the_preference_report_reads_prepare_as_its_own_pass_would(model, target):
    """train.py reports the original model's preference from what prepare kept (no second pass): the same
    shares as tasks.preference's pass, whatever the target."""
    from types import SimpleNamespace

    import tasks
    from cli import setup
    ps = prompts(N=12, swap=True)
    batch = ascale.prepare(model, ps, target, batch_size=5)
    pref = setup.report_preference(SimpleNamespace(train=ps, test=ps), {"train": batch, "test": batch})
    above, top1 = tasks.preference(model, ps)
    assert pref["train"] == {"correct_over_wrong": above, "correct_top1": top1} and 0 < above < 1


def test_objective_terms_match_their_definitions(model):
    ps = prompts(swap=True)
    batch = ascale.prepare(model, ps, "flip")
    iv = ascale.make("activscalar", model.config, ["attn_out", "mlp_out"], 8)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in iv.parameters():
            p.normal_(0, 0.3)
    loss, terms = ascale.objective(model, iv, batch, lambda_f=0.7, lambda_m=0.2, margin=0.5)

    new, old = model(ps.ids, intervene=iv, at=ps.answer_pos), model(ps.ids, at=ps.answer_pos)
    t, o = batch.answers[:, 0], batch.answers[:, 1]
    rows = torch.arange(len(ps))
    hinge = (0.5 - (new[rows, t] - new[rows, o])).clamp(min=0).mean()
    keep = torch.ones_like(new, dtype=torch.bool)
    keep[rows, t] = keep[rows, o] = False
    p = old[keep].view(len(ps), -1).log_softmax(-1)          # p⁻: c and w removed, renormalised
    q = new[keep].view(len(ps), -1).log_softmax(-1)
    kl = (p.exp() * (p - q)).sum(-1).mean()
    l1 = sum(a.abs().sum() for a in iv.alpha.values())
    torch.testing.assert_close(terms["L_E"], hinge)
    torch.testing.assert_close(terms["L_F"], kl, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["L_M"], l1)
    torch.testing.assert_close(loss, hinge + 0.7 * kl + 0.2 * l1, rtol=1e-5, atol=1e-6)
    assert kl > 0


def test_the_objective_starts_faithful_and_only_reads_the_answer_positions(model, monkeypatch):
    ps = prompts()
    batch = ascale.prepare(model, ps, "flip")
    iv = ascale.make("activscalar", model.config, ["mlp_out"], 8)
    _, terms = ascale.objective(model, iv, batch)
    assert abs(terms["L_F"].item()) < 1e-5 and terms["L_M"].item() == 0
    # During training the original model never runs again, and logits are computed only at `at`.
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda idx, intervene=None, at=None: (
        calls.append((intervene is None, at is None)), forward(idx, intervene=intervene, at=at))[1])
    ascale.fit(model, iv, batch, steps=6, batch_size=4, progress=False)
    assert calls == [(False, False)] * 6


# ----------------------------------------------------------------------------- memory: the batch, not the task


def test_p_rest_kept_or_recomputed_gives_the_same_numbers(model, monkeypatch):
    """prepare keeps p⁻ (N, V) only while it fits its byte budget; below it the objective and evaluate
    recompute it per minibatch. Where the batches are the ones prepare used, the bits are the same;
    with random minibatches a prompt's logits differ in the last bits between batches, no more."""
    ps = prompts(N=12, swap=True)
    kept, recomputed = ascale.prepare(model, ps, "flip"), ascale.prepare(model, ps, "flip", p_rest_bytes=0)
    assert kept.p_rest.shape == (12, 50257) and recomputed.p_rest is None and recomputed.neg_entropy is None
    assert torch.equal(kept.answers, recomputed.answers) and torch.equal(kept.diff_before, recomputed.diff_before)
    assert recomputed[3:5].p_rest is None and torch.equal(recomputed[3:5].ids, ps.ids[3:5])
    def close(a, b):  # float rounding: a few ulp of the logits, ~1e-7 nats of KL
        return torch.allclose(a, b, rtol=1e-5, atol=1e-6)

    for batch_size, same in ((12, torch.equal), (4, close)):
        runs = []
        for batch in (kept, recomputed):
            iv = ascale.make("activscalar", model.config, ["attn_out", "mlp_out"], 8)
            curve = ascale.fit(model, iv, batch, **{**FAST, "steps": 8, "batch_size": batch_size})
            runs.append((torch.tensor(curve["loss"] + curve["L_F"]), iv.alpha["mlp_out"].detach().clone(),
                         torch.tensor([v for v in metrics.evaluate(model, iv, batch).values()
                                       if isinstance(v, float)])))
        for a, b in zip(*runs, strict=True):
            assert same(a, b), (batch_size, a, b)
    # recomputing: one more forward pass of the original model per step, without gradients
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda idx, intervene=None, at=None: (
        calls.append(intervene is None), forward(idx, intervene=intervene, at=at))[1])
    ascale.fit(model, ascale.make("activscalar", model.config, ["mlp_out"], 8), recomputed, steps=3, batch_size=4,
               progress=False)
    assert calls == [True, False] * 3


PEAK = """
import sys, torch
sys.path.insert(0, {root!r})
import ascale, metrics
from gpt2 import GPT, GPTConfig
from tasks import PromptSet
N, budget, V, T = int(sys.argv[1]), int(sys.argv[2]), 151936, 8
torch.manual_seed(0)
model = GPT(GPTConfig("qwen2", V, 64, 2, 4, 64, 96, rms_norm=True, swiglu=True, n_kv_head=2, rotary_dim=16,
                      proj_bias=False, mlp_bias=False)).eval().requires_grad_(False)
ids = torch.randint(0, V, (N, T))
c = torch.randint(0, V, (N,))
ps = PromptSet([""] * N, ids, torch.full((N,), T - 1), c, (c + 1) % V, [], [], [])
batch = ascale.prepare(model, ps, "flip", batch_size=32, p_rest_bytes=budget)
iv = ascale.make("activscalar", model.config, ["mlp_out"], T)
ascale.fit(model, iv, batch, steps=2, batch_size=32, progress=False)
metrics.evaluate(model, iv, batch)
# this process's peak resident memory: ru_maxrss would count pytest's, inherited at exec
print(next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


@pytest.mark.slow  # the quick run stays under 5 minutes; CI runs it
def test_peak_memory_on_a_large_vocabulary_does_not_grow_with_the_number_of_prompts():
    """A Qwen-sized vocabulary (151,936 tokens): p⁻ of 800 prompts would take 0.5 GB. Each run is a
    fresh process, whose peak resident memory (VmHWM) is measured."""
    import subprocess
    import sys

    from conftest import ROOT

    # Run at once, one thread each. A fixed mmap threshold: glibc's moving one lets freed blocks of a few MB
    # stay in the heap or not from run to run (peaks of identical runs differed by 100 MB); with it every
    # block over 1 MB is returned when freed, so the peak is what the process held.
    env = {"OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    runs = {name: subprocess.Popen([sys.executable, "-c", PEAK.format(root=str(ROOT)), str(n), str(budget)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for name, n, budget in [("few", 80, ascale.P_REST_BYTES), ("many", 800, ascale.P_REST_BYTES),
                                    ("kept", 800, 2**40)]}       # kept: the control, p⁻ kept for every prompt
    for proc in runs.values():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        proc.peak = int(out)
    few, many, kept = (runs[name].peak for name in ("few", "many", "kept"))
    assert many - few < 100 * 2**20, (few, many)          # 10 times the prompts, the same memory
    assert kept - many > 800 * 151936 * 4 / 2, (many, kept)   # p⁻ shows (less what the steps share with it)


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("target", ascale.TARGETS)
@pytest.mark.parametrize("method", ["activscalar", "steervec"])
def test_training_reaches_the_target(model, method, target):
    iv, batch, curve = trained(model, method, target)
    m = metrics.evaluate(model, iv, batch)
    assert m["flip_rate"] >= 0.9
    assert m["logit_diff_after"] > m["logit_diff_before"]
    assert curve["L_E"][-1] < curve["L_E"][0] and not curve["interrupted"]


def test_dynscalar_trained_on_one_length_applies_to_others(model):
    iv, batch, _ = trained(model, "dynscalar", "wrong", ps=prompts(T=8))
    assert iv.positions is None and metrics.evaluate(model, iv, batch)["flip_rate"] >= 0.9
    for T in (5, 13):
        other = ascale.prepare(model, prompts(T=T, seed=3), "wrong")
        m = metrics.evaluate(model, iv, other)
        assert m["logit_diff_after"] > m["logit_diff_before"]
        assert iv.location_map(model, other.ids[:1])["mlp_out"].shape == (2, T)


@pytest.mark.parametrize("method", ["activscalar", "dynscalar"])
def test_the_first_step_moves_a_scalar_about_lr(model, method):
    """Adam's first step moves every parameter by lr·sign(gradient); DynScalar's probe weights take lr/√D, so that
    α(h) = w·ĥ moves by at most lr·‖ĥ‖₁/√D <= lr, as one ActivScalar α does (DynScalar.lr_scale)."""
    ps = prompts(swap=True)
    iv, _, _ = trained(model, method, ps=ps, steps=1, lambda_m=0.0, schedule="constant")
    D = model.config.n_embd
    if method == "activscalar":
        moved = torch.cat([a[a != 0].abs() for a in iv.alpha.values()])
        torch.testing.assert_close(moved, torch.full_like(moved, FAST["lr"]))
    else:
        for s in iv.sites:
            w = iv.w[s][iv.w[s] != 0].abs()
            torch.testing.assert_close(w, torch.full_like(w, FAST["lr"] / D ** 0.5))
            b = iv.b[s][iv.b[s] != 0].abs()
            torch.testing.assert_close(b, torch.full_like(b, FAST["lr"]))
        h = torch.randn(3, 5, D)
        assert iv.scale("mlp_out", 0, h).sub(iv.b["mlp_out"][0]).abs().max() <= FAST["lr"] + 1e-6


def test_dynscalar_on_right_padded_prompts_of_mixed_lengths(model):
    """Padding sits after each prompt's answer position, so it cannot change the answer."""
    ps = prompts(N=4, T=10)
    ps.answer_pos = torch.tensor([9, 6, 4, 9])
    iv, batch, _ = trained(model, "dynscalar", "wrong", ps=ps)
    one = ascale.prepare(model, ps.subset([1]), "wrong")      # the same prompt, unpadded (7 tokens)
    assert one.ids.shape == (1, 7)
    torch.testing.assert_close(ascale.answer_logits(model, one.ids, one.answer_pos, iv),
                               ascale.answer_logits(model, batch.ids[1:2], batch.answer_pos[1:2], iv))


def test_minibatches_cut_their_padding_and_whole_set_passes_go_by_length(model):
    """A minibatch is cut after its longest prompt's answer, and passes over the set (prepare, evaluate) take
    prompts of about one length together: the numbers stay those of the padded prompts, row for row."""
    ps = prompts(N=6, T=12, swap=True)
    ps.answer_pos = torch.tensor([11, 3, 7, 4, 11, 5])
    iv, batch, _ = trained(model, "dynscalar", "flip", ps=ps, steps=5)
    assert batch.ids.shape == (6, 12) and batch[[1, 3, 5]].ids.shape == (3, 6) and batch[[0, 1]].ids.shape[1] == 12
    assert batch[torch.tensor([], dtype=torch.long)].ids.shape == (0, 12)   # an empty share (torchrun) keeps its shape
    assert [r.tolist() for r in ascale.by_length(batch, 2)] == [[1, 3], [5, 2], [0, 4]]
    padded = ascale.answer_logits(model, ps.ids, ps.answer_pos)      # one pass of the whole padded set
    lt, lo = padded.gather(1, batch.answers).unbind(1)
    torch.testing.assert_close(batch.diff_before, lt - lo)
    m = metrics.evaluate(model, iv, batch, batch_size=2)
    after = ascale.answer_logits(model, ps.ids, ps.answer_pos, iv).gather(1, batch.answers)
    assert m["logit_diff_after"] == pytest.approx((after[:, 0] - after[:, 1]).mean().item(), abs=1e-5)


def test_larger_lambda_m_gives_fewer_active_locations(model):
    counts = []
    for lambda_m in (0.0, 0.3):
        iv, batch, _ = trained(model, "activscalar", "wrong", lambda_m=lambda_m)
        counts.append(metrics.active_locations(model, iv, batch))
    assert counts[1] < counts[0]


def test_active_locations_of_activscalar_count_the_scalars(model):
    iv = ascale.make("activscalar", model.config, ["head", "mlp_out"], 8)
    with torch.no_grad():
        iv.alpha["head"][1, 3, 2] = -1.0
        iv.alpha["mlp_out"][0, 7] = 0.06
        iv.alpha["mlp_out"][1, 2] = 0.04   # below the 5% threshold
    batch = ascale.prepare(model, prompts(), "wrong")
    assert metrics.active_locations(model, iv, batch) == 2
    iv.beta = 0.5
    assert metrics.active_locations(model, iv, batch) == 1
    iv.beta = 0.0
    assert metrics.active_locations(model, iv, batch) == 0 and metrics.evaluate(model, iv, batch)["kl"] == 0


@pytest.mark.parametrize("method", ascale.METHODS)
def test_the_model_weights_stay_bit_identical(model, method):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    iv, _, _ = trained(model, method, "wrong", steps=5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in iv.parameters())


def test_same_seed_same_numbers(model):
    runs = [trained(model, "activscalar", "flip", steps=4, batch_size=3, seed=7) for _ in range(2)]
    assert runs[0][2]["loss"] == runs[1][2]["loss"]
    assert torch.equal(runs[0][0].alpha["mlp_out"], runs[1][0].alpha["mlp_out"])
    other = trained(model, "activscalar", "flip", steps=4, batch_size=3, seed=8)
    assert other[2]["loss"] != runs[0][2]["loss"]  # the seed orders the minibatches


def test_a_nan_loss_stops_with_a_clear_error(model):
    with pytest.raises(UserError, match=r"loss became nan at step \d+ \(L_E is not finite\); lower --lr"):
        trained(model, "activscalar", "wrong", lr=1e20, steps=5)


def test_ctrl_c_keeps_what_was_learned(model, monkeypatch):
    objective, calls = ascale.objective, []

    def interrupted_at_step_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return objective(*args, **kwargs)

    monkeypatch.setattr(ascale, "objective", interrupted_at_step_4)
    iv, batch, curve = trained(model, "activscalar", "wrong", steps=10)
    assert curve["interrupted"] and curve["steps"] == 3 and len(curve["loss"]) == 3
    assert ascale.l1(iv) > 0


def test_pythia_trains_too(tmp_path):
    folder = save_checkpoint(tiny_hf_model("gpt_neox"), tmp_path / "tiny-pythia")
    model = GPT.from_pretrained(str(folder))
    iv, batch, _ = trained(model, "activscalar", "wrong", sites=("head", "mlp_out"))
    assert metrics.evaluate(model, iv, batch)["flip_rate"] >= 0.9


# ----------------------------------------------------------------------------- save and load


@pytest.mark.parametrize("method", ascale.METHODS)
def test_save_then_load_gives_the_same_metrics(model, method, tmp_path):
    iv, batch, _ = trained(model, method, "wrong", sites=("head", "attn_out"), steps=10)
    path = tmp_path / "intervention.safetensors"
    ascale.save(path, iv, model=model, task="my.jsonl", target="wrong", seed=3, tokens=["a", " b"] * 4)
    loaded, meta = ascale.load(path, GPT.from_pretrained(model.name_or_path))
    assert type(loaded) is type(iv) and loaded.sites == ("head", "attn_out")
    assert metrics.evaluate(model, loaded, batch) == metrics.evaluate(model, iv, batch)
    assert metrics.active_locations(model, loaded, batch) == metrics.active_locations(model, iv, batch)
    assert meta["method"] == method and meta["model"] == model.name_or_path and meta["task"] == "my.jsonl"
    assert meta["n_layer"] == "2" and meta["target"] == "wrong" and meta["seed"] == "3"
    assert meta["positions"] == ("" if method == "dynscalar" else "8")
    assert '" b"' in meta["tokens"]
    assert set(load_file(path)) == set(iv.state_dict())
    assert not list(tmp_path.glob("*.tmp"))


def test_loading_onto_another_shape_is_a_clear_error(model, tmp_path):
    iv = ascale.make("activscalar", model.config, ["mlp_out"], 8)
    ascale.save(tmp_path / "iv.safetensors", iv, model=model)
    other = GPT.from_pretrained(str(save_checkpoint(tiny_hf_model("gpt2", n_layer=3), tmp_path / "deeper")))
    with pytest.raises(UserError, match="trained on .*tiny-gpt2 \\(2 layers.*has 3 layers"):
        ascale.load(tmp_path / "iv.safetensors", other)


def test_loading_something_else_is_a_clear_error(model, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ascale.load(tmp_path / "missing.safetensors", model)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a safetensors file"):
        ascale.load(tmp_path / "junk.safetensors", model)
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match="not an ascale intervention"):
        ascale.load(tmp_path / "other.safetensors", model)


@pytest.mark.parametrize("method", ["activscalar", "steervec", "dynscalar"])
def test_objective_same_with_and_without_the_last_layer_shortcut(tiny_gpt2, method):
    """The model skips the last layer's unread positions for an Intervention (takes_positions);
    the loss and gradients are those of the full pass."""
    import ascale
    from gpt2 import GPT
    model = GPT.from_pretrained(str(tiny_gpt2[0]))
    B, T = 4, 9
    g = torch.Generator().manual_seed(0)
    prompts = type("P", (), {"ids": torch.randint(0, 50000, (B, T), generator=g),
                             "answer_pos": torch.full((B,), T - 1), "correct": torch.arange(B),
                             "wrong": torch.arange(B) + 100})()
    batch = ascale.prepare(model, prompts)
    iv = ascale.make(method, model.config, ["head", "attn_out", "mlp_out", "resid"], T)
    with torch.no_grad():
        for p in iv.parameters():
            p.normal_(0, 0.1, generator=g)
    loss, _ = ascale.objective(model, iv, batch)
    grads = torch.autograd.grad(loss, list(iv.parameters()))
    iv.takes_positions = False       # the full pass
    loss_full, _ = ascale.objective(model, iv, batch)
    torch.testing.assert_close(loss, loss_full)
    for a, b in zip(grads, torch.autograd.grad(loss_full, list(iv.parameters())), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- a forker's method


def forker_class(apply):
    """A new method as a forker writes it: one scalar per location, its apply given (ignoring pos), takes_positions
    left at the base class's default. Not left in ascale.METHODS (other tests list the methods)."""
    class Mine(ascale.Intervention):
        method = "test-forker"

        def __init__(self, cfg, sites, positions):
            super().__init__(cfg, sites, positions)
            self.alpha = torch.nn.ParameterDict({s: torch.nn.Parameter(torch.zeros(self.n_layer, positions))
                                                 for s in self.sites})        # (L, T)

    Mine.apply = apply
    ascale.METHODS.pop("test-forker", None)
    return Mine


def test_a_method_that_ignores_positions_gets_whole_prompts(model):
    """An apply that ignores pos is never given rows of some positions only: the model shows it every position
    (no last-layer shortcut, no KV cache), so its numbers are right, in training and in generation."""
    Mine = forker_class(lambda self, site, layer, h, pos=None: h * (1 + self.alpha[site][layer]).unsqueeze(-1))
    ps = prompts()
    batch = ascale.prepare(model, ps, "wrong")
    mine = Mine(model.config, ["attn_out", "mlp_out", "resid"], ps.ids.shape[1])
    ref = ascale.make("activscalar", model.config, ["attn_out", "mlp_out", "resid"], ps.ids.shape[1])
    with torch.no_grad():
        for s in mine.sites:
            mine.alpha[s].normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
            ref.alpha[s].copy_(mine.alpha[s])
    assert not Mine.takes_positions
    loss, _ = ascale.objective(model, mine, batch)
    torch.testing.assert_close(loss, ascale.objective(model, ref, batch)[0])
    torch.testing.assert_close(model.generate(ps.ids[:2], 3, intervene=mine),
                               model.generate(ps.ids[:2], 3, intervene=ref))
    with pytest.raises(UserError, match="apply ignores them; set takes_positions = True once it reads pos"):
        mine("attn_out", 0, torch.zeros(2, 1, model.config.n_embd), pos=torch.zeros(2, 1, dtype=torch.long))


def test_a_parameter_broadcast_against_h_is_one_line(model):
    """A (T,) parameter multiplied into h of shape (B, 1, D) broadcasts to (B, T, D) without torch's error: the
    intervention refuses any apply that changes h's shape."""
    Mine = forker_class(lambda self, site, layer, h, pos=None: h * (1 + self.alpha[site][layer][:, None]))
    mine = Mine(model.config, ["attn_out"], 8)
    Mine.takes_positions = True   # claims to read pos, but its apply does not
    with pytest.raises(UserError, match=r"returned shape \(2, 8, \d+\) for h of shape \(2, 1, \d+\)"):
        mine("attn_out", 0, torch.zeros(2, 1, model.config.n_embd), pos=torch.full((2, 1), 7))
