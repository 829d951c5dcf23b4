"""The scorer's compute per request: `rank()` over an in-memory table, no Kafka.

`bench.scorer_latency` measures requests end to end through the broker, where
two broker hops and the machine's load dominate; this isolates what a device
changes: user vectors rebuilt from the current item vectors, `exclude_seen`,
the score product and top-K, for micro-batches of full-catalogue requests.

    python -m bench.scorer_compute --items 100000 1000000 --batch 32 256
    python -m bench.scorer_compute --device cuda --items 100000 1000000 --batch 32 256
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from bench.common import machine
from stream_app.core import LearnerConfig
from stream_app.events import EmbeddingRow, ScoreRequest
from stream_app.serving import topk
from stream_app.serving.table import EmbeddingTable, ServingMix
from stream_app.serving.topk import rank

BIASES = ("gaussian", "zipf", "equal")
"""Item tables to rank, see `filled_table`."""
ZIPF_SCALE = 0.25
"""Per-dimension scale of the "zipf" table's vectors: norm ~2 at d=64, as the MovieLens model's."""


def zipf_biases(rng: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
    """The trainer's bias, log popularity, over a catalogue with Zipf(1) popularity: log(1/rank)."""
    return -np.log(rng.permutation(n) + 1.0)


def filled_table(device: torch.device, items: int, users: int, dim: int,
                 seed: int, bias: str = "gaussian") -> EmbeddingTable:
    """Items with random vectors and biases; users with an id vector and 50 recent items.

    `bias`: "gaussian", N(0, 1) biases and vectors of norm ~0.8 (the figures
    before pruning were taken on it); "zipf", the trainer's bias on a
    catalogue with Zipf(1) popularity, log(1 / rank), and vectors of norm ~2
    (the MovieLens model's items: median norm 1.6); "equal", every bias 0, where
    pruning can skip nothing: its worst case.
    """
    rng = np.random.default_rng(seed)
    cfg = LearnerConfig()
    table = EmbeddingTable(device=device, initial_capacity=items)
    scale = ZIPF_SCALE if bias == "zipf" else 0.1
    vectors = rng.standard_normal((items, dim), dtype=np.float32) * scale
    biases = {"gaussian": lambda: rng.standard_normal(items),
              "zipf": lambda: zipf_biases(rng, items),
              "equal": lambda: np.zeros(items)}[bias]()
    for i in range(items):
        table.upsert(EmbeddingRow(entity="item", id=f"i{i}", vector=vectors[i],
                                  bias=float(biases[i]), model_version="bench", updates=1,
                                  updated_at=1, last_event_ts=1))
    for u in range(users):
        vec = rng.standard_normal(dim, dtype=np.float32) * scale
        recent = tuple(f"i{j}" for j in rng.integers(0, items, 50))
        table.upsert(EmbeddingRow(entity="user", id=f"u{u}", vector=vec, bias=0.0,
                                  model_version="bench", updates=10, updated_at=1,
                                  last_event_ts=1, recent_items=recent,
                                  state={"id_vec": vec}))
    table.mix = ServingMix(history_weight=cfg.history_weight, recent_decay=cfg.recent_decay,
                           recent_items=cfg.recent_items)
    table.flush()
    return table


def exhaustive(run: Callable[[], dict[str, float]]) -> dict[str, float]:
    """`run` with pruning off: one product over every item, the reference in the same run."""
    saved = topk.PRUNE_MIN_SLOTS
    topk.PRUNE_MIN_SLOTS = 1 << 62
    try:
        return run()
    finally:
        topk.PRUNE_MIN_SLOTS = saved


def measure(table: EmbeddingTable, batch: int, users: int, rounds: int,
            seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    batches = [[ScoreRequest(request_id=f"r{b}-{k}", user_id=f"u{u}", k=20)
                for k, u in enumerate(rng.integers(0, users, batch))]
               for b in range(rounds + 3)]
    for requests in batches[:3]:  # warm-up: allocator, kernels, caches
        rank(table, requests)
    t0 = time.perf_counter()
    for requests in batches[3:]:
        answers = rank(table, requests)  # ends in .tolist(): the device work is done
        assert all(len(a.items) == 20 for a in answers)
    secs = time.perf_counter() - t0
    n = batch * rounds
    return {"items": table.n_items, "batch": batch, "requests_per_s": n / secs,
            "ms_per_request": 1000 * secs / n, "ms_per_batch": 1000 * secs / rounds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--items", type=int, nargs="+", default=[100_000], help="catalogue sizes")
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 256], help="requests per batch")
    ap.add_argument("--users", type=int, default=10_000, help="distinct users")
    ap.add_argument("--dim", type=int, default=64, help="embedding dim")
    ap.add_argument("--rounds", type=int, default=30, help="timed batches per setting")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--bias", choices=BIASES, default="gaussian",
                    help="item biases and vector scale (see filled_table)")
    ap.add_argument("--out", type=Path, default=None, help="write JSON results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device} threads={args.threads} dim={args.dim} users={args.users} "
          f"bias={args.bias}")
    print(f"{'items':>9s} {'batch':>6s} {'req/s':>10s} {'ms/req':>8s} {'ms/batch':>9s} "
          f"{'exhaustive ms/req':>18s} {'speedup':>8s}")
    results = []
    for items in args.items:
        table = filled_table(device, items, args.users, args.dim, seed=items, bias=args.bias)
        for batch in args.batch:
            ref = exhaustive(lambda: measure(table, batch, args.users, args.rounds, seed=batch))
            r = measure(table, batch, args.users, args.rounds, seed=batch)
            speedup = ref["ms_per_request"] / r["ms_per_request"]
            results.append({"device": str(device), "threads": args.threads, "bias": args.bias,
                            **r, "exhaustive_ms_per_request": ref["ms_per_request"],
                            "speedup": speedup})
            print(f"{items:9d} {batch:6d} {r['requests_per_s']:10,.0f} "
                  f"{r['ms_per_request']:8.3f} {r['ms_per_batch']:9.2f} "
                  f"{ref['ms_per_request']:18.3f} {speedup:7.2f}x")
    if args.out:  # the command too: a table names the flags it came from
        command = "python -m bench.scorer_compute " + " ".join(sys.argv[1:] if argv is None
                                                               else argv)
        args.out.write_text(json.dumps({"benchmark": "scorer_compute", "machine": machine(),
                                        "command": command, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
