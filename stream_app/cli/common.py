"""Flags shared by several commands, and the Kafka settings they resolve to."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from stream_app.config import KafkaConfig
from stream_app.config_load import (
    check_environment,
    environment,
    load_kafka,
    parse_kv,
    read_file,
    read_properties,
)

Handler = Callable[[argparse.Namespace], int]


def utf8_text(value: str) -> str:
    """An argparse `type` for ids: bytes that are not UTF-8 (a terminal in another
    encoding) reach Python as lone surrogates, which no encoder writes; exit 2 here.

    >>> utf8_text("u42")
    'u42'
    >>> utf8_text("u\\udcff42")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: 'u\\udcff42' is not UTF-8 text (check ...)
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not UTF-8 text (check the encoding of the terminal or script)"
        ) from exc
    return value


def kafka_args(p: argparse.ArgumentParser,
               bootstrap_default: str = "default 127.0.0.1:9092") -> None:
    g = p.add_argument_group("kafka")
    g.add_argument("--config", type=Path, help="TOML config file ([kafka], [trainer], ...)")
    g.add_argument("--bootstrap-servers", help="HOST:PORT list (env STREAM_APP_BOOTSTRAP_SERVERS "
                   f"or [kafka] bootstrap_servers in --config; {bootstrap_default})")
    g.add_argument("--topic-prefix",
                   help="prefix of every topic name (env STREAM_APP_TOPIC_PREFIX)")
    g.add_argument("--kafka-config", type=Path, help="librdkafka settings file (key=value lines)")
    g.add_argument("-X", dest="kafka_settings", action="append", metavar="KEY=VALUE",
                   help="librdkafka setting passed through, e.g. -X security.protocol=SASL_SSL")


def kafka_config(args: argparse.Namespace,
                 sections: Mapping[str, type[Any]] | None = None) -> KafkaConfig:
    """The shared Kafka settings from file < env < flags (used by every command).

    `sections` are the other config sections the command reads: their
    `STREAM_APP_*` variables are checked with the shared ones, in one pass, so
    a typo is named with the nearest variable of any of them.
    """
    client = read_properties(args.kafka_config) if args.kafka_config else {}
    client.update(parse_kv(args.kafka_settings))
    flags = {"bootstrap_servers": args.bootstrap_servers, "topic_prefix": args.topic_prefix}
    env = environment()
    check_environment(env, sections or {})
    return load_kafka(read_file(args.config), env, flags, client)


def component_args(p: argparse.ArgumentParser, metrics_port: int) -> None:
    """Flags every long-running process shares (trainer, scorer)."""
    p.add_argument("--group-id", help="consumer group id (default: <topic prefix>stream-app-"
                   "trainer / -scorer; group and transactional ids are cluster-wide)")
    p.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--metrics-host", help="bind address of /metrics (default 127.0.0.1)")
    p.add_argument("--metrics-port", type=int,
                   help=f"port of /metrics, /healthz, /readyz (default {metrics_port}, 0 = free)")
    p.add_argument("--exit-when-idle", type=float, metavar="SECONDS",
                   help="exit after this long without input (tests, demo, benchmarks)")
    p.add_argument("--stall-timeout", dest="stall_timeout_s", type=float, metavar="SECONDS",
                   help="exit with status 75 when the loop makes no progress this long, "
                        "so a supervisor restarts it (default 120)")
    kafka_args(p)
