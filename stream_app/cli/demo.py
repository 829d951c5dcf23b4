"""`demo` and `report`: the whole product on one machine, and plots of a run."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from stream_app.cli.common import kafka_args, kafka_config
from stream_app.cli.trainer import learner_config
from stream_app.config import KafkaConfig
from stream_app.config_load import environment, read_file
from stream_app.signals import interrupted_status


def _child_sections() -> dict[str, type[Any]]:
    from stream_app.core import LearnerConfig
    from stream_app.serving import ScorerConfig
    from stream_app.trainer import TrainerConfig

    return {"trainer": TrainerConfig, "learner": LearnerConfig, "scorer": ScorerConfig}


def add_commands(sub: Any) -> None:
    p = sub.add_parser("demo", help="the whole product on this machine: replay MovieLens, "
                       "watch it learn live, ask for predictions, write a report",
                       description="Starts a local broker unless --bootstrap-servers, "
                       "STREAM_APP_BOOTSTRAP_SERVERS or [kafka] bootstrap_servers in --config "
                       "names one; every run uses fresh topics.")
    p.add_argument("--data", type=Path, help="MovieLens folder (ratings.dat[.gz] of 1M or "
                   "u.data of 100K; movies.dat[.gz] adds release times when there), or the "
                   "ratings file; the synthetic stream is used when the path is not there")
    p.add_argument("--limit", type=int, default=300_000,
                   help="events to replay, first by event time (default 300000)")
    p.add_argument("--report-dir", type=Path, default=Path("demo-report"),
                   help="where plots, stats, logs and predictions go (default ./demo-report)")
    p.add_argument("--users", type=int, default=3, help="active users to ask about (default 3)")
    p.add_argument("--k", type=int, default=10, help="items per prediction (default 10)")
    p.add_argument("--timeout", type=float, default=480.0,
                   help="seconds the trainer may take to catch up (default 480)")
    p.add_argument("--keep-topics", action="store_true",
                   help="keep the run's topics on the broker of --bootstrap-servers "
                        "(deleted by default; a broker the demo starts goes with them)")
    p.add_argument("--device", help="trainer/scorer device: auto, cpu, cuda ...")
    p.add_argument("-L", dest="learner_settings", action="append", metavar="KEY=VALUE",
                   help="learner setting passed to the trainer, e.g. -L dim=32")
    kafka_args(p, bootstrap_default="without one, the demo starts a broker of its own")
    p.set_defaults(handler=_demo)

    p = sub.add_parser("report", help="PNG plots of a run (demo report folder or a folder "
                       "with the trainer's --stats-file output)")
    p.add_argument("run_dir", type=Path,
                   help="folder holding trainer-stats.jsonl, or a stats file itself")
    p.add_argument("--out", type=Path,
                   help="where to write the PNGs (default RUN_DIR, or the folder of a stats file)")
    p.set_defaults(handler=_report)


def demo_prefix(base: str) -> str:
    """A fresh topic prefix under `base` (flag, env or file): the demo deletes its topics
    when it ends, so it must never write to or delete topics it did not create.

    >>> demo_prefix("shop.").startswith("shop.demo-"), demo_prefix("") != demo_prefix("")
    (True, True)
    """
    import time
    import uuid

    return f"{base}demo-{int(time.time())}-{uuid.uuid4().hex[:4]}."


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

    from stream_app.demo.run import DemoError, DemoOptions, run_demo

    if args.log_level.upper() == "INFO":  # keep library INFO lines out of the live view
        logging.getLogger().setLevel(logging.WARNING)
        # and librdkafka's retries at start-up ("Coordinator load in progress: retrying"):
        # client errors still show, through ErrorLog
        logging.getLogger("stream_app.librdkafka").setLevel(logging.ERROR)
    kafka = kafka_config(args, _child_sections())
    prefix = demo_prefix(kafka.topic_prefix)
    _check_children(args, dataclasses.replace(kafka, topic_prefix=prefix))
    given = args.bootstrap_servers or environment().get("STREAM_APP_BOOTSTRAP_SERVERS") \
        or read_file(args.config).get("kafka", {}).get("bootstrap_servers")
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
    except KeyboardInterrupt as exc:
        print("\nstream-app demo: interrupted; the processes it started were stopped",
              file=sys.stderr)
        return interrupted_status(exc)


def _check_children(args: argparse.Namespace, kafka: KafkaConfig) -> None:
    """Refuse what the trainer, scorer and replay it starts would refuse, before anything
    starts: they found a bad -L, `STREAM_APP_TRAINER_*`/`_SCORER_*` value, device or -X
    setting only after the broker and topics were up, and the demo then exited 1, not 2
    (helper reviews). Each is built with the flags `run_demo` gives it."""
    from stream_app.config_load import build
    from stream_app.device import resolve_device
    from stream_app.kafka.produce import check_event_settings
    from stream_app.scorer.loop import check_settings as check_scorer
    from stream_app.trainer.loop import check_settings as check_trainer

    if args.device is not None:
        resolve_device(args.device, "--device")
    file, env, sections = read_file(args.config), environment(), _child_sections()
    learner = learner_config(args.learner_settings, file)
    given = {"trainer": {"stats_file": "trainer-stats.jsonl"}, "scorer": {}}
    for section, extra in given.items():
        flags = {"group_id": f"{kafka.topic_prefix}{section}", "device": args.device,
                 "metrics_port": 0, **extra}
        cfg = build(sections[section], section, file.get(section, {}), env, flags)
        resolve_device(cfg.device, f"{section}.device")
        if section == "trainer":
            check_trainer(kafka, cfg, learner)
        else:
            check_scorer(kafka, cfg)
    check_event_settings(kafka)


def _report(args: argparse.Namespace) -> int:
    from stream_app.report import build_report

    for path in build_report(args.run_dir, args.out):
        print(path)
    return 0
