"""`release_free_memory` and `paused_gc`: memory handling around a restore."""

from __future__ import annotations

import gc
import platform

import pytest

from stream_app import heap
from stream_app.heap import paused_gc, release_free_memory


def test_trims_on_glibc_and_is_a_no_op_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = [bytes(4096) for _ in range(10_000)]  # something freed for the trim to find
    del blocks
    assert release_free_memory() is (platform.libc_ver()[0] == "glibc")
    calls: list[int] = []  # and it calls malloc_trim(0), not just says so

    class _Libc:
        @staticmethod
        def malloc_trim(pad: int) -> int:
            calls.append(pad)
            return 1

    monkeypatch.setattr(heap.ctypes, "CDLL", lambda _name: _Libc())
    assert release_free_memory() is True and calls == [0]


def test_paused_gc_turns_the_collector_back_on_even_after_an_error() -> None:
    assert gc.isenabled()
    with pytest.raises(RuntimeError), paused_gc():
        assert not gc.isenabled()
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_paused_gc_leaves_a_collector_that_was_off_off() -> None:
    gc.disable()
    try:
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
