"""The scorer's user store: slots in shared matrices that behave like a dict of rows."""

from __future__ import annotations

import numpy as np

from stream_app.serving.users import UserRows


def _vec(value: float, dim: int = 3) -> np.ndarray:
    return np.full(dim, value, dtype=np.float32)


def test_rows_survive_growth_and_replacement() -> None:
    users = UserRows(dim=3, history_max=2, capacity=2)
    for k in range(9):  # grows 2 -> 4 -> 8 -> 16
        users.put(f"u{k}", _vec(k), tuple(f"i{j}" for j in range(k)), k,
                  _vec(-k) if k % 2 else None)
    users.put("u4", _vec(40), ("x",), 41, _vec(-40))
    assert len(users) == 9
    for k in range(9):
        got = users[f"u{k}"]
        if k == 4:
            assert got.vector.tolist() == [40] * 3 and got.updates == 41
            assert got.id_vec is not None and got.id_vec.tolist() == [-40] * 3
            assert got.recent_items == got.recent_mix == ("x",)
            continue
        assert got.vector.tolist() == [k] * 3 and got.updates == k
        assert (got.id_vec is None) == (k % 2 == 0)
        assert got.recent_mix == tuple(f"i{j}" for j in range(k))
        assert got.recent_items == got.recent_mix[:2]


def test_a_replaced_row_without_id_vec_drops_the_old_one() -> None:
    users = UserRows(dim=3, history_max=5)
    users.put("u", _vec(1), (), 1, _vec(2))
    users.put("u", _vec(1), (), 2, None)
    assert users["u"].id_vec is None


def test_states_are_copies_and_freed_slots_are_reused_clean() -> None:
    users = UserRows(dim=3, history_max=5, capacity=1)
    users.put("a", _vec(1), ("i1",), 1, _vec(1))
    before = users["a"]
    users.put("a", _vec(7), ("i2",), 2, _vec(7))
    assert before.vector.tolist() == [1] * 3 and before.id_vec is not None
    assert before.id_vec.tolist() == [1] * 3
    users.pop("a")
    # Nothing of an erased user stays in memory (helper review of the forget path).
    assert not users._vectors[0].any() and not users._id_vecs[0].any()  # noqa: SLF001
    users.pop("a")  # a second tombstone is a no-op
    assert users.get("a") is None and "a" not in users and len(users) == 0
    users.put("b", _vec(3), (), 3, None)  # takes a's slot: no growth
    assert len(users._updates) == 1
    got = users["b"]
    assert got.vector.tolist() == [3] * 3 and got.id_vec is None and got.recent_mix == ()
    assert users.get("a") is None and users.recent_items("a") == ()
    assert list(users) == ["b"]


def test_recent_items_are_cut_to_history_max_and_the_mix_keeps_them_all() -> None:
    users = UserRows(dim=1, history_max=2, capacity=0)
    users.put("u", _vec(1, dim=1), ("i1", "i2", "i3"), 1, None)
    assert users.recent_items("u") == users["u"].recent_items == ("i1", "i2")
    assert users["u"].recent_mix == ("i1", "i2", "i3")
