"""MovieLens ratings as a click/purchase stream.

Reads `ratings.dat(.gz)` (`UserID::MovieID::Rating::Timestamp`, ML-1M/10M) and
the tab-separated `u.data` (`user<TAB>item<TAB>rating<TAB>timestamp`, ML-100K);
the separator is detected per line. Mapping (documented, threshold a parameter):

- ``mode="split"`` (default): rating >= `purchase_threshold` -> purchase, else click.
- ``mode="both"``: every rating is a click, and a rating >= threshold is also a
  purchase (event id suffixed ``-p``), the replay SOURCE.md suggests.

Event time = timestamp * 1000 (ms); event_id = ``ml-{user}-{item}-{ts}``
(deterministic and unique: a user rates a movie once). The files are sorted by
user, not time: pass `sort_by_time=True` to replay them as a live stream.
With `released` (from `release_times(read_movies(...))`) each event carries its
film's release time, January 1 of the year in its title, as `item_released_at`.
"""

from __future__ import annotations

import calendar
import heapq
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Literal

from stream_app.codec.events import RELEASED_RANGE, TS_RANGE
from stream_app.codec.fastcheck import ID_MAX_LEN
from stream_app.events import Event, EventKind
from stream_app.sources._files import nonempty, numbered_lines
from stream_app.sources.records import SourceError

Rating = tuple[int, int, float, int]
"""(user, item, rating, timestamp seconds)."""
Mode = Literal["split", "both"]


