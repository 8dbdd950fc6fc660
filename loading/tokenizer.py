"""
Tokenizers for GPT-2, Pythia, Llama 3 and Qwen2 / 2.5 / 3: byte-level BPE, run by tiktoken.

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

Llama 3 and Qwen read their tokenizer.json the same way, with three differences: step 1 uses the
file's own regex (a `Split` pre-tokenizer; Llama 3 cuts numbers into groups of up to three digits,
Qwen into single digits); Llama 3 does not normalise, and its BPE has `ignore_merges` (a word that
is itself in the vocabulary is that one token, which is what tiktoken always does); and Llama 3's
post-processor puts <|begin_of_text|> before every text. encode() never adds that token: it is
`bos_token`, which tasks.py puts first in every prompt (None for the families without one).
SentencePiece tokenizers (Gemma, Llama 2, Mistral v0.1-v0.3: byte fallback, "▁" for spaces) are another
algorithm, in spm_tokenizer.py; get_tokenizer and the two readers below hand those files to it.

SmolLM2 cuts every digit into its own piece first (a `Digits(individual_digits)` pre-tokenizer before
GPT-2's ByteLevel), so "2024" is four words: `digits=True` below. A GGUF file (llama.cpp) carries the
same vocabulary and merges in its metadata (tokenizer.ggml.*), and names its pre-tokenizer
(tokenizer.ggml.pre) instead of spelling it out: GGUF_PRE lists the names we know, with llama.cpp's
rules for each (like llama.cpp, and unlike Qwen's tokenizer.json, no NFC normalisation).
"""

import json
import re
import unicodedata

import regex
import tiktoken

from loading import checkpoints
from loading.spm_tokenizer import SentencePieceBPE
from running.errors import UserError

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


BYTE_OF = {c: b for b, c in bytes_to_unicode().items()}  # printable character -> the byte it spells
END_OF_TEXT = ("<|endoftext|>", "<|end_of_text|>")  # the token that pads prompts: GPT-2, Pythia, Qwen; Llama 3
DIGIT = regex.compile(r"\p{N}")  # SmolLM2's Digits(individual_digits=True): a piece per number character

