"""Write dashboards/stream-app.json, the provisioned Grafana dashboard.

Why a script: panel JSON is long and repetitive, and gridPos/ids are easy to
get wrong by hand; here each panel is one line of intent (title, queries,
unit). tests/unit/test_deploy.py checks the JSON is current and that every
`stream_app_*` name used exists in stream_app/observability/ (metrics.py, scorer_metrics.py).

    python deploy/grafana/build_dashboard.py          # rewrite the JSON
    python deploy/grafana/build_dashboard.py --check  # exit 1 if stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "stream-app.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # = provisioning/datasources uid
RI = "$__rate_interval"
Query = tuple[str, str]  # (PromQL, legend)


def _q(metric: str, by: str, quantile: float, selector: str = "") -> str:
    return (f"histogram_quantile({quantile}, sum by ({by}, le) "
            f"(rate({metric}_bucket{selector}[{RI}])))")


def _panel(title: str, queries: list[Query], unit: str, description: str = "",
           kind: str = "timeseries") -> dict[str, Any]:
    targets = [{"datasource": DATASOURCE, "expr": expr, "legendFormat": legend,
                "refId": chr(ord("A") + i)} for i, (expr, legend) in enumerate(queries)]
    return {"type": kind, "title": title, "description": description,
            "datasource": DATASOURCE, "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                        "tooltip": {"mode": "multi"}}}


def _row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


ROWS: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [
    (_row("Overview"), [
        _panel("Trainer up", [('up{job="stream-app-trainer"}', "up {{instance}}"),
                              ("stream_app_trainer_ready", "ready {{instance}}")], "none",
               "up 1 = scraped; ready 0 = restoring. See alerts TrainerDown, TrainerNotReady.",
               kind="stat"),
        _panel("Scorers ready", [("sum(stream_app_scorer_ready)", "ready"),
                                 ('count(up{job="stream-app-scorer"})', "replicas")],
               "none", "Ready scorer replicas out of all scraped.", kind="stat"),
        _panel("Events applied / s", [(f'sum(rate(stream_app_events_total{{outcome="applied"}}'
                                       f"[{RI}]))", "applied")], "ops", kind="stat"),
        _panel("Freshness p99 (produce time)", [(_q(
            "stream_app_freshness_seconds", "since", 0.99, '{since="produce_time"}'), "p99")],
               "s", "Target <= 1 s (alert FreshnessP99High).", kind="stat"),
    ]),
    (_row("Trainer"), [
        _panel("Event throughput by topic / outcome", [(
            f"sum by (topic, outcome) (rate(stream_app_events_total[{RI}]))",
            "{{topic}} {{outcome}}"), (
            f"sum by (topic) (rate(stream_app_events_misrouted_total[{RI}]))",
            "{{topic}} misrouted")], "ops",
               "Every event read gets exactly one outcome. Misrouted: events (also counted "
               "by outcome) and forget requests on a partition neither common partitioner "
               "gives their user id (alert EventsMisrouted)."),
        _panel("Loss", [("stream_app_training_loss", "{{instance}} training (sampled)"),
                        ("stream_app_prequential_loss", "{{instance}} prequential (full softmax)")],
               "none", "Training: the step's sampled-softmax loss (alert TrainingLossRising; a "
               "non-finite loss is not plotted: that step is not applied and its events are "
               "dead-lettered, alert TrainingLossNotFinite). Prequential: cross-entropy over "
               "every item of the events next learned from, scored before learning."),
        _panel("Prequential hit rate: model vs popularity", [(
            "avg by (model, k) (stream_app_prequential_hit_rate)", "{{model}} HR@{{k}}")],
               "percentunit", "Scored before learning from each batch (test-then-train)."),
        _panel("Prequential recall and MRR", [
            ("avg by (model, k) (stream_app_prequential_recall)", "{{model}} recall@{{k}}"),
            ("avg by (model, k) (stream_app_prequential_mrr)", "{{model}} MRR@{{k}}")],
               "percentunit"),
        _panel("Freshness p50 / p99", [
            (_q("stream_app_freshness_seconds", "since", 0.5), "p50 since {{since}}"),
            (_q("stream_app_freshness_seconds", "since", 0.99), "p99 since {{since}}")],
               "s", "Event (or produce) time until the row is published; target p99 <= 1 s."),
        _panel("Consumer lag", [("sum by (job, instance, topic) "
                                 "(stream_app_consumer_lag_messages)",
                                 "{{job}} {{instance}} {{topic}}")], "short",
               "Per process: every scorer replica reads all of embeddings."),
        _panel("DLQ records by reason", [(
            f"sum by (job, reason) (rate(stream_app_dlq_records_total[{RI}]))",
            "{{job}} {{reason}}")], "ops", "Nothing is dropped silently: bad input lands here."),
        _panel("Trainer loop p99", [
            (_q("stream_app_batch_seconds", "job", 0.99), "batch"),
            (_q("stream_app_step_seconds", "job", 0.99), "learning step"),
            (_q("stream_app_evaluate_seconds", "job", 0.99), "evaluation"),
            (_q("stream_app_transaction_seconds", "job", 0.99), "transaction")], "s"),
        _panel("Batch size p50 / p99", [
            (_q("stream_app_batch_size_events", "job", 0.5), "p50"),
            (_q("stream_app_batch_size_events", "job", 0.99), "p99")], "short"),
        _panel("Table sizes", [
            ("max by (table) (stream_app_table_rows)", "trainer {{table}}"),
            ("max by (table) (stream_app_scorer_table_rows)", "scorer {{table}}")], "short"),
        _panel("Admissions, evictions, rows published", [
            (f"sum by (table) (rate(stream_app_admissions_total[{RI}]))", "admit {{table}}"),
            (f"sum by (table) (rate(stream_app_evictions_total[{RI}]))", "evict {{table}}"),
            (f"sum by (table) (rate(stream_app_rows_published_total[{RI}]))",
             "publish {{table}}")], "ops"),
        _panel("Transaction aborts (15 m)", [(
            "sum(increase(stream_app_transaction_aborts_total[15m]))", "aborts")], "short",
               "Aborted batches in the last 15 min (alert TransactionAbortsHigh: > 5)."),
        # A start is counted before the first scrape can see 0, so increase() misses it
        # (the series reads 1 before and after a restart): starts are counted from the
        # process start time instead.
        _panel("Restores by reason (15 m)", [
            ('sum by (reason) (increase(stream_app_restores_total{reason!="start"}[15m]))',
             "{{reason}}"),
            ('sum(changes(process_start_time_seconds{job="stream-app-trainer"}[15m]))',
             "start")],
               "short", "Rebuilds of the trainer's learner from the changelog in the last "
               "15 min: start (counted as trainer processes starting: a new instance label "
               "or a trainer run without restore counts differently), abort, or a "
               "rebalance when the changelog was not provably its own since."),
        _panel("Last restore", [
            ("max by (instance) (stream_app_restore_seconds > 0)", "seconds {{instance}}"),
            ("max by (instance) (stream_app_restore_snapshot_age_seconds >= 0)",
             "snapshot age {{instance}}")],
               "s", "How long the trainer's last restore took, and the age of the local "
               "snapshot it started from, if any (runbooks TrainerDown, ProcessRestarting)."),
        _panel("Local snapshot age", [(
            "time() - (stream_app_snapshot_written_timestamp_seconds > 0)", "{{instance}}")],
               "s", "Since the trainer's last local snapshot (none: snapshots off or not "
               "written yet); alert SnapshotStale."),
        _panel("Process memory (RSS)", [(
            'process_resident_memory_bytes{job=~"stream-app-.*"}', "{{job}} {{instance}}")],
               "bytes", "Trainer and scorers; each holds its tables in memory."),
        _panel("Process restarts (30 m)", [(
            'changes(process_start_time_seconds{job=~"stream-app-.*"}[30m])',
            "{{job}} {{instance}}")], "short",
               "Restarts in the last 30 min (a process started once shows 0); status 75 "
               "exits are self-requested restarts."),
    ]),
    (_row("Scorer"), [
        _panel("Scorer latency p50 / p99", [
            (_q("stream_app_scorer_request_seconds", "phase", 0.5), "p50 {{phase}}"),
            (_q("stream_app_scorer_request_seconds", "phase", 0.99), "p99 {{phase}}")],
               "s", "Target p99 <= 20 ms end to end (phase=total)."),
        _panel("Fallbacks by reason", [
            (f"sum by (reason) (rate(stream_app_scorer_fallbacks_total[{RI}]))", "{{reason}}")],
               "reqps", "Answers from popularity, not the user's vector."),
        _panel("Fallback share", [
            (f"sum(rate(stream_app_scorer_fallbacks_total[{RI}])) / "
             f'(sum(rate(stream_app_scorer_request_seconds_count{{phase="total"}}[{RI}])) > 0)',
             "share of requests")], "percentunit", "Alert ScorerMostlyFallback over 50%."),
        _panel("Scorer errors", [(
            f"sum by (reason) (rate(stream_app_scorer_errors_total[{RI}]))", "{{reason}}")],
               "ops", "Error answers and undelivered answers by reason (alert "
               "ScorerErrorsHigh); bad_embedding counts embeddings rows the scorer could "
               "not read, not requests (alert ScorerBadEmbeddings)."),
        _panel("Scorer request rate", [
            (f'sum(rate(stream_app_scorer_request_seconds_count{{phase="total"}}[{RI}]))',
             "answered")], "reqps"),
        _panel("Scorer batch size p50", [
            (_q("stream_app_scorer_batch_size_requests", "job", 0.5), "requests a batch")],
               "short"),
        _panel("Scorer staleness", [("stream_app_scorer_staleness_seconds", "{{instance}}")],
               "s", "Now minus the newest loaded row's updated_at."),
    ]),
]


def build() -> dict[str, Any]:
    """The dashboard: rows full width, panels two per line (12 of 24 columns), stats 4 a line."""
    panels: list[dict[str, Any]] = []
    y = 0
    for row, children in ROWS:
        panels.append({**row, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        y += 1
        for i, child in enumerate(children):
            w = 6 if child["type"] == "stat" else 12
            per_line = 24 // w
            h = 4 if child["type"] == "stat" else 8
            pos = {"h": h, "w": w, "x": (i % per_line) * w, "y": y + (i // per_line) * h}
            panels.append({**child, "gridPos": pos})
        lines = -(-len(children) // per_line)
        y += lines * h
    for pid, panel in enumerate(panels, start=1):
        panel["id"] = pid
    return {
        "uid": "stream-app", "title": "stream_app", "tags": ["stream-app", "kafka"],
        "timezone": "browser", "schemaVersion": 39, "version": 1, "editable": False,
        "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": []}, "annotations": {"list": []}, "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=f"Write {OUTPUT.name} (it is generated).")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the file is stale")
    check = parser.parse_args(argv).check  # --help or a typo wrote the file and exited 0
    text = render()
    if check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run python {Path(__file__).name}")
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
