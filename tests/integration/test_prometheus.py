"""A real Prometheus scrapes a real trainer and scorer: the series the dashboard uses exist.

Prometheus (`/usr/bin/prometheus`, Debian package `prometheus`) runs on
loopback with a generated config (scrape every second) and a temporary TSDB;
the trainer and the scorer run as `stream-app` subprocesses on the session
broker; the test asks Prometheus' HTTP API, as Grafana would.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream_app.client import ScoreClient
from stream_app.config import KafkaConfig
from stream_app.demo.processes import Child, free_port, start_component, stop_all
from stream_app.events import ScoreRequest
from stream_app.kafka.broker_process import pdeathsig_prefix
from stream_app.replay import produce_records
from stream_app.sources.generate import generate
from tests.integration.kafka_helpers import wait_until

N_EVENTS = 1500
Result = list[tuple[dict[str, str], float]]
Query = Callable[[str], Result]


def _prometheus_binary() -> str:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus"
                                           if Path("/usr/bin/prometheus").exists() else None)
    if found is None:
        pytest.fail("prometheus is not installed: `apt-get install prometheus` (Debian) or put "
                    "the official binary on PATH; this test needs a real Prometheus server")
    return found


def _config(targets: dict[str, str]) -> str:
    jobs = "".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
        for job, target in targets.items())
    return f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{jobs}"


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Query]]:
    """Factory: start Prometheus scraping {job: host:port}; returns its query function."""
    binary = _prometheus_binary()
    procs: list[subprocess.Popen[bytes]] = []

    def start(targets: dict[str, str]) -> Query:
        (tmp_path / "prometheus.yml").write_text(_config(targets))
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        procs.append(subprocess.Popen(  # noqa: S603 (dies with pytest, even a SIGKILLed one)
            [*pdeathsig_prefix(), binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        return lambda expr: _query(port, expr)

    try:
        yield start
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _query(port: int, expr: str) -> Result:
    """Instant query: (labels, value) per series; empty while Prometheus is not up yet."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (loopback)
            body = json.load(resp)
    except (urllib.error.URLError, OSError):
        return []
    assert body["status"] == "success", body
    return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]


def _host_port(child: Child) -> str:
    return urllib.parse.urlparse(child.metrics_url).netloc


def test_prometheus_scrapes_training_and_serving_series(
        kafka: KafkaConfig, prometheus_for: Callable[[dict[str, str]], Query],
        tmp_path: Path) -> None:
    produce_records(kafka, generate(N_EVENTS, n_users=60, n_items=40, seed=7), total=N_EVENTS,
                    rate=0, progress=False, label="test")
    common = ["--bootstrap-servers", kafka.bootstrap_servers, "--topic-prefix",
              kafka.topic_prefix, "--exit-when-idle", "120"]
    children: list[Child] = []
    try:
        children.append(start_component(
            "trainer", [*common, "--group-id", f"{kafka.topic_prefix}trainer", "-L", "dim=16",
                        "-L", "eval_max_events=100", "--batch-max", "300", "--step-max", "100"],
            log_dir=tmp_path))
        children.append(start_component(
            "scorer", [*common, "--group-id", f"{kafka.topic_prefix}scorer"], log_dir=tmp_path))
        query = prometheus_for({"trainer": _host_port(children[0]),
                                "scorer": _host_port(children[1])})
        wait_until(lambda: _alive(children) and sum(v for _, v in query("up")) == 2, 60,
                   what="Prometheus scraping both targets (up == 1)")
        wait_until(lambda: _alive(children) and _value(query(
            "sum(stream_app_events_total)")) >= N_EVENTS, 90, what="the trainer reading all")
        _ask_scorer(kafka, users=["u1", "u2", "u3", "nobody"])
        _check_series(query)
    finally:
        stop_all(children)


def _alive(children: list[Child]) -> bool:
    for child in children:
        if child.exited() is not None:
            raise AssertionError(f"{child.name} exited with {child.exited()}:\n"
                                 f"{child.log_tail()}")
    return True


def _value(result: Result) -> float:
    return result[0][1] if result else -1.0


def _ask_scorer(kafka: KafkaConfig, users: list[str]) -> None:
    requests = [ScoreRequest(request_id=uuid.uuid4().hex, user_id=u, k=5) for u in users]
    with ScoreClient(kafka, client_id=f"{kafka.topic_prefix}test") as client:
        client.send_many(requests)
        got = client.wait([r.request_id for r in requests], timeout_s=30)
    assert len(got) == len(requests), "the scorer should answer every request"


def _series(query: Query, expr: str, at_least: int = 1) -> Callable[[], Result]:
    """A `wait_until` predicate: the query's series once there are `at_least` of them."""
    def ready() -> Result:
        result = query(expr)
        return result if len(result) >= at_least else []
    return ready


def _check_series(query: Query) -> None:
    """Every series the dashboard and alerts rely on, with values that make sense."""
    loss = wait_until(_series(query, "stream_app_training_loss"), 30, what="training loss")
    # Steps of 100 in batches of up to 300, evaluated until 100 events are scored:
    # only the first step of a full batch is evaluated.
    counts = "sum(stream_app_{}_seconds_count)"
    wait_until(lambda: 0 < _value(query(counts.format("evaluate")))
               < _value(query(counts.format("step"))), 30,
               what="evaluations timed apart from steps, fewer of them")
    assert all(math.isfinite(v) and v > 0 for _, v in loss), loss
    # SnapshotStale compares it with the snapshot's time: a commit's wall time, not 0.
    commit = wait_until(_series(query, "stream_app_last_commit_timestamp_seconds > 0"), 30,
                        what="the last commit's time")
    assert all(1e9 < v < 1e11 for _, v in commit), commit  # Unix seconds, not ms, not 0
    preq = wait_until(_series(query, "stream_app_prequential_loss"), 30, what="prequential loss")
    assert all(math.isfinite(v) and v > 0 for _, v in preq), preq
    hit = wait_until(_series(query, "stream_app_prequential_hit_rate", 2), 30,
                     what="hit rate of the model and of the popularity baseline")
    assert {labels["model"] for labels, _ in hit} >= {"model", "popularity"}
    assert all(0.0 <= v <= 1.0 for _, v in hit), hit
    fresh = wait_until(_series(query, 'stream_app_freshness_seconds_bucket{since="produce_time"}'),
                       30, what="freshness buckets")
    assert {labels["le"] for labels, _ in fresh} >= {"0.1", "1.0", "+Inf"}
    observed = _value(query('sum(stream_app_freshness_seconds_bucket{le="+Inf"})'))
    assert observed > 0  # events were observed (a count, not a duration)
    p99 = _value(query("histogram_quantile(0.99, sum by (le) "
                       "(stream_app_freshness_seconds_bucket{since=\"produce_time\"}))"))
    assert 0 <= p99 < math.inf
    wait_until(lambda: _value(query('stream_app_scorer_request_seconds_count{phase="total"}'))
               >= 4, 30, what="the scorer's latency histogram counting the 4 requests")
    latency = query('stream_app_scorer_request_seconds_bucket{phase="total",le="+Inf"}')
    assert _value(latency) >= 4
    fallbacks = query("sum(stream_app_scorer_fallbacks_total)")
    assert _value(fallbacks) >= 1, "the unknown user must be counted as a fallback"
