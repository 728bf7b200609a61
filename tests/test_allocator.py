"""Freed tensor memory stays in the process for the next batch (glibc's malloc settings), so
a repeated large allocation stops faulting fresh pages in; 0 leaves glibc's defaults."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap

import pytest

from identity.config import Settings
from identity.faces.allocator import _libc, keep_freed_memory

glibc_only = pytest.mark.skipif(_libc() is None, reason="mallopt is glibc's")

# A worker thread allocates and frees a 48 MB tensor (a conv output of a 32-crop batch) over
# and over, and reports the page faults of the last 20 times. The first few grow the heap
# (an aligned block does not fit the hole its predecessor left) and fault whatever the
# settings; then the freed blocks are reused.
_PROBE = textwrap.dedent("""
    import resource, sys, threading
    import torch
    from identity.faces.allocator import keep_freed_memory
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
