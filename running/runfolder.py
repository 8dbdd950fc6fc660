"""
How a run folder is written, so that the faults a real user meets lose nothing and never mix runs.

    check_writable    the run folders a run will write, refused before any work where they cannot be written
    write_atomically  one file, complete or absent: a temporary file beside it, fsync, os.replace. A write
                      that fails (disk full, quota, file-size limit) raises WriteError, one line naming the
                      file and the cause, and leaves no temporary file
    RunFolder         a run folder being written (a context manager): locked before any work, so that a
                      second run into the same folder refuses in one line naming the first; its files are
                      staged in <out>/.staging-<pid>/ and moved into place together only when the run ends,
                      so with --overwrite the earlier run's files stay intact until the new ones are complete
    signals_interrupt SIGTERM (a scheduler's time limit, `kill`) raises KeyboardInterrupt("SIGTERM"), so that
                      training stops and saves what was learned exactly as on Ctrl-C

The lock is an exclusive flock on <folder>/.lock: the kernel drops it when its process ends, however
it ends, so a crash never leaves a stale lock (a leftover .lock file, or a .staging-<pid> folder after
a kill -9, is taken over or removed by the next run). Used by train.py and analyze.py.
Under torchrun (parallel.py) only rank 0 locks and writes; the other processes write nothing, and learn
from rank 0 whether the folder could be locked.
"""

import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

from running import parallel
from running.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None

LOCK = ".lock"          # in each locked folder
STAGING = ".staging-"   # + pid: where a run's files are written until they are put in place together


class WriteError(UserError):
    """A file could not be written: `path` (the name the user sees) and the OSError behind it."""

    def __init__(self, path, cause: OSError):
        self.path, self.cause = Path(path), cause
        super().__init__(f"cannot write {path}: {cause.strerror or cause}")


def write_atomically(path, data) -> None:
    """Write a file so that it is either complete or absent (a temporary file beside it, flushed to disk,
    then os.replace): an interrupted or failed write never leaves half a file or the temporary one. data: bytes,
    or a function that writes the file's contents to the open binary file it is given (a large file, streamed).
    An OSError (ENOSPC, EDQUOT, EFBIG, ...) becomes a WriteError naming `path`. Under torchrun only rank 0
    writes: the others do nothing here."""
    if not parallel.is_main():
        return
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data) if isinstance(data, bytes) else data(f)
            f.flush()
            os.fsync(f.fileno())   # a full disk may only say so here
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise WriteError(path, e) from None
        raise


# ----------------------------------------------------------------------------- the lock


def lock(folder: Path) -> int:
    """Take the exclusive lock of an existing folder; return its file descriptor (for unlock).
    UserError naming the holder if another run has it. (-1 where there is no flock: Windows.)"""
    if fcntl is None:
        return -1
    path = folder / LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot create the lock file {path}: {e.strerror}; choose another --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 1000).decode(errors="replace").strip() or "no details yet"
            os.close(fd)
            raise UserError(f"{folder} is being written by another run ({holder}); wait for it to finish, or"
                            " choose another --out") from None
        except OSError as e:
            os.close(fd)
            raise UserError(f"cannot lock {path}: {e.strerror}; choose another --out (on a local disk)") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed the file as we opened it: take the new one
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    with contextlib.suppress(OSError):  # who holds it, for the message above; best effort on a full disk
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%H:%M:%S')}:"
                     f" {command}"[:1000].encode())
    return fd


def unlock(folder: Path, fd: int) -> None:
    """Remove the lock file, then release the lock (a run that opened it meanwhile retries, see lock)."""
    if fd < 0:
        return
    with contextlib.suppress(OSError):
        os.remove(folder / LOCK)
    os.close(fd)


# ----------------------------------------------------------------------------- the run folder


def check_writable(out: Path, folders: list[Path], files) -> None:
    """Refuse, before any work, run folders that cannot be written: `out` a file, a folder under a file or where
    it may not write, one of `files` (what a run writes there) not a file. (Those that already hold a run are
    refused without --overwrite by RunFolder, once it holds their lock.)"""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; name a folder for the run (it is created if missing)")
    for folder in folders:
        existing = next(p for p in (folder, *folder.parents) if p.exists())   # the folder or its nearest ancestor
        if not existing.is_dir():
            raise UserError(f"cannot create run folder {folder}: {existing} is a file; choose another --out")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"cannot write into {existing} (permission denied); choose another --out")
        for name in files:
            if (folder / name).exists() and not (folder / name).is_file():
                raise UserError(f"{folder / name} is not a file and cannot be replaced; choose another --out")


