"""Deterministic synthetic event streams for the core tests."""

from __future__ import annotations

import numpy as np

from stream_app.core import LearnerConfig
from stream_app.events import Event, EventKind

T0 = 1_700_000_000_000


def small_config(**overrides: object) -> LearnerConfig:
    """A fast config for tests: small dim, few sampled negatives."""
    base: dict[str, object] = {"dim": 8, "num_sampled_negatives": 16, "recent_items": 5}
    base.update(overrides)
    return LearnerConfig(**base)  # type: ignore[arg-type]


def random_events(n: int, *, users: int = 20, items: int = 30, seed: int = 0,
                  start: int = 0, t0: int = T0, step_ms: int = 1_000) -> list[Event]:
    rng = np.random.default_rng(seed)
    return [Event(event_id=f"e{start + k}", user_id=f"u{rng.integers(users)}",
                  item_id=f"i{rng.integers(items)}", ts=t0 + (start + k) * step_ms,
                  kind=EventKind.PURCHASE if rng.random() < 0.3 else EventKind.CLICK)
            for k in range(n)]


def planted_events(n: int, *, groups: int = 4, users_per_group: int = 10,
                   items_per_group: int = 10, seed: int = 0, start: int = 0) -> list[Event]:
    """Users of group g only touch items of group g; all items equally popular."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        g = int(rng.integers(groups))
        u = g * users_per_group + int(rng.integers(users_per_group))
        i = g * items_per_group + int(rng.integers(items_per_group))
        out.append(Event(event_id=f"p{start + k}", user_id=f"u{u}", item_id=f"i{i}",
                         ts=T0 + (start + k) * 1_000, kind=EventKind.CLICK))
    return out


def ev(eid: str, user: str, item: str, ts: int, kind: EventKind = EventKind.CLICK) -> Event:
    return Event(event_id=eid, user_id=user, item_id=item, ts=ts, kind=kind)
