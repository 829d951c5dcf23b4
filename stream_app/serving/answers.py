"""Turn a micro-batch of raw requests into the records to produce (pure: codec + top-K).

Decoding happens here, not at poll time, so a request's latency clock starts
when it was read. A malformed request yields a DLQ record (stage "score") and,
when its request id can be read, an error prediction so the client is not
left waiting. Embedding rows are applied through `apply_embedding`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from stream_app.codec import (
    HEADERS_COPIED_MAX,
    DecodeError,
    DlqReason,
    EncodeError,
    decode_embedding,
    decode_meta,
    decoder_bug,
    dlq_key,
    dlq_record,
    encode_dlq,
    encode_prediction,
    is_meta_key,
    split_embedding_key,
)
from stream_app.codec import decode_score_request as _decode_request
from stream_app.codec.fastcheck import ROW_RECENT_ITEMS_MAX, fast_id
from stream_app.config import TopicNames
from stream_app.events import Coordinates, Headers, Prediction, ScoreRequest
from stream_app.serving.batching import Pending
from stream_app.serving.config import ScorerConfig
from stream_app.serving.table import EmbeddingTable, ServingMix, TableError
from stream_app.serving.topk import Ranking, rank

log = logging.getLogger(__name__)

NOT_LOADED = "not_loaded"
ANSWER_MAX_BYTES = 990_000
"""Largest prediction value produced: under librdkafka's default `message.max.bytes`
(1,000,000; our producers default to more, but a user -X may restore it) and the
broker's default max.message.bytes, with room for the key and headers. A request for
k=1000 with explanations over long ids can ask for more; it gets an error prediction
instead of a failed send."""
ANSWER_RECORD_MAX = ANSWER_MAX_BYTES + 3 * HEADERS_COPIED_MAX + 4096
"""Bound on a whole answer record as the broker counts it: the value, the copied headers
(their framing counted in HEADERS_COPIED_MAX), the key and the batch's header. The scorer refuses to
start on a `predictions` topic (or a producer `message.max.bytes`) smaller than this."""


@dataclass(frozen=True, slots=True)
class Out:
    """One record to produce."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers = ()


@dataclass(slots=True)
class BatchAnswer:
    """Records to produce plus what the metrics need: arrivals of the ranked requests
    (monotonic s), when ranking started and how long it took, fallback and error reasons,
    and which requests, in the batch's order, met a bug of ours (`bugs`: decoder_error or
    rank_error; the scorer stops at a long run of them, see `scorer.loop.BUGS_MAX`)."""

    records: list[Out] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    produced_ms: list[int | None] = field(default_factory=list)  # per arrival
    started: float = 0.0
    compute_s: float = 0.0
    fallbacks: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    bugs: list[bool] = field(default_factory=list)


