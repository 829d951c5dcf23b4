"""Events per second of `Learner.learn` on in-memory batches, by batch size and dim.

No Kafka: batches are pre-built `Event` lists (a Zipf-like stream over
`--users` x `--items`), so this measures the core alone (screening, vocab,
gradient step, commit). The reference, measured in the same run on the same batches
and device (each batch timed for both, in turn), is `BareStep`: the same kind of
step in plain torch, without the learner's features. Works on CPU and CUDA:

    python -m bench.core_throughput --batch 1024 4096 --dim 32 64
    python -m bench.core_throughput --device cuda --batch 4096 16384 65536 --dim 64 128
    python -m bench.core_throughput -X replay_ratio=0 -X negatives=sampled   # cheapest step
    python -m bench.core_throughput --device cuda --batch 16384 --profile prof.txt

`--profile` adds one untimed torch.profiler run per setting (host and device
time per operator), to see whether the host's Python or the device is the limit.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from bench.common import machine
from bench.quality_offline import parse_overrides
from stream_app.core import Learner, LearnerConfig
from stream_app.events import Event, EventKind
from stream_app.heap import freeze_survivors


def make_batches(n_batches: int, batch: int, users: int, items: int,
                 seed: int) -> list[list[Event]]:
    rng = np.random.default_rng(seed)
    out = []
    ts = 1_700_000_000_000
    for b in range(n_batches):
        u = rng.zipf(1.3, batch) % users
        i = rng.zipf(1.2, batch) % items
        kinds = rng.random(batch) < 0.2
        out.append([Event(event_id=f"{b}-{k}", user_id=str(u[k]), item_id=str(i[k]),
                          ts=ts + b * 1000 + k // 64,
                          kind=EventKind.PURCHASE if kinds[k] else EventKind.CLICK)
                    for k in range(batch)])
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def learner_config(dim: int, args: argparse.Namespace) -> LearnerConfig:
    return LearnerConfig(**{"num_sampled_negatives": args.negatives, **parse_overrides(args.X),
                            "dim": dim})


def warm_learner(batch: int, dim: int,
                 args: argparse.Namespace) -> tuple[Learner, list[list[Event]]]:
    """A learner that has seen `--warmup` batches, and the batches still to time."""
    learner = Learner(learner_config(dim, args), device=torch.device(args.device))
    batches = make_batches(args.warmup + args.batches, batch, args.users, args.items, seed=dim)
    for b in batches[: args.warmup]:
        learner.learn(b)
    sync(learner.device)
    return learner, batches[args.warmup:]


def measure(batch: int, dim: int, args: argparse.Namespace) -> dict[str, float]:
    """The learner's rate and the bare step's, timed batch by batch in turn, so that both
    see the same machine: on this shared 2-core host, back-to-back runs of the same
    command moved the learner's rate by half."""
    learner, batches = warm_learner(batch, dim, args)
    bare = BareStep(batch, dim, args)
    freeze_survivors()  # as the trainer at start-up: without, collections that the bare
    device = learner.device  # step's allocations set off walked the learner (commit 3 -> 12 ms)
    phases: dict[str, float] = {}
    secs = bare_secs = 0.0
    for b in batches:
        t0 = time.perf_counter()
        st = learner.learn(b)
        sync(device)
        secs += time.perf_counter() - t0
        bare_secs += bare.timed(b)
        for k, v in st.timings.items():
            phases[k] = phases.get(k, 0.0) + v
    gc.unfreeze()
    n = batch * args.batches
    return {"batch": batch, "dim": dim, "events_per_s": n / secs,
            "ms_per_batch": 1000 * secs / args.batches,
            **{f"ms_{k}": 1000 * v / args.batches for k, v in phases.items()},
            "bare_step_events_per_s": n / bare_secs, "ratio_vs_bare_step": bare_secs / secs}


