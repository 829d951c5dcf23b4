from __future__ import annotations

import dataclasses

from stream_app.core import Learner, Outcome
from stream_app.core.guards import RATE_GRACE_WINDOWS, far_ahead
from stream_app.events import EventKind
from tests.device import DEVICE
from tests.unit.core.streams import T0, ev, random_events, small_config


def test_duplicate_event_ids_are_applied_once_within_and_across_batches() -> None:
    learner = Learner(small_config(), device=DEVICE)
    first = learner.learn([ev("e1", "u1", "i1", T0), ev("e1", "u1", "i1", T0)])
    assert first.outcomes == (Outcome.APPLIED, Outcome.DUPLICATE)
    second = learner.learn([ev("e1", "u1", "i1", T0), ev("e2", "u1", "i2", T0)])
    assert second.outcomes == (Outcome.DUPLICATE, Outcome.APPLIED)
    assert second.n_applied == 1


def test_a_reused_event_id_with_other_content_is_refused_not_counted_as_a_copy() -> None:
    """A producer whose id counter restarted: before, its new events were dropped as copies."""
    learner = Learner(small_config(), device=DEVICE)
    first = ev("e1", "u1", "i1", T0)
    learner.learn([first])
    changed = [dataclasses.replace(first, item_id="i2"), dataclasses.replace(first, user_id="u2"),
               dataclasses.replace(first, ts=T0 + 1),
               dataclasses.replace(first, kind=EventKind.PURCHASE, quantity=1, price=2.5)]
    copy = dataclasses.replace(first, context={"page": "other"})  # context is not content
    stats = learner.learn([*changed, copy])
    assert stats.outcomes == (Outcome.ID_REUSED,) * 4 + (Outcome.DUPLICATE,)
    assert stats.n_applied == 0
    in_batch = learner.learn([ev("e2", "u1", "i3", T0), ev("e2", "u1", "i4", T0)])
    assert in_batch.outcomes == (Outcome.APPLIED, Outcome.ID_REUSED)


def test_dedup_window_is_bounded() -> None:
    learner = Learner(small_config(dedup_window=2), device=DEVICE)
    learner.learn([ev("a", "u", "i1", T0), ev("b", "u", "i2", T0), ev("c", "u", "i3", T0)])
    assert learner.learn([ev("a", "u", "i1", T0)]).outcomes == (Outcome.APPLIED,)


def test_rate_cap_limits_a_bot_in_event_time() -> None:
    learner = Learner(small_config(rate_cap_events=3, rate_cap_window_ms=60_000), device=DEVICE)
    bot = [ev(f"b{k}", "bot", f"i{k}", T0 + k) for k in range(10)]
    human = [ev("h1", "human", "i1", T0)]
    stats = learner.learn(bot + human)
    assert stats.outcomes.count(Outcome.RATE_LIMITED) == 7
    assert stats.outcomes[-1] == Outcome.APPLIED
    assert learner.table_sizes()["items"] == 3  # capped events did not create rows
    # The next window lets the user in again; the same window still caps.
    later = learner.learn([ev("b100", "bot", "i1", T0 + 5), ev("b101", "bot", "i2", T0 + 60_000)])
    assert later.outcomes == (Outcome.RATE_LIMITED, Outcome.APPLIED)


def test_rate_cap_holds_when_old_and_new_timestamps_alternate() -> None:
    """A late event used to reset the user's count: alternating windows escaped the cap."""
    learner = Learner(small_config(rate_cap_events=2, rate_cap_window_ms=60_000), device=DEVICE)
    mixed = [ev(f"b{k}", "bot", f"i{k % 5}", T0 + 60_000 + k if k % 2 == 0 else T0)
             for k in range(20)]
    assert learner.learn(mixed).n_applied == 2
    for k in range(10):  # and one event a batch
        ts = T0 + 60_001 + k if k % 2 == 0 else T0 + 1
        assert learner.learn([ev(f"c{k}", "bot", "i1", ts)]).n_applied == 0


