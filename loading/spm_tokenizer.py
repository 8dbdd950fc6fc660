"""
SentencePiece-style BPE tokenizers (Gemma, Llama 2, Mistral v0.1-v0.3): "▁" for a space, byte fallback.

How SentencePiece BPE turns text into token ids:
  1. Cut the text at the added tokens (<bos>, <start_of_turn>, ...; in a GGUF file the control and
     user-defined tokens, Gemma's runs of spaces and newlines among them): each is its own id.
  2. In each piece between them, every space becomes "▁" (U+2581), and Llama 2 and Mistral put a "▁"
     before it (SentencePiece's "dummy prefix"; `prefix` below says where); Gemma does not.
  3. Start from single characters and merge, step by step, the adjacent pair that ranks best, until no
     pair can merge. A tokenizer.json lists its merges, best first; a GGUF file lists no merges but gives
     every token a score, and the pair whose merged token scores highest goes first (as SentencePiece
     and llama.cpp do). Ties go to the leftmost pair.
  4. Each final piece is its token's id; a piece the vocabulary lacks (a character it never saw) is
     written as its UTF-8 bytes instead, one <0xNN> token each (byte fallback).
Unlike byte-level BPE (tokenizer.py), nothing cuts the text into words first: a token may span spaces
("▁▁", or Gemma's ">▁</"), so the whole piece between two added tokens is one sequence to merge (unless a
Metaspace pre-tokenizer with split=true says to start a new word at each "▁").

`tokenizers` (tokenizer.json) and transformers' reading of a GGUF file are the oracles of the tests.
"""

import math
import re

INF = math.inf
SPACE = "▁"  # U+2581, SentencePiece's visible space
# Where the "▁" of step 2 goes: "none" (Gemma); "every" piece between added tokens (Llama 2's Prepend
# normaliser, even before a space); "first" piece only, at the start of the text, unless it starts with a
# space (Metaspace, prepend_scheme "first": Mistral, Llama 2 in newer files); "always": every piece unless it
# starts with a space (Metaspace, prepend_scheme "always").
PREFIXES = ("none", "every", "first", "always")


