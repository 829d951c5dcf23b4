"""`LearnerConfig`: every knob of the learning core, frozen and checked once.

Frozen so no component can change a setting another one already read; checked
in `__post_init__` so a bad value fails before the first event, with a message
that names the field and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

OptimizerName = Literal["adagrad", "adam"]
NegativesMode = Literal["in_batch", "sampled", "mixed"]

DAY_MS = 86_400_000
DIM_MAX = 4096
RECENT_ITEMS_MAX = 1000
"""The embedding schema's `dim` maximum and `recent_items` maxItems: a row past them
is refused by every reader, the trainer's own restore included (a unit test
holds these to schemas/embedding.v1.json)."""
SEED_MAX = 2**32 - 1
"""Seeds derived from it (`seed * 1_000_003 + step`) must fit a generator's 64 bits."""
REPLAY_CAPACITY_MAX = 100_000_000
"""The replay buffer is allocated whole at start (about 20 bytes a slot): past this a
typo became a traceback or an out-of-memory kill instead of a configuration error."""


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"learner.{name} must be > 0, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"learner.{name} must be >= 0, got {value!r}")


STEP_MAX = 1e3
"""Largest `lr` and `init_std`: Adagrad and Adam move a row by about `lr` a step, and new
items start at about `init_std`. Far past it (1e39 passed) the float32 rows became
inf or NaN: applied, the changelog refused them; at the start, every batch with a new
item was non-finite and dead-lettered, for good."""
WEIGHT_MAX = 1e6
"""Largest loss and score weight (clicks, purchases, history, popularity, release boost,
lr decay). Far past it a typo raised (purchase_weight 1e100: "invalid multinomial
distribution") or made every loss non-finite (history_weight 1e30), every event
dead-lettered; at the bound, learning was checked to stay finite."""
TIME_MS_MAX = 1000 * 365 * DAY_MS
"""Largest event-time span (1,000 years): 10**20 ms raised OverflowError in the model."""
EVAL_K_MAX = 10_000
NEGATIVES_MAX = 100_000
"""Largest sampled or in-batch negative count: 10**9 was an out-of-memory kill."""
EPS_MIN = 1e-30
"""Smallest optimiser `eps`: float32 (the tables' type) holds it, well above its
smallest normal number (1.2e-38); below ~1.4e-45 it rounds to 0."""