DAY = 86_400_000


def test_rate_cap_holds_when_each_burst_is_stamped_with_another_past_minute() -> None:
    """Each burst newer than the last, all older than the learner's clock: every one
    opened a fresh window (1,000 of 1,000 applied at a cap of 2)."""
    learner = Learner(small_config(rate_cap_events=2, rate_cap_window_ms=60_000), device=DEVICE)
    learner.learn([ev(f"n{k}", f"u{k % 5}", f"i{k % 7}", T0 + k) for k in range(50)])
    backdated = [ev(f"b{k}", "bot", f"i{k % 7}", T0 - DAY + k * 60_000) for k in range(1_000)]
    assert learner.learn(backdated).n_applied == 2
    # Users whose events come after the clock are counted in their own windows, as before.
    fresh = [ev(f"f{k}", "later", f"i{k % 7}", T0 + 60_000 * (k + 1)) for k in range(5)]
    assert learner.learn(fresh).n_applied == 5



def test_a_user_read_behind_the_clock_is_capped_in_their_own_time() -> None:
    """A partition read behind the others (a reassigned backlog): its users' events were
    all charged to the clock's window, so 5 a minute let 5 of 30 through."""
    learner = Learner(small_config(rate_cap_events=5, rate_cap_window_ms=60_000), device=DEVICE)
    learner.learn([ev("n", "other", "i1", T0 + 45 * 60_000)])  # the clock, 45 min ahead
    steady = [ev(f"s{k}", "behind", f"i{k % 7}", T0 + k * 60_000) for k in range(30)]
    assert learner.learn(steady).n_applied == 30
    # Over the cap within one of their own minutes, they are still capped.
    burst = [ev(f"b{k}", "behind", f"i{k % 7}", T0 + 40 * 60_000 + k) for k in range(9)]
    assert learner.learn(burst).n_applied == 5


def test_backdated_bursts_open_at_most_the_grace_windows_once() -> None:
    """The bot of the test above, stamping minutes over the last two hours: the older half
    shares the window RATE_GRACE_WINDOWS back, the newer half gets one window each."""
    learner = Learner(small_config(rate_cap_events=2, rate_cap_window_ms=60_000), device=DEVICE)
    clock = T0 + 120 * 60_000
    learner.learn([ev("n", "other", "i1", clock)])
    backdated = [ev(f"b{k}", "bot", f"i{k % 7}", clock - (120 - k) * 60_000)
                 for k in range(120)]
    applied = learner.learn(backdated).n_applied
    assert RATE_GRACE_WINDOWS <= applied <= 2 * (RATE_GRACE_WINDOWS + 1)
    # and then no more than the cap per window of the stream's own time
    again = [ev(f"c{k}", "bot", f"i{k % 7}", clock - (120 - k) * 60_000) for k in range(120)]
    assert learner.learn(again).n_applied <= 2


def test_far_ahead_picks_a_few_outliers_not_a_stream_that_moved_on() -> None:
    step = [T0 + k for k in range(300)]
    assert far_ahead([*step, T0 + 40 * DAY], T0, 30 * DAY) == {300}
    assert far_ahead([*step, T0 + 20 * DAY], T0, 30 * DAY) == set()  # within the jump
    assert far_ahead([*step, T0 + 40 * DAY], T0, 0) == set()  # off
    # Up to 1% of the step (3 of 303) goes, more is the stream moving on after a gap.
    assert far_ahead([*step, *[T0 + 40 * DAY] * 3], T0, 30 * DAY) == {300, 301, 302}
    assert far_ahead([*step, *[T0 + 40 * DAY] * 4], T0, 30 * DAY) == set()
    # A whole step past the clock (the first after an outage), and a lone event.
    assert far_ahead([T0 + 40 * DAY + k for k in range(5)], T0, 30 * DAY) == set()
    assert far_ahead([T0 + 40 * DAY], T0, 30 * DAY) == set()
    # Ahead of the clock is what counts: the step's own oldest events may be late ones.
    assert far_ahead([T0 - 50 * DAY, *step, T0 + 40 * DAY], T0, 30 * DAY) == {301}


