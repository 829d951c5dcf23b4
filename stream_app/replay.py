"""`stream-app replay` and `stream-app generate`: files or a synthetic stream into Kafka.

Each event goes to `clicks` or `purchases` by its kind, keyed by user id so a
user's events stay ordered in one partition. Event time is kept from the
source, so the trainer's event-time logic sees the original timeline however
fast the replay runs.
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from stream_app.config import ConfigError, KafkaConfig, TopicNames
from stream_app.events import EventKind
from stream_app.kafka.admin import require_topics
from stream_app.kafka.produce import (
    DeliveryError,
    EventProducer,
    Outgoing,
    TimedOut,
    check_event_settings,
)
from stream_app.progress import Progress
from stream_app.sources import RawRecord, SourceError, to_record
from stream_app.sources.csv import read_csv
from stream_app.sources.generate import generate
from stream_app.sources.jsonl import read_jsonl
from stream_app.sources.movielens import (
    movies_beside,
    ratings_in,
    read_movies,
    read_ratings,
    release_times,
)

log = logging.getLogger(__name__)

Format = Literal["movielens", "jsonl", "csv"]

GENERATE_IDS_MAX = 100_000_000
"""Most users or items `generate` takes: it draws per-id weights up front (8 bytes each)."""


def infer_format(path: Path) -> Format:
    """The format a file's name says: `.jsonl`/`.ndjson`/`.json` (one event a line),
    `.csv`, and MovieLens's `.dat`/`.data` (`ratings.dat`, `u.data`; also 100K's splits,
    `u1.base`, `ua.test`), each also gzipped. Any other name is a ConfigError: read as
    MovieLens, an `events.txt` of JSON lines or an `.xz` file failed with "expected 4
    fields", which named neither cause.

    >>> infer_format(Path("events.jsonl.gz")), infer_format(Path("EVENTS.JSONL.GZ"))
    ('jsonl', 'jsonl')
    >>> [infer_format(Path(name)) for name in ("ratings.dat", "u.data", "u1.base")]
    ['movielens', 'movielens', 'movielens']
    """
    suffixes = [s for s in path.suffixes if s.lower() != ".gz"]
    last = suffixes[-1].lower() if suffixes else ""
    if last in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if last == ".csv":
        return "csv"
    if last in (".dat", ".data", ".base", ".test"):  # ML-100K's splits: u1.base, ua.test
        return "movielens"
    raise ConfigError(f"cannot tell the format of {path} from its name: pass --format "
                      "movielens, jsonl or csv (names it knows: .jsonl .ndjson .json .csv "
                      ".dat .data .base .test; compressed: .gz only)")


def file_records(path: Path, fmt: Format | None = None, *,
                 kind: EventKind | None = None, limit: int | None = None) -> Iterator[RawRecord]:
    """The first `limit` records of an input file; MovieLens in event-time order.

    `fmt` None: from the file's name (`infer_format`). `kind`: the kind of
    JSONL lines that carry no `"kind"` (a file of plain event values).
    """
    if not path.exists():
        raise ConfigError(f"replay input {path} does not exist")
    if path.is_dir() and fmt in (None, "movielens"):  # a MovieLens folder, as demo --data
        path = ratings_in(path) or path
    if not path.is_file():
        raise ConfigError(f"replay input {path} is not a file (nor a MovieLens folder with "
                          "ratings.dat(.gz) or u.data)")
    fmt = fmt or infer_format(path)
    if kind is not None and fmt != "jsonl":
        raise ConfigError(f"--kind applies to JSON Lines input only ({path} is read as {fmt}, "
                          "whose rows say their kind)")
    if fmt == "movielens":
        # A movies file beside the ratings gives each event its film's release time.
        movies = movies_beside(path)
        released = release_times(read_movies(movies)) if movies is not None else None
        events = read_ratings(path, sort_by_time=True, released=released, limit=limit)
    elif fmt == "jsonl":
        events = read_jsonl(path, kind=kind)
    else:
        events = read_csv(path)
    return _at_least_one(path, (to_record(e) for e in itertools.islice(events, limit)))


def _at_least_one(path: Path, records: Iterator[RawRecord]) -> Iterator[RawRecord]:
    """`records`, or a `SourceError` when there is none: a file of a CSV header, blank
    lines or a byte order mark alone replayed "0 events", exit 0, like a success, where
    an empty file was refused (CLI review)."""
    empty = True
    for rec in records:
        empty = False
        yield rec
    if empty:
        raise SourceError(path, 1, "no events in the file (a header, blank lines or a byte "
                          "order mark only): there is nothing to replay")


def outgoing(records: Iterable[RawRecord], topics: TopicNames) -> Iterator[Outgoing]:
    for rec in records:
        topic = topics.purchases if rec.kind is EventKind.PURCHASE else topics.clicks
        yield Outgoing(topic, rec.key, rec.value)


def produce_records(kafka: KafkaConfig, records: Iterable[RawRecord], *, total: int | None,
                    rate: float, progress: bool, label: str) -> int:
    """Produce and wait for every acknowledgement; returns the number acknowledged.

    Stopped early (a bad input line, Ctrl-C, SIGTERM), what was queued gets
    5 s to be delivered (`EventProducer.abandon`), and the user is told how
    many records the broker took, so they know where a re-run would pick up.
    """
    check_event_settings(kafka)
    require_topics(kafka, [kafka.topics.clicks, kafka.topics.purchases])
    bar = Progress(label, total=total, stream=sys.stderr if progress else None)
    producer = EventProducer(kafka, client_id=f"stream-app-{label}")
    interrupted = False
    try:
        with producer:
            for _ in producer.send_all(outgoing(records, kafka.topics), rate=rate):
                bar.advance()
    except SourceError as exc:
        exc.sent, exc.dropped, exc.refused = producer.acked, producer.dropped, producer.refused
        exc.expired = producer.expired
        exc.first_refusal = next(iter(producer.first_errors), "")
        raise
    except DeliveryError as exc:  # say where a re-run would pick up, as for a bad line
        # close()'s error (no cause) already names what was refused and dropped; a failed
        # produce() (its cause a KafkaException) and a stop at a timeout name neither.
        finished = exc.__cause__ is None and not isinstance(exc, TimedOut)
        lost = "" if finished else not_delivered(
            producer.dropped, producer.refused, producer.first_errors, producer.expired)
        raise DeliveryError(f"{label} {'finished' if finished else 'stopped'}: {exc}; "
                            f"{producer.acked} records acknowledged by the broker{lost}") from exc
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        bar.close()
        if interrupted:
            lost = not_delivered(producer.dropped, producer.refused, producer.first_errors,
                                 producer.expired)
            print(f"{label} interrupted: {producer.acked} records acknowledged by the "
                  f"broker{lost}", file=sys.stderr)
    return producer.acked


def not_delivered(dropped: int, refused: int, first_errors: list[str], expired: int = 0) -> str:
    """What a stopped replay or generate did not get to the broker, for its last line:
    refused records are not in the acknowledged count, and a re-run from after the
    stopping line would lose them without this.

    A dropped record may have been sent and written with its answer lost: a re-run
    that sends the dropped ones again may write some twice (the trainer applies an
    event id once within its duplicate window).

    >>> not_delivered(3, 2, ["Broker: Message size too large"])  # doctest: +ELLIPSIS
    ', 3 dropped unacknowledged (some may have been written), 2 refused by the broker (...)'
    >>> not_delivered(0, 0, [], expired=4)
    ', 4 timed out with no broker taking them'
    """
    out = f", {dropped} dropped unacknowledged (some may have been written)" if dropped else ""
    if expired:
        out += f", {expired} timed out with no broker taking them"
    if refused:
        first = f" ({'; '.join(first_errors)})" if first_errors else ""
        out += f", {refused} refused by the broker{first}"
    return out


def check_rate(rate: float) -> None:
    if not (rate == 0 or 0.001 <= rate < math.inf):  # NaN fails too
        raise ConfigError(f"--rate must be 0 (as fast as possible) or a finite rate of at "
                          f"least 0.001 events/s, got {rate}")


def replay_file(kafka: KafkaConfig, path: Path, *, fmt: Format | None, limit: int | None,
                rate: float, progress: bool, kind: EventKind | None = None) -> int:
    if limit is not None and not 0 < limit <= sys.maxsize:
        raise ConfigError(f"--limit must be 1..{sys.maxsize}, got {limit}")
    check_rate(rate)
    records = file_records(path, fmt, kind=kind, limit=limit)
    # No total: --limit is an upper bound, and a shorter file ended the bar at 0%.
    return produce_records(kafka, records, total=None, rate=rate, progress=progress,
                           label="replay")


def replay_generated(kafka: KafkaConfig, *, n_events: int, n_users: int, n_items: int,
                     seed: int, malformed_share: float, drift: bool, rate: float,
                     progress: bool) -> int:
    if min(n_events, n_users, n_items) <= 0:
        raise ConfigError("--events, --users and --items must all be > 0")
    if max(n_users, n_items) > GENERATE_IDS_MAX:  # arrays of that length are made first
        raise ConfigError(f"--users and --items must be at most {GENERATE_IDS_MAX:,}, "
                          f"got {n_users:,} and {n_items:,}")
    if not 0 <= seed < 2**63:  # it is written into every event id (at most 256 characters)
        raise ConfigError(f"--seed must be in 0..{2**63 - 1}, got {seed}")
    if not 0.0 <= malformed_share <= 1.0:  # NaN fails too
        raise ConfigError(f"--malformed-share must be within [0, 1], got {malformed_share}")
    check_rate(rate)
    records = generate(n_events, n_users, n_items, seed, malformed_share=malformed_share,
                       drift=drift)
    return produce_records(kafka, records, total=n_events, rate=rate, progress=progress,
                           label="generate")
