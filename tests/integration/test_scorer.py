"""The scorer against a real broker: exact answers, fallbacks, errors, replicas, kcat."""

from __future__ import annotations

import subprocess
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt
import orjson
import pytest
import torch
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

import stream_app.scorer.loop
from stream_app.client import ScoreClient
from stream_app.codec import (
    MESSAGE_MAX_BYTES,
    EncodeError,
    decode_dlq,
    decode_prediction,
    encode_embedding,
    encode_score_request,
)
from stream_app.config import KafkaConfig
from stream_app.events import EmbeddingRow, Prediction, ScoreRequest
from stream_app.kafka.clients import make_producer
from stream_app.kafka.produce import DeliveryError
from stream_app.scorer import Scorer
from stream_app.scorer.loop import JOIN_CHECK_S
from stream_app.serving import ScorerConfig
from stream_app.serving.topk import prunes
from stream_app.watchdog import NO_WATCHDOG, Heartbeat, Watchdog
from tests.integration.kafka_helpers import read_topic, wait_until

torch.set_num_threads(1)
DIM = 8
Vecs = dict[str, npt.NDArray[np.float32]]


def _row(entity: str, ident: str, vec: npt.NDArray[np.float32], bias: float = 0.0,
         recent: tuple[str, ...] = ()) -> EmbeddingRow:
    return EmbeddingRow(entity=entity, id=ident, vector=vec, bias=bias,  # type: ignore[arg-type]
                        model_version="mf-test-1", updates=4, updated_at=1_700_000_000_000,
                        last_event_ts=1_700_000_000_000, recent_items=recent)


def publish(kafka: KafkaConfig, records: list[tuple[str, bytes | None]], *,
            transactional: bool = False) -> None:
    """Write `embeddings` records like the trainer does (optionally in one transaction)."""
    producer = make_producer(kafka, "test-rows",
                             transactional_id=f"test-{uuid.uuid4().hex}" if transactional else None)
    if transactional:
        producer.init_transactions(30)
        producer.begin_transaction()
    for key, value in records:
        producer.produce(kafka.topics.embeddings, key=key.encode(), value=value)
    if transactional:
        producer.commit_transaction(30)
    assert producer.flush(30) == 0


@pytest.fixture
def world() -> tuple[Vecs, dict[str, float], Vecs]:
    rng = np.random.default_rng(3)
    items = {f"i{n}": rng.normal(size=DIM).astype(np.float32) for n in range(40)}
    bias = {i: float(rng.normal()) for i in items}
    users = {f"u{n}": rng.normal(size=DIM).astype(np.float32) for n in range(6)}
    return items, bias, users


def rows_of(items: Vecs, bias: dict[str, float], users: Vecs) -> list[tuple[str, bytes | None]]:
    out = [(f"item:{i}", encode_embedding(_row("item", i, v, bias[i]))) for i, v in items.items()]
    out += [(f"user:{u}", encode_embedding(_row("user", u, v, recent=("i1", "i2"))))
            for u, v in users.items()]
    return out


def brute(u: npt.NDArray[np.float32] | None, items: Vecs, bias: dict[str, float], k: int,
          allowed: set[str] | None = None, banned: frozenset[str] = frozenset()) -> list[str]:
    ids = [i for i in items if (allowed is None or i in allowed) and i not in banned]
    scores = np.array([(float(items[i] @ u) if u is not None else 0.0) + bias[i] for i in ids])
    return [ids[j] for j in np.argsort(-scores, kind="stable")[:k]]


