"""`stream-app report RUN_DIR`: PNG plots of a run from the files it saved.

Input (any run directory, the demo's report folder included):
- `trainer-stats.jsonl` (required): one `BatchResult` per line, written by
  `stream-app trainer --stats-file`;
- `trainer-metrics.prom` (optional): the trainer's last /metrics page, for the
  per-event freshness distribution (the stats file only has per-batch p50/p99);
- `run.json` (optional): the prequential cut-off `k` for the titles.

Prequential figures are plotted over EVENT time, because that is the clock the
model learns on (a replay compresses months into minutes); throughput is over
wall time. Curves are event-weighted rolling means, so a tiny batch cannot
swing them. matplotlib is the optional `demo` extra, imported only here.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import orjson

from stream_app.codec.wire import shown
from stream_app.config import ConfigError, make_folder

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

STATS_FILE = "trainer-stats.jsonl"
METRICS_FILE = "trainer-metrics.prom"
RUN_FILE = "run.json"
PLOTS = ("loss.png", "hit_rate.png", "freshness.png", "throughput.png")
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Stats:
    """Committed batches as columns, in file order: each array is (n_batches,)."""

    columns: dict[str, Floats]

    def __getitem__(self, name: str) -> Floats:
        return self.columns[name]

    def __len__(self) -> int:
        return len(self.columns["wall_ms"])

    def prequential_weights(self) -> Floats:
        """Events scored per batch; a file from before `evaluated` was written has only
        the events applied (the same weights where each batch scores the same share)."""
        return self.columns.get("evaluated", self["applied"])

    def by_event_time(self) -> Stats:
        """Batches sorted by their newest event, without batches that had no valid event.

        Partitions are consumed unevenly, so in commit order a batch of one
        partition's later events can come before another's earlier ones.
        """
        keep = self["event_ts_max"] > 0
        order = np.argsort(self["event_ts_max"][keep], kind="stable")
        return Stats({k: v[keep][order] for k, v in self.columns.items()})


def load_stats(path: Path) -> Stats:
    """Read a stats JSONL file; aborted batches are left out (they were re-read)."""
    if not path.is_file():
        raise ConfigError(f"{path} not found: run the trainer with --stats-file "
                          f"{path}, or point `stream-app report` at a demo report folder")
    rows: list[dict[str, Any]] = []
    numbers: list[int] = []  # each row's line
    cut: list[int] = []
    for number, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            # A trainer killed mid-write leaves a cut line; restarted, it appends the
            # next one to it (the file is opened for appending), anywhere in the file.
            cut.append(number)
            continue
        if not isinstance(row, dict):
            raise ConfigError(f"{path}:{number}: not a JSON object")
        if row.get("outcome", "committed") == "committed":
            rows.append(row)
            numbers.append(number)
    if cut and not rows:
        raise ConfigError(f"{path}:{cut[0]}: not JSON: not a trainer --stats-file?")
    if cut:
        log.warning("%s: %d line(s) not JSON, cut off by a trainer killed mid-write, "
                    "skipped (lines %s)", path, len(cut), ", ".join(map(str, cut[:10])))
    if not rows:
        raise ConfigError(f"{path} holds no committed batch: nothing to plot")
    names = [k for k, v in rows[0].items() if isinstance(v, int | float) or v is None]
    missing = sorted(set(PLOTTED) - set(names))
    if missing:
        raise ConfigError(f"{path} is not a trainer --stats-file: its first batch has no "
                          f"number for {', '.join(missing)}")
    for number, row in zip(numbers, rows, strict=True):
        wall = row.get("wall_ms")
        if not isinstance(wall, int | float) or not math.isfinite(wall):
            # The trainer always writes one: a null made a negative throughput bin, and a
            # traceback (CLI review).
            raise ConfigError(f"{path}:{number}: wall_ms is {shown(wall)}, not a time in ms: "
                              "not a trainer --stats-file line?")
    try:
        return Stats({k: np.array([_float(r.get(k)) for r in rows]) for k in names})
    except (TypeError, ValueError) as exc:  # a batch with "loss": "x", say
        raise ConfigError(f"{path}: a batch has a value that is not a number ({exc}): "
                          "not a trainer --stats-file?") from exc


def _read(path: Path) -> bytes:
    """A run file's bytes; unreadable (permissions, a folder), a ConfigError that names it,
    not a traceback (CLI review)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc


PLOTTED = ("event_ts_max", "wall_ms", "events", "applied", "loss", "hit_rate",
           "hit_rate_popularity", "freshness_p50_s", "freshness_p99_s")
"""The stats columns the plots read (`BatchResult` fields)."""


def _float(value: Any) -> float:
    """orjson writes NaN as null; bring it back."""
    return math.nan if value is None else float(value)


