"""Quality through Kafka: MovieLens replayed into the real trainer, answered by the real scorer.

Same split, same `topk_metrics` and the same baselines as `bench/quality_offline.py`
(whose docstring gives the protocol). The first 80% of the ratings (time
order) are produced to `clicks`/`purchases`, the trainer learns from them
exactly as in production (micro-batches, transactions), then the scorer is
asked, over Kafka, for the top-K of every user with events in both parts,
excluding the items the user touched in the train part (passed as `exclude`).
The learning core run offline on the same events shows what Kafka costs
(batch composition differs: the trainer's micro-batches interleave partitions).

Both run once per seed (`--seeds`, default 0 1 2; fresh topics each time) and
their figures are the mean over the seeds. Through Kafka one seed is a noisy
figure even run twice: when a poll ends, and so where a transaction's steps
start, depends on timing, and two runs of seed 0 on the same code gave Recall@20
0.3197 and 0.3255 (2026-12-06 and -07) where the offline core, deterministic,
gave 0.3245 both times.

    python -m bench.quality_kafka --out bench/results/quality_kafka.json
"""

from __future__ import annotations

import argparse
import dataclasses
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from bench.common import bench_broker, fresh_topics, machine, write_json
from bench.quality_offline import (
    DATA,
    DAY_MS,
    DECAY_GRID_DAYS,
    learner_scores,
    load,
    mean_over_seeds,
    parse_overrides,
    popularity_scores,
    popularity_with_release,
    ratio_interval,
    split,
    to_events,
    topk_metrics,
)
from stream_app.client import ScoreClient
from stream_app.config import KafkaConfig
from stream_app.core import LearnerConfig
from stream_app.events import Event, ScoreRequest
from stream_app.observability.recorder import snapshot
from stream_app.replay import produce_records
from stream_app.scorer import Scorer
from stream_app.serving.config import ScorerConfig
from stream_app.sources import to_record
from stream_app.trainer import TrainerConfig, make_trainer


def through_kafka(kafka: KafkaConfig, events: list[Event], config: LearnerConfig,
                  users: list[str], seen: dict[str, set[str]], item_ids: list[str], k: int,
                  batch_max: int, step_max: int) -> tuple[np.ndarray, dict[str, float]]:
    t0 = time.perf_counter()
    produce_records(kafka, (to_record(e) for e in events), total=len(events), rate=0,
                    progress=False, label="bench-replay")
    t1 = time.perf_counter()
    cfg = TrainerConfig(group_id=f"q-{uuid.uuid4().hex[:6]}", batch_max=batch_max,
                        step_max=step_max, metrics_port=0, exit_when_idle=5.0, restore=False)
    trainer = make_trainer(kafka, cfg, config)
    trainer.run()
    t2 = time.perf_counter()
    read = events_read(trainer.metrics.registry)
    if sum(read.values()) < len(events):  # it stops after 5 s idle: a stall would pass
        raise RuntimeError(f"the trainer read {sum(read.values())} of the {len(events)} "
                           f"train events before it stopped ({read})")
    stop = threading.Event()
    scorer = Scorer(kafka, ScorerConfig(metrics_port=0, history_max=50), stop=stop)
    thread = threading.Thread(target=scorer.run, daemon=True)
    thread.start()
    try:
        # Ask only once the table is fully loaded: until then answers say ready=false.
        if not scorer.ready.wait(600):
            raise RuntimeError("the scorer did not load embeddings within 600 s")
        t_ready = time.perf_counter()
        with ScoreClient(kafka) as client:
            ids = client.send_many(ScoreRequest(request_id=f"q-{u}", user_id=u, k=k,
                                                exclude=tuple(sorted(seen[u])),
                                                exclude_seen=False) for u in users)
            answers = client.wait(ids, timeout_s=300)
    finally:
        stop.set()
        thread.join(30)
    t3 = time.perf_counter()
    col = {i: c for c, i in enumerate(item_ids)}
    scores = np.full((len(users), len(item_ids)), -np.inf)
    fallbacks = not_ready = 0
    for r, u in enumerate(users):
        pred = answers[f"q-{u}"]
        fallbacks += pred.fallback
        not_ready += not pred.ready
        for rank, item in enumerate(pred.items):
            if item.item_id in col:
                scores[r, col[item.item_id]] = 1e6 - rank  # the scorer's order
    timing = {"produce_s": t1 - t0, "train_s": t2 - t1, "scorer_load_s": t_ready - t2,
              "score_s": t3 - t_ready, "answered": len(answers), "fallbacks": fallbacks,
              "not_ready": not_ready, "events_applied": read.get("applied", 0)}
    return scores, timing


