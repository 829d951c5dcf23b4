"""Setup and data-in commands: a local broker, the topics, replaying or generating events."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from stream_app.cli.common import kafka_args, kafka_config
from stream_app.config import ConfigError, KafkaConfig
from stream_app.config_load import check_environment, environment


def add_commands(sub: Any) -> None:
    p = sub.add_parser("broker", help="run a local single-node Kafka broker (KRaft)")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--port", type=int, help="listener port on 127.0.0.1 (default 9092, 0 = free)")
    p.add_argument("--state-dir", type=Path, help="data, pid and log (default broker/ in "
                   "the cache folder: STREAM_APP_CACHE_DIR, else ~/.cache/stream-app)")
    p.add_argument("--cache-dir", type=Path, help="where the broker jars are cached "
                   "(STREAM_APP_CACHE_DIR, else ~/.cache/stream-app)")
    p.add_argument("--bootstrap-servers", help="reuse this running broker instead of starting one")
    p.add_argument("--fresh", action="store_true",
                   help="start: delete the topics and offsets a former broker left in "
                   "--state-dir (kept by default, and the broker comes back on its port)")
    p.add_argument("--sasl-user", help="listen with SASL_PLAINTEXT/PLAIN for this one user "
                   "(clients: security.protocol=SASL_PLAINTEXT, sasl.mechanisms=PLAIN, "
                   "sasl.username=U, sasl.password=P in a --kafka-config file, which `ps` "
                   "does not show)")
    p.add_argument("--sasl-password", help="that user's password (prefer the env "
                   "STREAM_APP_BROKER_SASL_PASSWORD: flags show in `ps`)")
    p.set_defaults(handler=_broker)

    p = sub.add_parser("topics", help="create the product's topics (idempotent)")
    p.add_argument("action", choices=["create"])
    p.add_argument("--partitions", type=int, default=3,
                   help="partitions of each topic but events-dlq, which gets 1 (default 3)")
    p.add_argument("--replication-factor", type=int, default=1, help="default 1")
    kafka_args(p)
    p.set_defaults(handler=_topics)

    p = sub.add_parser("replay", help="produce events from a file to clicks/purchases")
    p.add_argument("path", type=Path, help="ratings.dat(.gz), u.data, .jsonl or .csv, or a "
                   "MovieLens folder")
    p.add_argument("--format", choices=["movielens", "jsonl", "csv"],
                   help="default: from the file name (.jsonl/.ndjson/.json, .csv, "
                   ".dat/.data/.base/.test for movielens; others need this flag)")
    p.add_argument("--kind", choices=["click", "purchase"],
                   help="kind of the JSON lines that carry no \"kind\" field (default: "
                   "every line must carry one)")
    p.add_argument("--limit", type=int, help="stop after this many events")
    p.add_argument("--rate", type=float, default=0.0, help="events/s (0 = as fast as possible)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    kafka_args(p)
    p.set_defaults(handler=_replay)

    p = sub.add_parser("generate", help="produce a synthetic event stream")
    p.add_argument("--events", type=int, default=100_000, help="number of events (default 100000)")
    p.add_argument("--users", type=int, default=5_000, help="distinct users (default 5000)")
    p.add_argument("--items", type=int, default=2_000, help="distinct items (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--malformed-share", type=float, default=0.0,
                   help="share of bad records, for the DLQ (default 0)")
    p.add_argument("--drift", action="store_true", help="user tastes drift over time")
    p.add_argument("--rate", type=float, default=0.0, help="events/s (0 = as fast as possible)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    kafka_args(p)
    p.set_defaults(handler=_generate)


def _broker(args: argparse.Namespace) -> int:
    from stream_app.kafka import broker
    from stream_app.kafka.admin import wait_for_broker
    from stream_app.kafka.broker_state import kept_port
    from stream_app.kafka.exceptions import BrokerUnavailable

    env = environment()
    check_environment(env, {})
    if args.action != "start":
        given_flags = [flag for flag, value in (
            ("--port", args.port), ("--bootstrap-servers", args.bootstrap_servers),
            ("--sasl-user", args.sasl_user), ("--sasl-password", args.sasl_password),
            ("--fresh", args.fresh or None))
            if value is not None]
        if given_flags:  # ignored, they read as if stop/status would act on that broker
            raise ConfigError(f"broker {args.action}: {', '.join(given_flags)} apply to "
                              f"`broker start` only; {args.action} finds the broker this "
                              "command started by --state-dir")
    given = args.bootstrap_servers or env.get("STREAM_APP_BOOTSTRAP_SERVERS")
    # The variable is for a broker this command starts: read by stop and status (or a reused
    # broker's start) too, it made them refuse "a password without a user".
    starts = args.action == "start" and not given
    flags: dict[str, Any] = {"port": args.port, "state_dir": args.state_dir,
                             "cache_dir": args.cache_dir, "sasl_user": args.sasl_user,
                             "sasl_password": args.sasl_password
                             or (env.get("STREAM_APP_BROKER_SASL_PASSWORD") if starts else None)}
    values = {k: v for k, v in flags.items() if v is not None}
    settings = broker.BrokerSettings(**values, keep_data=not args.fresh)
    if args.action == "start":
        if given:
            source = ("--bootstrap-servers" if args.bootstrap_servers
                      else "STREAM_APP_BOOTSTRAP_SERVERS")
            KafkaConfig(bootstrap_servers=given)  # HOST:PORT, or a ConfigError (exit 2) now
            if not wait_for_broker(given, timeout_s=10, raise_on_timeout=False):
                raise BrokerUnavailable(f"no broker answers at {given} (from {source}, which "
                                  "reuses a running broker): unset it to start one here")
            print(f"reusing the running broker at {given} (from {source})")
            return 0
        kept = kept_port(settings)
        if kept is not None and args.port is not None and args.port not in (0, kept):
            raise ConfigError(f"the broker data in {settings.state_dir} is served on port "
                              f"{kept}: drop --port, or pass --fresh to start an empty "
                              f"broker on {args.port}")
        b = broker.start(settings)
        print(f"broker running: bootstrap={b.bootstrap_servers} pid={b.pid} log={b.log_file}")
        print(f"  {'kept the topics and offsets in' if kept else 'new, empty cluster in'} "
              f"{settings.state_dir} (--fresh starts an empty one); its address is also in "
              f"{settings.state_dir / 'bootstrap'}")
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

    for flag, value, most in (("--partitions", args.partitions, 2**31 - 1),
                              ("--replication-factor", args.replication_factor, 2**15 - 1)):
        if not 1 <= value <= most:  # Kafka's int32 and int16: past them, an OverflowError
            raise ConfigError(f"{flag} must be in 1..{most}, got {value}")
    plan = TopicPlan(event_partitions=args.partitions, embeddings_partitions=args.partitions,
                     request_partitions=args.partitions,
                     replication_factor=args.replication_factor)
    for topic, outcome in create_topics(kafka_config(args), plan).items():
        print(f"{topic}: {outcome}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from stream_app.events import EventKind
    from stream_app.replay import replay_file

    acked = replay_file(kafka_config(args), args.path, fmt=args.format, limit=args.limit,
                        rate=args.rate, progress=not args.quiet,
                        kind=EventKind(args.kind) if args.kind else None)
    print(f"replayed {acked} events from {args.path}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from stream_app.replay import replay_generated

    acked = replay_generated(kafka_config(args), n_events=args.events, n_users=args.users,
                             n_items=args.items, seed=args.seed,
                             malformed_share=args.malformed_share, drift=args.drift,
                             rate=args.rate, progress=not args.quiet)
    print(f"generated {acked} records (their event ids follow --seed {args.seed} and the "
          "sizes: a second run re-sends the same events, which the trainer drops as "
          "duplicates only within its last learner.dedup_window applied events, 100,000 by "
          "default, kept across restarts only with --snapshot-dir; give another --seed "
          "for new ones)")
    return 0