def rolling(values: Floats, weights: Floats, window: int) -> Floats:
    """Weighted mean of the last `window` finite values at each position (NaN before any).

    >>> rolling(np.array([1.0, np.nan, 3.0]), np.array([1.0, 1.0, 3.0]), 2).tolist()
    [1.0, 1.0, 3.0]
    """
    ok = np.isfinite(values) & (weights > 0)
    wx = np.where(ok, values * weights, 0.0).cumsum()
    w = np.where(ok, weights, 0.0).cumsum()
    lag_wx = np.concatenate([np.zeros(window), wx[:-window]])[: len(wx)]
    lag_w = np.concatenate([np.zeros(window), w[:-window]])[: len(w)]
    den = w - lag_w
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (wx - lag_wx) / den
    return np.where(den > 0, out, np.nan)


def _window(n: int) -> int:
    """Batches per rolling mean: ~1/15 of the run, so per-partition swings average out."""
    return max(1, n // 15)


def _event_times(stats: Stats) -> npt.NDArray[np.datetime64]:
    """Event time as datetime64 (UTC), which matplotlib puts on a date axis."""
    return stats["event_ts_max"].astype(np.int64).astype("datetime64[ms]")


def _figure(title: str) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig, ax


def plot_loss(stats: Stats, out: Path) -> Path:
    fig, ax = _figure("Training loss over event time")
    stats = stats.by_event_time()
    t, loss = _event_times(stats), stats["loss"]
    ax.plot(t, loss, ".", color="tab:blue", alpha=0.25, markersize=3, label="per batch")
    ax.plot(t, rolling(loss, stats["applied"], _window(len(stats))), color="tab:blue",
            label="rolling mean")
    ax.set_xlabel("event time (UTC)")
    ax.set_ylabel("loss")
    ax.legend()
    fig.autofmt_xdate()
    return _save(fig, out / "loss.png")


def plot_hit_rate(stats: Stats, out: Path, k: int | None) -> Path:
    cut = f"@{k}" if k else ""
    fig, ax = _figure(f"Prequential HitRate{cut} (test-then-train) over event time")
    stats = stats.by_event_time()
    t, w, n = _event_times(stats), stats.prequential_weights(), _window(len(stats))
    ax.plot(t, rolling(stats["hit_rate"], w, n), color="tab:green", label="model")
    ax.plot(t, rolling(stats["hit_rate_popularity"], w, n), color="tab:gray",
            linestyle="--", label="popularity baseline")
    ax.set_xlabel("event time (UTC)")
    ax.set_ylabel(f"HitRate{cut}")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.autofmt_xdate()
    return _save(fig, out / "hit_rate.png")


def freshness_cdf(page: str) -> tuple[list[float], list[float]]:
    """(bound, share of events at or under it) from a /metrics page's freshness buckets."""
    from stream_app.demo import scrape

    try:
        parsed = scrape.parse(page)
    except ValueError as exc:  # a page cut off mid-line: plot without it
        log.warning("the saved /metrics page is unreadable (%s): no freshness CDF", exc)
        return [], []
    buckets = scrape.buckets(parsed, "stream_app_freshness_seconds", since="produce_time")
    finite = [(le, c) for le, c in buckets if math.isfinite(le)]
    if not buckets or buckets[-1][1] <= 0:
        return [], []
    total = buckets[-1][1]
    return [le for le, _ in finite], [c / total for _, c in finite]


def plot_freshness(stats: Stats, out: Path, page: str | None) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), dpi=100, layout="constrained")
    left, right = fig.subplots(1, 2)
    bounds, shares = freshness_cdf(page) if page else ([], [])
    if bounds:
        left.step(bounds, shares, where="post", color="tab:purple")
        left.set_xscale("log")
        full = next((b for b, share in zip(bounds, shares, strict=True) if share >= 1.0),
                    bounds[-1])
        left.set_xlim(right=full * 2)  # the tail buckets (up to an hour) are empty
        left.set_ylim(0, 1.02)
        left.set_title("Freshness of every event (CDF, from /metrics)")
        left.set_ylabel("share of events")
    else:
        finite = [x for x in stats["freshness_p99_s"] if math.isfinite(x)]
        left.hist(finite, bins=30, color="tab:purple")
        left.set_title("Per-batch freshness p99 (histogram)")
        left.set_ylabel("batches")
    left.set_xlabel("produced → embedding published (s)")
    wall = (stats["wall_ms"] - stats["wall_ms"].min()) / 1000  # the first need not be the
    # earliest: rows are in event-time order, and a wall clock may step back
    right.plot(wall, stats["freshness_p50_s"], color="tab:blue", label="p50")
    right.plot(wall, stats["freshness_p99_s"], color="tab:red", label="p99")
    right.set_title("Per-batch freshness over wall time")
    right.set_xlabel("wall time since first batch (s)")
    right.set_ylabel("seconds")
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return _save(fig, out / "freshness.png")


