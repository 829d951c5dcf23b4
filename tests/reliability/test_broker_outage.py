"""The broker goes away mid-run (SIGTERM, then kill -9) and comes back on the same port/data.

The test only does what a supervisor would: it restarts the trainer when its
watchdog stopped it (status 75: librdkafka 2.16 can hang forever in
`send_offsets_to_transaction()` / `commit_transaction()` when the broker goes
away mid-transaction, confluentinc/librdkafka#5456, #5511), and either
process when it exited 75 for a partition librdkafka never fetched
(#5586, `kafka.first_fetch`). Otherwise
librdkafka reconnects and a transaction that could not finish is aborted
(rewind + restore). Either way the exactly-once audit holds at the end, and a
scorer that ran through the outages answers again.
"""

from __future__ import annotations

import re
import signal
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from stream_app.client import ScoreClient
from stream_app.config import KafkaConfig
from stream_app.events import ScoreRequest
from stream_app.sources.generate import generate
from tests.integration.kafka_helpers import wait_until
from tests.reliability.conftest import new_kafka
from tests.reliability.harness import (
    audit,
    committed_total,
    end_total,
    expected_user_updates,
    latest_rows,
    produce,
    scrape,
)
from tests.reliability.processes import ScorerProc, TrainerProc

GROUP = "rel-outage"
STALL_S = 20
"""The trainer's --stall-timeout here: short, so a hang costs the test 20 s, not 120."""


