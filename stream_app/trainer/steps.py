"""One decoded micro-batch through the learner: evaluate, then learn, step by step.

No Kafka client and no clock: what the steps changed, refused and measured
comes back as `Changes`, which the loop publishes in one transaction (and
counts in the metrics only once that commits).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from stream_app.core import EvalStats, Learner
from stream_app.events import DlqRecord, Event
from stream_app.kafka.records import RawRecord
from stream_app.observability.metrics import EventOutcome, TrainerMetrics
from stream_app.trainer.batch import OUTCOMES, REFUSED, Decoded, TxnCounts, plan_steps, train_dlq

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Changes:
    """What one batch's steps did: the rows to publish, the records to dead-letter
    (the decoder's first), and what the commit counts."""

    users: set[str] = field(default_factory=set)
    items: set[str] = field(default_factory=set)
    tombstones: list[str] = field(default_factory=list)
    dlq: list[DlqRecord] = field(default_factory=list)
    counts: TxnCounts = field(default_factory=TxnCounts)
    evals: list[EvalStats] = field(default_factory=list)
    applied: int = 0


class CountedRequests:
    """The forget requests counted by the last `MAX` committed ones: a request's two halves
    count once, also when they go out in two batches (a half alone after BARRIER_WAIT_S,
    its partner in a later batch), which counted it twice. Fed at commit only: an aborted
    batch's requests are read and counted again.

    >>> seen = CountedRequests(); seen.add({("u", "r1")}); ("u", "r1") in seen
    True
    """

    MAX = 10_000

    def __init__(self) -> None:
        self._pairs: dict[tuple[str, str], None] = {}  # insertion order: oldest first

    def __contains__(self, pair: object) -> bool:
        return pair in self._pairs

    def add(self, pairs: Collection[tuple[str, str]]) -> None:
        self._pairs.update(dict.fromkeys(pairs))
        while len(self._pairs) > self.MAX:
            del self._pairs[next(iter(self._pairs))]


def learn_batch(learner: Learner, decoded: Decoded, *, step_max: int, now_ms: int,
                metrics: TrainerMetrics, on_step: Callable[[], None] = lambda: None,
                counted: CountedRequests | None = None) -> Changes:
    """Evaluate then learn each segment in steps (`plan_steps`), applying the forget
    requests in order between segments; then apply any accumulated gradients, since
    all of the batch is committed together. `on_step` runs after each step: the
    stall watchdog's beat, so a long batch is not taken for a hung one."""
    out = Changes(dlq=list(decoded.dlq))
    plan = plan_steps([len(events) for events in decoded.segments], step_max=step_max,
                      eval_max=learner.config.eval_max_events)
    seen = out.counts.forget_requests  # (user, request id), this batch's
    before = counted if counted is not None else CountedRequests()
    for i, (events, recs) in enumerate(zip(decoded.segments, decoded.records, strict=True)):
        for step in plan[i]:
            _step(learner, events[step.start:step.end], recs[step.start:step.end],
                  step.evaluate, out, now_ms, metrics)
            on_step()
        if i < len(decoded.forgets):
            # A tombstone even without a row here: one may still be in the
            # changelog (a restore, another trainer, an eviction not published).
            user, request = decoded.forgets[i], decoded.forget_requests[i]
            held = learner.forget_user(user, requested=True)
            pair = None if request is None else (user, request)
            if pair is None or (pair not in seen and pair not in before):  # the other half
                out.counts.forgets += 1
                log.info("forget user=%s: %s; its tombstone goes out with this batch", user,
                         "row dropped" if held else "no row here")
            if pair is not None:
                seen.add(pair)
            out.tombstones.append(f"user:{user}")
            out.users.discard(user)
    pending_users, pending_items = learner.apply_pending()
    out.users.update(pending_users)
    out.items.update(pending_items)
    return out


def _step(learner: Learner, events: list[Event], recs: list[RawRecord], evaluate: bool,
          out: Changes, now_ms: int, metrics: TrainerMetrics) -> None:
    ev = None
    if evaluate:
        started = time.monotonic()
        ev = learner.evaluate(events)
        metrics.evaluate_seconds.observe(time.monotonic() - started)
    started = time.monotonic()
    st = learner.learn(events)
    metrics.step_seconds.observe(time.monotonic() - started)
    if ev is not None and ev.n_events:
        out.evals.append(ev)
    counts: Counter[tuple[str, EventOutcome]] = Counter()
    for event, rec, outcome in zip(events, recs, st.outcomes, strict=True):
        if outcome == "applied":
            out.counts.applied_times.append((event.ts, rec.timestamp_ms))
        elif outcome in REFUSED:
            out.dlq.append(train_dlq(rec, *REFUSED[outcome], now_ms))
        counts[(rec.topic, OUTCOMES.get(outcome, EventOutcome.DLQ))] += 1
    out.counts.events.update(counts)
    if st.n_applied and st.n_trained and st.loss == st.loss:  # not a step that trained nothing
        out.counts.losses.append((float(st.loss), st.n_applied))  # the gauge: at the commit
    out.users.update(st.changed_user_ids)
    out.items.update(st.changed_item_ids)
    out.tombstones.extend(f"user:{u}" for u in st.evicted_user_ids)
    out.tombstones.extend(f"item:{i}" for i in st.evicted_item_ids)
    out.counts.admissions.update(user=st.admitted_users, item=st.admitted_items)
    out.counts.evictions.update(user=len(st.evicted_user_ids), item=len(st.evicted_item_ids))
    out.users.difference_update(st.evicted_user_ids)
    out.items.difference_update(st.evicted_item_ids)
    out.applied += sum(n for (_, o), n in counts.items() if o is EventOutcome.APPLIED)
