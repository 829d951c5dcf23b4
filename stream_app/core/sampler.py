"""Candidate sets for the loss: in-batch positives and popularity-sampled negatives.

Negatives are drawn from q_j ∝ exp(exponent * logpop_j), the (smoothed)
time-decayed popularity, so they are the items the model is most likely to
wrongly rank high; `loss.py` removes the sampling bias with log Q_j.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class Negatives:
    """Shared negative rows for a batch and the log-Q of every logit.

    rows: (N,) unique item rows; log_q: (N,); pos_log_q: (B,) for each event's
    own positive; accidental: (B, N) True where a negative is a positive of the
    event's user in this batch (its own included), so it is not pushed down.
    """

    rows: torch.Tensor
    log_q: torch.Tensor
    pos_log_q: torch.Tensor
    accidental: torch.Tensor


MULTINOMIAL_MAX = 2**24
"""`torch.multinomial` refuses more categories (one per item row): past them, about 13M
items as the table grows by quarters, every step raised."""


def sample_negatives(logpop: torch.Tensor, n: int, exponent: float,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw `n` rows with replacement from q ∝ exp(exponent * logpop).

    logpop: (rows,) float64, -inf for rows without an item (never drawn).
    Returns rows (n,) and log q (rows,) float64.
    """
    # -inf stays -inf at exponent 0 (uniform over items), not 0 * -inf = NaN.
    logits = torch.where(torch.isinf(logpop), logpop, exponent * logpop)
    log_q = torch.log_softmax(logits, dim=0)
    if len(log_q) <= MULTINOMIAL_MAX:
        rows = torch.multinomial(log_q.exp().float(), n, replacement=True, generator=generator)
    else:  # by inverse CDF: multinomial raises past 2**24 categories
        cdf = torch.cumsum(log_q.exp(), dim=0)
        u = torch.rand(n, dtype=cdf.dtype, device=cdf.device, generator=generator) * cdf[-1]
        rows = torch.searchsorted(cdf, u, right=True).clamp_(max=len(cdf) - 1)
    return rows, log_q


def batch_negatives(pos_rows: torch.Tensor, user_idx: torch.Tensor, n_users: int,
                    n_in_batch: int, sampled: torch.Tensor | None, log_q_all: torch.Tensor | None,
                    generator: torch.Generator) -> Negatives:
    """Negatives = up to `n_in_batch` of the batch's positives ∪ the sampled rows.

    Q_j is the expected number of draws of j: m n_j / B for the in-batch part
    (m positives drawn uniformly from the B events, all of them when m >= B;
    n_j = count of j among the positives) plus M q_j for the M popularity
    samples; the candidates are unique, so this is a chosen bias, not an
    unbiased correction (see `loss.py`). Capping m keeps the step O(B * (m + M))
    instead of O(B^2).
    pos_rows, user_idx: (B,); user_idx < n_users.
    """
    b = len(pos_rows)
    parts = []
    m_b = 0
    if n_in_batch > 0:
        m_b = min(n_in_batch, b)
        parts.append(pos_rows if m_b == b else pos_rows[
            torch.randint(b, (m_b,), generator=generator, device=generator.device)
            .to(pos_rows.device)])
    if sampled is not None:
        parts.append(sampled)
    rows = torch.unique(torch.cat(parts))
    uniq_pos, pos_inv, pos_counts = torch.unique(pos_rows, return_inverse=True,
                                                 return_counts=True)

    def expected(of: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """log Q_j, summed in log space: q_j of an item whose popularity decayed ~1,000
        nats below the top (1,433 half-lives) is 0 in float64, and log 0 made an
        offset of +inf, a NaN loss and every step with that item refused."""
        log_e = (m_b * n.to(torch.float64) / b).log()  # -inf where not in the batch
        if sampled is not None and log_q_all is not None:
            log_e = torch.logaddexp(log_e, math.log(len(sampled))
                                    + log_q_all.index_select(0, of))
        return log_e

    at = torch.searchsorted(uniq_pos, rows).clamp(max=len(uniq_pos) - 1)
    n_rows = torch.where(uniq_pos[at] == rows, pos_counts[at], torch.zeros_like(at))
    idx = torch.searchsorted(rows, pos_rows).clamp(max=len(rows) - 1)
    present = rows[idx] == pos_rows
    owned = torch.zeros(n_users, len(rows), dtype=torch.bool, device=rows.device)
    owned[user_idx[present], idx[present]] = True
    return Negatives(rows=rows, log_q=expected(rows, n_rows),
                     pos_log_q=expected(pos_rows, pos_counts[pos_inv]),
                     accidental=owned.index_select(0, user_idx))
