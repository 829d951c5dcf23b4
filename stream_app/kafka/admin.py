"""Topics and reachability: create the product's topics, check they exist.

`embeddings` is compacted: it holds the latest state of every row and is the
trainer's changelog, so it must never be deleted by retention.
"""

from __future__ import annotations

import logging
import shlex
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient as AdminClient  # re-exported for annotations
from confluent_kafka.admin import ConfigResource, NewTopic, ResourceType  # type: ignore[attr-defined]

from stream_app.codec.wire import MESSAGE_MAX_BYTES
from stream_app.config import KafkaConfig, TopicNames
from stream_app.kafka.clients import check_producer_settings, created, merge
from stream_app.kafka.exceptions import (
    AuthenticationError,
    BrokerError,
    BrokerUnavailable,
    TopicError,
)
from stream_app.kafka.scopes import for_producer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicPlan:
    """How many partitions each topic gets. Events are keyed by user, so the
    event topics' partition count bounds how many trainers can share the work."""

    event_partitions: int = 3
    embeddings_partitions: int = 3
    request_partitions: int = 3
    replication_factor: int = 1

    def __post_init__(self) -> None:
        for name in ("event_partitions", "embeddings_partitions", "request_partitions",
                     "replication_factor"):
            if getattr(self, name) < 1:
                raise TopicError(f"topics.{name} must be >= 1, got {getattr(self, name)}")


def admin_client(kafka: KafkaConfig) -> AdminClient:
    return created(AdminClient,
                   merge({}, for_producer(kafka.client),
                         {"bootstrap.servers": kafka.bootstrap_servers}))


def wait_for_broker(bootstrap: str, timeout_s: float = 10.0, *, raise_on_timeout: bool = True,
                    client: dict[str, str] | None = None) -> bool:
    """True once the cluster answers a metadata request within `timeout_s`."""
    auth_errors: list[KafkaError] = []
    errors: list[KafkaError] = []

    def on_error(err: KafkaError) -> None:
        errors.append(err)
        if err.code() == KafkaError._AUTHENTICATION:  # noqa: SLF001
            auth_errors.append(err)

    conf: dict[str, Any] = {**(client or {}), "bootstrap.servers": bootstrap,
                            "error_cb": on_error}
    # Quiet: an unreachable broker is the expected answer while we wait.
    conf.setdefault("log_level", 0)
    deadline = time.monotonic() + timeout_s
    admin = created(AdminClient, conf)
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=max(0.5, min(1.0, deadline - time.monotonic())))
            return True
        except KafkaException as exc:
            last = exc
        admin.poll(0.2)  # serves error_cb
        if auth_errors:
            # Retrying cannot help: fail fast and say what to fix. librdkafka's
            # message names the mechanism and state, never the password.
            raise AuthenticationError(
                f"authentication failed at {bootstrap}: {auth_errors[0].str()}; check "
                "sasl.username / sasl.password / sasl.mechanisms / security.protocol (-X)")
    if raise_on_timeout:
        hint = "start one with `stream-app broker start` or pass --bootstrap-servers"
        if _listening(bootstrap):  # a listener there, wrong protocol or still starting
            hint = ("something listens there: a broker still starting, or one that wants "
                    "another security.protocol, SASL or SSL settings (-X, --kafka-config)")
        reason = errors[-1].str() if errors else last
        raise BrokerUnavailable(
            f"no Kafka broker answered at {bootstrap} within {timeout_s:.0f}s ({reason}); "
            f"{hint}")
    return False


def _listening(bootstrap: str) -> bool:
    """Whether the first bootstrap address accepts a TCP connection."""
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=1):
            return True
    except (OSError, ValueError):
        return False


COMPACTION_LAG_MAX_MS = 24 * 3600 * 1000


