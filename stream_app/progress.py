"""A small terminal progress line: count, rate, and a bar when the total is known.

Written to a stream the caller passes (stderr from the CLI), redrawn at most
`hz` times a second so it costs nothing on the hot path. A stream that is no
terminal (a log file, a pipe) gets the last line only, without cursor codes.
"""

from __future__ import annotations

import time
from typing import TextIO


class Progress:
    """Redraws `label  n/total  [#####.....]  rate/s  extra` in place.

    >>> import io
    >>> out = io.StringIO()
    >>> p = Progress("replay", total=10, stream=out, hz=0)
    >>> p.advance(10); p.close()
    >>> out.getvalue().startswith("replay  10/10"), out.getvalue().count(chr(10))
    (True, 1)
    """

    def __init__(self, label: str, *, total: int | None = None, stream: TextIO | None = None,
                 hz: float = 4.0) -> None:
        self.label = label
        self.total = total
        self.count = 0
        self.extra = ""
        self._stream = stream
        self._live = stream is not None and stream.isatty()
        self._interval = 1.0 / hz if hz > 0 else 0.0
        self._start: float | None = None  # the first advance: reading and sorting the
        self._last_draw = 0.0  # input before it (MovieLens: seconds) is no send time

    def advance(self, n: int = 1, extra: str | None = None) -> None:
        now = time.monotonic()
        if self._start is None:
            self._start = self._last_draw = now  # a rate over no time is not drawn
        self.count += n
        if extra is not None:
            self.extra = extra
        if self._live and now - self._last_draw >= self._interval:
            self._last_draw = now
            self._draw(now)

    def _rate(self, now: float) -> float:
        return 0.0 if self._start is None else self.count / max(now - self._start, 1e-9)

    def _draw(self, now: float, end: str = "\r") -> None:
        if self._stream is None:
            return
        rate = self._rate(now)
        if self.total:
            done = min(self.count / self.total, 1.0)
            bar = "#" * int(done * 30) + "." * (30 - int(done * 30))
            head = f"{self.label}  {self.count:,}/{self.total:,}  [{bar}] {done:4.0%}"
        else:
            head = f"{self.label}  {self.count:,}"
        line = f"{head}  {rate:,.0f}/s  {self.extra}"
        self._stream.write(f"\x1b[2K{line}{end}" if self._live else f"{line}{end}")
        self._stream.flush()

    def close(self) -> None:
        self._draw(time.monotonic(), end="\n")
