"""The scorer rebuilds user vectors from current item vectors, as the learner scores."""

from __future__ import annotations

import numpy as np

from stream_app.codec import encode_meta
from stream_app.core import Learner, LearnerConfig
from stream_app.events import Event, EventKind, ScoreRequest
from stream_app.serving import EmbeddingTable
from stream_app.serving.answers import apply_embedding
from stream_app.serving.topk import user_vectors
from tests.device import DEVICE


def _events(n: int, seed: int) -> list[Event]:
    rng = np.random.default_rng(seed)
    return [Event(event_id=f"e{seed}-{k}", user_id=f"u{rng.integers(8)}",
                  item_id=f"i{rng.integers(15)}", ts=1_700_000_000_000 + k * 1000,
                  kind=EventKind.CLICK) for k in range(n)]


def test_stale_user_row_is_served_with_the_learners_current_vector() -> None:
    config = LearnerConfig(dim=8, num_sampled_negatives=8, replay_ratio=0.0)
    learner = Learner(config, device=DEVICE)
    learner.learn(_events(200, seed=1))
    table = EmbeddingTable(device=DEVICE)
    meta = {"model_version": "v", "updated_at": 0, "serving": {
        "history_weight": config.history_weight, "recent_decay": config.recent_decay,
        "recent_items": config.recent_items}}
    apply_embedding(table, b"meta:trainer", encode_meta(meta))
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
