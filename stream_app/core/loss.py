r"""The one training loss: weighted sampled softmax with log-Q correction.

For event e = (user u, positive item i, weight w_e) and candidate items
C = {i} ∪ N, N shared by the batch (`in_batch`: the batch's positives;
`sampled`: M items drawn from the popularity distribution q; `mixed`: both),
with the score of the model

    s(u, j) = x_u . v_j + b_j        x_u: serving vector (dim,), b_j: item bias

the loss is

    L = sum_e w_e * ( -o(e, i) + log sum_{j in C} exp o(e, j) ) / sum_e w_e
    o(e, j) = s(u, j) - log Q_j     (-inf for other positives of the same user)

where Q_j is the expected number of times j appears among the candidates
(`in_batch`: m n_j / B, n_j its count among the B positives of which m <=
`max_in_batch_negatives` are drawn; `sampled`: M q_j; `mixed`: the sum), see
`sampler.batch_negatives`. The positive's own logit is computed separately and
candidates that are positives of the same user are excluded (-inf).
Subtracting log Q_j keeps popular items from being over-penalised just for
being sampled often (Bengio & Senecal; Yi et al. 2019). Candidates are
de-duplicated, so this is not an unbiased estimate of the full softmax: that
would divide a unique candidate's term by its chance of being drawn at all,
1 - (1 - q_j)^M (and by 1 for the batch's own positives), where the expected
count divides a popular negative's term by up to its count. So popular negatives
are pushed down less than the full softmax would. On the MovieLens split that
is what works: the inclusion probabilities gave Recall@20 0.287 against 0.296
(mean of seeds 0-2, BENCHMARKS.md), as on this data popularity is most of the
signal.
w_e is `click_weight` or `purchase_weight`. Because b_j is log decayed
popularity (see `model.py`), the embeddings learn what popularity does not
explain.
"""

from __future__ import annotations

import torch


def sampled_loss(
    user_vecs: torch.Tensor,
    pos_vecs: torch.Tensor,
    pos_offset: torch.Tensor,
    neg_vecs: torch.Tensor,
    neg_offset: torch.Tensor,
    accidental: torch.Tensor,
    weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted softmax cross-entropy of each event's positive against shared negatives.

    user_vecs, pos_vecs: (B, d); pos_offset: (B,) = b_i - log Q_i; neg_vecs: (N, d);
    neg_offset: (N,) = b_j - log Q_j; accidental: (B, N) True = not a negative
    for this event (its own positive or another positive of its user).
    Returns (scalar loss, per-event loss (B,)). Gradients flow to the three
    vector arguments (the offsets are popularity, not parameters).

    >>> u, v = torch.zeros(2, 3), torch.zeros(4, 3)
    >>> loss, _ = sampled_loss(u, u, torch.zeros(2), v, torch.zeros(4),
    ...                        torch.zeros(2, 4, dtype=torch.bool), torch.ones(2))
    >>> round(float(loss), 4) == round(float(torch.log(torch.tensor(5.0))), 4)
    True
    """
    loss, per_event = _SampledSoftmax.apply(user_vecs, pos_vecs, pos_offset, neg_vecs,
                                            neg_offset, accidental, weights)
    return loss, per_event


class _SampledSoftmax(torch.autograd.Function):
    """The loss above with a hand-written backward, in place over one (B, N) block.

    Autograd's version made ~11 passes over the (B, N) logits (offset add,
    mask, concatenation with the positive, logsumexp, and their backwards):
    two thirds of a 4,096-event step on a CPU. Here the block is the product
    (offset fused), masked, exponentiated in place and, in backward, scaled
    in place into its own gradient: 4 passes. Same float32 arithmetic up to
    summation order. So its backward runs once (`retain_graph` is refused).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx,
                user_vecs: torch.Tensor, pos_vecs: torch.Tensor, pos_offset: torch.Tensor,
                neg_vecs: torch.Tensor, neg_offset: torch.Tensor, accidental: torch.Tensor,
                weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = (user_vecs * pos_vecs).sum(dim=1) + pos_offset  # (B,)
        probs = torch.addmm(neg_offset.unsqueeze(0), user_vecs, neg_vecs.T)  # (B, N) logits
        probs.masked_fill_(accidental, float("-inf"))
        top = torch.maximum(probs.amax(dim=1), pos) if probs.shape[1] else pos
        probs.sub_(top.unsqueeze(1)).exp_()  # exp(logit - top), unnormalised
        pos_exp = (pos - top).exp()
        total = probs.sum(dim=1) + pos_exp
        per_event = top + total.log() - pos
        norm = weights.sum()
        loss = (per_event * weights).sum() / norm
        ctx.save_for_backward(user_vecs, pos_vecs, neg_vecs, probs, pos_exp, total, weights,
                              norm)
        ctx.set_materialize_grads(False)
        return loss, per_event

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,
                 g_loss: torch.Tensor | None, g_event: torch.Tensor | None
                 ) -> tuple[torch.Tensor | None, ...]:
        if getattr(ctx, "done", False):
            raise RuntimeError("sampled_loss: backward runs once (it reuses its logits)")
        ctx.done = True  # type: ignore[attr-defined]
        user_vecs, pos_vecs, neg_vecs, probs, pos_exp, total, weights, norm = \
            ctx.saved_tensors  # type: ignore[attr-defined]
        coef = torch.zeros_like(total)  # d loss / d per_event, per event
        if g_loss is not None:
            coef = coef + g_loss * weights / norm
        if g_event is not None:
            coef = coef + g_event
        # d per_event / d logit_j = softmax_j, minus 1 for the positive.
        g_neg_logits = probs.mul_((coef / total).unsqueeze(1))  # in place: backward runs once
        g_pos_logit = coef * (pos_exp / total - 1)  # (B,)
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        g_user = g_pos = g_neg = None
        if needs[0]:
            g_user = torch.addmm(g_pos_logit.unsqueeze(1) * pos_vecs, g_neg_logits, neg_vecs)
        if needs[1]:
            g_pos = g_pos_logit.unsqueeze(1) * user_vecs
        if needs[3]:
            g_neg = g_neg_logits.T @ user_vecs
        g_pos_off = g_pos_logit if needs[2] else None
        g_neg_off = g_neg_logits.sum(dim=0) if needs[4] else None
        return g_user, g_pos, g_pos_off, g_neg, g_neg_off, None, None
