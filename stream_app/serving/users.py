"""The scorer's user rows: one float32 matrix per vector kind, a slot per user.

A numpy array per user costs a 112-byte header beside its 256 bytes of data
(d=64), and a Python object to hold the pair: a user with 20 recent items
took 1,110 bytes (tracemalloc, 100K users). Here a user is a slot in two
`(capacity, dim)` matrices (published serving vector, learned id vector) plus
an `updates` array: the bytes are the data. The matrices double when full;
their spare rows are never written, so the kernel does not back them with
memory until a user takes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class UserState:
    """What the scorer needs of one user row (copies: later writes do not change it).

    `vector`: (dim,) float32, the serving vector the trainer published;
    `id_vec`: the user's learned id vector, when the row carries one;
    `recent_items` (at most the table's `history_max`) for `exclude_seen` and
    `explain`; `recent_mix`, all of the row's recent items, to rebuild the vector.
    """

    vector: npt.NDArray[np.float32]
    recent_items: tuple[str, ...]
    updates: int
    id_vec: npt.NDArray[np.float32] | None = None
    recent_mix: tuple[str, ...] = ()


class UserRows:
    """id -> slot, and the slot's vectors, updates and recent items.

    >>> users = UserRows(dim=2, history_max=1)
    >>> users.put("u1", np.ones(2, np.float32), ("i1", "i2"), 3, None)
    >>> users["u1"].recent_items, users["u1"].updates, len(users)
    (('i1',), 3, 1)
    >>> users.pop("u1"); users.get("u1") is None
    True
    """

    def __init__(self, *, dim: int, history_max: int, capacity: int = 1024) -> None:
        self.history_max = history_max
        self._slot: dict[str, int] = {}
        self._free: list[int] = []
        self._recent: list[tuple[str, ...]] = []
        capacity = max(1, capacity)
        self._vectors = np.zeros((capacity, dim), dtype=np.float32)
        self._id_vecs = np.zeros((capacity, dim), dtype=np.float32)
        self._has_id = np.zeros(capacity, dtype=bool)
        self._updates = np.zeros(capacity, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, user_id: str) -> bool:
        return user_id in self._slot

    def __getitem__(self, user_id: str) -> UserState:
        return self._state(self._slot[user_id])

    def __iter__(self) -> Iterator[str]:
        return iter(self._slot)

    def get(self, user_id: str) -> UserState | None:
        slot = self._slot.get(user_id)
        return None if slot is None else self._state(slot)

    def recent_items(self, user_id: str) -> tuple[str, ...]:
        """The user's recent items (up to `history_max`; none if unknown), without
        copying its vectors as `get` does: exclusions and `explain` need only these."""
        slot = self._slot.get(user_id)
        return () if slot is None else self._recent[slot][: self.history_max]

    def put(self, user_id: str, vector: npt.NDArray[np.float32], recent: tuple[str, ...],
            updates: int, id_vec: npt.NDArray[np.float32] | None) -> None:
        """Insert or replace a user; `vector` and `id_vec` are (dim,) (the table checks)."""
        slot = self._slot.get(user_id)
        if slot is None:
            slot = self._allocate()
            self._slot[user_id] = slot
        self._vectors[slot] = vector
        self._has_id[slot] = id_vec is not None
        if id_vec is not None:
            self._id_vecs[slot] = id_vec
        self._updates[slot] = updates
        self._recent[slot] = recent

    def pop(self, user_id: str) -> None:
        """Drop a user (tombstone); its slot goes to the next new user. The slot's numbers
        are zeroed: an erased user's vectors should not sit in memory (or a core dump)
        until the slot is reused."""
        slot = self._slot.pop(user_id, None)
        if slot is not None:
            self._recent[slot] = ()
            self._vectors[slot] = 0.0
            self._id_vecs[slot] = 0.0
            self._has_id[slot] = False
            self._updates[slot] = 0
            self._free.append(slot)

    def _state(self, slot: int) -> UserState:
        recent = self._recent[slot]
        return UserState(vector=self._vectors[slot].copy(), recent_items=recent[: self.history_max],
                         updates=int(self._updates[slot]),
                         id_vec=self._id_vecs[slot].copy() if self._has_id[slot] else None,
                         recent_mix=recent)

    def _allocate(self) -> int:
        if self._free:
            return self._free.pop()
        slot = len(self._recent)
        self._recent.append(())
        if slot >= len(self._updates):
            self._grow()
        return slot

    def _grow(self) -> None:
        """Double every array; np.zeros leaves the new half unbacked until written.

        While it copies, the old and the new arrays both exist: at 2**20 users
        and d=64, 512 MiB of new matrices of which 256 are written at once."""
        capacity = 2 * len(self._updates)
        for name in ("_vectors", "_id_vecs", "_has_id", "_updates"):
            old = getattr(self, name)
            grown = np.zeros((capacity, *old.shape[1:]), dtype=old.dtype)
            grown[: len(old)] = old
            setattr(self, name, grown)
