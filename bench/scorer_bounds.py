"""What the scorer's pruned top-K costs to keep: blocks a request needs, bound updates, rebuilds.

On the Zipf table of `bench.scorer_compute` (the trainer's bias over a
Zipf(1) catalogue), one CPU thread, for each catalogue size:

- blocks needed: per user (served vectors, rebuilt from the 20 most recent of the
  50 items each row lists, the serving mix's `recent_items`, as in production),
  how many blocks of 1,024 items in bias order have a bound
  above the user's true K-th score (computed by the full product); the scan
  reads those and stops. Percentiles 5 / 50 / 95 over `--users` users.
- raise: `BoundIndex.raise_bounds` for `--writes` random rows, what every
  flushed write of item rows pays (seconds; best and worst of five).
- rebuild: a new `BoundIndex` (the sort by bias and the block bounds), what
  the first request after a quarter of the slots were written pays
  (seconds; best and worst of three).

Reference, measured in the same run: one request's full product (its vector
against every item, plus the bias, then the top K; best of five), what each
request would cost without the pruning. The upkeep is reported as that many
full products (`*_in_full_products`), and the blocks needed as a share of all.

    python -m bench.scorer_bounds --out bench/results/scorer_bounds.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import machine, write_json
from bench.scorer_compute import filled_table
from stream_app.events import ScoreRequest
from stream_app.serving.bounds import BoundIndex
from stream_app.serving.topk import user_vectors


def timed(run: Callable[[], object], times: int) -> list[float]:
    out = []
    for _ in range(times):
        t0 = time.perf_counter()
        run()
        out.append(time.perf_counter() - t0)
    return sorted(out)


def measure(items: int, users: int, writes: int, k: int) -> dict[str, Any]:
    table = filled_table(torch.device("cpu"), items, users, 64, seed=0, bias="zipf")
    matrix, bias = table.items()
    rebuild = timed(lambda: BoundIndex(matrix, bias), 3)
    index = BoundIndex(matrix, bias)
    requests = [ScoreRequest(request_id=f"r{u}", user_id=f"u{u}", k=k) for u in range(users)]
    vectors = user_vectors(table, requests, 1)[0]
    kth = (vectors @ matrix.T + bias).topk(k, dim=1).values[:, -1]
    needed = BoundIndex._needed(index._best(vectors), kth).numpy()  # noqa: SLF001
    slots = torch.randperm(len(bias), generator=torch.Generator().manual_seed(0))[:writes]
    raise_s = timed(lambda: index.raise_bounds(slots, matrix[slots], bias[slots]), 5)
    one = vectors[:1]
    full = timed(lambda: (one @ matrix.T + bias).topk(k, dim=1), 5)[0]
    blocks = len(index.max_bias)
    needed_pct = np.percentile(needed, [5, 50, 95])
    return {"items": items, "blocks": blocks,
            "blocks_needed_p5_p50_p95": needed_pct.tolist(),
            "blocks_needed_share_p5_p50_p95": (needed_pct / blocks).round(4).tolist(),
            "raise_s_best_worst": [raise_s[0], raise_s[-1]], "writes": writes,
            "rebuild_s_best_worst": [rebuild[0], rebuild[-1]],
            "full_product_s": full,
            "raise_in_full_products_best_worst": [raise_s[0] / full, raise_s[-1] / full],
            "rebuild_in_full_products_best_worst": [rebuild[0] / full, rebuild[-1] / full]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--users", type=int, default=200, help="users whose blocks are counted")
    ap.add_argument("--writes", type=int, default=20_000, help="rows per raise_bounds")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None, help="write JSON results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for items in args.items:
        r = measure(items, args.users, args.writes, args.k)
        results.append(r)
        print(r, flush=True)
    write_json(args.out, {"machine": machine(), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
