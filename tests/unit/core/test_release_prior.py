"""The release prior: recently released items (events' `item_released_at`) get a served boost."""

from __future__ import annotations

import dataclasses
import io

import torch

from stream_app.core import Learner
from stream_app.events import Event, EventKind
from tests.device import DEVICE, assert_same
from tests.unit.core.streams import T0, ev, random_events, small_config
from tests.unit.core.test_learner_contract import _all_rows, _same_rows, _same_scores

DAY = 86_400_000
WINDOW = 30 * DAY


def _released(events: list[Event], every: int = 3) -> list[Event]:
    """The same events, with a release time on every `every`-th item (i0 oldest, i3 ...)."""
    out = []
    for e in events:
        n = int(e.item_id[1:])
        at = T0 - n * 2 * DAY if n % every == 0 else None
        out.append(dataclasses.replace(e, item_released_at=at))
    return out


def _pair(**config: object) -> tuple[Learner, Learner]:
    plain, released = (Learner(small_config(release_window_ms=WINDOW, **config), device=DEVICE)
                       for _ in range(2))
    for b in range(4):
        batch = random_events(64, seed=b, start=64 * b)
        plain.learn(batch)
        released.learn(_released(batch))
    return plain, released


def test_the_prior_moves_served_scores_only() -> None:
    plain, released = _pair()
    # Training never sees it: every table is identical.
    for name in ("_users", "_items"):
        assert_same(getattr(plain, name).vec, getattr(released, name).vec)
    # Serving does: items released within the window (i0, i3, ..., i12: 0-24
    # days before T0, the events run ~4 minutes past it) gain exactly the boost.
    ids, a = plain.score_all(["u1"])
    ids_b, b = released.score_all(["u1"])
    assert ids == ids_b
    diff = (b - a)[0]  # score_all shifts by the max bias: compare against the least gain
    gain = dict(zip(ids, (diff - diff.min()).tolist(), strict=True))
    boosted = {i for i, g in gain.items() if abs(g - 1.0) < 1e-4}
    assert boosted == {f"i{n}" for n in range(0, 15, 3)} & set(ids)
    assert all(abs(g) < 1e-4 for i, g in gain.items() if i not in boosted)


def test_items_whose_prior_expires_are_republished() -> None:
    # Only the batch's own positive gets a gradient: no sampled negatives, no
    # replay, and the later events come from a user without history.
    learner = Learner(small_config(release_window_ms=WINDOW, negatives="in_batch",
                                   replay_ratio=0.0), device=DEVICE)
    learner.learn(_released(random_events(64, seed=0)))
    bias_before = {r.id: r.bias for r in learner.rows(item_ids=learner.item_ids(),
                                                       model_version="v", now_ms=1)}
    # 7 days later, i12 (released 24 days before T0) is past the 30-day window.
    later = [dataclasses.replace(e, event_id=f"late{k}", user_id="newbie", item_id="i1",
                                 ts=T0 + 7 * DAY)
             for k, e in enumerate(random_events(4, seed=9))]
    stats = learner.learn(later)
    assert "i12" in stats.changed_item_ids and "i9" not in stats.changed_item_ids
    row = learner.rows(item_ids=["i12"], model_version="v", now_ms=2)[0]
    assert abs(bias_before["i12"] - row.bias - 1.0) < 1e-4
    assert row.state["released_at"] == T0 - 24 * DAY


def test_release_times_survive_the_changelog_and_snapshots() -> None:
    _, a = _pair()
    rows = _all_rows(a)
    b = Learner(a.config, device=DEVICE)
    b.apply_rows(rows)
    b.apply_global_state(a.global_state())
    _same_rows(rows, _all_rows(b, like=a))
    _same_scores(a, b, ["u1", "u2", "nobody"])
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    c = Learner(a.config, device=DEVICE)
    c.load_state_dict(torch.load(buf, weights_only=False))
    _same_scores(a, c, ["u1", "u2", "nobody"])
    assert_same(a._items.released, c._items.released, nan=True)  # NaN: unknown


def test_boost_zero_turns_it_off() -> None:
    plain, released = _pair(release_boost=0.0)
    assert_same(plain.score_all(["u1"])[1], released.score_all(["u1"])[1])


def test_recommend_has_no_nan_when_popularity_weighs_nothing() -> None:
    """pop_weight 0 times the -inf popularity of an item learned only from weight-0 clicks
    was NaN in recommend()'s scores (core review); it ranks last, as everywhere else."""
    learner = Learner(small_config(pop_weight=0.0, click_weight=0.0), device=DEVICE)
    learner.learn([ev("a", "u", "i1", T0, EventKind.PURCHASE), ev("b", "v", "i2", T0)])
    top = learner.recommend(["w"], k=5)
    assert top.item_ids[0][0] == "i1"
    assert not torch.isnan(torch.as_tensor(top.scores)).any()
