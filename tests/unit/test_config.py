"""Configuration: precedence, validation messages, librdkafka merging and redaction."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest

from stream_app.cli import main
from stream_app.config import ConfigError, KafkaConfig, TopicNames, redact
from stream_app.config_load import build, load_kafka, parse_kv, read_properties
from stream_app.core import LearnerConfig
from stream_app.kafka.clients import consumer_config, merge, ms_setting, producer_config
from stream_app.kafka.exceptions import ConfigConflictError
from stream_app.kafka.tail import TailReader
from stream_app.serving import ScorerConfig
from stream_app.trainer import TrainerConfig
from stream_app.trainer.config import check_with_client, check_with_learner


def test_precedence_defaults_file_env_flags() -> None:
    file = {"batch_max": 10, "batch_wait_ms": 7}
    env = {"STREAM_APP_TRAINER_BATCH_MAX": "20", "STREAM_APP_TRAINER_DEVICE": "cpu"}
    cfg = build(TrainerConfig, "trainer", file, env, {"batch_max": 30, "group_id": None})
    assert (cfg.batch_max, cfg.batch_wait_ms, cfg.device, cfg.group_id) == (
        30, 7, "cpu", "stream-app-trainer")


def test_unknown_file_key_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in \[trainer\]: batchmax"):
        build(TrainerConfig, "trainer", {"batchmax": 1}, {}, {})


def test_bad_values_say_what_to_fix() -> None:
    with pytest.raises(ConfigError, match="trainer.batch_max must be in 1..1,000,000"):
        build(TrainerConfig, "trainer", {}, {}, {"batch_max": 0})
    with pytest.raises(ConfigError, match="STREAM_APP_TRAINER_BATCH_MAX='x' is not a valid int"):
        build(TrainerConfig, "trainer", {}, {"STREAM_APP_TRAINER_BATCH_MAX": "x"}, {})
    with pytest.raises(ConfigError, match="snapshot_dir needs restore"):
        build(TrainerConfig, "trainer", {}, {}, {"snapshot_dir": "snapshots", "restore": False})
    with pytest.raises(ConfigError, match="snapshot_interval_s must be > 0"):
        build(TrainerConfig, "trainer", {}, {"STREAM_APP_TRAINER_SNAPSHOT_INTERVAL_S": "0"}, {})
    for threads in (0, 100_000):  # 100,000 torch threads crashed the scorer (exit 139)
        with pytest.raises(ConfigError, match="trainer.threads must be 1..1024"):
            build(TrainerConfig, "trainer", {}, {}, {"threads": threads})
    assert build(TrainerConfig, "trainer", {}, {"STREAM_APP_TRAINER_THREADS": "1"},
                 {}).threads == 1
    with pytest.raises(ConfigError, match="bootstrap_servers entries must be HOST:PORT"):
        KafkaConfig(bootstrap_servers="localhost")
    for port in ("0", "99999"):  # librdkafka took 99999 as 34463, and the CLI then said
        # "no broker answered" (exit 75, try again) instead of naming the mistake
        with pytest.raises(ConfigError, match="port must be in 1..65535"):
            KafkaConfig(bootstrap_servers=f"a:9092,127.0.0.1:{port}")
    with pytest.raises(ConfigError, match="topic_prefix may only hold"):
        TopicNames(prefix="bad prefix")


def test_kafka_section_client_settings_merge_with_flags() -> None:
    file = {"kafka": {"bootstrap_servers": "a:1", "client": {"linger.ms": 7}}}
    kafka = load_kafka(file, {"STREAM_APP_TOPIC_PREFIX": "p."}, {"bootstrap_servers": None},
                       {"acks": "1"})
    assert kafka.bootstrap_servers == "a:1" and kafka.topic_prefix == "p."
    assert dict(kafka.client) == {"linger.ms": "7", "acks": "1"}


@pytest.mark.parametrize(("key", "fix"), [
    ("bootstrap.servers", "--bootstrap-servers"), ("metadata.broker.list", "--bootstrap-servers"),
    ("client.id", "named after its role"), ("group.id", "--group-id"),
    ("transactional.id", "instance_id"), ("isolation.level", "true end")])
def test_settings_stream_app_owns_are_refused_as_librdkafka_settings(key: str, fix: str) -> None:
    """A kcat-style file with the brokers in it was refused as a conflict with the default
    address; under the alias metadata.broker.list, the default silently won."""
    with pytest.raises(ConfigError, match=re.escape(fix)):
        load_kafka({}, {}, {}, {key: "broker:9092"})
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_kafka({"kafka": {"client": {key: "x"}}}, {}, {}, {})


@pytest.mark.parametrize(("command", "setting"), [
    ("scorer", "enable.auto.commit=true"), ("scorer", "enable.partition.eof=false"),
    ("trainer", "enable.auto.commit=true"), ("trainer", "enable.idempotence=false"),
])
def test_a_conflicting_setting_is_refused_before_looking_for_a_broker(
        command: str, setting: str, capsys: pytest.CaptureFixture[str]) -> None:
    """They started their metrics server first, and with no broker waited 10 s and
    exited 75 ("try again") for a setting no retry fixes."""
    assert main([command, "--bootstrap-servers", "127.0.0.1:1", "--metrics-port", "0",
                 "-X", setting]) == 2
    assert "conflicts with" in capsys.readouterr().err


@pytest.mark.parametrize(("command", "limit"), [("scorer", 100_000), ("trainer", 100_000),
                                               ("trainer", 1_048_576)])
def test_a_producer_too_small_for_the_largest_record_is_refused(
        capsys: pytest.CaptureFixture[str], command: str, limit: int) -> None:
    """librdkafka refuses such a record at produce() for good: the scorer stopped on that
    request, the trainer (exit 1, not abortable) on a row or a dead letter of that batch,
    and every restart met it again; one large junk event was enough (CLI review)."""
    assert main([command, "--bootstrap-servers", "127.0.0.1:1", "--metrics-port", "0",
                 "-X", f"message.max.bytes={limit}"]) == 2
    assert f"-X message.max.bytes={limit} is under the" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["scorer", "trainer"])
def test_a_bad_consumer_only_value_is_refused_before_looking_for_a_broker(
        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """librdkafka checks values when a client is made; the first was the broker check's
    producer-side one, so with no broker this exited 75 ("no broker answered")."""
    assert main([command, "--bootstrap-servers", "127.0.0.1:1", "--metrics-port", "0",
                 "-X", "fetch.wait.max.ms=abc"]) == 2
    assert 'Invalid value for configuration property "fetch.wait.max.ms"' in \
        capsys.readouterr().err


def test_request_refuses_a_bad_consumer_only_value_before_looking_for_a_broker(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["request", "u1", "--bootstrap-servers", "127.0.0.1:1",
                 "-X", "fetch.wait.max.ms=abc"]) == 2
    assert 'Invalid value for configuration property "fetch.wait.max.ms"' in \
        capsys.readouterr().err


@pytest.mark.parametrize("command", ["scorer", "trainer"])
def test_a_metrics_address_that_cannot_be_served_is_refused_before_looking_for_a_broker(
        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The scorer checked its topics first: with no broker, a port in use or a bad host
    exited 75 ("try again") for good."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main([command, "--bootstrap-servers", "127.0.0.1:1",
                     "--metrics-port", str(port)]) == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.parametrize("servers", ["nohost", "127.0.0.1:99999"])
def test_broker_start_refuses_a_bad_address_to_reuse_before_waiting_for_it(
        servers: str, capsys: pytest.CaptureFixture[str]) -> None:
    """It waited 10 s and said "no broker answers" (exit 75); librdkafka takes port
    99999 for 34463, where another broker could answer."""
    assert main(["broker", "start", "--bootstrap-servers", servers]) == 2
    assert "bootstrap_servers" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "says"), [
    (["trainer", "--metrics-port", "0", "-X", "acks=1"], "`acks` must be set to `all`"),
    (["trainer", "--metrics-port", "0", "-X", "message.timeout.ms=600000"],
     "`message.timeout.ms` must be set <= `transaction.timeout.ms`"),
    (["scorer", "--metrics-port", "0", "-X", "acks=1"], "`acks` must be set to `all`"),
    (["forget", "u1", "-X", "acks=1"], "acks=1 conflicts with acks=all"),
    (["request", "u1", "-X", "acks=1"], "`acks` must be set to `all`"),
    (["generate", "--events", "5", "-X", "max.in.flight.requests.per.connection=10"],
     "`max.in.flight` must be set <= 5"),
])
def test_producer_settings_librdkafka_refuses_are_refused_before_looking_for_a_broker(
        args: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    """librdkafka checks a combination only when the producer is made, which came after
    the broker check: with no broker they exited 75 ("try again") for good."""
    assert main([*args, "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize("command", ["scorer", "trainer"])
def test_an_offset_reset_that_stops_a_partition_is_refused(
        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`error`: a partition whose committed offset the log's retention passed stopped
    being read, with nothing to act on (config review)."""
    assert main([command, "--bootstrap-servers", "127.0.0.1:1", "--metrics-port", "0",
                 "-X", "auto.offset.reset=error"]) == 2
    assert "auto.offset.reset=error" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["scorer", "trainer"])
