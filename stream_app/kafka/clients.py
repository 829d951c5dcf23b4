"""librdkafka settings for our clients, merged defaults < user < enforced.

A user setting that conflicts with one we enforce (e.g. `enable.auto.commit`
for the exactly-once trainer) is an error, never silently overridden: the
guarantees in DESIGN.md depend on them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaException, Producer

from stream_app.codec.wire import MESSAGE_MAX_BYTES
from stream_app.config import ConfigError, KafkaConfig, redact
from stream_app.kafka.client_logs import ClientLog, ErrorLog
from stream_app.kafka.exceptions import ConfigConflictError
from stream_app.kafka.scopes import for_consumer, for_producer

log = logging.getLogger(__name__)

PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger.ms": 5,
    "compression.type": "lz4",
    "enable.idempotence": True,
    "acks": "all",
    # Room for any record the codecs accept (1 MiB) with its key and headers: librdkafka's
    # default, 1,000,000 bytes, refused the largest embedding rows the schema allows, and
    # in the trainer's transaction that is fatal (a crash at the same batch each restart).
    "message.max.bytes": MESSAGE_MAX_BYTES + 64 * 1024,
}
TRANSACTIONAL_DEFAULTS: dict[str, Any] = {
    # A killed trainer leaves its transaction open; read_committed readers of
    # its partitions (the scorer, a trainer restoring or taking over) stall
    # until the broker aborts it after this long. librdkafka's default is 60 s.
    # A restart with the same transactional.id aborts it at once
    # (init_transactions); this bounds the wait when nobody restarts it.
    # Our transactions last milliseconds (produce + commit, after learning).
    "transaction.timeout.ms": 30_000,
}
CONSUMER_DEFAULTS: dict[str, Any] = {
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "cooperative-sticky",
    "fetch.wait.max.ms": 50,
    "session.timeout.ms": 10_000,
    "heartbeat.interval.ms": 1_000,
}
MAX_POLL_INTERVAL_MS = 300_000
"""librdkafka's max.poll.interval.ms when -X does not set it; not sent, only read by our
own timing (the consumer's poll budget, the trainer's batch cap)."""


def ms_setting(kafka: KafkaConfig, key: str, default: int) -> int:
    """A librdkafka millisecond setting as an int, for our own timing; ConfigError when a
    `-X` value is not plain digits (librdkafka reads `600000ms` as 600000, float() did not).
    """
    value = kafka.client.get(key, default)
    text = str(value).strip()
    if not text.isascii() or not text.isdigit():  # int() takes "1000_000", which
        # librdkafka reads as 1000
        raise ConfigError(f"-X {key}={value!r}: give a whole number of milliseconds, "
                          f"e.g. -X {key}={default}")
    return int(text)


LATENCY_PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger.ms": 1,
    "socket.nagle.disable": True,
}
"""Request/response producers (scorer answers, client requests): at most 1 ms of batching.

Not for the trainer, which wants throughput. Still defaults: a user -X wins."""

LATENCY_CONSUMER_DEFAULTS: dict[str, Any] = {
    "fetch.wait.max.ms": 10,
    "fetch.min.bytes": 1,
    "socket.nagle.disable": True,
}
"""Request/response consumers: the broker answers a fetch as soon as one byte is there,
and an idle fetch is re-sent every 10 ms. Defaults: a user -X wins."""


REPORT_EOF: Mapping[str, Any] = {"enable.partition.eof": True}
"""Enforced on every consumer that must tell a caught-up partition from one whose next
record is still on the broker (the trainer's, the scorer's, the tail, the changelog read);
checked up front by the trainer and the scorer before anything starts."""


def merge(defaults: Mapping[str, Any], user: Mapping[str, str],
          enforced: Mapping[str, Any]) -> dict[str, Any]:
    """defaults < user < enforced; a conflicting user value raises.

    >>> merge({"a": 1}, {"a": "2"}, {"b": True})
    {'a': '2', 'b': True}
    """
    for key, value in enforced.items():
        if key in user and _spelled(user[key], value) != _text(value).lower():
            raise ConfigConflictError(
                f"librdkafka setting {key}={user[key]} conflicts with {key}={_text(value)}, "
                "which stream_app needs for its guarantees; remove it from -X, --kafka-config "
                "or [kafka.client] in --config"
            )
    return {**defaults, **user, **enforced}


_BOOLS = {"true": "true", "t": "true", "1": "true", "false": "false", "f": "false", "0": "false"}
"""librdkafka's spellings of a boolean setting."""


