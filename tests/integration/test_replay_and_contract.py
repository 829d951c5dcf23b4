"""The message contract and the input side over a real broker: replay, generate, kcat."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream_app.cli import main
from stream_app.codec import (
    decode_dlq,
    decode_embedding,
    decode_event,
    decode_meta,
    decode_prediction,
    decode_score_request,
    load_schemas,
)
from stream_app.config import KafkaConfig
from stream_app.events import EventKind
from stream_app.kafka.consumer import GroupConsumer
from stream_app.kafka.produce import EventProducer, Outgoing
from tests.integration.kafka_helpers import read_topic

RATINGS = """1::1193::5::978300760
1::661::3::978302109
2::1357::5::978298709
2::3068::4::978299000
3::1196::2::978297600
3::1210::4::978297601
"""


def _key_for(name: str, example: dict[str, Any]) -> bytes:
    if name in ("click", "purchase", "score-request"):
        return str(example["user_id"]).encode()
    if name == "prediction":
        return str(example["request_id"]).encode()
    if name == "embedding":
        return f"{example['entity']}:{example['id']}".encode()
    if name == "trainer-meta":
        return b"meta:trainer"
    return b"dlq"


DECODERS: dict[str, Callable[[bytes, bytes], object]] = {
    "click": lambda k, v: decode_event(v, k, EventKind.CLICK),
    "purchase": lambda k, v: decode_event(v, k, EventKind.PURCHASE),
    "score-request": lambda k, v: decode_score_request(v, k),
    "prediction": lambda k, v: decode_prediction(v),
    "embedding": lambda k, v: decode_embedding(k, v),
    "dlq-record": lambda k, v: decode_dlq(v),
    "trainer-meta": lambda k, v: decode_meta(v),
}


def test_every_schema_example_round_trips_through_kafka(kafka: KafkaConfig) -> None:
    sent: list[tuple[str, bytes, bytes]] = []
    schemas = load_schemas()
    assert set(schemas) == set(DECODERS)  # a schema added without a decoder here fails
    for name, schema in schemas.items():
        for example in schema.examples:
            sent.append((name, _key_for(name, example), orjson.dumps(example)))
    assert {n for n, _, _ in sent} == set(DECODERS)
    topic = kafka.topics.dlq  # any topic: the bytes must come back unchanged
    with EventProducer(kafka) as producer:
        for _, key, value in sent:
            producer.send(Outgoing(topic, key, value))
    got = read_topic(kafka.bootstrap_servers, topic, expect=len(sent))
    assert sorted((m.key(), m.value()) for m in got) == sorted((k, v) for _, k, v in sent)
    name_of = {(k, v): n for n, k, v in sent}
    for m in got:  # what Kafka handed back decodes (raises otherwise), as its type
        decoded = DECODERS[name_of[(m.key(), m.value())]](m.key(), m.value())
        assert decoded is not None


def test_replay_of_a_movielens_file_lands_every_event(kafka: KafkaConfig, tmp_path: Path) -> None:
    path = tmp_path / "ratings.dat"
    path.write_text(RATINGS)
    argv = ["replay", str(path), "--quiet", "--bootstrap-servers", kafka.bootstrap_servers,
            "--topic-prefix", kafka.topic_prefix]
    assert main(argv) == 0
    purchases = read_topic(kafka.bootstrap_servers, kafka.topics.purchases, expect=4)
    clicks = read_topic(kafka.bootstrap_servers, kafka.topics.clicks, expect=2)
    assert len(purchases) == 4 and len(clicks) == 2  # rating >= 4 -> purchase
    events = [decode_event(m.value(), m.key(), EventKind.PURCHASE) for m in purchases]
    assert {(e.user_id, e.item_id, e.ts) for e in events} == {
        ("1", "1193", 978300760000), ("2", "1357", 978298709000),
        ("2", "3068", 978299000000), ("3", "1210", 978297601000)}
    # Keyed by user: one user's events share a partition.
    parts = {(m.key(), m.partition()) for m in purchases + clicks}
    assert len({k for k, _ in parts}) == len(parts)


def test_replay_limit_and_missing_file(kafka: KafkaConfig, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ratings.dat"
    path.write_text(RATINGS)
    base = ["--quiet", "--bootstrap-servers", kafka.bootstrap_servers,
            "--topic-prefix", kafka.topic_prefix]
    assert main(["replay", str(path), "--limit", "3", *base]) == 0
    assert "replayed 3 events" in capsys.readouterr().out
    assert main(["replay", str(tmp_path / "nope.dat"), *base]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "click", "event_id": "e1", "user_id": "u1", "item_id": "i1", '
                   '"ts": 1700000000001}\n{"kind": "click", "event_id": "e2", "user_id": "u1", '
                   '"item_id": "i1", "ts": "x"}\n')
    assert main(["replay", str(bad), "--format", "jsonl", *base]) == 2  # not a traceback
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "(1 record(s) sent before it)" in err
    # MovieLens is read whole and sorted before the first send: nothing went out.
    late = tmp_path / "late.dat"
    late.write_text(RATINGS + "4::1::x::978300000\n")
    assert main(["replay", str(late), *base]) == 2
    err = capsys.readouterr().err
    assert "late.dat:7" in err and "(0 record(s) sent before it)" in err
    assert main(["replay", str(path), "-X", "no.such.setting=1", *base]) == 2
    assert "No such configuration property" in capsys.readouterr().err


def test_generate_produces_the_requested_count(kafka: KafkaConfig) -> None:
    argv = ["generate", "--events", "300", "--users", "20", "--items", "50", "--quiet",
            "--malformed-share", "0.1", "--bootstrap-servers", kafka.bootstrap_servers,
            "--topic-prefix", kafka.topic_prefix]
    assert main(argv) == 0
    clicks = read_topic(kafka.bootstrap_servers, kafka.topics.clicks)
    purchases = read_topic(kafka.bootstrap_servers, kafka.topics.purchases)
    assert len(clicks) + len(purchases) == 300


def test_replay_to_a_missing_topic_prefix_fails_fast(bootstrap: str,
                                                     capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    path = tmp_path / "ratings.dat"
    path.write_text(RATINGS)
    code = main(["replay", str(path), "--quiet", "--bootstrap-servers", bootstrap,
                 "--topic-prefix", "no-such-prefix."])
    assert code == 2
    err = capsys.readouterr().err
    assert "missing topic(s): no-such-prefix.clicks" in err
    # Run as printed, the command made topics without the prefix (walkthrough).
    assert "`stream-app topics create --topic-prefix no-such-prefix.`" in err


def test_an_event_produced_by_kcat_is_read_by_our_consumer(kafka: KafkaConfig) -> None:
    kcat = shutil.which("kcat")
    assert kcat, "kcat is required (apt-get install kcat)"
    value = b'{"event_id":"k1","user_id":42,"item_id":"sku-9","ts":1700000000000}'
    subprocess.run([kcat, "-P", "-b", kafka.bootstrap_servers, "-t", kafka.topics.clicks,
                    "-k", "42"], input=value, check=True, timeout=30)
    consumer = GroupConsumer(kafka, client_id="kcat-test", group_id=f"{kafka.topic_prefix}g",
                             topics=[kafka.topics.clicks])
    try:
        got = []
        for _ in range(100):
            got += consumer.poll_batch(10, 0.2)
            if got:
                break
    finally:
        consumer.close()
    assert len(got) == 1
    event = decode_event(got[0].value, got[0].key, EventKind.CLICK)
    assert (event.event_id, event.user_id, event.item_id) == ("k1", "42", "sku-9")


def test_a_replay_stopped_by_a_bad_line_names_the_records_the_broker_refused(
        kafka: KafkaConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only the acknowledged and dropped counts were shown: a re-run from after the bad
    line, as the message invites, lost the refused purchases without a word."""
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        ResourceType,
    )

    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    small = ConfigEntry("max.message.bytes", "100", incremental_operation=AlterConfigOpType.SET)
    purchases = ConfigResource(ResourceType.TOPIC, kafka.topics.purchases,
                               incremental_configs=[small])
    for done in admin.incremental_alter_configs([purchases]).values():
        done.result(30)
    lines = [orjson.dumps({"kind": kind, "event_id": f"e{n}", "user_id": f"u{n}",
                           "item_id": "i1" * 30, "ts": 1_700_000_000_000 + n}).decode()
             for n, kind in enumerate(["click", "purchase"] * 20)]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join([*lines, '{"kind": "click", "ts": "x"}']) + "\n")
    assert main(["replay", str(mixed), "--quiet", "--bootstrap-servers",
                 kafka.bootstrap_servers, "--topic-prefix", kafka.topic_prefix]) == 2
    err = capsys.readouterr().err
    assert "mixed.jsonl:41" in err and "(20 record(s) sent before it" in err
    assert "20 refused by the broker (Broker: Message size too large)" in err
