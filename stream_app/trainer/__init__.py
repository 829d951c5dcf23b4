"""The trainer process: Kafka in, learning core in the middle, changelog out."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import BinaryIO

import orjson
from prometheus_client import CollectorRegistry

from stream_app.codec import DlqReason
from stream_app.config import ConfigError, KafkaConfig
from stream_app.core import LearnerConfig
from stream_app.device import set_threads
from stream_app.heap import freeze_survivors
from stream_app.kafka.client_logs import Repeats
from stream_app.observability import MetricsServer, TrainerMetrics
from stream_app.signals import stop_on_signals
from stream_app.trainer.config import TrainerConfig
from stream_app.trainer.loop import Trainer
from stream_app.trainer.result import BatchResult
from stream_app.watchdog import EXIT_STALLED, NO_WATCHDOG, Heartbeat, Watchdog

__all__ = ["EXIT_STALLED", "BatchResult", "Trainer", "TrainerConfig", "make_trainer",
           "run_trainer"]

log = logging.getLogger(__name__)


def make_trainer(kafka: KafkaConfig, cfg: TrainerConfig, learner_cfg: LearnerConfig, *,
                 registry: CollectorRegistry | None = None,
                 stop: threading.Event | None = None,
                 watchdog: Heartbeat = NO_WATCHDOG) -> Trainer:
    topics = kafka.topics
    metrics = TrainerMetrics(registry or CollectorRegistry(), k=learner_cfg.eval_k,
                             input_topics=[topics.clicks, topics.purchases],
                             dlq_reasons=[r.value for r in DlqReason])
    return Trainer(kafka, cfg, learner_cfg, metrics=metrics, stop=stop, watchdog=watchdog)


def run_trainer(kafka: KafkaConfig, cfg: TrainerConfig, learner_cfg: LearnerConfig) -> int:
    """The `stream-app trainer` process: metrics server, signals, watchdog, then the loop.

    The watchdog exits the process (status 75) when the loop stalls for
    `cfg.stall_timeout_s`: run it under a supervisor that restarts it.
    """
    stop = threading.Event()
    stop_on_signals(stop)
    watchdog = Watchdog(cfg.stall_timeout_s, component="trainer")
    freeze_survivors()
    if cfg.threads is not None:
        set_threads(cfg.threads)
    trainer = make_trainer(kafka, cfg, learner_cfg, stop=stop, watchdog=watchdog)

    def ready() -> tuple[bool, str]:
        return (True, "ready") if trainer.ready else (False, "restoring from the changelog")

    with contextlib.ExitStack() as stack:
        stack.enter_context(watchdog)
        stack.enter_context(MetricsServer(trainer.metrics.registry, cfg.metrics_host,
                                          cfg.metrics_port, ready=ready))
        if cfg.stats_file:
            try:
                out = stack.enter_context(open(cfg.stats_file, "ab"))  # noqa: SIM115
            except OSError as exc:
                raise ConfigError(f"cannot open trainer.stats_file {cfg.stats_file}: "
                                  f"{exc.strerror}") from exc

            trainer.on_batch = stats_writer(out, cfg.stats_file)
        return trainer.run()


def stats_writer(out: BinaryIO, name: str, repeats: Repeats | None = None
                 ) -> Callable[[BatchResult], None]:
    """Appends each batch's result to `out` as a JSON line. A failed write (a full disk) is
    logged, at most once per 30 s, and training goes on: the batch is committed already,
    and raised it stopped the trainer at every restart's first batch."""
    repeats = repeats or Repeats()

    def write(result: BatchResult) -> None:
        try:
            out.write(orjson.dumps(dataclasses.asdict(result)) + b"\n")
            out.flush()
        except OSError as exc:
            suffix = repeats.admit("write")
            if suffix is not None:
                log.warning("cannot write trainer.stats_file %s (%s): a batch's line is lost, "
                            "training goes on%s", name, exc.strerror or exc, suffix)

    return write
