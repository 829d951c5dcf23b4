"""`stream-app report`: plots from a run's saved files (no broker, no trainer)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from stream_app.cli import main
from stream_app.config import ConfigError
from stream_app.kafka.transaction import TxnOutcome
from stream_app.observability import FreshnessSince, TrainerMetrics
from stream_app.report import PLOTS, Stats, build_report, load_stats, rolling, summary, throughput
from stream_app.trainer.result import BatchResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _batches(n: int = 120) -> list[BatchResult]:
    """A plausible run: loss falls, the model overtakes popularity, one NaN batch."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        out.append(BatchResult(
            wall_ms=1_000_000 + i * 250, event_ts_max=978_300_000_000 + i * 3_600_000,
            events=2000, applied=1990, evaluated=1995, dlq=10, rows=800,
            loss=math.nan if i == 7 else 1.0 / (1 + i / 20) + rng.normal(0, 0.02),
            hit_rate=min(0.05 + i / 400, 0.3), hit_rate_popularity=0.12,
            recall=0.1, recall_popularity=0.1, mrr=0.05, mrr_popularity=0.04,
            freshness_p50_s=0.2, freshness_p99_s=0.4 + (i % 5) / 10,
            outcome=TxnOutcome.ABORTED if i == 9 else TxnOutcome.COMMITTED))
    return out


