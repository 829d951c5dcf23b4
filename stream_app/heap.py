"""Hand the heap's free pages back to the operating system after a load phase.

A restore streams a whole changelog through Kafka's fetch buffers and one
Python object per record, all garbage once the tables are built. glibc keeps
freed small and medium blocks in the process heap, so without a trim the
resident size after a restore stays at its peak for the life of the
process (BENCHMARKS.md, Restore and memory).
"""

from __future__ import annotations

import ctypes


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
