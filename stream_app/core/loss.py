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
Subtracting log Q_j makes the sampled softmax an unbiased-ish estimate of
the full softmax over all items (Bengio & Senecal; Yi et al. 2019), so popular
items are not over-penalised just for being sampled often.
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
    Returns (scalar loss, per-event loss (B,)).

    >>> u, v = torch.zeros(2, 3), torch.zeros(4, 3)
    >>> loss, _ = sampled_loss(u, u, torch.zeros(2), v, torch.zeros(4),
    ...                        torch.zeros(2, 4, dtype=torch.bool), torch.ones(2))
    >>> round(float(loss), 4) == round(float(torch.log(torch.tensor(5.0))), 4)
    True
    """
    pos = (user_vecs * pos_vecs).sum(dim=1, keepdim=True) + pos_offset.unsqueeze(1)
    neg = (user_vecs @ neg_vecs.T + neg_offset.unsqueeze(0)).masked_fill(accidental, float("-inf"))
    per_event = torch.logsumexp(torch.cat([pos, neg], dim=1), dim=1) - pos.squeeze(1)
    return (per_event * weights).sum() / weights.sum(), per_event