class SentencePieceBPE:
    """encode: text -> ids, decode: ids -> text, with the interface of tokenizer.Tokenizer.

    vocab:     {piece: id}, pieces spelled with "▁" for spaces, bytes as "<0xNN>"
    merges:    {(left, right): rank}, lower first (tokenizer.json); or None, and then
    scores:    a score per id, the pair whose merged piece scores highest first (GGUF)
    added:     {text: id} tokens matched in the raw text first (specials, chat tokens, GGUF user-defined ones)
    prefix:    one of PREFIXES;  split: a new word at every "▁" (Metaspace split=true)
    bos_token: the id the model's own tokenizer puts first (Gemma's <bos>), or None; encode() leaves it out
    eot_token: the end-of-text id, which also pads prompts to one length
    unk:       the id of a piece that is in neither the vocabulary nor, as bytes, among the byte tokens
    """

    def __init__(self, vocab: dict[str, int], merges: dict | None = None, scores: list[float] | None = None,
                 added: dict[str, int] | None = None, prefix: str = "none", split: bool = False,
                 bos_token: int | None = None, eot_token: int | None = None, unk: int | None = None):
        assert prefix in PREFIXES and (merges is None) != (scores is None)
        self.vocab, self.merges, self.scores = vocab, merges, scores
        self.added = dict(added or {})
        self.prefix, self.split = prefix, split
        self.bos_token, self.eot_token, self.unk = bos_token, eot_token, unk
        self.pieces = {i: p for p, i in vocab.items()} | {i: t for t, i in self.added.items()}  # id -> text
        self.n_vocab = max(self.pieces) + 1
        self.byte_ids = [vocab.get(f"<0x{b:02X}>") for b in range(256)]
        self.byte_of = {i: b for b, i in enumerate(self.byte_ids) if i is not None}
        # leftmost-longest, as `tokenizers` finds added tokens: at the first place any matches, the longest wins
        tokens = sorted(self.added, key=len, reverse=True)
        self._added_re = re.compile("|".join(map(re.escape, tokens))) if tokens else None
        self._cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str) -> list[int]:
        ids, start = [], 0
        for m in self._added_re.finditer(text) if self._added_re else ():
            if m.start() > start:
                ids += self._encode_piece(text[start:m.start()], first=start == 0)
            ids.append(self.added[m.group()])
            start = m.end()
        if start < len(text):
            ids += self._encode_piece(text[start:], first=start == 0)
        return ids

    def _encode_piece(self, piece: str, first: bool) -> list[int]:
        """Steps 2-4 on the text between two added tokens (first: it starts the text)."""
        piece = piece.replace(" ", SPACE)
        metaspace = self.prefix == "always" or self.prefix == "first" and first  # Metaspace: not before a space
        if self.prefix == "every" or metaspace and not piece.startswith(SPACE):
            piece = SPACE + piece
        words = re.split(f"(?={SPACE})", piece) if self.split else [piece]
        return [i for word in words if word for i in self._bpe(word)]

    def _bpe(self, word: str) -> list[int]:
        """Merge the characters of word, best pair first (step 3), then look the pieces up (step 4)."""
        if word in self._cache:
            return self._cache[word]
        parts = list(word)
        ranks = [self._rank(a, b) for a, b in zip(parts, parts[1:], strict=False)]  # of parts[i], parts[i+1]
        while ranks:
            best = min(ranks)
            if best == INF:
                break
            i = ranks.index(best)                                      # the leftmost pair of that rank
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
            del ranks[i]
            if i > 0:
                ranks[i - 1] = self._rank(parts[i - 1], parts[i])
            if i < len(ranks):
                ranks[i] = self._rank(parts[i], parts[i + 1])
        ids = []
        for part in parts:
            if part in self.vocab:
                ids.append(self.vocab[part])
            elif all(self.byte_ids[b] is not None for b in part.encode()):
                ids += [self.byte_ids[b] for b in part.encode()]       # byte fallback
            elif self.unk is not None:
                ids.append(self.unk)
            else:
                raise ValueError(f"{part!r} is neither a token nor made of byte tokens, and there is no <unk>")
        if len(word) <= 64:
            self._cache[word] = ids
        return ids

    def _rank(self, left: str, right: str) -> float:
        """Lower merges first; INF: this pair does not merge."""
        if self.merges is not None:
            return self.merges.get((left, right), INF)
        i = self.vocab.get(left + right)
        return INF if i is None else -self.scores[i]

    # ------------------------------------------------------------------ decoding

    def decode(self, ids) -> str:
        """Text of a sequence of ids (a list, or a 1-D tensor). Byte tokens are joined into characters;
        partial UTF-8 characters become "�". The prefix "▁" at the start is dropped again."""
        out = bytearray()
        for i in ids:
            i = int(i)
            out += bytes([self.byte_of[i]]) if i in self.byte_of else self.pieces[i].replace(SPACE, " ").encode()
        text = out.decode("utf-8", errors="replace")
        return text[1:] if self.prefix != "none" and text.startswith(" ") else text

    def token_str(self, id) -> str:
        """One token's text, e.g. " Paris" (for plot axes); a byte token: its byte, "�" if it is part of a character."""
        return self.decode([id]) if int(id) in self.byte_of else self.pieces[int(id)].replace(SPACE, " ")

    # ------------------------------------------------------------------ reading tokenizer files

    @classmethod
    def from_gguf(cls, meta: dict, path) -> "SentencePieceBPE":
        """tokenizer.ggml.model "llama": tokens, scores and token types (1 normal, 2 unknown, 3 control, 4
        user-defined, 5 unused, 6 byte). Control and user-defined tokens are matched in the raw text, as
        llama.cpp does; Gemma's runs of spaces are user-defined tokens stored with real spaces, so they are
        among them. add_space_prefix (default true, false for Gemma) puts "▁" before the text ("first").
        add_bos_token says whether prompts start with bos_token_id. ValueError for what does not fit."""
        tokens, scores = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.scores")
        types = meta.get("tokenizer.ggml.token_type")
        if not tokens or scores is None or types is None or not len(tokens) == len(scores) == len(types):
            raise ValueError(f"{path}: a SentencePiece (\"llama\") vocabulary needs tokenizer.ggml.tokens, scores and"
                             " token_type, one per token")
        raw = (3, 4)  # control, user-defined
        added = {t: i for i, (t, kind) in enumerate(zip(tokens, types, strict=True)) if kind in raw}
        vocab = {t: i for i, (t, kind) in enumerate(zip(tokens, types, strict=True)) if kind not in raw}
        bos = meta.get("tokenizer.ggml.bos_token_id") if meta.get("tokenizer.ggml.add_bos_token", True) else None
        prefix = "first" if meta.get("tokenizer.ggml.add_space_prefix", True) else "none"
        return cls(vocab, scores=list(scores), added=added, prefix=prefix, bos_token=bos,
                   eot_token=meta.get("tokenizer.ggml.eos_token_id"), unk=meta.get("tokenizer.ggml.unknown_token_id"))

    @classmethod
    def from_tokenizer_json(cls, spec: dict, path, bos_token: int | None = None) -> "SentencePieceBPE":
        """A Hugging Face tokenizer.json of a SentencePiece BPE: model BPE (byte_fallback), and the spaces
        turned into "▁" by one of: normalizer Replace(" ", "▁") (Gemma; its no-op Split(" ") pre-tokenizer
        may follow); normalizer Sequence[Prepend("▁"), Replace(" ", "▁")] (Llama 2); pre_tokenizer Metaspace
        (Mistral, newer Llama 2 files). bos_token: the post-processor's (tokenizer._bos_token). ValueError
        for anything else, rather than encoding differently from `tokenizers`."""
        model, norm, pre = spec["model"], spec.get("normalizer"), spec.get("pre_tokenizer")
        problems = []
        if model.get("type") != "BPE":
            problems.append(f"model type {model.get('type')!r} is not BPE")
        if any(model.get(k) for k in ("dropout", "continuing_subword_prefix", "end_of_word_suffix", "ignore_merges")):
            problems.append("BPE with dropout, subword prefix/suffix or ignore_merges")
        replace = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
        prefix, split = None, False
        if norm == replace and pre in (None, {"type": "Split", "pattern": {"String": " "},
                                              "behavior": "MergedWithPrevious", "invert": False}):
            prefix = "none"
        elif norm == {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE}, replace]} and not pre:
            prefix = "every"
        elif norm is None and pre and pre.get("type") == "Metaspace" and pre.get("replacement") == SPACE:
            prefix = {"always": "always", "first": "first", "never": "none"}.get(pre.get("prepend_scheme", "always"))
            split = pre.get("split", True)
        if prefix is None:
            problems.append(f"normalizer {norm} with pre_tokenizer {pre} is none of Gemma's, Llama 2's and"
                            " Mistral's ways of writing spaces as '▁'")
        if any(t["single_word"] or t["lstrip"] or t["rstrip"] for t in spec["added_tokens"]):
            problems.append("added tokens with single_word, lstrip or rstrip")
        if any(t["normalized"] and (" " in t["content"] or SPACE in t["content"]) for t in spec["added_tokens"]):
            problems.append("normalized added tokens with spaces")
        if problems:
            raise ValueError(f"{path}: unsupported tokenizer.json ({'; '.join(problems)})")
        vocab = dict(model["vocab"])
        merges = {tuple(m.split(" ") if isinstance(m, str) else m): rank for rank, m in enumerate(model["merges"])}
        added = {t["content"]: t["id"] for t in spec["added_tokens"]}
        eot = next((added[t] for t in ("</s>", "<eos>", "<|endoftext|>") if t in added), None)
        if not model.get("byte_fallback") and model.get("unk_token") not in vocab:
            raise ValueError(f"{path}: BPE without byte_fallback needs an unk_token in the vocabulary")
        return cls(vocab, merges=merges, added=added, prefix=prefix, split=split, bos_token=bos_token,
                   eot_token=eot, unk=vocab.get(model.get("unk_token")))