def answer_batch(table: EmbeddingTable, batch: list[Pending], *, topics: TopicNames,
                 cfg: ScorerConfig, ready: bool,
                 on_rank: Callable[[], None] = lambda: None) -> BatchAnswer:
    """Decode, rank (one top-K call) and encode the answers of one micro-batch.
    `on_rank` runs before each `rank()` call (the watchdog's beat)."""
    out = BatchAnswer()
    out.bugs = [False] * len(batch)
    good: list[tuple[int, Pending, ScoreRequest]] = []
    for n, p in enumerate(batch):
        try:
            req = _decode_request(p.value, p.key)
        except DecodeError as err:
            out.errors.append(err.reason.value)
            out.records.extend(_refusal(table, p, err, topics, ready))
            continue
        except Exception as exc:  # noqa: BLE001 (see `codec.decoder_bug`)
            log.exception("decoding request %s[%d]@%d raised: refused as decoder_error",
                          p.topic, p.partition, p.offset)
            out.errors.append(DlqReason.DECODER_ERROR.value)
            out.bugs[n] = True
            failed = decoder_bug(exc, request_id=_id_field(p.value, "request_id"))
            out.records.extend(_refusal(table, p, failed, topics, ready))
            continue
        if req.k > cfg.max_k:  # capped, never refused: the schema already bounds k
            req = ScoreRequest(request_id=req.request_id, user_id=req.user_id, k=cfg.max_k,
                               candidates=req.candidates, exclude=req.exclude,
                               exclude_seen=req.exclude_seen, explain=req.explain)
        good.append((n, p, req))
    start = time.monotonic()
    rankings = _rank(table, [r for _, _, r in good], cfg, on_rank)
    out.started, out.compute_s = start, time.monotonic() - start
    for (n, p, req), ranking in zip(good, rankings, strict=True):
        if isinstance(ranking, Exception):
            failed = decoder_bug(ranking, DlqReason.RANK_ERROR, request_id=req.request_id)
            out.errors.append(failed.reason.value)
            out.bugs[n] = True
            out.records.extend(_refusal(table, p, failed, topics, ready))
            continue
        fallback = ranking.fallback
        if fallback is not None and not ready:
            fallback = NOT_LOADED
        out.arrivals.append(p.arrival)
        out.produced_ms.append(p.produced_ms)
        pred = Prediction(request_id=req.request_id, user_id=req.user_id, items=ranking.items,
                          model_version=table.model_version, fallback=fallback is not None,
                          latency_ms=_ms_since(p.arrival), ready=ready,
                          unknown_candidates=ranking.unknown_candidates)
        try:
            value = _encoded(pred)
        except DecodeError as err:
            out.errors.append(err.reason.value)
            out.records.extend(_refusal(table, p, err, topics, ready))
            continue
        if fallback is not None:  # counted for answers that carry it, not for refusals
            out.fallbacks.append(fallback)
        out.records.append(Out(topics.predictions, req.request_id.encode(), value, p.headers))
    return out


def _rank(table: EmbeddingTable, reqs: list[ScoreRequest], cfg: ScorerConfig,
          on_rank: Callable[[], None]) -> list[Ranking | Exception]:
    """One top-K call for the batch; if it raises, each request alone, so a request that
    meets a bug gets an error answer instead of stopping the scorer (which then read it
    again at every restart, never committed)."""
    def ranked(some: list[ScoreRequest]) -> list[Ranking]:
        on_rank()  # one by one, a batch of a large catalogue outlasted the stall timeout
        return rank(table, some, min_user_updates=cfg.min_user_updates,
                    explain_max=cfg.explain_max)

    try:
        return list(ranked(reqs))
    except Exception:  # noqa: BLE001
        log.exception("ranking a batch of %d requests raised: ranking them one by one",
                      len(reqs))
    out: list[Ranking | Exception] = []
    for req in reqs:
        try:
            out.extend(ranked([req]))
        except Exception as exc:  # noqa: BLE001
            log.exception("ranking request %s raised: answered with rank_error",
                          req.request_id)
            out.append(exc)
    return out


def _encoded(pred: Prediction) -> bytes:
    """The prediction's value, or a `DecodeError` naming why this request cannot be answered.

    Neither case is the request's fault alone, but both must stay with it: an
    exception here would stop the scorer, and the restarted one would read the
    same request again.
    """
    try:
        value = encode_prediction(pred)
    except EncodeError as err:  # a score overflowed float32: rows of huge norm
        raise DecodeError(DlqReason.NON_FINITE_SCORE, str(err),
                          request_id=pred.request_id) from err
    if len(value) > ANSWER_MAX_BYTES:
        raise DecodeError(DlqReason.ANSWER_TOO_LARGE,
                          f"the prediction takes {len(value)} bytes, over {ANSWER_MAX_BYTES}: "
                          "ask for a smaller k or without explain", request_id=pred.request_id)
    return value


