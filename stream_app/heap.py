"""Memory handling around a load phase: the collector paused, free pages handed back.

A trainer's restore and a scorer's load stream a whole changelog through
Kafka's fetch buffers and one Python object per record, all garbage once the
tables are built. glibc keeps
freed small and medium blocks in the process heap, so without a trim the
resident size after a restore stays at its peak for the life of the
process (BENCHMARKS.md, Restore and memory).
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """Run the block with Python's cyclic garbage collector off (as it was after).

    A restore allocates millions of objects (decoded rows, ids) and makes no
    reference cycles, so the collector frees nothing there; but every few
    thousand allocations it walks the objects that survived, a tenth of a
    restore's CPU at 200K rows. Reference counting still frees everything.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def freeze_survivors() -> None:
    """Collect the load's garbage, then move every object left out of the collector's
    reach (`gc.freeze`).

    A loaded table is hundreds of thousands of long-lived containers (id indexes,
    users' recent items) that hold no cycles, yet each full collection walks them
    all, and full collections keep coming while requests are served: a scorer over
    100K items paused 14-103 ms nine times in 40 s of load, on the request path.
    Objects made later are collected as before.
    """
    gc.collect()
    gc.freeze()


def release_free_memory() -> bool:
    """`malloc_trim(0)` where the C library has it (glibc); False elsewhere, a no-op.

    `CDLL(None)` is the running process, the C library included: no library
    search (which on Linux runs `ldconfig`).
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
