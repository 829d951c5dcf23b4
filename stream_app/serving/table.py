"""The materialised `embeddings` topic: user rows on the host, item rows on the device.

Items live in one preallocated `(capacity, dim)` matrix plus a `(capacity,)`
bias vector on the scoring device. Every item id owns one slot; a tombstone
frees its slot onto a free list and the next new item reuses it, so an update
or a delete is O(1) (one row written) and the matrix is never rebuilt; it only
doubles when full (amortised O(1)). A free slot has a zero vector and a bias of
-inf, so it can never be ranked.

Writes are staged on the host and pushed to the device in one `index_copy_`
per polled batch (`flush`), so tailing thousands of rows costs one transfer.

Users are kept on the host in `UserRows` (users.py): slots of two float32
matrices, and each user's recent items (most recent first) for
`exclude_seen`, `explain` and rebuilding the serving vector.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from stream_app.events import EmbeddingRow, Entity
from stream_app.serving.bounds import BoundIndex
from stream_app.serving.users import UserRows

FREE_BIAS = float("-inf")

VECTOR_NORM_MAX = 1e6
"""Largest norm an item vector may have. A learned vector's is a few units; one item row
of [3e38, 3e38] (finite, so it decoded) overflowed every score against it, and every
personalised request was refused as non-finite until the row was replaced. A user's
vector is not bounded: an overflowing one sends that user alone to the fallback."""


class TableError(ValueError):
    """A row does not fit the table (e.g. its dimension differs from the others)."""


@dataclass(frozen=True, slots=True)
class ServingMix:
    """x_u = id_vec + history_weight * sum_p decay**p v_p / sum_p decay**p (trainer's model).

    Published by the trainer in `meta:trainer`; with it the scorer rebuilds a
    user's vector from the *current* item vectors instead of the ones of the
    user's last event, exactly as the learner itself would score.
    """

    history_weight: float
    recent_decay: float
    recent_items: int


class EmbeddingTable:
    """id -> row maps for users and items (kept apart) and the device item matrix.

    >>> t = EmbeddingTable(device=torch.device("cpu"))
    >>> row = EmbeddingRow(entity="item", id="i1", vector=np.ones(2, np.float32), bias=0.5,
    ...                    model_version="v1", updates=1, updated_at=1000, last_event_ts=1000)
    >>> t.upsert(row); t.n_items, t.dim
    (1, 2)
    >>> t.delete("item", "i1"); t.n_items
    0
    """

    def __init__(self, *, device: torch.device, history_max: int = 50,
                 initial_capacity: int = 1024) -> None:
        self.device = device
        self.history_max = history_max
        self.dim: int | None = None
        self.users = UserRows(dim=0, history_max=history_max)
        self.item_slot: dict[str, int] = {}
        self.slot_item: list[str | None] = []
        self._free: list[int] = []
        self._capacity = max(1, initial_capacity)
        self._matrix = torch.zeros((0, 0), device=device)
        self._bias = torch.zeros(0, device=device)
        self._staged: dict[int, tuple[npt.NDArray[np.float32], float]] = {}
        self._bounds: BoundIndex | None = None
        self.newest_updated_at: int | None = None
        self.model_version = ""
        self.mix: ServingMix | None = None

    # -- writes -------------------------------------------------------------------------
    def upsert(self, row: EmbeddingRow) -> None:
        """Insert or replace one row; raises `TableError` on a dimension mismatch or an
        item vector norm over VECTOR_NORM_MAX."""
        vector = np.asarray(row.vector, dtype=np.float32)
        if row.entity == "item":  # before the first row fixes the dim: a refused one did,
            flat = vector.ravel().astype(np.float64)
            norm = math.sqrt(float(np.dot(flat, flat)))
            if not norm <= VECTOR_NORM_MAX:  # and every row of the model's dim was refused
                raise TableError(f"{row.key}: vector norm {norm:.3g} is over "
                                 f"{VECTOR_NORM_MAX:g}: its scores could overflow float32")
        self._check_dim(vector, row.key)
        if row.entity == "user":
            id_vec = row.state.get("id_vec")
            self.users.put(row.id, vector, tuple(row.recent_items), row.updates,
                           id_vec if isinstance(id_vec, np.ndarray) and id_vec.shape == vector.shape
                           else None)
        else:
            slot = self.item_slot.get(row.id)
            if slot is None:
                slot = self._allocate(row.id)
            self._staged[slot] = (vector, float(row.bias))
        # Stamped no later than now: a row from a clock ahead (or a foreign writer's) held
        # the newest time, and so the staleness gauge and the model version, for as long
        # as it was ahead, hiding a scorer that had stopped reading (observability review).
        stamp = min(row.updated_at, int(time.time() * 1000))
        if self.newest_updated_at is None or stamp >= self.newest_updated_at:
            self.newest_updated_at = stamp
            self.model_version = row.model_version

    def delete(self, entity: Entity, ident: str) -> None:
        """Apply a tombstone: the row disappears; an item's slot goes on the free list."""
        if entity == "user":
            self.users.pop(ident)
            return
        slot = self.item_slot.pop(ident, None)
        if slot is None:
            return
        self.slot_item[slot] = None
        self._free.append(slot)
        self._staged[slot] = (np.zeros(self.dim or 0, dtype=np.float32), FREE_BIAS)

    def _check_dim(self, vector: npt.NDArray[np.float32], key: str) -> None:
        if vector.ndim != 1:
            raise TableError(f"{key}: vector must be 1-D, got shape {vector.shape}")
        if self.dim is None:
            self.dim = int(vector.shape[0])
            self.users = UserRows(dim=self.dim, history_max=self.history_max)
            self._matrix = torch.zeros((self._capacity, self.dim), device=self.device)
            self._bias = torch.full((self._capacity,), FREE_BIAS, device=self.device)
        elif vector.shape[0] != self.dim:
            raise TableError(f"{key}: dim {vector.shape[0]} differs from the table's {self.dim}")

    def _allocate(self, ident: str) -> int:
        if self._free:
            slot = self._free.pop()
            self.slot_item[slot] = ident
        else:
            slot = len(self.slot_item)
            self.slot_item.append(ident)
            if slot >= self._capacity:
                self._grow()
        self.item_slot[ident] = slot
        return slot

    def _grow(self) -> None:
        """Double the device matrix (amortised O(1) per insert; staged rows are kept)."""
        assert self.dim is not None  # noqa: S101 (upsert sets dim before allocating)
        old = self._capacity
        self._capacity = old * 2
        matrix = torch.zeros((self._capacity, self.dim), device=self.device)
        bias = torch.full((self._capacity,), FREE_BIAS, device=self.device)
        matrix[:old] = self._matrix
        bias[:old] = self._bias
        self._matrix, self._bias = matrix, bias

    def flush(self) -> None:
        """Push staged item writes to the device in one `index_copy_` each."""
        if not self._staged:
            return
        slots = torch.tensor(list(self._staged), dtype=torch.long, device=self.device)
        vectors = np.stack([v for v, _ in self._staged.values()])
        biases = np.array([b for _, b in self._staged.values()], dtype=np.float32)
        self._staged.clear()
        vectors_t = torch.from_numpy(vectors).to(self.device)
        biases_t = torch.from_numpy(biases).to(self.device)
        self._matrix.index_copy_(0, slots, vectors_t)
        self._bias.index_copy_(0, slots, biases_t)
        if self._bounds is not None:
            self._bounds.extend(self.n_slots)
            self._bounds.raise_bounds(slots, vectors_t, biases_t)

    # -- reads --------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return len(self.item_slot)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_slots(self) -> int:
        """Slots ever used (live + free); scoring scans `[:n_slots]`."""
        return len(self.slot_item)

    def items(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(matrix (n_slots, dim), bias (n_slots,))` views on the device, writes flushed.

        Free slots are inside the range with bias -inf.
        """
        self.flush()
        n = self.n_slots
        return self._matrix[:n], self._bias[:n]

    def bounds(self) -> BoundIndex:
        """The pruning index of the current slots (see `bounds.py`), writes flushed.

        Every new slot and write is staged, and `flush` extends and raises an
        existing index, so it covers every slot once `items()` has flushed.
        """
        matrix, bias = self.items()
        if self._bounds is None or self._bounds.stale:
            self._bounds = BoundIndex(matrix, bias)
        return self._bounds

    def slots_of(self, item_ids: tuple[str, ...] | list[str]) -> list[int]:
        """Slots of the known ids among `item_ids`, in order (unknown ids are skipped)."""
        get = self.item_slot.get
        return [s for s in (get(i) for i in item_ids) if s is not None]
