"""Exact top-K by inner product plus item bias, for a whole batch of requests at once.

score(user, item) = user.vector . item.vector + item.bias. Requests without a
candidate list are ranked over every live item with one `(batch, dim) @
(dim, n_slots)` product and one `topk`; requests with candidates gather only
their candidates' rows (padded into one `(batch, max_candidates, dim)` block).
Exclusions (the request's `exclude`, and the user's recent items when
`exclude_seen`) are set to -inf before `topk`, so they cost no extra pass.
On a CPU, over a large catalogue (`prunes`), the product runs block by
block, in order of bias, and stops when no block left can enter the top K
(`bounds.py`): the same answer, for a fraction of the product.

Fallback: an unknown user (no row) or a cold one (fewer than
`min_user_updates` updates) is scored with a zero vector, which leaves exactly
the item bias — the trainer's time-decayed popularity — so the popularity
ranking comes out of the same batched kernel, flagged in `Ranking.fallback`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stream_app.events import PredictedItem, ScoreRequest
from stream_app.serving.bounds import BLOCK
from stream_app.serving.table import EmbeddingTable, ServingMix
from stream_app.serving.users import UserState

NEG_INF = float("-inf")
SCORE_BUDGET = 1 << 25
"""Largest (batch x items) score block computed at once (128 MiB of float32)."""
PRUNE_MIN_SLOTS = 8 * BLOCK
"""Per CPU thread: below this many slots one full product costs about what pruning saves."""
GATHER_FLOATS = 1 << 24
"""Largest gathered block (requests x candidates x dim, or users x recent items x dim) in
floats: 64 MiB of float32. It counted requests x candidates only, so at dim 1024 a chunk of
requests took ~1 GiB (~4 GiB at the schema's largest dim, 4096)."""

UNKNOWN_USER = "unknown_user"
COLD_USER = "cold_user"
BAD_USER_VECTOR = "bad_user_vector"

Scored = list[tuple[int, float]]
"""(slot, score) pairs, best first."""


@dataclass(frozen=True, slots=True)
class Ranking:
    """One request's answer; `fallback` is None or why popularity was served (unknown_user,
    cold_user, bad_user_vector). `unknown_candidates`: how many distinct candidate ids
    have no row here (None without candidates)."""

    items: tuple[PredictedItem, ...]
    fallback: str | None
    unknown_candidates: int | None = None


def rank(table: EmbeddingTable, requests: Sequence[ScoreRequest], *,
         min_user_updates: int = 1, explain_max: int = 3) -> list[Ranking]:
    """Rank every request of a micro-batch; one answer per request, in order.

    >>> import numpy as np, torch
    >>> from stream_app.events import EmbeddingRow
    >>> t = EmbeddingTable(device=torch.device("cpu"))
    >>> for i, b in (("a", 0.1), ("b", 0.9)):
    ...     t.upsert(EmbeddingRow(entity="item", id=i, vector=np.zeros(2, np.float32), bias=b,
    ...                           model_version="v", updates=1, updated_at=1, last_event_ts=1))
    >>> r = rank(t, [ScoreRequest(request_id="r", user_id="nobody", k=5)])[0]
    >>> [i.item_id for i in r.items], r.fallback
    (['b', 'a'], 'unknown_user')
    """
    if not requests:
        return []
    users, fallbacks = user_vectors(table, requests, min_user_updates)
    excluded = [exclusions(table, r) for r in requests]
    scored: list[Scored] = [[] for _ in requests]
    if table.n_slots:
        full = [i for i, r in enumerate(requests) if r.candidates is None]
        cand = [i for i, r in enumerate(requests) if r.candidates is not None]
        _rank_all(table, requests, users, excluded, full, scored)
        _rank_candidates(table, requests, users, excluded, cand, scored)
    return [_answer(table, r, s, f, explain_max)
            for r, s, f in zip(requests, scored, fallbacks, strict=True)]


def user_vectors(table: EmbeddingTable, requests: Sequence[ScoreRequest],
                 min_user_updates: int) -> tuple[torch.Tensor, list[str | None]]:
    """`(batch, dim)` user vectors on the device (zero = popularity) and fallback reasons.

    With the trainer's serving mix (from `meta:trainer`) and the user's id
    vector, the vector is rebuilt from the current item vectors; otherwise the
    published serving vector is used as it is. A vector that is not finite or
    whose squared norm overflows (a corrupt row) is served popularity: checked
    here once per batch, not on each row of a load, for every user of the batch
    (only rebuilt ones were, so a user's answer depended on the rest of its batch).
    """
    dim = table.dim or 0
    out = np.zeros((len(requests), dim), dtype=np.float32)
    reasons: list[str | None] = []
    fresh: list[int] = []
    users: list[UserState] = []
    for i, req in enumerate(requests):
        user = table.users.get(req.user_id)
        if user is None:
            reasons.append(UNKNOWN_USER)
        elif user.updates < min_user_updates:
            reasons.append(COLD_USER)
        else:
            out[i] = user.vector
            reasons.append(None)
            if table.mix is not None and user.id_vec is not None:
                fresh.append(i)
                users.append(user)
    vectors = torch.from_numpy(out).to(table.device)
    if fresh and table.mix is not None:
        vectors[fresh] = mixed_vectors(table, table.mix, users)
    bad = ~torch.isfinite((vectors * vectors).sum(dim=1))  # NaN, inf, or a norm past it
    if bool(bad.any()):
        vectors[bad] = 0.0
        for i in torch.nonzero(bad).flatten().tolist():
            reasons[i] = BAD_USER_VECTOR
    return vectors, reasons


def mixed_vectors(table: EmbeddingTable, mix: ServingMix,
                  users: list[UserState]) -> torch.Tensor:
    """id_vec + w * decayed mean of the current vectors of each user's recent items: (n, dim).

    Recent items the table lacks are left out and the rest move up, as the learner
    compacts a history when an item goes (`compact_history`, and a restore); with
    none of them (or no item row at all yet) the vector is id_vec alone.
    """
    ids = torch.from_numpy(np.stack([u.id_vec for u in users if u.id_vec is not None]))
    matrix, _ = table.items()
    if matrix.shape[0] == 0:
        return ids.to(table.device)
    n, length = len(users), mix.recent_items
    found = np.full((n, length), -1, dtype=np.int64)  # built on the host, sent once
    get = table.item_slot.get
    for r, user in enumerate(users):
        row = [slot for slot in (get(item, -1) for item in user.recent_mix) if slot >= 0]
        found[r, :min(len(row), length)] = row[:length]
    valid_np = found >= 0
    slots = torch.from_numpy(np.where(valid_np, found, 0)).to(table.device)
    valid = torch.from_numpy(valid_np).to(table.device)
    weights = mix.recent_decay ** torch.arange(length, device=table.device, dtype=torch.float32)
    w = weights.unsqueeze(0) * valid
    norm = w.sum(dim=1, keepdim=True).clamp(min=1e-12)
    per = max(1, GATHER_FLOATS // (length * matrix.shape[1]))  # users gathered at once
    sums = [(w[s:s + per].unsqueeze(2)
             * matrix.index_select(0, slots[s:s + per].flatten()).view(-1, length,
                                                                       matrix.shape[1])
             ).sum(dim=1) for s in range(0, n, per)]
    return ids.to(table.device) + mix.history_weight * (torch.cat(sums) / norm)


def exclusions(table: EmbeddingTable, req: ScoreRequest) -> set[int]:
    """Slots this request must not return: its `exclude` and, if asked, the user's recent items."""
    slots = set(table.slots_of(req.exclude)) if req.exclude else set()
    if req.exclude_seen:
        slots.update(table.slots_of(table.users.recent_items(req.user_id)))
    return slots


def prunes(device: torch.device, n_slots: int) -> bool:
    """Whether full-catalogue ranking scans by bounds (`bounds.py`) or in one product.

    Only on a CPU, and only over more than `PRUNE_MIN_SLOTS` per thread: the
    one product spreads over threads and a GPU's kernels, the block scan's
    many small steps do not. On an H200 the scan was 0.9-1.6x the product; on
    16 CPU threads 0.57x at 100K items and batches of 32, 3.6-7.1x at 1M; on
    one thread 3-5x at 100K (BENCHMARKS.md, Scorer compute).
    """
    return device.type == "cpu" and n_slots > PRUNE_MIN_SLOTS * torch.get_num_threads()


def _rank_all(table: EmbeddingTable, requests: Sequence[ScoreRequest], users: torch.Tensor,
              excluded: list[set[int]], which: list[int], out: list[Scored]) -> None:
    """Full-catalogue ranking in chunks of rows so a block stays under SCORE_BUDGET."""
    matrix, bias = table.items()
    n = matrix.shape[0]
    bounds = table.bounds() if prunes(table.device, n) else None
    step = max(1, SCORE_BUDGET // n)
    for start in range(0, len(which), step):
        chunk = which[start:start + step]
        idx = torch.tensor(chunk, dtype=torch.long, device=table.device)
        kk = min(max(requests[i].k for i in chunk), n)
        if bounds is not None:
            values, slots = bounds.topk(matrix, bias, users.index_select(0, idx), kk,
                                        [excluded[i] for i in chunk])
        else:
            scores = torch.addmm(bias, users.index_select(0, idx), matrix.T)  # (b, n)
            rows = [r for r, i in enumerate(chunk) for _ in excluded[i]]
            if rows:
                cols = [s for i in chunk for s in excluded[i]]
                scores[rows, cols] = NEG_INF
            values, slots = scores.topk(kk, dim=1)
        for i, vals, sl in zip(chunk, values.tolist(), slots.tolist(), strict=True):
            out[i] = _finite(sl, vals, requests[i].k)


def _rank_candidates(table: EmbeddingTable, requests: Sequence[ScoreRequest],
                     users: torch.Tensor, excluded: list[set[int]], which: list[int],
                     out: list[Scored]) -> None:
    """Re-rank each request's known, non-excluded candidates (unknown ids are skipped)."""
    lists = {i: _candidate_slots(table, requests[i], excluded[i]) for i in which}
    todo = [i for i in which if lists[i]]
    start = 0
    while start < len(todo):
        chunk = [todo[start]]
        width = len(lists[todo[start]])
        for i in todo[start + 1:]:
            w = max(width, len(lists[i]))
            if w * (len(chunk) + 1) * (table.dim or 1) > GATHER_FLOATS:
                break
            chunk.append(i)
            width = w
        start += len(chunk)
        _score_padded(table, requests, users, chunk, [lists[i] for i in chunk], width, out)


def _candidate_slots(table: EmbeddingTable, req: ScoreRequest, excluded: set[int]) -> list[int]:
    seen: set[int] = set()
    slots: list[int] = []
    for slot in table.slots_of(req.candidates or ()):
        if slot not in seen and slot not in excluded:
            seen.add(slot)
            slots.append(slot)
    return slots


def _score_padded(table: EmbeddingTable, requests: Sequence[ScoreRequest], users: torch.Tensor,
                  chunk: list[int], lists: list[list[int]], width: int,
                  out: list[Scored]) -> None:
    """One `(b, width, dim)` gather; padding positions are masked to -inf."""
    matrix, bias = table.items()
    dev = table.device
    padded = torch.tensor([s + [s[0]] * (width - len(s)) for s in lists], device=dev)
    valid = torch.tensor([[True] * len(s) + [False] * (width - len(s)) for s in lists],
                         device=dev)
    u = users.index_select(0, torch.tensor(chunk, dtype=torch.long, device=dev))
    scores = torch.einsum("bcd,bd->bc", matrix[padded], u) + bias[padded]
    scores.masked_fill_(~valid, NEG_INF)
    kk = min(max(requests[i].k for i in chunk), width)
    values, pos = scores.topk(kk, dim=1)
    slots = padded.gather(1, pos)
    for i, vals, sl in zip(chunk, values.tolist(), slots.tolist(), strict=True):
        out[i] = _finite(sl, vals, requests[i].k)


def _finite(slots: list[int], values: list[float], k: int) -> Scored:
    """First `k` pairs whose score is finite (-inf marks excluded, free or padding)."""
    return [(s, v) for s, v in zip(slots, values, strict=True) if v != NEG_INF][:k]


def _answer(table: EmbeddingTable, req: ScoreRequest, scored: Scored, fallback: str | None,
            explain_max: int) -> Ranking:
    names = table.slot_item
    because = (explain(table, req.user_id, [s for s, _ in scored], explain_max)
               if req.explain and scored else [()] * len(scored))
    items = tuple(PredictedItem(item_id=names[s] or "", score=v, because=b)
                  for (s, v), b in zip(scored, because, strict=True))
    unknown = None
    if req.candidates is not None:
        unknown = sum(1 for c in set(req.candidates) if c not in table.item_slot)
    return Ranking(items=items, fallback=fallback, unknown_candidates=unknown)


def explain(table: EmbeddingTable, user_id: str, slots: list[int],
            explain_max: int) -> list[tuple[str, ...]]:
    """For each returned slot, the user's recent items with the largest positive dot product.

    contributions: (len(slots), n_recent) = item_vecs[slots] @ item_vecs[recent].T;
    an item never explains itself, nor appears twice (a history may repeat an item).
    """
    recent = list(dict.fromkeys(table.slots_of(table.users.recent_items(user_id))))
    if not recent:
        return [() for _ in slots]
    matrix, _ = table.items()
    dev = table.device
    returned = torch.tensor(slots, dtype=torch.long, device=dev)
    recent_t = torch.tensor(recent, dtype=torch.long, device=dev)
    contrib = matrix[returned] @ matrix[recent_t].T
    contrib[returned.unsqueeze(1) == recent_t.unsqueeze(0)] = NEG_INF
    values, pos = contrib.topk(min(explain_max, len(recent)), dim=1)
    names = table.slot_item
    return [tuple(names[recent[p]] or "" for p, v in zip(ps, vs, strict=True) if v > 0)
            for ps, vs in zip(pos.tolist(), values.tolist(), strict=True)]
