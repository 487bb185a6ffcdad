"""CPU runtime settings that matter for K-wide tensors.

glibc returns every freed block above its mmap threshold (at most 32 MiB) to the kernel, so a
(256, 65,536) fp32 temporary — created and freed several times per ExCB step — is page-faulted
back in, 4 KiB at a time, on every allocation: 45-55 ms for a 64 MiB product on this project's
2-core test machine, 7 ms once the block is reused from the heap
(``benchmarks/perf/bench_step.py`` shows the step-level effect). ``tune_malloc`` raises the
threshold so large blocks are recycled, as CUDA's caching allocator does on a GPU; resident
memory then stays at the step's peak instead of shrinking between steps.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_M_TRIM_THRESHOLD = -1    # mallopt parameters from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_done = False


def tune_malloc(max_block_bytes: int = 1 << 30) -> bool:
    """Serve blocks up to ``max_block_bytes`` from glibc's heap and keep freed memory for reuse.

    No-op (returns False) off glibc, or when ``EXCB_TUNE_MALLOC=0``. Idempotent. Affects only
    allocations made afterwards.
    """
    global _done
    if _done:
        return True
    if os.environ.get("EXCB_TUNE_MALLOC", "1") == "0" or platform.system() != "Linux" \
            or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, int(max_block_bytes)) == 1
        ok = ok and libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1
    except (OSError, AttributeError):
        return False
    _done = ok
    return ok
