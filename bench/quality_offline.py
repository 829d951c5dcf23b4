"""Offline quality of the learning core on MovieLens, against popularity baselines.

Protocol (no Kafka): ratings sorted by time (stable); rating >= 4 is a
purchase, else a click; event time = timestamp * 1000. The first 80% is the
train part, streamed once through the learner in micro-batches, evaluate then
learn (prequential metrics are reported too). The last 20% is the test part.
For every user with events in both parts each method ranks all items,
excluding the items the user touched in train, and we take the top K=20:

- Recall@K = |top-K ∩ test items| / min(K, |test items|)   (min-normalised;
  `recall_full` divides by |test items| instead, also reported)
- HitRate@K = share of users with at least one test item in their top-K
- NDCG@K with binary gains, ideal DCG over min(K, |test items|) positions.

The learner runs once per seed (`--seeds`, default 0 1 2) and its figures are
their mean: seeds alone move its Recall@20 by ±0.003. The same `topk_metrics`
code scores every method. Baselines: all-time popularity and time-decayed
popularity (half-life tuned on a grid, at the train end time).

With `movies.dat` beside the ratings, a second learner runs on events that
carry each film's release time (`item_released_at`), against decayed
popularity given the same release prior (see `with_release_times`).

    python -m bench.quality_offline --out /tmp/q.json
    python -m bench.quality_offline --limit 100000 -X dim=32   # quick
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import machine
from stream_app.core import Learner, LearnerConfig
from stream_app.events import Event, EventKind
from stream_app.sources.movielens import movies_beside, read_movies, release_times

DATA = Path("/work/shared/data/movielens-1m/ratings.dat.gz")
DAY_MS = 86_400_000
DECAY_GRID_DAYS = (1, 2, 3, 5, 7, 14, 30, 90)
"""Half-lives tried for the time-decayed popularity baseline; the best on the test part counts."""
PURCHASE_WEIGHTS = (1.0, 2.0, 4.0)
"""What a purchase (rating >= 4) counts for in that baseline, a click counting 1: the learner
weighs purchases 4x (`purchase_weight`), so the baseline may too; the best counts."""
ORACLE_BLEND_WEIGHTS = (0.5, 1.0, 2.0, 4.0)
"""Weights of test-part popularity added to the learner's scores for the headroom reference.

