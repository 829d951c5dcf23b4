"""`Learner`: the one object the trainer drives (evaluate -> learn -> rows).

Per micro-batch: screen (dedup, rate cap) -> map ids to rows (admission,
TTL/LRU eviction) -> weighted sampled-softmax step (`loss.py`) on the fresh
events plus a replayed sample -> finite check -> row-wise optimiser (or
accumulate) -> decayed popularity and recent items -> report what changed.

Restore: every live row's `EmbeddingRow` (see `rows.py`) plus `global_state()`
restore the model exactly (`apply_rows`, `apply_global_state`). NOT restored
from rows: the replay buffer, the dedup window, rate-cap counters, pending
admission counts, gradients cached by `accumulate_steps > 1` that were not yet
applied, and the random generator position unless `global_state` is applied.
`state_dict()` / `load_state_dict()` snapshot all of those but the cached
gradients (the trainer's `--snapshot-dir` writes them to disk; it applies
cached gradients before every commit, so a snapshot never has any to keep):
call `apply_pending()` before `state_dict()` to keep them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from stream_app.core import model as m
from stream_app.core.config import LearnerConfig
from stream_app.core.evaluate import EvalStats
from stream_app.core.guards import Deduplicator, Outcome, RateLimiter, far_ahead, screen
from stream_app.core.learner_ops import LearnerOps
from stream_app.core.learner_snapshot import LearnerSnapshot
from stream_app.core.learner_state import LearnerState
from stream_app.core.optim import GradAccumulator
from stream_app.core.replay_buffer import ReplayBuffer
from stream_app.core.stats import StepStats
from stream_app.core.vocab import COLD_ROW, Vocab, counting_only
from stream_app.events import Event, EventKind

DEFERRED_CHUNK = 65_536
"""Restored users whose recent items are resolved in one pass."""


def default_device() -> torch.device:
    """CUDA when present, else CPU: same code either way."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Learner(LearnerOps, LearnerState, LearnerSnapshot):
    """Incremental recommender over a stream of click/purchase events.

    Exact restore = `apply_rows(all latest rows)` + `apply_global_state(...)`.
    Not restored that way (see the module docstring): replay buffer, dedup
    window, rate-cap counters, pending admission counts, un-applied
    accumulated gradients; `state_dict()` covers all but the last.

    >>> from stream_app.events import Event, EventKind
    >>> lr = Learner(LearnerConfig(dim=8, num_sampled_negatives=4), device="cpu")
    >>> evs = [Event(event_id=f"e{k}", user_id=f"u{k % 3}", item_id=f"i{k % 5}",
    ...              ts=1_000 * k, kind=EventKind.CLICK) for k in range(12)]
    >>> lr.learn(evs).n_applied
    12
    >>> lr.table_sizes()
    {'users': 3, 'items': 5}
    >>> len(lr.recommend(["u0"], k=2).item_ids[0])
    2
    """

    def __init__(self, config: LearnerConfig | None = None, *,
                 device: str | torch.device | None = None, seed: int | None = None) -> None:
        self.config = config or LearnerConfig()
        self.device = torch.device(device) if device is not None else default_device()
        cfg = self.config
        self.seed = cfg.seed if seed is None else seed
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(self.seed)
        self._user_vocab = Vocab(max_rows=cfg.max_users,
                                 admission_threshold=cfg.admission_threshold,
                                 idle_ttl_ms=cfg.idle_ttl_ms)
        self._item_vocab = Vocab(max_rows=cfg.max_items,
                                 admission_threshold=cfg.admission_threshold,
                                 idle_ttl_ms=cfg.idle_ttl_ms)
        self._users = m.Table(cfg, self.device, items=False)
        self._items = m.Table(cfg, self.device, items=True)
        self._sync_tables()
        self._items.reset_rows(torch.tensor([COLD_ROW], device=self.device), self._gen)
        self._dedup = Deduplicator(cfg.dedup_window)
        self._rate = RateLimiter(cfg.rate_cap_events, cfg.rate_cap_window_ms)
        self._replay = ReplayBuffer(cfg.replay_capacity, self.seed)
        self._accum = GradAccumulator(cfg.accumulate_steps)
        self._step = 0  # learn() calls that applied at least one event
        self._applied_steps = 0  # optimiser updates (drives the LR schedule)
        self._origin_ms: int | None = None
        self._watermark_ms: int | None = None
        self._deferred: dict[int, tuple[str, ...]] = {}  # user row -> recent ids to resolve
        self._forgotten: set[str] = set()  # users to drop from the replay buffer
        self._tombstoned: set[str] = set()  # users whose tombstone a restore read
        self._foreign: set[str] = set()  # users a restore read another trainer's row of
        self._restore_evicted: tuple[list[str], list[str]] = ([], [])
        self._restore_stale: list[str] = []  # users to republish (`_resolve_histories`)
        self._forget_requests = 0  # forget requests applied, over the learner's history

    # ------------------------------------------------------------------ learning
    def learn(self, events: Sequence[Event]) -> StepStats:
        """Learn from one micro-batch (any order; event time is taken from `ts`).

        Never mutates `events`. See `StepStats` for what to publish and dead-letter.
        """
        t0 = time.perf_counter()
        self._end_restore()
        # Which users' tombstones a restore read: only `load_volatile_state`, called
        # before any step, needs them; kept, they held every user evicted or erased in
        # the changelog for the learner's whole life.
        self._tombstoned.clear()
        self._foreign.clear()
        self._resolve_deferred()
        self._purge_forgotten()
        stats = self._learn(events, t0)
        users, items = self._take_restore_evicted()  # after the step admitted its ids
        stale = self._take_restore_stale(stats.changed_user_ids)
        if not users and not items and not stale:
            return stats
        return dataclasses.replace(stats, evicted_user_ids=(*stats.evicted_user_ids, *users),
                                   evicted_item_ids=(*stats.evicted_item_ids, *items),
                                   changed_user_ids=(*stats.changed_user_ids, *stale))

    def _take_restore_stale(self, changed: Sequence[str]) -> tuple[str, ...]:
        """Users whose restored recent items named items without a row, once, for the
        next step to republish (those still holding a row and not changed anyway)."""
        if not self._restore_stale:
            return ()
        skip, index = set(changed), self._user_vocab.index
        out = tuple(u for u in dict.fromkeys(self._restore_stale) if u in index and u not in skip)
        self._restore_stale = []
        return out

    def _far(self, events: Sequence[Event]) -> set[int]:
        return far_ahead([e.ts for e in events], self._watermark_ms,
                         self.config.max_time_jump_ms)

    def _learn(self, events: Sequence[Event], t0: float) -> StepStats:
        outcomes, keep, rate_pending = screen(events, self._dedup, self._rate,
                                              self._far(events), self._watermark_ms)
        if not keep:
            return StepStats(step=self._step, loss=float("nan"), n_applied=0,
                             outcomes=tuple(outcomes))
        kept = [events[i] for i in keep]
        cfg = self.config
        uids = [e.user_id for e in kept]
        iids = [e.item_id for e in kept]
        ts_np = np.fromiter((e.ts for e in kept), dtype=np.int64, count=len(kept))
        weights_np = np.fromiter((cfg.purchase_weight if e.kind == EventKind.PURCHASE
                                  else cfg.click_weight for e in kept),
                                 dtype=np.float32, count=len(kept))
        now = int(ts_np.max()) if self._watermark_ms is None \
            else max(self._watermark_ms, int(ts_np.max()))
        origin = self._origin_ms if self._origin_ms is not None else int(ts_np.min())
        t1 = time.perf_counter()
        pending = (self._user_vocab.pending_of(uids), self._item_vocab.pending_of(iids))
        draws = (self._gen.get_state(), self._replay.rng.bit_generator.state)
        u_rows, u_adm = self._assign(self._user_vocab, uids, ts_np, now, pending[0])
        i_rows, i_adm = self._assign(self._item_vocab, iids, ts_np, now, pending[1])
        self._sync_tables()
        cleared = self._evict_rows(u_adm.evicted_rows, i_adm.evicted_rows)
        self._users.reset_rows(self._t(u_adm.new_rows), self._gen)
        self._items.reset_rows(self._t(i_adm.new_rows), self._gen)
        evicted = (u_adm.evicted_ids, i_adm.evicted_ids)
        t2 = time.perf_counter()

        # Events whose item is still below the admission threshold have no item
        # row: they count for admission only, and are not trained on. Nor are
        # events of a kind weighted 0 (click_weight=0 learns from purchases
        # only): they add no popularity (log 0) and no loss, but are applied
        # (counted, in the user's recent items).
        fresh = i_rows > COLD_ROW
        trains = fresh & (weights_np > 0)
        u_t, i_t = self._t(u_rows), self._t(i_rows)
        ts_t = self._t(ts_np)
        w_t = torch.as_tensor(weights_np, device=self.device)
        fresh_t, trains_t = self._t(fresh), self._t(trains)
        contrib = m.decayed_log_weight(cfg, ts_t[trains_t], w_t[trains_t], origin)
        new_logpop = m.add_popularity(self._items.logpop, i_t[trains_t], contrib)
        r_u, r_i, r_w = self._replay_sample(int(trains.sum()), new_logpop)
        train_u = torch.cat([u_t[trains_t], r_u])
        train_i = torch.cat([i_t[trains_t], r_i])
        train_w = torch.cat([w_t[trains_t], r_w])
        grads = self._gradients(train_u, train_i, train_w, new_logpop)
        t3 = time.perf_counter()
        if grads is None:  # non-finite: apply nothing, evictions included; hand the events back
            self._rollback(u_adm.new_ids, i_adm.new_ids)  # first: they may hold evicted rows
            for vocab, adm, saved in ((self._user_vocab, u_adm, pending[0]),
                                      (self._item_vocab, i_adm, pending[1])):
                vocab.reinstate(adm)
                vocab.untouch(adm)
                vocab.restore_pending(saved)  # a re-sent event counts once
            self._put_back(cleared)
            # Nor its draws: learning goes on as if the batch had not come (but for the
            # rows its new ids had taken, given back in another order).
            self._gen.set_state(draws[0])
            self._replay.rng.bit_generator.state = draws[1]
            refused = {events[i].event_id for i in keep}
            for i, outcome in enumerate(outcomes):  # its copies in the step too (counted as
                if outcome in (Outcome.APPLIED, Outcome.DUPLICATE, Outcome.ID_REUSED) \
                        and events[i].event_id in refused:  # duplicates: in no DLQ record)
                    outcomes[i] = Outcome.NON_FINITE
            return StepStats(step=self._step, loss=float("nan"), n_applied=0,
                             outcomes=tuple(outcomes))
        loss, (g_user_rows, g_user), (g_item_rows, g_item) = grads

        # Commit, in an order that keeps every structure consistent on its own.
        self._step += 1
        applied, moved = False, {}
        if train_u.numel():  # a step that trains nothing moves no schedule
            self._accum.add("user", g_user_rows, g_user)
            self._accum.add("item", g_item_rows, g_item)
            self._accum.tick()
            applied = self._accum.ready()
            moved = self._apply(self._accum.pop()) if applied else {}
        self._items.logpop = new_logpop
        self._record_releases(kept, i_rows)
        flips = m.release_flips(cfg, self._items.released, self._watermark_ms, now)
        own_user = u_t > COLD_ROW
        m.push_history(self._users.hist, u_t[fresh_t & own_user], i_t[fresh_t & own_user],
                       ts_t[fresh_t & own_user])
        self._users.updates.index_add_(0, u_t, torch.ones_like(u_t))
        self._items.updates.index_add_(0, i_t[fresh_t], torch.ones_like(i_t[fresh_t]))
        self._replay.add([u for u, f in zip(uids, trains, strict=True) if f],
                         [i for i, f in zip(iids, trains, strict=True) if f], weights_np[trains])
        self._dedup.commit(kept)
        self._rate.commit(rate_pending, now)
        self._watermark_ms, self._origin_ms = now, origin
        # Users whose history lost an evicted item changed too.
        # Applied gradients move the rows of every step they were cached over.
        changed_u = torch.cat([u_t, cleared.compacted,
                               *([moved["user"]] if "user" in moved else [])])
        # Items whose release prior switched on or off changed their served bias.
        changed_i = torch.cat([i_t[fresh_t], flips, *([moved["item"]] if "item" in moved else [])])
        t4 = time.perf_counter()
        return StepStats(
            step=self._step, loss=loss, n_applied=len(kept), outcomes=tuple(outcomes),
            changed_user_ids=self._ids(self._user_vocab, changed_u),
            changed_item_ids=self._ids(self._item_vocab, changed_i),
            evicted_user_ids=evicted[0], evicted_item_ids=evicted[1],
            admitted_users=len(u_adm.new_ids), admitted_items=len(i_adm.new_ids),
            applied_update=applied,
            n_replayed=len(r_u), n_trained=int(train_u.numel()),
            timings={"screen": t1 - t0, "vocab": t2 - t1, "gradients": t3 - t2,
                     "commit": t4 - t3, "total": t4 - t0})

    def apply_pending(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Apply the gradients still cached (`accumulate_steps` > 1); the (user, item) ids
        whose rows that changed.

        The trainer calls it before each commit: cached gradients are in no
        published row, so a restart would lose the learning of events whose
        offsets are already committed.
        """
        self._resolve_deferred()
        if self._accum.count == 0:
            return (), ()
        moved = self._apply(self._accum.pop())
        empty = torch.zeros(0, dtype=torch.long, device=self.device)
        return (self._ids(self._user_vocab, moved.get("user", empty)),
                self._ids(self._item_vocab, moved.get("item", empty)))

    def evaluate(self, events: Sequence[Event]) -> EvalStats:
        """Prequential metrics of the current model on `events`, before learning them.

        Changes nothing. Users without a row are scored with the cold-start row.
        Each user's recent items are left out of both rankings, as the scorer
        leaves them out of what it serves (see `evaluate.py`).
        Batches over `eval_max_events` are evaluated on an evenly spaced subset
        (deterministic, no RNG): ranking every event against every item was
        half of the trainer's time. Recall and MRR are averages that a subset
        keeps; HitRate@K is per user and falls with fewer events per user.
        `EvalStats.n_events` is the number actually evaluated. Events `learn`
        would not apply (duplicates, over the rate cap) are not scored: a
        re-sent event's item is already in the user's history, a sure miss.
        """
        self._resolve_deferred()
        self._purge_forgotten()  # an erased user's event ids are no duplicates to `learn`
        _, keep, _ = screen(events, self._dedup, self._rate, self._far(events),
                            self._watermark_ms)  # reads, commits nothing
        if len(keep) < len(events):
            events = [events[i] for i in keep]
        limit = self.config.eval_max_events
        if len(events) > limit:
            stride = len(events) / limit
            events = [events[int(j * stride)] for j in range(limit)]
        return self._evaluate(events)

    # ------------------------------------------------------------------ helpers
    def _t(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, device=self.device)

    def _assign(self, vocab: Vocab, ids: list[str], ts: np.ndarray, now: int,
                pending_before: dict[str, int | None]) -> tuple[np.ndarray, Any]:
        """Per-event rows for `ids`, admitting/evicting in `vocab`; the events that only
        brought an id to its threshold stay on the cold row (`vocab.counting_only`)."""
        index: dict[str, int] = {}
        inverse = np.fromiter((index.setdefault(i, len(index)) for i in ids),
                              dtype=np.int64, count=len(ids))
        last = np.full(len(index), np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(last, inverse, ts)
        counts = np.bincount(inverse, minlength=len(index)).astype(np.int64)
        adm = vocab.assign(list(index), last, counts, now)
        rows = adm.rows[inverse]
        if vocab.admission_threshold > 1 and adm.new_ids:
            rows[counting_only(ids, ts, adm.new_ids, pending_before,
                               vocab.admission_threshold)] = COLD_ROW
        return rows, adm

    def _sync_tables(self) -> None:
        self._users.ensure(self._user_vocab.allocated)
        self._items.ensure(self._item_vocab.allocated)

    def _rollback(self, user_ids: tuple[str, ...], item_ids: tuple[str, ...]) -> None:
        for vocab, table, ids in ((self._user_vocab, self._users, user_ids),
                                  (self._item_vocab, self._items, item_ids)):
            rows = [r for r in (vocab.remove(i) for i in ids) if r is not None]
            table.reset_rows(self._t(np.array(rows, dtype=np.int64)), None)

    def _record_releases(self, events: list[Event], item_rows: np.ndarray) -> None:
        """Keep each item's release time from its events (the batch's last value wins)."""
        latest = {int(r): e.item_released_at for e, r in zip(events, item_rows, strict=True)
                  if e.item_released_at is not None and r > COLD_ROW}
        if latest:
            rows = torch.as_tensor(list(latest), device=self.device)
            self._items.released[rows] = torch.as_tensor(list(latest.values()),
                                                         dtype=torch.float64, device=self.device)

    def _replay_sample(self, n_fresh: int, logpop: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Past events to mix in, of users and items that still have rows. An item without
        popularity (re-admitted by events of a kind weighted 0 only) is left out: its
        log Q is -inf, and one such replayed event made the whole step non-finite."""
        n = self._replay.count_for(self.config.replay_ratio * n_fresh)
        users, items, weights = self._replay.sample(n)
        ur = self._t(self._user_vocab.lookup(list(users)))
        ir = self._t(self._item_vocab.lookup(list(items)))
        ok = (ur >= 0) & (ir > COLD_ROW)
        ok &= torch.isfinite(logpop.index_select(0, ir.clamp(min=0)))
        return ur[ok], ir[ok], self._t(weights)[ok]

    @staticmethod
    def _ids(vocab: Vocab, rows: torch.Tensor) -> tuple[str, ...]:
        out = []
        for r in torch.unique(rows).tolist():
            id_ = vocab.ids[r] if r != COLD_ROW else None
            if id_ is not None:
                out.append(id_)
        return tuple(out)

    def _resolve_histories(self, pending: list[tuple[int, tuple[str, ...]]]) -> None:
        """Each user keeps its known recent items, in order, up to `recent_items`."""
        length = self.config.recent_items
        users = np.fromiter((u for u, _ in pending), dtype=np.int64, count=len(pending))
        sizes = np.fromiter((len(r) for _, r in pending), dtype=np.int64, count=len(pending))
        found = self._item_vocab.lookup([i for _, r in pending for i in r])
        owner = np.repeat(np.arange(len(users)), sizes)
        known = found > COLD_ROW
        # A published user names only items with rows; one without a row now was evicted
        # by this restore (caps lowered, other trainers' rows read) or after the user was
        # published: the user's row in the changelog no longer matches the model, so the
        # next step republishes it. Kept as read, a later re-admission of the item put it
        # back in the history at the next restore, and scorers excluded it meanwhile.
        lost = np.unique(owner[~known])
        if len(lost):
            ids = self._user_vocab.ids
            self._restore_stale.extend(ids[r] or "" for r in users[lost].tolist())
        owner, found = owner[known], found[known]
        position = np.arange(len(owner)) - np.searchsorted(owner, owner)
        fits = position < length
        hist = np.full((len(users), length), -1, dtype=np.int64)
        hist[owner[fits], position[fits]] = found[fits]
        self._users.hist[self._t(users)] = self._t(hist).to(self._users.hist.dtype)

    def finish_restore(self) -> None:
        """Resolve restored users' recent items now that every changelog row is applied.

        Without it the next call would (1-2 s at 900K users), after the restore
        has handed its freed memory back: the temporary arrays of the
        resolution would then stay in the heap (BENCHMARKS.md, Restore).
        """
        self._end_restore()
        self._purge_forgotten()
        self._resolve_deferred()

    def _resolve_deferred(self) -> None:
        """Rebuild restored users' recent items once all rows have been applied."""
        if not self._deferred:
            return
        # Many users at once (a restore defers every user: one row write each was
        # ~11 s at 900K users), in chunks that keep the temporary arrays small.
        pending = list(self._deferred.items())
        for start in range(0, len(pending), DEFERRED_CHUNK):
            self._resolve_histories(pending[start:start + DEFERRED_CHUNK])
        self._deferred = {}
