"""Turn two /metrics pages into one `Status` line of the demo, every half second.

Rates and the freshness p99 are computed over the last few seconds (like
`rate(...[3s])` in PromQL), so the display shows what happens now, not
an average since start. Nothing here talks to Kafka: the demo sees exactly
what an operator's Prometheus would see.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

from stream_app.demo import scrape
from stream_app.demo.scrape import Sample

EVENTS = "stream_app_events_total"
LOSS = "stream_app_training_loss"
HIT_RATE = "stream_app_prequential_hit_rate"
LAG = "stream_app_consumer_lag_messages"
FRESHNESS = "stream_app_freshness_seconds"
ITEM_ROWS = "stream_app_table_rows"
SCORER_LATENCY = "stream_app_scorer_request_seconds"
SCORER_ROWS = "stream_app_scorer_table_rows"


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    """What the live display shows; NaN / None where a process has not said yet."""

    elapsed_s: float
    replayed: int
    replay_total: int
    replay_done: bool
    trainer_up: bool
    scorer_up: bool
    events_done: float
    trained_per_s: float
    loss: float
    hit_rate: float
    hit_rate_popularity: float
    k: str
    lag: float | None
    freshness_p99_s: float
    scorer_p99_s: float
    scorer_requests: float
    trainer_items: float
    scorer_items: float

    @property
    def caught_up(self) -> bool:
        """The trainer has read everything replayed: replay over and no lag left."""
        return self.replay_done and self.lag is not None and self.lag == 0 \
            and self.events_done >= self.replayed


def _item_rows(samples: list[Sample]) -> float | None:
    """Trainer item rows; the label is `item` by the metrics' convention, `items` in some builds."""
    found = scrape.first(samples, ITEM_ROWS, table="item")
    return found if found is not None else scrape.first(samples, ITEM_ROWS, table="items")


def _num(value: float | None) -> float:
    return math.nan if value is None else value


class Watcher:
    """Scrapes the trainer and scorer; remembers the last scrape for windowed rates."""

    def __init__(self, trainer_url: str, scorer_url: str | None, *,
                 window_s: float = 3.0) -> None:
        self.trainer_url, self.scorer_url = trainer_url, scorer_url
        self.window_s = window_s
        self._start = time.monotonic()
        self._history: deque[tuple[float, float, list[scrape.Bucket]]] = deque()
        self.trainer_samples: list[Sample] = []
        self.scorer_samples: list[Sample] = []

    def read(self, *, replayed: int, replay_total: int, replay_done: bool) -> Status:
        now = time.monotonic()
        t_text = scrape.fetch(self.trainer_url)
        s_text = scrape.fetch(self.scorer_url) if self.scorer_url else None
        if t_text is not None:
            self.trainer_samples = scrape.parse(t_text)
        if s_text is not None:
            self.scorer_samples = scrape.parse(s_text)
        t, s = self.trainer_samples, self.scorer_samples
        done = _num(scrape.total(t, EVENTS))
        fresh = scrape.buckets(t, FRESHNESS, since="produce_time")
        rate, fresh_p99 = self._window(now, done, fresh)
        hit = [x for x in t if x.name == HIT_RATE and x.labels.get("model") == "model"]
        return Status(
            elapsed_s=now - self._start, replayed=replayed, replay_total=replay_total,
            replay_done=replay_done, trainer_up=t_text is not None, scorer_up=s_text is not None,
            events_done=0.0 if math.isnan(done) else done, trained_per_s=rate,
            loss=_num(scrape.first(t, LOSS)),
            hit_rate=_num(scrape.first(t, HIT_RATE, model="model")),
            hit_rate_popularity=_num(scrape.first(t, HIT_RATE, model="popularity")),
            k=hit[0].labels.get("k", "?") if hit else "?",
            lag=scrape.total(t, LAG),
            freshness_p99_s=fresh_p99,
            scorer_p99_s=scrape.quantile(0.99, scrape.buckets(s, SCORER_LATENCY, phase="total")),
            scorer_requests=_num(scrape.first(s, SCORER_LATENCY + "_count", phase="total")),
            trainer_items=_num(_item_rows(t)),
            scorer_items=_num(scrape.first(s, SCORER_ROWS, table="item")))

    def _window(self, now: float, done: float,
                fresh: list[scrape.Bucket]) -> tuple[float, float]:
        """Events/s and freshness p99 over the last `window_s` (cumulative p99 at first).

        A window of a few seconds spans several micro-batches, so the rate does
        not flicker between 0 and a burst with every scrape.
        """
        if math.isnan(done):
            return math.nan, math.nan
        self._history.append((now, done, fresh))
        while len(self._history) > 2 and now - self._history[1][0] >= self.window_s:
            self._history.popleft()
        then, done_then, fresh_then = self._history[0]
        if now <= then:
            return math.nan, scrape.quantile(0.99, fresh)
        p99 = scrape.quantile(0.99, scrape.delta(fresh, fresh_then))
        return (done - done_then) / (now - then), \
            p99 if not math.isnan(p99) else scrape.quantile(0.99, fresh)