def _write_run(run: Path, batches: list[BatchResult], with_metrics: bool = True) -> None:
    """Exactly what `stream-app trainer --stats-file` writes (orjson of the dataclass)."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "trainer-stats.jsonl").write_bytes(
        b"".join(orjson.dumps(dataclasses.asdict(b)) + b"\n" for b in batches))
    (run / "run.json").write_bytes(orjson.dumps({"k": 20}))
    if with_metrics:
        m = TrainerMetrics(CollectorRegistry(), k=20)
        m.observe_freshness(FreshnessSince.PRODUCE_TIME, np.linspace(0.01, 3.0, 500))
        (run / "trainer-metrics.prom").write_bytes(generate_latest(m.registry))


def _assert_pngs(folder: Path) -> None:
    for name in PLOTS:
        data = (folder / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 10_000, f"{name} looks empty ({len(data)} bytes)"


def test_stats_skip_aborted_batches_and_restore_nan(tmp_path: Path) -> None:
    _write_run(tmp_path, _batches())
    stats = load_stats(tmp_path / "trainer-stats.jsonl")
    assert len(stats) == 119
    assert np.isnan(stats["loss"][7])
    last = summary(stats)
    assert last["hit_rate_popularity"] == pytest.approx(0.12)
    assert 0.25 < last["hit_rate"] <= 0.3


def test_hit_rates_are_weighted_by_events_scored_and_the_loss_by_events_applied(
        tmp_path: Path) -> None:
    """Hit rates were weighted by the events applied: a batch that scored many events but
    applied few (duplicates, rate-capped) counted for little."""
    base = _batches(1)[0]
    batches = [dataclasses.replace(base, hit_rate=0.1, loss=1.0, applied=900, evaluated=100),
               dataclasses.replace(base, hit_rate=0.5, loss=2.0, applied=100, evaluated=900)]
    _write_run(tmp_path, batches)
    last = summary(load_stats(tmp_path / "trainer-stats.jsonl"), last_share=1.0)
    assert last["hit_rate"] == pytest.approx(0.46)
    assert last["loss"] == pytest.approx(1.1)


def test_build_report_writes_four_pngs(tmp_path: Path) -> None:
    _write_run(tmp_path / "run", _batches())
    paths = build_report(tmp_path / "run", tmp_path / "plots")
    assert [p.name for p in paths] == list(PLOTS)
    _assert_pngs(tmp_path / "plots")


def test_report_without_the_metrics_page_still_plots(tmp_path: Path) -> None:
    _write_run(tmp_path, _batches(5), with_metrics=False)
    build_report(tmp_path)
    _assert_pngs(tmp_path)


def test_cli_report_and_its_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_run(tmp_path / "run", _batches(30))
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    assert "loss.png" in capsys.readouterr().out
    _assert_pngs(tmp_path / "out")
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "--stats-file" in capsys.readouterr().err
    # An --out that cannot be made (under a file here) was a traceback, exit 1.
    (tmp_path / "a-file").write_text("")
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "a-file" / "x")]) == 2
    assert "report --out" in capsys.readouterr().err


def test_empty_or_broken_stats_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "trainer-stats.jsonl"
    path.write_text("\n")
    with pytest.raises(ConfigError, match="no committed batch"):
        load_stats(path)
    good = orjson.dumps(dataclasses.asdict(_batches(1)[0])).decode()
    path.write_text("event_id,user_id\ne1,u1\n")  # a CSV, say
    with pytest.raises(ConfigError, match=":1: not JSON: not a trainer --stats-file"):
        load_stats(path)
    path.write_text(f"{good}\n[]\n")
    with pytest.raises(ConfigError, match=":2: not a JSON object"):
        load_stats(path)
    path.write_text('{"event_id": "e1", "ts": 1}\n')  # an events file, say
    with pytest.raises(ConfigError, match="not a trainer --stats-file: .*event_ts_max"):
        load_stats(path)


def test_a_bad_run_file_only_loses_the_k(tmp_path: Path) -> None:
    from stream_app.report import RUN_FILE, _k

    for text in ('{"k": 20', "[20]"):
        (tmp_path / RUN_FILE).write_text(text)
        assert _k(tmp_path) is None


def test_a_cut_off_last_line_is_skipped(tmp_path: Path) -> None:
    """A trainer killed mid-write leaves half a line: the batches before it still plot."""
    path = tmp_path / "trainer-stats.jsonl"
    lines = [orjson.dumps(dataclasses.asdict(b)).decode() for b in _batches(3)]
    path.write_text("\n".join(lines) + "\n" + lines[0][:40])
    assert len(load_stats(path)) == 3


def test_a_cut_line_a_restarted_trainer_appended_to_is_skipped(tmp_path: Path) -> None:
    """Killed mid-write and restarted, the trainer appends its next line to the cut one,
    mid-file: the report refused the whole file."""
    path = tmp_path / "trainer-stats.jsonl"
    lines = [orjson.dumps(dataclasses.asdict(b)).decode() for b in _batches(4)]
    path.write_text(f"{lines[0]}\n{lines[1][:40]}{lines[2]}\n{lines[3]}\n")
    assert len(load_stats(path)) == 2


def test_throughput_takes_a_wall_clock_that_steps_back() -> None:
    """Bins counted from the first row went negative: np.bincount raised, a traceback."""
    s = Stats({"wall_ms": np.array([5_000.0, 0.0, 6_000.0]), "events": np.array([1.0, 2, 3])})
    starts, rates = throughput(s)
    assert starts.tolist()[:1] == [0.0] and rates.sum() == 6.0


def test_a_cut_metrics_page_only_loses_the_freshness_cdf(tmp_path: Path) -> None:
    from stream_app.report import freshness_cdf

    _write_run(tmp_path, _batches(5))
    page = (tmp_path / "trainer-metrics.prom").read_text()
    cut = page[:page.index("stream_app_freshness_seconds_bucket") + 20]
    assert freshness_cdf(cut) == ([], [])
    (tmp_path / "trainer-metrics.prom").write_text(cut)
    build_report(tmp_path)
    _assert_pngs(tmp_path)


def test_rolling_mean_is_event_weighted_and_skips_nan() -> None:
    values = np.array([0.0, 1.0, np.nan, 1.0])
    weights = np.array([1.0, 3.0, 5.0, 1.0])
    assert rolling(values, weights, 2).tolist() == [0.0, 0.75, 1.0, 1.0]
    assert np.isnan(rolling(np.array([np.nan]), np.array([1.0]), 3)[0])


def test_throughput_bins_events_by_commit_time() -> None:
    stats = load_stats_from([(0, 100), (400, 100), (2500, 50)])
    start, rate = throughput(stats)
    assert start.tolist() == [0.0, 1.0, 2.0]
    assert rate.tolist() == [200.0, 0.0, 50.0]


def load_stats_from(rows: list[tuple[int, int]]) -> Stats:
    return Stats({"wall_ms": np.array([float(w) for w, _ in rows]),
                  "events": np.array([float(e) for _, e in rows])})


def test_prequential_plots_follow_event_time_not_commit_order() -> None:
    """Partitions are consumed unevenly: commit order is not event-time order."""
    stats = Stats({"wall_ms": np.array([1.0, 2.0, 3.0]),
                   "event_ts_max": np.array([300.0, 0.0, 100.0]),
                   "hit_rate": np.array([0.3, np.nan, 0.1])})
    ordered = stats.by_event_time()
    assert ordered["event_ts_max"].tolist() == [100.0, 300.0]
    assert ordered["hit_rate"].tolist() == [0.1, 0.3]


def test_report_takes_the_stats_file_itself_and_names_bad_input(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Given the stats file, report looked for <file>/trainer-stats.jsonl and told the user
    to run the trainer with that; a non-number in a batch, an unwritable --out and a
    metrics page that is not UTF-8 ended in tracebacks (helper review)."""
    _write_run(tmp_path / "run", _batches(12))  # the last one committed (the 10th aborted)
    stats = tmp_path / "run" / "mine.jsonl"
    (tmp_path / "run" / "trainer-stats.jsonl").rename(stats)
    (tmp_path / "run" / "trainer-metrics.prom").write_bytes(b"# \xff\xfe not utf-8\n")
    assert main(["report", str(stats), "--out", str(tmp_path / "out")]) == 0
    _assert_pngs(tmp_path / "out")
    capsys.readouterr()
    head, last = stats.read_text().rsplit('"loss":', 1)  # a later batch: the first is checked
    stats.write_text(head + '"loss":"x","was":' + last)
    assert main(["report", str(stats), "--out", str(tmp_path / "out")]) == 2
    assert "not a number" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/1").is_dir(), reason="needs Linux's /proc")
