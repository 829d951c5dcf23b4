"""The scorer rebuilds user vectors from current item vectors, as the learner scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stream_app.codec import encode_meta
from stream_app.core import Learner, LearnerConfig
from stream_app.events import EmbeddingRow, Event, EventKind, ScoreRequest
from stream_app.serving import EmbeddingTable
from stream_app.serving.answers import apply_embedding
from stream_app.serving.table import ServingMix
from stream_app.serving.topk import mixed_vectors, rank, user_vectors
from stream_app.serving.users import UserState
from tests.device import DEVICE


def _events(n: int, seed: int) -> list[Event]:
    rng = np.random.default_rng(seed)
    return [Event(event_id=f"e{seed}-{k}", user_id=f"u{rng.integers(8)}",
                  item_id=f"i{rng.integers(15)}", ts=1_700_000_000_000 + k * 1000,
                  kind=EventKind.CLICK) for k in range(n)]


def _table_with_mix(config: LearnerConfig) -> EmbeddingTable:
    """A scorer table that read the trainer's meta record, with its serving mix."""
    table = EmbeddingTable(device=DEVICE)
    meta = {"model_version": "v", "updated_at": 0, "serving": {
        "history_weight": config.history_weight, "recent_decay": config.recent_decay,
        "recent_items": config.recent_items}}
    apply_embedding(table, b"meta:trainer", encode_meta(meta))
    return table


def test_stale_user_row_is_served_with_the_learners_current_vector() -> None:
    config = LearnerConfig(dim=8, num_sampled_negatives=8, replay_ratio=0.0)
    learner = Learner(config, device=DEVICE)
    learner.learn(_events(200, seed=1))
    table = _table_with_mix(config)
    for row in learner.rows(user_ids=learner.user_ids(), item_ids=learner.item_ids(),
                            model_version="v", now_ms=0):
        table.upsert(row)
    # More learning moves item vectors. As in the trainer, only changed rows are
    # republished: u0 has no new event, so its row in the table is now stale.
    step = learner.learn([e for e in _events(200, seed=2) if e.user_id != "u0"])
    assert "u0" not in step.changed_user_ids and step.changed_item_ids
    for row in learner.rows(user_ids=step.changed_user_ids, item_ids=step.changed_item_ids,
                            model_version="v", now_ms=0):
        table.upsert(row)
    stale = table.users["u0"].vector
    assert not np.allclose(stale, learner.rows(user_ids=["u0"], model_version="v",
                                               now_ms=0)[0].vector)
    users = learner.user_ids()
    got, reasons = user_vectors(table, [ScoreRequest(request_id=u, user_id=u, k=5)
                                        for u in users], min_user_updates=1)
    want = np.stack([r.vector for r in learner.rows(user_ids=users, model_version="v",
                                                    now_ms=0)])
    assert reasons == [None] * len(users)
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-5, atol=1e-6)


def test_without_the_mix_the_published_vector_is_served() -> None:
    learner = Learner(LearnerConfig(dim=4, num_sampled_negatives=4), device=DEVICE)
    learner.learn(_events(50, seed=3))
    table = EmbeddingTable(device=DEVICE)
    rows = learner.rows(user_ids=["u1"], item_ids=learner.item_ids(), model_version="v",
                        now_ms=0)
    for row in rows:
        table.upsert(row)
    got, _ = user_vectors(table, [ScoreRequest(request_id="r", user_id="u1", k=3)], 1)
    np.testing.assert_array_equal(got.cpu().numpy()[0], rows[0].vector)


def test_recent_items_the_table_lacks_are_left_out_of_the_mix() -> None:
    """A tombstoned (or not yet read) item adds no weight to the user's decayed mean, and
    the items after it move up, as in the learner's history (`compact_history`). Kept in
    its place, a gap mid-list weighed the later items less than the learner does."""
    table = EmbeddingTable(device=DEVICE)
    for ident, vec in (("a", [1.0, 0.0]), ("b", [0.0, 1.0]), ("c", [5.0, 5.0])):
        table.upsert(EmbeddingRow(entity="item", id=ident, vector=np.array(vec, np.float32),
                                  bias=0.0, model_version="v", updates=1, updated_at=1,
                                  last_event_ts=1))
    table.flush()
    user = UserState(vector=np.zeros(2, np.float32), recent_items=(), updates=1,
                     id_vec=np.array([0.5, 0.0], np.float32),
                     recent_mix=("a", "gone", "b", "c"))
    mix = ServingMix(history_weight=1.0, recent_decay=0.5, recent_items=2)
    got = mixed_vectors(table, mix, [user]).cpu().numpy()[0]
    # a and b at positions 0 and 1 weigh 1 and 0.5 (the learner's recent_items=2 takes
    # the first two it knows): mean = (a + 0.5 b) / 1.5
    np.testing.assert_allclose(got, [0.5 + 2 / 3, 1 / 3], rtol=1e-6)


def test_a_known_user_is_answered_before_any_item_row_is_loaded() -> None:
    """User rows and the trainer's mix with no item row yet (an item admission threshold
    early on, or every item evicted) crashed the scorer on each such request."""
    config = LearnerConfig(dim=4, num_sampled_negatives=4)
    learner = Learner(config, device=DEVICE)
    learner.learn(_events(50, seed=4))
    table = _table_with_mix(config)
    for row in learner.rows(user_ids=["u1"], model_version="v", now_ms=0):
        table.upsert(row)
    table.flush()
    assert table.mix is not None and table.users.get("u1") is not None and not table.n_slots
    got, reasons = user_vectors(table, [ScoreRequest(request_id="r", user_id="u1", k=3)], 1)
    assert reasons == [None]
    np.testing.assert_array_equal(got.cpu().numpy()[0], table.users["u1"].id_vec)
    [answer] = rank(table, [ScoreRequest(request_id="r", user_id="u1", k=3)])
    assert answer.items == ()


def test_the_mix_is_gathered_in_blocks_of_users_with_the_same_result(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """users x recent items x dim was gathered at once: 256 users x 1,000 items at dim 4096
    is 4 GiB. A budget of one user's floats gives the same vectors as one block."""
    from stream_app.serving import topk

    table = EmbeddingTable(device=DEVICE)
    rng = np.random.default_rng(0)
    for n in range(5):
        table.upsert(EmbeddingRow(entity="item", id=f"i{n}", vector=rng.normal(size=3)
                                  .astype(np.float32), bias=0.0, model_version="v", updates=1,
                                  updated_at=1, last_event_ts=1))
    table.flush()
    users = [UserState(vector=np.zeros(3, np.float32), recent_items=(), updates=1,
                       id_vec=rng.normal(size=3).astype(np.float32),
                       recent_mix=tuple(f"i{m}" for m in rng.permutation(5)[:3]))
             for _ in range(7)]
    mix = ServingMix(history_weight=0.7, recent_decay=0.5, recent_items=3)
    whole = mixed_vectors(table, mix, users).cpu().numpy()
    gathers: list[int] = []
    index_select = torch.Tensor.index_select

    def counting(self: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
        gathers.append(len(index))
        return index_select(self, dim, index)

    monkeypatch.setattr(topk, "GATHER_FLOATS", 3 * 3)
    monkeypatch.setattr(torch.Tensor, "index_select", counting)
    blocks = mixed_vectors(table, mix, users).cpu().numpy()
    assert gathers == [3] * 7  # one user's 3 recent items at a time
    np.testing.assert_allclose(blocks, whole, rtol=1e-6)
