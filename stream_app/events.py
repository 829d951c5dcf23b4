"""Typed, frozen messages that flow between the Kafka edges and the pure core.

Only `stream_app.kafka` ever sees a `confluent_kafka.Message`; everything else
gets these plain values, which keep the Kafka coordinates of the record they
came from so a bad one can always be sent to the dead-letter topic with them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import numpy as np
import numpy.typing as npt


class EventKind(StrEnum):
    """Which input topic an event belongs on; purchases weigh more in training."""

    CLICK = "click"
    PURCHASE = "purchase"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One user-item interaction (`click.v1.json` / `purchase.v1.json`).

    Ids are always strings: integer ids on the wire are normalised on decode.
    `ts` is event time in ms since the epoch; all time logic in the core runs
    on it, so a fast replay of old data behaves like live traffic.

    >>> Event(event_id="e1", user_id="u1", item_id="i9", ts=1_700_000_000_000,
    ...       kind=EventKind.CLICK).kind
    <EventKind.CLICK: 'click'>
    """

    event_id: str
    user_id: str
    item_id: str
    ts: int
    kind: EventKind
    quantity: int | None = None
    price: float | None = None
    item_released_at: int | None = None
    context: dict[str, Any] | None = field(default=None, compare=False)


Headers = tuple[tuple[str, bytes | None], ...]
"""A Kafka record's headers in order; a value may be null (None), which Kafka tells from
empty."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Coordinates:
    """Where a record was read from: enough to find it again or dead-letter it."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


KeyValue = tuple[bytes | None, bytes | None]
"""A record's key and value alone, as Kafka carries them."""
Entity = Literal["user", "item"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbeddingRow:
    """The latest state of one user or item row (`embedding.v1.json`).

    It is both what the scorer serves and the trainer's changelog entry, so it
    carries everything needed to restore the row exactly:

    - `vector`: (dim,) float32, the *serving* vector. For users it already mixes
      in the items they just touched, so the scorer needs nothing else.
    - `bias`: additive score term. For items, ranking by `bias` alone is the
      time-decayed popularity ranking (the scorer's fallback); 0.0 for users.
      Score(user, item) = user.vector . item.vector + item.bias.
    - `recent_items`: user rows only, most recent first, bounded; the scorer
      uses it for `exclude_seen` and `explain`.
    - `state`: learner-private state for exact restore (id vector, optimizer
      accumulators, decayed counters...). Arrays are float32 numpy arrays,
      everything else JSON-able. Consumers other than the trainer ignore it.
    """

    entity: Entity
    id: str
    vector: npt.NDArray[np.float32] = field(compare=False)
    bias: float
    model_version: str
    updates: int
    updated_at: int
    last_event_ts: int
    recent_items: tuple[str, ...] = ()
    state: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> str:
        """Kafka key on the compacted `embeddings` topic: `user:<id>` / `item:<id>`."""
        return f"{self.entity}:{self.id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RowBlock:
    """Rows of one entity as columns: how the trainer gathers and publishes a transaction's rows.

    A trainer transaction publishes thousands of rows. Built as one
    `EmbeddingRow` each (with a state dict of small arrays) and encoded field
    by field, they cost ~20 µs a row, a third of the trainer's time per
    event; as columns, gathered with one copy per column and encoded in one
    pass, ~6 µs (BENCHMARKS.md, Ingest). `rows()` and the encoder give
    exactly what the row-by-row path gave.

    `state` is a tree of columns, one entry per row in each: a float32 array
    (n, ...) holds one array per row; a list holds one JSON value per row, and
    None there leaves the key out of that row's state; a dict is a nested
    object of columns; any other value is the same in every row.
    """

    entity: Entity
    ids: list[str]
    vectors: npt.NDArray[np.float32] = field(compare=False)
    biases: list[float]
    model_version: str
    updated_at: int
    updates: list[int]
    last_event_ts: list[int]
    recent_items: list[tuple[str, ...]] | None = None
    state: dict[str, Any] = field(default_factory=dict, compare=False)

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self) -> list[EmbeddingRow]:
        """The same rows one by one (state arrays are per-row copies)."""
        states = state_rows(self.state, len(self), lambda a: [np.array(r) for r in a])
        return [EmbeddingRow(
            entity=self.entity, id=ident, vector=self.vectors[n].copy(), bias=self.biases[n],
            model_version=self.model_version, updates=self.updates[n],
            updated_at=self.updated_at, last_event_ts=self.last_event_ts[n],
            recent_items=self.recent_items[n] if self.recent_items is not None else (),
            state=states[n]) for n, ident in enumerate(self.ids)]

    @classmethod
    def of(cls, row: EmbeddingRow) -> RowBlock:
        """One row as a block of one, so a single row takes the same encoding path."""
        return cls(entity=row.entity, ids=[row.id], vectors=np.asarray(row.vector)[None],
                   biases=[row.bias], model_version=row.model_version,
                   updated_at=row.updated_at, updates=[row.updates],
                   last_event_ts=[row.last_event_ts],
                   recent_items=[tuple(row.recent_items)], state=_columns_of(row.state))


