"""Render the results tables of BENCHMARKS.md from the JSON files of a `bench.run`.

Only the block between the two markers is rewritten; the prose around it
(how to reproduce, what limits each number) is kept by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _load(out: Path, name: str) -> dict[str, Any] | list[Any] | None:
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _f(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "–"
    return "∞" if math.isinf(x) else f"{x:,.{digits}f}"


def _machine(out: Path) -> str:
    for name in ("ingest", "freshness", "restore_memory", "quality_kafka"):
        data = _load(out, name)
        if isinstance(data, dict) and "machine" in data:
            return _described(data["machine"])
    return "unknown"


def _described(m: dict[str, Any]) -> str:
    return (f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python "
            f"{m['python']}, torch {m['torch']}, GPU: {m['cuda'] or 'none'}; "
            f"measured {m['date']}")


def _measured_on(out: Path, d: dict[str, Any]) -> list[str]:
    """A line naming the machine of `d` where it is not the one the header names."""
    if "machine" not in d or _described(d["machine"]) == _machine(out):
        return []
    return [f"Machine for this section: {_described(d['machine'])}.", ""]


def _ingest(out: Path) -> list[str]:
    d = _load(out, "ingest")
    if not isinstance(d, dict):
        return []
    raw, ours, params = d["reference_raw_consume"], d["trainer"], d["params"]
    # Files written before step_max existed learned each batch in one step.
    shape = f"{params['batch_max']:,} / {params.get('step_max', params['batch_max']):,}"
    rows = ["### Ingest (trainer end to end vs raw consume + orjson of the same topic)", "",
            "| events | batch / step | raw consume ev/s | trainer ev/s | rows published "
            "| ratio (target ≥ 0.7) |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| {ours['events']:,} | {shape} | {_f(raw['events_per_s'])} | "
            f"{_f(ours['events_per_s'])} | {ours['rows_published']:,} | "
            f"**{d['ratio_trainer_vs_raw']:.3f}** |", ""]
    profiled = d.get("profiled_run")
    if isinstance(profiled, dict):
        rows += [f"Profile: a second trainer read the same events under cProfile (which slows "
                 f"Python code: that run made {_f(profiled['events_per_s'])} events/s), so "
                 f"the shares matter more than the µs:", "",
                 *_profile(out, profiled["events"], "ingest")]
    return rows


PHASES = {  # cumulative time of these functions, per event, from the ingest profile
    "poll (consume)": ("consumer.py", "poll_batch"),
    "decode + validate": ("batch.py", "decode_batch"),
    "prequential evaluate": ("learner.py", "evaluate"),
    "learn (vocab + step)": ("learner.py", "learn"),
    "rows (gather changed rows)": ("learner_state.py", "row_blocks"),
    "encode rows + DLQ": ("batch.py", "output_records"),
    "produce + commit transaction": ("transaction.py", "commit_batch"),
}


def _profile(out: Path, events: int, name: str = "ingest") -> list[str]:
    import pstats

    prof = out / f"{name}.prof"
    if not prof.exists():
        return []
    stats = pstats.Stats(str(prof)).stats  # type: ignore[attr-defined]
    total = next((ct for (f, _, n), (_, _, _, ct, _) in stats.items()
                  if f.endswith("loop.py") and n == "_loop"), None)
    rows = ["| phase (cProfile of that run) | µs/event | share of the loop |",
            "| --- | --- | --- |"]
    for phase, (file, name) in PHASES.items():
        ct = sum(c for (f, _, n), (_, _, _, c, _) in stats.items()
                 if f.endswith(file) and n == name)
        share = f"{ct / total:.0%}" if total else "–"
        rows.append(f"| {phase} | {ct / events * 1e6:,.1f} | {share} |")
    return [*rows, ""]


def _core(out: Path) -> list[str]:
    d = _load(out, "core_throughput")
    if isinstance(d, list):  # written before the file named its machine
        d = {"results": d}
    if not isinstance(d, dict):
        return []
    rows = [f"### Learning core alone (in-memory batches, {_core_setting(d)})", "",
            *_measured_on(out, d),
            "| batch | dim | events/s | ms/batch | of which gradients ms "
            "| bare torch step events/s | ratio to the bare step |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    rows += [f"| {r['batch']} | {r['dim']} | {_f(r['events_per_s'])} | "
             f"{_f(r['ms_per_batch'], 1)} | {_f(r['ms_gradients'], 1)} | "
             f"{_f(r.get('bare_step_events_per_s'))} | **{_f(r.get('ratio_vs_bare_step'), 3)}** |"
             for r in d["results"]]
    return [*rows, "", "The bare step (`bench.core_throughput.BareStep`; same run, batches, "
            "device and candidates): the step as plain torch offers it, "
            "`nn.Embedding(sparse=True)` tables and `torch.optim.Adagrad`, and none of the "
            "learner's features (purchase weights, popularity bias and log-Q correction, "
            "history mix, replay of as many past events, screening, vocabulary, row state). "
            "Each batch is timed for both in turn, after the start-up `gc.freeze()` the "
            "trainer makes, so both see the same machine. What the learner costs beyond it "
            "is what those features cost. Torch's sparse gradients are coalesced and its "
            "Adagrad keeps an accumulator per element, so the bare step slows as batches "
            "grow, where the learner, which gathers the rows a step touches, does not: "
            "that, more than the learner, moves the ratio with the batch.", ""]


def _core_setting(d: dict[str, Any]) -> str:
    """The run's device, threads and overrides; a file written before it kept them came
    from `bench.run`'s command, the defaults (CPU, 1 thread)."""
    p = d.get("params")
    if p is None:
        return "CPU, 1 thread"
    threads = f"{p['threads']} thread{'s' if p['threads'] != 1 else ''}"
    extra = f", {' '.join(p['overrides'])}" if p["overrides"] else ""
    return f"{p['device'].upper()}, {threads}{extra}"


