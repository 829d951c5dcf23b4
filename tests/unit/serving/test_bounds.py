"""Pruned top-K (`bounds.py`) returns the brute-force answer, before and after writes."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
import torch

from stream_app.events import ScoreRequest
from stream_app.serving import EmbeddingTable, bounds, rank, topk
from stream_app.serving import table as table_module
from stream_app.serving.bounds import BoundIndex
from tests.device import DEVICE
from tests.unit.serving.test_topk import DIM, brute, item, pairs, user

torch.set_num_threads(1)
Vectors = dict[str, npt.NDArray[np.float32]]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 8 and pruning from any size, so a few hundred items span many blocks."""
    monkeypatch.setattr(bounds, "BLOCK", 8)
    monkeypatch.setattr(topk, "PRUNE_MIN_SLOTS", 0)


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per call of the pruned scan: a test of its answers must have reached it
    (with `rank` ranking in one product, every answer test passed as well)."""
    calls: list[int] = []
    real = BoundIndex.topk

    def counted(self: BoundIndex, *args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(BoundIndex, "topk", counted)
    return calls


def biases_of(shape: str, n: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """zipf: log popularity as the trainer's bias; equal: nothing to prune by."""
    if shape == "zipf":
        return -np.log(rng.permutation(n) + 1.0)
    if shape == "gaussian":
        return rng.normal(size=n)
    return np.zeros(n)


def filled(shape: str, n_items: int = 600, scale: float = 0.3, seed: int = 3
           ) -> tuple[EmbeddingTable, Vectors, dict[str, float], Vectors]:
    """Dot products of about `scale**2 * DIM` against biases of `shape`.

    At the defaults most rankings scan a few blocks, then the rest in one
    product; with `scale=0.1` and more items, they stop after a few blocks.
    """
    rng = np.random.default_rng(seed)
    table = EmbeddingTable(device=DEVICE, initial_capacity=8)
    items = {f"i{k}": rng.normal(scale=scale, size=DIM).astype(np.float32)
             for k in range(n_items)}
    biases = dict(zip(items, biases_of(shape, n_items, rng).tolist(), strict=True))
    users = {f"u{k}": rng.normal(scale=scale, size=DIM).astype(np.float32) for k in range(12)}
    for i, v in items.items():
        table.upsert(item(i, v, biases[i]))
    for k, (u, v) in enumerate(users.items()):
        table.upsert(user(u, v, recent=tuple(f"i{(7 * k + j) % n_items}" for j in range(5))))
    return table, items, biases, users


def assert_brute_force(table: EmbeddingTable, items: Vectors, biases: dict[str, float],
                       users: Vectors, k: int, *, unknown: bool = True) -> None:
    reqs = [ScoreRequest(request_id=u, user_id=u, k=k, exclude_seen=n % 2 == 0,
                         exclude=("i0", "i1", "i2") if n % 3 == 0 else ())
            for n, u in enumerate(users)]
    if unknown:
        reqs.append(ScoreRequest(request_id="x", user_id="stranger", k=k))
    for req, got in zip(reqs, rank(table, reqs), strict=True):
        banned = set(req.exclude)
        known = table.users.get(req.user_id)
        if req.exclude_seen and known is not None:
            banned |= set(known.recent_items)
        want = brute(users.get(req.user_id), items, biases, len(items), banned=banned)
        check_up_to_ties(pairs(got), want, k)


