"""Replay buffer against forgetting: a bounded uniform reservoir of past events.

Reservoir sampling (Vitter's algorithm R) keeps every applied event with equal
probability capacity / seen, so old behaviour keeps a voice in each batch while
memory stays at `capacity` entries. Entries are ids, not rows: a replayed event
whose user or item has since been evicted is skipped by the learner.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np
import numpy.typing as npt


class ReplayBuffer:
    """Bounded reservoir of (user id, item id, weight) triples.

    >>> buf = ReplayBuffer(capacity=3, seed=0)
    >>> buf.add(["u1", "u2"], ["i1", "i2"], np.ones(2, dtype=np.float32)); len(buf)
    2
    >>> buf.sample(5)[0].shape
    (5,)
    """

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity = capacity
        self.seen = 0
        self.size = 0  # entries held: min(seen, capacity) until a user is forgotten
        self.users = np.empty(capacity, dtype=object)
        self.items = np.empty(capacity, dtype=object)
        self.weights = np.zeros(capacity, dtype=np.float32)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, users: list[str], items: list[str], weights: npt.NDArray[np.float32]) -> None:
        n = len(users)
        fill = max(0, min(n, self.capacity - self.size))
        if fill:
            self.users[self.size:self.size + fill] = users[:fill]
            self.items[self.size:self.size + fill] = items[:fill]
            self.weights[self.size:self.size + fill] = weights[:fill]
            self.size += fill
        if n > fill:
            # Event k (0-based overall) replaces a random slot with prob capacity / (k + 1).
            k = self.seen + np.arange(fill, n)
            slot = (self.rng.random(len(k)) * (k + 1)).astype(np.int64)
            keep = slot < self.capacity
            src = np.arange(fill, n)[keep]
            self.users[slot[keep]] = np.asarray(users, dtype=object)[src]
            self.items[slot[keep]] = np.asarray(items, dtype=object)[src]
            self.weights[slot[keep]] = weights[src]
        self.seen += n

    def clear(self) -> None:
        """Hold nothing, as a new buffer (the sampling stream goes on)."""
        self.users[: self.size] = None
        self.items[: self.size] = None
        self.weights[: self.size] = 0.0
        self.seen = self.size = 0

    def remove_users(self, user_ids: Collection[str]) -> int:
        """Drop every entry of these users (forget: nothing of theirs is replayed again).

        One pass over the buffer for all of them. The entries left move to the
        front and new events fill the room first; the reservoir is then no
        longer exactly uniform over the past, which only matters until it has
        turned over.
        """
        keep = np.flatnonzero(np.fromiter((u not in user_ids for u in self.users[: self.size]),
                                          dtype=bool, count=self.size))
        removed = self.size - len(keep)
        if removed:
            for column in (self.users, self.items, self.weights):
                column[: len(keep)] = column[keep]
            self.users[len(keep): self.size] = None
            self.items[len(keep): self.size] = None
            self.weights[len(keep): self.size] = 0.0
            self.size = len(keep)
        return removed

    def count_for(self, expected: float) -> int:
        """How many to replay for `expected` (ratio x fresh events): its whole part, and
        one more with the chance of its fraction. Rounded per step, a ratio of 0.5 over
        one-event steps (slow input) replayed nothing, and 0.3 over five-event steps 0.4.
        A whole `expected` (the default ratio 1) draws nothing.

        >>> ReplayBuffer(10, seed=0).count_for(3.0)
        3
        """
        whole = math.floor(expected)
        fraction = expected - whole
        return whole + int(fraction > 0 and self.rng.random() < fraction)

    def sample(self, n: int) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.object_],
                                      npt.NDArray[np.float32]]:
        """`n` entries drawn uniformly with replacement: users, items, weights (n,)."""
        size = len(self)
        if size == 0 or n <= 0:
            empty = np.empty(0, dtype=object)
            return empty, empty.copy(), np.zeros(0, dtype=np.float32)
        idx = self.rng.integers(0, size, n)
        return self.users[idx], self.items[idx], self.weights[idx]
