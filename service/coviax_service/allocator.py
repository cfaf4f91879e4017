"""The server process's C allocator: give freed memory back to the system after each job.

A U-Net server allocates and frees slice-sized buffers (about 1 MiB each: HU, tensors, class maps)
from several threads for every scan. glibc raises its mmap threshold each time such a buffer is
freed, so later ones come from the heaps, where they fragment: the resident memory of a server
grew from 758 to 1034 MiB over 25 scans of 16 slices (bench/server_memory.py) and was never given
back. ``malloc_trim(0)`` after each job returns the free pages of every heap. Not glibc (musl,
macOS): nothing to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("coviax.service")


def _load_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_malloc_trim = _load_trim()


def release_free_memory() -> bool:
    """Return the allocator's free memory to the system; False where the C library cannot."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True