@contextmanager
def running(kafka: KafkaConfig, *, kind: type[Scorer] = Scorer, wait_ready: bool = True,
            watchdog: Heartbeat = NO_WATCHDOG, **overrides: object) -> Iterator[Scorer]:
    cfg = ScorerConfig(device="cpu", metrics_port=0, batch_wait_ms=1.0,
                       group_id=f"scorer-{kafka.topic_prefix}", **overrides)  # type: ignore[arg-type]
    scorer = kind(kafka, cfg, registry=CollectorRegistry(), stop=threading.Event(),
                  watchdog=watchdog)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(scorer.run()), daemon=True)
    thread.start()
    try:
        if wait_ready:
            wait_until(lambda: scorer.ready.is_set() or not thread.is_alive(),
                       what="scorer ready")
        assert thread.is_alive(), "scorer died during start-up"
        yield scorer
    finally:
        scorer.stop.set()
        thread.join(30)
        assert result == [0]


def ask(client: ScoreClient, reqs: list[ScoreRequest]) -> dict[str, Prediction]:
    client.send_many(reqs)
    got = client.wait([r.request_id for r in reqs], timeout_s=30)
    assert len(got) == len(reqs)
    return got


def ids(p: Prediction) -> list[str]:
    return [i.item_id for i in p.items]


def test_answers_are_the_exact_top_k(kafka: KafkaConfig, world) -> None:  # type: ignore[no-untyped-def]
    items, bias, users = world
    publish(kafka, rows_of(items, bias, users), transactional=True)
    with running(kafka) as scorer, ScoreClient(kafka) as client:
        port = scorer.metrics_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz") as resp:  # noqa: S310
            assert resp.status == 200
        reqs = [ScoreRequest(request_id=f"full-{u}", user_id=u, k=5) for u in users]
        reqs += [ScoreRequest(request_id="cand", user_id="u0", k=3, exclude_seen=False,
                              candidates=("i3", "i4", "i5", "i6", "nope")),
                 ScoreRequest(request_id="excl", user_id="u1", k=4, exclude=("i7", "i8")),
                 ScoreRequest(request_id="ghost", user_id="ghost", k=4),
                 ScoreRequest(request_id="why", user_id="u2", k=2, explain=True)]
        got = ask(client, reqs)
        produced = scorer.registry.get_sample_value("stream_app_scorer_request_seconds_count",
                                                    {"phase": "produced"})
        assert produced == len(reqs)  # each request's record carried its produce time
        seen = frozenset({"i1", "i2"})
        for u, v in users.items():
            assert ids(got[f"full-{u}"]) == brute(v, items, bias, 5, banned=seen)
            assert not got[f"full-{u}"].fallback and got[f"full-{u}"].ready
        assert ids(got["cand"]) == brute(users["u0"], items, bias, 3,
                                         allowed={"i3", "i4", "i5", "i6"})
        assert got["cand"].unknown_candidates == 1  # "nope", through the topic
        assert got["excl"].unknown_candidates is None
        assert ids(got["excl"]) == brute(users["u1"], items, bias, 4,
                                         banned=seen | {"i7", "i8"})
        assert got["ghost"].fallback and ids(got["ghost"]) == brute(None, items, bias, 4)
        assert all(set(i.because) <= seen for i in got["why"].items)
        assert any(i.because for i in got["why"].items)  # explain reached the answer
        assert got["full-u0"].model_version == "mf-test-1"

        # Tombstones: the user falls back to popularity, a deleted item disappears.
        top = brute(None, items, bias, 1)[0]
        publish(kafka, [("user:u3", None), (f"item:{top}", None)])
        del items[top]

        def after() -> Prediction | None:
            rid = uuid.uuid4().hex
            p = ask(client, [ScoreRequest(request_id=rid, user_id="u3", k=3)])[rid]
            return p if p.fallback and top not in ids(p) else None
        p = wait_until(after, what="tombstone applied")
        assert ids(p) == brute(None, items, bias, 3)


