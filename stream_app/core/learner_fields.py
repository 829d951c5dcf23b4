"""`LearnerFields`: the attributes `Learner.__init__` owns, declared once for its mixins.

`LearnerOps` (tensor code), `LearnerState` (rows and restore) and
`LearnerSnapshot` (global state, full snapshot) are typed against this base,
so each sees every field and the `_resolve_deferred` / `_purge_forgotten`
hooks without repeating the declarations.
"""

from __future__ import annotations

import torch

from stream_app.core import model as m
from stream_app.core.config import LearnerConfig
from stream_app.core.guards import Deduplicator, RateLimiter
from stream_app.core.optim import GradAccumulator
from stream_app.core.replay_buffer import ReplayBuffer
from stream_app.core.vocab import Vocab


class LearnerFields:
    config: LearnerConfig
    device: torch.device
    seed: int
    _gen: torch.Generator
    _users: m.Table
    _items: m.Table
    _user_vocab: Vocab
    _item_vocab: Vocab
    _accum: GradAccumulator
    _dedup: Deduplicator
    _rate: RateLimiter
    _replay: ReplayBuffer
    _step: int
    _applied_steps: int
    _origin_ms: int | None
    _watermark_ms: int | None
    _deferred: dict[int, tuple[str, ...]]
    _forgotten: set[str]
    _tombstoned: set[str]
    _foreign: set[str]
    _restore_evicted: tuple[list[str], list[str]]  # (users, items) a restore evicted
    _restore_stale: list[str]  # users a restore left with fewer recent items than published
    _forget_requests: int

    def _resolve_deferred(self) -> None:  # implemented by Learner
        raise NotImplementedError

    def _purge_forgotten(self) -> None:  # implemented by LearnerState
        raise NotImplementedError
