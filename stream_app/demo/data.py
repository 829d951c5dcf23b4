"""The demo's input: a bounded, time-ordered slice of MovieLens, or a synthetic stream.

Held in memory (300k events is ~100 MB of Python objects at most), because the
demo needs more than the replay does: titles to print, and each user's recent
movies to show beside the predictions and to pick users worth asking about.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from stream_app.config import ConfigError
from stream_app.replay import infer_format
from stream_app.sources import RawRecord, to_record
from stream_app.sources.generate import generate
from stream_app.sources.movielens import (
    movies_beside,
    ratings_in,
    read_movies,
    read_ratings,
    release_times,
)

RECENT = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoInput:
    """What to replay, and what the printout needs to make it readable.

    `recent[user]` holds the user's last `RECENT` distinct item ids, oldest first;
    `tail_counts` counts events per user in the last tenth of the slice, so the
    demo asks about users who were active lately (their history is fresh).
    """

    records: list[RawRecord]
    titles: dict[str, str]
    description: str
    note: str | None = None
    recent: dict[str, deque[str]] = field(default_factory=dict)
    tail_counts: Counter[str] = field(default_factory=Counter)

    def active_users(self, n: int) -> list[str]:
        """The `n` users with most events lately (ties by id, so runs are reproducible)."""
        ranked = sorted(self.tail_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return [user for user, _ in ranked[:n]]


def load_input(data: Path | None, limit: int, *, seed: int = 0) -> DemoInput:
    """MovieLens from `data` (a folder, or its ratings file), else the synthetic generator.

    Only a `data` that is not there falls back (`make demo` on a machine without the
    shared data); a folder without ratings is an error, not a quiet switch of input.
    """
    ratings = None
    if data is not None and data.is_file():
        try:
            fmt = infer_format(data)
        except ConfigError:
            fmt = None
        if fmt != "movielens":  # read as ratings, it failed at line 1 with "expected 4
            # fields", naming neither the cause nor the fix
            raise ConfigError(f"demo --data {data}: the demo replays MovieLens ratings "
                              "(ratings.dat, ratings.dat.gz or u.data); to send events of "
                              "your own, start a trainer and use `stream-app replay`")
        ratings = data
    elif data is not None and data.is_dir():
        ratings = ratings_in(data)
        if ratings is None:
            raise ConfigError(f"demo --data {data} holds no MovieLens ratings (ratings.dat, "
                              "ratings.dat.gz or u.data); pass that folder or the file")
    if ratings is not None:
        movies = movies_beside(ratings)
        titles = read_movies(movies) if movies is not None else {}
        records = [to_record(e) for e in read_ratings(
            ratings, sort_by_time=True, released=release_times(titles), limit=limit)]
        return _with_history(DemoInput(
            records=records, titles=titles,
            description=f"MovieLens ({ratings}), first {len(records):,} ratings by time"))
    where = f"no MovieLens ratings in {data}" if data is not None else "no --data given"
    n_users, n_items = max(50, limit // 60), max(30, min(3000, limit // 100))
    records = list(generate(limit, n_users=n_users, n_items=n_items, seed=seed))
    return _with_history(DemoInput(
        records=records, titles={},
        description=f"synthetic stream: {limit:,} events, {n_users:,} users, {n_items:,} items",
        note=f"note: {where}; using the synthetic generator instead "
             "(pass --data DIR with ratings.dat.gz + movies.dat.gz for MovieLens)"))


def _with_history(inp: DemoInput) -> DemoInput:
    tail_from = len(inp.records) - max(1, len(inp.records) // 10)
    for i, rec in enumerate(inp.records):
        if rec.event is None:
            continue
        user, item = rec.event.user_id, rec.event.item_id
        recent = inp.recent.setdefault(user, deque(maxlen=RECENT))
        if item in recent:  # a repeat moves to the front instead of showing twice
            recent.remove(item)
        recent.append(item)
        if i >= tail_from:
            inp.tail_counts[user] += 1
    return inp