def test_the_watchdog_fires_on_a_hung_turn_and_never_while_the_scorer_serves(  # type: ignore[no-untyped-def]
        kafka: KafkaConfig, world, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung librdkafka call (a synchronous commit takes no timeout) stopped the loop for
    good while /healthz, on its own thread, still said alive: nothing restarted the
    scorer. Every turn now beats the process's watchdog, which exits it (status 75,
    `test_watchdog.py`) when none came for `stall_timeout_s`. Here a turn that ranks is
    held, as a hung call would hold it."""
    items, bias, users = world
    publish(kafka, rows_of(items, bias, users), transactional=True)
    hang, release, stalls = threading.Event(), threading.Event(), threading.Event()
    answer = stream_app.scorer.loop.answer_batch

    def held(*args, **kwargs):  # type: ignore[no-untyped-def]
        if hang.is_set():
            release.wait(60)
        return answer(*args, **kwargs)

    monkeypatch.setattr(stream_app.scorer.loop, "answer_batch", held)
    # 4 s against turns of at most 0.05 s when idle, and start-up steps of well under a
    # second each: only a 4 s pause of the loop's thread (a loaded machine) fires it early.
    dog = Watchdog(4.0, component="scorer", on_stall=stalls.set, dump_stacks=False)
    try:
        with dog, running(kafka, watchdog=dog), ScoreClient(kafka) as client:
            got = ask(client, [ScoreRequest(request_id="r0", user_id="u0", k=3)])
            assert ids(got["r0"]) == brute(users["u0"], items, bias, 3, banned=frozenset(
                {"i1", "i2"}))
            time.sleep(9)  # over two limits of idling after loading and answering: no stall
            assert not stalls.is_set()
            hang.set()
            client.send_many([ScoreRequest(request_id="r1", user_id="u1", k=3)])
            assert stalls.wait(30)
            assert dog._step == "loop"  # the turn it was in
            release.set()  # the stand-in does not exit: the turn goes on, r1 is answered
            assert ids(client.wait(["r1"], timeout_s=30)["r1"]) == brute(
                users["u1"], items, bias, 3, banned=frozenset({"i1", "i2"}))
    finally:
        release.set()


class _Counting(Watchdog):
    """A watchdog that never fires and keeps the name of every beat."""

    def __init__(self) -> None:
        super().__init__(3600.0, component="scorer", dump_stacks=False)
        self.steps: list[str] = []

    def beat(self, step: str) -> None:
        self.steps.append(step)
        super().beat(step)


def test_a_load_turn_beats_the_watchdog_every_128_rows(kafka: KafkaConfig) -> None:
    """One load turn applies up to `load_batch` rows (1M allowed, about a minute at
    45-67 us a row) with no loop beat between: a watchdog under that limit killed a
    healthy scorer mid-load, and each restart loaded from the beginning again."""
    rng = np.random.default_rng(5)
    rows = [(f"item:i{n}", encode_embedding(_row("item", f"i{n}",
                                                 rng.normal(size=DIM).astype(np.float32))))
            for n in range(3000)]
    publish(kafka, rows, transactional=True)
    dog = _Counting()
    with dog, running(kafka, watchdog=dog, load_batch=5000) as scorer:
        assert scorer.table.n_items == 3000
    # Each poll of n rows beats ceil(n / 128) times, however the rows were split.
    assert dog.steps.count("rows") >= 3000 / 128
    assert dog.steps[:3] == ["start", "topics", "open embeddings"]


def test_rows_of_an_aborted_transaction_are_never_served(kafka: KafkaConfig, world) -> None:  # type: ignore[no-untyped-def]
    """The scorer reads `embeddings` read_committed: a trainer's aborted transaction (a
    crash, a fenced zombie) changes no answer (integration test review: nothing wrote
    an aborted transaction while a scorer ran)."""
    items, bias, users = world
    publish(kafka, rows_of(items, bias, users), transactional=True)
    with running(kafka), ScoreClient(kafka) as client:
        producer = make_producer(kafka, "test-aborted", transactional_id=f"t-{uuid.uuid4().hex}")
        producer.init_transactions(30)
        producer.begin_transaction()
        producer.produce(kafka.topics.embeddings, key=b"user:u0",
                         value=encode_embedding(_row("user", "u0", -10 * users["u0"])))
        producer.produce(kafka.topics.embeddings, key=b"user:u1", value=None)
        producer.flush(30)
        producer.abort_transaction(30)
        # Committed after the abort, on every partition: once the scorer has these, it has
        # read past the aborted records.
        markers = [f"m{n}" for n in range(12)]
        publish(kafka, [(f"item:{m}", encode_embedding(_row("item", m, np.zeros(DIM, np.float32),
                                                              -100.0)))
                        for m in markers], transactional=True)

        def has_markers() -> bool:
            rid = uuid.uuid4().hex
            p = ask(client, [ScoreRequest(request_id=rid, user_id="u0", k=len(markers),
                                          candidates=tuple(markers), exclude_seen=False)])[rid]
            return len(p.items) == len(markers)

        wait_until(has_markers, what="the rows committed after the abort")
        got = ask(client, [ScoreRequest(request_id=u, user_id=u, k=5) for u in ("u0", "u1")])
        seen = frozenset({"i1", "i2"})
        for u in ("u0", "u1"):
            assert not got[u].fallback
            assert ids(got[u]) == brute(users[u], items, bias, 5, banned=seen)


def test_malformed_request_gets_error_and_dlq(kafka: KafkaConfig, world) -> None:  # type: ignore[no-untyped-def]
    items, bias, users = world
    publish(kafka, rows_of(items, bias, users))
    producer = make_producer(kafka, "test-bad")
    bad = orjson.dumps({"request_id": "bad-1", "user_id": "u0", "k": 0})
    # Answers carry the request's headers: a requester's correlation id and reply route
    # (contract review: they were dropped, so answers could only be matched by id).
    producer.produce(kafka.topics.score_requests, key=b"u0", value=bad,
                     headers=[("correlation-id", b"c-bad")])
    producer.produce(kafka.topics.score_requests, key=b"u0", value=b"{not json")
    good = orjson.dumps({"request_id": "good-1", "user_id": "u0", "k": 2})
    producer.produce(kafka.topics.score_requests, key=b"u0", value=good,
                     headers=[("correlation-id", b"c-good"), ("reply-to", b"svc-a"),
                              ("trace", None), ("empty", b"")])
    assert producer.flush(10) == 0
    with running(kafka), ScoreClient(kafka) as client:
        dlq = read_topic(kafka.bootstrap_servers, kafka.topics.dlq, expect=2)
        records = [decode_dlq(m.value()) for m in dlq]
        assert sorted(r.reason for r in records) == ["bad_k", "not_json"]
        assert all(r.stage == "score" and r.source_topic == kafka.topics.score_requests
                   for r in records)
        answers = read_topic(kafka.bootstrap_servers, kafka.topics.predictions, expect=2)
        preds = {decode_prediction(m.value()).request_id: m for m in answers}
        refused = decode_prediction(preds["bad-1"].value())
        assert refused.items == () and refused.error is not None
        assert refused.error.startswith("bad_k")
        assert preds["bad-1"].headers() == [("correlation-id", b"c-bad")]
        assert preds["good-1"].headers() == [("correlation-id", b"c-good"),
                                             ("reply-to", b"svc-a"), ("trace", None),
                                             ("empty", b"")]  # null stays null
        # ...and the process keeps answering.
        assert ask(client, [ScoreRequest(request_id="ok", user_id="u0", k=2)])["ok"].items


def test_a_client_keeps_only_its_own_answers(kafka: KafkaConfig, world) -> None:  # type: ignore[no-untyped-def]
    """A long-lived client kept every answer on the shared predictions topic, other
    clients' included, and every answer `request` had returned: memory without bound."""
    items, bias, users = world
    publish(kafka, rows_of(items, bias, users))
    with running(kafka), ScoreClient(kafka) as mine, ScoreClient(kafka) as other:
        got = ask(mine, [ScoreRequest(request_id=f"m{n}", user_id="u0", k=2) for n in range(5)])
        assert mine.wait(list(got), timeout_s=0) == got  # send/wait answers stay for wait
        for n in range(3):
            assert other.request("u0", k=2).items
        other.wait(["m0"], timeout_s=1.0)  # reads mine's answers off the topic too
        mine.wait(["never-sent"], timeout_s=1.0)  # and mine reads other's
        assert not other._answers  # noqa: SLF001 - what the client holds is the point
        assert set(mine._answers) == set(got) and mine.duplicates == 0  # noqa: SLF001


