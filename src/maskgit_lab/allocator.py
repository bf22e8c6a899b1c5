"""Keep freed memory in the process (glibc's allocator), so large tensors reuse pages.

By default glibc serves every allocation above a (dynamic) threshold of up to 32 MiB with a
fresh ``mmap`` and returns it to the system when freed: each of the sampler's [M, 1024]
float buffers (64 MB at batch 250) then costs ~16,000 page faults that zero the pages
again, at every step. Measured on a 2-core AMD EPYC Zen 5 (bf16): a T = 8 decode of 250
images 0.91 s -> 0.73 s, a full-grid transformer forward 108 -> 84 ms, system time 1.9 s
-> 0.5 s; a sampling forward no faster compiled than eager once this is on. The cost:
the process keeps its peak heap instead of returning it (a loop of such buffers settles at
~1.4x the bytes it holds at once, then faults no more; tests/test_hardware.py).

Applied when the package is imported (glibc Linux only; elsewhere nothing changes);
``MASKGIT_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Serve large allocations from the heap and do not give freed memory back; True when
    applied."""
    if os.environ.get("MASKGIT_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
