"""The C heap (glibc's malloc): what a process keeps of the memory it frees, and when it gives
the rest back. Only glibc has these knobs (`mallopt`, `malloc_trim`); elsewhere nothing
changes. Neither changes any result.

* `keep_freed_memory(slack)`: keep the memory a batch frees for the next batch. A batch
  through the networks allocates and frees feature maps of tens of megabytes, over and over.
  With glibc's defaults each comes back from the kernel as fresh pages, and every page
  faults in on first touch: blocks above the mmap threshold (32 MB at most) are mapped and
  unmapped per allocation, the heap's top is trimmed whenever 128 KB lie free there, and
  each thread that allocates gets an arena of its own, made of 64 MB heaps that a larger
  block does not fit. On the face pipeline the kernel's time faulting those pages in was a
  tenth of the CPU time (BENCHMARKS.md, "Face pipeline throughput"). This sets one arena
  for all threads, and both thresholds to `slack`: blocks up to that size are reused from
  the heap, and the process keeps up to `slack` bytes of free heap.
* `release_free_memory()`: hand every free page of the heap back to the kernel, after a
  large structure is dropped (an index replaced by another). Free memory in the middle of
  the heap is otherwise kept: an index built from many growing lists leaves it behind.
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


def release_free_memory() -> bool:
    """Return the heap's free pages to the kernel (`malloc_trim(0)`); False where there is no
    glibc. Costs a walk over the heap's free chunks: for after a large structure is freed, not
    for every request."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