def _members(kafka: KafkaConfig, group: str) -> int:
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    desc = admin.describe_consumer_groups([group])[group].result()
    return sum(1 for m in desc.members if m.assignment.topic_partitions)


def test_two_replicas_split_the_requests(kafka: KafkaConfig, world) -> None:  # type: ignore[no-untyped-def]
    items, bias, users = world
    publish(kafka, rows_of(items, bias, users))
    with running(kafka) as a, running(kafka) as b, ScoreClient(kafka) as client:
        wait_until(lambda: _members(kafka, a.cfg.group_id) == 2, what="two members assigned")
        reqs = [ScoreRequest(request_id=f"r{n}", user_id=f"u{n % 6}", k=3, exclude_seen=False)
                for n in range(60)]
        got = ask(client, reqs)
        for r in reqs:
            assert ids(got[r.request_id]) == brute(users[r.user_id], items, bias, 3)

        def answered(s: Scorer) -> float:
            v = s.registry.get_sample_value("stream_app_scorer_request_seconds_count",
                                            {"phase": "total"})
            return v or 0.0
        assert answered(a) > 0 and answered(b) > 0
        assert answered(a) + answered(b) >= 60


def test_request_sent_with_kcat_is_answered(kafka: KafkaConfig, world) -> None:  # type: ignore[no-untyped-def]
    items, bias, users = world
    publish(kafka, rows_of(items, bias, users))
    b, t = kafka.bootstrap_servers, kafka.topics
    with running(kafka):
        value = b'{"request_id": "kcat-1", "user_id": "u4", "k": 3, "exclude_seen": false}\n'
        subprocess.run(["kcat", "-P", "-b", b, "-t", t.score_requests, "-k", "u4"],
                       input=value, check=True, timeout=30)

        def read_back() -> bytes | None:
            out = subprocess.run(["kcat", "-C", "-b", b, "-t", t.predictions, "-e", "-o",
                                  "beginning", "-q", "-X", "isolation.level=read_committed"],
                                 capture_output=True, check=True, timeout=30).stdout
            return out if b"kcat-1" in out else None
        out: bytes = wait_until(read_back, what="kcat reads the prediction")
        pred = decode_prediction(out.strip().splitlines()[-1])
        assert ids(pred) == brute(users["u4"], items, bias, 3)




