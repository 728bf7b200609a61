"""Keep the memory a batch frees for the next batch, instead of handing it back to the kernel.

A batch through the networks allocates and frees feature maps of tens of megabytes, over
and over. With glibc's defaults each comes back from the kernel as fresh pages, and every
page faults in on first touch: blocks above the mmap threshold (32 MB at most) are mapped
and unmapped per allocation, the heap's top is trimmed whenever 128 KB lie free there, and
each thread that allocates gets an arena of its own, made of 64 MB heaps that a larger
block does not fit. On the face pipeline that was ~3,300 page faults and ~6 CPU-ms per
image, a tenth of its time (BENCHMARKS.md, "Face pipeline throughput").

`keep_freed_memory(slack)` sets one arena for all threads, and both the mmap threshold and
the trim threshold to `slack`: blocks up to that size are reused from the heap, and the
process keeps up to `slack` bytes of free heap rather than returning them. It changes no
result. Only glibc has these knobs (`mallopt`); elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def keep_freed_memory(slack_bytes: int) -> bool:
    """Reuse freed blocks of up to `slack_bytes` in-process (see the module). Best called
    before the worker threads start: a thread that already has an arena keeps it. Returns
    whether glibc took every setting; `slack_bytes` 0 leaves glibc's defaults."""
    if slack_bytes <= 0:
        return False
    libc = _libc()
    if libc is None:
        return False
    # Each call returns 1 on success; order matters little, all three are needed.
    taken = [libc.mallopt(option, value) for option, value in (
        (M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, slack_bytes), (M_TRIM_THRESHOLD, slack_bytes),
    )]
    if not all(taken):
        log.warning("glibc refused some malloc settings (%s): freed tensor memory may be unmapped per batch", taken)
    return all(taken)
