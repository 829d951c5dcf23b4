"""Edge cases of the learning step found by a review of the core (each failed before)."""

from __future__ import annotations

import math
from typing import Any

import torch

from stream_app.core import Learner, Outcome
from stream_app.events import EventKind
from tests.device import DEVICE
from tests.unit.core.streams import T0, ev, small_config


def test_users_below_the_admission_threshold_are_not_each_others_positives() -> None:
    """They share the cold row, and the mask took them for one user: four new users on
    four items learned against no negative at all (loss 0)."""
    losses = {}
    for threshold in (1, 2):
        learner = Learner(small_config(negatives="in_batch", replay_ratio=0.0,
                                       admission_threshold=threshold), device=DEVICE)
        items = [ev(f"w{k}{n}", "seed", f"i{k}", T0 + n) for k in range(4) for n in range(2)]
        learner.learn(items)  # every item admitted
        fresh = learner.learn([ev(f"e{k}", f"new{k}", f"i{k}", T0 + 2) for k in range(4)])
        losses[threshold] = fresh.loss
    assert losses[2] > 1.0  # ~log 4: three negatives each, as for users with their own rows
    assert math.isclose(losses[1], losses[2], rel_tol=0.2)


def test_a_replayed_item_without_popularity_does_not_spoil_the_step() -> None:
    """An item evicted, then back through zero-weight clicks only, has log Q -inf: a replay
    of its old purchase made every such step non-finite, fresh events included."""
    learner = Learner(small_config(click_weight=0.0, purchase_weight=1.0, max_items=2,
                                   replay_ratio=4.0, negatives="sampled"), device=DEVICE)
    buy, click = EventKind.PURCHASE, EventKind.CLICK
    for n, item in enumerate("ABC"):
        learner.learn([ev(f"p{n}", "u", item, T0 + n, buy)])  # C evicts A
    learner.learn([ev("c", "u", "A", T0 + 3, click)])  # A back, weight 0: no popularity
    outcomes = [learner.learn([ev(f"x{k}", "v", "C", T0 + 4 + k, buy)]).outcomes
                for k in range(10)]
    assert all(o == (Outcome.APPLIED,) for o in outcomes)


def test_with_recent_decay_0_older_history_items_do_not_move_under_adam() -> None:
    """Their weight is 0, so no gradient; Adam still moved them by momentum."""
    learner = Learner(small_config(optimizer="adam", recent_decay=0.0, replay_ratio=0.0,
                                   negatives="in_batch"), device=DEVICE)
    learner.learn([ev("a", "u", "B", T0), ev("b", "w", "B", T0)])
    learner.learn([ev("c", "u", "C", T0 + 1), ev("d", "w", "D", T0 + 1)])  # B: u's 2nd newest
    row = learner._item_vocab.row("B")  # noqa: SLF001
    before = learner._items.vec[row].clone()  # noqa: SLF001
    learner.learn([ev("e", "u", "E", T0 + 2), ev("f", "w", "F", T0 + 2)])
    assert torch.equal(learner._items.vec[row], before)  # noqa: SLF001



def test_a_forgotten_user_leaves_nothing_in_the_duplicate_check_or_its_snapshots() -> None:
    """The dedup window kept an erased user's events (user, item, time, price) for up to
    100,000 events, in the trainer's state after each commit and in every snapshot."""
    learner = Learner(small_config(replay_ratio=0.0), device=DEVICE)
    alice = [ev(f"a{n}", "alice", f"i{n % 3}", T0 + n) for n in range(3)]
    bob = ev("b0", "bob", "i0", T0 + 3)
    learner.learn([*alice, bob])
    assert learner.forget_user("alice", requested=True)

    def names_alice(dedup: dict[str, list[Any]]) -> bool:
        return any(c[0] == "alice" for c in dedup["contents"]) \
            or any(i.startswith("a") for i in dedup["ids"])

    assert not names_alice(learner.volatile_state()["dedup"])
    assert not names_alice(learner.state_dict()["volatile"]["dedup"])
    # Bob's copy is still a duplicate; alice's, re-sent after the erase, is a new event.
    again = learner.learn([bob, alice[0]])
    assert list(again.outcomes) == [Outcome.DUPLICATE, Outcome.APPLIED]


def test_an_erased_users_resent_event_is_scored_before_it_is_learned() -> None:
    """The prequential score screened it against a duplicate check that still held the
    user's event ids (dropped at the next step), so it went unscored, then was learned."""
    learner = Learner(small_config(), device=DEVICE)
    alice = ev("a0", "alice", "i0", T0)
    learner.learn([alice, ev("b0", "bob", "i1", T0 + 1)])
    assert learner.forget_user("alice", requested=True)
    assert learner.evaluate([alice]).n_events == 1
    assert list(learner.learn([alice]).outcomes) == [Outcome.APPLIED]


def test_the_tombstones_a_restore_read_are_let_go_at_the_first_step() -> None:
    """Only `load_volatile_state`, right after the restore, reads them: a trainer that
    restored without a state to put back kept every evicted or erased user's id."""
    source = Learner(small_config(), device=DEVICE)
    source.learn([ev("a0", "alice", "i0", T0)])
    learner = Learner(small_config(), device=DEVICE)
    learner.apply_rows(source.rows(user_ids=["alice"], item_ids=["i0"], model_version="v",
                                   now_ms=0))
    learner.forget_user("alice")  # a tombstone read back
    learner.finish_restore()
    assert learner._tombstoned == {"alice"}  # noqa: SLF001
    learner.learn([ev("b0", "bob", "i0", T0 + 1)])
    assert learner._tombstoned == set()  # noqa: SLF001