def test_the_consumer_group_protocol_is_refused_with_what_to_do(
        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """librdkafka's own refusal named session.timeout.ms, a setting the user never gave."""
    assert main([command, "--bootstrap-servers", "127.0.0.1:1", "--metrics-port", "0",
                 "-X", "group.protocol=consumer"]) == 2
    assert "group.protocol=consumer: stream_app's consumer groups need the classic" in \
        capsys.readouterr().err


def test_enforced_settings_cannot_be_overridden() -> None:
    kafka = KafkaConfig(client={"enable.auto.commit": "true"})
    # Spelled as librdkafka's settings are, not as Python's False
    with pytest.raises(ConfigConflictError,
                       match="enable.auto.commit=true conflicts with enable.auto.commit=false,"):
        consumer_config(kafka, "c", "g")
    conf = consumer_config(KafkaConfig(client={"linger.ms": "9"}), "c", "g")
    assert conf["isolation.level"] == "read_committed" and conf["enable.auto.commit"] is False
    prod = producer_config(KafkaConfig(client={"linger.ms": "9"}), "p", transactional_id="t")
    assert prod["transactional.id"] == "t" and prod["linger.ms"] == "9"
    assert merge({"a": 1}, {"a": "2"}, {}) == {"a": "2"}
    # librdkafka's other spellings of the value we enforce are the same setting, not a
    # conflict (-X enable.auto.commit=0 was refused as one).
    for same in ("0", "f", "FALSE"):
        conf = consumer_config(KafkaConfig(client={"enable.auto.commit": same}), "c", "g")
        assert conf["enable.auto.commit"] is False
    with pytest.raises(ConfigConflictError, match="enable.auto.commit=1 conflicts"):
        consumer_config(KafkaConfig(client={"enable.auto.commit": "1"}), "c", "g")


@pytest.mark.parametrize("key", [
    "sasl.password", "ssl.key.password", "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config", "ssl.key.pem", "ssl.keystore.password", "ssl_key.key"])
def test_secrets_are_redacted_in_repr(key: str) -> None:
    kafka = KafkaConfig(client={key: "hunter2", "sasl.username": "bob"})
    text = repr(kafka)
    assert "hunter2" not in text and "bob" in text
    assert redact({key: "1"}) == {key: "***"}


def test_cli_config_error_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text("[trainer]\nbatch_max = -1\n")
    assert main(["trainer", "--config", str(bad), "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert "trainer.batch_max must be in 1..1,000,000" in capsys.readouterr().err
    assert main(["trainer", "-L", "dim=0", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert "learner.dim must be > 0" in capsys.readouterr().err
    bad.write_text("not toml [")
    assert main(["topics", "create", "--config", str(bad)]) == 2
    assert "is not valid TOML" in capsys.readouterr().err


def test_default_group_ids_carry_the_topic_prefix_and_explicit_ones_are_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Group and transactional ids are cluster-wide: two deployments with
    # different prefixes on one cluster must not fence each other by default.
    import stream_app.scorer
    import stream_app.trainer

    seen: dict[str, str] = {}
    monkeypatch.setattr(stream_app.trainer, "run_trainer",
                        lambda kafka, cfg, learner: seen.update(trainer=cfg.transactional_id) or 0)
    monkeypatch.setattr(stream_app.scorer, "run_scorer",
                        lambda kafka, cfg: seen.update(scorer=cfg.group_id) or 0)
    for var in ("STREAM_APP_TRAINER_GROUP_ID", "STREAM_APP_SCORER_GROUP_ID",
                "STREAM_APP_TOPIC_PREFIX"):
        monkeypatch.delenv(var, raising=False)
    assert main(["trainer", "--topic-prefix", "shop-eu."]) == 0
    assert main(["scorer", "--topic-prefix", "shop-eu."]) == 0
    assert seen == {"trainer": "shop-eu.stream-app-trainer.trainer-0",
                    "scorer": "shop-eu.stream-app-scorer"}
    assert main(["trainer", "--topic-prefix", "shop-eu.", "--group-id", "mine"]) == 0
    monkeypatch.setenv("STREAM_APP_SCORER_GROUP_ID", "from-env")
    assert main(["scorer", "--topic-prefix", "shop-eu."]) == 0
    assert seen == {"trainer": "mine.trainer-0", "scorer": "from-env"}
    assert main(["trainer"]) == 0  # no prefix: the historical default
    assert seen["trainer"] == "stream-app-trainer.trainer-0"


def test_derived_defaults_sit_below_file_env_and_flags() -> None:
    derived = {"group_id": "p.stream-app-trainer"}
    assert build(TrainerConfig, "trainer", {}, {}, {}, derived=derived).group_id == \
        "p.stream-app-trainer"
    assert build(TrainerConfig, "trainer", {"group_id": "file"}, {}, {},
                 derived=derived).group_id == "file"


@pytest.mark.parametrize(("toml", "message"), [
    ("[trainr]\nbatch_max = 1\n", r"unknown section\(s\) or top-level key\(s\).*trainr"),
    ("bootstrap_servers = 'a:1'\n", r"top-level key\(s\).*bootstrap_servers"),
    ("[trainer]\nrestore = 'false'\n", r"\[trainer\] restore must be bool, got 'false'"),
    ("[trainer]\nbatch_max = 10.5\n", r"\[trainer\] batch_max must be int, got 10.5"),
    ("[trainer]\nbatch_max = true\n", r"\[trainer\] batch_max must be int, got True"),
    ("[kafka]\nbootstrap_servers = ['a:1', 'b:2']\n", r"bootstrap_servers must be str"),
    ("[kafka]\nclient = 'x'\n", r"\[kafka.client\] must be a table"),
    ("kafka = 1\n", r"\[kafka\] must be a table"),
])
def test_a_config_file_of_wrong_shape_or_types_fails_with_exit_2(
        toml: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """TOML has its own types: a string "false" is true, 10.5 is no count; refused, not
    coerced, and a typo'd section is not ignored."""
    path = tmp_path / "c.toml"
    path.write_text(toml)
    assert main(["trainer", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err
    assert re.search(message, err), err


@pytest.mark.parametrize(("setting", "says"), [
    ("enable.idempotence=false", "enable.idempotence=false conflicts"),
    ("acks=1", "acks=1 conflicts with acks=all"),
    ("partitioner=random", "partitioner=random: events and forget requests need"),
    ("topic.partitioner=fnv1a", "topic.partitioner=fnv1a: events and forget requests need"),
    ("delivery.report.only.error=true", "a value confluent-kafka cannot take"),
    ("stats_cb=x", "a value confluent-kafka cannot take"),
])
def test_replay_refuses_settings_that_lose_split_or_crash_before_the_broker_check(
        setting: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With `-X enable.idempotence=false -X acks=0` a replay said "replayed N events" of
    records no broker took; `random` spread a user over partitions; a callback key as
    text crashed with a traceback (config review)."""
    events = tmp_path / "e.jsonl"
    events.write_text('{"event_id": "e1", "user_id": "u1", "item_id": "i1", '
                      '"ts": 1700000000000}\n')
    assert main(["replay", str(events), "--bootstrap-servers", "127.0.0.1:1",
                 "-X", setting]) == 2
    assert says in capsys.readouterr().err


def test_a_port_of_other_digits_than_ascii_is_refused() -> None:
    """librdkafka read `127.0.0.1:٩٠٩٢` as port 0 ("no broker", exit 75)."""
    with pytest.raises(ConfigError, match="HOST:PORT"):
        KafkaConfig(bootstrap_servers="127.0.0.1:\u0669\u0660\u0669\u0662")


@pytest.mark.parametrize(("client", "says"), [
    ({"sasl": {"mechanisms": ["PLAIN"]}}, "strings, integers or booleans"),
    ({"linger.ms": 1.5}, "strings, integers or booleans"),
    ({"linger.ms": 1, "linger": {"ms": 2}}, "sets ['linger.ms'] twice"),
])
def test_kafka_client_values_of_another_shape_are_refused(client: dict[str, object],
                                                          says: str) -> None:
    """A list became its Python text ("['PLAIN']"), silently (config review)."""
    with pytest.raises(ConfigError) as caught:
        load_kafka({"kafka": {"client": client}}, {}, {}, {})
    assert says in str(caught.value)


def test_a_kafka_config_file_with_a_byte_order_mark_reads_its_first_key(
        tmp_path: Path) -> None:
    props = tmp_path / "k.properties"
    props.write_bytes(b"\xef\xbb\xbfsecurity.protocol=SSL\n")
    assert read_properties(props) == {"security.protocol": "SSL"}


def test_dotted_librdkafka_keys_in_the_file_stay_dotted() -> None:
    """TOML reads `security.protocol = "SSL"` under [kafka.client] as a nested table."""
    file = {"kafka": {"client": {"security": {"protocol": "SSL"}, "enable.idempotence": True}}}
    client = load_kafka(file, {}, {}, {}).client
    assert dict(client) == {"security.protocol": "SSL", "enable.idempotence": "true"}


def test_a_malformed_setting_is_not_echoed_when_it_may_hold_a_secret() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_kv(["sasl.password:hunter2"])
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0])
def test_idle_exit_and_intervals_refuse_nan_and_infinity(value: float) -> None:
    with pytest.raises(ConfigError, match="exit_when_idle"):
        TrainerConfig(exit_when_idle=value)
    with pytest.raises(ConfigError, match="snapshot_interval_s"):
        TrainerConfig(snapshot_interval_s=value)


def test_unknown_environment_variables_are_refused_where_their_section_is_read(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from stream_app.config_load import check_environment
    from stream_app.core import LearnerConfig

    trainer = {"trainer": TrainerConfig, "learner": LearnerConfig}
    check_environment({"STREAM_APP_TRAINER_BATCH_MAX": "1", "STREAM_APP_LEARNER_DIM": "8",
                       "STREAM_APP_SCORER_ANYTHING": "x", "STREAM_APP_TEST_KILLS": "3",
                       "STREAM_APP_TOPIC_PREFIX": "p.", "OTHER": "x"}, trainer)
    with pytest.raises(ConfigError, match=r"STREAM_APP_TRAINER_BATCH_MAXX \(did you mean "
                                          r"STREAM_APP_TRAINER_BATCH_MAX\?\)"):
        check_environment({"STREAM_APP_TRAINER_BATCH_MAXX": "1"}, trainer)
    with pytest.raises(ConfigError, match="STREAM_APP_BOOTSTRAP_SERVER "):
        check_environment({"STREAM_APP_BOOTSTRAP_SERVER": "a:1"}, {})
    with pytest.raises(ConfigError, match="STREAM_APP_KAFKA_BOOTSTRAP_SERVERS"):
        check_environment({"STREAM_APP_KAFKA_BOOTSTRAP_SERVERS": "a:1"}, trainer)
    with pytest.raises(ConfigError, match=r"STREAM_APP_CLIENT; unset"):  # no far-off guess
        check_environment({"STREAM_APP_CLIENT": "x"}, trainer)
    monkeypatch.setenv("STREAM_APP_SCORER_BATCH_MAXX", "1")
    assert main(["scorer", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert "STREAM_APP_SCORER_BATCH_MAXX (did you mean STREAM_APP_SCORER_BATCH_MAX?)" in \
        capsys.readouterr().err
    monkeypatch.delenv("STREAM_APP_SCORER_BATCH_MAXX")
    monkeypatch.setenv("STREAM_APP_BATCH_MAX", "1")  # the section left out
    assert main(["trainer", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert "(did you mean STREAM_APP_TRAINER_BATCH_MAX?)" in capsys.readouterr().err


def test_tuple_settings_from_the_environment_and_learner_flags() -> None:
    from stream_app.cli.trainer import _typed
    from stream_app.core import LearnerConfig

    env = {"STREAM_APP_LEARNER_ADAM_BETAS": "0.8, 0.99"}
    assert build(LearnerConfig, "learner", {}, env, {}).adam_betas == (0.8, 0.99)
    flags = _typed(LearnerConfig, {"adam_betas": "0.5,0.9"})
    assert build(LearnerConfig, "learner", {}, env, flags).adam_betas == (0.5, 0.9)
    with pytest.raises(ConfigError, match="must be 2 comma-separated values"):
        build(LearnerConfig, "learner", {}, {"STREAM_APP_LEARNER_ADAM_BETAS": "0.9"}, {})
    with pytest.raises(ConfigError, match=r"-L adam_betas='0.9,x' is not a valid float,float"):
        _typed(LearnerConfig, {"adam_betas": "0.9,x"})
    assert build(LearnerConfig, "learner", {"adam_betas": [0.8, 0.99]}, {}, {}).adam_betas \
        == (0.8, 0.99)
    for bad in ([0.9], [0.9, "x"], 0.9):
        with pytest.raises(ConfigError, match=r"\[learner\] adam_betas must be"):
            build(LearnerConfig, "learner", {"adam_betas": bad}, {}, {})


@pytest.mark.parametrize(("make", "message"), [
    # confluent-kafka's consume() takes at most 1M: a traceback at the first poll
    (lambda: TrainerConfig(batch_max=2_000_000), "trainer.batch_max must be in 1..1,000,000"),
    (lambda: ScorerConfig(load_batch=2_000_000), "scorer.load_batch must be at most 1,000,000"),
    # not a traceback but a silent change: exclude_seen then excluded nothing
    (lambda: ScorerConfig(history_max=0), "scorer.history_max must be >= 1"),
    # the watchdog exited 75 on every idle poll
    (lambda: TrainerConfig(batch_wait_ms=6_000, stall_timeout_s=3),
     r"batch_wait_ms \(6000\) must be at most half of trainer.stall_timeout_s \(3 s\)"),
    (lambda: ScorerConfig(batch_wait_ms=6_000, stall_timeout_s=3),
     r"batch_wait_ms \(6000\) must be at most half of scorer.stall_timeout_s \(3 s\)"),
    (lambda: ScorerConfig(stall_timeout_s=0.5), r"scorer.stall_timeout_s must be in 1..86400"),
    # ENAMETOOLONG at the restore, a traceback
    (lambda: TrainerConfig(group_id="g" * 200, instance_id="i" * 60, snapshot_dir="snaps"),
     "snapshot file .* would be 274 bytes, over the 255"),
    # .snapshot.tmp is written first: 254 bytes passed, then every write failed
    (lambda: TrainerConfig(group_id="g" * 200, instance_id="i" * 44, snapshot_dir="snaps"),
     "snapshot file .* would be 258 bytes, over the 255"),
    # allocated whole at start: a traceback or an out-of-memory kill
    (lambda: LearnerConfig(replay_capacity=10**10), "replay_capacity must be at most"),
    # float32 rows went inf/NaN: applied (the changelog refused them), or every batch with
    # a new item dead-lettered as non-finite
    (lambda: LearnerConfig(lr=1e39), "learner.lr must be at most 1000"),
    (lambda: LearnerConfig(init_std=1e39), "learner.init_std must be at most 1000"),
])
def test_values_that_failed_later_with_a_traceback_are_refused_up_front(
        make: Any, message: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=message):
        make()


def test_a_millisecond_setting_our_timing_cannot_read_is_a_config_error() -> None:
    """librdkafka reads `600000ms` as 600000; float() raised ValueError after the consumer
    was made."""
    kafka = KafkaConfig(client={"max.poll.interval.ms": "600000ms"})
    with pytest.raises(ConfigError, match="-X max.poll.interval.ms='600000ms': give a whole"):
        ms_setting(kafka, "max.poll.interval.ms", 300_000)
    assert ms_setting(KafkaConfig(client={"max.poll.interval.ms": " 600000"}),
                      "max.poll.interval.ms", 1) == 600_000
    with pytest.raises(ConfigError, match="whole number"):  # int() read 1,000,000
        ms_setting(KafkaConfig(client={"transaction.timeout.ms": "1000_000"}),
                   "transaction.timeout.ms", 30_000)


def test_a_bad_topic_prefix_is_reported_as_one(capsys: pytest.CaptureFixture[str]) -> None:
    # The group id is derived from the prefix; the prefix must be the one named.
    assert main(["trainer", "--topic-prefix", "bad prefix!",
                 "--bootstrap-servers", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "topic_prefix may only hold" in err and "group" not in err


def test_a_long_topic_prefix_says_the_default_group_id_needs_replacing(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A valid prefix of 183-200 characters made the derived group id too long, and the
    error named only trainer.group_id, which the user never set."""
    assert main(["trainer", "--topic-prefix", "a" * 190,
                 "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert "prefix over 182 characters needs its own --group-id" in capsys.readouterr().err


def test_an_instance_id_that_would_overflow_the_model_version_is_refused() -> None:
    TrainerConfig(instance_id="a" * 100)
    with pytest.raises(ConfigError, match="instance_id must be at most 100 characters"):
        TrainerConfig(instance_id="a" * 101)


def test_snapshots_with_another_partitioner_are_refused(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A snapshot's offsets are where the default partitioner puts our rows."""
    snap = TrainerConfig(snapshot_dir=str(tmp_path))
    check_with_client(snap, {"partitioner": "consistent_random"})
    check_with_client(TrainerConfig(), {"partitioner": "murmur2_random"})  # no snapshots
    with pytest.raises(ConfigError, match="snapshot_dir needs librdkafka's default partitioner"):
        check_with_client(snap, {"topic.partitioner": "murmur2_random"})
    assert main(["trainer", "--snapshot-dir", str(tmp_path), "-X", "partitioner=random",
                 "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert "Drop -X partitioner" in capsys.readouterr().err


def test_settings_a_later_client_would_refuse_are_refused_before_any_long_work(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The trainer refused another assignor only when it made its group consumer, after
    restoring the whole changelog; the scorer's tail took a -X enable.partition.eof=false
    and then never saw the end of a partition whose last offsets are markers."""
    check_with_client(TrainerConfig(), {"partition.assignment.strategy": "RANGE"})
    assert main(["trainer", "-X", "partition.assignment.strategy=roundrobin",
                 "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert "needs 'range'" in capsys.readouterr().err
    kafka = KafkaConfig(bootstrap_servers="127.0.0.1:1",
                        client={"enable.partition.eof": "false"})
    with pytest.raises(ConfigConflictError, match=r"enable.partition.eof.*\[kafka.client\]"):
        TailReader(kafka, "t", client_id="c").open()


def test_a_future_allowance_that_would_expire_every_row_is_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    """One event `max_future_ms` ahead moves the learner's clock that far: with an idle
    TTL not ten times longer, it evicts rows that were not idle."""
    day = 86_400_000
    check_with_learner(TrainerConfig(), LearnerConfig())  # no TTL: anything goes
    check_with_learner(TrainerConfig(max_future_ms=day), LearnerConfig(idle_ttl_ms=10 * day))
    with pytest.raises(ConfigError, match="at most a tenth of learner.idle_ttl_ms"):
        check_with_learner(TrainerConfig(max_future_ms=day), LearnerConfig(idle_ttl_ms=day))
    assert main(["trainer", "-L", f"idle_ttl_ms={day}", "--bootstrap-servers",
                 "127.0.0.1:1"]) == 2
    assert "Lower trainer.max_future_ms to 8640000 or less" in capsys.readouterr().err
    assert main(["trainer", "-L", "seed=18446744073709551616", "--bootstrap-servers",
                 "127.0.0.1:1"]) == 2
    assert "learner.seed must be at most" in capsys.readouterr().err


def test_unreadable_or_odd_config_input_is_a_config_error_not_a_traceback(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Found by a review: each of these ended in a traceback (exit 1) or was silently taken."""
    latin = tmp_path / "c.toml"
    latin.write_bytes(b"[kafka]\ntopic_prefix = \"caf\xe9\"\n")
    assert main(["topics", "create", "--config", str(latin)]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err
    props = tmp_path / "k.properties"
    props.write_bytes(b"sasl.username=caf\xe9\n")
    assert main(["topics", "create", "--kafka-config", str(props)]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err
    # `key = value`: the value's leading blank is not part of it.
    props.write_text("sasl.username = alice\n# comment\nsasl.password= s3cret \n")
    assert read_properties(props) == {"sasl.username": "alice", "sasl.password": "s3cret"}
    with pytest.raises(ConfigError, match="known: .*dim"):
        build(LearnerConfig, "learner", {}, {}, {"dimm": 3})
    with pytest.raises(ConfigError, match="stats_file is empty"):
        TrainerConfig(stats_file="")
    assert main(["trainer", "--bootstrap-servers", "127.0.0.1:1", "--metrics-port", "0",
                 "--stats-file", str(tmp_path / "no" / "such" / "x.jsonl")]) == 2
    assert "cannot open trainer.stats_file" in capsys.readouterr().err
    assert main(["request", "u1", "--candidates", " , ", "--bootstrap-servers",
                 "127.0.0.1:1"]) == 2
    assert "lists no item ids" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "reason"), [
    (["u" * 300], "id_too_long"), (["a\u0007b"], "bad_id_chars"),
    (["u1", "--candidates", ",".join(f"i{k}" for k in range(10_001))], "too_many_candidates"),
])
def test_a_request_the_scorer_would_refuse_is_refused_before_it_is_sent(
        args: list[str], reason: str, capsys: pytest.CaptureFixture[str]) -> None:
    """It was sent, and came back refused (exit 1), or timed out with no scorer running."""
    assert main(["request", *args, "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert f"the scorer would refuse this request: {reason}" in capsys.readouterr().err


@pytest.mark.parametrize("args", [
    ["request", "u\udcff42"], ["request", "u1", "--candidates", "a,\udcff"],
    ["request", "u1", "--exclude", "\udcff"], ["forget", "u\udcff42"],
])
def test_an_id_that_is_not_utf8_text_is_refused_by_the_command_line(
        args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Bytes that are not UTF-8 on the command line raised TypeError in orjson (exit 1)."""
    with pytest.raises(SystemExit) as caught:
        main([*args, "--bootstrap-servers", "127.0.0.1:1"])
    assert caught.value.code == 2
    assert "is not UTF-8 text" in capsys.readouterr().err


def test_request_keep_seen_asks_for_seen_items(monkeypatch: pytest.MonkeyPatch) -> None:
    """`exclude_seen` had no flag; --keep-seen sets it false, and it is true without."""
    import stream_app.client

    asked: list[bool] = []
    monkeypatch.setattr(stream_app.client, "request_command",
                        lambda *_a, **kw: asked.append(kw["exclude_seen"]) or 0)
    assert main(["request", "u1", "--keep-seen"]) == 0
    assert main(["request", "u1"]) == 0
    assert asked == [False, True]


def test_a_bad_line_that_stops_a_replay_says_what_was_sent_and_dropped(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    import stream_app.replay
    from stream_app.sources import SourceError

    def stopped(*_a: object, **_kw: object) -> int:
        err = SourceError(tmp_path / "e.csv", 7, "bad ts")
        err.sent, err.dropped = 5, 2
        err.refused, err.first_refusal = 3, "Broker: Message size too large"
        raise err

    monkeypatch.setattr(stream_app.replay, "replay_file", stopped)
    assert main(["replay", str(tmp_path / "e.csv")]) == 2
    # The refused ones were missing: a re-run from after line 7 lost them silently.
    assert ("(5 record(s) sent before it, 2 dropped unacknowledged (some may have been "
            "written), 3 refused by the broker "
            "(Broker: Message size too large))") in capsys.readouterr().err


def test_demo_refuses_a_timeout_that_never_ends() -> None:
    from stream_app.demo.run import DemoOptions

    with pytest.raises(ConfigError, match="--timeout"):
        DemoOptions(data=None, timeout_s=float("nan"))


def test_restore_can_be_set_back_by_flag() -> None:
    """`restore = false` in a file or the env could not be undone on the command line."""
    from stream_app.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["trainer"]).restore is None  # the file, env or default decides
    assert parse(["trainer", "--restore"]).restore is True
    assert parse(["trainer", "--no-restore"]).restore is False
    file = {"restore": False}
    assert build(TrainerConfig, "trainer", file, {}, {"restore": True}).restore is True


def test_messages_name_the_setting_once_and_the_flag_given(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trainer", "-L", "lr=-1", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert "configuration error: learner.lr must be > 0" in capsys.readouterr().err
    assert main(["topics", "create", "--partitions", "0", "--bootstrap-servers",
                 "127.0.0.1:1"]) == 2
    assert "configuration error: --partitions must be in 1..2147483647, got 0" in \
        capsys.readouterr().err


@pytest.mark.parametrize(("argv", "says"), [
    (["topics", "create", "--partitions", "3000000000"], "--partitions must be in 1.."),
    (["topics", "create", "--replication-factor", "40000"], "--replication-factor must be"),
    (["generate", "--seed", "1" + "0" * 240], "--seed must be in 0.."),
    (["demo", "--limit", "100000000000000000000"], "demo --limit must be 1..10,000,000"),
])
def test_numbers_past_what_the_command_can_hold_are_refused(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str],
        says: str) -> None:
    """Each was a traceback: OverflowError making the topics, an event id too long to
    encode, or numpy refusing 1e20 events in memory (CLI review)."""
    extra = ["--report-dir", str(tmp_path / "r")] if argv[0] == "demo" else []
    assert main([*argv, "--bootstrap-servers", "127.0.0.1:1", *extra]) == 2
    assert says in capsys.readouterr().err


def test_replay_limits_past_a_64_bit_count_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """islice raised ValueError on them, a traceback (exit 1)."""
    events = tmp_path / "e.jsonl"
    events.write_text("")
    for limit in ("0", "99999999999999999999"):
        assert main(["replay", str(events), "--limit", limit, "--bootstrap-servers",
                     "127.0.0.1:1"]) == 2
        assert "--limit must be 1.." in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--port", "9093"], ["--bootstrap-servers", "h:9092"],
                                  ["--sasl-user", "u"], ["--sasl-password", "p"]])
@pytest.mark.parametrize("action", ["stop", "status"])
def test_broker_stop_and_status_refuse_the_flags_they_would_ignore(
        action: str, flag: list[str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`broker stop --port 9093` stopped (or reported) the broker of the state folder,
    whatever its port: a flag that reads as choosing a broker must not be ignored."""
    assert main(["broker", action, "--state-dir", str(tmp_path), *flag]) == 2
    err = capsys.readouterr().err
    assert flag[0] in err and "apply to `broker start` only" in err


def test_a_request_for_an_empty_user_id_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    """It went out and came back as 'missing_key: record has no key' (helper review)."""
    assert main(["request", "", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert "the user id is empty" in capsys.readouterr().err



@pytest.mark.parametrize("args", [["replay", "e.jsonl", "--limt", "3"], ["trainer", "--bogus"],
                                  ["topics", "create", "--partitons", "2"]])
def test_an_unknown_flag_is_reported_with_its_commands_usage(
        args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """argparse reported it with the top-level usage, which lists commands, not their flags."""
    with pytest.raises(SystemExit) as caught:
        main(args)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert f"stream-app {args[0]}: error: unrecognized arguments: " in err
    assert "{broker,topics" not in err


def test_the_request_output_says_how_many_candidates_the_model_lacks() -> None:
    from stream_app.client import format_prediction
    from stream_app.events import Prediction

    pred = Prediction(request_id="r", user_id="u", items=(), model_version="v", fallback=False,
                      latency_ms=1.0, unknown_candidates=3)
    assert "3 candidate(s) left out: the model has no row for them" in format_prediction(pred)


def test_a_changelog_the_trainer_cannot_restore_exits_2(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """It exited 1, which a supervisor restarts on, into the same record (walkthrough)."""
    import stream_app.trainer
    from stream_app.kafka.exceptions import ChangelogError

    def restore_fails(*_a: object, **_kw: object) -> int:
        raise ChangelogError("the embeddings changelog holds a record ... (key 'item:zzz')")

    monkeypatch.setattr(stream_app.trainer, "run_trainer", restore_fails)
    assert main(["trainer", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert "(key 'item:zzz')" in capsys.readouterr().err


def test_names_with_a_trailing_newline_are_refused() -> None:
    """`re.match` with `$` accepts a final "\\n" (an env file or a secret read from a file
    often ends in one): the prefix failed later at the broker, and a SASL user split the
    JAAS line of server.properties."""
    from stream_app.kafka.broker import BrokerSettings
    from stream_app.kafka.exceptions import BrokerError

    with pytest.raises(ConfigError, match="topic_prefix may only hold"):
        TopicNames(prefix="shop.\n")
    with pytest.raises(ConfigError, match="trainer.group_id must be"):
        build(TrainerConfig, "trainer", {}, {}, {"group_id": "g\n"})
    with pytest.raises(ConfigError, match="trainer.device"):
        build(TrainerConfig, "trainer", {}, {}, {"device": "cpu\n"})
    with pytest.raises(ConfigError, match="scorer.device"):
        build(ScorerConfig, "scorer", {}, {}, {"device": "cpu\n"})
    with pytest.raises(BrokerError, match="sasl_user must be"):
        BrokerSettings(sasl_user="alice\n", sasl_password="pw")  # noqa: S106


@pytest.mark.parametrize("action", ["status", "stop"])
def test_the_broker_password_variable_does_not_block_stop_and_status(
        action: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The variable `--sasl-password` recommends over the flag was read by every action, and
    stop and status (which refuse --sasl-user) then refused "a password without a user"."""
    monkeypatch.setenv("STREAM_APP_BROKER_SASL_PASSWORD", "secret")
    code = main(["broker", action, "--state-dir", str(tmp_path)])
    out = capsys.readouterr()
    assert "needs both a user and a password" not in out.err
    assert code in (0, 1) and "no broker" in out.out + out.err


def test_every_producer_and_the_changelog_take_the_largest_row_the_codecs_accept() -> None:
    """librdkafka's default message.max.bytes (1,000,000) refused the largest embedding rows
    the schema allows (1 MiB): in the trainer's transaction a fatal error, met again at the
    same batch after each restart (codec review)."""
    from stream_app.codec.wire import MESSAGE_MAX_BYTES
    from stream_app.kafka.admin import TopicPlan, topic_specs
    from stream_app.kafka.clients import producer_config

    room = MESSAGE_MAX_BYTES + 4096  # a row, its key (at most 1 KiB) and the batch framing
    for transactional_id in (None, "trainer-0"):
        conf = producer_config(KafkaConfig(), "t", transactional_id=transactional_id)
        assert int(conf["message.max.bytes"]) >= room
    specs = {t.topic: t for t in topic_specs(TopicNames(), TopicPlan())}
    assert int(specs["embeddings"].config["max.message.bytes"]) >= room


def test_an_erased_users_older_rows_are_compacted_within_a_day() -> None:
    """With only the dirty ratio, a large table with few writes kept a forgotten user's older
    rows readable for weeks (helper review of the forget path)."""
    from stream_app.kafka.admin import TopicPlan, topic_specs

    specs = {t.topic: t.config for t in topic_specs(TopicNames(), TopicPlan())}
    assert int(specs["embeddings"]["max.compaction.lag.ms"]) == 24 * 3600 * 1000
    assert int(specs["embeddings"]["segment.ms"]) <= 24 * 3600 * 1000


def test_a_config_file_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """TOML refused it as "Invalid statement (at line 1, column 1)", an invisible cause
    (CLI review); --kafka-config and the event files already took one."""
    from stream_app.config_load import read_file

    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf[trainer]\nbatch_max = 5\n")
    assert read_file(path) == {"trainer": {"batch_max": 5}}
