"""The trainer's metrics of one committed transaction, and its lag.

Called only after the commit: an aborted batch is read and learned again, and
what it counted (`TxnCounts`) would be counted twice.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from stream_app.core import EvalStats
from stream_app.events import DlqRecord, RowBlock
from stream_app.kafka.client_logs import Repeats
from stream_app.kafka.partitioners import consistent_random, murmur2_random
from stream_app.kafka.records import Partition, RawRecord
from stream_app.observability.metrics import (
    EvalModel,
    EventOutcome,
    FreshnessSince,
    TrainerMetrics,
)
from stream_app.trainer.batch import CONTROL_HEADER, Decoded, TxnCounts

log = logging.getLogger(__name__)


def observe_commit(m: TrainerMetrics, counts: TxnCounts, batch: list[RawRecord],
                   decoded: Decoded, blocks: list[RowBlock], dlq: list[DlqRecord],
                   published_ms: int, table_sizes: Mapping[str, int],
                   evals: Sequence[EvalStats]) -> None:
    m.batch_size_events.observe(len(batch))
    for (topic, event_outcome), n in counts.events.items():
        m.count_events(topic, event_outcome, n)
    for table, n in counts.admissions.items():
        m.admissions.labels(table=table).inc(n)
    for table, n in counts.evictions.items():
        m.evictions.labels(table=table).inc(n)
    m.forgets.inc(counts.forgets)
    for rec in dlq:
        m.count_dlq(rec.reason)
    for topic, n in Counter(d.source_topic for d in decoded.dlq).items():
        m.count_events(topic, EventOutcome.DLQ, n)
    for block in blocks:
        m.rows_published.labels(table=block.entity).inc(len(block))
    # Applied events only: a duplicate, a rate-limited or a dead-lettered one has no row.
    m.observe_freshness(FreshnessSince.EVENT_TIME,
                        ((published_ms - ts) / 1000 for ts, _ in counts.applied_times))
    m.observe_freshness(FreshnessSince.PRODUCE_TIME,  # a record without a timestamp
                        ((published_ms - at) / 1000 for _, at in counts.applied_times
                         if at > 0))  # (-1) would count as 56 years late
    if counts.losses:
        m.training_loss.set(sum(x * n for x, n in counts.losses)
                            / sum(n for _, n in counts.losses))
    report_table_rows(m, table_sizes)
    report_prequential(m, evals)


def report_table_rows(m: TrainerMetrics, table_sizes: Mapping[str, int]) -> None:
    m.table_rows.labels(table="user").set(table_sizes["users"])
    m.table_rows.labels(table="item").set(table_sizes["items"])


def report_prequential(m: TrainerMetrics, evals: Sequence[EvalStats]) -> None:
    """The committed batch's test-then-train scores: its evaluated steps weighted by their
    events. The last step alone made the gauges jump (a forget splits a batch, and a
    3-event step scores 0 or 1); an aborted batch publishes none."""
    weights = [ev.n_events for ev in evals]
    if not sum(weights):
        return
    for model, part in ((EvalModel.MODEL, "model"), (EvalModel.POPULARITY, "popularity")):
        mean = {name: float(np.average([getattr(getattr(ev, part), name) for ev in evals],
                                       weights=weights))
                for name in ("hit_rate", "recall", "mrr")}
        m.set_prequential(model, **mean)
    m.prequential_sampled.set(float(any(not ev.exact for ev in evals)))
    finite = [(ev.loss, w) for ev, w in zip(evals, weights, strict=True) if math.isfinite(ev.loss)]
    if finite:
        m.prequential_loss.set(float(np.average([x for x, _ in finite],
                                                weights=[w for _, w in finite])))


def report_lag(m: TrainerMetrics, lag: Mapping[Partition, int]) -> None:
    for (topic, partition), n in lag.items():
        m.set_lag(topic, partition, n)


def report_misrouted(m: TrainerMetrics, wrong: Sequence[RawRecord],
                     partitions: Mapping[str, int], repeats: Repeats) -> None:
    """Count the committed batch's misrouted events and forget requests (`batch.misrouted`)
    and say so, once per topic per REPEAT_WINDOW_S: nothing else shows a producer with
    another partitioner, whose users' events and forget requests then part ways."""
    for topic, n in Counter(rec.topic for rec in wrong).items():
        m.events_misrouted.labels(topic=topic).inc(n)
    for rec in wrong:
        forget = rec.header(CONTROL_HEADER) == b"forget"
        # Every forget is named: each user it names must be forgotten again.
        more = repeats.admit((rec.topic, forget), always=forget)
        if more is None or rec.key is None:
            continue
        n = partitions[rec.topic]
        if forget:
            log.error("misrouted forget request on %s: user %r is on partition %d, where "
                      "librdkafka's default partitioner puts it on %d and Java's on %d%s. It "
                      "is applied here, but with two or more trainers the user's row may be "
                      "learned by another one, which never sees it: forget the user again "
                      "with `stream-app forget` (README, Partitioner); counted in "
                      "stream_app_events_misrouted_total", rec.topic,
                      rec.key.decode(errors="replace"), rec.partition,
                      consistent_random(rec.key, n), murmur2_random(rec.key, n), more)
            continue
        log.warning("misrouted events on %s: user %r is on partition %d, where librdkafka's "
                    "default partitioner puts it on %d and Java's on %d%s; a producer of %s "
                    "uses another partitioner, or partitions were added. The events are "
                    "learned, but such a user's events and forget requests can overtake each "
                    "other (README, Partitioner); counted in "
                    "stream_app_events_misrouted_total", rec.topic,
                    rec.key.decode(errors="replace"), rec.partition,
                    consistent_random(rec.key, n), murmur2_random(rec.key, n), more, rec.topic)
