"""Scorer latency under open-loop load, over a real broker, against a scorer process.

    python -m bench.scorer_latency                      # 100K items, d=64, 500/2000/5000 req/s
    python -m bench.scorer_latency --quick --threads 1  # 20K items, 3 s per rate, 500/2000
    python -m bench.scorer_latency --quick --baseline-src /path/to/old/checkout
    python -m bench.scorer_latency --bias zipf          # biases spread like popularity
    python -m bench.scorer_latency --row-rate 5000      # while rows arrive, as from a trainer

Publishes `--items` item rows and `--users` user rows, starts `stream-app scorer`
as a subprocess, waits for /readyz, then sends requests at fixed rates (open
loop: each request has an intended send time n/rate and latency is measured
from it, so a stalled generator cannot hide queueing) and reads the answers.

Every answer is timed four ways (one wall clock, one machine):
  send_lag   intended send time -> the client's produce() call
  to_scorer  produce() -> the scorer polled it  (prediction CreateTime - latency_ms)
  scorer     the scorer's own `latency_ms`: polled -> answer encoded
  to_client  the answer's CreateTime (scorer produce()) -> the client read it
`e2e` = read time - intended time. A rate is *sustained* when the generator
kept the rate, >= 99 % of requests were answered before the run's end (+1 s),
and the p99 over *all* sent requests (unanswered = infinite) is under
`--target-p99-ms`. Reference: the same top-K in-process by plain torch brute
force, with the scorer's thread count. `--baseline-src` runs a second scorer
from another checkout first, on the same broker, topics and load (A/B).
CPU use of the scorer, the broker and this client is reported per rate: on a
small machine they share the cores, which is where much of the time goes.
Each arm waits for the broker to go quiet (under 0.2 cores) before its first
rate (`wait_quiet`), so the first arm no longer runs beside the broker's
post-publish work while the second does not.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from confluent_kafka import KafkaError, Message, TopicPartition

from bench.common import free_port, machine, wait_http_ok, write_json
from bench.scorer_compute import ZIPF_SCALE, zipf_biases
from stream_app.codec import META_KEY, encode_embedding, encode_meta, encode_score_request
from stream_app.config import KafkaConfig
from stream_app.core import Learner, LearnerConfig
from stream_app.events import EmbeddingRow, ScoreRequest
from stream_app.kafka import broker
from stream_app.kafka.admin import TopicPlan, create_topics
from stream_app.kafka.clients import LATENCY_PRODUCER_DEFAULTS, make_consumer, make_producer
from stream_app.kafka.reply_reader import ReplyReader

RESULTS = Path(__file__).with_name("results")


def publish_rows(kafka: KafkaConfig, n_items: int, n_users: int, dim: int,
                 bias: str = "gaussian") -> None:
    """Items and users as the trainer publishes them, `meta:trainer` included.

    Users carry their id vector and 20 recent items, and the meta record the
    serving mix, so the scorer rebuilds each user's vector from the current
    item vectors per request, as it does in production. `bias`: "gaussian",
    N(0, 1) item biases, items of norm ~1 and users of norm ~8 (every table
    before 2026-11-27); "zipf", log(1/rank) biases and vectors of norm ~2, as
    in `bench.scorer_compute`: popularity spread as the trainer's bias has it.
    """
    rng = np.random.default_rng(0)
    learner_cfg = LearnerConfig(dim=dim)
    items, users, biases = _table(bias, n_items, n_users, dim, rng)
    producer = make_producer(kafka, "bench-rows")
    stamp = int(time.time() * 1000)
    for entity, mat in (("item", items), ("user", users)):
        for n, vec in enumerate(mat):
            row = _row(entity, n, vec, float(biases[n]) if entity == "item" else 0.0,
                       rng, n_items, stamp)
            while True:
                try:
                    producer.produce(kafka.topics.embeddings, key=row.key.encode(),
                                     value=encode_embedding(row))
                    break
                except BufferError:
                    producer.poll(0.1)
    meta = {**Learner(learner_cfg, device="cpu").global_state(), "model_version": "bench",
            "updated_at": stamp,
            "serving": {"history_weight": learner_cfg.history_weight,
                        "recent_decay": learner_cfg.recent_decay,
                        "recent_items": learner_cfg.recent_items}}
    producer.produce(kafka.topics.embeddings, key=META_KEY, value=encode_meta(meta))
    producer.flush(120)


def _table(bias: str, n_items: int, n_users: int, dim: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Item vectors, user vectors and item biases of the `bias` shape (`publish_rows`)."""
    if bias == "zipf":
        items = (rng.normal(size=(n_items, dim)) * ZIPF_SCALE).astype(np.float32)
        users = (rng.normal(size=(n_users, dim)) * ZIPF_SCALE).astype(np.float32)
        return items, users, zipf_biases(rng, n_items)
    items = (rng.normal(size=(n_items, dim)) / np.sqrt(dim)).astype(np.float32)
    users = rng.normal(size=(n_users, dim)).astype(np.float32)
    return items, users, rng.normal(size=n_items)