def check_up_to_ties(got: list[tuple[str, float]], ranked: list[tuple[str, float]],
                     k: int) -> None:
    """`got` is a top-`k` of `ranked` (every eligible item, best first), ties in any order.

    Float32 scores tie where float64 ones differ in the 7th digit, so two
    items may swap places; each returned item must still score what the
    brute force has at its position, and none may repeat.
    """
    true = dict(ranked)
    assert len(got) == min(k, len(ranked))
    assert len({i for i, _ in got}) == len(got)
    for (ident, score), (_, want) in zip(got, ranked, strict=False):
        assert ident in true, f"{ident} is excluded or unknown"
        np.testing.assert_allclose([score, true[ident]], [want, want], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", ["zipf", "gaussian", "equal"])
@pytest.mark.parametrize(("k", "n_items", "scale"), [(1, 600, 0.3), (20, 600, 0.3),
                                                     (700, 600, 0.3), (20, 2000, 0.1)])
def test_pruned_ranking_equals_brute_force(shape: str, k: int, n_items: int,
                                           scale: float, scans: list[int]) -> None:
    table, items, biases, users = filled(shape, n_items, scale)
    # An unknown user scores every item by bias alone: with equal biases, all tie.
    assert_brute_force(table, items, biases, users, k, unknown=shape != "equal")
    assert scans


def test_writes_after_the_sort_keep_answers_exact(scans: list[int]) -> None:
    table, items, biases, users = filled("zipf", 2000, 0.1)
    index = table.bounds()
    rng = np.random.default_rng(11)
    # The top sinks, vectors grow, middling items rise, items come and go.
    by_bias = sorted(items, key=biases.__getitem__)
    sinking, growing, rising = by_bias[-20:-5], list(items)[100:110], by_bias[:5]
    for n, i in enumerate(sinking):
        biases[i] = -20.0 - n / 10
    for i in growing:
        items[i] = items[i] * 8
    for n, i in enumerate(rising):  # from the bottom to the middle, below the head
        biases[i] = -6.0 - n / 10
    for n in range(30):
        items[f"new{n}"] = rng.normal(scale=0.1, size=DIM).astype(np.float32)
        biases[f"new{n}"] = -10.0 + float(rng.normal())
    for i in sinking + growing + rising + [f"new{n}" for n in range(30)]:
        table.upsert(item(i, items[i], biases[i]))
    for i in (sinking[0], "i401"):
        table.delete("item", i)
        del items[i], biases[i]
    assert table.bounds() is index, "few writes: the index is kept, with raised bounds"
    assert_brute_force(table, items, biases, users, 20)
    assert scans


def test_an_item_that_jumps_into_the_head_rebuilds_the_index(scans: list[int]) -> None:
    """A new hit from the end of the order raised the bound of every block before its
    own, so every request scanned the catalogue until a quarter of it was rewritten."""
    table, items, biases, users = filled("zipf", 2000, 0.1)
    index = table.bounds()
    hit = min(items, key=biases.__getitem__)
    biases[hit] = 5.0
    table.upsert(item(hit, items[hit], biases[hit]))
    rebuilt = table.bounds()
    assert rebuilt is not index and not rebuilt.stale
    assert_brute_force(table, items, biases, users, 20)
    assert scans


def test_many_writes_rebuild_the_index() -> None:
    table, items, biases, _ = filled("zipf")
    index = table.bounds()
    for i in list(items)[:200]:
        table.upsert(item(i, items[i], biases[i] - 1.0))
    assert table.bounds() is not index


def test_rewriting_the_same_hot_items_does_not_rebuild() -> None:
    table, items, biases, users = filled("zipf")
    index = table.bounds()
    # The most popular getting more so, in the head: a tail item rising into the head
    # would rebuild the index (test_an_item_that_jumps_into_the_head_rebuilds_the_index).
    hot = sorted(items, key=biases.__getitem__, reverse=True)[:50]
    for _ in range(10):
        for i in hot:
            biases[i] += 0.1
            table.upsert(item(i, items[i], biases[i]))
        table.bounds()
    assert table.bounds() is index, "50 distinct slots of 600 written, 500 writes"
    assert_brute_force(table, items, biases, users, 20)


def test_bounds_are_never_below_the_truth() -> None:
    rng = np.random.default_rng(5)
    n = 500
    matrix = torch.from_numpy(rng.normal(size=(n, DIM)).astype(np.float32)).to(DEVICE)
    bias = torch.from_numpy(rng.normal(size=n).astype(np.float32)).to(DEVICE)
    index = BoundIndex(matrix, bias)
    for _ in range(5):
        slots = torch.from_numpy(rng.choice(n, 40, replace=False)).to(DEVICE)
        matrix[slots] = torch.from_numpy(
            rng.normal(scale=3, size=(40, DIM)).astype(np.float32)).to(DEVICE)
        bias[slots] = torch.from_numpy(rng.normal(scale=3, size=40).astype(np.float32)).to(DEVICE)
        index.raise_bounds(slots, matrix[slots], bias[slots])
        block = index.pos // bounds.BLOCK
        for b in range(len(index.max_bias)):
            members = block == b
            assert float(index.max_bias[b]) >= float(bias[members].max())
            assert float(index.max_norm[b]) >= float(matrix[members].norm(dim=1).max()) - 1e-6


def test_pruning_reads_only_the_blocks_that_can_win() -> None:
    """Rows past the first blocks are poisoned with NaN: a scan that read them would say so."""
    rng = np.random.default_rng(9)
    n = 2_000
    matrix = torch.from_numpy(rng.normal(scale=0.1, size=(n, DIM)).astype(np.float32)).to(DEVICE)
    bias = torch.from_numpy(-np.log(np.arange(n) + 1.0).astype(np.float32)).to(DEVICE)
    index = BoundIndex(matrix, bias)
    users = torch.from_numpy(rng.normal(scale=0.1, size=(4, DIM)).astype(np.float32)).to(DEVICE)
    poisoned = matrix.clone()
    poisoned[index.order[bounds.FIRST_SCAN * bounds.BLOCK:]] = float("nan")
    values, slots = index.topk(poisoned, bias, users, 10, [set(), set(), {0, 1}, set()])
    full = torch.addmm(bias, users, matrix.T)
    full[2, [0, 1]] = float("-inf")
    want_values, want_slots = full.topk(10, dim=1)
    assert torch.isfinite(values).all()
    torch.testing.assert_close(values, want_values)
    assert torch.equal(slots, want_slots)


def test_a_user_who_excluded_the_top_of_the_order_gets_the_rest(scans: list[int]) -> None:
    """The probe ignores exclusions; the scan finds out and finishes in one product."""
    table, items, biases, users = filled("zipf", 2000, 0.1)
    top = tuple(sorted(items, key=biases.__getitem__, reverse=True)[:300])
    req = ScoreRequest(request_id="r", user_id="u3", k=20, exclude=top, exclude_seen=False)
    got = rank(table, [req])[0]
    check_up_to_ties(pairs(got), brute(users["u3"], items, biases, len(items), banned=set(top)),
                     20)
    assert scans


def test_a_vector_norm_past_float32_range_is_not_skipped(
        scans: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """|v| overflows to inf: a zero user's bound would be 0 * inf = NaN (found in review)."""
    # Past the table's own check, which refuses such an item row (VECTOR_NORM_MAX).
    monkeypatch.setattr(table_module, "VECTOR_NORM_MAX", math.inf)
    table, items, biases, _ = filled("zipf", 600, 0.1)
    table.bounds()
    big = np.array([1e20] + [0.0] * (DIM - 1), dtype=np.float32)
    table.upsert(item("big", big, 5.0))
    got = rank(table, [ScoreRequest(request_id="r", user_id="nobody", k=3)])[0]
    assert [i.item_id for i in got.items][0] == "big"
    assert scans
