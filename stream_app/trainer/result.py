"""`BatchResult`: what one trainer transaction did, in the stats file, the demo and tests.

Pure: built from the batch, its decoded events, the step evaluations and the
transaction's outcome, so it holds no Kafka or learner state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stream_app.core import EvalStats
from stream_app.kafka.records import RawRecord
from stream_app.kafka.transaction import TxnOutcome
from stream_app.trainer.batch import Decoded


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchResult:
    """What one iteration did: the stats file (`--stats-file`), the demo and tests read it.

    Prequential figures are event-weighted over the batch's segments (NaN when
    nothing was evaluated), and `evaluated` is their weight: the events scored
    before learning, which a sampled evaluation or a forget's split can make
    differ from `applied`, the loss's weight. Freshness is produce time →
    published, in seconds, over the batch's records that carry a produce time (NaN
    when none does).
    """

    wall_ms: int
    event_ts_max: int
    events: int
    applied: int
    evaluated: int
    dlq: int
    rows: int
    loss: float
    hit_rate: float
    hit_rate_popularity: float
    recall: float
    recall_popularity: float
    mrr: float
    mrr_popularity: float
    freshness_p50_s: float
    freshness_p99_s: float
    outcome: TxnOutcome


def batch_result(batch: Sequence[RawRecord], decoded: Decoded, evals: Sequence[EvalStats], *,
                 applied: int, losses: Sequence[tuple[float, int]], dlq: int, rows: int,
                 outcome: TxnOutcome, published_ms: int) -> BatchResult:
    """`losses` are (step loss, events applied) pairs; the batch loss weighs them by the latter."""
    # A record without a timestamp (-1; 0 from a test) counted as 56 years late.
    fresh = sorted((published_ms - r.timestamp_ms) / 1000 for r in batch if r.timestamp_ms > 0)
    n = sum(e.n_events for e in evals)

    def avg(get: Callable[[EvalStats], float]) -> float:
        return sum(get(e) * e.n_events for e in evals) / n if n else float("nan")

    events = [e for seg in decoded.segments for e in seg]
    return BatchResult(
        wall_ms=published_ms, event_ts_max=max((e.ts for e in events), default=0),
        events=len(batch), applied=applied, evaluated=n, dlq=dlq, rows=rows,
        loss=sum(x * n for x, n in losses) / sum(n for _, n in losses) if losses
        else float("nan"),
        hit_rate=avg(lambda e: e.model.hit_rate),
        hit_rate_popularity=avg(lambda e: e.popularity.hit_rate),
        recall=avg(lambda e: e.model.recall),
        recall_popularity=avg(lambda e: e.popularity.recall),
        mrr=avg(lambda e: e.model.mrr), mrr_popularity=avg(lambda e: e.popularity.mrr),
        freshness_p50_s=fresh[len(fresh) // 2] if fresh else float("nan"),
        freshness_p99_s=fresh[min(len(fresh) - 1, int(len(fresh) * 0.99))] if fresh
        else float("nan"),
        outcome=outcome)


@dataclass(slots=True)
class ProgressLine:
    """One log line per `every_s` of committed batches: what the trainer got done.

    After "assigned partitions" a trainer at INFO said nothing while it learned
    (walkthrough). Aborted batches are read again, so they count when committed.

    >>> from types import SimpleNamespace as Batch
    >>> p = ProgressLine(every_s=60.0, started=0.0)
    >>> def done(events: int, dlq: int = 0) -> Batch:
    ...     return Batch(applied=events - dlq, dlq=dlq, rows=2 * events,
    ...                  outcome=TxnOutcome.COMMITTED)
    >>> p.add(done(100), now=30.0) is None
    True
    >>> p.add(done(50, dlq=1), now=61.0)
    'last 61s: 2 batches committed, 149 events applied, 1 dead-lettered, 300 rows published'
    """

    every_s: float
    started: float
    batches: int = 0
    applied: int = 0
    dlq: int = 0
    rows: int = 0

    def add(self, result: BatchResult, *, now: float) -> str | None:
        """Count a batch; the line once `every_s` has passed since the last one."""
        if result.outcome is not TxnOutcome.ABORTED:
            self.batches += 1
            self.applied += result.applied
            self.dlq += result.dlq
            self.rows += result.rows
        if now - self.started < self.every_s:
            return None
        line = (f"last {now - self.started:.0f}s: {self.batches} batches committed, "
                f"{self.applied} events applied, {self.dlq} dead-lettered, "
                f"{self.rows} rows published")
        self.started, self.batches, self.applied, self.dlq, self.rows = now, 0, 0, 0, 0
        return line