def _refusal(table: EmbeddingTable, p: Pending, err: DecodeError,
             topics: TopicNames, ready: bool) -> list[Out]:
    where = Coordinates(topic=p.topic, partition=p.partition, offset=p.offset)
    dlq = dlq_record(where, p.key, p.value, err, ts=int(time.time() * 1000), stage="score",
                     headers=p.headers)
    records = [Out(topics.dlq, dlq_key(dlq), encode_dlq(dlq), dlq.headers)]
    if err.request_id is not None:
        pred = Prediction(request_id=err.request_id, user_id=_user_id(p.value), items=(),
                          model_version=table.model_version, fallback=False,
                          latency_ms=_ms_since(p.arrival), ready=ready,
                          error=f"{err.reason.value}: {err.detail}"[:1024])
        records.append(Out(topics.predictions, err.request_id.encode(),
                           encode_prediction(pred), p.headers))
    return records


def _user_id(value: bytes | None) -> str:
    """The user id of a refused request when it is still a usable id, else ""."""
    return _id_field(value, "user_id") or ""


def _id_field(value: bytes | None, name: str) -> str | None:
    """Field `name` of a request's JSON object when it is a usable id: what a request
    whose decoding raised is still answered to. Never raises, since the decoder that
    did may share this code."""
    try:
        obj = orjson.loads(value or b"")
        return fast_id(obj.get(name)) if isinstance(obj, dict) else None
    except Exception:  # noqa: BLE001
        return None


def _ms_since(arrival: float) -> float:
    return max(0.0, (time.monotonic() - arrival) * 1000.0)


def serving_mix(value: bytes | None) -> ServingMix | None:
    """The trainer's serving mix from `meta:trainer`: None when the record has none (a
    tombstone, an older trainer). DecodeError when it is unusable: the scorer ranks with
    it, and a negative `recent_items` from a foreign writer failed every request batch
    with a warm user, which then came back after each restart."""
    state = decode_meta(value) if value is not None else {}
    mix = state.get("serving")
    if mix is None:
        return None
    if type(mix) is not dict:  # an encoded array decodes to an ndarray, which indexing fails
        raise DecodeError(DlqReason.SCHEMA, f"meta:trainer serving is not an object: {mix!r}")
    try:
        out = ServingMix(history_weight=float(mix["history_weight"]),
                         recent_decay=float(mix["recent_decay"]),
                         recent_items=mix["recent_items"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError(DlqReason.SCHEMA, f"meta:trainer serving: {exc!r}") from exc
    if not (type(out.recent_items) is int and 0 < out.recent_items <= ROW_RECENT_ITEMS_MAX
            and 0.0 <= out.recent_decay <= 1.0 and 0.0 <= out.history_weight < math.inf):
        raise DecodeError(DlqReason.OUT_OF_RANGE,
                          f"meta:trainer serving {mix!r}: needs 0 < recent_items <= "
                          f"{ROW_RECENT_ITEMS_MAX}, recent_decay in [0, 1], history_weight >= 0")
    return out


def apply_embedding(table: EmbeddingTable, key: bytes | None, value: bytes | None) -> str | None:
    """Apply one `embeddings` record; returns a refusal reason, or None when applied/ignored.

    `meta:trainer` is the trainer's own state and is skipped. A null value is a
    tombstone: the row is removed (an item's slot is freed for reuse). A refused row
    removes its key's row too: kept, the older version it replaces went on being
    served by a replica that had read it (an item pushed down still ranked first),
    while one started after compaction had none, so replicas answered differently.
    """
    try:
        if is_meta_key(key):
            table.mix = serving_mix(value)  # refused: the table keeps the mix it had
            return None
        row = decode_embedding(key, value)
        if row is None:
            table.delete(*split_embedding_key(key))
        else:
            table.upsert(row)
        return None
    except DecodeError as err:
        reason = err.reason.value
    except TableError as err:
        reason = f"table: {err}"
    except (ValueError, TypeError, OverflowError, IndexError, KeyError) as exc:
        # A value the decoder's checks let through and numpy or the table cannot hold:
        # skipped like any bad row. Raised, it stopped every replica at every restart,
        # since the compacted topic keeps the row (the known cases are checked above).
        reason = f"unusable row: {exc!r}"
    try:
        table.delete(*split_embedding_key(key))
    except DecodeError:
        pass  # no user:/item: key, so no row of it to remove
    return reason
