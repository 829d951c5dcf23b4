"""The local broker and the topic layout, through the CLI a user would run."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from stream_app.cli import main
from stream_app.config import KafkaConfig
from stream_app.kafka.admin import TopicPlan, admin_client, create_topics
from tests.integration.kafka_helpers import wait_until


def test_topics_create_is_idempotent_and_embeddings_compacted(
        bootstrap: str, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = f"idem{uuid.uuid4().hex[:6]}."  # a reused broker (STREAM_APP_BOOTSTRAP_SERVERS)
    argv = ["topics", "create", "--bootstrap-servers", bootstrap, "--topic-prefix", prefix]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    second = capsys.readouterr().out
    assert first.count(": created") == 6
    assert second.count(": exists") == 6

    admin = admin_client(KafkaConfig(bootstrap_servers=bootstrap))
    res = ConfigResource(ResourceType.TOPIC, f"{prefix}embeddings")
    configs = admin.describe_configs([res])[res].result()
    assert configs["cleanup.policy"].value == "compact"
    meta = admin.list_topics(timeout=10)
    assert len(meta.topics[f"{prefix}clicks"].partitions) == 3
    # How long the changelog keeps a tombstone bounds which snapshots the trainer uses.
    from stream_app.kafka.admin import require_topics

    kafka = KafkaConfig(bootstrap_servers=bootstrap, topic_prefix=prefix)
    kept = require_topics(kafka, [kafka.topics.embeddings], compacted=[kafka.topics.embeddings])
    assert kept == {kafka.topics.embeddings: int(configs["delete.retention.ms"].value)} \
        and kept[kafka.topics.embeddings] > 0


def test_an_embeddings_topic_that_is_not_compacted_is_refused(
        make_kafka: object, capsys: pytest.CaptureFixture[str]) -> None:
    """Made by hand (or auto-created) with cleanup.policy=delete, `topics create` said
    "exists" and exited 0, and the trainer ran on it: after retention.ms a restore lost
    rows of the model without a word."""
    from confluent_kafka.admin import NewTopic

    from stream_app.kafka.admin import require_topics
    from stream_app.kafka.exceptions import TopicError

    kafka: KafkaConfig = make_kafka(create=False)  # type: ignore[operator]
    admin = admin_client(kafka)
    for done in admin.create_topics([NewTopic(kafka.topics.embeddings, 1, 1)]).values():
        done.result(30)
    argv = ["topics", "create", "--bootstrap-servers", kafka.bootstrap_servers,
            "--topic-prefix", kafka.topic_prefix]
    assert main(argv) == 2
    assert "has cleanup.policy=delete, not compact" in capsys.readouterr().err
    with pytest.raises(TopicError, match="cleanup.policy=compact"):
        require_topics(kafka, [kafka.topics.embeddings], compacted=[kafka.topics.embeddings])

    # compact,delete (to bound the topic's size) deletes idle ids' rows after retention.ms.
    _set_topic_config(admin, kafka.topics.embeddings, {"cleanup.policy": "compact,delete"})
    with pytest.raises(TopicError, match="compact,delete with retention.ms="):
        require_topics(kafka, [kafka.topics.embeddings], compacted=[kafka.topics.embeddings])
    _set_topic_config(admin, kafka.topics.embeddings, {"cleanup.policy": "compact,delete",
                                                       "retention.ms": "-1"})
    assert kafka.topics.embeddings in require_topics(
        kafka, [kafka.topics.embeddings], compacted=[kafka.topics.embeddings])


def test_a_topic_whose_records_must_be_smaller_than_ours_is_refused(make_kafka: object) -> None:
    """The broker refuses a larger answer for good: the scorer stopped on that request at
    every restart. Checked at the scorer's start instead."""
    from stream_app.kafka.admin import require_topics
    from stream_app.kafka.exceptions import TopicError
    from stream_app.serving.answers import ANSWER_RECORD_MAX

    kafka: KafkaConfig = make_kafka()  # type: ignore[operator]
    topic = kafka.topics.predictions
    require_topics(kafka, [topic], record_room={topic: ANSWER_RECORD_MAX})  # the default fits
    _set_topic_config(admin_client(kafka), topic, {"max.message.bytes": "100000"})
    with pytest.raises(TopicError, match=f"{topic} has max.message.bytes=100000, under the "
                                         f"{ANSWER_RECORD_MAX} bytes"):
        require_topics(kafka, [topic], record_room={topic: ANSWER_RECORD_MAX})


def test_a_trainer_refuses_a_dead_letter_topic_that_takes_smaller_records(
        make_kafka: object) -> None:
    """A DLQ record the topic refuses aborted the trainer's batch at every try (and stopped
    the scorer on its request at every restart): checked at the start (scorer review)."""
    from stream_app.core import LearnerConfig
    from stream_app.kafka.exceptions import TopicError
    from stream_app.trainer import TrainerConfig, make_trainer

    kafka: KafkaConfig = make_kafka()  # type: ignore[operator]
    _set_topic_config(admin_client(kafka), kafka.topics.dlq, {"max.message.bytes": "100000"})
    trainer = make_trainer(kafka, TrainerConfig(metrics_port=0, exit_when_idle=1.0),
                           LearnerConfig(dim=4))
    with pytest.raises(TopicError, match=f"{kafka.topics.dlq} has max.message.bytes=100000"):
        trainer.run()