def read_ratings(
    path: Path | str,
    *,
    purchase_threshold: int = 4,
    mode: Mode = "split",
    sort_by_time: bool = False,
    released: Mapping[str, int] | None = None,
    limit: int | None = None,
) -> Iterator[Event]:
    """Events from a ratings file; see the module docstring for the mapping.

    `limit`: at most that many events. Sorted by time, only the first `limit` ratings
    are held while the file is read, so a short replay of a large file (ML-10M's 10M
    ratings are ~1 GB as tuples) needs memory for the replay, not the file (a limit
    past the file's size holds all of it, ~1.3x what a plain sort holds).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "ratings.dat"
    >>> _ = p.write_text("1::1193::5::978300760\\n1::661::3::978302109\\n")
    >>> [(e.event_id, e.kind.value) for e in read_ratings(p)]
    [('ml-1-1193-978300760', 'purchase'), ('ml-1-661-978302109', 'click')]
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    ratings: Iterable[Rating] = read_raw_ratings(Path(path))
    if sort_by_time:
        # Sorted on (ts, user, item): ties replay in a deterministic order. A rating
        # gives at least one event, so the first `limit` ratings hold the first `limit`
        # events.
        ratings = sorted(ratings, key=_time_order) if limit is None \
            else heapq.nsmallest(limit, ratings, key=_time_order)
    released = released or {}
    remaining = limit
    for rating in ratings if remaining != 0 else ():
        events = rating_events(rating, purchase_threshold=purchase_threshold, mode=mode,
                               released_at=released.get(str(rating[1])))
        if remaining is not None:
            events = events[:remaining]
            remaining -= len(events)
        yield from events
        if remaining == 0:  # not one line further: it could be a bad one
            return


def _time_order(rating: Rating) -> tuple[int, int, int]:
    return rating[3], rating[0], rating[1]


def rating_events(
    rating: Rating, *, purchase_threshold: int = 4, mode: Mode = "split",
    released_at: int | None = None,
) -> list[Event]:
    """The one or two events of one rating."""
    user, item, stars, seconds = rating
    ts = seconds * 1000
    liked = stars >= purchase_threshold

    def event(event_id: str, kind: EventKind) -> Event:
        return Event(event_id=event_id, user_id=str(user), item_id=str(item), ts=ts, kind=kind,
                     item_released_at=released_at)

    base = _event_id(user, item, seconds, purchase=False)
    if mode == "split":
        return [event(base, EventKind.PURCHASE if liked else EventKind.CLICK)]
    click = event(base, EventKind.CLICK)
    return [click, event(_event_id(user, item, seconds, purchase=True), EventKind.PURCHASE)] \
        if liked else [click]


_ID = re.compile(r"[0-9]+")  # ASCII digits alone (the CSV reader's rule)
BOM_LATIN1 = "\u00ef\u00bb\u00bf"
"""A UTF-8 byte order mark (an editor's) as latin-1 reads it."""


def _event_id(user: int, item: int, seconds: int, *, purchase: bool) -> str:
    """`ml-{user}-{item}-{seconds}` (the file's timestamp, not the event's milliseconds),
    `-p` added for the purchase of mode "both"."""
    return f"ml-{user}-{item}-{seconds}" + ("-p" if purchase else "")


def read_raw_ratings(path: Path) -> Iterator[Rating]:
    """(user, item, rating, ts seconds) per non-empty line, `::` or tab separated."""
    for number, line in nonempty(path, numbered_lines(path, encoding="latin-1")):
        line = line.strip()
        if number == 1:
            if line.startswith(("\xff\xfe", "\xfe\xff")):  # UTF-16's BOM, as latin-1
                raise SourceError(path, 1, "the file is UTF-16 (Windows PowerShell's > "
                                  "writes it), not latin-1 or UTF-8: save it as UTF-8")
            line = line.removeprefix(BOM_LATIN1)
        if not line:
            continue
        parts = line.split("::") if "::" in line else line.split("\t")
        if len(parts) != 4:
            raise SourceError(path, number, f"expected 4 fields, got {len(parts)}: a ratings "
                              "line is UserID::MovieID::Rating::Timestamp (ML-1M and ML-10M "
                              "ratings.dat) or the same four separated by tabs (ML-100K "
                              "u.data)")
        if not all(_ID.fullmatch(parts[n]) for n in (0, 1, 3)):  # int() took "1_0", "+1"
            raise SourceError(path, number, f"bad field: UserID, MovieID and Timestamp are "
                              f"digits, got {parts[0]!r}, {parts[1]!r}, {parts[3]!r}")
        try:  # stars in halves from ML-10M on
            user, item, seconds = int(parts[0]), int(parts[1]), int(parts[3])
            stars = float(parts[2])
        except ValueError as exc:
            raise SourceError(path, number, f"bad field: {exc}") from exc
        if not 0 <= stars <= 10:  # NaN fails too
            raise SourceError(path, number, f"rating {parts[2]!r} out of range")
        if not TS_RANGE[0] <= seconds * 1000 < TS_RANGE[1]:
            raise SourceError(path, number, f"timestamp {seconds} is not seconds since 1970 "
                              "from 1973-03-03 to before the year 3000 (the events' range)")
        if len(_event_id(user, item, seconds, purchase=True)) > ID_MAX_LEN:
            raise SourceError(path, number, f"user or movie id too long: their event id "
                              f"would be over {ID_MAX_LEN} characters")
        yield user, item, stars, seconds


def read_movies(path: Path | str) -> dict[str, str]:
    """Item id -> title from `movies.dat(.gz)` (`MovieID::Title::Genres`, latin-1)."""
    path = Path(path)
    titles: dict[str, str] = {}
    for number, line in numbered_lines(path, encoding="latin-1"):
        line = line.rstrip("\r\n")
        if number == 1:
            line = line.removeprefix(BOM_LATIN1)
        if not line:
            continue
        # Split on the first and last "::" so a title containing "::" survives.
        movie_id, _, rest = line.partition("::")
        title, sep, _genres = rest.rpartition("::")
        if not movie_id or not sep:
            raise SourceError(path, number, f"expected MovieID::Title::Genres, got {line!r}")
        titles[movie_id] = title
    return titles


def ratings_in(folder: Path) -> Path | None:
    """The ratings file of a MovieLens folder (ML-1M/10M `ratings.dat(.gz)`, ML-100K `u.data`)."""
    return next((folder / name for name in ("ratings.dat.gz", "ratings.dat", "u.data")
                 if (folder / name).is_file()), None)


def movies_beside(ratings: Path) -> Path | None:
    """`movies.dat.gz` or `movies.dat` in the folder of a ratings file, if there."""
    return next((m for m in (ratings.with_name("movies.dat.gz"), ratings.with_name("movies.dat"))
                 if m.is_file()), None)


def release_times(titles: Mapping[str, str]) -> dict[str, int]:
    """Item id -> January 1 (UTC, ms) of the year in its title ("Heat (1995)"); no year, no entry.

    A year that events cannot carry (`item_released_at` is from year 1 to 2999) is no
    year either: attached, it would have sent every event of the film to the DLQ.

    >>> release_times({"1": "Toy Story (1995)", "2": "Untitled", "3": "Far Future (3001)",
    ...                "4": "Typo (0000)"})
    {'1': 788918400000}
    """
    out = {}
    for item, title in titles.items():
        match = re.search(r"\((\d{4})\)\s*$", title)
        if match and int(match.group(1)) >= 1:  # year 0 has no calendar date
            released = calendar.timegm((int(match.group(1)), 1, 1, 0, 0, 0)) * 1000
            if RELEASED_RANGE[0] <= released < RELEASED_RANGE[1]:
                out[item] = released
    return out
