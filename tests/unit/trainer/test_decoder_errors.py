"""A record that meets a bug in the decoder is dead-lettered; a run of them stops the
trainer before it commits, so a broken build does not drain the input into the DLQ.

Stand-ins for the publisher and the restore: `test_abort_restore`'s.
"""

from __future__ import annotations

import pytest

import stream_app.trainer.batch
import stream_app.trainer.loop
from stream_app.events import Event, EventKind
from stream_app.kafka.transaction import TxnOutcome
from tests.unit.core.streams import small_config
from tests.unit.trainer.test_abort_restore import _click, _trainer


def _broken_for(monkeypatch: pytest.MonkeyPatch, bad_ids: set[str]) -> None:
    real = stream_app.trainer.batch.decode_event

    def decode(value: bytes | None, key: bytes | None, kind: EventKind) -> Event:
        event = real(value, key, kind)
        if event.event_id in bad_ids:
            raise AttributeError("a bug")
        return event

    monkeypatch.setattr(stream_app.trainer.batch, "decode_event", decode)


def test_a_run_of_decoder_errors_stops_the_trainer_before_it_commits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_app.trainer.loop, "DECODER_ERRORS_MAX", 5)
    trainer, publisher = _trainer(monkeypatch, small_config(), aborts=[])
    clicks = trainer.topics.clicks
    _broken_for(monkeypatch, {f"e{n}" for n in range(100)})
    first = trainer.process([_click(clicks, n, "u", f"e{n}") for n in range(3)], None,
                            publisher)
    assert first.outcome is TxnOutcome.COMMITTED and first.dlq == 3
    committed = list(publisher.log)
    with pytest.raises(RuntimeError, match="5 records in a row met a bug in this build"):
        trainer.process([_click(clicks, n, "u", f"e{n}") for n in range(3, 5)], None,
                        publisher)
    assert publisher.log == committed


def test_decoder_errors_among_records_that_decode_never_stop_the_trainer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_app.trainer.loop, "DECODER_ERRORS_MAX", 5)
    trainer, publisher = _trainer(monkeypatch, small_config(), aborts=[])
    clicks = trainer.topics.clicks
    _broken_for(monkeypatch, {f"e{n}" for n in range(100) if n % 5})
    for start in range(0, 100, 10):  # 4 in a row raise, across batches too, then one decodes
        result = trainer.process([_click(clicks, n, "u", f"e{n}")
                                  for n in range(start + 1, start + 11)], None, publisher)
        assert result.outcome is TxnOutcome.COMMITTED and result.dlq == 8
