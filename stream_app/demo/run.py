"""`stream-app demo`: broker, topics, trainer, scorer, replay, live view, answers, report.

The steps, in order (everything started here is stopped in `finally`, on Ctrl-C,
SIGTERM or SIGHUP too: `signals.interrupt_on_termination`):

1. Input: a time-ordered MovieLens slice (or the synthetic stream), in memory.
2. Broker: the given one, or a local KRaft broker that is stopped at the end.
   Topics get a fresh per-run prefix, so every run starts from an empty model.
3. Trainer and scorer as real subprocesses, each with its own /metrics port.
4. Replay at full speed in a thread; the display scrapes both /metrics pages.
5. Once the trainer caught up (replay done, lag 0), ask the scorer about a few
   active users and one unknown user, and print the answers readably.
6. Save the raw files and plot them (`stream_app.report`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import orjson

from stream_app.client import ScoreClient
from stream_app.config import ConfigError, KafkaConfig, make_folder
from stream_app.demo import scrape
from stream_app.demo.data import DemoInput, load_input
from stream_app.demo.display import LiveDisplay, Shown, prediction_text
from stream_app.demo.own_folder import own_folder
from stream_app.demo.processes import Child, start_component, stop_all
from stream_app.demo.replayer import Replayer
from stream_app.demo.watch import Status, Watcher
from stream_app.events import ScoreRequest
from stream_app.kafka import broker
from stream_app.kafka.admin import create_topics, delete_topics
from stream_app.report import require_plotting

log = logging.getLogger(__name__)

OUTPUTS = ("trainer-stats.jsonl", "status.jsonl", "predictions.jsonl", "run.json",
           "trainer.log", "scorer.log", "trainer-metrics.prom", "scorer-metrics.prom")


class DemoError(RuntimeError):
    """The demo cannot go on; the message says what failed and where its log is."""


DEMO_LIMIT_MAX = 10_000_000
"""Events the demo replays at most: it holds them in memory (3e9 tried to build them)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoOptions:
    """What the demo replays, where it writes, and what it forwards to its children.

    `child_args` (e.g. `-X security.protocol=SSL`, `--config f.toml`) go to the
    trainer and the scorer; `trainer_args` only to the trainer (`-L dim=32`).
    """

    data: Path | None = None
    limit: int = 300_000
    report_dir: Path = Path("demo-report")
    show_users: int = 3
    k: int = 10
    timeout_s: float = 480.0
    refresh_s: float = 0.5
    keep_topics: bool = False
    child_args: tuple[str, ...] = ()
    trainer_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.limit <= DEMO_LIMIT_MAX:  # the demo holds its events in memory
            raise ConfigError(f"demo --limit must be 1..{DEMO_LIMIT_MAX:,} events, got "
                              f"{self.limit:,}; for more, run a trainer and `stream-app "
                              "replay` the file")
        if not 1 <= self.k <= 1000:
            raise ConfigError(f"demo --k must be in 1..1000, got {self.k}")
        if self.show_users < 0:
            raise ConfigError(f"demo --users must be >= 0, got {self.show_users}")
        if not 0 < self.timeout_s < math.inf:  # NaN too: it would never time out
            raise ConfigError(f"demo --timeout must be > 0 seconds, got {self.timeout_s}")


@contextlib.contextmanager
def local_broker(display: LiveDisplay, report: Path) -> Iterator[str]:
    """A broker of this run's own under ~/.cache/stream-app/demo-broker-*, stopped and its
    folder deleted after (see `own_folder`: a shared one was stopped under a second demo);
    its log is kept in the `report` folder."""
    with own_folder(broker.default_cache_dir(), "demo-broker-") as state_dir:
        # dies_with_caller: a demo killed by SIGKILL (an OOM kill, a CI timeout) left the
        # broker running.
        settings = broker.BrokerSettings(port=0, state_dir=state_dir, dies_with_caller=True)
        display.note("starting a local Kafka broker (KRaft, first run resolves its jars) ...")
        started = broker.start(settings)
        display.note(f"broker up at {started.bootstrap_servers} (log kept as "
                     f"{report / 'broker.log'})")
        try:
            yield started.bootstrap_servers
        finally:
            broker.stop(settings)
            with contextlib.suppress(OSError):
                shutil.copyfile(settings.log_file, report / "broker.log")


