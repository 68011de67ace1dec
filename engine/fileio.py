"""Atomic file writes: readers see the old file or the new one, never a partial one.

Everything that writes a file others may read while it is being written (checkpoints, dataset
caches, configs, tables) goes through here. The new content is written to a temporary file in
the same folder, flushed to disk and renamed over the target with ``os.replace``; on any
failure the temporary file is removed and the target is left as it was. The temporary file is
opened normally (not with ``mkstemp``), so the result gets the usual umask permissions.

A process killed outright (SIGKILL, a power cut) cannot remove its temporary file;
:func:`remove_stale_temps` does when the next run starts. A write that fails for want of space
(``ENOSPC``, ``EDQUOT``) is an :class:`engine.errors.OutputError` naming the file.

This module depends on the standard library (and the import-free :mod:`engine.errors`) only, so
any layer may import it.
"""

from __future__ import annotations

import errno
import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from lil_meta.engine.errors import OutputError

__all__ = ["atomic_write", "atomic_path", "remove_stale_temps", "disk_full_error", "NO_SPACE"]

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_TEMP = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")


def disk_full_error(path: str | os.PathLike, exc: OSError) -> OutputError:
    """The one-line error of a write to ``path`` that failed for want of space."""
    return OutputError(f"{path}: cannot write it: {exc.strerror or 'no space left on device'}; the "
                       "previous version of the file, if any, is kept; free some space and continue "
                       "with --resume")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, owned: bool = False) -> list[Path]:
    """Remove the temporary files (``.NAME.PID.HEX.tmp``) an earlier process left in ``folder``
    when it died mid-write; returns them. With ``owned`` (the caller holds the folder's run
    lock, so no other process writes there) every one goes; otherwise only those whose process
    is no longer alive on this machine."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None or int(match.group(1)) == os.getpid():
            continue
        if owned or not _alive(int(match.group(1))):
            try:
                entry.unlink()
            except OSError:
                continue
            removed.append(entry)
    return removed


def _temp_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for the caller to create; on a clean exit it is
    fsynced and renamed over ``path``, on an exception it is removed.

    For writers that want a file name rather than an open file (e.g. ``np.lib.format.open_memmap``).
    """
    path = Path(path)
    tmp = _temp_name(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            raise disk_full_error(path, exc) from None
        raise


def atomic_write(path: str | os.PathLike, content: bytes | str | Callable[[IO[bytes]], object]) -> Path:
    """Write ``content`` to ``path`` atomically and return ``path``.

    ``content`` is bytes, a str (written as UTF-8), or a callable that writes to the binary
    file it is given (``lambda f: torch.save(obj, f)``).
    """
    path = Path(path)
    if isinstance(content, str):
        content = content.encode()
    write = (lambda f: f.write(content)) if isinstance(content, bytes | bytearray | memoryview) else content
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        write(f)
    return path
