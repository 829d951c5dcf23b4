"""`ScoreClient`: ask the scorer over Kafka and wait for the answers, for applications.

Requests go to `score-requests` keyed by user id; answers come back on
`predictions` keyed by request id. The scorer is at-least-once, so the same
request may be answered twice: the client keeps the first answer per
request_id and ignores the rest.

The client reads every `predictions` partition from the end offsets taken
when it starts (read_committed, no group, nothing committed; `ReplyReader`),
so it only sees answers to requests sent after it was created; partitions
added later are read from their beginning. Requests go
out with at most 1 ms of batching, and an answer is handed over as soon as it
is fetched (no waiting for a full batch).

Memory stays bounded in a long-lived client: answers to other clients'
requests (the topic is shared) are not kept, `request` drops its answer once
returned, and `send`/`wait` remember the last `KEEP` requests sent, with their
answers (about 3 KiB an answer at k=20, 150 KiB at k=1000): a program that
sends many should `release` the ids it is done with.

An answer may be an error (`Prediction.error` set, no items): the scorer
refused the request or could not rank it (`answer_too_large`, `rank_error`,
...). A client one thread uses at a time; it holds no locks.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from types import TracebackType

from confluent_kafka import KafkaError, KafkaException, Message

from stream_app.codec import (
    DecodeError,
    EncodeError,
    decode_prediction,
    encode_score_request,
)
from stream_app.config import ConfigError, KafkaConfig
from stream_app.events import Prediction, ScoreRequest
from stream_app.kafka.admin import require_topics
from stream_app.kafka.clients import (
    LATENCY_PRODUCER_DEFAULTS,
    check_consumer_settings,
    make_producer,
)
from stream_app.kafka.produce import DeliveryError, Outgoing, produce_waiting
from stream_app.kafka.reply_reader import ReplyReader

KEEP = 100_000
"""Requests sent through `send` whose answers the client keeps for `wait`."""


class RecentIds:
    """The `size` ids added last; one added again counts from then.

    With a list of sends beside a set, a request id sent again kept its first
    place: it fell out early and its answer was ignored.

    >>> ids = RecentIds(2)
    >>> ids.add("r1"), ids.add("r2"), ids.add("r1"), ids.add("r3")
    ([], [], [], ['r2'])
    >>> "r1" in ids, "r2" in ids
    (True, False)
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, rid: str) -> list[str]:
        """Keep `rid` as the newest; returns the oldest ids dropped to stay within size."""
        self._ids[rid] = None
        self._ids.move_to_end(rid)
        return [self._ids.popitem(last=False)[0] for _ in range(len(self._ids) - self.size)]

    def discard(self, rid: str) -> None:
        self._ids.pop(rid, None)

    def __contains__(self, rid: object) -> bool:
        return rid in self._ids


