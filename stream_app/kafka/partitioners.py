"""Where Kafka's two common partitioners put a key, so a record off both can be noticed.

A user's clicks, purchases and forget requests must land on one partition number
(README, "Partitioner"): librdkafka's default (`consistent_random`: CRC-32) or
Java's (`murmur2`). A producer with another partitioner splits a user over
partitions: its events can overtake each other and the user's forget request,
and with two trainers the user is learned by both. Nothing else shows it.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def consistent_random(key: bytes, partitions: int) -> int:
    """librdkafka's default partitioner for a non-empty key: CRC-32 modulo the count.

    >>> consistent_random(b"user:42", 3), consistent_random(b"item:7", 3)
    (1, 1)
    """
    return zlib.crc32(key) % partitions


def murmur2(key: bytes) -> int:
    """Kafka's murmur2 (Java's `Utils.murmur2`, librdkafka's `murmur2_random`), unsigned.

    Kafka's own test vectors (UtilsTest), as Java's signed ints:

    >>> [murmur2(k) - (1 << 32) for k in (b"21", b"foobar", b"a-little-bit-longer-string")]
    [-973932308, -790332482, -1486304829]
    >>> murmur2(b"abc")
    479470107
    """
    n = len(key)
    h = (0x9747B28C ^ n) & _MASK
    end = n - n % 4
    for i in range(0, end, 4):
        k = int.from_bytes(key[i:i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = n % 4
    if rest:
        if rest == 3:
            h ^= key[end + 2] << 16
        if rest >= 2:
            h ^= key[end + 1] << 8
        h ^= key[end]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


@lru_cache(maxsize=65_536)  # keys are user ids, which repeat: the hash is pure Python
def murmur2_random(key: bytes, partitions: int) -> int:
    """Java's default partitioner (and librdkafka's `murmur2_random`) for a non-empty key.

    >>> murmur2_random(b"21", 1 << 31) == (-973932308 & 0x7FFFFFFF)
    True
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def routed_by_a_known_partitioner(key: bytes, partition: int, partitions: int) -> bool:
    """Whether `partition` is where either common partitioner puts `key`.

    A record off both is misrouted. One on either passes, so a record of some
    other partitioner passes by chance 2 / n at most: over a user's records, not
    for long.

    >>> [p for p in range(3) if routed_by_a_known_partitioner(b"u1", p, 3)]  # CRC-32: 2
    [1, 2]
    """
    return (consistent_random(key, partitions) == partition
            or murmur2_random(key, partitions) == partition)
