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

import zlib
from collections import Counter
from collections.abc import Iterable, Mapping


class OwnWrites:
    """The changelog's end offsets if only this trainer wrote to it since its last
    restore; unknown (None) whenever that cannot be shown."""

    def __init__(self, client: Mapping[str, str]) -> None:
        self._partitions_known = default_partitioner(client)
        self._ends: dict[int, int] | None = None

    def restored(self, ends: dict[int, int]) -> None:
        self._ends = dict(ends)

    def forget(self) -> None:
        """The learner is no longer what a restore would give (a restore starting,
        partial scope): the next assignment restores."""
        self._ends = None

    def committed(self, keys: Iterable[bytes], spot: tuple[bytes, int] | None) -> None:
        """One of our transactions committed `keys` to the changelog; `spot`: where
        librdkafka put one of them."""
        self._ends = ends_after_commit(self._ends, keys, spot) if self._partitions_known \
            else None

    def keeps_learner(self, ends: dict[int, int], stable: dict[int, int]) -> bool:
        return keeps_learner(self._ends, ends, stable)

    def may_become_ours(self, ends: dict[int, int]) -> bool:
        """Whether `ends` (high watermarks) fall short of ours only by markers still to be
        written: waiting may then prove them (`keeps_learner`); past ours, never."""
        return may_become_ours(self._ends, ends)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition librdkafka's default partitioner (`consistent_random`) gives a
    non-empty key: CRC-32 of the key modulo the partition count.

    >>> partition_for(b"user:42", 3), partition_for(b"item:7", 3), partition_for(b"user:1", 3)
    (1, 1, 0)
    """
    return zlib.crc32(key) % partitions


def default_partitioner(client: Mapping[str, str]) -> bool:
    """Whether librdkafka settings leave the producer's partitioner at its default
    (`partition_for`): `partitioner`, or `topic.partitioner` (librdkafka hands
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

    A key's partition is computed (`partition_for`); `spot`, where librdkafka
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
    written = Counter(partition_for(k, len(ends)) for k in keys)
    if not written:
        return out
    if spot is None or partition_for(spot[0], len(ends)) != spot[1]:
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


def may_become_ours(expected: dict[int, int] | None, ends: dict[int, int]) -> bool:
    """Whether no partition of `ends` is past `expected`: only our commit markers (written
    after the commit returns) may be missing, and no foreign record is in.

    >>> may_become_ours({0: 12, 1: 5}, {0: 11, 1: 5}), may_become_ours({0: 12}, {0: 13})
    (True, False)
    >>> may_become_ours(None, {0: 12}), may_become_ours({0: 12}, {0: 12, 1: 0})
    (False, False)
    """
    return expected is not None and ends.keys() == expected.keys() and all(
        ends[p] <= e for p, e in expected.items())
