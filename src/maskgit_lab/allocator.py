"""Keep freed memory in the process (glibc's allocator), so large tensors reuse their pages.

glibc serves each large allocation with a fresh ``mmap`` and returns it when freed, so every
sampling step's large buffers fault their (zeroed) pages in again; with this setting they
reuse the heap. The process then keeps its peak heap. Applied by the commands
(``maskgit_lab.process``) on glibc Linux; ``MASKGIT_KEEP_FREED_MEMORY=0`` turns it off.
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
