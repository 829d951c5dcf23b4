"""Result types of the core API: `StepStats` (learn) and `TopK` (recommend)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from stream_app.core.guards import Outcome


@dataclass(frozen=True, slots=True, kw_only=True)
class StepStats:
    """What one `Learner.learn` call did.

    - `outcomes[i]`: the fate of `events[i]`; all but APPLIED and DUPLICATE (a copy of
      an applied event) go to the DLQ.
    - `changed_*_ids`: rows whose published `EmbeddingRow` changed (publish them).
    - `evicted_*_ids`: rows freed by TTL / cap (publish tombstones).
    - `admitted_*`: ids given their own row by this step.
    - `applied_update`: False while gradients are being accumulated.
    - `n_trained`: events in the loss, replayed ones included; 0 when none was (all
      below the admission threshold or weighted 0), and `loss` then means nothing.
    - `timings`: seconds per phase (wall clock; not event time).
    """

    step: int
    loss: float
    n_applied: int
    outcomes: tuple[Outcome, ...]
    changed_user_ids: tuple[str, ...] = ()
    changed_item_ids: tuple[str, ...] = ()
    evicted_user_ids: tuple[str, ...] = ()
    evicted_item_ids: tuple[str, ...] = ()
    admitted_users: int = 0
    admitted_items: int = 0
    applied_update: bool = False
    n_replayed: int = 0
    n_trained: int = 0
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class TopK:
    """Top-k items per requested user, best first.

    `scores`: (n_users, k') float64 with k' = min(k, live items) — padded
    entries (fewer candidates than k') have score -inf and id "". `fallback[i]`
    is True when user i has no own row (cold-start row + popularity).
    """

    user_ids: tuple[str, ...]
    item_ids: tuple[tuple[str, ...], ...]
    scores: npt.NDArray[np.float64]
    fallback: tuple[bool, ...]