def _row(entity: str, n: int, vec: np.ndarray, bias: float, rng: np.random.Generator,
         n_items: int, stamp: int) -> EmbeddingRow:
    """Row `n` of `entity` as the trainer writes it (users: id vector, 20 recent items)."""
    user = entity == "user"
    recent = tuple(f"i{j}" for j in rng.integers(0, n_items, LearnerConfig().recent_items))
    return EmbeddingRow(entity=entity, id=f"{entity[0]}{n}", vector=vec,  # type: ignore[arg-type]
                        bias=bias, model_version="bench", updates=5, updated_at=stamp,
                        last_event_ts=stamp, recent_items=recent if user else (),
                        state={"id_vec": vec} if user else {})


class RowStream(threading.Thread):
    """`rate` rows a second republished while requests are timed, in one burst a second,
    as a trainer's commits arrive: the scorer applies them between its answers, as in
    production. Each burst rewrites other ids (items and users in the table's
    proportion, drawn afresh), with vectors and biases drawn as the table's own
    (`_table`), so the scorer's bound index sees new slots written as it would from a
    trainer. Encoded before the timing starts, so the client's own cost stays small."""

    def __init__(self, kafka: KafkaConfig, rate: int, bursts: int,
                 args: argparse.Namespace) -> None:
        super().__init__(daemon=True)
        self.kafka, self.published, self.errors = kafka, 0, 0
        self.first_error = ""
        self.stop = threading.Event()
        rng = np.random.default_rng(1)
        items, users, biases = _table(args.bias, args.items, args.users, args.dim, rng)
        stamp = int(time.time() * 1000)
        item_share = args.items / (args.items + args.users)
        self.bursts: list[list[tuple[bytes, bytes]]] = []
        for _ in range(bursts):
            burst = []
            for _ in range(rate):
                entity = "item" if rng.random() < item_share else "user"
                n = int(rng.integers(0, args.items if entity == "item" else args.users))
                vec, bias = (items[n], float(biases[n])) if entity == "item" else (users[n], 0.0)
                row = _row(entity, n, vec, bias, rng, args.items, stamp)
                burst.append((row.key.encode(), encode_embedding(row)))
            self.bursts.append(burst)

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.errors += 1
            self.first_error = self.first_error or err.str()

    def run(self) -> None:
        producer = make_producer(self.kafka, "bench-row-stream")
        due = time.monotonic()
        try:
            for burst in self.bursts:
                if self.stop.is_set():
                    break
                for key, value in burst:
                    while True:
                        try:
                            producer.produce(self.kafka.topics.embeddings, key=key,
                                             value=value, on_delivery=self._delivered)
                            break
                        except BufferError:
                            producer.poll(0.05)
                producer.poll(0)
                self.published += len(burst)
                due += 1.0
                self.stop.wait(max(0.0, due - time.monotonic()))
        except Exception as exc:  # noqa: BLE001 (said in the result, not lost in a thread)
            self.first_error = self.first_error or repr(exc)
            self.errors += 1
        finally:
            producer.flush(10)


def start_group_at_end(kafka: KafkaConfig, group: str) -> None:
    """Commit the end of `score-requests` for a new group, so a second scorer (A/B) does
    not first replay every request sent to the one before it (auto.offset.reset=earliest)."""
    consumer = make_consumer(kafka, "bench-seek", group)
    topic = kafka.topics.score_requests
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = [TopicPartition(topic, p, consumer.get_watermark_offsets(
            TopicPartition(topic, p), timeout=10)[1]) for p in parts]
        consumer.commit(offsets=ends, asynchronous=False)
    finally:
        consumer.close()