class ScoreClient:
    """Send score requests and collect their predictions by request id.

    Usage (needs a broker and a scorer, so not a doctest)::

        with ScoreClient(kafka) as client:
            prediction = client.request("u42", k=10, timeout_s=5)
    """

    def __init__(self, kafka: KafkaConfig, *, client_id: str = "stream-app-client") -> None:
        self.topics = kafka.topics
        # logger=None: a program may leave this client idle for hours, and a forwarded
        # librdkafka line waits in the client's queue for a poll (`client_logs.ClientLog`).
        self._producer = make_producer(kafka, f"{client_id}-producer", logger=None,
                                       **LATENCY_PRODUCER_DEFAULTS)
        self._answers_in = ReplyReader(kafka, self.topics.predictions,
                                       client_id=f"{client_id}-consumer",
                                       group_id=f"{client_id}-{uuid.uuid4().hex[:8]}")
        try:
            self._answers_in.open()
        except BaseException:
            self._answers_in.close()
            raise
        self._sent = RecentIds(KEEP)  # request ids whose answers are kept
        self._answers: dict[str, Prediction] = {}
        self.undelivered: dict[str, str] = {}
        """Requests the broker refused: request id -> error."""
        self._in_flight: set[str] = set()
        self._gave_up: set[str] = set()  # still in flight when `request` stopped waiting
        self.duplicates = 0
        """Answers to a request already answered (the scorer is at-least-once), counted
        while the request is remembered."""

    def send(self, request: ScoreRequest) -> str:
        """Produce one request (keyed by user id); returns its request id. `EncodeError`
        for a request the scorer would refuse, `DeliveryError` when the producer refuses
        it outright."""
        # Encoded first: its EncodeError names a bad user id before the key is made.
        return self._send(request, encode_score_request(request))

    def _send(self, request: ScoreRequest, value: bytes) -> str:
        rid = request.request_id

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            self._in_flight.discard(rid)
            self._gave_up.discard(rid)
            if err is not None and rid in self._sent:
                self.undelivered[rid] = err.str()

        # Delivery reports run inside poll(), after the bookkeeping below.
        try:
            produce_waiting(self._producer, Outgoing(self.topics.score_requests,
                                                     request.user_id.encode(), value), delivered)
        except KafkaException as exc:  # refused before it was queued (e.g. its size)
            raise DeliveryError(f"request {rid} was not sent to "
                                f"{self.topics.score_requests}: {exc.args[0].str()}") from exc
        self._in_flight.add(rid)
        self._remember(rid)
        self._producer.poll(0)
        return rid

    def _remember(self, rid: str) -> None:
        for old in self._sent.add(rid):
            self._forget(old)

    def _forget(self, rid: str) -> None:
        """Stop keeping `rid`'s answer; a later copy of it is ignored."""
        self._sent.discard(rid)
        self._answers.pop(rid, None)
        self.undelivered.pop(rid, None)

    def send_many(self, requests: Iterable[ScoreRequest]) -> list[str]:
        """Send all, or none when one is a request the scorer would refuse (`EncodeError`,
        raised before any is produced, so no sent id is lost with the exception)."""
        encoded = [(r, encode_score_request(r)) for r in requests]
        ids = [self._send(r, value) for r, value in encoded]
        self._producer.flush(10)
        return ids

    def wait(self, request_ids: Iterable[str], timeout_s: float) -> dict[str, Prediction]:
        """The answers to `request_ids` that arrived within `timeout_s` (maybe fewer).

        A request the broker refused is not waited for (see `undelivered`).
        """
        wanted = set(request_ids)
        deadline = time.monotonic() + timeout_s
        self._producer.flush(timeout_s)
        wanted -= self.undelivered.keys()
        while not wanted <= self._answers.keys():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._receive(min(left, 0.1))
        return {r: self._answers[r] for r in wanted if r in self._answers}

    def release(self, request_ids: Iterable[str]) -> None:
        """Stop keeping these requests and their answers (a later copy is ignored): what
        a program that sends many does with the ids it has handled."""
        for rid in request_ids:
            self._forget(rid)

    def _receive(self, timeout: float) -> None:
        """Take the answers that are there (blocking at most `timeout` for the first)."""
        for rec in self._answers_in.poll(1000, timeout):
            # Every client reads every answer on the shared topic: the key (the request
            # id) sorts out others' before the decode, which is ~0.2 ms for k=20 and ~9 ms
            # for k=1000, so decoding them all made a fleet's traffic every client's cost.
            if rec.value is None or rec.key is None \
                    or rec.key.decode("utf-8", "replace") not in self._sent:
                continue
            try:
                pred = decode_prediction(rec.value)
            except DecodeError:
                continue  # not ours to judge: the scorer validated what it wrote
            if pred.request_id not in self._sent:
                continue  # another client's request (the topic is shared), or forgotten
            if pred.request_id in self._answers:
                self.duplicates += 1
            else:
                self._answers[pred.request_id] = pred

    def request(self, user_id: str, *, k: int = 20, candidates: tuple[str, ...] | None = None,
                exclude: tuple[str, ...] = (), exclude_seen: bool = True, explain: bool = False,
                timeout_s: float = 10.0) -> Prediction:
        """Send one request and wait for its answer; `TimeoutError` if none comes in time,
        `DeliveryError` if the request itself never reached Kafka. The answer may be an
        error answer: check `.error` before reading `.items` as "nothing to recommend"."""
        req = ScoreRequest(request_id=uuid.uuid4().hex, user_id=user_id, k=k,
                           candidates=candidates, exclude=exclude, exclude_seen=exclude_seen,
                           explain=explain)
        self.send(req)
        got = self.wait([req.request_id], timeout_s)
        refused = self.undelivered.get(req.request_id)
        self._forget(req.request_id)  # handed over (or given up): not kept
        if refused is not None:
            raise DeliveryError(f"request {req.request_id} was not delivered to "
                                f"{self.topics.score_requests}: {refused}")
        if req.request_id in self._in_flight:
            self._gave_up.add(req.request_id)
            raise DeliveryError(f"request {req.request_id} was not delivered to "
                                f"{self.topics.score_requests} within {timeout_s:g}s: is "
                                "the broker reachable, and the topic there?")
        if req.request_id not in got:
            raise TimeoutError(f"no scorer answered request {req.request_id} within "
                               f"{timeout_s:g}s; is `stream-app scorer` running on this "
                               f"topic prefix ({self.topics.prefix!r})?")
        return got[req.request_id]

    def close(self) -> None:
        """Deliver what was sent (10 s), then drop what is left, or librdkafka keeps trying.
        Requests `request` already gave up on are dropped without waiting."""
        if not self._in_flight <= self._gave_up:
            self._producer.flush(10)
        if len(self._producer):
            self._producer.purge()
            self._producer.flush(0)
        self._answers_in.close()

    def __enter__(self) -> ScoreClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def format_prediction(pred: Prediction) -> str:
    """Readable text of one answer (the `stream-app request` output).

    >>> print(format_prediction(Prediction(request_id="r", user_id="u", items=(),
    ...                                    model_version="", fallback=True, latency_ms=1.0)))
    user u: 0 items (model -, 1.0 ms, popularity fallback)
      the scorer holds no model yet: no trainer has published to embeddings
    """
    if pred.error is not None:
        return f"request {pred.request_id}: error: {pred.error}"
    flags = [f for f, on in (("popularity fallback", pred.fallback),
                             ("scorer still loading: partial table", not pred.ready)) if on]
    head = (f"user {pred.user_id}: {len(pred.items)} items (model {pred.model_version or '-'}, "
            f"{pred.latency_ms:.1f} ms{', ' + ', '.join(flags) if flags else ''})")
    lines = [head]
    if not pred.items and not pred.model_version:
        lines.append("  the scorer holds no model yet: no trainer has published to embeddings")
    if pred.unknown_candidates:
        lines.append(f"  {pred.unknown_candidates} candidate(s) left out: the model has no row "
                     "for them (never seen, not yet admitted, evicted or forgotten)")
    for n, item in enumerate(pred.items, 1):
        why = f"  because {', '.join(item.because)}" if item.because else ""
        lines.append(f"{n:>4}. {item.item_id:<24} {item.score:10.4f}{why}")
    return "\n".join(lines)


