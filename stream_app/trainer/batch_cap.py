"""How many records the trainer takes in its next poll, so a batch fits max.poll.interval.ms.

A batch's learning and publishing run between two polls. Past the
interval the group drops the member, its transaction aborts and the same
records are read again: a batch that always takes that long (a huge
`batch_max` on a slow CPU, a GPU that stalls, a model grown large) would be
retried for ever. So the trainer halves what it takes after a batch that
used over half the interval, whether or not it committed, and doubles back
towards `batch_max` after full batches that used under a quarter of it:
the band between keeps a batch that doubles under half the interval, so
the cap does not swing between an abort and a commit. The batch's
transaction (its rows produced, offsets sent, commit) is held to
`transaction.timeout.ms` the same way: past it the broker aborts the
transaction, and a batch whose rows always took that long to publish was
retried for ever (exactly-once review).
"""

from __future__ import annotations


def next_batch_cap(cap: int, *, configured: int, taken: int, seconds: float,
                   max_poll_interval_s: float, txn_seconds: float = 0.0,
                   txn_timeout_s: float = float("inf")) -> int:
    """The cap for the next poll, after a batch of `taken` records took `seconds`
    from its poll to its commit (or abort), `txn_seconds` of them in its transaction.

    >>> next_batch_cap(10_000, configured=10_000, taken=10_000, seconds=200.0,
    ...                max_poll_interval_s=300.0)
    5000
    >>> next_batch_cap(5_000, configured=10_000, taken=5_000, seconds=60.0,
    ...                max_poll_interval_s=300.0)
    10000
    >>> next_batch_cap(5_000, configured=10_000, taken=5_000, seconds=100.0,
    ...                max_poll_interval_s=300.0)
    5000
    >>> next_batch_cap(10_000, configured=10_000, taken=10_000, seconds=40.0,
    ...                max_poll_interval_s=300.0, txn_seconds=35.0, txn_timeout_s=60.0)
    5000
    """
    load = max(seconds / max_poll_interval_s, txn_seconds / txn_timeout_s)
    if load > 1 / 2:
        return max(1, min(cap, taken) // 2)
    if load < 1 / 4 and taken >= cap:
        return min(configured, cap * 2)
    return cap
