"""Scorer latency under open-loop load, over a real broker, against a scorer process.

    python bench/scorer_latency.py --out scorer_latency.json          # 100K items, d=64
    python bench/scorer_latency.py --quick --out /tmp/quick.json       # small and short

Publishes `--items` item rows and `--users` user rows, starts `stream-app scorer`
as a subprocess, waits for /readyz, then sends requests at fixed rates (open
loop: each request has an intended send time n/rate, latency is measured from
it, so a stalled generator cannot hide queueing) and reads the predictions
back. Latency = receive time - intended send time, measured by this client.
Reference: the same top-K computed in-process by a plain torch brute force.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from confluent_kafka import TopicPartition

from stream_app.codec import encode_embedding, encode_score_request
from stream_app.config import KafkaConfig
from stream_app.events import EmbeddingRow, ScoreRequest
from stream_app.kafka import broker
from stream_app.kafka.admin import TopicPlan, create_topics
from stream_app.kafka.clients import make_consumer, make_producer


def publish_rows(kafka: KafkaConfig, n_items: int, n_users: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    items = (rng.normal(size=(n_items, dim)) / np.sqrt(dim)).astype(np.float32)
    users = rng.normal(size=(n_users, dim)).astype(np.float32)
    producer = make_producer(kafka, "bench-rows")
    stamp = int(time.time() * 1000)
    for entity, mat in (("item", items), ("user", users)):
        for n, vec in enumerate(mat):
            row = EmbeddingRow(entity=entity, id=f"{entity[0]}{n}", vector=vec,  # type: ignore[arg-type]
                               bias=float(rng.normal()) if entity == "item" else 0.0,
                               model_version="bench", updates=5, updated_at=stamp,
                               last_event_ts=stamp,
                               recent_items=tuple(f"i{j}" for j in rng.integers(0, n_items, 10))
                               if entity == "user" else ())
            while True:
                try:
                    producer.produce(kafka.topics.embeddings, key=row.key.encode(),
                                     value=encode_embedding(row))
                    break
                except BufferError:
                    producer.poll(0.1)
    producer.flush(120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_scorer(kafka: KafkaConfig, port: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "stream_app.cli", "--log-level", "WARNING", "scorer",
           "--bootstrap-servers", kafka.bootstrap_servers, "--topic-prefix", kafka.topic_prefix,
           "--metrics-port", str(port), "--device", args.device,
           "--batch-max", str(args.batch_max), "--batch-wait-ms", str(args.batch_wait_ms)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:  # noqa: S310
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"scorer exited with {proc.returncode}")
        time.sleep(0.5)
    raise SystemExit("scorer not ready in 600 s")


class Receiver(threading.Thread):
    """Reads `predictions` from the current end; records receive time per request id."""

    def __init__(self, kafka: KafkaConfig) -> None:
        super().__init__(daemon=True)
        self.consumer = make_consumer(kafka, "bench-recv", f"bench-{uuid.uuid4().hex}")
        topic = kafka.topics.predictions
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, self.consumer.get_watermark_offsets(
            TopicPartition(topic, p), timeout=10)[1]) for p in parts])
        self.received: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for msg in self.consumer.consume(1000, timeout=0.05):
                if msg.error() is None and msg.key() is not None:
                    self.received.setdefault(msg.key().decode(), time.perf_counter())  # type: ignore[union-attr]


def run_rate(kafka: KafkaConfig, rate: float, duration: float, n_users: int, k: int,
             recv: Receiver) -> dict[str, Any]:
    fast = dataclasses.replace(kafka, client={"linger.ms": "1"})
    producer = make_producer(fast, "bench-send")
    n = int(rate * duration)
    intended: dict[str, float] = {}
    rng = np.random.default_rng(int(rate))
    t0 = time.perf_counter() + 0.1
    for i in range(n):
        rid = f"{int(rate)}-{i}-{uuid.uuid4().hex[:6]}"
        at = t0 + i / rate
        while (now := time.perf_counter()) < at:
            time.sleep(min(at - now, 0.0005))
        req = ScoreRequest(request_id=rid, user_id=f"u{int(rng.integers(0, n_users))}", k=k)
        producer.produce(kafka.topics.score_requests, key=req.user_id.encode(),
                         value=encode_score_request(req))
        producer.poll(0)
        intended[rid] = at
    send_end = time.perf_counter()
    producer.flush(30)
    deadline = time.perf_counter() + 10
    while time.perf_counter() < deadline and not intended.keys() <= recv.received.keys():
        time.sleep(0.05)
    lat = np.array([recv.received[r] - t for r, t in intended.items() if r in recv.received])
    got = len(lat)
    ms = (lambda q: float(np.percentile(lat, q) * 1000) if got else float("nan"))
    return {"rate": rate, "sent": n, "answered": got, "send_rate": n / (send_end - t0),
            "p50_ms": ms(50), "p99_ms": ms(99), "p999_ms": ms(99.9),
            "max_ms": float(lat.max() * 1000) if got else float("nan"),
            "sustained": got >= 0.99 * n and got > 0 and ms(99) < 1000}


def warm_up(kafka: KafkaConfig, recv: Receiver) -> None:
    """Until the scorer's group join is done, nothing is answered: wait for a first answer."""
    producer = make_producer(kafka, "bench-warm")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rid = f"warm-{uuid.uuid4().hex}"
        req = ScoreRequest(request_id=rid, user_id="u0", k=5)
        producer.produce(kafka.topics.score_requests, key=b"u0", value=encode_score_request(req))
        producer.flush(5)
        time.sleep(0.5)
        if rid in recv.received:
            return
    raise SystemExit("scorer never answered a warm-up request")


