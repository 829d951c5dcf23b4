"""Rows and restore of `Learner`: the changelog path of its state, in and out.

`rows()` / `row_blocks()` and `apply_rows()` / `apply_columns()` are the
changelog path (exact); what is not per row, and the full local snapshot,
are in `learner_snapshot.py`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from stream_app.core import model as m
from stream_app.core import rows as codec
from stream_app.core.learner_fields import LearnerFields
from stream_app.core.vocab import Vocab
from stream_app.events import ChangelogRows, EmbeddingRow, RowBlock

RESTORE_OVERFLOW = 1.0
"""Share of a cap a restore may hold over it before evicting the least recently used.

A transaction writes its new rows before the tombstones of the rows it
evicted, the changelog's partitions are read in no set order, and a late
event leaves a live row with an old event time: so rows over the cap come
and go while a restore reads, and evicting by recency then could drop a row
the trainer kept. Rows past the cap stay allocated (`Vocab._allocate` grows
them by doubling what is past the cap, from 1,024 rows). At least 1,024 rows
whatever the cap (`RESTORE_OVERFLOW_MIN`).
"""
RESTORE_OVERFLOW_MIN = 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Cleared:
    """What one `_evict_rows` call cleared, kept so that a step whose gradients are
    not finite can put it back: such a step applies nothing, evictions included."""

    users: torch.Tensor
    user_rows: dict[str, torch.Tensor]
    items: torch.Tensor
    item_rows: dict[str, torch.Tensor]
    compacted: torch.Tensor  # user rows whose history lost an evicted item ...
    histories: torch.Tensor  # ... and those histories before
    accumulated: dict[str, list[tuple[torch.Tensor, torch.Tensor]]]


class LearnerState(LearnerFields):

    def user_ids(self) -> list[str]:
        """Ids of every user with its own row."""
        return list(self._user_vocab.index)

    def item_ids(self) -> list[str]:
        """Ids of every item with its own row."""
        return list(self._item_vocab.index)

    def table_sizes(self) -> dict[str, int]:
        """Live rows per table (excluding the shared cold-start rows)."""
        return {"users": len(self._user_vocab), "items": len(self._item_vocab)}

    def forget_user(self, user_id: str, *, requested: bool = False) -> bool:
        """Delete a user's row, history, replay entries, duplicate-check entries and rate
        count (GDPR erase); True if the row existed.

        `requested`: a forget request, not a tombstone read back by a restore. Their
        count travels in `global_state()`, so a learner restored from an older
        snapshot learns that a user was erased after it, even when no tombstone
        says which (see `apply_global_state`).
        Restored histories not yet resolved (`_deferred`) stay deferred: during
        a restore, items listed in them may still arrive later in the changelog.
        """
        if requested:
            self._forget_requests += 1
        else:  # read back by a restore: `load_volatile_state` must not bring the user back
            self._tombstoned.add(user_id)
        if len(self._replay) or len(self._dedup):  # purged before they are next read
            self._forgotten.add(user_id)
        self._rate.forget(user_id)
        row = self._user_vocab.remove(user_id)
        if row is None:
            return False
        self._evict_rows(np.array([row], dtype=np.int64), np.zeros(0, dtype=np.int64))
        return True

    def distrust(self, user_ids: Iterable[str]) -> None:
        """Users whose row, read by a restore, another trainer published: what this learner
        holds of them besides their row (replay, duplicate-check, rate and pending
        entries, from a snapshot or kept across the restore) may predate an erasure no
        tombstone shows (that trainer forgot them and saw them again in one transaction,
        which publishes their new row and no tombstone), and the shared forget count
        (`apply_global_state`) cannot show it either: the last writer's wins. It is
        dropped; their rows stay."""
        users = set(user_ids)
        if not users:
            return
        self._foreign |= users  # for `load_volatile_state`, after the restore
        if len(self._replay) or len(self._dedup):  # a snapshot's: purged before next read
            self._forgotten |= users
        for user in users:
            self._rate.forget(user)

    @property
    def forget_requests(self) -> int:
        """Forget requests applied over the model's history (as of the last restore: the
        last `meta:trainer` read)."""
        return self._forget_requests

    def distrusted(self) -> int:
        """How many users the restore under way `distrust`ed (until `load_volatile_state`
        or the first step)."""
        return len(self._foreign)

    def _purge_forgotten(self) -> None:
        """Drop forgotten users' events from the replay buffer, which holds them by id,
        admitted or not (a returning user's new row would learn from them), and from
        the duplicate check's window.

        Deferred to one pass over each: a restore forgets every user whose
        tombstone it reads, evicted or forgotten (~1 ms a user, one by one).
        """
        if self._forgotten:
            self._replay.remove_users(self._forgotten)
            self._dedup.forget(self._forgotten)
            self._forgotten = set()

    def clear_replay(self) -> None:
        """Empty the replay buffer: its events may be of users another learner now owns."""
        self._replay.clear()

    def forget_item(self, item_id: str) -> bool:
        """Delete an item's row and drop it from every history; True if it existed.

        The changelog's item tombstone (an eviction) applied to a learner
        loaded from a snapshot older than the eviction. Histories not yet
        resolved stay deferred: they resolve against the items live at the
        end, which skips this one unless a later row brings it back.
        """
        row = self._item_vocab.remove(item_id)
        if row is None:
            return False
        self._evict_rows(np.zeros(0, dtype=np.int64), np.array([row], dtype=np.int64))
        return True

    def _evict_rows(self, user_rows: npt.NDArray[np.int64],
                    item_rows: npt.NDArray[np.int64]) -> Cleared:
        """Clear freed rows so a reused row starts blank; drop their cached grads.

        An item leaves every resolved history; a user's deferred history goes
        with it, while the other deferred histories stay deferred. Returns what
        was cleared: `Cleared.compacted` are the user rows whose history lost
        an item (to publish again); `_put_back` undoes the whole call.
        """
        users = torch.as_tensor(user_rows, device=self.device)
        items = torch.as_tensor(item_rows, device=self.device)
        cleared = Cleared(users=users, user_rows=self._users.take_rows(users),
                          items=items, item_rows=self._items.take_rows(items),
                          compacted=users[:0], histories=self._users.hist[:0],
                          accumulated=self._accum.cached())
        if len(user_rows):
            self._users.reset_rows(users, None)
            self._accum.discard("user", users)
            for r in user_rows.tolist():
                self._deferred.pop(r, None)
        if len(item_rows):
            compacted, histories = m.compact_history(self._users.hist, items)
            cleared = dataclasses.replace(cleared, compacted=compacted, histories=histories)
            self._items.reset_rows(items, None)
            self._accum.discard("item", items)
        return cleared

    def _put_back(self, cleared: Cleared) -> None:
        """Undo `_evict_rows` on the tensors (the vocabularies' `reinstate` gives the
        ids their rows back). Deferred histories need nothing: `learn` resolves them
        all before it evicts."""
        self._users.put_rows(cleared.users, cleared.user_rows)
        self._items.put_rows(cleared.items, cleared.item_rows)
        self._users.hist[cleared.compacted] = cleared.histories
        self._accum.put_back(cleared.accumulated)

    def rows(self, *, user_ids: Iterable[str] = (), item_ids: Iterable[str] = (),
             model_version: str, now_ms: int) -> list[EmbeddingRow]:
        """Current `EmbeddingRow` of each known id (unknown ids are skipped)."""
        blocks = self.row_blocks(user_ids=user_ids, item_ids=item_ids,
                                 model_version=model_version, now_ms=now_ms)
        return [row for block in blocks for row in block.rows()]

    def row_blocks(self, *, user_ids: Iterable[str] = (), item_ids: Iterable[str] = (),
                   model_version: str, now_ms: int) -> list[RowBlock]:
        """The rows of `rows()` as columns: a user block, then an item block (empty ones left out).

        One gather and one device→host copy per column, whatever the number
        of rows (the trainer publishes thousands per transaction).
        """
        self._resolve_deferred()
        blocks = (self._user_block(list(user_ids), model_version, now_ms),
                  self._item_block(list(item_ids), model_version, now_ms))
        return [b for b in blocks if b is not None]

    @staticmethod
    def _known(vocab: Vocab, ids: list[str]) -> tuple[list[str], npt.NDArray[np.int64]]:
        found = [(i, r) for i in ids if (r := vocab.row(i)) is not None]
        return [i for i, _ in found], np.array([r for _, r in found], dtype=np.int64)

    def _user_block(self, uids: list[str], version: str, now_ms: int) -> RowBlock | None:
        ids, rows = self._known(self._user_vocab, uids)
        if not ids:
            return None
        idx = torch.from_numpy(rows).to(self.device)
        serving = m.serving_vectors(self.config, self._users, self._items, idx)
        item_ids = self._item_vocab.ids
        recent = [tuple([item_ids[h] or "" for h in hist if h >= 0])
                  for hist in self._users.hist.index_select(0, idx).tolist()]
        return RowBlock(
            entity="user", ids=ids, vectors=codec.to_host(serving), biases=[0.0] * len(ids),
            model_version=version, updated_at=now_ms,
            updates=self._users.updates.index_select(0, idx).tolist(),
            last_event_ts=self._user_vocab.last_ts[rows].tolist(), recent_items=recent,
            state={"format": codec.STATE_FORMAT,
                   "id_vec": codec.to_host(self._users.vec.index_select(0, idx)),
                   "opt": codec.gather_slots(self._users, idx)})

    def _item_block(self, iids: list[str], version: str, now_ms: int) -> RowBlock | None:
        ids, rows = self._known(self._item_vocab, iids)
        if not ids:
            return None
        idx = torch.from_numpy(rows).to(self.device)
        biases = m.served_bias(self.config, self._items, self._watermark_ms, idx).tolist()
        logpops = self._items.logpop.index_select(0, idx).tolist()
        released = self._items.released.index_select(0, idx).tolist()
        return RowBlock(
            entity="item", ids=ids, vectors=codec.to_host(self._items.vec.index_select(0, idx)),
            biases=[codec.finite_logpop(b) for b in biases], model_version=version,
            updated_at=now_ms, updates=self._items.updates.index_select(0, idx).tolist(),
            last_event_ts=self._item_vocab.last_ts[rows].tolist(),
            state={"format": codec.STATE_FORMAT,
                   "logpop": [codec.finite_logpop(p) for p in logpops],
                   "opt": codec.gather_slots(self._items, idx),
                   "released_at": [None if math.isnan(r) else int(r) for r in released]})

    def apply_rows(self, rows: Iterable[EmbeddingRow]) -> None:
        """Restore rows from the changelog (any order; latest row per key wins).

        Users' recent items are resolved against items once the next call needs
        them, so users may arrive before their items.
        """
        by_entity: dict[str, list[EmbeddingRow]] = {"user": [], "item": []}
        for row in rows:
            by_entity[row.entity].append(row)
        for group in by_entity.values():
            if group:
                self.apply_columns(ChangelogRows.of(group))

    def apply_columns(self, rows: ChangelogRows) -> None:
        """`apply_rows` for rows of one entity as columns (the restore decodes them so).

        Rows are claimed one by one and written to the table in bulk; a claim
        that evicts (a full table) first writes what is pending, so the result
        is that of writing each row in turn. Users and items are claimed from
        separate tables, and a user row's history waits for `_deferred`, so
        which entity comes first does not matter.
        """
        is_user = rows.entity == "user"
        if is_user and self._tombstoned:
            # A row after the tombstone: the user came back, as when one chunk of the
            # restore holds both (only the row is read). Left tombstoned across chunks,
            # what the volatile state keeps of them was dropped (core review).
            self._tombstoned.difference_update(rows.ids)
        vocab = self._user_vocab if is_user else self._item_vocab
        vocab.overflow = max(RESTORE_OVERFLOW_MIN, int(vocab.max_rows * RESTORE_OVERFLOW))
        pending: dict[int, int] = {}  # table row -> index in `rows` of its latest row
        for k, (ident, ts) in enumerate(zip(rows.ids, rows.last_event_ts, strict=True)):
            r, evicted_ids, evicted = vocab.force(ident, ts)
            self._restore_evicted[0 if is_user else 1].extend(evicted_ids)
            if len(evicted):
                self._write_columns(rows, pending)
                pending.clear()
                self._drop_rows(is_user, evicted)
            pending[r] = k
        self._write_columns(rows, pending)

    def _end_restore(self) -> None:
        """Evict what a restore left over the caps (`Vocab.trim`): usually nothing."""
        for is_user, vocab in ((True, self._user_vocab), (False, self._item_vocab)):
            if vocab.overflow:
                rows, ids = vocab.trim()
                self._drop_rows(is_user, rows)
                self._restore_evicted[0 if is_user else 1].extend(ids)

    def _take_restore_evicted(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Ids a restore evicted over the caps that still have no row, once: the next step
        reports them evicted, so the trainer publishes their tombstones. Without them
        the changelog, and every scorer, kept rows the model no longer had."""
        out = tuple(tuple(i for i in dict.fromkeys(ids) if i not in vocab.index)
                    for ids, vocab in zip(self._restore_evicted,
                                          (self._user_vocab, self._item_vocab), strict=True))
        self._restore_evicted = ([], [])
        return out[0], out[1]

    def _drop_rows(self, is_user: bool, evicted: npt.NDArray[np.int64]) -> None:
        """Clear rows the restore evicted (their ids are already released)."""
        if not len(evicted):
            return
        ev = torch.as_tensor(evicted, device=self.device)
        self._accum.discard("user" if is_user else "item", ev)  # the row's next id starts clean
        if is_user:
            for r in evicted.tolist():
                self._deferred.pop(r, None)
            self._users.reset_rows(ev, None)
        else:
            m.compact_history(self._users.hist, ev)  # restored users are published as read
            self._items.reset_rows(ev, None)

    def _write_columns(self, rows: ChangelogRows, pending: dict[int, int]) -> None:
        """Write the rows `pending` maps to (table row -> index in `rows`)."""
        if not pending:
            return
        is_user = rows.entity == "user"
        table = self._users if is_user else self._items
        table.ensure((self._user_vocab if is_user else self._item_vocab).allocated)
        idx = torch.as_tensor(list(pending), dtype=torch.int64, device=self.device)
        take = np.fromiter(pending.values(), dtype=np.int64, count=len(pending))
        state = rows.state
        vectors = self._take(state.get("id_vec") if is_user else rows.vectors, take, "id_vec")
        if vectors.shape[1:] != table.vec.shape[1:]:  # a (n, 1) column would broadcast
            raise ValueError(f"{rows.entity} rows hold vectors of shape {tuple(vectors.shape[1:])}"
                             f", the model's are {tuple(table.vec.shape[1:])}: a different dim?")
        table.vec[idx] = vectors
        slots = state.get("opt") or {}
        for name, t in table.slots.items():
            values = self._take(codec.slot_value(slots, name), take, f"optimiser slot {name!r}")
            t[idx] = values.reshape(len(take), *t.shape[1:])
        table.updates[idx] = torch.as_tensor(np.asarray(rows.updates, dtype=np.int64)[take],
                                             device=self.device)
        if is_user:
            self._users.hist[idx] = -1
            recent = rows.recent_items
            for r, k in pending.items():
                self._deferred[r] = recent[k]
            return
        logpop = _picked(state.get("logpop"), take, "logpop")
        self._items.logpop[idx] = torch.as_tensor(
            [codec.read_logpop(float(p)) for p in logpop], dtype=torch.float64, device=self.device)
        released = _picked(state.get("released_at"), take, None)
        self._items.released[idx] = torch.as_tensor(
            [float("nan") if v is None else float(v) for v in released],
            dtype=torch.float64, device=self.device)

    def _take(self, column: Any, take: npt.NDArray[np.int64], what: str) -> torch.Tensor:
        """Rows `take` of a float32 column (an array, or a list of per-row values)."""
        if isinstance(column, np.ndarray):
            host = column[take]
        else:
            host = np.asarray(_picked(column, take, what), dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(host, dtype=np.float32)).to(self.device)


def _picked(column: list[Any] | None, take: npt.NDArray[np.int64],
            what: str | None) -> list[Any]:
    """Entries `take` of a list column; with `what`, a row lacking it is an error."""
    values = [None] * len(take) if column is None else [column[k] for k in take.tolist()]
    if what is not None and any(v is None for v in values):
        raise ValueError(f"row state lacks {what}: was it written by a different learner?")
    return values