def test_an_out_folder_that_takes_no_files_is_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """savefig's OSError was a traceback. /proc/1 is a folder that takes no new file, even
    for root (who writes in a read-only folder)."""
    _write_run(tmp_path, _batches(10))
    assert main(["report", str(tmp_path), "--out", "/proc/1"]) == 2
    assert "cannot write /proc/1/loss.png" in capsys.readouterr().err


def test_throughput_bars_span_several_commits() -> None:
    """Bins about one commit gap wide held 0, 1 or 2 batches: 10,000-event batches every
    2.75 s read 0, 3,636 or 7,272 events/s for a steady ~3,600 (helper review)."""
    from stream_app.report import throughput_bin_s

    n = 40
    stats = Stats({"wall_ms": np.arange(n) * 2750.0, "events": np.full(n, 10_000.0)})
    _, rate = throughput(stats, bin_s=throughput_bin_s(stats))
    full = rate[:-1]  # the last bin is cut by the end of the run
    assert len(full) >= 5 and np.all(np.abs(full / (10_000 / 2.75) - 1) < 0.3)



def test_unreadable_files_and_a_null_time_are_config_errors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each was a traceback (PermissionError, or numpy refusing a negative bin): CLI review.
    Root reads a mode-000 file, so the refusal is a stand-in here."""
    from stream_app.report import RUN_FILE, _k

    good = orjson.loads(orjson.dumps(dataclasses.asdict(_batches(1)[0])))
    path = tmp_path / "trainer-stats.jsonl"
    path.write_bytes(orjson.dumps(good) + b"\n" + orjson.dumps({**good, "wall_ms": None}))
    with pytest.raises(ConfigError, match=r":2: wall_ms is None, not a time in ms"):
        load_stats(path)
    (tmp_path / RUN_FILE).write_text('{"k": 20}')

    def refused(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refused)
    with pytest.raises(ConfigError, match="cannot read .*trainer-stats.jsonl: Permission"):
        load_stats(path)
    with pytest.raises(ConfigError, match="cannot read .*: Permission denied"):
        _k(tmp_path)


def test_a_k_of_digits_that_int_refuses_only_loses_the_k(tmp_path: Path) -> None:
    from stream_app.report import RUN_FILE, _k

    (tmp_path / RUN_FILE).write_text('{"k": "\\u00b2"}')  # "²": isdigit() but not int()
    assert _k(tmp_path) is None