def test_request_bounds_are_enforced_through_the_scorer(kafka: KafkaConfig, world) -> None:  # type: ignore[no-untyped-def]
    # The schema's bounds (k in 1..1000, at most 10000 candidates/exclusions)
    # hold end to end: over them an error prediction plus a DLQ record each;
    # at them, a normal answer.
    items, bias, users = world
    publish(kafka, rows_of(items, bias, users))
    producer = make_producer(kafka, "test-bounds")
    many = [f"c{n}" for n in range(10_001)]
    over: dict[str, dict[str, object]] = {
        "k-1001": {"k": 1001}, "cand-10001": {"k": 5, "candidates": many},
        "excl-10001": {"k": 5, "exclude": many}}
    for rid, fields in over.items():
        producer.produce(kafka.topics.score_requests, key=b"u0",
                         value=orjson.dumps({"request_id": rid, "user_id": "u0", **fields}))
    assert producer.flush(10) == 0
    with running(kafka), ScoreClient(kafka) as client:
        dlq = [decode_dlq(m.value())
               for m in read_topic(kafka.bootstrap_servers, kafka.topics.dlq, expect=3)]
        assert sorted(r.reason for r in dlq) == ["bad_k", "too_many_candidates",
                                                 "too_many_exclusions"]
        preds = {p.request_id: p for p in (
            decode_prediction(m.value()) for m in read_topic(
                kafka.bootstrap_servers, kafka.topics.predictions, expect=3))}
        assert set(preds) == set(over)
        assert all(p.error is not None and p.items == () for p in preds.values())
        assert preds["k-1001"].error.startswith("bad_k")  # type: ignore[union-attr]
        at = ask(client, [ScoreRequest(request_id="k-1000", user_id="u0", k=1000),
                          ScoreRequest(request_id="cand-10000", user_id="u0", k=3,
                                       candidates=tuple(many[:9_999]) + ("i3",))])
        assert at["k-1000"].error is None and len(at["k-1000"].items) == len(items) - 2
        assert at["cand-10000"].error is None and ids(at["cand-10000"]) == ["i3"]