That blend knows which items the test users will pick in bulk, which no
causal method does; what it reaches bounds what better recency modelling
could add to the learner.
"""


RELEASE_WINDOW_DAYS = (90, 180, 365, 730)
"""Release windows tried, like RELEASE_WEIGHTS."""
NO_RELEASE = np.iinfo(np.int64).min
"""`released` entry of a film without a year in its title."""
RELEASE_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)
"""Release boosts tried: for popularity + release (best on the test part) and on the nested
split (the train part's own 80/20), which is how the learner's default was chosen."""


def load(path: Path, limit: int | None) -> dict[str, np.ndarray]:
    """Ratings sorted by time (stable): user, item, rating, ts_ms arrays."""
    with gzip.open(path, "rt", encoding="latin-1") as f:
        rows = [line.split("::") for line in f if line.strip()]
    arr = np.array(rows, dtype=np.int64)
    order = np.argsort(arr[:, 3], kind="stable")
    arr = arr[order]
    if limit:
        arr = arr[:limit]
    out = {"user": arr[:, 0], "item": arr[:, 1], "rating": arr[:, 2], "ts": arr[:, 3] * 1000,
           "eid": order[: len(arr)]}
    movies = movies_beside(path)
    if movies is not None:  # each film's release time (Jan 1 of its year; before 1970 < 0)
        released = release_times(read_movies(movies))
        out["released"] = np.array([released.get(str(i), NO_RELEASE)
                                    for i in out["item"].tolist()], dtype=np.int64)
    return out


def to_events(d: dict[str, np.ndarray], lo: int, hi: int, *,
              with_release: bool = False) -> list[Event]:
    """Events of rows lo..hi; `with_release`: items carry `item_released_at`."""
    rel = d.get("released") if with_release else None
    return [Event(event_id=str(int(d["eid"][k])), user_id=str(int(d["user"][k])),
                  item_id=str(int(d["item"][k])), ts=int(d["ts"][k]),
                  kind=EventKind.PURCHASE if d["rating"][k] >= 4 else EventKind.CLICK,
                  item_released_at=int(rel[k]) if rel is not None and rel[k] != NO_RELEASE
                  else None)
            for k in range(lo, hi)]


def topk_metrics(scores: np.ndarray, item_ids: list[str], users: list[str],
                 seen: dict[str, set[str]], test: dict[str, set[str]], k: int) -> dict[str, float]:
    """Recall/HitRate/NDCG@k of a (n_users, n_items) score matrix; the one scorer of all methods."""
    col = {i: c for c, i in enumerate(item_ids)}
    scores = scores.astype(np.float64).copy()
    rec, rec_full, hit, ndcg = [], [], [], []
    discount = 1.0 / np.log2(np.arange(k) + 2)
    for r, u in enumerate(users):
        excl = [col[i] for i in seen[u] if i in col]
        scores[r, excl] = -np.inf
        top = np.argpartition(-scores[r], k)[:k]
        top = top[np.argsort(-scores[r, top], kind="stable")]
        gains = np.array([1.0 if item_ids[c] in test[u] else 0.0 for c in top])
        n_rel = len(test[u])
        hits = gains.sum()
        rec.append(hits / min(k, n_rel))
        rec_full.append(hits / n_rel)
        hit.append(float(hits > 0))
        ndcg.append(float((gains * discount).sum() / discount[: min(k, n_rel)].sum()))
    return {"recall": float(np.mean(rec)), "recall_full": float(np.mean(rec_full)),
            "hit_rate": float(np.mean(hit)), "ndcg": float(np.mean(ndcg)), "users": len(users),
            "per_user_recall": rec}


def mean_over_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """`topk_metrics` of several seeds of one method averaged, with each seed's Recall kept.

    Seeds move the learner's Recall@20 by about ±0.003 here, a tenth of the gap
    the target asks about, so one seed is not a result. Per-user recall is
    averaged per user, which is what the bootstrap then resamples.
    """
    out: dict[str, Any] = {k: float(np.mean([r[k] for r in runs]))
                           for k in ("recall", "recall_full", "hit_rate", "ndcg")}
    out["users"] = runs[0]["users"]
    out["per_user_recall"] = np.mean([r["per_user_recall"] for r in runs], axis=0).tolist()
    out["recall_per_seed"] = [r["recall"] for r in runs]
    return out


def ratio_interval(num: list[float], den: list[float], draws: int = 2000,
                   seed: int = 0) -> tuple[float, float]:
    """95% paired bootstrap interval (users resampled) of mean(num) / mean(den).

    With a few hundred test users a Recall@K ratio moves by several percent
    between resamples; the interval says how much of a gap is noise.
    """
    a, b = np.asarray(num), np.asarray(den)
    idx = np.random.default_rng(seed).integers(0, len(a), size=(draws, len(a)))
    ratios = a[idx].mean(axis=1) / b[idx].mean(axis=1)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return float(lo), float(hi)


def popularity_scores(d: dict[str, np.ndarray], n_train: int, item_ids: list[str],
                      half_life_ms: float | None, purchase_weight: float = 1.0) -> np.ndarray:
    """Each item's (time-decayed) count of train events; a purchase counts `purchase_weight`."""
    col = {i: c for c, i in enumerate(item_ids)}
    cols = np.array([col[str(int(i))] for i in d["item"][:n_train]])
    w = np.where(d["rating"][:n_train] >= 4, purchase_weight, 1.0)
    if half_life_ms is not None:
        w = w * np.exp2((d["ts"][:n_train] - d["ts"][n_train - 1]) / half_life_ms)
    return np.bincount(cols, weights=w, minlength=len(item_ids)).astype(np.float64)


def future_popularity(d: dict[str, np.ndarray], n_train: int, item_ids: list[str]) -> np.ndarray:
    """Popularity over the *test* part: a ceiling for non-personal ranking, never a baseline.

    It shows how much of the metric popularity alone can explain when it
    knows the future; a method above it is personalising.
    """
    col = {i: c for c, i in enumerate(item_ids)}
    cols = [col[str(int(i))] for i in d["item"][n_train:] if str(int(i)) in col]
    return np.bincount(cols, minlength=len(item_ids)).astype(np.float64)


def run_learner(config: LearnerConfig, events: list[Event], batch: int,
                device: str) -> tuple[Learner, dict[str, float], float]:
    learner = Learner(config, device=device)
    sums = {"hit_rate": 0.0, "recall": 0.0, "mrr": 0.0, "pop_hit_rate": 0.0, "pop_recall": 0.0}
    n = 0
    t0 = time.perf_counter()
    for s in range(0, len(events), batch):
        b = events[s:s + batch]
        ev = learner.evaluate(b)
        learner.learn(b)
        w = len(b)
        sums["hit_rate"] += ev.model.hit_rate * w
        sums["recall"] += ev.model.recall * w
        sums["mrr"] += ev.model.mrr * w
        sums["pop_hit_rate"] += ev.popularity.hit_rate * w
        sums["pop_recall"] += ev.popularity.recall * w
        n += w
    return learner, {k: v / n for k, v in sums.items()}, time.perf_counter() - t0


def split(d: dict[str, np.ndarray], n_train: int
          ) -> tuple[list[str], list[str], dict[str, set[str]], dict[str, set[str]]]:
    """Test users, train items, each user's train items and test items (users in both parts)."""
    train_items = d["item"][:n_train].astype(str)
    seen: dict[str, set[str]] = {}
    for u, i in zip(d["user"][:n_train].astype(str).tolist(), train_items.tolist(), strict=True):
        seen.setdefault(u, set()).add(i)
    test: dict[str, set[str]] = {}
    for u, i in zip(d["user"][n_train:].astype(str).tolist(),
                    d["item"][n_train:].astype(str).tolist(), strict=True):
        if u in seen:
            test.setdefault(u, set()).add(i)
    return sorted(test), sorted(set(train_items.tolist())), seen, test


def learner_scores(config: LearnerConfig, d: dict[str, np.ndarray], n_train: int,
                   users: list[str], item_ids: list[str], batch: int, device: str, *,
                   with_release: bool = False, serving: tuple[dict[str, Any], ...] = ()
                   ) -> tuple[np.ndarray, dict[str, float], float]:
    """The learner streamed over the train part: scores (users, item_ids), prequential, seconds.

    With `serving` (config overrides that only move served scores, such as
    the release prior), the scores are (len(serving), users, items) from one
    training run.
    """
    events = to_events(d, 0, n_train, with_release=with_release)
    learner, preq, secs = run_learner(config, events, batch, device)
    if serving:
        per_variant = []
        for overrides in serving:
            learner.config = dataclasses.replace(config, **overrides)
            per_variant.append(_dense(learner, users, item_ids))
        return np.stack(per_variant), preq, secs
    return _dense(learner, users, item_ids), preq, secs


def _dense(learner: Learner, users: list[str], item_ids: list[str]) -> np.ndarray:
    ids, scores = learner.score_all(users)
    full = np.full((len(users), len(item_ids)), -np.inf)
    col = {i: c for c, i in enumerate(item_ids)}
    keep = [(c, col[i]) for c, i in enumerate(ids) if i in col]
    full[:, [k for _, k in keep]] = scores[:, [c for c, _ in keep]]
    return full


def popularity_with_release(d: dict[str, np.ndarray], n_train: int, item_ids: list[str],
                            days: int, users: list[str], seen: dict[str, set[str]],
                            test: dict[str, set[str]], k: int) -> tuple[str, dict[str, Any]]:
    """log decayed popularity + a * [released within w before the cut-off] (the learner's
    rule), the best window w and weight a on the test part."""
    release_of = dict(zip(d["item"].astype(str).tolist(), d["released"].tolist(), strict=True))
    age = np.array([int(d["ts"][n_train - 1]) - release_of[i] if release_of[i] != NO_RELEASE
                    else -1 for i in item_ids], dtype=np.float64)
    log_pop = np.log(popularity_scores(d, n_train, item_ids, days * DAY_MS) + 1e-300)
    return max(((f"decayed_pop(hl={days}d)+{a}*release({w}d)", topk_metrics(
        np.tile(log_pop + a * ((age >= 0) & (age < w * DAY_MS)), (len(users), 1)),
        item_ids, users, seen, test, k))
        for w in RELEASE_WINDOW_DAYS for a in RELEASE_WEIGHTS if a > 0),
        key=lambda nm: nm[1]["recall"])


def with_release_times(d: dict[str, np.ndarray], n_train: int, users: list[str],
                       item_ids: list[str], seen: dict[str, set[str]],
                       test: dict[str, set[str]], config: LearnerConfig,
                       args: argparse.Namespace) -> dict[str, Any] | None:
    """The learner on events that carry `item_released_at`, against popularity given the same.

    The baseline, decayed popularity + a * [released within a window], gets
    its best half-life, window and weight on the test part. The learner's
    `release_boost` and `release_window_ms` defaults were chosen on the
    nested split (the train part's own 80/20); that choice is re-made here
    with learners of the same `--seeds` (each setting's recall their mean), so the
    release prior's setting does not read the test part. (The learner's other defaults were
    tuned on this split's test part over many runs, as the baselines' grids
    are: BENCHMARKS.md says so.) The learner's figures are the mean over `--seeds`.
    None without release times (no `movies.dat` beside the ratings).
    """
    if "released" not in d:
        return None
    baseline = max((popularity_with_release(d, n_train, item_ids, days, users, seen, test,
                                            args.k) for days in DECAY_GRID_DAYS),
                   key=lambda nm: nm[1]["recall"])
    inner = {k: v[:n_train] for k, v in d.items()}
    n_inner = int(n_train * 0.8)
    i_users, i_items, i_seen, i_test = split(inner, n_inner)
    grid = tuple({"release_window_ms": w * DAY_MS, "release_boost": a}
                 for w in RELEASE_WINDOW_DAYS for a in RELEASE_WEIGHTS)
    # Each setting's nested recall is the mean over `--seeds`, as the test figure is: with
    # one seed the pick flipped between windows whose recalls differ by about two seeds'
    # noise (365 against 730 days at 1,000- and 2,000-event steps, 2026-12-06).
    recalls = np.zeros(len(grid))
    for seed in args.seeds:
        per_variant, _, _ = learner_scores(dataclasses.replace(config, seed=seed), inner,
                                           n_inner, i_users, i_items, args.batch, args.device,
                                           with_release=True, serving=grid)
        recalls += [topk_metrics(s, i_items, i_users, i_seen, i_test, args.k)["recall"]
                    for s in per_variant]
    nested = [{"window_days": g["release_window_ms"] // DAY_MS, "boost": g["release_boost"],
               "recall": float(r / len(args.seeds))}
              for g, r in zip(grid, recalls, strict=True)]
    choice = max(nested, key=lambda v: v["recall"])
    # The test part's learner serves with the nested split's choice (the defaults were
    # chosen that way; a changed default must not be measured unchosen).
    chosen = dataclasses.replace(config, release_window_ms=choice["window_days"] * DAY_MS,
                                 release_boost=choice["boost"])
    learner = mean_over_seeds([topk_metrics(learner_scores(
        dataclasses.replace(chosen, seed=seed), d, n_train, users, item_ids, args.batch,
        args.device, with_release=True)[0], item_ids, users, seen, test, args.k)
        for seed in args.seeds])
    return {"baseline": baseline, "learner": learner, "nested_grid": nested,
            "nested_choice": choice}


def other_baselines(d: dict[str, np.ndarray], n_train: int, users: list[str],
                    item_ids: list[str], seen: dict[str, set[str]], test: dict[str, set[str]],
                    k: int) -> list[tuple[str, dict[str, float]]]:
    """ALS and River's streaming MF (each the best of a small grid), same split and metrics."""
    from bench.baselines import als_scores, river_scores

    tu = [str(u) for u in d["user"][:n_train].tolist()]
    ti = [str(i) for i in d["item"][:n_train].tolist()]
    w = np.where(d["rating"][:n_train] >= 4, 4.0, 1.0)
    best: tuple[str, dict[str, float]] | None = None
    for factors, reg, alpha in ((64, 0.05, 1.0), (64, 0.1, 10.0), (128, 0.1, 5.0)):
        s = als_scores(users, item_ids, tu, ti, w, factors=factors, regularization=reg,
                       alpha=alpha)
        met = topk_metrics(s, item_ids, users, seen, test, k)
        if best is None or met["recall"] > best[1]["recall"]:
            best = (f"als(f={factors},reg={reg},alpha={alpha})", met)
    assert best is not None
    river = max(((f"river_{model}_mf(lr={lr}, 1 pass)", topk_metrics(
        river_scores(users, item_ids, tu, ti, model=model, lr=lr), item_ids, users, seen, test,
        k)) for model in ("funk", "biased") for lr in (0.01, 0.05)),
        key=lambda nm: nm[1]["recall"])
    return [best, river]


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in pairs:
        key, _, raw = p.partition("=")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help="ratings.dat.gz path")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N events (quick)")
    ap.add_argument("--batch", type=int, default=1000, help="micro-batch size of the stream")
    ap.add_argument("--k", type=int, default=20, help="cut-off K")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--baselines", action="store_true",
                    help="also ALS (implicit) and River FunkMF (needs the bench extra)")
    ap.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    ap.add_argument("-X", action="append", default=[], metavar="KEY=VALUE",
                    help="LearnerConfig override (JSON value), e.g. -X dim=32")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="learner seeds; its figures are the mean over them (default 0 1 2)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    d = load(args.data, args.limit)
    n = len(d["ts"])
    n_train = int(n * 0.8)
    users, item_ids, seen, test = split(d, n_train)
    results: dict[str, Any] = {"benchmark": "quality_offline", "machine": machine(),
                               "params": {"limit": args.limit, "batch": args.batch, "k": args.k,
                                          "device": args.device, "seeds": args.seeds,
                                          "baselines": args.baselines, "overrides": args.X},
                               "events": n, "train_events": n_train, "test_users": len(users)}
    table = []
    pop = popularity_scores(d, n_train, item_ids, None)
    table.append(("popularity", topk_metrics(np.tile(pop, (len(users), 1)), item_ids, users,
                                             seen, test, args.k)))
    best_decayed = None
    for days, pw in itertools.product(DECAY_GRID_DAYS, PURCHASE_WEIGHTS):
        s = popularity_scores(d, n_train, item_ids, days * DAY_MS, pw)
        met = topk_metrics(np.tile(s, (len(users), 1)), item_ids, users, seen, test, args.k)
        if best_decayed is None or met["recall"] > best_decayed[1]["recall"]:
            name = f"decayed_pop(hl={days}d{f',purchase={pw:g}' if pw != 1 else ''})"
            best_decayed = (name, met)
    assert best_decayed is not None
    table.append(best_decayed)
    if args.baselines:
        table += other_baselines(d, n_train, users, item_ids, seen, test, args.k)
    config = LearnerConfig(**parse_overrides(args.X))
    runs = [learner_scores(dataclasses.replace(config, seed=seed), d, n_train, users, item_ids,
                           args.batch, args.device) for seed in args.seeds]
    full, preq, secs = runs[0]
    table.append(("learner", mean_over_seeds(
        [topk_metrics(scores, item_ids, users, seen, test, args.k) for scores, _, _ in runs])))
    best_name, best_met = max(table[:-1], key=lambda nm: nm[1]["recall"])
    best_base = best_met["recall"]
    interval = ratio_interval(table[-1][1]["per_user_recall"], best_met["per_user_recall"])
    print(f"events={n} train={n_train} test_users={len(users)} K={args.k} "
          f"learn_seconds={secs:.1f} ({n_train / secs:.0f} ev/s incl. evaluate)")
    print(f"{'method':24s} {'Recall@K':>9s} {'RecallFull':>10s} {'HitRate':>8s} {'NDCG':>8s}")
    for name, met in table:
        print(f"{name:24s} {met['recall']:9.4f} {met['recall_full']:10.4f} "
              f"{met['hit_rate']:8.4f} {met['ndcg']:8.4f}")
    ratio = table[-1][1]["recall"] / best_base
    print("learner Recall@K per seed " + ", ".join(
        f"{seed}: {r:.4f}" for seed, r in zip(args.seeds, table[-1][1]["recall_per_seed"],
                                              strict=True)))
    print(f"learner (mean of {len(args.seeds)} seeds) / best baseline {best_name} "
          f"(Recall@K) = {ratio:.3f} "
          f"(95% bootstrap over users {interval[0]:.3f}-{interval[1]:.3f})")
    future = future_popularity(d, n_train, item_ids)
    oracle = topk_metrics(np.tile(future, (len(users), 1)),
                          item_ids, users, seen, test, args.k)
    print(f"headroom reference, not a baseline (it reads the test part): popularity over "
          f"the test part Recall@K = {oracle['recall']:.4f}")
    oracle_blend = max(
        (topk_metrics(full + a * np.log1p(future), item_ids,
                      users, seen, test, args.k) for a in ORACLE_BLEND_WEIGHTS),
        key=lambda met: met["recall"])
    print(f"headroom reference: learner scores (seed {args.seeds[0]}) + a*log(1 + test-part "
          f"popularity), best a, "
          f"Recall@K = {oracle_blend['recall']:.4f}")
    release = with_release_times(d, n_train, users, item_ids, seen, test, config, args)
    if release is not None:
        base_name, base_met = max([(best_name, best_met), release["baseline"]],
                                  key=lambda nm: nm[1]["recall"])
        rel_interval = ratio_interval(release["learner"]["per_user_recall"],
                                      base_met["per_user_recall"])
        release.update(ratio=release["learner"]["recall"] / base_met["recall"],
                       ratio_interval95=rel_interval, best_baseline=base_name)
        pick = release["nested_choice"]
        print(f"with release times (served with the nested split's pick: release_boost "
              f"{pick['boost']}, window {pick['window_days']}d; defaults "
              f"{config.release_boost}, {config.release_window_ms // DAY_MS}d): "
              f"{release['baseline'][0]} "
              f"{release['baseline'][1]['recall']:.4f}, learner (mean of seeds) "
              f"{release['learner']['recall']:.4f}, ratio to {base_name} "
              f"{release['ratio']:.3f} (95% {rel_interval[0]:.3f}-{rel_interval[1]:.3f})")
        release["baseline"] = {"name": release["baseline"][0], **release["baseline"][1]}
        for met in (release["learner"], release["baseline"]):
            met.pop("per_user_recall")
    print(f"prequential (train stream, seed {args.seeds[0]}): "
          + " ".join(f"{k}={v:.4f}" for k, v in preq.items()))
    for _, met in [*table, ("oracle", oracle), ("oracle_blend", oracle_blend)]:
        met.pop("per_user_recall")
    results.update({"methods": {name: met for name, met in table}, "ratio": ratio,
                    "ratio_interval95": interval, "oracle_test_popularity": oracle,
                    "oracle_learner_plus_test_popularity": oracle_blend,
                    "with_release_times": release,
                    "prequential": preq, "config": dataclasses.asdict(config),
                    "seeds": args.seeds, "learn_seconds": secs})
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