def _set_topic_config(admin: AdminClient, topic: str, values: dict[str, str]) -> None:
    """Set `values` and wait until a describe shows them."""
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in values.items()])
    for done in admin.incremental_alter_configs([res]).values():
        done.result(30)
    wait_until(lambda: all(
        admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)])[
            ConfigResource(ResourceType.TOPIC, topic)].result()[k].value == v
        for k, v in values.items()), timeout=30, what=f"{topic}'s new configuration")


def test_broker_start_on_a_taken_port_fails_with_a_fix(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = main(["broker", "start", "--port", str(port), "--state-dir", str(tmp_path)])
    assert code == 2
    assert f"port {port} on 127.0.0.1 is already in use" in capsys.readouterr().err


def test_a_picked_port_taken_before_the_broker_binds_it_is_picked_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A free port is bound by the JVM seconds after it is picked: a neighbour taking it
    meanwhile failed the whole test session's broker (review of the fresh-machine path)."""
    from stream_app.kafka import broker

    real = broker.free_port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        picks = iter([taken])
        monkeypatch.setattr(broker, "free_port",
                            lambda **kw: next(picks, None) or real(**kw))
        settings = broker.BrokerSettings(port=0, state_dir=tmp_path / "b", dies_with_caller=True)
        try:
            started = broker.start(settings)
            assert not started.bootstrap_servers.endswith(f":{taken}")
        finally:
            broker.stop(settings)


def test_unreachable_broker_fails_fast_with_try_again(capsys: pytest.CaptureFixture[str]) -> None:
    """Not 2, which tells a supervisor the configuration is wrong: a broker that is down
    (or not up yet) is what a later restart can meet."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # bound but not listening: nothing answers
    for command in (["topics", "create"], ["trainer"], ["scorer"], ["forget", "u1"]):
        code = main([*command, "--bootstrap-servers", f"127.0.0.1:{dead}"])
        assert code == 75, command
        assert "no Kafka broker answered" in capsys.readouterr().err


def test_forget_without_its_topics_fails_at_once_saying_so(
        bootstrap: str, capsys: pytest.CaptureFixture[str]) -> None:
    """It waited out a 60 s delivery timeout, then said "Unknown topic or partition"."""
    code = main(["forget", "u1", "--bootstrap-servers", bootstrap, "--topic-prefix", "nope."])
    assert code == 2
    assert "stream-app topics create" in capsys.readouterr().err


def test_broker_start_reuses_a_given_broker(bootstrap: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["broker", "start", "--bootstrap-servers", bootstrap]) == 0
    assert f"reusing the running broker at {bootstrap}" in capsys.readouterr().out


def test_topic_prefix_with_bad_characters_is_a_config_error(
        bootstrap: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["topics", "create", "--bootstrap-servers", bootstrap, "--topic-prefix", "a b/"])
    assert code == 2
    assert "topic_prefix may only hold" in capsys.readouterr().err


def test_create_topics_api_reports_outcomes(make_kafka: object, bootstrap: str) -> None:
    kafka = KafkaConfig(bootstrap_servers=bootstrap, topic_prefix=f"api{uuid.uuid4().hex[:6]}.")
    assert set(create_topics(kafka).values()) == {"created"}
    assert set(create_topics(kafka).values()) == {"exists"}
    # Asked for other counts, existing topics are left as they are, and it says so.
    again = create_topics(kafka, TopicPlan(event_partitions=5))
    assert again[kafka.topics.clicks] == "exists with 3 partitions (asked 5; left as it is)"
    assert again[kafka.topics.embeddings] == "exists"


def test_a_restarted_broker_keeps_its_topics_unless_started_fresh(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`broker stop` then `broker start` on the same folder wiped every topic, the model
    and the offsets, silently (walkthrough); now only `--fresh` does."""
    state = ["--state-dir", str(tmp_path / "broker")]
    bootstrap_file = tmp_path / "broker" / "bootstrap"

    def topics_say(expected: str) -> None:
        argv = ["topics", "create", "--bootstrap-servers", bootstrap_file.read_text().strip(),
                "--topic-prefix", "kept."]
        assert main(argv) == 0
        assert capsys.readouterr().out.count(f": {expected}") == 6

    try:
        assert main(["broker", "start", "--port", "0", *state]) == 0
        assert "new, empty cluster" in capsys.readouterr().out
        first = bootstrap_file.read_text()
        topics_say("created")
        assert main(["broker", "stop", *state]) == 0
        assert main(["broker", "start", *state]) == 0
        assert "kept the topics and offsets" in capsys.readouterr().out
        assert bootstrap_file.read_text() == first  # back on its port
        topics_say("exists")
        assert main(["broker", "stop", *state]) == 0
        assert main(["broker", "start", "--port", "1", *state]) == 2  # not the kept one
        assert "pass --fresh" in capsys.readouterr().err
        assert main(["broker", "start", "--port", "0", "--fresh", *state]) == 0
        assert "new, empty cluster" in capsys.readouterr().out
        topics_say("created")
    finally:
        main(["broker", "stop", *state])