def _spelled(user_value: Any, ours: Any) -> str:
    """The user's value as ours is spelled, to compare: `-X enable.auto.commit=0` is ours.

    >>> _spelled("0", False), _spelled("T", True), _spelled("Range", "range")
    ('false', 'true', 'range')
    """
    text = str(user_value).strip().lower()
    if ours == "all" and text == "-1":  # acks: librdkafka's other spelling of all
        return "all"
    return _BOOLS.get(text, text) if isinstance(ours, bool) else text


def _text(value: Any) -> str:
    """A setting as librdkafka spells it (`false`, not Python's `False`)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _base(kafka: KafkaConfig, client_id: str) -> dict[str, Any]:
    return {"bootstrap.servers": kafka.bootstrap_servers, "client.id": client_id,
            "error_cb": ErrorLog(client_id)}


DURABLE_PRODUCER: dict[str, Any] = {"enable.idempotence": True, "acks": "all"}
"""Enforced on the producers of events and forget requests: with `-X acks=0` librdkafka
reports every record delivered without asking the broker, so a replay said "replayed N
events" of records no broker took; without idempotence, retries may reorder or repeat a
user's events (config review)."""

USER_PARTITIONERS = frozenset({"consistent_random", "consistent", "murmur2_random", "murmur2"})
"""Partitioners that put a user id (a non-empty key) where librdkafka's default or Java's
does, as the trainer expects (`partitioners`)."""


def check_user_partitioner(client: Mapping[str, str]) -> None:
    """Refuse a partitioner that spreads one user's records over partitions (`random`,
    `fnv1a`): the trainer would see their events and forget requests apart.

    >>> check_user_partitioner({"partitioner": "murmur2_random"})
    >>> check_user_partitioner({"topic.partitioner": "random"})
    Traceback (most recent call last):
    ...
    stream_app.config.ConfigError: librdkafka setting topic.partitioner=random: ...
    """
    for key in ("partitioner", "topic.partitioner"):
        value = str(client.get(key, "consistent_random")).strip().lower()
        if value not in USER_PARTITIONERS:
            raise ConfigError(
                f"librdkafka setting {key}={value}: events and forget requests need a "
                "partitioner that puts a user id where librdkafka's default or Java's does "
                f"({', '.join(sorted(USER_PARTITIONERS))}), or a user's events are split "
                "over partitions (README, Partitioner)")


def check_message_room(kafka: KafkaConfig, need: int, what: str) -> None:
    """ConfigError when our producers would refuse a record of `need` bytes (a -X
    message.max.bytes under it): refused at produce() for good, the process stopped on
    that record at every restart (the scorer on an answer; the trainer on a row or a
    dead letter, so one large junk event stopped it). A value that is not a number is
    librdkafka's to refuse."""
    value = str(producer_config(kafka, "check")["message.max.bytes"]).strip()
    if value.isascii() and value.isdigit() and int(value) < need:
        raise ConfigError(f"-X message.max.bytes={value} is under the {need} bytes {what} "
                          f"may take: raise it to at least {need}, or leave it unset")