def _wait_for(trainer: TrainerProc, done: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until `done()`, restarting the trainer whenever its watchdog stopped it."""
    def check() -> bool:
        trainer.supervise()  # restarts it if it exited with EXIT_STALLED, else a no-op
        assert trainer.alive(), f"trainer exited:\n{trainer.log_text()[-3000:]}"
        return done()

    try:
        wait_until(check, timeout=timeout, interval=0.1, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; trainer stacks:\n{trainer.dump_stacks()}") from None


_GROUP_LINES = re.compile(r"assigned partitions|revoked partitions|consumer error|ready |"
                          r"commit on revoke|Traceback")


def _scorer_evidence(scorer: ScorerProc) -> str:
    """What tells a stuck rejoin from an unfetched partition or a stuck producer (seen
    once in CI, not since): the group's lines of the log, the stacks, the metrics.
    The log's plain tail is mostly librdkafka's reconnect warnings."""
    lines = [ln for ln in scorer.log_text().splitlines() if _GROUP_LINES.search(ln)]
    try:
        metrics = scrape(scorer.metrics_port(timeout=5))
        metrics = "\n".join(ln for ln in metrics.splitlines()
                            if ln.startswith(("stream_app_scorer", "stream_app_consumer_lag")))
    except (AssertionError, OSError) as exc:
        metrics = f"(no /metrics: {exc})"
    return "\n".join(["scorer group lines:", *lines[-60:], "metrics:", metrics, "stacks:",
                      scorer.dump_stacks()])


def _progressed(kafka: KafkaConfig, topics: list[str], beyond: int) -> bool:
    return committed_total(kafka, GROUP, topics) > beyond


def test_trainer_rides_out_broker_stop_and_kill9(
        controlled_broker: Any, tmp_path: Path, trainers: list[TrainerProc],
        scorers: list[ScorerProc]) -> None:
    broker = controlled_broker()
    kafka = new_kafka(broker.start())
    topics = [kafka.topics.clicks, kafka.topics.purchases]
    stream = list(generate(9_000, n_users=300, n_items=200, seed=31))
    chunks = [stream[:3_000], stream[3_000:6_000], stream[6_000:]]
    trainer = TrainerProc(kafka, tmp_path, group_id=GROUP, batch_max=50,
                          extra=("--stall-timeout", str(STALL_S)))
    scorer = ScorerProc(kafka, tmp_path, group_id=f"{GROUP}-scorer")
    trainers.append(trainer)
    scorers.append(scorer)
    trainer.start()
    scorer.start()

    done = 0
    for chunk, sig in zip(chunks, (signal.SIGTERM, signal.SIGKILL), strict=False):
        # Step 1. Give it work, and take the broker away while it is at it.
        produce(kafka, chunk)
        _wait_for(trainer, partial(_progressed, kafka, topics, done + 200), 120,
                  "the trainer to progress")
        done += len(chunk)
        broker.stop(sig)
        time.sleep(3)
        trainer.supervise()
        assert trainer.alive(), trainer.log_text()[-3000:]
        # Step 2. Same port, same data; the trainer and the scorer are only restarted
        # (by `supervise`, with the broker up) when they exited with status 75.
        assert broker.start() == kafka.bootstrap_servers
        scorer.supervise()
    produce(kafka, chunks[-1])
    # Step 3. Drain; a hung trainer costs STALL_S and one restart each time.
    _wait_for(trainer, lambda: committed_total(kafka, GROUP, topics) >= end_total(kafka, topics),
              240, "the trainer to drain after the outages")
    assert trainer.terminate() == 0, trainer.log_text()[-3000:]

    valid = [r.event for r in stream if r.event is not None]
    got = audit(kafka)
    assert got.users == expected_user_updates(valid)
    assert got.user_updates == len(valid)
    assert "Traceback" not in trainer.log_text()
    stalls = trainer.log_text().count("watchdog: no progress") + \
        trainer.log_text().count("never fetched")
    assert stalls == trainer.stall_restarts

    # Step 4. The scorer lived through both outages (restarted only for its status 75,
    # as a supervisor would) and answers from the final rows.
    scorer.supervise()
    assert scorer.alive(), scorer.log_text()[-3000:]
    # It has the last rows the trainer committed (all 20 users below are known from the
    # first chunk: a scorer that stopped reading rows after the kill -9 would still
    # answer them without fallback; integration test review).
    newest_s = max(r.updated_at for r in latest_rows(kafka).values() if r) / 1000

    def has_newest() -> bool:
        before = time.time()  # staleness = its now - newest row: this bounds the row's time
        found = re.search(r"^stream_app_scorer_staleness_seconds (\S+)$",
                          scrape(scorer.metrics_port(timeout=5)), re.M)
        return found is not None and before - float(found.group(1)) >= newest_s - 0.01

    wait_until(has_newest, timeout=60, interval=0.5, what="the scorer to load the last rows")
    users = sorted(got.users)[:20]
    with ScoreClient(kafka, client_id="rel-outage-client") as client:
        reqs = [ScoreRequest(request_id=uuid.uuid4().hex, user_id=u, k=5) for u in users]
        client.send_many(reqs)
        answers = client.wait([r.request_id for r in reqs], timeout_s=60)
    assert len(answers) == len(reqs), _scorer_evidence(scorer)
    assert all(p.error is None and p.ready and p.items for p in answers.values())
    assert sum(not p.fallback for p in answers.values()) == len(users)
    assert scorer.terminate() == 0, scorer.log_text()[-3000:]
    print(f"outage: stall_restarts={trainer.stall_restarts} starts={trainer.starts} "
          f"scorer restarts={scorer.stall_restarts} "
          f"events={len(valid)} scorer answered {len(answers)}/{len(reqs)}")


def test_the_scorers_partition_check_waits_out_an_outage(controlled_broker: Any) -> None:
    """`TailReader.grow` (every 30 s in the scorer) raised when the cluster could not list
    the topic: in one full run the scorer exited 1 in the middle of an outage above,
    which it is meant to ride out."""
    from stream_app.kafka.tail import TailReader

    broker = controlled_broker()
    kafka = new_kafka(broker.start())
    with TailReader(kafka, kafka.topics.embeddings, client_id="rel-outage-tail") as tail:
        tail.open()
        broker.stop(signal.SIGKILL)
        assert tail.grow(timeout_s=2) == []
        assert tail.failed_checks == 1
        assert broker.start() == kafka.bootstrap_servers
        assert tail.grow() == []  # the same partitions: nothing new, and no error
        assert tail.failed_checks == 0


def test_a_tail_client_replaced_during_an_outage_reads_on_once_the_broker_is_back(
        controlled_broker: Any) -> None:
    """The scorer replaces a tail client that cannot list its topic at two checks in a
    row (`TailReader.renew`); in an outage every client fails, so the new one must
    connect when the broker returns and go on from where the first client got to."""
    from confluent_kafka import Producer

    from stream_app.kafka.tail import TailReader

    broker = controlled_broker()
    kafka = new_kafka(broker.start())
    topic = kafka.topics.embeddings

    def produce_rows(keys: list[bytes]) -> None:
        producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
        for n, key in enumerate(keys):
            producer.produce(topic, key=key, value=b"{}", partition=n % 3)
        assert producer.flush(30) == 0

    produce_rows([b"item:a", b"item:b", b"item:c"])
    seen: list[bytes] = []

    def read(n: int) -> bool:
        seen.extend(r.key or b"" for r in tail.poll(100, 0.2).records)
        return len(seen) >= n

    with TailReader(kafka, topic, client_id="rel-outage-renew") as tail:
        tail.open()
        wait_until(lambda: read(3), timeout=30, what="the first rows")
        broker.stop(signal.SIGKILL)
        for _ in range(2):  # an outage of over two minutes: a new client a minute
            tail.grow(timeout_s=2)
            tail.grow(timeout_s=2)
            assert tail.failed_checks == 2
            tail.renew()
        assert broker.start() == kafka.bootstrap_servers
        produce_rows([b"item:d", b"item:e", b"item:f"])
        wait_until(lambda: read(6), timeout=60, what="the rows written after the outage")
        assert sorted(seen) == [b"item:a", b"item:b", b"item:c", b"item:d", b"item:e",
                                b"item:f"]  # each once: not again from the beginning
