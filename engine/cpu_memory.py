"""Keep freed CPU memory in the process, so that large tensors do not page-fault every step.

glibc's ``malloc`` serves large blocks (above a threshold that starts at 128 KiB and adapts up to
32 MiB) from a fresh ``mmap`` and gives them back to the kernel on ``free``. A meta-training step allocates and frees the same large activations
(e.g. 75 × 64 × 84 × 84 floats, 135 MB, per query pass) every iteration, so every step pays
the kernel for zeroed pages again: on this project's CPU benchmark that was about a quarter of
second-order MAML's step (``docs/performance.md``). PyTorch keeps a caching allocator on CUDA,
not on CPU; the usual CPU remedy is to preload jemalloc or tcmalloc. The same effect, without
an extra library, is two ``mallopt`` settings made at start-up: serve every block from the heap
(``M_MMAP_MAX = 0``) and never trim the heap back (``M_TRIM_THRESHOLD``), so that freed blocks
are reused. The process then holds its peak RSS, as a caching allocator does, and that peak is
higher than with glibc's defaults (``docs/performance.md`` has both figures).

``LIL_CPU_MALLOC=system`` leaves glibc's defaults alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_NEVER_TRIM = -1  # glibc stores the threshold as size_t: -1 becomes SIZE_MAX
_applied: str | None = None


def keep_freed_memory() -> str:
    """Apply the settings once per process; return a one-line description for the log."""
    global _applied
    if _applied is not None:
        return _applied
    if os.environ.get("LIL_CPU_MALLOC", "").lower() == "system":
        _applied = "CPU malloc: system defaults (LIL_CPU_MALLOC=system)"
        return _applied
    libc_name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(libc_name).mallopt if libc_name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        _applied = "CPU malloc: system defaults (no glibc mallopt here)"
        return _applied
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, _NEVER_TRIM) == 1
    _applied = ("CPU malloc: freed memory kept for reuse (glibc mallopt; LIL_CPU_MALLOC=system to turn off)"
                if ok else "CPU malloc: system defaults (mallopt refused the settings)")
    return _applied
