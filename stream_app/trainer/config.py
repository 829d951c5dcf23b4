"""The trainer's own settings (the learner's live in `stream_app.core.LearnerConfig`)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from stream_app.config import CONSUME_MAX, ConfigError, check_stall_timeout
from stream_app.core import LearnerConfig
from stream_app.device import check_threads
from stream_app.kafka.consumer import CO_PARTITIONED_ASSIGNOR
from stream_app.trainer.own_writes import default_partitioner

_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,200}")  # fullmatch: `$` also matches before a "\n"
INSTANCE_ID_MAX = 100
"""It prefixes the model version, `<instance_id>-<step>`, which the embedding and
meta schemas cap at 128 characters (a step has up to 19 digits)."""
MAX_FUTURE_SHARE_OF_TTL = 0.1


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainerConfig:
    """How the trainer consumes, batches, publishes and reports.

    `instance_id` must be stable across restarts of the same instance: the
    transactional id is derived from it, which is what fences a zombie.

    `batch_max` bounds one transaction (a poll); `step_max` one learning step.
    A full batch is learned in steps of at most `step_max` events (the first
    ones evaluated before they are learned, see `batch.plan_steps`), and
    every row they changed is published once, in the batch's transaction.
    So under load a transaction carries several steps and a row touched by
    each is written once, not per step (fewer rows per event, BENCHMARKS.md
    "Ingest"), while the model learns in the same steps as when each step was
    its own transaction. When input is slow, batches end at `batch_wait_ms`
    and hold one step.

    `stall_timeout_s`: the process exits with status 75 when the loop makes no
    progress (an iteration, a transaction, a restored chunk) for this long, so
    a supervisor restarts it; see `stream_app.watchdog`. It must exceed
    the longest legitimate step: a transaction's steps give up after 60 s and
    an abort may wait for the broker, hence the default of 120 s.

    `threads`: torch intra-op threads (`torch.set_num_threads` at start); None keeps
    torch's default (one per core). On a small machine shared with the broker, 1 avoids
    fighting it for the cores (BENCHMARKS.md, Freshness).

    `snapshot_dir`: where to keep a local snapshot of the learner (off when
    unset), written every `snapshot_interval_s` (idle too, after changes) and at
    shutdown; a restore older than `snapshot_max_age_s` ignores it (and one older than
    the `embeddings` topic's delete.retention.ms, 24 h by default, read at start). See
    `stream_app.trainer.snapshot`.
    """

    group_id: str = "stream-app-trainer"
    instance_id: str = "trainer-0"
    batch_max: int = 10_000
    step_max: int = 2000
    batch_wait_ms: int = 200
    device: str = "auto"
    threads: int | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    exit_when_idle: float | None = None
    max_future_ms: int = 24 * 3600 * 1000
    restore: bool = True
    stats_file: str | None = None
    stall_timeout_s: float = 120.0
    snapshot_dir: str | None = None
    snapshot_interval_s: float = 300.0
    snapshot_max_age_s: float = 6 * 3600.0

    def __post_init__(self) -> None:
        if not self.metrics_host.strip():
            raise ConfigError("trainer.metrics_host is empty (it would bind every interface); "
                              "give an address, e.g. 127.0.0.1 or 0.0.0.0")
        for name in ("group_id", "instance_id"):
            if not _ID_RE.fullmatch(getattr(self, name)):
                default = ("; its default is the topic prefix + 'stream-app-trainer', so a "
                           "prefix over 182 characters needs its own --group-id"
                           if name == "group_id" else "")
                raise ConfigError(f"trainer.{name} must be 1-200 of [A-Za-z0-9._-], "
                                  f"got {getattr(self, name)!r}{default}")
        if len(self.instance_id) > INSTANCE_ID_MAX:
            raise ConfigError(f"trainer.instance_id must be at most {INSTANCE_ID_MAX} characters "
                              f"(it prefixes the published model version), got "
                              f"{len(self.instance_id)}")
        for name in ("batch_max", "step_max"):
            if not 0 < getattr(self, name) <= CONSUME_MAX:
                raise ConfigError(f"trainer.{name} must be in 1..{CONSUME_MAX:,} (what one "
                                  f"Kafka consume call takes), got {getattr(self, name)}")
        if not 0 <= self.batch_wait_ms < math.inf:
            raise ConfigError(f"trainer.batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"trainer.metrics_port must be in 0..65535, got {self.metrics_port}")
        if self.exit_when_idle is not None and not 0 < self.exit_when_idle < math.inf:
            raise ConfigError(f"trainer.exit_when_idle must be > 0 seconds, got "
                              f"{self.exit_when_idle}")
        check_stall_timeout("trainer", self.stall_timeout_s, self.batch_wait_ms)
        check_threads(self.threads, "trainer.threads")
        for name in ("snapshot_interval_s", "snapshot_max_age_s"):
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(f"trainer.{name} must be > 0 seconds, got "
                                  f"{getattr(self, name)}")
        if self.stats_file is not None and not self.stats_file.strip():
            raise ConfigError("trainer.stats_file is empty; give a file or leave it unset")
        if self.snapshot_dir is not None and not self.snapshot_dir.strip():
            raise ConfigError("trainer.snapshot_dir is empty; give a folder or leave it unset")
        if self.snapshot_dir is not None and not self.restore:
            raise ConfigError("trainer.snapshot_dir needs restore: without it (--no-restore) the "
                              "model does not match the changelog a snapshot is tagged with; "
                              "drop one of the two")
        name_bytes = len(f"{self.transactional_id}.snapshot.tmp".encode())  # as written
        if self.snapshot_dir is not None and name_bytes > 255:
            raise ConfigError(f"the snapshot file <group_id>.<instance_id>.snapshot.tmp would "
                              f"be {name_bytes} bytes, over the 255 a file name may have: "
                              "shorten trainer.group_id or trainer.instance_id")
        if self.max_future_ms < 0:
            raise ConfigError(f"trainer.max_future_ms must be >= 0, got {self.max_future_ms}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            raise ConfigError(f"trainer.device must be auto, cpu, cuda, cuda:N or mps, got "
                              f"{self.device!r}")

    @property
    def transactional_id(self) -> str:
        return f"{self.group_id}.{self.instance_id}"


def check_with_learner(cfg: TrainerConfig, learner: LearnerConfig) -> None:
    """Refuse settings that are valid alone but not together.

    The learner's clock is its newest event time, and an event may be up to
    `max_future_ms` ahead of the wall clock: with an idle TTL, one such event
    makes every row idle for `idle_ttl_ms - max_future_ms` look expired. A
    tenth bounds how early a row can go.
    """
    ttl = learner.idle_ttl_ms
    if ttl > 0 and cfg.max_future_ms > ttl * MAX_FUTURE_SHARE_OF_TTL:
        raise ConfigError(
            f"trainer.max_future_ms ({cfg.max_future_ms}) must be at most a tenth of "
            f"learner.idle_ttl_ms ({ttl}): one event that far ahead would evict every row "
            f"idle for over {max(0, ttl - cfg.max_future_ms) / 3_600_000:.1f} h of event "
            "time. Lower "
            f"trainer.max_future_ms to {int(ttl * MAX_FUTURE_SHARE_OF_TTL)} or less, or raise "
            "learner.idle_ttl_ms")


def check_with_client(cfg: TrainerConfig, client: Mapping[str, str]) -> None:
    """Refuse librdkafka settings that break a trainer feature, before any long work.

    A snapshot is tagged with the changelog offsets the trainer's own commits
    lead to (`own_writes`), computed with librdkafka's default partitioner; with
    another one no snapshot could ever be shown to match the changelog.
    """
    strategy = client.get("partition.assignment.strategy", CO_PARTITIONED_ASSIGNOR)
    if str(strategy).lower() != CO_PARTITIONED_ASSIGNOR:
        # Asked here, not when the group consumer is made: that comes after the restore.
        raise ConfigError(
            f"librdkafka setting partition.assignment.strategy={strategy!r}: the trainer needs "
            f"{CO_PARTITIONED_ASSIGNOR!r} (a user's clicks and purchases, partition i of both "
            "topics, go to one trainer). Remove it from -X, --kafka-config or [kafka.client]")
    if cfg.snapshot_dir is not None and not default_partitioner(client):
        raise ConfigError(
            "trainer.snapshot_dir needs librdkafka's default partitioner (consistent_random): "
            "a snapshot's offsets are computed from it. Drop -X partitioner / "
            "topic.partitioner, or trainer.snapshot_dir")