def _codec(out: Path) -> list[str]:
    d = _load(out, "codec_speed")
    if not isinstance(d, dict):
        return []
    e, r = d["events"], d["events_ratio_vs_orjson"]
    return ["### Decode + validate (vs `orjson.loads` of the same payloads)", "",
            *_measured_on(out, d),
            "| path | events/s | slower than orjson by |", "| --- | --- | --- |",
            f"| orjson.loads | {_f(e['orjson_loads'])} | 1× |",
            f"| decode_event (hand check, in use) | {_f(e['decode_event_fast'])} | "
            f"{r['decode_event_fast']:.1f}× |",
            f"| decode_event (schema only) | {_f(e['decode_event_schema'])} | "
            f"{r['decode_event_schema']:.1f}× |", "", *_codec_shapes(d.get("shapes", {}))]


def _codec_shapes(shapes: dict[str, dict[str, float]]) -> list[str]:
    if not shapes:
        return []
    return ["decode_event on the same events reshaped, each against `orjson.loads` of its "
            "own bytes (one run; on these shared machines a ratio moves by up to a third "
            "between runs, so compare shapes within a run):", "",
            "| events | orjson.loads ev/s | decode_event ev/s | slower than orjson by |",
            "| --- | --- | --- | --- |",
            *[f"| {name} | {_f(v['orjson_loads'])} | {_f(v['decode_event_fast'])} | "
              f"{v['ratio_vs_orjson']:.1f}× |" for name, v in shapes.items()], ""]


def _freshness(out: Path) -> list[str]:
    d = _load(out, "freshness")
    if not isinstance(d, dict):
        return []
    rows = ["### Freshness (produce → row readable with read_committed)", "",
            *_measured_on(out, d),
            "| rate ev/s (achieved) | p50 ms | p99 ms | p99 ms, all events (never fresh = ∞) | "
            "reference p50/p99 ms (input topic, read_committed) | not fresh after 60 s |",
            "| --- | --- | --- | --- | --- | --- |"]
    for r in d["results"]:
        f, ref = r["freshness_ms"], r["reference_input_read_committed_ms"]
        rows.append(f"| {r['rate']:,.0f} ({r['achieved_rate']:,.0f}) | {_f(f.get('p50'))} | "
                    f"{_f(f.get('p99'))} | {_f(r['p99_all_ms'])} | "
                    f"{_f(ref.get('p50'))} / {_f(ref.get('p99'))} | "
                    f"{r['not_fresh_after_60s']} |")
    return [*rows, "", "p50 and p99 are over the events that became fresh; the p99 over all "
            "events counts the others as never fresh.", ""]


