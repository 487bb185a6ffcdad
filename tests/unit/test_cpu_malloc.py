"""excb.cpu.tune_malloc: large CPU tensors come from glibc's heap (reused after free) instead of
a fresh mmap each time (page-faulted in on every allocation)."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# While a 64 MiB tensor is alive, count glibc's mmap'ed chunks (mallinfo2().hblks/hblkhd).
PROBE = r"""
import ctypes, sys, torch
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "tuned":
    from excb.cpu import tune_malloc
    assert tune_malloc()
x = torch.ones(4096, 4096)             # 64 MiB
y = x * 2.0
print(libc.mallinfo2().hblkhd)
"""

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_tuned_malloc_serves_large_tensors_from_the_heap():
    def mmapped_bytes(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                             env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
        return int(out.stdout.strip().splitlines()[-1])

    assert mmapped_bytes("default") >= 2 * 64 * 2 ** 20   # x and y each in their own mapping
    assert mmapped_bytes("tuned") < 64 * 2 ** 20          # neither: both reusable heap blocks


def test_tune_malloc_can_be_disabled(monkeypatch):
    import excb.cpu as cpu

    monkeypatch.setattr(cpu, "_done", False)
    monkeypatch.setenv("EXCB_TUNE_MALLOC", "0")
    assert cpu.tune_malloc() is False
