"""Atomic file writes: readers see the old file or the new one, never a partial one.

Everything that writes a file others may read while it is being written (checkpoints, dataset
caches, configs, tables) goes through here. The new content is written to a temporary file in
the same folder, flushed to disk and renamed over the target with ``os.replace``; on any
failure the temporary file is removed and the target is left as it was. The temporary file is
opened normally (not with ``mkstemp``), so the result gets the usual umask permissions.

This module depends on the standard library only, so any layer may import it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "atomic_path"]


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
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, content: bytes | str | Callable[[IO[bytes]], object]) -> Path:
    """Write ``content`` to ``path`` atomically and return ``path``.

    ``content`` is bytes, a str (written as UTF-8), or a callable that writes to the binary
    file it is given (``lambda f: torch.save(obj, f)``).
    """
    path = Path(path)
    if isinstance(content, str):
        content = content.encode()
    write = (lambda f: f.write(content)) if isinstance(content, bytes | bytearray) else content
    tmp = _temp_name(path)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
