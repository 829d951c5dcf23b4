"""`stream-app` command line: argument parsing only; each command lives in its module.

Exit codes: 0 ok, 1 runtime failure, 2 configuration error (with what to fix),
75 try again later: no broker answered, or a process is stuck in what only a
restart cures (run it under a supervisor), and
128 + the signal for a one-shot command stopped by one: 130 Ctrl-C, 143 SIGTERM,
129 SIGHUP.

One module per role adds its subcommands: `tools` (broker, topics, replay,
generate), `trainer` (trainer, forget), `scorer` (scorer, request) and `demo`
(demo, report); `common` holds the flags they share.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from stream_app import __version__
from stream_app.cli import demo, scorer, tools, trainer
from stream_app.cli.common import Handler
from stream_app.config import ConfigError
from stream_app.signals import EXIT_STALLED, interrupt_on_termination, interrupted_status

log = logging.getLogger(__name__)

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """Reports a flag no command knows with that command's usage.

    argparse leaves a subcommand's unknown flags to the top-level parser, whose
    error shows the list of commands: `stream-app replay --limt 3` would not say
    which flags `replay` takes.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            command = self.commands.get(getattr(parsed, "command", None) or "", self)
            command.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stream-app", description="Learn recommendation embeddings from Kafka click and "
        "purchase events, and serve top-K predictions from the freshest model.")
    parser.add_argument("--version", action="version", version=f"stream-app {__version__}")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (tools, trainer, scorer, demo):
        module.add_commands(sub)
    parser.commands = dict(sub.choices)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from stream_app.kafka.exceptions import (
        BrokerError,
        BrokerUnavailable,
        ChangelogError,
        ConfigConflictError,
        KafkaEdgeError,
        TopicError,
    )
    from stream_app.sources.records import SourceError

    try:
        handler: Handler = args.handler
        with interrupt_on_termination():
            return handler(args)
    except (ConfigError, ConfigConflictError) as exc:
        print(f"stream-app: configuration error: {exc}", file=sys.stderr)
        return 2
    except BrokerUnavailable as exc:  # the cluster is down or not there yet: try again
        print(f"stream-app: {exc}", file=sys.stderr)
        return EXIT_STALLED
    except (BrokerError, TopicError, ChangelogError) as exc:  # an operator must act first
        print(f"stream-app: {exc}", file=sys.stderr)
        return 2
    except SourceError as exc:
        from stream_app.replay import not_delivered

        lost = not_delivered(exc.dropped, exc.refused,
                             [exc.first_refusal] if exc.first_refusal else [], exc.expired)
        sent = "" if exc.sent is None else f" ({exc.sent} record(s) sent before it{lost})"
        print(f"stream-app: stopped reading the input{sent}: {exc}", file=sys.stderr)
        return 2
    except KafkaEdgeError as exc:  # delivery failures, a fenced producer (TopicError: above)
        log.debug("stopped", exc_info=True)
        print(f"stream-app: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        return interrupted_status(exc)
