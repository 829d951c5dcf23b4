"""What this trainer wrote to the changelog since its last restore, to tell whether a
rebalance needs another restore.

A restore on every rebalance costs minutes at a million rows. It is needed
only if the changelog holds something the learner lacks: another writer's
rows, or our own rows of a time the learner published only part of what it
changed (partial scope). So the trainer keeps the end offsets the changelog
would have if only it had written since its restore, and compares them with
the real ones on each assignment (`OwnWrites.keeps_learner`). Counting our
writes per partition asks librdkafka for one delivery report per
transaction, not one per record (those cost 5-7% of the ingest rate).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from stream_app.kafka.partitioners import consistent_random
from stream_app.trainer.batch import tombstoned_users

log = logging.getLogger(__name__)

OWN_TOMBSTONES_MAX = 100_000
"""Users `OwnTombstones` lists at most (a few MiB of ids); past them it gives up until
the next assignment."""
MARKERS_WAIT_S = 5.0
"""How long to wait for transaction markers to reach the changelog: they are written
after a commit or abort returns, usually within milliseconds."""

Ends = dict[int, int]


class OwnWrites:
    """The changelog's end offsets if only this trainer wrote to it since its last
    restore; unknown (None) whenever that cannot be shown."""

    def __init__(self, client: Mapping[str, str]) -> None:
        self._partitions_known = default_partitioner(client)
        self._ends: Ends | None = None
        self._marked: set[int] = set()  # partitions our last commit put a marker on
        self.foreign = False  # proven_ends saw offsets our commits cannot explain

    def restored(self, ends: Ends) -> None:
        self._ends, self._marked, self.foreign = dict(ends), set(), False

    def forget(self) -> None:
        """The learner is no longer what a restore would give (a restore starting,
        partial scope): the next assignment restores."""
        self._ends, self.foreign = None, False

    def committed(self, keys: Iterable[bytes], spot: tuple[bytes, int] | None) -> None:
        """One of our transactions committed `keys` to the changelog; `spot`: where
        librdkafka put one of them."""
        before = self._ends
        self._ends = ends_after_commit(before, keys, spot) if self._partitions_known else None
        if before is not None and self._ends is not None:
            self._marked = {p for p, end in self._ends.items() if end != before.get(p)}

    def keeps_learner(self, ends: Ends, stable: Ends) -> bool:
        return keeps_learner(self._ends, ends, stable)

    def proven_ends(self, read: Callable[[], tuple[Ends, Ends]], *,
                    pause: Callable[[float], bool], wait_s: float = MARKERS_WAIT_S
                    ) -> Ends | None:
        """The changelog's end offsets if it holds just what the learner holds, else None
        (logged). `read` gives (high watermarks, stable offsets); while only our last
        commit's markers are missing it is asked again after `pause(0.1)` (False: give
        up), for up to `wait_s`."""
        deadline = time.monotonic() + wait_s
        while True:
            ends, stable = read()
            if self.keeps_learner(ends, stable):
                return ends
            if not may_become_ours(self._ends, ends, self._marked):
                log.warning("the changelog (end offsets %s) may hold rows this trainer did not "
                            "write since its last restore", ends)
                self.foreign = True  # until the next restore: no commit of ours explains it
                return None
            if time.monotonic() >= deadline or not pause(0.1):
                log.warning("the changelog's end offsets %s are not yet where this trainer's "
                            "commits lead (expected %s)", ends, self._ends)
                return None


def default_partitioner(client: Mapping[str, str]) -> bool:
    """Whether librdkafka settings leave the producer's partitioner at its default
    (`consistent_random`): `partitioner`, or `topic.partitioner` (librdkafka hands
    unknown global keys to the topic config without the prefix).

    >>> default_partitioner({}), default_partitioner({"partitioner": "consistent_random"})
    (True, True)
    >>> default_partitioner({"topic.partitioner": "murmur2_random"})
    False
    """
    return all(str(v).strip() == "consistent_random" for k, v in client.items()
               if k.strip().removeprefix("topic.") == "partitioner")


def ends_after_commit(ends: dict[int, int] | None, keys: Iterable[bytes],
                      spot: tuple[bytes, int] | None) -> dict[int, int] | None:
    """The changelog's end offsets after one of our transactions committed `keys`
    there, if nobody else wrote to it: each partition written grows by its
    records and the commit marker.

    A key's partition is computed (`consistent_random`); `spot`, where librdkafka
    really put one of them, checks that. None (unknown, so the next assignment
    restores) when `ends` is, or when a record was written but the check is
    missing or fails (another partitioner, partitions added).

    >>> ends_after_commit({0: 10, 1: 4, 2: 7}, [b"user:42", b"item:7"], (b"user:42", 1))
    {0: 10, 1: 7, 2: 7}
    >>> ends_after_commit({0: 10, 1: 4, 2: 7}, [b"user:42"], (b"user:42", 0)) is None
    True
    """
    if ends is None:
        return None
    out = dict(ends)
    written = Counter(consistent_random(k, len(ends)) for k in keys)
    if not written:
        return out
    if spot is None or consistent_random(spot[0], len(ends)) != spot[1]:
        return None
    for p, n in written.items():
        out[p] = out.get(p, 0) + n + 1
    return out


def keeps_learner(expected: dict[int, int] | None, ends: dict[int, int],
                  stable: dict[int, int]) -> bool:
    """Whether the changelog holds only what the learner already has, so a restore
    would give back the same model.

    `expected`: our restore's end offsets grown by our commits (`ends_after_commit`);
    `ends`: the true ends (high watermarks); `stable`: the last stable offsets. Equal
    ends alone do not prove it: our commit markers are written after the commit
    returns, and a foreign record landing meanwhile would stand in for one. With
    no transaction open or unmarked (stable == ends) every record is final, so
    any foreign one makes the count differ.

    >>> keeps_learner({0: 12}, {0: 12}, {0: 12})
    True
    >>> keeps_learner({0: 12}, {0: 12}, {0: 10})  # our marker pending, a foreign record in
    False
    >>> keeps_learner({0: 12}, {0: 13}, {0: 13}), keeps_learner(None, {0: 12}, {0: 12})
    (False, False)
    """
    return expected is not None and ends == expected and stable == ends


def may_become_ours(expected: Ends | None, ends: Ends, marked: set[int]) -> bool:
    """Whether `ends` (high watermarks) miss nothing of `expected` but the markers of our
    last commit, on the partitions it `marked`, so waiting may yet prove them; with any
    other difference (a foreign record, a truncated or re-created topic), never.

    >>> may_become_ours({0: 12, 1: 5}, {0: 11, 1: 5}, {0}), may_become_ours({0: 12}, {0: 13}, {0})
    (True, False)
    >>> may_become_ours({0: 12, 1: 5}, {0: 12, 1: 4}, {0}), may_become_ours(None, {0: 1}, set())
    (False, False)
    """
    return expected is not None and ends.keys() == expected.keys() and all(
        ends[p] == e or (p in marked and ends[p] == e - 1) for p, e in expected.items())


class OwnTombstones:
    """Users whose tombstone this trainer committed since its partitions were assigned,
    and who have had no row published since.

    An abort's restore reads those tombstones back. Taken for another trainer's
    erasures, they made `Learner.load_volatile_state` drop what the state kept at
    the last commit holds of the user, though all of it came after the tombstone:
    the admission count of a committed event (the event without effect) or an
    evicted user's event ids (a re-sent copy applied twice). Another trainer can
    write a user's rows only after a reassignment, so the list starts empty at
    each; past `limit` users it is dropped until the next (those restores drop
    the users' entries, as before it existed). That holds while each user's
    events sit on one partition: with producers of two partitioners, which
    `batch.misrouted` cannot tell from either, two trainers may own one user and
    an abort here may keep what another trainer's erasure dropped (as, without
    an abort, this trainer never reads that erasure: README, Operations).

    >>> own = OwnTombstones()
    >>> own.committed(["user:a", "user:b", "item:x"], published_users=[])
    >>> own.committed([], published_users=["a"]); sorted(own.users())
    ['b']
    """

    def __init__(self, limit: int = OWN_TOMBSTONES_MAX) -> None:
        self.limit = limit
        self._users: set[str] | None = set()

    def reassigned(self) -> None:
        self._users = set()

    def committed(self, tombstones: Iterable[str], *, published_users: Iterable[str]) -> None:
        """A transaction committed: rows go before tombstones in it (`output_records`)."""
        if self._users is None:
            return
        if self._users:  # most commits tombstone nobody: no walk over their rows
            self._users.difference_update(published_users)
        self._users.update(tombstoned_users(tombstones))
        if len(self._users) > self.limit:
            log.info("over %d users tombstoned since the assignment: an abort's restore "
                     "now drops their kept admission counts and event ids", self.limit)
            self._users = None

    def users(self) -> set[str]:
        return set() if self._users is None else self._users
