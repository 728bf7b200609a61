"""The C heap's policy (glibc): freed tensor memory stays in the process for the next batch,
so a repeated large allocation stops faulting fresh pages in (0 leaves glibc's defaults);
and free memory inside the heap goes back to the kernel when released."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap

import pytest

from identity.config import Settings
from identity.memory import _libc, keep_freed_memory

glibc_only = pytest.mark.skipif(_libc() is None, reason="mallopt is glibc's")

# A worker thread allocates and frees a 48 MB tensor (a conv output of a 32-crop batch) over
# and over, and reports the page faults of the last 20 times. The first few grow the heap
# (an aligned block does not fit the hole its predecessor left) and fault whatever the
# settings; then the freed blocks are reused.
_PROBE = textwrap.dedent("""
    import resource, sys, threading
    import torch
    from identity.memory import keep_freed_memory
    keep_freed_memory(int(sys.argv[1]) << 20)
    faults = []
    def work():
        for _ in range(20):
            torch.empty(12_000_000).fill_(1.0)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):
            torch.empty(12_000_000).fill_(1.0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    thread = threading.Thread(target=work)
    thread.start(); thread.join()
    print(faults[0])
""")


def _faults(slack_mb: int) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(slack_mb)], capture_output=True, text=True,
                         check=True, timeout=120)
    return int(out.stdout.split()[-1])


@glibc_only
def test_a_batch_sized_block_is_reused_instead_of_faulted_in_again() -> None:
    pages = 12_000_000 * 4 // resource.getpagesize()
    assert _faults(0) >= 10 * pages  # glibc's defaults: fresh pages nearly every time
    assert _faults(256) < pages  # kept: at most the first allocation's pages


def test_zero_leaves_the_c_library_alone() -> None:
    assert keep_freed_memory(0) is False


def test_the_setting_defaults_to_256_mb_and_refuses_negatives() -> None:
    from pydantic import ValidationError

    assert Settings().pipeline.keep_freed_mb == 256
    assert Settings(keep_freed_mb=0).pipeline.keep_freed_mb == 0
    with pytest.raises(ValidationError):
        Settings(keep_freed_mb=-1)


# Half of 400 heap blocks of 2 MB freed, every other one: holes in the middle of the heap,
# which glibc keeps (nothing free at its top to trim) until asked to release them.
_RELEASE = textwrap.dedent("""
    import sys
    import numpy as np
    from identity.memory import keep_freed_memory, release_free_memory

    def rss_mb():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) // 1024

    keep_freed_memory(1 << 30)
    blocks = [np.ones(1 << 18) for _ in range(400)]
    del blocks[::2]
    before = rss_mb()
    released = release_free_memory()
    print(before, rss_mb(), released)
""")


@glibc_only
def test_free_memory_inside_the_heap_goes_back_to_the_kernel_when_released() -> None:
    out = subprocess.run([sys.executable, "-c", _RELEASE], capture_output=True, text=True, check=True, timeout=120)
    before, after, released = out.stdout.split()
    assert released == "True"
    assert int(before) - int(after) >= 300, (before, after)  # ~400 MB of holes handed back
