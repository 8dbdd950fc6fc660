"""
How many prompts a training step takes when --batch-size is not given (ascale.fit asks train_batch_size): all of
them while a step is cheap in time and in memory (full batches take the minibatch order out of the fit), otherwise
MINIBATCH, and never more than keep a step's estimated working memory under STEP_BYTES, so memory grows with the
batch, never with the number of prompts (for Qwen's 151,936-token vocabulary about 240 prompts).

The time: about 6 FLOPs per parameter per token, forward and backward (the blocks' at every token, the
unembedding's at the answer position only); a full-batch step while it costs at most FULL_BATCH_FLOPS. Full
batches take the minibatch order out of the fit: on the toy world's IOI, 32-prompt minibatches flipped 0.43-0.85
of the test prompts over five seeds, full batches 0.67-0.97 (with that release's defaults: `git show
1495638:docs/results-toyworld.md`); its CCC and IOI stay well under both limits.

The memory (step_bytes_per_prompt): LOGIT_COPIES vectors of the vocabulary at a prompt's answer position (ℓ̃ and
its softmax/KL intermediates, the gradients, p⁻ when it is recomputed), plus what autograd keeps for the backward
pass in every layer and at every token: about 10 vectors of the width (norms, residuals, outputs, the intervened
sites), 4 of the queries' width (Q, K, V, the heads' results), 2 of the MLP's hidden width (3 for a gated MLP) and
2 attention rows per head (scores, probabilities). Against one step's measured peak (resident memory on CPU,
activscalar at every site) the estimate was 1.05 times it for a Llama-shaped model, 1.03-1.4 for a Gemma-shaped
one, 1.2-1.7 for GPT-NeoX-shaped ones (the toy world's); tests/test_memory.py checks it.
"""


FULL_BATCH_FLOPS = 1e11  # fit takes full-batch steps while one costs at most this (about a second on a CPU core)
# fit's default minibatch keeps a step's working memory (train_batch_size's estimate) under this: 1 GiB beside the
# weights leaves room on an 8 GiB laptop or a small GPU; 32 prompts of SmolLM2's or Gemma 3 270M's tasks fit in it
STEP_BYTES = 2**30
LOGIT_COPIES = 7  # (B, V) float32 tensors a step holds per prompt: ℓ̃, its masked copy, p⁻·ℓ̃, their gradients, p⁻
MINIBATCH = 16  # fit's prompts per step beyond it: 100 steps of 16 on SmolLM2 match 100 of 32 at half the time


def step_bytes_per_prompt(config, n_tokens: int) -> int:
    """An estimate of the float32 bytes one prompt of n_tokens adds to a training step (see the module's docstring)."""
    gated = 3 if config.swiglu or config.geglu else 2
    per_token_layer = (10 * config.n_embd + 4 * config.n_head * config.head_dim + gated * config.n_inner
                       + 2 * config.n_head * n_tokens)
    return 4 * (LOGIT_COPIES * config.vocab_size + config.n_layer * n_tokens * per_token_layer)


def train_batch_size(model, batch) -> int:
    """The default minibatch: all the prompts while a step is cheap, else MINIBATCH; never over STEP_BYTES."""
    per_token = 6 * sum(p.numel() for p in model.h.parameters())
    per_prompt = 6 * model.lm_head.weight.numel()  # (V, D): the logits are computed at the answer position only
    flops = batch.ids.numel() * per_token + len(batch) * per_prompt
    by_flops = len(batch) if flops <= FULL_BATCH_FLOPS else MINIBATCH
    by_memory = STEP_BYTES // step_bytes_per_prompt(model.config, batch.ids.shape[1])
    return max(1, min(by_flops, by_memory))
