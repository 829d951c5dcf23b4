"""Input guards: duplicate event ids and per-user rate caps, both in event time.

Both are two-phase: `check` decides outcomes for a batch without changing
state, `commit` records only the events that were actually applied, so a batch
rejected later (non-finite loss) can be re-sent or dead-lettered and is not
remembered as seen.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from enum import StrEnum

from stream_app.events import Event


class Outcome(StrEnum):
    """What `Learner.learn` did with one event; the trainer maps it to metrics/DLQ."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    RATE_LIMITED = "rate_limited"
    NON_FINITE = "non_finite"


class Deduplicator:
    """Remembers the last `window` applied event ids; a repeat inside it is a duplicate.

    >>> d = Deduplicator(window=2)
    >>> d.commit(["a", "b", "c"]); "a" in d, "c" in d
    (False, True)
    """

    def __init__(self, window: int) -> None:
        self._window = window
        self._order: deque[str] = deque()
        self._seen: set[str] = set()

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._seen

    def seen_any(self, event_ids: set[str]) -> bool:
        return not self._seen.isdisjoint(event_ids)

    def commit(self, event_ids: Sequence[str]) -> None:
        """Remember `event_ids` (unique, none seen before: what `screen` kept)."""
        self._seen.update(event_ids)
        self._order.extend(event_ids)
        while len(self._order) > self._window:
            self._seen.discard(self._order.popleft())


class RateLimiter:
    """At most `cap` applied events per user per tumbling event-time window.

    Tumbling windows (`ts // window_ms`) keep the state one pair per user; a
    bot clicking thousands of items in a window contributes `cap` of them, and
    a late event counts in the user's newest window.
    State is bounded: users whose window has passed are dropped on commit.

    >>> r = RateLimiter(cap=2, window_ms=1000)
    >>> r.allowed("u", 5, pending={}) , r.allowed("u", 5, pending={"u": (0, 2)})
    (True, False)
    """

    def __init__(self, cap: int, window_ms: int) -> None:
        self.cap = cap
        self.window_ms = window_ms
        self._counts: dict[str, tuple[int, int]] = {}  # user -> (window index, count)

    def _window_and_count(self, user_id: str, ts: int,
                          pending: dict[str, tuple[int, int]]) -> tuple[int, int]:
        """The window `ts` counts in and the user's count there so far.

        A late event (older than the user's newest window) counts in that newest
        window: keeping one pair per user, it would otherwise reset the count,
        and a bot alternating old and new timestamps would never be capped.
        """
        window = ts // self.window_ms
        w, c = pending.get(user_id) or self._counts.get(user_id) or (window, 0)
        if window < w:
            return w, c
        return window, c if w == window else 0

    def forget(self, user_id: str) -> None:
        """Drop the user's count (forget)."""
        self._counts.pop(user_id, None)

    def allowed(self, user_id: str, ts: int, pending: dict[str, tuple[int, int]]) -> bool:
        if self.cap <= 0:
            return True
        window, count = self._window_and_count(user_id, ts, pending)
        if count >= self.cap:
            return False
        pending[user_id] = (window, count + 1)
        return True

    def commit(self, pending: dict[str, tuple[int, int]], watermark_ms: int) -> None:
        self._counts.update(pending)
        if len(self._counts) > 4 * max(len(pending), 1024):
            live = watermark_ms // self.window_ms - 1
            self._counts = {u: wc for u, wc in self._counts.items() if wc[0] >= live}


def screen(
    events: Sequence[Event], dedup: Deduplicator, rate: RateLimiter
) -> tuple[list[Outcome], list[int], dict[str, tuple[int, int]]]:
    """Outcome per event (APPLIED for the ones to learn from), their indices, rate state.

    Nothing is mutated; pass the returned state to `RateLimiter.commit` and the
    kept event ids to `Deduplicator.commit` once the batch is applied.
    """
    ids = [ev.event_id for ev in events]
    unique = set(ids)
    if rate.cap <= 0 and len(unique) == len(ids) and not dedup.seen_any(unique):
        return [Outcome.APPLIED] * len(ids), list(range(len(ids))), {}  # the common case
    outcomes: list[Outcome] = []
    keep: list[int] = []
    in_batch: set[str] = set()
    pending: dict[str, tuple[int, int]] = {}
    for i, ev in enumerate(events):
        eid = ev.event_id
        if eid in in_batch or eid in dedup:
            outcomes.append(Outcome.DUPLICATE)
            continue
        in_batch.add(eid)
        if not rate.allowed(ev.user_id, ev.ts, pending):
            outcomes.append(Outcome.RATE_LIMITED)
            continue
        outcomes.append(Outcome.APPLIED)
        keep.append(i)
    return outcomes, keep, pending
