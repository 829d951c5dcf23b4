"""kill -9 the scorer while requests are in flight: every request is still answered.

A trainer (in-process, drained) publishes rows for a small stream; a
`stream-app scorer` process serves them. The client sends requests in small
paced chunks; once answers flow, the scorer is SIGKILLed mid-stream (requests
read but not answered, answers produced but their offsets not yet committed,
requests not yet read), more requests are sent while it is dead, then it is
restarted in the same group. Every request_id must get an answer; answers
given twice (offsets not committed before the kill) are allowed and counted:
`ScoreClient` keeps the first.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from stream_app.client import ScoreClient
from stream_app.config import KafkaConfig
from stream_app.events import ScoreRequest
from stream_app.sources.generate import generate
from stream_app.trainer import TrainerConfig, make_trainer
from tests.integration.kafka_helpers import wait_until
from tests.reliability.harness import LEARNER, audit, produce
from tests.reliability.processes import ScorerProc

PACED, BURST, AFTER, CHUNK = 1_000, 1_000, 1_000, 50
TRIES = 3  # bursts at most: a burst answered whole before the kill lands is sent again
N_REQUESTS = PACED + TRIES * BURST + AFTER


def _train(kafka: KafkaConfig) -> list[str]:
    """Publish rows for 2,000 events (in-process trainer, until idle); returns the users."""
    produce(kafka, generate(2_000, n_users=200, n_items=150, seed=7))
    cfg = TrainerConfig(metrics_port=0, batch_max=500, batch_wait_ms=100, exit_when_idle=2.0)
    assert make_trainer(kafka, cfg, LEARNER).run() == 0
    return sorted(audit(kafka).users)


def test_every_request_is_answered_across_a_scorer_kill9(
        make_kafka: object, tmp_path: Path, scorers: list[ScorerProc]) -> None:
    kafka: KafkaConfig = make_kafka()  # type: ignore[operator]
    users = _train(kafka)
    scorer = ScorerProc(kafka, tmp_path, group_id=f"{kafka.topic_prefix}rel-scorer")
    scorers.append(scorer)
    scorer.start()
    reqs = [ScoreRequest(request_id=uuid.uuid4().hex, user_id=users[n % len(users)], k=5)
            for n in range(N_REQUESTS)]
    ids = [r.request_id for r in reqs]
    with ScoreClient(kafka, client_id="rel-scorer-kill") as client:
        # Step 1. The scorer answers a first request (it has loaded the table).
        first = client.wait([client.send(reqs[0])], timeout_s=60)
        assert first, scorer.log_text()[-3000:]
        # Step 2. Paced chunks, then a burst; kill -9 as soon as the burst's first
        # answers arrive, so it dies with requests read but not answered, and
        # answers produced whose offsets are not committed yet. A kill that lands
        # after the whole burst was answered leaves nothing in flight: that is
        # the scheduler's luck, not the scorer's, so restart and send the next
        # burst (at most TRIES).
        for start in range(1, PACED, CHUNK):
            client.send_many(reqs[start:min(start + CHUNK, PACED)])
            client.wait(ids[:start + CHUNK], timeout_s=0.02)
        sent = PACED
        for attempt in range(TRIES):
            if attempt:
                scorer.start()
            burst = ids[sent:sent + BURST]
            client.send_many(reqs[sent:sent + BURST])
            sent += BURST
            wait_until(lambda b=burst: client.wait(b, timeout_s=0.005), timeout=60, interval=0,
                       what="the burst's first answers")
            assert scorer.alive(), scorer.log_text()[-3000:]
            scorer.kill9()
            answered_before_kill = len(client.wait(ids[:sent], timeout_s=0.5))
            if answered_before_kill < sent:
                break
        assert answered_before_kill < sent, (
            f"each of {TRIES} kills landed after its burst was answered whole")
        # Requests sent while no scorer runs wait in the topic.
        client.send_many(reqs[sent:])
        # Step 3. Restart in the same group: it re-reads from the committed offsets.
        scorer.start()
        t0 = time.monotonic()
        got = client.wait(ids, timeout_s=90)
        took = time.monotonic() - t0
        duplicates = client.duplicates
    missing = set(ids) - got.keys()
    assert not missing, (f"{len(missing)} of {N_REQUESTS} requests never answered; "
                         f"scorer log:\n{scorer.log_text()[-3000:]}")
    assert all(p.error is None and p.items for p in got.values())
    assert scorer.terminate() == 0, scorer.log_text()[-3000:]
    print(f"scorer kill: {N_REQUESTS} requests, {scorer.kills} kill(s), the last after "
          f"{sent} sent / {answered_before_kill} answered; all answered {took:.1f}s after "
          f"the restart, "
          f"duplicates={duplicates}, not-ready answers={sum(not p.ready for p in got.values())}")
