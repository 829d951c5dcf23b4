"""`release_free_memory`: the trim after a restore runs where glibc is the C library."""

from __future__ import annotations

import platform

from stream_app.heap import release_free_memory


def test_trims_on_glibc_and_is_a_no_op_elsewhere() -> None:
    blocks = [bytes(4096) for _ in range(10_000)]  # something freed for the trim to find
    del blocks
    assert release_free_memory() is (platform.libc_ver()[0] == "glibc")
