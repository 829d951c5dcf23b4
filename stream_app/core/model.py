r"""Embedding tables and the scoring model.

    score(u, j) = x_u . v_j + b_j
    x_u = p_u + history_weight * sum_p decay^p v_{h_u[p]} / sum_p decay^p   (serving vector)
    b_j = pop_weight * log sum_k w_k 2^((t_k - origin) / half_life)        (item bias)
    served score: score(u, j) + release_prior_j (see `release_prior`; not in the loss)

- p_u (dim,): the learned id vector of user u.
- h_u (L,): item rows the user touched, most recent first, -1 padded; valid
  entries are always a prefix (`compact_history`). It makes a click change the
  user's recommendations in the very next batch (item-to-item signal).
- b_j: log of the item's time-decayed popularity (weights w_k of its events),
  referenced to a fixed `origin` so it needs no update when time passes: decay
  is the same for every item, so ranking by b_j at any moment is ranking by
  decayed popularity at that moment. It is kept in float64 (its magnitude grows
  by ln 2 per half-life since origin).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from stream_app.core.config import LearnerConfig
from stream_app.core.optim import new_slots

HIST_DTYPE = torch.int32


class Table:
    """Rows of one entity: vec (rows, dim), optimiser slots, updates, and the entity's extras.

    Items hold `logpop` (rows,) float64 and `released` (rows,) float64 (release
    time in ms from events' `item_released_at`, NaN = unknown); users hold
    `hist` (rows, L) int32, item rows (an item table past 2**31 rows does not
    fit in memory anyway). The other entity's extras stay empty: at 900K users
    and 100K items they took 29 MiB, and int64 histories another 69 MiB.
    """

    def __init__(self, config: LearnerConfig, device: torch.device, *, items: bool) -> None:
        self.config = config
        self.device = device
        self.items = items
        self.vec = torch.zeros(0, config.dim, device=device)
        self.slots = new_slots(config.optimizer, 0, config.dim, device)
        self.updates = torch.zeros(0, dtype=torch.int64, device=device)
        self.logpop = torch.zeros(0, dtype=torch.float64, device=device)
        self.released = torch.zeros(0, dtype=torch.float64, device=device)
        self.hist = torch.zeros(0, config.recent_items, dtype=HIST_DTYPE, device=device)

    def __len__(self) -> int:
        return self.vec.shape[0]

    def ensure(self, rows: int) -> None:
        """Grow every tensor of the entity to at least `rows` rows (new rows are blank)."""
        old = len(self)
        if rows <= old:
            return
        extra, device = rows - old, self.device
        self.vec = torch.cat([self.vec, torch.zeros(extra, self.config.dim, device=device)])
        fresh = new_slots(self.config.optimizer, extra, self.config.dim, device)
        self.slots = {k: torch.cat([v, fresh[k]]) for k, v in self.slots.items()}
        self.updates = torch.cat([self.updates, torch.zeros(extra, dtype=torch.int64,
                                                            device=device)])
        if self.items:
            self.logpop = torch.cat([self.logpop, torch.full(
                (extra,), float("-inf"), dtype=torch.float64, device=device)])
            self.released = torch.cat([self.released, torch.full(
                (extra,), float("nan"), dtype=torch.float64, device=device)])
        else:
            self.hist = torch.cat([self.hist, torch.full(
                (extra, self.config.recent_items), -1, dtype=HIST_DTYPE, device=device)])

    def history(self, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows), L) item rows of these users (-1 = none), in int64: callers index
        with them (gather, scatter, searchsorted), which want int64 on every device."""
        return self.hist.index_select(0, rows).long()

    def reset_rows(self, rows: torch.Tensor, generator: torch.Generator | None) -> None:
        """Fresh state for (re)used rows: random vec (zero for users), zero slots."""
        if rows.numel() == 0:
            return
        if self.items and generator is not None:
            init = torch.randn(len(rows), self.config.dim, generator=generator,
                               device=generator.device) * self.config.init_std
            self.vec[rows] = init.to(self.device)
        else:
            self.vec[rows] = 0.0
        for v in self.slots.values():
            v[rows] = 0
        self.updates[rows] = 0
        if self.items:
            self.logpop[rows] = float("-inf")
            self.released[rows] = float("nan")
        else:
            self.hist[rows] = -1

    def take_rows(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Copies of every tensor's `rows`, for `put_rows` to write back (a step that
        cleared them and was then not applied)."""
        out = {"vec": self.vec[rows], "updates": self.updates[rows]}
        out.update({f"slot.{k}": v[rows] for k, v in self.slots.items()})
        if self.items:
            out.update(logpop=self.logpop[rows], released=self.released[rows])
        else:
            out["hist"] = self.hist[rows]
        return out

    def put_rows(self, rows: torch.Tensor, saved: dict[str, torch.Tensor]) -> None:
        for name, value in saved.items():
            if name.startswith("slot."):
                self.slots[name.removeprefix("slot.")][rows] = value
            else:
                getattr(self, name)[rows] = value

    def state(self) -> dict[str, Any]:
        """Copies of the tensors in host memory, for `Learner.state_dict`: a snapshot is
        written by a background thread while learning goes on, and copies kept on a GPU
        doubled the tables' device memory for the seconds the write takes."""
        def copy(t: torch.Tensor) -> torch.Tensor:
            return t.to("cpu", copy=True)

        return {"vec": copy(self.vec), "updates": copy(self.updates),
                "logpop": copy(self.logpop), "hist": copy(self.hist),
                "released": copy(self.released),
                "slots": {k: copy(v) for k, v in self.slots.items()}}

    def load_state(self, src: dict[str, Any]) -> None:
        """Take `state()`'s tensors; a snapshot from before the entity split (every
        table held every extra, histories in int64) loads too, its unused extras dropped."""
        self.vec, self.updates = src["vec"].to(self.device), src["updates"].to(self.device)
        self.slots = {k: v.to(self.device) for k, v in src["slots"].items()}
        blank = Table(self.config, self.device, items=self.items)
        if self.items:
            self.logpop = src["logpop"].to(self.device)
            self.released = src["released"].to(self.device)
            self.hist = blank.hist
        else:
            self.hist = src["hist"].to(self.device, HIST_DTYPE)
            self.logpop, self.released = blank.logpop, blank.released


def history_weights(config: LearnerConfig, device: torch.device) -> torch.Tensor:
    """(L,) positional weights decay**p of the recent items."""
    return config.recent_decay ** torch.arange(config.recent_items, device=device,
                                               dtype=torch.float32)


def serving(config: LearnerConfig, id_vecs: torch.Tensor, hist_vecs: torch.Tensor,
            hist_valid: torch.Tensor) -> torch.Tensor:
    """x_u = p_u + history_weight * decayed mean of recent item vectors.

    id_vecs: (n, d); hist_vecs: (n, L, d); hist_valid: (n, L) bool. Returns (n, d).
    """
    w = history_weights(config, id_vecs.device).unsqueeze(0) * hist_valid
    norm = w.sum(dim=1, keepdim=True).clamp(min=1e-12)
    # One (1, L) x (L, d) product per user: 4x faster than broadcast-multiply-sum on CPU.
    mean = torch.bmm(w.unsqueeze(1), hist_vecs).squeeze(1) / norm
    return id_vecs + config.history_weight * mean


def serving_vectors(config: LearnerConfig, users: Table, items: Table,
                    user_rows: torch.Tensor) -> torch.Tensor:
    """Serving vectors (n, d) of `user_rows` from the current tables (no grad)."""
    hist = users.history(user_rows)
    valid = hist >= 0
    hist_vecs = items.vec.index_select(0, hist.clamp(min=0).flatten()).view(
        *hist.shape, items.vec.shape[1])  # -1 cannot be inferred for no users
    return serving(config, users.vec.index_select(0, user_rows), hist_vecs, valid)


def release_prior(config: LearnerConfig, released: torch.Tensor,
                  now_ms: int | None) -> torch.Tensor:
    """release_boost where 0 <= now - released < release_window_ms, else 0: (rows,) float64.

    Added to served scores only. The horizon a recommendation serves is
    longer than the next batch the loss looks at: a film of the year keeps
    being watched for months after its first events, which its decayed
    popularity does not yet show (MovieLens: BENCHMARKS.md, Quality). In the
    loss the embeddings would learn to cancel it.
    """
    if now_ms is None or config.release_boost == 0:
        return torch.zeros_like(released)
    age = now_ms - released  # NaN (unknown) compares False
    recent = (age >= 0) & (age < config.release_window_ms)
    return recent.to(torch.float64) * config.release_boost


def served_bias(config: LearnerConfig, items: Table, now_ms: int | None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
    """Item bias as served, popularity plus the release prior, float64: all rows or `rows`."""
    logpop, released = items.logpop, items.released
    if rows is not None:
        logpop, released = logpop.index_select(0, rows), released.index_select(0, rows)
    # An item learned only from events of weight 0 has no popularity (-inf), and
    # pop_weight 0 times that was NaN: kept -inf, as `_item_bias` and the sampler do.
    pop = torch.where(torch.isinf(logpop), logpop, config.pop_weight * logpop)
    return pop + release_prior(config, released, now_ms)


def release_flips(config: LearnerConfig, released: torch.Tensor, before_ms: int | None,
                  now_ms: int) -> torch.Tensor:
    """Rows whose release prior changed as event time went from `before_ms` to `now_ms`."""
    if before_ms is None or config.release_boost == 0 or now_ms <= before_ms:
        return torch.zeros(0, dtype=torch.int64, device=released.device)
    starts, ends = released, released + config.release_window_ms
    flipped = ((starts > before_ms) & (starts <= now_ms)) | ((ends > before_ms) & (ends <= now_ms))
    return torch.nonzero(flipped).flatten()


def decayed_log_weight(config: LearnerConfig, ts: torch.Tensor, weights: torch.Tensor,
                       origin_ms: int) -> torch.Tensor:
    """log(w_k) + (t_k - origin) ln2 / half_life, float64 (B,): one event's log contribution."""
    rate = math.log(2.0) / config.popularity_half_life_ms
    return weights.to(torch.float64).log() + (ts - origin_ms).to(torch.float64) * rate


def add_popularity(logpop: torch.Tensor, rows: torch.Tensor, contrib: torch.Tensor) -> torch.Tensor:
    """New logpop (copy) after adding the batch's contributions: scatter-logsumexp.

    logpop: (rows,) float64; rows: (B,) item rows; contrib: (B,) float64.
    """
    out = logpop.clone()
    peak = out.scatter_reduce(0, rows, contrib, reduce="amax", include_self=True)
    m = peak.index_select(0, rows)
    summed = torch.zeros_like(out)
    summed.index_add_(0, rows, (contrib - m).exp())
    touched = torch.unique(rows)
    base = torch.where(torch.isinf(out[touched]), torch.zeros_like(out[touched]),
                       (out[touched] - peak[touched]).exp())
    out[touched] = peak[touched] + (base + summed[touched]).log()
    return out


def push_history(hist: torch.Tensor, user_rows: torch.Tensor, item_rows: torch.Tensor,
                 order_key: torch.Tensor) -> None:
    """Prepend each user's new items (newest first) to `hist`, keeping the first L.

    hist: (rows, L) in place, of any integer type (item rows are cast to it);
    user_rows, item_rows, order_key: (B,) with larger key = more recent (event
    time, then position in the batch).
    """
    if user_rows.numel() == 0:
        return
    length = hist.shape[1]
    order = torch.argsort(order_key, stable=True)
    order = order[torch.argsort(user_rows[order], stable=True)]
    u, it = user_rows[order], item_rows[order]
    uniq, inverse, counts = torch.unique_consecutive(u, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0) - 1
    from_end = ends[inverse] - torch.arange(len(u), device=u.device)  # 0 = newest
    new = torch.full((len(uniq), length), -1, dtype=hist.dtype, device=hist.device)
    keep = from_end < length
    new[inverse[keep], from_end[keep]] = it[keep].to(hist.dtype)
    old = hist.index_select(0, uniq)
    pos = torch.arange(length, device=hist.device).unsqueeze(0) - counts.unsqueeze(1)
    shifted = old.gather(1, pos.clamp(min=0))
    hist[uniq] = torch.where(pos >= 0, shifted, new)


def compact_history(hist: torch.Tensor,
                    removed_items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop `removed_items` from every history, keeping valid entries a prefix (in place).

    Returns the user rows whose history changed (their published rows list
    the removed items, so they must be published again) and those histories
    as they were (a step that is not applied puts them back).
    """
    affected = torch.zeros(0, dtype=torch.int64, device=hist.device)
    if removed_items.numel() == 0:
        return affected, hist[affected]
    hit = torch.isin(hist, removed_items)
    affected = torch.nonzero(hit.any(dim=1)).flatten()
    before = hist[affected]
    if affected.numel() == 0:
        return affected, before
    sub = torch.where(hit[affected], torch.full_like(before, -1), before)
    length = hist.shape[1]
    key = (sub < 0).to(torch.int64) * length + torch.arange(length, device=hist.device)
    hist[affected] = sub.gather(1, torch.argsort(key, dim=1))
    return affected, before

