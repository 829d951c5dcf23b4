"""The scorer's copy of `embeddings`: the initial load, then the live tail.

Every partition is assigned from the beginning (no group, read_committed) and
applied to the `EmbeddingTable`. Ready = every partition read up to the end
offset taken at start (`serving.loading.LoadProgress`). Once ready, rows come
in small slices (`LIVE_ROWS`) so that the request loop reads requests between
them.
"""

from __future__ import annotations

import logging
import threading
import time

from stream_app.heap import release_free_memory
from stream_app.kafka.records import RawRecord
from stream_app.kafka.tail import TailReader
from stream_app.observability import ScorerMetrics
from stream_app.serving import EmbeddingTable
from stream_app.serving.answers import apply_embedding
from stream_app.serving.loading import LoadProgress
from stream_app.watchdog import Heartbeat

log = logging.getLogger(__name__)

LIVE_ROWS = 128
"""Embedding rows applied per loop turn once ready (at most `load_batch`): requests are
read between turns. A trainer commit's rows in 5,000-row turns held every request for
up to 0.3 s on the development machine (45-67 us a row); 128 rows is under 10 ms."""
GROW_CHECK_S = 30.0
"""How often the scorer asks whether `embeddings` gained partitions (a metadata round
trip in the request loop)."""
RENEW_AFTER_FAILED_CHECKS = 2
"""Checks in a row that cannot reach the cluster before the tail's client is replaced
(`TailReader.renew`): about a minute. In an outage every client fails and a new one
costs a connection attempt; a client cut off alone is cured by nothing else."""


class EmbeddingsCopy:
    """Applies the `embeddings` tail's rows and tombstones to `table`; `ready` is set once
    the load caught up. `last_input` is the monotonic time rows (or an end of partition)
    last came.
    """

    def __init__(self, table: EmbeddingTable, *, metrics: ScorerMetrics, load_batch: int,
                 watchdog: Heartbeat) -> None:
        self.table, self.metrics = table, metrics
        self.load_batch = load_batch
        self.watchdog = watchdog
        self.ready = threading.Event()
        self.progress = LoadProgress(ends={})
        self.last_input = time.monotonic()
        self._grow_check = time.monotonic() + GROW_CHECK_S

    def describe(self, ready: bool) -> str:
        """For /readyz, whose status `ready` is (read once, so that text and status agree)."""
        if ready:
            return f"ready: {self.table.n_users} users, {self.table.n_items} items"
        return self.progress.describe()

    def open(self, tail: TailReader) -> None:
        """Assign every partition from the beginning; note the end offsets."""
        ends = tail.open()
        self.progress = LoadProgress(ends=ends)
        log.info("loading topic=%s end_offsets=%s", tail.topic, ends)
        self._check_ready()

    def turn(self, tail: TailReader, timeout: float) -> bool:
        """Apply one poll's worth of rows and tombstones; True when the poll was full, so
        more rows may be waiting."""
        live = self.ready.is_set()
        limit = min(LIVE_ROWS, self.load_batch) if live else self.load_batch
        batch = tail.poll(limit, timeout)
        if not batch.records and not batch.eof:
            return False
        for n, rec in enumerate(batch.records):
            if n % LIVE_ROWS == 0:  # a load turn of 1M rows takes about a minute
                self.watchdog.beat("rows")
            self._apply(rec)
            self.progress.read(rec.partition, rec.offset)
        for partition, offset in batch.eof.items():
            self.progress.eof(partition, offset)
        self.last_input = time.monotonic()
        self.table.flush()
        self._report()
        self._check_ready()
        return len(batch.records) >= limit

    def report_lag(self, tail: TailReader, now: float) -> None:
        """Set the tail's lag gauges; at most every `GROW_CHECK_S` also look for new
        partitions, which are then read from the beginning."""
        added: list[int] = []
        if now >= self._grow_check:
            added, self._grow_check = tail.grow(), now + GROW_CHECK_S
            if tail.failed_checks >= RENEW_AFTER_FAILED_CHECKS:
                log.warning("topic=%s could not be listed at %d checks in a row: replacing "
                            "its client, which goes on from where it was", tail.topic,
                            tail.failed_checks)
                tail.renew()
        if added:
            log.error("topic=%s gained partitions=%s: reading them from the beginning. Rows "
                      "of one key may now sit in two partitions, and which one a reader "
                      "applies last is not their order: run the model on a new topic prefix "
                      "rather than add partitions to it", tail.topic, added)
        for partition, lag in tail.lag().items():
            self.metrics.set_lag(tail.topic, partition, lag)

    def _apply(self, rec: RawRecord) -> None:
        reason = apply_embedding(self.table, rec.key, rec.value)
        if reason is not None:
            self.metrics.errors.labels(reason="bad_embedding").inc()
            log.warning("bad embedding row partition=%s[%s] offset=%s reason=%s",
                        rec.topic, rec.partition, rec.offset, reason)

    def _report(self) -> None:
        self.metrics.table_rows.labels(table="user").set(self.table.n_users)
        self.metrics.table_rows.labels(table="item").set(self.table.n_items)
        if self.table.newest_updated_at is not None:
            self.metrics.set_newest_row_time(self.table.newest_updated_at / 1000.0)

    def _check_ready(self) -> None:
        if not self.ready.is_set() and self.progress.done():
            # The load's garbage (fetch buffers, a decoded object per row) stays in
            # glibc's heap unless handed back: 1M rows, RSS growth 887 -> 676 MiB.
            release_free_memory()
            self.ready.set()
            self.metrics.set_ready(True)
            log.info("ready users=%d items=%d records=%d", self.table.n_users,
                     self.table.n_items, self.progress.records)
