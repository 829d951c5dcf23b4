"""`stream-app` command line: argument parsing only; each command lives in its module.

Exit codes: 0 ok, 1 runtime failure, 2 configuration error (with what to fix),
75 the trainer's watchdog saw no progress (restart it: run under a supervisor).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stream_app import __version__
from stream_app.config import (
    ConfigError,
    KafkaConfig,
    environment,
    load_kafka,
    parse_kv,
    read_file,
    read_properties,
)

log = logging.getLogger("stream_app")

Handler = Callable[[argparse.Namespace], int]


def _kafka_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("kafka")
    g.add_argument("--config", type=Path, help="TOML config file ([kafka], [trainer], ...)")
    g.add_argument("--bootstrap-servers", help="HOST:PORT list (env STREAM_APP_BOOTSTRAP_SERVERS; "
                   "default 127.0.0.1:9092)")
    g.add_argument("--topic-prefix",
                   help="prefix of every topic name (env STREAM_APP_TOPIC_PREFIX)")
    g.add_argument("--kafka-config", type=Path, help="librdkafka settings file (key=value lines)")
    g.add_argument("-X", dest="kafka_settings", action="append", metavar="KEY=VALUE",
                   help="librdkafka setting passed through, e.g. -X security.protocol=SASL_SSL")


def kafka_config(args: argparse.Namespace) -> KafkaConfig:
    """The shared Kafka settings from file < env < flags (used by every command)."""
    client = read_properties(args.kafka_config) if args.kafka_config else {}
    client.update(parse_kv(args.kafka_settings))
    flags = {"bootstrap_servers": args.bootstrap_servers, "topic_prefix": args.topic_prefix}
    return load_kafka(read_file(args.config), environment(), flags, client)


def _broker(args: argparse.Namespace) -> int:
    from stream_app.kafka import broker
    from stream_app.kafka.admin import wait_for_broker

    env = environment()
    flags: dict[str, Any] = {"port": args.port, "state_dir": args.state_dir,
                             "cache_dir": args.cache_dir, "sasl_user": args.sasl_user,
                             "sasl_password": args.sasl_password
                             or env.get("STREAM_APP_BROKER_SASL_PASSWORD")}
    values = {k: v for k, v in flags.items() if v is not None}
    if env.get("KAFKA_HOME"):
        values["kafka_home"] = Path(env["KAFKA_HOME"])
    settings = broker.BrokerSettings(**values)
    given = args.bootstrap_servers or env.get("STREAM_APP_BOOTSTRAP_SERVERS")
    if args.action == "start":
        if given:
            wait_for_broker(given, timeout_s=10)
            print(f"reusing the running broker at {given}")
            return 0
        b = broker.start(settings)
        print(f"broker running: bootstrap={b.bootstrap_servers} pid={b.pid} log={b.log_file}")
    elif args.action == "stop":
        print("broker stopped" if broker.stop(settings) else "no broker was running")
    else:
        found = broker.running(settings)
        if found is None:
            print(f"no broker running from {settings.state_dir}")
            return 1
        b = found
        print(f"broker running: bootstrap={b.bootstrap_servers} pid={b.pid} log={b.log_file}")
    return 0


def _topics(args: argparse.Namespace) -> int:
    from stream_app.kafka.admin import TopicPlan, create_topics

    plan = TopicPlan(event_partitions=args.partitions, embeddings_partitions=args.partitions,
                     request_partitions=args.partitions,
                     replication_factor=args.replication_factor)
    for topic, outcome in create_topics(kafka_config(args), plan).items():
        print(f"{topic}: {outcome}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from stream_app.replay import replay_file

    acked = replay_file(kafka_config(args), args.path, fmt=args.format, limit=args.limit,
                        rate=args.rate, progress=not args.quiet)
    print(f"replayed {acked} events from {args.path}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from stream_app.replay import replay_generated

    acked = replay_generated(kafka_config(args), n_events=args.events, n_users=args.users,
                             n_items=args.items, seed=args.seed,
                             malformed_share=args.malformed_share, drift=args.drift,
                             rate=args.rate, progress=not args.quiet)
    print(f"generated {acked} records")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stream-app", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"stream-app {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="run a local single-node Kafka broker (KRaft)")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--port", type=int, help="listener port on 127.0.0.1 (default 9092, 0 = free)")
    p.add_argument("--state-dir", type=Path, help="data, pid and log (~/.cache/stream-app/broker)")
    p.add_argument("--cache-dir", type=Path, help="where the broker jars are cached")
    p.add_argument("--bootstrap-servers", help="reuse this running broker instead of starting one")
    p.add_argument("--sasl-user", help="listen with SASL_PLAINTEXT/PLAIN for this one user "
                   "(clients: -X security.protocol=SASL_PLAINTEXT -X sasl.mechanisms=PLAIN "
                   "-X sasl.username=U -X sasl.password=P)")
    p.add_argument("--sasl-password", help="that user's password (prefer the env "
                   "STREAM_APP_BROKER_SASL_PASSWORD: flags show in `ps`)")
    p.set_defaults(handler=_broker)

    p = sub.add_parser("topics", help="create the product's topics (idempotent)")
    p.add_argument("action", choices=["create"])
    p.add_argument("--partitions", type=int, default=3, help="partitions per topic (default 3)")
    p.add_argument("--replication-factor", type=int, default=1, help="default 1")
    _kafka_args(p)
    p.set_defaults(handler=_topics)

    p = sub.add_parser("replay", help="produce events from a file to clicks/purchases")
    p.add_argument("path", type=Path, help="ratings.dat(.gz), u.data, .jsonl or .csv")
    p.add_argument("--format", choices=["movielens", "jsonl", "csv"], default="movielens")
    p.add_argument("--limit", type=int, help="stop after this many events")
    p.add_argument("--rate", type=float, default=0.0, help="events/s (0 = as fast as possible)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _kafka_args(p)
    p.set_defaults(handler=_replay)

    p = sub.add_parser("generate", help="produce a synthetic event stream")
    p.add_argument("--events", type=int, default=100_000, help="number of events")
    p.add_argument("--users", type=int, default=5_000, help="distinct users")
    p.add_argument("--items", type=int, default=2_000, help="distinct items")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--malformed-share", type=float, default=0.0, help="share of bad records")
    p.add_argument("--drift", action="store_true", help="user tastes drift over time")
    p.add_argument("--rate", type=float, default=0.0, help="events/s (0 = as fast as possible)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _kafka_args(p)
    p.set_defaults(handler=_generate)

    _add_trainer_commands(sub)
    _add_scorer_commands(sub)
    _add_demo_commands(sub)
    return parser


def _component_args(p: argparse.ArgumentParser, metrics_port: int) -> None:
    """Flags every long-running process shares (trainer, scorer)."""
    p.add_argument("--group-id", help="consumer group id (default: <topic prefix>stream-app-"
                   "trainer / -scorer; group and transactional ids are cluster-wide)")
    p.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--metrics-host", help="bind address of /metrics (default 127.0.0.1)")
    p.add_argument("--metrics-port", type=int,
                   help=f"port of /metrics, /healthz, /readyz (default {metrics_port}, 0 = free)")
    p.add_argument("--exit-when-idle", type=float, metavar="SECONDS",
                   help="exit after this long without input (tests, demo, benchmarks)")
    _kafka_args(p)


# --- trainer commands (owned by the trainer wiring) ---
def _add_trainer_commands(sub: Any) -> None:
    p = sub.add_parser("trainer", help="learn embeddings from clicks/purchases (exactly-once)")
    _component_args(p, 9464)
    p.add_argument("--instance-id", help="stable id of this trainer; names its transactional.id")
    p.add_argument("--batch-max", type=int, help="max events per micro-batch (default 2000)")
    p.add_argument("--batch-wait-ms", type=int,
                   help="max wait to fill a micro-batch, and for a partition behind in event "
                        "time (200)")
    p.add_argument("--no-restore", dest="restore", action="store_const", const=False,
                   help="start from an empty model instead of the embeddings changelog")
    p.add_argument("--stats-file", help="append one JSON line per batch (for `stream-app report`)")
    p.add_argument("--stall-timeout", dest="stall_timeout_s", type=float, metavar="SECONDS",
                   help="exit with status 75 when the loop makes no progress this long, "
                        "so a supervisor restarts it (default 120)")
    p.add_argument("-L", dest="learner_settings", action="append", metavar="KEY=VALUE",
                   help="learner setting, e.g. -L dim=32 -L optimizer=adam")
    p.set_defaults(handler=_trainer)

    p = sub.add_parser("forget", help="delete a user from the model (tombstone published)")
    p.add_argument("user", help="user id")
    _kafka_args(p)
    p.set_defaults(handler=_forget)


def _trainer(args: argparse.Namespace) -> int:
    from stream_app.config import build, default_group_id
    from stream_app.core import LearnerConfig
    from stream_app.trainer import TrainerConfig, run_trainer

    file = read_file(args.config)
    flags = {k: getattr(args, k, None) for k in (
        "group_id", "device", "metrics_host", "metrics_port", "exit_when_idle", "instance_id",
        "batch_max", "batch_wait_ms", "restore", "stats_file", "stall_timeout_s")}
    kafka = kafka_config(args)
    cfg = build(TrainerConfig, "trainer", file.get("trainer", {}), environment(), flags,
                derived={"group_id": default_group_id(kafka, "trainer")})
    learner_flags = _typed(LearnerConfig, parse_kv(args.learner_settings, "-L"))
    learner = build(LearnerConfig, "learner", file.get("learner", {}), environment(),
                    learner_flags)
    return run_trainer(kafka, cfg, learner)


def _typed(cls: Any, raw: dict[str, str]) -> dict[str, Any]:
    """Convert `-L key=value` strings with the same rules as the environment."""
    from stream_app.config import from_text

    return {k: from_text(cls, k, v, f"-L {k}") for k, v in raw.items()}


def _forget(args: argparse.Namespace) -> int:
    from stream_app.trainer.control import send_forget

    send_forget(kafka_config(args), args.user)
    print(f"forget request for user {args.user!r} sent; the trainer publishes a tombstone")
    return 0
# --- end trainer commands ---


# --- scorer commands (owned by the scorer wiring) ---
def _add_scorer_commands(sub: Any) -> None:
    p = sub.add_parser("scorer", help="answer score-requests with top-K items on predictions")
    _component_args(p, 9465)
    p.add_argument("--batch-max", type=int, help="most requests per micro-batch (default 256)")
    p.add_argument("--batch-wait-ms", type=float,
                   help="extra wait to fill a micro-batch, in ms (default 0: rank what "
                        "arrived while the previous batch was ranked)")
    p.add_argument("--threads", type=int,
                   help="torch threads for ranking (default: torch's, one per core)")
    p.set_defaults(handler=_scorer)

    p = sub.add_parser("request", help="ask the running scorer for a user's top-K items")
    p.add_argument("user", help="user id")
    p.add_argument("--k", type=int, default=20, help="how many items (default 20)")
    p.add_argument("--candidates", help="comma-separated item ids to re-rank (default: all)")
    p.add_argument("--exclude", help="comma-separated item ids never to return")
    p.add_argument("--explain", action="store_true",
                   help="show which recent items of the user support each item")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for the answer (default 10; exit 1 after)")
    _kafka_args(p)
    p.set_defaults(handler=_request)


def _ids(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(i.strip() for i in text.split(",") if i.strip())


def _scorer(args: argparse.Namespace) -> int:
    from stream_app.scorer import run_scorer
    from stream_app.serving import ScorerConfig

    flags = {"group_id": args.group_id, "device": args.device, "metrics_host": args.metrics_host,
             "metrics_port": args.metrics_port, "exit_when_idle": args.exit_when_idle,
             "batch_max": args.batch_max, "batch_wait_ms": args.batch_wait_ms,
             "threads": args.threads}
    file_values = read_file(args.config).get("scorer", {})
    from stream_app.config import build, default_group_id

    kafka = kafka_config(args)
    cfg = build(ScorerConfig, "scorer", file_values, environment(), flags,
                derived={"group_id": default_group_id(kafka, "scorer")})
    return run_scorer(kafka, cfg)


def _request(args: argparse.Namespace) -> int:
    from stream_app.client import request_command

    if args.k < 1 or args.k > 1000:
        raise ConfigError(f"--k must be in 1..1000, got {args.k}")
    return request_command(kafka_config(args), args.user, k=args.k,
                           candidates=_ids(args.candidates), exclude=_ids(args.exclude) or (),
                           explain=args.explain, timeout_s=args.timeout)
# --- end scorer commands ---


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from stream_app.kafka.exceptions import BrokerError, ConfigConflictError, TopicError

    try:
        handler: Handler = args.handler
        return handler(args)
    except (ConfigError, ConfigConflictError) as exc:
        print(f"stream-app: configuration error: {exc}", file=sys.stderr)
        return 2
    except (BrokerError, TopicError) as exc:
        print(f"stream-app: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


# --- demo commands (owned by the demo/report wiring) ---
def _add_demo_commands(sub: Any) -> None:
    p = sub.add_parser("demo", help="the whole product on this machine: replay MovieLens, "
                       "watch it learn live, ask for predictions, write a report",
                       description="Starts a local broker unless --bootstrap-servers (or "
                       "STREAM_APP_BOOTSTRAP_SERVERS) names one; every run uses fresh topics.")
    p.add_argument("--data", type=Path, help="folder with ratings.dat.gz + movies.dat.gz "
                   "(MovieLens 1M); the synthetic stream is used when they are absent")
    p.add_argument("--limit", type=int, default=300_000,
                   help="events to replay, first by event time (default 300000)")
    p.add_argument("--report-dir", type=Path, default=Path("demo-report"),
                   help="where plots, stats, logs and predictions go (default ./demo-report)")
    p.add_argument("--users", type=int, default=3, help="active users to ask about (default 3)")
    p.add_argument("--k", type=int, default=10, help="items per prediction (default 10)")
    p.add_argument("--timeout", type=float, default=480.0,
                   help="seconds the trainer may take to catch up (default 480)")
    p.add_argument("--keep-topics", action="store_true",
                   help="keep the run's topics on a reused broker (deleted by default)")
    p.add_argument("--device", help="trainer/scorer device: auto, cpu, cuda ...")
    p.add_argument("-L", dest="learner_settings", action="append", metavar="KEY=VALUE",
                   help="learner setting passed to the trainer, e.g. -L dim=32")
    _kafka_args(p)
    p.set_defaults(handler=_demo)

    p = sub.add_parser("report", help="PNG plots of a run (demo report folder or a folder "
                       "with the trainer's --stats-file output)")
    p.add_argument("run_dir", type=Path, help="folder holding trainer-stats.jsonl")
    p.add_argument("--out", type=Path, help="where to write the PNGs (default RUN_DIR)")
    p.set_defaults(handler=_report)


def _forwarded_kafka_args(args: argparse.Namespace) -> list[str]:
    """The Kafka flags the demo hands on to its trainer and scorer processes."""
    out: list[str] = []
    for flag, value in (("--config", args.config), ("--kafka-config", args.kafka_config),
                        ("--device", args.device)):
        if value is not None:
            out += [flag, str(value)]
    for pair in args.kafka_settings or []:
        out += ["-X", pair]
    return out


def _demo(args: argparse.Namespace) -> int:
    import dataclasses
    import time
    import uuid

    from stream_app.demo.run import DemoError, DemoOptions, run_demo

    if args.log_level.upper() == "INFO":  # keep library INFO lines out of the live view
        logging.getLogger().setLevel(logging.WARNING)
    kafka = kafka_config(args)
    given = args.bootstrap_servers or environment().get("STREAM_APP_BOOTSTRAP_SERVERS") \
        or read_file(args.config).get("kafka", {}).get("bootstrap_servers")
    prefix = args.topic_prefix or \
        f"{kafka.topic_prefix}demo-{int(time.time())}-{uuid.uuid4().hex[:4]}."
    opts = DemoOptions(
        data=args.data, limit=args.limit, report_dir=args.report_dir, show_users=args.users,
        k=args.k, timeout_s=args.timeout, keep_topics=args.keep_topics,
        child_args=tuple(_forwarded_kafka_args(args)),
        trainer_args=tuple(x for kv in args.learner_settings or [] for x in ("-L", kv)))
    try:
        return run_demo(opts, dataclasses.replace(kafka, topic_prefix=prefix),
                        start_broker=not given, stream=sys.stdout)
    except DemoError as exc:
        print(f"stream-app demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstream-app demo: interrupted; the processes it started were stopped",
              file=sys.stderr)
        return 130


def _report(args: argparse.Namespace) -> int:
    from stream_app.report import build_report

    for path in build_report(args.run_dir, args.out):
        print(path)
    return 0
# --- end demo commands ---


if __name__ == "__main__":
    sys.exit(main())
