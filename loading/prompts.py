"""
Prompts as the model reads them: task items (a prompt and its two answers) tokenised into a PromptSet of
right-padded token ids, the answer position of each prompt, the answer tokens, and for a template task
(a fixed prefix and suffix around texts of any length) the slot map that position-tied methods read.

tasks.py makes the items (CCC, IOI, sentiment, a JSONL file); this file only lays them out as tensors.
"""

from dataclasses import dataclass

import torch


@dataclass
class Item:
    """One task item before tokenisation. `group` is what the split is by (country, names, line)."""
    prompt: str
    correct: str
    wrong: str
    group: tuple = ()
    parts: tuple = ()  # a template task's (prefix, text, suffix): its tokens map to slots (see tokenize)


@dataclass
class PromptSet:
    """One split of a task, tokenised. N prompts, padded to T = the longest prompt's length."""
    prompts: list[str]
    ids: torch.Tensor          # (N, T) long, BOS first where the model has one (Llama 3), right-padded
                               # with the tokenizer's end-of-text token
    answer_pos: torch.Tensor   # (N,) long, index of each prompt's last token (where we read logits)
    correct: torch.Tensor      # (N,) long, token id of c
    wrong: torch.Tensor        # (N,) long, token id of w
    tokens: list[list[str]]    # each prompt's token strings, unpadded (axis labels)
    correct_str: list[str]
    wrong_str: list[str]
    slots: torch.Tensor | None = None    # (N, T) long, each token's slot (a template task); None: slot = position
    slot_names: list[str] | None = None  # the slots' labels: the prefix's tokens, "<text>", the suffix's tokens
    groups: torch.Tensor | None = None   # (N,) long: each prompt's group (country, name pair, text, line), numbered

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def lengths(self) -> torch.Tensor:
        """(N,) long: each prompt's length in tokens."""
        return self.answer_pos + 1

    @property
    def fixed_length(self) -> bool:
        """True when every prompt has the same token length (what position-tied methods need)."""
        return len(self) > 0 and bool((self.answer_pos == self.answer_pos[0]).all())

    @property
    def n_slots(self) -> int:
        """How many parameters per layer a position-tied method needs: the slots, or the positions."""
        return self.ids.shape[1] if self.slots is None else len(self.slot_names)

    @property
    def labels(self) -> list[str]:
        """The name of each slot (of each position where there are no slots): axis labels of the maps."""
        return self.tokens[0] if self.slots is None else self.slot_names

    def subset(self, index) -> "PromptSet":
        """The prompts at `index` (a list of ints, a slice or a LongTensor), padding trimmed to fit."""
        idx = torch.arange(len(self))[index].reshape(-1).tolist()
        pos = self.answer_pos[idx]
        T = int(pos.max()) + 1 if idx else 0
        return PromptSet(
            prompts=[self.prompts[i] for i in idx], ids=self.ids[idx, :T], answer_pos=pos,
            correct=self.correct[idx], wrong=self.wrong[idx], tokens=[self.tokens[i] for i in idx],
            correct_str=[self.correct_str[i] for i in idx], wrong_str=[self.wrong_str[i] for i in idx],
            slots=None if self.slots is None else self.slots[idx, :T], slot_names=self.slot_names,
            groups=None if self.groups is None else self.groups[idx])


# ----------------------------------------------------------------------------- tokenizer helpers
# The tokenizer is tokenizer.py's Tokenizer; a tiktoken Encoding works too (encode/decode/eot_token).


def token_str(tokenizer, i: int) -> str:
    """One token's text, for plot axes."""
    if hasattr(tokenizer, "token_str"):
        return tokenizer.token_str(i)
    return tokenizer.decode([i])


def single_token(tokenizer, text: str) -> int | None:
    """The token id if `text` is exactly one token for this tokenizer, else None."""
    ids = tokenizer.encode(text)
    return ids[0] if len(ids) == 1 else None


def first_token(tokenizer, text: str) -> int:
    """The first token of `text` (" Buenos Aires" -> " Buenos"): what answers are compared by with
    answers="first-token", since the model commits to an answer with its first token."""
    return tokenizer.encode(text)[0]


def tokenize(items: list[Item], tokenizer, answers: str = "one-token") -> PromptSet:
    """Turn items into a PromptSet; their answers are known to be single tokens (answers="one-token")
    or to differ in their first token ("first-token"), which is then the answer's token. Each prompt
    starts with the BOS token where the model's own tokenizer adds one (Llama 3's <|begin_of_text|>).

    Items with `parts` (prefix, text, suffix: a template around texts of any length) are tokenised piece by
    piece and get a slot map: the prefix's tokens (BOS first) each their own slot, all of the text's tokens one
    shared slot, the suffix's tokens each their own. A position-tied method keeps one parameter per slot, so it
    reads prompts of any length ("Review:" · "<text>" · "\n" · "Sentiment" · ":"); padding gets the last slot."""
    answer = single_token if answers == "one-token" else first_token
    bos = [] if getattr(tokenizer, "bos_token", None) is None else [tokenizer.bos_token]
    slots = slot_names = None
    if items and items[0].parts:
        assert len({it.parts[::2] for it in items}) == 1, "one template (prefix, suffix) per prompt set"
        prefix, suffix = bos + tokenizer.encode(items[0].parts[0]), tokenizer.encode(items[0].parts[2])
        texts = [tokenizer.encode(it.parts[1]) for it in items]
        seqs = [prefix + text + suffix for text in texts]
        P, S = len(prefix), len(prefix) + 1 + len(suffix)                # text slot P, S slots in all
        rows = [[*range(P), *[P] * len(text), *range(P + 1, S)] for text in texts]
        slots = torch.full((len(items), max(map(len, seqs))), S - 1, dtype=torch.long)
        for row, r in enumerate(rows):
            slots[row, :len(r)] = torch.tensor(r, dtype=torch.long)
        slot_names = [token_str(tokenizer, t) for t in prefix] + ["<text>"] + [token_str(tokenizer, t) for t in suffix]
    else:
        seqs = [bos + tokenizer.encode(it.prompt) for it in items]
    T = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(items), T), tokenizer.eot_token, dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = torch.tensor(s, dtype=torch.long)
    return PromptSet(
        prompts=[it.prompt for it in items],
        ids=ids,
        answer_pos=torch.tensor([len(s) - 1 for s in seqs], dtype=torch.long),
        correct=torch.tensor([answer(tokenizer, it.correct) for it in items], dtype=torch.long),
        wrong=torch.tensor([answer(tokenizer, it.wrong) for it in items], dtype=torch.long),
        tokens=[[token_str(tokenizer, t) for t in s] for s in seqs],
        correct_str=[it.correct for it in items],
        wrong_str=[it.wrong for it in items],
        slots=slots, slot_names=slot_names,
        groups=group_ids([it.group for it in items]),
    )


def group_ids(keys: list) -> torch.Tensor:
    """(N,) long: the items' groups (what the split is by: country, name pair, text, line) numbered in order of
    first appearance, for intervals that resample whole groups (running/stats.group_bootstrap)."""
    ids: dict = {}
    return torch.tensor([ids.setdefault(k, len(ids)) for k in keys], dtype=torch.long)


def n_tokens(tokenizer, text: str) -> int:
    """A prompt's length in tokens, as tokenize lays it out (BOS included where there is one)."""
    return len(tokenizer.encode(text)) + (getattr(tokenizer, "bos_token", None) is not None)