def state_rows(columns: dict[str, Any], n: int,
               per_row: Callable[[npt.NDArray[Any]], list[Any]]) -> list[dict[str, Any]]:
    """The n per-row state dicts of a column tree (see `RowBlock`); `per_row` splits arrays.

    >>> state_rows({"format": 1, "opt": {"acc": [0.5, 0.25]}, "at": [None, 7]}, 2, list)
    [{'format': 1, 'opt': {'acc': 0.5}}, {'format': 1, 'opt': {'acc': 0.25}, 'at': 7}]
    """
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, col in columns.items():
        if isinstance(col, np.ndarray):
            values = per_row(col)
        elif isinstance(col, dict):
            values = state_rows(col, n, per_row)
        elif isinstance(col, list):
            values = col
        else:
            values = [col] * n
        if len(values) != n:
            raise ValueError(f"state column {key!r} has {len(values)} entries for {n} rows")
        for row, value in zip(out, values):
            if value is not None:
                row[key] = value
    return out


def _columns_of(state: dict[str, Any]) -> dict[str, Any]:
    """One row's state as a column tree of one row (inverse of `state_rows` for n=1)."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            out[key] = value[None]
        elif type(value) is dict:
            out[key] = _columns_of(value)
        else:
            out[key] = [value]
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangelogRows:
    """Rows of one entity read back from the changelog, as columns: what a restore applies.

    A restore reads every row once. Decoded one `EmbeddingRow` each, with a
    state dict of small arrays, that was ~19 µs a row; gathered as columns,
    with one array per column, decode and table writes take ~12.5 µs
    (BENCHMARKS.md, Restore). Only what the learner restores from is
    kept: the served bias, model version and update time are derived or
    rewritten by the learner.

    `vectors` is (n, dim) float32 in row order; `state` is a column tree
    (see `RowBlock`), where a list column holds None for a row that lacks
    the key.
    """

    entity: Entity
    ids: list[str]
    vectors: npt.NDArray[np.float32] = field(compare=False)
    updates: list[int]
    last_event_ts: list[int]
    recent_items: list[tuple[str, ...]]
    state: dict[str, Any] = field(default_factory=dict, compare=False)
    writers: list[str] = field(default_factory=list, compare=False)
    """Each row's publisher: its model version without the step (`writer_of`)."""

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def of(cls, rows: list[EmbeddingRow]) -> ChangelogRows:
        """Decoded rows, all of one entity, as columns."""
        return cls(entity=rows[0].entity, ids=[r.id for r in rows],
                   vectors=np.stack([r.vector for r in rows]).astype(np.float32, copy=False),
                   updates=[r.updates for r in rows],
                   last_event_ts=[r.last_event_ts for r in rows],
                   recent_items=[tuple(r.recent_items) for r in rows],
                   state=state_columns([r.state for r in rows], _stacked_arrays),
                   writers=[writer_of(r.model_version) for r in rows])


def writer_of(model_version: str) -> str:
    """The trainer instance that published a row: a trainer's model version is
    `<instance id>-<step>`.

    >>> writer_of("trainer-0-1200"), writer_of("v")
    ('trainer-0', 'v')
    """
    head, _, step = model_version.rpartition("-")
    return sys.intern(head if head and step.isdigit() else model_version)


