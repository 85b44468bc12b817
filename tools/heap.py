"""Keep freed block-sized buffers in a node's process instead of giving them back.

Blocks reach a node as buffers of up to 4 MiB: received, checksummed, written, freed, dozens
a second. By default glibc serves allocations that large with fresh mmaps once several are
live (its threshold adapts only up to the size last freed) or gives the heap's free top back,
so every page of the next buffer is faulted in and zeroed again. On a virtual machine that
first touch runs at about 1 GB/s: it cost each node up to 0.3 s of CPU per 512 MiB written.
A fixed mmap threshold above any frame and a trim threshold of 64 MiB keep freed buffers warm
for the next ones. The price is memory: a heap keeps its high-water mark, which for a node is
bounded by what it lets its peers send (`ringfs.node.rpc.intake`). The mount keeps glibc's
defaults: with them its peak while copying a 4 GiB file is 140 MiB, with these 328 MiB.
"""

from __future__ import annotations

import ctypes
import ctypes.util

#: mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Allocations below this come from the heap (a frame is at most 16 MiB plus its header).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory at the top of a heap kept for reuse instead of being given back.
TRIM_THRESHOLD = 64 * 1024 * 1024


def keep_freed_buffers() -> bool:
    """Tune the C allocator as above; False where it is not glibc's (nothing changes)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