def start_scorer(kafka: KafkaConfig, args: argparse.Namespace, group: str,
                 src: Path | None) -> tuple[subprocess.Popen[bytes], int]:
    """A scorer process (from `src` when given) that is ready; returns it and its metrics port."""
    port = free_port()
    start_group_at_end(kafka, group)
    cmd = [sys.executable, "-m", "stream_app.cli", "--log-level", "WARNING", "scorer",
           "--bootstrap-servers", kafka.bootstrap_servers, "--topic-prefix", kafka.topic_prefix,
           "--metrics-port", str(port), "--device", args.device, "--group-id", group,
           "--batch-max", str(args.batch_max)]
    if args.batch_wait_ms is not None:
        cmd += ["--batch-wait-ms", str(args.batch_wait_ms)]
    # Threads go by env so an older checkout without the setting still runs (OMP for it).
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "STREAM_APP_SCORER_THREADS": str(args.threads)}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    proc = subprocess.Popen(cmd, env=env, cwd=src)  # noqa: S603
    wait_http_ok(proc, port, "/readyz")
    return proc, port


def cpu_seconds(pid: int | None) -> float:
    """user + system CPU seconds of a process (0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_quiet(pid: int | None, *, below_cores: float = 0.2, window_s: float = 3.0,
               limit_s: float = 180.0) -> dict[str, float]:
    """Wait until `pid` (the broker) uses under `below_cores` over `window_s`, at most
    `limit_s`. Right after the rows are published the broker is busy for a while
    (flushing, cleaning the compacted topic): whichever arm ran first shared the two
    cores with it (about 1 core against 0.4-0.6 for the second arm), so arms and
    reruns were not alike. Returns the wait and the last window's cores."""
    start = time.monotonic()
    cores: float | None = None  # no broker of ours to watch (strict JSON has no NaN)
    while pid is not None and time.monotonic() - start < limit_s:
        before = cpu_seconds(pid)
        time.sleep(window_s)
        cores = (cpu_seconds(pid) - before) / window_s
        if cores < below_cores:
            break
    return {"waited_s": round(time.monotonic() - start, 1),
            "broker_cores": None if cores is None else round(cores, 2)}


