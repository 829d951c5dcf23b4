"""What librdkafka says, logged: client errors (`error_cb`) and its own log lines, each
kind at most once per REPEAT_WINDOW_S, with a count of the lines left out."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Hashable

from confluent_kafka import KafkaError

# The logger operators filtered on before this module was split out of `clients`.
log = logging.getLogger("stream_app.kafka.clients")

REPEAT_WINDOW_S = 30.0
"""A line of a kind said in the last this many seconds is counted, not said again."""


class Repeats:
    """Decides whether a line of a kind is said now: at most once per REPEAT_WINDOW_S.

    librdkafka retries transient errors itself and reports each retry: a minute of
    broker outage logged ~1,900 connection refusals from one trainer (operator
    walkthrough), burying what an operator reads the log for. One per client, so one
    client's lines hide no other's.

    >>> repeats = Repeats(clock=iter([0.0, 1.0, 2.0, 40.0, 41.0]).__next__)
    >>> [repeats.admit("refused") for _ in range(4)] + [repeats.admit("fatal", always=True)]
    ['', None, None, ' (and 2 more like it since 40s ago)', '']
    """

    MAX_KINDS = 1_000  # kinds are few in practice; a flood of distinct ones starts over

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._said: dict[Hashable, tuple[float, int]] = {}  # kind -> (when said, left out)
        self._lock = threading.Lock()  # callbacks of one client may come from two threads

    def admit(self, kind: Hashable, *, always: bool = False) -> str | None:
        """None: leave the line out. Else the suffix to say after it (how many were left
        out since it was last said), "" when none were."""
        with self._lock:
            now = self._clock()
            said_at, left_out = self._said.get(kind, (-REPEAT_WINDOW_S, 0))
            if not always and now - said_at < REPEAT_WINDOW_S:
                self._said[kind] = (said_at, left_out + 1)
                return None
            if len(self._said) >= self.MAX_KINDS:
                self._said.clear()
            self._said[kind] = (now, 0)
        return f" (and {left_out} more like it since {now - said_at:.0f}s ago)" if left_out else ""


class ErrorLog:
    """Logs client errors (`error_cb`), a non-fatal code at most once per REPEAT_WINDOW_S.

    >>> said = []
    >>> errors = ErrorLog("c1", say=said.append, clock=iter([0.0, 1.0, 2.0, 40.0]).__next__)
    >>> for _ in range(4):
    ...     errors(KafkaError(KafkaError._TRANSPORT, "Connection refused"))
    >>> [s.split(" reason=")[1] for s in said]
    ['Connection refused', 'Connection refused (and 2 more like it since 40s ago)']
    """

    def __init__(self, client_id: str, say: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client_id = client_id
        self._say = say or log.warning
        self._repeats = Repeats(clock)

    def __call__(self, err: KafkaError) -> None:
        more = self._repeats.admit(err.code(), always=err.fatal())
        if more is not None:
            self._say(f"kafka error client={self._client_id} code={err.name()} "
                      f"fatal={err.fatal()} reason={err.str()}{more}")


_NUMBERS = re.compile(r"\d+")

librdkafka_log = logging.getLogger("stream_app.librdkafka")


class ClientLog:
    """librdkafka's own log lines (confluent-kafka's `logger`), throttled as ErrorLog's.

    Left to librdkafka, they went to stderr unthrottled: a trainer logged 1,400 lines
    a minute while its broker was down (a reconnect every 100 ms per client), beside
    ErrorLog's one line per 30 s that already said so. Lines of a kind differ in numbers
    only (ports, milliseconds); debug lines (`-X debug=...`, seen with --log-level
    DEBUG) are asked for and all said. confluent-kafka hands them over from the
    client's poll() and queues them until then, so a client given one must be polled
    while idle too, as the trainer's and scorer's are; one a program may leave idle
    (`ScoreClient`'s) passes `logger=None` and keeps librdkafka's stderr lines.

    >>> said = []
    >>> lines = ClientLog(say=lambda level, line: said.append(line),
    ...                   clock=iter([0.0, 1.0, 40.0]).__next__)
    >>> for ms in (0, 1, 2):
    ...     lines.log(logging.ERROR, "%s [%s] %s", "FAIL", "c1#consumer-1",
    ...               f"Connect failed (after {ms}ms in state CONNECT)")
    >>> lines.log(logging.DEBUG, "%s [%s] %s", "FETCH", "c1#consumer-1", "asked for")
    >>> said  # doctest: +NORMALIZE_WHITESPACE
    ['librdkafka FAIL [c1#consumer-1] Connect failed (after 0ms in state CONNECT)',
     'librdkafka FAIL [c1#consumer-1] Connect failed (after 2ms in state CONNECT)
      (and 1 more like it since 40s ago)',
     'librdkafka FETCH [c1#consumer-1] asked for']
    """

    def __init__(self, say: Callable[[int, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._say = say or librdkafka_log.log
        self._repeats = Repeats(clock)

    def log(self, level: int, msg: str, *args: object) -> None:
        line = msg % args if args else msg
        more = "" if level <= logging.DEBUG else self._repeats.admit(
            (level, _NUMBERS.sub("#", line)))
        if more is not None:
            self._say(level, f"librdkafka {line}{more}")
