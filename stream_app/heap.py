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
    """Collect what is garbage, then move every object left out of the collector's reach
    (`gc.freeze`); for a process's start, after its imports.

    The modules' objects (~190K, torch's mostly) live as long as the process, yet
    each full collection walks them all: ~100 ms, on a scorer's request path
    (pauses of 105-137 ms while serving) and 7% of a trainer's time (45 full
    collections, 5.2 s in 75 s, as each batch's events outlive the younger
    generations). Objects made later (tables, batches) are collected as before.
    For a process's own entry (`run_trainer`, `run_scorer`, which also take its
    signals): called inside another program, it freezes that program's objects,
    and those that later turn into reference cycles are never collected.
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
