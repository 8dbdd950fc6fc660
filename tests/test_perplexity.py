"""judging/perplexity.py: a continuation's negative log-likelihood, by hand on a tiny model and against the
model's own full forward pass, whatever the batch and its padding."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gpt2 import GPT
from judging import perplexity
from loading.tokenizer import get_tokenizer

TOY = str(Path(__file__).resolve().parents[1] / "models" / "toyworld")
PROMPTS = ["The capital of Nepal is", "Mary and John went to the park.", "Q: What is the capital of Chad? A:"]
CONTINUATIONS = [" Kathmandu.", " John gave a ball to Mary", ""]


@pytest.fixture(scope="module")
def toy():
    return GPT.from_pretrained(TOY), get_tokenizer(TOY)


def test_a_model_that_knows_nothing_costs_log_v_a_token(toy):
    model, tok = toy
    blank = GPT(model.config)
    with torch.no_grad():
        for p in blank.parameters():
            p.zero_()                       # every logit 0: each token has probability 1/V
    n = len(tok.encode(CONTINUATIONS[1]))
    nll, count = perplexity.continuation_nll(blank, tok, PROMPTS[1:2], CONTINUATIONS[1:2])[0]
    assert count == n and nll == pytest.approx(n * math.log(model.config.vocab_size), rel=1e-6)


def test_the_sum_is_the_models_own_log_likelihood_of_each_token_in_any_batch(toy):
    model, tok = toy
    by_hand = []
    for p, c in zip(PROMPTS, CONTINUATIONS, strict=True):
        head = ([tok.bos_token] if tok.bos_token is not None else []) + tok.encode(p)
        ids = torch.tensor([head + tok.encode(c)])
        with torch.no_grad():
            logp = F.log_softmax(model(ids)[0].double(), -1)        # (T, V), a full pass of this text alone
        by_hand.append((-sum(float(logp[t - 1, ids[0, t]]) for t in range(len(head), ids.shape[1])),
                        ids.shape[1] - len(head)))
    for batch_size in (1, 3):
        got = perplexity.continuation_nll(model, tok, PROMPTS, CONTINUATIONS, batch_size=batch_size)
        assert [n for _, n in got] == [n for _, n in by_hand] and got[2] == (0.0, 0)
        assert [s for s, _ in got] == pytest.approx([s for s, _ in by_hand], rel=1e-4)