# Llama 3's and Qwen2's split regexes, as llama.cpp writes them (its regex engine has no (?i:...)).
LLAMA3_SPLIT = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> (split regex, digits first, ignore_merges), llama.cpp's rules for these names.
GGUF_PRE = {"gpt2": (GPT_SPLIT_PATTERN, False, False), "smollm": (GPT_SPLIT_PATTERN, True, False),
            "llama-bpe": (LLAMA3_SPLIT, False, True),
            "qwen2": (LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}"), False, False)}


def _split_pattern(pre: dict) -> str | None:
    """The regex that cuts text into words (step 1), or None if the pre-tokenizer is not one we reproduce:
    GPT-2's ByteLevel with its built-in regex (Pythia; SmolLM2 after its digits, see _digits_first), or a
    Split on the file's own regex, each match its own word, followed by a ByteLevel without a regex
    (Llama 3, Qwen)."""
    if (pre.get("type"), pre.get("add_prefix_space"), pre.get("use_regex", True)) == ("ByteLevel", False, True):
        return GPT_SPLIT_PATTERN
    if pre.get("type") != "Sequence" or len(pre["pretokenizers"]) != 2:
        return None
    if _digits_first(pre):
        return _split_pattern(pre["pretokenizers"][1])
    split, byte_level = pre["pretokenizers"]
    if ((split.get("type"), split.get("behavior"), split.get("invert"), "Regex" in split.get("pattern", {}))
            == ("Split", "Isolated", False, True) and (byte_level.get("type"), byte_level.get("add_prefix_space"),
                                                       byte_level.get("use_regex")) == ("ByteLevel", False, False)):
        return split["pattern"]["Regex"]
    return None


def _digits_first(pre: dict) -> bool:
    """Is the pre-tokenizer SmolLM2's: Sequence[Digits(individual_digits=True), ByteLevel(GPT-2's regex)]?"""
    steps = pre.get("pretokenizers") or [{}]
    return pre.get("type") == "Sequence" and steps[0] == {"type": "Digits", "individual_digits": True}


def _bos_token(post: dict | None) -> int | None:
    """The id the post-processor puts before every text (Llama 3's <|begin_of_text|>), or None.
    ValueError for a post-processor that does anything else to the ids (appends EOS, wraps, ...)."""
    steps = post["processors"] if post and post["type"] == "Sequence" else [post] if post else []
    bos = None
    for step in steps:
        if step["type"] == "ByteLevel":
            continue  # moves offsets only
        single = [p["SpecialToken"]["id"] if "SpecialToken" in p else "$A" for p in step.get("single", [])]
        if step["type"] == "TemplateProcessing" and single == ["$A"]:
            continue
        if step["type"] == "TemplateProcessing" and len(single) == 2 and single[1] == "$A":
            (bos,) = step["special_tokens"][single[0]]["ids"]
            continue
        raise ValueError(f"post_processor {step['type']} {single or ''} adds more than one token before the text")
    return bos


def _ranks(vocab: dict[str, int], merges: list, path) -> dict[bytes, int]:
    """tiktoken's ranks from a byte-level vocabulary {token text: id} and its merges ("Ġ t" or ["Ġ", "t"]).
    Ranks: the single bytes, then each merge's result, ranked by its id (tiktoken reports ranks as
    ids). `tokenizers` merges the pair listed first in the merges; tiktoken the pair whose merged
    bytes rank lowest. For merges learnt by BPE training these agree, given ids that rise along the
    merge list (checked here) and one merge per token, or, as in Llama 3's file, every way of cutting
    the token in two, one after the other (then whichever pair tiktoken takes, the same token
    results). A hand-made merge list could break it, so the tests compare the two on every
    vocabulary entry and on varied text.
    (Pythia's vocabulary lacks the 13 bytes that never occur in UTF-8, so text never needs them.)"""
    ranks = {bytes([BYTE_OF[t]]): i for t, i in vocab.items() if len(t) == 1 and t in BYTE_OF}
    last = -1
    for merge in merges:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        token = bytes(BYTE_OF[c] for c in left + right)
        if vocab[left + right] < last or (vocab[left + right] > last and token in ranks):
            raise ValueError(f"{path}: merge {merge!r} is out of order; ids must follow merge order")
        ranks[token] = last = vocab[left + right]
    return ranks


def _whole_words(vocab: dict, ranks: dict, added: set, path) -> dict[bytes, int]:
    """With ignore_merges (Llama 3), a word that is in the vocabulary is that token even if no merge makes
    it, and tiktoken does the same for any byte string in its ranks. So such tokens join the ranks, where
    nothing else can reach them: a token that two tokens could be merged into is refused (tiktoken would
    merge them, `tokenizers` would not). Llama 3's merges list every such pair, so none is."""
    whole = {}
    for t, i in vocab.items():
        if t in added or not all(c in BYTE_OF for c in t):
            continue
        token = bytes(BYTE_OF[c] for c in t)
        if token in ranks:
            continue
        if any(token[:k] in ranks and token[k:] in ranks for k in range(1, len(token))):
            raise ValueError(f"{path}: vocabulary entry {t!r} is two tokens joined, but no merge makes it")
        whole[token] = i
    return whole


def _sentencepiece(spec: dict) -> bool:
    """Is this tokenizer.json a SentencePiece-style BPE (byte fallback, '▁' for spaces)? spm_tokenizer.py reads it."""
    pre = spec.get("pre_tokenizer") or {}
    return bool(spec["model"].get("byte_fallback") or pre.get("type") == "Metaspace"
                or "▁" in json.dumps(spec.get("normalizer"), ensure_ascii=False))


def _unsupported(spec: dict) -> list[str]:
    """What in a tokenizer.json this module would not reproduce exactly (empty list: all is fine)."""
    model, pre, problems = spec["model"], spec.get("pre_tokenizer") or {}, []
    if model.get("type") != "BPE":
        problems.append(f"model type {model.get('type')!r} is not BPE")
    if any(model.get(k) for k in ("dropout", "continuing_subword_prefix", "end_of_word_suffix", "byte_fallback")):
        problems.append("BPE with dropout, subword prefix/suffix or byte fallback")
    if spec.get("normalizer") not in (None, {"type": "NFC"}):
        problems.append(f"normalizer {spec['normalizer']} is not NFC")
    if _split_pattern(pre) is None:
        problems.append(f"pre_tokenizer {pre} is neither ByteLevel (GPT-2's regex, no prefix space) nor"
                        " Split(regex, Isolated) + ByteLevel(no regex, no prefix space)")
    if any(t["single_word"] or t["lstrip"] or t["rstrip"] for t in spec["added_tokens"]):
        problems.append("added tokens with single_word, lstrip or rstrip")
    try:
        _bos_token(spec.get("post_processor"))
    except ValueError as e:
        problems.append(str(e))
    return problems


def _split(text: str, pattern) -> list[tuple[str, bool]]:
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
             token (eot_token), for every model, as in Hugging Face's tokenizers.
    nfc:     normalise the text between raw added tokens to Unicode NFC (Pythia, Qwen) or not (GPT-2).
    digits:  cut every digit into its own word before the regex (SmolLM2).
    bos_token: the id the model's own tokenizer puts before every text (Llama 3), or None. encode()
             leaves it out (as `tokenizers` does with add_special_tokens=False); prompts put it first.
    eot_token: the end-of-text id (END_OF_TEXT, else `eot`), which also pads prompts to one length.
    """

    def __init__(self, encoding: tiktoken.Encoding, added: dict[str, int],
                 added_normalized: dict[str, int] | None = None, nfc: bool = False, bos_token: int | None = None,
                 digits: bool = False, eot: int | None = None):
        self.encoding = encoding
        self.added = dict(added)
        self.added_normalized = {unicodedata.normalize("NFC", t) if nfc else t: i
                                 for t, i in (added_normalized or {}).items()}
        self.nfc, self.digits = nfc, digits
        self._added_re = _added_token_pattern(list(self.added))
        self._added_normalized_re = _added_token_pattern(list(self.added_normalized))
        self.n_vocab = encoding.n_vocab  # largest id + 1
        self.bos_token = bos_token
        ids = self.added | self.added_normalized
        self.eot_token = next((ids[t] for t in END_OF_TEXT if t in ids), eot)

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece, is_added in _split(text, self._added_re):
            if is_added:
                ids.append(self.added[piece])
                continue
            if self.nfc:
                piece = unicodedata.normalize("NFC", piece)
            for word, is_added in _split(piece, self._added_normalized_re):
                if is_added:
                    ids.append(self.added_normalized[word])
                elif self.digits:  # each digit alone, then the regex on the text between them
                    ids += [i for part, _ in _split(word, DIGIT) for i in self.encoding.encode_ordinary(part)]
                else:
                    ids += self.encoding.encode_ordinary(word)
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
    def from_tokenizer_json(cls, path) -> "Tokenizer | SentencePieceBPE":
        """Read a Hugging Face tokenizer.json for byte-level BPE (Pythia's, Llama 3's, Qwen's), or hand a
        SentencePiece-style one (Gemma's, Llama 2's, Mistral's) to spm_tokenizer. Raises ValueError for
        features we do not reproduce, rather than encoding differently from `tokenizers`."""
        try:
            with open(path, encoding="utf-8") as f:
                spec = json.load(f)
            spec["model"], spec["added_tokens"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a readable tokenizer.json ({type(e).__name__}: {e})"[:300]) from None
        if _sentencepiece(spec):
            try:
                bos = _bos_token(spec.get("post_processor"))
            except ValueError as e:
                raise ValueError(f"{path}: unsupported tokenizer.json ({e})") from None
            return SentencePieceBPE.from_tokenizer_json(spec, path, bos)
        problems = _unsupported(spec)
        if problems:
            raise ValueError(f"{path}: unsupported tokenizer.json ({'; '.join(problems)})")
        model = spec["model"]

        vocab = model["vocab"]
        ranks = _ranks(vocab, model["merges"], path)
        if model.get("ignore_merges"):
            ranks |= _whole_words(vocab, ranks, {t["content"] for t in spec["added_tokens"]}, path)

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
        if not any(t in added | added_normalized for t in END_OF_TEXT):
            raise ValueError(f"{path}: no end-of-text token ({' or '.join(END_OF_TEXT)}) among the added tokens")
        # tiktoken only needs the added tokens to decode them; encode() finds them itself.
        pre = spec.get("pre_tokenizer") or {}
        encoding = tiktoken.Encoding(str(path), pat_str=_split_pattern(pre), mergeable_ranks=ranks,
                                     special_tokens=added | added_normalized)
        return cls(encoding, added, added_normalized, nfc=spec.get("normalizer") is not None,
                   bos_token=_bos_token(spec.get("post_processor")), digits=_digits_first(pre))

    @classmethod
    def from_gguf(cls, meta: dict, path) -> "Tokenizer | SentencePieceBPE":
        """The tokenizer in a GGUF file's metadata (checkpoints.gguf_file): byte-level BPE
        (tokenizer.ggml.model "gpt2") with its tokens, merges and token types; the pre-tokenizer by
        name (GGUF_PRE). Control and user-defined tokens are the added tokens, matched in the raw
        text; add_bos_token says whether prompts start with bos_token_id. A SentencePiece vocabulary
        ("llama": Gemma, Llama 2, Mistral) goes to spm_tokenizer. ValueError otherwise."""
        kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "gpt2")
        if kind == "llama":
            return SentencePieceBPE.from_gguf(meta, path)
        if kind != "gpt2":
            raise ValueError(f"{path}: its tokenizer is {kind!r}; only byte-level BPE (\"gpt2\") and SentencePiece"
                             " BPE (\"llama\") are supported")
        if pre not in GGUF_PRE:
            raise ValueError(f"{path}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not one we reproduce;"
                             f" supported: {', '.join(GGUF_PRE)}")
        pattern, digits, ignore_merges = GGUF_PRE[pre]
        tokens, types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type") or []
        control, user_defined = 3, 4  # llama.cpp's token types (1 is a normal token)
        added = {t: i for i, (t, kind) in enumerate(zip(tokens, types, strict=False))
                 if kind in (control, user_defined)}
        vocab = {t: i for i, t in enumerate(tokens)}
        ranks = _ranks(vocab, meta.get("tokenizer.ggml.merges") or [], path)
        if ignore_merges:
            ranks |= _whole_words(vocab, ranks, set(added), path)
        eos = meta.get("tokenizer.ggml.eos_token_id")
        if not any(t in added for t in END_OF_TEXT) and eos is None:
            raise ValueError(f"{path}: no end-of-text token ({' or '.join(END_OF_TEXT)}, or an eos_token_id)")
        encoding = tiktoken.Encoding(str(path), pat_str=pattern, mergeable_ranks=ranks, special_tokens=added)
        bos = meta.get("tokenizer.ggml.bos_token_id") if meta.get("tokenizer.ggml.add_bos_token") else None
        return cls(encoding, added, bos_token=bos, digits=digits, eot=eos)


def get_tokenizer(name_or_path: str, revision: str | None = None) -> Tokenizer | SentencePieceBPE:
    """The tokenizer of a checkpoint (Hub id, local folder, .gguf file or packaged name). A GGUF file
    carries its own; otherwise config.json's model_type chooses: every GPT-2 checkpoint gets GPT-2's
    own tokenizer (a folder's vocab files are not read); the others (Pythia, Llama 3, Qwen, SmolLM2)
    get the tokenizer.json of the same revision, as do Gemma's (SentencePiece BPE)."""
    path = checkpoints.resolve(name_or_path)
    if checkpoints.is_gguf(path):
        meta, _ = checkpoints.gguf_file(path)
        try:
            return Tokenizer.from_gguf(meta, path)
        except ValueError as e:
            raise UserError(str(e)) from None
    model_type = checkpoints.read_config(path, revision).get("model_type")
    if model_type == "gpt2":
        try:
            return Tokenizer.gpt2()
        except Exception as e:  # offline: a network error; or a damaged cache: a hash mismatch
            raise UserError(f"cannot load GPT-2's tokenizer files through tiktoken ({type(e).__name__});"
                            " run once with network, or set TIKTOKEN_CACHE_DIR to a folder holding"
                            " tiktoken's cached gpt2 files") from None
    if model_type == "gpt_neox" or model_type in checkpoints.LLAMA_TYPES or model_type in checkpoints.GEMMA_TYPES:
        # Pythia's training-checkpoint revisions share one tokenizer; take main's if the revision lacks it.
        for rev in dict.fromkeys((revision, None)):
            try:
                return Tokenizer.from_tokenizer_json(checkpoints.hub_file(path, "tokenizer.json", rev))
            except FileNotFoundError:
                continue
            except ValueError as e:
                raise UserError(str(e)) from None
        raise UserError(f"{name_or_path!r} has no tokenizer.json (if offline: not in the cache yet; a"
                        " SentencePiece tokenizer.model alone, without its tokenizer.json, is not supported)")
    raise UserError(f"model_type {model_type!r} of {name_or_path!r} is not supported; use {checkpoints.SUPPORTED}")
