"""The trainer's metrics of one committed transaction, and its lag.

Called only after the commit: an aborted batch is read and learned again, and
what it counted (`TxnCounts`) would be counted twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from stream_app.events import DlqRecord, RowBlock
from stream_app.kafka.records import Partition, RawRecord
from stream_app.observability.metrics import EventOutcome, FreshnessSince, TrainerMetrics
from stream_app.trainer.batch import Decoded, TxnCounts


def observe_commit(m: TrainerMetrics, counts: TxnCounts, batch: list[RawRecord],
                   decoded: Decoded, blocks: list[RowBlock], dlq: list[DlqRecord],
                   published_ms: int, table_sizes: Mapping[str, int]) -> None:
    m.batch_size_events.observe(len(batch))
    for (topic, event_outcome), n in counts.events.items():
        m.count_events(topic, event_outcome, n)
    for table, n in counts.admissions.items():
        m.admissions.labels(table=table).inc(n)
    for table, n in counts.evictions.items():
        m.evictions.labels(table=table).inc(n)
    for rec in dlq:
        m.count_dlq(rec.reason)
    for topic, n in Counter(d.source_topic for d in decoded.dlq).items():
        m.count_events(topic, EventOutcome.DLQ, n)
    for block in blocks:
        m.rows_published.labels(table=block.entity).inc(len(block))
    events = [e for seg in decoded.segments for e in seg]
    raws = [r for seg in decoded.records for r in seg]
    m.observe_freshness(FreshnessSince.EVENT_TIME,
                        ((published_ms - e.ts) / 1000 for e in events))
    m.observe_freshness(FreshnessSince.PRODUCE_TIME,
                        ((published_ms - r.timestamp_ms) / 1000 for r in raws))
    m.table_rows.labels(table="user").set(table_sizes["users"])
    m.table_rows.labels(table="item").set(table_sizes["items"])


def report_lag(m: TrainerMetrics, lag: Mapping[Partition, int]) -> None:
    for (topic, partition), n in lag.items():
        m.set_lag(topic, partition, n)
