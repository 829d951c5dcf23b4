"""SASL/PLAIN: the trainer works with credentials, fails fast without, and never leaks them.

The broker listens only on SASL_PLAINTEXT (`BrokerSettings(sasl_user=...)`,
`stream-app broker start --sasl-user U`). The secret is grepped for in every
byte the processes wrote (logs, stderr), in /metrics and /healthz, and in the
broker's own log. The metrics server is checked to listen on 127.0.0.1 only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from stream_app.sources.generate import generate
from tests.integration.kafka_helpers import wait_until
from tests.reliability.conftest import new_kafka
from tests.reliability.harness import (
    audit,
    committed_total,
    end_total,
    expected_user_updates,
    produce,
    scrape,
)
from tests.reliability.processes import TrainerProc

SECRET = "Zq7-sasl-pw-4f1c9b"  # noqa: S105 - a test credential, grepped for below
WRONG = "Wr0ng-pw-77aa"  # noqa: S105
GROUP = "rel-sasl"


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, /proc/net/tcp*) of LISTEN sockets on `port`."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                out.add(addr)
    return out


def test_trainer_over_sasl_plain_without_leaking_the_password(
        controlled_broker: Any, tmp_path: Path, trainers: list[TrainerProc]) -> None:
    broker = controlled_broker(sasl_user="alice", sasl_password=SECRET)
    kafka = new_kafka(broker.bootstrap, client=broker.settings.client_settings())
    topics = [kafka.topics.clicks, kafka.topics.purchases]
    stream = list(generate(1_500, n_users=80, n_items=60, seed=51, malformed_share=0.02))
    produce(kafka, stream)

    # Wrong password: exit 2 fast, saying it is authentication, naming no secret.
    bad = TrainerProc(dataclasses.replace(kafka, client={**kafka.client, "sasl.password": WRONG}),
                      tmp_path, instance_id="wrong-pw", group_id=GROUP)
    trainers.append(bad)
    assert bad.start().wait(60) == 2
    assert "authentication failed" in bad.log_text().lower()

    # Right password: it learns everything, serves /metrics on 127.0.0.1 only.
    good = TrainerProc(kafka, tmp_path, instance_id="right-pw", group_id=GROUP)
    trainers.append(good)
    good.start()
    wait_until(lambda: committed_total(kafka, GROUP, topics) >= end_total(kafka, topics),
               timeout=180, interval=0.5, what="the SASL trainer to drain")
    port = good.metrics_port()
    assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1
    exposed = scrape(port) + scrape(port, "/healthz") + scrape(port, "/readyz")
    assert "stream_app_events_total" in exposed
    assert good.terminate() == 0, good.log_text()[-3000:]
    valid = [r.event for r in stream if r.event is not None]
    assert audit(kafka).users == expected_user_updates(valid)

    # Nothing anywhere shows either password.
    seen = bad.log_text() + good.log_text() + exposed + broker.settings.log_file.read_text()
    for secret in (SECRET, WRONG):
        assert secret not in seen
