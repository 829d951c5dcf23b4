"""`release_free_memory`, `paused_gc` and `freeze_survivors`: memory handling around a load."""

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


def test_freeze_survivors_collects_the_garbage_and_freezes_what_lives() -> None:
    """What a process has at its start (its modules) is frozen, so full collections no
    longer walk it; garbage cycles are freed first, not frozen for good."""
    import weakref

    from stream_app.heap import freeze_survivors

    class Node:
        other: object = None

    kept, cycle = [Node() for _ in range(1000)], Node()
    cycle.other = cycle
    dead = weakref.ref(cycle)
    del cycle
    before = gc.get_freeze_count()
    freeze_survivors()  # the conftest's fixture unfreezes after the test
    assert dead() is None
    assert gc.get_freeze_count() >= before + len(kept)
    assert not any(gc.is_tracked(x) and x in gc.get_objects() for x in kept[:3])