class Receiver(threading.Thread):
    """Reads `predictions` from the current end: request id -> (read time, CreateTime ms, value)."""

    def __init__(self, kafka: KafkaConfig) -> None:
        super().__init__(daemon=True)
        self.reader = ReplyReader(kafka, kafka.topics.predictions, client_id="bench-recv",
                                  group_id=f"bench-{uuid.uuid4().hex}")
        self.reader.open()
        self.received: dict[str, tuple[float, int, bytes]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                for rec in self.reader.poll(5000, 0.05):
                    if rec.key is not None and rec.value is not None:
                        self.received.setdefault(rec.key.decode(),
                                                 (time.time(), rec.timestamp_ms, rec.value))
        finally:
            self.reader.close()


def send_at_rate(kafka: KafkaConfig, rate: float, duration: float, n_users: int, k: int,
                 tag: str) -> tuple[dict[str, tuple[float, float]], float, float]:
    """Open-loop sends; returns id -> (intended, sent) wall times, start and end of sending."""
    producer = make_producer(kafka, "bench-send", **LATENCY_PRODUCER_DEFAULTS)
    n = int(rate * duration)
    sent: dict[str, tuple[float, float]] = {}
    rng = np.random.default_rng(int(rate))
    users = [f"u{int(u)}" for u in rng.integers(0, n_users, n)]
    t0 = time.time() + 0.1
    for i in range(n):
        rid = f"{tag}-{int(rate)}-{i}"
        at = t0 + i / rate
        while (now := time.time()) < at:
            time.sleep(min(at - now, 0.0005))
        req = ScoreRequest(request_id=rid, user_id=users[i], k=k)
        producer.produce(kafka.topics.score_requests, key=req.user_id.encode(),
                         value=encode_score_request(req))
        producer.poll(0)
        sent[rid] = (at, time.time())
    end = time.time()
    producer.flush(30)
    return sent, t0, end


def _pcts(values: list[float] | np.ndarray, qs: tuple[float, ...] = (50, 99)) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    if not arr.size:
        return {f"p{q:g}": float("nan") for q in qs}
    return {f"p{q:g}": round(float(np.percentile(arr, q)), 3) for q in qs}


def run_rate(kafka: KafkaConfig, rate: float, args: argparse.Namespace, recv: Receiver,
             tag: str, pids: dict[str, int | None]) -> dict[str, Any]:
    stream = RowStream(kafka, args.row_rate, int(args.duration) + 2, args) \
        if args.row_rate else None
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    wall0 = time.time()
    if stream is not None:
        stream.start()
    try:
        sent, t0, send_end = send_at_rate(kafka, rate, args.duration, args.users, args.k, tag)
    finally:
        if stream is not None:
            stream.stop.set()
            stream.join(30)
    window_end = t0 + args.duration + 1.0
    while time.time() < window_end and not sent.keys() <= recv.received.keys():
        time.sleep(0.02)
    cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    wall1 = time.time()
    drain_end = time.time() + 10  # stragglers: still timed, but they do not count as sustained
    while time.time() < drain_end and not sent.keys() <= recv.received.keys():
        time.sleep(0.05)
    n = len(sent)
    e2e: list[float] = []
    in_run = 0
    parts: dict[str, list[float]] = {"send_lag": [], "to_scorer": [], "scorer": [],
                                     "to_client": []}
    for rid, (intended, at) in sent.items():
        got = recv.received.get(rid)
        if got is None:
            continue
        read, ts_ms, value = got
        scorer_ms = float(orjson.loads(value)["latency_ms"])
        e2e.append((read - intended) * 1000)
        in_run += read <= window_end
        parts["send_lag"].append((at - intended) * 1000)
        parts["to_scorer"].append(ts_ms - scorer_ms - at * 1000)
        parts["scorer"].append(scorer_ms)
        parts["to_client"].append(read * 1000 - ts_ms)
    p99_all = (float(np.percentile(np.array(e2e + [np.inf] * (n - len(e2e))), 99,
                                   method="higher")) if n else float("inf"))
    send_rate = n / max(send_end - t0, 1e-9)
    sustained = (send_rate >= 0.98 * rate and in_run >= 0.99 * n
                 and p99_all <= args.target_p99_ms)
    span = wall1 - wall0
    return {"rate": rate, "sent": n, "send_rate": round(send_rate, 1), "answered": len(e2e),
            "rows_published": stream.published if stream is not None else 0,
            "row_errors": [stream.errors, stream.first_error] if stream is not None else None,
            "answered_in_run": in_run, "p99_all_ms": round(p99_all, 3),
            "e2e_ms": {**_pcts(e2e, (50, 90, 99, 99.9)),
                       "max": round(max(e2e), 3) if e2e else float("nan")},
            "scorer_ms": _pcts(parts["scorer"], (50, 90, 99)),
            "breakdown_ms": {name: _pcts(v) for name, v in parts.items()},
            "cpu_cores": {name: round((cpu1[name] - cpu0[name]) / span, 2) for name in pids},
            "sustained": sustained}


def warm_up(kafka: KafkaConfig, recv: Receiver) -> None:
    """Until the scorer's group join is done, nothing is answered: wait for a first answer."""
    producer = make_producer(kafka, "bench-warm", **LATENCY_PRODUCER_DEFAULTS)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rid = f"warm-{uuid.uuid4().hex}"
        producer.produce(kafka.topics.score_requests, key=b"u0",
                         value=encode_score_request(ScoreRequest(request_id=rid, user_id="u0",
                                                                 k=5)))
        producer.flush(5)
        until = time.monotonic() + 0.5
        while time.monotonic() < until and rid not in recv.received:
            time.sleep(0.01)
        if rid in recv.received:
            return
    raise SystemExit("scorer never answered a warm-up request")


def reference(n_items: int, dim: int, k: int, device: str, threads: int) -> dict[str, float]:
    """Plain torch brute force in-process: per-request time at batch 1 and batch 64."""
    torch.set_num_threads(threads)
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
        per_request = (time.perf_counter() - start) / reps / batch
        out[f"brute_ms_per_request_batch{batch}"] = per_request * 1000
    return out


def run_scorer(kafka: KafkaConfig, args: argparse.Namespace, label: str, src: Path | None,
               broker_pid: int | None) -> dict[str, Any]:
    """One scorer process through every rate; stopped before returning."""
    t = time.perf_counter()
    proc, _port = start_scorer(kafka, args, f"bench-{label}-{uuid.uuid4().hex[:6]}", src)
    load_s = time.perf_counter() - t
    recv = Receiver(kafka)
    recv.start()
    try:
        warm_up(kafka, recv)
        settled = wait_quiet(broker_pid)
        pids = {"scorer": proc.pid, "broker": broker_pid, "client": os.getpid()}
        rates = [run_rate(kafka, float(r), args, recv, label, pids)
                 for r in args.rates.split(",")]
    finally:
        recv.stop.set()
        proc.terminate()
        proc.wait(30)
        recv.join(10)
    sustained = [r["rate"] for r in rates if r["sustained"]]
    return {"src": str(src) if src else "this checkout", "load_s": round(load_s, 1),
            "broker_settle": settled, "rates": rates,
            "max_sustained_rps": max(sustained) if sustained else 0.0}


def summarise(run: dict[str, Any], ref: dict[str, float]) -> None:
    """Overhead vs the in-process brute force, at the lowest rate (least queueing)."""
    first = run["rates"][0]
    brute = ref["brute_ms_per_request_batch1"]
    run["overhead_ratio_e2e_p50_vs_brute_batch1"] = round(first["e2e_ms"]["p50"] / brute, 1)
    run["overhead_ratio_scorer_p50_vs_brute_batch1"] = round(first["scorer_ms"]["p50"] / brute, 1)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--items", type=int, default=100_000, help="item rows (default 100000)")
    p.add_argument("--users", type=int, default=10_000, help="user rows (default 10000)")
    p.add_argument("--dim", type=int, default=64, help="embedding dimension (default 64)")
    p.add_argument("--k", type=int, default=20, help="top-K per request (default 20)")
    p.add_argument("--rates", default="500,2000,5000", help="comma-separated req/s")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per rate (default 10)")
    p.add_argument("--device", default="auto", help="scorer device (default auto)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the scorer")
    p.add_argument("--batch-max", type=int, default=256, help="scorer batch_max (default 256)")
    p.add_argument("--batch-wait-ms", type=float, help="scorer batch_wait_ms (its default)")
    p.add_argument("--target-p99-ms", type=float, default=20.0,
                   help="p99 end-to-end latency a sustained rate must meet (default 20)")
    p.add_argument("--baseline-src", type=Path,
                   help="also run the scorer of this checkout first, same load (A/B)")
    p.add_argument("--bias", choices=("gaussian", "zipf"), default="gaussian",
                   help="item table shape (see publish_rows; default gaussian)")
    p.add_argument("--row-rate", type=int, default=0,
                   help="embedding rows a second republished while requests are timed, in "
                        "one burst a second, as a trainer's commits (default 0: a still table)")
    p.add_argument("--quick", action="store_true", help="20K items, 3 s per rate, 500,2000")
    p.add_argument("--out", type=Path, help="JSON result (default bench/results/...)")
    args = p.parse_args()
    if args.quick:
        args.items, args.users, args.duration, args.rates = 20_000, 2_000, 3.0, "500,2000"
    if args.out is None:
        suffix = ("_quick" if args.quick else "") + ("_zipf" if args.bias == "zipf" else "")
        args.out = RESULTS / f"scorer_latency{suffix}.json"
    return args


def main() -> int:
    args = parse_args()
    given = os.environ.get("STREAM_APP_BOOTSTRAP_SERVERS")
    settings = broker.BrokerSettings(port=0, heap="1g", dies_with_caller=True,
                                     state_dir=Path(tempfile.mkdtemp(prefix="bench-broker-")))
    running = None if given else broker.start(settings)
    bootstrap = given or running.bootstrap_servers  # type: ignore[union-attr]
    try:
        kafka = KafkaConfig(bootstrap_servers=bootstrap,
                            topic_prefix=f"bench{uuid.uuid4().hex[:6]}.")
        create_topics(kafka, TopicPlan())
        t = time.perf_counter()
        publish_rows(kafka, args.items, args.users, args.dim, args.bias)
        publish_s = time.perf_counter() - t
        load_before = os.getloadavg()
        broker_pid = running.pid if running else None
        runs = {}
        if args.baseline_src is not None:
            runs["baseline"] = run_scorer(kafka, args, "base", args.baseline_src.resolve(),
                                          broker_pid)
        runs["current"] = run_scorer(kafka, args, "cur", None, broker_pid)
        ref = reference(args.items, args.dim, args.k, args.device, args.threads)
        for run in runs.values():
            summarise(run, ref)
        report = {"items": args.items, "users": args.users, "dim": args.dim, "k": args.k,
                  "bias": args.bias,
                  "device": args.device, "threads": args.threads, "batch_max": args.batch_max,
                  "batch_wait_ms": args.batch_wait_ms, "duration_s": args.duration,
                  "row_rate": args.row_rate,
                  "target_p99_ms": args.target_p99_ms, "machine": machine(),
                  "loadavg_before_after": [load_before, os.getloadavg()],
                  "publish_s": round(publish_s, 1), "reference": ref, **runs}
        write_json(args.out, report)
        return 0
    finally:
        if not given:
            broker.stop(settings)


if __name__ == "__main__":
    sys.exit(main())
