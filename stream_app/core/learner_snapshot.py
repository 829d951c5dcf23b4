"""Global state and snapshots of `Learner`: what is not per row.

`global_state()` / `apply_global_state()` carry what is not per-row (it rides
on the changelog's meta record); `state_dict()` / `load_state_dict()` are a
full local snapshot, including what rows do not carry.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
from collections.abc import Collection
from typing import Any

import numpy as np
import torch

from stream_app.core import model as m
from stream_app.core import rows as codec
from stream_app.core.guards import Deduplicator, RateLimiter
from stream_app.core.learner_fields import LearnerFields
from stream_app.core.optim import GradAccumulator
from stream_app.core.vocab import COLD_ROW


class LearnerSnapshot(LearnerFields):

    def global_state(self) -> dict[str, Any]:
        """JSON-able state that is not per row: counters, time origin, cold rows, RNG."""
        return {
            "format": codec.STATE_FORMAT, "step": self._step,
            "applied_steps": self._applied_steps, "origin_ms": self._origin_ms,
            "watermark_ms": self._watermark_ms, "forget_requests": self._forget_requests,
            "cold_user": self._cold(self._users), "cold_item": self._cold(self._items),
            "rng": base64.b64encode(self._gen.get_state().cpu().numpy().tobytes()).decode(),
            "rng_device": self.device.type,
        }

    def _cold(self, table: m.Table) -> dict[str, Any]:
        slots = codec.encode_slots(table, COLD_ROW)
        return {"vec": table.vec[COLD_ROW].tolist(),
                "opt": {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                        for k, v in slots.items()}}

    def apply_global_state(self, state: dict[str, Any]) -> None:
        """Inverse of `global_state()`.

        A state whose count of forget requests differs from this learner's comes
        from another history: more, users were erased after the snapshot it was
        loaded from; other, another trainer wrote it (each counts its own, under
        one meta key). Tombstones may not reach the restore (a user forgotten and
        back in one transaction has none; a chunk or compaction keeps only the
        newer row), and the snapshot's replay buffer, rate counters and duplicate
        check may hold the erased users' events: all three are emptied (a copy of a
        recent event re-sent after that restore is then applied again).
        """
        requests = int(state.get("forget_requests", 0))
        if requests != self._forget_requests:
            self._replay.clear()
            self._rate = RateLimiter(self.config.rate_cap_events, self.config.rate_cap_window_ms)
            self._dedup = Deduplicator(self.config.dedup_window)
        self._forget_requests = requests
        self._step = int(state["step"])
        self._applied_steps = int(state["applied_steps"])
        self._origin_ms = state["origin_ms"]
        self._watermark_ms = state["watermark_ms"]
        for table, cold in ((self._users, state["cold_user"]), (self._items, state["cold_item"])):
            table.vec[COLD_ROW] = torch.tensor(cold["vec"], dtype=torch.float32,
                                               device=self.device)
            codec.decode_slots(table, COLD_ROW, cold["opt"])
        rng = torch.from_numpy(np.frombuffer(base64.b64decode(state["rng"]), dtype=np.uint8).copy())
        if state.get("rng_device", self.device.type) == self.device.type:
            self._gen.set_state(rng)
        else:  # CUDA's generator state does not fit the CPU's, nor the reverse: the model
            # restores exactly, only the negatives sampled from here on differ
            self._gen.manual_seed(self.seed + self._step)

    def state_dict(self) -> dict[str, Any]:
        """Full snapshot (torch.save-able), including what rows do not carry."""
        self._resolve_deferred()
        self._purge_forgotten()
        tables = {}
        for name, t in (("users", self._users), ("items", self._items)):
            tables[name] = t.state()
        vocabs = {name: {"ids": list(v.ids), "last_ts": v.last_ts.copy(), "free": list(v.free)}
                  for name, v in (("users", self._user_vocab), ("items", self._item_vocab))}
        # Ids a restore evicted over the caps whose tombstones the next step owes: a
        # snapshot taken before it (an idle trainer's stop) lost them, and the rows
        # stayed in the changelog and the scorers.
        owed = [list(ids) for ids in self._restore_evicted]
        return {"config": dataclasses.asdict(self.config), "global": self.global_state(),
                "tables": tables, "vocabs": vocabs, "volatile": self.volatile_state(),
                "restore_evicted": owed, "restore_stale_users": list(self._restore_stale)}

    def volatile_state(self) -> dict[str, Any]:
        """What rows do not carry, copied: the dedup window, the rate-cap counters, the
        counts of ids below `admission_threshold` and the replay buffer.

        A restore from the changelog starts them empty. The trainer keeps this from
        its last commit, so a restore inside a running process (after an aborted
        transaction, on a rebalance) puts them back as they were: otherwise a
        committed event's admission count was lost (the event without effect) and a
        re-sent copy of a committed event was applied again.
        """
        self._purge_forgotten()
        return {"forget_requests": self._forget_requests,
                "pending": {name: list(v.pending.items())
                            for name, v in (("users", self._user_vocab),
                                            ("items", self._item_vocab))},
                "replay": self._replay_state(), "dedup": self._dedup.state(),
                "rate": dict(self._rate._counts)}  # noqa: SLF001

    def load_volatile_state(self, state: dict[str, Any], *,
                            own_tombstones: Collection[str] = ()) -> bool:
        """Put a `volatile_state()` back over rows just restored from the changelog; True
        when all of it was loaded.

        Ids that have a row now are not pending. The replay buffer, the rate
        counters and the duplicate check stay as the restore left them (emptied)
        when it read another count of forget requests than the state's: a forget
        the state does not reflect (another trainer's) may have erased users whose
        events they hold. Either way, every user whose tombstone the restore read
        is dropped from what is loaded: the count is one for all trainers, the
        last writer's, so it matched when this trainer's own commit came after
        another's forget, and the erased user came back here (and into the next
        snapshot). Except `own_tombstones`, users whose tombstone the learner that
        saved `state` published itself, with no other writer since: what the
        state holds of them came after it (`trainer.own_writes.OwnTombstones`).
        Users the restore `distrust`ed (another trainer published their row) are
        dropped too, whatever the count.
        """
        gone, self._tombstoned = self._tombstoned, set()
        gone.difference_update(own_tombstones)
        gone |= self._foreign  # see `distrust`
        self._foreign = set()
        for name, v in (("users", self._user_vocab), ("items", self._item_vocab)):
            v.pending.clear()
            v.pending.update((i, n) for i, n in state["pending"][name]
                             if i not in v.index and not (name == "users" and i in gone))
        if int(state["forget_requests"]) == self._forget_requests:
            self._dedup = Deduplicator(self.config.dedup_window)
            self._dedup.load(state["dedup"])
            self._load_replay(state["replay"])
            self._rate = RateLimiter(self.config.rate_cap_events,
                                     self.config.rate_cap_window_ms)
            self._rate.commit(state["rate"], self._watermark_ms or 0)
            self._forgotten = gone  # purged before they are next read
            for user in gone:
                self._rate.forget(user)
            return True
        return False

    def _replay_state(self) -> dict[str, Any]:
        return {"seen": self._replay.seen, "size": self._replay.size,
                "users": self._replay.users.copy(), "items": self._replay.items.copy(),
                "weights": self._replay.weights.copy(),
                "rng": copy.deepcopy(self._replay.rng.bit_generator.state)}

    def _load_replay(self, rep: dict[str, Any]) -> None:
        self._replay.seen = rep["seen"]
        self._replay.size = rep.get("size", min(rep["seen"], self._replay.capacity))
        self._replay.users, self._replay.items = rep["users"].copy(), rep["items"].copy()
        self._replay.weights = rep["weights"].copy()
        self._replay.rng.bit_generator.state = copy.deepcopy(rep["rng"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()` taken from a learner with the same config."""
        if state["config"] != dataclasses.asdict(self.config):
            raise ValueError("state_dict was written with a different LearnerConfig; "
                             "build the Learner with that config to load it")
        for name, t in (("users", self._users), ("items", self._items)):
            t.load_state(state["tables"][name])
        for name, v in (("users", self._user_vocab), ("items", self._item_vocab)):
            src = state["vocabs"][name]
            v.ids = list(src["ids"])
            v.index = {i: r for r, i in enumerate(v.ids) if i is not None}
            v.last_ts, v.free = src["last_ts"].copy(), list(src["free"])
        self._accum = GradAccumulator(self.config.accumulate_steps)
        self._forget_requests = int(state["global"].get("forget_requests", 0))  # its own
        self.apply_global_state(state["global"])
        self._deferred = {}
        self._forgotten, self._tombstoned, self._foreign = set(), set(), set()
        users, items = state.get("restore_evicted", ([], []))  # older snapshots: none
        self._restore_evicted = (list(users), list(items))
        self._restore_stale = list(state.get("restore_stale_users", []))
        self.load_volatile_state(state["volatile"])  # its own forget count: all of it loads
