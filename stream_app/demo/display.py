"""What the demo prints: a live status block, then readable predictions.

On a terminal the status block is redrawn in place with ANSI cursor moves; in
a log or a pipe (CI, `| tee`) it becomes one plain line every few seconds, so
the output stays readable there too. Everything goes to the stream passed in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

from stream_app.demo.watch import Status
from stream_app.events import Prediction


def _f(value: float | None, fmt: str, unit: str = "") -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:{fmt}}{unit}"


def _ms(seconds: float) -> str:
    """Milliseconds, or seconds from 10 s on (a backlog's freshness is minutes).

    >>> _ms(0.0123), _ms(82.75)
    ('12.3 ms', '82.8 s')
    """
    if seconds >= 10:
        return _f(seconds, ",.1f", " s")
    return _f(seconds * 1000 if not math.isnan(seconds) else math.nan, ",.1f", " ms")


def status_lines(st: Status) -> list[str]:
    """The status block, one metric per line (plain text, no escapes).

    Freshness is produce → published: at full-speed replay it mostly measures
    how far behind the trainer runs, which is the point of showing it beside lag.
    """
    replay = "done" if st.replay_done else "running"
    procs = f"trainer {'up' if st.trainer_up else 'starting'}, " \
            f"scorer {'up' if st.scorer_up else 'starting'}"
    return [
        f"  elapsed            {st.elapsed_s:6.0f} s      ({procs})",
        f"  events replayed    {st.replayed:>12,} / {st.replay_total:,}  ({replay})",
        f"  events processed   {st.events_done:>12,.0f}   {_f(st.trained_per_s, ',.0f', ' /s')}",
        f"  training loss      {_f(st.loss, '12.4f')}",
        f"  HitRate@{st.k:<3}        model {_f(st.hit_rate, '.3f')}   "
        f"popularity {_f(st.hit_rate_popularity, '.3f')}   (prequential, last batch)",
        f"  consumer lag       {_f(st.lag, '12,.0f')} messages",
        f"  freshness p99      {_ms(st.freshness_p99_s):>15}   (produced → embedding published)",
        f"  scorer p99         {_ms(st.scorer_p99_s):>15}   "
        f"({_f(st.scorer_requests, ',.0f')} requests)",
    ]


def one_line(st: Status) -> str:
    """The status as a single log line (non-TTY output)."""
    return (f"[{st.elapsed_s:5.0f}s] replayed={st.replayed} processed={st.events_done:.0f} "
            f"rate={_f(st.trained_per_s, '.0f')}/s loss={_f(st.loss, '.4f')} "
            f"hit@{st.k}={_f(st.hit_rate, '.3f')} pop={_f(st.hit_rate_popularity, '.3f')} "
            f"lag={_f(st.lag, '.0f')} fresh_p99={_ms(st.freshness_p99_s)} "
            f"scorer_p99={_ms(st.scorer_p99_s)}")


class LiveDisplay:
    """Redraws the status block in place (TTY) or logs a line every `plain_every_s`."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None,
                 plain_every_s: float = 5.0) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self._drawn = 0
        self._plain_every_s = plain_every_s
        self._last_plain = -math.inf

    def show(self, st: Status, *, force: bool = False) -> None:
        if not self.tty:
            now = time.monotonic()
            if force or now - self._last_plain >= self._plain_every_s:
                self._last_plain = now
                self.stream.write(one_line(st) + "\n")
                self.stream.flush()
            return
        lines = status_lines(st)
        # Move up over the previous block and clear each line before rewriting it.
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.stream.flush()
        self._drawn = len(lines)

    def note(self, text: str) -> None:
        """A message between redraws: it stays above the status block."""
        self._drawn = 0
        self.stream.write(text + "\n")
        self.stream.flush()


@dataclass(frozen=True, slots=True, kw_only=True)
class Shown:
    """One answered request as the demo prints it."""

    user_id: str
    recent: Sequence[str]
    prediction: Prediction | None


def prediction_text(shown: Shown, titles: Mapping[str, str]) -> str:
    """Readable top-K: titles, scores, the user's recent items, "because you watched"."""
    def name(item: str) -> str:
        return titles.get(item, f"item {item}")

    head = f"user {shown.user_id}"
    if shown.recent:
        head += " — recently: " + "; ".join(name(i) for i in shown.recent)
    else:
        head += " — never seen by the model"
    p = shown.prediction
    if p is None:
        return head + "\n    (no answer from the scorer in time)"
    if p.error:
        return head + f"\n    error: {p.error}"
    how = "popularity fallback" if p.fallback else "personalised"
    lines = [head, f"    {how}, model {p.model_version}, {p.latency_ms:.1f} ms"
                   + ("" if p.ready else ", scorer still loading")]
    for rank, item in enumerate(p.items, 1):
        why = f"   because you watched {name(item.because[0])}" if item.because else ""
        lines.append(f"    {rank:2d}. {item.score:7.3f}  {name(item.item_id)}{why}")
    return "\n".join(lines)
