"""A broker state folder's own files: the server.properties a start writes and what a
restart reads back from it (ports), and whether a folder is one a broker left."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from stream_app.kafka.exceptions import BrokerError

if TYPE_CHECKING:
    from stream_app.kafka.broker import BrokerSettings


def server_properties(settings: BrokerSettings, port: int, controller_port: int) -> str:
    """Single-node KRaft settings; replication 1 everywhere so transactions work."""
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(settings.state_dir / "data"),
        "num.partitions": "3",
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "10",
        "group.initial.rebalance.delay.ms": "0",
        "log.cleaner.min.compaction.lag.ms": "0",
        "delete.topic.enable": "true",
    }
    if settings.sasl_user is not None:
        user, password = settings.sasl_user, settings.sasl_password
        props |= {
            "listeners": f"SASL_PLAINTEXT://127.0.0.1:{port},"
                         f"CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"SASL_PLAINTEXT://127.0.0.1:{port}",
            "inter.broker.listener.name": "SASL_PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": "PLAIN",
            "sasl.mechanism.inter.broker.protocol": "PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config":
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'username="{user}" password="{password}" user_{user}="{password}";',
        }
    props.update(dict(settings.extra_properties))
    return "".join(f"{k}={v}\n" for k, v in props.items())


LOG4J = """log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.org.apache.kafka.controller=WARN
"""


_OWN_FILES = frozenset({".lock", "broker.pid", "broker.log", "log4j.properties"})
"""What the command itself writes before server.properties (the lock first of all)."""


def check_ours(state: Path) -> None:
    """Refuse to start a fresh cluster in a folder a former broker did not leave.

    A fresh start deletes `data/` and rewrites the folder's properties and log:
    `--state-dir ~` deleted ~/data (security review). Ours: missing, empty, or
    with the server.properties `server_properties` writes (log.dirs is its data/).
    """
    if not state.exists() or not any(p.name not in _OWN_FILES for p in state.iterdir()):
        return
    props = state / "server.properties"
    if props.is_file() and f"log.dirs={state / 'data'}" in props.read_text().splitlines():
        return
    raise BrokerError(
        f"{state} is not an empty folder nor one a stream-app broker left: starting a "
        "cluster there would delete its data/ and rewrite server.properties; choose a new "
        "or empty --state-dir")


def kept_port(settings: BrokerSettings) -> int | None:
    """The port `start` will reuse with the state folder's kept data, or None (a fresh
    cluster: `keep_data` off, or no data there)."""
    props = settings.state_dir / "server.properties"
    if not (settings.keep_data and props.exists()
            and (settings.state_dir / "data" / "meta.properties").exists()):
        return None
    return listener_port(props)


def listener_port(props: Path) -> int:
    """The client listener port of an existing server.properties (restart on kept data)."""
    port = port_in_properties(props, "advertised.listeners")
    if port is None:
        raise BrokerError(f"{props} has no advertised.listeners; remove the state folder")
    return port


def port_in_properties(props: Path, key: str) -> int | None:
    """The port that ends `key`'s value in server.properties (`...127.0.0.1:PORT`)."""
    for line in props.read_text().splitlines():
        if line.startswith(f"{key}="):
            return int(line.rsplit(":", 1)[1])
    return None