class RunFolder:
    """`with RunFolder(out, folders, replaces, overwrite) as run:` write each file to run.staged(folder)
    / name; they are put in place when the block ends.

    On entry: create out (and folders, e.g. the method subfolders of --method all), lock each, remove a
    dead run's staging, and without overwrite refuse a folder that holds any of `replaces` already.
    On leaving normally or by KeyboardInterrupt (Ctrl-C, SIGTERM), `publish` puts the complete staged
    files in place; on any other error nothing more is (the earlier run stays as it was, unless the run
    published early). Then the locks are released and the folders this run created but left empty are
    removed."""

    def __init__(self, out, folders=None, replaces=(), overwrite: bool = True, what: str = "a run"):
        self.out = Path(out)
        self.folders = [Path(f) for f in folders] if folders else [self.out]
        self.replaces, self.overwrite, self.what = tuple(replaces), overwrite, what
        self.staging = self.out / f"{STAGING}{os.getpid()}"
        self.created, self.locks = [], {}
        self.published = {folder: set() for folder in self.folders}

    def staged(self, folder) -> Path:
        """Where the files of `folder` (out or one of folders) are written until they are put in place."""
        return self.staging / Path(folder).relative_to(self.out)

    def __enter__(self) -> "RunFolder":
        if not parallel.is_main():  # torchrun: rank 0 locks and writes; the others fail where it fails
            parallel.agree()
            return self
        try:
            for folder in dict.fromkeys([self.out, *self.folders]):
                self._mkdir(folder)
                self.locks[folder] = lock(folder)
                for dead in folder.glob(f"{STAGING}*"):   # a killed run's; nobody else writes here now
                    shutil.rmtree(dead, ignore_errors=True)
                done = [name for name in self.replaces if (folder / name).exists()] if folder in self.folders else []
                if done and not self.overwrite:
                    raise UserError(f"{folder} already holds {self.what} ({', '.join(done)}); pass --out NEW_FOLDER"
                                    " for a new one, or --overwrite to replace it")
            for folder in self.folders:
                self.staged(folder).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self._release()
            error = WriteError(e.filename or self.out, e)
            parallel.agree(error)
            raise error from None
        except BaseException as e:
            self._release()
            parallel.agree(e)
            raise
        parallel.agree()
        return self

    def __exit__(self, kind, error, tb) -> None:
        try:
            if kind is None or issubclass(kind, KeyboardInterrupt):
                self.publish()
        finally:
            self._release()
        if isinstance(error, WriteError) and error.path.is_relative_to(self.staging):
            raise WriteError(self.out / error.path.relative_to(self.staging), error.cause) from None

    def _mkdir(self, folder: Path) -> None:
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        self.created += reversed(missing)  # outermost first

    def publish(self, folders=None) -> None:
        """Put the staged files in place now, and remove the earlier run's other files among `replaces`, so
        that a folder never mixes two runs; Ctrl-C and SIGTERM are held back until it is done. The end of
        the block does this; train.py also does it as soon as an interrupted run has saved its parameters
        (a scheduler's SIGKILL may follow its SIGTERM before the evaluation is done), and for the methods of
        --method all that finished before another failed (`folders`: those only; the others stay as they were)."""
        folders = self.folders if folders is None else [Path(f) for f in folders]
        new = {f: sorted(p.name for p in self.staged(f).iterdir() if p.is_file() and p.suffix != ".tmp")
                  if self.staged(f).is_dir() else [] for f in folders}
        if not any(new.values()):  # stopped before anything was written: the earlier run stays as it was
            return
        with signals_held():
            for folder in folders:
                staged = self.staged(folder)
                for name in self.replaces:
                    if name not in new[folder] and name not in self.published[folder] and (folder / name).is_file():
                        os.remove(folder / name)           # the earlier run's, not made by this one
                for name in new[folder]:
                    try:
                        os.replace(staged / name, folder / name)
                    except OSError as e:
                        raise WriteError(folder / name, e) from None
                    self.published[folder].add(name)

    def _release(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        for folder, fd in reversed(self.locks.items()):
            unlock(folder, fd)
        self.locks = {}
        for folder in reversed(self.created):   # innermost first; only the empty ones go
            with contextlib.suppress(OSError):
                folder.rmdir()


# ----------------------------------------------------------------------------- signals


@contextlib.contextmanager
def signals_held():
    """Within: Ctrl-C and SIGTERM wait until the end (they are blocked, then delivered), so that a group of
    renames is never cut in the middle. (Nothing is held where signals cannot be blocked: Windows.)"""
    held = {signal.SIGINT, signal.SIGTERM}
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


@contextlib.contextmanager
def signals_interrupt():
    """Within: SIGTERM raises KeyboardInterrupt("SIGTERM"), so that it stops a run as Ctrl-C does (training
    ends and saves; ascale.fit reports who stopped it); the previous handler comes back afterwards.
    SIGXFSZ (a file-size limit reached) is ignored, so that the write fails with EFBIG (a WriteError)
    instead of killing the process (Python ignores it already; set here so it is certain)."""
    def stop(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
