"""Gradient step, evaluation and recommendation of `Learner` (tensor code only).

Split from `learner.py` so each file holds one concern; the attributes below
are owned and initialised by `Learner.__init__`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from stream_app.core import model as m
from stream_app.core.evaluate import EvalStats, RankMetrics, rank_metrics, ranks_of_targets
from stream_app.core.learner_fields import LearnerFields
from stream_app.core.loss import sampled_loss
from stream_app.core.optim import apply_update, clip_, learning_rate
from stream_app.core.sampler import batch_negatives, sample_negatives
from stream_app.core.stats import TopK
from stream_app.core.vocab import COLD_ROW
from stream_app.events import Event, EventKind

Grad = tuple[torch.Tensor, torch.Tensor]
_SCORE_BUDGET = 1 << 24  # elements of one (users x items) score block


class LearnerOps(LearnerFields):

    # ------------------------------------------------------------ gradient step
    def _gradients(self, u: torch.Tensor, i: torch.Tensor, w: torch.Tensor,
                   logpop: torch.Tensor) -> tuple[float, Grad, Grad] | None:
        """Loss and sparse gradients for events (u, i, w): (B,) rows and weights.

        Every event is scored with its user's serving vector as of the batch
        start, exactly what the scorer serves. (Training on per-event histories
        that include the batch's earlier events was tried: Recall@20 on the
        MovieLens split fell from 0.286 to 0.205.)
        Returns None if the loss or any gradient (or its square) is not finite.
        """
        cfg = self.config
        empty = (torch.zeros(0, dtype=torch.int64, device=self.device),
                 torch.zeros(0, cfg.dim, device=self.device))
        if u.numel() == 0:
            return 0.0, empty, empty
        uniq_u, u_inv = torch.unique(u, return_inverse=True)
        hist = self._users.history(uniq_u)
        if cfg.history_weight == 0:  # no history in x: its items get no gradient, and
            hist = torch.full_like(hist, -1)  # Adam would still move them by momentum
        elif cfg.recent_decay == 0:  # only the newest item has weight, the same for the rest
            hist[:, 1:] = -1
        valid = hist >= 0
        sampled = log_q_all = None
        if cfg.negatives != "in_batch":
            sampled, log_q_all = sample_negatives(logpop, cfg.num_sampled_negatives,
                                                  cfg.negative_pop_exponent, self._gen)
        n_in_batch = 0 if cfg.negatives == "sampled" else cfg.max_in_batch_negatives
        who, n_who = _distinct_users(u, u_inv, len(uniq_u))
        neg = batch_negatives(i, who, n_who, n_in_batch, sampled, log_q_all, self._gen)
        needed = torch.unique(torch.cat([i, neg.rows, hist[valid]]))
        p = self._users.vec.index_select(0, uniq_u).requires_grad_(True)
        v = self._items.vec.index_select(0, needed).requires_grad_(True)
        hist_vecs = v.index_select(0, torch.searchsorted(needed, hist.clamp(min=0)).flatten())
        x = m.serving(cfg, p, hist_vecs.view(*hist.shape, -1), valid).index_select(0, u_inv)
        pop = cfg.pop_weight * logpop
        pos_off = pop.index_select(0, i) - neg.pos_log_q
        neg_off = pop.index_select(0, neg.rows) - neg.log_q
        # A common shift leaves the softmax unchanged and keeps float32 logits small.
        shift = torch.maximum(pos_off.max(), neg_off.max())
        loss, _ = sampled_loss(
            x, v.index_select(0, torch.searchsorted(needed, i)), (pos_off - shift).float(),
            v.index_select(0, torch.searchsorted(needed, neg.rows)), (neg_off - shift).float(),
            neg.accidental, w)
        loss.backward()  # type: ignore[no-untyped-call]
        assert p.grad is not None and v.grad is not None  # noqa: S101
        # Squared, as the optimisers accumulate them: a gradient over ~1.8e19 (a model
        # taken far off by a huge lr) is finite, but its square would put inf in the
        # optimiser state, which no row can carry to the changelog (the trainer crashed).
        finite = (torch.isfinite(loss) & torch.isfinite(p.grad.pow(2).sum())
                  & torch.isfinite(v.grad.pow(2).sum()))
        if not bool(finite):
            return None
        return float(loss.detach()), (uniq_u, p.grad), (needed, v.grad)

    def _apply(self, grads: dict[str, Grad]) -> dict[str, torch.Tensor]:
        """Apply summed gradients; the rows changed per table ("user", "item")."""
        cfg = self.config
        clip_([g for _, g in grads.values()], cfg.grad_clip)
        lr = learning_rate(cfg, self._applied_steps)
        moved = {}
        for name, (rows, grad) in grads.items():
            if cfg.optimizer == "adam":  # lazy Adam: a row whose gradient is exactly zero
                # (every negative of a one-user step masked) does not move by its momentum
                nonzero = grad.ne(0).any(dim=1)
                rows, grad = rows[nonzero], grad[nonzero]
            table = self._users if name == "user" else self._items
            apply_update(cfg, table.vec, table.slots, rows, grad, lr)
            moved[name] = rows
        if any(rows.numel() for rows in moved.values()):  # a step that moved no row is no
            self._applied_steps += 1  # step of the schedule (nor of Adam's bias correction)
        return moved

    # -------------------------------------------------------------- scoring
    def _serving(self, user_rows: torch.Tensor) -> torch.Tensor:
        return m.serving_vectors(self.config, self._users, self._items, user_rows)

    def _item_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(served bias relative to its max as float32 (rows,), live mask (rows,))."""
        live = torch.as_tensor(self._item_vocab.active_mask(), device=self.device)
        bias = m.served_bias(self.config, self._items, self._watermark_ms)
        finite = live & torch.isfinite(bias)
        ref = bias[finite].max() if bool(finite.any()) else torch.zeros((), dtype=bias.dtype,
                                                                          device=self.device)
        rel = torch.where(finite, bias - ref, torch.full_like(bias, -1e30)).float()
        return rel, live

    def _evaluate(self, events: Sequence[Event]) -> EvalStats:
        cfg = self.config
        k = cfg.eval_k
        if not events:
            zero = RankMetrics(hit_rate=0.0, recall=0.0, mrr=0.0)
            return EvalStats(n_events=0, k=k, model=zero, popularity=zero, loss=float("nan"),
                             exact=True)
        users = [e.user_id for e in events]
        u_np = self._user_vocab.lookup(users)
        u_np[u_np < 0] = COLD_ROW
        i_np = self._item_vocab.lookup([e.item_id for e in events])
        w = torch.as_tensor([cfg.purchase_weight if e.kind == EventKind.PURCHASE
                             else cfg.click_weight for e in events], device=self.device)
        index: dict[str, int] = {}
        user_idx = torch.as_tensor([index.setdefault(x, len(index)) for x in users],
                                   device=self.device)
        known = torch.as_tensor(i_np > COLD_ROW, device=self.device)  # no row: a miss
        target = torch.as_tensor(np.maximum(i_np, 0), device=self.device)
        bias, live = self._item_bias()
        n_live = int(live.sum())
        cand = torch.nonzero(live).flatten()
        exact = n_live <= cfg.eval_max_items
        if n_live == 0:
            miss = torch.full((len(events),), float("inf"), dtype=torch.float64)
            met = rank_metrics(miss, user_idx.cpu(), len(index), k)
            return EvalStats(n_events=len(events), k=k, model=met, popularity=met,
                             loss=float("nan"), exact=True)
        if not exact:  # its own generator: evaluating must not change what learning draws
            gen = torch.Generator(device=self.device).manual_seed(cfg.seed * 1_000_003
                                                                   + self._step)
            pick = torch.randperm(n_live, generator=gen, device=self.device)
            cand = torch.sort(cand[pick[: cfg.eval_max_items]]).values
        scale = n_live / len(cand) if len(cand) else 1.0
        uniq_u, u_inv = torch.unique(torch.as_tensor(u_np, device=self.device),
                                     return_inverse=True)
        x = self._serving(uniq_u)
        hist = self._users.history(uniq_u).index_select(0, u_inv)  # (B, L)
        seen_target = ((hist == target.unsqueeze(1)) & (hist >= 0)).any(dim=1)
        vecs, cbias = self._items.vec.index_select(0, cand), bias.index_select(0, cand)
        ranks = torch.empty(len(events), dtype=torch.float64, device=self.device)
        pop_rank = torch.empty(len(events), dtype=torch.float64, device=self.device)
        lse = torch.empty(len(events), dtype=torch.float64, device=self.device)
        chunk = max(1, _SCORE_BUDGET // max(len(cand), 1))
        for s in range(0, len(events), chunk):
            sl = slice(s, s + chunk)
            xs = x.index_select(0, u_inv[sl])
            scores = xs @ vecs.T + cbias
            if exact:  # read the target's own entry, so it ties with itself exactly
                col = torch.searchsorted(cand, target[sl]).clamp(max=max(len(cand) - 1, 0))
                t_score = scores.gather(1, col.unsqueeze(1)).squeeze(1)
                drawn = None
            else:
                t_score = (xs * self._items.vec.index_select(0, target[sl])).sum(1) \
                    + bias[target[sl]]
                # A target drawn among the candidates takes its score from there: the
                # product above rounds differently and could rank it above itself.
                col = torch.searchsorted(cand, target[sl]).clamp(max=max(len(cand) - 1, 0))
                drawn = cand[col] == target[sl]
                t_score = torch.where(drawn, scores.gather(1, col.unsqueeze(1)).squeeze(1),
                                      t_score)
            # float32, 3x cheaper than float64 at 1,024 x 10K scores; a restored
            # learner's row order differs, so its loss agrees to float rounding.
            lse[sl] = torch.logsumexp(scores, dim=1).double() + float(np.log(scale))
            _mask_history(scores, cand, hist[sl])
            ranks[sl] = _rank_among(scores, t_score, drawn) * scale
            lse[sl] = lse[sl] - torch.where(known[sl], t_score.double(),
                                            torch.full_like(lse[sl], float("nan")))
            if not exact:  # popularity ranked against the same sample, as like for like
                scores.copy_(cbias.unsqueeze(0).expand_as(scores))
                _mask_history(scores, cand, hist[sl])
                pop_rank[sl] = _rank_among(scores, bias[target[sl]], drawn) * scale
        if exact:
            sorted_bias = torch.sort(bias[live]).values
            above = n_live - torch.searchsorted(sorted_bias, bias[target], right=True)
            ties = torch.searchsorted(sorted_bias, bias[target], right=True) \
                - torch.searchsorted(sorted_bias, bias[target], right=False)
            pop_rank = above.double() + 0.5 * (ties - 1).clamp(min=0).double() \
                - _history_above(hist, bias, target)
        shown = known & ~seen_target
        ranks = torch.where(shown, ranks, torch.full_like(ranks, float("inf")))
        pop_rank = torch.where(shown, pop_rank, torch.full_like(pop_rank, float("inf")))
        loss = float((lse[known] * w[known]).sum() / w[known].sum()) if bool(known.any()) \
            else float("nan")
        n_users = len(index)
        return EvalStats(n_events=len(events), k=k, loss=loss, exact=exact,
                         model=rank_metrics(ranks, user_idx, n_users, k),
                         popularity=rank_metrics(pop_rank, user_idx, n_users, k))

    def recommend(self, user_ids: Sequence[str], k: int, exclude_seen: bool = True) -> TopK:
        """Top-k items by x_u . v_j + b_j for each user (cold row if unknown).

        `exclude_seen` drops the user's recent items (the last `recent_items`).
        """
        self._resolve_deferred()
        rows_np = self._user_vocab.lookup(list(user_ids))
        fallback = tuple(bool(r < 0) for r in rows_np)
        rows_np[rows_np < 0] = COLD_ROW
        rows = torch.as_tensor(rows_np, device=self.device)
        x = self._serving(rows)
        bias, live = self._item_bias()
        scores = x @ self._items.vec.T + bias
        scores = scores.masked_fill(~live.unsqueeze(0), float("-inf"))
        if exclude_seen:
            hist = self._users.history(rows)
            seen = torch.zeros_like(scores, dtype=torch.bool)
            seen.scatter_(1, hist.clamp(min=0), hist >= 0)
            scores = scores.masked_fill(seen, float("-inf"))
        kk = min(k, int(live.sum()))
        top = torch.topk(scores, kk, dim=1)
        ids = self._item_vocab.ids
        item_ids = tuple(tuple(ids[j] or "" if np.isfinite(s) else ""
                               for j, s in zip(r, sc, strict=True))
                         for r, sc in zip(top.indices.tolist(), top.values.tolist(), strict=True))
        abs_bias = m.served_bias(self.config, self._items, self._watermark_ms,
                                 top.indices.flatten()).view_as(top.indices)
        dot = (x.unsqueeze(1) * self._items.vec[top.indices]).sum(2).double()
        out = torch.where(torch.isfinite(top.values), dot + abs_bias,
                          torch.full_like(dot, float("-inf")))
        return TopK(user_ids=tuple(user_ids), item_ids=item_ids,
                    scores=out.cpu().numpy(), fallback=fallback)

    def score_all(self, user_ids: Sequence[str]) -> tuple[tuple[str, ...], np.ndarray]:
        """Scores of every live item for each user: (ids (n_items,), (n_users, n_items)).

        Score = x_u . v_j + (b_j - max b) in float32 (the shift does not change
        any ranking); unknown users use the cold-start row. For offline
        evaluation, where exclusions are applied by the caller.
        """
        self._resolve_deferred()
        rows_np = self._user_vocab.lookup(list(user_ids))
        rows_np[rows_np < 0] = COLD_ROW
        x = self._serving(torch.as_tensor(rows_np, device=self.device))
        bias, live = self._item_bias()
        cols = torch.nonzero(live).flatten()
        scores = x @ self._items.vec.index_select(0, cols).T + bias.index_select(0, cols)
        ids = tuple(self._item_vocab.ids[c] or "" for c in cols.tolist())
        return ids, scores.cpu().numpy()


def _rank_among(scores: torch.Tensor, t_score: torch.Tensor,
                drawn: torch.Tensor | None) -> torch.Tensor:
    """`ranks_of_targets` over a candidate sample: a target not `drawn` (None: every one
    is) is not among `scores`, so a tie there is another item's, not its own.

    >>> s = torch.tensor([[2.0, 1.0, 0.0]])
    >>> _rank_among(s, torch.tensor([1.0]), torch.tensor([True])).item()
    1.0
    >>> _rank_among(s, torch.tensor([1.0]), torch.tensor([False])).item()
    1.5
    """
    ranks = ranks_of_targets(scores, t_score, None)
    if drawn is None:
        return ranks
    tied = (scores == t_score.unsqueeze(1)).any(dim=1)
    return ranks + 0.5 * (tied & ~drawn).double()


def _mask_history(scores: torch.Tensor, cand: torch.Tensor, hist: torch.Tensor) -> None:
    """Set each event's history items among the sorted candidates `cand` to -inf (in place).

    scores: (B, N) over `cand`; hist: (B, L) item rows, -1 = empty.
    """
    if len(cand) == 0:
        return
    col = torch.searchsorted(cand, hist.clamp(min=0)).clamp(max=len(cand) - 1)
    present = (hist >= 0) & (cand.index_select(0, col.flatten()).view_as(col) == hist)
    r, c = torch.nonzero(present, as_tuple=True)
    scores[r, col[r, c]] = float("-inf")


def _history_above(hist: torch.Tensor, bias: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) float64: how many of each event's distinct history items rank above its target by bias.

    Ties count half, as in `ranks_of_targets`; removing them from a popularity
    rank gives the rank among the items the scorer would show.
    """
    ordered = torch.sort(hist, dim=1).values
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    other = first & (ordered >= 0) & (ordered != target.unsqueeze(1))
    hb = bias.index_select(0, ordered.clamp(min=0).flatten()).view_as(ordered)
    tb = bias.index_select(0, target).unsqueeze(1)
    return ((other & (hb > tb)).sum(dim=1).double()
            + 0.5 * (other & (hb == tb)).sum(dim=1).double())


def _distinct_users(rows: torch.Tensor, inverse: torch.Tensor, n: int
                    ) -> tuple[torch.Tensor, int]:
    """Per event, an index of its user for the negatives' mask, and how many there are.

    Users below the admission threshold share the cold row; by row they were one
    user, so each masked the others' positives out of its negatives (with in-batch
    negatives the cold row learned against nothing). Each cold event counts as its
    own user here: a cold user's two events then see each other's positive as a
    negative, the smaller error.
    """
    cold = rows == COLD_ROW
    if not bool(cold.any()):
        return inverse, n
    own = torch.arange(int(cold.sum()), device=rows.device) + n
    return inverse.masked_scatter(cold, own), n + len(own)