@dataclass(frozen=True, slots=True, kw_only=True)
class LearnerConfig:
    """Settings of `Learner`; all times are *event* time in milliseconds.

    Defaults are the values tuned on the MovieLens temporal split
    (`bench/quality_offline.py`).

    >>> LearnerConfig(dim=32).dim
    32
    >>> LearnerConfig(dim=0)
    Traceback (most recent call last):
    ...
    ValueError: learner.dim must be > 0, got 0
    """

    # Model shape.
    dim: int = 64
    init_std: float = 0.05
    # Optimiser: row-wise Adagrad touches only the rows of the batch.
    optimizer: OptimizerName = "adagrad"
    lr: float = 0.05
    warmup_steps: int = 0
    lr_decay: float = 0.0  # lr_t = lr * warmup(t) / (1 + lr_decay * t)
    grad_clip: float = 0.0  # global L2 norm of the gradient before the optimiser; 0 = off
    # (Adagrad and Adam rescale by the gradient's own size, so it bounds the step little)
    accumulate_steps: int = 1  # apply cached gradients every N steps (the trainer: and at commit)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    # Loss: weighted sampled softmax with log-Q correction.
    click_weight: float = 1.0
    purchase_weight: float = 4.0
    negatives: NegativesMode = "mixed"
    num_sampled_negatives: int = 256
    max_in_batch_negatives: int = 2048  # cap on in-batch negatives: step cost O(B * cap)
    negative_pop_exponent: float = 0.75  # q_j ∝ popularity_j ** exponent
    # Serving vector: id vector + decayed mean of recent item vectors.
    recent_items: int = 20
    recent_decay: float = 0.9  # weight of the p-th most recent item: decay**p
    history_weight: float = 1.0
    # Item bias = pop_weight * log(decayed popularity in event time).
    popularity_half_life_ms: int = 7 * DAY_MS
    pop_weight: float = 1.0
    # Served score only (never the training loss): + release_boost for items
    # whose events said they were released in the last release_window_ms of
    # event time. Both chosen on MovieLens' nested split, each setting's recall the
    # mean of three seeds (BENCHMARKS.md); one seed picked 730 days or 365 by step size.
    release_boost: float = 1.0
    release_window_ms: int = 365 * DAY_MS
    # Replay against forgetting.
    replay_ratio: float = 1.0  # replayed events per fresh event in a batch
    replay_capacity: int = 100_000
    # Vocabulary.
    admission_threshold: int = 1  # events before an id gets its own row
    idle_ttl_ms: int = 0  # evict rows idle this long in event time; 0 = never
    max_users: int = 1_000_000
    max_items: int = 1_000_000
    # Guards.
    rate_cap_events: int = 0  # max events per user per window; 0 = off
    rate_cap_window_ms: int = 60_000  # tumbling, in event time; an event over 60 windows
    # older than the learner's clock counts in the window 60 back (guards.screen)
    dedup_window: int = 100_000  # remember this many event ids
    max_time_jump_ms: int = 30 * DAY_MS  # refuse a few events this far ahead of the rest
    # of their step and of the clock (guards.far_ahead); 0 = off
    # Evaluation.
    eval_k: int = 20
    eval_max_items: int = 200_000  # rank exactly up to here, else sample this many
    eval_max_events: int = 1024  # evaluate an evenly spaced subset of larger batches
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("dim", "accumulate_steps", "recent_items", "replay_capacity",
                     "admission_threshold", "max_users", "max_items", "dedup_window",
                     "eval_k", "eval_max_items", "eval_max_events", "rate_cap_window_ms",
                     "popularity_half_life_ms", "release_window_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"learner.{name} must be > 0, got {value!r}")
        for name in ("lr", "init_std", "eps"):
            _positive(name, getattr(self, name))
        if self.eps < EPS_MIN:  # float32 rounds it to 0: a zero row's first step is 0/0 = NaN
            raise ValueError(f"learner.eps must be at least {EPS_MIN:g} (float32 rounds a "
                             f"smaller one to 0), got {self.eps!r}")
        for name in ("lr_decay", "grad_clip", "click_weight", "purchase_weight",
                     "negative_pop_exponent", "history_weight", "pop_weight",
                     "replay_ratio", "release_boost"):
            _non_negative(name, getattr(self, name))
        for name in ("warmup_steps", "idle_ttl_ms", "rate_cap_events", "num_sampled_negatives",
                     "max_in_batch_negatives", "seed", "max_time_jump_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"learner.{name} must be >= 0, got {getattr(self, name)!r}")
        for name, top in (("dim", DIM_MAX), ("recent_items", RECENT_ITEMS_MAX),
                          ("seed", SEED_MAX), ("replay_capacity", REPLAY_CAPACITY_MAX),
                          ("lr", STEP_MAX), ("init_std", STEP_MAX),
                          ("click_weight", WEIGHT_MAX), ("purchase_weight", WEIGHT_MAX),
                          ("history_weight", WEIGHT_MAX), ("pop_weight", WEIGHT_MAX),
                          ("release_boost", WEIGHT_MAX), ("lr_decay", WEIGHT_MAX),
                          ("replay_ratio", 100), ("negative_pop_exponent", 10),
                          ("eval_k", EVAL_K_MAX), ("num_sampled_negatives", NEGATIVES_MAX),
                          ("max_in_batch_negatives", NEGATIVES_MAX),
                          *((name, TIME_MS_MAX) for name in (
                              "idle_ttl_ms", "rate_cap_window_ms", "popularity_half_life_ms",
                              "release_window_ms", "max_time_jump_ms"))):
            if getattr(self, name) > top:
                raise ValueError(f"learner.{name} must be at most {top}, got "
                                 f"{getattr(self, name)!r}")
        if self.optimizer not in ("adagrad", "adam"):
            raise ValueError(
                f"learner.optimizer must be 'adagrad' or 'adam', got {self.optimizer!r}")
        if self.negatives not in ("in_batch", "sampled", "mixed"):
            raise ValueError("learner.negatives must be 'in_batch', 'sampled' or 'mixed', "
                             f"got {self.negatives!r}")
        if self.negatives != "in_batch" and self.num_sampled_negatives == 0:
            raise ValueError(f"learner.num_sampled_negatives must be > 0 when "
                             f"negatives={self.negatives!r}; set it or use 'in_batch'")
        if self.negatives != "sampled" and self.max_in_batch_negatives == 0:
            raise ValueError(f"learner.max_in_batch_negatives must be > 0 when "
                             f"negatives={self.negatives!r}; set it or use 'sampled'")
        if self.click_weight == 0 and self.purchase_weight == 0:
            raise ValueError("learner.click_weight and purchase_weight are both 0; "
                             "set at least one > 0")
        if not 0.0 <= self.recent_decay <= 1.0:
            raise ValueError(f"learner.recent_decay must be in [0, 1], got {self.recent_decay!r}")
        b1, b2 = self.adam_betas
        # A beta that float32 rounds to 1 makes Adam's bias correction 1 - b**t zero in the
        # row slots (float32): 0/0, NaN rows. 1 - 2**-25 is the first value that rounds up.
        if not (0.0 <= b1 < 1.0 - 2**-25 and 0.0 <= b2 < 1.0 - 2**-25):
            raise ValueError(f"learner.adam_betas must be in [0, 1), and below 1 in float32 "
                             f"(at most 0.99999994), got {self.adam_betas!r}")
