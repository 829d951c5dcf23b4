"""`stream-app demo` end to end on the session broker, on a tiny MovieLens-format input.

The demo runs as a subprocess exactly like `make demo`, only with
`--bootstrap-servers` (reuse the test broker) and a few thousand ratings.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
from pathlib import Path

from stream_app.events import EventKind
from stream_app.report import PLOTS
from stream_app.sources.generate import generate
from tests.integration.kafka_helpers import wait_until

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_movielens(folder: Path, n_events: int) -> None:
    """Generated events (planted taste clusters) written as ratings.dat.gz + movies.dat.gz."""
    folder.mkdir(parents=True, exist_ok=True)
    lines, items = [], set()
    for rec in generate(n_events, n_users=120, n_items=80, seed=11):
        e = rec.event
        assert e is not None
        user, item = int(e.user_id.lstrip("u")) + 1, int(e.item_id.lstrip("i")) + 1
        stars = 5 if e.kind is EventKind.PURCHASE else 3
        lines.append(f"{user}::{item}::{stars}::{e.ts // 1000}\n")
        items.add(item)
    (folder / "ratings.dat.gz").write_bytes(gzip.compress("".join(lines).encode()))
    movies = "".join(f"{i}::Movie number {i} (2000)::Drama\n" for i in sorted(items))
    (folder / "movies.dat.gz").write_bytes(gzip.compress(movies.encode("latin-1")))


def _demo(bootstrap: str, folder: Path) -> tuple[list[str], dict[str, str], Path]:
    """The demo's command on 2,500 generated ratings in `folder`, its environment (no
    STREAM_APP_* of the test run) and its report folder."""
    write_movielens(folder / "ml", 3000)
    report = folder / "report"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_APP_")}
    cmd = [sys.executable, "-m", "stream_app.cli", "demo", "--data", str(folder / "ml"),
           "--limit", "2500", "--report-dir", str(report), "--bootstrap-servers", bootstrap,
           "--timeout", "90", "-L", "dim=16"]
    return cmd, env, report


def test_demo_replays_trains_answers_and_writes_the_report(bootstrap: str,
                                                           tmp_path: Path) -> None:
    cmd, env, report = _demo(bootstrap, tmp_path)
    proc = subprocess.run([*cmd, "--users", "2"], capture_output=True, text=True,  # noqa: S603
                          timeout=180, env=env, cwd=tmp_path, check=False)
    out = proc.stdout
    assert proc.returncode == 0, f"demo failed:\n{out[-3000:]}\n{proc.stderr[-3000:]}"

    assert "trainer caught up: 2,500 events" in out
    assert "predictions (scorer over Kafka" in out
    assert "Movie number" in out, "predictions should be printed with titles"
    assert "because you watched Movie number" in out, "explain should name a recent movie"
    assert "popularity fallback" in out, "the unknown user should get the fallback"
    assert "demo finished in" in out

    for name in PLOTS:
        data = (report / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, name
    stats = (report / "trainer-stats.jsonl").read_text().splitlines()
    assert stats and sum('"committed"' in line for line in stats) == len(stats)
    predictions = (report / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 3
    for name in ("status.jsonl", "trainer.log", "scorer.log", "trainer-metrics.prom"):
        assert (report / name).stat().st_size > 0, name


def test_sigterm_stops_the_demo_and_its_trainer_and_scorer(bootstrap: str,
                                                          tmp_path: Path) -> None:
    """`timeout`, a supervisor or a closed terminal must not leave the children running."""
    cmd, env, report = _demo(bootstrap, tmp_path)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,  # noqa: S603
                            env=env, cwd=tmp_path)
    try:
        children = wait_until(lambda: _running_in(tmp_path, but=proc.pid)
                              if (report / "status.jsonl").exists() else None,
                              timeout=60, what="the demo's trainer and scorer")
        assert proc.poll() is None and children is not None and len(children) == 2, children
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, f"{out[-2000:]}\n{err[-2000:]}"
    assert "the processes it started were stopped" in err
    assert _running_in(tmp_path, but=proc.pid) == []


def _running_in(folder: Path, *, but: int) -> list[int]:
    """Live processes whose working directory is `folder` (the demo's children), bar one."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == but:
            continue
        try:
            if (entry / "cwd").resolve() == folder.resolve() and \
                    b"zombie" not in (entry / "status").read_bytes().lower():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found
