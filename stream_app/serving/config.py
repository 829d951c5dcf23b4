"""`ScorerConfig`: every knob of the scorer, frozen and checked before any client exists.

Loaded by `stream_app.config_load.build(ScorerConfig, "scorer", ...)` from the
`[scorer]` file section, `STREAM_APP_SCORER_*` env and CLI flags.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from stream_app.config import CONSUME_MAX, ConfigError, check_stall_timeout
from stream_app.device import check_threads

_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@dataclass(frozen=True, slots=True, kw_only=True)
class ScorerConfig:
    """How the scorer batches, ranks and reports.

    - `batch_max` / `batch_wait_ms`: a micro-batch is scored when it holds
      `batch_max` requests or its oldest request has waited `batch_wait_ms`
      (bounded count and wait; one top-K call per batch). The default wait is
      0: a batch is what arrived while the previous one was ranked, so it
      grows with the load by itself and a lone request waits for nothing.
    - `commit_interval_ms`: request offsets (of acknowledged answers only) are
      committed at most this often; a crash re-answers at most that much
      (clients dedupe by request_id). Each commit is a broker write.
    - `threads`: torch intra-op threads (`torch.set_num_threads` at start);
      None keeps torch's default (one per core). On a small machine shared
      with the broker, 1 avoids fighting it for the cores.
    - `ready_hold_ms`: while `embeddings` is still being loaded, requests are
      held up to this long hoping the load finishes; after that they are
      answered from the partial table with `ready: false` (never silently).
    - `history_max`: how many of a user's `recent_items` (most recent first)
      `exclude_seen` and `explain` use; the trainer bounds the list too
      (`learner.recent_items`), so "seen" means "among the newest
      `min(history_max, recent_items)` interactions".
    - `min_user_updates`: user rows with fewer training updates are "cold" and
      served the popularity ranking (flagged `fallback`).
    - `max_k`: largest `k` served (the schema allows up to 1000).
    - `explain_max`: at most this many supporting recent items per returned item.
    - `exit_when_idle`: stop after this many seconds without any input (tests,
      demo, benchmarks); None runs until SIGTERM/SIGINT.
    - `stall_timeout_s`: the process exits with status 75 when its loop makes
      no progress this long (a hung librdkafka call, see `stream_app.watchdog`),
      so a supervisor restarts it. An idle turn takes at most `batch_wait_ms`.

    >>> ScorerConfig(batch_max=64).batch_max
    64
    """

    group_id: str = "stream-app-scorer"
    client_id: str = "stream-app-scorer"
    device: str = "auto"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9465
    exit_when_idle: float | None = None
    batch_max: int = 256
    batch_wait_ms: float = 0.0
    commit_interval_ms: float = 200.0
    threads: int | None = None
    ready_hold_ms: float = 2000.0
    load_batch: int = 5000
    max_k: int = 1000
    history_max: int = 50
    explain_max: int = 3
    min_user_updates: int = 1
    lag_interval_s: float = 1.0
    stall_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if not self.metrics_host.strip():
            raise ConfigError("scorer.metrics_host is empty (it would bind every interface); "
                              "give an address, e.g. 127.0.0.1 or 0.0.0.0")
        for name in ("batch_max", "load_batch", "max_k", "explain_max"):
            _positive(name, getattr(self, name))
        for name in ("batch_max", "load_batch"):
            if getattr(self, name) > CONSUME_MAX:
                raise ConfigError(f"scorer.{name} must be at most {CONSUME_MAX:,} (what one "
                                  f"Kafka consume call takes), got {getattr(self, name)}")
        if self.min_user_updates < 0:
            raise ConfigError(f"scorer.min_user_updates must be >= 0, got {self.min_user_updates}")
        if self.history_max < 1:  # 0 turned exclude_seen off without a word
            raise ConfigError(f"scorer.history_max must be >= 1, got {self.history_max}; a "
                              "request turns exclusion off with exclude_seen=false")
        for name in ("batch_wait_ms", "ready_hold_ms", "commit_interval_ms"):
            if not 0 <= getattr(self, name) <= 60_000:
                raise ConfigError(f"scorer.{name} must be in 0..60000 ms, "
                                  f"got {getattr(self, name)}")
        if self.max_k > 1000:
            raise ConfigError(f"scorer.max_k must be <= 1000 (the schema's bound), "
                              f"got {self.max_k}")
        if self.explain_max > 100:
            raise ConfigError(f"scorer.explain_max must be <= 100 (the schema's bound on "
                              f"`because`), got {self.explain_max}")
        if not self.group_id.strip():
            raise ConfigError("scorer.group_id is empty: pass --group-id NAME")
        if not self.client_id.strip():  # its clients' ids would be "-embeddings", "-producer"
            raise ConfigError("scorer.client_id is empty: give a name, e.g. stream-app-scorer")
        if not _DEVICE_RE.fullmatch(self.device):
            raise ConfigError(f"scorer.device must be auto, cpu, mps, cuda or cuda:N, "
                              f"got {self.device!r}")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"scorer.metrics_port must be in 0..65535 (0 = free port), "
                              f"got {self.metrics_port}")
        if self.exit_when_idle is not None and not 0 < self.exit_when_idle < math.inf:
            raise ConfigError(f"scorer.exit_when_idle must be > 0 seconds (or unset), "
                              f"got {self.exit_when_idle}")
        _positive("lag_interval_s", self.lag_interval_s)
        check_stall_timeout("scorer", self.stall_timeout_s, self.batch_wait_ms)
        check_threads(self.threads, "scorer.threads")


def _positive(name: str, value: float) -> None:
    if not 0 < value < math.inf:  # NaN fails too
        raise ConfigError(f"scorer.{name} must be > 0, got {value}")
