"""
Files that ship inside packages on the Python package index, fetched once into data/ at the project's root.

Some data a newcomer needs is already published inside an ordinary package: GPT-2's BPE ranks in
`openai-whisper`'s source archive (whisper/assets/gpt2.tiktoken), VADER's sentiment lexicon in
`vaderSentiment`'s. registry_file downloads the package's archive with pip (`pip download --no-deps`,
nothing is installed) into a temporary folder and copies the one member asked for to
data/<package>-<version>/<member>; the archive is not kept (pip's own cache may keep it). Later calls
find the file there and touch neither pip nor the network.

    path = registry_file("openai-whisper", "20250625", "whisper/assets/gpt2.tiktoken")

data/ is git-ignored; set ASCALE_DATA to keep it elsewhere. A failure (no network, no such version, no
such member) is one UserError line naming the package and the cause.
"""

import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from running.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("ASCALE_DATA", ROOT / "data"))


def registry_file(package: str, version: str, member: str, *, sdist: bool = True, data: Path | None = None) -> Path:
    """data/<package>-<version>/<member>, taken from the package's source archive (sdist=True) or its wheel
    (sdist=False), downloaded by pip the first time. member is the path inside the package's tree, e.g.
    "whisper/assets/gpt2.tiktoken" (a source archive's top folder, <name>-<version>/, is not written)."""
    data = Path(data or DATA)
    target = data / f"{package}-{version}" / member
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        content = _read_member(_download(package, version, sdist, Path(tmp)), member)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    part.write_bytes(content)
    os.replace(part, target)  # atomic: a file that exists is complete
    return target


def _archive_name(package: str, version: str) -> str:
    """The file-name prefix pip gives the package's archives: openai-whisper 20250625 -> openai_whisper-20250625."""
    return f"{package.replace('-', '_').replace('.', '_')}-{version}".lower()


def _download(package: str, version: str, sdist: bool, folder: Path) -> Path:
    """The package's archive, downloaded by pip into folder."""
    suffixes = (".tar.gz", ".zip") if sdist else (".whl",)
    prefix = _archive_name(package, version)
    kind = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *kind, f"{package}=={version}",
               "-d", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True)
    archive = next((p for p in sorted(folder.iterdir()) if p.name.lower().startswith(prefix)
                    and p.name.endswith(suffixes)), None)
    if done.returncode != 0 or archive is None:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit code {done.returncode}"
        raise UserError(f"cannot download {package}=={version} with pip ({why[:200]})")
    return archive


def _read_member(archive: Path, member: str) -> bytes:
    """The bytes of member in a .tar.gz (under its top folder), .zip or .whl archive."""
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive) as tar:
            for info in tar:
                if info.isfile() and info.name.split("/", 1)[-1] == member:
                    return tar.extractfile(info).read()
    else:
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if member in (name, name.split("/", 1)[-1]):
                    return z.read(name)
    raise UserError(f"{archive.name} has no file {member}")
