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
    published, in seconds.
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
    fresh = sorted((published_ms - r.timestamp_ms) / 1000 for r in batch)
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
        freshness_p50_s=fresh[len(fresh) // 2],
        freshness_p99_s=fresh[min(len(fresh) - 1, int(len(fresh) * 0.99))],
        outcome=outcome)
