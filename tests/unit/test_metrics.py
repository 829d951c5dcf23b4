"""Metrics classes, the /metrics + health server, and the JSONL recorder.

Every test builds its own `CollectorRegistry`: that is the point of having no
module-global metrics, and it keeps these tests independent of each other.
"""

from __future__ import annotations

import http.client
import math
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from stream_app.config import ConfigError, KafkaConfig
from stream_app.core import LearnerConfig
from stream_app.observability import (
    EvalModel,
    EventOutcome,
    FallbackReason,
    FreshnessSince,
    MetricsRecorder,
    MetricsServer,
    ScorerMetrics,
    TrainerMetrics,
    declared_metric_names,
    exposed_names,
)
from stream_app.observability import server as server_module
from stream_app.observability.metrics import (
    BATCH_EVENTS_BUCKETS,
    FRESHNESS_BUCKETS_S,
    metric_objects,
)
from stream_app.observability.scorer_metrics import LATENCY_BUCKETS_S
from stream_app.trainer import TrainerConfig, make_trainer
from tests.integration.kafka_helpers import wait_until

BOUNDED_LABELS = {"topic", "partition", "outcome", "reason", "table", "model", "k", "since",
                  "phase"}
UNIT_SUFFIXES = ("_total", "_seconds", "_events", "_requests", "_rows", "_messages", "_info",
                 "_loss", "_hit_rate", "_recall", "_mrr", "_ready", "_sampled")


def _trainer(**kwargs: object) -> TrainerMetrics:
    return TrainerMetrics(CollectorRegistry(), k=10, **kwargs)  # type: ignore[arg-type]