def events_read(registry: CollectorRegistry) -> dict[str, int]:
    """The trainer's `stream_app_events_total`, summed over topics, by outcome."""
    out: dict[str, int] = {}
    for sample in snapshot(registry, names={"stream_app_events_total"}):
        outcome = sample["labels"]["outcome"]
        out[outcome] = out.get(outcome, 0) + int(sample["value"])
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--limit", type=int, help="first N ratings only (quick mode)")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--batch-max", type=int, default=TrainerConfig().batch_max,
                    help="events per trainer transaction (the trainer's default)")
    ap.add_argument("--step-max", type=int, default=1000,
                    help="events per learning step, offline and in the trainer")
    ap.add_argument("-X", action="append", default=[], metavar="KEY=VALUE",
                    help="LearnerConfig override (JSON value)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="learner seeds, offline and in the trainer; the figures are the "
                         "mean over them (default 0 1 2)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if "seed" in parse_overrides(args.X):
        ap.error("give seeds with --seeds, not -X seed=")
    torch.set_num_threads(1)
    d = load(args.data, args.limit)
    n_train = int(len(d["ts"]) * 0.8)
    users, item_ids, seen, test = split(d, n_train)
    config = LearnerConfig(**parse_overrides(args.X))
    # With movies.dat beside the ratings, events carry their film's release time, as a
    # shop's events would carry an item's publish date; popularity gets the same prior.
    release = "released" in d
    events = to_events(d, 0, n_train, with_release=release)
    methods: dict[str, dict[str, float]] = {}
    tiled = lambda s: np.tile(s, (len(users), 1))  # noqa: E731
    methods["popularity"] = topk_metrics(tiled(popularity_scores(d, n_train, item_ids, None)),
                                         item_ids, users, seen, test, args.k)
    for days in DECAY_GRID_DAYS:
        s = popularity_scores(d, n_train, item_ids, days * DAY_MS)
        methods[f"decayed_popularity_{days}d"] = topk_metrics(tiled(s), item_ids, users, seen,
                                                              test, args.k)
        if release:  # the best window and weight on the test part, for each half-life
            name, met = popularity_with_release(d, n_train, item_ids, days, users, seen, test,
                                                args.k)
            methods[name.replace("decayed_pop(hl=", "decayed_popularity_").replace("d)+", "d+")] \
                = met
    offline, kafka_runs, timings = [], [], []
    with bench_broker() as bootstrap:
        for seed in args.seeds:
            seeded = dataclasses.replace(config, seed=seed)
            full, _, _ = learner_scores(seeded, d, n_train, users, item_ids, args.step_max,
                                        "cpu", with_release=release)
            offline.append(topk_metrics(full, item_ids, users, seen, test, args.k))
            with fresh_topics(bootstrap) as kafka:
                kscores, timing = through_kafka(kafka, events, seeded, users, seen, item_ids,
                                                args.k, args.batch_max, args.step_max)
            kafka_runs.append(topk_metrics(kscores, item_ids, users, seen, test, args.k))
            timings.append(timing)
            print(f"seed {seed}: Recall@{args.k} offline {offline[-1]['recall']:.4f}, "
                  f"through Kafka {kafka_runs[-1]['recall']:.4f}", flush=True)
    methods["core_offline"] = mean_over_seeds(offline)
    methods["trainer_scorer_kafka"] = mean_over_seeds(kafka_runs)
    best = max((m for n, m in methods.items() if "popularity" in n), key=lambda m: m["recall"])
    interval = ratio_interval(methods["trainer_scorer_kafka"]["per_user_recall"],
                              best["per_user_recall"])
    for met in methods.values():
        met.pop("per_user_recall")
    result = {"benchmark": "quality_kafka", "machine": machine(),
              "params": {"limit": args.limit, "k": args.k, "batch_max": args.batch_max,
                         "step_max": args.step_max, "seeds": args.seeds,
                         "overrides": args.X, "release_times": release},
              "train_events": n_train, "test_users": len(users), "methods": methods,
              "kafka_timing": timings,
              "ratio_kafka_vs_best_popularity": methods["trainer_scorer_kafka"]["recall"]
              / best["recall"],
              "ratio_kafka_vs_best_popularity_interval95": interval,
              "ratio_kafka_vs_core_offline": methods["trainer_scorer_kafka"]["recall"]
              / methods["core_offline"]["recall"]}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