def test_a_large_catalogue_is_ranked_exactly_by_the_bounded_scan(kafka: KafkaConfig) -> None:
    """20K items on one thread: the scorer scans by bounds (`serving/bounds.py`), and its
    answers stay the brute force's as rows arrive, rise, sink and are deleted."""
    rng = np.random.default_rng(17)
    n = 20_000
    items = {f"i{k}": rng.normal(scale=0.3, size=DIM).astype(np.float32) for k in range(n)}
    bias = dict(zip(items, (-np.log(rng.permutation(n) + 1.0)).tolist(), strict=True))
    users = {f"u{k}": rng.normal(scale=0.3, size=DIM).astype(np.float32) for k in range(8)}
    publish(kafka, rows_of(items, bias, users))
    seen = frozenset({"i1", "i2"})

    def exact(client: ScoreClient) -> bool:
        reqs = [ScoreRequest(request_id=uuid.uuid4().hex, user_id=u, k=20) for u in users]
        got = ask(client, reqs)
        return all(ids(got[r.request_id]) == brute(users[r.user_id], items, bias, 20, banned=seen)
                   for r in reqs)

    with running(kafka, threads=1) as scorer, ScoreClient(kafka) as client:
        wait_until(lambda: scorer.table.n_items == n, what="catalogue loaded")
        assert prunes(scorer.table.device, scorer.table.n_slots)
        assert exact(client)
        # The bottom of the bias order jumps to the top, the top is deleted, and new items come.
        low = sorted(items, key=bias.__getitem__)[:3]
        top = max(items, key=bias.__getitem__)
        for j, i in enumerate(low):
            bias[i] = 3.0 + j
        fresh = {f"new{k}": rng.normal(scale=0.3, size=DIM).astype(np.float32) for k in range(3)}
        for j, i in enumerate(fresh):
            bias[i] = 1.5 + j / 10
        items.update(fresh)
        publish(kafka, [(f"item:{i}", encode_embedding(_row("item", i, items[i], bias[i])))
                        for i in [*low, *fresh]] + [(f"item:{top}", None)])
        del items[top], bias[top]
        # Rows of other keys land on other partitions: wait for all of them, not for one.
        wait_until(lambda: exact(client), what="answers exact after the updates")


def test_a_client_sending_past_its_local_queue_waits_instead_of_failing(
        make_kafka) -> None:  # type: ignore[no-untyped-def]
    """`send` raised BufferError once librdkafka's queue was full (100,000 requests by
    default), leaving the request counted in flight; EventProducer already waited."""
    import dataclasses

    kafka: KafkaConfig = make_kafka()
    small = dataclasses.replace(kafka, client={"queue.buffering.max.messages": "5"})
    reqs = [ScoreRequest(request_id=f"r{n}", user_id=f"u{n % 7}", k=5) for n in range(200)]
    with ScoreClient(small, client_id="full-queue") as client:
        assert client.send_many(reqs) == [r.request_id for r in reqs]
        assert not client.undelivered
    sent = read_topic(kafka.bootstrap_servers, kafka.topics.score_requests, expect=200)
    assert sorted(m.key() for m in sent) == sorted(r.user_id.encode() for r in reqs)