def _value(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def test_both_classes_register_on_fresh_registries_without_clashes() -> None:
    for _ in range(2):  # twice: nothing global leaks between instances
        _trainer(input_topics=["clicks", "purchases"], dlq_reasons=["schema"])
        ScorerMetrics(CollectorRegistry(), dlq_reasons=["schema"], error_reasons=["bad_k"])


def test_same_registry_twice_is_a_clash() -> None:
    registry = CollectorRegistry()
    TrainerMetrics(registry, k=10)
    with pytest.raises(ValueError, match="Duplicated"):
        TrainerMetrics(registry, k=10)


def test_names_prefixed_with_units_and_labels_bounded() -> None:
    for metrics in (_trainer(), ScorerMetrics(CollectorRegistry())):
        objects = metric_objects(metrics)
        assert len(objects) >= 10
        for attr, metric in objects.items():
            name = metric._name  # noqa: SLF001 (no public accessor in prometheus_client)
            assert name.startswith("stream_app_"), attr
            kind = metric._type  # noqa: SLF001
            full = name + ("_total" if kind == "counter" else "_info" if kind == "info" else "")
            assert full.endswith(UNIT_SUFFIXES), f"{attr}: {full} has no unit suffix"
            assert set(metric._labelnames) <= BOUNDED_LABELS, attr  # noqa: SLF001


def test_required_names_are_declared() -> None:
    names = declared_metric_names()
    for required in (
        "stream_app_events_total", "stream_app_batch_size_events_bucket",
        "stream_app_step_seconds_bucket", "stream_app_evaluate_seconds_bucket",
        "stream_app_transaction_seconds_bucket",
        "stream_app_batch_seconds_bucket", "stream_app_training_loss",
        "stream_app_prequential_hit_rate", "stream_app_prequential_recall",
        "stream_app_prequential_mrr", "stream_app_prequential_sampled",
        "stream_app_freshness_seconds_bucket",
        "stream_app_table_rows", "stream_app_admissions_total", "stream_app_evictions_total",
        "stream_app_dlq_records_total", "stream_app_consumer_lag_messages",
        "stream_app_transaction_aborts_total", "stream_app_restore_seconds",
        "stream_app_restored_rows", "stream_app_rows_published_total",
        "stream_app_build_info", "stream_app_scorer_request_seconds_bucket",
        "stream_app_scorer_batch_size_requests_bucket", "stream_app_scorer_fallbacks_total",
        "stream_app_scorer_errors_total", "stream_app_scorer_table_rows",
        "stream_app_scorer_staleness_seconds", "stream_app_scorer_ready",
    ):
        assert required in names, required


def test_buckets_resolve_the_targets() -> None:
    # A quantile is interpolated inside a bucket: the targets must be bucket edges,
    # with several edges below them.
    assert 1.0 in FRESHNESS_BUCKETS_S and sum(b < 1.0 for b in FRESHNESS_BUCKETS_S) >= 8
    assert 0.02 in LATENCY_BUCKETS_S
    assert sum(0.001 <= b <= 0.05 for b in LATENCY_BUCKETS_S) >= 12


def test_batch_sizes_resolve_up_to_the_largest_batch_and_no_restore_reads_as_none() -> None:
    """The batch-size buckets stopped at 2**15 while batch_max goes to 1,000,000 (a p99
    flattened there), and before any restore the dashboard read 'snapshot age 0 s'."""
    from stream_app.config import CONSUME_MAX

    assert max(BATCH_EVENTS_BUCKETS) >= CONSUME_MAX
    m = _trainer(input_topics=["clicks"], dlq_reasons=["schema"])
    assert _value(m.registry, "stream_app_restore_snapshot_age_seconds") == -1.0


def test_trainer_counters_exist_at_zero_and_count() -> None:
    m = _trainer(input_topics=["clicks"], dlq_reasons=["schema"])
    reg = m.registry
    for outcome in EventOutcome:
        assert _value(reg, "stream_app_events_total", topic="clicks", outcome=outcome) == 0.0
    assert _value(reg, "stream_app_dlq_records_total", reason="schema") == 0.0
    assert _value(reg, "stream_app_rows_published_total", table="item") == 0.0
    m.count_events("clicks", EventOutcome.DUPLICATE, 2)
    m.count_dlq("schema")
    assert _value(reg, "stream_app_events_total", topic="clicks", outcome="duplicate") == 2.0
    assert _value(reg, "stream_app_dlq_records_total", reason="schema") == 1.0
    assert _value(reg, "stream_app_build_info", version="0.1.0", role="trainer") == 1.0


def test_prequential_gauges_carry_model_and_k() -> None:
    m = _trainer()
    m.set_prequential(EvalModel.MODEL, hit_rate=0.3, recall=0.25, mrr=0.1)
    m.set_prequential(EvalModel.POPULARITY, hit_rate=0.2, recall=0.15, mrr=0.05)
    reg = m.registry
    assert _value(reg, "stream_app_prequential_hit_rate", model="model", k="10") == 0.3
    assert _value(reg, "stream_app_prequential_recall", model="popularity", k="10") == 0.15
    assert _value(reg, "stream_app_prequential_mrr", model="model", k="10") == 0.1


def test_a_batch_publishes_its_evaluated_steps_weighted_by_their_events() -> None:
    """A forget splits a batch: its 3-event last step alone (hit rate 0 or 1) used to set
    the gauges; a step with no finite loss does not count for the loss."""
    from stream_app.core.evaluate import EvalStats, RankMetrics
    from stream_app.trainer.observe import report_prequential

    def step(n: int, hit: float, loss: float, exact: bool = True) -> EvalStats:
        # Popularity's figures differ from the model's: swapped labels must show.
        return EvalStats(n_events=n, k=10, loss=loss, exact=exact,
                         model=RankMetrics(hit_rate=hit, recall=hit / 2, mrr=hit / 4),
                         popularity=RankMetrics(hit_rate=hit / 3, recall=hit / 6,
                                                mrr=hit / 12))

    m = _trainer()
    report_prequential(m, [step(997, 0.3, 2.0), step(3, 1.0, float("nan"))])
    reg = m.registry
    hit = _value(reg, "stream_app_prequential_hit_rate", model="model", k="10")
    assert hit == pytest.approx(0.3 * 0.997 + 1.0 * 0.003)
    for name, model, popularity in (("hit_rate", hit, hit / 3), ("recall", hit / 2, hit / 6),
                                    ("mrr", hit / 4, hit / 12)):
        metric = f"stream_app_prequential_{name}"
        assert _value(reg, metric, model="model", k="10") == pytest.approx(model)
        assert _value(reg, metric, model="popularity", k="10") == pytest.approx(popularity)
    assert _value(reg, "stream_app_prequential_loss") == 2.0
    assert _value(reg, "stream_app_prequential_sampled") == 0.0
    report_prequential(m, [])  # nothing evaluated: the gauges keep the last batch's values
    assert _value(reg, "stream_app_prequential_hit_rate", model="model", k="10") == hit
    report_prequential(m, [step(10, 0.3, 2.0), step(10, 0.3, 2.0, exact=False)])
    assert _value(reg, "stream_app_prequential_sampled") == 1.0  # ranks are estimates


def test_freshness_clamps_clock_skew_to_zero() -> None:
    m = _trainer()
    m.observe_freshness(FreshnessSince.PRODUCE_TIME, [-0.5, 0.2, 0.8, 1.5])
    reg = m.registry
    assert _value(reg, "stream_app_freshness_seconds_count", since="produce_time") == 4.0
    assert _value(reg, "stream_app_freshness_seconds_bucket", since="produce_time",
                  le="0.01") == 1.0
    assert _value(reg, "stream_app_freshness_seconds_bucket", since="produce_time",
                  le="1.0") == 3.0
    assert _value(reg, "stream_app_freshness_seconds_count", since="event_time") == 0.0


def test_an_event_whose_record_has_no_timestamp_has_no_produce_time_freshness() -> None:
    """librdkafka gives -1 for a record without one: it counted as ~56 years late."""
    from stream_app.trainer.batch import Decoded, TxnCounts
    from stream_app.trainer.observe import observe_commit

    m = _trainer()
    counts = TxnCounts(applied_times=[(1_000, 1_500), (1_000, -1)], forgets=2)
    observe_commit(m, counts, [], Decoded(), [], [], published_ms=2_000,
                   table_sizes={"users": 0, "items": 0}, evals=[])
    reg = m.registry
    assert _value(reg, "stream_app_forgets_total") == 2.0  # counted at the commit
    assert _value(reg, "stream_app_freshness_seconds_count", since="event_time") == 2.0
    assert _value(reg, "stream_app_freshness_seconds_count", since="produce_time") == 1.0
    assert _value(reg, "stream_app_freshness_seconds_sum", since="produce_time") == 0.5


def test_freshness_buckets_resolve_a_backlog_of_minutes() -> None:
    """A batch 60-83 s behind read as p99 297.6 s (the 60-300 s bucket's top) in the demo."""
    import numpy as np

    from stream_app.demo.scrape import quantile

    bounds = sorted(b for b in FRESHNESS_BUCKETS_S if 1.0 <= b <= 600.0)
    assert all(hi / lo <= 2.0 for lo, hi in zip(bounds, bounds[1:], strict=False))
    values = np.linspace(60.5, 83.0, 10_000)
    cumulative = [(le, float((values <= le).sum())) for le in FRESHNESS_BUCKETS_S]
    estimate = quantile(0.99, [*cumulative, (math.inf, float(len(values)))])
    assert estimate == pytest.approx(float(np.quantile(values, 0.99)), rel=0.1)


def test_lag_is_set_and_forgotten_on_revoke() -> None:
    m = _trainer()
    m.set_lag("clicks", 0, 42)
    m.set_lag("clicks", 1, -3)  # a racing watermark read never shows negative lag
    reg = m.registry
    assert _value(reg, "stream_app_consumer_lag_messages", topic="clicks", partition="0") == 42
    assert _value(reg, "stream_app_consumer_lag_messages", topic="clicks", partition="1") == 0
    m.forget_partitions([("clicks", 0), ("clicks", 7)])
    assert _value(reg, "stream_app_consumer_lag_messages", topic="clicks", partition="0") is None


def test_scorer_requests_fallbacks_staleness_and_ready() -> None:
    m = ScorerMetrics(CollectorRegistry())
    reg = m.registry
    for phase in ("queue", "compute", "total"):
        assert _value(reg, "stream_app_scorer_request_seconds_count", phase=phase) == 0.0
    m.observe_request(queue_s=0.001, compute_s=0.003, total_s=0.005)
    m.fallbacks.labels(reason=FallbackReason.UNKNOWN_USER).inc()
    assert _value(reg, "stream_app_scorer_request_seconds_bucket", phase="total",
                  le="0.005") == 1.0
    assert _value(reg, "stream_app_scorer_fallbacks_total", reason="unknown_user") == 1.0
    assert _value(reg, "stream_app_scorer_request_seconds_count", phase="produced") == 0.0
    m.observe_request(queue_s=0.001, compute_s=0.003, total_s=0.005, produced_s=45.0)
    m.observe_request(queue_s=0.001, compute_s=0.003, total_s=0.005, produced_s=-0.2)  # skew
    assert _value(reg, "stream_app_scorer_request_seconds_bucket", phase="produced",
                  le="0.0005") == 1.0  # the skewed one, as 0
    assert _value(reg, "stream_app_scorer_request_seconds_bucket", phase="produced",
                  le="10.0") == 1.0  # a request that waited 45 s in Kafka
    assert _value(reg, "stream_app_scorer_request_seconds_count", phase="produced") == 2.0
    staleness = _value(reg, "stream_app_scorer_staleness_seconds")
    assert staleness is not None and math.isnan(staleness)
    now = time.time()
    m.set_newest_row_time(now - 30)
    m.set_newest_row_time(now - 100)  # an older row loaded later does not move it back
    staleness = _value(reg, "stream_app_scorer_staleness_seconds")
    assert staleness is not None and 29 <= staleness < 60
    m.set_ready(True)
    assert _value(reg, "stream_app_scorer_ready") == 1.0


def test_exposed_names_include_unlabelled_children() -> None:
    names = exposed_names(ScorerMetrics(CollectorRegistry()).registry)
    assert "stream_app_scorer_errors_total" in names  # no reason pre-created, still declared
    assert "stream_app_scorer_request_seconds_sum" in names


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (http on localhost)
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_server_serves_metrics_health_and_readiness() -> None:
    m = _trainer(input_topics=["clicks"])
    state = {"ready": False}

    def ready() -> tuple[bool, str]:
        return (True, "ok") if state["ready"] else (False, "restoring from changelog")

    with MetricsServer(m.registry, host="127.0.0.1", port=0, ready=ready) as server:
        base = f"http://127.0.0.1:{server.port}"
        status, body = _get(f"{base}/metrics")
        assert status == 200
        assert 'stream_app_events_total{outcome="applied",topic="clicks"} 0.0' in body
        assert _get(f"{base}/healthz") == (200, "ok\n")
        assert _get(f"{base}/readyz") == (503, "restoring from changelog\n")
        state["ready"] = True
        assert _get(f"{base}/readyz") == (200, "ok\n")
        assert _get(f"{base}/nope")[0] == 404
        port = server.port
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_server_start_returns_port_and_close_is_idempotent() -> None:
    server = MetricsServer(CollectorRegistry(), port=0)
    with pytest.raises(RuntimeError):
        _ = server.port
    port = server.start()
    assert port == server.port > 0
    with pytest.raises(RuntimeError, match="already started"):
        server.start()
    server.close()
    server.close()


def test_server_rejects_bad_port() -> None:
    with pytest.raises(ValueError, match="0..65535"):
        MetricsServer(CollectorRegistry(), port=70000)


def test_server_errors_name_the_setting_to_fix() -> None:
    """A taken port was a traceback (exit 1); an empty host bound every interface."""
    with pytest.raises(ConfigError, match="metrics host is empty"):
        MetricsServer(CollectorRegistry(), host=" ", port=0)
    with MetricsServer(CollectorRegistry(), port=0) as taken, \
            pytest.raises(ConfigError, match="--metrics-port"):
        MetricsServer(CollectorRegistry(), port=taken.port).start()


def test_idle_connections_are_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each held a thread for good: anyone reaching the port could pile them up."""
    assert 0 < (server_module._QuietHandler.timeout or 0) <= 30  # noqa: SLF001 - was None
    monkeypatch.setattr(server_module._QuietHandler, "timeout", 0.3)  # noqa: SLF001
    before = threading.active_count()
    with MetricsServer(CollectorRegistry(), port=0) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
        for s in idle:
            s.settimeout(5)
            assert s.recv(1) == b""  # the server hung up on it
            s.close()
        deadline = time.monotonic() + 5
        while threading.active_count() > before + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threading.active_count() == before + 1  # the serving loop alone


def test_connections_over_the_cap_are_closed_and_the_cap_frees_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle connections each hold a thread until their timeout: past the cap a new
    one is hung up on at once, and once they go, scrapes are served again."""
    monkeypatch.setattr(server_module, "MAX_CONNECTIONS", 4)
    # A handler would hold an extra connection this long; the client gives up far sooner.
    monkeypatch.setattr(server_module._QuietHandler, "timeout", 60.0)  # noqa: SLF001
    with MetricsServer(CollectorRegistry(), port=0) as server:
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
        time.sleep(0.3)  # each accepted and sitting in its handler thread
        extra = socket.create_connection(("127.0.0.1", server.port))
        extra.settimeout(5)  # served by a handler, recv would time out instead
        assert extra.recv(1) == b""  # hung up on, not left waiting for a slot
        extra.close()
        for s in held:
            s.close()
        # The held handlers notice the close and give their slots back.
        wait_until(lambda: _answers(f"http://127.0.0.1:{server.port}/metrics"), timeout=5,
                   interval=0.05, what="the cap to free up")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (localhost)
            return bool(resp.status == 200)
    except (OSError, http.client.HTTPException):
        return False


def test_connections_trickling_their_request_lose_their_slot_at_the_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The idle timeout counts per read: clients sending a byte every few seconds held
    every slot, and /healthz failed for as long as they kept on (security review)."""
    monkeypatch.setattr(server_module, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(server_module, "REQUEST_DEADLINE_S", 0.5)
    with MetricsServer(CollectorRegistry(), port=0) as server:
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
        stop = threading.Event()

        def trickle() -> None:  # a byte a connection every 0.2 s, far under the idle timeout
            while not stop.wait(0.2):
                for s in held:
                    try:
                        s.sendall(b"G")
                    except OSError:
                        pass

        feeder = threading.Thread(target=trickle, daemon=True)
        feeder.start()
        try:
            wait_until(lambda: _answers(f"http://127.0.0.1:{server.port}/healthz"), timeout=5,
                       interval=0.1, what="a slot freed by the deadline")
        finally:
            stop.set()
            feeder.join()
            for s in held:
                s.close()


def test_recorder_writes_jsonl_snapshots(tmp_path: Path) -> None:
    m = _trainer(input_topics=["clicks"])
    path = tmp_path / "runs" / "metrics.jsonl"
    names = {"stream_app_events_total", "stream_app_training_loss"}
    with MetricsRecorder(m.registry, path, interval_s=0.05, names=names) as recorder:
        m.training_loss.set(0.7)
        recorder.record()
    lines = [orjson.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) >= 2
    last = lines[-1]
    assert {s["name"] for s in last["samples"]} == names
    loss = [s["value"] for s in last["samples"] if s["name"] == "stream_app_training_loss"]
    assert loss == [0.7]


def test_every_process_exposes_its_start_time_and_memory() -> None:
    # The ProcessRestarting alert reads process_start_time_seconds.
    from prometheus_client import generate_latest

    for metrics in (_trainer(), ScorerMetrics(CollectorRegistry())):
        text = generate_latest(metrics.registry).decode()
        assert "\nprocess_start_time_seconds " in text
        assert "\nprocess_resident_memory_bytes " in text


def test_the_trainer_ready_gauge_reads_what_readyz_answers() -> None:
    """A trainer stuck restoring had no series an alert could see (observability review)."""
    trainer = make_trainer(KafkaConfig(bootstrap_servers="127.0.0.1:9"), TrainerConfig(),
                           LearnerConfig(dim=4))
    reg = trainer.metrics.registry
    assert _value(reg, "stream_app_trainer_ready") == 0.0
    trainer.ready = True
    assert _value(reg, "stream_app_trainer_ready") == 1.0
