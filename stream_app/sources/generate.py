"""A synthetic click/purchase stream with planted structure, deterministic by seed.

The world: items have power-law popularity (Zipf exponent `zipf`) and belong
to one of `n_clusters` taste clusters; every user has a home cluster. An event
picks a user (activity is power-law too), then with probability `taste` an
item of the user's cluster (by popularity within it), else an item by global
popularity. A learner that finds the clusters therefore beats the popularity
ranking by a margin set by `taste`. With `drift=True`, in the second half of
the stream every user's taste moves to the next cluster and item popularity
is redrawn (new hits), so stale models visibly decay.

Event time advances by exponential gaps at `events_per_second` (event time,
not wall-clock). Event ids name the seed and the stream's shape (`generate`).
A share `malformed_share` of records is corrupted on purpose
(`RawRecord.event` None, `expected_reason` set) to exercise the DLQ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from stream_app.events import Event, EventKind
from stream_app.sources.corrupt import CORRUPTIONS, corrupt
from stream_app.sources.records import RawRecord, to_record

_CHUNK = 4096
DEFAULT_START_TS = 1_700_000_000_000


@dataclass(frozen=True, slots=True)
class World:
    """The planted structure; item `i` is "i{i}", user `u` is "u{u}".

    item_cluster: (n_items,), user_cluster: (n_users,), item_weight: (n_items,)
    global popularity (sums to 1), user_weight: (n_users,) activity (sums to 1).
    """

    item_cluster: npt.NDArray[np.int64]
    user_cluster: npt.NDArray[np.int64]
    item_weight: npt.NDArray[np.float64]
    user_weight: npt.NDArray[np.float64]
    n_clusters: int


def make_world(
    n_users: int, n_items: int, rng: np.random.Generator, *, n_clusters: int, zipf: float
) -> World:
    """Draw clusters and power-law popularity / activity."""
    if min(n_users, n_items, n_clusters) < 1:
        raise ValueError("n_users, n_items and n_clusters must be >= 1")
    return World(
        item_cluster=rng.integers(n_clusters, size=n_items),
        user_cluster=rng.integers(n_clusters, size=n_users),
        item_weight=_power_law(n_items, zipf, rng),
        user_weight=_power_law(n_users, 0.8, rng),
        n_clusters=n_clusters,
    )


def _power_law(n: int, exponent: float, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    shuffled: npt.NDArray[np.float64] = weights[rng.permutation(n)] / weights.sum()
    return shuffled


def generate(
    n_events: int,
    n_users: int,
    n_items: int,
    seed: int,
    *,
    malformed_share: float = 0.0,
    drift: bool = False,
    start_ts: int = DEFAULT_START_TS,
    events_per_second: float = 100.0,
    n_clusters: int = 8,
    taste: float = 0.8,
    zipf: float = 1.1,
    purchase_share: float = 0.1,
) -> Iterator[RawRecord]:
    """`n_events` records; the same arguments always give the same bytes.

    Event ids are `g{seed}-{stream}-{n}`: `stream` names everything that shapes the
    events but the count (without `drift`, a longer run starts with the shorter one's
    events, so replaying both sends copies, not new events). Two runs that differ in
    anything else no longer share ids: the trainer dead-lettered the second one's
    events as `event_id_reused`.

    >>> recs = list(generate(5, n_users=3, n_items=10, seed=1))
    >>> [r.event.event_id for r in recs if r.event][:2]
    ['g1-6ad2e2-0', 'g1-6ad2e2-1']
    """
    if not 0.0 <= malformed_share <= 1.0 or not 0.0 <= taste <= 1.0:
        raise ValueError("malformed_share and taste must be within [0, 1]")
    if events_per_second <= 0:
        raise ValueError(f"events_per_second must be > 0, got {events_per_second}")
    shape = (n_users, n_items, drift and n_events, start_ts, events_per_second, n_clusters,
             taste, zipf, purchase_share)
    prefix = f"g{seed}-{hashlib.blake2b(repr(shape).encode(), digest_size=3).hexdigest()}"
    rng = np.random.default_rng(seed)
    world = make_world(n_users, n_items, rng, n_clusters=n_clusters, zipf=zipf)
    late = _drifted(world, rng) if drift else world
    clock = float(start_ts)
    for first in range(0, n_events, _CHUNK):
        size = min(_CHUNK, n_events - first)
        gaps = rng.exponential(1000.0 / events_per_second, size=size)
        times = clock + np.cumsum(gaps)
        clock = float(times[-1])
        halfway = drift and first + size > n_events // 2
        switch = n_events // 2 if halfway else n_events
        chunk = _chunk(world, late, rng, (first, size, switch), taste)
        kinds, amounts, breaks = rng.random((3, size)).tolist()
        for j in range(size):
            shares = (kinds[j], amounts[j])
            event = _event(f"{prefix}-{first + j}", chunk, j, int(times[j]), shares,
                           purchase_share)
            if breaks[j] < malformed_share:
                yield corrupt(event, CORRUPTIONS[int(amounts[j] * 1e6) % len(CORRUPTIONS)])
            else:
                yield to_record(event)


def _drifted(world: World, rng: np.random.Generator) -> World:
    """Second-half world: tastes move one cluster on, popularity is redrawn."""
    return World(
        item_cluster=world.item_cluster,
        user_cluster=(world.user_cluster + 1) % world.n_clusters,
        item_weight=world.item_weight[rng.permutation(len(world.item_weight))],
        user_weight=world.user_weight,
        n_clusters=world.n_clusters,
    )


def _chunk(
    early: World,
    late: World,
    rng: np.random.Generator,
    span: tuple[int, int, int],
    taste: float,
) -> dict[str, Any]:
    """Users and items of one chunk; span = (first index, size, switch): events at
    index >= switch use the `late` world."""
    first, size, switch = span
    users = rng.choice(len(early.user_weight), size=size, p=early.user_weight)
    draws = rng.random(size)
    use_taste = rng.random(size)
    items = np.empty(size, dtype=np.int64)
    index = first + np.arange(size)
    for world, part in ((early, index < switch), (late, index >= switch)):
        if part.any():
            items[part] = _items(world, users[part], draws[part], use_taste[part], taste)
    return {"users": users, "items": items}


def _items(
    world: World,
    users: npt.NDArray[np.int64],
    draws: npt.NDArray[np.float64],
    use_taste: npt.NDArray[np.float64],
    taste: float,
) -> npt.NDArray[np.int64]:
    """Inverse-CDF sampling: global popularity, or popularity within the user's cluster."""
    items = np.searchsorted(np.cumsum(world.item_weight), draws * 0.999999999)
    clusters = world.user_cluster[users]
    taste_mask = use_taste < taste
    for cluster in np.unique(clusters[taste_mask]):
        members = np.flatnonzero(world.item_cluster == cluster)
        if members.size == 0:
            continue
        cdf = np.cumsum(world.item_weight[members])
        pick = taste_mask & (clusters == cluster)
        items[pick] = members[np.searchsorted(cdf / cdf[-1], draws[pick] * 0.999999999)]
    return items.astype(np.int64)


def _event(
    event_id: str,
    chunk: dict[str, Any],
    j: int,
    ts: int,
    shares: tuple[float, float],
    purchase_share: float,
) -> Event:
    user, item = f"u{chunk['users'][j]}", f"i{chunk['items'][j]}"  # numpy ints format as ints
    if shares[0] < purchase_share:
        quantity = 1 + int(shares[1] * 3)
        price = round(1.0 + 99.0 * shares[1], 2)
        return Event(
            event_id=event_id, user_id=user, item_id=item, ts=ts,
            kind=EventKind.PURCHASE, quantity=quantity, price=price,
        )  # fmt: skip
    return Event(event_id=event_id, user_id=user, item_id=item, ts=ts, kind=EventKind.CLICK)