def request_command(kafka: KafkaConfig, user_id: str, *, k: int, candidates: tuple[str, ...] | None,
                    exclude: tuple[str, ...], explain: bool, timeout_s: float,
                    exclude_seen: bool = True) -> int:
    """`stream-app request`: 0 with the answer printed, 1 when no scorer answers in time.

    The request is checked here as the scorer will check it: a bad one was a round trip
    (or, with no scorer running, a timeout) before its error came back.
    """
    probe = ScoreRequest(request_id="check", user_id=user_id, k=k, candidates=candidates,
                         exclude=exclude, exclude_seen=exclude_seen, explain=explain)
    try:
        encode_score_request(probe)
    except EncodeError as exc:
        raise ConfigError(f"the scorer would refuse this request: {exc}") from exc
    # A bad consumer-only -X value (fetch.wait.max.ms=abc) was reported as "no broker"
    # (exit 75) when the cluster was down: librdkafka checks it when the client is made.
    check_consumer_settings(kafka, "stream-app-client-consumer", "stream-app-client-check")
    require_topics(kafka, [kafka.topics.score_requests, kafka.topics.predictions])
    with ScoreClient(kafka) as client:
        try:
            pred = client.request(user_id, k=k, candidates=candidates, exclude=exclude,
                                  exclude_seen=exclude_seen, explain=explain,
                                  timeout_s=timeout_s)
        except TimeoutError as exc:
            print(f"stream-app: {exc}", file=sys.stderr)
            return 1
    print(format_prediction(pred))
    return 1 if pred.error is not None else 0
