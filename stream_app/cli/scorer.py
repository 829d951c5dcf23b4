"""`scorer` and `request`: serve top-K predictions, or ask the running scorer for one."""

from __future__ import annotations

import argparse
import math
from typing import Any

from stream_app.cli.common import component_args, kafka_args, kafka_config, utf8_text
from stream_app.config import ConfigError
from stream_app.config_load import environment, read_file


def add_commands(sub: Any) -> None:
    p = sub.add_parser("scorer", help="answer score-requests with top-K items on predictions")
    component_args(p, 9465)
    p.add_argument("--batch-max", type=int, help="most requests per micro-batch (default 256)")
    p.add_argument("--batch-wait-ms", type=float,
                   help="extra wait to fill a micro-batch, in ms (default 0: rank what "
                        "arrived while the previous batch was ranked)")
    p.add_argument("--threads", type=int,
                   help="torch threads for ranking (default: torch's, one per core)")
    p.set_defaults(handler=_scorer)

    p = sub.add_parser("request", help="ask the running scorer for a user's top-K items")
    p.add_argument("user", type=utf8_text, help="user id")
    p.add_argument("--k", type=int, default=20, help="how many items (default 20)")
    p.add_argument("--candidates", type=utf8_text,
                   help="comma-separated item ids to re-rank (default: all)")
    p.add_argument("--exclude", type=utf8_text, help="comma-separated item ids never to return")
    p.add_argument("--explain", action="store_true",
                   help="show which recent items of the user support each item")
    p.add_argument("--keep-seen", action="store_true",
                   help="may return items the user already interacted with (exclude_seen false)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for the answer (default 10; exit 1 after)")
    kafka_args(p)
    p.set_defaults(handler=_request)


def _ids(text: str | None, flag: str) -> tuple[str, ...] | None:
    """Comma-separated ids; a flag given with none (an empty shell variable) is an error:
    `--candidates ""` would rank no item at all."""
    if text is None:
        return None
    ids = tuple(i.strip() for i in text.split(",") if i.strip())
    if not ids:
        raise ConfigError(f"{flag} {text!r} lists no item ids; leave the flag out instead")
    return ids


def _scorer(args: argparse.Namespace) -> int:
    from stream_app.scorer import run_scorer
    from stream_app.serving import ScorerConfig

    flags = {"group_id": args.group_id, "device": args.device, "metrics_host": args.metrics_host,
             "metrics_port": args.metrics_port, "exit_when_idle": args.exit_when_idle,
             "batch_max": args.batch_max, "batch_wait_ms": args.batch_wait_ms,
             "threads": args.threads, "stall_timeout_s": args.stall_timeout_s}
    file_values = read_file(args.config).get("scorer", {})
    from stream_app.config import default_group_id
    from stream_app.config_load import build

    kafka = kafka_config(args, {"scorer": ScorerConfig})
    cfg = build(ScorerConfig, "scorer", file_values, environment(), flags,
                derived={"group_id": default_group_id(kafka, "scorer")})
    return run_scorer(kafka, cfg)


def _request(args: argparse.Namespace) -> int:
    from stream_app.client import request_command

    if not args.user:  # was "missing_key: record has no key"
        raise ConfigError("the user id is empty: give the id of the user to score for")
    if args.k < 1 or args.k > 1000:
        raise ConfigError(f"--k must be in 1..1000, got {args.k}")
    if not 0 < args.timeout < math.inf:  # NaN fails too
        raise ConfigError(f"--timeout must be > 0 seconds, got {args.timeout}")
    return request_command(kafka_config(args), args.user, k=args.k,
                           candidates=_ids(args.candidates, "--candidates"),
                           exclude=_ids(args.exclude, "--exclude") or (),
                           explain=args.explain, exclude_seen=not args.keep_seen,
                           timeout_s=args.timeout)
