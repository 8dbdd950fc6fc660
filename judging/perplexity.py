"""
A frozen model's perplexity of a continuation given its prompt, the judge of fluency: the continuation's text is
tokenized again by the judging model's own tokenizer (so a model of another family, with another vocabulary, judges
it as well as the model that wrote it), and its tokens' negative log-likelihood is summed, each token read given the
prompt and the continuation's tokens before it:

    ids = [BOS] + encode(prompt) + encode(continuation)
    nll = − Σ_{t in the continuation} log p(ids_t | ids_<t),   n = len(encode(continuation))

Perplexity over a set of continuations is exp(Σ nll / Σ n), every token weighted alike. Nothing is intervened on:
the judge is the unchanged model. A sequence longer than the judge's context keeps its first n_ctx tokens.
"""

import torch
import torch.nn.functional as F


def encode(tok, prompt: str, continuation: str) -> tuple[list[int], int]:
    """The judge's ids of prompt and continuation ([BOS] where its tokenizer has one) and where the continuation
    starts."""
    head = ([tok.bos_token] if getattr(tok, "bos_token", None) is not None else []) + tok.encode(prompt)
    return head + tok.encode(continuation), len(head)


@torch.no_grad()
def continuation_nll(model, tok, prompts: list[str], continuations: list[str],
                     batch_size: int = 8) -> list[tuple[float, int]]:
    """(nll, n) of each continuation given its prompt under the unchanged `model` (a gpt2.GPT) with its tokenizer
    `tok`: summed negative log-likelihood in nats and the number of tokens scored (0 for an empty continuation).
    Batches are right-padded (the padding comes after every scored token, so a causal model never reads it)."""
    rows = [encode(tok, p, c) for p, c in zip(prompts, continuations, strict=True)]
    n_ctx, device = model.config.n_ctx, model.lm_head.weight.device
    rows = [(ids[:n_ctx], min(start, n_ctx)) for ids, start in rows]
    out: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    for b in range(0, len(order), batch_size):
        chunk = order[b:b + batch_size]
        T = max(len(rows[i][0]) for i in chunk)
        ids = torch.zeros((len(chunk), T), dtype=torch.long)
        for r, i in enumerate(chunk):
            ids[r, :len(rows[i][0])] = torch.tensor(rows[i][0])
        x, _ = model.blocks(model.embed(ids.to(device)))              # (B, T, D)
        for r, i in enumerate(chunk):
            seq, start = rows[i]
            if len(seq) <= start:
                continue
            logits = model.unembed(x[r, start - 1:len(seq) - 1]).float()   # (n, V): the predictions of its tokens
            target = torch.tensor(seq[start:], device=device)
            out[i] = (float(F.cross_entropy(logits, target, reduction="sum")), len(seq) - start)
    return out