def topic_specs(names: TopicNames, plan: TopicPlan) -> list[NewTopic]:
    """The product's topics. With 3+ replicas a write must reach a majority of them (2 of
    3, 3 of 5): our producers wait for every in-sync replica (acks=all, unless -X says
    otherwise), but under the broker default of 1 an acknowledged record, a committed
    transaction's rows among them, can sit on the leader alone and die with it.

    >>> [t.config for t in topic_specs(TopicNames(), TopicPlan(replication_factor=5))][0]
    {'min.insync.replicas': '3'}
    >>> topic_specs(TopicNames(), TopicPlan())[0].config
    {}
    """
    rf = plan.replication_factor
    durable = {"min.insync.replicas": str(rf // 2 + 1)} if rf >= 3 else {}
    # Rows up to the codecs' 1 MiB with their keys: the broker's default (1,048,588) is
    # within a key's length of it.
    # max.compaction.lag.ms: a forgotten user's older rows stay readable until the cleaner
    # passes, and with a large table and few writes the dirty ratio alone could put that
    # off for weeks; this bounds it at a day past the row's segment.
    compact = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1",
               "segment.ms": "600000", "max.compaction.lag.ms": str(COMPACTION_LAG_MAX_MS),
               "max.message.bytes": str(MESSAGE_MAX_BYTES + 64 * 1024), **durable}
    dlq = {"retention.ms": str(30 * 24 * 3600 * 1000), **durable}
    return [
        NewTopic(names.clicks, plan.event_partitions, rf, config=durable),
        NewTopic(names.purchases, plan.event_partitions, rf, config=durable),
        NewTopic(names.embeddings, plan.embeddings_partitions, rf, config=compact),
        NewTopic(names.score_requests, plan.request_partitions, rf, config=durable),
        NewTopic(names.predictions, plan.request_partitions, rf, config=durable),
        NewTopic(names.dlq, 1, rf, config=dlq),
    ]


def create_topics(kafka: KafkaConfig, plan: TopicPlan | None = None,
                  timeout_s: float = 30.0) -> dict[str, str]:
    """Create the product's topics; existing ones are left as they are (idempotent).

    Returns topic -> "created" | "exists", or for a topic that exists with another
    partition count than asked, "exists with N partitions (asked M; left as it is)".
    """
    wait_for_broker(kafka.bootstrap_servers, min(timeout_s, 10.0),
                    client=for_producer(kafka.client))
    admin = admin_client(kafka)
    specs = topic_specs(kafka.topics, plan or TopicPlan())
    futures = admin.create_topics(specs, request_timeout=timeout_s)
    result: dict[str, str] = {}
    for topic, fut in futures.items():
        try:
            fut.result()
            result[topic] = "created"
        except KafkaException as exc:
            err = exc.args[0]
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                result[topic] = "exists"
            else:
                raise TopicError(f"could not create topic {topic}: {err}") from exc
    _wait_visible(admin, list(result), timeout_s)
    if result.get(kafka.topics.embeddings) == "exists":
        require_compacted(admin, kafka.topics.embeddings, timeout_s)
    meta = admin.list_topics(timeout=timeout_s).topics
    for spec in specs:
        have = len(meta[spec.topic].partitions)
        if result[spec.topic] == "exists" and have != spec.num_partitions:
            result[spec.topic] = (f"exists with {have} partitions (asked "
                                  f"{spec.num_partitions}; left as it is)")
    return result


def _wait_visible(admin: AdminClient, topics: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        meta = admin.list_topics(timeout=5)
        if all(t in meta.topics and not meta.topics[t].error for t in topics):
            return
        time.sleep(0.1)
    raise TopicError(f"topics {topics} were created but did not appear within {timeout_s}s")


def check_co_partitioned(counts: dict[str, int]) -> None:
    """TopicError unless every topic of `counts` has as many partitions: a user's events
    are keyed by user id and must land on the same partition number in each.

    >>> check_co_partitioned({"clicks": 3, "purchases": 3})
    >>> check_co_partitioned({"clicks": 3, "purchases": 4})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    stream_app.kafka.exceptions.TopicError: topics must have the same partition count ...
    """
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"{t} has {n}" for t, n in counts.items())
        raise TopicError(
            f"topics must have the same partition count to be co-partitioned, but {shown} "
            "partitions: a user's events are keyed by user id and must land on the same "
            "partition number in each. Recreate them with one count, or run on a new "
            "topic prefix (partitions added to both move users to other partitions: "
            "README, Operations)"
        )


def require_topics(kafka: KafkaConfig, topics: list[str], timeout_s: float = 10.0, *,
                   co_partitioned: Sequence[str] = (), compacted: Sequence[str] = (),
                   record_room: Mapping[str, int] | None = None) -> dict[str, int]:
    """Fail fast, before the first poll, when a topic we need does not exist, when
    the `co_partitioned` topics (the trainer's clicks and purchases) differ in
    partition count, when a `compacted` one (`embeddings`) is not compacted, or when
    a topic of `record_room` (topic -> bytes) takes smaller records (`require_room`).
    Every caller produces, so librdkafka's refusal of the producer settings comes first
    (`check_producer_settings`): after the broker check it read as "no broker".
    Returns the `compacted` topics' delete.retention.ms, where the cluster shows it."""
    check_producer_settings(kafka, "check")
    wait_for_broker(kafka.bootstrap_servers, timeout_s, client=for_producer(kafka.client))
    admin = admin_client(kafka)
    try:
        meta = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise BrokerUnavailable(f"cannot list topics at {kafka.bootstrap_servers}: {exc}") from exc
    missing = [t for t in topics if t not in meta.topics]
    if missing:
        # The prefix spelled out: run as printed, the command made unprefixed topics.
        prefix = f" --topic-prefix {shlex.quote(kafka.topic_prefix)}" if kafka.topic_prefix else ""
        raise TopicError(
            f"missing topic(s): {', '.join(missing)} (topic prefix {kafka.topic_prefix!r}); "
            f"create them with `stream-app topics create{prefix}` (and this command's "
            "--bootstrap-servers and -X settings) or fix --topic-prefix"
        )
    check_co_partitioned({t: len(meta.topics[t].partitions) for t in co_partitioned})
    retention = {topic: require_compacted(admin, topic, timeout_s) for topic in compacted}
    if record_room:
        require_room(admin, record_room, timeout_s)
    return {topic: ms for topic, ms in retention.items() if ms is not None}


def require_compacted(admin: AdminClient, topic: str, timeout_s: float = 10.0) -> int | None:
    """TopicError when `topic` exists with a cleanup.policy that is not compact, or is
    `compact,delete` with a time or size retention; else its delete.retention.ms (None:
    not shown), how long compaction keeps a tombstone.

    The changelog is the model: under `delete` (a topic made by hand, or by a
    broker's auto-create) retention drops rows after retention.ms, and a restore
    then silently loses them; `compact,delete` (set to bound the topic's size)
    drops the rows of every id idle for that long just the same. A cluster that
    will not show the topic's configuration (no DescribeConfigs right) is
    trusted, with a warning.
    """
    resource = ConfigResource(ResourceType.TOPIC, topic)
    try:
        configs = admin.describe_configs([resource], request_timeout=timeout_s)[resource]
        entries = configs.result(timeout=timeout_s)
        policy = str(entries["cleanup.policy"].value)
    except (KafkaException, KeyError, TimeoutError) as exc:
        log.warning("cannot read the cleanup.policy of %s (%s): not checked", topic, exc)
        return None
    policies = {p.strip() for p in policy.split(",")}
    if "compact" in policies and "delete" in policies:
        bounded = [f"{name}={entries[name].value}" for name in ("retention.ms", "retention.bytes")
                   if name in entries and str(entries[name].value) != "-1"]
        if bounded:
            raise TopicError(
                f"topic {topic} has cleanup.policy={policy} with {' and '.join(bounded)}: "
                "retention would delete the rows of ids idle that long, and a restore "
                "would miss them. Make it compact only (kafka-configs --alter --entity-type "
                f"topics --entity-name {topic} --add-config cleanup.policy=compact) or set "
                "retention.ms=-1 and retention.bytes=-1")
    elif "compact" not in policies:
        raise TopicError(
            f"topic {topic} has cleanup.policy={policy}, not compact: retention would delete "
            "rows of the model, and a restore would miss them. Make it compacted "
            f"(kafka-configs --alter --entity-type topics --entity-name {topic} "
            "--add-config cleanup.policy=compact) or recreate it with `stream-app topics "
            "create`")
    retention = entries.get("delete.retention.ms")
    try:
        return None if retention is None else int(str(retention.value))
    except ValueError:
        return None


def require_room(admin: AdminClient, needs: Mapping[str, int], timeout_s: float = 10.0) -> None:
    """TopicError when a topic's max.message.bytes is below the largest record we write to it
    (`needs`: topic -> bytes). The broker refuses such a record for good: a scorer stopped
    on it, unanswered, and every restart (every replica) met the same request again. A
    cluster that will not show the configuration is trusted, with a warning."""
    resources = {topic: ConfigResource(ResourceType.TOPIC, topic) for topic in needs}
    try:
        futures = admin.describe_configs(list(resources.values()), request_timeout=timeout_s)
        limits = {topic: int(str(futures[res].result(timeout=timeout_s)[
            "max.message.bytes"].value)) for topic, res in resources.items()}
    except (KafkaException, KeyError, TimeoutError, ValueError) as exc:
        log.warning("cannot read max.message.bytes of %s (%s): not checked", list(needs), exc)
        return
    for topic, need in needs.items():
        if limits[topic] < need:
            raise TopicError(
                f"topic {topic} has max.message.bytes={limits[topic]}, under the {need} bytes "
                "a record to it may take: the broker would refuse it. Raise it (kafka-configs "
                f"--alter --entity-type topics --entity-name {topic} --add-config "
                f"max.message.bytes={need})")


def delete_topics(kafka: KafkaConfig, topics: list[str], timeout_s: float = 30.0) -> None:
    admin = admin_client(kafka)  # keep the client alive until the futures resolve
    futures = admin.delete_topics(topics, request_timeout=timeout_s)
    for topic, fut in futures.items():
        try:
            fut.result()
        except KafkaException as exc:
            log.warning("could not delete topic=%s: %s", topic, exc)


def topic_id(kafka: KafkaConfig, topic: str, timeout_s: float = 10.0) -> str:
    """The topic's cluster-wide UUID: it changes when a topic is deleted and re-created
    under the same name, which offsets alone cannot tell."""
    admin = admin_client(kafka)  # keep the client alive until the future resolves
    try:
        futures = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout_s)
        return str(futures[topic].result().topic_id)
    except KafkaException as exc:
        raise BrokerError(f"cannot describe topic {topic}: {exc}") from exc


def group_members(admin: AdminClient, group_id: str, timeout_s: float = 5.0) -> int | None:
    """Members of consumer group `group_id` now (0 for an empty or unknown group);
    None when the cluster does not say (no DESCRIBE right on the group, a timeout)."""
    try:
        found = admin.describe_consumer_groups([group_id], request_timeout=timeout_s)
        return len(found[group_id].result(timeout=timeout_s).members)
    except (KafkaException, TimeoutError, OSError) as exc:
        log.warning("could not describe consumer group %s: %s", group_id, exc)
        return None