def test_a_request_as_large_as_the_scorer_takes_can_be_sent(
        make_kafka) -> None:  # type: ignore[no-untyped-def]
    """librdkafka refuses messages over 1,000,000 bytes by default, less than the 1 MiB the
    scorer takes: such a request raised KafkaException out of `send` (a traceback from
    `stream-app request`), not the DeliveryError it documents."""
    import dataclasses

    kafka: KafkaConfig = make_kafka()
    big = ScoreRequest(request_id="big", user_id="u1", k=10,
                       candidates=tuple(f"item-{n:0250d}" for n in range(3_900)))
    size = len(encode_score_request(big))
    assert 1_000_000 < size < MESSAGE_MAX_BYTES
    capped = dataclasses.replace(kafka, client={"message.max.bytes": "100000"})
    with ScoreClient(capped, client_id="capped") as client, \
            pytest.raises(DeliveryError, match="(?i)too large"):
        client.send(big)
    with ScoreClient(kafka, client_id="big") as client:
        client.send(big)
    [sent] = read_topic(kafka.bootstrap_servers, kafka.topics.score_requests, expect=1)
    assert len(sent.value()) == size


def test_send_many_sends_none_when_one_request_would_be_refused(
        make_kafka) -> None:  # type: ignore[no-untyped-def]
    """It sent the requests before the refused one and raised: their ids were lost with
    the exception, so their answers could not be collected (diff review)."""
    kafka: KafkaConfig = make_kafka()
    good = ScoreRequest(request_id="ok-1", user_id="u1", k=5)
    with ScoreClient(kafka, client_id="many") as client:
        with pytest.raises(EncodeError, match="bad_k"):
            client.send_many([good, ScoreRequest(request_id="bad-1", user_id="u1", k=0)])
        assert client.send_many([good]) == ["ok-1"]
    [sent] = read_topic(kafka.bootstrap_servers, kafka.topics.score_requests, expect=1)
    assert orjson.loads(sent.value())["request_id"] == "ok-1"


