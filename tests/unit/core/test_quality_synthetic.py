"""On a stream with planted structure the learner must learn it and beat popularity."""

from __future__ import annotations

import torch

from stream_app.core import Learner
from tests.device import DEVICE
from tests.unit.core.streams import planted_events, small_config


def test_learns_planted_groups_and_beats_popularity() -> None:
    torch.manual_seed(0)
    learner = Learner(small_config(dim=16, eval_k=5, seed=3), device=DEVICE)
    losses, model_recall, pop_recall = [], [], []
    for b in range(30):
        batch = planted_events(200, seed=b, start=200 * b)
        ev = learner.evaluate(batch)
        stats = learner.learn(batch)
        losses.append(stats.loss)
        if b >= 20:
            model_recall.append(ev.model.recall)
            pop_recall.append(ev.popularity.recall)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:3]) / 3
    model, pop = sum(model_recall) / 10, sum(pop_recall) / 10
    # 4 groups of 10 items: popularity finds ~5/40 of a user's items, the model ~5/10.
    assert model > 0.35 and model > 2 * pop, (model, pop)
