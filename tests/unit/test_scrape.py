"""The demo's /metrics reading: parse real exposition pages, quantiles as Prometheus does."""

from __future__ import annotations

import io
import math
import socket
from dataclasses import replace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from stream_app.demo import scrape
from stream_app.demo.display import LiveDisplay, Shown, prediction_text, status_lines
from stream_app.demo.watch import Status, Watcher
from stream_app.events import PredictedItem, Prediction
from stream_app.observability import (
    EvalModel,
    EventOutcome,
    FreshnessSince,
    MetricsServer,
    ScorerMetrics,
    TrainerMetrics,
)


def _trainer() -> TrainerMetrics:
    m = TrainerMetrics(CollectorRegistry(), k=20, input_topics=["d.clicks", "d.purchases"])
    m.count_events("d.clicks", EventOutcome.APPLIED, 90)
    m.count_events("d.purchases", EventOutcome.DLQ, 10)
    m.training_loss.set(0.75)
    m.set_prequential(EvalModel.MODEL, hit_rate=0.3, recall=0.3, mrr=0.1)
    m.set_prequential(EvalModel.POPULARITY, hit_rate=0.2, recall=0.2, mrr=0.05)
    m.set_lag("d.clicks", 0, 5)
    m.set_lag("d.clicks", 1, 7)
    m.table_rows.labels(table="item").set(42)
    return m


