"""
Tokenizers for GPT-2 and Pythia: byte-level BPE, run by tiktoken.

How byte-level BPE turns text into token ids:
  1. Split the text into words with a regex (GPT_SPLIT_PATTERN): " the", " 42", "'s", "\\n\\n", ...
     A word's leading space belongs to it, so " cat" and "cat" are different tokens.
  2. Write each word as UTF-8 bytes, then merge adjacent pieces, step by step. The vocabulary
     is a list of byte strings; at each step the adjacent pair whose merged bytes come first in
     that list is merged, until no merged pair is in the list. Every word ends up as a few known
     pieces, and a piece's position in the list is its token id (its "rank").
Tokenizer files written for Hugging Face store bytes as printable characters (byte 0x20, the
space, is "Ġ"; see bytes_to_unicode) and list the merges as pairs ("Ġ t") in the order they were
learnt. tiktoken does step 2 fast, given the rank of every byte string.

GPT-2 uses tiktoken's own "gpt2" encoding. Pythia (GPT-NeoX) reads its tokenizer.json, which adds
two steps before 1 and 2: the text is cut at "added tokens" (specials such as <|endoftext|>, and
runs of 2 to 24 spaces), and the text between them is normalised to Unicode NFC. (NFC here uses
Python's Unicode tables; `tokenizers` has older ones, so combining marks new in Unicode 14 or later
can come out in another order: a rare difference we accept.)
"""

import json
import re
import unicodedata

import tiktoken

import gpt2

# GPT-2's split regex, as tiktoken writes it (possessive ++ instead of backtracking; same splits):
#   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
GPT_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table byte -> printable character, used by tokenizer files to spell byte strings.
    Printable Latin-1 bytes stand for themselves; the other 68 (controls, space, ...) get
    characters from chr(256) on, in byte order: space 0x20 -> "Ġ", newline 0x0a -> "Ċ"."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, n = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b], n = chr(256 + n), n + 1
    return table


def _unsupported(spec: dict) -> list[str]:
    """What in a tokenizer.json this module would not reproduce exactly (empty list: all is fine)."""
    model, pre, problems = spec["model"], spec.get("pre_tokenizer") or {}, []
    if model.get("type") != "BPE":
        problems.append(f"model type {model.get('type')!r} is not BPE")
    if any(model.get(k) for k in ("dropout", "continuing_subword_prefix", "end_of_word_suffix", "byte_fallback")):
        problems.append("BPE with dropout, subword prefix/suffix or byte fallback")
    if spec.get("normalizer") not in (None, {"type": "NFC"}):
        problems.append(f"normalizer {spec['normalizer']} is not NFC")
    if (pre.get("type"), pre.get("add_prefix_space"), pre.get("use_regex", True)) != ("ByteLevel", False, True):
        problems.append(f"pre_tokenizer {pre} is not ByteLevel (GPT-2's regex, no prefix space)")
    if any(t["single_word"] or t["lstrip"] or t["rstrip"] for t in spec["added_tokens"]):
        problems.append("added tokens with single_word, lstrip or rstrip")
    return problems


def _split(text: str, pattern: re.Pattern | None) -> list[tuple[str, bool]]:
    """Cut text at the matches of pattern: [(piece, is_match), ...], without empty pieces."""
    pieces, start = [], 0
    for m in pattern.finditer(text) if pattern else []:
        pieces += [(text[start:m.start()], False), (m.group(), True)]
        start = m.end()
    pieces.append((text[start:], False))
    return [(p, is_match) for p, is_match in pieces if p]


def _added_token_pattern(tokens: list[str]) -> re.Pattern | None:
    """A regex that finds added tokens leftmost-longest, as the `tokenizers` library does: at the
    first place where any token matches, the longest one wins (Python tries alternatives in order)."""
    tokens = sorted(tokens, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, tokens))) if tokens else None


