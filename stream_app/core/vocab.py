"""Dynamic vocabulary: string id <-> table row, with admission, TTL and LRU cap.

Why a dict and not hashing: hashing gives collisions between live ids, and a
dict of a few million strings is cheap next to the embedding rows themselves.
Row 0 is the shared *cold-start* row: ids below the admission threshold map to
it, and so do new ids that would not stay: one whose newest event is already
past the TTL, or, at the cap, one older than every row it could evict (the
table keeps the most recent ids). Freed rows are reused, and `capacity` never
exceeds `max_rows + 1`, so memory stays bounded by the cap whatever the stream
does; a restore may add up to `overflow` rows past it (see `force`), which stay
allocated.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

COLD_ROW = 0
OVERFLOW_STEP_MIN = 1024
"""Fewest rows a restore adds past the cap at a time (then as many as are past it already)."""
_NEVER = np.iinfo(np.int64).min


@dataclass(frozen=True, slots=True)
class Admission:
    """Result of `Vocab.assign`: rows for the batch's unique ids plus bookkeeping.

    `rows`: (n_unique,) int64, row per unique id (COLD_ROW if not admitted).
    `new_rows` / `evicted_rows` let the model initialise and clear tensors.
    """

    rows: npt.NDArray[np.int64]
    new_ids: tuple[str, ...]
    new_rows: npt.NDArray[np.int64]
    evicted_ids: tuple[str, ...]
    evicted_rows: npt.NDArray[np.int64]
    evicted_ts: npt.NDArray[np.int64]  # their event times (for `reinstate`)
    dropped_pending: tuple[tuple[str, int], ...]  # oldest pending counts over the bound
    touched_rows: npt.NDArray[np.int64]  # known rows whose last_ts was moved ...
    touched_prev_ts: npt.NDArray[np.int64]  # ... and their previous value (for `untouch`)


class Vocab:
    """Maps ids to rows of one table (users or items).

    >>> v = Vocab(max_rows=2, admission_threshold=1, idle_ttl_ms=0)
    >>> a = v.assign(["a", "b"], np.array([10, 20]), np.array([1, 1]), now_ms=20)
    >>> a.rows.tolist(), v.assign(["c"], np.array([30]), np.array([1]), now_ms=30).evicted_ids
    ([1, 2], ('a',))
    """

    def __init__(self, *, max_rows: int, admission_threshold: int, idle_ttl_ms: int) -> None:
        self.max_rows = max_rows
        self.admission_threshold = admission_threshold
        self.idle_ttl_ms = idle_ttl_ms
        self.index: dict[str, int] = {}
        self.ids: list[str | None] = [None]  # row -> id; row 0 is the cold row
        self.last_ts = np.full(1, _NEVER, dtype=np.int64)
        self.free: list[int] = []
        self.pending: OrderedDict[str, int] = OrderedDict()  # id -> events seen, not admitted
        self.overflow = 0  # rows `force` may hold over `max_rows` (a restore, until `trim`)

    @property
    def capacity(self) -> int:
        """Rows ever allocated (live + free + cold); tensors are at least this long."""
        return len(self.ids)

    @property
    def allocated(self) -> int:
        """Length of the row arrays; never past `max_rows + 1`, unless a restore's
        `overflow` grew it (doubling what is past the cap, kept after `trim`).

        It grows by a quarter, not by doubling: the tables follow it, and
        doubling left up to half of them spare (at 600K restored rows, RSS
        643 vs 481 MiB; BENCHMARKS.md, Restore and memory). The extra copies
        are a few dozen over a table's life.
        """
        return len(self.last_ts)

    def __len__(self) -> int:
        return len(self.index)

    def row(self, id_: str) -> int | None:
        return self.index.get(id_)

    def lookup(self, ids: Sequence[str]) -> npt.NDArray[np.int64]:
        """Rows for `ids`, -1 where unknown. Shape (len(ids),)."""
        get = self.index.get
        return np.fromiter((get(i, -1) for i in ids), dtype=np.int64, count=len(ids))

    def active_mask(self) -> npt.NDArray[np.bool_]:
        """(capacity,) True for rows that hold a live id (never the cold row)."""
        mask: npt.NDArray[np.bool_] = np.not_equal(self.last_ts, _NEVER)
        mask[COLD_ROW] = False
        return mask

    def assign(self, ids: Sequence[str], last_ts: npt.NDArray[np.int64],
               counts: npt.NDArray[np.int64], now_ms: int) -> Admission:
        """Rows for the unique `ids` of one batch; admits, evicts and touches rows.

        `last_ts`, `counts`: (len(ids),) newest event time and events per id.
        """
        rows = self.lookup(ids)
        known = rows >= 0
        touched = rows[known]
        prev = self.last_ts[touched].copy()
        self.last_ts[touched] = np.maximum(prev, last_ts[known])
        to_admit: list[int] = []
        seen_of: dict[int, int] = {}
        horizon = now_ms - self.idle_ttl_ms if self.idle_ttl_ms > 0 else _NEVER
        for j in np.flatnonzero(~known).tolist():
            seen = self.pending.pop(ids[j], 0) + int(counts[j])
            # An id whose newest event is already past the TTL is idle: a row for it
            # would be evicted at the next step, and may have cost a live row.
            if seen >= self.admission_threshold and int(last_ts[j]) >= horizon:
                to_admit.append(j)
                seen_of[j] = seen
            else:
                self._wait(ids[j], seen)
                rows[j] = COLD_ROW
        protect = rows[rows > COLD_ROW]
        evicted = self._evict_idle(now_ms, protect)
        evicted_ts = self.last_ts[evicted]
        evicted_ids = self._release(evicted)
        free = self.max_rows - len(self.index)
        need = len(to_admit) - free
        ranked = to_admit
        if need > 0:
            # Newest first, the newcomers take the free rows, then evict the oldest rows they
            # are newer than; rows are then given in batch order (a restore lays them out so).
            # Below the cap every newcomer gets a row, and the order is not needed.
            ranked = sorted(to_admit, key=lambda j: (int(last_ts[j]), ids[j]), reverse=True)
            lru = self._evict_lru(need, protect)
            # At the cap the table keeps the most recent ids (by event time, then id): a late
            # event's new id does not push out a row newer than itself.
            lru = lru[:_newer_count(
                [(int(last_ts[j]), ids[j]) for j in ranked[free:free + len(lru)]],
                [(int(self.last_ts[r]), self.ids[r] or "") for r in lru.tolist()])]
            evicted_ts = np.concatenate([evicted_ts, self.last_ts[lru]])
            evicted_ids += self._release(lru)
            evicted = np.concatenate([evicted, lru])
        admitted = set(ranked[:self.max_rows - len(self.index)])
        new_rows = []
        for j in to_admit:
            if j in admitted:
                rows[j] = self._allocate(ids[j], int(last_ts[j]))
                new_rows.append(rows[j])
            else:  # no room: the rows left are in this batch, or newer than the id
                rows[j] = COLD_ROW
                self._wait(ids[j], seen_of[j])  # its events still count toward admission
        dropped = []  # after every `_wait` of this batch, so the bound holds when it returns
        while len(self.pending) > self.max_rows:
            dropped.append(self.pending.popitem(last=False))
        new_ids = tuple(ids[j] for j in to_admit if j in admitted)
        return Admission(rows=rows, new_ids=new_ids, new_rows=np.array(new_rows, dtype=np.int64),
                         evicted_ids=tuple(evicted_ids), evicted_rows=evicted,
                         evicted_ts=evicted_ts, dropped_pending=tuple(dropped),
                         touched_rows=touched, touched_prev_ts=prev)

    def _wait(self, id_: str, seen: int) -> None:
        """Keep an id's count toward admission; at threshold 1 one event always reaches it,
        so an id turned away for want of a row keeps none (`pending_of` relies on that)."""
        if self.admission_threshold > 1:
            self.pending[id_] = seen

    def pending_of(self, ids: Sequence[str]) -> dict[str, int | None]:
        """The admission counts of `ids` (None: not pending), to put back with
        `restore_pending` when the batch that counted them is not applied."""
        if self.admission_threshold <= 1:  # nothing ever waits
            return {}
        return {i: self.pending.get(i) for i in ids}

    def restore_pending(self, saved: dict[str, int | None]) -> None:
        for id_, count in saved.items():
            if count is None:
                self.pending.pop(id_, None)
            else:
                self.pending[id_] = count

    def untouch(self, adm: Admission) -> None:
        """Undo the recency update of `assign` (a batch that was not applied)."""
        live = np.array([self.ids[r] is not None for r in adm.touched_rows.tolist()], dtype=bool)
        self.last_ts[adm.touched_rows[live]] = adm.touched_prev_ts[live]

    def reinstate(self, adm: Admission) -> None:
        """Give the ids `assign` evicted their rows back, and the pending counts it dropped
        theirs (a batch that was not applied).

        Call it after the batch's new ids are removed: a new id may hold a row
        an evicted one had.
        """
        rows = adm.evicted_rows.tolist()
        taken = set(rows)
        self.free = [r for r in self.free if r not in taken]
        for id_, r, ts in zip(adm.evicted_ids, rows, adm.evicted_ts.tolist(), strict=True):
            self.ids[r] = id_
            self.index[id_] = r
            self.last_ts[r] = ts
        for id_, count in reversed(adm.dropped_pending):  # back at the front, oldest first
            self.pending[id_] = count
            self.pending.move_to_end(id_, last=False)

    def force(self, id_: str, last_ts: int) -> tuple[int, tuple[str, ...], npt.NDArray[np.int64]]:
        """Row for `id_`, admitting it regardless of threshold (restore path).

        The table may hold `overflow` rows over the cap before the least
        recently used is evicted: a transaction writes its rows before the
        tombstones of the rows it evicted, and a row touched by a late event
        keeps an old event time, so evicting by recency at the cap would drop
        that live row instead (the trainer protects it). `trim` ends this.
        """
        r = self.index.get(id_)
        if r is not None:
            self.last_ts[r] = last_ts
            return r, (), np.zeros(0, dtype=np.int64)
        evicted = self._evict_lru(1, np.zeros(0, dtype=np.int64)) \
            if len(self) >= self.max_rows + self.overflow else np.zeros(0, dtype=np.int64)
        ids = tuple(self._release(evicted))
        self.pending.pop(id_, None)
        return self._allocate(id_, last_ts), ids, evicted

    def trim(self) -> tuple[npt.NDArray[np.int64], list[str]]:
        """End a restore's `overflow`: evict the least recently used rows over the cap.

        After a whole changelog nothing is over it, unless the cap was lowered
        or other trainers' rows were read too; returns the rows evicted and their ids.
        """
        self.overflow = 0
        over = len(self) - self.max_rows
        if over <= 0:
            return np.zeros(0, dtype=np.int64), []
        evicted = self._evict_lru(over, np.zeros(0, dtype=np.int64))
        return evicted, self._release(evicted)

    def remove(self, id_: str) -> int | None:
        """Free the row of `id_` (forget / tombstone); returns the freed row."""
        r = self.index.get(id_)
        if r is None:
            self.pending.pop(id_, None)
            return None
        self._release(np.array([r], dtype=np.int64))
        return r

    def _allocate(self, id_: str, ts: int) -> int:
        if self.free:
            r = self.free.pop()
            self.ids[r] = id_
        else:
            r = len(self.ids)
            self.ids.append(id_)
            if r >= len(self.last_ts):
                if r <= self.max_rows:  # by a quarter, up to the cap
                    size = min(max(len(self.last_ts) * 5 // 4, 16), self.max_rows + 1)
                else:  # a restore's overflow, doubling the rows past the cap (they are kept)
                    past = len(self.last_ts) - (self.max_rows + 1)
                    size = min(len(self.last_ts) + max(OVERFLOW_STEP_MIN, past),
                               self.max_rows + 1 + self.overflow)
                grown = np.full(size, _NEVER, dtype=np.int64)
                grown[: len(self.last_ts)] = self.last_ts
                self.last_ts = grown
        self.index[id_] = r
        self.last_ts[r] = ts
        return r

    def _release(self, rows: npt.NDArray[np.int64]) -> list[str]:
        out = []
        for r in rows.tolist():
            id_ = self.ids[r]
            assert id_ is not None  # noqa: S101 - invariant: only live rows are released
            del self.index[id_]
            self.ids[r] = None
            self.last_ts[r] = _NEVER
            self.free.append(r)
            out.append(id_)
        return out

    def _evict_idle(self, now_ms: int, protect: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        if self.idle_ttl_ms <= 0:
            return np.zeros(0, dtype=np.int64)
        ts = self.last_ts[: self.capacity]
        idle = (ts != _NEVER) & (ts < now_ms - self.idle_ttl_ms)
        idle[COLD_ROW] = False
        idle[protect] = False
        return np.flatnonzero(idle).astype(np.int64)

    def _evict_lru(self, n: int, protect: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        ts = self.last_ts[: self.capacity].copy()
        ts[COLD_ROW] = _NEVER
        ts[protect] = _NEVER
        candidates = np.flatnonzero(ts != _NEVER)
        if len(candidates) == 0:
            return np.zeros(0, dtype=np.int64)
        n = min(n, len(candidates))
        times = ts[candidates]
        # The n oldest by a partial sort (a full one cost ~140 ms a step at 1M rows).
        cut = np.partition(times, n - 1)[n - 1]
        below = candidates[times < cut]
        tied = candidates[times == cut]
        if len(below) + len(tied) > n:
            # Ties at the boundary are picked by id, not by row number: a restore lays
            # rows out in another order, and must evict what the live learner did.
            by_id = sorted(tied.tolist(), key=lambda r: self.ids[r] or "")
            tied = np.array(by_id[: n - len(below)], dtype=np.int64)
        chosen = np.concatenate([below, tied]).astype(np.int64)
        names = np.array([self.ids[r] or "" for r in chosen.tolist()], dtype=object)
        return chosen[np.lexsort((names, ts[chosen]))]  # oldest first, then by id


def counting_only(ids: Sequence[str], ts: npt.NDArray[np.int64], admitted: Sequence[str],
                  pending_before: dict[str, int | None],
                  threshold: int) -> npt.NDArray[np.bool_]:
    """Per event: the events of an id admitted in this batch that only brought it to its
    threshold (its earliest by event time, then position), which count for admission
    alone, as they would have in earlier batches.

    Without it every event of the admitting batch learned in the new row and counted in
    its `updates`, so the count hung on how the events were split into steps: three
    events at threshold 3 gave 3 in one step and 1 in three, and an aborted batch read
    again in other steps published other counts.

    >>> counting_only(["u", "u", "v", "u"], np.array([5, 3, 1, 9]), ["u"], {"u": 1}, 3)
    array([False,  True, False, False])
    """
    need = {i: threshold - 1 - (pending_before.get(i) or 0) for i in admitted}
    mask = np.zeros(len(ids), dtype=np.bool_)
    if not any(n > 0 for n in need.values()):
        return mask
    for k in sorted((k for k, i in enumerate(ids) if need.get(i, 0) > 0),
                    key=lambda k: (int(ts[k]), k)):
        if need[ids[k]] > 0:
            mask[k] = True
            need[ids[k]] -= 1
    return mask


def _newer_count(newcomers: list[tuple[int, str]], oldest: list[tuple[int, str]]) -> int:
    """How many of the `oldest` rows (oldest first) the newcomers (newest first) replace:
    the k-th newest newcomer takes the k-th oldest row only if it is the more recent.

    >>> _newer_count([(9, "c"), (5, "d")], [(3, "a"), (7, "b")])
    1
    """
    n = 0
    while n < min(len(newcomers), len(oldest)) and newcomers[n] > oldest[n]:
        n += 1
    return n