def test_one_event_years_ahead_in_a_replay_is_refused_and_moves_nothing() -> None:
    """Without the guard its item outranked every other item for every user: the clock
    jumped ten years, so everyone else's popularity looked decayed to nothing."""
    events = random_events(600, users=20, items=30, seed=3)
    late = dataclasses.replace(events[-1], event_id="far", item_id="i-far",
                               ts=events[-1].ts + 3650 * DAY)
    guarded, unguarded = (Learner(small_config(max_time_jump_ms=jump), device=DEVICE)
                          for jump in (30 * DAY, 0))
    for learner in (guarded, unguarded):
        for k in range(0, 500, 100):
            learner.learn(events[k:k + 100])
        stats = learner.learn([*events[500:], late])
        expected = Outcome.FAR_AHEAD if learner is guarded else Outcome.APPLIED
        assert stats.outcomes[-1] == expected
    assert guarded.global_state()["watermark_ms"] == max(e.ts for e in events)
    assert "i-far" not in guarded.item_ids()
    users = sorted({e.user_id for e in events} - {late.user_id})  # theirs is seen, left out
    assert [top[0] for top in unguarded.recommend(users, k=1).item_ids] == ["i-far"] * len(users)
    assert "i-far" not in {top[0] for top in guarded.recommend(users, k=1).item_ids}


def test_a_copy_of_a_refused_event_is_refused_again_not_counted_as_a_copy() -> None:
    """Only an applied event makes later ones copies: before, a copy of a rate-limited or
    far-ahead event in the same step was counted as a duplicate (neither applied nor
    dead-lettered), and a new event reusing a refused event's id went to the DLQ as a
    reused id of an event that was never applied."""
    learner = Learner(small_config(rate_cap_events=2, rate_cap_window_ms=60_000),
                      device=DEVICE)
    bot = [ev(f"b{k}", "bot", f"i{k}", T0 + k) for k in range(3)]
    copy = dataclasses.replace(bot[2], context={"retry": 1})
    reuse = ev("b2", "human", "i9", T0)
    step = [ev(f"w{k}", f"u{k}", "i1", T0 + k) for k in range(200)]
    far = ev("far", "u0", "i1", T0 + 40 * DAY)
    stats = learner.learn([*bot, copy, reuse, *step, far, dataclasses.replace(far)])
    assert stats.outcomes[:5] == (Outcome.APPLIED, Outcome.APPLIED, Outcome.RATE_LIMITED,
                                  Outcome.RATE_LIMITED, Outcome.APPLIED)
    assert stats.outcomes[-2:] == (Outcome.FAR_AHEAD, Outcome.FAR_AHEAD)
    assert Outcome.DUPLICATE not in stats.outcomes and Outcome.ID_REUSED not in stats.outcomes


def test_the_grace_holds_with_many_users_tracked() -> None:
    """The cleanup of the rate counts kept only windows at the clock: past ~4,000 users
    tracked, a user behind it started again at zero each step (23 of 30 through at 5)."""
    learner = Learner(small_config(rate_cap_events=5, rate_cap_window_ms=60_000), device=DEVICE)
    clock = T0 + 30 * 60_000
    applied = 0
    for step in range(10):
        others = [ev(f"o{step}-{k}", f"o{step}-{k}", "i1", clock + step) for k in range(1_500)]
        mine = [ev(f"m{step}-{k}", "behind", f"i{k}", T0 + 3 * step + k) for k in range(3)]
        applied += learner.learn(others + mine).outcomes[-3:].count(Outcome.APPLIED)
    assert applied == 5  # one minute of their own: the cap, however many others