class Tokenizer:
    """encode: text -> ids, decode: ids -> text. Wraps a tiktoken Encoding, plus the added tokens.

    added:   {text: id} tokens matched in the raw text, before anything else (<|endoftext|>).
    added_normalized: {text: id} tokens matched after NFC, in the text between those (Pythia's
             space runs). Added text is always a token: "<|endoftext|>" in a prompt is the special
             token (eot_token), for both models, as in Hugging Face's tokenizers.
    nfc:     normalise the text between raw added tokens to Unicode NFC (Pythia) or not (GPT-2).
    """

    def __init__(self, encoding: tiktoken.Encoding, added: dict[str, int],
                 added_normalized: dict[str, int] | None = None, nfc: bool = False):
        self.encoding = encoding
        self.added = dict(added)
        self.added_normalized = {unicodedata.normalize("NFC", t) if nfc else t: i
                                 for t, i in (added_normalized or {}).items()}
        self.nfc = nfc
        self._added_re = _added_token_pattern(list(self.added))
        self._added_normalized_re = _added_token_pattern(list(self.added_normalized))
        self.n_vocab = encoding.n_vocab  # largest id + 1
        self.eot_token = self.added["<|endoftext|>"]

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece, is_added in _split(text, self._added_re):
            if is_added:
                ids.append(self.added[piece])
                continue
            if self.nfc:
                piece = unicodedata.normalize("NFC", piece)
            for word, is_added in _split(piece, self._added_normalized_re):
                ids += [self.added_normalized[word]] if is_added else self.encoding.encode_ordinary(word)
        return ids

    def decode(self, ids) -> str:
        """Text of a sequence of ids (a list, or a 1-D tensor). Partial UTF-8 characters become "�"."""
        return self.encoding.decode([int(i) for i in ids])

    def token_str(self, id) -> str:
        """One token's text, e.g. " Paris" (for plot axes). A token may hold part of a character: "�"."""
        return self.encoding.decode_single_token_bytes(int(id)).decode("utf-8", errors="replace")

    @classmethod
    def gpt2(cls) -> "Tokenizer":
        """GPT-2's tokenizer (the same for all sizes). Needs tiktoken's files: network or TIKTOKEN_CACHE_DIR."""
        encoding = tiktoken.get_encoding("gpt2")
        return cls(encoding, {"<|endoftext|>": encoding.eot_token})

    @classmethod
    def from_tokenizer_json(cls, path) -> "Tokenizer":
        """Read a Hugging Face tokenizer.json for byte-level BPE (Pythia's). Raises ValueError for
        features we do not reproduce, rather than encoding differently from the `tokenizers` library."""
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
        problems = _unsupported(spec)
        if problems:
            raise ValueError(f"{path}: unsupported tokenizer.json ({'; '.join(problems)})")
        model = spec["model"]

        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        vocab = model["vocab"]
        # Ranks: the single bytes, then each merge's result, ranked by its id (tiktoken reports ranks as
        # ids). `tokenizers` merges the pair listed first in the merges; tiktoken the pair whose merged
        # bytes rank lowest. For merges learnt by BPE training these agree, given ids that rise along
        # the merge list and one merge per token (both checked here); a hand-made merge list could
        # break it, so the tests compare the two on every vocabulary entry and on varied text.
        # (Pythia's vocabulary lacks the 13 bytes that never occur in UTF-8, so text never needs them.)
        ranks = {bytes([byte_of[t]]): i for t, i in vocab.items() if len(t) == 1}
        last = -1
        for merge in model["merges"]:
            left, right = merge.split(" ") if isinstance(merge, str) else merge
            token = bytes(byte_of[c] for c in left + right)
            if vocab[left + right] <= last or token in ranks:
                raise ValueError(f"{path}: merge {merge!r} is out of order; ids must follow merge order")
            ranks[token] = last = vocab[left + right]

        # `tokenizers` ignores the ids written for added tokens: it numbers them itself, in file order,
        # on from the vocabulary (unless a token is already in it). A file that disagrees is refused.
        next_id = len(vocab)
        for t in spec["added_tokens"]:
            if t["id"] != vocab.get(t["content"], next_id):
                raise ValueError(f"{path}: added token {t['content']!r} has id {t['id']}, but `tokenizers`"
                                 f" would give it {vocab.get(t['content'], next_id)}")
            next_id += t["content"] not in vocab
        added = {t["content"]: t["id"] for t in spec["added_tokens"] if not t["normalized"]}
        added_normalized = {t["content"]: t["id"] for t in spec["added_tokens"] if t["normalized"]}
        # tiktoken only needs the added tokens to decode them; encode() finds them itself.
        encoding = tiktoken.Encoding(str(path), pat_str=GPT_SPLIT_PATTERN, mergeable_ranks=ranks,
                                     special_tokens=added | added_normalized)
        return cls(encoding, added, added_normalized, nfc=spec.get("normalizer") is not None)


def get_tokenizer(name_or_path: str, revision: str | None = None) -> Tokenizer:
    """The tokenizer of a checkpoint (Hub id or local folder), chosen by config.json's model_type.
    Every GPT-2 checkpoint gets GPT-2's own tokenizer (a folder's vocab files are not read);
    a Pythia checkpoint gets the tokenizer.json of the same revision."""
    model_type = gpt2.read_config(name_or_path, revision).get("model_type")
    if model_type == "gpt2":
        try:
            return Tokenizer.gpt2()
        except Exception as e:  # offline: a network error; or a damaged cache: a hash mismatch
            raise gpt2.UserError(f"cannot load GPT-2's tokenizer files through tiktoken ({type(e).__name__});"
                                 " run once with network, or set TIKTOKEN_CACHE_DIR to a folder holding"
                                 " tiktoken's cached gpt2 files") from None
    if model_type == "gpt_neox":
        # Pythia's training-checkpoint revisions share one tokenizer; take main's if the revision lacks it.
        for rev in dict.fromkeys((revision, None)):
            try:
                return Tokenizer.from_tokenizer_json(gpt2.hub_file(name_or_path, "tokenizer.json", rev))
            except FileNotFoundError:
                continue
            except ValueError as e:
                raise gpt2.UserError(str(e)) from None
        raise gpt2.UserError(f"{name_or_path!r} has no tokenizer.json (if offline: not in the cache yet)")
    raise gpt2.UserError(f"model_type {model_type!r} of {name_or_path!r} is not supported;"
                         " use a GPT-2 (gpt2) or Pythia (gpt_neox) checkpoint")