def producer_config(kafka: KafkaConfig, client_id: str, *,
                    transactional_id: str | None = None,
                    enforce: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """`extra` are more defaults (e.g. LATENCY_PRODUCER_DEFAULTS): a user value still wins;
    `enforce` are not (a conflicting one raises)."""
    enforced: dict[str, Any] = _base(kafka, client_id) | dict(enforce or {})
    defaults = PRODUCER_DEFAULTS
    if transactional_id is not None:
        enforced |= {"transactional.id": transactional_id, "enable.idempotence": True}
        defaults = PRODUCER_DEFAULTS | TRANSACTIONAL_DEFAULTS
    return merge({"logger": ClientLog()} | defaults | extra, for_producer(kafka.client), enforced)


def consumer_config(kafka: KafkaConfig, client_id: str, group_id: str, *,
                    read_committed: bool = True, enforce: Mapping[str, Any] | None = None,
                    **extra: Any) -> dict[str, Any]:
    """`extra` are defaults a user value overrides; `enforce` are not (a conflict raises)."""
    reset = str(kafka.client.get("auto.offset.reset", "earliest")).strip().lower()
    if reset == "error":  # an out-of-range offset then stops the partition, and nothing says
        raise ConfigError(
            "-X auto.offset.reset=error: a partition whose committed offset is gone (the "
            "log's retention passed it) would stop being read, with no error to act on. "
            "Use earliest (the default) or latest")
    protocol = str(kafka.client.get("group.protocol", "classic")).lower()
    if protocol != "classic":  # librdkafka's own refusal named session.timeout.ms
        raise ConfigError(
            f"-X group.protocol={protocol}: stream_app's consumer groups need the classic "
            "protocol (their assignors run in the client: the trainer's co-partitioned "
            "range, the scorer's cooperative-sticky by default). Remove it from -X, "
            "--kafka-config or [kafka.client]")
    enforced = _base(kafka, client_id) | {
        "group.id": group_id,
        "enable.auto.commit": False,
        "isolation.level": "read_committed" if read_committed else "read_uncommitted",
    } | dict(enforce or {})
    return merge({"logger": ClientLog()} | CONSUMER_DEFAULTS | extra, for_consumer(kafka.client),
                 enforced)


def make_producer(kafka: KafkaConfig, client_id: str, *,
                  transactional_id: str | None = None,
                  enforce: Mapping[str, Any] | None = None, **extra: Any) -> Producer:
    conf = producer_config(kafka, client_id, transactional_id=transactional_id,
                           enforce=enforce, **extra)
    log.debug("producer config %s", redact({k: str(v) for k, v in conf.items()}))
    return created(Producer, conf)


def make_consumer(kafka: KafkaConfig, client_id: str, group_id: str, *,
                  read_committed: bool = True, enforce: Mapping[str, Any] | None = None,
                  **extra: Any) -> Consumer:
    conf = consumer_config(kafka, client_id, group_id, read_committed=read_committed,
                           enforce=enforce, **extra)
    log.debug("consumer config %s", redact({k: str(v) for k, v in conf.items()}))
    return created(Consumer, conf)


def check_consumer_settings(kafka: KafkaConfig, client_id: str, group_id: str, *,
                            enforce: Mapping[str, Any] | None = None) -> None:
    """ConfigError now for a consumer setting librdkafka refuses, or one that conflicts with
    `enforce`. librdkafka checks values only when a client is made, and the first one
    made was the broker check's producer-side client: with no broker, a bad consumer-only
    value (-X fetch.wait.max.ms=abc) was reported as "no broker" (exit 75, try again)."""
    make_consumer(kafka, client_id, group_id, enforce=enforce).close()  # no broker needed


def check_producer_settings(kafka: KafkaConfig, client_id: str, *,
                            transactional_id: str | None = None) -> None:
    """ConfigError now for producer settings librdkafka refuses together (-X acks=1 with
    idempotence on; -X message.timeout.ms over transaction.timeout.ms): it checks them
    only when a producer is made, which came after the broker check, so with no broker
    they were reported as "no broker" (exit 75, try again)."""
    make_producer(kafka, client_id, transactional_id=transactional_id)  # no broker needed


T = TypeVar("T")


def created(factory: Callable[[dict[str, Any]], T], conf: dict[str, Any]) -> T:
    """A client of `conf`, or a `ConfigError` naming the setting librdkafka refused.

    librdkafka checks its settings only when a client is made; an unknown key
    or a bad value (`-X`, `--kafka-config`, `[kafka.client]`) is then the
    user's configuration error, not a crash.
    """
    try:
        return factory(conf)
    except KafkaException as exc:
        raise ConfigError(f"librdkafka refused the client settings (-X, --kafka-config, "
                          f"[kafka.client]): {exc.args[0].str()}") from exc
    except (TypeError, ValueError, AttributeError) as exc:
        # confluent-kafka's own keys (`logger`, `*_cb`, `delivery.report.only.error`) want
        # Python objects: as -X text they raised here, a traceback and exit 1.
        raise ConfigError(f"the client settings (-X, --kafka-config, [kafka.client]) hold a "
                          f"value confluent-kafka cannot take: {exc}") from exc


LEAVE_GROUP_WAIT_S = 5.0
"""How long `leave_group` serves the revoke in poll() before it closes anyway (a broker
that does not answer)."""


def leave_group(consumer: Consumer, timeout_s: float = LEAVE_GROUP_WAIT_S) -> None:
    """Close a group member: unsubscribe and serve the revoke in poll() first, then close().

    Revoked inside close() instead, confluent-kafka's rebalance callback asks
    librdkafka for the rebalance protocol, which can block for good once the
    consumer is closing (librdkafka#4041), holding the GIL: a scorer stopped
    while its group rebalanced hung the whole process. Records polled here are
    dropped: nothing was done with them, so the next owner reads them again.
    """
    try:
        consumer.unsubscribe()
        deadline = time.monotonic() + timeout_s
        while consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(0.1)
    except KafkaException as exc:
        log.warning("leaving the group before close failed: %s", exc)
    finally:
        consumer.close()