def throughput(stats: Stats, bin_s: float = 1.0) -> tuple[Floats, Floats]:
    """(bin start s since first batch, events/s) from batch sizes and commit times.

    >>> s = Stats({"wall_ms": np.array([0.0, 500, 1500]), "events": np.array([10.0, 10, 5])})
    >>> [x.tolist() for x in throughput(s)]
    [[0.0, 1.0], [20.0, 5.0]]
    """
    wall = (stats["wall_ms"] - stats["wall_ms"].min()) / 1000  # the first need not be the
    # earliest: rows are in event-time order, and a wall clock may step back
    bins = np.floor(wall / bin_s).astype(np.int64)
    counts = np.bincount(bins, weights=stats["events"])
    return np.arange(len(counts), dtype=np.float64) * bin_s, counts / bin_s


def throughput_bin_s(stats: Stats) -> float:
    """Bars ~1/40 of the run wide, and at least 4 commit gaps: a batch lands whole in one
    bin, so bins about one gap wide showed 0 or 2x the rate by how commits fell (the
    demo's 10,000-event batches every ~2.75 s read 0, 3,636 or 7,272 events/s)."""
    wall = np.sort(stats["wall_ms"]) / 1000
    gap = float(np.median(np.diff(wall))) if len(wall) > 1 else 0.0
    return max(2.0, float(wall[-1] - wall[0]) / 40, 4 * gap)


def plot_throughput(stats: Stats, out: Path) -> Path:
    fig, ax = _figure("Trainer throughput over wall time")
    start, rate = throughput(stats, bin_s=throughput_bin_s(stats))
    ax.bar(start, rate, width=start[1] - start[0] if len(start) > 1 else 1.0, align="edge",
           color="tab:orange", alpha=0.8, label="events/s")
    ax.set_xlabel("wall time since first batch (s)")
    ax.set_ylabel("events trained per second")
    total = ax.twinx()
    total.plot((stats["wall_ms"] - stats["wall_ms"][0]) / 1000, np.cumsum(stats["events"]),
               color="black", label="events (cumulative)")
    total.set_ylabel("events (cumulative)")
    return _save(fig, out / "throughput.png")


def _save(fig: Figure, path: Path) -> Path:
    try:
        fig.savefig(path)
    except OSError as exc:  # a folder that exists but cannot be written
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def require_plotting() -> None:
    """Fail fast without matplotlib: the demo checks before it starts, not after its run."""
    try:
        import matplotlib  # noqa: F401 (checked here for a clear message)
    except ImportError as exc:
        raise ConfigError("plots need matplotlib: pip install 'stream-app[demo]'") from exc


def build_report(run_dir: Path, out: Path | None = None) -> list[Path]:
    """Write the four PNGs of `run_dir` into `out` (default: `run_dir`); returns their paths.

    `run_dir` may also be the stats file itself (any name): its folder is then the run's.
    """
    require_plotting()
    stats_file = run_dir if run_dir.is_file() else run_dir / STATS_FILE
    run_dir = stats_file.parent
    stats = load_stats(stats_file)
    out = make_folder(out or run_dir, "report --out")
    metrics = run_dir / METRICS_FILE
    page = _read(metrics).decode(errors="replace") if metrics.is_file() else None
    return [plot_loss(stats, out), plot_hit_rate(stats, out, _k(run_dir)),
            plot_freshness(stats, out, page), plot_throughput(stats, out)]


def _k(run_dir: Path) -> int | None:
    path = run_dir / RUN_FILE
    if not path.is_file():
        return None
    try:
        run = orjson.loads(_read(path))
    except orjson.JSONDecodeError:
        run = None
    if not isinstance(run, dict):
        log.warning("%s is not a JSON object: plotting without its K", path)
        return None
    k = run.get("k")
    text = str(k)  # isdigit() alone takes "²", which int() refuses
    return int(k) if isinstance(k, int | str) and text.isascii() and text.isdigit() else None


def summary(stats: Stats, last_share: float = 0.25) -> dict[str, float]:
    """Event-weighted means over the last `last_share` of batches (for the final print):
    the loss by events applied, hit rates by events scored."""
    start = int(len(stats) * (1 - last_share))

    def mean(name: str, weights: Floats) -> float:
        x, w = stats[name][start:], weights[start:]
        ok = np.isfinite(x) & (w > 0)
        return float((x[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else math.nan

    scored = stats.prequential_weights()
    return {"loss": mean("loss", stats["applied"]), "hit_rate": mean("hit_rate", scored),
            "hit_rate_popularity": mean("hit_rate_popularity", scored)}