def test_request_without_its_topics_says_what_is_missing(
        make_kafka, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from confluent_kafka.admin import NewTopic

    from stream_app.cli import main
    from stream_app.kafka.produce import DeliveryError

    kafka: KafkaConfig = make_kafka(create=False)
    base = ["--bootstrap-servers", kafka.bootstrap_servers, "--topic-prefix", kafka.topic_prefix]
    assert main(["request", "u1", "--timeout", "2", *base]) == 2
    assert f"missing topic(s): {kafka.topics.score_requests}" in capsys.readouterr().err
    # Answers can be read but requests cannot be written (the broker creates no topic):
    # the client says the request never left, not that no scorer answered.
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    admin.create_topics([NewTopic(kafka.topics.predictions, 1, 1)])[
        kafka.topics.predictions].result(30)
    wait_until(lambda: kafka.topics.predictions in admin.list_topics(timeout=5).topics,
               timeout=30, what="the predictions topic")
    with ScoreClient(kafka) as client, pytest.raises(DeliveryError, match="not delivered"):
        client.request("u1", timeout_s=2)


class _HeldLoad(Scorer):
    """A scorer whose load does not finish until `release` is set, as with a long changelog."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.release = threading.Event()
        check = self.embeddings._check_ready  # noqa: SLF001

        def held() -> None:
            if self.release.is_set():
                check()

        self.embeddings._check_ready = held  # type: ignore[method-assign]  # noqa: SLF001


@contextmanager
def loading(kafka: KafkaConfig) -> Iterator[_HeldLoad]:
    with running(kafka, kind=_HeldLoad, wait_ready=False, ready_hold_ms=500.0) as scorer:
        assert isinstance(scorer, _HeldLoad)
        yield scorer


def _all_members(kafka: KafkaConfig, group: str) -> int:
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    return len(admin.describe_consumer_groups([group])[group].result().members)


def test_a_loading_replica_leaves_the_requests_to_the_ready_one(kafka: KafkaConfig, world) -> None:  # type: ignore[no-untyped-def]
    """A restarted replica that joined at once took partitions from the ready ones and
    answered their requests from its partial table for the whole load."""
    items, bias, users = world
    publish(kafka, rows_of(items, bias, users))
    with running(kafka) as a, ScoreClient(kafka) as client:
        group = a.cfg.group_id
        wait_until(lambda: _all_members(kafka, group) == 1, what="the ready replica joined")
        with loading(kafka) as b:
            wait_until(lambda: b.embeddings.progress.records >= len(items) + len(users),
                       what="b read all")
            time.sleep(2 * JOIN_CHECK_S)  # b has looked at the group at least once since
            assert b._requests is None and _all_members(kafka, group) == 1
            # Its load is still watched: the runbook of ScorerNotReady reads this lag.
            assert wait_until(lambda: b.registry.get_sample_value(
                "stream_app_consumer_lag_messages",
                {"topic": kafka.topics.embeddings, "partition": "0"}) is not None,
                timeout=10, what="b's embeddings lag while loading")
            reqs = [ScoreRequest(request_id=f"r{n}", user_id=f"u{n % 6}", k=3,
                                 exclude_seen=False) for n in range(30)]
            got = ask(client, reqs)
            assert all(p.ready and not p.fallback for p in got.values())
            b.release.set()
            publish(kafka, rows_of(items, bias, users)[:1])  # a row read makes b look again
            wait_until(lambda: _all_members(kafka, group) == 2, what="b joined once loaded")
            assert b.ready.is_set()
            wait_until(lambda: b._requests is not None and b._requests._owned,  # noqa: SLF001
                       what="b took partitions")  # its rebalance done before it stops


def test_a_lone_scorer_joins_while_loading_and_says_it_is_not_ready(
        kafka: KafkaConfig, world) -> None:  # type: ignore[no-untyped-def]
    items, bias, users = world
    publish(kafka, rows_of(items, bias, users))
    with loading(kafka) as b, ScoreClient(kafka) as client:
        wait_until(lambda: b._requests is not None, what="joined an empty group while loading")
        got = ask(client, [ScoreRequest(request_id="r", user_id="u1", k=3)])
        assert not got["r"].ready and not b.ready.is_set()


def test_a_replica_that_gives_up_partitions_commits_what_it_answered(
        kafka: KafkaConfig, world) -> None:  # type: ignore[no-untyped-def]
    """On a revoke the scorer commits the requests it answered before the partitions
    move, so their new owner does not answer them again. The periodic commit is made
    rare here (60 s), so only the revoke's commit can keep the answers single."""
    items, bias, users = world
    publish(kafka, rows_of(items, bias, users))
    first = [ScoreRequest(request_id=f"a{n}", user_id=f"u{n % 6}", k=3, exclude_seen=False)
             for n in range(30)]
    second = [ScoreRequest(request_id=f"b{n}", user_id=f"u{n % 6}", k=3, exclude_seen=False)
              for n in range(30)]
    with running(kafka, commit_interval_ms=60_000) as a, ScoreClient(kafka) as client:
        group = a.cfg.group_id
        ask(client, first)
        with running(kafka, commit_interval_ms=60_000) as b:
            wait_until(lambda: _members(kafka, group) == 2, what="both replicas assigned")
            wait_until(lambda: b._requests is not None and b._requests._owned,  # noqa: SLF001
                       what="b took partitions")
            got = ask(client, second)
            assert all(p.ready for p in got.values())
    # Read to the end once both replicas stopped: with `expect` the read stopped at the
    # 60th answer, before a late second answer (test review).
    answers = read_topic(kafka.bootstrap_servers, kafka.topics.predictions)
    counts = Counter(decode_prediction(m.value()).request_id for m in answers)
    assert set(counts) == {r.request_id for r in first + second}
    assert [rid for rid, n in counts.items() if n > 1] == []  # none answered twice
