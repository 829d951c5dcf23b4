"""Input guards: duplicate event ids, per-user rate caps and events far ahead of the
rest, all in event time.

An event id seen again with the same content is a re-sent copy: applied once,
counted. Seen again with other content it is a different event under a reused
id (a producer whose counter restarted, one id for a click and its purchase):
it is not applied and goes to the DLQ, since counting it would drop an event
silently.

Both are two-phase: `check` decides outcomes for a batch without changing
state, `commit` records only the events that were actually applied, so a batch
rejected later (non-finite loss) can be re-sent or dead-lettered and is not
remembered as seen.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Sequence
from enum import StrEnum
from typing import Any

import numpy as np

from stream_app.events import Event, EventKind


class Outcome(StrEnum):
    """What `Learner.learn` did with one event; the trainer maps it to metrics/DLQ."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    ID_REUSED = "id_reused"
    RATE_LIMITED = "rate_limited"
    FAR_AHEAD = "far_ahead"
    NON_FINITE = "non_finite"


Content = tuple[object, ...]


def content(ev: Event) -> Content:
    """What an event says, its free-form `context` aside: kept per applied id, so a copy
    is told from a reused id exactly (and, unlike a hash, the same in every process, for
    snapshots). A tuple is 10x cheaper to build than a digest of the same fields."""
    return (ev.user_id, ev.item_id, ev.ts, _KIND[ev.kind], ev.quantity, ev.price,
            ev.item_released_at)


_KIND = {EventKind.CLICK: "click", EventKind.PURCHASE: "purchase"}
"""Plain strings, not the enum members: a tuple of plain values leaves the cyclic garbage
collector's lists, and 100K tuples it kept walking slowed every step."""


class Deduplicator:
    """Remembers the last `window` applied events' ids and contents.

    >>> from stream_app.events import EventKind
    >>> e = lambda i, item: Event(event_id=i, user_id="u", item_id=item, ts=1, kind=EventKind.CLICK)
    >>> d = Deduplicator(window=2)
    >>> d.commit([e("a", "x"), e("b", "x"), e("c", "x")]); "a" in d, "c" in d
    (False, True)
    >>> d.content_of("c") == content(e("c", "x")) != content(e("c", "y"))
    True
    """

    def __init__(self, window: int) -> None:
        self._window = window
        self._order: deque[str] = deque()
        self._seen: dict[str, Content] = {}

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._seen

    def content_of(self, event_id: str) -> Content | None:
        return self._seen.get(event_id)

    def seen_any(self, event_ids: set[str]) -> bool:
        return not self._seen.keys().isdisjoint(event_ids)

    def __len__(self) -> int:
        return len(self._seen)

    def forget(self, user_ids: Collection[str]) -> None:
        """Drop the events of `user_ids`: an erased user's ids and contents (which name
        the user, the items and the times) must not stay here, nor in the snapshots
        that copy this window. A copy of one re-sent later is applied as new.

        >>> from stream_app.events import EventKind
        >>> d = Deduplicator(window=3)
        >>> d.commit([Event(event_id=i, user_id=u, item_id="x", ts=1, kind=EventKind.CLICK)
        ...           for i, u in (("a", "ann"), ("b", "bo"), ("c", "ann"))])
        >>> d.forget({"ann"}); d.state()["ids"]
        ['b']
        """
        gone = {i for i, c in self._seen.items() if c[0] in user_ids}
        if gone:
            for event_id in gone:
                del self._seen[event_id]
            self._order = deque(i for i in self._order if i not in gone)

    def commit(self, events: Sequence[Event]) -> None:
        """Remember `events` (unique ids, none seen before: what `screen` kept)."""
        self._remember([ev.event_id for ev in events], [content(ev) for ev in events])

    def state(self) -> dict[str, Any]:
        return {"ids": list(self._order), "contents": [self._seen[i] for i in self._order]}

    def load(self, state: dict[str, Any]) -> None:
        self._order.clear()
        self._seen.clear()
        self._remember(state["ids"], state["contents"])

    def _remember(self, ids: Sequence[str], contents: Sequence[Content]) -> None:
        self._seen.update(zip(ids, contents, strict=True))
        self._order.extend(ids)
        while len(self._order) > self._window:
            del self._seen[self._order.popleft()]


RATE_GRACE_WINDOWS = 60
"""An event up to this many rate windows older than the learner's clock counts in its
own window (`screen`); an older one in the window this far back."""


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
            # Windows as far back as `screen` still charges events to (its grace) live
            # on: dropped at the clock's, a user read behind it started again at zero
            # whenever over ~4,000 users were tracked.
            live = watermark_ms // self.window_ms - 1 - RATE_GRACE_WINDOWS
            self._counts = {u: wc for u, wc in self._counts.items() if wc[0] >= live}


