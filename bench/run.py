"""`make bench` / `make bench-quick`: run every benchmark, write JSON, update BENCHMARKS.md.

Each benchmark runs in its own process (clean RSS, no shared torch state) and
writes `<out>/<name>.json`; then the tables between the markers in
BENCHMARKS.md are rendered from those files, so every number there comes from
a run of this script.

    python -m bench.run --quick --out bench/results
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.report import render

QUICK: dict[str, list[str]] = {
    "codec_speed": ["-m", "bench.codec_speed", "--events", "20000", "--rows", "5000"],
    "core_throughput": ["-m", "bench.core_throughput", "--batch", "1024", "4096", "--batches", "8"],
    "ingest": ["-m", "bench.ingest", "--events", "100000", "--users", "5000", "--items", "2000",
               "--profile", "{out}/ingest.prof"],
    "freshness": ["-m", "bench.freshness", "--rates", "1000", "5000", "--seconds", "10"],
    "scorer_latency": ["-m", "bench.scorer_latency", "--quick", "--threads", "1"],
    "restore_memory": ["-m", "bench.restore_memory", "--rows", "100000"],
    "quality_offline": ["-m", "bench.quality_offline", "--limit", "150000"],
    "quality_kafka": ["-m", "bench.quality_kafka", "--limit", "150000", "--seeds", "0"],
}
FULL: dict[str, list[str]] = {
    "codec_speed": ["-m", "bench.codec_speed"],
    "core_throughput": ["-m", "bench.core_throughput"],
    "ingest": ["-m", "bench.ingest", "--events", "1000000", "--profile", "{out}/ingest.prof"],
    "freshness": ["-m", "bench.freshness", "--rates", "3000", "5000", "20000", "--seconds", "20"],
    "scorer_latency": ["-m", "bench.scorer_latency", "--threads", "1"],
    "restore_memory": ["-m", "bench.restore_memory", "--rows", "1000000"],
    "quality_offline": ["-m", "bench.quality_offline", "--baselines"],
    "quality_kafka": ["-m", "bench.quality_kafka", "--seeds", *[str(s) for s in range(10)]],
}
# How each script takes its output path.
OUT_FLAG = {"codec_speed": "--json"}


def run_one(name: str, args: list[str], out: Path) -> dict[str, Any]:
    path = out / f"{name}.json"
    cmd = [sys.executable, *[a.format(out=out) for a in args], OUT_FLAG.get(name, "--out"),
           str(path)]
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.monotonic()
    proc = subprocess.run(cmd, check=False)  # noqa: S603
    took = time.monotonic() - start
    print(f"== {name}: exit {proc.returncode} in {took:.0f}s", flush=True)
    return {"exit": proc.returncode, "seconds": took}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes, under ~10 minutes")
    ap.add_argument("--only", nargs="+", help="run only these benchmarks")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--render-only", action="store_true",
                    help="only re-render BENCHMARKS.md from the JSON files in --out")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.only or ()) - set(FULL))
    if unknown:  # ran nothing and said nothing before
        ap.error(f"--only {' '.join(unknown)}: not run by bench.run (it runs {', '.join(FULL)}); "
                 "run that script on its own, as BENCHMARKS.md says")
    args.out.mkdir(parents=True, exist_ok=True)
    plan = QUICK if args.quick else FULL
    mode = "quick" if args.quick else "full"
    run_file = args.out / "run.json"
    # --only re-runs some benchmarks: the others' results (and status) still stand.
    kept = json.loads(run_file.read_text()) if run_file.exists() else {}
    status: dict[str, Any] = {
        name: {"mode": kept.get("mode", "full"), **s}  # files before the mode was per entry
        for name, s in kept.get("status", {}).items()} if args.only or args.render_only else {}
    ran: dict[str, Any] = {}
    if not args.render_only:
        for name, cmd in plan.items():
            if args.only and name not in args.only:
                continue
            ran[name] = {"mode": mode, **run_one(name, cmd, args.out)}
        status.update(ran)
    modes = {s["mode"] for s in status.values()} or {mode}
    label = modes.pop() if len(modes) == 1 else "mixed: " + ", ".join(
        f"{name} {s['mode']}" for name, s in status.items())
    if not args.render_only:
        run_file.write_text(json.dumps({"mode": label, "status": status}, indent=2))
    render(args.out, Path("BENCHMARKS.md"), mode=label)
    return 1 if any(s["exit"] for s in ran.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