def reference(n_items: int, dim: int, k: int, device: str) -> dict[str, float]:
    """Plain torch brute force in-process: per-request time at batch 1 and batch 64."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    m = torch.randn(n_items, dim, device=dev)
    b = torch.randn(n_items, device=dev)
    out: dict[str, float] = {}
    for batch in (1, 64):
        u = torch.randn(batch, dim, device=dev)
        for _ in range(3):
            torch.topk(torch.addmm(b, u, m.T), k, dim=1)
        reps = 50 if batch == 1 else 10
        start = time.perf_counter()
        for _ in range(reps):
            v, _i = torch.topk(torch.addmm(b, u, m.T), k, dim=1)
            v.cpu()
        out[f"brute_ms_per_request_batch{batch}"] = (time.perf_counter() - start) / reps / batch * 1000
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--rates", default="500,2000,5000", help="comma-separated req/s")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2, help="torch threads in the scorer")
    p.add_argument("--batch-max", type=int, default=256)
    p.add_argument("--batch-wait-ms", type=float, default=2.0)
    p.add_argument("--quick", action="store_true", help="20K items, 3 s per rate, 500,2000")
    p.add_argument("--out", type=Path, help="write the JSON result here")
    args = p.parse_args()
    if args.quick:
        args.items, args.users, args.duration, args.rates = 20_000, 2_000, 3.0, "500,2000"
    torch.set_num_threads(args.threads)
    given = os.environ.get("STREAM_APP_BOOTSTRAP_SERVERS")
    settings = broker.BrokerSettings(port=0, state_dir=Path(tempfile.mkdtemp(prefix="bench-broker-")))
    bootstrap = given or broker.start(settings).bootstrap_servers
    proc: subprocess.Popen[bytes] | None = None
    try:
        kafka = KafkaConfig(bootstrap_servers=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:6]}.")
        create_topics(kafka, TopicPlan())
        t = time.perf_counter()
        publish_rows(kafka, args.items, args.users, args.dim)
        port = free_port()
        proc = start_scorer(kafka, port, args)
        load_s = time.perf_counter() - t
        recv = Receiver(kafka)
        recv.start()
        warm_up(kafka, recv)
        results = [run_rate(kafka, float(r), args.duration, args.users, args.k, recv)
                   for r in args.rates.split(",")]
        recv.stop.set()
        ref = reference(args.items, args.dim, args.k, args.device)
        sustained = [r["rate"] for r in results if r["sustained"]]
        p50 = results[0]["p50_ms"]
        report = {"items": args.items, "dim": args.dim, "k": args.k, "device": args.device,
                  "cpu_count": os.cpu_count(), "publish_and_load_s": load_s, "rates": results,
                  "max_sustained_rps": max(sustained) if sustained else 0.0, "reference": ref,
                  "overhead_ratio_p50_vs_brute_batch1":
                      p50 / ref["brute_ms_per_request_batch1"]}
        text = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        return 0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        if not given:
            broker.stop(settings)


if __name__ == "__main__":
    sys.exit(main())
