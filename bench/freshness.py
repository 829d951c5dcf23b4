"""Freshness: produce → the user's row readable by a read_committed consumer.

Events are produced at a fixed rate (open loop) to a running trainer process;
a read_committed consumer tails `embeddings`. An event counts as fresh when a
row of its user with `last_event_ts >= event.ts` becomes readable, and its
freshness is that moment minus the event's send time (same clock, one host).
Reference in the same run: the broker's own produce → read_committed consume
latency of the input topic, i.e. what any pipeline pays before doing work.
Each rate is preceded by `WARM_UP_S` of unmeasured load at that rate.

    python -m bench.freshness --rates 5000 20000 --seconds 20 --out bench/results/freshness.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from bench.common import bench_broker, free_port, fresh_topics, machine, write_json
from stream_app.codec import decode_embedding, encode_event, is_meta_key
from stream_app.config import KafkaConfig
from stream_app.events import Event, EventKind

WARM_UP_S = 5.0
"""Seconds of unmeasured load before each measured rate."""


def _tail(kafka: KafkaConfig, topic: str) -> Consumer:
    c = Consumer({"bootstrap.servers": kafka.bootstrap_servers,
                  "group.id": f"fresh-{uuid.uuid4().hex}", "enable.auto.commit": False,
                  "isolation.level": "read_committed", "fetch.wait.max.ms": 5})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, OFFSET_END) for p in parts])
    return c


def measure(kafka: KafkaConfig, rate: float, seconds: float, users: int,
            items: int, first_ts: int, label: str = "f") -> dict[str, Any]:
    """Open-loop produce at `rate` for `seconds`; returns latency percentiles in ms.

    `label` prefixes the event ids (and seeds the stream), so a warm-up pass
    and the measured pass never share an id the trainer would deduplicate.
    Event times are `first_ts`, `first_ts + 1`, ...: strictly increasing, so
    a row can only mark as fresh the events it has learned from; a later
    pass must start after this one's last time (`first_ts + rate * seconds`).
    """
    n = int(rate * seconds)
    rng = np.random.default_rng([int(rate), ord(label[0])])
    user_of = rng.integers(0, users, n)
    item_of = rng.zipf(1.3, n) % items
    base_ts = first_ts
    sent: dict[str, list[tuple[int, float]]] = defaultdict(list)  # user -> [(ts, send time)]
    seen_input: list[float] = []
    fresh: list[float] = []
    stop = threading.Event()
    rows = _tail(kafka, kafka.topics.embeddings)
    raw = _tail(kafka, kafka.topics.clicks)

    def read() -> None:
        while not stop.is_set():
            for msg in rows.consume(1000, timeout=0.05):
                if msg.error() or is_meta_key(msg.key()) or not msg.key().startswith(b"user:"):
                    continue
                now = time.monotonic()
                row = decode_embedding(msg.key(), msg.value(), with_state=False)
                if row is None:
                    continue
                pending = sent.get(row.id, [])
                while pending and pending[0][0] <= row.last_event_ts:
                    fresh.append(now - pending.pop(0)[1])

    def read_reference() -> None:
        """Its own thread: behind the rows' decoding the reference would look slower."""
        while not stop.is_set():
            for msg in raw.consume(1000, timeout=0.05):
                if msg.error() is None:
                    seen_input.append(time.monotonic() - float(msg.headers()[0][1]))

    readers = [threading.Thread(target=f, daemon=True) for f in (read, read_reference)]
    for reader in readers:
        reader.start()
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 1})
    start = time.monotonic()
    for i in range(n):
        ahead = start + i / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        user = f"u{user_of[i]}"
        ev = Event(event_id=f"{label}{rate}-{i}", user_id=user, item_id=f"i{item_of[i]}",
                   ts=base_ts + i, kind=EventKind.CLICK)
        t = time.monotonic()
        sent[user].append((ev.ts, t))
        producer.produce(kafka.topics.clicks, key=user.encode(), value=encode_event(ev),
                         headers=[("sent", repr(t).encode())])
        producer.poll(0)
    producer.flush(30)
    achieved = n / (time.monotonic() - start)
    deadline = time.monotonic() + 60
    while sum(len(v) for v in sent.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    for reader in readers:
        reader.join(5)
    rows.close()
    raw.close()
    lost = sum(len(v) for v in sent.values())
    # Over every event sent, an event never fresh counting as infinitely late: percentiles
    # over the fresh ones alone would hide exactly the events the trainer fell behind on.
    p99_all = float(np.percentile(np.array(fresh + [np.inf] * lost) * 1000, 99)) \
        if n else float("nan")
    return {"rate": rate, "achieved_rate": achieved, "events": n, "not_fresh_after_60s": lost,
            "p99_all_ms": p99_all, "freshness_ms": _pct(fresh),
            "reference_input_read_committed_ms": _pct(seen_input)}


def _warm_up(kafka: KafkaConfig, timeout_s: float = 90) -> None:
    """Wait until the trainer has joined its group and published a first row."""
    rows = _tail(kafka, kafka.topics.embeddings)
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    ev = Event(event_id="warmup", user_id="warmup", item_id="i0",
               ts=int(time.time() * 1000) - 3_600_000, kind=EventKind.CLICK)
    producer.produce(kafka.topics.clicks, key=b"warmup", value=encode_event(ev),
                     headers=[("sent", repr(time.monotonic()).encode())])
    producer.flush(10)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if any(m.error() is None and m.key() == b"user:warmup"
                   for m in rows.consume(100, timeout=0.2)):
                return
        raise RuntimeError("the trainer did not publish the warm-up row in time")
    finally:
        rows.close()


def _pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values) * 1000
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "max": float(a.max()), "n": int(a.size)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rates", type=float, nargs="+", default=[5000, 20000])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=5_000)
    ap.add_argument("--batch-wait-ms", type=int, default=50)
    ap.add_argument("--batch-max", type=int, help="trainer events per transaction (its default)")
    ap.add_argument("--step-max", type=int, help="trainer events per learning step (its default)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    results = []
    with bench_broker() as bootstrap:
        for rate in args.rates:
            with fresh_topics(bootstrap) as kafka:
                results.append(_with_trainer(kafka, args, rate))
    out = {"benchmark": "freshness", "machine": machine(), "params": vars(args) | {"out": None},
           "results": results}
    write_json(args.out, out)
    return out


def _with_trainer(kafka: KafkaConfig, args: argparse.Namespace, rate: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "stream_app.cli", "--log-level", "WARNING", "trainer",
           "--bootstrap-servers", kafka.bootstrap_servers, "--topic-prefix", kafka.topic_prefix,
           "--metrics-port", str(free_port()), "--batch-wait-ms", str(args.batch_wait_ms),
           "--group-id", f"fresh-{uuid.uuid4().hex[:6]}"]
    for flag, value in (("--batch-max", args.batch_max), ("--step-max", args.step_max)):
        if value is not None:
            cmd += [flag, str(value)]
    proc = subprocess.Popen(cmd)  # noqa: S603
    try:
        _warm_up(kafka)
        # Unmeasured pass at the same rate: a fresh broker and trainer are slow
        # for their first seconds (the input topic's own latency showed it), and
        # that start-up is not what freshness under steady load means.
        first_ts = int(time.time() * 1000) - 3_600_000
        warm = measure(kafka, rate, WARM_UP_S, args.users, args.items, first_ts, label="w")
        result = measure(kafka, rate, args.seconds, args.users, args.items,
                         first_ts + int(rate * WARM_UP_S))
        # Above 0, the measured pass did not start from a caught-up trainer.
        return {**result, "warm_up_not_fresh_after_60s": warm["not_fresh_after_60s"]}
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
