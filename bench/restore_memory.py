"""Memory and restore: a learner with N rows restored from the `embeddings` changelog.

1. A learner learns one event per id from a generated stream until it holds
   `--rows` rows (users + items), and every row is published to `embeddings`
   as the trainer would (row_blocks + encode_rows, one record per row).
2. Reference: reading that topic to its end with the same reader (read_committed,
   no decoding) — the floor of any restore from Kafka.
3. Ours: `stream_app.trainer.restore.restore` into a fresh learner, in a fresh
   process, whose RSS growth is compared with the bytes of the live tensors.
4. The same learner written as a local snapshot (`--snapshot-dir`), then a
   second fresh learner restored from it plus the changelog after its tag
   (empty here: the best case, a clean stop and restart).
5. A scorer process started on the same changelog: seconds from its
   /healthz answering (imports done, metrics server up, load starting) to
   its /readyz answering (every row loaded), and its RSS then.

    python -m bench.restore_memory --rows 1000000 --out bench/results/restore_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import bench_broker, free_port, fresh_topics, machine, wait_http_ok, write_json
from stream_app.codec import encode_rows
from stream_app.config import KafkaConfig
from stream_app.core import Learner, LearnerConfig
from stream_app.events import Event, EventKind
from stream_app.kafka.ends import read_to_end
from stream_app.kafka.produce import EventProducer, Outgoing
from stream_app.trainer.restore import restore
from stream_app.trainer.snapshot import SnapshotTag, read_snapshot, write_state

CONFIG = LearnerConfig(dim=64, replay_ratio=0.0, max_users=2_000_000, max_items=2_000_000)


def build_and_publish(kafka: KafkaConfig, rows: int, per_user: int = 1) -> int:
    """Learn until `rows` rows exist (90% users, 10% items); publish them all.

    Each user has `per_user` events (random items), so its row lists up to
    that many recent items, as a real user's does (up to `recent_items`, 20).
    """
    learner = Learner(CONFIG, device="cpu")
    n_items = max(1, rows // 10)
    n_users = rows - n_items
    batch = 8192
    rng = np.random.default_rng(0)
    for round_ in range(per_user):
        items = np.arange(n_users) % n_items if round_ == 0 else rng.integers(0, n_items, n_users)
        for start in range(0, n_users, batch):
            users = range(start, min(start + batch, n_users))
            learner.learn([Event(event_id=f"e{round_}-{u}", user_id=f"u{u}",
                                 item_id=f"i{items[u]}", ts=1_700_000_000_000
                                 + round_ * n_users + u, kind=EventKind.CLICK) for u in users])
    published = 0
    with EventProducer(kafka, client_id="bench-rows") as producer:
        for ids, entity in ((learner.user_ids(), "user"), (learner.item_ids(), "item")):
            for s in range(0, len(ids), 10_000):
                chunk = ids[s:s + 10_000]
                kw = {"user_ids": chunk} if entity == "user" else {"item_ids": chunk}
                for block in learner.row_blocks(model_version="bench", now_ms=0, **kw):
                    for ident, value in zip(block.ids, encode_rows(block)):
                        producer.send(Outgoing(kafka.topics.embeddings,
                                               f"{block.entity}:{ident}".encode(), value))
                        published += 1
    return published


def raw_read(kafka: KafkaConfig) -> dict[str, float]:
    start = time.perf_counter()
    n = nbytes = 0
    for chunk in read_to_end(kafka, kafka.topics.embeddings, client_id="bench-raw"):
        n += len(chunk)
        nbytes += sum(len(value or b"") for _, value in chunk)
    return {"records": n, "bytes": nbytes, "seconds": time.perf_counter() - start}


def _rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * 4096


def table_bytes(learner: Learner) -> dict[str, int]:
    """Bytes of the per-row arrays of both tables (tensors and the vocabularies' times).

    `live`: the share of the rows that hold an id, what the target compares
    RSS with; `allocated`: all rows. Tables grow ahead of use, so the spare
    rows are memory the process holds, not table bytes it needs: counting
    them (as this function did before 2026-11-27) flattered the ratio by the
    spare share (16% at 1M rows when tables doubled).
    """
    state = learner.state_dict()
    live = allocated = 0
    for name, ids in (("users", learner.user_ids()), ("items", learner.item_ids())):
        arrays: list[Any] = [state["vocabs"][name]["last_ts"]]
        stack: list[Any] = [state["tables"][name]]
        while stack:
            obj = stack.pop()
            if isinstance(obj, dict):
                stack.extend(obj.values())
            else:
                arrays.append(obj)
        for a in arrays:
            size = a.element_size() * a.nelement() if isinstance(a, torch.Tensor) else a.nbytes
            allocated += size
            live += size * len(ids) // max(len(a), 1)
    return {"live": live, "allocated": allocated}


def child(bootstrap: str, prefix: str) -> None:
    """Runs in a fresh process: RSS before/after restoring, and the tables' bytes."""
    torch.set_num_threads(1)
    kafka = KafkaConfig(bootstrap_servers=bootstrap, topic_prefix=prefix)
    learner = Learner(CONFIG, device="cpu")
    before = _rss_bytes()
    stats = restore(learner, kafka, client_id="bench-restore")
    after = _rss_bytes()
    # The restore resolves users' recent items itself (`finish_restore`), so RSS and time
    # above include what the first batch used to pay (1-2 s at 900K users).
    tables = table_bytes(learner)
    path = Path(tempfile.mkdtemp()) / "bench.snapshot"
    t0 = time.perf_counter()
    state = learner.state_dict()  # taken in the trainer's loop
    state_s = time.perf_counter() - t0
    write_state(path, state, SnapshotTag(topic=kafka.topics.embeddings, topic_id="bench",
                                         ends=stats.ends, written_ms=0))  # a background thread
    write_s = time.perf_counter() - t0 - state_s
    del state
    t0 = time.perf_counter()
    found = read_snapshot(path)
    assert found is not None
    again = Learner(CONFIG, device="cpu")
    again.load_state_dict(found[1])
    restore(again, kafka, client_id="bench-restore-snapshot", start=found[0].ends)
    snapshot_s = time.perf_counter() - t0
    print(json.dumps({"restore_seconds": stats.seconds,
                      "users": stats.users, "items": stats.items,
                      "rss_growth_bytes": after - before, "rss_bytes": after,
                      "table_bytes": tables["live"], "allocated_table_bytes": tables["allocated"],
                      "snapshot_state_seconds": state_s, "snapshot_write_seconds": write_s,
                      "snapshot_bytes": path.stat().st_size,
                      "snapshot_restore_seconds": snapshot_s}))


def scorer_load(kafka: KafkaConfig) -> dict[str, float]:
    """Load the changelog into a `stream-app scorer` process; the seconds to ready and its RSS."""
    port = free_port()
    cmd = [sys.executable, "-m", "stream_app.cli", "--log-level", "WARNING", "scorer",
           "--bootstrap-servers", kafka.bootstrap_servers, "--topic-prefix", kafka.topic_prefix,
           "--metrics-port", str(port), "--device", "cpu", "--group-id", "bench-load"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})  # noqa: S603
    try:
        healthy = wait_http_ok(proc, port, "/healthz", every_s=0.05)
        rss_healthy = _rss_bytes(proc.pid)
        ready = wait_http_ok(proc, port, "/readyz", every_s=0.05)
        rss_ready = _rss_bytes(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    return {"load_seconds": ready - healthy, "rss_bytes_when_healthy": rss_healthy,
            "rss_bytes_when_ready": rss_ready}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--per-user", type=int, default=1,
                    help="events per user, hence recent items per user row (max 20)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", nargs=2, metavar=("BOOTSTRAP", "PREFIX"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child)
        return {}
    torch.set_num_threads(1)
    with bench_broker() as bootstrap, fresh_topics(bootstrap) as kafka:
        published = build_and_publish(kafka, args.rows, args.per_user)
        raw = raw_read(kafka)
        proc = subprocess.run([sys.executable, "-m", "bench.restore_memory", "--child",  # noqa: S603
                               bootstrap, kafka.topic_prefix], capture_output=True, text=True,
                              check=True)
        ours = json.loads(proc.stdout.strip().splitlines()[-1])
        scorer = scorer_load(kafka)
    result = {"benchmark": "restore_memory", "machine": machine(), "rows": published,
              "events_per_user": args.per_user,
              "reference_raw_read": raw, "restore": ours,
              "ratio_restore_vs_raw_read": ours["restore_seconds"] / raw["seconds"],
              "ratio_snapshot_restore_vs_raw_read": ours["snapshot_restore_seconds"]
              / raw["seconds"],
              "ratio_rss_growth_vs_table_bytes": ours["rss_growth_bytes"] / ours["table_bytes"],
              "scorer": scorer,
              "ratio_scorer_load_vs_raw_read": scorer["load_seconds"] / raw["seconds"]}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
