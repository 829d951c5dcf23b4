"""Unit checks of the tensor building blocks against plain-Python references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stream_app.core import Learner
from stream_app.core.config import LearnerConfig
from stream_app.core.loss import sampled_loss
from stream_app.core.model import (
    HIST_DTYPE,
    Table,
    add_popularity,
    compact_history,
    push_history,
)
from stream_app.core.replay_buffer import ReplayBuffer
from stream_app.core.sampler import batch_negatives, sample_negatives
from tests.device import DEVICE
from tests.unit.core.streams import T0, ev, small_config


def test_push_history_prepends_newest_first_and_truncates() -> None:
    hist = torch.tensor([[7, 8, -1], [-1, -1, -1], [5, -1, -1]], dtype=HIST_DTYPE)
    users = torch.tensor([0, 1, 0, 1, 1, 1])
    items = torch.tensor([1, 2, 3, 4, 9, 6])
    ts = torch.tensor([10, 10, 20, 30, 5, 40])  # user 1: 9(5) 2(10) 4(30) 6(40)
    push_history(hist, users, items, ts)
    assert hist.tolist() == [[3, 1, 7], [6, 4, 2], [5, -1, -1]]


def test_histories_are_stored_narrow_and_read_as_int64_indices() -> None:
    users = Table(LearnerConfig(dim=2, recent_items=3), torch.device("cpu"), items=False)
    users.ensure(4)
    push_history(users.hist, torch.tensor([1, 1]), torch.tensor([7, 9]), torch.tensor([1, 2]))
    assert users.hist.dtype == HIST_DTYPE == torch.int32
    got = users.history(torch.tensor([1, 0]))
    assert got.dtype == torch.int64 and got.tolist() == [[9, 7, -1], [-1, -1, -1]]
    items = Table(LearnerConfig(dim=2, recent_items=3), torch.device("cpu"), items=True)
    items.ensure(4)
    assert items.hist.numel() == 0 and len(items.logpop) == len(items.released) == 4
    assert users.logpop.numel() == users.released.numel() == 0


def test_compact_history_keeps_valid_prefix() -> None:
    hist = torch.tensor([[1, 2, 3, -1], [4, 2, 2, 5]], dtype=HIST_DTYPE)
    compact_history(hist, torch.tensor([2]))
    assert hist.tolist() == [[1, 3, -1, -1], [4, 5, -1, -1]]


def test_add_popularity_is_a_scatter_logsumexp() -> None:
    logpop = torch.tensor([float("-inf"), 0.5, float("-inf")], dtype=torch.float64)
    rows = torch.tensor([1, 1, 2])
    contrib = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    out = add_popularity(logpop, rows, contrib)
    assert math.isinf(out[0])
    assert out[1].item() == pytest_approx(math.log(math.exp(0.5) + math.exp(1) + math.exp(2)))
    assert out[2].item() == pytest_approx(-1.0)
    assert math.isinf(logpop[0]) and logpop[1] == 0.5  # input untouched


def pytest_approx(x: float) -> object:
    import pytest

    return pytest.approx(x, rel=1e-12)


def _reference_loss(u: torch.Tensor, pos: torch.Tensor, pos_off: torch.Tensor,
                    neg: torch.Tensor, neg_off: torch.Tensor, mask: torch.Tensor,
                    w: torch.Tensor) -> torch.Tensor:
    """The loss written plainly, for autograd (what `sampled_loss` computed until it
    got its own backward)."""
    p = (u * pos).sum(dim=1, keepdim=True) + pos_off.unsqueeze(1)
    n = (u @ neg.T + neg_off.unsqueeze(0)).masked_fill(mask, float("-inf"))
    per_event = torch.logsumexp(torch.cat([p, n], dim=1), dim=1) - p.squeeze(1)
    return (per_event * w).sum() / w.sum()


def test_loss_and_its_gradients_match_the_plain_autograd_version() -> None:
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(*shape, dtype=torch.float64, generator=gen)
              for shape in ((3, 4), (3, 4), (3,), (5, 4), (5,))]
    w = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, 3] = True
    mask[2] = True  # every candidate excluded: only the positive is left
    u, pos, pos_off, neg, neg_off = inputs

    def reference(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return _reference_loss(a, b, pos_off, c, neg_off, mask, w)

    assert torch.autograd.gradcheck(reference, (u.requires_grad_(), pos.requires_grad_(),
                                                neg.requires_grad_()))
    got, want = [], []
    for fn, out in ((sampled_loss, got), (_reference_loss, want)):
        leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
        loss = fn(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], mask, w)
        loss = loss[0] if isinstance(loss, tuple) else loss
        loss.backward()
        out.extend([loss.detach(), *(x.grad for x in leaves)])
    for a, b in zip(got, want, strict=True):
        assert a is not None and b is not None
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_loss_backward_through_the_per_event_losses_too() -> None:
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(4, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.randn(6, 3, dtype=torch.float64, generator=gen)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    w = torch.ones(4, dtype=torch.float64)
    loss, per_event = sampled_loss(u, u, torch.zeros(4, dtype=torch.float64), v,
                                   torch.zeros(6, dtype=torch.float64), mask, w)
    (loss + per_event[1]).backward()
    ref_u = u.detach().clone().requires_grad_(True)
    p = (ref_u * ref_u).sum(dim=1, keepdim=True)
    each = torch.logsumexp(torch.cat([p, ref_u @ v.T], dim=1), dim=1) - p.squeeze(1)
    (each.mean() + each[1]).backward()
    assert u.grad is not None and ref_u.grad is not None
    assert torch.allclose(u.grad, ref_u.grad, rtol=1e-12, atol=1e-12)


def test_in_batch_negatives_log_q_and_accidental_hits() -> None:
    pos = torch.tensor([5, 5, 7, 9])
    users = torch.tensor([0, 1, 0, 1])
    neg = batch_negatives(pos, users, 2, 100, None, None, torch.Generator())
    assert neg.rows.tolist() == [5, 7, 9]
    # Q_j = m n_j / B with m = B: the count of j among the positives.
    assert torch.allclose(neg.log_q.exp(), torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64))
    assert torch.allclose(neg.pos_log_q.exp(), torch.tensor([2.0, 2.0, 1.0, 1.0],
                                                            dtype=torch.float64))
    # user 0 owns 5 and 7, user 1 owns 5 and 9.
    assert neg.accidental.tolist() == [[True, True, False], [True, False, True],
                                       [True, True, False], [True, False, True]]


def test_sampled_log_q_stays_finite_for_an_item_whose_popularity_decayed_away() -> None:
    """q of an item ~1,000 nats of popularity below the top is 0 in float64: its log Q
    was -inf, its offset +inf, and with `negatives="sampled"` every step holding it
    (a late event, or the replay buffer drawing it, again and again) was refused."""
    log_q_all = torch.tensor([0.0, -1200.0], dtype=torch.float64)
    neg = batch_negatives(torch.tensor([1]), torch.tensor([0]), 1, 0, torch.tensor([0, 0]),
                          log_q_all, torch.Generator())
    assert torch.isfinite(neg.pos_log_q).all()
    assert neg.pos_log_q.tolist() == pytest.approx([math.log(2) - 1200.0])
    assert neg.rows.tolist() == [0] and neg.log_q.tolist() == pytest.approx([math.log(2)])


def test_sampled_negatives_learn_a_late_event_of_a_long_forgotten_item() -> None:
    hour = 3_600_000
    learner = Learner(small_config(negatives="sampled", popularity_half_life_ms=hour),
                      device=DEVICE)
    learner.learn([ev("a0", "u0", "old", T0), ev("a1", "u1", "x", T0)])
    later = T0 + 60 * 24 * hour  # 1,440 half-lives: "old" is ~998 nats below "x"
    learner.learn([ev("b0", "u2", "x", later)])
    stats = learner.learn([ev("late", "u3", "old", T0 + 1_000), ev("c0", "u4", "x", later)])
    assert [o.value for o in stats.outcomes] == ["applied", "applied"]


def test_replay_buffer_is_a_bounded_uniform_reservoir() -> None:
    buf = ReplayBuffer(capacity=100, seed=0)
    for b in range(100):
        ids = [str(b * 100 + k) for k in range(100)]
        buf.add(ids, ids, np.ones(100, dtype=np.float32))
    assert len(buf) == 100 and buf.seen == 10_000
    kept = np.array([int(x) for x in buf.users])
    # Uniform over the 10k events seen: the mean index is near 5000, not near the end.
    assert 3500 < kept.mean() < 6500


def test_replay_buffer_forgets_a_user_and_refills_the_room() -> None:
    buf = ReplayBuffer(capacity=4, seed=0)
    buf.add(["a", "b", "a", "c"], ["i1", "i2", "i3", "i4"],
            np.arange(4, dtype=np.float32))
    assert buf.remove_users({"a"}) == 2 and len(buf) == 2
    assert buf.users[:2].tolist() == ["b", "c"] and buf.weights[:2].tolist() == [1.0, 3.0]
    assert "a" not in buf.sample(50)[0].tolist()
    buf.add(["d", "e"], ["i5", "i6"], np.ones(2, dtype=np.float32))
    assert len(buf) == 4 and buf.seen == 6
    assert buf.users.tolist() == ["b", "c", "d", "e"]  # the room is filled first
    buf.clear()
    assert len(buf) == 0 and buf.seen == 0 and buf.sample(3)[0].size == 0


def test_negatives_at_exponent_zero_are_uniform_over_items() -> None:
    """0 * -inf is NaN: rows without an item made every draw fail at exponent 0."""
    logpop = torch.tensor([float("-inf"), 1.0, 5.0, float("-inf")], dtype=torch.float64)
    rows, log_q = sample_negatives(logpop, 1000, 0.0, torch.Generator().manual_seed(0))
    assert set(rows.tolist()) == {1, 2}
    assert log_q[1].item() == pytest.approx(math.log(0.5)) and log_q[2] == log_q[1]
    learner = Learner(small_config(negative_pop_exponent=0.0), device=DEVICE)
    assert learner.learn([ev("e1", "u1", "i1", T0), ev("e2", "u2", "i2", T0)]).n_applied == 2


def test_negatives_past_multinomials_category_limit_follow_q(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.multinomial refuses over 2**24 categories (one per item row): every step of a
    table of ~13M items raised. Past the limit (patched down to 4 here) rows are drawn by
    inverse CDF, with the same q and never a row without an item."""
    from stream_app.core import sampler

    logpop = torch.tensor([float("-inf"), 0.0, math.log(3.0), float("-inf"), math.log(6.0),
                           float("-inf")], dtype=torch.float64)
    monkeypatch.setattr(sampler, "MULTINOMIAL_MAX", 4)
    rows, log_q = sample_negatives(logpop, 20_000, 1.0, torch.Generator().manual_seed(0))
    counts = torch.bincount(rows, minlength=6).tolist()
    assert counts[0] == counts[3] == counts[5] == 0
    shares = [c / 20_000 for c in (counts[1], counts[2], counts[4])]
    assert shares == pytest.approx([0.1, 0.3, 0.6], abs=0.015)  # 3+ standard errors
    assert log_q[4].item() == pytest.approx(math.log(0.6))
