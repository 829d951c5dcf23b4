"""Write alerts_test.yml (promtool rule unit tests) from the cases below and alerts.yml.

Why generated: promtool compares annotations exactly, so a hand-written test
file repeats every description and runbook of alerts.yml and drifts from it.
Here each case states only what matters — input series, when, which labels
fire, and the rendered summary — and description/runbook are copied from
alerts.yml. tests/unit/test_deploy.py checks alerts_test.yml is current and
runs `promtool test rules` on it.

    python deploy/prometheus/build_alert_tests.py          # rewrite alerts_test.yml
    python deploy/prometheus/build_alert_tests.py --check  # exit 1 if stale
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE / "alerts.yml"
OUTPUT = HERE / "alerts_test.yml"
T = 'job="stream-app-trainer",instance="trainer:9464"'
S = 'job="stream-app-scorer",instance="scorer:9465"'
TRAINER = {"job": "stream-app-trainer", "instance": "trainer:9464"}
SCORER = {"job": "stream-app-scorer", "instance": "scorer:9465"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    """One promtool test group: `series` (1 sample/min) evaluated at `eval_time`.

    `fires` lists the expected alerts as (labels without alertname/severity,
    rendered summary); empty means the alert must NOT fire.
    """

    alert: str
    eval_time: str
    series: dict[str, str]
    fires: list[tuple[dict[str, str], str]] = field(default_factory=list)


def _hist(metric: str, labels: str, buckets: dict[str, str]) -> dict[str, str]:
    return {f'{metric}_bucket{{{labels},le="{le}"}}': v for le, v in buckets.items()}


_SLOW_FRESH = {"0.5": "0+90x30", "1": "0+95x30", "2": "0+100x30", "+Inf": "0+100x30"}
_FAST_FRESH = {"0.5": "0+100x30", "1": "0+100x30", "2": "0+100x30", "+Inf": "0+100x30"}
_SLOW_SCORE = {"0.01": "0+90x30", "0.02": "0+95x30", "0.05": "0+100x30", "+Inf": "0+100x30"}
_EDGE_FRESH_UNDER = {"0.5": "0+90x30", "1": "0+100x30", "2": "0+100x30", "+Inf": "0+100x30"}
_EDGE_FRESH_OVER = {"0.5": "0+900x30", "1": "0+989x30", "2": "0+1000x30", "+Inf": "0+1000x30"}
_EDGE_SCORE_UNDER = {"0.01": "0+90x30", "0.02": "0+100x30", "0.05": "0+100x30",
                     "+Inf": "0+100x30"}
_EDGE_SCORE_OVER = {"0.01": "0+900x30", "0.02": "0+989x30", "0.05": "0+1000x30",
                    "+Inf": "0+1000x30"}
_FAST_SCORE = {"0.01": "0+100x30", "0.02": "0+100x30", "0.05": "0+100x30", "+Inf": "0+100x30"}
_APPLIED = f'stream_app_events_total{{{T},topic="clicks",outcome="applied"}}'
_LAG = f'stream_app_consumer_lag_messages{{{T},topic="clicks",partition="0"}}'
_NON_FINITE = f'stream_app_dlq_records_total{{{T},reason="non_finite_loss"}}'
_FB = f'stream_app_scorer_fallbacks_total{{{S},reason="unknown_user"}}'
_REQ = f'stream_app_scorer_request_seconds_count{{{S},phase="total"}}'
_ERR = f'stream_app_scorer_errors_total{{{S},reason="schema"}}'
_SNAP_EVERY = f"stream_app_snapshot_interval_seconds{{{T}}}"
_SNAP_AT = f"stream_app_snapshot_written_timestamp_seconds{{{T}}}"
_STARTED = f"process_start_time_seconds{{{T}}}"
_COMMIT = f"stream_app_last_commit_timestamp_seconds{{{T}}}"
_BAD_ROW = f'stream_app_scorer_errors_total{{{S},reason="bad_embedding"}}'
_READY = f"stream_app_trainer_ready{{{T}}}"
_LOSS = f"stream_app_training_loss{{{T}}}"
_LEARNING = {_APPLIED: "0+100x240"}

CASES: list[Case] = [
    Case(alert="TrainerDown", eval_time="6m", series={f"up{{{T}}}": "1 1 0x10"},
         fires=[(TRAINER, "Trainer is down or not scraped")]),
    Case(alert="TrainerDown", eval_time="5m", series={f"up{{{S}}}": "1x10"},
         fires=[({"job": "stream-app-trainer"}, "Trainer is down or not scraped")]),
    Case(alert="TrainerDown", eval_time="6m", series={f"up{{{T}}}": "1x10"}),
    Case(alert="TrainerDown", eval_time="6m", series={f"up{{{T}}}": "1x5 0x5"}),
    Case(alert="ScorerDown", eval_time="6m", series={f"up{{{S}}}": "1 1 0x10"},
         fires=[(SCORER, "A scorer is down or not scraped")]),
    Case(alert="ScorerDown", eval_time="6m", series={f"up{{{S}}}": "1x10"}),
    Case(alert="ScorerDown", eval_time="5m", series={f"up{{{T}}}": "1x10"},
         fires=[({"job": "stream-app-scorer"}, "A scorer is down or not scraped")]),
    Case(alert="ScorerNotReady", eval_time="12m",
         series={f"stream_app_scorer_ready{{{S}}}": "0x15"},
         fires=[(SCORER, "Scorer scorer:9465 has not been ready for 10 minutes")]),
    Case(alert="ScorerNotReady", eval_time="12m",
         series={f"stream_app_scorer_ready{{{S}}}": "0x5 1x10"}),
    Case(alert="TrainerNotReady", eval_time="17m", series={_READY: "0x20"},
         fires=[(TRAINER, "Trainer trainer:9464 has been restoring for 15 minutes")]),
    Case(alert="TrainerNotReady", eval_time="17m", series={_READY: "0x5 1x15"}),
    Case(alert="TrainerOwnsNoInput", eval_time="17m", series={_READY: "1x20"},
         fires=[({}, "No trainer Prometheus scrapes holds a partition of clicks or purchases")]),
    Case(alert="TrainerOwnsNoInput", eval_time="17m", series={_READY: "1x20", _LAG: "0x20"}),
    Case(alert="TrainerOwnsNoInput", eval_time="17m", series={_READY: "0x20"}),  # restoring
    Case(alert="ProcessRestarting", eval_time="30m",
         series={f"process_start_time_seconds{{{T}}}": "1000x9 1600x9 2200x9 2800x9"},
         fires=[(TRAINER, "trainer:9464 restarted 3 times in 30 minutes")]),
    Case(alert="ProcessRestarting", eval_time="30m",
         series={f"process_start_time_seconds{{{S}}}": "1000x19 1600x19"}),
    Case(alert="ProcessRestarting", eval_time="30m",  # two restarts: one short of three
         series={f"process_start_time_seconds{{{T}}}": "1000x9 1600x9 2200x19"}),
    Case(alert="ConsumerLagGrowing", eval_time="25m", series={_LAG: "0+200x30"},
         fires=[({**TRAINER, "topic": "clicks"},
                 "trainer:9464 lag on clicks is 5k and growing")]),
    Case(alert="ConsumerLagGrowing", eval_time="25m", series={_LAG: "5000x30"}),
    # A busy trainer on a ramp: lag 2000-2300 and rising, but under a minute of its input
    # (100 events/s): it keeps up.
    Case(alert="ConsumerLagGrowing", eval_time="25m",
         series={_LAG: "2000+10x30", _APPLIED: "0+6000x30"}),
    # The same lag while it takes in 10 events/s: over three minutes behind.
    Case(alert="ConsumerLagGrowing", eval_time="25m",
         series={_LAG: "2000+10x30", _APPLIED: "0+600x30"},
         fires=[({**TRAINER, "topic": "clicks"},
                 "trainer:9464 lag on clicks is 2.25k and growing")]),
    # Over 1000 from 6m on: still pending at 14m (`for: 10m`).
    Case(alert="ConsumerLagGrowing", eval_time="14m", series={_LAG: "0+200x30"}),
    # Rising, but under 1000.
    Case(alert="ConsumerLagGrowing", eval_time="25m", series={_LAG: "0+30x30"}),
    # Three scorer replicas each 870 behind on `embeddings` and rising: nobody is over
    # 1000, though their sum has been for 17 minutes.
    Case(alert="ConsumerLagGrowing", eval_time="29m", series={
        f'stream_app_consumer_lag_messages{{job="stream-app-scorer",instance="scorer-{n}:9465",'
        f'topic="embeddings",partition="0"}}': "0+30x30" for n in range(3)}),
    Case(alert="DlqRateHigh", eval_time="25m", series={
        _APPLIED: "0+95x30",
        f'stream_app_events_total{{{T},topic="clicks",outcome="dlq"}}': "0+5x30",
        f'stream_app_dlq_records_total{{{T},reason="schema"}}': "0+5x30"},
         fires=[({"job": "stream-app-trainer"}, "5% of trainer input goes to the DLQ")]),
    Case(alert="DlqRateHigh", eval_time="25m", series={
        _APPLIED: "0+100x30", f'stream_app_dlq_records_total{{{T},reason="schema"}}': "0x30"}),
    Case(alert="DlqRateHigh", eval_time="25m", series={  # 0.5%: under the 1% threshold
        _APPLIED: "0+995x30",
        f'stream_app_events_total{{{T},topic="clicks",outcome="dlq"}}': "0+5x30",
        f'stream_app_dlq_records_total{{{T},reason="schema"}}': "0+5x30"}),
    Case(alert="DlqRateHigh", eval_time="25m", series={  # 1.5%: just over
        _APPLIED: "0+985x30",
        f'stream_app_events_total{{{T},topic="clicks",outcome="dlq"}}': "0+15x30",
        f'stream_app_dlq_records_total{{{T},reason="schema"}}': "0+15x30"},
         fires=[({"job": "stream-app-trainer"}, "1.5% of trainer input goes to the DLQ")]),
    Case(alert="DlqRateHigh", eval_time="9m", series={  # 5% from 1m: pending until 11m
        _APPLIED: "0+95x30",
        f'stream_app_events_total{{{T},topic="clicks",outcome="dlq"}}': "0+5x30",
        f'stream_app_dlq_records_total{{{T},reason="schema"}}': "0+5x30"}),
    Case(alert="EventsMisrouted", eval_time="10m", series={
        f'stream_app_events_misrouted_total{{{T},topic="clicks"}}': "0 0 0 3 3 3 3 3 3 3 3"},
         fires=[({"job": "stream-app-trainer", "topic": "clicks"},
                 "Events or forgets on clicks land on partitions their user id does not map to")]),
    Case(alert="EventsMisrouted", eval_time="10m", series={
        f'stream_app_events_misrouted_total{{{T},topic="clicks"}}': "0x10", _APPLIED: "0+100x10"}),
    Case(alert="EventsMisrouted", eval_time="30m", series={  # 3 once, 20 m ago: quiet again
        f'stream_app_events_misrouted_total{{{T},topic="clicks"}}': "0 0 3x28"}),
    Case(alert="TrainingLossNotFinite", eval_time="5m",
         series={_NON_FINITE: "0 0 0 40 40 40 40"},
         fires=[(TRAINER, "Training loss is NaN or infinite on trainer:9464")]),
    Case(alert="TrainingLossNotFinite", eval_time="5m", series={_NON_FINITE: "0x10"}),
    Case(alert="TrainingLossNotFinite", eval_time="5m",
         series={f'stream_app_dlq_records_total{{{T},reason="schema"}}': "0+10x10"}),
    Case(alert="TrainingDiverging", eval_time="25m", series={_NON_FINITE: "0+40x30"},
         fires=[(TRAINER, "Non-finite training steps for 15 minutes on trainer:9464")]),
    # One freak step: TrainingLossNotFinite's warning only.
    Case(alert="TrainingDiverging", eval_time="25m", series={_NON_FINITE: "0x5 40x30"}),
    Case(alert="TrainingLossRising", eval_time="210m",
         series={_LOSS: "1x150 3x90", **_LEARNING},
         fires=[(TRAINER, "Training loss is 50% above its previous 2 h average")]),
    Case(alert="TrainingLossRising", eval_time="210m", series={_LOSS: "1x240", **_LEARNING}),
    Case(alert="TrainingLossRising", eval_time="210m",  # 30% up: under the 50% threshold
         series={_LOSS: "1x150 1.3x90", **_LEARNING}),
    # A step to 2.2x at 150m: still over 1.5x the 2 h that end 30 m ago (1.3 at 210m); a
    # baseline that took in the last 30 m (1.6) would have absorbed it.
    Case(alert="TrainingLossRising", eval_time="210m",
         series={_LOSS: "1x150 2.2x90", **_LEARNING},
         fires=[(TRAINER, "Training loss is 50% above its previous 2 h average")]),
    # Deployed, an hour without traffic (the gauge reads 0 before a step), then steady.
    Case(alert="TrainingLossRising", eval_time="150m", series={_LOSS: "0x60 2x200", **_LEARNING}),
    # The last batch before a quiet spell read 3x, and the gauge kept it: no traffic, no
    # alert (it fired through the whole quiet spell: observability review).
    Case(alert="TrainingLossRising", eval_time="230m",
         series={_LOSS: "1x150 3x90", _APPLIED: "0+100x150 15000x90"}),
    Case(alert="FreshnessP99High", eval_time="25m", series=_hist(
        "stream_app_freshness_seconds", f'{T},since="produce_time"', _SLOW_FRESH),
         fires=[({"job": "stream-app-trainer"},
                 "Embedding freshness p99 is 1.8s (target 1s)")]),
    Case(alert="FreshnessP99High", eval_time="25m", series=_hist(
        "stream_app_freshness_seconds", f'{T},since="produce_time"', _FAST_FRESH)),
    # Event-time freshness (a replay of old events: years) is not the target's.
    Case(alert="FreshnessP99High", eval_time="25m", series=_hist(
        "stream_app_freshness_seconds", f'{T},since="produce_time"', _FAST_FRESH) | _hist(
        "stream_app_freshness_seconds", f'{T},since="event_time"', _SLOW_FRESH)),
    Case(alert="FreshnessP99High", eval_time="25m", series=_hist(  # p99 0.95 s: just under
        "stream_app_freshness_seconds", f'{T},since="produce_time"', _EDGE_FRESH_UNDER)),
    Case(alert="FreshnessP99High", eval_time="25m", series=_hist(  # p99 1.09 s: just over
        "stream_app_freshness_seconds", f'{T},since="produce_time"', _EDGE_FRESH_OVER),
         fires=[({"job": "stream-app-trainer"},
                 "Embedding freshness p99 is 1.091s (target 1s)")]),
    Case(alert="TransactionAbortsHigh", eval_time="25m",
         series={f"stream_app_transaction_aborts_total{{{T}}}": "0+1x30"},
         fires=[({"job": "stream-app-trainer"},
                 "15 trainer transactions aborted in 15 minutes")]),
    Case(alert="TransactionAbortsHigh", eval_time="25m",
         series={f"stream_app_transaction_aborts_total{{{T}}}": "0+0.1x30"}),
    # Snapshots every 5 min from a trainer started at 0: none written, one stuck at 5 min.
    # Committing every minute (the gauge holds the commit's time): none written, one stuck
    # at 5 min.
    Case(alert="SnapshotStale", eval_time="60m",
         series={_SNAP_EVERY: "300x70", _STARTED: "0x70", _SNAP_AT: "0x70",
                 _COMMIT: "0+60x70"},
         fires=[(TRAINER, "Trainer trainer:9464 has written no local snapshot for 1h 0m 0s")]),
    Case(alert="SnapshotStale", eval_time="60m",
         series={_SNAP_EVERY: "300x70", _STARTED: "0x70", _SNAP_AT: "0x5 300x65",
                 _COMMIT: "0+60x70"},
         fires=[(TRAINER, "Trainer trainer:9464 has written no local snapshot for 55m 0s")]),
    # Idle since minute 5, when it wrote its last snapshot: nothing to snapshot since,
    # with 5-minute snapshots and with 30-second ones (which fired while the trainer had
    # learned within the last 15 minutes: operator walkthrough).
    Case(alert="SnapshotStale", eval_time="60m",
         series={_SNAP_EVERY: "300x70", _STARTED: "0x70", _SNAP_AT: "0x5 300x65",
                 _COMMIT: "0+60x4 290x65"}),
    Case(alert="SnapshotStale", eval_time="18m",
         series={_SNAP_EVERY: "30x70", _STARTED: "0x70", _SNAP_AT: "0x5 300x65",
                 _COMMIT: "0+60x4 290x65"}),
    # Committing all along, and: written every minute; snapshots off; none written yet by
    # a trainer started 50 min in (the age counts from its start, not from time 0).
    Case(alert="SnapshotStale", eval_time="60m",
         series={_SNAP_EVERY: "300x70", _STARTED: "0x70", _SNAP_AT: "0+60x70",
                 _COMMIT: "0+60x70"}),
    Case(alert="SnapshotStale", eval_time="60m",
         series={_SNAP_EVERY: "0x70", _STARTED: "0x70", _SNAP_AT: "0x70",
                 _COMMIT: "0+60x70"}),
    Case(alert="SnapshotStale", eval_time="60m",
         series={_SNAP_EVERY: "300x70", _STARTED: "3000x70", _SNAP_AT: "0x70",
                 _COMMIT: "0+60x70"}),
    # Started, never committed (an idle start): nothing to snapshot.
    Case(alert="SnapshotStale", eval_time="60m",
         series={_SNAP_EVERY: "300x70", _STARTED: "0x70", _SNAP_AT: "0x70", _COMMIT: "0x70"}),
    Case(alert="ScorerP99High", eval_time="25m", series=_hist(
        "stream_app_scorer_request_seconds", f'{S},phase="total"', _SLOW_SCORE),
         fires=[({"job": "stream-app-scorer"}, "Scorer p99 latency is 44ms (target 20ms)")]),
    Case(alert="ScorerP99High", eval_time="25m", series=_hist(
        "stream_app_scorer_request_seconds", f'{S},phase="total"', _FAST_SCORE)),
    Case(alert="ScorerP99High", eval_time="25m", series=_hist(  # p99 19 ms: just under
        "stream_app_scorer_request_seconds", f'{S},phase="total"', _EDGE_SCORE_UNDER)),
    Case(alert="ScorerP99High", eval_time="25m", series=_hist(  # p99 22.7 ms: just over
        "stream_app_scorer_request_seconds", f'{S},phase="total"', _EDGE_SCORE_OVER),
         fires=[({"job": "stream-app-scorer"}, "Scorer p99 latency is 22.73ms (target 20ms)")]),
    Case(alert="ScorerMostlyFallback", eval_time="25m",
         series={_FB: "0+80x30", _REQ: "0+100x30"},
         fires=[({"job": "stream-app-scorer"},
                 "80% of score requests get the popularity fallback")]),
    Case(alert="ScorerMostlyFallback", eval_time="25m",
         series={_FB: "0+10x30", _REQ: "0+100x30"}),
    Case(alert="ScorerMostlyFallback", eval_time="25m",  # 45%: just under half
         series={_FB: "0+45x30", _REQ: "0+100x30"}),
    Case(alert="ScorerMostlyFallback", eval_time="25m",  # 55%: just over
         series={_FB: "0+55x30", _REQ: "0+100x30"},
         fires=[({"job": "stream-app-scorer"},
                 "55% of score requests get the popularity fallback")]),
    Case(alert="ScorerErrorsHigh", eval_time="25m",
         series={_ERR: "0+5x30", _REQ: "0+95x30"},
         fires=[({"job": "stream-app-scorer"}, "5% of score requests get an error answer")]),
    Case(alert="ScorerErrorsHigh", eval_time="25m",
         series={_ERR: "0+0.5x30", _REQ: "0+99.5x30"}),
    # Undecodable embeddings rows are not requests: they used to read as 100% errors.
    # (The scorer exports every reason and the request count from its start, at 0:
    # without them the ratio's terms are empty and no numerator could make it fire.)
    Case(alert="ScorerErrorsHigh", eval_time="25m",
         series={_BAD_ROW: "0+1x30", _REQ: "0+50x30", _ERR: "0x30"}),
    Case(alert="ScorerErrorsHigh", eval_time="25m",  # an idle scorer
         series={_BAD_ROW: "0+1x30", _REQ: "0x30", _ERR: "0x30"}),
    Case(alert="ScorerBadEmbeddings", eval_time="10m", series={_BAD_ROW: "0x5 3x10"},
         fires=[(SCORER, "Scorer scorer:9465 skipped 3 embeddings rows it cannot read")]),
    Case(alert="ScorerBadEmbeddings", eval_time="10m", series={_BAD_ROW: "3x10"}),
    Case(alert="ScorerStale", eval_time="15m", series={
        f"stream_app_scorer_staleness_seconds{{{S}}}": "400+60x20", _APPLIED: "0+100x20"},
         fires=[(SCORER, "Scorer scorer:9465 serves embeddings 21m 40s old")]),
    # A scorer that never loaded a row (staleness NaN) while the trainer learns.
    Case(alert="ScorerStale", eval_time="15m", series={
        f"stream_app_scorer_staleness_seconds{{{S}}}": " ".join(["NaN"] * 21),
        _APPLIED: "0+100x20"},
         fires=[(SCORER, "Scorer scorer:9465 serves no embeddings at all")]),
    # The trainer stopped committing at 20 m with input waiting: nothing is counted
    # applied any more (events count at the commit that publishes their rows), and
    # gated on applied events alone the alert never fired.
    Case(alert="ScorerStale", eval_time="45m", series={
        f"stream_app_scorer_staleness_seconds{{{S}}}": "5x20 60+60x40",
        _APPLIED: "0+100x20 2000x40", _LAG: "0x20 500+100x40"},
         fires=[(SCORER, "Scorer scorer:9465 serves embeddings 25m 0s old")]),
    # Nothing to learn from (idle traffic): old embeddings are expected, no alert.
    Case(alert="ScorerStale", eval_time="15m", series={
        f"stream_app_scorer_staleness_seconds{{{S}}}": "400+60x20", _APPLIED: "100x20",
        _LAG: "0x20"}),
]

PENDING_AT = {"ScorerDown": "3m", "ScorerNotReady": "9m", "TrainerNotReady": "14m",
              "TrainerOwnsNoInput": "14m", "TrainingLossRising": "180m",
              "FreshnessP99High": "9m", "TransactionAbortsHigh": "9m", "ScorerP99High": "9m",
              "ScorerMostlyFallback": "13m", "ScorerErrorsHigh": "9m", "ScorerStale": "9m",
              "TrainingDiverging": "14m", "SnapshotStale": "24m"}
"""For these alerts, the first firing case again at a time when its condition holds but
for less than the rule's `for:`: the alert is pending, so nothing fires. Without these the
tests passed with every `for:` removed."""
CASES += [dataclasses.replace(next(c for c in CASES if c.alert == name and c.fires),
                              eval_time=at, fires=[])
          for name, at in PENDING_AT.items()]


def _rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def _group(case: Case, rule: dict[str, Any]) -> dict[str, Any]:
    exp = [{"exp_labels": {**labels, **rule.get("labels", {})},
            "exp_annotations": {**rule["annotations"], "summary": summary}}
           for labels, summary in case.fires]
    return {
        "name": f"{case.alert} {'fires' if case.fires else 'stays quiet'} at {case.eval_time}",
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
        "alert_rule_test": [{"eval_time": case.eval_time, "alertname": case.alert,
                             "exp_alerts": exp}],
    }


def build() -> str:
    """The full text of alerts_test.yml."""
    rules = _rules()
    doc = {"rule_files": [RULES.name], "evaluation_interval": "1m",
           "tests": [_group(c, rules[c.alert]) for c in CASES]}
    header = ("# GENERATED by build_alert_tests.py from its cases and alerts.yml; edit those.\n"
              "# Run: promtool test rules deploy/prometheus/alerts_test.yml\n")
    return header + str(yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=f"Write {OUTPUT.name} (it is generated).")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the file is stale")
    check = parser.parse_args(argv).check  # --help or a typo wrote the file and exited 0
    text = build()
    if check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is stale: run python {Path(__file__).name}")
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
