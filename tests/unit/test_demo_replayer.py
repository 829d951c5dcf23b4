"""The demo's background replay hands any failure to the main thread, not only Kafka's."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

import stream_app.demo.replayer as replayer_module
from stream_app.demo.replayer import Replayer
from stream_app.sources import RawRecord
from stream_app.sources.generate import generate
from tests.unit.kafka.stand_ins import NO_BROKER


def test_a_replay_that_fails_unexpectedly_is_not_done(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only KafkaEdgeError and ConfigError were kept: any other failure left `done` True
    and nothing to raise, so the display called a partial replay finished."""

    def breaks_after_five(_kafka: object, records: Iterable[RawRecord], **_kw: object) -> int:
        for n, _ in enumerate(records, 1):
            if n == 5:
                raise RuntimeError("disk gone")
        return n

    monkeypatch.setattr(replayer_module, "produce_records", breaks_after_five)
    replay = Replayer(NO_BROKER, list(generate(10, 3, 5, seed=0)))
    replay.start()
    replay._thread.join(10)  # noqa: SLF001
    assert not replay.done
    with pytest.raises(RuntimeError, match="disk gone"):
        replay.raise_error()