def _page(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_parse_reads_the_numbers_the_demo_shows() -> None:
    samples = scrape.parse(_page(_trainer().registry))
    assert scrape.total(samples, "stream_app_events_total") == 100
    assert scrape.total(samples, "stream_app_events_total", outcome="applied") == 90
    assert scrape.first(samples, "stream_app_training_loss") == 0.75
    assert scrape.first(samples, "stream_app_prequential_hit_rate", model="popularity") == 0.2
    assert scrape.total(samples, "stream_app_consumer_lag_messages") == 12
    assert scrape.first(samples, "stream_app_no_such_metric") is None
    assert scrape.total(samples, "stream_app_no_such_metric") is None


def test_quantile_matches_the_true_quantile_within_one_bucket() -> None:
    m = _trainer()
    rng = np.random.default_rng(0)
    observed = rng.uniform(0.0, 2.0, size=5000)
    m.observe_freshness(FreshnessSince.PRODUCE_TIME, observed)
    buckets = scrape.buckets(scrape.parse(_page(m.registry)), "stream_app_freshness_seconds",
                             since="produce_time")
    assert buckets[-1] == (math.inf, 5000.0)
    for q in (0.5, 0.9, 0.99):
        # Buckets are 0.25 s wide at most around here; interpolation is exact for a uniform law.
        assert scrape.quantile(q, buckets) == pytest.approx(np.quantile(observed, q), abs=0.05)


def test_quantile_edge_cases_follow_prometheus() -> None:
    assert math.isnan(scrape.quantile(0.99, []))
    assert math.isnan(scrape.quantile(0.99, [(1.0, 0.0), (math.inf, 0.0)]))
    # A rank in the +Inf bucket answers the highest finite bound.
    assert scrape.quantile(0.99, [(1.0, 1.0), (2.0, 1.0), (math.inf, 10.0)]) == 2.0
    with pytest.raises(ValueError, match="within"):
        scrape.quantile(1.5, [(1.0, 1.0)])


def test_delta_isolates_the_observations_of_one_window() -> None:
    m = _trainer()
    m.observe_freshness(FreshnessSince.PRODUCE_TIME, [30.0] * 100)  # an old backlog
    before = scrape.buckets(scrape.parse(_page(m.registry)), "stream_app_freshness_seconds",
                            since="produce_time")
    m.observe_freshness(FreshnessSince.PRODUCE_TIME, [0.05] * 100)  # caught up now
    now = scrape.buckets(scrape.parse(_page(m.registry)), "stream_app_freshness_seconds",
                         since="produce_time")
    assert scrape.quantile(0.99, now) > 10
    assert scrape.quantile(0.99, scrape.delta(now, before)) <= 0.05


def test_fetch_answers_none_while_nothing_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert scrape.fetch(f"http://127.0.0.1:{port}/metrics", timeout_s=0.5) is None


def test_watcher_reads_a_trainer_and_a_scorer_over_http() -> None:
    trainer = _trainer()
    scorer = ScorerMetrics(CollectorRegistry())
    for _ in range(99):
        scorer.observe_request(queue_s=0.001, compute_s=0.001, total_s=0.004)
    scorer.observe_request(queue_s=0.001, compute_s=0.001, total_s=0.9)
    with MetricsServer(trainer.registry, port=0) as t, MetricsServer(scorer.registry, port=0) as s:
        watcher = Watcher(f"http://127.0.0.1:{t.port}/metrics",
                          f"http://127.0.0.1:{s.port}/metrics")
        first = watcher.read(replayed=100, replay_total=100, replay_done=True)
        trainer.count_events("d.clicks", EventOutcome.APPLIED, 50)
        second = watcher.read(replayed=150, replay_total=150, replay_done=True)
    assert first.trainer_up and first.scorer_up
    assert first.loss == 0.75 and first.k == "20"
    assert (first.hit_rate, first.hit_rate_popularity) == (0.3, 0.2)
    assert first.lag == 12 and not first.caught_up
    assert first.trainer_items == 42
    assert second.events_done == 150 and second.trained_per_s > 0
    assert first.scorer_requests == 100
    assert first.scorer_p99_s == pytest.approx(0.004)  # 99 of 100 in the 4 ms bucket


def _status(**kw: object) -> Status:
    base: dict[str, object] = dict(
        elapsed_s=3.0, replayed=10, replay_total=10, replay_done=True, trainer_up=True,
        scorer_up=True, events_done=10.0, trained_per_s=5.0, loss=0.5, hit_rate=0.3,
        hit_rate_popularity=0.2, k="20", lag=0.0, freshness_p99_s=0.25, scorer_p99_s=0.004,
        scorer_requests=3.0, trainer_items=5.0, scorer_items=5.0)
    base.update(kw)
    return Status(**base)  # type: ignore[arg-type]


def test_display_redraws_in_place_on_a_tty_and_logs_lines_otherwise() -> None:
    tty = io.StringIO()
    live = LiveDisplay(tty, tty=True)
    live.show(_status())
    live.show(_status(loss=math.nan))
    block = len(status_lines(_status()))
    assert tty.getvalue().count(f"\x1b[{block}F") == 1, "second draw moves up over the first"
    assert "HitRate@20" in tty.getvalue() and "250.0 ms" in tty.getvalue()
    plain = io.StringIO()
    log = LiveDisplay(plain, tty=False, plain_every_s=60)
    log.show(_status())
    log.show(_status())  # within the interval: not repeated
    log.show(_status(), force=True)
    assert "\x1b" not in plain.getvalue() and plain.getvalue().count("\n") == 2
    assert _status(lag=None).caught_up is False
    assert _status(events_done=9.0).caught_up is False and _status().caught_up


def test_predictions_read_as_titles_with_because_you_watched() -> None:
    pred = Prediction(request_id="r", user_id="7", model_version="m-3", fallback=False,
                      latency_ms=4.2, items=(PredictedItem(item_id="2", score=1.5,
                                                           because=("1",)),))
    text = prediction_text(Shown(user_id="7", recent=["1"], prediction=pred),
                           {"1": "Alien (1979)", "2": "Aliens (1986)"})
    assert "recently: Alien (1979)" in text
    assert "Aliens (1986)   because you watched Alien (1979)" in text
    cold = replace(pred, fallback=True, items=(PredictedItem(item_id="9", score=0.1),))
    text = prediction_text(Shown(user_id="x", recent=[], prediction=cold), {})
    assert "never seen" in text and "popularity fallback" in text and "item 9" in text
    assert "no answer" in prediction_text(Shown(user_id="x", recent=[], prediction=None), {})