class BareStep:
    """The same kind of step written the way plain torch offers it
    (`nn.Embedding(sparse=True)` and `torch.optim.Adagrad`), on the same batches and
    device: the reference the learner is reported against.

    User and item tables of `--users` x `--items` rows (no vocabulary: ids are already
    row numbers), torch's sparse Adagrad (an accumulator per element, where the
    learner's is per row), and each event's softmax over its positive and the learner's
    candidates (up to `max_in_batch_negatives` of the batch's items and
    `num_sampled_negatives` drawn, here uniformly, as its `negatives` mode says;
    de-duplicated, as the learner's),
    and nothing else: no purchase weights, popularity correction or bias, history mix,
    replay, screening, dedup or rate cap, commit of row state. What the learner costs
    beyond it is what those features cost.
    """

    def __init__(self, batch: int, dim: int, args: argparse.Namespace) -> None:
        self.device = torch.device(args.device)
        torch.manual_seed(dim)
        self.users = torch.nn.Embedding(args.users, dim, sparse=True, device=self.device)
        self.items = torch.nn.Embedding(args.items, dim, sparse=True, device=self.device)
        self.opt = torch.optim.Adagrad([self.users.weight, self.items.weight], lr=0.05)
        warnings.filterwarnings("ignore", message="Sparse invariant checks")  # Adagrad's
        cfg = learner_config(dim, args)
        if cfg.optimizer != "adagrad":
            raise SystemExit(f"bench.core_throughput: the bare step is Adagrad; with "
                             f"optimizer={cfg.optimizer} the ratio would compare two steps")
        self.in_batch = 0 if cfg.negatives == "sampled" else min(batch, cfg.max_in_batch_negatives)
        self.negatives = 0 if cfg.negatives == "in_batch" else cfg.num_sampled_negatives
        self.n_items = args.items
        self.target = torch.zeros(batch, dtype=torch.int64, device=self.device)  # positive
        for b in make_batches(args.warmup, batch, args.users, args.items, seed=dim + 1):
            self.timed(b)

    def timed(self, events: list[Event]) -> float:
        """Seconds of one step on `events` (their ids are row numbers)."""
        u = torch.tensor([int(e.user_id) for e in events], device=self.device)
        i = torch.tensor([int(e.item_id) for e in events], device=self.device)
        sync(self.device)
        t0 = time.perf_counter()
        negatives = torch.randint(self.n_items, (self.negatives,), device=self.device)
        x = self.users(u)
        positive = (x * self.items(i)).sum(1, keepdim=True)
        candidates = self.items(torch.unique(torch.cat([i[: self.in_batch], negatives])))
        logits = torch.cat([positive, x @ candidates.T], 1)
        loss = torch.nn.functional.cross_entropy(logits, self.target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.opt.step()
        sync(self.device)
        return time.perf_counter() - t0


def profile(batch: int, dim: int, args: argparse.Namespace) -> str:
    """Operator table of the timed batches, by host time and by device time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    learner, batches = warm_learner(batch, dim, args)
    activities = [ProfilerActivity.CPU]
    if learner.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with torch_profile(activities=activities) as prof:
        for b in batches:
            learner.learn(b)
        sync(learner.device)
    table = prof.key_averages()
    text = [f"batch={batch} dim={dim} device={learner.device} batches={len(batches)}",
            table.table(sort_by="self_cpu_time_total", row_limit=25)]
    if learner.device.type == "cuda":
        text.append(table.table(sort_by="self_device_time_total", row_limit=15))
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--batch", type=int, nargs="+", default=[1024, 4096], help="batch sizes")
    ap.add_argument("--dim", type=int, nargs="+", default=[64], help="embedding dims")
    ap.add_argument("--batches", type=int, default=20, help="timed batches per setting")
    ap.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    ap.add_argument("--users", type=int, default=100_000, help="distinct users")
    ap.add_argument("--items", type=int, default=50_000, help="distinct items")
    ap.add_argument("--negatives", type=int, default=256, help="sampled negatives per batch")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", type=Path, default=None, help="write JSON results here")
    ap.add_argument("--profile", type=Path, default=None,
                    help="append a torch.profiler table per setting to this file")
    ap.add_argument("-X", action="append", default=[], metavar="KEY=VALUE",
                    help="LearnerConfig override (JSON value), e.g. -X replay_ratio=0")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    print(f"device={args.device} users={args.users} items={args.items} overrides={args.X}")
    print(f"{'batch':>7s} {'dim':>4s} {'events/s':>12s} {'ms/batch':>9s}  phases (ms)")
    for dim in args.dim:
        for batch in args.batch:
            r = measure(batch, dim, args)
            results.append(r)
            ph = " ".join(f"{k[3:]}={v:.1f}" for k, v in r.items()
                          if k.startswith("ms_") and k != "ms_per_batch")
            print(f"{batch:7d} {dim:4d} {r['events_per_s']:12,.0f} {r['ms_per_batch']:9.1f}  {ph}"
                  f"  bare step {r['bare_step_events_per_s']:,.0f}/s "
                  f"({r['ratio_vs_bare_step']:.3f}x)")
            if args.profile:
                with args.profile.open("a") as f:
                    f.write(profile(batch, dim, args) + "\n\n")
    if args.out:
        params = {"device": args.device, "threads": args.threads, "users": args.users,
                  "items": args.items, "negatives": args.negatives, "batches": args.batches,
                  "warmup": args.warmup, "overrides": args.X}
        args.out.write_text(json.dumps({"benchmark": "core_throughput", "machine": machine(),
                                        "params": params, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
