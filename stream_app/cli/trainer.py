"""`trainer` and `forget`: run a trainer, or ask the running trainers to delete a user."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from stream_app.cli.common import component_args, kafka_args, kafka_config, utf8_text
from stream_app.config_load import environment, parse_kv, read_file

if TYPE_CHECKING:
    from stream_app.core import LearnerConfig


def add_commands(sub: Any) -> None:
    p = sub.add_parser("trainer", help="learn embeddings from clicks/purchases (exactly-once)")
    component_args(p, 9464)
    p.add_argument("--instance-id", help="stable id of this trainer; names its transactional.id")
    p.add_argument("--batch-max", type=int,
                   help="max events per poll, which is one transaction (default 10000)")
    p.add_argument("--step-max", type=int,
                   help="max events per learning step; a batch is learned in steps (2000)")
    p.add_argument("--batch-wait-ms", type=int,
                   help="max wait to fill a micro-batch, and for a partition behind in event "
                        "time (200)")
    p.add_argument("--restore", action=argparse.BooleanOptionalAction, default=None,
                   help="rebuild the model from the embeddings changelog at start (default; "
                   "--no-restore starts from an empty model, for a lone trainer: an aborted "
                   "transaction still restores the changelog, and partitions it takes over "
                   "in a group are not restored)")
    p.add_argument("--threads", type=int,
                   help="torch threads for learning (default: torch's, one per core)")
    p.add_argument("--stats-file", help="append one JSON line per batch (for `stream-app report`)")
    p.add_argument("--snapshot-dir", metavar="DIR",
                   help="keep a local snapshot of the model here, so a restart reads only "
                        "the changelog written since (default: off)")
    p.add_argument("--snapshot-interval", dest="snapshot_interval_s", type=float,
                   metavar="SECONDS", help="seconds between snapshots (default 300)")
    p.add_argument("-L", dest="learner_settings", action="append", metavar="KEY=VALUE",
                   help="learner setting, e.g. -L dim=32 -L optimizer=adam")
    p.set_defaults(handler=_trainer)

    p = sub.add_parser("forget", help="delete a user from the model (tombstone published)")
    p.add_argument("user", type=utf8_text, help="user id")
    kafka_args(p)
    p.set_defaults(handler=_forget)


def _trainer(args: argparse.Namespace) -> int:
    from stream_app.config import default_group_id
    from stream_app.config_load import build
    from stream_app.core import LearnerConfig
    from stream_app.trainer import TrainerConfig, run_trainer

    file = read_file(args.config)
    flags = {k: getattr(args, k, None) for k in (
        "group_id", "device", "threads", "metrics_host", "metrics_port", "exit_when_idle",
        "instance_id", "batch_max", "step_max", "batch_wait_ms", "restore", "stats_file",
        "stall_timeout_s", "snapshot_dir", "snapshot_interval_s")}
    kafka = kafka_config(args, {"trainer": TrainerConfig, "learner": LearnerConfig})
    cfg = build(TrainerConfig, "trainer", file.get("trainer", {}), environment(), flags,
                derived={"group_id": default_group_id(kafka, "trainer")})
    return run_trainer(kafka, cfg, learner_config(args.learner_settings, file))


def learner_config(settings: list[str] | None, file: dict[str, Any]) -> LearnerConfig:
    """The learner's configuration from the file, `STREAM_APP_LEARNER_*` and `-L` pairs
    (also checked by `demo` before it starts anything)."""
    from stream_app.config_load import build
    from stream_app.core import LearnerConfig

    return build(LearnerConfig, "learner", file.get("learner", {}), environment(),
                 _typed(LearnerConfig, parse_kv(settings, "-L")))


def _typed(cls: Any, raw: dict[str, str]) -> dict[str, Any]:
    """Convert `-L key=value` strings with the same rules as the environment."""
    from stream_app.config_load import from_text

    return {k: from_text(cls, k, v, f"-L {k}") for k, v in raw.items()}


def _forget(args: argparse.Namespace) -> int:
    from stream_app.trainer.control import send_forget

    send_forget(kafka_config(args), args.user)
    print(f"forget request for user {args.user!r} sent; the trainer publishes a tombstone")
    return 0