FAR_AHEAD_SHARE = 0.01
"""At most this share of a step (at least one event) is refused as far ahead: a larger
group that far ahead is the stream itself moving on after a gap."""


def far_ahead(ts: Sequence[int], clock_ms: int | None, max_jump_ms: int) -> set[int]:
    """Indices of the events timed over `max_jump_ms` ahead of the rest of their step and
    of the learner's clock (its newest event time), when they are a few.

    One event from a clock years off (or in microseconds) moves the learner's
    clock that far. Its item's popularity then outweighs every other item's by
    the decay of those years, and the item tops every list, in the changelog
    too, until the stream catches up. The trainer's check against the wall
    clock (`max_future_ms`) stops such events live, not in a replay of old
    ones. A real gap in the stream (an outage, a quiet season) moves most of a
    step, or all of it, and passes; a step that straddles one with at most
    `FAR_AHEAD_SHARE` of its events after it refuses those (they go to the DLQ).

    >>> far_ahead([10, 11, 10**12, 12], clock_ms=9, max_jump_ms=100)
    {2}
    >>> far_ahead([10**12, 10**12 + 1], clock_ms=9, max_jump_ms=100)  # the stream moved on
    set()
    >>> far_ahead([10**12, 10**12 + 1, 10**12 + 2, 10**15], clock_ms=9, max_jump_ms=100)
    {3}
    >>> far_ahead([10, 500, 1000], clock_ms=None, max_jump_ms=100)  # sparse, not an outlier
    set()
    """
    if max_jump_ms <= 0 or len(ts) < 2:
        return set()
    t = np.fromiter(ts, dtype=np.int64, count=len(ts))
    order = np.argsort(t, kind="stable")
    s = t[order]
    # The newest time before each event: the clock and the step's earlier events.
    before = np.maximum.accumulate(np.concatenate(([s[0] if clock_ms is None else clock_ms],
                                                   s[:-1])))
    jumps = np.flatnonzero(s - before > max_jump_ms)
    # A jump at the step's oldest event is the stream moving on after a gap, not an
    # outlier; a later one in the same step still is (it was let through).
    jumps = jumps[jumps > 0]
    if not len(jumps):
        return set()
    first = int(jumps[0])
    if len(s) - first > max(1, int(len(s) * FAR_AHEAD_SHARE)):
        return set()
    return set(order[first:].tolist())


def screen(
    events: Sequence[Event], dedup: Deduplicator, rate: RateLimiter,
    far: Collection[int] = (), clock_ms: int | None = None
) -> tuple[list[Outcome], list[int], dict[str, tuple[int, int]]]:
    """Outcome per event (APPLIED for the ones to learn from), their indices, rate state.

    `far`: indices refused as far ahead (`far_ahead`), unless a copy of an
    applied event. `clock_ms`: the learner's clock (its newest event time). An
    event counts against the rate cap in its own window, or, when it is over
    RATE_GRACE_WINDOWS windows older than the clock, in the window that far
    back: a bot stamping each burst with another past minute (every one newer
    than its last) opens at most that many fresh windows, once, and then gets
    the cap per window of the stream's time. Charged to the clock's own window,
    as before, a user on a partition read behind the others (a reassigned
    backlog, an offline upload) was capped for the others' time: 5 a minute let
    5 of 30 events over 30 minutes through. Nothing is mutated; pass the returned state to
    `RateLimiter.commit` and the kept event ids to `Deduplicator.commit` once
    the batch is applied.
    """
    ids = [ev.event_id for ev in events]
    unique = set(ids)
    if (rate.cap <= 0 and not far and len(unique) == len(ids)
            and not dedup.seen_any(unique)):
        return [Outcome.APPLIED] * len(ids), list(range(len(ids))), {}  # the common case
    grace_ms = RATE_GRACE_WINDOWS * rate.window_ms
    outcomes: list[Outcome] = []
    keep: list[int] = []
    in_batch: dict[str, Content] = {}
    pending: dict[str, tuple[int, int]] = {}
    for i, ev in enumerate(events):
        eid = ev.event_id
        first = in_batch.get(eid)
        if first is None:
            first = dedup.content_of(eid)
        if first is not None:
            same = first == content(ev)
            outcomes.append(Outcome.DUPLICATE if same else Outcome.ID_REUSED)
            continue
        if i in far:
            outcomes.append(Outcome.FAR_AHEAD)
            continue
        at = ev.ts if clock_ms is None else max(ev.ts, clock_ms - grace_ms)
        if not rate.allowed(ev.user_id, at, pending):
            outcomes.append(Outcome.RATE_LIMITED)
            continue
        # Only an applied event makes later ones copies or reused ids: a copy of a
        # refused one is screened on its own (and, refused again, dead-lettered too).
        in_batch[eid] = content(ev)
        outcomes.append(Outcome.APPLIED)
        keep.append(i)
    return outcomes, keep, pending