def run_demo(opts: DemoOptions, kafka: KafkaConfig, *, start_broker: bool,
             stream: TextIO) -> int:
    """The whole demo; 0 when every step worked, 1 when the trainer or the scorer
    exited with an error when stopped (their logs are in the report folder).
    `kafka.topic_prefix` must be fresh."""
    require_plotting()
    began = time.monotonic()
    display = LiveDisplay(stream)
    report = make_folder(opts.report_dir, "demo --report-dir")
    inp = load_input(opts.data, opts.limit)
    if inp.note:
        display.note(inp.note)
    display.note(f"input: {inp.description}")
    with contextlib.ExitStack() as stack:
        if start_broker:  # its topics go with it
            bootstrap = stack.enter_context(local_broker(display, report))
            kafka = dataclasses.replace(kafka, bootstrap_servers=bootstrap)
        create_topics(kafka)
        if not start_broker and not opts.keep_topics:
            stack.callback(delete_topics, kafka, list(kafka.topics.all()))
        display.note(f"topics {kafka.topics.prefix}* on {kafka.bootstrap_servers}")
        children: list[Child] = []
        failed: dict[str, int] = {}
        stack.callback(_stop_children, children, display, failed)
        _clear_report(report)  # only now: a run that fails before keeps the last report
        _start_children(opts, kafka, report, children)
        replayer = Replayer(kafka, inp.records)
        stack.callback(replayer.stop)
        replayer.start()
        watcher = Watcher(children[0].metrics_url, children[1].metrics_url)
        _watch(opts, watcher, replayer, children, display, report)
        _wait_for_scorer(opts, watcher, replayer, children, display, report)
        shown = ask_scorer(kafka, inp, opts)
        _show_predictions(display, shown, inp, report)
        status = _tick(watcher, replayer, display, report, force=True)  # with scorer latency
        _save_pages(watcher, report)
    _finish(display, report, status, time.monotonic() - began, inp)
    return 1 if failed else 0


def _clear_report(path: Path) -> None:
    """Drop the previous run's files (the trainer appends to its stats)."""
    for name in (*OUTPUTS, "loss.png", "hit_rate.png", "freshness.png", "throughput.png"):
        (path / name).unlink(missing_ok=True)


def _start_children(opts: DemoOptions, kafka: KafkaConfig, report: Path,
                    children: list[Child]) -> None:
    """Trainer then scorer, each appended as soon as it runs (so `finally` stops it)."""
    prefix = kafka.topics.prefix
    common = ["--bootstrap-servers", kafka.bootstrap_servers, "--topic-prefix", prefix,
              *opts.child_args]
    children.append(start_component("trainer", [
        *common, "--group-id", f"{prefix}trainer", "--stats-file",
        str(report / "trainer-stats.jsonl"), *opts.trainer_args], log_dir=report))
    children.append(start_component("scorer", [*common, "--group-id", f"{prefix}scorer"],
                                    log_dir=report))


def _stop_children(children: list[Child], display: LiveDisplay,
                   failed: dict[str, int]) -> None:
    """Stop them; a non-zero exit goes into `failed`, and the demo exits 1 (it only
    showed a note, so a component failing at shutdown went unnoticed)."""
    if not children:
        return
    codes = stop_all(children)
    failed.update({name: code for name, code in codes.items() if code not in (0, None)})
    if failed:
        display.note(f"stopped with non-zero exit codes: {failed} (logs in the report folder)")


def _check(children: list[Child], replayer: Replayer) -> None:
    for child in children:
        code = child.exited()
        if code is not None:
            raise DemoError(f"the {child.name} exited with code {code}; last lines of "
                            f"{child.log_file}:\n{child.log_tail()}")
    replayer.raise_error()


def _tick(watcher: Watcher, replayer: Replayer, display: LiveDisplay, report: Path, *,
          force: bool = False) -> Status:
    st = watcher.read(replayed=replayer.sent, replay_total=replayer.total,
                      replay_done=replayer.done)
    display.show(st, force=force)
    with (report / "status.jsonl").open("ab") as out:
        out.write(orjson.dumps({"ts": time.time(), **dataclasses.asdict(st)}) + b"\n")
    return st


