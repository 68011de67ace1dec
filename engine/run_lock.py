"""One process owns a run folder: an exclusive ``flock`` on ``OUTPUT_DIR/run.lock``.

:func:`acquire` is taken by :func:`engine.runner.build_run` before anything is written into the
folder, and the folder is checked (:func:`engine.defaults.check_output_dir`) only once the lock
is held, so two runs started together cannot both pass the check and then both write. A second
run into a locked folder, fresh or ``--resume``, is refused with one line naming the folder and
the holder's pid. The lock is the kernel's: it goes away with the process that holds it, however
that process ends (a crash or SIGKILL included), so a dead holder never blocks.

The holder's pid is read from ``/proc/locks`` (this node) or, failing that, from the lock file,
where the holder writes ``pid host`` once its checks have passed. A refused run leaves the
folder as it was: it never writes the lock file, and removes it again when it created it (and
the folder, when it created that too). The shared-filesystem caveats are in docs/cluster.md.

Standard library only.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

from lil_meta.engine.errors import UserInputError

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError", "acquire"]

LOCK_NAME = "run.lock"


class RunLockedError(UserInputError):
    """Another live process holds the run folder's lock."""


def _holder_from_proc(inode: int) -> str | None:
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(inode):
            return parts[4]
    return None


def _holder(fd: int) -> str:
    pid = _holder_from_proc(os.fstat(fd).st_ino)
    if pid is not None:
        return f"pid {pid}"
    try:
        text = os.pread(fd, 256, 0).decode("ascii", "replace").split()
    except OSError:
        text = []
    if text and text[0].isdigit():
        return f"pid {text[0]}" + (f" on {text[1]}" if len(text) > 1 else "")
    return "pid unknown"


class RunLock:
    """The held lock of one run folder; :meth:`release` (or the process's exit) lets it go."""

    def __init__(self, folder: Path, fd: int, created_file: bool, created_folder: bool) -> None:
        self.folder, self.path, self._fd = folder, folder / LOCK_NAME, fd
        self.created_file, self.created_folder = created_file, created_folder

    @property
    def held(self) -> bool:
        return self._fd is not None

    def mark_owner(self) -> None:
        """Record ``pid host`` in the lock file: the run is past its checks and now writes."""
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except OSError as exc:
            raise UserInputError(f"{self.path}: cannot write it ({exc.strerror or exc}); the run folder "
                                 "must be writable, with some free space") from None
        self.created_file = self.created_folder = False  # the folder is this run's from here on

    def release(self, undo: bool = False) -> None:
        """Let the lock go; with ``undo``, first remove what :func:`acquire` created (the lock
        file, the folder) if the run never got past its checks."""
        if self._fd is None:
            return
        try:
            if undo and self.created_file:
                self.path.unlink(missing_ok=True)
                if self.created_folder:
                    try:
                        self.folder.rmdir()
                    except OSError:
                        pass
        finally:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None


def acquire(folder: str | os.PathLike) -> RunLock:
    """Create ``folder`` if needed and take its lock without waiting; :class:`RunLockedError`
    when another process holds it, :class:`UserInputError` when the folder cannot be written."""
    folder = Path(folder)
    created_folder = not folder.is_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"output_dir: cannot write to {folder} ({exc.strerror or exc})") from None
    path = folder / LOCK_NAME
    while True:
        created_file = not path.exists()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if created_folder:
                _rmdir_quietly(folder)
            raise UserInputError(f"output_dir: cannot write to {folder} ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd) if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
            os.close(fd)
            if holder is None:
                raise UserInputError(f"{path}: cannot lock the run folder ({exc.strerror or exc}); "
                                     "see docs/cluster.md on locks over shared filesystems") from None
            raise RunLockedError(f"output folder {folder} is in use by another run ({holder}, lock "
                                 f"{LOCK_NAME}); wait for it to end or choose another --output-dir") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return RunLock(folder, fd, created_file, created_folder)
        os.close(fd)  # a refused run removed the file it had created between our open and flock


def _rmdir_quietly(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
