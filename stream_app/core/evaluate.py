"""Prequential (test-then-train) metrics from the ranks of a batch's target items.

Both rankings leave out the user's recent items (the last `recent_items`), as
the scorer's default `exclude_seen` does, so the metrics describe the list a
user is actually shown; a target among those items is a miss. (Scored with
them in, the model lost to popularity on MovieLens, prequential HitRate@20
0.651 vs 0.662, by ranking items the user had just rated, which the scorer
never shows; without them it is 0.670 vs 0.668.)

Definitions (K = `eval_k`; rank 0 = best, ties share the average rank; a
target item with no row is a miss):
- HitRate@K: share of the batch's users with at least one target ranked < K.
- Recall@K: per user, share of their target events ranked < K; mean over users.
- MRR@K: mean over events of 1 / (rank + 1) if rank < K else 0.
The same functions score the model and the popularity baseline (bias alone), so
"model vs popularity" is a like-for-like comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True, kw_only=True)
class RankMetrics:
    """HitRate@K, Recall@K and MRR@K of one ranking over one batch."""

    hit_rate: float
    recall: float
    mrr: float


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalStats:
    """What `Learner.evaluate` reports for one batch, before learning from it.

    `loss` is the weighted full-softmax cross-entropy of the served scores
    (release prior included) over the ranked items;
    `exact` is False when ranks were estimated from a candidate sample.
    """

    n_events: int
    k: int
    model: RankMetrics
    popularity: RankMetrics
    loss: float
    exact: bool


def ranks_of_targets(scores: torch.Tensor, target_scores: torch.Tensor,
                     valid: torch.Tensor | None) -> torch.Tensor:
    """Rank of each target among valid items; ties count half (average rank).

    Items scoring above the target count 1, other items with the same score
    0.5, so a constant scorer does not look perfect. scores: (B, N) with the
    target among them; target_scores: (B,); valid: (N,) bool or None (all valid).
    Returns (B,) float64.

    >>> ranks_of_targets(torch.tensor([[2.0, 1.0, 1.0]]), torch.tensor([1.0]), None)
    tensor([1.5000], dtype=torch.float64)
    """
    t = target_scores.unsqueeze(1)
    # int32 counts: summing booleans into the default int64 takes twice as long.
    if valid is None:  # every item counts: skip the (B, N) mask
        above = (scores > t).sum(dim=1, dtype=torch.int32)
        ties = (scores == t).sum(dim=1, dtype=torch.int32)
    else:
        above = ((scores > t) & valid.unsqueeze(0)).sum(dim=1, dtype=torch.int32)
        ties = ((scores == t) & valid.unsqueeze(0)).sum(dim=1, dtype=torch.int32)
    return above.double() + 0.5 * (ties - 1).clamp(min=0).double()


def rank_metrics(ranks: torch.Tensor, user_idx: torch.Tensor, n_users: int, k: int) -> RankMetrics:
    """HitRate/Recall/MRR@k from per-event ranks.

    ranks: (B,) float or int (inf or >= k = miss); user_idx: (B,) dense user index.

    >>> r = rank_metrics(torch.tensor([0, 5, 30]), torch.tensor([0, 0, 1]), 2, k=20)
    >>> (r.hit_rate, r.recall, round(r.mrr, 4))
    (0.5, 0.5, 0.3889)
    """
    if len(ranks) == 0:
        return RankMetrics(hit_rate=0.0, recall=0.0, mrr=0.0)
    ranks = ranks.to(torch.float64)
    hit = (ranks < k).to(torch.float64)
    per_user_hits = torch.zeros(n_users, dtype=torch.float64, device=ranks.device)
    per_user_hits.index_add_(0, user_idx, hit)
    per_user_n = torch.zeros(n_users, dtype=torch.float64, device=ranks.device)
    per_user_n.index_add_(0, user_idx, torch.ones_like(hit))
    present = per_user_n > 0
    recall = (per_user_hits[present] / per_user_n[present]).mean()
    hit_rate = (per_user_hits[present] > 0).to(torch.float64).mean()
    mrr = torch.where(ranks < k, 1.0 / (ranks + 1.0), torch.zeros_like(ranks)).mean()
    return RankMetrics(hit_rate=float(hit_rate), recall=float(recall), mrr=float(mrr))