def _scorer(out: Path) -> list[str]:
    d = _load(out, "scorer_latency")
    if not isinstance(d, dict):
        return []
    cur = d["current"]
    rows = [f"### Scorer ({d['items']:,} items, d={d['dim']}, k={d['k']}, "
            f"{d['threads']} torch thread)", "", *_measured_on(out, d),
            "| req/s | answered in run | e2e p50 ms | e2e p99 ms | e2e p99.9 ms | "
            "e2e p99 ms, all sent (unanswered = ∞) | scorer p50 ms |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in cur["rates"]:
        e = r["e2e_ms"]
        rows.append(f"| {r['rate']:,.0f} | {r['answered_in_run']:,}/{r['sent']:,} | "
                    f"{_f(e['p50'], 1)} | {_f(e['p99'], 1)} | {_f(e['p99.9'], 1)} | "
                    f"{_f(r['p99_all_ms'], 1)} | {_f(r['scorer_ms']['p50'], 1)} |")
    ref = d["reference"]
    rows += ["", "The e2e p50 / p99 / p99.9 are over the requests answered at all; the p99 over "
             "all sent counts the others as never answered.", "",
             f"Max sustained (p99 ≤ {d['target_p99_ms']:.0f} ms, ≥ 99 % answered and the "
             "requests sent at ≥ 98 % of the rate): "
             f"{_f(cur['max_sustained_rps'])} req/s. In-process brute force: "
             f"{ref['brute_ms_per_request_batch1']:.2f} ms/request (batch 1), "
             f"{ref['brute_ms_per_request_batch64']:.2f} ms (batch 64); e2e p50 overhead "
             f"{cur['overhead_ratio_e2e_p50_vs_brute_batch1']}× the batch-1 brute force.", ""]
    return rows


def _restore(out: Path) -> list[str]:
    d = _load(out, "restore_memory")
    if not isinstance(d, dict):
        return []
    r = d["restore"]
    # The trainer's own rows list up to 20 recent items a user: the 20-item run is the
    # heavier shape, so it gets its row and verdicts too (benchmark review).
    full = _load(out, "restore_memory_recent20")
    shapes = [d] + ([full] if isinstance(full, dict)
                    and _described(full["machine"]) == _described(d["machine"]) else [])
    return ["### Restore and memory", "", *_measured_on(out, d),
            "| rows | recent items a user | raw read s | restore s | ratio (target ≤ 2) | "
            "table MiB | RSS growth MiB | ratio (target ≤ 1.5) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *(_restore_row(x) for x in shapes),
            "", *_allocated(r), *_snapshot_restore(d), *_scorer_load(d)]


def _restore_row(d: dict[str, Any]) -> str:
    r, raw = d["restore"], d["reference_raw_read"]
    return (f"| {d['rows']:,} | {d.get('events_per_user', 1)} | {raw['seconds']:.1f} | "
            f"{r['restore_seconds']:.1f} | **{d['ratio_restore_vs_raw_read']:.2f}** | "
            f"{r['table_bytes'] / 2**20:.0f} | {r['rss_growth_bytes'] / 2**20:.0f} | "
            f"**{d['ratio_rss_growth_vs_table_bytes']:.2f}** |")


def _allocated(r: dict[str, Any]) -> list[str]:
    if "allocated_table_bytes" not in r:
        return []
    return [f"Table MiB counts the rows that hold an id; with the tables' spare rows "
            f"(they grow ahead of use) they take {r['allocated_table_bytes'] / 2**20:.0f} MiB.",
            ""]


def _scorer_load(d: dict[str, Any]) -> list[str]:
    if "scorer" not in d:
        return []
    s = d["scorer"]
    return [f"A scorer process loading the same changelog (from its /healthz answering to its "
            f"/readyz answering): {s['load_seconds']:.1f} s, "
            f"**{d['ratio_scorer_load_vs_raw_read']:.2f}×** the raw read; its RSS went from "
            f"{s['rss_bytes_when_healthy'] / 2**20:.0f} to {s['rss_bytes_when_ready'] / 2**20:.0f}"
            " MiB.", ""]


def _snapshot_restore(d: dict[str, Any]) -> list[str]:
    r = d["restore"]
    if "snapshot_restore_seconds" not in r:
        return []
    return [f"From a local snapshot (`--snapshot-dir`; {r['snapshot_bytes'] / 2**20:.0f} MiB; "
            f"the trainer's loop pauses {r.get('snapshot_state_seconds', float('nan')):.1f} s "
            f"to take the state, a background thread writes it in "
            f"{r['snapshot_write_seconds']:.1f} s) plus the changelog after it "
            f"(empty: a clean restart): {r['snapshot_restore_seconds']:.1f} s, "
            f"**{d['ratio_snapshot_restore_vs_raw_read']:.2f}×** the raw read."
            + (f" The restore from the whole changelog above also leaves "
               f"{r['first_use_seconds']:.1f} s of work to its first batch (resolving users' "
               "recent items), which the snapshot path does not have."
               if "first_use_seconds" in r else ""), ""]


def _quality(out: Path) -> list[str]:
    rows: list[str] = []
    for name, title in (("quality_offline", "Quality, learning core offline"),
                        ("quality_kafka", "Quality through Kafka (trainer + scorer)")):
        d = _load(out, name)
        if not isinstance(d, dict):
            continue
        rows += [f"### {title} (MovieLens, temporal 80/20, top-20 excluding seen)", "",
                 *_measured_on(out, d),
                 "| method | Recall@20 | HitRate@20 | NDCG@20 |", "| --- | --- | --- | --- |"]
        rows += [f"| {m} | {v['recall']:.4f} | {v['hit_rate']:.4f} | {v['ndcg']:.4f} |"
                 for m, v in d["methods"].items()]
        ratios = [f"{k} = **{v:.4f}**" for k, v in d.items()
                  if k.startswith("ratio") and isinstance(v, float)]
        ratios += [f"95% bootstrap interval over users ({k.removesuffix('_interval95')}) "
                   f"{v[0]:.3f}–{v[1]:.3f}" for k, v in d.items() if k.endswith("_interval95")]
        rows += ["", "; ".join(ratios), ""]
        rows += _full_recall(d)
        seeds = d["methods"].get("learner", {}).get("recall_per_seed")
        if seeds:
            rows += [f"The learner's figures are the mean over seeds {_seeds(d)} "
                     f"(Recall@20 per seed {', '.join(f'{r:.4f}' for r in seeds)}).", ""]
        kafka = d["methods"].get("trainer_scorer_kafka", {}).get("recall_per_seed")
        if kafka:
            offline = d["methods"]["core_offline"]["recall_per_seed"]
            rows += ["The trainer and scorer's figures, and the offline core's, are the mean "
                     f"over seeds {_seeds(d)}, one run of each (Recall@20 per seed through "
                     f"Kafka {', '.join(f'{r:.4f}' for r in kafka)}; offline "
                     f"{', '.join(f'{r:.4f}' for r in offline)}).", ""]
        if "oracle_test_popularity" in d:
            rows += ["Headroom reference, not a baseline (it reads the test part): popularity "
                     f"over the test part reaches Recall@20 "
                     f"{d['oracle_test_popularity']['recall']:.4f}"
                     + (f"; the learner's scores plus test-part popularity (best weight) reach "
                        f"{d['oracle_learner_plus_test_popularity']['recall']:.4f}"
                        if "oracle_learner_plus_test_popularity" in d else "") + ".", ""]
        release = d.get("with_release_times")
        if isinstance(release, dict):
            lo, hi = release["ratio_interval95"]
            pick = release["nested_choice"]
            rows += ["With release times (events carry `item_released_at` from `movies.dat`; "
                     f"the learner serves with `release_boost` {pick['boost']} and "
                     f"`release_window_ms` {pick['window_days']} days, what the train part's "
                     "own 80/20 split picks; the defaults are "
                     f"{d['config']['release_boost']} and "
                     f"{d['config']['release_window_ms'] // 86_400_000} days): the learner "
                     f"reaches Recall@20 {release['learner']['recall']:.4f}, popularity with "
                     f"the same release prior {release['baseline']['recall']:.4f} "
                     f"(`{release['baseline']['name']}`, half-life, window and weight best on "
                     f"the test part); ratio to {release['best_baseline']} = "
                     f"**{release['ratio']:.3f}** (95% bootstrap {lo:.3f}–{hi:.3f})"
                     + (f"; learner per seed {', '.join(f'{r:.4f}' for r in per_seed)}"
                        if (per_seed := release["learner"].get("recall_per_seed")) else "")
                     + ".", ""]
    return rows


def _full_recall(d: dict[str, Any]) -> list[str]:
    """Recall@20 above divides hits by min(20, |test items|); say so, and give the ratio
    with the usual recall (hits / |test items|) too."""
    methods = d["methods"]
    learner = methods.get("learner", {}).get("recall_full")
    others = [v["recall_full"] for m, v in methods.items()
              if m != "learner" and "recall_full" in v]
    if learner is None or not others:
        return []
    return ["Recall@20 here divides a user's hits by min(20, |test items|) (normalised "
            "recall, which a perfect list brings to 1); divided by |test items| "
            f"(`recall_full` in the JSON), the learner's is {learner:.4f} against "
            f"{max(others):.4f} for the best baseline, **{learner / max(others):.3f}×**.", ""]


def _seeds(d: dict[str, Any]) -> str:
    seeds = d.get("seeds") or d.get("params", {}).get("seeds") or [d["config"]["seed"]]
    return ", ".join(str(s) for s in seeds)


def render(out: Path, doc: Path, mode: str) -> None:
    lines = [START, "", f"Mode: `{mode}`. Machine: {_machine(out)}.", ""]
    for part in (_ingest, _core, _codec, _freshness, _scorer, _restore, _quality):
        lines += part(out)
    lines.append(END)
    text = doc.read_text() if doc.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    doc.write_text(head + "\n".join(lines) + tail)