def _watch(opts: DemoOptions, watcher: Watcher, replayer: Replayer, children: list[Child],
           display: LiveDisplay, report: Path) -> None:
    """Redraw until the trainer has read everything replayed (or fail on timeout)."""
    deadline = time.monotonic() + opts.timeout_s
    while True:
        _check(children, replayer)
        st = _tick(watcher, replayer, display, report)
        if st.caught_up:
            display.show(st, force=True)
            display.note(f"trainer caught up: {st.events_done:,.0f} events in "
                         f"{st.elapsed_s:.0f} s")
            return
        if time.monotonic() > deadline:
            raise DemoError(f"the trainer did not catch up within {opts.timeout_s:.0f}s "
                            f"(raise --timeout or lower --limit); see {children[0].log_file}")
        time.sleep(opts.refresh_s)  # display pacing, not a wait on Kafka


def _wait_for_scorer(opts: DemoOptions, watcher: Watcher, replayer: Replayer,
                     children: list[Child], display: LiveDisplay, report: Path,
                     timeout_s: float = 30.0) -> None:
    """Give the scorer time to load what the trainer published, so answers use it all."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _check(children, replayer)
        st = _tick(watcher, replayer, display, report)
        if st.scorer_items > 0 and st.scorer_items >= st.trainer_items:
            return
        time.sleep(opts.refresh_s)
    display.note(f"the scorer has not loaded every item after {timeout_s:.0f}s; asking anyway")


def ask_scorer(kafka: KafkaConfig, inp: DemoInput, opts: DemoOptions,
               timeout_s: float = 20.0) -> list[Shown]:
    """Top-k with explanations for the most active recent users and one unknown user."""
    users = [*inp.active_users(opts.show_users), f"newcomer-{uuid.uuid4().hex[:6]}"]
    requests = [ScoreRequest(request_id=uuid.uuid4().hex, user_id=u, k=opts.k, explain=True)
                for u in users]
    with ScoreClient(kafka, client_id=f"{kafka.topics.prefix}demo-client") as client:
        client.send_many(requests)
        answers = client.wait([r.request_id for r in requests], timeout_s)
    return [Shown(user_id=r.user_id, recent=list(reversed(inp.recent.get(r.user_id, ()))),
                  prediction=answers.get(r.request_id)) for r in requests]


def _show_predictions(display: LiveDisplay, shown: list[Shown], inp: DemoInput,
                      report: Path) -> None:
    display.note("\npredictions (scorer over Kafka: score-requests → predictions)")
    with (report / "predictions.jsonl").open("ab") as out:
        for s in shown:
            display.note(prediction_text(s, inp.titles) + "\n")
            if s.prediction is not None:
                out.write(orjson.dumps(dataclasses.asdict(s.prediction)) + b"\n")
    missing = [s.user_id for s in shown if s.prediction is None]
    if missing:
        raise DemoError(f"no prediction arrived for users {missing}; see the scorer log")


def _save_pages(watcher: Watcher, report: Path) -> None:
    """The last /metrics pages: the report plots the per-event freshness from them."""
    for name, url in (("trainer", watcher.trainer_url), ("scorer", watcher.scorer_url)):
        page = scrape.fetch(url) if url else None
        if page is not None:  # whole or not at all: the report parses it
            tmp = report / f"{name}-metrics.prom.tmp"
            tmp.write_text(page)
            tmp.replace(report / f"{name}-metrics.prom")


def _finish(display: LiveDisplay, report: Path, status: Status, wall_s: float,
            inp: DemoInput) -> None:
    from stream_app.report import build_report, load_stats, summary

    (report / "run.json").write_bytes(orjson.dumps({
        "k": int(status.k) if status.k.isdigit() else None, "input": inp.description,
        "events": len(inp.records), "wall_s": round(wall_s, 1)}))
    paths = build_report(report)
    last = summary(load_stats(report / "trainer-stats.jsonl"))
    display.note(f"HitRate@{status.k} over the last quarter of batches: model "
                 f"{last['hit_rate']:.3f} vs popularity {last['hit_rate_popularity']:.3f}; "
                 f"loss {last['loss']:.4f}")
    display.note(f"report: {', '.join(str(p) for p in paths)} (+ raw JSONL and logs in {report})")
    display.note(f"demo finished in {wall_s:.0f} s")
