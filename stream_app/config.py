"""Typed, frozen configuration shared by every process: Kafka, topics, config errors.

Every field is checked in `__post_init__`, and the message names the field and
the fix, so a bad value fails before any client is created. Reading the file,
the environment and the flags into these is `stream_app.config_load`'s.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SECRET_PATTERN = re.compile(r"password|secret|sasl\.oauthbearer\.|\.key$|key\.pem", re.I)
_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]*")  # fullmatch: `$` also matches before a "\n"


CONSUME_MAX = 1_000_000
"""The most records confluent-kafka's `consume()` hands out in one call: a larger
`batch_max` or `load_batch` raised ValueError at the first poll."""


class ConfigError(ValueError):
    """A configuration value is wrong; the message says which and how to fix it."""


def check_stall_timeout(section: str, stall_timeout_s: float, batch_wait_ms: float) -> None:
    """The watchdog's limit (`stream_app.watchdog`) of a trainer or scorer: 1 s to a day,
    and at least twice the longest poll the loop makes while it waits for a batch to fill."""
    if not 1 <= stall_timeout_s <= 86_400:
        raise ConfigError(f"{section}.stall_timeout_s must be in 1..86400 seconds, got "
                          f"{stall_timeout_s}")
    if batch_wait_ms > stall_timeout_s * 1000 / 2:
        raise ConfigError(f"{section}.batch_wait_ms ({batch_wait_ms:g}) must be at most half of "
                          f"{section}.stall_timeout_s ({stall_timeout_s:g} s): a poll waits "
                          "that long for a batch to fill, and the watchdog would take it for "
                          "a stall")


def redact(settings: Mapping[str, str]) -> dict[str, str]:
    """Copy of librdkafka settings safe to log: secrets replaced by `***`."""
    return {k: ("***" if SECRET_PATTERN.search(k) else v) for k, v in settings.items()}


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicNames:
    """The six topics of the product; `prefix` namespaces them (tests, tenants).

    >>> TopicNames(prefix="t1.").clicks
    't1.clicks'
    """

    prefix: str = ""

    def __post_init__(self) -> None:
        if not _TOPIC_RE.fullmatch(self.prefix) or len(self.prefix) > 200:
            raise ConfigError(
                f"topic_prefix may only hold letters, digits, '.', '_' and '-' "
                f"(at most 200), got {self.prefix!r}"
            )

    @property
    def clicks(self) -> str:
        return f"{self.prefix}clicks"

    @property
    def purchases(self) -> str:
        return f"{self.prefix}purchases"

    @property
    def embeddings(self) -> str:
        return f"{self.prefix}embeddings"

    @property
    def score_requests(self) -> str:
        return f"{self.prefix}score-requests"

    @property
    def predictions(self) -> str:
        return f"{self.prefix}predictions"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}events-dlq"

    def all(self) -> tuple[str, ...]:
        return (self.clicks, self.purchases, self.embeddings, self.score_requests,
                self.predictions, self.dlq)


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaConfig:
    """Where the cluster is and how to talk to it.

    `client` is handed to librdkafka unchanged (SASL/SSL and tuning), merged as
    defaults < user < enforced; see `stream_app.kafka.clients`.
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    client: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise ConfigError("bootstrap_servers is empty: pass --bootstrap-servers HOST:PORT "
                              "or set STREAM_APP_BOOTSTRAP_SERVERS")
        for server in self.bootstrap_servers.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not (port.isascii() and port.isdigit()):
                raise ConfigError(f"bootstrap_servers entries must be HOST:PORT, got {server!r}")
            if not 1 <= int(port) <= 65535:  # librdkafka wraps it (99999 -> 34463), silently
                raise ConfigError(f"bootstrap_servers port must be in 1..65535, got {server!r}")
        TopicNames(prefix=self.topic_prefix)  # checked here, before ids are derived from it
        object.__setattr__(self, "client", types.MappingProxyType(dict(self.client)))

    @property
    def topics(self) -> TopicNames:
        return TopicNames(prefix=self.topic_prefix)

    def __repr__(self) -> str:
        return (f"KafkaConfig(bootstrap_servers={self.bootstrap_servers!r}, "
                f"topic_prefix={self.topic_prefix!r}, client={redact(self.client)!r})")


def default_group_id(kafka: KafkaConfig, role: str) -> str:
    """`<topic prefix>stream-app-<role>`: group and transactional ids are cluster-wide,
    so two deployments with different prefixes on one cluster must not share them.

    >>> default_group_id(KafkaConfig(topic_prefix="shop-eu."), "trainer")
    'shop-eu.stream-app-trainer'
    """
    return f"{kafka.topic_prefix}stream-app-{role}"


def make_folder(path: Path, what: str) -> Path:
    """`path` created (parents too), or a ConfigError naming `what` (a flag) and why: a
    folder the user named that cannot be made is theirs to fix, not a traceback."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{what} {str(path)!r} cannot be created: {exc.strerror or exc}") \
            from exc
    return path