STATE_MAX_DEPTH = 64
"""Deepest nesting a row's state may have (the learner's has 3 levels). Each level is a
Python call or two: a row nested a thousand deep (the free-form `state` of the schema
lets that through) raised RecursionError in whoever decoded it."""


def state_columns(states: list[dict[str, Any]],
                  leaf: Callable[[list[Any], int], Any | None],
                  depth: int = 0) -> dict[str, Any]:
    """The column tree of n per-row state dicts (inverse of `state_rows`).

    `leaf(values, depth)` gives the column of one key's values (nested `depth` + 1
    levels in the state), or None where they are nested objects (dicts, or None
    where a row lacks the key), which become a nested column tree. ValueError past
    `STATE_MAX_DEPTH` levels.

    >>> state_columns([{"opt": {"acc": 0.5}}, {"opt": {"acc": 0.25}, "at": 7}],
    ...               lambda v, _depth: None if any(type(x) is dict for x in v) else v)
    {'opt': {'acc': [0.5, 0.25]}, 'at': [None, 7]}
    """
    if depth >= STATE_MAX_DEPTH:
        raise ValueError(f"state nested over {STATE_MAX_DEPTH} levels")
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for s in states for k in s):
        values = [s.get(key) for s in states]
        column = leaf(values, depth)
        out[key] = (state_columns([v or {} for v in values], leaf, depth + 1)
                    if column is None else column)
    return out


def _stacked_arrays(values: list[Any], _depth: int) -> Any | None:
    """`state_columns`' leaf for decoded states: arrays of one shape stack into one."""
    if any(type(v) is dict for v in values):
        return None if all(type(v) is dict or v is None for v in values) else values
    if values and all(isinstance(v, np.ndarray) for v in values) \
            and len({v.shape for v in values}) == 1:
        return np.stack(values).astype(np.float32, copy=False)
    return values


@dataclass(frozen=True, slots=True, kw_only=True)
class ScoreRequest:
    """Ask the scorer for the top-`k` items of one user (`score-request.v1.json`).

    `candidates` is None when every item may be ranked; otherwise only those
    items are (possibly none). Ids are strings, as for `Event`.

    >>> ScoreRequest(request_id="r1", user_id="u1", k=10).exclude_seen
    True
    """

    request_id: str
    user_id: str
    k: int
    candidates: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    exclude_seen: bool = True
    explain: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PredictedItem:
    """One ranked item; `because` holds the user's recent items that support it (explain)."""

    item_id: str
    score: float
    because: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Prediction:
    """The scorer's answer to one `ScoreRequest` (`prediction.v1.json`), keyed by request id.

    `fallback` says the popularity ranking was served (unknown or cold user);
    `ready` is False while the scorer is still loading `embeddings`, so a
    client never mistakes a half-loaded table for the real answer. `error` is
    set (and `items` empty) when the request was malformed but had a request id.
    `unknown_candidates` counts the request's candidates the model has no row for,
    which no ranking can include: without it, fewer items than asked for read
    as a scorer fault.
    """

    request_id: str
    user_id: str
    items: tuple[PredictedItem, ...]
    model_version: str
    fallback: bool
    latency_ms: float
    error: str | None = None
    ready: bool = True
    unknown_candidates: int | None = None


DlqStage = Literal["decode", "train", "score"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DlqRecord:
    """A record that could not be used (`dlq-record.v1.json`): nothing is dropped silently.

    `key` / `value` are the raw bytes as read (the value already cut to the
    DLQ bound, see `value_truncated`; `value_size` is the original length).
    `reason` is a `stream_app.codec.DlqReason` value, kept as `str` here so
    this module does not depend on the codec. `ts` is when it was dead-lettered
    (wall-clock ms); `partition` / `offset` are -1 when unknown. `headers` are the
    source record's Kafka headers (as many as fit in the codec's bound), which the DLQ
    record carries as its own so a trace id or a producer's tag is not lost with it.
    """

    source_topic: str
    partition: int
    offset: int
    reason: str
    detail: str
    key: bytes | None
    value: bytes | None
    value_truncated: bool
    value_size: int
    ts: int
    stage: DlqStage
    headers: Headers = ()
